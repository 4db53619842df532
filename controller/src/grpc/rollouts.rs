//! Rollouts over the wire: strategies in and out, a rollout's status host by
//! host, and pause / resume / abort.

use proto::v1::{self as pb, RolloutInfo, RolloutRequest};
use tonic::{Response, Status};

use super::{Authorized, Ctx};
use crate::error::{ControllerError, Result};
use crate::hub::DesiredChange;
use crate::lifecycle::RolloutState;
use crate::plan::{Amount, OfflinePolicy, Strategy, StrategyOverride};
use crate::store::{EnvPolicy, RolloutHostRow, RolloutRow};

/// Longest batch timeout or pause a strategy may ask for (a day).
const MAX_SECS: u32 = 86_400;

fn amount(field: &str, s: &str) -> Result<Option<Amount>> {
    if s.is_empty() {
        return Ok(None);
    }
    Amount::parse(s)
        .map(Some)
        .map_err(|e| ControllerError::InvalidArgument(format!("{field}: {e}")))
}

fn bounded_secs(field: &str, v: Option<u32>) -> Result<Option<u32>> {
    match v {
        Some(s) if s > MAX_SECS => Err(ControllerError::InvalidArgument(format!(
            "{field}: at most {MAX_SECS} seconds"
        ))),
        v => Ok(v),
    }
}

/// The fields a wire strategy sets, validated.
pub fn strategy_override_from_proto(o: &pb::Strategy) -> Result<StrategyOverride> {
    let batch = amount("batch", &o.batch)?;
    if batch.is_some_and(|b| b.of(100) == 0) {
        return Err(ControllerError::InvalidArgument(
            "batch: at least one host".into(),
        ));
    }
    let batch_timeout_secs = bounded_secs("batch timeout", o.batch_timeout_secs)?;
    if batch_timeout_secs == Some(0) {
        return Err(ControllerError::InvalidArgument(
            "batch timeout: at least 1 second (hosts need time to deploy and prove healthy)".into(),
        ));
    }
    Ok(StrategyOverride {
        canary: o.canary,
        batch,
        batch_timeout_secs,
        pause_secs: bounded_secs("pause", o.pause_secs)?,
        max_failures: amount("max failures", &o.max_failures)?,
        auto_revert: o.auto_revert,
        offline: match o.offline() {
            pb::OfflinePolicy::Unspecified => None,
            pb::OfflinePolicy::Fail => Some(OfflinePolicy::Fail),
            pb::OfflinePolicy::Wait => Some(OfflinePolicy::Wait),
            pb::OfflinePolicy::Skip => Some(OfflinePolicy::Skip),
        },
    })
}

/// `base` with the fields `over` sets.
pub fn strategy_from_proto(base: Strategy, over: Option<&pb::Strategy>) -> Result<Strategy> {
    match over {
        Some(o) => Ok(base.with(&strategy_override_from_proto(o)?)),
        None => Ok(base),
    }
}

pub fn strategy_to_proto(s: &Strategy) -> pb::Strategy {
    pb::Strategy {
        canary: Some(s.canary),
        batch: s.batch.to_string(),
        batch_timeout_secs: Some(s.batch_timeout_secs),
        pause_secs: Some(s.pause_secs),
        max_failures: s.max_failures.to_string(),
        auto_revert: Some(s.auto_revert),
        offline: match s.offline {
            OfflinePolicy::Fail => pb::OfflinePolicy::Fail,
            OfflinePolicy::Wait => pb::OfflinePolicy::Wait,
            OfflinePolicy::Skip => pb::OfflinePolicy::Skip,
        } as i32,
    }
}

/// One line for the audit log.
pub fn describe_policy(p: &EnvPolicy) -> String {
    let s = &p.strategy;
    format!(
        "production={} soak={}s canary={} batch={} batch_timeout={}s pause={}s max_failures={} auto_revert={} offline={} migrations={}",
        p.production,
        p.soak_secs,
        s.canary,
        s.batch,
        s.batch_timeout_secs,
        s.pause_secs,
        s.max_failures,
        s.auto_revert,
        s.offline,
        p.migrations.as_str()
    )
}

pub fn environment_to_proto(p: EnvPolicy) -> pb::Environment {
    pb::Environment {
        strategy: Some(strategy_to_proto(&p.strategy)),
        name: p.name,
        production: p.production,
        soak_secs: p.soak_secs,
        migrations: p.migrations.as_str().into(),
    }
}

pub fn rollout_to_proto(r: RolloutRow, hosts: Vec<RolloutHostRow>) -> RolloutInfo {
    RolloutInfo {
        id: r.id as u64,
        strategy: Some(strategy_to_proto(&r.strategy)),
        app: r.app,
        environment: r.environment,
        from_version: r.from_version,
        to_version: r.to_version,
        manifest_digest: r.to_digest,
        generation: r.generation,
        state: super::rollout_state_to_proto(r.state).into(),
        step: r.step,
        steps: r.steps,
        reason: r.reason,
        created_at: r.created_at,
        updated_at: r.updated_at,
        created_by: r.created_by,
        next_step_at: r.next_step_at,
        hosts: hosts
            .into_iter()
            .map(|h| pb::RolloutHost {
                host: h.host,
                step: h.step,
                admitted: h.admitted_at > 0,
                outcome: super::host_outcome_to_proto(h.outcome).into(),
                reason: h.reason,
            })
            .collect(),
    }
}

async fn latest(ctx: &Ctx, tenant: &str, app: &str, env: &str) -> Result<RolloutRow> {
    ctx.store
        .latest_rollout(tenant, app, env)
        .await?
        .ok_or_else(|| ControllerError::NotFound(format!("{app} has no rollout in {env} yet")))
}

/// The latest rollout of app@env, host by host.
pub async fn status(ctx: &Ctx, tenant: &str, app: &str, env: &str) -> Result<RolloutInfo> {
    let r = latest(ctx, tenant, app, env).await?;
    let hosts = ctx.store.rollout_hosts(r.id).await?;
    Ok(rollout_to_proto(r, hosts))
}

#[derive(Debug, Clone, Copy)]
pub enum Control {
    Pause,
    Resume,
    Abort,
}

impl Control {
    fn action(self) -> &'static str {
        match self {
            Control::Pause => "rollout-pause",
            Control::Resume => "rollout-resume",
            Control::Abort => "rollout-abort",
        }
    }
}

async fn apply(ctx: &Ctx, r: &RolloutRow, c: Control) -> Result<()> {
    let store = &ctx.store;
    let refused = |what: &str| {
        ControllerError::FailedPrecondition(format!(
            "rollout {} of {} {} in {} has state {}: nothing to {what}",
            r.id, r.app, r.to_version, r.environment, r.state
        ))
    };
    match c {
        Control::Pause => {
            if !store
                .transition_rollout(r.id, &[RolloutState::Running], RolloutState::Paused, None)
                .await?
            {
                return Err(refused("pause"));
            }
        }
        Control::Resume => {
            if r.state == RolloutState::Halted {
                return Err(ControllerError::FailedPrecondition(format!(
                    "rollout {} of {} {} in {} halted ({}): `slipctl rollout abort` reverts it, `slipctl retry` or a new deploy starts over",
                    r.id, r.app, r.to_version, r.environment, r.reason
                )));
            }
            if !store
                .transition_rollout(r.id, &[RolloutState::Paused], RolloutState::Running, None)
                .await?
            {
                return Err(refused("resume"));
            }
            store.restart_step_clock(r.id).await?;
            ctx.hub.rollouts_changed();
        }
        Control::Abort => {
            if r.from_version.is_empty() {
                return Err(ControllerError::FailedPrecondition(format!(
                    "{} {} is the first release of {} in {}: there is nothing to revert to (pause it, or deploy another release)",
                    r.app, r.to_version, r.app, r.environment
                )));
            }
            let reason = format!("stopped by an operator; reverted to {}", r.from_version);
            if store
                .revert_rollout(r.id, &RolloutState::HOLDING, RolloutState::Aborted, &reason)
                .await?
                .is_none()
            {
                return Err(refused("abort"));
            }
            ctx.hub.desired_changed(&DesiredChange {
                tenant: &r.tenant,
                environment: &r.environment,
                app: &r.app,
                hosts: None,
            });
        }
    }
    Ok(())
}

/// Pause, resume or abort the latest rollout of app@env; audited.
pub async fn control(
    ctx: &Ctx,
    who: &Authorized,
    req: &RolloutRequest,
    c: Control,
) -> std::result::Result<Response<RolloutInfo>, Status> {
    let result = async {
        let r = latest(ctx, &who.tenant, &req.app, &req.environment).await?;
        apply(ctx, &r, c).await?;
        status(ctx, &who.tenant, &req.app, &req.environment).await
    }
    .await;
    let (detail, outcome) = match &result {
        Ok(info) => (
            format!(
                "rollout {}: {} -> {}",
                info.id, info.from_version, info.to_version
            ),
            "ok".to_string(),
        ),
        Err(e) => (String::new(), format!("refused: {e}")),
    };
    super::audit(
        ctx,
        who,
        c.action(),
        &req.app,
        &req.environment,
        &detail,
        &outcome,
    )
    .await;
    Ok(Response::new(result?))
}
