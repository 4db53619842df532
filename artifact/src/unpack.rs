//! Safe unpack: every tar entry must match the next manifest entry exactly (path,
//! type, mode, size, content digest, link target). Anything else fails the whole
//! release; nothing is ever skipped or sanitised. The tree is built in a private
//! temp dir beside the destination; on any error the temp dir is removed and the
//! destination untouched.
//!
//! Speed: decoding runs on its own thread ahead of the tar reader, which hashes
//! and writes (two cores, like `zstd -d | tar -x`). Durability: no fsync per
//! entry; one `syncfs` of the filesystem once every entry is written and the
//! blob has verified, *then* the rename into place (and an fsync of the parent).
//! A release dir therefore only ever exists under its name once all its bytes
//! are on disk, which is what `current` is flipped to.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::digest::{Digest, HashingWriter};
use crate::manifest::{EntryKind, Manifest};
use crate::tar_guard::HeaderGuard;

/// Bounds applied while unpacking (defaults suit a typical web app).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_entries: usize,
    pub max_total_bytes: u64,
    /// zstd window log accepted from the blob (memory bound of the decoder).
    pub window_log_max: u32,
}

/// Default bounds, shared with the controller so both refuse the same releases.
pub const MAX_ENTRIES: usize = 200_000;
pub const MAX_TOTAL_BYTES: u64 = 8 << 30;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_entries: MAX_ENTRIES,
            max_total_bytes: MAX_TOTAL_BYTES,
            window_log_max: 24,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("manifest: {0}")]
    Manifest(#[from] crate::manifest::ManifestError),
    #[error("read archive: {0}")]
    Read(#[source] io::Error),
    #[error("write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("archive entry {path:?}: {why}")]
    Entry { path: String, why: String },
    #[error("archive ends before manifest entry {0:?}")]
    Missing(String),
    #[error("destination {0} already exists")]
    Exists(PathBuf),
    #[error(
        "blob is {got_size} bytes hashing to {got}; the manifest names {want} ({want_size} bytes)"
    )]
    Blob {
        want: String,
        want_size: u64,
        got: Digest,
        got_size: u64,
    },
}

pub(crate) fn entry_err(path: &str, why: impl Into<String>) -> UnpackError {
    UnpackError::Entry {
        path: path.chars().take(200).collect(),
        why: why.into(),
    }
}

pub(crate) fn write_err(path: &Path) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// Unpacks the tar+zstd `blob` described by `manifest` into `dest` (which must not
/// exist) via a temp dir in the same parent, then renames it into place. The
/// blob is read to its end and must hash to the manifest's blob digest before
/// anything is renamed, so a stream that is cut or altered anywhere, even after
/// the last entry, leaves nothing behind.
pub fn unpack_into(
    blob: impl Read + Send,
    manifest: &Manifest,
    dest: &Path,
    limits: &Limits,
) -> Result<(), UnpackError> {
    unpack_into_with(blob, manifest, dest, limits, || {})
}

/// [`unpack_into`], calling `synced` once the tree is on disk and before it
/// is renamed into place (the agent's crash tests kill it there).
pub fn unpack_into_with(
    blob: impl Read + Send,
    manifest: &Manifest,
    dest: &Path,
    limits: &Limits,
    synced: impl FnOnce(),
) -> Result<(), UnpackError> {
    manifest.validate(limits.max_entries, limits.max_total_bytes)?;
    build_beside(dest, synced, |tmp| unpack_tree(blob, manifest, tmp, limits))
}

/// Builds a tree with `fill` in a private temp dir beside `dest` (which must
/// not exist), then syncs the filesystem, calls `synced`, renames the dir to
/// `dest` and fsyncs the parent. On any error the temp dir is removed.
pub(crate) fn build_beside(
    dest: &Path,
    synced: impl FnOnce(),
    fill: impl FnOnce(&Path) -> Result<(), UnpackError>,
) -> Result<(), UnpackError> {
    if fs::symlink_metadata(dest).is_ok() {
        return Err(UnpackError::Exists(dest.to_path_buf()));
    }
    let parent = dest
        .parent()
        .ok_or_else(|| UnpackError::Exists(dest.to_path_buf()))?;
    let name = dest
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("release");
    let tmp = parent.join(format!(".tmp-{name}-{}", std::process::id()));
    if fs::symlink_metadata(&tmp).is_ok() {
        fs::remove_dir_all(&tmp).map_err(write_err(&tmp))?;
    }
    DirBuilder::new()
        .mode(0o700)
        .create(&tmp)
        .map_err(write_err(&tmp))?;
    let result = with_writeback(&tmp, || fill(&tmp)).and_then(|()| {
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).map_err(write_err(&tmp))?;
        // Every byte of the tree reaches the disk before its name appears.
        sync_filesystem(&tmp)?;
        synced();
        fs::rename(&tmp, dest).map_err(write_err(dest))?;
        fsync_dir(parent)
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

/// How often [`with_writeback`] starts the disk on what was written.
const WRITEBACK_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// Runs `build` while a thread `syncfs`es the filesystem of `dir` every
/// [`WRITEBACK_EVERY`]: the tree goes to disk while it is still being
/// written (the kernel would otherwise hold it all dirty until the final
/// sync), so the sync before the rename waits for little more than the last
/// moments' writes. Durability still rests on that final sync alone.
fn with_writeback<T>(dir: &Path, build: impl FnOnce() -> T) -> T {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let Ok(fs) = File::open(dir) else {
                return;
            };
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(WRITEBACK_EVERY)
            {
                let _ = nix::unistd::syncfs(&fs);
            }
        });
        let out = build();
        drop(stop);
        out
    })
}

fn unpack_tree(
    blob: impl Read + Send,
    manifest: &Manifest,
    root: &Path,
    limits: &Limits,
) -> Result<(), UnpackError> {
    let Some(want) = manifest.blob.as_ref() else {
        return Err(UnpackError::Manifest(crate::manifest::ManifestError::Blob(
            manifest.format,
            "names no blob: install it from objects",
        )));
    };
    // The tar reader can never see more than the manifest's content plus headers:
    // a zstd bomb stops here, not when the disk is full.
    let header_budget = (manifest.entries.len() as u64 + 8) * 4096;
    let bound = manifest.content_bytes().saturating_add(header_budget);
    let ((), got, got_size) =
        crate::decode::with_decoded(blob, want.size, bound, limits.window_log_max, |decoded| {
            write_entries(decoded, manifest, root)
        })?;
    if got.to_string() != want.digest || got_size != want.size {
        return Err(UnpackError::Blob {
            want: want.digest.clone(),
            want_size: want.size,
            got,
            got_size,
        });
    }
    Ok(())
}

/// The process umask (from `/proc/self/status`; read once): a file created
/// with a mode it masks needs an explicit chmod, others do not.
pub(crate) fn umask() -> u32 {
    static UMASK: OnceLock<u32> = OnceLock::new();
    *UMASK.get_or_init(|| {
        fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Umask:"))
                    .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            })
            .unwrap_or(0o777)
    })
}

fn write_entries(decoded: impl Read, manifest: &Manifest, root: &Path) -> Result<(), UnpackError> {
    // Extension records (PAX, GNU long names) are bounded before tar reads them.
    let mut archive = tar::Archive::new(HeaderGuard::new(decoded));
    let mut expected = manifest.entries.iter();
    let mut dirs = Vec::new();
    let umask = umask();

    for entry in archive.entries().map_err(UnpackError::Read)? {
        let mut entry = entry.map_err(UnpackError::Read)?;
        let raw_path = entry.path_bytes().into_owned();
        let path = std::str::from_utf8(&raw_path)
            .map_err(|_| entry_err(&String::from_utf8_lossy(&raw_path), "path is not UTF-8"))?;
        let header_type = entry.header().entry_type();
        let path = if header_type.is_dir() {
            path.strip_suffix('/').unwrap_or(path)
        } else {
            path
        };
        let Some(want) = expected.next() else {
            return Err(entry_err(
                path,
                "not in the manifest (archive has more entries)",
            ));
        };
        if want.path != path {
            return Err(entry_err(
                path,
                format!(
                    "not in the manifest at this position (expected {:?})",
                    want.path
                ),
            ));
        }
        let kind = match header_type {
            tar::EntryType::Regular => EntryKind::File,
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Symlink => EntryKind::Symlink,
            tar::EntryType::Link => return Err(entry_err(path, "hardlinks are not allowed")),
            other => {
                return Err(entry_err(
                    path,
                    format!("entry type {other:?} is not allowed"),
                ));
            }
        };
        if kind != want.kind {
            return Err(entry_err(
                path,
                format!("is a {kind:?}, manifest says {:?}", want.kind),
            ));
        }
        let mode = entry.header().mode().map_err(UnpackError::Read)?;
        if mode & 0o7777 != want.mode {
            return Err(entry_err(
                path,
                format!("mode {mode:o} differs from manifest {:o}", want.mode),
            ));
        }
        let size = entry.header().size().map_err(UnpackError::Read)?;
        if size != want.size {
            return Err(entry_err(
                path,
                format!("size {size} differs from manifest {}", want.size),
            ));
        }
        let out = root.join(path);
        match kind {
            EntryKind::Dir => {
                DirBuilder::new()
                    .mode(0o700)
                    .create(&out)
                    .map_err(write_err(&out))?;
                dirs.push((out, want.mode));
            }
            EntryKind::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| entry_err(path, "symlink without target"))?
                    .into_owned();
                if Some(target.as_slice()) != want.target.as_deref().map(str::as_bytes) {
                    return Err(entry_err(path, "symlink target differs from manifest"));
                }
                let target = std::str::from_utf8(&target)
                    .map_err(|_| entry_err(path, "target is not UTF-8"))?;
                symlink(target, &out).map_err(write_err(&out))?;
            }
            EntryKind::File => {
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(want.mode)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .open(&out)
                    .map_err(write_err(&out))?;
                let mut w = HashingWriter::new(file);
                let copied =
                    io::copy(&mut (&mut entry).take(size), &mut w).map_err(UnpackError::Read)?;
                let (file, digest, _) = w.finish();
                if copied != size {
                    return Err(entry_err(path, "archive truncated inside this file"));
                }
                let want_digest = want.sha256.as_deref().unwrap_or_default();
                if digest
                    != Digest::parse(want_digest).map_err(|e| entry_err(path, e.to_string()))?
                {
                    return Err(entry_err(
                        path,
                        format!("content digest {digest} differs from manifest"),
                    ));
                }
                if want.mode & umask != 0 {
                    // The umask masked the create mode; set it exactly.
                    file.set_permissions(fs::Permissions::from_mode(want.mode))
                        .map_err(write_err(&out))?;
                }
            }
        }
    }
    if let Some(missing) = expected.next() {
        return Err(UnpackError::Missing(missing.path.clone()));
    }
    // Directory modes last (deepest first), so a read-only directory can still be
    // filled.
    for (dir, mode) in dirs.iter().rev() {
        fs::set_permissions(dir, fs::Permissions::from_mode(*mode)).map_err(write_err(dir))?;
    }
    Ok(())
}

/// Flushes the whole filesystem holding `path` to disk (`syncfs`): one call
/// instead of an fsync per file and directory.
pub fn sync_filesystem(path: &Path) -> Result<(), UnpackError> {
    let dir = File::open(path).map_err(write_err(path))?;
    nix::unistd::syncfs(&dir).map_err(|e| UnpackError::Write {
        path: path.to_path_buf(),
        source: e.into(),
    })
}

/// fsync a directory so renames and creations inside it are durable.
pub fn fsync_dir(dir: &Path) -> Result<(), UnpackError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(write_err(dir))
}

/// Writes `bytes` to `path` durably: temp file beside it, fsync, rename, fsync dir.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::pack_dir;
    use std::os::unix::fs::symlink;

    fn sample_tree(dir: &Path) {
        fs::create_dir_all(dir.join("bin")).unwrap();
        fs::write(dir.join("bin/app"), b"#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(dir.join("bin/app"), fs::Permissions::from_mode(0o775)).unwrap();
        fs::write(
            dir.join("slipway.toml"),
            b"[processes.web]\ncommand = [\"bin/app\"]\n",
        )
        .unwrap();
        fs::create_dir_all(dir.join("a-b")).unwrap();
        fs::write(dir.join("a-b/x"), vec![7u8; 100_000]).unwrap();
        symlink("bin/app", dir.join("run")).unwrap();
        fs::create_dir_all(dir.join(".git")).unwrap();
        fs::write(dir.join(".git/HEAD"), b"ref").unwrap();
    }

    fn packed(dir: &Path) -> (Vec<u8>, Manifest) {
        let mut blob = Vec::new();
        let out = pack_dir(dir, &mut blob).unwrap();
        (blob, out.into_manifest("web", "1.0.0", None))
    }

    #[test]
    fn packing_is_deterministic_and_round_trips() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        sample_tree(&src);
        let (blob1, m1) = packed(&src);
        // Touch every mtime and repack: same bytes.
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(
            src.join("slipway.toml"),
            b"[processes.web]\ncommand = [\"bin/app\"]\n",
        )
        .unwrap();
        let (blob2, m2) = packed(&src);
        assert_eq!(Digest::of(&blob1), Digest::of(&blob2));
        assert_eq!(m1.digest(), m2.digest());
        assert_eq!(
            m1.blob.as_ref().unwrap().digest,
            Digest::of(&blob1).to_string()
        );
        assert!(m1.entries.iter().all(|e| !e.path.starts_with(".git")));

        let dest = t.path().join("releases/1.0.0");
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        unpack_into(&blob1[..], &m1, &dest, &Limits::default()).unwrap();
        assert_eq!(fs::read(dest.join("a-b/x")).unwrap(), vec![7u8; 100_000]);
        assert_eq!(
            fs::read_link(dest.join("run")).unwrap(),
            Path::new("bin/app")
        );
        let mode = fs::metadata(dest.join("bin/app"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o755, "modes are normalised");
    }

    #[test]
    fn the_blob_is_the_same_whatever_the_number_of_compression_workers() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(&src).unwrap();
        // Enough data for several zstd jobs, compressible but not trivially.
        for i in 0..24u32 {
            let body: Vec<u8> = (0..1_000_000u32)
                .map(|j| ((j / 7) ^ (j % 251) ^ i) as u8)
                .collect();
            fs::write(src.join(format!("f{i}")), body).unwrap();
        }
        let blobs: Vec<Vec<u8>> = [1, 2, 4]
            .into_iter()
            .map(|workers| {
                let mut blob = Vec::new();
                crate::pack::pack_dir_with(&src, &mut blob, workers).unwrap();
                blob
            })
            .collect();
        assert!(blobs[0].len() < 24_000_000, "compressed");
        assert!(
            blobs.iter().all(|b| b == &blobs[0]),
            "same bytes from 1, 2 and 4 workers"
        );
    }

    #[test]
    fn a_blob_altered_after_its_last_entry_is_refused_and_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        sample_tree(&src);
        let (blob, m) = packed(&src);
        let releases = t.path().join("releases");
        fs::create_dir_all(&releases).unwrap();
        // Bytes appended after the zstd frame: every entry still matches.
        let mut longer = blob.clone();
        longer.extend_from_slice(b"trailing");
        let err =
            unpack_into(&longer[..], &m, &releases.join("1"), &Limits::default()).unwrap_err();
        assert!(matches!(err, UnpackError::Blob { .. }), "{err}");
        // The manifest naming another blob of the same tree.
        let mut other = m.clone();
        other.blob.as_mut().unwrap().digest = Digest::of(b"another blob").to_string();
        let err =
            unpack_into(&blob[..], &other, &releases.join("1"), &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("hashing to"), "{err}");
        // Cut short inside the last frame.
        let err = unpack_into(
            &blob[..blob.len() - 3],
            &m,
            &releases.join("1"),
            &Limits::default(),
        )
        .unwrap_err();
        assert!(!matches!(err, UnpackError::Exists(_)), "{err}");
        assert_eq!(fs::read_dir(&releases).unwrap().count(), 0, "nothing left");
        unpack_into(&blob[..], &m, &releases.join("1"), &Limits::default()).unwrap();
    }

    #[test]
    fn refuses_a_blob_that_differs_from_its_manifest_and_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        sample_tree(&src);
        let (blob, mut m) = packed(&src);
        let idx = m.entries.iter().position(|e| e.path == "a-b/x").unwrap();
        m.entries[idx].sha256 = Some(Digest::of(b"other").to_string());
        let dest = t.path().join("releases/1.0.0");
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        let err = unpack_into(&blob[..], &m, &dest, &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("content digest"), "{err}");
        assert_eq!(
            fs::read_dir(dest.parent().unwrap()).unwrap().count(),
            0,
            "no temp dir left behind"
        );
    }

    #[test]
    fn refuses_entries_the_manifest_does_not_list() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        sample_tree(&src);
        let (blob, mut m) = packed(&src);
        m.entries.retain(|e| e.path != "run");
        let dest = t.path().join("out");
        let err = unpack_into(&blob[..], &m, &dest, &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("not in the manifest"), "{err}");
        assert!(!dest.exists());
    }

    /// A hand-made hostile archive: the tar crate would silently drop the `..`
    /// entry; we refuse the whole release instead.
    #[test]
    fn refuses_hostile_entries() {
        let t = tempfile::tempdir().unwrap();
        for (name, kind) in [
            ("../evil", tar::EntryType::Regular),
            ("dev", tar::EntryType::Char),
            ("h", tar::EntryType::Link),
        ] {
            let mut tarball = Vec::new();
            {
                let mut b = tar::Builder::new(&mut tarball);
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(kind);
                h.set_size(0);
                h.set_mode(0o644);
                // set_path refuses `..`; write the raw name bytes like an attacker would.
                let raw = &mut h.as_old_mut().name;
                raw[..name.len()].copy_from_slice(name.as_bytes());
                h.set_cksum();
                b.append(&h, io::empty()).unwrap();
                b.finish().unwrap();
            }
            let blob = zstd::encode_all(&tarball[..], 3).unwrap();
            let m = Manifest {
                format: 1,
                app: "web".into(),
                version: "1".into(),
                git_commit: None,
                blob: Some(crate::manifest::BlobRef {
                    digest: Digest::of(&blob).to_string(),
                    size: blob.len() as u64,
                }),
                entries: vec![crate::manifest::Entry {
                    path: "x".into(),
                    kind: EntryKind::File,
                    mode: 0o644,
                    size: 0,
                    sha256: Some(Digest::of(b"").to_string()),
                    target: None,
                }],
            };
            let dest = t.path().join(format!("out-{}", name.len()));
            let err = unpack_into(&blob[..], &m, &dest, &Limits::default()).unwrap_err();
            assert!(matches!(err, UnpackError::Entry { .. }), "{name}: {err}");
            assert!(!dest.exists());
            assert!(!t.path().join("evil").exists());
        }
    }
}
