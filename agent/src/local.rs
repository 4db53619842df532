//! Commands an operator runs on the host, without the controller:
//! `slipway-agent status`, `releases APP`, `rollback APP [--to V]`. They read and
//! act on the state dir; a running agent picks up what they did and reports it
//! when it next talks to the controller.

use std::collections::BTreeMap;

use serde::Serialize;
use tokio::sync::watch;

use crate::app::{AppRunner, LocalError};
use crate::config::AgentConfig;
use crate::paths::AppPaths;
use crate::state::{AppStatus, HealthState};

fn app_paths(cfg: &AgentConfig, app: &str) -> Result<AppPaths, LocalError> {
    if !cfg.apps.contains_key(app) {
        return Err(LocalError::UnknownApp {
            app: app.to_string(),
            known: cfg.apps.keys().cloned().collect(),
        });
    }
    Ok(AppPaths::for_app(&cfg.state_dir, app, &cfg.apps[app]))
}

#[derive(Serialize)]
struct StatusLine {
    app: String,
    running: Option<String>,
    state: String,
    health: String,
    /// What is wrong now if anything is, else the last refusal.
    note: String,
    health_reason: String,
    missing_env: Vec<String>,
    last_error: String,
    failed_version: Option<String>,
    /// The deploy step in progress, if any.
    step: Option<String>,
    /// "inotify", or "degraded" when files are polled.
    watching: &'static str,
    /// "local" (this host's config) or "declared" (`slipctl apps add`).
    source: &'static str,
    /// Why this host refused the controller's settings for the app, if it did.
    refused: Option<String>,
}

impl StatusLine {
    fn new(app: &str, running: Option<String>, s: &AppStatus) -> Self {
        // An unhealthy release's present reason outranks an older refusal.
        let note = if s.health == HealthState::Unhealthy && !s.health_reason.is_empty() {
            s.health_reason.clone()
        } else if !s.last_error.is_empty() {
            s.last_error.clone()
        } else {
            s.health_reason.clone()
        };
        StatusLine {
            app: app.to_string(),
            running,
            state: snake(&s.state),
            health: snake(&s.health),
            note,
            health_reason: s.health_reason.clone(),
            missing_env: s.missing_env.clone(),
            last_error: s.last_error.clone(),
            failed_version: s.failed.as_ref().map(|f| f.version.clone()),
            step: s.deploy.as_ref().map(|p| p.step.name().to_string()),
            watching: if s.watch_degraded {
                "degraded"
            } else {
                "inotify"
            },
            source: "local",
            refused: None,
        }
    }
}

pub fn status(cfg: &AgentConfig, json: bool) -> Result<(), LocalError> {
    let declared = crate::declared::Declared::load(&cfg.state_dir);
    let mut rows: Vec<StatusLine> = cfg
        .apps
        .iter()
        .map(|(app, app_cfg)| {
            let paths = AppPaths::for_app(&cfg.state_dir, app, app_cfg);
            let s = AppStatus::load(&paths.status).unwrap_or_default();
            let mut line = StatusLine::new(app, paths.current_version(), &s);
            if declared.apps.contains_key(app) {
                line.source = "declared";
            }
            line.refused = declared.refused.get(app).cloned();
            line
        })
        .collect();
    // Declared apps this host does not run at all: why not.
    for (app, why) in &declared.refused {
        if !cfg.apps.contains_key(app) {
            let mut line = StatusLine::new(app, None, &AppStatus::default());
            line.state = "refused".into();
            line.note = why.clone();
            line.source = "declared";
            line.refused = Some(why.clone());
            rows.push(line);
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<16} {:<16} {:<12} {:<10} NOTE",
        "APP", "RUNNING", "STATE", "HEALTH"
    );
    for r in rows {
        // Notes quote hook and process output: never raw to a terminal.
        let mut note: String = r.note.escape_debug().collect();
        if let Some(step) = &r.step {
            note = format!("deploying: {step}; {note}");
        }
        if r.watching == "degraded" {
            note = format!("watching degraded (polling); {note}");
        }
        if let Some(why) = r.refused.as_ref().filter(|w| **w != r.note) {
            // Runs with its previous settings: the new ones were refused.
            let why: String = why.escape_debug().collect();
            note = format!("declared settings refused: {why}; {note}");
        }
        println!(
            "{:<16} {:<16} {:<12} {:<10} {note}",
            r.app,
            r.running.as_deref().unwrap_or("-"),
            r.state,
            r.health,
        );
    }
    Ok(())
}

pub fn releases(cfg: &AgentConfig, app: &str) -> Result<(), LocalError> {
    let paths = app_paths(cfg, app)?;
    let status = AppStatus::load(&paths.status).unwrap_or_default();
    let current = paths.current_version();
    let failed = status.failed.as_ref().map(|f| f.version.clone());
    let mut order: BTreeMap<String, usize> = BTreeMap::new();
    for (i, v) in status.history.iter().enumerate() {
        order.insert(v.clone(), i);
    }
    let mut kept = paths.kept_versions();
    kept.sort_by_key(|v| std::cmp::Reverse(order.get(v).map_or(-1, |i| *i as i64)));
    println!("{:<20} {:<21} NOTE", "VERSION", "RELEASE");
    for v in kept {
        let mut notes = Vec::new();
        if current.as_deref() == Some(v.as_str()) {
            notes.push("current");
        }
        if failed.as_deref() == Some(v.as_str()) {
            notes.push("refused");
        }
        let digest: String = status
            .installed
            .get(&v)
            .map(|d| d.chars().take(19).collect())
            .unwrap_or_default();
        println!("{v:<20} {digest:<21} {}", notes.join(", "));
    }
    Ok(())
}

pub async fn rollback(
    cfg: &AgentConfig,
    app: &str,
    to: Option<String>,
    actor: &str,
) -> Result<(), LocalError> {
    app_paths(cfg, app)?;
    let (board, _) = watch::channel(BTreeMap::new());
    let mut runner = AppRunner::new(
        app.to_string(),
        cfg.apps[app].clone(),
        &cfg.state_dir,
        board,
    )
    .map_err(|source| LocalError::Io {
        app: app.to_string(),
        source,
    })?;
    let done = runner.local_rollback(to, actor).await?;
    println!("{done}");
    println!(
        "the agent reports this to the controller when it is connected; the refused release is not re-applied until a new deploy or `slipctl retry`"
    );
    Ok(())
}

/// The snake_case name status.json uses for a state.
fn snake<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_note_gives_the_present_reason_not_an_older_refusal() {
        let s = AppStatus {
            health: HealthState::Unhealthy,
            health_reason: "process web lacks required env: DATABASE_URL".into(),
            missing_env: vec!["DATABASE_URL".into()],
            last_error: "2.0.0: prepare: prepare hook failed (exit status: 1)".into(),
            ..Default::default()
        };
        let line = StatusLine::new("web", Some("1.0.0".into()), &s);
        assert_eq!(line.note, "process web lacks required env: DATABASE_URL");
        let json = serde_json::to_value(&line).unwrap();
        assert_eq!(json["missing_env"][0], "DATABASE_URL");
        assert_eq!(json["health_reason"], s.health_reason);
        assert_eq!(json["last_error"], s.last_error);

        // Healthy again: the refusal is the news.
        let s = AppStatus {
            health: HealthState::Healthy,
            ..s
        };
        let line = StatusLine::new("web", Some("1.0.0".into()), &s);
        assert!(line.note.contains("prepare hook failed"));
    }
}
