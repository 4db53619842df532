//! `slipctl status`: the fleet, rolled up per environment and app, with the
//! hosts that make a rollup less than ok (`--hosts`: every host).

use proto::v1::{
    AppEnvSummary, DeployState, EnvCheck, FleetStatusRequest, Health, HostAppStatus,
    ListAppsRequest, RolloutState,
};
use serde::Serialize;

use super::rollout::{as_state_word, state_word, terminal};
use crate::cli::StatusArgs;
use crate::client::Clients;
use crate::error::{Result, from_status};
use crate::output::{Format, Table, ago, as_rfc3339, dash, escape, print_json};

#[derive(Serialize)]
struct StatusRow {
    host: String,
    app: String,
    environment: String,
    desired: String,
    running: String,
    running_digest: String,
    state: String,
    health: String,
    health_reason: String,
    env_check: String,
    missing_env: Vec<String>,
    failed_version: String,
    last_error: String,
    connected: bool,
    #[serde(serialize_with = "as_rfc3339")]
    last_seen: i64,
    /// ok, updating, drifted, offline, failed
    status: String,
    offline: bool,
    drift: Vec<String>,
    drift_count: u32,
    drift_acked: bool,
    #[serde(serialize_with = "as_rfc3339")]
    healthy_since: i64,
}

#[derive(Serialize)]
struct AppJson {
    app: String,
    environment: String,
    desired: String,
    hosts: u32,
    at_desired: u32,
    updating: u32,
    failed: u32,
    drifted: u32,
    offline: u32,
    status: String,
    rollout: Option<RolloutBrief>,
}

#[derive(Serialize)]
struct RolloutBrief {
    id: u64,
    #[serde(serialize_with = "as_state_word")]
    state: RolloutState,
    step: u32,
    steps: u32,
    to_version: String,
    reason: String,
}

#[derive(Serialize)]
struct EnvJson {
    environment: String,
    status: String,
    apps: u32,
    hosts: u32,
}

#[derive(Serialize)]
struct FleetJson {
    environments: Vec<EnvJson>,
    apps: Vec<AppJson>,
    hosts: Vec<StatusRow>,
}

pub async fn run(a: StatusArgs, c: &mut Clients, fmt: Format) -> Result<()> {
    let filter = FleetStatusRequest {
        tenant: c.tenant.clone(),
        app: a.app.unwrap_or_default(),
        environment: a.env.unwrap_or_default(),
    };
    let r = c.deployments.fleet_status(filter.clone()).await;
    let r = r.map_err(|s| from_status(&c.url, s))?.into_inner();
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
        apps: r.apps.into_iter().map(app_json).collect(),
        hosts: r.rows.into_iter().map(host_row).collect(),
    };
    if fmt.is_json() {
        return print_json(&fleet);
    }
    if fleet.hosts.is_empty() {
        say!("no hosts have reported yet");
        return Ok(());
    }
    print_rollups(&fleet);
    print_excluded(c, filter).await?;
    if a.hosts {
        say!();
        host_table(fleet.hosts);
    } else {
        // The hosts that make a rollup less than ok, one line each.
        for h in fleet
            .hosts
            .iter()
            .filter(|h| h.status != "ok" && h.status != "updating")
        {
            let line = format!("{} {} ({}): {}", h.host, h.app, h.environment, host_note(h));
            say!("  {}", escape(&line));
        }
    }
    Ok(())
}

/// The environment and app tables, and why an app's latest rollout did not succeed.
fn print_rollups(fleet: &FleetJson) {
    let mut t = Table::new(&["ENV", "STATUS", "APPS", "HOSTS"]);
    for e in &fleet.environments {
        t.row([
            e.environment.clone(),
            e.status.clone(),
            e.apps.to_string(),
            e.hosts.to_string(),
        ]);
    }
    t.print();
    say!();
    let mut t = Table::new(&[
        "APP", "ENV", "DESIRED", "HOSTS", "OK", "UPDATING", "FAILED", "DRIFTED", "OFFLINE",
        "STATUS", "ROLLOUT",
    ]);
    for a in &fleet.apps {
        t.row([
            a.app.clone(),
            a.environment.clone(),
            dash(&a.desired),
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
    t.print();
    for a in &fleet.apps {
        if let Some(r) = a.rollout.as_ref().filter(|r| {
            matches!(
                r.state,
                RolloutState::Halted | RolloutState::Reverted | RolloutState::Aborted
            ) && !r.reason.is_empty()
        }) {
            let line = format!(
                "{} {}: rollout {} of {} {}: {}",
                a.app,
                a.environment,
                r.id,
                r.to_version,
                state_word(r.state),
                r.reason
            );
            say!("  {}", escape(&line));
        }
    }
}

/// Hosts a selector leaves out still run what they ran: say so.
async fn print_excluded(c: &mut Clients, filter: FleetStatusRequest) -> Result<()> {
    let req = ListAppsRequest {
        tenant: filter.tenant,
        app: filter.app,
        environment: filter.environment,
    };
    let r = c.deployments.list_apps(req).await;
    let placements = r.map_err(|s| from_status(&c.url, s))?.into_inner();
    for p in placements.apps.iter().filter(|p| !p.excluded.is_empty()) {
        let line = format!(
            "{} {}: {} outside its selector keep what they run and get no releases (slipctl apps)",
            p.app,
            p.environment,
            p.excluded.join(", ")
        );
        say!("  {}", escape(&line));
    }
    Ok(())
}

fn app_json(a: AppEnvSummary) -> AppJson {
    AppJson {
        rollout: a.rollout.map(|r| RolloutBrief {
            id: r.id,
            state: r.state(),
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
    }
}

fn host_row(s: HostAppStatus) -> StatusRow {
    StatusRow {
        env_check: env_check_name(s.env_check, &s.missing_env),
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

pub(crate) fn state_name(v: i32) -> String {
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

pub(crate) fn health_name(v: i32) -> String {
    match Health::try_from(v).unwrap_or(Health::Unspecified) {
        Health::Healthy => "healthy",
        Health::Unhealthy => "unhealthy",
        Health::Unknown | Health::Unspecified => "unknown",
    }
    .into()
}

fn env_check_name(v: i32, missing: &[String]) -> String {
    match EnvCheck::try_from(v).unwrap_or(EnvCheck::Unspecified) {
        EnvCheck::Ok => "ok".into(),
        EnvCheck::Missing => format!("missing {}", missing.join(",")),
        EnvCheck::Unknown | EnvCheck::Unspecified => "unknown".into(),
    }
}

fn rollout_note(r: &Option<RolloutBrief>) -> String {
    match r {
        None => "-".into(),
        Some(r) if !terminal(r.state) => {
            let state = state_word(r.state);
            format!("{} {state} {}/{}", r.to_version, r.step + 1, r.steps)
        }
        Some(r) => format!("{} {}", r.to_version, state_word(r.state)),
    }
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
    let mut t = Table::new(&[
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
        t.row([
            r.host,
            r.app,
            r.environment,
            dash(&r.desired),
            dash(&r.running),
            r.status,
            r.state,
            r.health,
            r.env_check,
            seen,
            note,
        ]);
    }
    t.print();
}
