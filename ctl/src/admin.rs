//! Hosts, API tokens and publisher keys: enrolling and revoking hosts, making
//! and revoking tokens, generating keys and signing rollback authorizations.

use std::path::Path;

use proto::v1::{
    AddHostRequest, CreateTenantRequest, CreateTokenRequest, ListHostsRequest, ListReleasesRequest,
    ListTokensRequest, RevokeHostRequest, RevokeTokenRequest, Signature, UpdateHostRequest,
};
use serde::Serialize;

use crate::cli::{AppsCommand, HostsCommand, KeysCommand, TenantsCommand, TokensCommand};
use crate::client::Clients;
use crate::error::{CtlError, Result, from_status};
use crate::status::{ago, print_json, table};

/// The tenant to act on: `--tenant`, else the API token's (asked of the controller).
pub async fn resolved_tenant(c: &mut Clients, tenant: &str) -> Result<String> {
    if !tenant.is_empty() {
        return Ok(tenant.to_string());
    }
    Ok(whoami(c).await?.tenant)
}

pub async fn whoami(c: &mut Clients) -> Result<proto::v1::WhoAmIResponse> {
    Ok(c.admin
        .who_am_i(proto::v1::WhoAmIRequest {})
        .await
        .map_err(|s| from_status(&c.url, s))?
        .into_inner())
}

/// The highest release counter of `app` (0 when it has no release yet).
pub async fn highest_counter(c: &mut Clients, tenant: &str, app: &str) -> Result<u64> {
    match c
        .releases
        .list_releases(ListReleasesRequest {
            tenant: tenant.into(),
            app: app.into(),
        })
        .await
    {
        Ok(r) => Ok(r
            .into_inner()
            .releases
            .iter()
            .map(|r| r.counter)
            .max()
            .unwrap_or(0)),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(0),
        Err(s) => Err(from_status(&c.url, s)),
    }
}

/// Signs "run `version` of `app` in `env`" with the publisher key at `key`.
pub async fn rollback_authorization(
    c: &mut Clients,
    tenant: &str,
    app: &str,
    env: &str,
    version: &str,
    key: &Path,
) -> Result<Vec<Signature>> {
    let key = trust::sign::KeyPair::load(key).map_err(|e| CtlError::Usage(e.to_string()))?;
    let tenant = &resolved_tenant(c, tenant).await?;
    let releases = c
        .releases
        .list_releases(ListReleasesRequest {
            tenant: tenant.into(),
            app: app.into(),
        })
        .await
        .map_err(|s| from_status(&c.url, s))?
        .into_inner()
        .releases;
    let release = releases
        .iter()
        .find(|r| r.version == version)
        .ok_or_else(|| CtlError::Failed(format!("unknown version {version:?} of app {app:?}")))?;
    let statement = trust::sign::RollbackStatement {
        tenant,
        app,
        environment: env,
        version,
        manifest_digest: &release.manifest_digest,
    };
    let s = key.sign(&statement.bytes());
    Ok(vec![Signature {
        key: s.key,
        sig: s.sig,
    }])
}

pub fn keys(cmd: KeysCommand) -> Result<()> {
    match cmd {
        KeysCommand::Generate { out } => {
            if out.exists() {
                return Err(CtlError::Failed(format!(
                    "{} exists; refusing to overwrite a key",
                    out.display()
                )));
            }
            let key = trust::sign::KeyPair::generate();
            trust::write_private(&out, key.encode_secret().as_bytes())
                .map_err(|e| CtlError::Failed(e.to_string()))?;
            eprintln!(
                "secret key written to {} (keep it offline; mode 0600)",
                out.display()
            );
            eprintln!("public key (add it to agents' publisher_keys):");
            say!("{}", key.public());
            Ok(())
        }
    }
}

#[derive(Serialize)]
struct HostJson {
    name: String,
    environment: String,
    purpose: String,
    criticality: String,
    labels: std::collections::BTreeMap<String, String>,
    os: String,
    connected: bool,
    offline: bool,
    agent_version: String,
    last_seen: i64,
    cert_fingerprint: String,
    cert_not_after: i64,
    revoked: bool,
}

/// `slipctl hosts` filters.
pub struct HostFilter {
    pub env: Option<String>,
    pub labels: Vec<String>,
    pub purpose: Option<String>,
    pub criticality: Option<String>,
    pub offline: bool,
}

/// `KEY=VALUE` pairs from the command line.
fn parse_labels(pairs: &[String]) -> Result<std::collections::HashMap<String, String>> {
    pairs
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| CtlError::Usage(format!("label {p:?}: expected KEY=VALUE")))
        })
        .collect()
}

fn host_state(h: &HostJson) -> &'static str {
    if h.revoked {
        "revoked"
    } else if h.cert_fingerprint.is_empty() {
        "not enrolled"
    } else if h.offline {
        "offline"
    } else {
        "connected"
    }
}

pub async fn hosts(
    c: &mut Clients,
    tenant: String,
    cmd: Option<HostsCommand>,
    filter: HostFilter,
    json: bool,
) -> Result<()> {
    match cmd {
        Some(HostsCommand::Add {
            host,
            env,
            ttl,
            inventory,
        }) => {
            let r = c
                .admin
                .add_host(AddHostRequest {
                    tenant,
                    host: host.clone(),
                    environment: env.clone(),
                    ttl_secs: ttl.unwrap_or(0),
                    purpose: inventory.purpose.unwrap_or_default(),
                    criticality: inventory.criticality.unwrap_or_default(),
                    labels: parse_labels(&inventory.labels)?,
                })
                .await
                .map_err(|s| from_status(&c.url, s))?
                .into_inner();
            eprintln!(
                "host {host} added to {env}; its one-time join token (valid {}s):",
                r.expires_at - now()
            );
            say!("{}", r.join_token);
            eprintln!("on {host}: slipway-agent --config /etc/slipway/agent.toml join <TOKEN>");
            Ok(())
        }
        Some(HostsCommand::Set {
            host,
            inventory,
            unlabel,
        }) => {
            let h = c
                .admin
                .update_host(UpdateHostRequest {
                    tenant,
                    host,
                    purpose: inventory.purpose,
                    criticality: inventory.criticality,
                    set_labels: parse_labels(&inventory.labels)?,
                    remove_labels: unlabel,
                })
                .await
                .map_err(|s| from_status(&c.url, s))?
                .into_inner();
            let labels: Vec<String> = h.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            say!(
                "host {}: purpose {:?}, criticality {}, labels {}",
                h.name,
                h.purpose,
                h.criticality,
                if labels.is_empty() {
                    "-".into()
                } else {
                    labels.join(",")
                }
            );
            Ok(())
        }
        Some(HostsCommand::Revoke { host }) => {
            c.admin
                .revoke_host(RevokeHostRequest {
                    tenant,
                    host: host.clone(),
                })
                .await
                .map_err(|s| from_status(&c.url, s))?;
            say!("host {host} revoked: its certificate is refused from its next call");
            Ok(())
        }
        None => {
            let rows: Vec<HostJson> = c
                .admin
                .list_hosts(ListHostsRequest {
                    tenant,
                    environment: filter.env.unwrap_or_default(),
                    labels: parse_labels(&filter.labels)?,
                    purpose: filter.purpose.unwrap_or_default(),
                    criticality: filter.criticality.unwrap_or_default(),
                })
                .await
                .map_err(|s| from_status(&c.url, s))?
                .into_inner()
                .hosts
                .into_iter()
                .filter(|h| !filter.offline || h.offline)
                .map(|h| HostJson {
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
                })
                .collect();
            if json {
                return print_json(&rows);
            }
            let mut t = table(&[
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
            let dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
            for h in rows {
                let labels: Vec<String> =
                    h.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                t.add_row(vec![
                    h.name.clone(),
                    h.environment.clone(),
                    dash(h.purpose.clone()),
                    h.criticality.clone(),
                    dash(labels.join(",")),
                    host_state(&h).into(),
                    dash(h.agent_version.clone()),
                    dash(h.os.clone()),
                    if h.last_seen == 0 {
                        "-".into()
                    } else {
                        ago(h.last_seen)
                    },
                    if h.cert_not_after == 0 {
                        "-".into()
                    } else {
                        in_time(h.cert_not_after)
                    },
                ]);
            }
            say!("{t}");
            Ok(())
        }
    }
}

#[derive(Serialize)]
struct TokenJson {
    id: String,
    name: String,
    roles: Vec<String>,
    created_at: i64,
    created_by: String,
    revoked: bool,
}

pub async fn tokens(c: &mut Clients, tenant: String, cmd: TokensCommand) -> Result<()> {
    match cmd {
        TokensCommand::Create { name, roles } => {
            let r = c
                .admin
                .create_token(CreateTokenRequest {
                    tenant,
                    name: name.clone(),
                    roles,
                })
                .await
                .map_err(|s| from_status(&c.url, s))?
                .into_inner();
            let roles = r.info.map(|i| i.roles.join(", ")).unwrap_or_default();
            eprintln!("token {name} ({roles}); shown once, store it as a secret:");
            say!("{}", r.token);
            Ok(())
        }
        TokensCommand::List { json } => {
            let rows: Vec<TokenJson> = c
                .admin
                .list_tokens(ListTokensRequest { tenant })
                .await
                .map_err(|s| from_status(&c.url, s))?
                .into_inner()
                .tokens
                .into_iter()
                .map(|t| TokenJson {
                    id: t.id,
                    name: t.name,
                    roles: t.roles,
                    created_at: t.created_at,
                    created_by: t.created_by,
                    revoked: t.revoked_at != 0,
                })
                .collect();
            if json {
                return print_json(&rows);
            }
            let mut t = table(&["NAME", "ID", "ROLES", "CREATED", "BY", "STATE"]);
            for r in rows {
                t.add_row(vec![
                    r.name,
                    r.id,
                    r.roles.join(","),
                    ago(r.created_at),
                    r.created_by,
                    if r.revoked {
                        "revoked".into()
                    } else {
                        "active".into()
                    },
                ]);
            }
            say!("{t}");
            Ok(())
        }
        TokensCommand::Revoke { token } => {
            c.admin
                .revoke_token(RevokeTokenRequest {
                    tenant,
                    token: token.clone(),
                })
                .await
                .map_err(|s| from_status(&c.url, s))?;
            say!("token {token} revoked");
            Ok(())
        }
    }
}

pub async fn tenants(c: &mut Clients, tenant: String, cmd: TenantsCommand) -> Result<()> {
    match cmd {
        TenantsCommand::Add { name } => {
            let r = c
                .admin
                .create_tenant(CreateTenantRequest {
                    tenant,
                    name: name.clone(),
                })
                .await
                .map_err(|s| from_status(&c.url, s))?
                .into_inner();
            eprintln!("tenant {name} created with preprod and prod; its admin token (shown once):");
            say!("{}", r.token);
            Ok(())
        }
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn in_time(ts: i64) -> String {
    let secs = ts - now();
    if secs <= 0 {
        "expired".into()
    } else if secs < 3600 {
        format!("in {}m", secs / 60)
    } else {
        format!("in {}h", secs / 3600)
    }
}

#[derive(Serialize)]
struct PlacementJson {
    app: String,
    environment: String,
    selector: std::collections::BTreeMap<String, String>,
    desired: String,
    hosts: Vec<String>,
    not_configured: Vec<String>,
    excluded: Vec<String>,
}

/// `slipctl apps [place]`.
pub async fn apps(
    c: &mut Clients,
    tenant: String,
    cmd: Option<AppsCommand>,
    env: Option<String>,
    json: bool,
) -> Result<()> {
    let placements = match cmd {
        Some(AppsCommand::Place { app, env, selector }) => vec![
            c.deployments
                .place_app(proto::v1::PlaceAppRequest {
                    tenant,
                    app,
                    environment: env,
                    selector: parse_labels(&selector)?,
                })
                .await
                .map_err(|s| from_status(&c.url, s))?
                .into_inner(),
        ],
        None => {
            c.deployments
                .list_apps(proto::v1::ListAppsRequest {
                    tenant,
                    app: String::new(),
                    environment: env.unwrap_or_default(),
                })
                .await
                .map_err(|s| from_status(&c.url, s))?
                .into_inner()
                .apps
        }
    };
    let rows: Vec<PlacementJson> = placements
        .into_iter()
        .map(|p| PlacementJson {
            app: p.app,
            environment: p.environment,
            selector: p.selector.into_iter().collect(),
            desired: p.desired_version,
            hosts: p.hosts,
            not_configured: p.not_configured,
            excluded: p.excluded,
        })
        .collect();
    if json {
        return print_json(&rows);
    }
    let mut t = table(&[
        "APP",
        "ENV",
        "SELECTOR",
        "DESIRED",
        "HOSTS",
        "NOT CONFIGURED",
        "EXCLUDED",
    ]);
    let list = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(",")
        }
    };
    for p in rows {
        let selector: Vec<String> = p.selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        t.add_row(vec![
            p.app.clone(),
            p.environment.clone(),
            if selector.is_empty() {
                "(all)".into()
            } else {
                selector.join(",")
            },
            if p.desired.is_empty() {
                "-".into()
            } else {
                p.desired.clone()
            },
            list(&p.hosts),
            list(&p.not_configured),
            list(&p.excluded),
        ]);
    }
    say!("{t}");
    Ok(())
}
