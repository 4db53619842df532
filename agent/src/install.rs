//! Installing a release on disk: safe unpack into `releases/<version>`, shared
//! files linked in, the `prepare` hook run in the new dir, `current` flipped
//! atomically, old releases pruned. Nothing here starts processes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use artifact::spec::HookSpec;
use artifact::{Limits, Manifest};
use tokio::io::AsyncReadExt;

use crate::paths::AppPaths;

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
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Unpacks the blob at `blob` into `releases/<version>`, replacing a leftover dir
/// of the same version (never the one `current` points at).
pub async fn unpack_release(
    paths: &AppPaths,
    blob: &Path,
    manifest: &Manifest,
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
    let (blob, manifest, dest2) = (blob.to_path_buf(), manifest.clone(), dest.clone());
    tokio::task::spawn_blocking(move || -> Result<(), InstallError> {
        let file = std::fs::File::open(&blob).map_err(io_err(&blob))?;
        artifact::unpack_into(
            std::io::BufReader::new(file),
            &manifest,
            &dest2,
            &Limits::default(),
        )?;
        Ok(())
    })
    .await
    .map_err(|e| InstallError::Io {
        path: dest.clone(),
        source: std::io::Error::other(e),
    })??;
    Ok(dest)
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

/// Runs a hook in `dir` with the app's env; returns the tail of its output.
pub async fn run_hook(
    hook: &HookSpec,
    dir: &Path,
    env: &BTreeMap<String, String>,
    run_as: Option<crate::config::RunAs>,
) -> Result<String, InstallError> {
    let program = if hook.command[0].contains('/') && !hook.command[0].starts_with('/') {
        dir.join(&hook.command[0])
    } else {
        PathBuf::from(&hook.command[0])
    };
    let mut cmd = tokio::process::Command::new(&program);
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
    let (out, err) = (child.stdout.take(), child.stderr.take());
    // Both pipes drained at once and to the end (a hook is never cut off by a
    // full pipe); only the tail is kept.
    let collect = async {
        let (mut a, b) = tokio::join!(read_tail(out), read_tail(err));
        a.extend_from_slice(&b);
        a
    };
    let run = async {
        let (output, status) = tokio::join!(collect, child.wait());
        (output, status)
    };
    let Ok((output, status)) =
        tokio::time::timeout(Duration::from_secs(hook.timeout_secs), run).await
    else {
        if let Some(pgid) = pgid {
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::SIGKILL);
        }
        return Err(InstallError::Hook(format!(
            "timed out after {}s (killed)",
            hook.timeout_secs
        )));
    };
    let text = String::from_utf8_lossy(&output);
    let tail: String = text
        .chars()
        .rev()
        .take(2000)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let status = status.map_err(|e| InstallError::Hook(format!("wait: {e}")))?;
    if !status.success() {
        return Err(InstallError::Hook(format!(
            "failed ({status}): {}",
            tail.trim()
        )));
    }
    Ok(tail)
}

/// Reads a pipe to its end, keeping the last 64 KiB.
async fn read_tail(pipe: Option<impl tokio::io::AsyncRead + Unpin>) -> Vec<u8> {
    const KEEP: usize = 64 * 1024;
    let mut kept = Vec::new();
    let Some(mut p) = pipe else { return kept };
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = p.read(&mut buf).await {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > 2 * KEEP {
            kept.drain(..kept.len() - KEEP);
        }
    }
    if kept.len() > KEEP {
        kept.drain(..kept.len() - KEEP);
    }
    kept
}

/// Hands a release tree to the app's user (no symlink is followed).
pub fn chown_tree(root: &Path, run_as: crate::config::RunAs) -> Result<(), InstallError> {
    use nix::unistd::{Gid, Uid};
    let (uid, gid) = (
        Some(Uid::from_raw(run_as.uid)),
        Some(Gid::from_raw(run_as.gid)),
    );
    let chown = |p: &Path| {
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            p,
            uid,
            gid,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| InstallError::Io {
            path: p.to_path_buf(),
            source: e.into(),
        })
    };
    chown(root)?;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
            let path = entry.path();
            chown(&path)?;
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            }
        }
    }
    Ok(())
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
}
