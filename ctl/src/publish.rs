//! `slipctl publish`: pack the tree deterministically into a temp file (never into
//! memory), upload it in chunks unless the controller already has its digest,
//! then register the release with its manifest.

use std::path::Path;
use std::process::Command;

use artifact::{NameKind, ReleaseSpec, validate_name};
use indicatif::{ProgressBar, ProgressStyle};
use proto::v1::{
    CreateReleaseRequest, MissingBlobsRequest, UploadBlobHeader, UploadBlobRequest,
    upload_blob_request,
};
use tokio::io::AsyncReadExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::Clients;
use crate::error::{CtlError, Result, from_status};

fn failed(msg: impl Into<String>) -> CtlError {
    CtlError::Failed(msg.into())
}

/// The commit of DIR when it is inside a git checkout: Ok(None) outside git,
/// an error when the tree is dirty and `allow_dirty` is false.
fn git_commit(dir: &Path, allow_dirty: bool) -> Result<Option<String>> {
    let git = |args: &[&str]| Command::new("git").arg("-C").arg(dir).args(args).output();
    let Ok(inside) = git(&["rev-parse", "--is-inside-work-tree"]) else {
        return Ok(None);
    };
    if !inside.status.success() || String::from_utf8_lossy(&inside.stdout).trim() != "true" {
        return Ok(None);
    }
    let head =
        git(&["rev-parse", "HEAD"]).map_err(|e| failed(format!("git rev-parse HEAD: {e}")))?;
    if !head.status.success() {
        return Ok(None); // a repository without commits yet
    }
    let commit = String::from_utf8_lossy(&head.stdout).trim().to_string();
    let status = git(&["status", "--porcelain", "--", "."])
        .map_err(|e| failed(format!("git status: {e}")))?;
    let dirty = String::from_utf8_lossy(&status.stdout).lines().count();
    if dirty > 0 {
        if !allow_dirty {
            return Err(failed(format!(
                "{} has {dirty} uncommitted change(s) in git: commit them first, or pass --allow-dirty to publish anyway",
                dir.display()
            )));
        }
        eprintln!(
            "warning: publishing a dirty tree ({dirty} uncommitted change(s)); no git commit is recorded since {} would not describe it",
            &commit[..commit.len().min(12)]
        );
        return Ok(None);
    }
    Ok(Some(commit))
}

fn progress(total: u64, what: &str) -> ProgressBar {
    // indicatif draws nothing when stderr is not a terminal (CI logs stay clean).
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

pub async fn publish(
    c: &mut Clients,
    tenant: &str,
    dir: &Path,
    app: &str,
    version: &str,
    allow_dirty: bool,
    sign: Option<&Path>,
) -> Result<()> {
    let key = sign
        .map(trust::sign::KeyPair::load)
        .transpose()
        .map_err(|e| CtlError::Usage(e.to_string()))?;
    validate_name(NameKind::App, app).map_err(|e| failed(e.to_string()))?;
    validate_name(NameKind::Version, version).map_err(|e| failed(e.to_string()))?;
    if !dir.is_dir() {
        return Err(failed(format!("{} is not a directory", dir.display())));
    }
    ReleaseSpec::load(dir).map_err(|e| failed(format!("release spec: {e}")))?;
    let commit = git_commit(dir, allow_dirty)?;

    // Pack into a temp file: the blob is streamed from disk, never held in memory.
    let tmp =
        tempfile::NamedTempFile::new().map_err(|e| failed(format!("create temp file: {e}")))?;
    let (src, file) = (
        dir.to_path_buf(),
        tmp.reopen()
            .map_err(|e| failed(format!("temp file: {e}")))?,
    );
    let packed = tokio::task::spawn_blocking(move || {
        artifact::pack_dir(&src, std::io::BufWriter::new(file))
    })
    .await
    .map_err(|e| failed(format!("pack: {e}")))?
    .map_err(|e| failed(format!("pack {}: {e}", dir.display())))?;
    let manifest = packed.into_manifest(app, version, commit);
    let digest = manifest.blob.digest.clone();
    let size = manifest.blob.size;

    let missing = c
        .releases
        .missing_blobs(MissingBlobsRequest {
            tenant: tenant.into(),
            digests: vec![digest.clone()],
        })
        .await
        .map_err(|s| from_status(&c.url, s))?
        .into_inner()
        .missing;
    let uploaded = if missing.contains(&digest) {
        upload(c, tenant, tmp.path(), &digest, size).await?;
        true
    } else {
        false
    };

    // A signed release names its counter: one above the app's highest so far.
    let (counter, signatures) = match &key {
        None => (0, Vec::new()),
        Some(key) => {
            let tenant = &crate::admin::resolved_tenant(c, tenant).await?;
            let counter = crate::admin::highest_counter(c, tenant, app).await? + 1;
            let digest = manifest.digest().to_string();
            let statement = trust::sign::ReleaseStatement {
                tenant,
                app,
                version,
                counter,
                manifest_digest: &digest,
            };
            let s = key.sign(&statement.bytes());
            (
                counter,
                vec![proto::v1::Signature {
                    key: s.key,
                    sig: s.sig,
                }],
            )
        }
    };
    let resp = c
        .releases
        .create_release(CreateReleaseRequest {
            tenant: tenant.into(),
            manifest: manifest.to_canonical_bytes(),
            counter,
            signatures,
        })
        .await
        .map_err(|s| from_status(&c.url, s))?
        .into_inner();
    let release = resp.release.unwrap_or_default();
    let how = if uploaded {
        "uploaded"
    } else {
        "already on the controller, upload skipped"
    };
    let again = if resp.already_present {
        " (already published, unchanged)"
    } else {
        ""
    };
    say!("published {app} {version}{again}");
    say!("  release  {}", release.manifest_digest);
    say!("  blob     {digest} ({}, {how})", human_bytes(size));
    say!("  entries  {}", release.entries);
    say!("  counter  {}", release.counter);
    for k in &release.signed_by {
        say!("  signed   {k}");
    }
    if !release.git_commit.is_empty() {
        say!("  commit   {}", release.git_commit);
    }
    Ok(())
}

async fn upload(c: &mut Clients, tenant: &str, path: &Path, digest: &str, size: u64) -> Result<()> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| failed(format!("open packed blob: {e}")))?;
    let bar = progress(size, "uploading");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let header = UploadBlobRequest {
        part: Some(upload_blob_request::Part::Header(UploadBlobHeader {
            tenant: tenant.into(),
            digest: digest.into(),
            size,
        })),
    };
    tx.send(header)
        .await
        .map_err(|_| failed("upload stream closed"))?;
    let reader_bar = bar.clone();
    let reader = tokio::spawn(async move {
        loop {
            let mut buf = vec![0u8; proto::CHUNK_BYTES];
            let mut filled = 0;
            while filled < buf.len() {
                match file.read(&mut buf[filled..]).await {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) => return Err(format!("read packed blob: {e}")),
                }
            }
            if filled == 0 {
                return Ok(());
            }
            buf.truncate(filled);
            reader_bar.inc(filled as u64);
            if tx
                .send(UploadBlobRequest {
                    part: Some(upload_blob_request::Part::Chunk(buf)),
                })
                .await
                .is_err()
            {
                return Ok(()); // the call ended; its status says why
            }
        }
    });
    let result = c.releases.upload_blob(ReceiverStream::new(rx)).await;
    bar.finish_and_clear();
    match reader.await {
        Ok(Err(e)) => return Err(failed(e)),
        Err(e) => return Err(failed(format!("upload reader: {e}"))),
        Ok(Ok(())) => {}
    }
    result.map_err(|s| from_status(&c.url, s))?;
    Ok(())
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
