//! What the agent knows about each app, persisted as `status.json` (temp + rename)
//! and reported to the controller; and `deploy.log`, one JSON line per step.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use proto::v1::{AppReport, DeployState, EnvCheck, Health};
use serde::{Deserialize, Serialize};

use crate::step::Step;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum State {
    #[default]
    Idle,
    Fetching,
    Installing,
    Activating,
    Healthy,
    Unhealthy,
    RolledBack,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    #[default]
    Unknown,
    Healthy,
    Unhealthy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EnvState {
    #[default]
    Unknown,
    Ok,
    Missing,
}

/// An operator's rollback authorization this host accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptedRollback {
    /// The release it took this host back to.
    pub digest: String,
    /// Unix seconds.
    pub expires_at: i64,
    /// This host accepted another release since: the authorization is used up.
    pub spent: bool,
}

/// A release this host refused; not retried until the generation changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedRelease {
    pub version: String,
    pub digest: String,
    pub generation: u64,
    pub reason: String,
    /// Left by an operator on the host (`slipway-agent rollback`), not refused.
    #[serde(default)]
    pub by_host: bool,
}

/// A release between the flip and its verdict, as agents before the deploy
/// machine persisted it: read once and turned into a `Progress` at `Health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activation {
    pub version: String,
    pub digest: String,
    pub generation: u64,
    pub previous: Option<String>,
    pub previous_digest: Option<String>,
}

/// The release a deploy is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub version: String,
    pub digest: String,
    pub generation: u64,
    #[serde(default)]
    pub counter: u64,
}

/// The release that ran before, to go back to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Previous {
    pub version: String,
    pub digest: Option<String>,
}

/// Who asked for the change: the controller (a directive) or an operator on
/// the host (`slipway-agent rollback`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    #[default]
    Controller,
    Host {
        actor: String,
    },
}

/// A hook process, recorded while it runs so a restarted agent can kill what
/// is left of it instead of running a second copy beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookRun {
    pub pid: i32,
    pub start_time: u64,
}

/// A deploy in progress, persisted (temp + fsync + rename) before each step
/// starts, so an agent killed at any step resumes or undoes it on restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub step: Step,
    pub target: Target,
    pub previous: Option<Previous>,
    #[serde(default)]
    pub origin: Origin,
    /// Why the deploy is rolling back or refused.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// This deploy unpacked the release dir (an undo removes it).
    #[serde(default)]
    pub fresh: bool,
    /// The release was already kept on the host: no unpack, no `prepare`.
    #[serde(default)]
    pub kept: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<HookRun>,
    /// The nonce the running hook carries as `SLIPWAY_RUN`, on disk before it
    /// is spawned: finds it if the agent died before its pid was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_nonce: Option<String>,
    /// `on_rollback` was started (it runs at most once per deploy).
    #[serde(default)]
    pub on_rollback_started: bool,
}

impl Progress {
    pub fn new(step: Step, target: Target, previous: Option<Previous>, origin: Origin) -> Self {
        Self {
            step,
            target,
            previous,
            origin,
            reason: String::new(),
            fresh: false,
            kept: false,
            hook: None,
            hook_nonce: None,
            on_rollback_started: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AppStatus {
    pub app: String,
    pub running_version: Option<String>,
    pub running_digest: Option<String>,
    pub state: State,
    pub health: HealthState,
    pub health_reason: String,
    pub env_check: EnvState,
    /// Names only; values never leave the host.
    pub missing_env: Vec<String>,
    pub last_error: String,
    pub failed: Option<FailedRelease>,
    /// Generation of the last desired release this host acted on.
    pub generation: u64,
    /// Versions activated successfully, oldest first (drives keep-N).
    #[serde(default)]
    pub history: Vec<String>,
    /// Release digest of every version unpacked on disk, recorded before the flip
    /// so an agent killed mid-deploy knows what `current` holds.
    #[serde(default)]
    pub installed: BTreeMap<String, String>,
    /// Written by agents before the deploy machine; read once, never written.
    #[serde(default, skip_serializing)]
    pub activating: Option<Activation>,
    /// The deploy in progress, if any.
    #[serde(default)]
    pub deploy: Option<Progress>,
    /// Release counter of every version unpacked on disk (downgrade checks).
    #[serde(default)]
    pub counters: BTreeMap<String, u64>,
    /// Operator rollback authorizations this host accepted, by nonce, so one
    /// is never honoured twice (`app/prepare.rs`).
    #[serde(default)]
    pub rollback_nonces: BTreeMap<String, AcceptedRollback>,
    /// Drift in the running release: at most `DRIFT_LINES` "changed|added|removed
    /// <path>" lines, and how many paths drifted in all.
    #[serde(default)]
    pub drift: Vec<String>,
    #[serde(default)]
    pub drift_count: u32,
    #[serde(default)]
    pub drift_digest: String,
    /// Env files and the release are polled: inotify was unavailable.
    #[serde(default)]
    pub watch_degraded: bool,
    pub updated_at: i64,
}

impl AppStatus {
    /// Reads status.json. A file that does not parse is kept aside as
    /// `status.json.bad` (never silently overwritten) and the agent starts from
    /// what the disk says.
    pub fn load(path: &Path) -> Option<Self> {
        let bytes = std::fs::read(path).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(s) => Some(Self::upgraded(s)),
            Err(e) => {
                let bad = path.with_extension("json.bad");
                tracing::error!(path = %path.display(), kept_as = %bad.display(), error = %e, "status.json is corrupt; rebuilding it from the release dirs");
                let _ = std::fs::rename(path, &bad);
                None
            }
        }
    }

    /// An activation recorded by an older agent becomes a deploy at `Health`.
    fn upgraded(mut s: Self) -> Self {
        if let Some(a) = s.activating.take()
            && s.deploy.is_none()
        {
            let target = Target {
                counter: s.counters.get(&a.version).copied().unwrap_or(0),
                version: a.version,
                digest: a.digest,
                generation: a.generation,
            };
            let previous = a.previous.map(|version| Previous {
                version,
                digest: a.previous_digest,
            });
            s.deploy = Some(Progress::new(
                Step::Health,
                target,
                previous,
                Origin::Controller,
            ));
        }
        s
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        artifact::unpack::write_atomic(path, &bytes)
    }

    pub fn to_report(&self) -> AppReport {
        AppReport {
            app: self.app.clone(),
            running_version: self.running_version.clone().unwrap_or_default(),
            running_digest: self.running_digest.clone().unwrap_or_default(),
            state: match self.state {
                State::Idle => DeployState::Idle,
                State::Fetching => DeployState::Fetching,
                State::Installing => DeployState::Installing,
                State::Activating => DeployState::Activating,
                State::Healthy => DeployState::Healthy,
                State::Unhealthy => DeployState::Unhealthy,
                State::RolledBack => DeployState::RolledBack,
                State::Failed => DeployState::Failed,
            } as i32,
            health: match self.health {
                HealthState::Unknown => Health::Unknown,
                HealthState::Healthy => Health::Healthy,
                HealthState::Unhealthy => Health::Unhealthy,
            } as i32,
            health_reason: self.health_reason.clone(),
            env_check: match self.env_check {
                EnvState::Unknown => EnvCheck::Unknown,
                EnvState::Ok => EnvCheck::Ok,
                EnvState::Missing => EnvCheck::Missing,
            } as i32,
            missing_env: self.missing_env.clone(),
            last_error: self.last_error.clone(),
            failed_version: self
                .failed
                .as_ref()
                .map(|f| f.version.clone())
                .unwrap_or_default(),
            failed_digest: self
                .failed
                .as_ref()
                .map(|f| f.digest.clone())
                .unwrap_or_default(),
            generation: self.generation,
            drift: self.drift.clone(),
            drift_count: self.drift_count,
            drift_digest: self.drift_digest.clone(),
        }
    }
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// One line of `deploy.log`.
#[derive(Debug, Serialize, Deserialize)]
pub struct LogLine<'a> {
    pub ts: i64,
    pub app: &'a str,
    pub version: &'a str,
    pub step: &'a str,
    pub outcome: &'a str,
    #[serde(skip_serializing_if = "str::is_empty", default)]
    pub detail: &'a str,
}

/// Appends one JSON line to `deploy.log`; a failure to log is reported, never fatal.
pub fn log_step(path: &Path, app: &str, version: &str, step: &str, outcome: &str, detail: &str) {
    let line = LogLine {
        ts: now(),
        app,
        version,
        step,
        outcome,
        detail,
    };
    let result = serde_json::to_string(&line)
        .map_err(std::io::Error::other)
        .and_then(|mut s| {
            s.push('\n');
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?
                .write_all(s.as_bytes())
        });
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "cannot append to deploy.log");
    }
    tracing::info!(app, version, step, outcome, detail, "deploy step");
    crate::metrics::METRICS.step(app, step, outcome);
}
