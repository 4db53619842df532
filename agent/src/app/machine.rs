//! The deploy executor: walks `crate::step`'s table for one release,
//! persisting each step before it starts and bounding it by its limit. A
//! deploy from the controller, a local `slipway-agent rollback`, and a deploy
//! an earlier agent left in the middle all run here.

use std::time::Duration;

use artifact::ReleaseSpec;

use crate::config::Backend;
use crate::directive::{Desired, Directive};
use crate::install;
use crate::lock::AppLock;
use crate::state::{FailedRelease, Origin, Previous, Progress, State, Target};
use crate::step::{Limit, Outcome, Step};

use super::{AppRunner, DeployError, LOCK_TIMEOUT};

/// What a deploy holds in memory only: the directive and the fetched blob. A
/// resumed deploy has neither and needs neither (it resumes at `Stop` or later).
#[derive(Default)]
pub(super) struct Work {
    pub(super) directive: Option<Directive>,
    /// The fetch step unpacked the release (it streams into the unpack).
    pub(super) unpacked: bool,
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
        crate::metrics::METRICS.deploy_started(&self.name);
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
            unpacked: false,
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
            crate::failpoint::hit(&format!("step:{}", p.step.name()));
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
                    if p.step.next(Outcome::Failed).is_none() {
                        // An ending that could not finish (it ran out of time):
                        // say so rather than leave "activating" behind.
                        self.status.state = State::Failed;
                        self.status.health_reason = p.reason.clone();
                    }
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
    pub(super) fn enter(&mut self, p: &Progress) {
        tracing::debug!(app = %self.name, version = %p.target.version, step = p.step.name(), "deploy step");
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

    pub(super) fn limit(&self, step: Step, version: &str) -> Duration {
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
        #[cfg(test)]
        if let (Step::Fetch, Some(limit)) = (step, self.fetch_limit) {
            return limit;
        }
        match step.row().limit {
            Limit::Fixed(d) => d,
            Limit::PrepareHook => {
                let spec = spec_of(version);
                let hook = spec
                    .as_ref()
                    .and_then(|s| s.hooks.prepare.as_ref().map(|h| h.timeout_secs))
                    .unwrap_or(0);
                // pending, dry run, apply: each bounded by the table's limit.
                let migrations = spec
                    .as_ref()
                    .and_then(|s| s.migrations.as_ref().map(|m| 3 * m.timeout_secs))
                    .unwrap_or(0);
                secs(hook + migrations) + BASELINE_TIME + SLACK
            }
            Limit::Readiness => secs(sum_of(version, &|p| p.health.timeout_secs)) + SLACK,
            Limit::MinHealthy => secs(max_of(version, &|p| p.health.min_healthy_secs)) + SLACK,
            Limit::StopGrace => self.stop_time(),
            Limit::Drain if self.cfg.activation.side_by_side() => {
                secs(self.cfg.drain_timeout_secs) + self.stop_time() + SLACK
            }
            Limit::Drain => SLACK,
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
    pub(super) fn stop_time(&self) -> Duration {
        let per_process = match self.cfg.service {
            // An instance sharing the app's socket drains on its stop signal.
            Backend::Supervise if self.cfg.activation == crate::config::Activation::Socket => {
                self.cfg.stop_grace_secs.max(self.cfg.drain_timeout_secs) + 10
            }
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
    pub(super) fn failure_reason(&self, step: Step, e: &DeployError) -> String {
        let part = match (step, e) {
            (_, DeployError::Spec(_)) => "spec",
            (_, DeployError::Env(_)) => "env",
            (Step::Prepare, DeployError::Install(_)) => "link_shared",
            (_, DeployError::Hook(_)) => "prepare",
            (_, DeployError::Migrations(_)) => "migrations",
            (Step::Flip, e) => return format!("flip current: {e}"),
            (s, _) if s.touches_serving() => return e.to_string(),
            (s, _) => s.name(),
        };
        format!("{part}: {e}")
    }

    pub(super) async fn run_step(
        &mut self,
        p: &mut Progress,
        w: &mut Work,
    ) -> Result<Outcome, DeployError> {
        match p.step {
            Step::Verify => self.verify(p, w).await,
            Step::Fetch => self.fetch_blob(p, w).await,
            Step::Unpack => self.unpack(w).await,
            Step::Prepare => self.prepare(p, w).await,
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
                if self.cfg.activation.side_by_side() {
                    // Traffic moves only now, after readiness and the
                    // minimum healthy time: a failed release never served.
                    if let Err(e) = self.cut_over(&p.target.version).await {
                        tracing::error!(app = %self.name, error = %e, "moving traffic to the new release");
                    }
                }
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

    /// Drops the work of a deploy that never touched what serves: its release
    /// dir (unless kept or current), staging leftovers, and a hook left running
    /// by a killed agent.
    pub(super) fn undo(&mut self, p: &Progress) {
        if let Some(hook) = Self::left_hook(p)
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

    pub(super) fn record_failure(&mut self, t: &Target, reason: String) {
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
}
