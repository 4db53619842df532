//! `slipctl status`: the fleet table (and `--json` for scripts).

use comfy_table::{Table, presets};
use proto::v1::{DeployState, EnvCheck, FleetStatusRequest, Health};
use serde::Serialize;

use crate::client::Clients;
use crate::error::{Result, from_status};

#[derive(Serialize)]
pub struct StatusRow {
    pub host: String,
    pub app: String,
    pub environment: String,
    pub desired: String,
    pub running: String,
    pub running_digest: String,
    pub state: String,
    pub health: String,
    pub health_reason: String,
    pub env_check: String,
    pub missing_env: Vec<String>,
    pub failed_version: String,
    pub last_error: String,
    pub connected: bool,
    pub last_seen: i64,
    /// ok, updating, drifted, offline, failed
    pub status: String,
    pub offline: bool,
    pub drift: Vec<String>,
    pub drift_count: u32,
    pub drift_acked: bool,
    pub healthy_since: i64,
}

/// `--json` output: pretty JSON of the rows on stdout.
pub fn print_json<T: Serialize>(rows: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(rows)
        .map_err(|e| crate::error::CtlError::Failed(format!("encode json: {e}")))?;
    say!("{text}");
    Ok(())
}

pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING);
    t.set_header(header.to_vec());
    t
}

pub fn ago(ts: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let d = (now - ts).max(0);
    match d {
        _ if ts == 0 => "never".into(),
        0..=59 => format!("{d}s ago"),
        60..=3599 => format!("{}m ago", d / 60),
        3600..=86399 => format!("{}h ago", d / 3600),
        _ => format!("{}d ago", d / 86400),
    }
}

fn state_name(v: i32) -> String {
    match DeployState::try_from(v).unwrap_or(DeployState::Unspecified) {
        DeployState::Unspecified => "unknown",
        DeployState::Idle => "idle",
        DeployState::Fetching => "fetching",
        DeployState::Installing => "installing",
        DeployState::Activating => "activating",
        DeployState::Healthy => "healthy",
        DeployState::RolledBack => "rolled_back",
        DeployState::Failed => "failed",
        DeployState::Unhealthy => "unhealthy",
    }
    .into()
}

fn health_name(v: i32) -> String {
    match Health::try_from(v).unwrap_or(Health::Unspecified) {
        Health::Healthy => "healthy",
        Health::Unhealthy => "unhealthy",
        Health::Unknown | Health::Unspecified => "unknown",
    }
    .into()
}

fn env_name(v: i32, missing: &[String]) -> String {
    match EnvCheck::try_from(v).unwrap_or(EnvCheck::Unspecified) {
        EnvCheck::Ok => "ok".into(),
        EnvCheck::Missing => format!("missing {}", missing.join(",")),
        EnvCheck::Unknown | EnvCheck::Unspecified => "unknown".into(),
    }
}

#[derive(Serialize)]
pub struct AppJson {
    pub app: String,
    pub environment: String,
    pub desired: String,
    pub hosts: u32,
    pub at_desired: u32,
    pub updating: u32,
    pub failed: u32,
    pub drifted: u32,
    pub offline: u32,
    pub status: String,
    pub rollout: Option<RolloutBrief>,
}

#[derive(Serialize)]
pub struct RolloutBrief {
    pub id: u64,
    pub state: String,
    pub step: u32,
    pub steps: u32,
    pub to_version: String,
    pub reason: String,
}

#[derive(Serialize)]
pub struct EnvJson {
    pub environment: String,
    pub status: String,
    pub apps: u32,
    pub hosts: u32,
}

#[derive(Serialize)]
pub struct FleetJson {
    pub environments: Vec<EnvJson>,
    pub apps: Vec<AppJson>,
    pub hosts: Vec<StatusRow>,
}

fn host_row(s: proto::v1::HostAppStatus) -> StatusRow {
    StatusRow {
        env_check: env_name(s.env_check, &s.missing_env),
        state: state_name(s.state),
        health: health_name(s.health),
        host: s.host,
        app: s.app,
        environment: s.environment,
        desired: s.desired_version,
        running: s.running_version,
        running_digest: s.running_digest,
        health_reason: s.health_reason,
        missing_env: s.missing_env,
        failed_version: s.failed_version,
        last_error: s.last_error,
        connected: s.connected,
        last_seen: s.last_seen,
        status: s.status,
        offline: s.offline,
        drift: s.drift,
        drift_count: s.drift_count,
        drift_acked: s.drift_acked,
        healthy_since: s.healthy_since,
    }
}

fn rollout_note(r: &Option<RolloutBrief>) -> String {
    match r {
        None => "-".into(),
        Some(r) if r.state == "running" || r.state == "paused" => {
            format!("{} {} {}/{}", r.to_version, r.state, r.step + 1, r.steps)
        }
        Some(r) => format!("{} {}", r.to_version, r.state),
    }
}

pub async fn status(
    c: &mut Clients,
    tenant: String,
    app: Option<String>,
    env: Option<String>,
    per_host: bool,
    json: bool,
) -> Result<()> {
    let filter = FleetStatusRequest {
        tenant,
        app: app.unwrap_or_default(),
        environment: env.unwrap_or_default(),
    };
    let r = c
        .deployments
        .fleet_status(filter.clone())
        .await
        .map_err(|s| from_status(&c.url, s))?
        .into_inner();
    let fleet = FleetJson {
        environments: r
            .environments
            .into_iter()
            .map(|e| EnvJson {
                environment: e.environment,
                status: e.status,
                apps: e.apps,
                hosts: e.hosts,
            })
            .collect(),
        apps: r
            .apps
            .into_iter()
            .map(|a| AppJson {
                rollout: a.rollout.map(|r| RolloutBrief {
                    id: r.id,
                    state: r.state,
                    step: r.step,
                    steps: r.steps,
                    to_version: r.to_version,
                    reason: r.reason,
                }),
                app: a.app,
                environment: a.environment,
                desired: a.desired_version,
                hosts: a.hosts,
                at_desired: a.at_desired,
                updating: a.updating,
                failed: a.failed,
                drifted: a.drifted,
                offline: a.offline,
                status: a.status,
            })
            .collect(),
        hosts: r.rows.into_iter().map(host_row).collect(),
    };
    if json {
        return print_json(&fleet);
    }
    if fleet.hosts.is_empty() {
        say!("no hosts have reported yet");
        return Ok(());
    }
    let mut t = table(&["ENV", "STATUS", "APPS", "HOSTS"]);
    for e in &fleet.environments {
        t.add_row(vec![
            e.environment.clone(),
            e.status.clone(),
            e.apps.to_string(),
            e.hosts.to_string(),
        ]);
    }
    say!("{t}\n");
    let mut t = table(&[
        "APP", "ENV", "DESIRED", "HOSTS", "OK", "UPDATING", "FAILED", "DRIFTED", "OFFLINE",
        "STATUS", "ROLLOUT",
    ]);
    for a in &fleet.apps {
        t.add_row(vec![
            a.app.clone(),
            a.environment.clone(),
            if a.desired.is_empty() {
                "-".into()
            } else {
                a.desired.clone()
            },
            a.hosts.to_string(),
            a.at_desired.to_string(),
            a.updating.to_string(),
            a.failed.to_string(),
            a.drifted.to_string(),
            a.offline.to_string(),
            a.status.clone(),
            rollout_note(&a.rollout),
        ]);
    }
    say!("{t}");
    // Why the latest rollout of an app did not succeed.
    for a in &fleet.apps {
        if let Some(r) = a.rollout.as_ref().filter(|r| {
            matches!(r.state.as_str(), "halted" | "reverted" | "aborted") && !r.reason.is_empty()
        }) {
            say!(
                "  {} {}: rollout {} of {} {}: {}",
                a.app,
                a.environment,
                r.id,
                r.to_version,
                r.state,
                r.reason
            );
        }
    }
    // Hosts a selector leaves out still run what they ran: say so.
    let placements = c
        .deployments
        .list_apps(proto::v1::ListAppsRequest {
            tenant: filter.tenant,
            app: filter.app,
            environment: filter.environment,
        })
        .await
        .map_err(|s| from_status(&c.url, s))?
        .into_inner();
    for p in placements.apps.iter().filter(|p| !p.excluded.is_empty()) {
        say!(
            "  {} {}: {} outside its selector keep what they run and get no releases (slipctl apps)",
            p.app,
            p.environment,
            p.excluded.join(", ")
        );
    }
    if per_host {
        say!();
        host_table(fleet.hosts);
    } else {
        // The hosts that make a rollup less than ok, one line each.
        for h in fleet
            .hosts
            .iter()
            .filter(|h| h.status != "ok" && h.status != "updating")
        {
            say!(
                "  {} {} ({}): {}",
                h.host,
                h.app,
                h.environment,
                host_note(h)
            );
        }
    }
    Ok(())
}

fn host_note(h: &StatusRow) -> String {
    let drift = || {
        let mut d = h.drift.join(", ");
        if h.drift_count as usize > h.drift.len() {
            d.push_str(&format!(
                " (+{} more)",
                h.drift_count as usize - h.drift.len()
            ));
        }
        d
    };
    match h.status.as_str() {
        "drifted" => format!("drift: {}", drift()),
        "offline" => format!("offline, last seen {}", ago(h.last_seen)),
        _ if !h.last_error.is_empty() => h.last_error.clone(),
        _ if h.drift_count > 0 => format!("drift (acknowledged): {}", drift()),
        _ => h.health_reason.clone(),
    }
}

fn host_table(rows: Vec<StatusRow>) {
    let mut t = table(&[
        "HOST",
        "APP",
        "ENV",
        "DESIRED",
        "RUNNING",
        "STATUS",
        "STATE",
        "HEALTH",
        "ENV CHECK",
        "LAST SEEN",
        "NOTE",
    ]);
    for r in rows {
        let seen = if r.offline {
            format!("offline, {}", ago(r.last_seen))
        } else {
            ago(r.last_seen)
        };
        let note = host_note(&r);
        let dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
        t.add_row(vec![
            r.host,
            r.app,
            r.environment,
            dash(r.desired),
            dash(r.running),
            r.status,
            r.state,
            r.health,
            r.env_check,
            seen,
            note,
        ]);
    }
    say!("{t}");
}

#[derive(Serialize)]
struct EnvPolicyJson {
    name: String,
    production: bool,
    soak_secs: u32,
    canary: u32,
    batch: String,
    batch_timeout_secs: u32,
    pause_secs: u32,
    max_failures: String,
    auto_revert: bool,
}

fn env_json(e: proto::v1::Environment) -> EnvPolicyJson {
    let s = e.strategy.unwrap_or_default();
    EnvPolicyJson {
        name: e.name,
        production: e.production,
        soak_secs: e.soak_secs,
        canary: s.canary.unwrap_or(0),
        batch: s.batch,
        batch_timeout_secs: s.batch_timeout_secs.unwrap_or(0),
        pause_secs: s.pause_secs.unwrap_or(0),
        max_failures: s.max_failures,
        auto_revert: s.auto_revert.unwrap_or(false),
    }
}

fn print_envs(rows: Vec<EnvPolicyJson>) {
    let mut t = table(&[
        "ENV",
        "PRODUCTION",
        "SOAK",
        "CANARY",
        "BATCH",
        "BATCH TIMEOUT",
        "PAUSE",
        "MAX FAILURES",
        "AUTO REVERT",
    ]);
    for e in rows {
        t.add_row(vec![
            e.name,
            if e.production { "yes" } else { "no" }.into(),
            format!("{}s", e.soak_secs),
            e.canary.to_string(),
            e.batch,
            format!("{}s", e.batch_timeout_secs),
            format!("{}s", e.pause_secs),
            e.max_failures,
            if e.auto_revert { "on" } else { "off" }.into(),
        ]);
    }
    say!("{t}");
}

pub async fn envs(c: &mut Clients, tenant: String, json: bool) -> Result<()> {
    let rows: Vec<EnvPolicyJson> = c
        .deployments
        .list_environments(proto::v1::ListEnvironmentsRequest { tenant })
        .await
        .map_err(|s| from_status(&c.url, s))?
        .into_inner()
        .environments
        .into_iter()
        .map(env_json)
        .collect();
    if json {
        return print_json(&rows);
    }
    print_envs(rows);
    Ok(())
}

/// `envs set` flags besides the strategy.
pub struct EnvChange {
    pub create: bool,
    pub production: Option<bool>,
    pub soak: Option<u32>,
}

pub async fn set_env(
    c: &mut Clients,
    tenant: String,
    name: String,
    change: EnvChange,
    strategy: &crate::cli::StrategyArgs,
) -> Result<()> {
    let e = c
        .admin
        .set_environment(proto::v1::SetEnvironmentRequest {
            tenant,
            name,
            production: change.production,
            soak_secs: change.soak,
            strategy: crate::rollout::strategy(strategy),
            create: change.create,
        })
        .await
        .map_err(|s| from_status(&c.url, s))?
        .into_inner();
    print_envs(vec![env_json(e)]);
    Ok(())
}
