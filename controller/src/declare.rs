//! Apps declared on the controller (`slipctl apps add|set|remove`): their host
//! settings per environment and per-host overrides, checked here for what
//! needs no host (keys, values, a port two apps would share on one host),
//! and what each host is declared: the environment's settings of every app
//! its selector places there, with the host's override on top. The agent
//! checks the rest (users, env files, its own local apps) and says what it
//! took; `grpc::agents` sends the declaration, signed, whenever it changes.

use std::collections::BTreeMap;

use artifact::settings::{AppSettings, Declaration, merge_patch};
use artifact::{NameKind, validate_name};

use crate::ctx::Ctx;
use crate::error::{ControllerError, Result};
use crate::store::{DeclaredRow, Placements, PutRefused, Store};

/// Largest settings patch a caller may send.
const MAX_PATCH_BYTES: usize = 16 * 1024;

/// How a patch meets what is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Refused when already declared.
    Add,
    /// Refused when not declared; the patch's keys change, the rest stays.
    Update,
    /// The settings become exactly the patch (an undo).
    Replace,
}

/// A change of one app's declaration in one environment.
pub struct Change<'a> {
    pub tenant: &'a str,
    pub environment: &'a str,
    pub app: &'a str,
    /// Empty: the environment's settings; else this host's override.
    pub host: &'a str,
    /// JSON merge patch and how it applies; `None`: remove.
    pub patch: Option<(&'a str, Mode)>,
}

/// What a change did.
pub struct Changed {
    pub revision: u64,
    /// Stored settings after and before ("" : none).
    pub settings: String,
    pub previous: String,
    /// Hosts the app is declared on after the change.
    pub hosts: Vec<String>,
}

/// The settings of every app declared on `host` (selector and override applied).
pub fn for_host(
    rows: &[DeclaredRow],
    placements: &Placements,
    environment: &str,
    host: &str,
    labels: &BTreeMap<String, String>,
) -> Declaration {
    let mut out = Declaration::new();
    for r in rows.iter().filter(|r| r.host.is_empty()) {
        if placements
            .get(&(r.app.clone(), environment.to_string()))
            .is_some_and(|sel| !crate::fleet::selector_matches(sel, labels))
        {
            continue;
        }
        // Stored rows were checked when written; one that no longer parses
        // (a newer controller's key) is left out rather than sent broken.
        let Ok(base) = serde_json::from_str::<AppSettings>(&r.settings) else {
            tracing::warn!(app = %r.app, "stored app settings do not parse; not declared");
            continue;
        };
        let over = rows
            .iter()
            .find(|o| o.app == r.app && o.host == host)
            .and_then(|o| serde_json::from_str::<AppSettings>(&o.settings).ok())
            .unwrap_or_default();
        out.insert(r.app.clone(), base.with(&over));
    }
    out
}

/// What `host` is declared now: the environment's apps revision and its apps.
pub async fn host_declaration(
    store: &Store,
    tenant: &str,
    environment: &str,
    host: &str,
) -> Result<(u64, Declaration)> {
    // The revision first: rows read after it are at least as new, and a
    // change in between rings the session again with its own revision.
    let revision = store.apps_revision(tenant, environment).await?;
    if revision == 0 {
        // Every change bumps the revision: nothing was ever declared here.
        return Ok((0, Declaration::new()));
    }
    let rows = store.declared_apps(tenant, environment).await?;
    if rows.is_empty() {
        return Ok((revision, Declaration::new()));
    }
    let placements = store.placements(tenant).await?;
    let labels = store.host_labels(tenant, host).await?;
    Ok((
        revision,
        for_host(&rows, &placements, environment, host, &labels),
    ))
}

fn invalid(what: String) -> ControllerError {
    ControllerError::InvalidArgument(what)
}

/// Applies `c`: checks the settings and what they do to every host of the
/// environment, stores them, and wakes the environment's sessions.
pub async fn apply(ctx: &Ctx, c: &Change<'_>) -> Result<Changed> {
    let store = &ctx.store;
    validate_name(NameKind::App, c.app).map_err(|e| invalid(e.to_string()))?;
    validate_name(NameKind::Environment, c.environment).map_err(|e| invalid(e.to_string()))?;
    if store.environment(c.tenant, c.environment).await?.is_none() {
        return Err(ControllerError::NotFound(format!(
            "unknown environment {:?}",
            c.environment
        )));
    }
    let hosts = store.hosts_apps_acks(c.tenant, c.environment).await?;
    if !c.host.is_empty() && !hosts.iter().any(|h| h.name == c.host) {
        return Err(ControllerError::NotFound(format!(
            "no host {:?} in environment {:?}",
            c.host, c.environment
        )));
    }
    let rows = store.declared_apps(c.tenant, c.environment).await?;
    let stored = |host: &str| {
        rows.iter()
            .find(|r| r.app == c.app && r.host == host)
            .map(|r| r.settings.clone())
    };
    let previous = stored(c.host);
    let what = if c.host.is_empty() {
        format!("app {} in {}", c.app, c.environment)
    } else {
        format!("app {} on host {}", c.app, c.host)
    };
    if !c.host.is_empty() && stored("").is_none() {
        return Err(ControllerError::FailedPrecondition(format!(
            "app {} is not declared in {}: `slipctl apps add {} --env {}` first",
            c.app, c.environment, c.app, c.environment
        )));
    }
    // The settings after the change (None: removed).
    let next: Option<String> = match c.patch {
        None => {
            if previous.is_none() {
                return Err(ControllerError::NotFound(format!("{what} is not declared")));
            }
            None
        }
        Some((patch, mode)) => {
            if patch.len() > MAX_PATCH_BYTES {
                return Err(invalid(format!(
                    "settings: more than {MAX_PATCH_BYTES} bytes"
                )));
            }
            let patch: serde_json::Value =
                serde_json::from_str(patch).map_err(|e| invalid(format!("settings: {e}")))?;
            if !patch.is_object() {
                return Err(invalid("settings: must be a JSON object".into()));
            }
            let mut value = match (mode, &previous) {
                (Mode::Add, Some(_)) => {
                    return Err(ControllerError::AlreadyExists(format!(
                        "{what} is already declared: change it with `slipctl apps set`"
                    )));
                }
                (Mode::Update, None) => {
                    return Err(ControllerError::NotFound(format!(
                        "{what} is not declared: add it with `slipctl apps add`"
                    )));
                }
                (Mode::Update, Some(prev)) => {
                    serde_json::from_str(prev).unwrap_or(serde_json::json!({}))
                }
                (Mode::Add | Mode::Replace, _) => serde_json::json!({}),
            };
            merge_patch(&mut value, &patch);
            let s: AppSettings =
                serde_json::from_value(value).map_err(|e| invalid(format!("settings: {e}")))?;
            s.check().map_err(|e| invalid(format!("settings: {e}")))?;
            Some(s.to_json())
        }
    };
    // What every host would be declared after the change: each must still
    // be a config a host can run as far as the controller can tell.
    let mut after: Vec<DeclaredRow> = rows
        .iter()
        .filter(|r| {
            !(r.app == c.app && (r.host == c.host || (c.host.is_empty() && c.patch.is_none())))
        })
        .cloned()
        .collect();
    if let Some(json) = &next {
        after.push(DeclaredRow {
            app: c.app.to_string(),
            host: c.host.to_string(),
            settings: json.clone(),
        });
    }
    let placements = store.placements(c.tenant).await?;
    let mut declared_on = Vec::new();
    for h in &hosts {
        let labels = crate::store::labels_from_json(&h.labels);
        let d = for_host(&after, &placements, c.environment, &h.name, &labels);
        let Some(mine) = d.get(c.app) else { continue };
        declared_on.push(h.name.clone());
        mine.check()
            .map_err(|e| invalid(format!("on host {}: {e}", h.name)))?;
        if let Some(port) = mine.port
            && let Some((other, _)) = d
                .iter()
                .find(|(a, s)| a.as_str() != c.app && s.port == Some(port))
        {
            return Err(ControllerError::FailedPrecondition(format!(
                "port {port} on host {} is already app {other}'s",
                h.name
            )));
        }
    }
    let expected = previous.clone();
    let revision = store
        .put_app_settings(
            c.tenant,
            c.environment,
            c.app,
            c.host,
            next.as_deref(),
            |now| {
                // Changed by another caller since it was read: refuse
                // rather than overwrite what was not checked.
                if now.map(str::to_string) == expected {
                    Ok(())
                } else if now.is_some() {
                    Err(PutRefused::Exists)
                } else {
                    Err(PutRefused::Missing)
                }
            },
        )
        .await?
        .map_err(|_| {
            ControllerError::FailedPrecondition(format!(
                "{what} changed while this change was checked: try again"
            ))
        })?;
    ctx.hub.apps_changed(c.tenant, c.environment);
    Ok(Changed {
        revision,
        settings: next.unwrap_or_default(),
        previous: previous.unwrap_or_default(),
        hosts: declared_on,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(app: &str, host: &str, json: &str) -> DeclaredRow {
        DeclaredRow {
            app: app.into(),
            host: host.into(),
            settings: json.into(),
        }
    }

    #[test]
    fn a_host_gets_the_apps_its_selector_places_there_with_its_override() {
        let rows = vec![
            row("web", "", r#"{"port":8080,"user":"web"}"#),
            row("web", "h2", r#"{"port":9090}"#),
            row("worker", "", r#"{}"#),
        ];
        let mut placements = Placements::new();
        placements.insert(
            ("worker".into(), "prod".into()),
            [("role".to_string(), "jobs".to_string())].into(),
        );
        let none = BTreeMap::new();
        let d = for_host(&rows, &placements, "prod", "h1", &none);
        assert_eq!(
            d.keys().collect::<Vec<_>>(),
            ["web"],
            "worker is placed elsewhere"
        );
        assert_eq!(d["web"].port, Some(8080));
        let jobs: BTreeMap<String, String> = [("role".into(), "jobs".into())].into();
        let d = for_host(&rows, &placements, "prod", "h2", &jobs);
        assert_eq!(d.keys().collect::<Vec<_>>(), ["web", "worker"]);
        assert_eq!(
            (d["web"].port, d["web"].user.as_deref()),
            (Some(9090), Some("web"))
        );
    }
}
