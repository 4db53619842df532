//! `Releases`: which blobs are missing, streamed uploads, release registration.

use artifact::{Digest, Manifest};
use proto::v1::releases_server::Releases;
use proto::v1::{
    CreateReleaseRequest, CreateReleaseResponse, EnvDesired, ListReleasesRequest,
    ListReleasesResponse, MissingBlobsRequest, MissingBlobsResponse, MissingObjectsRequest,
    MissingObjectsResponse, Release, UploadBlobRequest, UploadBlobResponse, YankReleaseRequest,
    upload_blob_request,
};
use tonic::{Request, Response, Status, Streaming};

use super::{SharedCtx, Want, audit, authorize, reader};
use crate::error::ControllerError;
use crate::store::{ReleaseRow, YankRefused, now};

/// Bounds on what a manifest may describe: the same the agents apply, so a
/// release the controller accepts is one hosts can install.
pub const MAX_ENTRIES: usize = artifact::unpack::MAX_ENTRIES;
pub const MAX_DIGESTS_PER_QUERY: usize = 1024;
/// Object packs one release may name.
pub const MAX_PACKS: usize = 16;
/// Unpacked content a release may describe.
pub const MAX_CONTENT_BYTES: u64 = artifact::unpack::MAX_TOTAL_BYTES;

pub struct ReleasesService {
    pub ctx: SharedCtx,
}

impl super::Scoped for YankReleaseRequest {
    fn tenant(&self) -> &str {
        &self.tenant
    }
    fn target(&self) -> (&str, &str) {
        (&self.app, "")
    }
}

/// Longest reason a yank keeps.
pub const MAX_YANK_REASON: usize = 500;

fn release_to_proto(r: ReleaseRow) -> Release {
    Release {
        app: r.app,
        version: r.version,
        manifest_digest: r.manifest_digest,
        blob_digest: r.blob_digest,
        blob_size: r.blob_size,
        git_commit: r.git_commit.unwrap_or_default(),
        created_at: r.created_at,
        entries: r.entries,
        counter: r.counter,
        yanked_at: r.yanked_at.unwrap_or(0),
        yank_reason: r.yank_reason,
        signed_by: stored_signatures(&r.signatures)
            .into_iter()
            .map(|s| s.key)
            .collect(),
    }
}

/// Signatures from the wire.
pub fn signatures_from_proto(sigs: &[proto::v1::Signature]) -> Vec<trust::sign::Signature> {
    sigs.iter()
        .map(|s| trust::sign::Signature {
            key: s.key.clone(),
            sig: s.sig.clone(),
        })
        .collect()
}

/// A rollback authorization from the wire: signatures and the terms they cover.
pub fn authorization_from_proto(
    sigs: &[proto::v1::Signature],
    terms: Option<&proto::v1::RollbackTerms>,
) -> trust::sign::RollbackAuthorization {
    trust::sign::RollbackAuthorization {
        signatures: signatures_from_proto(sigs),
        terms: terms.map(|t| trust::sign::RollbackTerms {
            from_counter: t.from_counter,
            expires_at: t.expires_at,
            nonce: t.nonce.clone(),
        }),
    }
}

/// A stored rollback authorization, for the wire: signatures and terms.
pub fn stored_authorization(
    json: &str,
) -> (Vec<proto::v1::Signature>, Option<proto::v1::RollbackTerms>) {
    let a = trust::sign::RollbackAuthorization::from_stored(json);
    let sigs = a
        .signatures
        .into_iter()
        .map(|s| proto::v1::Signature {
            key: s.key,
            sig: s.sig,
        })
        .collect();
    let terms = a.terms.map(|t| proto::v1::RollbackTerms {
        from_counter: t.from_counter,
        expires_at: t.expires_at,
        nonce: t.nonce,
    });
    (sigs, terms)
}

/// Signatures as the store keeps them (JSON), for the wire.
pub fn stored_signatures(json: &str) -> Vec<proto::v1::Signature> {
    crate::intent::stored_signatures(json)
        .into_iter()
        .map(|s| proto::v1::Signature {
            key: s.key,
            sig: s.sig,
        })
        .collect()
}

/// Checks every signature over `payload` (a bad one is refused, not dropped)
/// and returns them as stored JSON.
pub fn checked_signatures(
    sigs: &[proto::v1::Signature],
    payload: &[u8],
) -> Result<String, ControllerError> {
    crate::intent::checked_signatures(&signatures_from_proto(sigs), payload)
}

/// The next message of an upload, or a refusal when none comes within
/// `idle`: a client that stops sending mid-upload (or after its header)
/// does not hold a temp file and a task for ever.
async fn next_part(
    stream: &mut Streaming<UploadBlobRequest>,
    idle: std::time::Duration,
) -> Result<Option<UploadBlobRequest>, Status> {
    match tokio::time::timeout(idle, stream.message()).await {
        Ok(msg) => msg,
        Err(_) => Err(Status::deadline_exceeded(format!(
            "upload stalled: no data for {}s",
            idle.as_secs()
        ))),
    }
}

fn parse_digest(s: &str) -> Result<Digest, ControllerError> {
    Digest::parse(s).map_err(|e| ControllerError::InvalidArgument(e.to_string()))
}

#[tonic::async_trait]
impl Releases for ReleasesService {
    async fn missing_blobs(
        &self,
        req: Request<MissingBlobsRequest>,
    ) -> Result<Response<MissingBlobsResponse>, Status> {
        let who = authorize(&self.ctx, &req, Want::Publish, "upload").await?;
        let req = req.into_inner();
        if req.digests.len() > MAX_DIGESTS_PER_QUERY {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_DIGESTS_PER_QUERY} digests per query"
            )));
        }
        let mut missing = Vec::new();
        for d in req.digests {
            let digest = parse_digest(&d)?;
            let known = self
                .ctx
                .store
                .tenant_blob_size(&who.tenant, &d)
                .await
                .map_err(ControllerError::from)?
                .is_some();
            if !known || !self.ctx.blobs.present(&digest).await {
                missing.push(d);
            }
        }
        Ok(Response::new(MissingBlobsResponse { missing }))
    }

    async fn missing_objects(
        &self,
        req: Request<MissingObjectsRequest>,
    ) -> Result<Response<MissingObjectsResponse>, Status> {
        let who = authorize(&self.ctx, &req, Want::Publish, "upload").await?;
        let req = req.into_inner();
        if req.digests.len() > MAX_ENTRIES {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_ENTRIES} digests per query"
            )));
        }
        let digests = req
            .digests
            .iter()
            .map(|d| parse_digest(d))
            .collect::<Result<Vec<_>, _>>()?;
        let objects = self
            .ctx
            .blobs
            .tenant_objects(&who.tenant)
            .map_err(ControllerError::from)?;
        let tenant = who.tenant.clone();
        let missing = tokio::task::spawn_blocking(move || {
            crate::objects::missing(&objects, &tenant, &digests)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(MissingObjectsResponse {
            missing: missing.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn upload_blob(
        &self,
        req: Request<Streaming<UploadBlobRequest>>,
    ) -> Result<Response<UploadBlobResponse>, Status> {
        let who = authorize(&self.ctx, &req, Want::Publish, "upload").await?;
        let mut stream = req.into_inner();
        let idle = self.ctx.upload_idle_timeout;
        let Some(first) = next_part(&mut stream, idle).await? else {
            return Err(Status::invalid_argument("empty upload"));
        };
        let Some(upload_blob_request::Part::Header(header)) = first.part else {
            return Err(Status::invalid_argument("upload must start with a header"));
        };
        if !header.tenant.is_empty() && header.tenant != who.tenant {
            return Err(Status::permission_denied(format!(
                "this token is for tenant {:?}, not {:?}",
                who.tenant, header.tenant
            )));
        }
        if header.digest.is_empty() {
            return self.upload_unnamed(who, stream).await;
        }
        let digest = parse_digest(&header.digest)?;
        if header.size > self.ctx.max_blob_bytes {
            return Err(Status::invalid_argument(format!(
                "blob of {} bytes is larger than this controller accepts ({} bytes)",
                header.size, self.ctx.max_blob_bytes
            )));
        }
        if self.ctx.blobs.present(&digest).await
            && self
                .ctx
                .store
                .tenant_blob_size(&who.tenant, &header.digest)
                .await
                .map_err(ControllerError::from)?
                .is_some()
        {
            return Ok(Response::new(UploadBlobResponse {
                digest: header.digest,
                size: header.size,
                already_present: true,
            }));
        }
        let mut upload = self
            .ctx
            .blobs
            .begin(digest.clone(), header.size)
            .await
            .map_err(ControllerError::from)?;
        while let Some(msg) = next_part(&mut stream, idle).await? {
            match msg.part {
                Some(upload_blob_request::Part::Chunk(bytes)) => {
                    upload.write(&bytes).await.map_err(ControllerError::from)?
                }
                _ => {
                    return Err(Status::invalid_argument(
                        "upload: a header or trailer after the header that named the digest",
                    ));
                }
            }
        }
        let result = upload.commit().await;
        let size = self.stored(&who, &digest, result).await?;
        Ok(Response::new(UploadBlobResponse {
            digest: header.digest,
            size,
            already_present: false,
        }))
    }

    async fn create_release(
        &self,
        req: Request<CreateReleaseRequest>,
    ) -> Result<Response<CreateReleaseResponse>, Status> {
        let who = authorize(&self.ctx, &req, Want::Publish, "publish").await?;
        let req = req.into_inner();
        let tenant = who.tenant.clone();
        let parsed = Manifest::from_canonical_bytes(&req.manifest, MAX_ENTRIES, MAX_CONTENT_BYTES)
            .map_err(|e| ControllerError::InvalidArgument(format!("invalid manifest: {e}")));
        let (app, version) = match &parsed {
            Ok(m) => (m.app.clone(), m.version.clone()),
            Err(_) => (String::new(), String::new()),
        };
        let result = match parsed {
            Ok(m) => {
                self.create(
                    &tenant,
                    &m,
                    &req.manifest,
                    req.counter,
                    &req.signatures,
                    &req.packs,
                )
                .await
            }
            Err(e) => Err(e),
        };
        let outcome = match &result {
            Ok((_, true)) => "ok (already published)".to_string(),
            Ok(_) => "ok".to_string(),
            Err(e) => format!("refused: {e}"),
        };
        audit(&self.ctx, &who, "publish", &app, "", &version, &outcome).await;
        let (release, already_present) = result?;
        if req.has_migrations && !already_present {
            self.ctx
                .store
                .mark_migrations(&tenant, &release.app, &release.version)
                .await
                .map_err(ControllerError::from)?;
        }
        Ok(Response::new(CreateReleaseResponse {
            release: Some(release_to_proto(release)),
            already_present,
        }))
    }

    async fn yank_release(
        &self,
        req: Request<YankReleaseRequest>,
    ) -> Result<Response<Release>, Status> {
        let who = authorize(&self.ctx, &req, Want::Admin, "yank").await?;
        let r = req.into_inner();
        let result = self.yank(&who.tenant, &r).await;
        let outcome = match &result {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("refused: {e}"),
        };
        let detail = match r.reason.as_str() {
            "" => r.version.clone(),
            reason => format!("{} ({reason})", r.version),
        };
        audit(&self.ctx, &who, "yank", &r.app, "", &detail, &outcome).await;
        let row = result?;
        tracing::info!(tenant = %who.tenant, app = %r.app, version = %r.version, "release yanked");
        Ok(Response::new(release_to_proto(row)))
    }

    async fn list_releases(
        &self,
        req: Request<ListReleasesRequest>,
    ) -> Result<Response<ListReleasesResponse>, Status> {
        let who = reader(&self.ctx, &req).await?;
        let tenant = who.tenant;
        let req = req.into_inner();
        let store = &self.ctx.store;
        if !store
            .app_exists(&tenant, &req.app)
            .await
            .map_err(ControllerError::from)?
        {
            return Err(ControllerError::NotFound(format!(
                "unknown app {:?}: publish a release first",
                req.app
            ))
            .into());
        }
        let releases = store
            .releases(&tenant, &req.app)
            .await
            .map_err(ControllerError::from)?;
        let mut desired = Vec::new();
        for (env, _) in store
            .environments(&tenant)
            .await
            .map_err(ControllerError::from)?
        {
            if let Some((version, _)) = store
                .desired(&tenant, &req.app, &env)
                .await
                .map_err(ControllerError::from)?
            {
                desired.push(EnvDesired {
                    environment: env,
                    version,
                });
            }
        }
        Ok(Response::new(ListReleasesResponse {
            releases: releases.into_iter().map(release_to_proto).collect(),
            desired,
        }))
    }
}

impl ReleasesService {
    /// An upload streamed while it is packed: at most the controller's blob
    /// limit, its digest and size named by the trailer, checked before the
    /// blob takes its name. A blob the tenant already had is dropped.
    async fn upload_unnamed(
        &self,
        who: super::Authorized,
        mut stream: Streaming<UploadBlobRequest>,
    ) -> Result<Response<UploadBlobResponse>, Status> {
        let idle = self.ctx.upload_idle_timeout;
        let mut upload = self
            .ctx
            .blobs
            .begin_unnamed(self.ctx.max_blob_bytes)
            .await
            .map_err(ControllerError::from)?;
        let trailer = loop {
            match next_part(&mut stream, idle).await? {
                Some(UploadBlobRequest {
                    part: Some(upload_blob_request::Part::Chunk(bytes)),
                }) => upload.write(&bytes).await.map_err(ControllerError::from)?,
                Some(UploadBlobRequest {
                    part: Some(upload_blob_request::Part::Trailer(t)),
                }) => break t,
                Some(_) => {
                    return Err(Status::invalid_argument(
                        "upload: a second header in the stream",
                    ));
                }
                None => {
                    return Err(Status::invalid_argument(
                        "upload ended without its trailer (digest and size)",
                    ));
                }
            }
        };
        if next_part(&mut stream, idle).await?.is_some() {
            return Err(Status::invalid_argument("upload: data after the trailer"));
        }
        let digest = parse_digest(&trailer.digest)?;
        let present = self.ctx.blobs.present(&digest).await
            && self
                .ctx
                .store
                .tenant_blob_size(&who.tenant, &trailer.digest)
                .await
                .map_err(ControllerError::from)?
                .is_some();
        if present {
            return Ok(Response::new(UploadBlobResponse {
                digest: trailer.digest,
                size: trailer.size,
                already_present: true,
            }));
        }
        let result = upload.commit_named(digest.clone(), trailer.size).await;
        let size = self.stored(&who, &digest, result).await?;
        Ok(Response::new(UploadBlobResponse {
            digest: digest.to_string(),
            size,
            already_present: false,
        }))
    }

    /// Audits an upload's end and, when it verified, records the blob as the
    /// tenant's; its size.
    async fn stored(
        &self,
        who: &super::Authorized,
        digest: &Digest,
        result: Result<u64, crate::blobs::BlobError>,
    ) -> Result<u64, Status> {
        let outcome = match &result {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("refused: {e}"),
        };
        audit(
            &self.ctx,
            who,
            "upload",
            "",
            "",
            &digest.to_string(),
            &outcome,
        )
        .await;
        let size = result.map_err(ControllerError::from)?;
        let store = &self.ctx.store;
        let name = digest.to_string();
        store
            .insert_blob(&name, size)
            .await
            .map_err(ControllerError::from)?;
        store
            .link_blob(&who.tenant, &name)
            .await
            .map_err(ControllerError::from)?;
        tracing::info!(digest = %digest, size, "blob stored");
        Ok(size)
    }

    /// Yanks `app` `version`; refused while an environment desires it.
    async fn yank(
        &self,
        tenant: &str,
        r: &YankReleaseRequest,
    ) -> Result<ReleaseRow, ControllerError> {
        if r.reason.chars().count() > MAX_YANK_REASON || r.reason.chars().any(char::is_control) {
            return Err(ControllerError::InvalidArgument(format!(
                "the reason must be one line of at most {MAX_YANK_REASON} characters"
            )));
        }
        let store = &self.ctx.store;
        if store.release(tenant, &r.app, &r.version).await?.is_none() {
            return Err(ControllerError::NotFound(format!(
                "unknown version {:?} of app {:?} (see `slipctl releases {}`)",
                r.version, r.app, r.app
            )));
        }
        match store
            .yank_release(tenant, &r.app, &r.version, &r.reason)
            .await
        {
            Ok(Some(row)) => Ok(row),
            Ok(None) => Err(ControllerError::NotFound(format!(
                "release {} {} vanished",
                r.app, r.version
            ))),
            Err(YankRefused::Desired(envs)) => Err(ControllerError::FailedPrecondition(format!(
                "{} {} is desired in {}: deploy another release there first, then yank it",
                r.app,
                r.version,
                envs.join(", ")
            ))),
            Err(YankRefused::Store(e)) => Err(e.into()),
        }
    }

    /// A format-1 release names an uploaded blob of the tenant's.
    async fn blob_of_format1(
        &self,
        tenant: &str,
        manifest: &Manifest,
        blob: &artifact::manifest::BlobRef,
    ) -> Result<(), ControllerError> {
        let digest = Digest::parse(&blob.digest)
            .map_err(|e| ControllerError::InvalidArgument(e.to_string()))?;
        let _ = manifest;
        let here = self.ctx.blobs.present(&digest).await;
        match self
            .ctx
            .store
            .tenant_blob_size(tenant, &blob.digest)
            .await?
        {
            Some(size) if size == blob.size && here => Ok(()),
            Some(size) if size != blob.size => Err(ControllerError::InvalidArgument(format!(
                "manifest says blob {digest} has {} bytes but the stored blob has {size}",
                blob.size
            ))),
            _ => Err(ControllerError::FailedPrecondition(format!(
                "blob {digest} has not been uploaded"
            ))),
        }
    }

    /// A format-2 release: files the uploaded packs' objects and checks every
    /// object is present; each pack with the objects it held, in order.
    async fn file_objects(
        &self,
        tenant: &str,
        manifest: &Manifest,
        packs: &[String],
    ) -> Result<Vec<crate::objects::FiledPack>, ControllerError> {
        let store = &self.ctx.store;
        let mut uploaded = Vec::with_capacity(packs.len());
        for p in packs.iter().take(MAX_PACKS + 1) {
            if uploaded.len() == MAX_PACKS {
                return Err(ControllerError::InvalidArgument(format!(
                    "at most {MAX_PACKS} object packs per release"
                )));
            }
            let digest = Digest::parse(p)
                .map_err(|e| ControllerError::InvalidArgument(format!("pack {p:?}: {e}")))?;
            let not_uploaded = || {
                ControllerError::FailedPrecondition(format!(
                    "object pack {digest} has not been uploaded"
                ))
            };
            let size = store
                .tenant_blob_size(tenant, p)
                .await?
                .ok_or_else(not_uploaded)?;
            // Its objects are filed from this replica's copy.
            match self.ctx.blobs.ensure_local(&digest).await {
                Ok(()) => {}
                Err(crate::blobs::BlobError::Missing(_)) => return Err(not_uploaded()),
                Err(e) => return Err(e.into()),
            }
            uploaded.push((digest, size));
        }
        let objects = self.ctx.blobs.tenant_objects(tenant)?;
        // One pack while the store has none of the objects: the publisher sent
        // them all, in order — the release's full pack. It is durable as it
        // is; its objects count as present and are filed a minute later or
        // once something needs them (publish does not wait for ~200 MiB of
        // small files, and the release's first hosts do not install beside
        // that filing).
        if let [(pack, size)] = uploaded.as_slice() {
            let order = manifest.objects();
            let digests: Vec<Digest> = order.iter().map(|(d, _)| d.clone()).collect();
            let (store, who) = (objects.clone(), tenant.to_string());
            let lacking = tokio::task::spawn_blocking(move || {
                crate::objects::missing(&store, &who, &digests)
            })
            .await
            .map_err(|e| ControllerError::Internal(format!("checking objects: {e}")))?;
            if !order.is_empty() && lacking.len() == order.len() {
                crate::objects::defer_filing(
                    &self.ctx.blobs,
                    &objects,
                    tenant,
                    pack.clone(),
                    *size,
                    order.clone(),
                );
                return Ok(vec![crate::objects::FiledPack {
                    pack: pack.clone(),
                    size: *size,
                    held: order,
                }]);
            }
        }
        crate::objects::file_packs(&self.ctx.blobs, &objects, tenant, uploaded, manifest).await
    }

    /// A new format-2 release's full pack if it has one already: an uploaded
    /// pack holding all its objects in order, or an earlier release's with
    /// the same objects. None: it is built later (see `crate::packs`), so
    /// a publish of a changed tree does not wait for ~200 MiB to be packed.
    async fn full_pack(
        &self,
        tenant: &str,
        manifest: &Manifest,
        filed: &[crate::objects::FiledPack],
    ) -> Result<Option<(String, u64)>, ControllerError> {
        let store = &self.ctx.store;
        let order = manifest.objects();
        let key = crate::objects::objects_key(&order);
        for f in filed {
            if f.held == order {
                store.set_objects_key(&f.pack.to_string(), &key).await?;
                return Ok(Some((f.pack.to_string(), f.size)));
            }
        }
        let Some((found, size)) = store.pack_with_objects(tenant, &key).await? else {
            return Ok(None);
        };
        let present = match Digest::parse(&found) {
            Ok(d) => self.ctx.blobs.present(&d).await,
            Err(_) => false,
        };
        Ok(present.then_some((found, size)))
    }

    async fn create(
        &self,
        tenant: &str,
        manifest: &Manifest,
        bytes: &[u8],
        counter: u64,
        signatures: &[proto::v1::Signature],
        packs: &[String],
    ) -> Result<(ReleaseRow, bool), ControllerError> {
        let store = &self.ctx.store;
        // Objects are filed first, even for a release already published: a
        // publish again repairs an object moved aside as corrupt.
        let filed = match &manifest.blob {
            Some(_) => Vec::new(),
            None => self.file_objects(tenant, manifest, packs).await?,
        };
        // The packs that are not its full pack: where another replica, with
        // blobs in a bucket, files the objects this publish brought. Before
        // the release row, and on a publish again too, so none is missed.
        let order = manifest.objects();
        for f in filed.iter().filter(|f| f.held != order) {
            store
                .record_release_pack(
                    tenant,
                    &manifest.digest().to_string(),
                    &f.pack.to_string(),
                    f.size,
                )
                .await?;
        }
        if let Some(existing) = store
            .release(tenant, &manifest.app, &manifest.version)
            .await?
            && existing.manifest_digest == manifest.digest().to_string()
        {
            return Ok((existing, true));
        }
        let counter = next_counter(store.max_counter(tenant, &manifest.app).await?, counter)
            .map_err(|e| ControllerError::InvalidArgument(format!("{}: {e}", manifest.app)))?;
        let manifest_digest = manifest.digest().to_string();
        let statement = trust::sign::ReleaseStatement {
            tenant,
            app: &manifest.app,
            version: &manifest.version,
            counter,
            manifest_digest: &manifest_digest,
        };
        let signatures = checked_signatures(signatures, &statement.bytes())?;
        let full_pack = match &manifest.blob {
            Some(blob) => {
                self.blob_of_format1(tenant, manifest, blob).await?;
                Some((blob.digest.clone(), blob.size))
            }
            None => self.full_pack(tenant, manifest, &filed).await?,
        };
        let (blob_digest, blob_size) = full_pack.clone().unwrap_or_default();
        let row = ReleaseRow {
            app: manifest.app.clone(),
            version: manifest.version.clone(),
            manifest_digest: manifest.digest().to_string(),
            blob_digest,
            blob_size,
            git_commit: manifest.git_commit.clone(),
            entries: manifest.entries.len() as u32,
            created_at: now(),
            counter,
            signatures,
            yanked_at: None,
            yank_reason: String::new(),
        };
        let (stored, existed) = store.insert_release(tenant, &row, bytes).await?;
        if existed && stored.manifest_digest != row.manifest_digest {
            return Err(ControllerError::AlreadyExists(format!(
                "{} {} is already published with different content ({} vs {}): versions are immutable, publish a new version",
                row.app,
                row.version,
                short(&stored.manifest_digest),
                short(&row.manifest_digest)
            )));
        }
        if !existed {
            tracing::info!(tenant, app = %row.app, version = %row.version, digest = %row.manifest_digest, "release created");
            // Only a release that passed every check gets its full pack built.
            if full_pack.is_none() {
                crate::packs::build_later(
                    self.ctx.clone(),
                    tenant.to_string(),
                    row.app.clone(),
                    row.manifest_digest.clone(),
                );
            }
        }
        Ok((stored, existed))
    }
}

/// Highest counter a release may carry: counters are stored as SQLite integers.
pub const MAX_COUNTER: u64 = i64::MAX as u64;

/// Why a release counter is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CounterError {
    #[error("release counter {0} is out of range (1..={MAX_COUNTER})")]
    OutOfRange(u64),
    #[error("release counter {given} is not above the highest ({highest})")]
    NotAbove { given: u64, highest: u64 },
    #[error(
        "the highest release counter is {MAX_COUNTER}: no counter is left above it (yank the release that holds it: slipctl releases yank)"
    )]
    Exhausted,
}

/// The counter a new release gets: `given` when it is in range and above
/// `highest` (the app's highest, yanked releases left out), or the next one
/// when `given` is 0.
pub fn next_counter(highest: u64, given: u64) -> Result<u64, CounterError> {
    match given {
        0 => highest
            .checked_add(1)
            .filter(|c| *c <= MAX_COUNTER)
            .ok_or(CounterError::Exhausted),
        c if c > MAX_COUNTER => Err(CounterError::OutOfRange(c)),
        c if c <= highest => Err(CounterError::NotAbove { given: c, highest }),
        c => Ok(c),
    }
}

fn short(d: &str) -> &str {
    &d[..d.len().min(19)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_stay_in_range_and_grow() {
        let check = |highest, given| next_counter(highest, given).map_err(|e| e.to_string());
        assert_eq!(check(0, 0), Ok(1));
        assert_eq!(check(4, 0), Ok(5));
        assert_eq!(check(4, 9), Ok(9));
        assert_eq!(check(4, MAX_COUNTER), Ok(MAX_COUNTER));
        assert_eq!(
            check(4, u64::MAX),
            Err(format!(
                "release counter {} is out of range (1..={MAX_COUNTER})",
                u64::MAX
            ))
        );
        assert_eq!(
            check(4, MAX_COUNTER + 1).unwrap_err(),
            CounterError::OutOfRange(MAX_COUNTER + 1).to_string()
        );
        assert_eq!(
            check(4, 4),
            Err("release counter 4 is not above the highest (4)".into())
        );
        assert_eq!(
            check(4, 2),
            Err("release counter 2 is not above the highest (4)".into())
        );
        assert!(
            check(MAX_COUNTER, 0)
                .unwrap_err()
                .contains("no counter is left")
        );
        assert!(check(u64::MAX, 0).is_err(), "never wraps");
    }
}
