//! Drift detection for installed releases. Once a release is installed in
//! `releases/<version>/` (and its prepare hook ran), the agent takes a
//! [`Baseline`]: a fingerprint (kind, mode, size, sha256, link target) of every
//! path in the tree. Later, [`compare`] walks the live tree against it and
//! reports the paths changed, added or removed by hand on the host.
//! `filewatch::watch_tree` signals when something in the tree moves, so a
//! compare can follow an edit instead of waiting for the timer.
//!
//! Walks never follow symlinks (a symlinked directory is recorded as a link,
//! not entered), files are hashed streaming, and a path that vanishes while a
//! walk is under way is skipped rather than failing the whole walk.

use std::collections::BTreeMap;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Most paths a snapshot or a compare walks before giving up.
pub const MAX_ENTRIES: usize = 200_000;

/// Largest baseline file `Baseline::load` reads.
const MAX_BASELINE_BYTES: u64 = 64 * 1024 * 1024;

/// Read buffer for hashing.
const HASH_BUF: usize = 64 * 1024;

/// Digest recorded for devices, fifos and sockets, which are never read.
const SPECIAL: &str = "special";

/// One path's recorded state.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fingerprint {
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        size: u64,
        /// Lowercase hex, or `"special"` for a device, fifo or socket.
        sha256: String,
        /// Inode and change times when recorded: a file whose stat is
        /// unchanged is not read again (ctime cannot be set back by hand).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stat: Option<Stat>,
    },
    Symlink {
        target: String,
    },
}

/// What identifies a file's content without reading it.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub ino: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl Stat {
    pub fn of(meta: &Metadata) -> Self {
        Self {
            ino: meta.ino(),
            mtime_ns: meta.mtime().saturating_mul(1_000_000_000) + meta.mtime_nsec(),
            ctime_ns: meta.ctime().saturating_mul(1_000_000_000) + meta.ctime_nsec(),
        }
    }
}

/// The fingerprints of a release tree, keyed by '/'-joined relative path.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Baseline {
    pub version: String,
    pub entries: BTreeMap<String, Fingerprint>,
}

/// What differs between the live tree and its baseline; each list sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drift {
    pub changed: Vec<String>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

impl Drift {
    pub fn is_empty(&self) -> bool {
        self.count() == 0
    }

    pub fn count(&self) -> usize {
        self.changed.len() + self.added.len() + self.removed.len()
    }

    /// At most `limit` lines, sorted by path: "changed <path>", "added <path>",
    /// "removed <path>".
    pub fn lines(&self, limit: usize) -> Vec<String> {
        let mut all: Vec<(&str, &str)> = Vec::with_capacity(self.count());
        let labelled = [
            ("changed", &self.changed),
            ("added", &self.added),
            ("removed", &self.removed),
        ];
        for (label, paths) in labelled {
            all.extend(paths.iter().map(|p| (p.as_str(), label)));
        }
        all.sort_unstable();
        all.into_iter()
            .take(limit)
            .map(|(path, label)| format!("{label} {path}"))
            .collect()
    }
}

impl Drift {
    /// Names this drift exactly: every drifted path with what it holds now
    /// (size, inode, change times), over the release `version`. An operator's
    /// acknowledgement is bound to it, so a later edit needs a new one.
    pub fn digest(&self, root: &Path, version: &str) -> String {
        let mut h = Sha256::new();
        h.update(version.as_bytes());
        let labelled = [
            ("changed", &self.changed),
            ("added", &self.added),
            ("removed", &self.removed),
        ];
        for (label, paths) in labelled {
            for p in paths {
                h.update([0]);
                h.update(label.as_bytes());
                h.update([0]);
                h.update(p.as_bytes());
                if let Ok(m) = fs::symlink_metadata(root.join(p)) {
                    let s = Stat::of(&m);
                    h.update(m.len().to_le_bytes());
                    h.update(s.ino.to_le_bytes());
                    h.update(s.mtime_ns.to_le_bytes());
                    h.update(s.ctime_ns.to_le_bytes());
                }
            }
        }
        format!("sha256:{}", to_hex(&h.finalize()))
    }
}

impl Baseline {
    /// JSON, written atomically.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("encode drift baseline {}: {e}", path.display()),
            )
        })?;
        artifact::unpack::write_atomic(path, &bytes)
            .map_err(|e| context(e, "write drift baseline", path))
    }

    /// None when missing; Err on an unreadable, corrupt or oversized file.
    pub fn load(path: &Path) -> io::Result<Option<Baseline>> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(context(e, "open drift baseline", path)),
        };
        let mut bytes = Vec::new();
        file.take(MAX_BASELINE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| context(e, "read drift baseline", path))?;
        if bytes.len() as u64 > MAX_BASELINE_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "drift baseline {} is larger than {MAX_BASELINE_BYTES} bytes",
                    path.display()
                ),
            ));
        }
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("corrupt drift baseline {}: {e}", path.display()),
            )
        })
    }
}

/// Fingerprints every path under `root` (root itself excluded).
pub fn snapshot(root: &Path, version: &str) -> io::Result<Baseline> {
    snapshot_known(root, version, &Known::default())
}

/// Content digests already known for files of a tree, so a baseline need not
/// read them again: the manifest's, for a tree the unpack just wrote and
/// verified file by file.
#[derive(Debug, Default)]
pub struct Known {
    /// Relative path → (size, lowercase hex sha256).
    pub files: std::collections::HashMap<String, (u64, String)>,
    /// A file whose status changed at or after this time (ns since the epoch)
    /// may have been rewritten since (by the `prepare` hook): it is hashed.
    /// None: nothing touched the tree since it was written.
    pub changed_since_ns: Option<i64>,
}

impl Known {
    fn digest_of(&self, rel: &str, size: u64, stat: &Stat) -> Option<String> {
        let (known_size, hex) = self.files.get(rel)?;
        let untouched = self.changed_since_ns.is_none_or(|t| stat.ctime_ns < t);
        (*known_size == size && untouched).then(|| hex.clone())
    }
}

/// [`snapshot`], taking the digest of every file `known` vouches for instead
/// of hashing it; the rest (files a hook wrote, paths not in the manifest)
/// are hashed.
pub fn snapshot_known(root: &Path, version: &str, known: &Known) -> io::Result<Baseline> {
    let mut entries = BTreeMap::new();
    for (rel, live) in walk(root, MAX_ENTRIES)? {
        let fp = match &live.kind {
            LiveKind::File { mode, size, stat } => match known.digest_of(&rel, *size, stat) {
                Some(sha256) => Some(Fingerprint::File {
                    mode: *mode,
                    size: *size,
                    sha256,
                    stat: Some(*stat),
                }),
                None => fingerprint(&live)?,
            },
            _ => fingerprint(&live)?,
        };
        if let Some(fp) = fp {
            entries.insert(rel, fp);
        }
    }
    Ok(Baseline {
        version: version.to_string(),
        entries,
    })
}

/// Compares the live tree under `root` with `baseline`. A file whose size
/// differs is "changed" without being hashed.
pub fn compare(root: &Path, baseline: &Baseline) -> io::Result<Drift> {
    let live = walk(root, MAX_ENTRIES)?;
    let mut drift = Drift::default();
    let mut seen = Vec::with_capacity(live.len());
    for (rel, entry) in live {
        let verdict = match baseline.entries.get(&rel) {
            None => Verdict::Added,
            Some(fp) => judge(&entry, fp)?,
        };
        match verdict {
            Verdict::Same => {}
            Verdict::Changed => drift.changed.push(rel.clone()),
            Verdict::Added => drift.added.push(rel.clone()),
            Verdict::Vanished => continue,
        }
        seen.push(rel);
    }
    seen.sort_unstable();
    drift.removed = baseline
        .entries
        .keys()
        .filter(|k| seen.binary_search(k).is_err())
        .cloned()
        .collect();
    Ok(drift)
}

/// A path as the walk saw it, before any hashing.
struct Live {
    path: PathBuf,
    kind: LiveKind,
}

enum LiveKind {
    Dir { mode: u32 },
    File { mode: u32, size: u64, stat: Stat },
    Special { mode: u32 },
    Symlink { target: String },
}

enum Verdict {
    Same,
    Changed,
    Added,
    /// Gone between the walk and the hash: reported as removed.
    Vanished,
}

/// Every path under `root`, keyed by '/'-joined relative path; symlinks are
/// never followed and paths that vanish mid-walk are skipped.
fn walk(root: &Path, limit: usize) -> io::Result<BTreeMap<String, Live>> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = dirs.pop() {
        let is_root = prefix.is_empty();
        let listing = match fs::read_dir(&dir) {
            Ok(l) => l,
            Err(e) if !is_root && e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(context(e, "list", &dir)),
        };
        for item in listing {
            let item = item.map_err(|e| context(e, "list", &dir))?;
            let name = item.file_name();
            let rel = format!("{prefix}{}", name.to_string_lossy());
            let Some(live) = observe(item.path())? else {
                continue;
            };
            if matches!(live.kind, LiveKind::Dir { .. }) {
                dirs.push((live.path.clone(), format!("{rel}/")));
            }
            out.insert(rel, live);
            if out.len() > limit {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} holds more than {limit} paths; drift detection refuses it",
                        root.display()
                    ),
                ));
            }
        }
    }
    Ok(out)
}

/// Stats `path` without following a symlink; None when it vanished.
fn observe(path: PathBuf) -> io::Result<Option<Live>> {
    let meta = match fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(context(e, "stat", &path)),
    };
    let kind = match classify(&path, &meta)? {
        Some(k) => k,
        None => return Ok(None),
    };
    Ok(Some(Live { path, kind }))
}

fn classify(path: &Path, meta: &Metadata) -> io::Result<Option<LiveKind>> {
    let mode = meta.mode() & 0o7777;
    let ft = meta.file_type();
    let kind = if ft.is_symlink() {
        match fs::read_link(path) {
            Ok(t) => LiveKind::Symlink {
                target: t.to_string_lossy().into_owned(),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(context(e, "read link", path)),
        }
    } else if ft.is_dir() {
        LiveKind::Dir { mode }
    } else if ft.is_file() {
        LiveKind::File {
            mode,
            size: meta.len(),
            stat: Stat::of(meta),
        }
    } else {
        // Devices, fifos, sockets (and any kind std does not name): present,
        // never read.
        LiveKind::Special { mode }
    };
    Ok(Some(kind))
}

/// The baseline record for a live path; None when it vanished before hashing.
fn fingerprint(live: &Live) -> io::Result<Option<Fingerprint>> {
    let fp = match &live.kind {
        LiveKind::Dir { mode } => Fingerprint::Dir { mode: *mode },
        LiveKind::Symlink { target } => Fingerprint::Symlink {
            target: target.clone(),
        },
        LiveKind::Special { mode } => special(*mode),
        LiveKind::File { mode, size, stat } => match hash_file(&live.path)? {
            Some(sha256) => Fingerprint::File {
                mode: *mode,
                size: *size,
                sha256,
                stat: Some(*stat),
            },
            None => return Ok(None),
        },
    };
    Ok(Some(fp))
}

fn special(mode: u32) -> Fingerprint {
    Fingerprint::File {
        mode,
        size: 0,
        sha256: SPECIAL.to_string(),
        stat: None,
    }
}

/// Whether a live path still matches its recorded fingerprint; hashes only a
/// regular file whose kind, mode and size all match.
fn judge(live: &Live, recorded: &Fingerprint) -> io::Result<Verdict> {
    let same = match (&live.kind, recorded) {
        (LiveKind::Dir { mode }, Fingerprint::Dir { mode: m }) => mode == m,
        (LiveKind::Symlink { target }, Fingerprint::Symlink { target: t }) => target == t,
        (LiveKind::Special { mode }, recorded) => special(*mode) == *recorded,
        (
            LiveKind::File { mode, size, stat },
            Fingerprint::File {
                mode: m,
                size: s,
                sha256,
                stat: recorded_stat,
            },
        ) => {
            if mode != m || size != s {
                false
            } else if *recorded_stat == Some(*stat) {
                true
            } else {
                match hash_file(&live.path)? {
                    Some(h) => h == *sha256,
                    None => return Ok(Verdict::Vanished),
                }
            }
        }
        _ => false,
    };
    Ok(if same {
        Verdict::Same
    } else {
        Verdict::Changed
    })
}

/// Streams a regular file through sha256; None when it vanished. Opened
/// without following a symlink and without blocking on a fifo swapped in
/// since the stat; a path that is no longer a regular file hashes as
/// "special", so it never matches a recorded digest of content.
fn hash_file(path: &Path) -> io::Result<Option<String>> {
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path);
    let mut file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(context(e, "open", path)),
    };
    let meta = file.metadata().map_err(|e| context(e, "stat", path))?;
    if !meta.file_type().is_file() {
        return Ok(Some(SPECIAL.to_string()));
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_BUF];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(context(e, "read", path)),
        }
    }
    Ok(Some(to_hex(&hasher.finalize())))
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

fn context(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};
    use std::time::Duration;

    /// A small release tree: nested dirs, files, a symlink.
    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::create_dir_all(root.join("etc/conf.d")).unwrap();
        fs::write(root.join("bin/app"), b"#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(root.join("bin/app"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(root.join("etc/conf.d/main.toml"), b"port = 8080\n").unwrap();
        fs::write(root.join("empty"), b"").unwrap();
        symlink("bin/app", root.join("run")).unwrap();
        dir
    }

    fn base(root: &Path) -> Baseline {
        snapshot(root, "v1").unwrap()
    }

    fn sha_of(b: &Baseline, rel: &str) -> String {
        match &b.entries[rel] {
            Fingerprint::File { sha256, .. } => sha256.clone(),
            other => panic!("{rel} is not a file: {other:?}"),
        }
    }

    #[test]
    fn a_baseline_takes_known_digests_and_hashes_what_changed_after_the_cutoff() {
        let dir = tree();
        let root = dir.path();
        let real = sha_of(&base(root), "etc/conf.d/main.toml");
        // A digest nobody could compute from the file: proof it was not read.
        let vouched = "ab".repeat(32);
        let mut known = Known::default();
        for rel in ["bin/app", "etc/conf.d/main.toml"] {
            let size = fs::metadata(root.join(rel)).unwrap().len();
            known.files.insert(rel.to_string(), (size, vouched.clone()));
        }
        let b = snapshot_known(root, "v1", &known).unwrap();
        assert_eq!(sha_of(&b, "etc/conf.d/main.toml"), vouched);
        assert_eq!(sha_of(&b, "bin/app"), vouched);
        assert_ne!(sha_of(&b, "empty"), vouched, "not vouched for: hashed");

        // A hook starts, then rewrites one file with the same size.
        std::thread::sleep(Duration::from_millis(20));
        known.changed_since_ns = Some(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as i64
                - 10_000_000,
        );
        std::thread::sleep(Duration::from_millis(20));
        fs::write(root.join("etc/conf.d/main.toml"), b"port = 9090\n").unwrap();
        let b = snapshot_known(root, "v1", &known).unwrap();
        let now = sha_of(&b, "etc/conf.d/main.toml");
        assert_ne!(now, vouched, "rewritten after the cutoff: hashed");
        assert_ne!(now, real);
        assert_eq!(
            sha_of(&b, "bin/app"),
            vouched,
            "untouched: still vouched for"
        );
    }

    #[test]
    fn snapshot_records_every_path() {
        let dir = tree();
        let b = base(dir.path());
        let keys: Vec<&str> = b.entries.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "bin",
                "bin/app",
                "empty",
                "etc",
                "etc/conf.d",
                "etc/conf.d/main.toml",
                "run"
            ]
        );
        assert_eq!(b.version, "v1");
        let Fingerprint::File { size, sha256, .. } = &b.entries["empty"] else {
            panic!("empty is not a file: {:?}", b.entries["empty"]);
        };
        assert_eq!(*size, 0);
        assert_eq!(
            sha256,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(matches!(
            b.entries["bin/app"],
            Fingerprint::File { mode: 0o755, .. }
        ));
        assert_eq!(
            b.entries["run"],
            Fingerprint::Symlink {
                target: "bin/app".into()
            }
        );
    }

    #[test]
    fn clean_tree_has_no_drift() {
        let dir = tree();
        let b = base(dir.path());
        let d = compare(dir.path(), &b).unwrap();
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(d.count(), 0);
        assert!(d.lines(10).is_empty());
    }

    #[test]
    fn same_size_edit_is_changed() {
        let dir = tree();
        let b = base(dir.path());
        fs::write(dir.path().join("etc/conf.d/main.toml"), b"port = 9090\n").unwrap();
        let d = compare(dir.path(), &b).unwrap();
        assert_eq!(d.changed, ["etc/conf.d/main.toml"]);
        assert!(d.added.is_empty() && d.removed.is_empty());
    }

    #[test]
    fn size_change_is_changed() {
        let dir = tree();
        let b = base(dir.path());
        fs::write(dir.path().join("empty"), b"now with content").unwrap();
        let d = compare(dir.path(), &b).unwrap();
        assert_eq!(d.changed, ["empty"]);
    }

    #[test]
    fn chmod_is_changed() {
        let dir = tree();
        let b = base(dir.path());
        fs::set_permissions(
            dir.path().join("bin/app"),
            fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        fs::set_permissions(dir.path().join("etc"), fs::Permissions::from_mode(0o777)).unwrap();
        let d = compare(dir.path(), &b).unwrap();
        assert_eq!(d.changed, ["bin/app", "etc"]);
        assert!(d.added.is_empty() && d.removed.is_empty());
    }

    #[test]
    fn added_file_and_dir_are_added() {
        let dir = tree();
        let b = base(dir.path());
        fs::write(dir.path().join("bin/backdoor"), b"x").unwrap();
        fs::create_dir(dir.path().join("extra")).unwrap();
        fs::write(dir.path().join("extra/inside"), b"y").unwrap();
        let d = compare(dir.path(), &b).unwrap();
        assert_eq!(d.added, ["bin/backdoor", "extra", "extra/inside"]);
        assert!(d.changed.is_empty() && d.removed.is_empty());
    }

    #[test]
    fn removed_file_is_removed() {
        let dir = tree();
        let b = base(dir.path());
        fs::remove_file(dir.path().join("etc/conf.d/main.toml")).unwrap();
        let d = compare(dir.path(), &b).unwrap();
        assert_eq!(d.removed, ["etc/conf.d/main.toml"]);
        assert!(d.changed.is_empty() && d.added.is_empty());
    }

    #[test]
    fn retargeted_symlink_is_changed() {
        let dir = tree();
        let b = base(dir.path());
        fs::remove_file(dir.path().join("run")).unwrap();
        symlink("/bin/sh", dir.path().join("run")).unwrap();
        let d = compare(dir.path(), &b).unwrap();
        assert_eq!(d.changed, ["run"]);
    }

    #[test]
    fn kind_change_is_changed() {
        let dir = tree();
        let b = base(dir.path());
        fs::remove_file(dir.path().join("empty")).unwrap();
        fs::create_dir(dir.path().join("empty")).unwrap();
        let d = compare(dir.path(), &b).unwrap();
        assert_eq!(d.changed, ["empty"]);
    }

    #[test]
    fn fifo_is_recorded_as_special() {
        let dir = tree();
        let b = base(dir.path());
        let fifo = dir.path().join("pipe");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let d = compare(dir.path(), &b).unwrap();
        assert_eq!(d.added, ["pipe"]);
        let b2 = base(dir.path());
        assert_eq!(
            b2.entries["pipe"],
            Fingerprint::File {
                mode: 0o600,
                size: 0,
                sha256: "special".into(),
                stat: None,
            }
        );
        assert!(compare(dir.path(), &b2).unwrap().is_empty());
    }

    #[test]
    fn an_edit_with_its_mtime_put_back_is_still_changed() {
        let dir = tree();
        let b = base(dir.path());
        let (path, rel) = b
            .entries
            .iter()
            .find_map(|(rel, fp)| match fp {
                Fingerprint::File { size, .. } if *size > 0 => {
                    Some((dir.path().join(rel), rel.clone()))
                }
                _ => None,
            })
            .expect("a file in the tree");
        let before = fs::metadata(&path).unwrap();
        let mut bytes = fs::read(&path).unwrap();
        bytes[0] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let mtime = nix::sys::time::TimeSpec::new(before.mtime(), before.mtime_nsec());
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &path,
            &mtime,
            &mtime,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
        assert_eq!(compare(dir.path(), &b).unwrap().changed, [rel]);
        let d = compare(dir.path(), &b).unwrap();
        assert_eq!(
            d.digest(dir.path(), "1"),
            compare(dir.path(), &b).unwrap().digest(dir.path(), "1"),
            "the same drift has the same digest"
        );
    }

    #[test]
    fn symlinked_dir_is_not_followed() {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), b"s").unwrap();
        let dir = tree();
        symlink(outside.path(), dir.path().join("link")).unwrap();
        let b = base(dir.path());
        assert!(b.entries.contains_key("link"));
        assert!(!b.entries.keys().any(|k| k.starts_with("link/")));
        fs::write(outside.path().join("more"), b"m").unwrap();
        assert!(compare(dir.path(), &b).unwrap().is_empty());
    }

    #[test]
    fn walk_refuses_more_than_the_limit() {
        let dir = tree();
        let err = walk(dir.path(), 3).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("more than 3 paths"), "{err}");
        assert_eq!(walk(dir.path(), 7).unwrap().len(), 7);
    }

    #[test]
    fn missing_root_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = snapshot(&missing, "v1").unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn save_load_roundtrip() {
        let dir = tree();
        let b = base(dir.path());
        let state = tempfile::tempdir().unwrap();
        let file = state.path().join("baseline.json");
        assert_eq!(Baseline::load(&file).unwrap(), None);
        b.save(&file).unwrap();
        assert_eq!(Baseline::load(&file).unwrap(), Some(b));
    }

    #[test]
    fn corrupt_baseline_is_an_error() {
        let state = tempfile::tempdir().unwrap();
        let file = state.path().join("baseline.json");
        fs::write(&file, b"{not json").unwrap();
        let err = Baseline::load(&file).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("baseline.json"), "{err}");
    }

    #[test]
    fn lines_are_sorted_by_path_and_limited() {
        let d = Drift {
            changed: vec!["b".into(), "d/x".into()],
            added: vec!["a".into(), "e".into()],
            removed: vec!["c".into()],
        };
        assert_eq!(d.count(), 5);
        assert!(!d.is_empty());
        assert_eq!(
            d.lines(10),
            [
                "added a",
                "changed b",
                "removed c",
                "changed d/x",
                "added e"
            ]
        );
        assert_eq!(d.lines(2), ["added a", "changed b"]);
        assert!(d.lines(0).is_empty());
    }

    #[tokio::test]
    async fn watch_tree_signals_a_nested_write() {
        let dir = tree();
        let mut w = crate::filewatch::watch_tree(dir.path()).unwrap();
        fs::write(dir.path().join("etc/conf.d/main.toml"), b"edited\n").unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), w.changed.recv()).await;
        assert_eq!(got, Ok(Some(())));
    }
}
