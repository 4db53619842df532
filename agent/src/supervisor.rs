//! The built-in supervisor: runs an app's processes as children in their own
//! process group with cwd = `current` and output appended to log files (never
//! pipes to the agent), records each one in `run/<process>.json`, and stops them
//! with SIGTERM, a grace period, then SIGKILL. Processes outlive the agent: a
//! restarted agent adopts them from their pid files.
//!
//! The intent is on disk before the process can exist: `run/<process>.starting`
//! names a nonce the child carries as `SLIPWAY_RUN`, so an agent killed between
//! the spawn and the pid file finds the process by that nonce when it restarts,
//! records it and adopts it (then the deploy machine stops or keeps it) instead
//! of starting a second one beside an unmanaged orphan.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::paths::AppPaths;

/// What is recorded about a running process so a restarted agent can find it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcRecord {
    pub process: String,
    pub pid: i32,
    /// Kernel start time (clock ticks since boot): guards against pid reuse.
    pub start_time: u64,
    pub version: String,
    /// Side-by-side activation: this instance's id (its pid file is
    /// `run/<process>@<instance>.json`, so two releases' instances coexist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Proxy activation: the private loopback port this instance was given
    /// as `PORT` (the agent's proxy routes to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Socket activation: this instance inherited the app's listening socket
    /// as fd 3 (`LISTEN_FDS=1`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub listen_fds: bool,
}

/// How one side-by-side instance is started: its id, and what it listens on.
#[derive(Debug, Default)]
pub struct Side<'a> {
    pub instance: String,
    /// Private loopback port, given as `PORT` (proxy activation).
    pub port: Option<u16>,
    /// The app's listening socket, handed over as fd 3 (socket activation).
    pub listener: Option<&'a std::net::TcpListener>,
}

/// What names a process's files in `run/`: `<process>` or `<process>@<instance>`.
fn key(process: &str, instance: Option<&str>) -> String {
    match instance {
        Some(i) => format!("{process}@{i}"),
        None => process.to_string(),
    }
}

/// The pid file of `rec`.
pub fn record_file(paths: &AppPaths, rec: &ProcRecord) -> PathBuf {
    record_path(paths, &key(&rec.process, rec.instance.as_deref()))
}

/// An instance id no other instance of the app shares.
pub fn instance_id() -> String {
    format!("{:08x}", fastrand::u32(..))
}

/// A loopback port free right now, for a side-by-side instance (the app binds
/// it a moment later; a collision fails that instance's readiness, never the
/// running release).
pub fn free_loopback_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

/// The shell line that hands the socket on stdin to the app as fd 3 with
/// `LISTEN_PID` set to the app's own pid (`$$` survives the `exec`).
const LISTEN_SHIM: &str = "exec 3<&0 0</dev/null; LISTEN_PID=$$; export LISTEN_PID; exec \"$@\"";

#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("start process {process}: {source}")]
    Spawn {
        process: String,
        #[source]
        source: std::io::Error,
    },
    #[error("process {process} exited right after start ({status})")]
    Vanished { process: String, status: String },
    #[error("write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Reads `/proc/<pid>/stat`: (state char, start time).
fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parens: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// The start time of a live (not zombie) process.
pub fn start_time(pid: i32) -> Option<u64> {
    match proc_stat(pid)? {
        ('Z' | 'X', _) => None,
        (_, t) => Some(t),
    }
}

impl ProcRecord {
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }
}

pub fn record_path(paths: &AppPaths, process: &str) -> PathBuf {
    paths.run.join(format!("{process}.json"))
}

/// What is on disk while a process is being started: the nonce its environment
/// carries, so it can be found if the agent dies before recording its pid.
#[derive(Debug, Serialize, Deserialize)]
struct Intent {
    process: String,
    version: String,
    nonce: String,
    #[serde(default)]
    instance: Option<String>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    listen_fds: bool,
}

const INTENT_SUFFIX: &str = ".starting";
/// The variable holding a start's nonce.
pub const RUN_VAR: &str = "SLIPWAY_RUN";

fn intent_path(paths: &AppPaths, process: &str) -> PathBuf {
    paths.run.join(format!("{process}{INTENT_SUFFIX}"))
}

/// A nonce no other start on this host shares: this agent's pid, the time, and
/// 64 random bits.
pub fn nonce() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{}-{nanos:x}-{:016x}",
        std::process::id(),
        fastrand::u64(..)
    )
}

/// Live processes whose environment holds `SLIPWAY_RUN=<nonce>`, group leaders
/// first.
fn carrying(nonce: &str) -> Vec<i32> {
    let want = format!("{RUN_VAR}={nonce}");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<(bool, i32)> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| start_time(*pid).is_some())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == want.as_bytes()))
        })
        .map(|pid| {
            (
                nix::unistd::getpgid(Some(Pid::from_raw(pid))).ok() != Some(Pid::from_raw(pid)),
                pid,
            )
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, pid)| pid).collect()
}

/// The process group leader (pid, start time) carrying `nonce`, if one lives.
pub fn find_by_nonce(nonce: &str) -> Option<(i32, u64)> {
    let pid = carrying(nonce).into_iter().next()?;
    Some((pid, start_time(pid)?))
}

/// Finishes a start an earlier agent left half-recorded: the process found by
/// its nonce gets its pid file (and is returned); the intent is removed.
fn recover_intent(paths: &AppPaths, path: &Path) -> Option<ProcRecord> {
    let intent: Intent = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let leader = carrying(&intent.nonce).into_iter().next();
    let rec = leader.and_then(|pid| {
        Some(ProcRecord {
            process: intent.process.clone(),
            pid,
            start_time: start_time(pid)?,
            version: intent.version.clone(),
            instance: intent.instance.clone(),
            port: intent.port,
            listen_fds: intent.listen_fds,
        })
    });
    if let Some(rec) = &rec {
        tracing::warn!(process = %rec.process, pid = rec.pid, "found a process an earlier agent started without recording it; adopting it");
        if let Err(e) = write_record(paths, rec) {
            tracing::error!(error = %e, "recording a found process");
        }
    }
    let _ = std::fs::remove_file(path);
    rec
}

/// Pid files of the app's processes that are still alive.
pub fn adopt(paths: &AppPaths) -> Vec<ProcRecord> {
    let Ok(dir) = std::fs::read_dir(&paths.run) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut intents = Vec::new();
    for entry in dir.flatten() {
        if entry.file_name().to_string_lossy().ends_with(INTENT_SUFFIX) {
            intents.push(entry.path());
            continue;
        }
        let Ok(bytes) = std::fs::read(entry.path()) else {
            continue;
        };
        let Ok(rec) = serde_json::from_slice::<ProcRecord>(&bytes) else {
            continue;
        };
        if rec.alive() {
            out.push(rec);
        } else {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    for path in intents {
        if let Some(rec) = recover_intent(paths, &path)
            && !out.iter().any(|r| r.pid == rec.pid)
        {
            out.push(rec);
        }
    }
    out.sort_by(|a, b| a.process.cmp(&b.process));
    out
}

/// Starts `command` for `process` with cwd = the app's `current` link (or `cwd`
/// below it); a relative program path is resolved in the release dir. With
/// `side`, the process is one instance among others (side-by-side activation).
#[expect(
    clippy::too_many_arguments,
    reason = "what a start needs, each from a different owner (spec, host config, runner)"
)]
pub fn start(
    paths: &AppPaths,
    process: &str,
    version: &str,
    command: &[String],
    cwd: Option<&str>,
    env: &BTreeMap<String, String>,
    run_as: Option<crate::config::RunAs>,
    side: Option<&Side<'_>>,
) -> Result<ProcRecord, SuperviseError> {
    let spawn_err = |source| SuperviseError::Spawn {
        process: process.to_string(),
        source,
    };
    let workdir = cwd.map_or_else(|| paths.current.clone(), |c| paths.current.join(c));
    // A path with a slash is from the release; a bare name is looked up as
    // the child's execvp would, unless a user switch leaves that to it.
    let program = match (command[0].contains('/'), run_as) {
        (true, _) => paths.current.join(&command[0]),
        (false, Some(_)) => PathBuf::from(&command[0]),
        (false, None) => {
            crate::program::resolve(&command[0], &workdir, env.get("PATH").map(String::as_str))
        }
    };
    let log_path = paths.logs.join(format!("{process}.log"));
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|source| SuperviseError::Io {
            path: log_path.clone(),
            source,
        })?;
    let log2 = log.try_clone().map_err(spawn_err)?;
    let instance = side.map(|s| s.instance.clone());
    let name = key(process, instance.as_deref());
    let intent = Intent {
        process: process.to_string(),
        version: version.to_string(),
        nonce: nonce(),
        instance: instance.clone(),
        port: side.and_then(|s| s.port),
        listen_fds: side.is_some_and(|s| s.listener.is_some()),
    };
    let intent_file = intent_path(paths, &name);
    let intent_bytes = serde_json::to_vec(&intent).map_err(|e| SuperviseError::Io {
        path: intent_file.clone(),
        source: e.into(),
    })?;
    artifact::unpack::write_atomic(&intent_file, &intent_bytes).map_err(|source| {
        SuperviseError::Io {
            path: intent_file.clone(),
            source,
        }
    })?;
    let listener = side.and_then(|s| s.listener);
    let mut cmd = match listener {
        // fd 3 and LISTEN_PID must be set in the child, after the fork: a
        // POSIX shell does it without unsafe code and `exec`s the app, so the
        // pid recorded below is the app's own.
        Some(_) => {
            let mut c = std::process::Command::new("/bin/sh");
            c.arg("-c")
                .arg(LISTEN_SHIM)
                .arg("slipway-listen")
                .arg(&program);
            c
        }
        None => {
            let mut c = std::process::Command::new(&program);
            std::os::unix::process::CommandExt::arg0(&mut c, &command[0]);
            c
        }
    };
    let stdin = match listener {
        Some(l) => Stdio::from(std::os::fd::OwnedFd::from(
            l.try_clone().map_err(spawn_err)?,
        )),
        None => Stdio::null(),
    };
    cmd.args(&command[1..])
        .current_dir(&workdir)
        .env_clear()
        .envs(env)
        .env(RUN_VAR, &intent.nonce)
        .stdin(stdin)
        .stdout(log)
        .stderr(log2);
    if listener.is_some() {
        cmd.env("LISTEN_FDS", "1").env("LISTEN_FDNAMES", process);
    }
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    if let Some(r) = run_as {
        std::os::unix::process::CommandExt::uid(&mut cmd, r.uid);
        std::os::unix::process::CommandExt::gid(&mut cmd, r.gid);
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            let _ = std::fs::remove_file(&intent_file);
            return Err(spawn_err(e));
        }
    };
    crate::failpoint::hit("supervisor-spawned");
    let pid = child.id() as i32;
    let exit_path = exit_path(paths, &name);
    let Some(start_time) = start_time(pid) else {
        // Gone already (or a zombie): reap it here, so its status is known now.
        let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
        record_exit(&exit_path, pid, &status);
        let _ = std::fs::remove_file(&intent_file);
        return Err(SuperviseError::Vanished {
            process: process.to_string(),
            status,
        });
    };
    // Reap the child when it exits so it never lingers as a zombie; liveness is
    // judged from /proc so adopted and own children are treated alike.
    // The exit status is kept beside the pid file for the failure reason.
    std::thread::spawn(move || {
        let mut child = child;
        if let Ok(status) = child.wait() {
            record_exit(&exit_path, pid, &status.to_string());
        }
    });
    let rec = ProcRecord {
        process: process.to_string(),
        pid,
        start_time,
        version: version.to_string(),
        instance,
        port: intent.port,
        listen_fds: intent.listen_fds,
    };
    write_record(paths, &rec)?;
    let _ = std::fs::remove_file(&intent_file);
    tracing::info!(process, pid, version, instance = ?rec.instance, port = ?rec.port, "process started");
    Ok(rec)
}

/// How a process the supervisor started ended.
#[derive(Debug, Serialize, Deserialize)]
struct Exit {
    pid: i32,
    status: String,
}

fn record_exit(path: &Path, pid: i32, status: &str) {
    let exit = Exit {
        pid,
        status: status.to_string(),
    };
    if let Ok(bytes) = serde_json::to_vec(&exit) {
        let _ = artifact::unpack::write_atomic(path, &bytes);
    }
}

fn exit_path(paths: &AppPaths, process: &str) -> PathBuf {
    paths.run.join(format!("{process}.exit"))
}

/// How `rec` ended ("exit status: 3", "signal: 9 (SIGKILL)"), when this agent
/// started it and saw it end (an adopted process's end is not seen).
pub fn exit_status(paths: &AppPaths, rec: &ProcRecord) -> Option<String> {
    let bytes = std::fs::read(exit_path(
        paths,
        &key(&rec.process, rec.instance.as_deref()),
    ))
    .ok()?;
    let exit: Exit = serde_json::from_slice(&bytes).ok()?;
    (exit.pid == rec.pid).then_some(exit.status)
}

/// The last `lines` lines of a process's log (at most 4 KiB read, 600 chars
/// kept), every `secrets` value masked before anything is cut.
pub fn log_tail(paths: &AppPaths, process: &str, lines: usize, secrets: &[String]) -> String {
    use std::io::{Read, Seek, SeekFrom};
    const READ: u64 = 4096;
    const KEEP: usize = 600;
    let Ok(mut f) = std::fs::File::open(paths.logs.join(format!("{process}.log"))) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(len.saturating_sub(READ))).is_err()
        || f.take(READ).read_to_end(&mut buf).is_err()
    {
        return String::new();
    }
    let text = crate::envfile::redact_window(&String::from_utf8_lossy(&buf), secrets, len > READ);
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    crate::envfile::last_chars(&all[all.len().saturating_sub(lines)..].join(" | "), KEEP)
}

/// Records a process another manager started (systemd, a command backend), if
/// `pid` is alive: Some(Ok(record)), or None to keep waiting.
pub fn record_started(
    paths: &AppPaths,
    process: &str,
    pid: i32,
    version: &str,
) -> Option<Result<ProcRecord, SuperviseError>> {
    let start_time = start_time(pid)?;
    let rec = ProcRecord {
        process: process.to_string(),
        pid,
        start_time,
        version: version.to_string(),
        ..ProcRecord::default()
    };
    Some(write_record(paths, &rec).map(|()| rec))
}

/// Records a running process in `run/<process>.json` for adoption after restarts.
pub fn write_record(paths: &AppPaths, rec: &ProcRecord) -> Result<(), SuperviseError> {
    let path = record_file(paths, rec);
    let bytes = serde_json::to_vec(&rec).map_err(|e| SuperviseError::Io {
        path: path.clone(),
        source: e.into(),
    })?;
    artifact::unpack::write_atomic(&path, &bytes)
        .map_err(|source| SuperviseError::Io { path, source })
}

/// Whether process group `pgid` has no process left, zombies included:
/// one `kill(-pgid, 0)`, no `/proc` scan.
pub fn group_is_empty(pgid: i32) -> bool {
    pgid > 0 && killpg(Pid::from_raw(pgid), None) == Err(nix::errno::Errno::ESRCH)
}

/// Processes of `rec`'s group that are ours: started no earlier than the
/// leader and running from under the app's dir or carrying `SLIPWAY_APP`. While one of them lives, the
/// group id cannot have been reused, so signalling the group is safe even after
/// the leader (e.g. a shell wrapper) has died.
///
/// A group with no process at all is known without reading `/proc`: signal 0
/// to it fails with `ESRCH`. That is the usual answer once a stopped app has
/// exited, and it keeps a stop from reading the `stat` of every process on the
/// host (a scan that grows with the host's process count).
fn group_members(rec: &ProcRecord, app_root: &Path) -> Vec<i32> {
    if group_is_empty(rec.pid) {
        return Vec::new();
    }
    let root = std::fs::canonicalize(app_root).unwrap_or_else(|_| app_root.to_path_buf());
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some(close) = stat.rfind(')') else {
                return false;
            };
            let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
            let pgrp = fields.get(2).and_then(|f| f.parse::<i32>().ok());
            let state = fields.first().and_then(|f| f.chars().next());
            let started = fields.get(19).and_then(|f| f.parse::<u64>().ok());
            pgrp == Some(rec.pid)
                && !matches!(state, Some('Z' | 'X'))
                && started.is_some_and(|t| t >= rec.start_time)
                && (cwd(*pid).is_some_and(|c| c.starts_with(&root)) || started_by_slipway(*pid))
        })
        .collect()
}

/// Whether a process carries the `SLIPWAY_APP` variable the agent gives every
/// app process (inherited by its children, wherever they chdir to).
fn started_by_slipway(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| {
            env.split(|b| *b == 0)
                .any(|kv| kv.starts_with(b"SLIPWAY_APP="))
        })
        .unwrap_or(false)
}

/// Whether a process group a hook led (`leader` started at `start_time`)
/// still has members of ours, even if the leader itself is gone.
pub fn group_left(leader: i32, start_time: u64, app_root: &Path) -> bool {
    !group_members(&group_of(leader, start_time), app_root).is_empty()
}

/// SIGKILL to what is left of a hook's process group; true if anything was.
pub fn kill_group_left(leader: i32, start_time: u64, app_root: &Path) -> bool {
    let left = group_left(leader, start_time, app_root);
    if left {
        let _ = killpg(Pid::from_raw(leader), Signal::SIGKILL);
    }
    left
}

fn group_of(leader: i32, start_time: u64) -> ProcRecord {
    ProcRecord {
        pid: leader,
        start_time,
        ..ProcRecord::default()
    }
}

/// SIGKILL to the whole group, if it is still ours.
pub fn kill_group(rec: &ProcRecord) {
    if rec.alive() {
        let _ = killpg(Pid::from_raw(rec.pid), Signal::SIGKILL);
    }
}

/// SIGTERM to the process group, wait up to `grace` for every member to exit,
/// then SIGKILL the group; gives up waiting (with an error log) after 10 more
/// seconds rather than hang on a process stuck in the kernel.
pub async fn stop(paths: &AppPaths, rec: &ProcRecord, grace: Duration) {
    let pgid = Pid::from_raw(rec.pid);
    let gone = || !rec.alive() && group_members(rec, &paths.root).is_empty();
    if !gone() {
        let _ = killpg(pgid, Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + grace;
        while !gone() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !gone() {
            tracing::warn!(process = %rec.process, pid = rec.pid, "did not stop within grace period; killing");
            let _ = killpg(pgid, Signal::SIGKILL);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while !gone() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if !gone() {
                tracing::error!(process = %rec.process, pid = rec.pid, "process group survives SIGKILL (stuck in the kernel?)");
            }
        }
        tracing::info!(process = %rec.process, pid = rec.pid, "process stopped");
    }
    let _ = std::fs::remove_file(record_file(paths, rec));
}

/// Rotates every `logs/*.log` larger than `max` the way logrotate's
/// copytruncate does (the processes keep their O_APPEND descriptors):
/// `x.log.{n-1}` → `x.log.{n}`, copy `x.log` → `x.log.1`, truncate `x.log`.
pub fn rotate_logs(paths: &AppPaths, max: u64, keep: u32) {
    let Ok(dir) = std::fs::read_dir(&paths.logs) else {
        return;
    };
    for entry in dir.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "log") {
            continue;
        }
        if entry.metadata().map(|m| m.len()).unwrap_or(0) <= max {
            continue;
        }
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
        let _ = std::fs::remove_file(numbered(keep));
        for n in (1..keep).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        if std::fs::copy(&path, numbered(1)).is_ok()
            && let Ok(f) = OpenOptions::new().write(true).open(&path)
        {
            let _ = f.set_len(0);
        }
    }
}

/// The directory a process runs in, resolved (`/proc/<pid>/cwd`).
pub fn cwd(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

/// Whether the process runs from `dir` (or below it).
pub fn runs_from(pid: i32, dir: &Path) -> bool {
    let Some(cwd) = cwd(pid) else { return false };
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    cwd.starts_with(dir)
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    use super::*;

    #[test]
    fn a_group_is_empty_only_once_its_last_process_is_gone() {
        let mut child = Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .expect("spawn sleep");
        let pgid = child.id() as i32;
        assert!(
            !group_is_empty(pgid),
            "a group with a live process is not empty"
        );
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            group_is_empty(pgid),
            "a group whose process was reaped is empty"
        );
        assert!(!group_is_empty(0), "0 is never taken for an empty group");
    }

    /// The leader exits and leaves a member behind that ignores SIGTERM: the
    /// group is not empty, so the stop scans for it, waits out the grace
    /// period and kills it.
    #[tokio::test]
    async fn stop_kills_what_the_leader_left_in_its_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = AppPaths::new(dir.path(), "app");
        std::fs::create_dir_all(&paths.run).expect("run dir");
        let mut leader = Command::new("sh")
            .args(["-c", "trap '' TERM; sleep 30 >/dev/null & echo $!"])
            .current_dir(&paths.root)
            .process_group(0)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn sh");
        let pgid = leader.id() as i32;
        // Read before the wait: the leader may be a zombie already.
        let (_, start_time) = proc_stat(pgid).expect("leader start time");
        let mut out = String::new();
        std::io::Read::read_to_string(leader.stdout.as_mut().expect("stdout"), &mut out)
            .expect("read the member's pid");
        let _ = leader.wait();
        let member: i32 = out.trim().parse().expect("member pid");
        let rec = ProcRecord {
            process: "web".into(),
            pid: pgid,
            start_time,
            ..ProcRecord::default()
        };
        assert!(start_time_of_live(member), "the member outlives its leader");
        assert!(!group_is_empty(pgid));
        stop(&paths, &rec, Duration::from_millis(200)).await;
        // Reaped by init (or whoever adopted it) soon after the SIGKILL.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !group_is_empty(pgid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!start_time_of_live(member), "the member was killed");
    }

    fn start_time_of_live(pid: i32) -> bool {
        start_time(pid).is_some()
    }
}
