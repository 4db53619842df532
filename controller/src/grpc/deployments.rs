//! `Deployments`: set desired releases (deploy, promote, rollback, retry), each
//! carried by a rollout; promotion gates (soak, drift); read the fleet's state
//! and history. Rollout control and fleet status live in `rollouts` and
//! `fleet_status`.

use proto::v1::deployments_server::Deployments;
use proto::v1::{
    AckDriftRequest, AckDriftResponse, AppPlacement, AuditEvent, DeployRequest, DeployResponse,
    FleetStatusRequest, FleetStatusResponse, HistoryRequest, HistoryResponse, ListAppsRequest,
    ListAppsResponse, ListEnvironmentsRequest, ListEnvironmentsResponse, PlaceAppRequest,
    PromoteRequest, RetryRequest, RollbackRequest, RolloutInfo, RolloutRequest,
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
            return Err(super::unknown_environment(&self.ctx, tenant, env, "").await);
        }
        Ok(())
    }

    /// Points app@env at `version` through a rollout with the environment's
    /// strategy (overridden by `strategy`), which wakes the sessions.
    #[expect(
        clippy::too_many_arguments,
        reason = "each argument is one part of the change"
    )]
    async fn set_desired(
        &self,
        who: &Authorized,
        app: &str,
        env: &str,
        version: &str,
        authorization: &[proto::v1::Signature],
        strategy: Option<&proto::v1::Strategy>,
        is_rollback: bool,
    ) -> Result<DeployResponse> {
        let tenant = who.tenant.as_str();
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
        let policy = store
            .env_policy(tenant, env)
            .await?
            .ok_or_else(|| ControllerError::NotFound(format!("unknown environment {env:?}")))?;
        let mut strategy = super::rollouts::strategy_from_proto(policy.strategy, strategy)?;
        if is_rollback {
            strategy = strategy.rollback();
        }
        let started = crate::rollout::start(
            &self.ctx,
            &crate::plan::Change {
                tenant,
                app,
                environment: env,
                version,
                digest: &release.manifest_digest,
                authorization: &authorization,
                strategy,
                actor: &who.actor(),
            },
        )
        .await?;
        let generation = started.generation;
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
            rollout_id: started.rollout_id as u64,
            planned_hosts: started.planned_hosts as u32,
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

impl DeploymentsService {
    /// Promotion gates: the exact digest must have run healthy on every host
    /// of the source environment for the target's soak time, and no host of
    /// either environment may carry unacknowledged drift. Each blocker, named.
    async fn promotion_blockers(
        &self,
        tenant: &str,
        app: &str,
        from: &str,
        to: &str,
        digest: &str,
        soak_secs: u32,
    ) -> Result<Vec<String>> {
        let store = &self.ctx.store;
        let now = crate::store::now();
        let mut blockers = Vec::new();
        let source = store.fleet(tenant, app, from).await?;
        if source.is_empty() {
            blockers.push(format!("no {from} host runs {app}"));
        }
        for f in &source {
            let h = &f.host;
            let offline = crate::fleet::offline(f.last_seen, now, self.ctx.heartbeat_secs);
            if offline {
                blockers.push(format!("{h} is offline"));
            } else if f.report.running_digest != digest {
                blockers.push(format!(
                    "{h} runs {} instead",
                    if f.report.running_version.is_empty() {
                        "nothing"
                    } else {
                        &f.report.running_version
                    }
                ));
            } else if f.healthy_since == 0 {
                blockers.push(format!("{h} is not healthy"));
            } else if now - f.healthy_since < i64::from(soak_secs) {
                blockers.push(format!(
                    "{h} has run it healthy for {}s of the {soak_secs}s soak",
                    now - f.healthy_since
                ));
            }
        }
        let target = store.fleet(tenant, app, to).await?;
        for (env, rows) in [(from, &source), (to, &target)] {
            for f in rows.iter().filter(|f| f.drifted()) {
                blockers.push(format!(
                    "{} ({env}) has drift: {}",
                    f.host,
                    f.report
                        .drift
                        .iter()
                        .take(3)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        Ok(blockers)
    }

    async fn promote_inner(
        &self,
        who: &Authorized,
        r: &PromoteRequest,
    ) -> Result<(DeployResponse, Vec<String>)> {
        let tenant = who.tenant.as_str();
        if r.from_environment == r.to_environment {
            return Err(ControllerError::InvalidArgument(
                "--from and --to name the same environment".into(),
            ));
        }
        self.check_app_env(tenant, &r.app, &r.from_environment)
            .await?;
        self.check_app_env(tenant, &r.app, &r.to_environment)
            .await?;
        let store = &self.ctx.store;
        let (version, _) = store
            .desired(tenant, &r.app, &r.from_environment)
            .await?
            .ok_or_else(|| {
                ControllerError::FailedPrecondition(format!(
                    "{} has no release in {}",
                    r.app, r.from_environment
                ))
            })?;
        let release = store
            .release(tenant, &r.app, &version)
            .await?
            .ok_or_else(|| ControllerError::NotFound(format!("release {version} vanished")))?;
        let soak = store
            .env_policy(tenant, &r.to_environment)
            .await?
            .map(|p| p.soak_secs)
            .unwrap_or(0);
        let blockers = self
            .promotion_blockers(
                tenant,
                &r.app,
                &r.from_environment,
                &r.to_environment,
                &release.manifest_digest,
                soak,
            )
            .await?;
        if !blockers.is_empty() {
            if !r.force {
                return Err(ControllerError::FailedPrecondition(format!(
                    "cannot promote {} {version} ({}) from {} to {}: {} (wait for the soak, redeploy or `slipctl drift ack`, or --force as promoter)",
                    r.app,
                    release.manifest_digest,
                    r.from_environment,
                    r.to_environment,
                    blockers.join("; ")
                )));
            }
            if !who
                .principal
                .allows(crate::auth::Need::Change { production: true })
            {
                return Err(ControllerError::PermissionDenied(format!(
                    "--force needs the promoter role; blocked by: {}",
                    blockers.join("; ")
                )));
            }
        }
        let resp = self
            .set_desired(
                who,
                &r.app,
                &r.to_environment,
                &version,
                &[],
                r.strategy.as_ref(),
                false,
            )
            .await?;
        Ok((resp, blockers))
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
        let result = self
            .set_desired(
                &who,
                &r.app,
                &r.environment,
                &r.version,
                &r.authorization,
                r.strategy.as_ref(),
                false,
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
        match self.promote_inner(&who, &r).await {
            Ok((resp, bypassed)) if !bypassed.is_empty() => {
                // Forced past its gates: the audit row says which.
                let detail = format!(
                    "{} -> {} ({}); forced past: {}",
                    resp.previous_version,
                    resp.version,
                    resp.manifest_digest,
                    bypassed.join("; ")
                );
                super::audit(
                    &self.ctx,
                    &who,
                    "promote --force",
                    &r.app,
                    &r.to_environment,
                    &detail,
                    "ok",
                )
                .await;
                tracing::warn!(actor = %who.actor(), app = %r.app, env = %r.to_environment, "promotion forced past its gates");
                Ok(Response::new(resp))
            }
            result => {
                let result = result.map(|(resp, _)| resp);
                self.audited(&who, "promote", &r.app, &r.to_environment, result)
                    .await
            }
        }
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
                    .rollback_target(&tenant, &r.app, &r.environment, &current)
                    .await?
                    .ok_or_else(|| {
                        ControllerError::FailedPrecondition(format!(
                            "{} in {} has no earlier release that ran healthy there to roll back to; name one with --to",
                            r.app, r.environment
                        ))
                    })?
            } else {
                r.to_version.clone()
            };
            // A rollback is urgent: every host at once, no canary.
            self.set_desired(
                &who,
                &r.app,
                &r.environment,
                &target,
                &r.authorization,
                None,
                true,
            )
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
            let store = &self.ctx.store;
            let current = store
                .desired_app(&tenant, &r.environment, &r.app)
                .await?
                .ok_or_else(|| {
                    ControllerError::FailedPrecondition(format!(
                        "{} has no release in {}",
                        r.app, r.environment
                    ))
                })?;
            // Same release (and authorization), new generation: hosts that
            // refused it try once more. (After an automatic revert the
            // desired release is the previous one: deploy the failed one
            // again to retry it.)
            let (version, authorization) = (
                current.version,
                super::releases::stored_signatures(&current.authorization),
            );
            self.set_desired(
                &who,
                &r.app,
                &r.environment,
                &version,
                &authorization,
                None,
                false,
            )
            .await
        }
        .await;
        self.audited(&who, "retry", &r.app, &r.environment, result)
            .await
    }

    async fn rollout_status(
        &self,
        req: Request<RolloutRequest>,
    ) -> std::result::Result<Response<RolloutInfo>, Status> {
        let who = reader(&self.ctx, &req).await?;
        let r = req.into_inner();
        Ok(Response::new(
            super::rollouts::status(&self.ctx, &who.tenant, &r.app, &r.environment).await?,
        ))
    }

    async fn pause_rollout(
        &self,
        req: Request<RolloutRequest>,
    ) -> std::result::Result<Response<RolloutInfo>, Status> {
        let who = authorize(&self.ctx, &req, Want::Change, "rollout-pause").await?;
        let r = req.into_inner();
        super::rollouts::control(&self.ctx, &who, &r, super::rollouts::Control::Pause).await
    }

    async fn resume_rollout(
        &self,
        req: Request<RolloutRequest>,
    ) -> std::result::Result<Response<RolloutInfo>, Status> {
        let who = authorize(&self.ctx, &req, Want::Change, "rollout-resume").await?;
        let r = req.into_inner();
        super::rollouts::control(&self.ctx, &who, &r, super::rollouts::Control::Resume).await
    }

    async fn abort_rollout(
        &self,
        req: Request<RolloutRequest>,
    ) -> std::result::Result<Response<RolloutInfo>, Status> {
        let who = authorize(&self.ctx, &req, Want::Change, "rollout-abort").await?;
        let r = req.into_inner();
        super::rollouts::control(&self.ctx, &who, &r, super::rollouts::Control::Abort).await
    }

    async fn list_apps(
        &self,
        req: Request<ListAppsRequest>,
    ) -> std::result::Result<Response<ListAppsResponse>, Status> {
        let who = reader(&self.ctx, &req).await?;
        let r = req.into_inner();
        let apps =
            super::inventory::placements(&self.ctx, &who.tenant, &r.app, &r.environment).await?;
        Ok(Response::new(ListAppsResponse { apps }))
    }

    async fn place_app(
        &self,
        req: Request<PlaceAppRequest>,
    ) -> std::result::Result<Response<AppPlacement>, Status> {
        let who = authorize(&self.ctx, &req, Want::Change, "app-place").await?;
        let r = req.into_inner();
        let result = async {
            let selector = super::inventory::selector(r.selector.clone())?;
            self.check_app_env(&who.tenant, &r.app, &r.environment)
                .await?;
            self.ctx
                .store
                .set_placement(&who.tenant, &r.app, &r.environment, &selector)
                .await?;
            self.ctx.hub.desired_changed();
            super::inventory::placements(&self.ctx, &who.tenant, &r.app, &r.environment)
                .await?
                .pop()
                .ok_or_else(|| ControllerError::NotFound(format!("app {:?}", r.app)))
        }
        .await;
        let (detail, outcome) = match &result {
            Ok(p) => (
                format!("selector {:?}: hosts {}", p.selector, p.hosts.join(", ")),
                "ok".to_string(),
            ),
            Err(e) => (String::new(), format!("refused: {e}")),
        };
        super::audit(
            &self.ctx,
            &who,
            "app-place",
            &r.app,
            &r.environment,
            &detail,
            &outcome,
        )
        .await;
        Ok(Response::new(result?))
    }

    async fn ack_drift(
        &self,
        req: Request<AckDriftRequest>,
    ) -> std::result::Result<Response<AckDriftResponse>, Status> {
        let who = authorize(&self.ctx, &req, Want::Change, "drift-ack").await?;
        let r = req.into_inner();
        let acked = self
            .ctx
            .store
            .ack_drift(&who.tenant, &r.app, &r.environment, &r.host)
            .await
            .map_err(ControllerError::from)?;
        let detail: Vec<String> = acked.iter().map(|(h, d)| format!("{h}: {d}")).collect();
        let hosts: Vec<String> = acked.into_iter().map(|(h, _)| h).collect();
        let outcome = if hosts.is_empty() {
            "refused: no drift to acknowledge"
        } else {
            "ok"
        };
        super::audit(
            &self.ctx,
            &who,
            "drift-ack",
            &r.app,
            &r.environment,
            &detail.join("; "),
            outcome,
        )
        .await;
        if hosts.is_empty() {
            return Err(Status::failed_precondition(format!(
                "no host of {} reports drift in {}{}",
                r.environment,
                r.app,
                if r.host.is_empty() {
                    String::new()
                } else {
                    format!(" on {}", r.host)
                }
            )));
        }
        Ok(Response::new(AckDriftResponse { hosts }))
    }

    async fn fleet_status(
        &self,
        req: Request<FleetStatusRequest>,
    ) -> std::result::Result<Response<FleetStatusResponse>, Status> {
        let who = reader(&self.ctx, &req).await?;
        let r = req.into_inner();
        Ok(Response::new(
            super::fleet_status::build(&self.ctx, &who.tenant, &r.app, &r.environment).await?,
        ))
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
        let envs = self
            .ctx
            .store
            .env_policies(&who.tenant)
            .await
            .map_err(ControllerError::from)?;
        Ok(Response::new(ListEnvironmentsResponse {
            environments: envs
                .into_iter()
                .map(super::rollouts::environment_to_proto)
                .collect(),
        }))
    }
}
