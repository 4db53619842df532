//! `slipctl envs [set]`: the tenant's environments, their soak and rollout
//! strategy; create or change one.

use proto::v1::{Environment, ListEnvironmentsRequest, SetEnvironmentRequest};
use serde::Serialize;

use crate::cli::{EnvSetArgs, EnvsCommand};
use crate::client::Clients;
use crate::error::{Result, from_status};
use crate::output::{Format, Table, print_json};

#[derive(Serialize)]
struct EnvPolicyJson {
    name: String,
    production: bool,
    soak_secs: u32,
    canary: u32,
    batch: String,
    batch_timeout_secs: u32,
    pause_secs: u32,
    max_failures: String,
    auto_revert: bool,
    offline: &'static str,
    migrations: String,
}

impl From<Environment> for EnvPolicyJson {
    fn from(e: Environment) -> Self {
        let s = e.strategy.unwrap_or_default();
        let offline = s.offline();
        EnvPolicyJson {
            migrations: e.migrations,
            name: e.name,
            production: e.production,
            soak_secs: e.soak_secs,
            canary: s.canary.unwrap_or(0),
            batch: s.batch,
            batch_timeout_secs: s.batch_timeout_secs.unwrap_or(0),
            pause_secs: s.pause_secs.unwrap_or(0),
            max_failures: s.max_failures,
            auto_revert: s.auto_revert.unwrap_or(false),
            offline: match offline {
                proto::v1::OfflinePolicy::Fail => "fail",
                proto::v1::OfflinePolicy::Wait => "wait",
                proto::v1::OfflinePolicy::Skip => "skip",
                proto::v1::OfflinePolicy::Unspecified => "unknown",
            },
        }
    }
}

pub async fn run(cmd: Option<EnvsCommand>, c: &mut Clients, fmt: Format) -> Result<()> {
    let rows: Vec<EnvPolicyJson> = match cmd {
        None => {
            let req = ListEnvironmentsRequest {
                tenant: c.tenant.clone(),
            };
            let r = c.deployments.list_environments(req).await;
            let envs = r.map_err(|s| from_status(&c.url, s))?.into_inner();
            envs.environments.into_iter().map(Into::into).collect()
        }
        Some(EnvsCommand::Set(a)) => vec![set(c, a).await?.into()],
    };
    if fmt.is_json() {
        return print_json(&rows);
    }
    print_envs(rows);
    Ok(())
}

async fn set(c: &mut Clients, a: EnvSetArgs) -> Result<Environment> {
    let req = SetEnvironmentRequest {
        tenant: c.tenant.clone(),
        strategy: a.strategy.to_proto(),
        name: a.name,
        production: a.production,
        soak_secs: a.soak,
        create: a.create,
        migrations: a.migrations.map(|m| m.as_str().to_string()),
    };
    let r = c.admin.set_environment(req).await;
    Ok(r.map_err(|s| from_status(&c.url, s))?.into_inner())
}

fn print_envs(rows: Vec<EnvPolicyJson>) {
    let mut t = Table::new(&[
        "ENV",
        "PRODUCTION",
        "SOAK",
        "CANARY",
        "BATCH",
        "BATCH TIMEOUT",
        "PAUSE",
        "MAX FAILURES",
        "AUTO REVERT",
        "OFFLINE",
        "MIGRATIONS",
    ]);
    for e in rows {
        t.row([
            e.name,
            if e.production { "yes" } else { "no" }.into(),
            format!("{}s", e.soak_secs),
            e.canary.to_string(),
            e.batch,
            format!("{}s", e.batch_timeout_secs),
            format!("{}s", e.pause_secs),
            e.max_failures,
            if e.auto_revert { "on" } else { "off" }.into(),
            e.offline.into(),
            e.migrations,
        ]);
    }
    t.print();
}
