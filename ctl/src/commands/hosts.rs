//! `slipctl hosts`: the tenant's inventory (filtered), adding a host (its
//! one-time join token), changing its purpose, criticality and labels, and
//! revoking it.

use std::collections::BTreeMap;

use proto::v1::{AddHostRequest, HostInfo, ListHostsRequest, RevokeHostRequest, UpdateHostRequest};
use serde::Serialize;

use crate::cli::{HostInventory, HostsArgs, HostsCommand};
use crate::client::Clients;
use crate::error::{Result, from_status};
use crate::output::{Format, Table, ago, as_rfc3339, dash, escape, now, pairs, print_json, until};
use crate::values::{label_map, name};

pub async fn run(a: HostsArgs, c: &mut Clients, fmt: Format) -> Result<()> {
    match a.command {
        None => list(a, c, fmt).await,
        Some(HostsCommand::Add {
            host,
            env,
            ttl,
            inventory,
        }) => add(c, host, env, ttl, inventory, fmt).await,
        Some(HostsCommand::Set {
            host,
            inventory,
            unlabel,
        }) => set(c, host, inventory, unlabel, fmt).await,
        Some(HostsCommand::Revoke { host }) => {
            let req = RevokeHostRequest {
                tenant: c.tenant.clone(),
                host: host.clone(),
            };
            let r = c.admin.revoke_host(req).await;
            r.map_err(|s| from_status(&c.url, s))?;
            if fmt.is_json() {
                return print_json(&serde_json::json!({ "revoked": host }));
            }
            say!(
                "host {} revoked: its certificate is refused from its next call",
                escape(&host)
            );
            Ok(())
        }
    }
}

/// `hosts add -o json`: what an install script needs.
#[derive(Serialize)]
struct JoinJson<'a> {
    host: &'a str,
    environment: &'a str,
    join_token: &'a str,
    /// What to run on the host, as root, to join it.
    join_command: String,
    #[serde(serialize_with = "as_rfc3339")]
    expires_at: i64,
}

async fn add(
    c: &mut Clients,
    host: String,
    env: String,
    ttl: Option<u32>,
    inventory: HostInventory,
    fmt: Format,
) -> Result<()> {
    let req = AddHostRequest {
        tenant: c.tenant.clone(),
        host: host.clone(),
        environment: env.clone(),
        ttl_secs: ttl.unwrap_or(0),
        purpose: inventory.purpose.unwrap_or_default(),
        criticality: inventory.criticality.map(name).unwrap_or_default(),
        labels: label_map(&inventory.labels),
    };
    let r = c.admin.add_host(req).await;
    let r = r.map_err(|s| from_status(&c.url, s))?.into_inner();
    let command = format!("slipway-agent join {} {}", c.url, r.join_token);
    if fmt.is_json() {
        return print_json(&JoinJson {
            host: &host,
            environment: &env,
            join_token: &r.join_token,
            join_command: command,
            expires_at: r.expires_at,
        });
    }
    eprintln!(
        "host {host} added to {env}; its one-time join token (valid {}s):",
        r.expires_at - now()
    );
    say!("{}", escape(&r.join_token));
    eprintln!(
        "on {host}, as root (with the slipway-agent package installed):\n  {}",
        escape(&command)
    );
    Ok(())
}

async fn set(
    c: &mut Clients,
    host: String,
    inventory: HostInventory,
    unlabel: Vec<String>,
    fmt: Format,
) -> Result<()> {
    let req = UpdateHostRequest {
        tenant: c.tenant.clone(),
        host,
        purpose: inventory.purpose,
        criticality: inventory.criticality.map(name),
        set_labels: label_map(&inventory.labels),
        remove_labels: unlabel,
    };
    let r = c.admin.update_host(req).await;
    let h = r.map_err(|s| from_status(&c.url, s))?.into_inner();
    if fmt.is_json() {
        return print_json(&HostJson::from(h));
    }
    say!(
        "{}",
        escape(&format!(
            "host {}: purpose {:?}, criticality {}, labels {}",
            h.name,
            h.purpose,
            h.criticality,
            pairs(&h.labels)
        ))
    );
    Ok(())
}

#[derive(Serialize)]
struct HostJson {
    name: String,
    environment: String,
    purpose: String,
    criticality: String,
    labels: BTreeMap<String, String>,
    os: String,
    connected: bool,
    offline: bool,
    agent_version: String,
    #[serde(serialize_with = "as_rfc3339")]
    last_seen: i64,
    cert_fingerprint: String,
    #[serde(serialize_with = "as_rfc3339")]
    cert_not_after: i64,
    revoked: bool,
}

impl From<HostInfo> for HostJson {
    fn from(h: HostInfo) -> Self {
        HostJson {
            name: h.name,
            environment: h.environment,
            purpose: h.purpose,
            criticality: h.criticality,
            labels: h.labels.into_iter().collect(),
            os: h.os,
            connected: h.connected,
            offline: h.offline,
            agent_version: h.agent_version,
            last_seen: h.last_seen,
            cert_fingerprint: h.cert_fingerprint,
            cert_not_after: h.cert_not_after,
            revoked: h.revoked_at != 0,
        }
    }
}

impl HostJson {
    fn state(&self) -> &'static str {
        if self.revoked {
            "revoked"
        } else if self.cert_fingerprint.is_empty() {
            "not enrolled"
        } else if self.offline {
            "offline"
        } else {
            "connected"
        }
    }
}

async fn list(a: HostsArgs, c: &mut Clients, fmt: Format) -> Result<()> {
    let req = ListHostsRequest {
        tenant: c.tenant.clone(),
        environment: a.env.unwrap_or_default(),
        labels: label_map(&a.labels),
        purpose: a.purpose.unwrap_or_default(),
        criticality: a.criticality.map(name).unwrap_or_default(),
    };
    let r = c.admin.list_hosts(req).await;
    let rows: Vec<HostJson> = r
        .map_err(|s| from_status(&c.url, s))?
        .into_inner()
        .hosts
        .into_iter()
        .filter(|h| !a.offline || h.offline)
        .map(HostJson::from)
        .collect();
    if fmt.is_json() {
        return print_json(&rows);
    }
    let mut t = Table::new(&[
        "HOST",
        "ENV",
        "PURPOSE",
        "CRIT",
        "LABELS",
        "STATE",
        "AGENT",
        "OS",
        "LAST SEEN",
        "CERT UNTIL",
    ]);
    for h in rows {
        let seen = if h.last_seen == 0 {
            "-".into()
        } else {
            ago(h.last_seen)
        };
        t.row([
            h.name.clone(),
            h.environment.clone(),
            dash(&h.purpose),
            h.criticality.clone(),
            pairs(&h.labels),
            h.state().into(),
            dash(&h.agent_version),
            dash(&h.os),
            seen,
            until(h.cert_not_after),
        ]);
    }
    t.print();
    Ok(())
}
