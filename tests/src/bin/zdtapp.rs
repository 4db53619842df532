//! A test app for socket activation: serves HTTP on the listening socket it
//! inherits (systemd's `LISTEN_FDS` protocol: fd 3, `LISTEN_PID` = its pid),
//! or binds 127.0.0.1:$PORT without one. On SIGTERM it stops accepting,
//! finishes the requests it accepted, and exits: the drain a socket-sharing
//! app owes its successor.
//!
//! Reads `zdt.conf` from its working directory (the release dir):
//!   version=1.0.0       what `/` answers ("zdt-app 1.0.0")
//!   mode=ok             ok | never-accept (holds the socket, never accepts)
//!                       | ignore-term (SIGTERM does nothing)
//! Routes: `/health` 200, anything else "zdt-app <version>". Each response
//! closes its connection.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::task::TaskTracker;

struct Conf {
    version: String,
    mode: String,
}

fn load_conf() -> Conf {
    let mut conf = Conf {
        version: "unknown".into(),
        mode: "ok".into(),
    };
    for line in std::fs::read_to_string("zdt.conf")
        .unwrap_or_default()
        .lines()
    {
        match line.split_once('=') {
            Some(("version", v)) => conf.version = v.trim().into(),
            Some(("mode", v)) => conf.mode = v.trim().into(),
            _ => {}
        }
    }
    conf
}

/// The socket systemd's protocol hands over, when it is meant for this process.
fn inherited() -> Option<TcpListener> {
    let fds: u32 = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.parse().ok()?;
    if fds < 1 || pid != std::process::id() {
        return None;
    }
    // SAFETY: by the LISTEN_FDS protocol fd 3 is an open socket handed to
    // this process (LISTEN_PID checked above), owned by nothing else here.
    #[expect(unsafe_code, reason = "taking ownership of fd 3 is the protocol")]
    let l = unsafe { <TcpListener as std::os::fd::FromRawFd>::from_raw_fd(3) };
    Some(l)
}

async fn serve(mut s: tokio::net::TcpStream, conf: Arc<Conf>) {
    let mut buf = vec![0u8; 8192];
    let mut got = 0;
    // Read the request head (bounded), then answer and close.
    while got < buf.len() {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf[got..])).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(n)) => got += n,
        }
        if buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf[..got]);
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    let body = if path == "/health" {
        "ok\n".to_string()
    } else {
        format!("zdt-app {}\n", conf.version)
    };
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes()).await;
    let _ = s.shutdown().await;
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let conf = Arc::new(load_conf());
    let std_listener = match inherited() {
        Some(l) => l,
        None => {
            let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
            match TcpListener::bind(format!("127.0.0.1:{port}")) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("zdt-app: listen on 127.0.0.1:{port}: {e}");
                    std::process::exit(1);
                }
            }
        }
    };
    eprintln!(
        "zdt-app {} ({}) on {:?}",
        conf.version,
        conf.mode,
        std_listener.local_addr()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    if conf.mode == "never-accept" {
        // Holds the socket and answers nothing; stops when told to.
        term.recv().await;
        return;
    }
    std_listener.set_nonblocking(true).expect("nonblocking");
    let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
    let tracker = TaskTracker::new();
    loop {
        tokio::select! {
            _ = term.recv() => {
                if conf.mode == "ignore-term" {
                    eprintln!("zdt-app: SIGTERM ignored");
                    continue;
                }
                break;
            }
            a = listener.accept() => if let Ok((s, _)) = a {
                tracker.spawn(serve(s, conf.clone()));
            },
        }
    }
    // Drain: accept nothing more (the socket stays open in the other
    // holders), finish what was accepted.
    drop(listener);
    tracker.close();
    tracker.wait().await;
    eprintln!("zdt-app {}: drained", conf.version);
}
