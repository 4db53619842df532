//! The Slipway agent: runs on every host, pulls the releases it should run from
//! the controller, installs and activates them safely, checks their health and
//! environment, rolls back on failure and reports. It never links sqlx.

pub mod app;
pub mod command_backend;
pub mod config;
pub mod envfile;
pub mod fetch;
pub mod filewatch;
pub mod health;
pub mod install;
pub mod local;
pub mod lock;
pub mod paths;
pub mod session;
pub mod state;
pub mod supervisor;
pub mod systemd;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::AppRunner;
use crate::config::AgentConfig;
use crate::session::Session;

/// Runs the app runners and the controller session until `shutdown` fires.
pub async fn run(cfg: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.state_dir)
        .map_err(|e| anyhow::anyhow!("create state dir {}: {e}", cfg.state_dir.display()))?;
    let cfg = Arc::new(cfg);
    let (board, _) = watch::channel(BTreeMap::new());
    let (channel_tx, channel_rx) = watch::channel(None);
    let tracker = TaskTracker::new();
    let mut desired = HashMap::new();
    for (name, app_cfg) in &cfg.apps {
        let (tx, rx) = watch::channel(None);
        desired.insert(name.clone(), tx);
        let runner = AppRunner::new(
            name.clone(),
            app_cfg.clone(),
            &cfg.state_dir,
            board.clone(),
            channel_rx.clone(),
        )
        .map_err(|e| {
            anyhow::anyhow!("prepare app {name} under {}: {e}", cfg.state_dir.display())
        })?;
        tracker.spawn(runner.run(rx, shutdown.clone()));
    }
    tracing::info!(host = %cfg.host, env = %cfg.environment, apps = cfg.apps.len(), controller = %cfg.controller, "agent running");
    let session = Session {
        cfg: cfg.clone(),
        desired,
        board,
        channel: channel_tx,
    };
    tracker.spawn(session.run(shutdown.clone()));
    tracker.close();
    shutdown.cancelled().await;
    if tokio::time::timeout(Duration::from_secs(30), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("tasks did not finish within 30s of shutdown");
    }
    Ok(())
}
