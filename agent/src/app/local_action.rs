//! Actions an operator runs on the host (`slipway-agent rollback`), serialized
//! with deploys by the app lock and run by the same deploy machine.

use crate::lock::{AppLock, LockError};
use crate::state::{Origin, Previous, Progress, Target};
use crate::step::Step;

use super::{AppRunner, DeployError, LOCK_TIMEOUT};

/// Why a command run on the host (`slipway-agent status|releases|rollback`)
/// did nothing.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("unknown app {app:?} (this host runs: {known:?})")]
    UnknownApp { app: String, known: Vec<String> },
    #[error("{app}: {source}")]
    Io {
        app: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{app}: {source}")]
    Lock {
        app: String,
        #[source]
        source: LockError,
    },
    #[error("{0}: no release is active on this host")]
    NoActiveRelease(String),
    #[error("{0}: no earlier release is kept on this host; name one with --to")]
    NoEarlierRelease(String),
    #[error("{0}")]
    Name(#[from] artifact::NameError),
    #[error("{app}: {version} is already the active release")]
    AlreadyActive { app: String, version: String },
    #[error("{app}: release {version} is not on this host (kept: {kept})")]
    NotKept {
        app: String,
        version: String,
        kept: String,
    },
    #[error("{app}: {source}")]
    Deploy {
        app: String,
        #[source]
        source: DeployError,
    },
    #[error("{app}: {target} did not prove healthy, {restored} restored: {reason}")]
    Unhealthy {
        app: String,
        target: String,
        restored: String,
        reason: String,
    },
    #[error("print status: {0}")]
    Json(#[from] serde_json::Error),
}

impl AppRunner {
    /// `slipway-agent rollback APP [--to VERSION]`, run on the host without the
    /// controller: the deploy machine from `Stop` on, with a kept release as
    /// the target; health-checked like a deploy, undone if the target does not
    /// prove healthy. The release it leaves is recorded as refused so the agent
    /// does not re-apply it by itself.
    pub async fn local_rollback(
        &mut self,
        to: Option<String>,
        actor: &str,
    ) -> Result<String, LocalError> {
        let name = self.name.clone();
        let app = || name.clone();
        let _lock = AppLock::acquire(&self.paths.lock, LOCK_TIMEOUT)
            .await
            .map_err(|source| LocalError::Lock { app: app(), source })?;
        self.reload_if_changed();
        self.procs = self.backend.adopt();
        let current = self
            .paths
            .current_version()
            .ok_or_else(|| LocalError::NoActiveRelease(app()))?;
        let target = self.rollback_target(&current, to)?;
        let deploy = |source| LocalError::Deploy { app: app(), source };
        artifact::ReleaseSpec::load(&self.paths.release(&target))
            .map_err(|e| deploy(DeployError::Spec(e.to_string())))?;
        self.env_for(&target).map_err(deploy)?;
        let previous = self.previous_of(&target).unwrap_or(Previous {
            version: current.clone(),
            digest: None,
        });
        let t = Target {
            digest: self
                .status
                .installed
                .get(&target)
                .cloned()
                .unwrap_or_default(),
            counter: self.status.counters.get(&target).copied().unwrap_or(0),
            generation: self.status.generation,
            version: target.clone(),
        };
        let p = Progress::new(
            Step::Stop,
            t,
            Some(previous),
            Origin::Host {
                actor: actor.to_string(),
            },
        );
        let reached = self
            .drive(p, super::machine::Work::default())
            .await
            .map_err(|source| LocalError::Deploy {
                app: self.name.clone(),
                source,
            })?;
        if reached.step == Step::Healthy {
            return Ok(format!("{}: {current} -> {target}, healthy", self.name));
        }
        Err(LocalError::Unhealthy {
            app: self.name.clone(),
            target,
            restored: current,
            reason: reached.reason,
        })
    }

    /// The release to go back to: the one named, or the newest kept release
    /// activated before `current`.
    fn rollback_target(&self, current: &str, to: Option<String>) -> Result<String, LocalError> {
        let target = match to {
            Some(v) => {
                artifact::validate_name(artifact::NameKind::Version, &v)?;
                v
            }
            None => {
                let pos = self.status.history.iter().position(|v| v == current);
                let older = pos.map_or(&self.status.history[..], |i| &self.status.history[..i]);
                older
                    .iter()
                    .rev()
                    .find(|v| self.paths.release(v).is_dir())
                    .cloned()
                    .ok_or_else(|| LocalError::NoEarlierRelease(self.name.clone()))?
            }
        };
        if target == current {
            return Err(LocalError::AlreadyActive {
                app: self.name.clone(),
                version: target,
            });
        }
        if !self.paths.release(&target).is_dir() {
            return Err(LocalError::NotKept {
                app: self.name.clone(),
                version: target,
                kept: self.paths.kept_versions().join(", "),
            });
        }
        Ok(target)
    }
}
