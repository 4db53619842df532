//! `slipctl status`: the fleet table (and `--json` for scripts).

use comfy_table::{Table, presets};
use proto::v1::{DeployState, EnvCheck, FleetStatusRequest, Health};
use serde::Serialize;

use crate::client::Clients;
use crate::error::{CtlError, Result, from_status};

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
}

/// `--json` output: pretty JSON of the rows on stdout.
pub fn print_json<T: Serialize>(rows: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(rows)
        .map_err(|e| crate::error::CtlError::Failed(format!("encode json: {e}")))?;
    println!("{text}");
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

pub async fn status(
    c: &mut Clients,
    tenant: String,
    app: Option<String>,
    env: Option<String>,
    json: bool,
) -> Result<()> {
    let r = c
        .deployments
        .fleet_status(FleetStatusRequest {
            tenant,
            app: app.unwrap_or_default(),
            environment: env.unwrap_or_default(),
        })
        .await
        .map_err(|s| from_status(&c.url, s))?
        .into_inner();
    let rows: Vec<StatusRow> = r
        .rows
        .into_iter()
        .map(|s| StatusRow {
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
        })
        .collect();
    if json {
        return print_json(&rows);
    }
    if rows.is_empty() {
        println!("no hosts have reported yet");
        return Ok(());
    }
    let mut t = table(&[
        "HOST",
        "APP",
        "ENV",
        "DESIRED",
        "RUNNING",
        "STATE",
        "HEALTH",
        "ENV CHECK",
        "LAST SEEN",
        "NOTE",
    ]);
    for r in rows {
        let seen = if r.connected {
            ago(r.last_seen)
        } else {
            format!("offline, {}", ago(r.last_seen))
        };
        let note = if !r.last_error.is_empty() {
            r.last_error
        } else {
            r.health_reason
        };
        let dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
        t.add_row(vec![
            r.host,
            r.app,
            r.environment,
            dash(r.desired),
            dash(r.running),
            r.state,
            r.health,
            r.env_check,
            seen,
            note,
        ]);
    }
    println!("{t}");
    Ok(())
}

/// Polls the fleet until every connected host of the environment runs the
/// release healthy (Ok) or has refused this generation of it (Err naming why).
pub async fn wait_for(
    c: &mut Clients,
    tenant: &str,
    r: &proto::v1::DeployResponse,
    timeout: std::time::Duration,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let rows = c
            .deployments
            .fleet_status(FleetStatusRequest {
                tenant: tenant.to_string(),
                app: r.app.clone(),
                environment: r.environment.clone(),
            })
            .await
            .map_err(|s| from_status(&c.url, s))?
            .into_inner()
            .rows;
        let connected: Vec<_> = rows.iter().filter(|h| h.connected).collect();
        let ok = |h: &&proto::v1::HostAppStatus| {
            h.running_digest == r.manifest_digest && h.health == Health::Healthy as i32
        };
        let refused = |h: &&proto::v1::HostAppStatus| {
            h.failed_version == r.version && h.generation >= r.generation
        };
        let pending: Vec<_> = connected.iter().filter(|h| !ok(h) && !refused(h)).collect();
        if !connected.is_empty() && pending.is_empty() {
            let failed: Vec<String> = connected
                .iter()
                .filter(|h| refused(h))
                .map(|h| format!("{}: {}", h.host, h.last_error))
                .collect();
            for h in connected.iter().filter(|h| ok(h)) {
                println!("  {}: {} healthy", h.host, r.version);
            }
            if !failed.is_empty() {
                return Err(CtlError::Failed(format!(
                    "{} {} was refused by {} host(s): {}",
                    r.app,
                    r.version,
                    failed.len(),
                    failed.join("; ")
                )));
            }
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let waiting: Vec<String> = if connected.is_empty() {
                vec![format!("no host of {} is connected", r.environment)]
            } else {
                pending
                    .iter()
                    .map(|h| format!("{} ({})", h.host, state_name(h.state)))
                    .collect()
            };
            return Err(CtlError::Failed(format!(
                "timed out after {}s waiting for {}",
                timeout.as_secs(),
                waiting.join(", ")
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}
