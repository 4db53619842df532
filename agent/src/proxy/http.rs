//! The agent's HTTP/1.1 reverse proxy for one app: accepts on the app's public
//! port and forwards every request to the instance the route names, on its
//! private loopback port. Client connections are kept alive across a switch
//! (each request is routed on its own, to the route of the moment); requests
//! in flight are counted per target so an old instance is stopped only once
//! they finished (or the drain timeout passed).
//!
//! Bounds: at most [`MAX_CONNECTIONS`] client connections (more wait in the
//! listen backlog), request headers within [`HEADER_TIMEOUT`] and hyper's
//! default sizes; bodies stream through, never buffered. Upgrades
//! (WebSocket) are not forwarded.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;

use super::{ProxyError, ROUTE_POLL, Route, read_route};

/// Client connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 8192;
/// A client must send its request headers within this long.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle upstream connections are kept this long for reuse.
const UPSTREAM_IDLE: Duration = Duration::from_secs(30);

/// Headers that belong to one hop, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// The proxy of one app, running in this agent.
pub struct Proxy {
    app: String,
    addr: SocketAddr,
    route_file: PathBuf,
    /// The target of new requests, and its in-flight counter.
    target: RwLock<Option<(Route, Arc<AtomicUsize>)>>,
    /// In-flight counters by private port (old targets included).
    inflight: Mutex<HashMap<u16, Arc<AtomicUsize>>>,
    /// The route file as last read (mtime, length).
    seen: Mutex<Option<(SystemTime, u64)>>,
    client: Client<HttpConnector, Incoming>,
    cancel: CancellationToken,
}

static PROXIES: LazyLock<Mutex<BTreeMap<String, Arc<Proxy>>>> =
    LazyLock::new(|| Mutex::new(BTreeMap::new()));

fn registry() -> std::sync::MutexGuard<'static, BTreeMap<String, Arc<Proxy>>> {
    PROXIES.lock().unwrap_or_else(|e| e.into_inner())
}

/// This agent's proxy for `app`, if it runs one.
pub fn get(app: &str) -> Option<Arc<Proxy>> {
    registry().get(app).cloned()
}

/// Runs the proxy for `app` on `addr` (kept when it already runs there;
/// moved when the address changed). Must be called within a tokio runtime.
pub fn ensure(app: &str, addr: SocketAddr, route_file: PathBuf) -> Result<(), ProxyError> {
    if let Some(p) = get(app) {
        if p.addr == addr && p.route_file == route_file && !p.cancel.is_cancelled() {
            return Ok(());
        }
        p.cancel.cancel();
        registry().remove(app);
    }
    let listener = bind(addr).map_err(|source| ProxyError::Bind { addr, source })?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(UPSTREAM_IDLE)
        .pool_timer(TokioTimer::new())
        .build(connector);
    let proxy = Arc::new(Proxy {
        app: app.to_string(),
        addr,
        route_file,
        target: RwLock::new(None),
        inflight: Mutex::new(HashMap::new()),
        seen: Mutex::new(None),
        client,
        cancel: CancellationToken::new(),
    });
    proxy.reload();
    registry().insert(app.to_string(), proxy.clone());
    tracing::info!(app, %addr, route = ?proxy.route(), "proxy listening");
    tokio::spawn(proxy.clone().accept_loop(listener));
    tokio::spawn(proxy.clone().poll_route());
    Ok(())
}

/// Stops the proxies of apps not in `apps` (removed, or no longer proxied).
pub fn retain(apps: &[String]) {
    registry().retain(|app, p| {
        let keep = apps.contains(app);
        if !keep {
            tracing::info!(app, addr = %p.addr, "proxy stopped");
            p.cancel.cancel();
        }
        keep
    });
}

/// A listening socket with `SO_REUSEADDR` (a restarted agent binds again
/// while connections of the last one are in TIME_WAIT) and a full backlog.
fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

impl Proxy {
    /// The route new requests take.
    pub fn route(&self) -> Option<Route> {
        self.target
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(r, _)| r.clone())
    }

    /// Reads the route file again and switches to what it names.
    pub fn reload(&self) {
        let meta = std::fs::metadata(&self.route_file)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = meta;
        let route = read_route(&self.route_file);
        let counter = route.as_ref().map(|r| self.counter(r.port));
        let mut target = self.target.write().unwrap_or_else(|e| e.into_inner());
        let before = target.as_ref().map(|(r, _)| r.clone());
        if before != route {
            tracing::info!(app = %self.app, from = ?before, to = ?route, "traffic moved");
        }
        *target = route.zip(counter);
    }

    fn counter(&self, port: u16) -> Arc<AtomicUsize> {
        self.inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(port)
            .or_default()
            .clone()
    }

    /// Waits until no request is in flight to `port` (true), or `timeout`
    /// passed (false: those left are cut when the instance stops).
    pub async fn drain(&self, port: u16, timeout: Duration) -> bool {
        let counter = self.counter(port);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if counter.load(Ordering::Acquire) == 0 {
                self.inflight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&port);
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Picks up a route another process wrote.
    async fn poll_route(self: Arc<Self>) {
        let mut tick = tokio::time::interval(ROUTE_POLL);
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let meta = std::fs::metadata(&self.route_file)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())));
            let seen = *self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if meta != seen {
                self.reload();
            }
        }
    }

    async fn accept_loop(self: Arc<Self>, listener: tokio::net::TcpListener) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let permit = tokio::select! {
                _ = self.cancel.cancelled() => return,
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let (stream, peer) = tokio::select! {
                _ = self.cancel.cancelled() => return,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of fds and the like: back off instead of spinning.
                        tracing::warn!(app = %self.app, error = %e, "proxy accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let me = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let svc = hyper::service::service_fn(move |req| {
                    let me = me.clone();
                    async move { Ok::<_, std::convert::Infallible>(me.forward(req, peer).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    }

    /// One request: to the route's instance, counted in flight until its
    /// response body has been sent.
    async fn forward(&self, mut req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
        // Read the route and count the request under one lock: a switch
        // (write lock) then sees every request the old target will get.
        let picked = {
            let target = self.target.read().unwrap_or_else(|e| e.into_inner());
            target.as_ref().map(|(route, counter)| {
                counter.fetch_add(1, Ordering::AcqRel);
                (route.clone(), InFlight(counter.clone()))
            })
        };
        let Some((route, guard)) = picked else {
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "slipway proxy: no release of this app is serving yet\n",
            );
        };
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let uri = match format!("http://127.0.0.1:{}{path}", route.port).parse() {
            Ok(u) => u,
            Err(_) => {
                return plain(
                    StatusCode::BAD_REQUEST,
                    "slipway proxy: bad request target\n",
                );
            }
        };
        *req.uri_mut() = uri;
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        let forwarded = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(before) => format!("{before}, {}", peer.ip()),
            None => peer.ip().to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&forwarded) {
            headers.insert("x-forwarded-for", v);
        }
        headers
            .entry("x-forwarded-proto")
            .or_insert(HeaderValue::from_static("http"));
        match self.client.request(req).await {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                let body = Guarded {
                    inner: body.boxed(),
                    _guard: guard,
                };
                Response::from_parts(parts, body.boxed())
            }
            Err(e) => {
                tracing::warn!(app = %self.app, version = %route.version, port = route.port, error = %e, "proxy: upstream failed");
                plain(
                    StatusCode::BAD_GATEWAY,
                    &format!(
                        "slipway proxy: release {} did not answer\n",
                        route.version.escape_debug()
                    ),
                )
            }
        }
    }
}

fn strip_hop_by_hop(headers: &mut hyper::HeaderMap) {
    // Headers the Connection header names are hop-by-hop too.
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .filter(|s| !s.is_empty())
        .collect();
    for h in HOP_BY_HOP
        .iter()
        .copied()
        .chain(named.iter().map(String::as_str))
    {
        headers.remove(h);
    }
}

fn plain(status: StatusCode, text: &str) -> Response<ProxyBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(text.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// One request in flight to a target, until dropped.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted until it is sent (or the
/// client went away).
struct Guarded {
    inner: ProxyBody,
    _guard: InFlight,
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
