//! The controller's HTTPS listener: `/healthz`, `/metrics` and the
//! dashboard. Its own address (`--http-listen`, loopback by default), the
//! controller's certificate, HTTP/1.1 over hyper with axum's router on the
//! same runtime as gRPC.
//!
//! The dashboard is an edge like gRPC: it reads the same domain views
//! (`views`, the store's rows) and checks the same tenant and role
//! (`auth::Principal`) a slipctl call does, from a session cookie made at
//! sign-in with an API token (`session`). Pages are rendered on the server
//! (maud, escaped by construction), with one stylesheet and one small script
//! compiled into the binary: no CDN, no Node toolchain.

mod layout;
mod pages;
mod search;
mod session;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::ctx::SharedCtx;
use crate::error::ControllerError;

/// Connections open at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 256;
/// Connections one IP address may hold open at once (a slow client cannot
/// take every slot, `/healthz`'s included).
const MAX_CONNECTIONS_PER_IP: usize = 32;
/// A request body (a form) must arrive whole within this.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// A TLS handshake or a request's headers that take longer are cut off.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request body (sign-in and other forms).
const MAX_BODY_BYTES: usize = 16 * 1024;
/// How long open connections (a live rollout view) get to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(3);

/// The peer of a request (for the audit log).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Serves HTTPS on `listener` until the controller shuts down.
pub async fn serve(
    ctx: SharedCtx,
    listener: TcpListener,
    tls: rustls::ServerConfig,
) -> anyhow::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let app = router(ctx.clone());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let open: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    let shutdown = ctx.shutdown.clone();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => p?,
        };
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, most likely: wait, do not spin.
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(per_ip) = PerIp::take(&open, peer.ip()) else {
            // Dropped at once: this address holds its share already.
            continue;
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let _per_ip = per_ip;
            let Ok(Ok(stream)) =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            else {
                return;
            };
            let service =
                hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(Peer(peer));
                    let mut app = app.clone();
                    async move {
                        tower_service::Service::call(&mut app, req.map(axum::body::Body::new)).await
                    }
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT)
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(stream), service);
            let _ = watcher.watch(conn).await;
        });
    }
    let _ = tokio::time::timeout(DRAIN, graceful.shutdown()).await;
    Ok(())
}

/// A connection counted against its address until dropped.
struct PerIp {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerIp {
    fn take(open: &Arc<Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr) -> Option<PerIp> {
        let mut map = open.lock().expect("connections lock");
        let n = map.entry(ip).or_default();
        if *n >= MAX_CONNECTIONS_PER_IP {
            return None;
        }
        *n += 1;
        Some(PerIp {
            ip,
            open: open.clone(),
        })
    }
}

impl Drop for PerIp {
    fn drop(&mut self) {
        let mut map = self.open.lock().expect("connections lock");
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

fn router(ctx: SharedCtx) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/assets/{name}", get(layout::asset))
        .route("/", get(session::home))
        .route(
            "/sign-in",
            get(session::sign_in_page).post(session::sign_in),
        )
        .route("/sign-out", post(session::sign_out))
        .route("/t/{tenant}/", get(pages::fleet))
        .route("/t/{tenant}/hosts/{host}", get(pages::host))
        .route("/t/{tenant}/rollouts/{app}/{env}", get(pages::rollout))
        .route(
            "/t/{tenant}/rollouts/{app}/{env}/live",
            get(pages::rollout_live),
        )
        .route("/t/{tenant}/history", get(pages::history))
        .route("/t/{tenant}/releases", get(pages::releases))
        .route("/t/{tenant}/logs", get(search::page))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(observe))
        .with_state(ctx)
}

/// Security headers on every answer, and its latency by route. A body (a
/// form: `MAX_BODY_BYTES` at most) is read whole within `BODY_TIMEOUT` first,
/// so a client sending it slowly holds its connection no longer than that.
async fn observe(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "other".into());
    let mut response = match whole_body(req).await {
        Ok(req) => next.run(req).await,
        Err(refused) => refused.into_response(),
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    crate::metrics::METRICS
        .http_latency
        .with_label_values(&[route.as_str(), response.status().as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// A POST's body read whole, within `BODY_TIMEOUT` and `MAX_BODY_BYTES`.
async fn whole_body(req: Request) -> Result<Request, WebError> {
    if req.method() != axum::http::Method::POST {
        return Ok(req);
    }
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
        Ok(Ok(bytes)) => Ok(Request::from_parts(parts, axum::body::Body::from(bytes))),
        Ok(Err(_)) => Err(WebError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a form is at most {} KiB", MAX_BODY_BYTES / 1024),
        )),
        Err(_) => Err(WebError::new(
            StatusCode::REQUEST_TIMEOUT,
            "the form did not arrive in time",
        )),
    }
}

/// 200 while the controller serves; 503 once it is shutting down (a load
/// balancer's probe, like the gRPC health service).
async fn healthz(State(ctx): State<SharedCtx>) -> Response {
    if ctx.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    } else {
        (StatusCode::OK, "ok\n").into_response()
    }
}

async fn metrics(State(ctx): State<SharedCtx>) -> Response {
    match crate::metrics::METRICS.render(&ctx).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            )],
            text,
        )
            .into_response(),
        Err(e) => WebError::from(e).into_response(),
    }
}

async fn not_found() -> WebError {
    WebError::new(StatusCode::NOT_FOUND, "no such page")
}

/// A refusal or failure, shown as a page with its status code.
#[derive(Debug)]
pub struct WebError {
    pub status: StatusCode,
    pub message: String,
}

impl WebError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        WebError {
            status,
            message: message.into(),
        }
    }
}

impl From<ControllerError> for WebError {
    fn from(e: ControllerError) -> Self {
        let status = match &e {
            ControllerError::NotFound(_) => StatusCode::NOT_FOUND,
            ControllerError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            ControllerError::PermissionDenied(_) => StatusCode::FORBIDDEN,
            ControllerError::FailedPrecondition(_) | ControllerError::AlreadyExists(_) => {
                StatusCode::CONFLICT
            }
            ControllerError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ControllerError::Store(_) | ControllerError::Blob(_) | ControllerError::Internal(_) => {
                tracing::error!(error = %e, "dashboard request failed");
                return WebError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the controller failed to answer; see its log",
                );
            }
        };
        WebError::new(status, e.to_string())
    }
}

impl From<crate::store::StoreError> for WebError {
    fn from(e: crate::store::StoreError) -> Self {
        ControllerError::from(e).into()
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        if self.status == StatusCode::UNAUTHORIZED {
            return session::sign_in_response(self.status, &self.message);
        }
        (
            self.status,
            layout::bare(
                self.status.canonical_reason().unwrap_or("error"),
                maud::html! {
                    p.refusal { (self.message) }
                    p { a href="/" { "Back to the fleet" } }
                },
            ),
        )
            .into_response()
    }
}
