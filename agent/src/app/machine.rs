//! The deploy executor: walks `crate::step`'s table for one release,
//! persisting each step before it starts and bounding it by its limit. A
//! deploy from the controller, a local `slipway-agent rollback`, and a deploy
//! an earlier agent left in the middle all run here.

use std::path::Path;
use std::time::Duration;

use artifact::ReleaseSpec;
use tokio::time::Instant;

use crate::config::Backend;
use crate::directive::{Desired, Directive};
use crate::health::Verdict;
use crate::install;
use crate::lock::AppLock;
use crate::state::{
    EnvState, FailedRelease, HealthState, HookRun, Origin, Previous, Progress, State, Target,
};
use crate::step::{Limit, Outcome, Step};

use super::backend::port_of;
use super::{AppRunner, CHECK_EVERY, DeployError, Env, LOCK_TIMEOUT};

/// What a deploy holds in memory only: the directive and the fetched blob. A
/// resumed deploy has neither and needs neither (it resumes at `Stop` or later).
#[derive(Default)]
pub(super) struct Work {
    directive: Option<Directive>,
    blob: Option<std::path::PathBuf>,
}

/// Slack added to limits taken from the release's spec.
const SLACK: Duration = Duration::from_secs(30);
/// Time allowed for hashing a release into its drift baseline.
const BASELINE_TIME: Duration = Duration::from_secs(600);

impl AppRunner {
    /// Deploys a desired release, under the app lock. Err only when the deploy
    /// is postponed for a reason that is not the release's fault.
    pub(super) async fn deploy(&mut self, d: &Desired) -> Result<(), DeployError> {
        let _lock = AppLock::acquire(&self.paths.lock, LOCK_TIMEOUT)
            .await
            .map_err(|e| DeployError::Transient(e.to_string()))?;
        // A local action may have run while we waited for the lock.
        if self.reload_if_changed() && !self.needs_deploy(d) {
            return Ok(());
        }
        let target = d.target();
        tracing::info!(app = %self.name, version = %target.version, generation = target.generation, "deploying");
        let previous = self.previous_of(&target.version);
        let mut p = Progress::new(Step::Verify, target, previous, Origin::Controller);
        let directive = match d {
            Desired::Release(directive) => directive.clone(),
            Desired::Invalid { reason, .. } => {
                p.reason = format!("verify: {reason}");
                self.log(&p.target.version, "verify", "failed", reason);
                p.step = Step::Refused;
                return self.drive(p, Work::default()).await.map(|_| ());
            }
        };
        let work = Work {
            directive: Some(directive),
            blob: None,
        };
        let ended = self.drive(p, work).await?;
        self.after(&ended).await;
        Ok(())
    }

    /// What follows a finished deploy outside the machine: `post_activate`
    /// runs at most once, after the progress is cleared.
    pub(super) async fn after(&mut self, ended: &Progress) {
        if ended.step == Step::Healthy && ended.origin == Origin::Controller {
            self.post_activate(&ended.target.version).await;
        }
    }

    /// The release `current` holds now, unless it is `version` itself.
    pub(super) fn previous_of(&self, version: &str) -> Option<Previous> {
        let running = self.paths.current_version().filter(|v| v != version)?;
        let digest = match self.status.running_version.as_deref() {
            Some(v) if v == running => self.status.running_digest.clone(),
            _ => self.status.installed.get(&running).cloned(),
        };
        Some(Previous {
            version: running,
            digest,
        })
    }

    /// Runs the machine from `p.step` to a terminal step; returns the progress
    /// as it ended. Err: postponed before anything serving was touched (undone).
    pub(super) async fn drive(
        &mut self,
        mut p: Progress,
        mut work: Work,
    ) -> Result<Progress, DeployError> {
        loop {
            self.enter(&p);
            #[cfg(test)]
            if self.crash_before == Some(p.step) {
                return Ok(p);
            }
            let limit = self.limit(p.step, &p.target.version);
            let result = match tokio::time::timeout(limit, self.run_step(&mut p, &mut work)).await {
                Ok(r) => r,
                Err(_) => Err(DeployError::Timeout {
                    step: p.step.name(),
                    secs: limit.as_secs(),
                }),
            };
            let outcome = match result {
                Ok(o) => o,
                Err(e)
                    if !p.step.touches_serving()
                        && (e.is_transient()
                            || (matches!(e, DeployError::Timeout { .. })
                                && p.step.timeout_postpones())) =>
                {
                    self.undo(&p);
                    self.status.deploy = None;
                    self.publish();
                    return Err(e);
                }
                Err(e) => {
                    p.reason = self.failure_reason(p.step, &e);
                    self.log(&p.target.version, p.step.name(), "failed", &p.reason);
                    Outcome::Failed
                }
            };
            match p.step.next(outcome) {
                Some(next) => p.step = next,
                None => {
                    self.status.deploy = None;
                    self.publish();
                    return Ok(p);
                }
            }
        }
    }

    /// Persists `p` before its step starts, with the state label it implies.
    fn enter(&mut self, p: &Progress) {
        self.status.state = match p.step {
            Step::Verify | Step::Fetch => State::Fetching,
            Step::Unpack | Step::Prepare => State::Installing,
            Step::Stop | Step::Flip | Step::Start | Step::Health | Step::Hold => State::Activating,
            Step::RollingBack => State::Activating,
            Step::Healthy | Step::Refused => self.status.state,
        };
        self.status.deploy = Some(p.clone());
        self.publish();
    }

    fn limit(&self, step: Step, version: &str) -> Duration {
        let spec_of = |v: &str| ReleaseSpec::load(&self.paths.release(v)).ok();
        let sum_of = |v: &str, f: &dyn Fn(&artifact::spec::ProcessSpec) -> u64| {
            spec_of(v).map_or(0, |s| s.processes.values().map(f).sum())
        };
        let max_of = |v: &str, f: &dyn Fn(&artifact::spec::ProcessSpec) -> u64| {
            spec_of(v)
                .and_then(|s| s.processes.values().map(f).max())
                .unwrap_or(0)
        };
        let secs = Duration::from_secs;
        match step.row().limit {
            Limit::Fixed(d) => d,
            Limit::PrepareHook => {
                let hook = spec_of(version)
                    .and_then(|s| s.hooks.prepare.map(|h| h.timeout_secs))
                    .unwrap_or(0);
                secs(hook) + BASELINE_TIME + SLACK
            }
            Limit::Readiness => secs(sum_of(version, &|p| p.health.timeout_secs)) + SLACK,
            Limit::MinHealthy => secs(max_of(version, &|p| p.health.min_healthy_secs)) + SLACK,
            Limit::StopGrace => self.stop_time(),
            Limit::RollBack => {
                let previous = self.status.deploy.as_ref().and_then(|p| p.previous.clone());
                let hook = spec_of(version)
                    .and_then(|s| s.hooks.on_rollback.map(|h| h.timeout_secs + 10))
                    .unwrap_or(0);
                let back = previous.map_or(Duration::ZERO, |prev| {
                    secs(sum_of(&prev.version, &|p| p.health.timeout_secs))
                        + secs(max_of(&prev.version, &|p| p.health.min_healthy_secs))
                });
                self.stop_time() + secs(hook) + back + SLACK * 2
            }
        }
    }

    /// What stopping every running process may take with this app's service
    /// backend (the supervisor: grace, then SIGKILL and 10 s; systemd: its
    /// default `TimeoutStopSec` of 90 s; commands: their 60 s bound), plus the
    /// running release's restart warning.
    fn stop_time(&self) -> Duration {
        let per_process = match self.cfg.service {
            Backend::Supervise => self.cfg.stop_grace_secs + 10,
            Backend::Systemd => 95,
            Backend::Command => 65,
        };
        let running = self.procs.len().max(self.backend.adopt().len()).max(1) as u64;
        let warning = self
            .paths
            .current_version()
            .and_then(|v| ReleaseSpec::load(&self.paths.release(&v)).ok())
            .and_then(|s| s.restart_warning.map(|w| w.seconds + 5))
            .unwrap_or(0);
        Duration::from_secs(per_process * running + warning) + SLACK
    }

    /// The reason recorded for a failed step: before the flip it names the
    /// part that refused ("prepare: …"); after it, the health verdict itself.
    fn failure_reason(&self, step: Step, e: &DeployError) -> String {
        let part = match (step, e) {
            (_, DeployError::Spec(_)) => "spec",
            (_, DeployError::Env(_)) => "env",
            (Step::Prepare, DeployError::Install(_)) => "link_shared",
            (_, DeployError::Hook(_)) => "prepare",
            (Step::Flip, e) => return format!("flip current: {e}"),
            (s, _) if s.touches_serving() => return e.to_string(),
            (s, _) => s.name(),
        };
        format!("{part}: {e}")
    }

    async fn run_step(&mut self, p: &mut Progress, w: &mut Work) -> Result<Outcome, DeployError> {
        match p.step {
            Step::Verify => self.verify(p, w).await,
            Step::Fetch => self.fetch_blob(w).await,
            Step::Unpack => self.unpack(p, w).await,
            Step::Prepare => self.prepare(p).await,
            Step::Stop => self.stop_running(p).await,
            Step::Flip => {
                install::flip_current(&self.paths, &p.target.version)?;
                self.log(&p.target.version, "flip", "ok", "");
                Ok(Outcome::Ok)
            }
            Step::Start => self.start_target(&p.target.version).await,
            Step::Health => self.wait_ready(&p.target.version).await,
            Step::Hold => self.hold(&p.target.version).await,
            Step::Healthy => {
                self.healthy(p);
                Ok(Outcome::Ok)
            }
            Step::RollingBack => {
                self.roll_back(p).await;
                Ok(Outcome::Ok)
            }
            Step::Refused => {
                self.refused(p).await;
                Ok(Outcome::Ok)
            }
        }
    }

    async fn verify(&mut self, p: &mut Progress, w: &Work) -> Result<Outcome, DeployError> {
        let d = w
            .directive
            .as_ref()
            .ok_or_else(|| DeployError::Verify("no directive to verify".into()))?;
        self.verify_signatures(d)?;
        if self.kept_intact(&p.target).await {
            p.kept = true;
            self.log(
                &p.target.version,
                "verify",
                "ok",
                "kept on this host and unchanged since installed: not fetched again",
            );
            return Ok(Outcome::Kept);
        }
        Ok(Outcome::Ok)
    }

    /// Whether the release is unpacked here already, recorded with this
    /// digest, and still matches the baseline taken when it was installed.
    async fn kept_intact(&self, t: &Target) -> bool {
        let dir = self.paths.release(&t.version);
        if self.paths.current_version().as_deref() == Some(t.version.as_str())
            || !dir.is_dir()
            || self.status.installed.get(&t.version) != Some(&t.digest)
        {
            return false;
        }
        let Ok(Some(baseline)) = crate::drift::Baseline::load(&self.paths.baseline(&t.version))
        else {
            return false;
        };
        if baseline.version != t.version {
            return false;
        }
        tokio::task::spawn_blocking(move || {
            crate::drift::compare(&dir, &baseline).is_ok_and(|d| d.is_empty())
        })
        .await
        .unwrap_or(false)
    }

    async fn fetch_blob(&mut self, w: &mut Work) -> Result<Outcome, DeployError> {
        let d = w
            .directive
            .as_ref()
            .ok_or_else(|| DeployError::Transient("fetch without a directive".into()))?;
        let blob = self
            .fetch
            .fetch(&self.paths.cache, &d.blob, d.blob_size)
            .await?;
        self.log(&d.version, "fetch", "ok", &d.blob.to_string());
        w.blob = Some(blob);
        Ok(Outcome::Ok)
    }

    async fn unpack(&mut self, p: &mut Progress, w: &mut Work) -> Result<Outcome, DeployError> {
        let (Some(d), Some(blob)) = (w.directive.as_ref(), w.blob.take()) else {
            return Err(DeployError::Transient(
                "unpack without a fetched blob".into(),
            ));
        };
        let run_as = self.cfg.run_as();
        if let (Some(user), None) = (&self.cfg.user, run_as) {
            return Err(DeployError::Spec(format!("user {user:?} no longer exists")));
        }
        p.fresh = true;
        self.status.deploy = Some(p.clone());
        self.publish();
        let unpacked = install::unpack_release(&self.paths, &blob, &d.manifest, run_as).await;
        // Once unpacked (or refused) the blob has served its purpose: the cache
        // only ever holds what is being installed.
        let _ = std::fs::remove_file(&blob);
        unpacked?;
        let version = d.version.clone();
        self.status
            .installed
            .insert(version.clone(), d.digest.clone());
        self.status.counters.insert(version.clone(), d.counter);
        self.publish();
        let entries = d.manifest.entries.len();
        let detail = match run_as {
            Some(u) => format!("{entries} entries, unpacked as uid {}", u.uid),
            None => format!("{entries} entries"),
        };
        self.log(&version, "unpack", "ok", &detail);
        Ok(Outcome::Ok)
    }

    /// Checks the release can run here, links shared files, reads the env (a
    /// broken env file refuses the release while the old one serves), runs
    /// `prepare` and takes the drift baseline. A kept release was prepared
    /// when it was first installed: only the checks run.
    async fn prepare(&mut self, p: &mut Progress) -> Result<Outcome, DeployError> {
        let version = p.target.version.clone();
        let release = self.paths.release(&version);
        let spec = ReleaseSpec::load(&release).map_err(|e| DeployError::Spec(e.to_string()))?;
        self.check_spec(&spec)?;
        install::link_shared(&self.paths, &release, &spec.shared.files, &spec.shared.dirs)?;
        // Read now: a broken env file refuses the release while the old one serves.
        self.env_for(&version)?;
        self.warn_env_duplicates(&version);
        if p.kept {
            return Ok(Outcome::Ok);
        }
        if let Some(hook) = &spec.hooks.prepare {
            self.run_tracked_hook("prepare", hook, &release, p).await?;
        }
        self.take_baseline(&version).await;
        Ok(Outcome::Ok)
    }

    /// Refuses a spec this host cannot run: a port probe without a port, a
    /// command backend without commands for a process.
    fn check_spec(&self, spec: &ReleaseSpec) -> Result<(), DeployError> {
        if let Some((name, _)) = spec.processes.iter().find(|(_, p)| {
            (p.health.http.is_some() || p.health.tcp) && port_of(&self.cfg, p).is_none()
        }) {
            return Err(DeployError::Spec(format!(
                "process {name} has an HTTP or TCP health check but no port: set its port in slipway.toml or apps.{}.port in the agent config",
                self.name
            )));
        }
        if self.cfg.service == Backend::Command
            && let Some(name) = spec
                .processes
                .keys()
                .find(|p| !self.cfg.commands.contains_key(*p))
        {
            return Err(DeployError::Spec(format!(
                "process {name} has no start/stop/pid commands in apps.{}.commands",
                self.name
            )));
        }
        Ok(())
    }

    /// Warns the running release (restart warning), then stops it.
    async fn stop_running(&mut self, p: &Progress) -> Result<Outcome, DeployError> {
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

    /// One round of checks on every process of `version`.
    pub(super) async fn check_all(
        &self,
        spec: &ReleaseSpec,
        version: &str,
        env: &Env,
    ) -> Vec<Verdict> {
        let release = self.paths.release(version);
        let mut out = Vec::new();
        for rec in &self.procs {
            if let Some(ps) = spec.processes.get(&rec.process) {
                out.push(self.backend.check(rec, ps, &release, env).await);
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
            for v in self.check_all(&spec, version, &env).await {
                if let Verdict::Failed { reason: why, .. } | Verdict::NotReady(why) = v {
                    return Err(DeployError::Unhealthy(format!(
                        "during the {hold}s minimum healthy time: {why}"
                    )));
                }
            }
        }
        Ok(Outcome::Ok)
    }

    /// Drops the work of a deploy that never touched what serves: its release
    /// dir (unless kept or current), staging leftovers, and a hook left running
    /// by a killed agent.
    pub(super) fn undo(&mut self, p: &Progress) {
        if let Some(hook) = p.hook
            && crate::supervisor::kill_group_left(hook.pid, hook.start_time, &self.paths.root)
        {
            self.log(
                &p.target.version,
                "prepare",
                "killed",
                "left running by a stopped agent",
            );
        }
        if p.fresh && self.paths.current_version().as_deref() != Some(p.target.version.as_str()) {
            let _ = std::fs::remove_dir_all(self.paths.release(&p.target.version));
            let _ = std::fs::remove_file(self.paths.baseline(&p.target.version));
            self.status.installed.remove(&p.target.version);
        }
        install::remove_staging(&self.paths);
        self.status.state = State::Idle;
        self.log(
            &p.target.version,
            p.step.name(),
            "undone",
            "interrupted before anything serving was touched",
        );
    }

    /// The release proved healthy. From the controller: record it, prune old
    /// releases, then `post_activate` (at most once: after the progress is
    /// cleared). From the host: the release left is recorded as refused so the
    /// agent does not re-apply it by itself.
    fn healthy(&mut self, p: &Progress) {
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

    fn record_failure(&mut self, t: &Target, reason: String) {
        self.status.last_error = format!("{}: {reason}", t.version);
        self.status.failed = Some(FailedRelease {
            version: t.version.clone(),
            digest: t.digest.clone(),
            generation: t.generation,
            reason,
            by_host: false,
        });
        self.status.generation = t.generation;
    }

    /// Refused before anything serving was touched: what runs keeps serving;
    /// a release dir this deploy unpacked is removed.
    async fn refused(&mut self, p: &Progress) {
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
    async fn roll_back(&mut self, p: &mut Progress) {
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
                let _ = self
                    .run_tracked_hook("on_rollback", &hook, &failed_dir, p)
                    .await;
            } else if let Some(left) = p.hook.take() {
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

    /// Runs a deploy hook (`prepare`, `on_rollback`) of the target in `dir`,
    /// its process recorded in the progress while it runs (a restarted agent
    /// kills or waits for what is left of it), its masked output logged.
    async fn run_tracked_hook(
        &mut self,
        step: &str,
        hook: &artifact::spec::HookSpec,
        dir: &Path,
        p: &mut Progress,
    ) -> Result<(), DeployError> {
        let version = p.target.version.clone();
        let env = self.env_for(&version)?;
        let (secrets, run_as) = (self.secret_values(), self.cfg.run_as());
        // Marked before it starts: it runs at most once per deploy.
        p.on_rollback_started |= step == "on_rollback";
        self.status.deploy = Some(p.clone());
        self.publish();
        let out = install::run_hook(hook, dir, &env, &secrets, run_as, |pid| {
            p.hook =
                crate::supervisor::start_time(pid).map(|start_time| HookRun { pid, start_time });
            self.status.deploy = Some(p.clone());
            self.publish();
        })
        .await;
        p.hook = None;
        match out {
            Ok(out) => {
                self.log(&version, step, "ok", out.trim());
                Ok(())
            }
            Err(e) => {
                let why = e.to_string();
                self.log(&version, step, "failed", &why);
                Err(DeployError::Hook(why))
            }
        }
    }

    /// Waits (at most `secs` + 10 s) for what is left of a hook an earlier
    /// agent started, then kills the rest.
    async fn wait_for_hook(&self, left: HookRun, secs: u64) {
        let root = self.paths.root.clone();
        let deadline = Instant::now() + Duration::from_secs(secs + 10);
        while Instant::now() < deadline
            && crate::supervisor::group_left(left.pid, left.start_time, &root)
        {
            tokio::time::sleep(CHECK_EVERY).await;
        }
        crate::supervisor::kill_group_left(left.pid, left.start_time, &root);
    }

    /// Runs a hook of `version` in `dir`, logging its (masked) output.
    pub(super) async fn run_hook_logged(
        &self,
        step: &str,
        hook: &artifact::spec::HookSpec,
        dir: &Path,
        version: &str,
    ) -> Result<(), DeployError> {
        let env = self.env_for(version)?;
        let secrets = self.secret_values();
        match install::run_hook(hook, dir, &env, &secrets, self.cfg.run_as(), |_| {}).await {
            Ok(out) => {
                self.log(version, step, "ok", out.trim());
                Ok(())
            }
            Err(e) => {
                let why = e.to_string();
                self.log(version, step, "failed", &why);
                Err(DeployError::Hook(why))
            }
        }
    }

    /// `post_activate`, once the release is healthy. A failure is reported; the
    /// healthy release stays.
    pub(super) async fn post_activate(&mut self, version: &str) {
        let dir = self.paths.release(version);
        let Ok(spec) = ReleaseSpec::load(&dir) else {
            return;
        };
        let Some(hook) = &spec.hooks.post_activate else {
            return;
        };
        if let Err(why) = self
            .run_hook_logged("post_activate", hook, &dir, version)
            .await
        {
            self.status.last_error = format!("{version} post_activate hook {why}");
            self.publish();
        }
    }

    /// POSTs the running release's restart warning, if it has one, then waits.
    async fn warn_restart(&self, running: &str) {
        let Ok(spec) = ReleaseSpec::load(&self.paths.release(running)) else {
            return;
        };
        let Some(w) = &spec.restart_warning else {
            return;
        };
        let target = match &w.process {
            Some(p) => spec.processes.get_key_value(p),
            None => spec
                .processes
                .iter()
                .find(|(_, p)| p.health.http.is_some() || p.health.tcp),
        };
        let Some(port) = target.and_then(|(_, p)| port_of(&self.cfg, p)) else {
            self.log(
                running,
                "restart_warning",
                "skipped",
                "no process with a port to warn",
            );
            return;
        };
        match crate::health::http_request(hyper::Method::POST, port, &w.http).await {
            Ok(status) => self.log(
                running,
                "restart_warning",
                "ok",
                &format!("POST {} answered {status}; waiting {}s", w.http, w.seconds),
            ),
            Err(e) => self.log(
                running,
                "restart_warning",
                "failed",
                &format!("POST {}: {e}", w.http),
            ),
        }
        tokio::time::sleep(Duration::from_secs(w.seconds)).await;
    }

    /// With `[trust] publisher_keys`: the release must be signed by enough
    /// distinct trusted keys, and one older than what runs (lower counter) also
    /// needs an operator-signed rollback authorization for this environment.
    fn verify_signatures(&self, d: &Directive) -> Result<(), DeployError> {
        let policy = &self.trust;
        if !policy.enforced() {
            return Ok(());
        }
        let release = trust::sign::ReleaseStatement {
            tenant: &d.tenant,
            app: &self.name,
            version: &d.version,
            counter: d.counter,
            manifest_digest: &d.digest,
        };
        let valid = trust::sign::count_trusted(
            &release.bytes(),
            pairs(&d.release_signatures),
            &policy.publisher_keys,
        );
        if valid < policy.signatures_required {
            return Err(DeployError::Verify(format!(
                "release is signed by {valid} trusted publisher key(s); {} required",
                policy.signatures_required
            )));
        }
        let running = self
            .status
            .running_version
            .as_ref()
            .and_then(|v| self.status.counters.get(v))
            .copied()
            .unwrap_or(0);
        if d.counter < running {
            let rollback = trust::sign::RollbackStatement {
                tenant: &d.tenant,
                app: &self.name,
                environment: &d.environment,
                version: &d.version,
                manifest_digest: &d.digest,
            };
            let valid = trust::sign::count_trusted(
                &rollback.bytes(),
                pairs(&d.rollback_authorization),
                &policy.publisher_keys,
            );
            if valid < policy.signatures_required {
                return Err(DeployError::Verify(format!(
                    "downgrade refused: release counter {} is below the running release's {running}; going back needs an operator-signed rollback (slipctl rollback --to {} --sign KEY)",
                    d.counter, d.version
                )));
            }
        }
        Ok(())
    }
}

/// `(key, signature)` pairs as the signature check takes them.
fn pairs(list: &[(String, String)]) -> impl Iterator<Item = (&str, &str)> {
    list.iter().map(|(k, s)| (k.as_str(), s.as_str()))
}
