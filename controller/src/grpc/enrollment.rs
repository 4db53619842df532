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
use crate::store::{Join, JoinRefused, NewCert};

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
            // Signed for whom the token was made, then spent and recorded,
            // with its audit row, in one write shared with the other joins
            // waiting (`joins`); a refused token records nothing.
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
            let join = Join {
                token_id: token.id.clone(),
                secret_hash,
                host: asked.map(str::to_string),
                csr_digest: trust::sha256(r.csr_pem.as_bytes()),
                cert: Some(NewCert {
                    tenant: t,
                    host: h,
                    fingerprint: issued.fingerprint.clone(),
                    not_after: issued.not_after,
                }),
                peer: peer.clone(),
            };
            let (t, h, environment) = ctx
                .joins
                .enroll(join)
                .await?
                .map_err(|refused| Status::permission_denied(refused.to_string()))?;
            ctx.hub.certified(&t, &h, &issued.fingerprint);
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
        match &result {
            Ok(resp) => {
                let (tenant, host) = (&resp.tenant, crate::sanitize::text(&resp.host, 128));
                tracing::info!(%tenant, %host, %peer, "agent enrolled");
            }
            Err(s) => ctx.edge.refuse_anonymous("enroll", &peer, s.message()),
        }
        Ok(Response::new(result?))
    }
}
