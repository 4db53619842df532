//! Who is calling. People and CI present an API token (`authorization: Bearer
//! swt_…`) whose roles decide what they may do in their tenant; agents present
//! the client certificate they got at enrollment, and the certificate alone
//! says which tenant, host and environment they are.

use tonic::{Request, Status};

use crate::ctx::Ctx;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Viewer,
    Publisher,
    Deployer,
    Promoter,
    Admin,
}

pub const ROLE_NAMES: &str = "viewer, publisher, deployer, promoter, admin";

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Publisher => "publisher",
            Role::Deployer => "deployer",
            Role::Promoter => "promoter",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        [
            Role::Viewer,
            Role::Publisher,
            Role::Deployer,
            Role::Promoter,
            Role::Admin,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Read,
    Publish,
    /// Change desired state; `production` for an environment marked production.
    Change {
        production: bool,
    },
    Admin,
}

impl Need {
    /// Whether a refusal of this need belongs in the audit log (mutations do).
    pub fn is_mutation(self) -> bool {
        self != Need::Read
    }

    fn describe(self) -> &'static str {
        match self {
            Need::Read => "a valid token",
            Need::Publish => "the publisher role",
            Need::Change { production: false } => "the deployer or promoter role",
            Need::Change { production: true } => {
                "the promoter role (production changes are not for CI tokens)"
            }
            Need::Admin => "the admin role",
        }
    }
}

/// A caller authenticated by API token.
#[derive(Debug, Clone)]
pub struct Principal {
    pub token_id: String,
    pub name: String,
    pub tenant: String,
    pub roles: Vec<Role>,
}

impl Principal {
    /// How the audit log names the caller.
    pub fn actor(&self) -> String {
        format!("{} (token {})", self.name, self.token_id)
    }

    pub fn allows(&self, need: Need) -> bool {
        let has = |r| self.roles.contains(&Role::Admin) || self.roles.contains(&r);
        match need {
            Need::Read => true,
            Need::Publish => has(Role::Publisher),
            Need::Change { production: false } => has(Role::Deployer) || has(Role::Promoter),
            Need::Change { production: true } => has(Role::Promoter),
            Need::Admin => has(Role::Admin),
        }
    }

    /// Refuses unless the token is for `tenant` and grants `need`.
    pub fn check(&self, tenant: &str, need: Need) -> Result<(), Status> {
        if self.tenant != tenant {
            return Err(Status::permission_denied(format!(
                "token {:?} is for tenant {:?}, not {tenant:?}",
                self.name, self.tenant
            )));
        }
        if !self.allows(need) {
            return Err(Status::permission_denied(format!(
                "token {:?} lacks {}",
                self.name,
                need.describe()
            )));
        }
        Ok(())
    }
}

/// Creates an API token; returns (token text, stored row).
pub fn new_token(
    tenant: &str,
    name: &str,
    roles: Vec<String>,
    created_by: &str,
    expires_at: Option<i64>,
) -> (String, crate::store::ApiTokenRow) {
    let token = trust::secret::ApiToken::generate();
    let row = crate::store::ApiTokenRow {
        id: token.id.clone(),
        tenant: tenant.into(),
        name: name.into(),
        roles,
        secret_hash: trust::secret::hash_secret(&token.secret),
        created_at: crate::store::now(),
        created_by: created_by.into(),
        revoked_at: None,
        expires_at,
        last_used_at: None,
    };
    (token.encode(), row)
}

/// The caller's API token, checked against its stored hash. The edge
/// (`crate::grpc::edge`) authenticates every API call from its headers before the
/// body is read and leaves the principal in the request's extensions: a
/// handler finds it there and does not look the token up again.
pub async fn authenticate<T>(ctx: &Ctx, req: &Request<T>) -> Result<Principal, Status> {
    if let Some(p) = req.extensions().get::<Principal>() {
        return Ok(p.clone());
    }
    authenticate_header(
        ctx,
        req.metadata().get("authorization").map(|v| v.as_bytes()),
    )
    .await
}

/// Checks an `authorization` header value (`Bearer swt_…`): the token's hash,
/// revocation and expiry. Records the use (at most once a minute per token).
pub async fn authenticate_header(ctx: &Ctx, value: Option<&[u8]>) -> Result<Principal, Status> {
    let Some(value) = value else {
        return Err(Status::unauthenticated(
            "no API token: set SLIPWAY_TOKEN or --token-file",
        ));
    };
    let text = std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| Status::unauthenticated("malformed authorization header"))?;
    authenticate_token(ctx, text).await
}

/// Checks an API token's text (`swt_…`): its hash, revocation and expiry.
pub async fn authenticate_token(ctx: &Ctx, text: &str) -> Result<Principal, Status> {
    let token = trust::secret::ApiToken::parse(text)
        .map_err(|_| Status::unauthenticated("invalid API token"))?;
    let row = ctx
        .store
        .api_token(&token.id)
        .await
        .map_err(crate::error::ControllerError::from)?;
    let Some(row) = row else {
        return Err(Status::unauthenticated("invalid API token"));
    };
    let hash = trust::secret::hash_secret(&token.secret);
    if !trust::ct_eq(hash.as_bytes(), row.secret_hash.as_bytes()) {
        return Err(Status::unauthenticated("invalid API token"));
    }
    principal(ctx, row).await
}

/// The principal of a stored token, unless it was revoked or expired.
/// Records the use (at most once a minute per token).
pub async fn principal(ctx: &Ctx, row: crate::store::ApiTokenRow) -> Result<Principal, Status> {
    if row.revoked_at.is_some() {
        return Err(Status::unauthenticated(format!(
            "API token {:?} was revoked",
            row.name
        )));
    }
    let now = crate::store::now();
    if let Some(expires_at) = row.expires_at
        && expires_at <= now
    {
        return Err(Status::unauthenticated(format!(
            "token expired: API token {:?} expired {}s ago; ask an admin for a new one",
            row.name,
            now - expires_at
        )));
    }
    if row
        .last_used_at
        .is_none_or(|t| now - t >= crate::store::LAST_USED_RESOLUTION_SECS)
        && let Err(e) = ctx.store.touch_api_token(&row.id, now).await
    {
        tracing::error!(error = %e, "recording a token's last use failed");
    }
    Ok(Principal {
        token_id: row.id,
        name: row.name,
        tenant: row.tenant,
        roles: row.roles.iter().filter_map(|r| Role::parse(r)).collect(),
    })
}

/// An agent, as its client certificate says.
#[derive(Debug, Clone)]
pub struct AgentId {
    pub tenant: String,
    pub host: String,
    pub environment: String,
    /// The fingerprint of the certificate it was found by (empty: found by
    /// a join token).
    pub cert: String,
}

/// The calling host, from its client certificate (as the edge found it, or
/// looked up now).
pub async fn agent<T>(ctx: &Ctx, req: &Request<T>) -> Result<AgentId, Status> {
    if let Some(id) = req.extensions().get::<AgentId>() {
        return Ok(id.clone());
    }
    agent_from_certs(ctx, req.peer_certs().as_deref().map(Vec::as_slice)).await
}

/// The host a client certificate chain (leaf first) was issued to.
pub async fn agent_from_certs(
    ctx: &Ctx,
    certs: Option<&[tonic::transport::CertificateDer<'static>]>,
) -> Result<AgentId, Status> {
    let certs = certs.ok_or_else(|| {
        Status::unauthenticated(
            "a client certificate is required: enroll this agent with a join token",
        )
    })?;
    let cert = certs.first().ok_or_else(|| {
        Status::unauthenticated(
            "a client certificate is required: enroll this agent with a join token",
        )
    })?;
    let fingerprint = trust::pki::fingerprint(cert);
    // A call from a host whose session here was opened with this very
    // certificate: the session's identity, which a revocation or a new
    // certificate takes away (see `Hub::identity`). Two calls per host per
    // deploy no longer read the store.
    if let Some((tenant, host, environment)) = ctx.hub.identity(&fingerprint) {
        return Ok(AgentId {
            tenant,
            host,
            environment,
            cert: fingerprint,
        });
    }
    let owner = ctx
        .store
        .cert_owner(&fingerprint)
        .await
        .map_err(crate::error::ControllerError::from)?
        .ok_or_else(|| Status::unauthenticated("unknown client certificate: enroll again"))?;
    if owner.revoked {
        return Err(Status::permission_denied(format!(
            "host {:?} was revoked",
            owner.host
        )));
    }
    Ok(AgentId {
        tenant: owner.tenant,
        host: owner.host,
        environment: owner.environment,
        cert: fingerprint,
    })
}
