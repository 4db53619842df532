//! Deterministic packing: the same tree always gives the same tar+zstd bytes and so
//! the same digest. Entries are sorted, mtime/uid/gid/owner names are zeroed, modes
//! normalised to 0644/0755; only regular files, directories and relative symlinks
//! that stay inside the tree are accepted.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::digest::{Digest, HashingReader, HashingWriter};
use crate::manifest::{BlobRef, Entry, EntryKind, FORMAT_BLOB, Manifest};

/// zstd level used for releases: fast, and fixed so output stays deterministic.
const ZSTD_LEVEL: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("write archive: {0}")]
    Write(#[source] io::Error),
    #[error("{path}: {why}")]
    Unsupported { path: PathBuf, why: String },
    #[error("{0}: file changed while it was being packed")]
    Changed(PathBuf),
    #[error("invalid release tree: {0}")]
    Manifest(#[from] crate::manifest::ManifestError),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PackError + '_ {
    move |source| PackError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What packing produced: the entries for the manifest and the blob's identity.
#[derive(Debug, Clone)]
pub struct PackOutput {
    pub entries: Vec<Entry>,
    pub blob_digest: Digest,
    pub blob_size: u64,
}

impl PackOutput {
    pub fn into_manifest(self, app: &str, version: &str, git_commit: Option<String>) -> Manifest {
        Manifest {
            format: FORMAT_BLOB,
            app: app.to_string(),
            version: version.to_string(),
            git_commit,
            blob: Some(BlobRef {
                digest: self.blob_digest.to_string(),
                size: self.blob_size,
            }),
            entries: self.entries,
        }
    }
}

/// Packs `src` into `out` as tar+zstd, streaming (one file open at a time, no
/// whole-file buffers), compressing on every core. `.git` directories are left
/// out.
pub fn pack_dir<W: Write>(src: &Path, out: W) -> Result<PackOutput, PackError> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    pack_dir_with(src, out, cores as u32)
}

/// [`pack_dir`] with `workers` compression threads. zstd's multithreaded
/// output does not depend on the number of workers (from one on), so the blob
/// and its digest are the same on any machine.
pub fn pack_dir_with<W: Write>(src: &Path, out: W, workers: u32) -> Result<PackOutput, PackError> {
    let mut paths = Vec::new();
    walk(src, "", &mut paths)?;
    // Byte order of the whole path (not depth-first order): "a-b" sorts before "a/x".
    // A directory still precedes its content since a prefix sorts first.
    paths.sort_by(|a, b| a.0.cmp(&b.0));

    let mut builder = tar_zstd(out, workers)?;

    let mut entries = Vec::with_capacity(paths.len());
    for (rel, full) in paths {
        let meta = fs::symlink_metadata(&full).map_err(io_err(&full))?;
        let ft = meta.file_type();
        let mut header = fixed_header();
        if ft.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            builder
                .append_data(&mut header, &rel, io::empty())
                .map_err(PackError::Write)?;
            entries.push(Entry {
                path: rel,
                kind: EntryKind::Dir,
                mode: 0o755,
                size: 0,
                sha256: None,
                target: None,
            });
        } else if ft.is_symlink() {
            let target = link_target(&full)?;
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_mode(0o777);
            header.set_size(0);
            builder
                .append_link(&mut header, &rel, &target)
                .map_err(PackError::Write)?;
            entries.push(Entry {
                path: rel,
                kind: EntryKind::Symlink,
                mode: 0o777,
                size: 0,
                sha256: None,
                target: Some(target),
            });
        } else if ft.is_file() {
            let mode = if meta.permissions().mode() & 0o100 != 0 {
                0o755
            } else {
                0o644
            };
            let size = meta.len();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(mode);
            header.set_size(size);
            let file = File::open(&full).map_err(io_err(&full))?;
            let mut reader = HashingReader::new(file.take(size));
            builder
                .append_data(&mut header, &rel, &mut reader)
                .map_err(|e| match e.kind() {
                    io::ErrorKind::UnexpectedEof => PackError::Changed(full.clone()),
                    _ => PackError::Write(e),
                })?;
            let (digest, n) = reader.finish();
            if n != size {
                return Err(PackError::Changed(full));
            }
            entries.push(Entry {
                path: rel,
                kind: EntryKind::File,
                mode,
                size,
                sha256: Some(digest.to_string()),
                target: None,
            });
        } else {
            return Err(PackError::Unsupported {
                path: full,
                why: "only regular files, directories and symlinks can be released (devices, fifos and sockets cannot)".into(),
            });
        }
    }

    let encoder = builder.into_inner().map_err(PackError::Write)?;
    let hashing = encoder.finish().map_err(PackError::Write)?;
    let (mut inner, blob_digest, blob_size) = hashing.finish();
    inner.flush().map_err(PackError::Write)?;
    let out = PackOutput {
        entries,
        blob_digest,
        blob_size,
    };
    // Validate what we are about to publish with the same rules agents apply.
    out.clone()
        .into_manifest("check", "check", None)
        .validate(usize::MAX, u64::MAX)?;
    Ok(out)
}

/// Input each zstd worker compresses at a time.
const JOB_BYTES: u32 = 4 << 20;

/// A deterministic tar builder over a zstd encoder (level 3, checksummed,
/// `workers` threads) over a hashing writer: what every Slipway archive is.
/// From one worker on, the bytes do not depend on the count; `0` compresses
/// on the calling thread (other bytes, same content, fewer buffers).
pub(crate) fn tar_zstd<W: Write>(
    out: W,
    workers: u32,
) -> Result<tar::Builder<zstd::stream::Encoder<'static, HashingWriter<W>>>, PackError> {
    let hashing = HashingWriter::new(out);
    let mut encoder = zstd::stream::Encoder::new(hashing, ZSTD_LEVEL).map_err(PackError::Write)?;
    if workers > 0 {
        encoder.multithread(workers).map_err(PackError::Write)?;
        // 4 MiB jobs, not level 3's default 8 MiB: a controller building a
        // 207 MiB release's pack on two workers peaked at 53 MiB instead of
        // 78 MiB, for 0.8% more bytes (1 MiB jobs: 35 MiB, 6% more bytes).
        encoder
            .set_parameter(zstd::zstd_safe::CParameter::JobSize(JOB_BYTES))
            .map_err(PackError::Write)?;
    }
    encoder.include_checksum(true).map_err(PackError::Write)?;
    encoder
        .include_contentsize(false)
        .map_err(PackError::Write)?;
    let mut builder = tar::Builder::new(encoder);
    builder.mode(tar::HeaderMode::Deterministic);
    builder.follow_symlinks(false);
    Ok(builder)
}

/// A header with everything that varies between machines zeroed.
pub(crate) fn fixed_header() -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header
}

/// Where the symlink at `full` points (UTF-8 only: manifests are JSON).
pub(crate) fn link_target(full: &Path) -> Result<String, PackError> {
    let target = fs::read_link(full).map_err(io_err(full))?;
    target
        .into_os_string()
        .into_string()
        .map_err(|_| PackError::Unsupported {
            path: full.to_path_buf(),
            why: "symlink target is not UTF-8".into(),
        })
}

/// Collects (relative path, full path) pairs of the whole tree.
pub(crate) fn walk(
    root: &Path,
    prefix: &str,
    out: &mut Vec<(String, PathBuf)>,
) -> Result<(), PackError> {
    let dir = if prefix.is_empty() {
        root.to_path_buf()
    } else {
        root.join(prefix)
    };
    let mut names = Vec::new();
    for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
        let entry = entry.map_err(io_err(&dir))?;
        let name = entry.file_name();
        let name = name.to_str().ok_or_else(|| PackError::Unsupported {
            path: entry.path(),
            why: "file name is not UTF-8".into(),
        })?;
        if name == ".git" {
            continue;
        }
        names.push(name.to_string());
    }
    for name in names {
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let full = root.join(&rel);
        let is_dir = fs::symlink_metadata(&full).map_err(io_err(&full))?.is_dir();
        out.push((rel.clone(), full));
        if is_dir {
            walk(root, &rel, out)?;
        }
    }
    Ok(())
}
