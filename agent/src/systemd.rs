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

fn systemctl(args: &[&str]) -> Result<String, String> {
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .map_err(|e| format!("systemctl {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("systemctl {}: {}", args.join(" "), err.trim()));
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
) -> Result<ProcRecord, String> {
    let before = main_pid(unit);
    systemctl(&["restart", unit])?;
    let deadline = Instant::now() + MAIN_PID_WAIT;
    loop {
        if let Some(recorded) = main_pid(unit)
            .filter(|p| Some(*p) != before)
            .and_then(|pid| supervisor::record_started(paths, process, pid, version))
        {
            return recorded;
        }
        if Instant::now() >= deadline {
            let state = systemctl(&["is-active", unit]).unwrap_or_else(|e| e);
            return Err(format!(
                "unit {unit} has no main process after restart ({state})"
            ));
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
