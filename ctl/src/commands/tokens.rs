//! `slipctl tokens`: create (the secret is printed once), list and revoke the
//! tenant's API tokens.

use proto::v1::{CreateTokenRequest, ListTokensRequest, RevokeTokenRequest, TokenInfo};
use serde::Serialize;

use crate::cli::TokensCommand;
use crate::client::Clients;
use crate::error::{Result, from_status};
use crate::output::{Format, Table, absolute, ago, as_rfc3339, escape, now, print_json, until};
use crate::values::{Role, name};

#[derive(Serialize)]
struct TokenJson {
    id: String,
    name: String,
    roles: Vec<String>,
    #[serde(serialize_with = "as_rfc3339")]
    created_at: i64,
    created_by: String,
    revoked: bool,
    /// null: never expires.
    #[serde(serialize_with = "as_rfc3339")]
    expires_at: i64,
    /// null: never used.
    #[serde(serialize_with = "as_rfc3339")]
    last_used_at: i64,
}

impl From<TokenInfo> for TokenJson {
    fn from(t: TokenInfo) -> Self {
        TokenJson {
            id: t.id,
            name: t.name,
            roles: t.roles,
            created_at: t.created_at,
            created_by: t.created_by,
            revoked: t.revoked_at != 0,
            expires_at: t.expires_at,
            last_used_at: t.last_used_at,
        }
    }
}

/// `tokens create -o json`: the secret with what it may do.
#[derive(Serialize)]
struct CreatedJson {
    token: String,
    #[serde(flatten)]
    info: Option<TokenJson>,
}

pub async fn run(cmd: TokensCommand, c: &mut Clients, fmt: Format) -> Result<()> {
    match cmd {
        TokensCommand::Create {
            name,
            roles,
            expires,
        } => create(c, name, &roles, expires.unwrap_or(0), fmt).await,
        TokensCommand::List => list(c, fmt).await,
        TokensCommand::Revoke { token } => {
            let req = RevokeTokenRequest {
                tenant: c.tenant.clone(),
                token: token.clone(),
            };
            let r = c.admin.revoke_token(req).await;
            r.map_err(|s| from_status(&c.url, s))?;
            if fmt.is_json() {
                return print_json(&serde_json::json!({ "revoked": token }));
            }
            say!("token {} revoked", escape(&token));
            Ok(())
        }
    }
}

async fn create(
    c: &mut Clients,
    token: String,
    roles: &[Role],
    expires_in_secs: u64,
    fmt: Format,
) -> Result<()> {
    let req = CreateTokenRequest {
        tenant: c.tenant.clone(),
        name: token.clone(),
        roles: roles.iter().copied().map(name).collect(),
        expires_in_secs,
    };
    let r = c.admin.create_token(req).await;
    let r = r.map_err(|s| from_status(&c.url, s))?.into_inner();
    if fmt.is_json() {
        return print_json(&CreatedJson {
            token: r.token,
            info: r.info.map(TokenJson::from),
        });
    }
    let (roles, expires_at) = r
        .info
        .map(|i| (i.roles.join(", "), i.expires_at))
        .unwrap_or_default();
    let expiry = if expires_at == 0 {
        String::new()
    } else {
        format!(", expires {}", absolute(expires_at))
    };
    eprintln!(
        "token {token} ({}{expiry}); shown once, store it as a secret:",
        escape(&roles)
    );
    say!("{}", escape(&r.token));
    Ok(())
}

async fn list(c: &mut Clients, fmt: Format) -> Result<()> {
    let req = ListTokensRequest {
        tenant: c.tenant.clone(),
    };
    let r = c.admin.list_tokens(req).await;
    let rows: Vec<TokenJson> = r
        .map_err(|s| from_status(&c.url, s))?
        .into_inner()
        .tokens
        .into_iter()
        .map(TokenJson::from)
        .collect();
    if fmt.is_json() {
        return print_json(&rows);
    }
    let mut t = Table::new(&[
        "NAME",
        "ID",
        "ROLES",
        "CREATED",
        "BY",
        "EXPIRES",
        "LAST USED",
        "STATE",
    ]);
    let now = now();
    for r in rows {
        let state = if r.revoked {
            "revoked"
        } else if r.expires_at != 0 && r.expires_at <= now {
            "expired"
        } else {
            "active"
        };
        t.row([
            r.name,
            r.id,
            r.roles.join(","),
            ago(r.created_at),
            r.created_by,
            if r.expires_at == 0 {
                "never".into()
            } else {
                until(r.expires_at)
            },
            ago(r.last_used_at),
            state.into(),
        ]);
    }
    t.print();
    Ok(())
}
