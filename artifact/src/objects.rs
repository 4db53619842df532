//! Format 2: files move as *objects*, named by the sha256 of their content.
//!
//! - [`scan_dir`] describes a tree (every entry, each file hashed, on every
//!   core) without packing it: the publisher asks the controller which objects
//!   it lacks and sends only those.
//! - An *object pack* is a zstd-compressed tar of objects: regular files named
//!   by their lowercase hex digest, mode 0644, nothing else. [`write_pack`]
//!   makes one (compression on every core); [`read_pack`] reads one, checking
//!   every object's name, size and content against what the reader expects
//!   before it is committed. A pack of all of a release's objects in manifest
//!   order ([`Manifest::objects`]) is the release's *full pack*: what a host
//!   that has none of the files installs from.
//!
//! The tree itself is assembled from a pack and local files by
//! `crate::assemble`.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::digest::{Digest, HashingReader};
use crate::manifest::{Entry, EntryKind, FORMAT_VERSION, Manifest};
use crate::pack::{PackError, io_err, walk};
use crate::tar_guard::HeaderGuard;
use crate::unpack::{UnpackError, entry_err};

/// Describes the tree at `src` as a format-2 manifest's entries: sorted,
/// modes normalised to 0644/0755 (0777 for links), every file hashed (on
/// every core). `.git` directories are left out; devices, fifos and sockets
/// refused.
pub fn scan_dir(src: &Path) -> Result<Vec<Entry>, PackError> {
    let mut paths = Vec::new();
    walk(src, "", &mut paths)?;
    paths.sort_by(|a, b| a.0.cmp(&b.0));
    let mut entries = Vec::with_capacity(paths.len());
    let mut files = Vec::new();
    for (rel, full) in paths {
        let meta = fs::symlink_metadata(&full).map_err(io_err(&full))?;
        let ft = meta.file_type();
        let (kind, mode, size, target) = if ft.is_dir() {
            (EntryKind::Dir, 0o755, 0, None)
        } else if ft.is_symlink() {
            let target = crate::pack::link_target(&full)?;
            (EntryKind::Symlink, 0o777, 0, Some(target))
        } else if ft.is_file() {
            let mode = if meta.permissions().mode() & 0o100 != 0 {
                0o755
            } else {
                0o644
            };
            files.push((entries.len(), full.clone(), meta.len()));
            (EntryKind::File, mode, meta.len(), None)
        } else {
            return Err(PackError::Unsupported {
                path: full,
                why: "only regular files, directories and symlinks can be released (devices, fifos and sockets cannot)".into(),
            });
        };
        entries.push(Entry {
            path: rel,
            kind,
            mode,
            size,
            sha256: None,
            target,
        });
    }
    for (i, digest) in hash_files(&files)? {
        entries[i].sha256 = Some(digest.to_string());
    }
    Ok(entries)
}

/// Hashes `(index, path, size)` on every core; a file whose size changed
/// since it was listed is refused as changed.
fn hash_files(files: &[(usize, PathBuf, u64)]) -> Result<Vec<(usize, Digest)>, PackError> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::with_capacity(files.len()));
    let failed = std::sync::Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((index, path, size)) = files.get(i) else {
                        return;
                    };
                    match hash_file(path, *size) {
                        Ok(d) => results
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((*index, d)),
                        Err(e) => {
                            *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                            next.store(files.len(), std::sync::atomic::Ordering::Relaxed);
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    Ok(results.into_inner().unwrap_or_else(|e| e.into_inner()))
}

fn hash_file(path: &Path, size: u64) -> Result<Digest, PackError> {
    let file = File::open(path).map_err(io_err(path))?;
    let mut reader = HashingReader::new(file.take(size + 1));
    io::copy(&mut reader, &mut io::sink()).map_err(io_err(path))?;
    let (digest, n) = reader.finish();
    if n != size {
        return Err(PackError::Changed(path.to_path_buf()));
    }
    Ok(digest)
}

impl Manifest {
    /// A format-2 manifest of `entries` (as [`scan_dir`] gives them),
    /// validated with the rules agents apply.
    pub fn from_entries(
        app: &str,
        version: &str,
        git_commit: Option<String>,
        entries: Vec<Entry>,
    ) -> Result<Manifest, crate::manifest::ManifestError> {
        let m = Manifest {
            format: FORMAT_VERSION,
            app: app.to_string(),
            version: version.to_string(),
            git_commit,
            blob: None,
            entries,
        };
        m.validate(usize::MAX, u64::MAX)?;
        Ok(m)
    }

    /// Where each object of the release is found under `root` (its first
    /// path), for packing them.
    pub fn object_paths(&self, root: &Path) -> HashMap<Digest, PathBuf> {
        let mut out = HashMap::new();
        for e in &self.entries {
            if e.kind == EntryKind::File
                && let Some(d) = e.sha256.as_deref().and_then(|h| Digest::parse(h).ok())
            {
                out.entry(d).or_insert_with(|| root.join(&e.path));
            }
        }
        out
    }
}

/// Whether [`write_pack`] hashes what it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Every object is hashed as it is read and must match its name (a store
    /// serving what it keeps: corruption at rest is caught at the source).
    Digest,
    /// Sizes only: the reader checks every object anyway (the publisher,
    /// whose scan just hashed each file: one hashing pass, not two).
    Size,
}

/// Writes the objects `order` names (digest, size), read from `path_of`, as
/// an object pack into `out`, compressing on `workers` threads (`0`: on this
/// one, with the least memory), each file checked as `check` says. Returns
/// the writer, the pack's digest and size.
pub fn write_pack<W: Write>(
    order: &[(Digest, u64)],
    path_of: impl Fn(&Digest) -> Option<PathBuf>,
    out: W,
    workers: u32,
    check: Check,
) -> Result<(W, Digest, u64), PackError> {
    let mut builder = crate::pack::tar_zstd(out, workers)?;
    for (digest, size) in order {
        let path = path_of(digest).ok_or_else(|| PackError::Unsupported {
            path: PathBuf::from(digest.hex()),
            why: "no file holds this object".into(),
        })?;
        let mut header = crate::pack::fixed_header();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(*size);
        let file = File::open(&path).map_err(io_err(&path))?;
        let changed = |e: io::Error| match e.kind() {
            io::ErrorKind::UnexpectedEof => PackError::Changed(path.clone()),
            _ => PackError::Write(e),
        };
        match check {
            Check::Digest => {
                let mut reader = HashingReader::new(file.take(*size));
                builder
                    .append_data(&mut header, digest.hex(), &mut reader)
                    .map_err(changed)?;
                let (got, n) = reader.finish();
                if n != *size || &got != digest {
                    return Err(PackError::Changed(path));
                }
            }
            Check::Size => {
                let mut reader = file.take(*size);
                builder
                    .append_data(&mut header, digest.hex(), &mut reader)
                    .map_err(changed)?;
                if reader.limit() != 0 {
                    return Err(PackError::Changed(path));
                }
            }
        }
    }
    let encoder = builder.into_inner().map_err(PackError::Write)?;
    let hashing = encoder.finish().map_err(PackError::Write)?;
    let (mut inner, digest, size) = hashing.finish();
    inner.flush().map_err(PackError::Write)?;
    Ok((inner, digest, size))
}

/// Where the objects a pack holds go, one at a time.
pub trait ObjectSink {
    type Out: Write;
    /// Opens a place for the object `digest` of `size` bytes.
    fn begin(&mut self, digest: &Digest, size: u64) -> io::Result<Self::Out>;
    /// The object was written whole and matched its digest: keep it.
    fn commit(&mut self, digest: &Digest, out: Self::Out) -> io::Result<()>;
}

/// What a reader accepts from a pack.
pub enum Expect<'a> {
    /// Exactly these objects, in this order (an agent's request).
    Exactly(&'a [(Digest, u64)]),
    /// Any of these, each at most once, in any order (an upload).
    AnyOf(&'a HashMap<Digest, u64>),
}

/// Reads the object pack `raw` (at most `raw_max` bytes), handing each object
/// to `sink` once its name, size and content checked out. Returns how many
/// objects it held, and the pack's digest and size.
pub fn read_pack<S: ObjectSink>(
    raw: impl Read + Send,
    raw_max: u64,
    expect: Expect<'_>,
    window_log_max: u32,
    sink: &mut S,
) -> Result<(usize, Digest, u64), UnpackError> {
    let (count, content) = match &expect {
        Expect::Exactly(list) => (list.len(), list.iter().map(|(_, s)| *s).sum::<u64>()),
        Expect::AnyOf(set) => (set.len(), set.values().sum::<u64>()),
    };
    let bound = content.saturating_add((count as u64 + 8) * 4096);
    let (n, digest, size) =
        crate::decode::with_decoded(raw, raw_max, bound, window_log_max, |decoded| {
            let mut archive = tar::Archive::new(HeaderGuard::new(decoded));
            let mut entries = archive.entries().map_err(UnpackError::Read)?;
            let mut reader = PackEntries {
                entries: &mut entries,
            };
            let mut seen = std::collections::HashSet::new();
            let mut n = 0;
            loop {
                let want = match &expect {
                    Expect::Exactly(list) => match list.get(n) {
                        Some(w) => Some(w),
                        None => {
                            reader.expect_end()?;
                            break;
                        }
                    },
                    Expect::AnyOf(_) => None,
                };
                let Some((digest, size)) = reader.next_object(want, &expect, &mut seen, sink)?
                else {
                    break;
                };
                let _ = (digest, size);
                n += 1;
            }
            if let Expect::Exactly(list) = &expect
                && n < list.len()
            {
                return Err(UnpackError::Missing(list[n].0.hex()));
            }
            Ok(n)
        })?;
    Ok((n, digest, size))
}

/// The entries of a pack being read, one object at a time.
pub(crate) struct PackEntries<'a, 'b, R: Read> {
    pub(crate) entries: &'a mut tar::Entries<'b, R>,
}

impl<R: Read> PackEntries<'_, '_, R> {
    /// Reads the next object into `sink`. With `want`, it must be that
    /// object; otherwise any object `expect` allows, not seen before. None at
    /// the end of the pack (an error when `want` was given).
    pub(crate) fn next_object<S: ObjectSink>(
        &mut self,
        want: Option<&(Digest, u64)>,
        expect: &Expect<'_>,
        seen: &mut std::collections::HashSet<Digest>,
        sink: &mut S,
    ) -> Result<Option<(Digest, u64)>, UnpackError> {
        let Some(entry) = self.entries.next() else {
            return match want {
                Some((d, _)) => Err(UnpackError::Missing(d.hex())),
                None => Ok(None),
            };
        };
        let mut entry = entry.map_err(UnpackError::Read)?;
        let raw_path = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw_path).into_owned();
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(entry_err(&name, "a pack holds regular files only"));
        }
        let digest = Digest::parse(&format!("sha256:{name}"))
            .ok()
            .filter(|d| d.hex() == name)
            .ok_or_else(|| entry_err(&name, "not named by a lowercase sha256"))?;
        let size = entry.header().size().map_err(UnpackError::Read)?;
        let expected_size = match (want, expect) {
            (Some((d, s)), _) if *d == digest => *s,
            (Some((d, _)), _) => {
                return Err(entry_err(
                    &name,
                    format!("not the next object asked for ({})", d.hex()),
                ));
            }
            (None, Expect::AnyOf(set)) => *set
                .get(&digest)
                .ok_or_else(|| entry_err(&name, "not an object of this release"))?,
            (None, Expect::Exactly(_)) => {
                return Err(entry_err(&name, "more objects than asked for"));
            }
        };
        if size != expected_size {
            return Err(entry_err(
                &name,
                format!("size {size} differs from the manifest's {expected_size}"),
            ));
        }
        if !seen.insert(digest.clone()) {
            return Err(entry_err(&name, "sent twice"));
        }
        let out = sink.begin(&digest, size).map_err(|e| UnpackError::Write {
            path: PathBuf::from(&name),
            source: e,
        })?;
        let mut w = crate::digest::HashingWriter::new(out);
        let copied = io::copy(&mut (&mut entry).take(size), &mut w).map_err(UnpackError::Read)?;
        let (out, got, _) = w.finish();
        if copied != size {
            return Err(entry_err(&name, "pack truncated inside this object"));
        }
        if got != digest {
            return Err(entry_err(&name, format!("content hashes to {got}")));
        }
        sink.commit(&digest, out).map_err(|e| UnpackError::Write {
            path: PathBuf::from(&name),
            source: e,
        })?;
        Ok(Some((digest, size)))
    }

    /// The pack must hold nothing more.
    pub(crate) fn expect_end(&mut self) -> Result<(), UnpackError> {
        match self.entries.next() {
            None => Ok(()),
            Some(Ok(e)) => Err(entry_err(
                &String::from_utf8_lossy(&e.path_bytes()),
                "more objects than asked for",
            )),
            Some(Err(e)) => Err(UnpackError::Read(e)),
        }
    }
}
