//! The running release's processes between deploys: their environment, the
//! periodic monitor (health, env names, restarts with backoff) and restarts
//! when an env file changes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use artifact::ReleaseSpec;
use tokio::time::Instant;

use crate::config::AppConfig;
use crate::health::Verdict;
use crate::lock::AppLock;
use crate::paths::AppPaths;
use crate::state::{EnvState, HealthState, State};

use super::{AppRunner, DeployError, Env};
use crate::step::Outcome;

/// Env files in force: the configured ones, or `shared/.env` if it exists.
pub(crate) fn env_files(cfg: &AppConfig, paths: &AppPaths) -> Vec<PathBuf> {
    if !cfg.env_files.is_empty() {
        return cfg.env_files.clone();
    }
    let default = paths.shared.join(".env");
    if default.is_file() {
        vec![default]
    } else {
        vec![]
    }
}

/// What the env files hold: masked in anything a hook or process prints
/// before it is logged or reported.
pub(crate) fn env_secrets(cfg: &AppConfig, paths: &AppPaths) -> Vec<String> {
    crate::envfile::load_layers(&env_files(cfg, paths))
        .map(|m| m.into_values().collect())
        .unwrap_or_default()
}

/// The environment processes and hooks run with: a minimal base, the host's env
/// files in order (last wins), then what Slipway sets.
pub(crate) fn app_env(
    app: &str,
    cfg: &AppConfig,
    paths: &AppPaths,
    version: &str,
) -> Result<Env, DeployError> {
    let mut env = BTreeMap::new();
    env.insert(
        "PATH".into(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
    );
    env.insert("LANG".into(), "C.UTF-8".into());
    env.extend(crate::envfile::load_layers(&env_files(cfg, paths))?);
    if let Some(port) = cfg.port {
        env.insert("PORT".into(), port.to_string());
    }
    env.insert("SLIPWAY_APP".into(), app.into());
    env.insert("SLIPWAY_VERSION".into(), version.into());
    Ok(env)
}

impl AppRunner {
    pub(super) fn env_for(&self, version: &str) -> Result<Env, DeployError> {
        app_env(&self.name, &self.cfg, &self.paths, version)
    }

    /// Env files to watch: the configured ones, or the default `shared/.env`
    /// even before it exists (creating it is a change too).
    pub(super) fn watched_env_files(&self) -> Vec<PathBuf> {
        if self.cfg.env_files.is_empty() {
            vec![self.paths.shared.join(".env")]
        } else {
            self.cfg.env_files.clone()
        }
    }

    /// An env file or the host settings changed: restart the running release's
    /// processes with the new environment and check them again (names of
    /// missing vars reported). The release stays; a deploy in progress reads
    /// the new env by itself.
    pub(super) async fn restart_running(&mut self, why: &str) {
        let Some(version) = self.status.running_version.clone() else {
            return;
        };
        let Some(_lock) = AppLock::try_acquire(&self.paths.lock) else {
            return;
        };
        self.reload_if_changed();
        self.warn_env_duplicates(&version);
        let Ok(spec) = ReleaseSpec::load(&self.paths.release(&version)) else {
            return;
        };
        if let Err(e) = self.env_for(&version) {
            // Keep what runs: it still has the last good environment.
            self.log(
                &version,
                "env",
                "failed",
                &format!("{e}; processes keep their previous environment"),
            );
            self.status.health_reason = format!("env file not applied: {e}");
            self.publish();
            return;
        }
        self.log(
            &version,
            "env",
            "changed",
            &format!("{why}: restarting processes"),
        );
        let checked = if self.cfg.activation.side_by_side() {
            self.replace_beside(&version).await.map(|()| Outcome::Ok)
        } else {
            async {
                self.start_target(&version).await?;
                self.wait_ready(&version).await?;
                self.hold(&version).await
            }
            .await
        };
        match checked {
            Ok(_) => self.log(&version, "env", "ok", "healthy with the new environment"),
            Err(e) => self.log(&version, "env", "unhealthy", &e.to_string()),
        }
        self.monitor_locked(&spec, &version).await;
    }

    /// Warns (names and files only) about a variable defined in two env layers.
    pub(super) fn warn_env_duplicates(&self, version: &str) {
        for dup in crate::envfile::duplicates(&env_files(&self.cfg, &self.paths)) {
            tracing::warn!(app = %self.name, duplicate = %dup, "env var defined in more than one env file; the last one wins");
            self.log(
                version,
                "env",
                "warning",
                &format!("{dup}: defined twice, the last file wins"),
            );
        }
    }

    pub(super) fn secret_values(&self) -> Vec<String> {
        env_secrets(&self.cfg, &self.paths)
    }

    /// Stops every process of the app: those this runner started and any the
    /// backend still knows of (pid files), so a step never leaves two releases
    /// running side by side.
    pub(super) async fn stop_all(&mut self) {
        let mut procs = std::mem::take(&mut self.procs);
        for known in self.backend.adopt() {
            if !procs.iter().any(|p| p.pid == known.pid) {
                procs.push(known);
            }
        }
        for p in procs {
            self.backend.stop(&p).await;
        }
    }

    /// Periodic check of what runs: restarts crashed processes with backoff and
    /// keeps health and env check current.
    pub(super) async fn monitor(&mut self) {
        self.ensure_front_door();
        let Some(version) = self.status.running_version.clone() else {
            return;
        };
        // A local rollback in progress owns the processes for now.
        let Some(_lock) = AppLock::try_acquire(&self.paths.lock) else {
            return;
        };
        if self.reload_if_changed() {
            return; // judged on the next round, with the processes just adopted
        }
        let Ok(spec) = ReleaseSpec::load(&self.paths.release(&version)) else {
            return;
        };
        self.monitor_locked(&spec, &version).await;
    }

    /// One monitor round, the app lock held by the caller.
    pub(super) async fn monitor_locked(&mut self, spec: &ReleaseSpec, version: &str) {
        let (paths, max, keep) = (
            self.paths.clone(),
            self.cfg.log_max_bytes,
            self.cfg.log_keep,
        );
        let _ = tokio::task::spawn_blocking(move || {
            crate::supervisor::rotate_logs(&paths, max, keep);
            crate::logs::mark(&paths);
        })
        .await;
        let env = self.env_for(version).unwrap_or_default();
        let mut verdict = (
            HealthState::Healthy,
            String::new(),
            EnvState::Ok,
            Vec::new(),
        );
        let mut dead = self.procs.is_empty();
        if dead {
            verdict = (
                HealthState::Unhealthy,
                "not running".into(),
                EnvState::Unknown,
                vec![],
            );
        }
        for (rec, v) in self.check_all(spec, version, &env).await {
            match v {
                Verdict::Healthy => {}
                Verdict::NotReady(why) => {
                    verdict.0 = HealthState::Unhealthy;
                    verdict.1 = why;
                }
                Verdict::Failed {
                    reason,
                    missing_env,
                } => {
                    dead |= !rec.alive();
                    let env = if missing_env.is_empty() {
                        verdict.2
                    } else {
                        EnvState::Missing
                    };
                    verdict = (HealthState::Unhealthy, reason, env, missing_env);
                }
            }
        }
        if dead && self.next_restart.is_none_or(|t| Instant::now() >= t) {
            let restarted = if self.cfg.activation.side_by_side() {
                self.replace_beside(version).await.map(|()| Outcome::Ok)
            } else {
                self.start_target(version).await
            };
            match restarted {
                Ok(_) => self.log(version, "restart", "ok", &verdict.1),
                Err(e) => self.log(version, "restart", "failed", &e.to_string()),
            }
            self.next_restart = Some(Instant::now() + self.restart_backoff.next_wait());
        }
        if verdict.0 == HealthState::Healthy && !dead {
            // Up for a whole round: the next crash starts the backoff over.
            self.restart_backoff.reset();
        }
        let s = &self.status;
        if (s.health, &s.health_reason, s.env_check, &s.missing_env)
            == (verdict.0, &verdict.1, verdict.2, &verdict.3)
            && s.state != State::Idle
        {
            return;
        }
        self.status.state = match (self.status.state, verdict.0) {
            (State::Healthy | State::Idle, HealthState::Unhealthy) => State::Unhealthy,
            (State::Unhealthy | State::Idle, HealthState::Healthy) => State::Healthy,
            (state, _) => state,
        };
        (
            self.status.health,
            self.status.health_reason,
            self.status.env_check,
            self.status.missing_env,
        ) = verdict;
        self.publish();
    }

    /// With `activation = "proxy"`, the agent's proxy on the app's public port
    /// (bound once; a port taken by something else is reported and retried
    /// every monitor round).
    pub(super) fn ensure_front_door(&mut self) {
        if self.cfg.activation != crate::config::Activation::Proxy {
            return;
        }
        let Some(port) = self.cfg.port else { return };
        let addr = std::net::SocketAddr::new(self.cfg.public_address, port);
        match crate::proxy::ensure(&self.name, addr, crate::proxy::route_file(&self.paths)) {
            Ok(()) => {
                if self.front_door_error.take().is_some() {
                    tracing::info!(app = %self.name, %addr, "public port bound at last");
                    self.log("", "proxy", "ok", &format!("listening on {addr}"));
                }
            }
            Err(e) => {
                let why = e.to_string();
                if self.front_door_error.as_deref() != Some(why.as_str()) {
                    tracing::error!(app = %self.name, error = %why, "cannot serve the app's public port; retrying every monitor round");
                    self.log("", "proxy", "failed", &why);
                    self.front_door_error = Some(why);
                }
            }
        }
    }
}
