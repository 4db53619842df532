//! Zero-downtime activation's front door: the HTTP proxy the agent runs on an
//! app's public port (`activation = "proxy"`, in `http.rs`), and the listening
//! socket it holds across releases (`activation = "socket"`, in `socket.rs`).
//!
//! Where traffic goes is a file, `run/proxy.route` (the serving instance's
//! version, id and private port), written atomically by whoever moves traffic
//! (the agent's deploy machine, or `slipway-agent rollback` in its own
//! process) and read by the proxy at once when the agent wrote it, within
//! [`ROUTE_POLL`] otherwise. A restarted agent reads it back, so traffic goes
//! where it went before the restart, never to a release not yet proven.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::paths::AppPaths;

mod http;
pub mod socket;

pub use http::{Proxy, ensure, get, retain};

/// How often the proxy looks at its route file for a switch made by another
/// process (`slipway-agent rollback`).
pub const ROUTE_POLL: Duration = Duration::from_millis(100);

/// Where the app's traffic goes: one instance of one release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub version: String,
    pub instance: String,
    /// The instance's private loopback port.
    pub port: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("write route {path}: {source}")]
    Route {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The route file of an app.
pub fn route_file(paths: &AppPaths) -> PathBuf {
    paths.run.join("proxy.route")
}

/// The route on file, if one is (an unreadable file reads as none).
pub fn read_route(path: &Path) -> Option<Route> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() > 4096 {
        return None;
    }
    serde_json::from_slice(&bytes).ok()
}

/// Moves traffic: writes the route (temp + rename), then tells this
/// process's proxy for the app, if it runs one, to read it now.
pub fn set_route(app: &str, paths: &AppPaths, route: &Route) -> Result<(), ProxyError> {
    let path = route_file(paths);
    let bytes = serde_json::to_vec(route).map_err(|e| ProxyError::Route {
        path: path.clone(),
        source: e.into(),
    })?;
    artifact::unpack::write_atomic(&path, &bytes).map_err(|source| ProxyError::Route {
        path: path.clone(),
        source,
    })?;
    if let Some(p) = get(app) {
        p.reload();
    }
    Ok(())
}

/// The address to reach a port bound on `public` from this host: loopback
/// when it listens on every address.
pub fn loopback_of(public: IpAddr, port: u16) -> SocketAddr {
    let ip = match public {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, port)
}
