//! `slipctl deploy | promote | rollback | retry`: change what an environment
//! should run, print the rollout that starts (its id and generation), and with
//! `--wait` follow it to its end.

use proto::v1::{DeployRequest, DeployResponse, PromoteRequest, RetryRequest, RollbackRequest};
use serde::Serialize;

use super::keys::rollback_authorization;
use super::rollout::follow_change;
use crate::cli::{DeployArgs, PromoteArgs, RetryArgs, RollbackArgs, Wait};
use crate::client::Clients;
use crate::error::{Result, from_status};
use crate::output::{Format, escape, print_json};

pub async fn deploy(a: DeployArgs, c: &mut Clients, fmt: Format) -> Result<()> {
    let (authorization, rollback_terms) = match &a.sign {
        Some(key) => rollback_authorization(c, &a.app, &a.env, &a.version, key).await?,
        None => (Vec::new(), None),
    };
    let req = DeployRequest {
        tenant: c.tenant.clone(),
        strategy: a.strategy.to_proto(),
        app: a.app,
        version: a.version,
        environment: a.env,
        authorization,
        rollback_terms,
    };
    let r = c.deployments.deploy(req).await;
    let r = r.map_err(|s| from_status(&c.url, s))?.into_inner();
    report(c, "deploy", &r, None, a.wait, fmt).await
}

pub async fn promote(a: PromoteArgs, c: &mut Clients, fmt: Format) -> Result<()> {
    let req = PromoteRequest {
        tenant: c.tenant.clone(),
        strategy: a.strategy.to_proto(),
        app: a.app,
        from_environment: a.from.clone(),
        to_environment: a.to,
        force: a.force,
    };
    let r = c.deployments.promote(req).await;
    let r = r.map_err(|s| from_status(&c.url, s))?.into_inner();
    report(c, "promote", &r, Some(&a.from), a.wait, fmt).await
}

pub async fn rollback(a: RollbackArgs, c: &mut Clients, fmt: Format) -> Result<()> {
    let to = a.to.unwrap_or_default();
    let (authorization, rollback_terms) = match &a.sign {
        Some(key) => rollback_authorization(c, &a.app, &a.env, &to, key).await?,
        None => (Vec::new(), None),
    };
    let req = RollbackRequest {
        tenant: c.tenant.clone(),
        app: a.app,
        environment: a.env,
        to_version: to,
        authorization,
        rollback_terms,
    };
    let r = c.deployments.rollback(req).await;
    let r = r.map_err(|s| from_status(&c.url, s))?.into_inner();
    report(c, "rollback", &r, None, a.wait, fmt).await
}

pub async fn retry(a: RetryArgs, c: &mut Clients, fmt: Format) -> Result<()> {
    let req = RetryRequest {
        tenant: c.tenant.clone(),
        app: a.app,
        environment: a.env,
    };
    let r = c.deployments.retry(req).await;
    let r = r.map_err(|s| from_status(&c.url, s))?.into_inner();
    report(c, "retry", &r, None, a.wait, fmt).await
}

/// `-o json` of a change: what a CI job keeps (the rollout id, the generation).
#[derive(Serialize)]
struct ChangeJson<'a> {
    action: &'a str,
    app: &'a str,
    environment: &'a str,
    previous_version: Option<&'a str>,
    version: &'a str,
    release_digest: &'a str,
    generation: u64,
    rollout_id: u64,
    planned_hosts: u32,
    connected_hosts: u32,
}

/// Prints the change, then follows its rollout when `--wait` asks.
async fn report(
    c: &mut Clients,
    action: &str,
    r: &DeployResponse,
    from: Option<&str>,
    wait: Wait,
    fmt: Format,
) -> Result<()> {
    if fmt.is_json() {
        print_json(&ChangeJson {
            action,
            app: &r.app,
            environment: &r.environment,
            previous_version: Some(r.previous_version.as_str()).filter(|v| !v.is_empty()),
            version: &r.version,
            release_digest: &r.manifest_digest,
            generation: r.generation,
            rollout_id: r.rollout_id,
            planned_hosts: r.planned_hosts,
            connected_hosts: r.connected_hosts,
        })?;
    } else {
        print_change(action, r, from);
    }
    follow_change(c, r, wait, fmt).await
}

fn print_change(action: &str, r: &DeployResponse, from: Option<&str>) {
    let prev = if r.previous_version.is_empty() {
        "(none)"
    } else {
        r.previous_version.as_str()
    };
    let (app, env) = (escape(&r.app), escape(&r.environment));
    say!(
        "{action}: {app} in {env}: {} -> {} (generation {})",
        escape(prev),
        escape(&r.version),
        r.generation
    );
    say!("  release {}", escape(&r.manifest_digest));
    if let Some(from) = from {
        say!("  same artifact as {}", escape(from));
    }
    if r.connected_hosts == 0 {
        say!("  no host of {env} is connected right now; hosts converge when they connect");
    } else {
        say!(
            "  rollout {} over {} host(s) ({} connected); follow with `slipctl rollout status {app} --env {env}`",
            r.rollout_id,
            r.planned_hosts,
            r.connected_hosts,
        );
    }
}
