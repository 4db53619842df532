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
        dry_run: a.dry_run,
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
        dry_run: a.dry_run,
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
        dry_run: a.dry_run,
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
        dry_run: a.dry_run,
    };
    let r = c.deployments.retry(req).await;
    let r = r.map_err(|s| from_status(&c.url, s))?.into_inner();
    report(c, "retry", &r, None, a.wait, fmt).await
}

pub async fn migrate(a: RetryArgs, c: &mut Clients, fmt: Format) -> Result<()> {
    let req = RetryRequest {
        tenant: c.tenant.clone(),
        app: a.app,
        environment: a.env,
        dry_run: a.dry_run,
    };
    let r = c.deployments.migrate(req).await;
    let r = r.map_err(|s| from_status(&c.url, s))?.into_inner();
    report(c, "migrate", &r, None, a.wait, fmt).await
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
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    dry_run: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    plan: Option<PlanJson<'a>>,
}

/// A dry run's plan, for scripts.
#[derive(Serialize)]
struct PlanJson<'a> {
    steps: Vec<StepJson<'a>>,
    left_out: &'a [String],
    migrations: &'a str,
}

#[derive(Serialize)]
struct StepJson<'a> {
    step: u32,
    canary: bool,
    hosts: Vec<HostJson<'a>>,
}

#[derive(Serialize)]
struct HostJson<'a> {
    host: &'a str,
    connected: bool,
    running_version: Option<&'a str>,
}

fn plan_json(r: &DeployResponse) -> PlanJson<'_> {
    PlanJson {
        steps: r
            .plan
            .iter()
            .map(|s| StepJson {
                step: s.step + 1,
                canary: s.canary,
                hosts: s
                    .hosts
                    .iter()
                    .map(|h| HostJson {
                        host: &h.host,
                        connected: h.connected,
                        running_version: Some(h.running_version.as_str()).filter(|v| !v.is_empty()),
                    })
                    .collect(),
            })
            .collect(),
        left_out: &r.left_out,
        migrations: &r.migrations,
    }
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
            dry_run: r.dry_run,
            plan: r.dry_run.then(|| plan_json(r)),
        })?;
    } else if r.dry_run {
        print_plan(action, r, from);
    } else {
        print_change(action, r, from);
    }
    if r.dry_run {
        return Ok(());
    }
    follow_change(c, r, wait, fmt).await
}

/// The first lines of a change: what moves from what to what, the release.
/// Returns (app, env), escaped.
fn print_headline(
    action: &str,
    r: &DeployResponse,
    from: Option<&str>,
    tail: &str,
) -> (String, String) {
    let prev = if r.previous_version.is_empty() {
        "(none)"
    } else {
        r.previous_version.as_str()
    };
    let (app, env) = (escape(&r.app), escape(&r.environment));
    say!(
        "{action}: {app} in {env}: {} -> {}{tail}",
        escape(prev),
        escape(&r.version),
    );
    say!("  release {}", escape(&r.manifest_digest));
    if let Some(from) = from {
        say!("  same artifact as {}", escape(from));
    }
    (app, env)
}

/// A dry run: the change and the plan the controller would run.
fn print_plan(action: &str, r: &DeployResponse, from: Option<&str>) {
    let (app, env) = print_headline(&format!("{action} (dry run, nothing changed)"), r, from, "");
    if let Some(s) = &r.strategy {
        say!(
            "  strategy: canary {}, batches of {}, pause {}s, max failures {}, auto-revert {}",
            s.canary.unwrap_or(0),
            escape(&s.batch),
            s.pause_secs.unwrap_or(0),
            escape(&s.max_failures),
            if s.auto_revert.unwrap_or(false) {
                "on"
            } else {
                "off"
            },
        );
    }
    if r.plan.is_empty() {
        say!("  no host of {env} runs {app}: nothing would change until one does");
    }
    for s in &r.plan {
        let hosts: Vec<String> = s
            .hosts
            .iter()
            .map(|h| {
                format!(
                    "{} ({}, runs {})",
                    escape(&h.host),
                    if h.connected { "connected" } else { "offline" },
                    if h.running_version.is_empty() {
                        "nothing".to_string()
                    } else {
                        escape(&h.running_version)
                    }
                )
            })
            .collect();
        let what = if s.canary { " (canary)" } else { "" };
        say!("  step {}{what}: {}", s.step + 1, hosts.join(", "));
    }
    let held: Vec<String> = r
        .plan
        .iter()
        .skip(1)
        .flat_map(|s| s.hosts.iter().map(|h| escape(&h.host)))
        .collect();
    if !held.is_empty() {
        say!(
            "  held at what they run until their step: {}",
            held.join(", ")
        );
    }
    if !r.left_out.is_empty() {
        let left: Vec<String> = r.left_out.iter().map(|h| escape(h)).collect();
        say!("  left out by the app's selector: {}", left.join(", "));
    }
    match r.migrations.as_str() {
        "manual" => say!(
            "  migrations (manual): a host finding pending migrations refuses the release before anything stops, and the rollout waits for `slipctl migrate {app} --env {env}` by a promoter"
        ),
        _ => say!(
            "  migrations (auto): the hosts of the first step apply pending migrations before their flip, after their dry run passes; later steps find none pending"
        ),
    }
}

fn print_change(action: &str, r: &DeployResponse, from: Option<&str>) {
    let tail = format!(" (generation {})", r.generation);
    let (app, env) = print_headline(action, r, from, &tail);
    if r.migrations == "manual" {
        say!(
            "  migrations (manual): if the release has pending migrations, its first host refuses it before anything stops and the rollout waits for `slipctl migrate {app} --env {env}`"
        );
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
