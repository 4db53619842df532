//! Builds a format-2 release tree: every manifest entry in order, each file
//! taken from the first place that has it — an earlier path of the same tree
//! (copied), a file the host already has (`local`: hardlinked, see below), or
//! the next object of the pack. The pack must hold exactly the objects
//! [`wanted`] names, in that order, and each is checked against its digest as
//! it is written. Like `unpack`, the tree is built in a temp dir beside the
//! destination, synced to disk with one `syncfs`, then renamed into place;
//! on any error the destination is untouched and the temp dir removed.
//!
//! Local files are hardlinked, not copied: a one-file change installs in the
//! time it takes to make the links. The caller offers only files it has
//! checked are unchanged since they were installed (their stat against the
//! drift baseline). A link is made only when the mode matches, and checked
//! after it is made (same inode, size and mtime as offered); otherwise, or
//! when the filesystem refuses the link, the file is copied. The price of
//! links: an in-place edit of one copy shows in every release sharing it —
//! drift detection sees it in each of them (the edit changes the content and
//! the stat its baseline recorded), and a release whose files were edited is
//! never offered as a source or reused as it stands.

use std::collections::HashMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::manifest::{EntryKind, Manifest};
use crate::objects::{Expect, ObjectSink, PackEntries};
use crate::tar_guard::HeaderGuard;
use crate::unpack::{Limits, UnpackError, entry_err, umask, write_err};

/// A file on this host holding an object, as the caller checked it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LocalFile {
    pub path: PathBuf,
    /// Its inode, size and mtime when checked: the link must land on it.
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
}

/// How the tree was made.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Assembled {
    /// Files written from the pack.
    pub from_pack: usize,
    /// Files hardlinked from the host.
    pub linked: usize,
    /// Files copied (a duplicate within the tree, a mode that differs, a
    /// link refused).
    pub copied: usize,
}

/// The objects a host lacks for `manifest`, in the order a pack must hold
/// them.
pub fn wanted(manifest: &Manifest, local: &HashMap<Digest, LocalFile>) -> Vec<(Digest, u64)> {
    manifest
        .objects()
        .into_iter()
        .filter(|(d, _)| !local.contains_key(d))
        .collect()
}

/// Assembles `manifest` into `dest` (which must not exist) from `local` files
/// and `pack` (an object pack of exactly [`wanted`]; None when nothing is
/// wanted), calling `synced` once the tree is on disk, before the rename.
pub fn assemble(
    pack: Option<impl Read + Send>,
    manifest: &Manifest,
    dest: &Path,
    local: &HashMap<Digest, LocalFile>,
    limits: &Limits,
    synced: impl FnOnce(),
) -> Result<Assembled, UnpackError> {
    manifest.validate(limits.max_entries, limits.max_total_bytes)?;
    let want = wanted(manifest, local);
    let mut stats = Assembled::default();
    crate::unpack::build_beside(dest, synced, |root| {
        match (pack, want.is_empty()) {
            (None, true) => {
                let mut none = NoPack;
                stats = build(manifest, root, local, &want, &mut none)?;
            }
            (None, false) => {
                return Err(UnpackError::Missing(want[0].0.hex()));
            }
            (Some(pack), _) => {
                let content: u64 = want.iter().map(|(_, s)| *s).sum();
                let bound = content.saturating_add((want.len() as u64 + 8) * 4096);
                // A pack is compressed: it is never much larger than what it holds.
                let raw_max = bound.saturating_add(bound / 64).saturating_add(1 << 20);
                let (s, _, _) = crate::decode::with_decoded(
                    pack,
                    raw_max,
                    bound,
                    limits.window_log_max,
                    |decoded| {
                        let mut archive = tar::Archive::new(HeaderGuard::new(decoded));
                        let mut entries = archive.entries().map_err(UnpackError::Read)?;
                        let mut objects = PackEntries {
                            entries: &mut entries,
                        };
                        let s = build(manifest, root, local, &want, &mut objects)?;
                        objects.expect_end()?;
                        Ok(s)
                    },
                )?;
                stats = s;
            }
        }
        Ok(())
    })?;
    Ok(stats)
}

/// The next object of a pack, written where the tree wants it.
trait NextObject {
    fn next_into(&mut self, want: &(Digest, u64), out: &Path, mode: u32)
    -> Result<(), UnpackError>;
}

struct NoPack;

impl NextObject for NoPack {
    fn next_into(&mut self, want: &(Digest, u64), _: &Path, _: u32) -> Result<(), UnpackError> {
        Err(UnpackError::Missing(want.0.hex()))
    }
}

impl<R: Read> NextObject for PackEntries<'_, '_, R> {
    fn next_into(
        &mut self,
        want: &(Digest, u64),
        out: &Path,
        mode: u32,
    ) -> Result<(), UnpackError> {
        let list = std::slice::from_ref(want);
        let mut sink = FileSink { path: out, mode };
        let mut seen = std::collections::HashSet::new();
        self.next_object(Some(want), &Expect::Exactly(list), &mut seen, &mut sink)?;
        Ok(())
    }
}

/// Writes one object to a new file of the tree.
struct FileSink<'a> {
    path: &'a Path,
    mode: u32,
}

impl ObjectSink for FileSink<'_> {
    type Out = File;
    fn begin(&mut self, _: &Digest, _: u64) -> io::Result<File> {
        create_file(self.path, self.mode)
    }
    fn commit(&mut self, _: &Digest, file: File) -> io::Result<()> {
        fix_mode(&file, self.mode)
    }
}

fn create_file(path: &Path, mode: u32) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
}

fn fix_mode(file: &File, mode: u32) -> io::Result<()> {
    if mode & umask() != 0 {
        file.set_permissions(fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

fn build(
    manifest: &Manifest,
    root: &Path,
    local: &HashMap<Digest, LocalFile>,
    want: &[(Digest, u64)],
    pack: &mut impl NextObject,
) -> Result<Assembled, UnpackError> {
    let mut stats = Assembled::default();
    let mut written: HashMap<Digest, PathBuf> = HashMap::new();
    let mut next = want.iter();
    let mut dirs = Vec::new();
    for e in &manifest.entries {
        let out = root.join(&e.path);
        match e.kind {
            EntryKind::Dir => {
                DirBuilder::new()
                    .mode(0o700)
                    .create(&out)
                    .map_err(write_err(&out))?;
                dirs.push((out, e.mode));
            }
            EntryKind::Symlink => {
                let target = e.target.as_deref().unwrap_or_default();
                symlink(target, &out).map_err(write_err(&out))?;
            }
            EntryKind::File if e.size == 0 => {
                let f = create_file(&out, e.mode).map_err(write_err(&out))?;
                fix_mode(&f, e.mode).map_err(write_err(&out))?;
            }
            EntryKind::File => {
                let digest = e
                    .sha256
                    .as_deref()
                    .and_then(|h| Digest::parse(h).ok())
                    .ok_or_else(|| entry_err(&e.path, "file without a digest"))?;
                if let Some(first) = written.get(&digest) {
                    copy_file(first, &out, e.mode)?;
                    stats.copied += 1;
                } else if let Some(src) = local.get(&digest) {
                    if link_file(src, &out, e.mode, &digest)? {
                        stats.linked += 1;
                    } else {
                        stats.copied += 1;
                    }
                } else {
                    let w = next
                        .next()
                        .filter(|(d, _)| *d == digest)
                        .ok_or_else(|| entry_err(&e.path, "its object is not in the pack plan"))?;
                    pack.next_into(w, &out, e.mode)?;
                    stats.from_pack += 1;
                }
                written.entry(digest).or_insert(out);
            }
        }
    }
    // Directory modes last (deepest first), so a read-only directory can still
    // be filled.
    for (dir, mode) in dirs.iter().rev() {
        fs::set_permissions(dir, fs::Permissions::from_mode(*mode)).map_err(write_err(dir))?;
    }
    Ok(stats)
}

/// Hardlinks `src` to `out` when its mode is `mode` and the link lands on the
/// file that was checked; else copies it. True when linked.
fn link_file(src: &LocalFile, out: &Path, mode: u32, digest: &Digest) -> Result<bool, UnpackError> {
    let same_mode = fs::symlink_metadata(&src.path)
        .is_ok_and(|m| m.file_type().is_file() && m.mode() & 0o7777 == mode);
    if same_mode && fs::hard_link(&src.path, out).is_ok() {
        let landed = fs::symlink_metadata(out).is_ok_and(|m| {
            m.ino() == src.ino
                && m.len() == src.size
                && m.mtime() * 1_000_000_000 + m.mtime_nsec() == src.mtime_ns
        });
        if landed {
            return Ok(true);
        }
        // Replaced or edited since it was checked: not this file.
        fs::remove_file(out).map_err(write_err(out))?;
        return Err(entry_err(
            &out.to_string_lossy(),
            format!(
                "{} changed while it was being linked; install again",
                src.path.display()
            ),
        ));
    }
    copy_file(&src.path, out, mode)?;
    // A copy is checked like a download: what it copied is what it holds.
    let got = hash(out)?;
    if &got != digest {
        return Err(entry_err(
            &out.to_string_lossy(),
            format!("{} hashes to {got}, not {digest}", src.path.display()),
        ));
    }
    Ok(false)
}

fn copy_file(from: &Path, out: &Path, mode: u32) -> Result<(), UnpackError> {
    let mut src = File::open(from).map_err(write_err(from))?;
    let mut dst = create_file(out, mode).map_err(write_err(out))?;
    io::copy(&mut src, &mut dst).map_err(write_err(out))?;
    fix_mode(&dst, mode).map_err(write_err(out))
}

fn hash(path: &Path) -> Result<Digest, UnpackError> {
    let mut r = crate::digest::HashingReader::new(File::open(path).map_err(write_err(path))?);
    io::copy(&mut r, &mut io::sink()).map_err(write_err(path))?;
    Ok(r.finish().0)
}
