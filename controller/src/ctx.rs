//! What the controller's services and its rollout engine share: the store,
//! the blob dir, the session hub, the report writer, the CA and directive
//! key, and settings.

use std::sync::Arc;
use std::time::Duration;

use crate::blobs::BlobStore;
use crate::hub::Hub;
use crate::reports::ReportWriter;
use crate::store::Store;

/// Everything the services share.
pub struct Ctx {
    pub store: Store,
    pub blobs: BlobStore,
    pub hub: Hub,
    /// Writes the sessions' reports in batches.
    pub reports: ReportWriter,
    /// Writes enrollments in batches.
    pub joins: crate::joins::JoinQueue,
    pub ca: trust::pki::Ca,
    /// Signs every directive sent to a host.
    pub directive_key: trust::sign::KeyPair,
    pub agent_cert_ttl: Duration,
    pub join_token_ttl: Duration,
    pub directive_ttl: Duration,
    pub heartbeat_secs: u32,
    pub max_blob_bytes: u64,
    /// How long an upload may go without a message before it is cut off.
    pub upload_idle_timeout: Duration,
    /// Refusal counters and enrollment buckets of the edge.
    pub edge: crate::grpc::edge::EdgeState,
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Log queries asked of hosts and not yet done.
    pub logs: Arc<crate::logs::LogQueries>,
    /// Reads the sessions of an environment share (`shared_reads`).
    pub reads: crate::shared_reads::SharedReads,
    /// Calls to the other replicas (a log query for their hosts).
    pub peers: crate::grpc::replicas::Peers,
    /// This replica's name (`leader::replica_id`).
    pub replica: String,
}

pub type SharedCtx = Arc<Ctx>;
