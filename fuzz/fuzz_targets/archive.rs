//! The archive reader: arbitrary tar bytes (compressed here, so the fuzzer
//! explores tar structure, not zstd's) unpacked against a fixed manifest. It
//! must never panic, and never leave anything but a complete release.
#![no_main]

use artifact::manifest::BlobRef;
use artifact::{Digest, Entry, EntryKind, Limits, Manifest, unpack_into};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|tar: &[u8]| {
    let blob = zstd::encode_all(tar, 1).expect("zstd encodes");
    let manifest = Manifest {
        format: 1,
        app: "web".into(),
        version: "1".into(),
        git_commit: None,
        blob: Some(BlobRef {
            digest: Digest::of(&blob).to_string(),
            size: blob.len() as u64,
        }),
        entries: vec![
            Entry {
                path: "bin".into(),
                kind: EntryKind::Dir,
                mode: 0o755,
                size: 0,
                sha256: None,
                target: None,
            },
            Entry {
                path: "bin/app".into(),
                kind: EntryKind::File,
                mode: 0o755,
                size: 2,
                sha256: Some(Digest::of(b"hi").to_string()),
                target: None,
            },
            Entry {
                path: "run".into(),
                kind: EntryKind::Symlink,
                mode: 0o777,
                size: 0,
                sha256: None,
                target: Some("bin/app".into()),
            },
        ],
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let dest = dir.path().join("release");
    let limits = Limits {
        max_entries: 16,
        max_total_bytes: 1 << 20,
        ..Limits::default()
    };
    let ok = unpack_into(&blob[..], &manifest, &dest, &limits).is_ok();
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    if ok {
        assert_eq!(left, vec![std::ffi::OsString::from("release")]);
        assert_eq!(std::fs::read(dest.join("bin/app")).expect("app"), b"hi");
    } else {
        assert!(left.is_empty(), "a refused archive left {left:?}");
    }
});
