//! The inventory over the wire: hosts' purpose, criticality and labels
//! (checked here), host rows with their liveness, listing filters, and
//! environment changes.

use std::collections::{BTreeMap, HashMap};

use proto::v1::{AppPlacement, HostInfo, ListHostsRequest, SetEnvironmentRequest};

use super::Ctx;
use crate::error::{ControllerError, Result};
use crate::plan::CRITICALITIES;
use crate::store::{EnvChange, HostChange, HostRow};

const MAX_LABELS: usize = 32;
const MAX_LABEL_KEY: usize = 63;
const MAX_TEXT: usize = 128;

fn check_text(what: &str, s: &str) -> Result<()> {
    if s.len() > MAX_TEXT || s.chars().any(char::is_control) {
        return Err(ControllerError::InvalidArgument(format!(
            "{what} {s:?}: at most {MAX_TEXT} bytes of printable text"
        )));
    }
    Ok(())
}

fn check_label_key(k: &str) -> Result<()> {
    let ok = !k.is_empty()
        && k.len() <= MAX_LABEL_KEY
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b));
    if !ok {
        return Err(ControllerError::InvalidArgument(format!(
            "label key {k:?}: 1 to {MAX_LABEL_KEY} of a-z, A-Z, 0-9, '.', '_', '-', '/'"
        )));
    }
    Ok(())
}

pub fn check_criticality(c: &str) -> Result<()> {
    if !CRITICALITIES.contains(&c) {
        return Err(ControllerError::InvalidArgument(format!(
            "criticality {c:?}: one of {}",
            CRITICALITIES.join(", ")
        )));
    }
    Ok(())
}

/// A host change from the wire, checked.
pub fn host_change(
    purpose: Option<String>,
    criticality: Option<String>,
    set_labels: HashMap<String, String>,
    remove_labels: Vec<String>,
) -> Result<HostChange> {
    if let Some(p) = &purpose {
        check_text("purpose", p)?;
    }
    if let Some(c) = &criticality {
        check_criticality(c)?;
    }
    if set_labels.len() + remove_labels.len() > MAX_LABELS {
        return Err(ControllerError::InvalidArgument(format!(
            "at most {MAX_LABELS} labels"
        )));
    }
    for (k, v) in &set_labels {
        check_label_key(k)?;
        check_text("label value", v)?;
    }
    for k in &remove_labels {
        check_label_key(k)?;
    }
    Ok(HostChange {
        purpose,
        criticality,
        set_labels: set_labels.into_iter().collect(),
        remove_labels,
    })
}

pub fn host_info(ctx: &Ctx, tenant: &str, h: HostRow, now: i64) -> HostInfo {
    let connected = ctx.hub.connected(tenant, &h.name);
    // Heartbeats reach the store in batches: memory has the newest.
    let last_seen = ctx.hub.last_seen(tenant, &h.name, h.last_seen);
    HostInfo {
        offline: crate::fleet::offline(connected, last_seen, now, ctx.heartbeat_secs),
        connected,
        name: h.name,
        environment: h.environment,
        agent_version: h.agent_version,
        last_seen,
        cert_fingerprint: h.cert_fingerprint,
        cert_not_after: h.cert_not_after,
        revoked_at: h.revoked_at.unwrap_or(0),
        purpose: h.purpose,
        criticality: h.criticality,
        labels: h.labels.into_iter().collect(),
        os: h.os,
    }
}

/// Whether a host matches a listing's filters (every label given must match).
pub fn matches(h: &HostRow, r: &ListHostsRequest) -> bool {
    let labels: BTreeMap<&String, &String> = r.labels.iter().collect();
    (r.purpose.is_empty() || h.purpose == r.purpose)
        && (r.criticality.is_empty() || h.criticality == r.criticality)
        && labels
            .iter()
            .all(|(k, v)| h.labels.get(*k).is_some_and(|hv| hv == *v))
}

/// An environment change from the wire, checked.
pub fn env_change(r: &SetEnvironmentRequest) -> Result<EnvChange> {
    artifact::validate_name(artifact::NameKind::Environment, &r.name)?;
    let s = r.strategy.clone().unwrap_or_default();
    // Validate the strategy fields by applying them to the defaults.
    let checked = super::rollouts::strategy_from_proto(Default::default(), Some(&s))?;
    if r.soak_secs.is_some_and(|s| s > 30 * 86_400) {
        return Err(ControllerError::InvalidArgument(
            "soak: at most 30 days".into(),
        ));
    }
    let migrations = match r.migrations.as_deref() {
        None => None,
        Some(m) => Some(crate::plan::MigrationPolicy::parse(m).ok_or_else(|| {
            ControllerError::InvalidArgument(format!("migrations: {m:?} is not auto or manual"))
        })?),
    };
    Ok(EnvChange {
        migrations,
        production: r.production,
        soak_secs: r.soak_secs,
        canary: s.canary,
        batch: (!s.batch.is_empty()).then_some(checked.batch),
        batch_timeout_secs: s.batch_timeout_secs.map(|_| checked.batch_timeout_secs),
        pause_secs: s.pause_secs,
        max_failures: (!s.max_failures.is_empty()).then_some(checked.max_failures),
        auto_revert: s.auto_revert,
        offline: (s.offline() != proto::v1::OfflinePolicy::Unspecified).then_some(checked.offline),
    })
}

/// A selector from the wire, checked.
pub fn selector(labels: HashMap<String, String>) -> Result<BTreeMap<String, String>> {
    if labels.len() > MAX_LABELS {
        return Err(ControllerError::InvalidArgument(format!(
            "at most {MAX_LABELS} labels in a selector"
        )));
    }
    for (k, v) in &labels {
        check_label_key(k)?;
        check_text("label value", v)?;
    }
    Ok(labels.into_iter().collect())
}

/// Apps per environment with the hosts their selectors place them on.
pub async fn placements(
    ctx: &Ctx,
    tenant: &str,
    app: &str,
    env: &str,
) -> Result<Vec<AppPlacement>> {
    let store = &ctx.store;
    let selectors = store.placements(tenant).await?;
    let hosts: Vec<HostRow> = store
        .hosts(tenant, env)
        .await?
        .into_iter()
        .filter(|h| h.revoked_at.is_none())
        .collect();
    let configured = store.configured_apps(tenant).await?;
    let envs = store.environments(tenant).await?;
    let mut out = Vec::new();
    for a in store.apps(tenant).await? {
        if !app.is_empty() && a != app {
            continue;
        }
        for (env_name, _) in &envs {
            if !env.is_empty() && env_name != env {
                continue;
            }
            let selector = selectors
                .get(&(a.clone(), env_name.clone()))
                .cloned()
                .unwrap_or_default();
            let is_configured = |h: &str| configured.iter().any(|(ch, ca)| ch == h && ca == &a);
            let mut p = AppPlacement {
                app: a.clone(),
                environment: env_name.clone(),
                desired_version: store
                    .desired(tenant, &a, env_name)
                    .await?
                    .map(|(v, _)| v)
                    .unwrap_or_default(),
                ..Default::default()
            };
            for h in hosts.iter().filter(|h| &h.environment == env_name) {
                let placed = crate::fleet::selector_matches(&selector, &h.labels);
                match (placed, is_configured(&h.name)) {
                    (true, true) => p.hosts.push(h.name.clone()),
                    // Without a selector, hosts choose their apps by their config.
                    (true, false) if !selector.is_empty() => {
                        p.hosts.push(h.name.clone());
                        p.not_configured.push(h.name.clone());
                    }
                    (false, true) => p.excluded.push(h.name.clone()),
                    _ => {}
                }
            }
            p.selector = selector.into_iter().collect();
            out.push(p);
        }
    }
    Ok(out)
}

/// One line for the audit log.
pub fn describe_change(host: &str, c: &HostChange) -> String {
    let mut parts = vec![host.to_string()];
    if let Some(p) = &c.purpose {
        parts.push(format!("purpose={p:?}"));
    }
    if let Some(cr) = &c.criticality {
        parts.push(format!("criticality={cr}"));
    }
    for (k, v) in &c.set_labels {
        parts.push(format!("+{k}={v}"));
    }
    for k in &c.remove_labels {
        parts.push(format!("-{k}"));
    }
    parts.join(" ")
}
