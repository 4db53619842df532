//! The frame every page shares (navigation, tenant, sign-out), the embedded
//! stylesheet and script, and small formatting helpers.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use super::session::Viewer;

const STYLE: &str = include_str!("../../assets/style.css");
const SCRIPT: &str = include_str!("../../assets/live.js");

/// Longest text of one field shown on a page (longer is cut, marked).
const MAX_SHOWN: usize = 8 * 1024;

/// `/assets/{name}`: the stylesheet and the script, cached a day.
pub async fn asset(Path(name): Path<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "style.css" => (STYLE, "text/css; charset=utf-8"),
        "live.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=86400"),
            ),
        ],
        body,
    )
        .into_response()
}

/// Text from a host, a client or the store, as a page shows it: control
/// characters escaped, bounded (maud escapes the HTML).
pub fn shown(s: &str) -> String {
    crate::sanitize::text(s, MAX_SHOWN)
}

/// A name as a URL path segment (percent-encoded beyond the name charset).
pub fn path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A Unix time as an absolute UTC time (`2026-12-01 10:45:03 UTC`); `—`
/// for never.
pub fn time(at: i64) -> String {
    // Past year 9999 (a host's word) is not a time humantime writes.
    if at <= 0 || at > 253_402_300_799 {
        return "—".into();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(at as u64);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace('T', " ")
        .replace('Z', " UTC")
}

/// How long ago `at` was (`42s ago`, `3h ago`); `never` for 0.
pub fn ago(at: i64, now: i64) -> String {
    if at <= 0 {
        return "never".into();
    }
    let d = (now - at).max(0);
    match d {
        0..60 => format!("{d}s ago"),
        60..3600 => format!("{}m ago", d / 60),
        3600..86400 => format!("{}h ago", d / 3600),
        _ => format!("{}d ago", d / 86400),
    }
}

/// Bytes as `12.3 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A state as a coloured badge (`ok`, `failed`, `running`…).
pub fn badge(state: &str) -> Markup {
    html! { span class={ "badge " (state_class(state)) } { (shown(state)) } }
}

fn state_class(state: &str) -> &'static str {
    match state {
        "ok" | "healthy" | "succeeded" | "connected" => "good",
        "updating" | "running" | "pending" | "fetching" | "installing" | "activating" => "busy",
        "drifted" | "paused" | "superseded" | "unknown" => "warn",
        "offline" => "off",
        "failed" | "unhealthy" | "halted" | "reverted" | "aborted" | "timeout" | "rolled back" => {
            "bad"
        }
        _ => "",
    }
}

/// Which tab of the navigation a page is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Fleet,
    Releases,
    History,
    Logs,
    None,
}

/// A signed-in page: the navigation, who is signed in, and `body`.
pub fn page(viewer: &Viewer, title: &str, nav: Nav, body: Markup) -> Html<String> {
    let tenant = path(&viewer.principal.tenant);
    let tab = |which: Nav, href: String, label: &str| {
        html! {
            a href=(href) aria-current=[(which == nav).then_some("page")] { (label) }
        }
    };
    frame(
        title,
        html! {
            header {
                nav {
                    strong.brand { "Slipway" }
                    (tab(Nav::Fleet, format!("/t/{tenant}/"), "Fleet"))
                    (tab(Nav::Releases, format!("/t/{tenant}/releases"), "Releases"))
                    (tab(Nav::History, format!("/t/{tenant}/history"), "History"))
                    (tab(Nav::Logs, format!("/t/{tenant}/logs"), "Logs"))
                }
                form.who method="post" action="/sign-out" {
                    span {
                        "tenant " strong { (shown(&viewer.principal.tenant)) }
                        " · " (shown(&viewer.principal.name))
                    }
                    input type="hidden" name="csrf" value=(viewer.csrf);
                    button type="submit" { "Sign out" }
                }
            }
            main {
                h1 { (title) }
                (body)
            }
        },
    )
}

/// A page without navigation (sign-in, errors).
pub fn bare(title: &str, body: Markup) -> Html<String> {
    frame(
        title,
        html! {
            header { nav { strong.brand { "Slipway" } } }
            main { h1 { (title) } (body) }
        },
    )
}

fn frame(title: &str, content: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " · Slipway" }
                    link rel="stylesheet" href="/assets/style.css";
                    script src="/assets/live.js" defer {}
                }
                body { (content) }
            }
        }
        .into_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_safe_path_segments() {
        assert_eq!(path("web-1"), "web-1");
        assert_eq!(path("a/b c"), "a%2Fb%20c");
        assert_eq!(path("../x"), "..%2Fx");
    }

    #[test]
    fn times_are_absolute_utc() {
        assert_eq!(time(0), "—");
        assert_eq!(time(i64::MAX), "—");
        assert_eq!(time(1_764_585_903), "2025-12-01 10:45:03 UTC");
        assert_eq!(ago(100, 142), "42s ago");
        assert_eq!(ago(0, 142), "never");
    }

    #[test]
    fn control_characters_never_reach_a_page() {
        assert_eq!(shown("a\u{1b}[31mb"), "a\\u{1b}[31mb");
        assert_eq!(bytes(1536), "1.5 KiB");
    }
}
