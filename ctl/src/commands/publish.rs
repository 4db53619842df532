//! `slipctl publish`: pack the tree deterministically into a temp file (never into
//! memory), upload it in chunks unless the controller already has its digest,
//! then register the release with its manifest (signed with `--sign`).

use std::path::Path;
use std::process::Command;

use artifact::{Manifest, NameKind, ReleaseSpec, validate_name};
use indicatif::{ProgressBar, ProgressStyle};
use proto::v1::{
    CreateReleaseRequest, CreateReleaseResponse, MissingBlobsRequest, Signature, UploadBlobHeader,
    UploadBlobRequest, upload_blob_request,
};
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::cli::PublishArgs;
use crate::client::Clients;
use crate::error::{CtlError, Result, from_status};
use crate::output::{Format, as_rfc3339, escape, human_bytes, print_json};

fn failed(msg: impl Into<String>) -> CtlError {
    CtlError::Failed(msg.into())
}

/// `publish -o json`: what CI keeps (the release digest above all).
#[derive(Serialize)]
struct PublishedJson {
    app: String,
    version: String,
    release_digest: String,
    blob_digest: String,
    blob_size: u64,
    uploaded: bool,
    already_published: bool,
    entries: u32,
    counter: u64,
    signed_by: Vec<String>,
    git_commit: Option<String>,
    #[serde(serialize_with = "as_rfc3339")]
    created_at: i64,
}

pub async fn run(a: PublishArgs, c: &mut Clients, fmt: Format) -> Result<()> {
    let key = a
        .sign
        .as_deref()
        .map(trust::sign::KeyPair::load)
        .transpose()
        .map_err(|e| CtlError::Usage(e.to_string()))?;
    validate_name(NameKind::App, &a.app).map_err(|e| CtlError::Usage(e.to_string()))?;
    validate_name(NameKind::Version, &a.version).map_err(|e| CtlError::Usage(e.to_string()))?;
    if !a.dir.is_dir() {
        let msg = format!("{} is not a directory", a.dir.display());
        return Err(CtlError::Usage(msg));
    }
    ReleaseSpec::load(&a.dir).map_err(|e| failed(format!("release spec: {e}")))?;
    let commit = git_commit(&a.dir, a.allow_dirty)?;

    // Pack into a temp file: the blob is streamed from disk, never held in memory.
    let tmp = tempfile::NamedTempFile::new().map_err(|e| CtlError::local("create temp file", e))?;
    let file = tmp.reopen().map_err(|e| CtlError::local("temp file", e))?;
    let src = a.dir.clone();
    let packed = tokio::task::spawn_blocking(move || {
        artifact::pack_dir(&src, std::io::BufWriter::new(file))
    })
    .await
    .map_err(|e| failed(format!("pack: {e}")))?
    .map_err(|e| failed(format!("pack {}: {e}", a.dir.display())))?;
    let manifest = packed.into_manifest(&a.app, &a.version, commit);
    let (digest, size) = (manifest.blob.digest.clone(), manifest.blob.size);

    let uploaded = ensure_uploaded(c, tmp.path(), &digest, size).await?;
    let resp = register(c, &manifest, key.as_ref()).await?;
    let release = resp.release.unwrap_or_default();
    let out = PublishedJson {
        app: a.app,
        version: a.version,
        release_digest: release.manifest_digest,
        blob_digest: digest,
        blob_size: size,
        uploaded,
        already_published: resp.already_present,
        entries: release.entries,
        counter: release.counter,
        signed_by: release.signed_by,
        git_commit: Some(release.git_commit).filter(|c| !c.is_empty()),
        created_at: release.created_at,
    };
    if fmt.is_json() {
        return print_json(&out);
    }
    print_published(&out);
    Ok(())
}

fn print_published(p: &PublishedJson) {
    let how = if p.uploaded {
        "uploaded"
    } else {
        "already on the controller, upload skipped"
    };
    let again = if p.already_published {
        " (already published, unchanged)"
    } else {
        ""
    };
    say!("published {} {}{again}", escape(&p.app), escape(&p.version));
    say!("  release  {}", escape(&p.release_digest));
    say!(
        "  blob     {} ({}, {how})",
        p.blob_digest,
        human_bytes(p.blob_size)
    );
    say!("  entries  {}", p.entries);
    say!("  counter  {}", p.counter);
    for k in &p.signed_by {
        say!("  signed   {}", escape(k));
    }
    if let Some(commit) = &p.git_commit {
        say!("  commit   {}", escape(commit));
    }
}

/// Uploads the packed blob unless the controller has it; true when uploaded.
async fn ensure_uploaded(c: &mut Clients, path: &Path, digest: &str, size: u64) -> Result<bool> {
    let req = MissingBlobsRequest {
        tenant: c.tenant.clone(),
        digests: vec![digest.to_string()],
    };
    let r = c.releases.missing_blobs(req).await;
    let missing = r.map_err(|s| from_status(&c.url, s))?.into_inner().missing;
    if !missing.iter().any(|d| d == digest) {
        return Ok(false);
    }
    upload(c, path, digest, size).await?;
    Ok(true)
}

/// Registers the release; a signed one names its counter, one above the app's
/// highest so far.
async fn register(
    c: &mut Clients,
    manifest: &Manifest,
    key: Option<&trust::sign::KeyPair>,
) -> Result<CreateReleaseResponse> {
    let (counter, signatures) = match key {
        None => (0, Vec::new()),
        Some(key) => {
            let tenant = &c.resolved_tenant().await?;
            let highest = c.highest_counter(tenant, &manifest.app).await?;
            let counter = highest
                .checked_add(1)
                .filter(|n| i64::try_from(*n).is_ok())
                .ok_or_else(|| {
                    CtlError::Failed(format!(
                        "{} has a release with counter {highest}: no counter is left above it; yank it (slipctl releases yank {} VERSION) and publish again",
                        manifest.app, manifest.app
                    ))
                })?;
            let digest = manifest.digest().to_string();
            let statement = trust::sign::ReleaseStatement {
                tenant,
                app: &manifest.app,
                version: &manifest.version,
                counter,
                manifest_digest: &digest,
            };
            let s = key.sign(&statement.bytes());
            let sig = Signature {
                key: s.key,
                sig: s.sig,
            };
            (counter, vec![sig])
        }
    };
    let req = CreateReleaseRequest {
        tenant: c.tenant.clone(),
        manifest: manifest.to_canonical_bytes(),
        counter,
        signatures,
    };
    let r = c.releases.create_release(req).await;
    Ok(r.map_err(|s| from_status(&c.url, s))?.into_inner())
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
    let head = git(&["rev-parse", "HEAD"]).map_err(|e| CtlError::local("git rev-parse HEAD", e))?;
    if !head.status.success() {
        return Ok(None); // a repository without commits yet
    }
    let commit = String::from_utf8_lossy(&head.stdout).trim().to_string();
    let status =
        git(&["status", "--porcelain", "--", "."]).map_err(|e| CtlError::local("git status", e))?;
    let dirty = String::from_utf8_lossy(&status.stdout).lines().count();
    if dirty == 0 {
        return Ok(Some(commit));
    }
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
    Ok(None)
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

async fn upload(c: &mut Clients, path: &Path, digest: &str, size: u64) -> Result<()> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| CtlError::local("open packed blob", e))?;
    let bar = progress(size, "uploading");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let header = UploadBlobRequest {
        part: Some(upload_blob_request::Part::Header(UploadBlobHeader {
            tenant: c.tenant.clone(),
            digest: digest.into(),
            size,
        })),
    };
    tx.send(header)
        .await
        .map_err(|_| failed("upload stream closed"))?;
    let reader = tokio::spawn(send_chunks(file, tx, bar.clone()));
    let result = c.releases.upload_blob(ReceiverStream::new(rx)).await;
    bar.finish_and_clear();
    match reader.await {
        Ok(Err(e)) => return Err(CtlError::local("read packed blob", e)),
        Err(e) => return Err(failed(format!("upload reader: {e}"))),
        Ok(Ok(())) => {}
    }
    result.map_err(|s| from_status(&c.url, s))?;
    Ok(())
}

/// Streams the file in chunks until its end, or until the call ends (its
/// status then says why).
async fn send_chunks(
    mut file: tokio::fs::File,
    tx: tokio::sync::mpsc::Sender<UploadBlobRequest>,
    bar: ProgressBar,
) -> std::io::Result<()> {
    loop {
        let mut buf = vec![0u8; proto::CHUNK_BYTES];
        let mut filled = 0;
        while filled < buf.len() {
            match file.read(&mut buf[filled..]).await? {
                0 => break,
                n => filled += n,
            }
        }
        if filled == 0 {
            return Ok(());
        }
        buf.truncate(filled);
        bar.inc(filled as u64);
        let chunk = UploadBlobRequest {
            part: Some(upload_blob_request::Part::Chunk(buf)),
        };
        if tx.send(chunk).await.is_err() {
            return Ok(());
        }
    }
}
