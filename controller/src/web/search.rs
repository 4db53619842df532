//! `/t/{tenant}/logs`: a search over an app's logs on every connected host
//! that runs it (`crate::logs::ask`, the engine `slipctl logs --grep` uses).
//! The logs stay on the hosts; each host reads its own in blocks and sends
//! back its last matching lines, bounded in lines, bytes and time. The page
//! streams: its head at once, then each host's lines as they arrive, then
//! which hosts answered and which did not.

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use maud::{Markup, PreEscaped, html};
use serde::Deserialize;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use super::WebError;
use super::layout::{self, Nav, shown, time};
use super::session::Viewer;
use crate::auth::Need;
use crate::ctx::SharedCtx;
use crate::logs::{Answer, LogAsk, LogRequest};

/// Matching lines per process a page shows by default, and at most.
const DEFAULT_LINES: u32 = 200;
const MAX_LINES: u32 = 1000;
/// Bytes of lines one host may send a page.
const MAX_BYTES_PER_HOST: u64 = 1 << 20;
/// How long a host may search.
const DEADLINE_SECS: u32 = 30;
/// Longest query text.
const MAX_QUERY: usize = 1024;
/// Where the streamed results go in the page.
const RESULTS_MARK: &str = "<!--results-->";

#[derive(Deserialize, Default)]
pub struct SearchQuery {
    #[serde(default)]
    app: String,
    #[serde(default)]
    env: String,
    #[serde(default)]
    host: String,
    #[serde(default)]
    q: String,
    /// `regex`, or anything else for plain text.
    #[serde(default)]
    mode: String,
    /// How far back (`15m`, `24h`, `7d`); default 24h.
    #[serde(default)]
    since: String,
    /// Up to how long ago (empty: now).
    #[serde(default)]
    until: String,
    #[serde(default)]
    n: Option<u32>,
}

fn duration(what: &str, s: &str) -> Result<u64, WebError> {
    if s.is_empty() {
        return Ok(0);
    }
    if s.len() > 32 {
        return Err(bad(format!("{what}: not a duration")));
    }
    humantime::parse_duration(s)
        .map(|d| d.as_secs())
        .map_err(|e| bad(format!("{what} {:?}: {e} (try 15m, 24h, 7d)", shown(s))))
}

fn bad(message: String) -> WebError {
    WebError::new(axum::http::StatusCode::BAD_REQUEST, message)
}

impl SearchQuery {
    /// The query as the engine takes it; None when nothing was asked yet.
    fn request(&self) -> Result<Option<LogRequest>, WebError> {
        if self.q.is_empty() {
            return Ok(None);
        }
        if self.q.len() > MAX_QUERY {
            return Err(bad(format!("the query is longer than {MAX_QUERY} bytes")));
        }
        if self.app.is_empty() {
            return Err(bad("choose an app to search".into()));
        }
        let lines = self.n.unwrap_or(DEFAULT_LINES);
        if lines == 0 || lines > MAX_LINES {
            return Err(bad(format!("lines: 1 to {MAX_LINES}")));
        }
        let grep = if self.mode == "regex" {
            self.q.clone()
        } else {
            regex::escape(&self.q)
        };
        let until_secs = duration("until", &self.until)?;
        // By default the day before the range's end.
        let since_secs = match duration("since", &self.since)? {
            0 => until_secs + 24 * 3600,
            s => s,
        };
        let r = LogRequest {
            app: self.app.clone(),
            environment: self.env.clone(),
            host: self.host.clone(),
            ask: LogAsk {
                lines,
                grep,
                since_secs,
                until_secs,
                max_bytes: MAX_BYTES_PER_HOST,
                deadline_secs: DEADLINE_SECS,
                ..LogAsk::default()
            },
        };
        r.check()
            .map_err(|e| bad(e.to_string().replace("--grep", "query")))?;
        Ok(Some(r))
    }
}

pub async fn page(
    State(ctx): State<SharedCtx>,
    Path(tenant): Path<String>,
    Query(q): Query<SearchQuery>,
    viewer: Viewer,
) -> Result<Response, WebError> {
    viewer.check(&tenant, Need::Read)?;
    let request = q.request()?;
    let apps = ctx.store.apps(&tenant).await?;
    let envs: Vec<String> = ctx
        .store
        .environments(&tenant)
        .await?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let form = form(&q, &apps, &envs);
    let Some(request) = request else {
        let body = html! { (form) p.muted { "Logs stay on the hosts: a search asks every connected host that runs the app, and shows each host's last matching lines." } };
        return Ok(layout::page(&viewer, "Logs", Nav::Logs, body).into_response());
    };
    let (hosts, answers) = crate::logs::ask(&ctx, &tenant, &request)?;
    tracing::info!(tenant = %tenant, app = %request.app, env = %request.environment, hosts = hosts.len(), actor = %viewer.principal.actor(), "log search asked from the dashboard");
    let frame = layout::page(
        &viewer,
        "Logs",
        Nav::Logs,
        html! {
            (form)
            p.muted #asked { "Asked " (hosts.len()) " host(s)." }
            div #results { (PreEscaped(RESULTS_MARK)) }
        },
    )
    .0;
    let (head, tail) = frame
        .split_once(RESULTS_MARK)
        .map(|(h, t)| (h.to_string(), t.to_string()))
        .unwrap_or_default();
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(8);
    tokio::spawn(stream_answers(hosts, answers, head, tail, tx));
    let body = Body::from_stream(ReceiverStream::new(rx).map(Ok::<_, Infallible>));
    Ok(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response())
}

fn form(q: &SearchQuery, apps: &[String], envs: &[String]) -> Markup {
    html! {
        form.filters method="get" {
            label { "search" input name="q" value=(q.q) maxlength=(MAX_QUERY) required autofocus; }
            label { "as" select name="mode" {
                option value="text" selected[q.mode != "regex"] { "text" }
                option value="regex" selected[q.mode == "regex"] { "regex" }
            } }
            label { "app" select name="app" required {
                @for a in apps { option value=(a) selected[*a == q.app] { (shown(a)) } }
            } }
            label { "environment" select name="env" {
                option value="" { "all" }
                @for e in envs { option value=(e) selected[*e == q.env] { (shown(e)) } }
            } }
            label { "host" input name="host" value=(q.host) placeholder="all" maxlength="253"; }
            label { "since" input name="since" value=(q.since) placeholder="24h" size="6" maxlength="32"; }
            label { "until" input name="until" value=(q.until) placeholder="now" size="6" maxlength="32"; }
            button type="submit" { "Search" }
        }
    }
}

/// Writes the page: its head, each host's lines as they come, then who
/// answered; stops when the reader goes away (which ends every host's part).
async fn stream_answers(
    hosts: Vec<String>,
    mut answers: tokio::sync::mpsc::Receiver<Answer>,
    head: String,
    tail: String,
    tx: tokio::sync::mpsc::Sender<String>,
) {
    let started = std::time::Instant::now();
    if tx.send(head).await.is_err() {
        return;
    }
    let (mut done, mut failed, mut lines) = (Vec::new(), Vec::new(), 0usize);
    while let Some(a) = answers.recv().await {
        let chunk = match a {
            Answer::Lines {
                host,
                lines: l,
                times,
            } => {
                lines += l.len();
                hits(&host, &l, &times).into_string()
            }
            Answer::Done { host } => {
                done.push(host);
                continue;
            }
            Answer::Failed { host, error } => {
                let html = html! { div.hit.failed { span.src { (shown(&host)) } " " span.refusal { (shown(&error)) } } };
                failed.push((host, error));
                html.into_string()
            }
        };
        if !matches!(
            tokio::time::timeout(crate::logs::READER_STALL, tx.send(chunk)).await,
            Ok(Ok(()))
        ) {
            return;
        }
    }
    let silent: Vec<&String> = hosts
        .iter()
        .filter(|h| !done.contains(h) && !failed.iter().any(|(f, _)| f == *h))
        .collect();
    let summary = html! {
        div #summary {
            p { (lines) " matching line(s) from " (done.len()) " of " (hosts.len()) " host(s) in "
                (format!("{:.2}", started.elapsed().as_secs_f64())) " s." }
            @if !failed.is_empty() || !silent.is_empty() {
                p.refusal #unanswered { "Did not answer in full: "
                    @for (h, why) in &failed { code { (shown(h)) } " (" (shown(why)) ") " }
                    @for h in &silent { code { (shown(h)) } " " }
                }
            }
        }
    };
    let _ = tx.send(summary.into_string()).await;
    let _ = tx.send(tail).await;
}

/// A host's lines: `[process] text` as the host sent it, split for show.
fn hits(host: &str, lines: &[String], times: &[u64]) -> Markup {
    html! {
        @for (i, line) in lines.iter().enumerate() {
            @let (process, text) = line
                .strip_prefix('[')
                .and_then(|l| l.split_once("] "))
                .unwrap_or(("", line.as_str()));
            @let at = times.get(i).copied().unwrap_or(0);
            div.hit data-host=(host) {
                span.src { (shown(host)) }
                @if !process.is_empty() { " " span.proc { (shown(process)) } }
                @if at > 0 { " " time.muted { (time(at as i64)) } }
                " " span.text { (shown(text)) }
            }
        }
    }
}
