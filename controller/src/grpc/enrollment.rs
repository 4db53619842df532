//! `Enrollment`: an agent trades a one-time join token and a CSR for its client
//! certificate. The token says which tenant, host and environment; the CSR
//! gives only the public key. The caller is anonymous until the token is
//! burnt: the edge rate-limits it per IP, a malformed CSR is refused before
//! the token is touched, and a refusal is counted and logged (at a bounded
//! rate), never written to an audit log; a successful enrollment is audited
//! in the token's tenant.

use artifact::{NameKind, validate_name};
use proto::v1::enrollment_server::Enrollment;
use proto::v1::{EnrollRequest, EnrollResponse};
use tonic::{Request, Response, Status};

use super::{Ctx, SharedCtx};
use crate::auth::AgentId;
use crate::error::ControllerError;
use crate::store::{JoinRefused, NewCert};

/// Largest CSR accepted (a P-256 or Ed25519 CSR is well under 1 KiB).
const MAX_CSR_BYTES: usize = 16 * 1024;

pub struct EnrollmentService {
    pub ctx: SharedCtx,
}

/// Refuses a CSR that is too large or that `issue` could not sign.
fn check_csr(csr: &str) -> Result<(), Status> {
    if csr.len() > MAX_CSR_BYTES {
        return Err(Status::invalid_argument("CSR too large"));
    }
    trust::pki::check_csr(csr).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// Issues a certificate for `id` from `csr` and records it as the host's
/// current one (the only one that works from now on: see `record_cert`).
pub async fn issue(ctx: &Ctx, id: &AgentId, csr: &str) -> Result<EnrollResponse, Status> {
    check_csr(csr)?;
    let issued = ctx
        .ca
        .issue_agent(csr, &id.tenant, &id.host, ctx.agent_cert_ttl)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    ctx.store
        .record_cert(&id.tenant, &id.host, &issued.fingerprint, issued.not_after)
        .await
        .map_err(ControllerError::from)?;
    ctx.hub.certified(&id.tenant, &id.host, &issued.fingerprint);
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
            // Empty: the host the token was made for (a join with no config).
            let asked = Some(r.host.as_str()).filter(|h| !h.is_empty());
            if let Some(h) = asked {
                validate_name(NameKind::Host, h)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
            }
            let token = trust::secret::JoinToken::parse(&r.join_token)
                .map_err(|e| Status::unauthenticated(e.to_string()))?;
            if token.ca_pin != ctx.ca.pin() {
                return Err(Status::unauthenticated(
                    "join token was issued by another controller (CA pin differs)",
                ));
            }
            // A CSR that cannot be signed must not cost the host its token.
            check_csr(&r.csr_pem)?;
            let secret_hash = trust::secret::hash_secret(&token.secret);
            // Signed for whom the token was made, then spent and recorded in
            // one write transaction (one turn of the store's write lock per
            // join, not two); a refused token records nothing.
            let (t, h) = ctx
                .store
                .join_token_host(&token.id, &secret_hash)
                .await
                .map_err(ControllerError::from)?
                .ok_or_else(|| Status::permission_denied(JoinRefused::Unknown.to_string()))?;
            let issued = ctx
                .ca
                .issue_agent(&r.csr_pem, &t, &h, ctx.agent_cert_ttl)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            let cert = NewCert {
                tenant: &t,
                host: &h,
                fingerprint: &issued.fingerprint,
                not_after: issued.not_after,
            };
            let (t, h, environment) = ctx
                .store
                .consume_join_token(
                    &token.id,
                    &secret_hash,
                    asked,
                    &trust::sha256(r.csr_pem.as_bytes()),
                    Some(&cert),
                )
                .await
                .map_err(ControllerError::from)?
                .map_err(|refused| Status::permission_denied(refused.to_string()))?;
            ctx.hub.certified(&t, &h, &issued.fingerprint);
            tenant = t.clone();
            Ok(EnrollResponse {
                cert_pem: issued.cert_pem,
                ca_pem: ctx.ca.cert_pem.clone(),
                tenant: t,
                host: h,
                environment,
                directive_key: ctx.directive_key.public(),
                not_after: issued.not_after,
            })
        }
        .await;
        let host = crate::sanitize::text(result.as_ref().map_or(&r.host, |resp| &resp.host), 128);
        match &result {
            Ok(resp) => {
                let outcome = format!("ok (certificate valid until {})", resp.not_after);
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
                tracing::info!(%tenant, %host, %peer, "agent enrolled");
            }
            Err(s) => ctx.edge.refuse_anonymous("enroll", &peer, s.message()),
        }
        Ok(Response::new(result?))
    }
}
