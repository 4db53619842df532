//! The Slipway controller: keeps content-addressed release blobs, the desired
//! release of every app in every environment, and what every host reports; serves
//! slipctl and the agents over gRPC. It never spawns app processes.

pub mod blobs;
pub mod error;
pub mod grpc;
pub mod hub;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use proto::v1::agents_server::AgentsServer;
use proto::v1::deployments_server::DeploymentsServer;
use proto::v1::releases_server::ReleasesServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::blobs::BlobStore;
use crate::grpc::Ctx;
use crate::hub::Hub;
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub heartbeat_secs: u32,
    pub max_blob_bytes: u64,
}

/// Opens the store and blob dir under `data_dir`, then serves on `listener` until
/// `shutdown` fires.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| anyhow::anyhow!("create data dir {}: {e}", config.data_dir.display()))?;
    let db = config.data_dir.join("slipway.db");
    let store = Store::open_sqlite(&db)
        .await
        .map_err(|e| anyhow::anyhow!("open store {}: {e}", db.display()))?;
    let blobs = BlobStore::open(&config.data_dir.join("blobs"))?;
    let ctx = Arc::new(Ctx {
        store,
        blobs,
        hub: Hub::new(),
        heartbeat_secs: config.heartbeat_secs,
        max_blob_bytes: config.max_blob_bytes,
        shutdown: shutdown.clone(),
    });
    let addr: SocketAddr = listener.local_addr()?;
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "controller listening");

    let limit = proto::MAX_MESSAGE_BYTES;
    let releases = ReleasesServer::new(grpc::releases::ReleasesService { ctx: ctx.clone() })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let deployments =
        DeploymentsServer::new(grpc::deployments::DeploymentsService { ctx: ctx.clone() })
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit);
    let agents = AgentsServer::new(grpc::agents::AgentsService { ctx: ctx.clone() })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);

    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .add_service(releases)
        .add_service(deployments)
        .add_service(agents)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown.cancelled(),
        )
        .await?;
    tracing::info!("controller stopped");
    Ok(())
}
