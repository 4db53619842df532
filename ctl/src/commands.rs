//! Dispatch of slipctl's subcommands to the controller.

use proto::v1::{
    DeployRequest, DeployResponse, HistoryRequest, ListReleasesRequest, PromoteRequest,
    RetryRequest, RollbackRequest,
};
use serde::Serialize;

use crate::admin::{hosts, keys, rollback_authorization, tenants, tokens};
use crate::cli::{Cli, Command, EnvsCommand};
use crate::client::{Clients, connect};
use crate::error::{Result, from_status};
use crate::publish::{human_bytes, publish};
use crate::status::{ago, status};

pub async fn dispatch(cli: Cli) -> Result<()> {
    let tenant = cli.global.tenant.clone();
    if let Command::Keys { command } = cli.command {
        return keys(command);
    }
    let mut c = connect(&cli.global).await?;
    match cli.command {
        Command::Publish {
            dir,
            app,
            version,
            allow_dirty,
            sign,
        } => {
            publish(
                &mut c,
                &tenant,
                &dir,
                &app,
                &version,
                allow_dirty,
                sign.as_deref(),
            )
            .await
        }
        Command::Deploy {
            app,
            version,
            env,
            sign,
            strategy,
            wait,
        } => {
            let authorization = match sign {
                Some(key) => {
                    rollback_authorization(&mut c, &tenant, &app, &env, &version, &key).await?
                }
                None => Vec::new(),
            };
            let req = DeployRequest {
                tenant: tenant.clone(),
                app,
                version,
                environment: env,
                authorization,
                strategy: crate::rollout::strategy(&strategy),
            };
            let r = c
                .deployments
                .deploy(req)
                .await
                .map_err(|s| from_status(&c.url, s))?
                .into_inner();
            print_change("deploy", &r);
            crate::rollout::follow_change(&mut c, &tenant, &r, wait).await
        }
        Command::Promote {
            app,
            from,
            to,
            force,
            strategy,
            wait,
        } => {
            let req = PromoteRequest {
                tenant: tenant.clone(),
                app,
                from_environment: from.clone(),
                to_environment: to,
                force,
                strategy: crate::rollout::strategy(&strategy),
            };
            let r = c
                .deployments
                .promote(req)
                .await
                .map_err(|s| from_status(&c.url, s))?
                .into_inner();
            print_change("promote", &r);
            say!("  same artifact as {from}: {}", r.manifest_digest);
            crate::rollout::follow_change(&mut c, &tenant, &r, wait).await
        }
        Command::Rollback {
            app,
            env,
            to,
            sign,
            wait,
        } => {
            let to = to.unwrap_or_default();
            let authorization = match sign {
                Some(key) => rollback_authorization(&mut c, &tenant, &app, &env, &to, &key).await?,
                None => Vec::new(),
            };
            let req = RollbackRequest {
                tenant: tenant.clone(),
                app,
                environment: env,
                to_version: to,
                authorization,
            };
            let r = c
                .deployments
                .rollback(req)
                .await
                .map_err(|s| from_status(&c.url, s))?
                .into_inner();
            print_change("rollback", &r);
            crate::rollout::follow_change(&mut c, &tenant, &r, wait).await
        }
        Command::Retry { app, env, wait } => {
            let req = RetryRequest {
                tenant: tenant.clone(),
                app,
                environment: env,
            };
            let r = c
                .deployments
                .retry(req)
                .await
                .map_err(|s| from_status(&c.url, s))?
                .into_inner();
            print_change("retry", &r);
            crate::rollout::follow_change(&mut c, &tenant, &r, wait).await
        }
        Command::Releases { app, json } => releases(&mut c, tenant, app, json).await,
        Command::Status {
            app,
            env,
            hosts,
            json,
        } => status(&mut c, tenant, app, env, hosts, json).await,
        Command::Rollout { command } => crate::rollout::rollout(&mut c, tenant, command).await,
        Command::Drift { command } => crate::rollout::drift(&mut c, tenant, command).await,
        Command::Apps { command, env, json } => {
            crate::admin::apps(&mut c, tenant, command, env, json).await
        }
        Command::History { app, limit, json } => history(&mut c, tenant, app, limit, json).await,
        Command::Envs { command, json } => match command {
            None => crate::status::envs(&mut c, tenant, json).await,
            Some(EnvsCommand::Set {
                name,
                create,
                production,
                soak,
                strategy,
            }) => {
                let change = crate::status::EnvChange {
                    create,
                    production,
                    soak,
                };
                crate::status::set_env(&mut c, tenant, name, change, &strategy).await
            }
        },
        Command::Hosts {
            command,
            env,
            labels,
            purpose,
            criticality,
            offline,
            json,
        } => {
            let filter = crate::admin::HostFilter {
                env,
                labels,
                purpose,
                criticality,
                offline,
            };
            hosts(&mut c, tenant, command, filter, json).await
        }
        Command::Tokens { command } => tokens(&mut c, tenant, command).await,
        Command::Tenants { command } => tenants(&mut c, tenant, command).await,
        Command::Whoami => {
            let w = crate::admin::whoami(&mut c).await?;
            let t = w.token.unwrap_or_default();
            say!(
                "tenant {}, token {} ({}), roles: {}",
                w.tenant,
                t.name,
                t.id,
                t.roles.join(", ")
            );
            Ok(())
        }
        Command::Keys { .. } => unreachable!("handled before connecting"),
    }
}

fn print_change(what: &str, r: &DeployResponse) {
    let from = if r.previous_version.is_empty() {
        "(none)"
    } else {
        r.previous_version.as_str()
    };
    say!(
        "{what}: {} in {}: {from} -> {} (generation {})",
        r.app,
        r.environment,
        r.version,
        r.generation
    );
    say!("  release {}", r.manifest_digest);
    if r.connected_hosts == 0 {
        say!(
            "  no host of {} is connected right now; hosts converge when they connect",
            r.environment
        );
    } else {
        say!(
            "  rollout {} over {} host(s) ({} connected); follow with `slipctl rollout status {} --env {}`",
            r.rollout_id,
            r.planned_hosts,
            r.connected_hosts,
            r.app,
            r.environment
        );
    }
}

#[derive(Serialize)]
struct ReleaseJson {
    app: String,
    version: String,
    release_digest: String,
    blob_digest: String,
    blob_size: u64,
    entries: u32,
    git_commit: String,
    created_at: i64,
    counter: u64,
    signed_by: Vec<String>,
    desired_in: Vec<String>,
}

async fn releases(c: &mut Clients, tenant: String, app: String, json: bool) -> Result<()> {
    let r = c
        .releases
        .list_releases(ListReleasesRequest { tenant, app })
        .await
        .map_err(|s| from_status(&c.url, s))?
        .into_inner();
    let rows: Vec<ReleaseJson> = r
        .releases
        .into_iter()
        .map(|rel| ReleaseJson {
            desired_in: r
                .desired
                .iter()
                .filter(|d| d.version == rel.version)
                .map(|d| d.environment.clone())
                .collect(),
            app: rel.app,
            version: rel.version,
            release_digest: rel.manifest_digest,
            blob_digest: rel.blob_digest,
            blob_size: rel.blob_size,
            entries: rel.entries,
            git_commit: rel.git_commit,
            created_at: rel.created_at,
            counter: rel.counter,
            signed_by: rel.signed_by,
        })
        .collect();
    if json {
        return crate::status::print_json(&rows);
    }
    let mut t = crate::status::table(&[
        "VERSION",
        "RELEASE",
        "SIZE",
        "COMMIT",
        "PUBLISHED",
        "DESIRED IN",
    ]);
    for r in rows {
        t.add_row(vec![
            r.version,
            short(&r.release_digest),
            human_bytes(r.blob_size),
            r.git_commit.chars().take(12).collect(),
            ago(r.created_at),
            r.desired_in.join(","),
        ]);
    }
    say!("{t}");
    Ok(())
}

#[derive(Serialize)]
struct EventJson {
    at: i64,
    actor: String,
    action: String,
    app: String,
    environment: String,
    detail: String,
    outcome: String,
    peer: String,
}

async fn history(
    c: &mut Clients,
    tenant: String,
    app: Option<String>,
    limit: u32,
    json: bool,
) -> Result<()> {
    let r = c
        .deployments
        .history(HistoryRequest {
            tenant,
            app: app.unwrap_or_default(),
            limit,
        })
        .await
        .map_err(|s| from_status(&c.url, s))?
        .into_inner();
    let rows: Vec<EventJson> = r
        .events
        .into_iter()
        .map(|e| EventJson {
            at: e.at,
            actor: e.actor,
            action: e.action,
            app: e.app,
            environment: e.environment,
            detail: e.detail,
            outcome: e.outcome,
            peer: e.peer,
        })
        .collect();
    if json {
        return crate::status::print_json(&rows);
    }
    let mut t = crate::status::table(&["WHEN", "WHO", "ACTION", "APP", "ENV", "DETAIL", "OUTCOME"]);
    for e in rows {
        t.add_row(vec![
            ago(e.at),
            e.actor,
            e.action,
            e.app,
            e.environment,
            e.detail,
            e.outcome,
        ]);
    }
    say!("{t}");
    Ok(())
}

pub fn short(digest: &str) -> String {
    digest.chars().take(19).collect()
}
