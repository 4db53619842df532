//! `FleetStatus`: every host's view of every app, classified, and the rollups
//! per app and environment and per environment (`fleet::rollup`), in prost.

use proto::v1::{AppEnvSummary, EnvSummary, FleetStatusResponse, HostAppStatus, RolloutInfo};

use super::Ctx;
use crate::error::{ControllerError, Result};
use crate::fleet::{self, AppEnvRollup, HostFacts, HostState};
use crate::store::FleetRow;

pub async fn build(ctx: &Ctx, tenant: &str, app: &str, env: &str) -> Result<FleetStatusResponse> {
    // A filter naming nothing is a typo, not an empty fleet.
    if !env.is_empty() && ctx.store.environment(tenant, env).await?.is_none() {
        return Err(super::unknown_environment(ctx, tenant, env, "").await);
    }
    let now = crate::store::now();
    let rows = ctx.store.fleet(tenant, app, env).await?;
    if rows.is_empty() && !app.is_empty() && !ctx.store.app_exists(tenant, app).await? {
        return Err(ControllerError::NotFound(format!(
            "no host runs an app {app:?} and none was published"
        )));
    }
    let states: Vec<(HostState, bool, bool)> = rows
        .iter()
        .map(|f| {
            let offline = ctx
                .hub
                .offline(tenant, &f.host, f.last_seen, now, ctx.heartbeat_secs);
            let drifted = f.drifted();
            let state = fleet::classify(&HostFacts {
                desired_version: f.desired_version.as_deref().unwrap_or_default(),
                desired_generation: f.desired_generation,
                generation: f.report.generation,
                running_version: &f.report.running_version,
                health: f.report.health,
                failed_version: &f.report.failed_version,
                offline,
                drifted,
            });
            (state, offline, drifted)
        })
        .collect();
    let rollup =
        fleet::rollup(
            rows.iter()
                .zip(&states)
                .map(|(f, (state, ..))| fleet::Classified {
                    app: &f.report.app,
                    environment: &f.environment,
                    desired_version: f.desired_version.as_deref().unwrap_or_default(),
                    state: *state,
                }),
        );
    let mut apps = Vec::with_capacity(rollup.apps.len());
    for a in rollup.apps {
        let rollout = ctx
            .store
            .latest_rollout(tenant, &a.app, &a.environment)
            .await?
            .map(|r| super::rollouts::rollout_to_proto(r, Vec::new()));
        apps.push(app_env_to_proto(a, rollout));
    }
    Ok(FleetStatusResponse {
        rows: rows
            .into_iter()
            .zip(states)
            .map(|(mut f, (state, offline, drifted))| {
                let connected = ctx.hub.connected(tenant, &f.host);
                // Heartbeats reach the store in batches: memory has the newest.
                f.last_seen = ctx.hub.last_seen(tenant, &f.host, f.last_seen);
                row_to_proto(f, state, offline, drifted, connected)
            })
            .collect(),
        apps,
        environments: rollup
            .environments
            .into_iter()
            .map(|e| EnvSummary {
                environment: e.environment,
                apps: e.apps,
                hosts: e.hosts,
                status: e.worst.as_str().into(),
            })
            .collect(),
    })
}

fn app_env_to_proto(a: AppEnvRollup, rollout: Option<RolloutInfo>) -> AppEnvSummary {
    let t = a.tally;
    AppEnvSummary {
        app: a.app,
        environment: a.environment,
        desired_version: a.desired_version,
        hosts: t.hosts,
        at_desired: t.ok,
        updating: t.updating,
        drifted: t.drifted,
        offline: t.offline,
        failed: t.failed,
        status: t.worst.as_str().into(),
        rollout,
    }
}

fn row_to_proto(
    f: FleetRow,
    state: HostState,
    offline: bool,
    drifted: bool,
    connected: bool,
) -> HostAppStatus {
    HostAppStatus {
        connected,
        generation: f.report.generation,
        host: f.host,
        app: f.report.app,
        environment: f.environment,
        desired_version: f.desired_version.unwrap_or_default(),
        running_version: f.report.running_version,
        running_digest: f.report.running_digest,
        state: f.report.state,
        health: super::health_to_proto(f.report.health),
        health_reason: f.report.health_reason,
        env_check: f.report.env_check,
        missing_env: f.report.missing_env,
        last_seen: f.last_seen,
        failed_version: f.report.failed_version,
        last_error: f.report.last_error,
        drift: f.report.drift,
        drift_count: f.report.drift_count,
        drift_acked: f.report.drift_count > 0 && !drifted,
        offline,
        status: state.as_str().into(),
        healthy_since: f.healthy_since,
    }
}
