//! The gRPC edge: the only place that touches prost types. Each service
//! authorizes the caller, converts requests to store calls and domain errors to
//! `tonic::Status`.

pub mod admin;
pub mod agents;
pub mod apps;
pub mod deployments;
pub mod edge;
pub mod enrollment;
pub mod fleet_status;
pub mod inventory;
pub mod logs;
pub mod releases;
pub mod replicas;
pub mod rollouts;

use tonic::{Request, Status};

use crate::auth::{self, Need, Principal};
pub use crate::ctx::{Ctx, SharedCtx};
use crate::lifecycle::{Health, HostOutcome, RolloutState};

/// The tenant of a request, "default" when empty.
pub fn tenant_of(t: &str) -> Result<String, crate::error::ControllerError> {
    let t = if t.is_empty() { "default" } else { t };
    artifact::validate_name(artifact::NameKind::Tenant, t)?;
    Ok(t.to_string())
}

/// What a call wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    Read,
    Publish,
    Admin,
    /// Change desired state in the request's environment (production needs `promoter`).
    Change,
}

/// A request names its tenant (empty: the token's) and, for changes, the app
/// and environment it is about (for the role check and the audit log).
pub trait Scoped {
    fn tenant(&self) -> &str;
    fn target(&self) -> (&str, &str) {
        ("", "")
    }
}

macro_rules! scoped {
    ($($t:ty),* $(,)?) => {$(
        impl Scoped for $t {
            fn tenant(&self) -> &str { &self.tenant }
        }
    )*};
}
macro_rules! targeted {
    ($($t:ty => $app:ident, $env:ident);* $(;)?) => {$(
        impl Scoped for $t {
            fn tenant(&self) -> &str { &self.tenant }
            fn target(&self) -> (&str, &str) { (&self.$app, &self.$env) }
        }
    )*};
}
use proto::v1 as pb;
scoped!(
    pb::MissingBlobsRequest,
    pb::MissingObjectsRequest,
    pb::CreateReleaseRequest,
    pb::ListReleasesRequest,
    pb::FleetStatusRequest,
    pb::HistoryRequest,
    pb::ListEnvironmentsRequest,
    pb::CreateTokenRequest,
    pb::ListTokensRequest,
    pb::RevokeTokenRequest,
    pb::RevokeHostRequest,
    pb::ListHostsRequest,
    pb::CreateTenantRequest,
    pb::UpdateHostRequest,
    pb::SetEnvironmentRequest,
    pb::ListAppsRequest,
    pb::AppHostsRequest,
    pb::LogsRequest,
);
targeted!(
    pb::DeployRequest => app, environment;
    pb::PromoteRequest => app, to_environment;
    pb::RollbackRequest => app, environment;
    pb::RetryRequest => app, environment;
    pb::RolloutRequest => app, environment;
    pb::AckDriftRequest => app, environment;
    pb::PlaceAppRequest => app, environment;
    pb::SetAppRequest => app, environment;
    pb::RemoveAppRequest => app, environment;
);
impl Scoped for pb::AddHostRequest {
    fn tenant(&self) -> &str {
        &self.tenant
    }
    fn target(&self) -> (&str, &str) {
        ("", &self.environment)
    }
}
impl Scoped for pb::WhoAmIRequest {
    fn tenant(&self) -> &str {
        ""
    }
}
/// An upload names its tenant in the first message: authorize for the token's.
impl Scoped for tonic::Streaming<pb::UploadBlobRequest> {
    fn tenant(&self) -> &str {
        ""
    }
}

/// An authorized caller, with the tenant the call acts on.
pub struct Authorized {
    pub principal: Principal,
    pub tenant: String,
    pub peer: String,
}

impl Authorized {
    pub fn actor(&self) -> String {
        self.principal.actor()
    }
}

fn peer<T>(req: &Request<T>) -> String {
    req.remote_addr().map(|a| a.to_string()).unwrap_or_default()
}

/// A read: any valid token of the tenant.
pub async fn reader<T: Scoped>(ctx: &Ctx, req: &Request<T>) -> Result<Authorized, Status> {
    authorize(ctx, req, Want::Read, "").await
}

/// Authenticates the API token, resolves the tenant (the token's when the
/// request names none) and checks the role `want` needs. A refused mutation
/// (`action`) by an authenticated caller is written to the audit log of the
/// caller's own tenant (the one it is authenticated for, never the one the
/// request names), with who tried and from where. A caller that is not
/// authenticated is refused, counted and logged at a bounded rate by the
/// edge, and leaves no row in any tenant's log.
pub async fn authorize<T: Scoped>(
    ctx: &Ctx,
    req: &Request<T>,
    want: Want,
    action: &str,
) -> Result<Authorized, Status> {
    let peer = peer(req);
    let tenant = req.get_ref().tenant();
    let (app, env) = req.get_ref().target();
    let principal = match auth::authenticate(ctx, req).await {
        Ok(p) => p,
        Err(status) => {
            ctx.edge.refuse_anonymous(action, &peer, status.message());
            return Err(status);
        }
    };
    let mut need = match want {
        Want::Read => Need::Read,
        Want::Publish => Need::Publish,
        Want::Admin => Need::Admin,
        Want::Change => Need::Change { production: true },
    };
    let result: Result<String, Status> = async {
        let tenant = if tenant.is_empty() {
            principal.tenant.clone()
        } else {
            tenant_of(tenant)?
        };
        if want == Want::Change {
            let production = ctx
                .store
                .environment(&tenant, env)
                .await
                .map_err(crate::error::ControllerError::from)?
                .unwrap_or(false);
            need = Need::Change { production };
        }
        principal.check(&tenant, need)?;
        Ok(tenant)
    }
    .await;
    match result {
        Ok(tenant) => Ok(Authorized {
            principal,
            tenant,
            peer,
        }),
        Err(status) => {
            if need.is_mutation() {
                let actor = principal.actor();
                let outcome = format!("refused: {}", status.message());
                if let Err(e) = ctx
                    .store
                    .audit(
                        &principal.tenant,
                        &actor,
                        action,
                        app,
                        env,
                        "",
                        &outcome,
                        &peer,
                    )
                    .await
                {
                    tracing::error!(error = %e, "audit log write failed");
                }
                tracing::warn!(
                    %actor,
                    action,
                    app = %crate::sanitize::text(app, 256),
                    env = %crate::sanitize::text(env, 256),
                    %peer,
                    reason = %crate::sanitize::text(status.message(), 1024),
                    "refused"
                );
            }
            Err(status)
        }
    }
}

/// A report's health from the wire (a value this controller does not know:
/// unspecified).
pub fn health_from_proto(h: i32) -> Health {
    match pb::Health::try_from(h) {
        Ok(pb::Health::Unknown) => Health::Unknown,
        Ok(pb::Health::Healthy) => Health::Healthy,
        Ok(pb::Health::Unhealthy) => Health::Unhealthy,
        Ok(pb::Health::Unspecified) | Err(_) => Health::Unspecified,
    }
}

pub fn health_to_proto(h: Health) -> i32 {
    let h = match h {
        Health::Unspecified => pb::Health::Unspecified,
        Health::Unknown => pb::Health::Unknown,
        Health::Healthy => pb::Health::Healthy,
        Health::Unhealthy => pb::Health::Unhealthy,
    };
    h as i32
}

pub fn rollout_state_to_proto(s: RolloutState) -> pb::RolloutState {
    match s {
        RolloutState::Running => pb::RolloutState::Running,
        RolloutState::Paused => pb::RolloutState::Paused,
        RolloutState::Halted => pb::RolloutState::Halted,
        RolloutState::Succeeded => pb::RolloutState::Succeeded,
        RolloutState::Reverted => pb::RolloutState::Reverted,
        RolloutState::Aborted => pb::RolloutState::Aborted,
        RolloutState::Superseded => pb::RolloutState::Superseded,
    }
}

/// A rollout state from the wire; `None` for unspecified or a value this
/// controller does not know.
pub fn rollout_state_from_proto(s: i32) -> Option<RolloutState> {
    match pb::RolloutState::try_from(s).ok()? {
        pb::RolloutState::Unspecified => None,
        pb::RolloutState::Running => Some(RolloutState::Running),
        pb::RolloutState::Paused => Some(RolloutState::Paused),
        pb::RolloutState::Halted => Some(RolloutState::Halted),
        pb::RolloutState::Succeeded => Some(RolloutState::Succeeded),
        pb::RolloutState::Reverted => Some(RolloutState::Reverted),
        pb::RolloutState::Aborted => Some(RolloutState::Aborted),
        pb::RolloutState::Superseded => Some(RolloutState::Superseded),
    }
}

pub fn host_outcome_to_proto(o: HostOutcome) -> pb::HostOutcome {
    match o {
        HostOutcome::Pending => pb::HostOutcome::Pending,
        HostOutcome::Healthy => pb::HostOutcome::Healthy,
        HostOutcome::Failed => pb::HostOutcome::Failed,
        HostOutcome::Timeout => pb::HostOutcome::Timeout,
        HostOutcome::Offline => pb::HostOutcome::Offline,
        HostOutcome::Reverted => pb::HostOutcome::Reverted,
    }
}

/// A host outcome from the wire; `None` for unspecified or a value this
/// controller does not know.
pub fn host_outcome_from_proto(o: i32) -> Option<HostOutcome> {
    match pb::HostOutcome::try_from(o).ok()? {
        pb::HostOutcome::Unspecified => None,
        pb::HostOutcome::Pending => Some(HostOutcome::Pending),
        pb::HostOutcome::Healthy => Some(HostOutcome::Healthy),
        pb::HostOutcome::Failed => Some(HostOutcome::Failed),
        pb::HostOutcome::Timeout => Some(HostOutcome::Timeout),
        pb::HostOutcome::Offline => Some(HostOutcome::Offline),
        pb::HostOutcome::Reverted => Some(HostOutcome::Reverted),
    }
}

/// "unknown environment X (known: a, b)" + `hint`, as a not-found error.
pub async fn unknown_environment(
    ctx: &Ctx,
    tenant: &str,
    env: &str,
    hint: &str,
) -> crate::error::ControllerError {
    crate::intent::unknown_environment(&ctx.store, tenant, env, hint).await
}

/// Writes one audit row for an authorized caller's mutation.
pub async fn audit(
    ctx: &Ctx,
    who: &Authorized,
    action: &str,
    app: &str,
    env: &str,
    detail: &str,
    outcome: &str,
) {
    if let Err(e) = ctx
        .store
        .audit(
            &who.tenant,
            &who.actor(),
            action,
            app,
            env,
            detail,
            outcome,
            &who.peer,
        )
        .await
    {
        tracing::error!(error = %e, "audit log write failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The store keeps the wire's numbers: both mappings agree with `code`.
    #[test]
    fn health_converts_to_the_same_numbers_it_is_stored_as() {
        for h in [
            Health::Unspecified,
            Health::Unknown,
            Health::Healthy,
            Health::Unhealthy,
        ] {
            assert_eq!(health_to_proto(h), h.code());
            assert_eq!(health_from_proto(h.code()), h);
        }
        assert_eq!(health_from_proto(99), Health::Unspecified);
    }

    /// `lifecycle::deploying` names the proto's in-progress deploy states.
    #[test]
    fn deploying_means_fetching_installing_or_activating_on_the_wire() {
        use pb::DeployState as D;
        for d in [D::Fetching, D::Installing, D::Activating] {
            assert!(crate::lifecycle::deploying(d as i32), "{d:?}");
        }
        for d in [
            D::Unspecified,
            D::Idle,
            D::Healthy,
            D::RolledBack,
            D::Failed,
            D::Unhealthy,
        ] {
            assert!(!crate::lifecycle::deploying(d as i32), "{d:?}");
        }
    }

    /// Every rollout state reaches the wire as the proto value of the same
    /// name and comes back as itself; every proto value but unspecified is one.
    #[test]
    fn rollout_states_round_trip_through_the_proto_enum() {
        for s in RolloutState::ALL {
            let p = rollout_state_to_proto(s);
            assert_eq!(rollout_state_from_proto(p as i32), Some(s), "{s}");
            assert_eq!(
                p.as_str_name(),
                format!("ROLLOUT_STATE_{}", s.as_str().to_uppercase())
            );
        }
        let wire: Vec<i32> = (0..32)
            .filter(|v| pb::RolloutState::try_from(*v).is_ok())
            .collect();
        assert_eq!(wire.len(), RolloutState::ALL.len() + 1, "{wire:?}");
        for v in wire {
            match rollout_state_from_proto(v) {
                Some(s) => assert_eq!(rollout_state_to_proto(s) as i32, v),
                None => assert_eq!(v, pb::RolloutState::Unspecified as i32),
            }
        }
        assert_eq!(rollout_state_from_proto(99), None);
    }

    #[test]
    fn host_outcomes_round_trip_through_the_proto_enum() {
        for o in HostOutcome::ALL {
            let p = host_outcome_to_proto(o);
            assert_eq!(host_outcome_from_proto(p as i32), Some(o), "{o}");
            assert_eq!(
                p.as_str_name(),
                format!("HOST_OUTCOME_{}", o.as_str().to_uppercase())
            );
        }
        let wire: Vec<i32> = (0..32)
            .filter(|v| pb::HostOutcome::try_from(*v).is_ok())
            .collect();
        assert_eq!(wire.len(), HostOutcome::ALL.len() + 1, "{wire:?}");
        for v in wire {
            match host_outcome_from_proto(v) {
                Some(o) => assert_eq!(host_outcome_to_proto(o) as i32, v),
                None => assert_eq!(v, pb::HostOutcome::Unspecified as i32),
            }
        }
        assert_eq!(host_outcome_from_proto(99), None);
    }
}
