//! `slipctl publish`: describe the tree (every file hashed, on every core) as a
//! format-2 manifest, ask the controller which file objects it lacks, and
//! upload only those as one object pack, compressed on every core while it
//! streams (never the whole pack in memory or on disk; its digest and size
//! follow in the upload's trailer). The three overlap: files hash a chunk at
//! a time, each chunk's objects are asked about as soon as they are hashed,
//! and the ones the controller lacks go into the pack while the next chunk
//! hashes. Then register the release with its manifest (signed with
//! `--sign`). An unchanged tree uploads nothing.
use std::path::Path;
use std::process::Command;

use artifact::manifest::EntryKind;
use artifact::objects::Listing;
use artifact::{Digest, Manifest, NameKind, ReleaseSpec, validate_name};
use indicatif::{ProgressBar, ProgressStyle};
use proto::v1::{
    CreateReleaseRequest, CreateReleaseResponse, MissingObjectsRequest, Signature,
    UploadBlobHeader, UploadBlobRequest, UploadBlobResponse, UploadBlobTrailer,
    upload_blob_request,
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
    blob_digest: String,
    blob_size: u64,
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
    ReleaseSpec::load(&a.dir).map_err(|e| failed(format!("release spec: {e}")))?;
    let commit = git_commit(&a.dir, a.allow_dirty)?;

    let src = a.dir.clone();
    let listing = tokio::task::spawn_blocking(move || artifact::objects::list_dir(&src))
        .await
        .map_err(|e| failed(format!("scan: {e}")))?
        .map_err(|e| failed(format!("scan {}: {e}", a.dir.display())))?;
    // The tree's shape is checked before anything is uploaded (digests are
    // not known yet: each file stands in with the empty one).
    let mut shape = listing.entries.clone();
    for e in shape.iter_mut().filter(|e| e.kind == EntryKind::File) {
        e.sha256 = Some(artifact::Digest::of(b"").to_string());
    }
    Manifest::from_entries(&a.app, &a.version, None, shape)
        .map_err(|e| failed(format!("invalid release tree: {e}")))?;

    let sent = upload_missing(c, listing, &a.dir).await?;
    let manifest = Manifest::from_entries(&a.app, &a.version, commit, sent.entries)
        .map_err(|e| failed(format!("invalid release tree: {e}")))?;
    let all = manifest.objects();
    let mut packs = Vec::new();
    let (mut objects_uploaded, mut uploaded_bytes) = (0, 0);
    if let Some((pack, size)) = sent.pack {
        packs.push(pack.to_string());
        uploaded_bytes = size;
        objects_uploaded = sent.objects;
    }

    let resp = register(c, &manifest, key.as_ref(), packs).await?;
    let release = resp.release.unwrap_or_default();
    let out = PublishedJson {
        app: a.app,
        version: a.version,
        release_digest: release.manifest_digest,
        blob_digest: release.blob_digest,
        blob_size: release.blob_size,
        uploaded: uploaded_bytes > 0,
        objects: all.len(),
        objects_uploaded,
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
    say!(
        "  pack     {} ({})",
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

/// Files hashed per chunk: each chunk's objects are asked about (one
/// `MissingObjects`) and packed while the next chunk hashes.
const HASH_CHUNK: usize = 1024;

/// What [`upload_missing`] did: the entries with their digests, the pack it
/// uploaded (none when the controller had every object) and how many objects
/// that pack held.
struct Sent {
    entries: Vec<artifact::manifest::Entry>,
    pack: Option<(Digest, u64)>,
    objects: usize,
}

/// Hashes the listed files a chunk at a time, asks the controller which of
/// each chunk's objects it lacks, and packs and uploads those (in manifest
/// order, each once) while the next chunks hash.
async fn upload_missing(c: &mut Clients, listing: Listing, root: &Path) -> Result<Sent> {
    let (chunk_tx, mut chunks) = tokio::sync::mpsc::channel(4);
    let listing = std::sync::Arc::new(listing);
    let hashing = listing.clone();
    let hasher = tokio::task::spawn_blocking(move || {
        hashing.hash_in_chunks(HASH_CHUNK, |chunk| chunk_tx.blocking_send(chunk).is_ok())
    });
    let mut digests: Vec<Option<Digest>> = vec![None; listing.entries.len()];
    let mut seen = std::collections::HashSet::new();
    let mut upload: Option<Upload> = None;
    let mut objects = 0;
    'chunks: while let Some(chunk) = chunks.recv().await {
        let mut fresh = Vec::new();
        for (index, digest) in chunk {
            let size = listing.entries[index].size;
            if size > 0 && seen.insert(digest.clone()) {
                fresh.push((index, digest.clone(), size));
            }
            digests[index] = Some(digest);
        }
        if fresh.is_empty() {
            continue;
        }
        let missing = missing_objects(c, fresh.iter().map(|(_, d, _)| d)).await?;
        for (index, digest, size) in fresh {
            if !missing.contains(&digest) {
                continue;
            }
            let path = listing.path_of(index).map(|p| p.to_path_buf());
            let path = path.ok_or_else(|| failed("a listed file has no path"))?;
            let up = match &mut upload {
                Some(up) => up,
                None => upload.insert(Upload::start(c).await?),
            };
            if !up.send(digest, size, path).await {
                break 'chunks;
            }
            objects += 1;
        }
    }
    // A hasher blocked on a full channel ends once nobody listens.
    drop(chunks);
    hasher
        .await
        .map_err(|e| failed(format!("hash: {e}")))?
        .map_err(|e| failed(format!("scan {}: {e}", root.display())))?;
    let pack = match upload {
        Some(up) => Some(up.finish(c).await?),
        None => None,
    };
    let listing = std::sync::Arc::try_unwrap(listing)
        .map_err(|_| failed("the hasher still holds the listing"))?;
    let mut entries = listing.entries;
    for (e, d) in entries.iter_mut().zip(digests) {
        if let Some(d) = d {
            e.sha256 = Some(d.to_string());
        }
    }
    Ok(Sent {
        entries,
        pack,
        objects,
    })
}

/// Which of `digests` the controller lacks.
async fn missing_objects(
    c: &mut Clients,
    digests: impl Iterator<Item = &Digest>,
) -> Result<std::collections::HashSet<Digest>> {
    let req = MissingObjectsRequest {
        tenant: c.tenant.clone(),
        digests: digests.map(ToString::to_string).collect(),
    };
    let r = c.releases.missing_objects(req).await;
    let listed = r.map_err(|s| from_status(&c.url, s))?.into_inner().missing;
    listed
        .iter()
        .map(|d| {
            Digest::parse(d).map_err(|e| failed(format!("the controller named a bad digest: {e}")))
        })
        .collect()
}

/// One object pack being made and uploaded: objects go in as they are known
/// to be missing; a blocking thread packs them (every core) while the pack
/// streams to the controller.
struct Upload {
    objects: tokio::sync::mpsc::Sender<Next>,
    packer: tokio::task::JoinHandle<std::result::Result<(Digest, u64), artifact::PackError>>,
    upload: tokio::task::JoinHandle<
        std::result::Result<tonic::Response<UploadBlobResponse>, tonic::Status>,
    >,
    bar: ProgressBar,
}

/// What the packer is handed: an object, or the end of the pack. A sender
/// dropped without `End` (the publish failed) leaves the pack unfinished:
/// no trailer goes, and the controller keeps nothing.
enum Next {
    Object(Digest, u64, std::path::PathBuf),
    End,
}

impl Upload {
    async fn start(c: &mut Clients) -> Result<Upload> {
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
        let (objects, mut next) = tokio::sync::mpsc::channel(HASH_CHUNK);
        let (trailer_tx, chunk_bar) = (tx.clone(), bar.clone());
        let packer = tokio::task::spawn_blocking(move || {
            let writer = ChunkWriter {
                tx,
                buf: Vec::with_capacity(proto::CHUNK_BYTES),
                bar: chunk_bar,
            };
            let items = std::iter::from_fn(|| match next.blocking_recv() {
                Some(Next::Object(d, size, path)) => Some(Ok((d, size, path))),
                Some(Next::End) => None,
                None => Some(Err(artifact::PackError::Write(std::io::Error::other(
                    "the publish stopped",
                )))),
            });
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
            let (_, digest, size) = artifact::objects::write_pack_from(
                items,
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
        let mut releases = c.releases.clone();
        let upload =
            tokio::spawn(async move { releases.upload_blob(ReceiverStream::new(rx)).await });
        Ok(Upload {
            objects,
            packer,
            upload,
            bar,
        })
    }

    /// Hands the packer one more object; false when it stopped (`finish`
    /// says why).
    async fn send(&mut self, digest: Digest, size: u64, path: std::path::PathBuf) -> bool {
        self.objects
            .send(Next::Object(digest, size, path))
            .await
            .is_ok()
    }

    /// Ends the pack; its digest and size once the controller stored it.
    async fn finish(self, c: &Clients) -> Result<(Digest, u64)> {
        let _ = self.objects.send(Next::End).await;
        let result = self
            .upload
            .await
            .map_err(|e| failed(format!("upload: {e}")))?;
        self.bar.finish_and_clear();
        let packed = self
            .packer
            .await
            .map_err(|e| failed(format!("pack: {e}")))?;
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
                UploadBlobResponse::default()
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
