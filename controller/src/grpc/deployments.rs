//! `Deployments`: deploy, promote, rollback and retry (authorized here, done by
//! `intent`), placement and drift acks; read the fleet's state and history.
//! Rollout control and fleet status live in `rollouts` and `fleet_status`.

use proto::v1::deployments_server::Deployments;
use proto::v1::{
    AckDriftRequest, AckDriftResponse, AppPlacement, AuditEvent, DeployRequest, DeployResponse,
    FleetStatusRequest, FleetStatusResponse, HistoryRequest, HistoryResponse, ListAppsRequest,
    ListAppsResponse, ListEnvironmentsRequest, ListEnvironmentsResponse, PlaceAppRequest,
    PromoteRequest, RetryRequest, RollbackRequest, RolloutInfo, RolloutRequest,
};
use tonic::{Request, Response, Status};

use super::releases::authorization_from_proto;
use super::{Authorized, SharedCtx, Want, authorize, reader};
use crate::auth::Need;
use crate::error::{ControllerError, Result};
use crate::intent::{Actor, Deploy, Deployed, Intent, Promote, Rollback, Target};
use crate::plan::StrategyOverride;

pub struct DeploymentsService {
    pub ctx: SharedCtx,
}

impl DeploymentsService {
    fn intent(&self, dry_run: bool) -> Intent<'_> {
        Intent {
            store: &self.ctx.store,
            hub: &self.ctx.hub,
            heartbeat_secs: self.ctx.heartbeat_secs,
            dry_run,
        }
    }

    /// `retry`, or `migrate` (an approval, then a retry): the release app@env
    /// desires rolled out again.
    async fn again(
        &self,
        req: Request<RetryRequest>,
        action: &str,
    ) -> std::result::Result<Response<DeployResponse>, Status> {
        let who = authorize(&self.ctx, &req, Want::Change, action).await?;
        let r = req.into_inner();
        let (name, may_force) = actor(&who);
        let target = Target {
            tenant: &who.tenant,
            app: &r.app,
            environment: &r.environment,
        };
        let actor = Actor {
            name: &name,
            may_force,
        };
        let intent = self.intent(r.dry_run);
        let result = if action == "migrate" {
            intent.migrate(&actor, target).await
        } else {
            intent.retry(&actor, target).await
        };
        self.audited(r.dry_run, &who, action, &r.app, &r.environment, result)
            .await
    }

    /// Writes the change (or its refusal) to the audit log, unless it was
    /// a dry run (it changed nothing), and answers it.
    async fn audited(
        &self,
        dry_run: bool,
        who: &Authorized,
        action: &str,
        app: &str,
        env: &str,
        result: Result<Deployed>,
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
        if !dry_run {
            super::audit(&self.ctx, who, action, app, env, &detail, &outcome).await;
        }
        Ok(Response::new(deployed_to_proto(result?)))
    }
}

/// Who is changing intent: the audit log's name, and whether the token may
/// force a promotion (the promoter role).
fn actor(who: &Authorized) -> (String, bool) {
    (
        who.actor(),
        who.principal.allows(Need::Change { production: true }),
    )
}

fn strategy(s: Option<&proto::v1::Strategy>) -> Result<Option<StrategyOverride>> {
    s.map(super::rollouts::strategy_override_from_proto)
        .transpose()
}

fn deployed_to_proto(d: Deployed) -> DeployResponse {
    let dry_run = d.plan.is_some();
    let plan = d.plan.unwrap_or_else(|| crate::intent::DryPlan {
        steps: Vec::new(),
        left_out: Vec::new(),
        strategy: Default::default(),
    });
    DeployResponse {
        dry_run,
        plan: plan
            .steps
            .into_iter()
            .map(|s| proto::v1::PlannedStep {
                step: s.step,
                canary: s.canary,
                hosts: s
                    .hosts
                    .into_iter()
                    .map(|h| proto::v1::PlannedHost {
                        host: h.name,
                        connected: h.connected,
                        running_version: h.running,
                    })
                    .collect(),
            })
            .collect(),
        left_out: plan.left_out,
        migrations: d.migrations.as_str().into(),
        strategy: dry_run.then(|| super::rollouts::strategy_to_proto(&plan.strategy)),
        app: d.app,
        environment: d.environment,
        version: d.version,
        manifest_digest: d.manifest_digest,
        previous_version: d.previous_version,
        generation: d.generation,
        connected_hosts: d.connected_hosts,
        rollout_id: d.rollout_id as u64,
        planned_hosts: d.planned_hosts,
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
        let (name, may_force) = actor(&who);
        let authorization = authorization_from_proto(&r.authorization, r.rollback_terms.as_ref());
        let result = async {
            let d = Deploy {
                target: Target {
                    tenant: &who.tenant,
                    app: &r.app,
                    environment: &r.environment,
                },
                version: &r.version,
                authorization: &authorization,
                strategy: strategy(r.strategy.as_ref())?,
            };
            let actor = Actor {
                name: &name,
                may_force,
            };
            self.intent(r.dry_run).deploy(&actor, &d).await
        }
        .await;
        self.audited(r.dry_run, &who, "deploy", &r.app, &r.environment, result)
            .await
    }

    async fn promote(
        &self,
        req: Request<PromoteRequest>,
    ) -> std::result::Result<Response<DeployResponse>, Status> {
        let who = authorize(&self.ctx, &req, Want::Change, "promote").await?;
        let r = req.into_inner();
        let (name, may_force) = actor(&who);
        let result = async {
            let p = Promote {
                tenant: &who.tenant,
                app: &r.app,
                from: &r.from_environment,
                to: &r.to_environment,
                force: r.force,
                strategy: strategy(r.strategy.as_ref())?,
            };
            let actor = Actor {
                name: &name,
                may_force,
            };
            self.intent(r.dry_run).promote(&actor, &p).await
        }
        .await;
        match result {
            Ok((deployed, bypassed)) if !bypassed.is_empty() && !r.dry_run => {
                // Forced past its gates: the audit row says which.
                let detail = format!(
                    "{} -> {} ({}); forced past: {}",
                    deployed.previous_version,
                    deployed.version,
                    deployed.manifest_digest,
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
                Ok(Response::new(deployed_to_proto(deployed)))
            }
            result => {
                let result = result.map(|(deployed, _)| deployed);
                self.audited(
                    r.dry_run,
                    &who,
                    "promote",
                    &r.app,
                    &r.to_environment,
                    result,
                )
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
        let (name, may_force) = actor(&who);
        let authorization = authorization_from_proto(&r.authorization, r.rollback_terms.as_ref());
        let rollback = Rollback {
            target: Target {
                tenant: &who.tenant,
                app: &r.app,
                environment: &r.environment,
            },
            to_version: Some(r.to_version.as_str()).filter(|v| !v.is_empty()),
            authorization: &authorization,
        };
        let actor = Actor {
            name: &name,
            may_force,
        };
        let result = self.intent(r.dry_run).rollback(&actor, &rollback).await;
        self.audited(r.dry_run, &who, "rollback", &r.app, &r.environment, result)
            .await
    }

    async fn retry(
        &self,
        req: Request<RetryRequest>,
    ) -> std::result::Result<Response<DeployResponse>, Status> {
        self.again(req, "retry").await
    }

    async fn migrate(
        &self,
        req: Request<RetryRequest>,
    ) -> std::result::Result<Response<DeployResponse>, Status> {
        self.again(req, "migrate").await
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
            self.intent(false)
                .check_app_env(&who.tenant, &r.app, &r.environment)
                .await?;
            self.ctx
                .store
                .set_placement(&who.tenant, &r.app, &r.environment, &selector)
                .await?;
            self.ctx.hub.desired_changed(&crate::hub::DesiredChange {
                tenant: &who.tenant,
                environment: &r.environment,
                app: &r.app,
                hosts: None,
            });
            // Where a declared app runs follows its selector.
            self.ctx.hub.apps_changed(&who.tenant, &r.environment);
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

    async fn set_app(
        &self,
        req: Request<proto::v1::SetAppRequest>,
    ) -> std::result::Result<Response<proto::v1::SetAppResponse>, Status> {
        super::apps::set(&self.ctx, req).await
    }

    async fn remove_app(
        &self,
        req: Request<proto::v1::RemoveAppRequest>,
    ) -> std::result::Result<Response<proto::v1::SetAppResponse>, Status> {
        super::apps::remove(&self.ctx, req).await
    }

    type LogsStream = super::logs::LogStream;

    async fn logs(
        &self,
        req: Request<proto::v1::LogsRequest>,
    ) -> std::result::Result<Response<Self::LogsStream>, Status> {
        super::logs::logs(&self.ctx, req).await
    }

    async fn app_hosts(
        &self,
        req: Request<proto::v1::AppHostsRequest>,
    ) -> std::result::Result<Response<proto::v1::AppHostsResponse>, Status> {
        super::apps::hosts(&self.ctx, req).await
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
        let limit =
            if r.limit == 0 { 50 } else { r.limit }.min(crate::store::audit::HISTORY_PAGE_MAX);
        let rows = self
            .ctx
            .store
            .history(&tenant, &r.app, limit, r.before_id)
            .await
            .map_err(ControllerError::from)?;
        // A full page may have more behind it; a short one is the last.
        let next_before_id = match rows.last() {
            Some(last) if rows.len() == limit as usize => last.id,
            _ => 0,
        };
        let events = rows
            .into_iter()
            .map(|a| AuditEvent {
                id: a.id,
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
        Ok(Response::new(HistoryResponse {
            events,
            next_before_id,
        }))
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
