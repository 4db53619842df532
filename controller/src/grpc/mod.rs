//! The gRPC edge: the only place that touches prost types. Each service converts
//! requests to store calls and domain errors to `tonic::Status`.

pub mod agents;
pub mod deployments;
pub mod releases;

use std::sync::Arc;

use tonic::Request;

use crate::blobs::BlobStore;
use crate::hub::Hub;
use crate::store::Store;

/// Everything the services share.
pub struct Ctx {
    pub store: Store,
    pub blobs: BlobStore,
    pub hub: Hub,
    pub heartbeat_secs: u32,
    pub max_blob_bytes: u64,
    pub shutdown: tokio_util::sync::CancellationToken,
}

pub type SharedCtx = Arc<Ctx>;

/// Who asked (`x-slipway-actor`, set by slipctl) and from where, for the audit log.
/// Until API tokens land, the actor is self-declared.
pub fn caller<T>(req: &Request<T>) -> (String, String) {
    let actor = req
        .metadata()
        .get("x-slipway-actor")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(128).collect::<String>())
        .unwrap_or_else(|| "unknown".into());
    let peer = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
    (actor, peer)
}

/// The tenant of a request, "default" when empty.
pub fn tenant_of(t: &str) -> Result<String, crate::error::ControllerError> {
    let t = if t.is_empty() { "default" } else { t };
    artifact::validate_name(artifact::NameKind::Tenant, t)?;
    Ok(t.to_string())
}
