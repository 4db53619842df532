//! `slipctl whoami`: the tenant, token and roles this slipctl acts as.

use serde::Serialize;

use crate::client::Clients;
use crate::error::Result;
use crate::output::{Format, escape, print_json};

#[derive(Serialize)]
struct WhoAmIJson {
    tenant: String,
    token_id: String,
    token_name: String,
    roles: Vec<String>,
}

pub async fn run(c: &mut Clients, fmt: Format) -> Result<()> {
    let w = c.whoami().await?;
    let t = w.token.unwrap_or_default();
    if fmt.is_json() {
        return print_json(&WhoAmIJson {
            tenant: w.tenant,
            token_id: t.id,
            token_name: t.name,
            roles: t.roles,
        });
    }
    say!(
        "{}",
        escape(&format!(
            "tenant {}, token {} ({}), roles: {}",
            w.tenant,
            t.name,
            t.id,
            t.roles.join(", ")
        ))
    );
    Ok(())
}
