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

use super::backend::Listen;
use super::{AppRunner, CHECK_EVERY, DeployError, Env};
use crate::config::Activation;

/// The process that serves the app's port with side-by-side activation: the
/// only one without a port of its own, or the one named `web` among several.
pub(super) fn front_process(spec: &ReleaseSpec, mode: &str) -> Result<String, DeployError> {
    let candidates: Vec<&String> = spec
        .processes
        .iter()
        .filter(|(_, p)| p.port.is_none())
        .map(|(n, _)| n)
        .collect();
    match candidates.as_slice() {
        [one] => Ok((*one).clone()),
        many if many.iter().any(|n| *n == "web") => Ok("web".into()),
        [] => Err(DeployError::Spec(format!(
            "activation = \"{mode}\": no process serves the app's port (each sets its own port)"
        ))),
        many => Err(DeployError::Spec(format!(
            "activation = \"{mode}\": processes {} all serve the app's port; name the one that does web",
            many.iter()
                .map(|n| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

impl AppRunner {
    /// Warns the running release (restart warning), then stops it.
    pub(super) async fn stop_running(&mut self, p: &Progress) -> Result<Outcome, DeployError> {
        if self.cfg.activation.side_by_side() {
            // The running release keeps serving until the new one is proven:
            // it is drained and stopped at `healthy`.
            self.log(
                &p.target.version,
                "stop",
                "deferred",
                "the running release serves until the new one is healthy",
            );
            return Ok(Outcome::Ok);
        }
        if let Some(running) = &p.previous {
            self.warn_restart(&running.version).await;
        }
        self.stop_all().await;
        Ok(Outcome::Ok)
    }

    /// Starts `version`'s processes, after stopping whatever still runs (a
    /// resumed deploy may find the previous release started again).
    pub(super) async fn start_target(&mut self, version: &str) -> Result<Outcome, DeployError> {
        if self.cfg.activation.side_by_side() {
            // A resumed start may find instances of `version` an earlier agent
            // started: unproven, so replaced; other releases keep serving.
            let mut stale = std::mem::take(&mut self.procs);
            stale.retain(|r| r.version == version);
            for known in self.backend.adopt() {
                if known.version == version && !stale.iter().any(|r| r.pid == known.pid) {
                    stale.push(known);
                }
            }
            for r in &stale {
                self.backend.stop(r).await;
            }
            return self.start_beside(version).await.map(|()| Outcome::Ok);
        }
        self.stop_all().await;
        let spec = ReleaseSpec::load(&self.paths.release(version))
            .map_err(|e| DeployError::Spec(e.to_string()))?;
        let env = self.env_for(version)?;
        self.procs = self.backend.start(&spec, version, &env).await?;
        Ok(Outcome::Ok)
    }

    /// Starts `version`'s processes beside whatever runs (side-by-side
    /// activation); `self.procs` becomes the new instances.
    pub(super) async fn start_beside(&mut self, version: &str) -> Result<(), DeployError> {
        let spec = ReleaseSpec::load(&self.paths.release(version))
            .map_err(|e| DeployError::Spec(e.to_string()))?;
        let env = self.env_for(version)?;
        let front = front_process(&spec, self.cfg.activation.name())?;
        let listener = match self.cfg.activation {
            Activation::Socket => {
                let addr = self.public_addr()?;
                Some(
                    crate::proxy::socket::held(&self.name, addr, &self.backend.adopt())
                        .map_err(|e| DeployError::Process(e.to_string()))?,
                )
            }
            _ => None,
        };
        let listen = match &listener {
            Some(l) => Listen::Socket(l),
            None => Listen::PrivatePort,
        };
        self.procs = self
            .backend
            .start_beside(&spec, version, &env, &front, listen)
            .await?;
        Ok(())
    }

    /// The app's public address (side-by-side activation needs its port).
    fn public_addr(&self) -> Result<std::net::SocketAddr, DeployError> {
        let port = self.cfg.port.ok_or_else(|| {
            DeployError::Spec("side-by-side activation needs the app's port".into())
        })?;
        Ok(std::net::SocketAddr::new(self.cfg.public_address, port))
    }

    /// Moves traffic to the instances in `self.procs` (`version`), then
    /// drains and stops every other instance of the app: with the proxy, once
    /// the requests in flight to it are done (bounded by the drain timeout);
    /// with a shared socket, its stop signal is its drain signal (killed after
    /// the drain timeout). Idempotent: a restarted agent redoes it.
    pub(super) async fn cut_over(&mut self, version: &str) -> Result<(), DeployError> {
        let spec = ReleaseSpec::load(&self.paths.release(version))
            .map_err(|e| DeployError::Spec(e.to_string()))?;
        let front = front_process(&spec, self.cfg.activation.name())?;
        let drain = Duration::from_secs(self.cfg.drain_timeout_secs);
        if self.cfg.activation == Activation::Proxy {
            let rec = self
                .procs
                .iter()
                .find(|r| r.process == front && r.port.is_some())
                .ok_or_else(|| {
                    DeployError::Unhealthy(format!("process {front} of {version} is not running"))
                })?;
            let route = crate::proxy::Route {
                version: version.to_string(),
                instance: rec.instance.clone().unwrap_or_default(),
                port: rec.port.unwrap_or_default(),
            };
            let on_file = crate::proxy::read_route(&crate::proxy::route_file(&self.paths));
            if on_file.as_ref() != Some(&route) {
                crate::proxy::set_route(&self.name, &self.paths, &route)
                    .map_err(|e| DeployError::Process(e.to_string()))?;
                crate::failpoint::hit("traffic-moved");
            }
            self.log(
                version,
                "traffic",
                "moved",
                &format!("to instance {} on port {}", route.instance, route.port),
            );
        }
        let keep: Vec<i32> = self.procs.iter().map(|r| r.pid).collect();
        let old: Vec<ProcRecord> = self
            .backend
            .adopt()
            .into_iter()
            .filter(|r| !keep.contains(&r.pid))
            .collect();
        let proxy = crate::proxy::get(&self.name);
        for rec in &old {
            if let Some(port) = rec.port {
                let drained = match &proxy {
                    Some(p) => p.drain(port, drain).await,
                    // Another process (`slipway-agent rollback`) moved the
                    // route: the agent's proxy sees it within a poll or two.
                    None => {
                        tokio::time::sleep(crate::proxy::ROUTE_POLL * 3).await;
                        true
                    }
                };
                if !drained {
                    tracing::warn!(app = %self.name, version = %rec.version, pid = rec.pid, "requests still in flight after the drain timeout; stopping the old instance anyway");
                    self.log(
                        &rec.version,
                        "drain",
                        "timeout",
                        &format!(
                            "requests still in flight after {}s; stopped anyway",
                            drain.as_secs()
                        ),
                    );
                }
            }
            self.backend.stop(rec).await;
        }
        if !old.is_empty() {
            self.log(
                version,
                "drain",
                "ok",
                &format!("{} old instance(s) stopped", old.len()),
            );
        }
        Ok(())
    }

    /// Replaces the running instances of `version` by fresh ones without a gap
    /// (env-file edit, crash restart): start beside, prove, move traffic,
    /// drain. On failure the fresh ones are stopped and the old kept.
    pub(super) async fn replace_beside(&mut self, version: &str) -> Result<(), DeployError> {
        let old = std::mem::take(&mut self.procs);
        let proven = async {
            self.start_beside(version).await?;
            self.wait_ready(version).await?;
            self.hold(version).await
        }
        .await;
        match proven {
            Ok(_) => self.cut_over(version).await,
            Err(e) => {
                for r in std::mem::replace(&mut self.procs, old) {
                    self.backend.stop(&r).await;
                }
                Err(e)
            }
        }
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
        if self.cfg.activation.side_by_side() {
            // Only the failed release's instances: the previous one may still
            // be serving, untouched.
            let mut failed = std::mem::take(&mut self.procs);
            for known in self.backend.adopt() {
                if !failed.iter().any(|r| r.pid == known.pid) {
                    failed.push(known);
                }
            }
            failed.retain(|r| r.version == t.version);
            for r in &failed {
                self.backend.stop(r).await;
            }
        } else {
            self.stop_all().await;
        }
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
            if self.cfg.activation.side_by_side() {
                let serving: Vec<ProcRecord> = self
                    .backend
                    .adopt()
                    .into_iter()
                    .filter(|r| r.version == prev.version)
                    .collect();
                if serving.is_empty() {
                    self.start_beside(&prev.version).await?;
                } else {
                    self.procs = serving;
                }
                self.wait_ready(&prev.version).await?;
                self.hold(&prev.version).await?;
                return self.cut_over(&prev.version).await.map(|()| Outcome::Ok);
            }
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
