//! The Slipway agent: runs on every host, pulls the releases it should run from
//! the controller, installs and activates them safely, checks their health and
//! environment, rolls back on failure and reports. It never links sqlx.

pub mod app;
pub mod backoff;
pub mod command_backend;
pub mod config;
pub mod declared;
pub mod direct;
pub mod directive;
pub mod drift;
pub mod envfile;
pub mod failpoint;
pub mod fetch;
pub mod filewatch;
pub mod follow;
pub mod health;
pub mod identity;
pub mod install;
pub mod join;
pub mod local;
pub mod lock;
pub mod logs;
pub mod manifests;
pub mod metrics;
pub mod paths;
pub mod program;
pub mod proxy;
pub mod session;
pub mod state;
pub mod step;
pub mod supervisor;
pub mod systemd;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::AppRunner;
use crate::config::AgentConfig;
use crate::directive::DirectiveGuard;
use crate::identity::Identity;
use crate::session::Session;

/// Runs the agent until `shutdown` fires. With `config_path`, the config file
/// and the per-app files are watched: a valid edit is applied live (tasks are
/// restarted with the new config, running apps are adopted, apps whose settings
/// changed are restarted, removed apps are stopped); a broken edit is rejected
/// with an error log line and the last good config stays in force. A change
/// of the apps the controller declares here (`declared`) applies the same way.
pub async fn run(
    cfg: AgentConfig,
    config_path: Option<PathBuf>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    ensure_enrolled(&cfg, &shutdown).await?;
    // Bound once, for the agent's life (a change takes a restart).
    if let Some(addr) = cfg.metrics_listen {
        let listener = metrics::bind(addr).await?;
        tracing::info!(%addr, "metrics listening (plain HTTP, loopback)");
        tokio::spawn(metrics::serve(listener, shutdown.clone()));
    }
    let mut declared = declared::Declared::load(&cfg.state_dir);
    let (declared_tx, mut declared_rx) = tokio::sync::mpsc::channel(4);
    let mut local = cfg;
    let mut current = local.with_declared(&declared);
    let mut previous: Option<(AgentConfig, AgentConfig)> = None;
    loop {
        let tasks = shutdown.child_token();
        let started = std::fs::create_dir_all(&current.state_dir)
            .map_err(|e| anyhow::anyhow!("create state dir {}: {e}", current.state_dir.display()))
            .and_then(|()| {
                start(
                    &current,
                    Started {
                        local: &local,
                        declared: &declared,
                        declared_tx: declared_tx.clone(),
                    },
                    tasks.clone(),
                )
            });
        let tracker = match (started, previous.take()) {
            (Ok(t), _) => t,
            // The new config cannot run: back to the last good one.
            (Err(e), Some((good_local, good))) => {
                tracing::error!(error = %e, "new config cannot start; back to the last good config");
                local = good_local;
                current = good;
                continue;
            }
            (Err(e), None) => return Err(e),
        };
        let mut watch = config_path.as_ref().and_then(|p| {
            let (files, dirs) = config_paths(p, &local);
            filewatch::watch_paths(&files, &dirs)
                .map_err(|e| tracing::warn!(error = %e, "cannot watch the config; edits apply at restart"))
                .ok()
        });
        let next = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break None,
                Some(d) = declared_rx.recv() => {
                    declared = d;
                    let new = local.with_declared(&declared);
                    if new != current {
                        break Some((local.clone(), new));
                    }
                }
                Some(()) = filewatch::next_change(&mut watch) => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    filewatch::drain(&mut watch);
                    let Some(path) = &config_path else { continue };
                    match AgentConfig::load(path) {
                        Err(e) => tracing::error!(error = %e, "config edit rejected; the last good config stays in force"),
                        Ok(new_local) => {
                            let new = new_local.with_declared(&declared);
                            if new != current {
                                break Some((new_local, new));
                            }
                            local = new_local;
                        }
                    }
                }
            }
        };
        tasks.cancel();
        match next {
            None => {
                if tokio::time::timeout(Duration::from_secs(30), tracker.wait())
                    .await
                    .is_err()
                {
                    tracing::warn!("tasks did not finish within 30s of shutdown");
                }
                return Ok(());
            }
            Some((new_local, new)) => {
                // A deploy in progress finishes first: never two runners per app.
                tracker.wait().await;
                // Stop with the settings they were started with (backend, root,
                // units): the new runners start changed apps afresh.
                for (name, old) in &current.apps {
                    match new.apps.get(name) {
                        None => {
                            let why = if local.apps.contains_key(name) {
                                "removed from the agent config"
                            } else {
                                "no longer declared for this host"
                            };
                            tracing::info!(app = %name, reason = why, "stopping app");
                            app::stop_app(name, old, &current.state_dir, why).await;
                        }
                        Some(c) if c != old => {
                            app::stop_app(name, old, &current.state_dir, "host settings changed")
                                .await;
                        }
                        Some(_) => {}
                    }
                }
                let changed: BTreeSet<&String> = new
                    .apps
                    .iter()
                    .filter(|(n, c)| current.apps.get(*n).is_some_and(|old| old != *c))
                    .map(|(n, _)| n)
                    .collect();
                tracing::info!(apps = new.apps.len(), changed = ?changed, "config reloaded");
                previous = Some((
                    std::mem::replace(&mut local, new_local),
                    std::mem::replace(&mut current, new),
                ));
            }
        }
    }
}

/// What the session needs beside the config it runs.
struct Started<'a> {
    local: &'a AgentConfig,
    declared: &'a declared::Declared,
    declared_tx: tokio::sync::mpsc::Sender<declared::Declared>,
}

/// The config file, the per-app files, and the apps dir (new files count).
fn config_paths(path: &Path, cfg: &AgentConfig) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let dir = cfg
        .apps_dir
        .clone()
        .unwrap_or_else(|| path.parent().unwrap_or(Path::new(".")).join("apps"));
    (vec![path.to_path_buf()], vec![dir])
}

/// Spawns the app runners and the controller session for `cfg`.
fn start(
    cfg: &AgentConfig,
    started: Started<'_>,
    shutdown: CancellationToken,
) -> anyhow::Result<TaskTracker> {
    // Before anything is spawned: a start that fails must leave nothing running.
    let identity = Identity::load(&cfg.state_dir)?.ok_or_else(|| not_enrolled(cfg))?;
    identity.check(cfg)?;
    let cfg = Arc::new(cfg.clone());
    let (board, _) = watch::channel(BTreeMap::new());
    let (channel_tx, channel_rx) = watch::channel(None);
    let tracker = TaskTracker::new();
    let mut desired = HashMap::new();
    // Proxies and held sockets of apps that left the config or changed mode
    // let go of their ports before any runner starts.
    let with = |mode: config::Activation| -> Vec<String> {
        cfg.apps
            .iter()
            .filter(|(_, a)| a.activation == mode)
            .map(|(n, _)| n.clone())
            .collect()
    };
    proxy::retain(&with(config::Activation::Proxy));
    proxy::socket::retain(&with(config::Activation::Socket));
    for (name, app_cfg) in &cfg.apps {
        let (tx, rx) = watch::channel(None);
        desired.insert(name.clone(), tx);
        let fetch = Arc::new(app::ControllerFetch::new(channel_rx.clone()));
        let runner = AppRunner::new(name.clone(), app_cfg.clone(), &cfg.state_dir, board.clone())
            .map(|r| r.with_trust(cfg.trust.clone()).with_fetch(fetch))
            .map_err(|e| {
                anyhow::anyhow!("prepare app {name} under {}: {e}", cfg.state_dir.display())
            })?;
        tracker.spawn(runner.run(rx, shutdown.clone()));
    }
    tracing::info!(host = %cfg.host, env = %cfg.environment, apps = cfg.apps.len(), controller = %cfg.controller, "agent running");
    let session = Session {
        cfg: cfg.clone(),
        local: Arc::new(started.local.clone()),
        declared: std::sync::Mutex::new(started.declared.clone()),
        declared_tx: started.declared_tx,
        desired,
        board,
        channel: channel_tx,
        guard: std::sync::Mutex::new(DirectiveGuard::load(&cfg.state_dir)),
        identity: std::sync::Mutex::new(identity),
    };
    tracker.spawn(session.run(shutdown));
    tracker.close();
    Ok(tracker)
}

fn not_enrolled(cfg: &AgentConfig) -> anyhow::Error {
    anyhow::anyhow!(
        "this host is not enrolled: run `slipway-agent join TOKEN` with the token `slipctl hosts add {} --env {}` prints, or set join_token_file",
        cfg.host,
        cfg.environment
    )
}

/// Enrolls with `join_token_file` when this host has no identity yet; waits
/// for an unreachable controller, gives up on a refused token.
async fn ensure_enrolled(cfg: &AgentConfig, shutdown: &CancellationToken) -> anyhow::Result<()> {
    if Identity::load(&cfg.state_dir)?.is_some() {
        return Ok(());
    }
    let Some(file) = &cfg.join_token_file else {
        return Err(not_enrolled(cfg));
    };
    let token = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("read join token {}: {e}", file.display()))?;
    // Jittered: a fleet joining at once, turned away by a busy controller,
    // does not come back in step.
    let mut backoff =
        backoff::Backoff::new(Duration::from_millis(500), Duration::from_secs(10)).jittered();
    // One key and CSR for every attempt: an attempt whose answer was lost
    // (the token spent on the controller) is answered again.
    let key_and_csr = trust::pki::agent_key_and_csr(&cfg.host)?;
    loop {
        match identity::enroll_with(cfg, &token, &key_and_csr).await {
            Ok(_) => return Ok(()),
            Err(e)
                if e.downcast_ref::<trust::TrustError>()
                    .is_some_and(|t| matches!(t, trust::TrustError::Io { .. })) =>
            {
                tracing::warn!(error = %e, retry_in = ?backoff.peek(), "enrollment: controller unreachable");
            }
            Err(e)
                if e.downcast_ref::<identity::EnrollRefused>()
                    .is_some_and(|r| r.busy) =>
            {
                tracing::warn!(error = %e, retry_in = ?backoff.peek(), "enrollment: controller busy");
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            _ = shutdown.cancelled() => anyhow::bail!("stopped before enrolling"),
            _ = tokio::time::sleep(backoff.next_wait()) => {}
        }
    }
}
