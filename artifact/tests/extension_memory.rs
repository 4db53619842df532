//! A small blob whose tar stream opens with one huge PAX record (the manifest
//! claims a file big enough to pass the ratio check) must be refused at that
//! record's header, before the reader buffers it: the process's peak memory
//! stays where it was. Alone in its test binary, so no other test moves the peak.

use std::io::Write;

use artifact::manifest::BlobRef;
use artifact::{Digest, Entry, EntryKind, Limits, Manifest, unpack_into};

/// Peak resident memory of this process so far, in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

/// tar+zstd of one PAX header whose record is `zeros` zero bytes followed by
/// `noise` incompressible ones (so the blob is big enough for the ratio check),
/// streamed: the record never exists whole in this process.
fn hostile_blob(zeros: usize, noise: usize) -> Vec<u8> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_size((zeros + noise) as u64);
    h.set_path("pax").unwrap();
    h.set_cksum();
    enc.write_all(h.as_bytes()).unwrap();
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..zeros / chunk.len() {
        enc.write_all(&chunk).unwrap();
    }
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..noise)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    enc.write_all(&noise).unwrap();
    enc.write_all(&[0u8; 1024]).unwrap();
    enc.finish().unwrap()
}

#[test]
fn a_huge_pax_record_is_refused_before_it_is_buffered() {
    const RECORD: usize = 256 << 20;
    let blob = hostile_blob(RECORD, 256 << 10);
    let m = Manifest {
        format: 1,
        app: "web".into(),
        version: "1".into(),
        git_commit: None,
        blob: Some(BlobRef {
            digest: Digest::of(&blob).to_string(),
            size: blob.len() as u64,
        }),
        entries: vec![Entry {
            path: "big".into(),
            kind: EntryKind::File,
            mode: 0o644,
            size: RECORD as u64 + (1 << 20),
            sha256: Some(Digest::of(b"").to_string()),
            target: None,
        }],
    };
    let t = tempfile::tempdir().unwrap();
    let before = peak_rss_kib();
    let err = unpack_into(&blob[..], &m, &t.path().join("1"), &Limits::default())
        .expect_err("a 256 MiB PAX record must be refused")
        .to_string();
    let grew_mib = (peak_rss_kib() - before) / 1024;
    eprintln!(
        "peak memory grew {grew_mib} MiB ({} KiB blob)",
        blob.len() / 1024
    );
    assert!(
        grew_mib < 32,
        "peak memory grew {grew_mib} MiB while refusing a {} KiB blob",
        blob.len() / 1024
    );
    assert!(
        err.contains("PAX") && err.contains("over the 8192-byte bound"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
}
