//! `Deployments`: set desired releases (deploy, promote, rollback, retry) and read
//! the fleet's state and history.

use proto::v1::deployments_server::Deployments;
use proto::v1::{
    AuditEvent, DeployRequest, DeployResponse, Environment, FleetStatusRequest,
    FleetStatusResponse, HistoryRequest, HistoryResponse, HostAppStatus, ListEnvironmentsRequest,
    ListEnvironmentsResponse, PromoteRequest, RetryRequest, RollbackRequest,
};
use tonic::{Request, Response, Status};

use super::{Authorized, SharedCtx, Want, authorize, reader};
use crate::error::{ControllerError, Result};

pub struct DeploymentsService {
    pub ctx: SharedCtx,
}

impl DeploymentsService {
    async fn check_app_env(&self, tenant: &str, app: &str, env: &str) -> Result<()> {
        let store = &self.ctx.store;
        if !store.app_exists(tenant, app).await? {
            return Err(ControllerError::NotFound(format!(
                "unknown app {app:?}: publish a release of it first"
            )));
        }
        if store.environment(tenant, env).await?.is_none() {
            let known: Vec<String> = store
                .environments(tenant)
                .await?
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            return Err(ControllerError::NotFound(format!(
                "unknown environment {env:?} (known: {})",
                known.join(", ")
            )));
        }
        Ok(())
    }

    /// Points app@env at `version` and wakes the sessions of that environment.
    async fn set_desired(
        &self,
        tenant: &str,
        app: &str,
        env: &str,
        version: &str,
        authorization: &[proto::v1::Signature],
    ) -> Result<DeployResponse> {
        self.check_app_env(tenant, app, env).await?;
        let store = &self.ctx.store;
        let release = store.release(tenant, app, version).await?.ok_or_else(|| {
            ControllerError::NotFound(format!(
                "unknown version {version:?} of app {app:?} (see `slipctl releases {app}`)"
            ))
        })?;
        let previous = store
            .desired(tenant, app, env)
            .await?
            .map(|(v, _)| v)
            .unwrap_or_default();
        let statement = trust::sign::RollbackStatement {
            tenant,
            app,
            environment: env,
            version,
            manifest_digest: &release.manifest_digest,
        };
        let authorization = super::releases::checked_signatures(authorization, &statement.bytes())?;
        let generation = store
            .set_desired(tenant, app, env, version, &authorization)
            .await?;
        self.ctx.hub.desired_changed();
        let connected_hosts = store
            .hosts(tenant, env)
            .await?
            .iter()
            .filter(|h| self.ctx.hub.connected(tenant, &h.name))
            .count() as u32;
        tracing::info!(tenant, app, env, version, generation, "desired release set");
        Ok(DeployResponse {
            app: app.into(),
            environment: env.into(),
            version: version.into(),
            manifest_digest: release.manifest_digest,
            previous_version: previous,
            generation,
            connected_hosts,
        })
    }

    async fn audited(
        &self,
        who: &Authorized,
        action: &str,
        app: &str,
        env: &str,
        result: Result<DeployResponse>,
    ) -> std::result::Result<Response<DeployResponse>, Status> {
        let (detail, outcome) = match &result {
            Ok(r) => (
                format!(
                    "{} -> {} ({})",
                    r.previous_version, r.version, r.manifest_digest
                ),
                "ok".to_string(),
            ),
            Err(e) => (String::new(), format!("refused: {e}")),
        };
        super::audit(&self.ctx, who, action, app, env, &detail, &outcome).await;
        Ok(Response::new(result?))
    }
}

#[tonic::async_trait]
impl Deployments for DeploymentsService {
    async fn deploy(
        &self,
        req: Request<DeployRequest>,
    ) -> std::result::Result<Response<DeployResponse>, Status> {
        let who = authorize(&self.ctx, &req, Want::Change, "deploy").await?;
        let r = req.into_inner();
        let tenant = who.tenant.clone();
        let result = self
            .set_desired(
                &tenant,
                &r.app,
                &r.environment,
                &r.version,
                &r.authorization,
            )
            .await;
        self.audited(&who, "deploy", &r.app, &r.environment, result)
            .await
    }

    async fn promote(
        &self,
        req: Request<PromoteRequest>,
    ) -> std::result::Result<Response<DeployResponse>, Status> {
        let who = authorize(&self.ctx, &req, Want::Change, "promote").await?;
        let r = req.into_inner();
        let tenant = who.tenant.clone();
        let result = async {
            if r.from_environment == r.to_environment {
                return Err(ControllerError::InvalidArgument(
                    "--from and --to name the same environment".into(),
                ));
            }
            self.check_app_env(&tenant, &r.app, &r.from_environment)
                .await?;
            let store = &self.ctx.store;
            let (version, _) = store
                .desired(&tenant, &r.app, &r.from_environment)
                .await?
                .ok_or_else(|| {
                    ControllerError::FailedPrecondition(format!(
                        "{} has no release in {}",
                        r.app, r.from_environment
                    ))
                })?;
            let release = store
                .release(&tenant, &r.app, &version)
                .await?
                .ok_or_else(|| ControllerError::NotFound(format!("release {version} vanished")))?;
            let healthy = store
                .healthy_hosts_running(
                    &tenant,
                    &r.app,
                    &r.from_environment,
                    &release.manifest_digest,
                )
                .await?;
            if healthy == 0 {
                return Err(ControllerError::FailedPrecondition(format!(
                    "{} {} ({}) is not running healthy on any {} host yet; nothing to promote",
                    r.app, version, release.manifest_digest, r.from_environment
                )));
            }
            self.set_desired(&tenant, &r.app, &r.to_environment, &version, &[])
                .await
        }
        .await;
        self.audited(&who, "promote", &r.app, &r.to_environment, result)
            .await
    }

    async fn rollback(
        &self,
        req: Request<RollbackRequest>,
    ) -> std::result::Result<Response<DeployResponse>, Status> {
        let who = authorize(&self.ctx, &req, Want::Change, "rollback").await?;
        let r = req.into_inner();
        let tenant = who.tenant.clone();
        let result = async {
            self.check_app_env(&tenant, &r.app, &r.environment).await?;
            let store = &self.ctx.store;
            let target = if r.to_version.is_empty() {
                let (current, _) = store
                    .desired(&tenant, &r.app, &r.environment)
                    .await?
                    .ok_or_else(|| {
                        ControllerError::FailedPrecondition(format!(
                            "{} has no release in {}",
                            r.app, r.environment
                        ))
                    })?;
                store
                    .previous_desired(&tenant, &r.app, &r.environment, &current)
                    .await?
                    .ok_or_else(|| {
                        ControllerError::FailedPrecondition(format!(
                            "{} in {} has no earlier release to roll back to; name one with --to",
                            r.app, r.environment
                        ))
                    })?
            } else {
                r.to_version.clone()
            };
            self.set_desired(&tenant, &r.app, &r.environment, &target, &r.authorization)
                .await
        }
        .await;
        self.audited(&who, "rollback", &r.app, &r.environment, result)
            .await
    }

    async fn retry(
        &self,
        req: Request<RetryRequest>,
    ) -> std::result::Result<Response<DeployResponse>, Status> {
        let who = authorize(&self.ctx, &req, Want::Change, "retry").await?;
        let r = req.into_inner();
        let tenant = who.tenant.clone();
        let result = async {
            self.check_app_env(&tenant, &r.app, &r.environment).await?;
            // Same release (and authorization), new generation: hosts that
            // refused it try once more.
            let current = self
                .ctx
                .store
                .desired_app(&tenant, &r.environment, &r.app)
                .await?
                .ok_or_else(|| {
                    ControllerError::FailedPrecondition(format!(
                        "{} has no release in {}",
                        r.app, r.environment
                    ))
                })?;
            let (version, authorization) = (
                current.version,
                super::releases::stored_signatures(&current.authorization),
            );
            self.set_desired(&tenant, &r.app, &r.environment, &version, &authorization)
                .await
        }
        .await;
        self.audited(&who, "retry", &r.app, &r.environment, result)
            .await
    }

    async fn fleet_status(
        &self,
        req: Request<FleetStatusRequest>,
    ) -> std::result::Result<Response<FleetStatusResponse>, Status> {
        let who = reader(&self.ctx, &req).await?;
        let tenant = who.tenant;
        let r = req.into_inner();
        let rows = self
            .ctx
            .store
            .fleet(&tenant, &r.app, &r.environment)
            .await
            .map_err(ControllerError::from)?;
        let rows = rows
            .into_iter()
            .map(|f| HostAppStatus {
                connected: self.ctx.hub.connected(&tenant, &f.host),
                generation: f.report.generation,
                host: f.host,
                app: f.report.app,
                environment: f.environment,
                desired_version: f.desired_version.unwrap_or_default(),
                running_version: f.report.running_version,
                running_digest: f.report.running_digest,
                state: f.report.state,
                health: f.report.health,
                health_reason: f.report.health_reason,
                env_check: f.report.env_check,
                missing_env: f.report.missing_env,
                last_seen: f.last_seen,
                failed_version: f.report.failed_version,
                last_error: f.report.last_error,
            })
            .collect();
        Ok(Response::new(FleetStatusResponse { rows }))
    }

    async fn history(
        &self,
        req: Request<HistoryRequest>,
    ) -> std::result::Result<Response<HistoryResponse>, Status> {
        let who = reader(&self.ctx, &req).await?;
        let tenant = who.tenant;
        let r = req.into_inner();
        let limit = if r.limit == 0 { 50 } else { r.limit.min(1000) };
        let rows = self
            .ctx
            .store
            .history(&tenant, &r.app, limit)
            .await
            .map_err(ControllerError::from)?;
        let events = rows
            .into_iter()
            .map(|a| AuditEvent {
                at: a.at,
                actor: a.actor,
                action: a.action,
                app: a.app,
                environment: a.environment,
                detail: a.detail,
                outcome: a.outcome,
                peer: a.peer,
            })
            .collect();
        Ok(Response::new(HistoryResponse { events }))
    }

    async fn list_environments(
        &self,
        req: Request<ListEnvironmentsRequest>,
    ) -> std::result::Result<Response<ListEnvironmentsResponse>, Status> {
        let who = reader(&self.ctx, &req).await?;
        let tenant = who.tenant;
        let envs = self
            .ctx
            .store
            .environments(&tenant)
            .await
            .map_err(ControllerError::from)?;
        Ok(Response::new(ListEnvironmentsResponse {
            environments: envs
                .into_iter()
                .map(|(name, production)| Environment { name, production })
                .collect(),
        }))
    }
}
