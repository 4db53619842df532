//! Format-2 releases on the controller: each tenant's object store (file
//! contents named by sha256, under `blobs/objects/<tenant>/`; a tenant never
//! learns what another holds), filing uploaded object packs into it, and the
//! object packs agents fetch for a delta install.

use std::collections::HashMap;
use std::io;

use artifact::objects::{Check, Expect, ObjectSink, read_pack, write_pack};
use artifact::{Digest, Manifest};

use crate::blobs::{BlobError, BlobStore};
use crate::error::ControllerError;

/// Largest zstd window accepted in an uploaded pack (as agents accept).
const WINDOW_LOG_MAX: u32 = 24;

/// The name of a list of objects in order: what a full pack is found by.
pub fn objects_key(order: &[(Digest, u64)]) -> String {
    let mut h = artifact::digest::StreamHasher::new();
    for (d, size) in order {
        h.update(d.hex().as_bytes());
        h.update(&size.to_le_bytes());
    }
    h.finish().to_string()
}

/// Full packs whose objects are not filed yet, per tenant: the objects they
/// hold (a count per digest: two packs may hold one object), which count as
/// present, and the filings not started yet. A first publish's objects are
/// filed a minute later ([`FILING_DELAY`]), or as soon as something needs
/// them — a fetch of some of them, or a full pack built from them (see
/// `crate::packs`) — so the ~10k small
/// files of a first release are not written while its first hosts install
/// it (on a controller that shares a machine with an agent, they were).
#[derive(Default)]
struct Filings {
    pending: HashMap<String, HashMap<Digest, u32>>,
    deferred: HashMap<String, Vec<Filing>>,
}

/// One full pack to file into a tenant's object store.
struct Filing {
    blobs: BlobStore,
    objects: BlobStore,
    tenant: String,
    pack: Digest,
    size: u64,
    order: Vec<(Digest, u64)>,
}

/// A deferred filing starts this long after its pack was stored if nothing
/// needed it before: a release's first installs are usually done by then.
const FILING_DELAY: std::time::Duration = std::time::Duration::from_secs(60);

/// Deferred filings of one tenant past this many start at once (a client
/// that uploads full packs and never asks what is missing holds no more).
const MAX_DEFERRED: usize = 4;

static FILINGS: std::sync::LazyLock<std::sync::Mutex<Filings>> =
    std::sync::LazyLock::new(Default::default);

fn filings() -> std::sync::MutexGuard<'static, Filings> {
    FILINGS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Which of `digests` the tenant's store lacks (objects of a full pack not
/// filed yet count as present).
pub fn missing(objects: &BlobStore, tenant: &str, digests: &[Digest]) -> Vec<Digest> {
    // Pending first, then the disk: a filing drops an object from pending
    // only once it is written, so no object slips between the two checks.
    let unfiled: Vec<&Digest> = {
        let f = filings();
        let pending = f.pending.get(tenant);
        digests
            .iter()
            .filter(|d| !pending.is_some_and(|m| m.contains_key(*d)))
            .collect()
    };
    unfiled
        .into_iter()
        .filter(|d| !objects.exists(d))
        .cloned()
        .collect()
}

/// Waits (at most `limit`) until none of `digests` is still being filed,
/// starting the tenant's deferred filings at once if any of them is; false
/// when time ran out.
pub async fn wait_filed(tenant: &str, digests: &[Digest], limit: std::time::Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let mut started = false;
    loop {
        let busy = {
            let f = filings();
            f.pending
                .get(tenant)
                .is_some_and(|m| digests.iter().any(|d| m.contains_key(d)))
        };
        if !busy {
            return true;
        }
        if !started {
            start_filing(tenant);
            started = true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Records that the objects of `pack`, which claims to be a release's full
/// pack (`order`, exactly), are to be filed: they count as present from now
/// on (see [`missing`]), and are filed a minute later or when the tenant
/// needs them first (see [`Filings`]). The pack itself is durable: it is what a fresh host fetches.
pub fn defer_filing(
    blobs: &BlobStore,
    objects: &BlobStore,
    tenant: &str,
    pack: Digest,
    size: u64,
    order: Vec<(Digest, u64)>,
) {
    let start_now = {
        let mut f = filings();
        let m = f.pending.entry(tenant.to_string()).or_default();
        for (d, _) in &order {
            *m.entry(d.clone()).or_default() += 1;
        }
        let queue = f.deferred.entry(tenant.to_string()).or_default();
        queue.push(Filing {
            blobs: blobs.clone(),
            objects: objects.clone(),
            tenant: tenant.to_string(),
            pack,
            size,
            order,
        });
        queue.len() > MAX_DEFERRED
    };
    if start_now {
        start_filing(tenant);
    } else {
        let tenant = tenant.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(FILING_DELAY).await;
            start_filing_idle(&tenant);
        });
    }
}

/// Files the tenant's deferred full packs now, each on a thread of its own:
/// something waits for them. A pack that does not hold exactly its
/// release's objects is moved aside (never served) and logged; publishing
/// the release again repairs it.
pub fn start_filing(tenant: &str) {
    spawn_filings(tenant, false);
}

/// [`start_filing`] when nothing waits: at the lowest CPU priority (nice 19,
/// which an unprivileged controller cannot undo, so only here), taking what
/// serving leaves idle.
fn start_filing_idle(tenant: &str) {
    spawn_filings(tenant, true);
}

fn spawn_filings(tenant: &str, idle: bool) {
    let jobs = filings().deferred.remove(tenant).unwrap_or_default();
    for job in jobs {
        let spawned = std::thread::Builder::new()
            .name("filing".into())
            .spawn(move || {
                // Linux: affects this thread only.
                if idle && let Err(e) = rustix::process::setpriority_process(None, 19) {
                    tracing::debug!(error = %e, "filing at normal priority");
                }
                job.run();
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "no thread to file a full pack: its objects are filed at the next fetch");
        }
    }
}

impl Filing {
    fn run(self) {
        let Filing {
            blobs,
            objects,
            tenant,
            pack,
            size,
            order,
        } = self;
        let path = blobs.path(&pack);
        match read_into(&path, &objects, size, Expect::Exactly(&order)) {
            Ok(filed) => {
                tracing::info!(%tenant, %pack, objects = filed.len(), "full pack filed into the object store")
            }
            Err(e) => {
                let to = blobs.root().join("corrupt").join(pack.hex());
                let moved = std::fs::rename(&path, &to).is_ok();
                tracing::error!(%tenant, %pack, error = %e, moved,
                    "an uploaded full pack does not hold its release's objects: moved aside; publish the release again");
            }
        }
        let mut f = filings();
        if let Some(m) = f.pending.get_mut(&tenant) {
            for (d, _) in &order {
                if let Some(n) = m.get_mut(d) {
                    *n -= 1;
                    if *n == 0 {
                        m.remove(d);
                    }
                }
            }
            if m.is_empty() {
                f.pending.remove(&tenant);
            }
        }
    }
}

/// An uploaded pack once filed: its digest and size, and the objects it held
/// in order.
pub struct FiledPack {
    pub pack: Digest,
    pub size: u64,
    pub held: Vec<(Digest, u64)>,
}

/// Files the objects of the uploaded packs (blobs of the tenant's) into the
/// tenant's store, each checked against its name and the manifest; then
/// checks every object of `manifest` is present. Returns, for each pack, the
/// objects it held in order (a pack holding all of the release's in manifest
/// order is its full pack). One `syncfs` makes the filed objects durable.
pub async fn file_packs(
    blobs: &BlobStore,
    objects: &BlobStore,
    tenant: &str,
    packs: Vec<(Digest, u64)>,
    manifest: &Manifest,
) -> Result<Vec<FiledPack>, ControllerError> {
    let allowed: HashMap<Digest, u64> = manifest.objects().into_iter().collect();
    let wanted: Vec<Digest> = allowed.keys().cloned().collect();
    let (blobs, objects2) = (blobs.clone(), objects.clone());
    let filed = tokio::task::spawn_blocking(move || -> Result<_, ControllerError> {
        let mut out = Vec::new();
        for (pack, size) in packs {
            out.push(file_pack(&blobs, &objects2, pack, size, &allowed)?);
        }
        sync_objects(&objects2)?;
        Ok(out)
    })
    .await
    .map_err(|e| ControllerError::Internal(format!("filing objects: {e}")))??;
    let (objects, tenant) = (objects.clone(), tenant.to_string());
    let lacking = tokio::task::spawn_blocking(move || missing(&objects, &tenant, &wanted))
        .await
        .map_err(|e| ControllerError::Internal(format!("checking objects: {e}")))?;
    if let Some(first) = lacking.first() {
        return Err(ControllerError::FailedPrecondition(format!(
            "{} file object(s) of this release are neither on the controller nor in the uploaded packs (first: {first}); upload them (slipctl publish does)",
            lacking.len()
        )));
    }
    Ok(filed)
}

/// Files the objects of the blob `pack` (each one of `allowed`) into the
/// tenant's store `objects`, not yet synced (see [`sync_objects`]); blocking.
pub fn file_pack(
    blobs: &BlobStore,
    objects: &BlobStore,
    pack: Digest,
    size: u64,
    allowed: &HashMap<Digest, u64>,
) -> Result<FiledPack, ControllerError> {
    let held = read_into(&blobs.path(&pack), objects, size, Expect::AnyOf(allowed))
        .map_err(|e| ControllerError::InvalidArgument(format!("object pack {pack}: {e}")))?;
    Ok(FiledPack { pack, size, held })
}

/// Reads the pack at `path` (`size` bytes) into the store `objects`, each
/// object checked against `expect`; the objects it held, in order. Blocking.
fn read_into(
    path: &std::path::Path,
    objects: &BlobStore,
    size: u64,
    expect: Expect<'_>,
) -> Result<Vec<(Digest, u64)>, artifact::UnpackError> {
    let file = std::fs::File::open(path).map_err(artifact::UnpackError::Read)?;
    let mut sink = Filer {
        store: objects.clone(),
        order: Vec::new(),
    };
    read_pack(
        std::io::BufReader::with_capacity(256 * 1024, file),
        size,
        expect,
        WINDOW_LOG_MAX,
        &mut sink,
    )?;
    Ok(sink.order)
}

/// Makes the objects filed into `objects` durable (one `syncfs`); blocking.
pub fn sync_objects(objects: &BlobStore) -> Result<(), ControllerError> {
    let root = objects.path(&Digest::of(b""));
    if let Some(dir) = root.parent() {
        artifact::unpack::sync_filesystem(dir)
            .map_err(|e| ControllerError::Internal(format!("sync objects: {e}")))?;
    }
    Ok(())
}

/// Writes each object to a temp file of the store, renamed to its name once
/// it checked out (an object already there is kept as it is).
struct Filer {
    store: BlobStore,
    order: Vec<(Digest, u64)>,
}

impl ObjectSink for Filer {
    type Out = tempfile::NamedTempFile;
    fn begin(&mut self, _: &Digest, _: u64) -> io::Result<Self::Out> {
        tempfile::NamedTempFile::new_in(self.store.tmp_dir())
    }
    fn commit(&mut self, digest: &Digest, out: Self::Out) -> io::Result<()> {
        let size = out.as_file().metadata()?.len();
        self.order.push((digest.clone(), size));
        let dest = self.store.path(digest);
        if dest.is_file() {
            return Ok(());
        }
        out.persist(&dest).map_err(|e| e.error)?;
        Ok(())
    }
}

/// Streams the object pack of `order` (read from the tenant's store, each
/// object checked as it is read) as chunks of at most `chunk` bytes. A
/// corrupt object ends the stream with an error naming it, and is moved to
/// the store's `corrupt/` dir: it then reads as missing, and the next
/// `slipctl publish` of a release holding it uploads it again.
pub fn stream_pack(
    objects: BlobStore,
    order: Vec<(Digest, u64)>,
    chunk: usize,
) -> tokio::sync::mpsc::Receiver<Result<Vec<u8>, artifact::PackError>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let writer = ChunkSender {
            tx: tx.clone(),
            buf: Vec::with_capacity(chunk),
            chunk,
        };
        // Compressed on this thread, with the fewest buffers: many hosts may
        // fetch at once (each zstd worker holds several MiB of job buffers).
        match write_pack(&order, |d| Some(objects.path(d)), writer, 0, Check::Digest) {
            Ok((mut w, _, _)) => {
                let _ = w.send();
            }
            Err(e) => {
                if let artifact::PackError::Changed(path) = &e
                    && let Some(name) = path.file_name()
                {
                    let to = objects.root().join("corrupt").join(name);
                    let moved = std::fs::rename(path, &to);
                    tracing::error!(object = %path.display(), moved_to = %to.display(), moved = moved.is_ok(),
                        "object corrupt at rest: moved aside; publish a release holding it again to repair it");
                } else {
                    tracing::error!(error = %e, "an object pack could not be built");
                }
                let _ = tx.blocking_send(Err(e));
            }
        }
    });
    rx
}

/// A writer that sends what it is given on as chunks.
struct ChunkSender {
    tx: tokio::sync::mpsc::Sender<Result<Vec<u8>, artifact::PackError>>,
    buf: Vec<u8>,
    chunk: usize,
}

impl ChunkSender {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(self.chunk));
        self.tx
            .blocking_send(Ok(data))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the fetch ended"))
    }
}

impl io::Write for ChunkSender {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let n = bytes.len().min(self.chunk - self.buf.len());
        self.buf.extend_from_slice(&bytes[..n]);
        if self.buf.len() == self.chunk {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl BlobStore {
    /// The object store of `tenant` (created on first use).
    pub fn tenant_objects(&self, tenant: &str) -> Result<BlobStore, BlobError> {
        BlobStore::at(&self.root().join("objects").join(tenant))
    }
}
