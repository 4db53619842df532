//! `FleetStatus`: every host's view of every app, classified, and the rollups
//! per app and environment and per environment (the worst of their hosts).

use std::collections::BTreeMap;

use proto::v1::{AppEnvSummary, EnvSummary, FleetStatusResponse, HostAppStatus};

use super::Ctx;
use crate::error::{ControllerError, Result};
use crate::fleet::{self, HostFacts, HostState};

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
    let mut out = FleetStatusResponse::default();
    let mut apps: BTreeMap<(String, String), (AppEnvSummary, HostState)> = BTreeMap::new();
    for f in rows {
        let connected = ctx.hub.connected(tenant, &f.host);
        let offline = fleet::offline(f.last_seen, now, ctx.heartbeat_secs);
        let drifted = f.drifted();
        let desired = f.desired_version.clone().unwrap_or_default();
        let state = fleet::classify(&HostFacts {
            desired_version: &desired,
            desired_generation: f.desired_generation,
            generation: f.report.generation,
            running_version: &f.report.running_version,
            health: f.report.health,
            failed_version: &f.report.failed_version,
            offline,
            drifted,
        });
        let key = (f.report.app.clone(), f.environment.clone());
        let (sum, worst) = apps.entry(key).or_insert_with(|| {
            (
                AppEnvSummary {
                    app: f.report.app.clone(),
                    environment: f.environment.clone(),
                    desired_version: desired.clone(),
                    ..Default::default()
                },
                HostState::Ok,
            )
        });
        sum.hosts += 1;
        match state {
            HostState::Ok => sum.at_desired += 1,
            HostState::Updating => sum.updating += 1,
            HostState::Drifted => sum.drifted += 1,
            HostState::Offline => sum.offline += 1,
            HostState::Failed => sum.failed += 1,
        }
        *worst = (*worst).max(state);
        out.rows.push(HostAppStatus {
            connected,
            generation: f.report.generation,
            host: f.host,
            app: f.report.app,
            environment: f.environment,
            desired_version: desired,
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
        });
    }
    let mut envs: BTreeMap<String, (EnvSummary, HostState)> = BTreeMap::new();
    for ((app, env), (mut sum, worst)) in apps {
        sum.status = worst.as_str().into();
        if let Some(r) = ctx.store.latest_rollout(tenant, &app, &env).await? {
            sum.rollout = Some(super::rollouts::rollout_to_proto(r, Vec::new()));
        }
        let (e, env_worst) = envs.entry(env.clone()).or_insert_with(|| {
            (
                EnvSummary {
                    environment: env.clone(),
                    ..Default::default()
                },
                HostState::Ok,
            )
        });
        e.apps += 1;
        e.hosts += sum.hosts;
        *env_worst = (*env_worst).max(worst);
        out.apps.push(sum);
    }
    out.environments = envs
        .into_values()
        .map(|(mut e, worst)| {
            e.status = worst.as_str().into();
            e
        })
        .collect();
    Ok(out)
}
