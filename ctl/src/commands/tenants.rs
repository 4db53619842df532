//! `slipctl tenants add`: a new tenant with preprod and prod, and its first
//! admin token (printed once).

use proto::v1::CreateTenantRequest;
use serde::Serialize;

use crate::cli::TenantsCommand;
use crate::client::Clients;
use crate::error::{Result, from_status};
use crate::output::{Format, escape, print_json};

#[derive(Serialize)]
struct TenantJson<'a> {
    tenant: &'a str,
    admin_token: &'a str,
}

pub async fn run(cmd: TenantsCommand, c: &mut Clients, fmt: Format) -> Result<()> {
    let TenantsCommand::Add { name } = cmd;
    let req = CreateTenantRequest {
        tenant: c.tenant.clone(),
        name: name.clone(),
    };
    let r = c.admin.create_tenant(req).await;
    let r = r.map_err(|s| from_status(&c.url, s))?.into_inner();
    if fmt.is_json() {
        return print_json(&TenantJson {
            tenant: &name,
            admin_token: &r.token,
        });
    }
    eprintln!(
        "tenant {} created with preprod and prod; its admin token (shown once):",
        escape(&name)
    );
    say!("{}", escape(&r.token));
    Ok(())
}
