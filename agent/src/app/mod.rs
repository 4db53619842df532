//! One app on this host: its reconcile loop. What to do with a desired release
//! is the deploy machine's (`machine.rs`, walking the table in `crate::step`);
//! this module owns the loop around it: compare desired with what runs, adopt
//! processes at start, finish or undo a deploy an earlier agent left, watch env
//! files and drift, and publish the status.
//!
//! A release that failed is not tried again until its generation changes (new
//! deploy or retry), so a broken release never flaps.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use artifact::ReleaseSpec;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{AppConfig, Backend, TrustConfig};
use crate::directive::Desired;
use crate::lock::AppLock;
use crate::paths::AppPaths;
use crate::state::{AppStatus, HealthState, State, log_step};
use crate::step::{OnRestart, Step};
use crate::supervisor::ProcRecord;

mod activate;
mod backend;
mod drift_watch;
mod error;
mod hooks;
mod local_action;
mod machine;
mod migrations;
mod prepare;
mod processes;
#[cfg(test)]
mod tests;

pub use backend::{ControllerFetch, Env, Fetch, HostProcesses, Processes};
pub use error::DeployError;
pub use local_action::LocalError;
pub(crate) use processes::{app_env, env_secrets};

fn status_mtime(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

const MONITOR_EVERY: Duration = Duration::from_secs(5);
const CHECK_EVERY: Duration = Duration::from_millis(200);
const LOCK_TIMEOUT: Duration = Duration::from_secs(120);
const ENV_SETTLE: Duration = Duration::from_millis(300);
const DRIFT_MIN_GAP: Duration = Duration::from_secs(5);
/// A deploy postponed for a reason that is not the release's fault is tried
/// again after this long.
const RETRY_AFTER: Duration = Duration::from_secs(2);
/// A watch degraded to polling tries inotify again this often.
const REWATCH_EVERY: Duration = Duration::from_secs(30);

/// Stops every process of an app with the settings it was started with
/// (it left the config, or its settings changed).
pub async fn stop_app(name: &str, cfg: &AppConfig, state_dir: &Path, reason: &str) {
    let (board, _) = watch::channel(BTreeMap::new());
    let Ok(mut runner) = AppRunner::new(name.to_string(), cfg.clone(), state_dir, board) else {
        return;
    };
    let _lock = AppLock::acquire(&runner.paths.lock, LOCK_TIMEOUT)
        .await
        .ok();
    runner.procs = runner.backend.adopt();
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

/// When to check drift after an edit was seen: soon, but not more often than
/// DRIFT_MIN_GAP (an app writing into its release dir must not keep the host
/// hashing), and never later than the periodic check already due.
fn drift_check_after_edit(due: Instant, last: Instant, now: Instant) -> Instant {
    due.min(now.max(last + DRIFT_MIN_GAP))
}

/// Shared view of every app's status, read by the session to report upstream.
pub type Board = watch::Sender<BTreeMap<String, AppStatus>>;

pub struct AppRunner {
    name: String,
    cfg: AppConfig,
    paths: AppPaths,
    status: AppStatus,
    procs: Vec<ProcRecord>,
    board: Board,
    fetch: Arc<dyn Fetch>,
    backend: Arc<dyn Processes>,
    /// Waits between restarts of crashed processes (reset once healthy).
    restart_backoff: crate::backoff::Backoff,
    next_restart: Option<Instant>,
    /// mtime of status.json as this runner last wrote it: a different one means
    /// someone else (`slipway-agent rollback`) acted on the app.
    saved_mtime: Option<std::time::SystemTime>,
    trust: TrustConfig,
    /// The release whose drift is being watched.
    drift: Option<drift_watch::Armed>,
    /// Why the proxy could not bind the app's public port (retried).
    front_door_error: Option<String>,
    /// Tests: return before running this step, as if the agent were killed
    /// right after persisting it.
    #[cfg(test)]
    crash_before: Option<Step>,
    /// Tests: the fetch step's limit instead of its day (the test of a hung
    /// download runs in real time, without tokio's paused clock).
    #[cfg(test)]
    fetch_limit: Option<std::time::Duration>,
}

/// Fetches nothing: for runners that never install (stops, local commands).
struct NoFetch;

impl Fetch for NoFetch {
    fn fetch<'a>(
        &'a self,
        _: &'a Path,
        _: &'a artifact::Digest,
        _: u64,
        _: &'a crate::follow::Feed,
    ) -> backend::BoxFuture<'a, Result<PathBuf, DeployError>> {
        Box::pin(async { Err(DeployError::Transient("no controller to fetch from".into())) })
    }
}

impl AppRunner {
    /// A runner with the host's real process backend and no fetcher (see
    /// `with_fetch`).
    pub fn new(
        name: String,
        cfg: AppConfig,
        state_dir: &Path,
        board: Board,
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
        let backend = Arc::new(HostProcesses {
            app: name.clone(),
            cfg: cfg.clone(),
            paths: paths.clone(),
        });
        Ok(Self {
            name,
            cfg,
            paths,
            status,
            procs: Vec::new(),
            board,
            fetch: Arc::new(NoFetch),
            backend,
            restart_backoff: crate::backoff::Backoff::new(
                Duration::from_secs(2),
                Duration::from_secs(64),
            ),
            next_restart: None,
            saved_mtime,
            trust: TrustConfig::default(),
            drift: None,
            front_door_error: None,
            #[cfg(test)]
            crash_before: None,
            #[cfg(test)]
            fetch_limit: None,
        })
    }

    /// Where blobs come from (the controller, in the agent).
    pub fn with_fetch(mut self, fetch: Arc<dyn Fetch>) -> Self {
        self.fetch = fetch;
        self
    }

    /// How processes are started, stopped and checked (the host's service
    /// backend unless a test says otherwise).
    pub fn with_backend(mut self, backend: Arc<dyn Processes>) -> Self {
        self.backend = backend;
        self
    }

    /// The publisher-signature policy deploys are checked against (none by
    /// default: local actions and stops never install anything new).
    pub fn with_trust(mut self, trust: TrustConfig) -> Self {
        self.trust = trust;
        self
    }

    /// Writes status.json (temp + fsync + rename) and tells the session.
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
        mut desired: watch::Receiver<Option<Desired>>,
        shutdown: CancellationToken,
    ) {
        self.ensure_front_door();
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
        let mut rewatch = tokio::time::interval(REWATCH_EVERY);
        rewatch.reset();
        let mut next_drift_check = Instant::now();
        let mut last_drift_check = Instant::now();
        loop {
            self.reload_if_changed();
            self.finish_abandoned().await;
            if self.drift_stale() {
                drift_watch = self.arm_drift().await;
                next_drift_check = Instant::now();
            }
            self.note_watching(&env_watch, &drift_watch);
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
                    Ok(()) => retry_after = None,
                    Err(why) => {
                        tracing::warn!(app = %self.name, version = %d.target().version, reason = %why, "deploy postponed");
                        retry_after = Some(Instant::now() + RETRY_AFTER);
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
                _ = rewatch.tick(), if self.status.watch_degraded => {
                    // Inotify may be back (another agent or editor let go).
                    if crate::filewatch::degraded(&env_watch)
                        && let Ok(w) = crate::filewatch::watch_files(&self.watched_env_files())
                        && !w.degraded
                    {
                        env_watch = Some(w);
                    }
                    if crate::filewatch::degraded(&drift_watch)
                        && let Some(w) = self.watch_release()
                        && !w.degraded
                    {
                        drift_watch = Some(w);
                    }
                }
                Some(()) = crate::filewatch::next_change(&mut drift_watch) => {
                    tokio::time::sleep(ENV_SETTLE).await;
                    crate::filewatch::drain(&mut drift_watch);
                    next_drift_check =
                        drift_check_after_edit(next_drift_check, last_drift_check, Instant::now());
                }
            }
        }
        // Apps outlive the agent: leave processes running for the next agent to adopt.
        tracing::info!(app = %self.name, "app runner stopped; processes keep running");
    }

    /// Records whether file watching is degraded to polling (status shows it).
    fn note_watching(
        &mut self,
        env: &Option<crate::filewatch::FileWatch>,
        drift: &Option<crate::filewatch::FileWatch>,
    ) {
        let degraded = crate::filewatch::degraded(env) || crate::filewatch::degraded(drift);
        if degraded != self.status.watch_degraded {
            self.status.watch_degraded = degraded;
            if degraded {
                tracing::warn!(app = %self.name, "watching degraded: polling files until inotify is available again");
            } else {
                tracing::info!(app = %self.name, "watching with inotify again");
            }
            self.publish();
        }
    }

    /// Versions are immutable per app: when `current` already holds the desired
    /// version, that release runs and only its digest and generation need
    /// recording (a revert to what this host kept running lands here).
    fn needs_deploy(&mut self, d: &Desired) -> bool {
        let t = d.target();
        if self.status.running_version.as_deref() == Some(t.version.as_str())
            && self.status.deploy.is_none()
        {
            if self.status.running_digest.as_deref() != Some(t.digest.as_str())
                || self.status.generation != t.generation
            {
                self.status.running_digest = Some(t.digest.clone());
                self.status.generation = t.generation;
                // The controller wants what runs: earlier refusals are history.
                if self.status.state == State::RolledBack
                    && self.status.health == HealthState::Healthy
                {
                    self.status.state = State::Healthy;
                    self.status.last_error.clear();
                }
                self.publish();
            }
            return false;
        }
        !matches!(&self.status.failed, Some(f) if f.digest == t.digest && f.generation == t.generation)
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
        self.procs = self.backend.adopt();
        self.saved_mtime = now;
        let s = self.status.clone();
        self.board.send_modify(|b| {
            b.insert(s.app.clone(), s);
        });
        true
    }

    /// At agent start: undo or note a deploy an earlier agent left in the
    /// middle, adopt the processes of `current` if they still run (otherwise
    /// start them again), then finish that deploy. Never redeploys.
    async fn start_up(&mut self) {
        // Never at the same time as `slipway-agent rollback`.
        let _lock = AppLock::acquire(&self.paths.lock, LOCK_TIMEOUT).await.ok();
        // Nothing unpacks yet: temp and staging dirs are what a killed agent
        // (or its unpack child) left, whatever status.json says.
        crate::install::remove_staging(&self.paths);
        self.finish_left_deploy().await;
        self.monitor().await;
        self.publish();
    }

    /// A deploy someone left in the middle (an agent or a `slipway-agent
    /// rollback` killed): undo it if it never touched what serves, otherwise
    /// finish it. Processes of `current` are adopted, and started only when
    /// the step to run will not stop them anyway. The app lock is held.
    async fn finish_left_deploy(&mut self) {
        let resume = self
            .status
            .deploy
            .take()
            .and_then(|p| match p.step.row().on_restart {
                OnRestart::Undo => {
                    self.undo(&p);
                    None
                }
                OnRestart::Redo => Some(p),
                OnRestart::Resume(step) => Some(crate::state::Progress { step, ..p }),
            });
        let replaces_current = resume.as_ref().is_some_and(|p| {
            matches!(
                p.step,
                Step::Stop | Step::Flip | Step::Start | Step::RollingBack
            )
        });
        self.start_current(!replaces_current, resume.is_some())
            .await;
        if let Some(p) = resume {
            self.log(
                &p.target.version,
                "activation",
                "resumed",
                &format!("agent restarted at {}", p.step),
            );
            if let Ok(ended) = self.drive(p, machine::Work::default()).await {
                self.after(&ended).await;
            }
        }
    }

    /// A deploy in status.json that nobody runs: a `slipway-agent rollback`
    /// killed mid-way (it holds the app lock while it runs). Finished here.
    async fn finish_abandoned(&mut self) {
        if self.status.deploy.is_none() {
            return;
        }
        let Some(_lock) = AppLock::try_acquire(&self.paths.lock) else {
            return; // its owner still runs
        };
        self.reload_if_changed();
        tracing::warn!(app = %self.name, "a deploy was left in the middle on this host; finishing it");
        self.finish_left_deploy().await;
        self.publish();
    }

    /// Adopts the processes of the release `current` holds, or (`start`)
    /// starts them.
    async fn start_current(&mut self, start: bool, resuming: bool) {
        let adopted = self.backend.adopt();
        let Some(version) = self.paths.current_version() else {
            for p in &adopted {
                self.backend.stop(p).await;
            }
            self.status.running_version = None;
            self.status.running_digest = None;
            self.publish();
            return;
        };
        if self.status.running_version.as_deref() != Some(version.as_str()) {
            // status.json is behind the disk (agent killed mid-flip): trust the
            // link, and judge it afresh: the health on file was the other
            // release's, and reporting it would pass this one unproven.
            self.status.running_digest = self.status.installed.get(&version).cloned();
            self.status.running_version = Some(version.clone());
            self.status.health = HealthState::Unknown;
            self.status.health_reason.clear();
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
        if self.cfg.activation.side_by_side() {
            return self
                .adopt_beside(&spec, &version, adopted, start, resuming)
                .await;
        }
        let complete = spec.processes.keys().all(|p| {
            adopted
                .iter()
                .any(|r| &r.process == p && r.version == version)
        });
        if complete && adopted.len() == spec.processes.len() {
            tracing::info!(app = %self.name, %version, "adopted running processes");
            self.log(&version, "adopt", "ok", "");
            self.procs = adopted;
            return;
        }
        if !start {
            // The deploy being finished stops and replaces them anyway.
            self.procs = adopted;
            return;
        }
        for p in &adopted {
            self.backend.stop(p).await;
        }
        let started = match self.env_for(&version) {
            Ok(env) => self.backend.start(&spec, &version, &env).await,
            Err(e) => Err(e),
        };
        match started {
            Ok(procs) => {
                self.procs = procs;
                self.log(&version, "start", "ok", "processes were not running");
            }
            Err(e) => self.log(&version, "start", "failed", &e.to_string()),
        }
    }

    /// `start_current` with side-by-side activation: adopts the instances of
    /// `version`; with no deploy to resume, converges on one instance set
    /// (traffic to it, any other stopped), starting it if it is not running.
    async fn adopt_beside(
        &mut self,
        spec: &ReleaseSpec,
        version: &str,
        adopted: Vec<ProcRecord>,
        start: bool,
        resuming: bool,
    ) {
        let route = crate::proxy::read_route(&crate::proxy::route_file(&self.paths));
        let mut mine: Vec<ProcRecord> = Vec::new();
        for p in spec.processes.keys() {
            let mut of_p = adopted
                .iter()
                .filter(|r| &r.process == p && r.version == version);
            // Two instances of one process (an agent killed mid-replacement):
            // the one traffic goes to.
            let routed = of_p.clone().find(|r| {
                route
                    .as_ref()
                    .is_some_and(|x| r.instance.as_ref() == Some(&x.instance))
            });
            if let Some(r) = routed.or_else(|| of_p.next()) {
                mine.push(r.clone());
            }
        }
        let complete = mine.len() == spec.processes.len();
        if resuming || !start {
            // The deploy being finished judges, replaces or drains them.
            self.procs = mine;
            return;
        }
        if complete {
            tracing::info!(app = %self.name, %version, "adopted running instances");
            self.log(version, "adopt", "ok", "");
            self.procs = mine;
        } else {
            for r in &mine {
                self.backend.stop(r).await;
            }
            let started = async {
                self.start_beside(version).await?;
                self.wait_ready(version).await
            }
            .await;
            match started {
                Ok(_) => self.log(version, "start", "ok", "processes were not running"),
                Err(e) => {
                    self.log(version, "start", "failed", &e.to_string());
                    return;
                }
            }
        }
        if let Err(e) = self.cut_over(version).await {
            self.log(version, "traffic", "failed", &e.to_string());
        }
    }
}
