//! Installing a release on disk: safe unpack into `releases/<version>`, shared
//! files linked in, the `prepare` hook run in the new dir, `current` flipped
//! atomically, old releases pruned. Nothing here starts processes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use std::process::Stdio;
use std::time::Duration;

use artifact::spec::HookSpec;
use artifact::{Limits, Manifest};
use std::io::Read;

use tokio::io::AsyncReadExt;

use crate::config::RunAs;
use crate::follow::FollowReader;
use crate::paths::AppPaths;
use artifact::Digest;
use artifact::assemble::LocalFile;
use std::collections::HashMap;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("unpack: {0}")]
    Unpack(#[from] artifact::UnpackError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("shared {kind} {path} is missing on this host: create it first")]
    SharedMissing { kind: &'static str, path: PathBuf },
    #[error("release ships {0}, which is a shared path on the host: remove it from the release")]
    SharedConflict(String),
    #[error("prepare hook {0}")]
    Hook(String),
    #[error("manifest: {0}")]
    Manifest(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Unpacks the blob `blob` reads (as it downloads) into `releases/<version>`,
/// replacing a leftover dir of the same version (never the one `current`
/// points at). With `run_as`, the archive is read and written by a child
/// process running as the app's user (`slipway-agent unpack`, the blob piped
/// to its stdin), so a hostile archive never meets root: the tree it builds is
/// owned by that user and is moved into place by the agent.
pub async fn unpack_release(
    paths: &AppPaths,
    blob: Option<FollowReader>,
    manifest: &Manifest,
    local: LocalObjects,
    run_as: Option<RunAs>,
) -> Result<PathBuf, InstallError> {
    let dest = paths.release(&manifest.version);
    if dest.exists() {
        if paths.current_version().as_deref() == Some(manifest.version.as_str()) {
            // Already unpacked and active (an agent that lost its status.json):
            // the running tree is never replaced underneath its processes.
            return Ok(dest);
        }
        tokio::fs::remove_dir_all(&dest)
            .await
            .map_err(io_err(&dest))?;
    }
    let (manifest, dest2) = (manifest.clone(), dest.clone());
    tokio::task::spawn_blocking(move || -> Result<(), InstallError> {
        match run_as {
            None => install_tree(blob, &manifest, &dest2, &local),
            Some(user) => unpack_as(user, blob, &manifest, &local, &dest2),
        }
    })
    .await
    .map_err(|e| InstallError::Io {
        path: dest.clone(),
        source: std::io::Error::other(e),
    })??;
    Ok(dest)
}

/// Read size from the downloading blob.
const BLOB_BUFFER: usize = 256 * 1024;

/// Files of releases kept on this host, by content, checked unchanged: what a
/// format-2 install links instead of fetching.
pub type LocalObjects = HashMap<Digest, LocalFile>;

/// Builds the release tree at `dest`: a format-1 blob unpacked, or a format-2
/// tree assembled from `local` files and the object pack `blob` (None when
/// every object is local).
fn install_tree(
    blob: Option<impl std::io::Read + Send>,
    manifest: &Manifest,
    dest: &Path,
    local: &LocalObjects,
) -> Result<(), InstallError> {
    let limits = Limits::default();
    let synced = || crate::failpoint::hit("unpack-synced");
    let buffered = blob.map(|b| std::io::BufReader::with_capacity(BLOB_BUFFER, b));
    if manifest.blob.is_some() {
        let blob = buffered
            .ok_or_else(|| InstallError::Manifest("a format-1 release needs its blob".into()))?;
        artifact::unpack::unpack_into_with(blob, manifest, dest, &limits, synced)?;
    } else {
        artifact::assemble::assemble(buffered, manifest, dest, local, &limits, synced)?;
    }
    Ok(())
}

/// Most of the child's error output kept for the error message.
const CHILD_ERROR_BYTES: usize = 2048;

/// Runs `slipway-agent unpack` as `user` into a staging dir it owns, then moves
/// the finished tree to `dest`. Whatever happens, the staging dir is removed.
fn unpack_as(
    user: RunAs,
    blob: Option<FollowReader>,
    manifest: &Manifest,
    local: &LocalObjects,
    dest: &Path,
) -> Result<(), InstallError> {
    use std::os::unix::fs::DirBuilderExt;
    use std::os::unix::process::CommandExt;
    let parent = dest.parent().unwrap_or(Path::new("."));
    let name = dest
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("release");
    let stage = parent.join(format!(".stage-{name}-{}", std::process::id()));
    if stage.exists() {
        std::fs::remove_dir_all(&stage).map_err(io_err(&stage))?;
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&stage)
        .map_err(io_err(&stage))?;
    let result = (|| {
        nix::unistd::chown(
            &stage,
            Some(nix::unistd::Uid::from_raw(user.uid)),
            Some(nix::unistd::Gid::from_raw(user.gid)),
        )
        .map_err(|e| InstallError::Io {
            path: stage.clone(),
            source: e.into(),
        })?;
        let manifest_file = stage.join("manifest.json");
        std::fs::write(&manifest_file, manifest.to_canonical_bytes())
            .map_err(io_err(&manifest_file))?;
        let local_file = stage.join("local.json");
        let listed: Vec<(String, &LocalFile)> =
            local.iter().map(|(d, f)| (d.to_string(), f)).collect();
        let json = serde_json::to_vec(&listed)
            .map_err(|e| InstallError::Manifest(format!("local objects: {e}")))?;
        std::fs::write(&local_file, json).map_err(io_err(&local_file))?;
        let tree = stage.join("tree");
        let exe = std::env::current_exe().map_err(io_err(Path::new("/proc/self/exe")))?;
        let (stdin, mut pipe) = std::io::pipe().map_err(io_err(Path::new("pipe")))?;
        // The blob goes to the child as it downloads. A failed download ends
        // the copy early: the child sees a short blob and refuses it.
        // Not joined: a child that refuses the blob early is reported at
        // once, and the feeder ends on the broken pipe or when the fetch ends.
        if let Some(mut blob) = blob {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut blob, &mut pipe);
            });
        } else {
            drop(pipe);
        }
        let out = std::process::Command::new(&exe)
            .arg("unpack")
            .arg("--manifest")
            .arg(&manifest_file)
            .arg("--dest")
            .arg(&tree)
            .arg("--local")
            .arg(&local_file)
            .stdin(stdin)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env_clear()
            .current_dir(&stage)
            .uid(user.uid)
            .gid(user.gid)
            .output()
            .map_err(io_err(&exe))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let line = err
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            let line: String = line
                .trim_start_matches("error: ")
                .chars()
                .take(CHILD_ERROR_BYTES)
                .collect();
            return Err(InstallError::Unpack(artifact::UnpackError::Read(
                std::io::Error::other(format!("as uid {}: {line} ({})", user.uid, out.status)),
            )));
        }
        std::fs::rename(&tree, dest).map_err(io_err(dest))?;
        artifact::unpack::fsync_dir(parent)?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&stage);
    result
}

/// The child side of [`unpack_as`]: the manifest and the local objects from
/// files, the blob (or object pack) from stdin.
pub fn unpack_child(
    manifest: &Path,
    dest: &Path,
    local: Option<&Path>,
) -> Result<(), InstallError> {
    let limits = Limits::default();
    let mut bytes = Vec::new();
    std::fs::File::open(manifest)
        .and_then(|f| {
            std::io::Read::take(f, artifact::manifest::MAX_MANIFEST_BYTES as u64 + 1)
                .read_to_end(&mut bytes)
        })
        .map_err(io_err(manifest))?;
    let m = Manifest::from_canonical_bytes(&bytes, limits.max_entries, limits.max_total_bytes)
        .map_err(|e| InstallError::Manifest(e.to_string()))?;
    let mut objects = LocalObjects::new();
    if let Some(path) = local {
        let text = std::fs::read(path).map_err(io_err(path))?;
        let listed: Vec<(String, LocalFile)> = serde_json::from_slice(&text)
            .map_err(|e| InstallError::Manifest(format!("local objects: {e}")))?;
        for (d, f) in listed {
            let d = Digest::parse(&d).map_err(|e| InstallError::Manifest(e.to_string()))?;
            objects.insert(d, f);
        }
    }
    let nothing_wanted = m.blob.is_none() && artifact::assemble::wanted(&m, &objects).is_empty();
    let stdin = (!nothing_wanted).then(std::io::stdin);
    install_tree(stdin, &m, dest, &objects)
}

/// Links `shared/<path>` into the release for every shared file and dir of the spec.
pub fn link_shared(
    paths: &AppPaths,
    release: &Path,
    files: &[String],
    dirs: &[String],
) -> Result<(), InstallError> {
    for (kind, list) in [("file", files), ("dir", dirs)] {
        for rel in list {
            let shared = paths.shared.join(rel);
            if kind == "dir" {
                std::fs::create_dir_all(&shared).map_err(io_err(&shared))?;
            } else if !shared.is_file() {
                return Err(InstallError::SharedMissing {
                    kind: "file",
                    path: shared,
                });
            }
            let link = release.join(rel);
            if std::fs::symlink_metadata(&link).is_ok() {
                if std::fs::read_link(&link).ok().as_deref() == Some(shared.as_path()) {
                    continue; // linked by an earlier attempt
                }
                return Err(InstallError::SharedConflict(rel.clone()));
            }
            if let Some(parent) = link.parent() {
                std::fs::create_dir_all(parent).map_err(io_err(parent))?;
            }
            std::os::unix::fs::symlink(&shared, &link).map_err(io_err(&link))?;
        }
    }
    Ok(())
}

/// Runs a hook in `dir` with the app's env; returns the end of its output
/// (`HOOK_REPORT_CHARS`), every `secrets` value masked before anything is cut.
/// `started` is told the hook's pid (its process group) as soon as it runs.
pub async fn run_hook(
    hook: &HookSpec,
    dir: &Path,
    env: &BTreeMap<String, String>,
    secrets: &[String],
    run_as: Option<crate::config::RunAs>,
    started: impl FnOnce(i32),
) -> Result<String, InstallError> {
    run_hook_output(hook, dir, env, secrets, run_as, started)
        .await
        .map(|o| o.all)
}

/// What a hook printed, masked: stdout alone (its last 64 KiB), and both
/// streams together as reported (their last `HOOK_REPORT_CHARS`).
pub struct HookOutput {
    pub stdout: String,
    pub all: String,
}

/// `run_hook`, keeping stdout apart (a command whose output is data, such as
/// the list of pending migrations).
pub async fn run_hook_output(
    hook: &HookSpec,
    dir: &Path,
    env: &BTreeMap<String, String>,
    secrets: &[String],
    run_as: Option<crate::config::RunAs>,
    started: impl FnOnce(i32),
) -> Result<HookOutput, InstallError> {
    // Looked up as the child's execvp would, unless a user switch leaves
    // that to it (see `crate::program`).
    let program = match run_as {
        Some(_) if !hook.command[0].contains('/') => PathBuf::from(&hook.command[0]),
        _ => crate::program::resolve(&hook.command[0], dir, env.get("PATH").map(String::as_str)),
    };
    let mut cmd = tokio::process::Command::new(&program);
    cmd.arg0(&hook.command[0]);
    if let Some(r) = run_as {
        cmd.uid(r.uid).gid(r.gid);
    }
    let mut child = cmd
        .args(&hook.command[1..])
        .current_dir(dir)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills `sh -c` and what it started.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| InstallError::Hook(format!("{} could not start: {e}", program.display())))?;
    let pgid = child.id().map(|p| nix::unistd::Pid::from_raw(p as i32));
    crate::failpoint::hit("hook-spawned");
    if let Some(pgid) = pgid {
        started(pgid.as_raw());
    }
    // Dropped before the hook ends (a deploy timed out, the agent stops): the
    // whole group goes, not just its leader, so nothing of it runs on unseen.
    let mut guard = KillGroupOnDrop(pgid);
    let (out, err) = (child.stdout.take(), child.stderr.take());
    // Both pipes drained at once and to the end (a hook is never cut off by a
    // full pipe); only the tail is kept.
    let collect = async {
        let ((a, a_cut), (b, b_cut)) = tokio::join!(read_tail(out), read_tail(err));
        // Each stream masked on its own, before any cut of the whole.
        let mask = |bytes: &[u8], cut| {
            crate::envfile::redact_window(&String::from_utf8_lossy(bytes), secrets, cut)
        };
        let stdout = mask(&a, a_cut);
        let mut text = stdout.clone();
        text.push_str(&mask(&b, b_cut));
        HookOutput {
            stdout,
            all: crate::envfile::last_chars(&text, HOOK_REPORT_CHARS),
        }
    };
    let run = async {
        let (output, status) = tokio::join!(collect, child.wait());
        (output, status)
    };
    let Ok((output, status)) =
        tokio::time::timeout(Duration::from_secs(hook.timeout_secs), run).await
    else {
        drop(guard);
        return Err(InstallError::Hook(format!(
            "timed out after {}s (killed)",
            hook.timeout_secs
        )));
    };
    guard.0 = None;
    let status = status.map_err(|e| InstallError::Hook(format!("wait: {e}")))?;
    if !status.success() {
        return Err(InstallError::Hook(format!(
            "failed ({status}): {}",
            output.all.trim()
        )));
    }
    Ok(output)
}

/// Characters of hook output reported (after masking).
pub const HOOK_REPORT_CHARS: usize = 2000;

/// SIGKILL to a hook's process group unless disarmed.
struct KillGroupOnDrop(Option<nix::unistd::Pid>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::SIGKILL);
        }
    }
}

/// Reads a pipe to its end, keeping the last 64 KiB; true if more came.
async fn read_tail(pipe: Option<impl tokio::io::AsyncRead + Unpin>) -> (Vec<u8>, bool) {
    const KEEP: usize = 64 * 1024;
    let mut kept = Vec::new();
    let mut cut = false;
    let Some(mut p) = pipe else {
        return (kept, cut);
    };
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = p.read(&mut buf).await {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > 2 * KEEP {
            kept.drain(..kept.len() - KEEP);
            cut = true;
        }
    }
    if kept.len() > KEEP {
        kept.drain(..kept.len() - KEEP);
        cut = true;
    }
    (kept, cut)
}

/// Points `current` at `releases/<version>` atomically: a new symlink under a temp
/// name, renamed over the old one, then the dir fsynced.
pub fn flip_current(paths: &AppPaths, version: &str) -> Result<(), InstallError> {
    let tmp = paths.root.join(format!(".current-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(Path::new("releases").join(version), &tmp).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &paths.current).map_err(io_err(&paths.current))?;
    std::fs::File::open(&paths.root)
        .and_then(|d| d.sync_all())
        .map_err(io_err(&paths.root))
}

/// Removes what an interrupted unpack left in `releases/` (temp and staging
/// dirs); release dirs themselves are left alone.
pub fn remove_staging(paths: &AppPaths) {
    let Ok(dir) = std::fs::read_dir(&paths.releases) else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".tmp-") || name.starts_with(".stage-") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Removes `current` (first deploy failed: nothing to fall back to).
pub fn clear_current(paths: &AppPaths) {
    let _ = std::fs::remove_file(&paths.current);
}

/// Keeps the `keep` most recently activated releases plus current and previous;
/// removes every other release dir and leftover temp dir.
pub fn prune(paths: &AppPaths, history: &[String], keep: usize, protect: &[&str]) -> Vec<String> {
    let mut kept: Vec<&str> = history
        .iter()
        .rev()
        .take(keep)
        .map(String::as_str)
        .collect();
    kept.extend_from_slice(protect);
    let mut removed = Vec::new();
    let Ok(dir) = std::fs::read_dir(&paths.releases) else {
        return removed;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if kept.contains(&name.as_str()) {
            continue;
        }
        if std::fs::remove_dir_all(entry.path()).is_ok() {
            removed.push(name);
        }
    }
    removed.sort();
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flip_replaces_the_link_and_prune_keeps_current_and_previous() {
        let d = tempfile::tempdir().unwrap();
        let paths = AppPaths::new(d.path(), "web");
        paths.create().unwrap();
        for v in ["1", "2", "3", "4", "bad"] {
            std::fs::create_dir_all(paths.release(v)).unwrap();
        }
        flip_current(&paths, "3").unwrap();
        assert_eq!(paths.current_version().as_deref(), Some("3"));
        flip_current(&paths, "4").unwrap();
        assert_eq!(paths.current_version().as_deref(), Some("4"));
        let history: Vec<String> = ["1", "2", "3", "4"].map(String::from).to_vec();
        let removed = prune(&paths, &history, 2, &["4", "3"]);
        assert_eq!(removed, vec!["1", "2", "bad"]);
        assert!(paths.release("3").exists() && paths.release("4").exists());
    }

    fn hook(script: &str, timeout_secs: u64) -> HookSpec {
        toml::from_str(&format!(
            "command = [\"sh\", \"-c\", {script:?}]\ntimeout_secs = {timeout_secs}"
        ))
        .unwrap()
    }

    #[tokio::test]
    async fn a_hook_dropped_mid_run_takes_its_whole_group_with_it() {
        let d = tempfile::tempdir().unwrap();
        let pid_file = d.path().join("grandchild.pid");
        // The grandchild outlives its parent shell unless the group is killed.
        let script = format!("sleep 60 & echo $! > {}; wait", pid_file.display());
        let h = hook(&script, 120);
        let env = BTreeMap::new();
        let run = run_hook(&h, d.path(), &env, &[], None, |_| {});
        let dropped = tokio::time::timeout(Duration::from_millis(500), run).await;
        assert!(dropped.is_err(), "still running when dropped");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while crate::supervisor::start_time(pid).is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "grandchild {pid} survived"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[tokio::test]
    async fn hook_output_is_masked_before_it_is_cut() {
        let d = tempfile::tempdir().unwrap();
        let secret = "postgres://u:TOPSECRET-4242@db/app".to_string();
        let env = BTreeMap::from([("DATABASE_URL".to_string(), secret.clone())]);
        // The secret straddles the point where the reported tail begins.
        let pad = HOOK_REPORT_CHARS - 10;
        let script = format!("printf '%s%0{pad}d' \"$DATABASE_URL\" 0; exit 1");
        let e = run_hook(
            &hook(&script, 10),
            d.path(),
            &env,
            std::slice::from_ref(&secret),
            None,
            |_| {},
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(!e.contains("4242@db"), "{e}");
        assert!(!e.contains("@db/app"), "{e}");
        assert!(e.contains("***"), "{e}");
    }
}
