//! The controller's edge, before any service sees a request: who may send a
//! body at all, how many connections one peer may hold, how fast an
//! anonymous peer may try to enroll, and how refusals of anonymous callers
//! are accounted for (counted and logged at a bounded rate, never written to
//! a tenant's audit log).
//!
//! - [`GateLayer`] authenticates every call from its headers before its body
//!   is read: Releases, Deployments and Admin need a valid API token, Agents a
//!   client certificate issued to a host. A refused call is answered at once
//!   and its body is never buffered, so a caller without credentials cannot
//!   make the controller hold the large messages it allows its own callers.
//!   Enrollment, the one anonymous service, is rate-limited per peer IP here
//!   and decodes at most 64 KiB.
//! - [`limit_connections`] caps the connections one IP holds open.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::body::Body;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

use crate::ctx::SharedCtx;

/// How often, at most, a refusal of anonymous callers is logged (with the
/// count since the last line).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Limits of the edge, from the controller's flags.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections one IP may hold open at once.
    pub connections_per_ip: usize,
    /// Enroll calls one IP may make per minute (also the burst).
    pub enrolls_per_minute: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections_per_ip: 64,
            enrolls_per_minute: 30,
        }
    }
}

/// What the edge keeps between calls: refusal counters and the enrollment
/// buckets.
#[derive(Debug)]
pub struct EdgeState {
    limits: Limits,
    refused: AtomicU64,
    refused_since_log: AtomicU64,
    last_log: Mutex<Option<Instant>>,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl EdgeState {
    pub fn new(limits: Limits) -> Self {
        EdgeState {
            limits,
            refused: AtomicU64::new(0),
            refused_since_log: AtomicU64::new(0),
            last_log: Mutex::new(None),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Anonymous calls refused since the start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Counts a refusal of a caller not authenticated for any tenant; logs
    /// it (with how many since the last line) at most every 10 s, with the
    /// reason escaped and bounded. Never an audit row: the caller is no
    /// tenant's, and a row per call would let anyone grow the database.
    pub fn refuse_anonymous(&self, what: &str, peer: &str, reason: &str) {
        let total = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        self.refused_since_log.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last_log.lock().expect("edge log lock");
        if last.is_some_and(|t| t.elapsed() < REFUSAL_LOG_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        drop(last);
        let since = self.refused_since_log.swap(0, Ordering::Relaxed);
        tracing::warn!(
            what,
            peer = %crate::sanitize::text(peer, 64),
            reason = %crate::sanitize::text(reason, 256),
            since_last_line = since,
            total,
            "anonymous calls refused"
        );
    }

    /// Takes one enrollment token from `ip`'s bucket; false when it is empty.
    pub fn allow_enroll(&self, ip: IpAddr) -> bool {
        let per_minute = f64::from(self.limits.enrolls_per_minute.max(1));
        let rate = per_minute / 60.0;
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("edge bucket lock");
        // Full buckets carry no information: forget them, so the map stays
        // as small as the set of peers enrolling right now.
        if buckets.len() > 4096 {
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.at).as_secs_f64() * rate < per_minute
            });
        }
        let b = buckets.entry(ip).or_insert(Bucket {
            tokens: per_minute,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(per_minute);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Which door a call comes through, from its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Door {
    /// Releases, Deployments, Admin: an API token.
    Api,
    /// Agents: a client certificate of a host.
    Agent,
    /// Enrollment: anonymous, rate-limited.
    Enrollment,
    /// Replicas: another controller's client certificate.
    Replica,
    /// Anything else: the router answers (unimplemented).
    Other,
}

fn door(path: &str) -> Door {
    let service = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .map(|(s, _)| s)
        .unwrap_or("");
    use proto::v1::{
        admin_server, agents_server, deployments_server, enrollment_server, releases_server,
        replicas_server,
    };
    if [
        releases_server::SERVICE_NAME,
        deployments_server::SERVICE_NAME,
        admin_server::SERVICE_NAME,
    ]
    .contains(&service)
    {
        Door::Api
    } else if service == agents_server::SERVICE_NAME {
        Door::Agent
    } else if service == enrollment_server::SERVICE_NAME {
        Door::Enrollment
    } else if service == replicas_server::SERVICE_NAME {
        Door::Replica
    } else {
        Door::Other
    }
}

/// Authenticates every call before its body is read (see the module doc).
#[derive(Clone)]
pub struct GateLayer {
    ctx: SharedCtx,
    agents: bool,
}

impl GateLayer {
    /// `agents`: whether this listener serves Agents and Enrollment (TLS);
    /// where it does not, their calls go straight to the router's
    /// "unimplemented".
    pub fn new(ctx: SharedCtx, agents: bool) -> Self {
        GateLayer { ctx, agents }
    }
}

impl<S> tower_layer::Layer<S> for GateLayer {
    type Service = Gate<S>;
    fn layer(&self, inner: S) -> Gate<S> {
        Gate {
            inner,
            ctx: self.ctx.clone(),
            agents: self.agents,
        }
    }
}

#[derive(Clone)]
pub struct Gate<S> {
    inner: S,
    ctx: SharedCtx,
    agents: bool,
}

fn peer_ip(req: &http::Request<Body>) -> Option<std::net::SocketAddr> {
    let ext = req.extensions();
    ext.get::<TcpConnectInfo>()
        .and_then(|i| i.remote_addr())
        .or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.get_ref().remote_addr())
        })
}

/// Checks the caller of `req` for its door; on success leaves what it found
/// (a `Principal`, an `AgentId`) in the request's extensions.
async fn admit(ctx: &SharedCtx, agents: bool, req: &mut http::Request<Body>) -> Result<(), Status> {
    let door = match door(req.uri().path()) {
        Door::Agent | Door::Enrollment | Door::Replica if !agents => Door::Other,
        d => d,
    };
    match door {
        Door::Api => {
            let header = req.headers().get(http::header::AUTHORIZATION);
            let principal =
                crate::auth::authenticate_header(ctx, header.map(|v| v.as_bytes())).await?;
            req.extensions_mut().insert(principal);
        }
        Door::Agent => {
            let certs = req
                .extensions()
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.peer_certs());
            let id =
                crate::auth::agent_from_certs(ctx, certs.as_deref().map(Vec::as_slice)).await?;
            req.extensions_mut().insert(id);
        }
        Door::Replica => {
            let certs = req
                .extensions()
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.peer_certs());
            let peer = super::replicas::replica_from_certs(certs.as_deref().map(Vec::as_slice))?;
            req.extensions_mut().insert(peer);
        }
        Door::Enrollment => {
            if let Some(addr) = peer_ip(req)
                && !ctx.edge.allow_enroll(addr.ip())
            {
                return Err(Status::resource_exhausted(
                    "too many enrollment attempts from this address: wait a minute",
                ));
            }
        }
        Door::Other => {}
    }
    Ok(())
}

impl<S> tower_service::Service<http::Request<Body>> for Gate<S>
where
    S: tower_service::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        // The clone is ready only if polled; keep the one that was.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let ctx = self.ctx.clone();
        let agents = self.agents;
        Box::pin(async move {
            let started = std::time::Instant::now();
            // Only the services' own paths name a series: the set stays bounded.
            let method = match door(req.uri().path()) {
                Door::Other => "other".to_string(),
                _ => req.uri().path().to_string(),
            };
            let observe = move || {
                crate::metrics::METRICS
                    .grpc_latency
                    .with_label_values(&[method.as_str()])
                    .observe(started.elapsed().as_secs_f64());
            };
            match admit(&ctx, agents, &mut req).await {
                Ok(()) => {
                    let response = inner.call(req).await;
                    observe();
                    response
                }
                Err(status) => {
                    if matches!(
                        status.code(),
                        tonic::Code::Unauthenticated | tonic::Code::ResourceExhausted
                    ) {
                        let peer = peer_ip(&req).map(|a| a.to_string()).unwrap_or_default();
                        ctx.edge
                            .refuse_anonymous(req.uri().path(), &peer, status.message());
                    }
                    observe();
                    // The body is dropped unread: h2 resets the stream.
                    Ok(status.into_http())
                }
            }
        })
    }
}

/// A connection counted against its peer's cap until it is dropped.
pub struct Counted {
    io: TcpStream,
    _slot: Slot,
}

struct Slot {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().expect("connection count lock");
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

impl Connected for Counted {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Accepts connections on `listener` and hands them on, closing at once any
/// connection past `per_ip` open ones from the same IP (counted and logged
/// like an anonymous refusal). Ends at `shutdown` or when the server drops
/// the stream.
pub fn limit_connections(
    listener: TcpListener,
    per_ip: usize,
    ctx: SharedCtx,
    shutdown: CancellationToken,
) -> ReceiverStream<std::io::Result<Counted>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let open: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tx.closed() => return,
                a = listener.accept() => a,
            };
            let (io, addr) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let ip = addr.ip();
            // Small gRPC messages go out at once (as tonic's own listener does).
            let _ = io.set_nodelay(true);
            {
                let mut counts = open.lock().expect("connection count lock");
                let n = counts.entry(ip).or_insert(0);
                if *n >= per_ip {
                    drop(counts);
                    ctx.edge.refuse_anonymous(
                        "connect",
                        &addr.to_string(),
                        &format!("more than {per_ip} connections from one address"),
                    );
                    drop(io);
                    continue;
                }
                *n += 1;
            }
            let conn = Counted {
                io,
                _slot: Slot {
                    ip,
                    open: open.clone(),
                },
            };
            if tx.send(Ok(conn)).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doors_follow_the_service_in_the_path() {
        assert_eq!(door("/slipway.v1.Releases/UploadBlob"), Door::Api);
        assert_eq!(door("/slipway.v1.Deployments/History"), Door::Api);
        assert_eq!(door("/slipway.v1.Admin/CreateToken"), Door::Api);
        assert_eq!(door("/slipway.v1.Agents/Session"), Door::Agent);
        assert_eq!(door("/slipway.v1.Enrollment/Enroll"), Door::Enrollment);
        assert_eq!(door("/slipway.v1.Replicas/Logs"), Door::Replica);
        assert_eq!(door("/grpc.health.v1.Health/Check"), Door::Other);
        assert_eq!(door("/slipway.v1.Releases"), Door::Other);
        assert_eq!(door(""), Door::Other);
    }

    #[test]
    fn an_enrollment_bucket_allows_its_burst_then_refuses() {
        let edge = EdgeState::new(Limits {
            connections_per_ip: 1,
            enrolls_per_minute: 5,
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let allowed = (0..20).filter(|_| edge.allow_enroll(a)).count();
        assert_eq!(allowed, 5);
        assert!(edge.allow_enroll(b), "another address has its own bucket");
    }
}
