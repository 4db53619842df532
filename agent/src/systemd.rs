//! The `systemd` service backend: the operator installs a unit per process
//! (ExecStart under `<root>/current/…`, WorkingDirectory=`<root>/current`,
//! EnvironmentFile=`<root>/shared/.env`; see `systemd/example-app.service`), and
//! the agent drives it with `systemctl restart | stop | show`. Health checks read
//! the unit's MainPID like any supervised process.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::paths::AppPaths;
use crate::supervisor::{self, ProcRecord};

const MAIN_PID_WAIT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("systemctl {args}: {source}")]
    Run {
        args: String,
        #[source]
        source: std::io::Error,
    },
    #[error("systemctl {args}: {stderr}")]
    Failed { args: String, stderr: String },
    #[error("unit {unit} has no main process after restart ({state})")]
    NoMainPid { unit: String, state: String },
    #[error(transparent)]
    Record(#[from] supervisor::SuperviseError),
}

fn systemctl(args: &[&str]) -> Result<String, SystemdError> {
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .map_err(|source| SystemdError::Run {
            args: args.join(" "),
            source,
        })?;
    if !out.status.success() {
        return Err(SystemdError::Failed {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The unit's main process, when it runs.
pub fn main_pid(unit: &str) -> Option<i32> {
    systemctl(&["show", "-p", "MainPID", "--value", unit])
        .ok()?
        .parse()
        .ok()
        .filter(|p| *p > 0)
}

/// `systemctl restart`, then waits for a main process and records it like a
/// supervised one (so adoption and health checks work unchanged).
pub fn restart(
    paths: &AppPaths,
    process: &str,
    unit: &str,
    version: &str,
) -> Result<ProcRecord, SystemdError> {
    let before = main_pid(unit);
    systemctl(&["restart", unit])?;
    let deadline = Instant::now() + MAIN_PID_WAIT;
    loop {
        if let Some(recorded) = main_pid(unit)
            .filter(|p| Some(*p) != before)
            .and_then(|pid| supervisor::record_started(paths, process, pid, version))
        {
            return Ok(recorded?);
        }
        if Instant::now() >= deadline {
            let state = systemctl(&["is-active", unit]).unwrap_or_else(|e| e.to_string());
            return Err(SystemdError::NoMainPid {
                unit: unit.to_string(),
                state,
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn stop(paths: &AppPaths, rec: &ProcRecord, unit: &str) {
    if let Err(e) = systemctl(&["stop", unit]) {
        tracing::warn!(unit, error = %e, "stopping unit failed");
    }
    let _ = std::fs::remove_file(supervisor::record_path(paths, &rec.process));
}
