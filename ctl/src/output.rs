//! What slipctl prints: the `-o table|json` choice, tables that fit the
//! terminal, JSON with RFC 3339 times, relative and absolute times, byte sizes,
//! and escaping of control characters in text that came from the controller.

use std::io::IsTerminal;

use comfy_table::{ContentArrangement, presets};
use serde::{Serialize, Serializer};

use crate::error::{CtlError, Result};

/// `println!` that ends slipctl quietly when its reader goes away
/// (`slipctl history | head`) instead of panicking on the broken pipe.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

/// A progress or commentary line: on stdout for people, on stderr when stdout
/// carries JSON for a script.
macro_rules! tell {
    ($format:expr, $($arg:tt)*) => {{
        if $format.is_json() {
            eprintln!($($arg)*);
        } else {
            say!($($arg)*);
        }
    }};
}

/// `-o`: how results are printed on stdout.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns and sentences, for people.
    #[default]
    Table,
    /// One pretty-printed JSON document, for scripts (times in RFC 3339).
    Json,
}

impl Format {
    pub fn is_json(self) -> bool {
        self == Format::Json
    }
}

/// Pretty JSON of `value` on stdout.
pub fn print_json<T: Serialize>(value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| CtlError::Json(e.to_string()))?;
    say!("{text}");
    Ok(())
}

/// A table with a header, no borders, and cells fitted to the terminal's
/// width (or `$COLUMNS`); every cell is escaped.
pub struct Table(comfy_table::Table);

impl Table {
    pub fn new(header: &[&str]) -> Self {
        let mut t = comfy_table::Table::new();
        t.load_preset(presets::NOTHING);
        t.set_content_arrangement(ContentArrangement::Dynamic);
        if let Some(width) = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse::<u16>().ok())
            .filter(|w| *w > 0)
        {
            t.set_width(width);
        } else if !std::io::stdout().is_terminal() {
            // A pipe or a file: no width to fit, keep each row on one line.
            t.set_content_arrangement(ContentArrangement::Disabled);
        }
        t.set_header(header.to_vec());
        Table(t)
    }

    /// Keeps column `i` (a time, an action) on one line; the others wrap.
    pub fn keep_whole(&mut self, i: usize) {
        if let Some(c) = self.0.column_mut(i) {
            c.set_constraint(comfy_table::ColumnConstraint::ContentWidth);
        }
    }

    pub fn row<S: AsRef<str>>(&mut self, cells: impl IntoIterator<Item = S>) {
        let cells: Vec<String> = cells.into_iter().map(|c| escape(c.as_ref())).collect();
        self.0.add_row(cells);
    }

    pub fn print(&self) {
        say!("{}", self.0);
    }
}

/// `s` with control characters (escape sequences, newlines, carriage
/// returns) shown escaped, so text from the controller or a host cannot move
/// the cursor or forge lines on the operator's terminal.
pub fn escape(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// `-` for an empty value.
pub fn dash(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.into() }
}

/// A list as `a,b`, or `-` when empty.
pub fn list(v: &[String]) -> String {
    dash(&v.join(","))
}

/// `k=v,k2=v2` of a map (sorted by key), or `-` when empty.
pub fn pairs<'a>(m: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    let mut v: Vec<String> = m.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    v.sort();
    list(&v)
}

/// The first 19 characters of a digest (`sha256:` and 12 hex digits).
pub fn short(digest: &str) -> String {
    digest.chars().take(19).collect()
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `5s ago`, `3m ago`, `2h ago`, `4d ago`; `never` for 0.
pub fn ago(ts: i64) -> String {
    ago_at(ts, now())
}

fn ago_at(ts: i64, now: i64) -> String {
    let d = (now - ts).max(0);
    match d {
        _ if ts == 0 => "never".into(),
        0..=59 => format!("{d}s ago"),
        60..=3599 => format!("{}m ago", d / 60),
        3600..=86399 => format!("{}h ago", d / 3600),
        _ => format!("{}d ago", d / 86400),
    }
}

/// `in 5m`, `in 3h`, `expired`; `-` for 0.
pub fn until(ts: i64) -> String {
    until_at(ts, now())
}

fn until_at(ts: i64, now: i64) -> String {
    let secs = ts - now;
    match secs {
        _ if ts == 0 => "-".into(),
        ..=0 => "expired".into(),
        1..=3599 => format!("in {}m", secs / 60),
        3600..=172_799 => format!("in {}h", secs / 3600),
        _ => format!("in {}d", secs / 86400),
    }
}

/// RFC 3339 in UTC (`2026-11-30T10:21:05Z`); None for 0 (never).
pub fn rfc3339(ts: i64) -> Option<String> {
    if ts == 0 {
        return None;
    }
    let t = time::OffsetDateTime::from_unix_timestamp(ts).ok()?;
    t.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// An absolute time for tables (`2026-11-30 10:21:05Z`), `-` for 0.
pub fn absolute(ts: i64) -> String {
    rfc3339(ts).map_or_else(|| "-".into(), |s| s.replacen('T', " ", 1))
}

/// serde: Unix seconds as an RFC 3339 string, `null` for 0.
pub fn as_rfc3339<S: Serializer>(ts: &i64, s: S) -> std::result::Result<S::Ok, S::Error> {
    match rfc3339(*ts) {
        Some(t) => s.serialize_str(&t),
        None => s.serialize_none(),
    }
}

/// `38.2 MiB`.
pub fn human_bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(escape("web-1"), "web-1");
        assert_eq!(escape("a\u{1b}[31mred\nforged"), "a\\u{1b}[31mred\\nforged");
        assert_eq!(escape("tab\there ✓"), "tab\\there ✓");
    }

    #[test]
    fn times_read_relative_and_absolute() {
        let cases = [
            (ago_at(0, 100), "never"),
            (ago_at(95, 100), "5s ago"),
            (ago_at(100 - 180, 100), "3m ago"),
            (ago_at(100 - 7200, 100), "2h ago"),
            (ago_at(100 - 4 * 86400, 100), "4d ago"),
            (until_at(0, 100), "-"),
            (until_at(50, 100), "expired"),
            (until_at(100 + 600, 100), "in 10m"),
            (until_at(100 + 86400, 100), "in 24h"),
            (until_at(100 + 90 * 86400, 100), "in 90d"),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
        assert_eq!(
            rfc3339(1_796_026_122).as_deref(),
            Some("2026-11-30T08:08:42Z")
        );
        assert_eq!(rfc3339(0), None);
        assert_eq!(absolute(1_796_026_122), "2026-11-30 08:08:42Z");
    }

    #[test]
    fn json_times_are_rfc3339_or_null() {
        #[derive(Serialize)]
        struct T {
            #[serde(serialize_with = "as_rfc3339")]
            at: i64,
            #[serde(serialize_with = "as_rfc3339")]
            never: i64,
        }
        let text = serde_json::to_string(&T {
            at: 1_796_026_122,
            never: 0,
        })
        .unwrap();
        assert_eq!(text, r#"{"at":"2026-11-30T08:08:42Z","never":null}"#);
    }

    #[test]
    fn sizes_are_binary_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(40_000_000), "38.15 MiB");
    }
}
