//! Why a deploy step did not succeed.

use crate::envfile::EnvFileError;
use crate::fetch::FetchError;
use crate::install::InstallError;

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// Not the release's fault (controller unreachable, lock busy): the deploy
    /// is postponed and tried again, nothing is recorded against the release.
    #[error("{0}")]
    Transient(String),
    /// The directive or the release's signatures are not acceptable.
    #[error("{0}")]
    Verify(String),
    #[error("{0}")]
    Fetch(#[from] FetchError),
    #[error("{0}")]
    Install(#[from] InstallError),
    /// The release's `slipway.toml` cannot run with this host's settings.
    #[error("{0}")]
    Spec(String),
    #[error("{0}")]
    Env(#[from] EnvFileError),
    /// A hook failed; its output is already masked.
    #[error("{0}")]
    Hook(String),
    /// The release's migrations refused it (a failed dry run or apply, or
    /// pending ones this environment does not apply without approval).
    #[error("{0}")]
    Migrations(String),
    /// A process could not be started or stopped by the service backend
    /// (the command backend's message is masked, so it travels as text).
    #[error("{0}")]
    Process(String),
    #[error(transparent)]
    Supervise(#[from] crate::supervisor::SuperviseError),
    #[error(transparent)]
    Systemd(#[from] crate::systemd::SystemdError),
    /// A health check failed for good (names missing env vars if any).
    #[error("{0}")]
    Unhealthy(String),
    #[error("{step} timed out after {secs}s")]
    Timeout { step: &'static str, secs: u64 },
}

impl DeployError {
    pub fn is_transient(&self) -> bool {
        matches!(self, DeployError::Transient(_))
    }
}
