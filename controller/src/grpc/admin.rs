//! `Admin`: API tokens and hosts (join tokens, revocation, inventory). Admin
//! role only, every change audited.

use std::time::Duration;

use artifact::{NameKind, validate_name};
use proto::v1::admin_server::Admin;
use proto::v1::{
    AddHostRequest, AddHostResponse, CreateTenantRequest, CreateTokenRequest, CreateTokenResponse,
    HostInfo, ListHostsRequest, ListHostsResponse, ListTokensRequest, ListTokensResponse,
    RevokeHostRequest, RevokeHostResponse, RevokeTokenRequest, RevokeTokenResponse,
    SetEnvironmentRequest, TokenInfo, UpdateHostRequest, WhoAmIRequest, WhoAmIResponse,
};
use tonic::{Request, Response, Status};

use super::{SharedCtx, Want, audit, authorize, reader};
use crate::auth::{ROLE_NAMES, Role};
use crate::error::ControllerError;
use crate::store::{ApiTokenRow, now};

/// Admins of this tenant operate the controller: they create the others.
pub const OPERATOR_TENANT: &str = "default";

/// Longest a join token may live.
const MAX_JOIN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

pub struct AdminService {
    pub ctx: SharedCtx,
}

fn token_info(t: ApiTokenRow) -> TokenInfo {
    TokenInfo {
        id: t.id,
        name: t.name,
        roles: t.roles,
        created_at: t.created_at,
        created_by: t.created_by,
        revoked_at: t.revoked_at.unwrap_or(0),
        expires_at: t.expires_at.unwrap_or(0),
        last_used_at: t.last_used_at.unwrap_or(0),
    }
}

/// Longest lifetime `--expires` may give a token (ten years).
const MAX_TOKEN_TTL_SECS: u64 = 10 * 365 * 24 * 3600;

fn validate_token_name(name: &str) -> Result<(), Status> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "invalid token name {:?}: 1-64 of A-Z a-z 0-9 - _ . @",
            name.chars().take(64).collect::<String>()
        )))
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_token(
        &self,
        req: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let who = authorize(&self.ctx, &req, Want::Admin, "token-create").await?;
        let r = req.into_inner();
        validate_token_name(&r.name)?;
        if r.roles.is_empty() || r.roles.len() > 5 {
            return Err(Status::invalid_argument(format!(
                "give one or more roles: {ROLE_NAMES}"
            )));
        }
        for role in &r.roles {
            if Role::parse(role).is_none() {
                return Err(Status::invalid_argument(format!(
                    "unknown role {role:?} (roles: {ROLE_NAMES})"
                )));
            }
        }
        if r.expires_in_secs > MAX_TOKEN_TTL_SECS {
            return Err(Status::invalid_argument(format!(
                "a token lives at most {} days",
                MAX_TOKEN_TTL_SECS / 86400
            )));
        }
        let expires_at = (r.expires_in_secs > 0).then(|| now() + r.expires_in_secs as i64);
        let (text, row) = crate::auth::new_token(
            &who.tenant,
            &r.name,
            r.roles.clone(),
            &who.actor(),
            expires_at,
        );
        self.ctx
            .store
            .insert_api_token(&row)
            .await
            .map_err(ControllerError::from)?;
        let mut detail = format!("{} {} [{}]", row.name, row.id, row.roles.join(","));
        if let Some(at) = row.expires_at {
            detail.push_str(&format!(" expires {at}"));
        }
        audit(&self.ctx, &who, "token-create", "", "", &detail, "ok").await;
        Ok(Response::new(CreateTokenResponse {
            token: text,
            info: Some(token_info(row)),
        }))
    }

    async fn list_tokens(
        &self,
        req: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        let who = authorize(&self.ctx, &req, Want::Admin, "token-list").await?;
        let rows = self
            .ctx
            .store
            .api_tokens(&who.tenant)
            .await
            .map_err(ControllerError::from)?;
        Ok(Response::new(ListTokensResponse {
            tokens: rows.into_iter().map(token_info).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        req: Request<RevokeTokenRequest>,
    ) -> Result<Response<RevokeTokenResponse>, Status> {
        let who = authorize(&self.ctx, &req, Want::Admin, "token-revoke").await?;
        let r = req.into_inner();
        let n = self
            .ctx
            .store
            .revoke_api_token(&who.tenant, &r.token)
            .await
            .map_err(ControllerError::from)?;
        let outcome = if n == 0 {
            "refused: no such active token"
        } else {
            "ok"
        };
        audit(&self.ctx, &who, "token-revoke", "", "", &r.token, outcome).await;
        if n == 0 {
            return Err(Status::not_found(format!("no active token {:?}", r.token)));
        }
        Ok(Response::new(RevokeTokenResponse {}))
    }

    async fn add_host(
        &self,
        req: Request<AddHostRequest>,
    ) -> Result<Response<AddHostResponse>, Status> {
        let who = authorize(&self.ctx, &req, Want::Admin, "host-add").await?;
        let r = req.into_inner();
        validate_name(NameKind::Host, &r.host)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let store = &self.ctx.store;
        if store
            .environment(&who.tenant, &r.environment)
            .await
            .map_err(ControllerError::from)?
            .is_none()
        {
            return Err(Status::not_found(format!(
                "unknown environment {:?}",
                r.environment
            )));
        }
        let inventory = super::inventory::host_change(
            (!r.purpose.is_empty()).then(|| r.purpose.clone()),
            (!r.criticality.is_empty()).then(|| r.criticality.clone()),
            r.labels.clone(),
            Vec::new(),
        )?;
        let ttl = match r.ttl_secs {
            0 => self.ctx.join_token_ttl,
            s => Duration::from_secs(u64::from(s)).min(MAX_JOIN_TTL),
        };
        let token = trust::secret::JoinToken::generate(self.ctx.ca.pin());
        let expires_at = now() + ttl.as_secs() as i64;
        store
            .add_host(
                &who.tenant,
                &r.host,
                &r.environment,
                &token.id,
                &trust::secret::hash_secret(&token.secret),
                expires_at,
                &who.actor(),
            )
            .await
            .map_err(ControllerError::from)?;
        store
            .update_host(&who.tenant, &r.host, &inventory)
            .await
            .map_err(ControllerError::from)?;
        let detail = format!(
            "{} (join token {} valid until {expires_at})",
            r.host, token.id
        );
        audit(
            &self.ctx,
            &who,
            "host-add",
            "",
            &r.environment,
            &detail,
            "ok",
        )
        .await;
        Ok(Response::new(AddHostResponse {
            join_token: token.encode(),
            expires_at,
        }))
    }

    async fn revoke_host(
        &self,
        req: Request<RevokeHostRequest>,
    ) -> Result<Response<RevokeHostResponse>, Status> {
        let who = authorize(&self.ctx, &req, Want::Admin, "host-revoke").await?;
        let r = req.into_inner();
        let found = self
            .ctx
            .store
            .revoke_host(&who.tenant, &r.host)
            .await
            .map_err(ControllerError::from)?;
        let outcome = if found { "ok" } else { "refused: no such host" };
        audit(&self.ctx, &who, "host-revoke", "", "", &r.host, outcome).await;
        if !found {
            return Err(Status::not_found(format!("no host {:?}", r.host)));
        }
        self.ctx.hub.evict(&who.tenant, &r.host);
        tracing::warn!(tenant = %who.tenant, host = %r.host, "host revoked");
        Ok(Response::new(RevokeHostResponse {}))
    }

    async fn list_hosts(
        &self,
        req: Request<ListHostsRequest>,
    ) -> Result<Response<ListHostsResponse>, Status> {
        let who = reader(&self.ctx, &req).await?;
        let r = req.into_inner();
        let rows = self
            .ctx
            .store
            .hosts(&who.tenant, &r.environment)
            .await
            .map_err(ControllerError::from)?;
        let now = now();
        Ok(Response::new(ListHostsResponse {
            hosts: rows
                .into_iter()
                .filter(|h| super::inventory::matches(h, &r))
                .map(|h| super::inventory::host_info(&self.ctx, &who.tenant, h, now))
                .collect(),
        }))
    }

    async fn update_host(
        &self,
        req: Request<UpdateHostRequest>,
    ) -> Result<Response<HostInfo>, Status> {
        let who = authorize(&self.ctx, &req, Want::Admin, "host-update").await?;
        let r = req.into_inner();
        let change =
            super::inventory::host_change(r.purpose, r.criticality, r.set_labels, r.remove_labels)?;
        let store = &self.ctx.store;
        let found = store
            .update_host(&who.tenant, &r.host, &change)
            .await
            .map_err(ControllerError::from)?;
        // Labels decide placement: sessions recompute what their host should run.
        self.ctx.hub.host_changed(&who.tenant, &r.host);
        let outcome = if found { "ok" } else { "refused: no such host" };
        audit(
            &self.ctx,
            &who,
            "host-update",
            "",
            "",
            &super::inventory::describe_change(&r.host, &change),
            outcome,
        )
        .await;
        let row = store
            .hosts(&who.tenant, "")
            .await
            .map_err(ControllerError::from)?
            .into_iter()
            .find(|h| h.name == r.host)
            .filter(|_| found)
            .ok_or_else(|| Status::not_found(format!("no host {:?}", r.host)))?;
        Ok(Response::new(super::inventory::host_info(
            &self.ctx,
            &who.tenant,
            row,
            now(),
        )))
    }

    async fn set_environment(
        &self,
        req: Request<SetEnvironmentRequest>,
    ) -> Result<Response<proto::v1::Environment>, Status> {
        let who = authorize(&self.ctx, &req, Want::Admin, "env-set").await?;
        let r = req.into_inner();
        let result = async {
            let change = super::inventory::env_change(&r)?;
            let store = &self.ctx.store;
            if !r.create && store.environment(&who.tenant, &r.name).await?.is_none() {
                let hint = "; add --create to create it";
                return Err(
                    super::unknown_environment(&self.ctx, &who.tenant, &r.name, hint).await,
                );
            }
            Ok::<_, ControllerError>(
                self.ctx
                    .store
                    .set_environment(&who.tenant, &r.name, &change)
                    .await?,
            )
        }
        .await;
        let (detail, outcome) = match &result {
            Ok(p) => (super::rollouts::describe_policy(p), "ok".to_string()),
            Err(e) => (String::new(), format!("refused: {e}")),
        };
        audit(&self.ctx, &who, "env-set", "", &r.name, &detail, &outcome).await;
        Ok(Response::new(super::rollouts::environment_to_proto(
            result?,
        )))
    }

    async fn create_tenant(
        &self,
        req: Request<CreateTenantRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let who = authorize(&self.ctx, &req, Want::Admin, "tenant-create").await?;
        let name = req.into_inner().name;
        if who.tenant != OPERATOR_TENANT {
            audit(
                &self.ctx,
                &who,
                "tenant-create",
                "",
                "",
                &name,
                "refused: not an operator",
            )
            .await;
            return Err(Status::permission_denied(format!(
                "only admins of tenant {OPERATOR_TENANT:?} create tenants"
            )));
        }
        validate_name(NameKind::Tenant, &name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let store = &self.ctx.store;
        if !store
            .create_tenant(&name)
            .await
            .map_err(ControllerError::from)?
        {
            return Err(Status::already_exists(format!("tenant {name:?} exists")));
        }
        let (text, row) =
            crate::auth::new_token(&name, "admin", vec!["admin".into()], &who.actor(), None);
        store
            .insert_api_token(&row)
            .await
            .map_err(ControllerError::from)?;
        audit(&self.ctx, &who, "tenant-create", "", "", &name, "ok").await;
        Ok(Response::new(CreateTokenResponse {
            token: text,
            info: Some(token_info(row)),
        }))
    }

    async fn who_am_i(
        &self,
        req: Request<WhoAmIRequest>,
    ) -> Result<Response<WhoAmIResponse>, Status> {
        let who = reader(&self.ctx, &req).await?;
        let p = who.principal;
        Ok(Response::new(WhoAmIResponse {
            tenant: who.tenant,
            token: Some(TokenInfo {
                id: p.token_id,
                name: p.name,
                roles: p.roles.iter().map(|r| r.as_str().to_string()).collect(),
                ..Default::default()
            }),
        }))
    }
}
