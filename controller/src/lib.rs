//! The Slipway controller: keeps content-addressed release blobs, the desired
//! release of every app in every environment, and what every host reports; serves
//! slipctl and the agents over gRPC. It never spawns app processes.

pub mod auth;
pub mod blobs;
pub mod bucket;
pub mod ctx;
pub mod declare;
pub mod error;
pub mod fleet;
pub mod grpc;
pub mod hub;
pub mod intent;
pub mod joins;
pub mod leader;
pub mod lifecycle;
pub mod liveness;
pub mod logs;
pub mod metrics;
pub mod objects;
pub mod packs;
pub mod peers;
pub mod plan;
pub mod reports;
pub mod rollout;
pub mod sanitize;
pub mod shared_reads;
pub mod store;
pub mod views;
pub mod web;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use proto::v1::admin_server::AdminServer;
use proto::v1::agents_server::AgentsServer;
use proto::v1::deployments_server::DeploymentsServer;
use proto::v1::enrollment_server::EnrollmentServer;
use proto::v1::releases_server::ReleasesServer;
use proto::v1::replicas_server::ReplicasServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use trust::tls::ControllerUrl;

use crate::blobs::BlobStore;
use crate::ctx::Ctx;
use crate::grpc::edge;
use crate::hub::Hub;
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// The store's URL (`store::Store::open`); None: SQLite in `data_dir`.
    pub database: Option<String>,
    /// Where blobs live: a directory, or `s3://BUCKET/PREFIX?endpoint=…`
    /// (with `data_dir/blobs` as this replica's cache); None: `data_dir/blobs`.
    pub blobs: Option<String>,
    /// With a bucket: agents download blobs straight from it, with presigned
    /// URLs that live this long. None: through the controller.
    pub presigned_downloads: Option<Duration>,
    pub heartbeat_secs: u32,
    pub max_blob_bytes: u64,
    /// Names (DNS or IP) in the controller's server certificate.
    pub server_names: Vec<String>,
    /// Where the other replicas reach this one (`https://HOST:PORT`); None:
    /// the gRPC listener's address, or this machine's hostname when it
    /// listens on every address.
    pub advertise_address: Option<String>,
    /// Operator-provided CA (certificate, key); default: one made under `data_dir/pki`.
    pub ca: Option<(PathBuf, PathBuf)>,
    pub agent_cert_ttl: Duration,
    pub join_token_ttl: Duration,
    pub directive_ttl: Duration,
    /// Per-peer caps of the edge (connections per IP, enrollments per minute).
    pub edge: edge::Limits,
    /// An upload that sends no message for this long is cut off.
    pub upload_idle_timeout: Duration,
}

/// Streams one HTTP/2 connection may have open at once (HTTP/2
/// `MAX_CONCURRENT_STREAMS`, and the requests one connection may have in a
/// service at once): slipctl uses a handful, an agent three.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 32;

impl Config {
    /// Defaults for everything but the data dir.
    pub fn new(data_dir: PathBuf) -> Self {
        Config {
            data_dir,
            database: None,
            blobs: None,
            presigned_downloads: None,
            heartbeat_secs: 10,
            max_blob_bytes: 4 << 30,
            server_names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            advertise_address: None,
            ca: None,
            agent_cert_ttl: Duration::from_secs(24 * 3600),
            join_token_ttl: Duration::from_secs(3600),
            directive_ttl: Duration::from_secs(3600),
            edge: edge::Limits::default(),
            upload_idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Where the other replicas reach this one: `--advertise-address` when
/// given (checked), else the gRPC listener's address, with this machine's
/// hostname for an unspecified IP (`0.0.0.0`).
fn advertised(given: Option<&str>, listening: SocketAddr) -> anyhow::Result<String> {
    if let Some(url) = given {
        let parsed =
            ControllerUrl::parse(url).map_err(|e| anyhow::anyhow!("--advertise-address: {e}"))?;
        anyhow::ensure!(
            parsed.tls,
            "--advertise-address {url:?}: the other controllers call this one over TLS: use https://"
        );
        return Ok(url.to_string());
    }
    let host = if listening.ip().is_unspecified() {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into())
    } else if listening.is_ipv6() {
        format!("[{}]", listening.ip())
    } else {
        listening.ip().to_string()
    };
    Ok(format!("https://{host}:{}", listening.port()))
}

/// Where the bootstrap admin token is written on first start (0600).
pub fn admin_token_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("admin.token")
}

/// The CA certificate slipctl and agents trust.
pub fn ca_cert_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("pki/ca.pem")
}

/// The first start creates an admin token for tenant `default` and writes it
/// (never logs it) to `admin.token`, so the operator can make the others.
async fn bootstrap_admin(store: &Store, data_dir: &std::path::Path) -> anyhow::Result<()> {
    if store.api_token_count().await? > 0 {
        return Ok(());
    }
    let (text, row) = auth::new_token(
        "default",
        "bootstrap-admin",
        vec!["admin".into()],
        "controller",
        None,
    );
    let path = admin_token_path(data_dir);
    trust::write_private(&path, format!("{text}\n").as_bytes())?;
    store.insert_api_token(&row).await?;
    tracing::info!(path = %path.display(), "bootstrap admin token written");
    Ok(())
}

/// Where the controller listens.
pub struct Listeners {
    /// gRPC over TLS: agents, slipctl, CI.
    pub grpc: TcpListener,
    /// gRPC in plaintext for slipctl, loopback only.
    pub plaintext: Option<TcpListener>,
    /// HTTPS: `/healthz`, `/metrics`, the dashboard.
    pub http: Option<TcpListener>,
}

/// Opens the store and blob dir under `data_dir`, then serves until
/// `shutdown` fires: gRPC over TLS, and when given, plaintext gRPC for slipctl
/// on loopback and the HTTPS listener (`web`).
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Listeners {
        grpc: listener,
        plaintext,
        http,
    } = listeners;
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| anyhow::anyhow!("create data dir {}: {e}", config.data_dir.display()))?;
    let store = match &config.database {
        Some(url) => Store::open(url).await.map_err(|e| {
            let what = if e.is_unavailable() {
                "store unavailable"
            } else {
                "open store"
            };
            anyhow::anyhow!("{what} ({}): {e}", store::redacted(url))
        })?,
        None => {
            let db = config.data_dir.join("slipway.db");
            Store::open_sqlite(&db)
                .await
                .map_err(|e| anyhow::anyhow!("open store {}: {e}", db.display()))?
        }
    };
    let blobs = match config.blobs.as_deref() {
        Some(url) if url.starts_with("s3://") => {
            let mut bucket = bucket::Bucket::from_url(url)?;
            if let Some(ttl) = config.presigned_downloads {
                bucket = bucket.with_presigned_downloads(ttl)?;
            }
            tracing::info!(bucket = %bucket.name, cache = %config.data_dir.join("blobs").display(), "release blobs in a bucket");
            BlobStore::open(&config.data_dir.join("blobs"))?
                .with_bucket(bucket, config.max_blob_bytes)
        }
        _ if config.presigned_downloads.is_some() => {
            anyhow::bail!(
                "--presigned-downloads needs --blobs s3://BUCKET/PREFIX: a directory has no URLs to hand out"
            )
        }
        Some(dir) => BlobStore::open(std::path::Path::new(dir))?,
        None => BlobStore::open(&config.data_dir.join("blobs"))?,
    };
    let pki = config.data_dir.join("pki");
    std::fs::create_dir_all(&pki).map_err(|e| anyhow::anyhow!("create {}: {e}", pki.display()))?;
    let ca = match &config.ca {
        Some((cert, key)) => trust::pki::Ca::load(cert, key)?,
        None => trust::pki::Ca::load_or_create(&pki)?,
    };
    let directive_key = trust::sign::KeyPair::load_or_create(&pki.join("directive.key"))?;
    same_keys_as_the_other_controllers(&store, &ca, &directive_key).await?;
    // The server certificate is re-issued at every start (and lives a year).
    // It also names a replica, which is what another replica checks.
    let mut names = config.server_names.clone();
    names.push(trust::pki::REPLICA_NAME.to_string());
    let (server_cert, server_key) =
        ca.issue_server(&names, Duration::from_secs(365 * 24 * 3600))?;
    let peers = grpc::replicas::Peers::new(&ca)?;
    bootstrap_admin(&store, &config.data_dir).await?;
    let web_tls = trust::tls::server_config(&server_cert, &server_key)?;
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(
            server_cert,
            server_key,
        ))
        .client_ca_root(tonic::transport::Certificate::from_pem(&ca.cert_pem))
        // Enrollment comes without a certificate; every other agent call checks it.
        .client_auth_optional(true)
        .timeout(Duration::from_secs(10));
    let hub = Hub::new();
    let replica = leader::replica_id();
    let ctx = Arc::new(Ctx {
        reports: reports::ReportWriter::spawn(store.clone(), hub.clone()),
        joins: joins::JoinQueue::spawn(store.clone()),
        store,
        blobs,
        hub,
        ca,
        directive_key,
        agent_cert_ttl: config.agent_cert_ttl,
        join_token_ttl: config.join_token_ttl,
        directive_ttl: config.directive_ttl,
        heartbeat_secs: config.heartbeat_secs,
        max_blob_bytes: config.max_blob_bytes,
        upload_idle_timeout: config.upload_idle_timeout,
        edge: edge::EdgeState::new(config.edge),
        shutdown: shutdown.clone(),
        logs: Arc::default(),
        reads: Default::default(),
        peers,
        replica: replica.clone(),
    });
    if let Some(url) = ctx.store.postgres_url() {
        let address = advertised(config.advertise_address.as_deref(), listener.local_addr()?)?;
        if ControllerUrl::parse(&address).is_ok_and(|u| trust::tls::is_loopback(&u.host)) {
            tracing::warn!(%address, "the other controllers reach this one at a loopback address: only those on this machine can (set --advertise-address)");
        } else {
            tracing::info!(%address, "the other controllers reach this one at this address");
        }
        peers::start(
            ctx.store.clone(),
            url.to_string(),
            ctx.hub.clone(),
            peers::Me {
                replica: replica.clone(),
                address,
            },
            shutdown.clone(),
        );
    }
    // Rollouts resume from the store: a restart mid-rollout carries on, and
    // so does another replica when this one dies.
    let engine = tokio::spawn(leader::run(ctx.clone(), replica.clone()));
    let flusher = tokio::spawn(liveness::run(ctx.clone()));
    let addr: SocketAddr = listener.local_addr()?;
    tracing::info!(%addr, data_dir = %config.data_dir.display(), ca_pin = %ctx.ca.pin(), %replica, "controller listening (TLS)");

    let limit = proto::MAX_MESSAGE_BYTES;
    let agents = AgentsServer::new(grpc::agents::AgentsService { ctx: ctx.clone() })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let enrollment =
        EnrollmentServer::new(grpc::enrollment::EnrollmentService { ctx: ctx.clone() })
            .max_decoding_message_size(64 * 1024);
    // SERVING from the start; NOT_SERVING once shutdown begins, so a load
    // balancer stops sending before the listeners close.
    let (health_reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            health_reporter
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
        }
    });
    let web = match http {
        Some(http) => {
            tracing::info!(addr = %http.local_addr()?, "dashboard, /healthz and /metrics listening (HTTPS)");
            tokio::spawn(web::serve(ctx.clone(), http, web_tls))
        }
        None => tokio::spawn(async { Ok(()) }),
    };
    let per_ip = config.edge.connections_per_ip;
    let replicas = ReplicasServer::new(grpc::replicas::ReplicasService { ctx: ctx.clone() })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let tls_server = server_builder(&ctx, true)
        .tls_config(tls)?
        .add_service(agents)
        .add_service(enrollment)
        .add_service(replicas);
    let tls_server = add_api(tls_server, &ctx, &health).serve_with_incoming_shutdown(
        edge::limit_connections(listener, per_ip, ctx.clone(), shutdown.clone()),
        shutdown.cancelled(),
    );
    match plaintext {
        Some(plain) => {
            let plain_addr = plain.local_addr()?;
            anyhow::ensure!(
                plain_addr.ip().is_loopback(),
                "plaintext is served on loopback only, not on {plain_addr}"
            );
            tracing::warn!(addr = %plain_addr, "also serving slipctl in plaintext on loopback (no agent calls)");
            let plain_server = add_api(
                server_builder(&ctx, false).add_routes(tonic::service::Routes::default()),
                &ctx,
                &health,
            )
            .serve_with_incoming_shutdown(
                edge::limit_connections(plain, per_ip, ctx.clone(), shutdown.clone()),
                shutdown.cancelled(),
            );
            tokio::try_join!(tls_server, plain_server)?;
        }
        None => tls_server.await?,
    }
    web.await??;
    // The last heard-from times reach the store before the process ends, and
    // the rollouts lease is given up for another replica to take at once.
    let _ = flusher.await;
    let _ = engine.await;
    tracing::info!("controller stopped");
    Ok(())
}

/// Refuses to start with keys other than those the store's first controller
/// recorded: agents enrolled by one replica check every replica against
/// that CA and verify directives with that signing key.
async fn same_keys_as_the_other_controllers(
    store: &Store,
    ca: &trust::pki::Ca,
    directive_key: &trust::sign::KeyPair,
) -> anyhow::Result<()> {
    for (name, what, ours) in [
        ("ca", "CA (key pin)", ca.pin().to_string()),
        ("directive", "directive-signing key", directive_key.public()),
    ] {
        let recorded = store
            .controller_key(name, &ours)
            .await
            .map_err(|e| anyhow::anyhow!("store unavailable: {e}"))?;
        anyhow::ensure!(
            recorded == ours,
            "this controller's {what} is {ours}, but the store's controllers use {recorded}: \
             give every controller of a store the same DATA_DIR/pki (ca.pem, ca.key, directive.key) \
             or --ca-cert/--ca-key"
        );
    }
    Ok(())
}

type Gated = tower_layer::Stack<edge::GateLayer, tower_layer::Identity>;
type Router = tonic::transport::server::Router<Gated>;

/// A server with the edge's policy: every call authenticated from its
/// headers before its body is read (`edge::GateLayer`), a bounded number of
/// streams per connection, and HTTP/2 keepalive pings that drop a peer that
/// stops answering (a dead or stalled connection) within 30 s.
fn server_builder(ctx: &ctx::SharedCtx, agents: bool) -> tonic::transport::Server<Gated> {
    tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .concurrency_limit_per_connection(MAX_STREAMS_PER_CONNECTION as usize)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .http2_max_pending_accept_reset_streams(Some(64))
        .http2_max_header_list_size(64 * 1024)
        .layer(edge::GateLayer::new(ctx.clone(), agents))
}

/// The services slipctl and CI call (Releases, Deployments, Admin).
/// The API services on a router, with the gRPC health service
/// (`grpc.health.v1.Health`, no token needed: a load balancer's or a
/// monitor's probe).
fn add_api<H: tonic_health::pb::health_server::Health>(
    router: Router,
    ctx: &ctx::SharedCtx,
    health: &tonic_health::pb::health_server::HealthServer<H>,
) -> Router {
    let limit = proto::MAX_MESSAGE_BYTES;
    router
        .add_service(health.clone())
        .add_service(
            ReleasesServer::new(grpc::releases::ReleasesService { ctx: ctx.clone() })
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(
            DeploymentsServer::new(grpc::deployments::DeploymentsService { ctx: ctx.clone() })
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(AdminServer::new(grpc::admin::AdminService {
            ctx: ctx.clone(),
        }))
}
