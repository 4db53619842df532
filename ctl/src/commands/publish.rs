//! `slipctl publish`: describe the tree (every file hashed, on every core) as a
//! format-2 manifest, ask the controller which file objects it lacks, and
//! upload only those as one object pack, compressed on every core while it
//! streams (never the whole pack in memory or on disk; its digest and size
//! follow in the upload's trailer). Then register the release with its
//! manifest (signed with `--sign`). An unchanged tree uploads nothing.

use std::path::Path;
use std::process::Command;

use artifact::{Manifest, NameKind, ReleaseSpec, validate_name};
use indicatif::{ProgressBar, ProgressStyle};
use proto::v1::{
    CreateReleaseRequest, CreateReleaseResponse, MissingObjectsRequest, Signature,
    UploadBlobHeader, UploadBlobRequest, UploadBlobTrailer, upload_blob_request,
};
use serde::Serialize;
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
    /// The release's full pack (null until the controller builds it: a
    /// release published as a delta gets one later).
    blob_digest: Option<String>,
    blob_size: Option<u64>,
    uploaded: bool,
    /// File objects of the release, those the controller lacked (uploaded),
    /// and the bytes that went (compressed).
    objects: usize,
    objects_uploaded: usize,
    uploaded_bytes: u64,
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
    let spec = ReleaseSpec::load(&a.dir).map_err(|e| failed(format!("release spec: {e}")))?;
    let has_migrations = spec.migrations.is_some();
    let commit = git_commit(&a.dir, a.allow_dirty)?;

    let src = a.dir.clone();
    let entries = tokio::task::spawn_blocking(move || artifact::objects::scan_dir(&src))
        .await
        .map_err(|e| failed(format!("scan: {e}")))?
        .map_err(|e| failed(format!("scan {}: {e}", a.dir.display())))?;
    let manifest = Manifest::from_entries(&a.app, &a.version, commit, entries)
        .map_err(|e| failed(format!("invalid release tree: {e}")))?;
    let all = manifest.objects();
    let missing = missing_objects(c, &all).await?;
    let upload: Vec<(artifact::Digest, u64)> = all
        .iter()
        .filter(|(d, _)| missing.contains(d))
        .cloned()
        .collect();
    let mut packs = Vec::new();
    let mut uploaded_bytes = 0;
    if !upload.is_empty() {
        let paths = manifest.object_paths(&a.dir);
        let (pack, size) = pack_and_upload(c, upload.clone(), paths).await?;
        packs.push(pack.to_string());
        uploaded_bytes = size;
    }

    let resp = register(c, &manifest, key.as_ref(), packs, has_migrations).await?;
    let release = resp.release.unwrap_or_default();
    let out = PublishedJson {
        app: a.app,
        version: a.version,
        release_digest: release.manifest_digest,
        blob_size: Some(release.blob_size).filter(|_| !release.blob_digest.is_empty()),
        blob_digest: Some(release.blob_digest).filter(|d| !d.is_empty()),
        uploaded: uploaded_bytes > 0,
        objects: all.len(),
        objects_uploaded: upload.len(),
        uploaded_bytes,
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
        format!(
            "{} of {} file objects uploaded, {}",
            p.objects_uploaded,
            p.objects,
            human_bytes(p.uploaded_bytes)
        )
    } else {
        format!(
            "all {} file objects already on the controller, nothing uploaded",
            p.objects
        )
    };
    let again = if p.already_published {
        " (already published, unchanged)"
    } else {
        ""
    };
    say!("published {} {}{again}", escape(&p.app), escape(&p.version));
    say!("  release  {}", escape(&p.release_digest));
    say!("  files    {how}");
    match (&p.blob_digest, p.blob_size) {
        (Some(d), Some(size)) => say!("  pack     {d} ({})", human_bytes(size)),
        _ => say!(
            "  pack     not built yet: the controller builds it for the first host with none of its files (or within a minute if this stays the newest release)"
        ),
    }
    say!("  entries  {}", p.entries);
    say!("  counter  {}", p.counter);
    for k in &p.signed_by {
        say!("  signed   {}", escape(k));
    }
    if let Some(commit) = &p.git_commit {
        say!("  commit   {}", escape(commit));
    }
}

/// Which of `objects` the controller lacks (asked in batches that fit a
/// message).
async fn missing_objects(
    c: &mut Clients,
    objects: &[(artifact::Digest, u64)],
) -> Result<std::collections::HashSet<artifact::Digest>> {
    const BATCH: usize = 50_000;
    let mut missing = std::collections::HashSet::new();
    for batch in objects.chunks(BATCH) {
        let req = MissingObjectsRequest {
            tenant: c.tenant.clone(),
            digests: batch.iter().map(|(d, _)| d.to_string()).collect(),
        };
        let r = c.releases.missing_objects(req).await;
        let listed = r.map_err(|s| from_status(&c.url, s))?.into_inner().missing;
        for d in listed {
            let d = artifact::Digest::parse(&d)
                .map_err(|e| failed(format!("the controller named a bad digest: {e}")))?;
            missing.insert(d);
        }
    }
    Ok(missing)
}

/// Packs the objects `order` names (from `paths`) on a blocking thread while
/// the pack streams to the controller; the pack's digest and size.
async fn pack_and_upload(
    c: &mut Clients,
    order: Vec<(artifact::Digest, u64)>,
    paths: std::collections::HashMap<artifact::Digest, std::path::PathBuf>,
) -> Result<(artifact::Digest, u64)> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let header = UploadBlobRequest {
        part: Some(upload_blob_request::Part::Header(UploadBlobHeader {
            tenant: c.tenant.clone(),
            digest: String::new(),
            size: 0,
        })),
    };
    tx.send(header)
        .await
        .map_err(|_| failed("upload stream closed"))?;
    let bar = progress_spinner("packing and uploading");
    let (trailer_tx, chunk_bar) = (tx.clone(), bar.clone());
    let packer = tokio::task::spawn_blocking(move || {
        let writer = ChunkWriter {
            tx,
            buf: Vec::with_capacity(proto::CHUNK_BYTES),
            bar: chunk_bar,
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        let (_, digest, size) = artifact::objects::write_pack(
            &order,
            |d| paths.get(d).cloned(),
            writer,
            cores,
            artifact::objects::Check::Size,
        )?;
        // Without the trailer the controller refuses the upload: a failed
        // pack never becomes a blob.
        let trailer = UploadBlobRequest {
            part: Some(upload_blob_request::Part::Trailer(UploadBlobTrailer {
                digest: digest.to_string(),
                size,
            })),
        };
        let _ = trailer_tx.blocking_send(trailer);
        Ok::<_, artifact::PackError>((digest, size))
    });
    let result = c.releases.upload_blob(ReceiverStream::new(rx)).await;
    bar.finish_and_clear();
    let packed = packer.await.map_err(|e| failed(format!("pack: {e}")))?;
    // The controller's refusal explains a pack cut short by it.
    let resp = match result {
        Ok(r) => r.into_inner(),
        Err(s) => {
            let cut_short = matches!(&packed, Err(artifact::PackError::Write(e))
                if e.kind() == std::io::ErrorKind::BrokenPipe);
            if packed.is_ok() || cut_short {
                return Err(from_status(&c.url, s));
            }
            // The pack's own error, below, says why.
            proto::v1::UploadBlobResponse::default()
        }
    };
    let (digest, size) = packed.map_err(|e| failed(format!("pack: {e}")))?;
    if resp.digest != digest.to_string() {
        return Err(failed(format!(
            "the controller stored {} for the pack made as {digest}",
            resp.digest
        )));
    }
    Ok((digest, size))
}

/// The packer's output, sent on as upload chunks of `CHUNK_BYTES`.
struct ChunkWriter {
    tx: tokio::sync::mpsc::Sender<UploadBlobRequest>,
    buf: Vec<u8>,
    bar: ProgressBar,
}

impl ChunkWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(proto::CHUNK_BYTES));
        self.bar.inc(chunk.len() as u64);
        let part = UploadBlobRequest {
            part: Some(upload_blob_request::Part::Chunk(chunk)),
        };
        self.tx.blocking_send(part).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the upload ended early")
        })
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let n = bytes.len().min(proto::CHUNK_BYTES - self.buf.len());
        self.buf.extend_from_slice(&bytes[..n]);
        if self.buf.len() == proto::CHUNK_BYTES {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// Registers the release; a signed one names its counter, one above the app's
/// highest so far.
async fn register(
    c: &mut Clients,
    manifest: &Manifest,
    key: Option<&trust::sign::KeyPair>,
    packs: Vec<String>,
    has_migrations: bool,
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
        packs,
        has_migrations,
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

fn progress_spinner(what: &str) -> ProgressBar {
    // indicatif draws nothing when stderr is not a terminal (CI logs stay clean).
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} {bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(what.to_string());
    bar
}
