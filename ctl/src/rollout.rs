//! Rollouts from the command line: the live view that follows a rollout
//! until it ends (`--wait` turns its outcome into the exit code), pause /
//! resume / abort, strategies from flags, and drift acknowledgements.

use std::collections::BTreeMap;
use std::time::Duration;

use proto::v1::{AckDriftRequest, RolloutInfo, RolloutRequest};
use serde::Serialize;

use crate::cli::{DriftCommand, RolloutCommand, StrategyArgs, Wait};
use crate::client::Clients;
use crate::error::{CtlError, Result, from_status};

const POLL: Duration = Duration::from_millis(500);

pub fn strategy(a: &StrategyArgs) -> Option<proto::v1::Strategy> {
    let s = proto::v1::Strategy {
        canary: a.canary,
        batch: a.batch.clone().unwrap_or_default(),
        batch_timeout_secs: a.batch_timeout,
        pause_secs: a.pause,
        max_failures: a.max_failures.clone().unwrap_or_default(),
        auto_revert: a.auto_revert,
    };
    (s != proto::v1::Strategy::default()).then_some(s)
}

fn terminal(state: &str) -> bool {
    !matches!(state, "running" | "paused")
}

#[derive(Serialize)]
struct HostJson<'a> {
    host: &'a str,
    step: u32,
    admitted: bool,
    outcome: &'a str,
    reason: &'a str,
}

#[derive(Serialize)]
struct RolloutJson<'a> {
    id: u64,
    app: &'a str,
    environment: &'a str,
    from_version: &'a str,
    to_version: &'a str,
    release_digest: &'a str,
    state: &'a str,
    step: u32,
    steps: u32,
    reason: &'a str,
    created_by: &'a str,
    hosts: Vec<HostJson<'a>>,
}

fn to_json(r: &RolloutInfo) -> RolloutJson<'_> {
    RolloutJson {
        id: r.id,
        app: &r.app,
        environment: &r.environment,
        from_version: &r.from_version,
        to_version: &r.to_version,
        release_digest: &r.manifest_digest,
        state: &r.state,
        step: r.step,
        steps: r.steps,
        reason: &r.reason,
        created_by: &r.created_by,
        hosts: r
            .hosts
            .iter()
            .map(|h| HostJson {
                host: &h.host,
                step: h.step,
                admitted: h.admitted,
                outcome: &h.outcome,
                reason: &h.reason,
            })
            .collect(),
    }
}

fn step_name(step: u32, canary: bool) -> String {
    match (step, canary) {
        (0, true) => "canary".into(),
        (s, true) => format!("batch {s}"),
        (s, false) => format!("batch {}", s + 1),
    }
}

fn headline(r: &RolloutInfo) -> String {
    let from = if r.from_version.is_empty() {
        "(none)"
    } else {
        &r.from_version
    };
    format!(
        "rollout {} of {} in {}: {from} -> {} — {}{}",
        r.id,
        r.app,
        r.environment,
        r.to_version,
        r.state,
        if r.reason.is_empty() {
            String::new()
        } else {
            format!(": {}", r.reason)
        }
    )
}

/// Prints a rollout once: headline, then its hosts step by step.
fn print_once(r: &RolloutInfo) {
    say!("{}", headline(r));
    let canary = r.strategy.as_ref().and_then(|s| s.canary).unwrap_or(0) > 0;
    let mut steps: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for h in &r.hosts {
        let what = if !h.admitted {
            "waiting".to_string()
        } else if h.reason.is_empty() {
            h.outcome.clone()
        } else {
            format!("{} ({})", h.outcome, h.reason)
        };
        steps
            .entry(h.step)
            .or_default()
            .push(format!("{}: {what}", h.host));
    }
    for (step, hosts) in steps {
        say!("  {}: {}", step_name(step, canary), hosts.join(", "));
    }
}

/// Follows the latest rollout of app@env (or `id`) live, printing what
/// changes, until it ends. With `wait`, anything but success is an error
/// naming why; `timeout` bounds the wait.
pub async fn follow(
    c: &mut Clients,
    tenant: &str,
    app: &str,
    env: &str,
    id: Option<u64>,
    wait: Option<Duration>,
) -> Result<()> {
    let deadline = wait.map(|t| tokio::time::Instant::now() + t);
    let mut seen_state = String::new();
    let mut seen_hosts: BTreeMap<String, (bool, String)> = BTreeMap::new();
    loop {
        let r = get(c, tenant, app, env).await?;
        if let Some(id) = id
            && r.id != id
        {
            let msg = format!(
                "rollout {id} was superseded by rollout {} ({})",
                r.id, r.to_version
            );
            return finish(msg, wait.is_some());
        }
        let state = format!("{}|{}|{}", r.state, r.step, r.reason);
        if state != seen_state {
            seen_state = state;
            say!("{}", headline(&r));
            if !terminal(&r.state) && r.steps > 0 {
                let canary = r.strategy.as_ref().and_then(|s| s.canary).unwrap_or(0) > 0;
                say!(
                    "  step {}/{} ({})",
                    r.step + 1,
                    r.steps,
                    step_name(r.step, canary)
                );
            }
        }
        for h in &r.hosts {
            let now = (h.admitted, h.outcome.clone());
            if seen_hosts.get(&h.host) != Some(&now) && h.admitted {
                match h.outcome.as_str() {
                    "pending" => say!("  {}: updating to {}", h.host, r.to_version),
                    "healthy" => say!("  {}: {} healthy", h.host, r.to_version),
                    "offline" => say!("  {}: offline; converges when back", h.host),
                    other if h.reason.is_empty() => say!("  {}: {other}", h.host),
                    other => say!("  {}: {other}: {}", h.host, h.reason),
                }
            }
            seen_hosts.insert(h.host.clone(), now);
        }
        if terminal(&r.state) {
            if r.hosts.is_empty() && r.state == "succeeded" {
                let msg =
                    format!("no host of {env} runs {app} yet; hosts converge when they connect");
                return finish(msg, wait.is_some());
            }
            if r.state == "succeeded" || wait.is_none() {
                return Ok(());
            }
            return Err(CtlError::Failed(format!(
                "rollout {} of {} {} in {} {}: {}",
                r.id, r.app, r.to_version, r.environment, r.state, r.reason
            )));
        }
        if let Some(d) = deadline
            && tokio::time::Instant::now() >= d
        {
            let waiting: Vec<&str> = r
                .hosts
                .iter()
                .filter(|h| h.outcome == "pending")
                .map(|h| h.host.as_str())
                .collect();
            return Err(CtlError::Failed(format!(
                "timed out; rollout {} is {} at step {}/{} (waiting for: {})",
                r.id,
                r.state,
                r.step + 1,
                r.steps,
                if waiting.is_empty() {
                    "the next step".to_string()
                } else {
                    waiting.join(", ")
                }
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Ends following with `msg`: an error when waiting (CI), a note otherwise.
fn finish(msg: String, waiting: bool) -> Result<()> {
    if waiting {
        return Err(CtlError::Failed(msg));
    }
    say!("  {msg}");
    Ok(())
}

async fn get(c: &mut Clients, tenant: &str, app: &str, env: &str) -> Result<RolloutInfo> {
    Ok(c.deployments
        .rollout_status(RolloutRequest {
            tenant: tenant.into(),
            app: app.into(),
            environment: env.into(),
        })
        .await
        .map_err(|s| from_status(&c.url, s))?
        .into_inner())
}

pub async fn rollout(c: &mut Clients, tenant: String, cmd: RolloutCommand) -> Result<()> {
    let (app, env) = match &cmd {
        RolloutCommand::Status { app, env, .. }
        | RolloutCommand::Pause { app, env }
        | RolloutCommand::Resume { app, env }
        | RolloutCommand::Abort { app, env } => (app.clone(), env.clone()),
    };
    let req = RolloutRequest {
        tenant: tenant.clone(),
        app: app.clone(),
        environment: env.clone(),
    };
    let url = c.url.clone();
    let r = match cmd {
        RolloutCommand::Status {
            once, json, wait, ..
        } => {
            if json {
                return crate::status::print_json(&to_json(&get(c, &tenant, &app, &env).await?));
            }
            if once {
                print_once(&get(c, &tenant, &app, &env).await?);
                return Ok(());
            }
            let timeout = wait.wait.then(|| Duration::from_secs(wait.timeout));
            return follow(c, &tenant, &app, &env, None, timeout).await;
        }
        RolloutCommand::Pause { .. } => c.deployments.pause_rollout(req).await,
        RolloutCommand::Resume { .. } => c.deployments.resume_rollout(req).await,
        RolloutCommand::Abort { .. } => c.deployments.abort_rollout(req).await,
    }
    .map_err(|s| from_status(&url, s))?
    .into_inner();
    print_once(&r);
    Ok(())
}

/// `--wait` after deploy, promote, rollback or retry: follow the rollout it started.
pub async fn follow_change(
    c: &mut Clients,
    tenant: &str,
    r: &proto::v1::DeployResponse,
    wait: Wait,
) -> Result<()> {
    if !wait.wait {
        return Ok(());
    }
    follow(
        c,
        tenant,
        &r.app,
        &r.environment,
        Some(r.rollout_id),
        Some(Duration::from_secs(wait.timeout)),
    )
    .await
}

pub async fn drift(c: &mut Clients, tenant: String, cmd: DriftCommand) -> Result<()> {
    let DriftCommand::Ack { app, env, host } = cmd;
    let r = c
        .deployments
        .ack_drift(AckDriftRequest {
            tenant,
            app: app.clone(),
            environment: env.clone(),
            host: host.unwrap_or_default(),
        })
        .await
        .map_err(|s| from_status(&c.url, s))?
        .into_inner();
    say!(
        "drift of {app} in {env} acknowledged on {}; it no longer blocks promotion until it changes",
        r.hosts.join(", ")
    );
    Ok(())
}
