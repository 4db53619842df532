//! Socket activation (`activation = "socket"`): the agent binds the app's
//! public port once and holds the listening socket across releases; every
//! instance inherits it as fd 3 (`LISTEN_FDS=1`). Because the kernel keeps
//! the socket open while any holder lives, connections queue in its backlog
//! (never refused) while one instance replaces another.
//!
//! A restarted agent takes the socket back from a running instance with
//! `pidfd_getfd(2)` (Linux ≥ 5.6, same user or CAP_SYS_PTRACE), so it never
//! binds a second socket beside the one the apps accept on.
//!
//! Readiness through a shared socket: old and new accept on the same port, so
//! a probe only counts when the new instance accepted it. [`probe_shared`]
//! connects, finds who accepted the connection (`/proc/net/tcp` gives the
//! server side's inode, the instance's `/proc/<pid>/fd` must hold it), and
//! sends the HTTP probe only on a connection the new instance holds.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use crate::supervisor::ProcRecord;

use super::ProxyError;

/// Connections a probe round opens before it says the new instance accepts none.
const PROBE_TRIES: usize = 24;
/// How long to wait for a probe connection to be accepted by anyone.
const ACCEPT_WAIT: Duration = Duration::from_secs(1);

/// Held sockets by app, with the address each is bound to.
type Held = BTreeMap<String, (SocketAddr, Arc<TcpListener>)>;

static HELD: LazyLock<Mutex<Held>> = LazyLock::new(|| Mutex::new(BTreeMap::new()));

/// The listening socket of `app` on `addr`: held already, taken back from a
/// running instance (`running`), or bound now.
pub fn held(
    app: &str,
    addr: SocketAddr,
    running: &[ProcRecord],
) -> Result<Arc<TcpListener>, ProxyError> {
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((a, l)) = held.get(app)
        && *a == addr
    {
        return Ok(l.clone());
    }
    let listener = match running
        .iter()
        .filter(|r| r.listen_fds && r.alive())
        .find_map(|r| take_back(r, addr))
    {
        Some(l) => {
            tracing::info!(app, %addr, "took the listening socket back from the running instance");
            l
        }
        None => TcpListener::bind(addr).map_err(|source| ProxyError::Bind { addr, source })?,
    };
    let listener = Arc::new(listener);
    held.insert(app.to_string(), (addr, listener.clone()));
    Ok(listener)
}

/// Forgets the sockets of apps not in `apps` (the kernel closes each once its
/// last instance is gone too).
pub fn retain(apps: &[String]) {
    HELD.lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|app, _| apps.contains(app));
}

/// fd 3 of a running instance, if it is a listening TCP socket on `addr`.
fn take_back(rec: &ProcRecord, addr: SocketAddr) -> Option<TcpListener> {
    let pid = rustix::process::Pid::from_raw(rec.pid)?;
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
        .map_err(|e| tracing::warn!(pid = rec.pid, error = %e, "pidfd_open"))
        .ok()?;
    let fd: OwnedFd = rustix::process::pidfd_getfd(
        &pidfd,
        3,
        rustix::process::PidfdGetfdFlags::empty(),
    )
    .map_err(
        |e| tracing::warn!(pid = rec.pid, error = %e, "pidfd_getfd: cannot take the socket back"),
    )
    .ok()?;
    let listening = rustix::net::sockopt::socket_acceptconn(fd.as_fd()).unwrap_or(false);
    let listener = TcpListener::from(fd);
    (listening && listener.local_addr().ok()? == addr).then_some(listener)
}

/// Why a probe through the shared socket did not pass.
#[derive(Debug, thiserror::Error)]
pub enum SharedProbeError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "none of {tries} connections to {addr} was accepted by the new instance (pid {group}): is it accepting on the inherited socket (fd 3, LISTEN_FDS)?"
    )]
    NotAccepted {
        addr: SocketAddr,
        tries: usize,
        group: i32,
    },
    #[error("GET {path} through {addr} (accepted by pid {group}): {source}")]
    Http {
        path: String,
        addr: SocketAddr,
        group: i32,
        #[source]
        source: crate::health::HttpError,
    },
    #[error("GET {path} through {addr} (accepted by pid {group}) answered {status}")]
    Status {
        path: String,
        addr: SocketAddr,
        group: i32,
        status: u16,
    },
}

/// Passes when a connection to `addr` accepted by a process of `group` (the
/// new instance's process group) answers `path` with a 2xx (or, without a
/// path, when it accepted one at all).
pub async fn probe_shared(
    addr: SocketAddr,
    path: Option<&str>,
    group: i32,
) -> Result<(), SharedProbeError> {
    for _ in 0..PROBE_TRIES {
        let stream = tokio::time::timeout(ACCEPT_WAIT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| SharedProbeError::Connect {
                addr,
                source: std::io::ErrorKind::TimedOut.into(),
            })?
            .map_err(|source| SharedProbeError::Connect { addr, source })?;
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let server_port = addr.port();
        let ours = tokio::task::spawn_blocking(move || accepted_by(server_port, local, group))
            .await
            .unwrap_or(None);
        match ours {
            Some(true) => {}
            // Accepted by the old instance, or not yet accepted: another try.
            _ => continue,
        }
        let Some(path) = path else {
            return Ok(());
        };
        return match crate::health::http_on(stream, addr, path).await {
            Ok(s) if (200..300).contains(&s) => Ok(()),
            Ok(status) => Err(SharedProbeError::Status {
                path: path.into(),
                addr,
                group,
                status,
            }),
            Err(source) => Err(SharedProbeError::Http {
                path: path.into(),
                addr,
                group,
                source,
            }),
        };
    }
    Err(SharedProbeError::NotAccepted {
        addr,
        tries: PROBE_TRIES,
        group,
    })
}

/// Whether the server side of the connection from `client` to `server_port`
/// was accepted by a process of `group`: Some(answer) once anyone accepted
/// it, None if nobody did within [`ACCEPT_WAIT`].
fn accepted_by(server_port: u16, client: SocketAddr, group: i32) -> Option<bool> {
    let deadline = std::time::Instant::now() + ACCEPT_WAIT;
    loop {
        // An accepted socket has an inode; one still in the backlog shows 0.
        if let Some(inode) = server_inode(server_port, client).filter(|i| *i != 0) {
            let link = format!("socket:[{inode}]");
            let held = || group_pids(group).iter().any(|pid| holds(*pid, &link));
            if held() {
                return Some(true);
            }
            // Accepted this instant: its fd may not be in the table yet.
            std::thread::sleep(Duration::from_millis(5));
            return Some(held());
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The inode of the server side of the TCP connection `client` → `server_port`.
fn server_inode(server_port: u16, client: SocketAddr) -> Option<u64> {
    let table = if client.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let text = std::fs::read_to_string(table).ok()?;
    let port_of = |field: &str| {
        field
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 9
            && port_of(f[1]) == Some(server_port)
            && port_of(f[2]) == Some(client.port())
            && f[3] == "01")
            .then(|| f[9].parse().ok())
            .flatten()
    })
}

/// Live processes of process group `group`.
fn group_pids(group: i32) -> Vec<i32> {
    if crate::supervisor::group_is_empty(group) {
        return Vec::new();
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let rest = &stat[stat.rfind(')')? + 2..];
                    rest.split(' ').nth(2)?.parse::<i32>().ok()
                })
                == Some(group)
        })
        .collect()
}

/// Whether `pid` has an fd linking to `link` (`socket:[inode]`).
fn holds(pid: i32, link: &str) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == std::ffi::OsStr::new(link))
    })
}
