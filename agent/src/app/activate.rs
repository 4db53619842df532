//! The deploy steps that touch what serves — stop, start, readiness and the
//! minimum healthy time — and the three endings: healthy, refused, rolled back.

use std::time::Duration;

use artifact::ReleaseSpec;
use tokio::time::Instant;

use crate::health::Verdict;
use crate::install;
use crate::state::{EnvState, FailedRelease, HealthState, Origin, Progress, State};
use crate::step::Outcome;
use crate::supervisor::ProcRecord;

use super::{AppRunner, CHECK_EVERY, DeployError, Env};

impl AppRunner {
    /// Warns the running release (restart warning), then stops it.
    pub(super) async fn stop_running(&mut self, p: &Progress) -> Result<Outcome, DeployError> {
        if let Some(running) = &p.previous {
            self.warn_restart(&running.version).await;
        }
        self.stop_all().await;
        Ok(Outcome::Ok)
    }

    /// Starts `version`'s processes, after stopping whatever still runs (a
    /// resumed deploy may find the previous release started again).
    pub(super) async fn start_target(&mut self, version: &str) -> Result<Outcome, DeployError> {
        self.stop_all().await;
        let spec = ReleaseSpec::load(&self.paths.release(version))
            .map_err(|e| DeployError::Spec(e.to_string()))?;
        let env = self.env_for(version)?;
        self.procs = self.backend.start(&spec, version, &env).await?;
        Ok(Outcome::Ok)
    }

    /// One round of checks on every process of `version` the spec knows, each
    /// with its record.
    pub(super) async fn check_all(
        &self,
        spec: &ReleaseSpec,
        version: &str,
        env: &Env,
    ) -> Vec<(ProcRecord, Verdict)> {
        let release = self.paths.release(version);
        let mut out = Vec::new();
        for rec in &self.procs {
            if let Some(ps) = spec.processes.get(&rec.process) {
                out.push((
                    rec.clone(),
                    self.backend.check(rec, ps, &release, env).await,
                ));
            }
        }
        out
    }

    /// Waits for every process to pass within its readiness deadline. The
    /// error names the reason (missing env vars included).
    pub(super) async fn wait_ready(&self, version: &str) -> Result<Outcome, DeployError> {
        let spec = ReleaseSpec::load(&self.paths.release(version))
            .map_err(|e| DeployError::Spec(e.to_string()))?;
        let env = self.env_for(version)?;
        let release = self.paths.release(version);
        if self.procs.is_empty() && !spec.processes.is_empty() {
            return Err(DeployError::Unhealthy("no process is running".into()));
        }
        for rec in &self.procs {
            let Some(ps) = spec.processes.get(&rec.process) else {
                continue;
            };
            let deadline = Instant::now() + Duration::from_secs(ps.health.timeout_secs);
            loop {
                match self.backend.check(rec, ps, &release, &env).await {
                    Verdict::Healthy => break,
                    Verdict::Failed { reason, .. } => return Err(DeployError::Unhealthy(reason)),
                    Verdict::NotReady(why) if Instant::now() >= deadline => {
                        return Err(DeployError::Unhealthy(format!(
                            "not ready within {}s: {why}",
                            ps.health.timeout_secs
                        )));
                    }
                    Verdict::NotReady(_) => tokio::time::sleep(CHECK_EVERY).await,
                }
            }
        }
        Ok(Outcome::Ok)
    }

    /// Requires every check to keep passing for the minimum healthy time.
    pub(super) async fn hold(&self, version: &str) -> Result<Outcome, DeployError> {
        let spec = ReleaseSpec::load(&self.paths.release(version))
            .map_err(|e| DeployError::Spec(e.to_string()))?;
        let env = self.env_for(version)?;
        let hold = spec
            .processes
            .values()
            .map(|p| p.health.min_healthy_secs)
            .max()
            .unwrap_or(0);
        let until = Instant::now() + Duration::from_secs(hold);
        while Instant::now() < until {
            tokio::time::sleep(CHECK_EVERY * 2).await;
            for (_, v) in self.check_all(&spec, version, &env).await {
                if let Verdict::Failed { reason: why, .. } | Verdict::NotReady(why) = v {
                    return Err(DeployError::Unhealthy(format!(
                        "during the {hold}s minimum healthy time: {why}"
                    )));
                }
            }
        }
        Ok(Outcome::Ok)
    }

    /// The release proved healthy. From the controller: record it, prune old
    /// releases, then `post_activate` (at most once: after the progress is
    /// cleared). From the host: the release left is recorded as refused so the
    /// agent does not re-apply it by itself.
    pub(super) fn healthy(&mut self, p: &Progress) {
        let t = &p.target;
        self.log(&t.version, "health", "ok", "");
        let s = &mut self.status;
        s.running_version = Some(t.version.clone());
        s.running_digest = Some(t.digest.clone());
        s.health = HealthState::Healthy;
        s.health_reason.clear();
        s.env_check = EnvState::Ok;
        s.missing_env.clear();
        s.drift.clear();
        s.drift_count = 0;
        s.drift_digest.clear();
        self.restart_backoff.reset();
        if let Origin::Host { actor } = &p.origin {
            let left = p
                .previous
                .clone()
                .map(|prev| prev.version)
                .unwrap_or_default();
            let reason = format!("rolled back on the host by {actor}");
            let digest = p
                .previous
                .as_ref()
                .and_then(|prev| prev.digest.clone())
                .or_else(|| self.status.installed.get(&left).cloned())
                .unwrap_or_default();
            // A second rollback on the host keeps the first one's record: the
            // release the controller wants stays refused, not the one in between.
            if !self.status.failed.as_ref().is_some_and(|f| f.by_host) {
                self.status.failed = Some(FailedRelease {
                    version: left.clone(),
                    digest,
                    generation: self.status.generation,
                    reason: reason.clone(),
                    by_host: true,
                });
                self.status.last_error = format!("{left}: {reason}");
            }
            self.status.state = State::RolledBack;
            self.log(
                &t.version,
                "local_rollback",
                "ok",
                &format!("{left} -> {} by {actor}", t.version),
            );
            return;
        }
        let s = &mut self.status;
        s.state = State::Healthy;
        s.last_error.clear();
        s.failed = None;
        s.generation = t.generation;
        s.history.retain(|v| v != &t.version);
        s.history.push(t.version.clone());
        let protect: Vec<&str> = [
            Some(t.version.as_str()),
            p.previous.as_ref().map(|v| v.version.as_str()),
        ]
        .into_iter()
        .flatten()
        .collect();
        let removed = install::prune(
            &self.paths,
            &self.status.history,
            self.cfg.keep_releases,
            &protect,
        );
        self.status.history.retain(|v| !removed.contains(v));
        for v in &removed {
            let _ = std::fs::remove_file(self.paths.baseline(v));
        }
        self.status.installed.retain(|v, _| !removed.contains(v));
        if !removed.is_empty() {
            self.log(&t.version, "prune", "ok", &removed.join(", "));
        }
        self.log(&t.version, "deploy", "healthy", "");
    }

    /// Refused before anything serving was touched: what runs keeps serving;
    /// a release dir this deploy unpacked is removed.
    pub(super) async fn refused(&mut self, p: &Progress) {
        let t = &p.target;
        tracing::error!(app = %self.name, version = %t.version, reason = %p.reason, "deploy refused; the running release keeps serving");
        // Recorded first: a slow delete must not lose the refusal.
        self.record_failure(t, p.reason.clone());
        self.status.state = if self.status.running_version.is_some() {
            State::RolledBack
        } else {
            State::Failed
        };
        if p.fresh && self.paths.current_version().as_deref() != Some(t.version.as_str()) {
            self.status.installed.remove(&t.version);
            self.publish();
            let _ = std::fs::remove_file(self.paths.baseline(&t.version));
            let _ = tokio::fs::remove_dir_all(self.paths.release(&t.version)).await;
        }
    }

    /// After the flip: stop the new release, run its `on_rollback` (once), put
    /// the previous release back and check it. A release an operator chose on
    /// the host that fails is undone the same way, without blaming it upstream.
    pub(super) async fn roll_back(&mut self, p: &mut Progress) {
        let t = p.target.clone();
        self.stop_all().await;
        let from_host = matches!(p.origin, Origin::Host { .. });
        if !from_host {
            // Missing env names travel in the reason; env_check and
            // missing_env keep describing the release that runs.
            self.record_failure(&t, p.reason.clone());
        }
        let failed_dir = self.paths.release(&t.version);
        let on_rollback = ReleaseSpec::load(&failed_dir)
            .ok()
            .and_then(|s| s.hooks.on_rollback);
        if let Some(hook) = on_rollback {
            if !p.on_rollback_started {
                p.on_rollback_started = true;
                let _ = self
                    .run_tracked_hook("on_rollback", &hook, &failed_dir, p)
                    .await;
            } else if let Some(left) = Self::left_hook(p) {
                p.hook = None;
                p.hook_nonce = None;
                // An earlier agent started it: let it finish, never run a second.
                self.wait_for_hook(left, hook.timeout_secs).await;
            }
            // It undoes what `prepare` did: the dir is no longer as installed,
            // so it is never reused without a fresh install.
            let _ = std::fs::remove_file(self.paths.baseline(&t.version));
        }
        let Some(prev) = p.previous.clone() else {
            install::clear_current(&self.paths);
            self.status.running_version = None;
            self.status.running_digest = None;
            self.status.state = State::Failed;
            self.status.health = HealthState::Unhealthy;
            self.status.health_reason = p.reason.clone();
            self.log(
                &t.version,
                "deploy",
                "failed",
                "no previous release to roll back to",
            );
            return;
        };
        let restored = async {
            install::flip_current(&self.paths, &prev.version)?;
            crate::failpoint::hit("rollback-flipped");
            self.start_target(&prev.version).await?;
            self.wait_ready(&prev.version).await?;
            self.hold(&prev.version).await
        }
        .await;
        self.status.running_version = Some(prev.version.clone());
        self.status.running_digest = prev.digest.clone();
        match restored {
            Ok(_) => {
                self.status.health = HealthState::Healthy;
                self.status.health_reason.clear();
                self.status.env_check = EnvState::Ok;
                self.status.missing_env.clear();
                if from_host {
                    self.log(&t.version, "local_rollback", "failed", &p.reason);
                } else {
                    self.status.state = State::RolledBack;
                    self.log(
                        &t.version,
                        "rollback",
                        "ok",
                        &format!("back on {}", prev.version),
                    );
                    tracing::warn!(app = %self.name, failed = %t.version, running = %prev.version, reason = %self.status.last_error, "rolled back");
                }
            }
            Err(e) => {
                self.status.state = State::Failed;
                self.status.health = HealthState::Unhealthy;
                self.status.health_reason =
                    format!("previous release {} is unhealthy too: {e}", prev.version);
                let why = self.status.health_reason.clone();
                self.log(&t.version, "rollback", "failed", &why);
                tracing::error!(app = %self.name, reason = %why, "rollback did not restore a healthy release");
            }
        }
    }
}
