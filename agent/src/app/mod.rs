//! One app on this host: its reconcile loop and deploy state machine.
//!
//! Desired release differs from running → verify manifest → fetch → unpack →
//! link shared → prepare hook → (activation recorded) flip `current` → restart →
//! health (HTTP ready, process up, right release, env names, held for a minimum
//! time) → healthy, or flip back, restart the previous release and report
//! `rolled_back`. A release that failed is not tried again until its generation
//! changes (new deploy or retry), so a broken release never flaps. An agent
//! restarted in the middle of an activation judges that release again on start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use artifact::{Digest, Manifest, ReleaseSpec};
use proto::v1::DesiredApp;
use proto::v1::agents_client::AgentsClient;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::config::{AppConfig, Backend, TrustConfig};
use crate::health::{self, Probe, Verdict};
use crate::install;
use crate::lock::AppLock;
use crate::paths::AppPaths;
use crate::state::{Activation, AppStatus, EnvState, FailedRelease, HealthState, State, log_step};
use crate::supervisor::{self, ProcRecord};

mod deploy;
mod drift_watch;
mod local_action;
mod processes;

fn status_mtime(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

const MONITOR_EVERY: Duration = Duration::from_secs(5);
const CHECK_EVERY: Duration = Duration::from_millis(200);
const LOCK_TIMEOUT: Duration = Duration::from_secs(120);
const ENV_SETTLE: Duration = Duration::from_millis(300);
const DRIFT_MIN_GAP: Duration = Duration::from_secs(5);

/// Stops every process of an app with the settings it was started with
/// (it left the config, or its settings changed).
pub async fn stop_app(name: &str, cfg: &AppConfig, state_dir: &Path, reason: &str) {
    let (board, _) = watch::channel(BTreeMap::new());
    let (_tx, rx) = watch::channel(None);
    let Ok(mut runner) = AppRunner::new(name.to_string(), cfg.clone(), state_dir, board, rx) else {
        return;
    };
    let _lock = AppLock::acquire(&runner.paths.lock, LOCK_TIMEOUT)
        .await
        .ok();
    runner.procs = supervisor::adopt(&runner.paths);
    if cfg.service == Backend::Systemd
        && let Some(version) = runner.paths.current_version()
        && let Ok(spec) = ReleaseSpec::load(&runner.paths.release(&version))
    {
        // Units run whether or not a pid file still names their main process.
        for process in spec.processes.keys() {
            if !runner.procs.iter().any(|p| &p.process == process) {
                let unit = cfg.unit(name, process);
                let _ = tokio::task::spawn_blocking(move || {
                    let _ = std::process::Command::new("systemctl")
                        .args(["stop", &unit])
                        .status();
                })
                .await;
            }
        }
    }
    runner.stop_all().await;
    runner.status.state = State::Idle;
    runner.status.health = HealthState::Unknown;
    runner.status.health_reason = reason.into();
    runner.publish();
}

/// Shared view of every app's status, read by the session to report upstream.
pub type Board = watch::Sender<BTreeMap<String, AppStatus>>;

/// Env values handed to processes and hooks (kept on this host only).
type Env = BTreeMap<String, String>;

/// Why a deploy attempt stopped.
enum Outcome {
    Done,
    /// Worth retrying as is (controller unreachable, lock busy): not the release's fault.
    Transient(String),
}

/// The release a deploy step is about.
#[derive(Debug, Clone)]
struct Target {
    version: String,
    digest: String,
    generation: u64,
}

impl From<&DesiredApp> for Target {
    fn from(d: &DesiredApp) -> Self {
        Self {
            version: d.version.clone(),
            digest: d.manifest_digest.clone(),
            generation: d.generation,
        }
    }
}

pub struct AppRunner {
    name: String,
    cfg: AppConfig,
    paths: AppPaths,
    status: AppStatus,
    procs: Vec<ProcRecord>,
    board: Board,
    channel: watch::Receiver<Option<Channel>>,
    restarts: u32,
    next_restart: Option<Instant>,
    /// mtime of status.json as this runner last wrote it: a different one means
    /// someone else (`slipway-agent rollback`) acted on the app.
    saved_mtime: Option<std::time::SystemTime>,
    trust: TrustConfig,
    /// The release whose drift is being watched.
    drift: Option<drift_watch::Armed>,
}

impl AppRunner {
    pub fn new(
        name: String,
        cfg: AppConfig,
        state_dir: &Path,
        board: Board,
        channel: watch::Receiver<Option<Channel>>,
    ) -> std::io::Result<Self> {
        let paths = AppPaths::for_app(state_dir, &name, &cfg);
        paths.create()?;
        let saved_mtime = status_mtime(&paths.status);
        let mut status = AppStatus::load(&paths.status).unwrap_or_default();
        status.app = name.clone();
        // What is known from disk goes on the board at once, so the first hello
        // already says what this host runs.
        board.send_modify(|b| {
            b.insert(name.clone(), status.clone());
        });
        Ok(Self {
            name,
            cfg,
            paths,
            status,
            procs: Vec::new(),
            board,
            channel,
            restarts: 0,
            next_restart: None,
            saved_mtime,
            trust: TrustConfig::default(),
            drift: None,
        })
    }

    /// The publisher-signature policy deploys are checked against (none by
    /// default: local actions and stops never install anything new).
    pub fn with_trust(mut self, trust: TrustConfig) -> Self {
        self.trust = trust;
        self
    }

    /// Writes status.json and tells the session.
    fn publish(&mut self) {
        self.status.updated_at = crate::state::now();
        if let Err(e) = self.status.save(&self.paths.status) {
            tracing::warn!(app = %self.name, error = %e, "cannot write status.json");
        }
        self.saved_mtime = status_mtime(&self.paths.status);
        let s = self.status.clone();
        self.board.send_modify(|b| {
            b.insert(s.app.clone(), s);
        });
    }

    fn log(&self, version: &str, step: &str, outcome: &str, detail: &str) {
        log_step(
            &self.paths.deploy_log,
            &self.name,
            version,
            step,
            outcome,
            detail,
        );
    }

    /// The reconcile loop, until `shutdown`.
    pub async fn run(
        mut self,
        mut desired: watch::Receiver<Option<DesiredApp>>,
        shutdown: CancellationToken,
    ) {
        self.start_up().await;
        let mut env_watch = match crate::filewatch::watch_files(&self.watched_env_files()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(app = %self.name, error = %e, "cannot watch env files; edits apply at the next deploy");
                None
            }
        };
        let mut retry_after: Option<Instant> = None;
        let mut drift_watch = None;
        let mut next_drift_check = Instant::now();
        let mut last_drift_check = Instant::now();
        loop {
            self.reload_if_changed();
            if self.drift_stale() {
                drift_watch = self.arm_drift().await;
                next_drift_check = Instant::now();
            }
            if Instant::now() >= next_drift_check {
                self.check_drift().await;
                last_drift_check = Instant::now();
                next_drift_check =
                    Instant::now() + Duration::from_secs(self.cfg.drift_check_secs.max(1));
            }
            let want = desired.borrow_and_update().clone();
            if let Some(d) = want
                && retry_after.is_none_or(|t| Instant::now() >= t)
                && self.needs_deploy(&d)
            {
                match self.deploy(&d).await {
                    Outcome::Done => retry_after = None,
                    Outcome::Transient(why) => {
                        tracing::warn!(app = %self.name, version = %d.version, reason = %why, "deploy postponed");
                        retry_after = Some(Instant::now() + Duration::from_secs(2));
                    }
                }
                continue;
            }
            let wake = retry_after.unwrap_or_else(|| Instant::now() + MONITOR_EVERY);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                changed = desired.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep_until(wake.min(Instant::now() + MONITOR_EVERY)) => self.monitor().await,
                Some(()) = crate::filewatch::next_change(&mut env_watch) => {
                    // Let the editor finish, and fold a burst of events into one.
                    tokio::time::sleep(ENV_SETTLE).await;
                    crate::filewatch::drain(&mut env_watch);
                    self.restart_running("env file changed").await;
                }
                _ = tokio::time::sleep_until(next_drift_check) => {}
                Some(()) = crate::filewatch::next_change(&mut drift_watch) => {
                    tokio::time::sleep(ENV_SETTLE).await;
                    crate::filewatch::drain(&mut drift_watch);
                    // At once, but not more often than DRIFT_MIN_GAP: an app
                    // writing into its release dir must not keep the host hashing.
                    next_drift_check = Instant::now().max(last_drift_check + DRIFT_MIN_GAP);
                }
            }
        }
        // Apps outlive the agent: leave processes running for the next agent to adopt.
        tracing::info!(app = %self.name, "app runner stopped; processes keep running");
    }

    /// Versions are immutable per app: when `current` already holds the desired
    /// version, that release runs and only its digest needs recording.
    fn needs_deploy(&mut self, d: &DesiredApp) -> bool {
        if self.status.running_version.as_deref() == Some(d.version.as_str())
            && self.status.activating.is_none()
        {
            if self.status.running_digest.as_deref() != Some(d.manifest_digest.as_str())
                || self.status.generation != d.generation
            {
                self.status.running_digest = Some(d.manifest_digest.clone());
                self.status.generation = d.generation;
                self.publish();
            }
            return false;
        }
        !matches!(&self.status.failed, Some(f) if f.digest == d.manifest_digest && f.generation == d.generation)
    }

    /// Picks up what a local command (`slipway-agent rollback`) wrote: its
    /// status and the processes it started. True when something changed.
    fn reload_if_changed(&mut self) -> bool {
        let now = status_mtime(&self.paths.status);
        if now == self.saved_mtime {
            return false;
        }
        let Some(mut status) = AppStatus::load(&self.paths.status) else {
            return false;
        };
        status.app = self.name.clone();
        tracing::info!(app = %self.name, running = ?status.running_version, "status changed on the host; reloaded");
        self.status = status;
        self.procs = supervisor::adopt(&self.paths);
        self.saved_mtime = now;
        let s = self.status.clone();
        self.board.send_modify(|b| {
            b.insert(s.app.clone(), s);
        });
        true
    }

    /// At agent start: adopt the processes of `current` if they still run,
    /// otherwise start them again; finish judging an interrupted activation.
    /// Never redeploys.
    async fn start_up(&mut self) {
        // Never at the same time as `slipway-agent rollback`.
        let _lock = AppLock::acquire(&self.paths.lock, LOCK_TIMEOUT).await.ok();
        let adopted = supervisor::adopt(&self.paths);
        let Some(version) = self.paths.current_version() else {
            for p in &adopted {
                self.stop_proc(p).await;
            }
            self.status.running_version = None;
            self.status.running_digest = None;
            self.status.activating = None;
            self.publish();
            return;
        };
        if self.status.running_version.as_deref() != Some(version.as_str()) {
            // status.json is behind the disk (agent killed mid-flip): trust the link.
            self.status.running_digest = self.status.installed.get(&version).cloned();
            self.status.running_version = Some(version.clone());
        }
        let spec = match ReleaseSpec::load(&self.paths.release(&version)) {
            Ok(s) => s,
            Err(e) => {
                self.status.health = HealthState::Unhealthy;
                self.status.health_reason = format!("current release unreadable: {e}");
                self.publish();
                return;
            }
        };
        let complete = spec.processes.keys().all(|p| {
            adopted
                .iter()
                .any(|r| &r.process == p && r.version == version)
        });
        if complete && adopted.len() == spec.processes.len() {
            tracing::info!(app = %self.name, %version, "adopted running processes");
            self.log(&version, "adopt", "ok", "");
            self.procs = adopted;
        } else {
            for p in &adopted {
                self.stop_proc(p).await;
            }
            match self
                .app_env(&version)
                .and_then(|env| self.start_processes(&spec, &version, &env))
            {
                Ok(procs) => {
                    self.procs = procs;
                    self.log(&version, "start", "ok", "processes were not running");
                }
                Err(e) => self.log(&version, "start", "failed", &e),
            }
        }
        if let Some(a) = self.status.activating.clone() {
            self.resume_activation(a, &spec, &version).await;
        }
        self.monitor().await;
        self.publish();
    }

    /// The agent stopped between a flip and its verdict: judge the release that
    /// `current` holds now, and roll back if it does not prove healthy.
    async fn resume_activation(&mut self, a: Activation, spec: &ReleaseSpec, current: &str) {
        let target = Target {
            version: a.version.clone(),
            digest: a.digest.clone(),
            generation: a.generation,
        };
        if current != a.version {
            // It stopped during a rollback, after flipping back: record the refusal.
            self.status.activating = None;
            self.record_failure(&target, "agent restarted during activation".into());
            self.status.state = State::RolledBack;
            self.publish();
            return;
        }
        self.log(
            &a.version,
            "activation",
            "resumed",
            "agent restarted before the verdict",
        );
        match self.wait_healthy(spec, &a.version).await {
            Ok(()) => {
                self.activated(&target, a.previous.as_deref());
                self.post_activate(&a.version).await;
            }
            Err(reason) => {
                self.roll_back(&target, a.previous, a.previous_digest, reason)
                    .await;
            }
        }
    }
}
