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

use crate::config::{AppConfig, Backend};
use crate::health::{self, Probe, Verdict};
use crate::install;
use crate::lock::AppLock;
use crate::paths::AppPaths;
use crate::state::{Activation, AppStatus, EnvState, FailedRelease, HealthState, State, log_step};
use crate::supervisor::{self, ProcRecord};

fn status_mtime(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

const MONITOR_EVERY: Duration = Duration::from_secs(5);
const CHECK_EVERY: Duration = Duration::from_millis(200);
const LOCK_TIMEOUT: Duration = Duration::from_secs(120);
const ENV_SETTLE: Duration = Duration::from_millis(300);

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
        })
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
        loop {
            self.reload_if_changed();
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

    /// `slipway-agent rollback APP [--to VERSION]`, run on the host without the
    /// controller: serialized with deploys by the app lock, health-checked like a
    /// deploy, undone if the target does not prove healthy. The release it leaves
    /// is recorded as refused so the agent does not re-apply it by itself.
    pub async fn local_rollback(
        &mut self,
        to: Option<String>,
        actor: &str,
    ) -> Result<String, String> {
        let _lock = AppLock::acquire(&self.paths.lock, LOCK_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        self.reload_if_changed();
        self.procs = supervisor::adopt(&self.paths);
        let current = self
            .paths
            .current_version()
            .ok_or_else(|| format!("{}: no release is active on this host", self.name))?;
        let target = match to {
            Some(v) => {
                artifact::validate_name(artifact::NameKind::Version, &v)
                    .map_err(|e| e.to_string())?;
                v
            }
            None => {
                let pos = self.status.history.iter().position(|v| v == &current);
                let older = pos.map_or(&self.status.history[..], |i| &self.status.history[..i]);
                older
                    .iter()
                    .rev()
                    .find(|v| self.paths.release(v).is_dir())
                    .cloned()
                    .ok_or_else(|| {
                        format!(
                            "{}: no earlier release is kept on this host; name one with --to",
                            self.name
                        )
                    })?
            }
        };
        if target == current {
            return Err(format!(
                "{}: {target} is already the active release",
                self.name
            ));
        }
        if !self.paths.release(&target).is_dir() {
            let kept = crate::local::kept_versions(&self.paths).join(", ");
            return Err(format!(
                "{}: release {target} is not on this host (kept: {kept})",
                self.name
            ));
        }
        let spec = ReleaseSpec::load(&self.paths.release(&target)).map_err(|e| e.to_string())?;
        let env = self.app_env(&target)?;
        let current_digest = self
            .status
            .running_digest
            .clone()
            .or_else(|| self.status.installed.get(&current).cloned())
            .unwrap_or_default();

        self.stop_all().await;
        let switched = async {
            install::flip_current(&self.paths, &target).map_err(|e| e.to_string())?;
            self.procs = self.start_processes(&spec, &target, &env)?;
            self.wait_healthy(&spec, &target).await
        }
        .await;
        if let Err(reason) = switched {
            // Put back what ran before; the operator's command failed, nothing else.
            self.stop_all().await;
            let _ = install::flip_current(&self.paths, &current);
            if let (Ok(spec), Ok(env)) = (
                ReleaseSpec::load(&self.paths.release(&current)),
                self.app_env(&current),
            ) {
                self.procs = self
                    .start_processes(&spec, &current, &env)
                    .unwrap_or_default();
            }
            self.log(&target, "local_rollback", "failed", &reason);
            self.publish();
            return Err(format!(
                "{}: {target} did not prove healthy, {current} restored: {reason}",
                self.name
            ));
        }
        let reason = format!("rolled back on the host by {actor}");
        self.status.failed = Some(FailedRelease {
            version: current.clone(),
            digest: current_digest,
            generation: self.status.generation,
            reason: reason.clone(),
        });
        self.status.last_error = format!("{current}: {reason}");
        self.status.running_version = Some(target.clone());
        self.status.running_digest = self.status.installed.get(&target).cloned();
        self.status.state = State::RolledBack;
        self.status.health = HealthState::Healthy;
        self.status.health_reason.clear();
        self.status.env_check = EnvState::Ok;
        self.status.missing_env.clear();
        self.status.activating = None;
        self.publish();
        self.log(
            &target,
            "local_rollback",
            "ok",
            &format!("{current} -> {target} by {actor}"),
        );
        Ok(format!("{}: {current} -> {target}, healthy", self.name))
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

    fn grace(&self) -> Duration {
        Duration::from_secs(self.cfg.stop_grace_secs)
    }

    /// The environment processes and hooks run with: a minimal base, the host's env
    /// files in order (last wins), then what Slipway sets.
    fn app_env(&self, version: &str) -> Result<Env, String> {
        let mut env = BTreeMap::new();
        env.insert(
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
        env.insert("LANG".into(), "C.UTF-8".into());
        env.extend(crate::envfile::load_layers(&self.env_files()).map_err(|e| e.to_string())?);
        if let Some(port) = self.cfg.port {
            env.insert("PORT".into(), port.to_string());
        }
        env.insert("SLIPWAY_APP".into(), self.name.clone());
        env.insert("SLIPWAY_VERSION".into(), version.into());
        Ok(env)
    }

    /// Env files to watch: the configured ones, or the default `shared/.env`
    /// even before it exists (creating it is a change too).
    fn watched_env_files(&self) -> Vec<PathBuf> {
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
    async fn restart_running(&mut self, why: &str) {
        let Some(version) = self.status.running_version.clone() else {
            return;
        };
        let Some(_lock) = AppLock::try_acquire(&self.paths.lock) else {
            return;
        };
        self.reload_if_changed();
        self.warn_env_duplicates(&version);
        let dir = self.paths.release(&version);
        let Ok(spec) = ReleaseSpec::load(&dir) else {
            return;
        };
        let env = match self.app_env(&version) {
            Ok(env) => env,
            Err(e) => {
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
        };
        self.log(
            &version,
            "env",
            "changed",
            &format!("{why}: restarting processes"),
        );
        self.stop_all().await;
        match self.start_processes(&spec, &version, &env) {
            Ok(p) => self.procs = p,
            Err(e) => self.log(&version, "restart", "failed", &e),
        }
        match self.wait_healthy(&spec, &version).await {
            Ok(()) => self.log(&version, "env", "ok", "healthy with the new environment"),
            Err(why) => self.log(&version, "env", "unhealthy", &why),
        }
        self.monitor_locked(&spec, &version).await;
    }

    /// Warns (names and files only) about a variable defined in two env layers.
    fn warn_env_duplicates(&self, version: &str) {
        for dup in crate::envfile::duplicates(&self.env_files()) {
            tracing::warn!(app = %self.name, duplicate = %dup, "env var defined in more than one env file; the last one wins");
            self.log(
                version,
                "env",
                "warning",
                &format!("{dup}: defined twice, the last file wins"),
            );
        }
    }

    fn env_files(&self) -> Vec<PathBuf> {
        if !self.cfg.env_files.is_empty() {
            return self.cfg.env_files.clone();
        }
        let default = self.paths.shared.join(".env");
        if default.is_file() {
            vec![default]
        } else {
            vec![]
        }
    }

    /// Hook output with every env file value masked: what a hook prints may be
    /// logged and reported, what the env files hold may not.
    fn redact(&self, text: &str) -> String {
        let secrets = crate::envfile::load_layers(&self.env_files()).unwrap_or_default();
        crate::envfile::redact(text, secrets.values())
    }

    fn start_processes(
        &self,
        spec: &ReleaseSpec,
        version: &str,
        env: &Env,
    ) -> Result<Vec<ProcRecord>, String> {
        let mut procs = Vec::new();
        for (name, p) in &spec.processes {
            let mut env = env.clone();
            if let Some(port) = self.port_of(p) {
                env.insert("PORT".into(), port.to_string());
            }
            let started = match self.cfg.service {
                Backend::Supervise => supervisor::start(
                    &self.paths,
                    name,
                    version,
                    &p.command,
                    p.cwd.as_deref(),
                    &env,
                    self.cfg.run_as(),
                )
                .map_err(|e| e.to_string()),
                // The unit holds command, cwd and env files; it points at current/.
                Backend::Systemd => tokio::task::block_in_place(|| {
                    crate::systemd::restart(
                        &self.paths,
                        name,
                        &self.cfg.unit(&self.name, name),
                        version,
                    )
                }),
                Backend::Command => match self.cfg.commands.get(name) {
                    Some(cmds) => tokio::task::block_in_place(|| {
                        crate::command_backend::start(
                            &self.paths,
                            name,
                            cmds,
                            &env,
                            version,
                            self.cfg.run_as(),
                        )
                    })
                    .map_err(|e| self.redact(&e)),
                    None => Err(format!("process {name} has no commands in the host config")),
                },
            };
            match started {
                Ok(r) => procs.push(r),
                Err(e) => {
                    // Leave nothing half-started.
                    for r in &procs {
                        match self.cfg.service {
                            Backend::Supervise => supervisor::kill_group(r),
                            Backend::Systemd => crate::systemd::stop(
                                &self.paths,
                                r,
                                &self.cfg.unit(&self.name, &r.process),
                            ),
                            Backend::Command => {
                                if let Some(cmds) = self.cfg.commands.get(&r.process) {
                                    crate::command_backend::stop(
                                        &self.paths,
                                        r,
                                        cmds,
                                        &env,
                                        self.cfg.run_as(),
                                    );
                                }
                            }
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(procs)
    }

    async fn stop_all(&mut self) {
        for p in std::mem::take(&mut self.procs) {
            self.stop_proc(&p).await;
        }
    }

    /// Stops one process through the app's service backend.
    async fn stop_proc(&self, p: &ProcRecord) {
        match self.cfg.service {
            Backend::Supervise => supervisor::stop(&self.paths, p, self.grace()).await,
            Backend::Systemd => {
                let (paths, rec, unit) = (
                    self.paths.clone(),
                    p.clone(),
                    self.cfg.unit(&self.name, &p.process),
                );
                let _ =
                    tokio::task::spawn_blocking(move || crate::systemd::stop(&paths, &rec, &unit))
                        .await;
            }
            Backend::Command => {
                let Some(cmds) = self.cfg.commands.get(&p.process).cloned() else {
                    return;
                };
                let env = self.app_env(&p.version).unwrap_or_default();
                let (paths, rec, run_as) = (self.paths.clone(), p.clone(), self.cfg.run_as());
                let _ = tokio::task::spawn_blocking(move || {
                    crate::command_backend::stop(&paths, &rec, &cmds, &env, run_as)
                })
                .await;
            }
        }
    }

    /// The port a process listens on: its own from the spec, else the app's.
    fn port_of(&self, ps: &artifact::spec::ProcessSpec) -> Option<u16> {
        ps.port.or(self.cfg.port)
    }

    /// The readiness probe of a process. A port-based probe without a port was
    /// refused at deploy; for a release already running it degrades to "up".
    fn probe_for<'a>(
        &self,
        ps: &'a artifact::spec::ProcessSpec,
        dir: &'a Path,
        env: &'a Env,
    ) -> Probe<'a> {
        let port = self.port_of(ps);
        match (&ps.health, port) {
            (h, Some(port)) if h.http.is_some() => Probe::Http {
                port,
                path: h.http.as_deref().unwrap_or("/"),
            },
            (h, Some(port)) if h.tcp => Probe::Tcp { port },
            (h, _) if h.command.is_some() => Probe::Command {
                argv: h.command.as_deref().unwrap_or_default(),
                dir,
                env,
            },
            _ => Probe::Up,
        }
    }

    /// Waits for every process to pass, then requires that they keep passing for
    /// the minimum healthy time. Err carries the reason (naming missing env vars).
    async fn wait_healthy(&self, spec: &ReleaseSpec, version: &str) -> Result<(), String> {
        let release = self.paths.release(version);
        let env = self.app_env(version)?;
        for rec in &self.procs {
            let Some(ps) = spec.processes.get(&rec.process) else {
                continue;
            };
            let deadline = Instant::now() + Duration::from_secs(ps.health.timeout_secs);
            loop {
                let probe = self.probe_for(ps, &release, &env);
                match health::check_once(rec, &release, &ps.required_env, probe).await {
                    Verdict::Healthy => break,
                    Verdict::Failed { reason, .. } => return Err(reason),
                    Verdict::NotReady(why) if Instant::now() >= deadline => {
                        return Err(format!(
                            "not ready within {}s: {why}",
                            ps.health.timeout_secs
                        ));
                    }
                    Verdict::NotReady(_) => tokio::time::sleep(CHECK_EVERY).await,
                }
            }
        }
        let hold = spec
            .processes
            .values()
            .map(|p| p.health.min_healthy_secs)
            .max()
            .unwrap_or(0);
        let until = Instant::now() + Duration::from_secs(hold);
        while Instant::now() < until {
            tokio::time::sleep(CHECK_EVERY * 2).await;
            for rec in &self.procs {
                let Some(ps) = spec.processes.get(&rec.process) else {
                    continue;
                };
                let probe = self.probe_for(ps, &release, &env);
                match health::check_once(rec, &release, &ps.required_env, probe).await {
                    Verdict::Healthy => {}
                    Verdict::Failed { reason: why, .. } | Verdict::NotReady(why) => {
                        return Err(format!("during the {hold}s minimum healthy time: {why}"));
                    }
                }
            }
        }
        Ok(())
    }

    /// The deploy state machine for one desired release.
    async fn deploy(&mut self, d: &DesiredApp) -> Outcome {
        let target = Target::from(d);
        let version = d.version.clone();
        // 0. The manifest must be the one the controller named, for this app.
        let manifest = match self.verify_manifest(d) {
            Ok(m) => m,
            Err(why) => return self.refuse(&target, "verify", why),
        };
        let _lock = match AppLock::acquire(&self.paths.lock, LOCK_TIMEOUT).await {
            Ok(l) => l,
            Err(e) => return Outcome::Transient(e.to_string()),
        };
        // A local action may have run while we waited for the lock.
        if self.reload_if_changed() && !self.needs_deploy(d) {
            return Outcome::Done;
        }
        tracing::info!(app = %self.name, %version, generation = d.generation, "deploying");

        // 1. Fetch into this app's cache.
        let Some(channel) = self.channel.borrow().clone() else {
            return Outcome::Transient("controller not connected".into());
        };
        self.set_state(State::Fetching);
        let blob_digest = match Digest::parse(&d.blob_digest) {
            Ok(b) => b,
            Err(e) => return self.refuse(&target, "fetch", e.to_string()),
        };
        let mut client =
            AgentsClient::new(channel).max_decoding_message_size(proto::MAX_MESSAGE_BYTES);
        let blob = match crate::fetch::fetch_blob(
            &mut client,
            &self.paths.cache,
            &blob_digest,
            d.blob_size,
        )
        .await
        {
            Ok(p) => p,
            Err(crate::fetch::FetchError::Rpc { status, .. })
                if status.code() != tonic::Code::NotFound =>
            {
                self.set_state(State::Idle);
                return Outcome::Transient(format!("fetch: {}", status.message()));
            }
            Err(e) => return self.refuse(&target, "fetch", e.to_string()),
        };
        self.log(&version, "fetch", "ok", &d.blob_digest);

        // 2. Install beside the running release; it stays untouched until the flip.
        self.set_state(State::Installing);
        let unpacked = install::unpack_release(&self.paths, &blob, &manifest).await;
        // Once unpacked (or refused) the blob has served its purpose: the cache
        // only ever holds what is being installed.
        let _ = std::fs::remove_file(&blob);
        let release = match unpacked {
            Ok(p) => p,
            Err(e) => return self.refuse(&target, "unpack", e.to_string()),
        };
        if let Some(run_as) = self.cfg.run_as()
            && let Err(e) = tokio::task::block_in_place(|| install::chown_tree(&release, run_as))
        {
            return self
                .abandon(&target, &release, "unpack", e.to_string())
                .await;
        }
        self.status
            .installed
            .insert(version.clone(), d.manifest_digest.clone());
        self.publish();
        self.log(
            &version,
            "unpack",
            "ok",
            &format!("{} entries", manifest.entries.len()),
        );
        let spec = match ReleaseSpec::load(&release) {
            Ok(s) => s,
            Err(e) => return self.abandon(&target, &release, "spec", e.to_string()).await,
        };
        if let Some((name, _)) = spec
            .processes
            .iter()
            .find(|(_, p)| (p.health.http.is_some() || p.health.tcp) && self.port_of(p).is_none())
        {
            let why = format!(
                "process {name} has an HTTP or TCP health check but no port: set its port in slipway.toml or apps.{}.port in the agent config",
                self.name
            );
            return self.abandon(&target, &release, "spec", why).await;
        }
        if self.cfg.service == Backend::Command
            && let Some(name) = spec
                .processes
                .keys()
                .find(|p| !self.cfg.commands.contains_key(*p))
        {
            let why = format!(
                "process {name} has no start/stop/pid commands in apps.{}.commands",
                self.name
            );
            return self.abandon(&target, &release, "spec", why).await;
        }
        if let Err(e) =
            install::link_shared(&self.paths, &release, &spec.shared.files, &spec.shared.dirs)
        {
            return self
                .abandon(&target, &release, "link_shared", e.to_string())
                .await;
        }
        // The env is read before anything is stopped: a broken env file refuses
        // the release while the old one keeps serving.
        let env = match self.app_env(&version) {
            Ok(e) => e,
            Err(e) => return self.abandon(&target, &release, "env", e).await,
        };
        self.warn_env_duplicates(&version);
        if let Some(hook) = &spec.hooks.prepare {
            match install::run_hook(hook, &release, &env, self.cfg.run_as()).await {
                Ok(out) => self.log(&version, "prepare", "ok", self.redact(&out).trim()),
                Err(e) => {
                    let why = self.redact(&e.to_string());
                    return self.abandon(&target, &release, "prepare", why).await;
                }
            }
        }

        // 3. Activate: record, flip, restart.
        let previous = self.paths.current_version().filter(|v| v != &version);
        let previous_digest = self.status.running_digest.clone();
        self.status.activating = Some(Activation {
            version: version.clone(),
            digest: d.manifest_digest.clone(),
            generation: d.generation,
            previous: previous.clone(),
            previous_digest: previous_digest.clone(),
        });
        self.set_state(State::Activating);
        if let Some(running) = &previous {
            self.warn_restart(running).await;
        }
        self.stop_all().await;
        if let Err(e) = install::flip_current(&self.paths, &version) {
            return self
                .roll_back(
                    &target,
                    previous,
                    previous_digest,
                    format!("flip current: {e}"),
                )
                .await;
        }
        self.log(&version, "flip", "ok", "");
        match self.start_processes(&spec, &version, &env) {
            Ok(p) => self.procs = p,
            Err(e) => return self.roll_back(&target, previous, previous_digest, e).await,
        }

        // 4. Health.
        if let Err(reason) = self.wait_healthy(&spec, &version).await {
            return self
                .roll_back(&target, previous, previous_digest, reason)
                .await;
        }
        self.activated(&target, previous.as_deref());
        self.post_activate(&version).await;
        Outcome::Done
    }

    /// The release proved healthy: record it, prune old releases.
    fn activated(&mut self, t: &Target, previous: Option<&str>) {
        self.log(&t.version, "health", "ok", "");
        let s = &mut self.status;
        s.running_version = Some(t.version.clone());
        s.running_digest = Some(t.digest.clone());
        s.state = State::Healthy;
        s.health = HealthState::Healthy;
        s.health_reason.clear();
        s.env_check = EnvState::Ok;
        s.missing_env.clear();
        s.last_error.clear();
        s.failed = None;
        s.activating = None;
        s.generation = t.generation;
        s.history.retain(|v| v != &t.version);
        s.history.push(t.version.clone());
        let protect: Vec<&str> = [Some(t.version.as_str()), previous]
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
        self.status.installed.retain(|v, _| !removed.contains(v));
        if !removed.is_empty() {
            self.log(&t.version, "prune", "ok", &removed.join(", "));
        }
        self.restarts = 0;
        self.publish();
        self.log(&t.version, "deploy", "healthy", "");
    }

    /// Runs a hook of `version` in `dir`, logging its (masked) output.
    async fn run_hook_logged(
        &self,
        step: &str,
        hook: &artifact::spec::HookSpec,
        dir: &Path,
        version: &str,
    ) -> Result<(), String> {
        let env = self.app_env(version)?;
        match install::run_hook(hook, dir, &env, self.cfg.run_as()).await {
            Ok(out) => {
                self.log(version, step, "ok", self.redact(&out).trim());
                Ok(())
            }
            Err(e) => {
                let why = self.redact(&e.to_string());
                self.log(version, step, "failed", &why);
                Err(why)
            }
        }
    }

    /// `post_activate`, once the release is healthy. A failure is reported; the
    /// healthy release stays.
    async fn post_activate(&mut self, version: &str) {
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
        let Some(port) = target.and_then(|(_, p)| self.port_of(p)) else {
            self.log(
                running,
                "restart_warning",
                "skipped",
                "no process with a port to warn",
            );
            return;
        };
        match health::http_request(hyper::Method::POST, port, &w.http).await {
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

    fn verify_manifest(&self, d: &DesiredApp) -> Result<Manifest, String> {
        let got = Digest::of(&d.manifest);
        if got.to_string() != d.manifest_digest {
            return Err(format!(
                "manifest bytes hash to {got}, not {}",
                d.manifest_digest
            ));
        }
        let limits = artifact::Limits::default();
        let m =
            Manifest::from_canonical_bytes(&d.manifest, limits.max_entries, limits.max_total_bytes)
                .map_err(|e| format!("manifest: {e}"))?;
        if m.app != self.name
            || m.version != d.version
            || m.blob.digest != d.blob_digest
            || m.blob.size != d.blob_size
        {
            return Err("manifest does not describe the desired release".into());
        }
        Ok(m)
    }

    fn set_state(&mut self, state: State) {
        self.status.state = state;
        self.publish();
    }

    fn record_failure(&mut self, t: &Target, reason: String) {
        self.status.last_error = format!("{}: {reason}", t.version);
        self.status.failed = Some(FailedRelease {
            version: t.version.clone(),
            digest: t.digest.clone(),
            generation: t.generation,
            reason,
        });
        self.status.generation = t.generation;
    }

    /// Refuses the release for this generation before the flip: what runs is
    /// untouched and keeps serving.
    fn refuse(&mut self, t: &Target, step: &str, reason: String) -> Outcome {
        self.log(&t.version, step, "failed", &reason);
        tracing::error!(app = %self.name, version = %t.version, step, reason = %reason, "deploy refused; the running release keeps serving");
        self.record_failure(t, format!("{step}: {reason}"));
        self.status.state = if self.status.running_version.is_some() {
            State::RolledBack
        } else {
            State::Failed
        };
        self.publish();
        Outcome::Done
    }

    /// Like `refuse`, and removes the half-installed release dir.
    async fn abandon(&mut self, t: &Target, release: &Path, step: &str, reason: String) -> Outcome {
        if self.paths.current_version().as_deref() != Some(t.version.as_str()) {
            let _ = tokio::fs::remove_dir_all(release).await;
            self.status.installed.remove(&t.version);
        }
        self.refuse(t, step, reason)
    }

    /// After the flip: put the previous release back and report why.
    async fn roll_back(
        &mut self,
        t: &Target,
        previous: Option<String>,
        previous_digest: Option<String>,
        reason: String,
    ) -> Outcome {
        self.log(&t.version, "health", "failed", &reason);
        self.stop_all().await;
        // Missing env names travel in the reason; env_check and missing_env keep
        // describing the release that runs.
        self.record_failure(t, reason.clone());
        let failed_dir = self.paths.release(&t.version);
        if let Ok(spec) = ReleaseSpec::load(&failed_dir)
            && let Some(hook) = &spec.hooks.on_rollback
        {
            let _ = self
                .run_hook_logged("on_rollback", hook, &failed_dir, &t.version)
                .await;
        }
        let Some(prev) = previous else {
            install::clear_current(&self.paths);
            self.status.activating = None;
            self.status.running_version = None;
            self.status.running_digest = None;
            self.status.state = State::Failed;
            self.status.health = HealthState::Unhealthy;
            self.status.health_reason = reason;
            self.publish();
            self.log(
                &t.version,
                "deploy",
                "failed",
                "no previous release to roll back to",
            );
            return Outcome::Done;
        };
        let restored = async {
            install::flip_current(&self.paths, &prev).map_err(|e| e.to_string())?;
            let spec = ReleaseSpec::load(&self.paths.release(&prev)).map_err(|e| e.to_string())?;
            let env = self.app_env(&prev)?;
            self.procs = self.start_processes(&spec, &prev, &env)?;
            self.wait_healthy(&spec, &prev).await
        }
        .await;
        self.status.activating = None;
        self.status.running_version = Some(prev.clone());
        self.status.running_digest = previous_digest;
        match restored {
            Ok(()) => {
                self.status.state = State::RolledBack;
                self.status.health = HealthState::Healthy;
                self.status.health_reason.clear();
                self.status.env_check = EnvState::Ok;
                self.status.missing_env.clear();
                self.log(&t.version, "rollback", "ok", &format!("back on {prev}"));
                tracing::warn!(app = %self.name, failed = %t.version, running = %prev, reason = %self.status.last_error, "rolled back");
            }
            Err(e) => {
                self.status.state = State::Failed;
                self.status.health = HealthState::Unhealthy;
                self.status.health_reason =
                    format!("previous release {prev} is unhealthy too: {e}");
                self.log(
                    &t.version,
                    "rollback",
                    "failed",
                    &self.status.health_reason.clone(),
                );
                tracing::error!(app = %self.name, reason = %self.status.health_reason, "rollback did not restore a healthy release");
            }
        }
        self.publish();
        Outcome::Done
    }

    /// Periodic check of what runs: restarts crashed processes with backoff and
    /// keeps health and env check current.
    async fn monitor(&mut self) {
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
    async fn monitor_locked(&mut self, spec: &ReleaseSpec, version: &str) {
        tokio::task::block_in_place(|| {
            supervisor::rotate_logs(&self.paths, self.cfg.log_max_bytes, self.cfg.log_keep)
        });
        let version = version.to_string();
        let release = self.paths.release(&version);
        let env = self.app_env(&version).unwrap_or_default();
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
        for rec in &self.procs {
            let Some(ps) = spec.processes.get(&rec.process) else {
                continue;
            };
            let probe = self.probe_for(ps, &release, &env);
            match health::check_once(rec, &release, &ps.required_env, probe).await {
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
            self.stop_all().await;
            match self
                .app_env(&version)
                .and_then(|env| self.start_processes(spec, &version, &env))
            {
                Ok(p) => {
                    self.procs = p;
                    self.restarts += 1;
                    self.log(&version, "restart", "ok", &verdict.1);
                }
                Err(e) => self.log(&version, "restart", "failed", &e),
            }
            let backoff = Duration::from_secs(1u64 << self.restarts.min(6));
            self.next_restart = Some(Instant::now() + backoff);
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
}
