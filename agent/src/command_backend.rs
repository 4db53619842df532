//! The `command` service backend, for anything the agent neither supervises nor
//! reaches through systemd (pm2, a container runtime): operator-given `start`,
//! `stop` and `pid` commands per process, run in `current/` with the app's env.
//! `pid` prints the main pid, which is health-checked like any process.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::{CommandSet, RunAs};
use crate::paths::AppPaths;
use crate::supervisor::{self, ProcRecord};

const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const PID_WAIT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("open logs/commands.log: {0}")]
    Log(#[source] std::io::Error),
    #[error("{program:?} could not start: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program:?} timed out after {secs}s")]
    Timeout { program: String, secs: u64 },
    #[error("{program:?}: {source}")]
    Wait {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program:?} failed ({status}): {stderr}")]
    Failed {
        program: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("start {process}: {source}")]
    Start {
        process: String,
        #[source]
        source: Box<CommandError>,
    },
    #[error("start {process}: the pid command printed no live pid within {secs}s")]
    NoPid { process: String, secs: u64 },
    #[error(transparent)]
    Record(#[from] supervisor::SuperviseError),
}

/// Runs one operator command to completion (bounded). `capture`: stdout is
/// returned (the pid command); otherwise output goes to `logs/commands.log`,
/// never to a pipe a backgrounded child could hold open forever.
fn run(
    argv: &[String],
    paths: &AppPaths,
    env: &BTreeMap<String, String>,
    run_as: Option<RunAs>,
    capture: bool,
) -> Result<String, CommandError> {
    let program = || argv[0].clone();
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .current_dir(&paths.current)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null());
    if capture {
        cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    } else {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(paths.logs.join("commands.log"))
            .map_err(CommandError::Log)?;
        let log2 = log.try_clone().map_err(CommandError::Log)?;
        cmd.stdout(log).stderr(log2);
    }
    if let Some(r) = run_as {
        std::os::unix::process::CommandExt::uid(&mut cmd, r.uid);
        std::os::unix::process::CommandExt::gid(&mut cmd, r.gid);
    }
    let mut child = cmd.spawn().map_err(|source| CommandError::Spawn {
        program: program(),
        source,
    })?;
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(CommandError::Timeout {
                    program: program(),
                    secs: COMMAND_TIMEOUT.as_secs(),
                });
            }
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|source| CommandError::Wait {
            program: program(),
            source,
        })?;
    if !out.status.success() {
        return Err(CommandError::Failed {
            program: program(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn start(
    paths: &AppPaths,
    process: &str,
    cmds: &CommandSet,
    env: &BTreeMap<String, String>,
    version: &str,
    run_as: Option<RunAs>,
) -> Result<ProcRecord, CommandError> {
    run(&cmds.start, paths, env, run_as, false).map_err(|e| CommandError::Start {
        process: process.to_string(),
        source: Box::new(e),
    })?;
    let deadline = Instant::now() + PID_WAIT;
    loop {
        let pid = run(&cmds.pid, paths, env, run_as, true)
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
            .filter(|p| *p > 0);
        if let Some(recorded) =
            pid.and_then(|pid| supervisor::record_started(paths, process, pid, version))
        {
            return Ok(recorded?);
        }
        if Instant::now() >= deadline {
            return Err(CommandError::NoPid {
                process: process.to_string(),
                secs: PID_WAIT.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn stop(
    paths: &AppPaths,
    rec: &ProcRecord,
    cmds: &CommandSet,
    env: &BTreeMap<String, String>,
    run_as: Option<RunAs>,
) {
    if let Err(e) = run(&cmds.stop, paths, env, run_as, false) {
        tracing::warn!(process = %rec.process, error = %e, "stop command failed");
    }
    let _ = std::fs::remove_file(supervisor::record_path(paths, &rec.process));
}
