//! `FleetStatus`: the fleet as `views::fleet` classifies and rolls it up, in
//! prost.

use proto::v1::{AppEnvSummary, EnvSummary, FleetStatusResponse, HostAppStatus, RolloutInfo};

use super::Ctx;
use crate::error::Result;
use crate::fleet::AppEnvRollup;
use crate::views::{self, HostApp};

pub async fn build(ctx: &Ctx, tenant: &str, app: &str, env: &str) -> Result<FleetStatusResponse> {
    let view = views::fleet(ctx, tenant, app, env).await?;
    Ok(FleetStatusResponse {
        rows: view.rows.into_iter().map(row_to_proto).collect(),
        apps: view
            .apps
            .into_iter()
            .map(|a| {
                let rollout = a
                    .rollout
                    .map(|r| super::rollouts::rollout_to_proto(r, Vec::new()));
                app_env_to_proto(a.rollup, rollout)
            })
            .collect(),
        environments: view
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

fn row_to_proto(h: HostApp) -> HostAppStatus {
    let f = h.row;
    HostAppStatus {
        connected: h.connected,
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
        drift_acked: f.report.drift_count > 0 && !h.drifted,
        offline: h.offline,
        status: h.state.as_str().into(),
        healthy_since: f.healthy_since,
    }
}
