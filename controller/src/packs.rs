//! A format-2 release's full pack: every object of the release, in manifest
//! order, as one zstd tar — what a host with none of its files installs
//! from. A first release's full pack is what the publisher uploaded. A
//! release published as a delta (only the objects the controller lacked)
//! gets its full pack built from the object store later, not while the
//! publish waits: a minute after publish at the lowest CPU priority if it
//! is still the app's newest release ([`build_later`]), or at once when a
//! host with none of its files asks for it ([`ensure`]). Until then the release has none (`blob_digest` is
//! empty) and its directives say so.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use artifact::objects::{Check, write_pack};
use artifact::{Digest, Manifest};

use crate::blobs::{BlobError, BlobStore};
use crate::ctx::SharedCtx;
use crate::error::ControllerError;
use crate::objects::{missing, objects_key, wait_filed};

/// A release published as a delta gets its full pack built this long after
/// publish if no host asked for it before: its first installs (deltas, on
/// hosts that run the release before it) are usually done by then.
pub const BUILD_DELAY: std::time::Duration = std::time::Duration::from_secs(60);

/// Longest a build waits for the objects of earlier releases to be filed.
const FILING_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Releases of the tenant whose full packs are looked through for objects
/// missing from the store (see [`refile_lost`]).
const REFILE_FROM: u32 = 32;

/// One lock per (tenant, objects key): a pack asked for by many hosts at
/// once, or asked for while the delayed build runs, is built once.
static BUILDS: LazyLock<Mutex<HashMap<(String, String), BuildLock>>> =
    LazyLock::new(Default::default);

type BuildLock = Arc<tokio::sync::Mutex<()>>;

fn build_lock(tenant: &str, key: &str) -> BuildLock {
    let mut builds = BUILDS.lock().unwrap_or_else(|e| e.into_inner());
    // Locks nobody holds or waits for are dropped as new ones are made.
    builds.retain(|_, l| Arc::strong_count(l) > 1);
    builds
        .entry((tenant.to_string(), key.to_string()))
        .or_default()
        .clone()
}

/// The full pack of the tenant's release `manifest` (digest, size): found
/// (an uploaded one, or one built for a release with the same objects) or
/// built now from the object store and recorded as the release's. `idle`
/// builds at the lowest CPU priority (nothing waits for it).
pub async fn ensure(
    ctx: &SharedCtx,
    tenant: &str,
    manifest: &Manifest,
    idle: bool,
) -> Result<(Digest, u64), ControllerError> {
    // In a task of its own, holding the lock to the end: a host that hangs
    // up does not free the lock for a second build beside the first.
    let (ctx, tenant, manifest) = (ctx.clone(), tenant.to_string(), manifest.clone());
    tokio::spawn(async move { ensure_held(&ctx, &tenant, &manifest, idle).await })
        .await
        .map_err(|e| ControllerError::Internal(format!("building a full pack: {e}")))?
}

/// Full packs built at once: each takes every core and tens of MiB.
static BUILDING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

async fn ensure_held(
    ctx: &SharedCtx,
    tenant: &str,
    manifest: &Manifest,
    idle: bool,
) -> Result<(Digest, u64), ControllerError> {
    let store = &ctx.store;
    let release = manifest.digest().to_string();
    let order = manifest.objects();
    let key = objects_key(&order);
    let lock = build_lock(tenant, &key);
    let _building = lock.lock().await;
    if let Some((found, size)) = store.pack_with_objects(tenant, &key).await?
        && let Ok(digest) = Digest::parse(&found)
        && ctx.blobs.present(&digest).await
    {
        store
            .set_release_pack(tenant, &release, &found, size)
            .await?;
        return Ok((digest, size));
    }
    let objects = ctx.blobs.tenant_objects(tenant)?;
    let digests: Vec<Digest> = order.iter().map(|(d, _)| d.clone()).collect();
    refile_lost(ctx, tenant, &digests).await?;
    let _one = BUILDING
        .acquire()
        .await
        .map_err(|e| ControllerError::Internal(format!("build queue: {e}")))?;
    let started = std::time::Instant::now();
    let (digest, size) = build_pack(&ctx.blobs, &objects, order, idle).await?;
    let name = digest.to_string();
    store.insert_blob(&name, size).await?;
    store.link_blob(tenant, &name).await?;
    store.set_objects_key(&name, &key).await?;
    store
        .set_release_pack(tenant, &release, &name, size)
        .await?;
    tracing::info!(%tenant, app = %manifest.app, version = %manifest.version, pack = %name, size, idle,
        secs = started.elapsed().as_secs_f64(), "full pack built from the object store");
    Ok((digest, size))
}

/// Builds the full pack of the tenant's release `manifest_digest` of `app`
/// [`BUILD_DELAY`] from now, at the lowest CPU priority, if it is still the
/// app's newest release then (an older one's is built when a host first
/// asks for it: a CI publishing version after version would otherwise
/// build a pack per version). The manifest is read again then, not held
/// meanwhile (~3 MiB parsed for 12k files). A failure is logged: the first
/// host that needs the pack builds it, or says why it cannot.
pub fn build_later(ctx: SharedCtx, tenant: String, app: String, manifest_digest: String) {
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(BUILD_DELAY) => {}
            _ = ctx.shutdown.cancelled() => return,
        }
        let built = async {
            if ctx.store.newest_release(&tenant, &app).await?.as_deref()
                != Some(manifest_digest.as_str())
            {
                return Ok(None);
            }
            let Some((_, bytes, _, _)) = ctx
                .store
                .release_manifest(&tenant, &manifest_digest)
                .await?
            else {
                return Ok(None);
            };
            let manifest = Manifest::from_canonical_bytes(
                &bytes,
                artifact::unpack::MAX_ENTRIES,
                artifact::unpack::MAX_TOTAL_BYTES,
            )
            .map_err(|e| ControllerError::Internal(format!("stored manifest: {e}")))?;
            ensure(&ctx, &tenant, &manifest, true).await.map(Some)
        };
        if let Err(e) = built.await {
            tracing::warn!(%tenant, %app, release = %manifest_digest, error = %e,
                "full pack not built; the first host with none of its files builds it");
        }
    });
}

/// Waits until `digests` are filed, filing again from the full packs of
/// the tenant's newest releases any the store lost (a controller stopped
/// before a deferred filing ran: the packs are durable, their filing was
/// not; a release of one app may count on objects of another's pack).
/// Fails, naming how many, when objects are still missing after that.
pub async fn refile_lost(
    ctx: &SharedCtx,
    tenant: &str,
    digests: &[Digest],
) -> Result<(), ControllerError> {
    let still_filing = || {
        ControllerError::Unavailable(
            "objects of this release are still being filed; try again".into(),
        )
    };
    if !wait_filed(tenant, digests, FILING_WAIT).await {
        return Err(still_filing());
    }
    let objects = ctx.blobs.tenant_objects(tenant)?;
    let lacking = missing_now(&objects, tenant, digests).await?;
    if lacking.is_empty() {
        return Ok(());
    }
    let mut lacking: std::collections::HashSet<Digest> = lacking.into_iter().collect();
    let total = lacking.len();
    for (bytes, pack, size) in ctx.store.releases_with_packs(tenant, REFILE_FROM).await? {
        let Some((pack, m)) = pack_of(&bytes, &pack) else {
            continue;
        };
        // Filed from this replica's copy of the pack.
        if m.blob.is_some() || ctx.blobs.ensure_local(&pack).await.is_err() {
            continue;
        }
        let held = m.objects();
        if !held.iter().any(|(d, _)| lacking.contains(d)) {
            continue;
        }
        for (d, _) in &held {
            lacking.remove(d);
        }
        crate::objects::defer_filing(&ctx.blobs, &objects, tenant, pack, size as u64, held);
        if lacking.is_empty() {
            break;
        }
    }
    if !lacking.is_empty() {
        // One refiling per tenant at a time: the hosts of a batch asking at
        // once find the objects filed by the first instead of each bringing
        // the same packs down.
        let lock = build_lock(tenant, "refile");
        let _held = lock.lock().await;
        let still = missing_now(&objects, tenant, digests).await?;
        lacking.retain(|d| still.contains(d));
        if !lacking.is_empty() {
            refile_from_object_packs(ctx, tenant, &objects, &mut lacking).await?;
        }
    }
    tracing::warn!(%tenant, objects = total, "objects missing from the store: filing them again from the packs they came in");
    if !wait_filed(tenant, digests, FILING_WAIT).await {
        return Err(still_filing());
    }
    let lost = missing_now(&objects, tenant, digests).await?.len();
    if lost > 0 {
        return Err(ControllerError::FailedPrecondition(format!(
            "{lost} objects of this release are missing from the controller's store; publish the release again to repair it"
        )));
    }
    Ok(())
}

/// Files what is still `lacking` from the object packs recent releases were
/// published with (with blobs in a bucket, a replica that did not receive a
/// delta publish has none of its new objects, and the release may have no
/// full pack yet). Each pack is brought down from the bucket if need be and
/// filed now; objects already here are kept.
async fn refile_from_object_packs(
    ctx: &SharedCtx,
    tenant: &str,
    objects: &BlobStore,
    lacking: &mut std::collections::HashSet<Digest>,
) -> Result<(), ControllerError> {
    let mut filed_any = false;
    for (bytes, pack, size) in ctx.store.releases_object_packs(tenant, REFILE_FROM).await? {
        let Some((pack, m)) = pack_of(&bytes, &pack) else {
            continue;
        };
        let allowed: HashMap<Digest, u64> = m.objects().into_iter().collect();
        if !allowed.keys().any(|d| lacking.contains(d))
            || ctx.blobs.ensure_local(&pack).await.is_err()
        {
            continue;
        }
        let (blobs, store) = (ctx.blobs.clone(), objects.clone());
        let filed = tokio::task::spawn_blocking(move || {
            crate::objects::file_pack(&blobs, &store, pack, size as u64, &allowed)
        })
        .await
        .map_err(|e| ControllerError::Internal(format!("filing objects: {e}")))?;
        match filed {
            Ok(f) => {
                filed_any = true;
                tracing::info!(%tenant, pack = %f.pack, objects = f.held.len(), "objects filed from a release's object pack");
                for (d, _) in &f.held {
                    lacking.remove(d);
                }
            }
            Err(e) => {
                tracing::error!(%tenant, error = %e, "an object pack could not be filed again")
            }
        }
        if lacking.is_empty() {
            break;
        }
    }
    if filed_any {
        let store = objects.clone();
        tokio::task::spawn_blocking(move || crate::objects::sync_objects(&store))
            .await
            .map_err(|e| ControllerError::Internal(format!("syncing objects: {e}")))??;
    }
    Ok(())
}

/// A pack's digest and its release's manifest, from a stored row (None: a
/// row that does not parse, skipped).
fn pack_of(manifest: &[u8], pack: &str) -> Option<(Digest, Manifest)> {
    let m = Manifest::from_canonical_bytes(
        manifest,
        artifact::unpack::MAX_ENTRIES,
        artifact::unpack::MAX_TOTAL_BYTES,
    )
    .ok()?;
    Some((Digest::parse(pack).ok()?, m))
}

async fn missing_now(
    objects: &BlobStore,
    tenant: &str,
    digests: &[Digest],
) -> Result<Vec<Digest>, ControllerError> {
    let (objects, tenant, digests) = (objects.clone(), tenant.to_string(), digests.to_vec());
    tokio::task::spawn_blocking(move || missing(&objects, &tenant, &digests))
        .await
        .map_err(|e| ControllerError::Internal(format!("checking objects: {e}")))
}

/// Builds the object pack of `order` from the tenant's store into a blob of
/// the store `blobs` (temp file, then renamed to its digest) on every core;
/// its digest and size. `idle`: on a thread at nice 19 (zstd's workers,
/// started from it, inherit that).
pub async fn build_pack(
    blobs: &BlobStore,
    objects: &BlobStore,
    order: Vec<(Digest, u64)>,
    idle: bool,
) -> Result<(Digest, u64), ControllerError> {
    let store = blobs.clone();
    let (blobs, objects) = (blobs.clone(), objects.clone());
    let build = move || -> Result<_, ControllerError> {
        if idle && let Err(e) = rustix::process::setpriority_process(None, 19) {
            tracing::debug!(error = %e, "full pack built at normal priority");
        }
        let tmp = tempfile::NamedTempFile::new_in(blobs.tmp_dir()).map_err(|e| BlobError::Io {
            path: blobs.tmp_dir(),
            source: e,
        })?;
        let out = std::io::BufWriter::new(tmp);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        let (out, digest, size) =
            write_pack(&order, |d| Some(objects.path(d)), out, cores, Check::Digest)
                .map_err(|e| ControllerError::Internal(format!("build the release's pack: {e}")))?;
        let tmp = out
            .into_inner()
            .map_err(|e| ControllerError::Internal(format!("write pack: {e}")))?;
        tmp.as_file().sync_all().map_err(|e| BlobError::Io {
            path: blobs.tmp_dir(),
            source: e,
        })?;
        let dest = blobs.path(&digest);
        tmp.persist(&dest).map_err(|e| BlobError::Io {
            path: dest.clone(),
            source: e.error,
        })?;
        Ok((digest, size))
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A thread of its own: a nice value set on a pooled thread would stay
    // with the next task it runs.
    std::thread::Builder::new()
        .name("full-pack".into())
        .spawn(move || {
            let _ = tx.send(build());
        })
        .map_err(|e| ControllerError::Internal(format!("no thread to build a pack: {e}")))?;
    let (digest, size) = rx.await.map_err(|_| {
        ControllerError::Internal("building a pack: the build thread died".into())
    })??;
    // Recorded in the store (by the caller) only once it is in the bucket.
    store.upload_committed(&digest).await?;
    Ok((digest, size))
}
