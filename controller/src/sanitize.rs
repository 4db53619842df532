//! Text the controller did not write (what a host reports, what a client
//! names) made safe to store, log and show: control characters escaped and
//! the length bounded, at the edge where the text comes in.
//!
//! Policy: every control character (C0, DEL, C1: escape sequences, newlines,
//! carriage returns, backspaces) and every bidirectional-override character
//! is replaced by its visible Rust escape (`\u{1b}`, `\n`), so the text can
//! neither move an operator's cursor nor forge a line in the controller's
//! log; text longer than its bound is cut on a character boundary and ends
//! with [`CUT_MARKER`], so a reader sees that it was cut.

/// What ends a text that was cut.
pub const CUT_MARKER: &str = "…[cut]";

/// Whether `c` must not reach a terminal or a log line as is.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        // Bidirectional embeddings, overrides and isolates: they reorder
        // what a terminal shows ("Trojan Source").
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with unsafe characters escaped, cut to at most `max` bytes (marker
/// included; `max` below the marker's length keeps only the marker).
pub fn text(s: &str, max: usize) -> String {
    let escaped: std::borrow::Cow<'_, str> = if s.chars().any(is_unsafe) {
        let mut out = String::with_capacity(s.len().min(max) + 8);
        for c in s.chars() {
            if is_unsafe(c) {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
            if out.len() > max {
                break;
            }
        }
        out.into()
    } else {
        s.into()
    };
    cut(&escaped, max)
}

/// `s` cut to at most `max` bytes with [`CUT_MARKER`] at the end, or `s`
/// when it fits.
fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let keep = max.saturating_sub(CUT_MARKER.len());
    let mut out = s[..s.floor_char_boundary(keep)].to_string();
    out.push_str(CUT_MARKER);
    out
}

/// `s` as [`text`], owned input.
pub fn owned(s: String, max: usize) -> String {
    if s.len() <= max && !s.chars().any(is_unsafe) {
        return s;
    }
    text(&s, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, max: usize, want: &str) {
        let got = text(input, max);
        assert_eq!(got, want, "text({input:?}, {max})");
        assert!(
            got.len() <= max.max(CUT_MARKER.len()),
            "{got:?} is over {max}"
        );
        assert!(!got.chars().any(is_unsafe), "{got:?}");
        assert_eq!(owned(input.to_string(), max), want);
    }

    #[test]
    fn plain_text_passes_unchanged() {
        check("", 10, "");
        check("web-1 running 1.2.3", 64, "web-1 running 1.2.3");
        check("é ü 日本", 64, "é ü 日本");
    }

    #[test]
    fn escapes_newlines_and_terminal_sequences() {
        check("a\nb\r\tc", 64, "a\\nb\\r\\tc");
        check(
            "\x1b[2J\x1b]0;pwned\x07",
            64,
            "\\u{1b}[2J\\u{1b}]0;pwned\\u{7}",
        );
        check("ok\u{85}next\u{9b}31m", 64, "ok\\u{85}next\\u{9b}31m");
        check("x\u{202e}gnp.exe", 64, "x\\u{202e}gnp.exe");
        check("del\x7f", 64, "del\\u{7f}");
    }

    #[test]
    fn long_text_is_cut_with_a_marker_on_a_char_boundary() {
        let long = "x".repeat(100);
        check(
            &long,
            20,
            &format!("{}{CUT_MARKER}", "x".repeat(20 - CUT_MARKER.len())),
        );
        // A multi-byte character across the bound is dropped whole.
        let wide = "日".repeat(10); // 30 bytes
        let got = text(&wide, 16);
        assert!(got.ends_with(CUT_MARKER) && got.len() <= 16, "{got:?}");
        assert!(got.starts_with('日'));
        // Escapes count towards the bound.
        let esc = "\n".repeat(50);
        let got = text(&esc, 20);
        assert!(got.len() <= 20 && got.ends_with(CUT_MARKER), "{got:?}");
        // Exactly at the bound: not cut.
        check(&"y".repeat(20), 20, &"y".repeat(20));
    }

    #[test]
    fn a_huge_input_costs_no_more_than_its_bound() {
        let huge = "\x1b".repeat(9 << 20);
        let got = text(&huge, 256);
        assert!(got.len() <= 256);
    }
}
