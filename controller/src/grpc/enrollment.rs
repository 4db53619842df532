//! `Enrollment`: an agent trades a one-time join token and a CSR for its client
//! certificate. The token says which tenant, host and environment; the CSR
//! gives only the public key.

use artifact::{NameKind, validate_name};
use proto::v1::enrollment_server::Enrollment;
use proto::v1::{EnrollRequest, EnrollResponse};
use tonic::{Request, Response, Status};

use super::{Ctx, SharedCtx};
use crate::auth::AgentId;
use crate::error::ControllerError;

/// Largest CSR accepted (a P-256 or Ed25519 CSR is well under 1 KiB).
const MAX_CSR_BYTES: usize = 16 * 1024;

pub struct EnrollmentService {
    pub ctx: SharedCtx,
}

/// Issues a certificate for `id` from `csr` and records it as the host's current one.
pub async fn issue(ctx: &Ctx, id: &AgentId, csr: &str) -> Result<EnrollResponse, Status> {
    if csr.len() > MAX_CSR_BYTES {
        return Err(Status::invalid_argument("CSR too large"));
    }
    let issued = ctx
        .ca
        .issue_agent(csr, &id.tenant, &id.host, ctx.agent_cert_ttl)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    ctx.store
        .record_cert(&id.tenant, &id.host, &issued.fingerprint, issued.not_after)
        .await
        .map_err(ControllerError::from)?;
    Ok(EnrollResponse {
        cert_pem: issued.cert_pem,
        ca_pem: ctx.ca.cert_pem.clone(),
        tenant: id.tenant.clone(),
        host: id.host.clone(),
        environment: id.environment.clone(),
        directive_key: ctx.directive_key.public(),
        not_after: issued.not_after,
    })
}

#[tonic::async_trait]
impl Enrollment for EnrollmentService {
    async fn enroll(
        &self,
        req: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let peer = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let r = req.into_inner();
        let ctx = &self.ctx;
        let mut tenant = "default".to_string();
        let result = async {
            validate_name(NameKind::Host, &r.host)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            let token = trust::secret::JoinToken::parse(&r.join_token)
                .map_err(|e| Status::unauthenticated(e.to_string()))?;
            if token.ca_pin != ctx.ca.pin() {
                return Err(Status::unauthenticated(
                    "join token was issued by another controller (CA pin differs)",
                ));
            }
            let secret_hash = trust::secret::hash_secret(&token.secret);
            let (t, environment) = ctx
                .store
                .consume_join_token(&token.id, &secret_hash, &r.host)
                .await
                .map_err(ControllerError::from)?
                .map_err(|refused| Status::permission_denied(refused.to_string()))?;
            tenant = t.clone();
            let id = AgentId {
                tenant: t,
                host: r.host.clone(),
                environment,
            };
            issue(ctx, &id, &r.csr_pem).await
        }
        .await;
        let outcome = match &result {
            Ok(resp) => format!("ok (certificate valid until {})", resp.not_after),
            Err(s) => format!("refused: {}", s.message()),
        };
        let host: String = r.host.chars().take(128).collect();
        if let Err(e) = ctx
            .store
            .audit(
                &tenant,
                &format!("host:{host}"),
                "enroll",
                "",
                "",
                "",
                &outcome,
                &peer,
            )
            .await
        {
            tracing::error!(error = %e, "audit log write failed");
        }
        match &result {
            Ok(_) => tracing::info!(%tenant, %host, %peer, "agent enrolled"),
            Err(s) => tracing::warn!(%host, %peer, reason = %s.message(), "enrollment refused"),
        }
        Ok(Response::new(result?))
    }
}
