//! Format 2 end to end on real files: a tree scanned, its objects packed, a
//! release assembled from a pack alone (a fresh host) and from a pack of the
//! one changed file plus hardlinks into the previous release (a delta), and
//! packs that lie refused with nothing left behind.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use artifact::assemble::{LocalFile, assemble, wanted};
use artifact::objects::{Check, Expect, ObjectSink, read_pack, scan_dir, write_pack};
use artifact::{Digest, Limits, Manifest};

fn tree(dir: &Path, app_body: &str) {
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::create_dir_all(dir.join("lib/pkg")).unwrap();
    fs::write(dir.join("bin/app"), format!("#!/bin/sh\n{app_body}\n")).unwrap();
    fs::set_permissions(dir.join("bin/app"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(dir.join("lib/pkg/__init__.py"), b"").unwrap();
    fs::write(dir.join("lib/pkg/big.py"), vec![b'x'; 300_000]).unwrap();
    // The same content twice: one object, two paths.
    fs::write(dir.join("lib/pkg/copy.py"), vec![b'x'; 300_000]).unwrap();
    fs::write(
        dir.join("slipway.toml"),
        b"[processes.web]\ncommand = [\"bin/app\"]\n",
    )
    .unwrap();
    symlink("bin/app", dir.join("run")).unwrap();
}

fn manifest(dir: &Path, version: &str) -> Manifest {
    Manifest::from_entries("web", version, None, scan_dir(dir).unwrap()).unwrap()
}

/// An object pack of `order`, read from the tree at `src`.
fn pack_of(m: &Manifest, src: &Path, order: &[(Digest, u64)]) -> Vec<u8> {
    let paths = m.object_paths(src);
    let (bytes, _, _) = write_pack(
        order,
        |d| paths.get(d).cloned(),
        Vec::new(),
        2,
        Check::Digest,
    )
    .unwrap();
    bytes
}

/// Every file of the release dir `root` as it would be offered for linking.
fn offer(m: &Manifest, root: &Path) -> HashMap<Digest, LocalFile> {
    m.object_paths(root)
        .into_iter()
        .map(|(d, path)| {
            let meta = fs::metadata(&path).unwrap();
            let local = LocalFile {
                ino: meta.ino(),
                size: meta.len(),
                mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
                path,
            };
            (d, local)
        })
        .collect()
}

/// Assembles `m` into `dest` from `pack` and the `local` files.
fn install(
    pack: &[u8],
    m: &Manifest,
    dest: &Path,
    local: &HashMap<Digest, LocalFile>,
) -> Result<artifact::assemble::Assembled, artifact::UnpackError> {
    assemble(Some(pack), m, dest, local, &Limits::default(), || {})
}

/// Two versions of the tree, differing in `bin/app`; the first installed
/// from its full pack into `releases/1`.
struct Installed {
    v2: std::path::PathBuf,
    m1: Manifest,
    m2: Manifest,
    releases: std::path::PathBuf,
}

fn installed(dir: &Path) -> Installed {
    let (v1, v2) = (dir.join("v1"), dir.join("v2"));
    tree(&v1, "echo 1");
    tree(&v2, "echo 2");
    let (m1, m2) = (manifest(&v1, "1"), manifest(&v2, "2"));
    let releases = dir.join("releases");
    fs::create_dir_all(&releases).unwrap();
    let full = pack_of(&m1, &v1, &m1.objects());
    install(&full, &m1, &releases.join("1"), &HashMap::new()).unwrap();
    Installed {
        v2,
        m1,
        m2,
        releases,
    }
}

fn same_tree(a: &Path, b: &Path) {
    for rel in [
        "bin/app",
        "lib/pkg/__init__.py",
        "lib/pkg/big.py",
        "lib/pkg/copy.py",
    ] {
        assert_eq!(
            fs::read(a.join(rel)).unwrap(),
            fs::read(b.join(rel)).unwrap(),
            "{rel}"
        );
        let mode = |p: &Path| fs::metadata(p.join(rel)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(a), mode(b), "{rel}");
    }
    assert_eq!(fs::read_link(b.join("run")).unwrap(), Path::new("bin/app"));
}

#[test]
fn a_fresh_host_assembles_the_tree_from_its_full_pack() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree(&src, "echo 1");
    let m = manifest(&src, "1.0.0");
    assert_eq!(m.objects().len(), 3, "bin/app, big.py once, slipway.toml");
    let pack = pack_of(&m, &src, &m.objects());
    let dest = t.path().join("releases/1.0.0");
    fs::create_dir_all(dest.parent().unwrap()).unwrap();
    let none = HashMap::new();
    let made = install(&pack, &m, &dest, &none).unwrap();
    assert_eq!(made.from_pack, 3);
    assert_eq!(
        made.copied, 1,
        "the duplicate is copied from its first path"
    );
    same_tree(&src, &dest);
}

#[test]
fn a_one_file_change_moves_one_object_and_links_the_rest() {
    let t = tempfile::tempdir().unwrap();
    let Installed {
        v2,
        m1,
        m2,
        releases,
    } = installed(t.path());

    let local = offer(&m1, &releases.join("1"));
    let want = wanted(&m2, &local);
    assert_eq!(want.len(), 1, "only bin/app changed: {want:?}");
    let delta = pack_of(&m2, &v2, &want);
    assert!(
        delta.len() < 1000,
        "the delta pack is small: {} bytes",
        delta.len()
    );
    let made = install(&delta, &m2, &releases.join("2"), &local).unwrap();
    assert_eq!((made.from_pack, made.linked), (1, 2));
    same_tree(&v2, &releases.join("2"));
    let ino = |v: &str| {
        fs::metadata(releases.join(v).join("lib/pkg/big.py"))
            .unwrap()
            .ino()
    };
    assert_eq!(ino("1"), ino("2"), "an unchanged file is the same inode");
}

#[test]
fn a_local_file_edited_after_it_was_offered_is_not_linked() {
    let t = tempfile::tempdir().unwrap();
    let Installed {
        v2,
        m1,
        m2,
        releases,
    } = installed(t.path());
    let local = offer(&m1, &releases.join("1"));
    // Edited in place by hand, same size, after the host checked it.
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::write(releases.join("1/lib/pkg/big.py"), vec![b'y'; 300_000]).unwrap();
    let delta = pack_of(&m2, &v2, &wanted(&m2, &local));
    let err = install(&delta, &m2, &releases.join("2"), &local).unwrap_err();
    assert!(
        err.to_string()
            .contains("changed while it was being linked"),
        "{err}"
    );
    assert!(!releases.join("2").exists());
    assert_eq!(
        fs::read_dir(&releases).unwrap().count(),
        1,
        "no temp dir left"
    );
}

#[test]
fn packs_that_lie_are_refused_and_leave_nothing() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree(&src, "echo 1");
    let m = manifest(&src, "1");
    let releases = t.path().join("releases");
    fs::create_dir_all(&releases).unwrap();
    let none = HashMap::new();
    let order = m.objects();
    let mut reversed = order.clone();
    reversed.reverse();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("out of order", pack_of(&m, &src, &reversed)),
        ("one missing", pack_of(&m, &src, &order[..2])),
        ("empty", Vec::new()),
    ];
    for (what, pack) in cases {
        let err = install(&pack, &m, &releases.join("1"), &none).unwrap_err();
        assert!(!releases.join("1").exists(), "{what}: {err}");
        assert_eq!(
            fs::read_dir(&releases).unwrap().count(),
            0,
            "{what}: nothing left"
        );
    }
    // An object named by a digest its content does not hash to: made by
    // hand, since `write_pack` checks what it reads.
    let liar = order[0].clone();
    let mut tarball = Vec::new();
    {
        let mut b = tar::Builder::new(&mut tarball);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(liar.1);
        b.append_data(&mut h, liar.0.hex(), &vec![b'z'; liar.1 as usize][..])
            .unwrap();
        b.finish().unwrap();
    }
    let pack = zstd::encode_all(&tarball[..], 3).unwrap();
    let err = install(&pack, &m, &releases.join("1"), &none).unwrap_err();
    assert!(err.to_string().contains("content hashes to"), "{err}");
    assert_eq!(fs::read_dir(&releases).unwrap().count(), 0, "nothing left");
}

struct Memory(HashMap<Digest, Vec<u8>>);

impl ObjectSink for Memory {
    type Out = Vec<u8>;
    fn begin(&mut self, _: &Digest, _: u64) -> std::io::Result<Vec<u8>> {
        Ok(Vec::new())
    }
    fn commit(&mut self, d: &Digest, out: Vec<u8>) -> std::io::Result<()> {
        self.0.insert(d.clone(), out);
        Ok(())
    }
}

#[test]
fn an_upload_pack_is_read_in_any_order_but_only_objects_of_the_release() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree(&src, "echo 1");
    let m = manifest(&src, "1");
    let mut order = m.objects();
    order.reverse();
    let pack = pack_of(&m, &src, &order);
    let allowed: HashMap<Digest, u64> = m.objects().into_iter().collect();
    let mut sink = Memory(HashMap::new());
    let (n, _, size) =
        read_pack(&pack[..], 1 << 30, Expect::AnyOf(&allowed), 24, &mut sink).unwrap();
    assert_eq!((n, size), (3, pack.len() as u64));
    let one: HashMap<Digest, u64> = m.objects().into_iter().take(1).collect();
    let err = read_pack(
        &pack[..],
        1 << 30,
        Expect::AnyOf(&one),
        24,
        &mut Memory(HashMap::new()),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("not an object of this release"),
        "{err}"
    );
}
