//! What `slipctl status` and the dashboard both show, as domain types: every
//! host's view of every app, classified (`fleet::classify`), and the rollups
//! per app and environment with its latest rollout. The gRPC edge turns it
//! into prost (`grpc::fleet_status`), the web edge into pages (`web`), so the
//! two cannot disagree.

use crate::ctx::Ctx;
use crate::error::{ControllerError, Result};
use crate::fleet::{self, AppEnvRollup, EnvRollup, HostFacts, HostState};
use crate::store::{FleetRow, RolloutRow};

/// One app on one host, classified.
pub struct HostApp {
    pub row: FleetRow,
    pub state: HostState,
    pub offline: bool,
    /// Drift reported and not acknowledged.
    pub drifted: bool,
    pub connected: bool,
}

/// An app in an environment, rolled up, and its latest rollout.
pub struct AppEnv {
    pub rollup: AppEnvRollup,
    pub rollout: Option<RolloutRow>,
}

pub struct FleetView {
    pub rows: Vec<HostApp>,
    pub apps: Vec<AppEnv>,
    pub environments: Vec<EnvRollup>,
}

/// The tenant's fleet, narrowed to `app` and `env` when not empty; an
/// environment or app that does not exist is an error, not an empty fleet.
pub async fn fleet(ctx: &Ctx, tenant: &str, app: &str, env: &str) -> Result<FleetView> {
    if !env.is_empty() && ctx.store.environment(tenant, env).await?.is_none() {
        return Err(crate::intent::unknown_environment(&ctx.store, tenant, env, "").await);
    }
    let now = crate::store::now();
    let rows = ctx.store.fleet(tenant, app, env).await?;
    if rows.is_empty() && !app.is_empty() && !ctx.store.app_exists(tenant, app).await? {
        return Err(ControllerError::NotFound(format!(
            "no host runs an app {app:?} and none was published"
        )));
    }
    let rows: Vec<HostApp> = rows
        .into_iter()
        .map(|mut f| {
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
            let connected = ctx.hub.connected(tenant, &f.host);
            // Heartbeats reach the store in batches: memory has the newest.
            f.last_seen = ctx.hub.last_seen(tenant, &f.host, f.last_seen);
            HostApp {
                row: f,
                state,
                offline,
                drifted,
                connected,
            }
        })
        .collect();
    let rollup = fleet::rollup(rows.iter().map(|h| fleet::Classified {
        app: &h.row.report.app,
        environment: &h.row.environment,
        desired_version: h.row.desired_version.as_deref().unwrap_or_default(),
        state: h.state,
    }));
    let mut apps = Vec::with_capacity(rollup.apps.len());
    for a in rollup.apps {
        let rollout = ctx
            .store
            .latest_rollout(tenant, &a.app, &a.environment)
            .await?;
        apps.push(AppEnv { rollup: a, rollout });
    }
    Ok(FleetView {
        rows,
        apps,
        environments: rollup.environments,
    })
}
