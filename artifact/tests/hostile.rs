//! Hostile archives, one attack per test: each must be refused with an error
//! that names the problem, and leave nothing behind (no release dir, no temp
//! dir, nothing outside). Archives are built byte by byte as an attacker would,
//! bypassing the tar crate's own path checks.

use std::path::Path;

use artifact::manifest::BlobRef;
use artifact::{Digest, Entry, EntryKind, Limits, Manifest, unpack_into};

struct Raw<'a> {
    name: &'a [u8],
    kind: tar::EntryType,
    mode: u32,
    data: &'a [u8],
    link: Option<&'a str>,
}

fn file<'a>(name: &'a str, data: &'a [u8]) -> Raw<'a> {
    Raw {
        name: name.as_bytes(),
        kind: tar::EntryType::Regular,
        mode: 0o644,
        data,
        link: None,
    }
}

/// A zstd-compressed tar of `entries`, names written raw into the header.
fn blob(entries: &[Raw]) -> Vec<u8> {
    let mut tarball = Vec::new();
    {
        let mut b = tar::Builder::new(&mut tarball);
        for e in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(e.kind);
            h.set_size(e.data.len() as u64);
            h.set_mode(e.mode);
            if let Some(l) = e.link {
                h.set_link_name(l).unwrap();
            }
            let raw = &mut h.as_old_mut().name;
            raw[..e.name.len()].copy_from_slice(e.name);
            h.set_cksum();
            b.append(&h, e.data).unwrap();
        }
        b.finish().unwrap();
    }
    zstd::encode_all(&tarball[..], 3).unwrap()
}

fn entry(path: &str, kind: EntryKind, mode: u32, data: &[u8], target: Option<&str>) -> Entry {
    Entry {
        path: path.into(),
        kind,
        mode,
        size: if kind == EntryKind::File {
            data.len() as u64
        } else {
            0
        },
        sha256: (kind == EntryKind::File).then(|| Digest::of(data).to_string()),
        target: target.map(String::from),
    }
}

fn manifest(blob: &[u8], entries: Vec<Entry>) -> Manifest {
    Manifest {
        format: 1,
        app: "web".into(),
        version: "1".into(),
        git_commit: None,
        blob: Some(BlobRef {
            digest: Digest::of(blob).to_string(),
            size: blob.len() as u64,
        }),
        entries,
    }
}

/// Unpacks into `<tmp>/releases/1`; returns the error text after checking that
/// nothing was left anywhere under `<tmp>`.
fn refused(blob: &[u8], m: &Manifest, limits: &Limits) -> String {
    let t = tempfile::tempdir().unwrap();
    let releases = t.path().join("releases");
    std::fs::create_dir(&releases).unwrap();
    let err = unpack_into(blob, m, &releases.join("1"), limits)
        .expect_err("a hostile archive must be refused")
        .to_string();
    assert_eq!(
        std::fs::read_dir(&releases).unwrap().count(),
        0,
        "nothing left behind after: {err}"
    );
    assert_eq!(
        std::fs::read_dir(t.path()).unwrap().count(),
        1,
        "nothing outside: {err}"
    );
    err
}

fn assert_has(err: &str, want: &str) {
    assert!(err.contains(want), "expected {want:?} in: {err}");
}

#[test]
fn absolute_paths() {
    let outside = format!("/tmp/slipway-hostile-{}", std::process::id());
    let b = blob(&[file(&outside, b"x")]);
    // The archive carries an absolute name where the manifest lists a plain one.
    let m = manifest(&b, vec![entry("x", EntryKind::File, 0o644, b"x", None)]);
    assert_has(
        &refused(&b, &m, &Limits::default()),
        "not in the manifest at this position",
    );
    // A manifest naming it is refused before anything is read.
    let m = manifest(
        &b,
        vec![entry(&outside, EntryKind::File, 0o644, b"x", None)],
    );
    assert_has(&refused(&b, &m, &Limits::default()), "absolute path");
    assert!(!Path::new(&outside).exists());
}

#[test]
fn dot_dot_components() {
    let b = blob(&[file("a/../../evil", b"x")]);
    let m = manifest(
        &b,
        vec![entry("a/../../evil", EntryKind::File, 0o644, b"x", None)],
    );
    assert_has(
        &refused(&b, &m, &Limits::default()),
        "`.` or `..` component",
    );
}

#[test]
fn symlinks_leading_out_of_the_release() {
    let link = Raw {
        name: b"up",
        kind: tar::EntryType::Symlink,
        mode: 0o777,
        data: b"",
        link: Some("../../etc"),
    };
    let b = blob(&[link]);
    let m = manifest(
        &b,
        vec![entry(
            "up",
            EntryKind::Symlink,
            0o777,
            b"",
            Some("../../etc"),
        )],
    );
    assert_has(&refused(&b, &m, &Limits::default()), "leaves the release");
    // The manifest says a harmless target; the archive carries the escaping one.
    let m = manifest(
        &b,
        vec![entry("up", EntryKind::Symlink, 0o777, b"", Some("x"))],
    );
    assert_has(
        &refused(&b, &m, &Limits::default()),
        "symlink target differs",
    );
}

#[test]
fn files_written_through_a_symlink() {
    let b = blob(&[
        Raw {
            name: b"d",
            kind: tar::EntryType::Symlink,
            mode: 0o777,
            data: b"",
            link: Some("e"),
        },
        file("d/passwd", b"root::0:0"),
    ]);
    let m = manifest(
        &b,
        vec![
            entry("d", EntryKind::Symlink, 0o777, b"", Some("e")),
            entry("d/passwd", EntryKind::File, 0o644, b"root::0:0", None),
        ],
    );
    assert_has(
        &refused(&b, &m, &Limits::default()),
        "parent is not a directory",
    );
}

#[test]
fn hardlinks_devices_and_fifos() {
    for (kind, want) in [
        (tar::EntryType::Link, "hardlinks are not allowed"),
        (tar::EntryType::Char, "is not allowed"),
        (tar::EntryType::Block, "is not allowed"),
        (tar::EntryType::Fifo, "is not allowed"),
    ] {
        let b = blob(&[Raw {
            name: b"x",
            kind,
            mode: 0o644,
            data: b"",
            link: (kind == tar::EntryType::Link).then_some("/etc/shadow"),
        }]);
        let m = manifest(&b, vec![entry("x", EntryKind::File, 0o644, b"", None)]);
        assert_has(&refused(&b, &m, &Limits::default()), want);
    }
}

#[test]
fn setuid_and_setgid_bits() {
    let mut suid = file("bin/su", b"#!");
    suid.mode = 0o4755;
    let b = blob(&[
        Raw {
            name: b"bin",
            kind: tar::EntryType::Directory,
            mode: 0o755,
            data: b"",
            link: None,
        },
        suid,
    ]);
    let dir = entry("bin", EntryKind::Dir, 0o755, b"", None);
    for mode in [0o4755, 0o2755] {
        let m = manifest(
            &b,
            vec![
                dir.clone(),
                entry("bin/su", EntryKind::File, mode, b"#!", None),
            ],
        );
        assert_has(
            &refused(&b, &m, &Limits::default()),
            "setuid, setgid or sticky",
        );
    }
    // The manifest is clean, the archive entry carries the bit.
    let m = manifest(
        &b,
        vec![dir, entry("bin/su", EntryKind::File, 0o755, b"#!", None)],
    );
    assert_has(&refused(&b, &m, &Limits::default()), "mode 4755 differs");
}

#[test]
fn duplicate_entries() {
    let b = blob(&[file("a", b"1"), file("a", b"2")]);
    let m = manifest(&b, vec![entry("a", EntryKind::File, 0o644, b"1", None)]);
    assert_has(
        &refused(&b, &m, &Limits::default()),
        "archive has more entries",
    );
    let e = entry("a", EntryKind::File, 0o644, b"1", None);
    let m = manifest(&b, vec![e.clone(), e]);
    assert_has(
        &refused(&b, &m, &Limits::default()),
        "duplicate or out of order",
    );
}

#[test]
fn too_many_files_or_bytes() {
    let b = blob(&[file("a", b"1"), file("b", b"2"), file("c", b"3")]);
    let m = manifest(
        &b,
        vec![
            entry("a", EntryKind::File, 0o644, b"1", None),
            entry("b", EntryKind::File, 0o644, b"2", None),
            entry("c", EntryKind::File, 0o644, b"3", None),
        ],
    );
    let few = Limits {
        max_entries: 2,
        ..Limits::default()
    };
    assert_has(&refused(&b, &m, &few), "more than the limit of 2");
    let small = Limits {
        max_total_bytes: 2,
        ..Limits::default()
    };
    assert_has(&refused(&b, &m, &small), "more than the limit of 2");
}

#[test]
fn zstd_bombs_are_refused_before_decoding() {
    // 200 MiB claimed by a manifest whose blob is a few bytes: the ratio check
    // refuses it without decoding (the blob is not even zstd).
    let mut e = entry("zeros", EntryKind::File, 0o644, b"", None);
    e.size = 200 << 20;
    let garbage = b"not zstd at all".to_vec();
    let m = manifest(&garbage, vec![e]);
    assert_has(
        &refused(&garbage, &m, &Limits::default()),
        "decompression bomb",
    );

    // Within the ratio, an archive that decodes to more than the manifest says
    // is refused at the first header that disagrees.
    let big = vec![0u8; 4 << 20];
    let b = blob(&[file("zeros", &big)]);
    let m = manifest(&b, vec![entry("zeros", EntryKind::File, 0o644, b"", None)]);
    assert_has(
        &refused(&b, &m, &Limits::default()),
        "size 4194304 differs from manifest 0",
    );
}

#[test]
fn names_that_are_not_utf8_or_hold_nul() {
    let b = blob(&[Raw {
        name: &[b'a', 0xff, 0xfe],
        kind: tar::EntryType::Regular,
        mode: 0o644,
        data: b"",
        link: None,
    }]);
    let m = manifest(&b, vec![entry("a", EntryKind::File, 0o644, b"", None)]);
    assert_has(&refused(&b, &m, &Limits::default()), "not UTF-8");
    let m = manifest(&b, vec![entry("a\0b", EntryKind::File, 0o644, b"", None)]);
    assert_has(&refused(&b, &m, &Limits::default()), "NUL");
}
