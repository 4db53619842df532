//! `slipctl tokens`: create (the secret is printed once), list and revoke the
//! tenant's API tokens.

use proto::v1::{CreateTokenRequest, ListTokensRequest, RevokeTokenRequest, TokenInfo};
use serde::Serialize;

use crate::cli::TokensCommand;
use crate::client::Clients;
use crate::error::{Result, from_status};
use crate::output::{Format, Table, ago, as_rfc3339, escape, print_json};
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
        TokensCommand::Create { name, roles } => create(c, name, &roles, fmt).await,
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
            say!("token {token} revoked");
            Ok(())
        }
    }
}

async fn create(c: &mut Clients, token: String, roles: &[Role], fmt: Format) -> Result<()> {
    let req = CreateTokenRequest {
        tenant: c.tenant.clone(),
        name: token.clone(),
        roles: roles.iter().copied().map(name).collect(),
    };
    let r = c.admin.create_token(req).await;
    let r = r.map_err(|s| from_status(&c.url, s))?.into_inner();
    if fmt.is_json() {
        return print_json(&CreatedJson {
            token: r.token,
            info: r.info.map(TokenJson::from),
        });
    }
    let roles = r.info.map(|i| i.roles.join(", ")).unwrap_or_default();
    eprintln!(
        "token {token} ({}); shown once, store it as a secret:",
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
    let mut t = Table::new(&["NAME", "ID", "ROLES", "CREATED", "BY", "STATE"]);
    for r in rows {
        let state = if r.revoked { "revoked" } else { "active" };
        t.row([
            r.name,
            r.id,
            r.roles.join(","),
            ago(r.created_at),
            r.created_by,
            state.into(),
        ]);
    }
    t.print();
    Ok(())
}
