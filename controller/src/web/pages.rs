//! The dashboard's pages: the fleet, a host, a rollout (live), the history
//! and the releases. Each checks the session's tenant and role first, then
//! reads the same views and rows slipctl's calls read.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::WebError;
use super::layout::{self, Nav, ago, badge, bytes, path, shown, time};
use super::session::Viewer;
use crate::auth::Need;
use crate::ctx::SharedCtx;
use crate::fleet::HostState;
use crate::store::{HistoryFilter, RolloutHostRow, RolloutRow};
use crate::views::{self, HostApp};

/// How often a live rollout view looks for a change.
const LIVE_EVERY: Duration = Duration::from_millis(500);
/// A live view ends after this long (the page can be reloaded).
const LIVE_FOR: Duration = Duration::from_secs(3600);
/// How often a live view checks that its session still holds.
const LIVE_RECHECK: Duration = Duration::from_secs(5);

/// `/t/{tenant}/`: apps × environments, then hosts.
pub async fn fleet(
    State(ctx): State<SharedCtx>,
    Path(tenant): Path<String>,
    viewer: Viewer,
) -> Result<Html<String>, WebError> {
    viewer.check(&tenant, Need::Read)?;
    let now = crate::store::now();
    let view = views::fleet(&ctx, &tenant, "", "").await?;
    let envs: Vec<String> = ctx
        .store
        .environments(&tenant)
        .await?
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let hosts = ctx.store.hosts(&tenant, "").await?;
    // Worst state of each host over its apps; a host that runs nothing yet
    // is as its connection says.
    let mut host_state: BTreeMap<&str, HostState> = BTreeMap::new();
    for h in &view.rows {
        let e = host_state.entry(h.row.host.as_str()).or_default();
        *e = (*e).max(h.state);
    }
    let mut running: BTreeMap<(&str, &str), BTreeSet<&str>> = BTreeMap::new();
    for h in &view.rows {
        if !h.row.report.running_version.is_empty() {
            running
                .entry((&h.row.report.app, &h.row.environment))
                .or_default()
                .insert(&h.row.report.running_version);
        }
    }
    let apps: BTreeSet<&str> = view.apps.iter().map(|a| a.rollup.app.as_str()).collect();
    let cell = |app: &str, env: &str| {
        view.apps
            .iter()
            .find(|a| a.rollup.app == app && a.rollup.environment == env)
    };
    let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
    let live_hosts: Vec<_> = hosts.iter().filter(|h| h.revoked_at.is_none()).collect();
    for h in &live_hosts {
        let connected = ctx.hub.connected(&tenant, &h.name);
        let state = match host_state.get(h.name.as_str()) {
            Some(s) => s.as_str(),
            None if connected => "idle",
            None => "offline",
        };
        *counts.entry(state).or_default() += 1;
    }
    let t = path(&tenant);
    let body = html! {
        div.counts {
            span { strong { (live_hosts.len()) } " hosts" }
            @for (state, n) in &counts { span { (badge(state)) " " (n) } }
        }
        h2 { "Apps" }
        @if apps.is_empty() {
            p.muted { "No app runs here yet: " code { "slipctl publish" } " then " code { "slipctl deploy" } "." }
        } @else {
            div.scroll { table #apps {
                thead { tr { th { "app" } @for e in &envs { th { (shown(e)) } } } }
                tbody { @for app in &apps { tr {
                    th scope="row" { (shown(app)) }
                    @for env in &envs { td {
                        @if let Some(a) = cell(app, env) {
                            @let tally = a.rollup.tally;
                            div class={ "cell " (cell_class(tally.worst)) } data-app=(app) data-env=(env) {
                                (badge(tally.worst.as_str()))
                                div { "desired " code { (shown(&a.rollup.desired_version)) } }
                                @if let Some(versions) = running.get(&(*app, env.as_str())) {
                                    div.muted { "running " @for v in versions { code { (shown(v)) } " " } }
                                }
                                div.muted { (tally.ok) "/" (tally.hosts) " at desired"
                                    @if tally.updating > 0 { ", " (tally.updating) " updating" }
                                    @if tally.failed > 0 { ", " (tally.failed) " failed" }
                                    @if tally.offline > 0 { ", " (tally.offline) " offline" }
                                    @if tally.drifted > 0 { ", " (tally.drifted) " drifted" } }
                                @if let Some(r) = &a.rollout {
                                    div { a href={ "/t/" (t) "/rollouts/" (path(app)) "/" (path(env)) } {
                                        @if r.state.is_holding() {
                                            "rollout " (r.state.as_str()) ": step " (r.step + 1) "/" (r.steps)
                                        } @else {
                                            "last rollout " (r.state.as_str())
                                        }
                                    } }
                                }
                            }
                        } @else { span.muted { "—" } }
                    } }
                } } }
            } }
        }
        h2 { "Hosts" }
        div.scroll { table #hosts {
            thead { tr { th { "host" } th { "environment" } th { "state" } th { "agent" } th { "last seen" } } }
            tbody { @for h in &live_hosts {
                @let connected = ctx.hub.connected(&tenant, &h.name);
                @let state = host_state.get(h.name.as_str()).map(|s| s.as_str()).unwrap_or(if connected { "idle" } else { "offline" });
                tr data-host=(h.name) {
                    td { a href={ "/t/" (t) "/hosts/" (path(&h.name)) } { (shown(&h.name)) } }
                    td { (shown(&h.environment)) }
                    td { (badge(state)) @if !connected { " " (badge("offline")) } }
                    td.mono { (shown(&h.agent_version)) }
                    td title=(time(ctx.hub.last_seen(&tenant, &h.name, h.last_seen))) {
                        @if connected { "now" } @else { (ago(ctx.hub.last_seen(&tenant, &h.name, h.last_seen), now)) }
                    }
                }
            } }
        } }
    };
    Ok(layout::page(&viewer, "Fleet", Nav::Fleet, body))
}

fn cell_class(s: HostState) -> &'static str {
    match s {
        HostState::Ok => "good",
        HostState::Updating => "busy",
        HostState::Drifted => "warn",
        HostState::Offline => "off",
        HostState::Failed => "bad",
    }
}

/// `/t/{tenant}/hosts/{host}`: what the host is and what it runs.
pub async fn host(
    State(ctx): State<SharedCtx>,
    Path((tenant, host)): Path<(String, String)>,
    viewer: Viewer,
) -> Result<Html<String>, WebError> {
    viewer.check(&tenant, Need::Read)?;
    let now = crate::store::now();
    let Some(h) = ctx
        .store
        .hosts(&tenant, "")
        .await?
        .into_iter()
        .find(|h| h.name == host)
    else {
        return Err(WebError::new(
            axum::http::StatusCode::NOT_FOUND,
            format!("no host {:?} in tenant {tenant:?}", shown(&host)),
        ));
    };
    let view = views::fleet(&ctx, &tenant, "", &h.environment).await?;
    let apps: Vec<&HostApp> = view.rows.iter().filter(|r| r.row.host == host).collect();
    let connected = ctx.hub.connected(&tenant, &host);
    let last_seen = ctx.hub.last_seen(&tenant, &host, h.last_seen);
    // Asked of the host for every app at once: the page waits for the
    // slowest answer (`DEPLOY_STEPS_WAIT` at most), not for their sum.
    let steps: BTreeMap<&str, _> = if connected {
        let asks = apps
            .iter()
            .map(|a| deploy_steps(&ctx, &tenant, &h.environment, &host, &a.row.report.app));
        apps.iter()
            .map(|a| a.row.report.app.as_str())
            .zip(futures_util::future::join_all(asks).await)
            .collect()
    } else {
        BTreeMap::new()
    };
    let body = html! {
        dl.facts #facts {
            dt { "environment" } dd { (shown(&h.environment)) }
            dt { "connection" } dd {
                @if h.revoked_at.is_some() { (badge("revoked")) }
                @else if connected { (badge("connected")) } @else { (badge("offline")) }
            }
            dt { "last seen" } dd { (time(last_seen)) " (" (ago(last_seen, now)) ")" }
            dt { "purpose" } dd { (shown(or_dash(&h.purpose))) }
            dt { "criticality" } dd { (shown(or_dash(&h.criticality))) }
            dt { "labels" } dd {
                @if h.labels.is_empty() { "—" }
                @for (k, v) in &h.labels { code { (shown(k)) "=" (shown(v)) } " " }
            }
            dt { "agent" } dd.mono { (shown(or_dash(&h.agent_version))) }
            dt { "OS" } dd { (shown(or_dash(&h.os))) }
            dt { "certificate expires" } dd { (time(h.cert_not_after)) }
        }
        h2 { "Apps" }
        @if apps.is_empty() { p.muted { "This host runs no app yet." } }
        @for a in &apps {
            @let r = &a.row.report;
            section.app data-app=(r.app) {
                h3 { (shown(&r.app)) " " (badge(a.state.as_str())) }
                dl.facts {
                    dt { "running" } dd { code { (shown(or_dash(&r.running_version))) } }
                    dt { "desired" } dd { code { (shown(or_dash(a.row.desired_version.as_deref().unwrap_or_default()))) } }
                    dt { "deploy" } dd { (crate::lifecycle::deploy_state_name(r.state)) }
                    dt { "health" } dd {
                        (badge(r.health.as_str()))
                        @if !r.health_reason.is_empty() { " " span.reason { (shown(&r.health_reason)) } }
                        @if a.row.healthy_since > 0 { span.muted { " since " (time(a.row.healthy_since)) } }
                    }
                    @if !r.missing_env.is_empty() {
                        dt { "missing env" } dd.refusal { @for n in &r.missing_env { code { (shown(n)) } " " } }
                    }
                    @if !r.failed_version.is_empty() {
                        dt { "refused" } dd { code { (shown(&r.failed_version)) } ": " span.reason { (shown(&r.last_error)) } }
                    } @else if !r.last_error.is_empty() {
                        dt { "last error" } dd.reason { (shown(&r.last_error)) }
                    }
                    @if r.drift_count > 0 {
                        dt { "drift" } dd {
                            @if a.drifted { (r.drift_count) " path(s) changed on the host" } @else { "acknowledged" }
                            ul { @for d in &r.drift { li { code { (shown(d)) } } } }
                        }
                    }
                }
                @match steps.get(r.app.as_str()) {
                    Some(Ok(lines)) if !lines.is_empty() => {
                        h4 { "Last deploy steps (the host's deploy log)" }
                        div.scroll { table.steps {
                            tbody { @for (at, line) in lines { tr {
                                td.mono { (time(*at as i64)) }
                                td { (shown(line.strip_prefix("[deploy] ").unwrap_or(line))) }
                            } } }
                        } }
                    }
                    Some(Err(why)) => { p.muted { "Deploy log: " (shown(&why.to_string())) } }
                    _ => {}
                }
            }
        }
    };
    Ok(layout::page(
        &viewer,
        &format!("Host {}", shown(&host)),
        Nav::None,
        body,
    ))
}

/// Steps of the host's deploy log shown per app.
const DEPLOY_STEPS: u32 = 12;
/// How long the host page waits for a host's deploy log.
const DEPLOY_STEPS_WAIT: Duration = Duration::from_secs(3);

/// The last steps of `app`'s deploy log on `host`, asked of the host (the
/// log lives there): (when, line) oldest first, or why there are none.
async fn deploy_steps(
    ctx: &SharedCtx,
    tenant: &str,
    env: &str,
    host: &str,
    app: &str,
) -> Result<Vec<(u64, String)>, crate::error::ControllerError> {
    let r = crate::logs::LogRequest {
        app: app.to_string(),
        environment: env.to_string(),
        host: host.to_string(),
        ask: crate::logs::LogAsk {
            lines: DEPLOY_STEPS,
            deploy_log: true,
            max_bytes: 64 * 1024,
            ..Default::default()
        },
    };
    let (_, mut answers) = crate::logs::ask(ctx, tenant, &r)?;
    let mut out = Vec::new();
    let read = async {
        while let Some(a) = answers.recv().await {
            match a {
                crate::logs::Answer::Lines { lines, times, .. } => {
                    for (i, l) in lines.into_iter().enumerate() {
                        out.push((times.get(i).copied().unwrap_or(0), l));
                    }
                }
                crate::logs::Answer::Failed { error, .. } => {
                    return Err(crate::error::ControllerError::Unavailable(error));
                }
                crate::logs::Answer::Done { .. } => break,
            }
        }
        Ok(())
    };
    match tokio::time::timeout(DEPLOY_STEPS_WAIT, read).await {
        Ok(Ok(())) => Ok(out),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(crate::error::ControllerError::Unavailable(format!(
            "the host did not answer within {}s",
            DEPLOY_STEPS_WAIT.as_secs()
        ))),
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "—" } else { s }
}

/// `/t/{tenant}/rollouts/{app}/{env}`: the latest rollout, kept live.
pub async fn rollout(
    State(ctx): State<SharedCtx>,
    Path((tenant, app, env)): Path<(String, String, String)>,
    viewer: Viewer,
) -> Result<Html<String>, WebError> {
    viewer.check(&tenant, Need::Read)?;
    let section = rollout_section(&ctx, &tenant, &app, &env).await?;
    let live = format!(
        "/t/{}/rollouts/{}/{}/live",
        path(&tenant),
        path(&app),
        path(&env)
    );
    let body = html! {
        div #rollout data-live=(live) { (section.0) }
    };
    Ok(layout::page(
        &viewer,
        &format!("Rollout of {} in {}", shown(&app), shown(&env)),
        Nav::None,
        body,
    ))
}

/// The rollout's section, and whether it still moves.
async fn rollout_section(
    ctx: &SharedCtx,
    tenant: &str,
    app: &str,
    env: &str,
) -> Result<(Markup, bool), WebError> {
    let Some(r) = ctx.store.latest_rollout(tenant, app, env).await? else {
        return Err(WebError::new(
            axum::http::StatusCode::NOT_FOUND,
            format!("{} has no rollout in {} yet", shown(app), shown(env)),
        ));
    };
    let hosts = ctx.store.rollout_hosts(r.id).await?;
    let moving = r.state.is_holding();
    Ok((render_rollout(&r, &hosts), moving))
}

fn render_rollout(r: &RolloutRow, hosts: &[RolloutHostRow]) -> Markup {
    let s = &r.strategy;
    html! {
        dl.facts {
            dt { "state" } dd #state { (badge(r.state.as_str())) }
            dt { "step" } dd #step { (r.step + 1) " of " (r.steps) }
            dt { "change" } dd { code { (shown(or_dash(&r.from_version))) } " → " code { (shown(&r.to_version)) } }
            dt { "plan" } dd {
                "canary " (s.canary) ", batches of " (s.batch) ", up to " (s.max_failures) " failure(s), "
                (s.batch_timeout_secs) " s per batch"
                @if s.pause_secs > 0 { ", " (s.pause_secs) " s pause" }
                @if s.auto_revert { ", reverts on halt" }
            }
            @if !r.reason.is_empty() { dt { "reason" } dd.reason #reason { (shown(&r.reason)) } }
            dt { "started" } dd { (time(r.created_at)) " by " (shown(&r.created_by)) }
            dt { "updated" } dd { (time(r.updated_at)) }
        }
        h2 { "Hosts" }
        div.scroll { table #rollout-hosts {
            thead { tr { th { "step" } th { "host" } th { "outcome" } th { "reason" } } }
            tbody { @for h in hosts {
                tr data-host=(h.host) {
                    td { @if h.step == 0 { "canary" } @else { (h.step) } }
                    td { (shown(&h.host)) }
                    td { @if h.admitted_at > 0 { (badge(h.outcome.as_str())) }
                        @else if r.state.is_holding() { span.muted { "waiting" } }
                        @else { span.muted { "not reached" } } }
                    td.reason { (shown(&h.reason)) }
                }
            } }
        } }
    }
}

/// Server-sent events: the rollout's section each time it changes, until
/// the rollout ends (one last event) or an hour passes.
pub async fn rollout_live(
    State(ctx): State<SharedCtx>,
    Path((tenant, app, env)): Path<(String, String, String)>,
    viewer: Viewer,
) -> Result<Response, WebError> {
    viewer.check(&tenant, Need::Read)?;
    let slot = viewer.live_slot()?;
    // Refuse an unknown rollout now, with its status code, not in the stream.
    rollout_section(&ctx, &tenant, &app, &env).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(4);
    tokio::spawn(async move {
        let _slot = slot;
        let deadline = tokio::time::Instant::now() + LIVE_FOR;
        let mut last = String::new();
        let mut checked = tokio::time::Instant::now();
        while tokio::time::Instant::now() < deadline && !ctx.shutdown.is_cancelled() {
            if checked.elapsed() >= LIVE_RECHECK {
                if !viewer.still_valid(&ctx).await {
                    let _ = tx.send(Ok(Event::default().event("end").data(""))).await;
                    return;
                }
                checked = tokio::time::Instant::now();
            }
            let Ok((section, moving)) = rollout_section(&ctx, &tenant, &app, &env).await else {
                break;
            };
            let html = section.into_string();
            if html != last {
                if tx.send(Ok(Event::default().data(&html))).await.is_err() {
                    return;
                }
                last = html;
            }
            if !moving {
                let _ = tx.send(Ok(Event::default().event("end").data(""))).await;
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(LIVE_EVERY) => {}
                _ = tx.closed() => return,
            }
        }
    });
    Ok(Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response())
}

#[derive(Deserialize, Default)]
pub struct HistoryQuery {
    #[serde(default)]
    app: String,
    #[serde(default)]
    env: String,
    #[serde(default)]
    actor: String,
    #[serde(default)]
    outcome: String,
    #[serde(default)]
    before: i64,
}

/// Longest filter text accepted.
const MAX_FILTER: usize = 256;

/// `/t/{tenant}/history`: the audit log, filtered, newest first.
pub async fn history(
    State(ctx): State<SharedCtx>,
    Path(tenant): Path<String>,
    Query(q): Query<HistoryQuery>,
    viewer: Viewer,
) -> Result<Html<String>, WebError> {
    viewer.check(&tenant, Need::Read)?;
    for (name, v) in [
        ("app", &q.app),
        ("env", &q.env),
        ("actor", &q.actor),
        ("outcome", &q.outcome),
    ] {
        if v.len() > MAX_FILTER {
            return Err(WebError::new(
                axum::http::StatusCode::BAD_REQUEST,
                format!("the {name} filter is longer than {MAX_FILTER} bytes"),
            ));
        }
    }
    const PAGE: u32 = 100;
    let filter = HistoryFilter {
        app: q.app.clone(),
        environment: q.env.clone(),
        actor: q.actor.clone(),
        outcome: q.outcome.clone(),
    };
    let rows = ctx
        .store
        .history_where(&tenant, &filter, PAGE, q.before)
        .await?;
    let older = (rows.len() == PAGE as usize)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    let t = path(&tenant);
    let body = html! {
        form.filters method="get" {
            label { "app" input name="app" value=(q.app) maxlength=(MAX_FILTER); }
            label { "environment" input name="env" value=(q.env) maxlength=(MAX_FILTER); }
            label { "actor" input name="actor" value=(q.actor) maxlength=(MAX_FILTER); }
            label { "outcome" select name="outcome" {
                @for o in ["", "ok", "refused", "failed"] {
                    option value=(o) selected[q.outcome == o] { @if o.is_empty() { "any" } @else { (o) } }
                }
            } }
            button type="submit" { "Filter" }
        }
        div.scroll { table #history {
            thead { tr { th { "time (UTC)" } th { "actor" } th { "action" } th { "app" } th { "environment" } th { "detail" } th { "outcome" } } }
            tbody { @for r in &rows { tr {
                td.mono { (time(r.at)) }
                td { (shown(&r.actor)) }
                td { (shown(&r.action)) }
                td { (shown(&r.app)) }
                td { (shown(&r.environment)) }
                td.reason { (shown(&r.detail)) }
                td { @if r.outcome == "ok" { (badge("ok")) } @else { span.refusal { (shown(&r.outcome)) } } }
            } } }
        } }
        @if rows.is_empty() { p.muted { "Nothing matches." } }
        @if let Some(id) = older {
            p { a href={ "/t/" (t) "/history?app=" (query(&q.app)) "&env=" (query(&q.env)) "&actor=" (query(&q.actor)) "&outcome=" (query(&q.outcome)) "&before=" (id) } { "Older →" } }
        }
    };
    Ok(layout::page(&viewer, "History", Nav::History, body))
}

/// A value as a query-string component.
fn query(s: &str) -> String {
    path(s)
}

#[derive(Deserialize, Default)]
pub struct ReleasesQuery {
    #[serde(default)]
    app: String,
}

/// Releases listed per app at most.
const RELEASES_PER_APP: usize = 50;

/// `/t/{tenant}/releases`: every app's releases, newest first, and where
/// each runs.
pub async fn releases(
    State(ctx): State<SharedCtx>,
    Path(tenant): Path<String>,
    Query(q): Query<ReleasesQuery>,
    viewer: Viewer,
) -> Result<Response, WebError> {
    viewer.check(&tenant, Need::Read)?;
    let apps = ctx.store.apps(&tenant).await?;
    if !q.app.is_empty() && !apps.contains(&q.app) {
        return Err(WebError::new(
            axum::http::StatusCode::NOT_FOUND,
            format!("no app {:?} was published", shown(&q.app)),
        ));
    }
    let view = views::fleet(&ctx, &tenant, &q.app, "").await?;
    let mut runs: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    for h in &view.rows {
        runs.entry((&h.row.report.app, &h.row.report.running_version))
            .or_default()
            .push(&h.row.host);
    }
    let mut sections = Vec::new();
    for app in apps.iter().filter(|a| q.app.is_empty() || **a == q.app) {
        let mut rows = ctx.store.releases(&tenant, app).await?;
        rows.truncate(RELEASES_PER_APP);
        sections.push((app, rows));
    }
    let body = html! {
        @if sections.is_empty() { p.muted { "Nothing published yet." } }
        @for (app, rows) in &sections {
            h2 { (shown(app)) }
            div.scroll { table.releases data-app=(app) {
                thead { tr { th { "version" } th { "published (UTC)" } th { "digest" } th { "size" } th { "signatures" } th { "runs on" } } }
                tbody { @for r in rows { tr {
                    td { code { (shown(&r.version)) } @if r.yanked_at.is_some() { " " (badge("yanked")) } }
                    td.mono { (time(r.created_at)) }
                    td.mono title=(r.manifest_digest) { (short_digest(&r.manifest_digest)) }
                    td { (bytes(r.blob_size)) }
                    td { (signature_count(&r.signatures)) }
                    td { @if let Some(hosts) = runs.get(&(app.as_str(), r.version.as_str())) {
                        @for h in hosts { code { (shown(h)) } " " }
                    } @else { span.muted { "—" } } }
                } } }
            } }
        }
    };
    Ok(layout::page(&viewer, "Releases", Nav::Releases, body).into_response())
}

fn short_digest(d: &str) -> String {
    let hex = d.strip_prefix("sha256:").unwrap_or(d);
    format!("sha256:{}…", &hex[..hex.len().min(12)])
}

/// How many publisher signatures a release carries (`[{"key","sig"}]`).
fn signature_count(json: &str) -> String {
    match serde_json::from_str::<Vec<serde_json::Value>>(json) {
        Ok(v) if v.is_empty() => "none".into(),
        Ok(v) => format!("{} signed", v.len()),
        Err(_) => "none".into(),
    }
}
