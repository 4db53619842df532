//! Commands an operator runs on the host, without the controller:
//! `slipway-agent status`, `releases APP`, `rollback APP [--to V]`. They read and
//! act on the state dir; a running agent picks up what they did and reports it
//! when it next talks to the controller.

use std::collections::BTreeMap;

use serde::Serialize;
use tokio::sync::watch;

use crate::app::AppRunner;
use crate::config::AgentConfig;
use crate::paths::AppPaths;
use crate::state::AppStatus;

/// Release dirs on disk, in activation order where known, then the rest by name.
pub fn kept_versions(paths: &AppPaths) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(&paths.releases)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().map(String::from))
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn app_paths(cfg: &AgentConfig, app: &str) -> Result<AppPaths, String> {
    if !cfg.apps.contains_key(app) {
        let known: Vec<&String> = cfg.apps.keys().collect();
        return Err(format!("unknown app {app:?} (this host runs: {known:?})"));
    }
    Ok(AppPaths::for_app(&cfg.state_dir, app, &cfg.apps[app]))
}

#[derive(Serialize)]
struct StatusLine {
    app: String,
    running: Option<String>,
    state: String,
    health: String,
    note: String,
}

pub fn status(cfg: &AgentConfig, json: bool) -> Result<(), String> {
    let rows: Vec<StatusLine> = cfg
        .apps
        .iter()
        .map(|(app, app_cfg)| {
            let paths = AppPaths::for_app(&cfg.state_dir, app, app_cfg);
            let s = AppStatus::load(&paths.status).unwrap_or_default();
            StatusLine {
                app: app.clone(),
                running: paths.current_version(),
                state: snake(&s.state),
                health: snake(&s.health),
                note: if s.last_error.is_empty() {
                    s.health_reason.clone()
                } else {
                    s.last_error.clone()
                },
            }
        })
        .collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    println!(
        "{:<16} {:<16} {:<12} {:<10} NOTE",
        "APP", "RUNNING", "STATE", "HEALTH"
    );
    for r in rows {
        println!(
            "{:<16} {:<16} {:<12} {:<10} {}",
            r.app,
            r.running.as_deref().unwrap_or("-"),
            r.state,
            r.health,
            r.note
        );
    }
    Ok(())
}

pub fn releases(cfg: &AgentConfig, app: &str) -> Result<(), String> {
    let paths = app_paths(cfg, app)?;
    let status = AppStatus::load(&paths.status).unwrap_or_default();
    let current = paths.current_version();
    let failed = status.failed.as_ref().map(|f| f.version.clone());
    let mut order: BTreeMap<String, usize> = BTreeMap::new();
    for (i, v) in status.history.iter().enumerate() {
        order.insert(v.clone(), i);
    }
    let mut kept = kept_versions(&paths);
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
) -> Result<(), String> {
    app_paths(cfg, app)?;
    let (board, _) = watch::channel(BTreeMap::new());
    let (_channel_tx, channel_rx) = watch::channel(None);
    let mut runner = AppRunner::new(
        app.to_string(),
        cfg.apps[app].clone(),
        &cfg.state_dir,
        board,
        channel_rx,
    )
    .map_err(|e| format!("{app}: {e}"))?;
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
