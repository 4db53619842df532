//! The release manifest: every entry of the blob with its type, mode, size and
//! content digest, plus the blob's own digest and size. Its canonical JSON bytes
//! are what gets stored, sent to agents and (later) signed; their sha256 names the
//! release.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::names::{NameKind, validate_name};

/// The format `slipctl publish` writes: entries only, files moved as objects
/// (see `crate::objects`). Format 1 (entries plus the digest of the one blob
/// they were packed into) is still read and installed.
pub const FORMAT_VERSION: u32 = 2;
/// The first format: the manifest names its blob.
pub const FORMAT_BLOB: u32 = 1;
/// Upper bound on manifest bytes anyone accepts.
pub const MAX_MANIFEST_BYTES: usize = 8 * 1024 * 1024;
/// Upper bound on a single entry path.
pub const MAX_PATH_BYTES: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub path: String,
    pub kind: EntryKind,
    pub mode: u32,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    pub digest: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub app: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_commit: Option<String>,
    /// Format 1 only: the tar+zstd blob the entries were packed into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<BlobRef>,
    pub entries: Vec<Entry>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is larger than {MAX_MANIFEST_BYTES} bytes")]
    TooLarge,
    #[error("manifest is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("manifest is not in canonical form (re-encoding it changes its bytes)")]
    NotCanonical,
    #[error("manifest format {0} is not supported (expected {FORMAT_BLOB} or {FORMAT_VERSION})")]
    Format(u32),
    #[error("manifest format {0} {1}")]
    Blob(u32, &'static str),
    #[error(transparent)]
    Name(#[from] crate::names::NameError),
    #[error("manifest blob digest: {0}")]
    BlobDigest(#[from] crate::digest::DigestParseError),
    #[error("manifest entry {path:?}: {why}")]
    Entry { path: String, why: String },
    #[error("manifest lists {0} entries, more than the limit of {1}")]
    TooManyEntries(usize, usize),
    #[error("manifest content totals {0} bytes, more than the limit of {1}")]
    TooManyBytes(u64, u64),
    #[error(
        "manifest content ({content} bytes) is more than {MAX_RATIO} times its {blob}-byte blob: refused as a decompression bomb"
    )]
    Ratio { content: u64, blob: u64 },
}

/// Most a blob may expand on unpacking (content / compressed size), beyond the
/// first [`RATIO_SLACK`] bytes: a zstd bomb is refused before any byte is decoded.
pub const MAX_RATIO: u64 = 1000;
/// Content any blob may unpack to whatever its ratio (small releases of zeros).
pub const RATIO_SLACK: u64 = 64 << 20;

/// Compresses canonical manifest bytes for the wire, with `base` (the
/// manifest of a release the reader has) as the dictionary when given: most
/// entries repeat, so the result is a fraction of a standalone copy.
pub fn compress(bytes: &[u8], base: Option<&[u8]>) -> std::io::Result<Vec<u8>> {
    const LEVEL: i32 = 3;
    match base {
        Some(base) => zstd::bulk::Compressor::with_dictionary(LEVEL, base)?.compress(bytes),
        None => zstd::bulk::compress(bytes, LEVEL),
    }
}

/// The inverse of [`compress`]: at most `max` bytes (and never more than
/// [`MAX_MANIFEST_BYTES`]) come out.
pub fn decompress(compressed: &[u8], base: Option<&[u8]>, max: usize) -> std::io::Result<Vec<u8>> {
    let max = max.min(MAX_MANIFEST_BYTES);
    match base {
        Some(base) => zstd::bulk::Decompressor::with_dictionary(base)?.decompress(compressed, max),
        None => zstd::bulk::decompress(compressed, max),
    }
}

fn entry_err(path: &str, why: impl Into<String>) -> ManifestError {
    ManifestError::Entry {
        path: path.chars().take(200).collect(),
        why: why.into(),
    }
}

impl Manifest {
    /// The canonical encoding: serde field order, entries sorted by path, no
    /// whitespace. Same manifest, same bytes.
    pub fn to_canonical_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("manifest serializes")
    }

    /// The release's name: sha256 of the canonical bytes.
    pub fn digest(&self) -> Digest {
        Digest::of(&self.to_canonical_bytes())
    }

    /// Parses bytes received from elsewhere, insisting they are canonical so that the
    /// digest of the bytes and the digest of the parsed manifest agree, then
    /// validates every field.
    pub fn from_canonical_bytes(
        bytes: &[u8],
        max_entries: usize,
        max_total: u64,
    ) -> Result<Self, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge);
        }
        let m: Manifest = serde_json::from_slice(bytes)?;
        if m.to_canonical_bytes() != bytes {
            return Err(ManifestError::NotCanonical);
        }
        m.validate(max_entries, max_total)?;
        Ok(m)
    }

    /// The blob a format-1 manifest names.
    pub fn blob_digest(&self) -> Result<Option<Digest>, ManifestError> {
        self.blob
            .as_ref()
            .map(|b| Digest::parse(&b.digest))
            .transpose()
            .map_err(Into::into)
    }

    /// The file objects of the release, each once, in the order their first
    /// path appears in the manifest (the order object packs use); empty
    /// files are left out (they are created from the manifest).
    pub fn objects(&self) -> Vec<(Digest, u64)> {
        let mut seen = std::collections::HashSet::new();
        self.entries
            .iter()
            .filter(|e| e.kind == EntryKind::File && e.size > 0)
            .filter_map(|e| Some((Digest::parse(e.sha256.as_deref()?).ok()?, e.size)))
            .filter(|(d, _)| seen.insert(d.clone()))
            .collect()
    }

    /// Sum of the sizes of all regular files.
    pub fn content_bytes(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .map(|e| e.size)
            .sum()
    }

    /// Checks names, paths, ordering, modes and link targets. A manifest that
    /// passes describes a tree that stays inside its root when unpacked.
    pub fn validate(&self, max_entries: usize, max_total: u64) -> Result<(), ManifestError> {
        match (self.format, &self.blob) {
            (FORMAT_BLOB, None) => return Err(ManifestError::Blob(1, "must name its blob")),
            (FORMAT_VERSION, Some(_)) => {
                return Err(ManifestError::Blob(2, "names no blob"));
            }
            (FORMAT_BLOB | FORMAT_VERSION, _) => {}
            (other, _) => return Err(ManifestError::Format(other)),
        }
        validate_name(NameKind::App, &self.app)?;
        validate_name(NameKind::Version, &self.version)?;
        self.blob_digest()?;
        if let Some(c) = &self.git_commit
            && (c.is_empty() || c.len() > 64 || !c.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(entry_err("git_commit", "not a hex commit id"));
        }
        if self.entries.len() > max_entries {
            return Err(ManifestError::TooManyEntries(
                self.entries.len(),
                max_entries,
            ));
        }
        let total = self
            .entries
            .iter()
            .try_fold(0u64, |acc, e| acc.checked_add(e.size));
        match total {
            Some(t) if t <= max_total => {}
            Some(t) => return Err(ManifestError::TooManyBytes(t, max_total)),
            None => return Err(ManifestError::TooManyBytes(u64::MAX, max_total)),
        }
        let content = self.content_bytes();
        // Format 2 bounds what a pack may decode to by the objects asked for.
        if let Some(blob) = &self.blob
            && content
                > blob
                    .size
                    .saturating_mul(MAX_RATIO)
                    .saturating_add(RATIO_SLACK)
        {
            return Err(ManifestError::Ratio {
                content,
                blob: blob.size,
            });
        }
        let mut kinds: BTreeMap<&str, EntryKind> = BTreeMap::new();
        let mut prev: Option<&str> = None;
        for e in &self.entries {
            check_clean_path(&e.path)?;
            if let Some(p) = prev
                && p >= e.path.as_str()
            {
                return Err(entry_err(
                    &e.path,
                    "entries are not strictly sorted (duplicate or out of order)",
                ));
            }
            prev = Some(&e.path);
            if let Some((parent, _)) = e.path.rsplit_once('/')
                && kinds.get(parent) != Some(&EntryKind::Dir)
            {
                return Err(entry_err(
                    &e.path,
                    "parent is not a directory listed before it",
                ));
            }
            if e.mode & !0o777 != 0 {
                return Err(entry_err(
                    &e.path,
                    "setuid, setgid or sticky bits are not allowed",
                ));
            }
            if e.mode & 0o002 != 0 && e.kind != EntryKind::Symlink {
                return Err(entry_err(&e.path, "world-writable modes are not allowed"));
            }
            match e.kind {
                EntryKind::File => {
                    let Some(h) = &e.sha256 else {
                        return Err(entry_err(&e.path, "file without sha256"));
                    };
                    Digest::parse(h).map_err(|err| entry_err(&e.path, err.to_string()))?;
                    if e.target.is_some() {
                        return Err(entry_err(&e.path, "file with a link target"));
                    }
                }
                EntryKind::Dir => {
                    if e.size != 0 || e.sha256.is_some() || e.target.is_some() {
                        return Err(entry_err(&e.path, "directory with size, digest or target"));
                    }
                }
                EntryKind::Symlink => {
                    if e.size != 0 || e.sha256.is_some() {
                        return Err(entry_err(&e.path, "symlink with size or digest"));
                    }
                    let Some(t) = &e.target else {
                        return Err(entry_err(&e.path, "symlink without target"));
                    };
                    check_link_target(&e.path, t, &kinds)?;
                }
            }
            kinds.insert(&e.path, e.kind);
        }
        Ok(())
    }
}

/// A release path: relative, `/`-separated, normal components only, no NUL.
pub fn check_clean_path(path: &str) -> Result<(), ManifestError> {
    if path.is_empty() {
        return Err(entry_err(path, "empty path"));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(entry_err(path, "path too long"));
    }
    if path.contains('\0') {
        return Err(entry_err(path, "path contains NUL"));
    }
    if path.starts_with('/') {
        return Err(entry_err(path, "absolute path"));
    }
    for comp in path.split('/') {
        match comp {
            "" => return Err(entry_err(path, "empty path component")),
            "." | ".." => return Err(entry_err(path, "`.` or `..` component")),
            _ => {}
        }
    }
    // Belt and braces: the std parser must agree that every component is normal.
    if !Path::new(path)
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(entry_err(path, "path is not a plain relative path"));
    }
    Ok(())
}

/// A link target must resolve inside the release, lexically, through directories
/// only: every intermediate component must be a directory listed earlier, so a
/// chain of links can never lead out.
fn check_link_target(
    link: &str,
    target: &str,
    kinds: &BTreeMap<&str, EntryKind>,
) -> Result<(), ManifestError> {
    if target.is_empty() || target.len() > MAX_PATH_BYTES || target.contains('\0') {
        return Err(entry_err(link, "bad symlink target"));
    }
    if target.starts_with('/') {
        return Err(entry_err(
            link,
            format!("symlink target {target:?} is absolute"),
        ));
    }
    let mut stack: Vec<&str> = link.split('/').collect();
    stack.pop();
    let comps: Vec<&str> = target
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    for (i, comp) in comps.iter().enumerate() {
        if *comp == ".." {
            if stack.pop().is_none() {
                return Err(entry_err(
                    link,
                    format!("symlink target {target:?} leaves the release"),
                ));
            }
            continue;
        }
        stack.push(comp);
        let last = i + 1 == comps.len();
        if !last && kinds.get(stack.join("/").as_str()) != Some(&EntryKind::Dir) {
            return Err(entry_err(
                link,
                format!(
                    "symlink target {target:?} goes through something that is not a directory of the release"
                ),
            ));
        }
    }
    if stack.is_empty() {
        return Err(entry_err(
            link,
            format!("symlink target {target:?} points at the release root"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_compressed_against_a_kept_one_is_small_and_needs_that_one() {
        let entry = |i: u32, body: &str| {
            format!(
                r#"{{"path":"lib/m{i:05}.py","kind":"file","mode":420,"size":{},"sha256":"{}"}}"#,
                body.len(),
                crate::Digest::of(body.as_bytes())
            )
        };
        let tree = |changed: &str| {
            let list: Vec<String> = (0..2000)
                .map(|i| entry(i, if i == 7 { changed } else { "same" }))
                .collect();
            format!(r#"{{"entries":[{}]}}"#, list.join(",")).into_bytes()
        };
        let (old, new) = (tree("v1"), tree("v2"));
        let alone = compress(&new, None).unwrap();
        let delta = compress(&new, Some(&old)).unwrap();
        assert!(
            delta.len() * 20 < alone.len(),
            "{} vs {}",
            delta.len(),
            alone.len()
        );
        assert_eq!(decompress(&delta, Some(&old), new.len()).unwrap(), new);
        assert!(
            decompress(&delta, None, new.len()).is_err(),
            "the base is needed"
        );
        assert!(decompress(&alone, None, new.len() - 1).is_err(), "bounded");
    }

    fn file(path: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::File,
            mode: 0o644,
            size: 1,
            sha256: Some(Digest::of(b"x").to_string()),
            target: None,
        }
    }
    fn dir(path: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::Dir,
            mode: 0o755,
            size: 0,
            sha256: None,
            target: None,
        }
    }
    fn link(path: &str, target: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::Symlink,
            mode: 0o777,
            size: 0,
            sha256: None,
            target: Some(target.into()),
        }
    }
    fn manifest(entries: Vec<Entry>) -> Manifest {
        Manifest {
            format: 1,
            app: "web".into(),
            version: "1.0.0".into(),
            git_commit: None,
            blob: Some(BlobRef {
                digest: Digest::of(b"blob").to_string(),
                size: 4,
            }),
            entries,
        }
    }

    /// One helper per module, as in rust-analyzer: entries in, Ok or the error text out.
    fn check(entries: Vec<Entry>, expect_err: Option<&str>) {
        let got = manifest(entries).validate(1000, 1 << 30);
        match (got, expect_err) {
            (Ok(()), None) => {}
            (Err(e), Some(want)) => {
                assert!(e.to_string().contains(want), "error {e:?} lacks {want:?}")
            }
            (got, want) => panic!("got {got:?}, wanted error {want:?}"),
        }
    }

    #[test]
    fn accepts_a_plain_tree() {
        check(
            vec![
                file("a"),
                dir("d"),
                link("d/l", "../a"),
                file("d/x"),
                link("l2", "d/x"),
            ],
            None,
        );
    }

    #[test]
    fn rejects_escapes_and_oddities() {
        check(vec![file("/etc/passwd")], Some("absolute"));
        check(vec![file("../x")], Some("`.` or `..`"));
        check(vec![dir("d"), file("d/../x")], Some("`.` or `..`"));
        check(vec![link("l", "../outside")], Some("leaves the release"));
        check(vec![link("l", "/etc")], Some("absolute"));
        check(
            vec![dir("d"), link("d/l", "../../x")],
            Some("leaves the release"),
        );
        check(
            vec![link("a", "."), file("b")],
            Some("points at the release root"),
        );
        check(
            vec![dir("d"), link("d/a", "."), link("e", "d/a/../..")],
            Some("not a directory"),
        );
        check(vec![file("x/y")], Some("parent is not a directory"));
        check(
            vec![link("d", "e"), file("d/x")],
            Some("parent is not a directory"),
        );
        check(vec![file("a"), file("a")], Some("strictly sorted"));
        check(vec![file("b"), file("a")], Some("strictly sorted"));
        let mut suid = file("a");
        suid.mode = 0o4755;
        check(vec![suid], Some("setuid"));
        let mut ww = file("a");
        ww.mode = 0o666;
        check(vec![ww], Some("world-writable"));
    }

    #[test]
    fn canonical_bytes_round_trip_and_refuse_reencoded_forms() {
        let m = manifest(vec![dir("d"), file("d/x")]);
        let bytes = m.to_canonical_bytes();
        let back = Manifest::from_canonical_bytes(&bytes, 10, 100).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.digest(), Digest::of(&bytes));
        let pretty = serde_json::to_vec_pretty(&m).unwrap();
        assert!(matches!(
            Manifest::from_canonical_bytes(&pretty, 10, 100),
            Err(ManifestError::NotCanonical)
        ));
    }

    #[test]
    fn enforces_limits() {
        let m = manifest(vec![file("a"), file("b")]);
        assert!(matches!(
            m.validate(1, 100),
            Err(ManifestError::TooManyEntries(2, 1))
        ));
        assert!(matches!(
            m.validate(10, 1),
            Err(ManifestError::TooManyBytes(2, 1))
        ));
    }
}
