//! Health is more than a 200: the HTTP readiness check must pass, the process must
//! be up, it must run from the new release, and every required env var NAME must
//! be present in its real environment (`/proc/<pid>/environ`). Values are never
//! read out: only the names before `=` are kept.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::supervisor::{self, ProcRecord};

const MAX_ENVIRON_BYTES: u64 = 4 * 1024 * 1024;
const HTTP_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);

/// Why one HTTP request to the app got no status.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("timed out")]
    TimedOut,
}

/// Why a readiness probe did not pass (yet).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("GET {path} on port {port}: {source}")]
    Http {
        path: String,
        port: u16,
        #[source]
        source: HttpError,
    },
    #[error("GET {path} on port {port} answered {status}")]
    Status {
        path: String,
        port: u16,
        status: u16,
    },
    #[error("TCP connect to port {port} timed out")]
    TcpTimeout { port: u16 },
    #[error("TCP connect to port {port}: {source}")]
    Tcp {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("health command {program} could not start: {source}")]
    CommandStart {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("health command {program:?} {status}")]
    CommandFailed {
        program: String,
        status: std::process::ExitStatus,
    },
    #[error("health command {program:?}: {source}")]
    CommandWait {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("health command {program:?} timed out")]
    CommandTimeout { program: String },
    #[error(transparent)]
    Shared(#[from] crate::proxy::socket::SharedProbeError),
}

/// One HTTP GET to 127.0.0.1:port/path; Ok(status) or a short reason.
pub async fn http_get(port: u16, path: &str) -> Result<u16, HttpError> {
    http_request(hyper::Method::GET, port, path).await
}

/// One HTTP GET on a connection already open to `addr`.
pub async fn http_on(
    stream: tokio::net::TcpStream,
    addr: std::net::SocketAddr,
    path: &str,
) -> Result<u16, HttpError> {
    tokio::time::timeout(
        HTTP_ATTEMPT_TIMEOUT,
        request_on(stream, hyper::Method::GET, &addr.to_string(), path),
    )
    .await
    .map_err(|_| HttpError::TimedOut)?
}

/// One HTTP request with an empty body to 127.0.0.1:port/path.
pub async fn http_request(method: hyper::Method, port: u16, path: &str) -> Result<u16, HttpError> {
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(HttpError::Connect)?;
        request_on(stream, method, &format!("127.0.0.1:{port}"), path).await
    };
    tokio::time::timeout(HTTP_ATTEMPT_TIMEOUT, attempt)
        .await
        .map_err(|_| HttpError::TimedOut)?
}

async fn request_on(
    stream: tokio::net::TcpStream,
    method: hyper::Method,
    host: &str,
    path: &str,
) -> Result<u16, HttpError> {
    {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, host)
            .header(hyper::header::USER_AGENT, "slipway-agent")
            .body(Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        // Drain a bounded amount of the body so the connection ends cleanly.
        let _ = tokio::time::timeout(Duration::from_millis(500), resp.into_body().collect()).await;
        Ok(status)
    }
}

/// Names of the variables in a process's environment.
pub fn env_names(pid: i32) -> std::io::Result<BTreeSet<String>> {
    use std::io::Read;
    let mut buf = Vec::new();
    std::fs::File::open(format!("/proc/{pid}/environ"))?
        .take(MAX_ENVIRON_BYTES)
        .read_to_end(&mut buf)?;
    Ok(buf
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let name = kv.split(|b| *b == b'=').next()?;
            (!name.is_empty()).then(|| String::from_utf8_lossy(name).into_owned())
        })
        .collect())
}

/// Required names absent from the process's environment.
pub fn missing_env(pid: i32, required: &[String]) -> std::io::Result<Vec<String>> {
    Ok(missing_from(&env_names(pid)?, required))
}

fn missing_from(names: &BTreeSet<String>, required: &[String]) -> Vec<String> {
    required
        .iter()
        .filter(|r| !names.contains(*r))
        .cloned()
        .collect()
}

/// The outcome of one round of checks on one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Healthy,
    /// Not ready yet (e.g. HTTP not answering): keep trying until the deadline.
    NotReady(String),
    /// Failed for good: the process died, runs the wrong release, lacks env vars.
    Failed {
        reason: String,
        missing_env: Vec<String>,
    },
}

/// How a process shows it is ready (besides being alive with the right env).
#[derive(Debug, Clone, Copy)]
pub enum Probe<'a> {
    /// None: staying up is the test (workers).
    Up,
    Http {
        port: u16,
        path: &'a str,
    },
    Tcp {
        port: u16,
    },
    Command {
        argv: &'a [String],
        dir: &'a Path,
        env: &'a std::collections::BTreeMap<String, String>,
    },
    /// Through a listening socket shared with the running release: passes
    /// only on a connection process group `group` accepted (and, with a
    /// path, answered with a 2xx).
    Shared {
        addr: std::net::SocketAddr,
        path: Option<&'a str>,
        group: i32,
    },
}

const COMMAND_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs one probe, timed (`metrics`).
async fn probe(p: Probe<'_>) -> Result<(), ProbeError> {
    let kind = match &p {
        Probe::Up => return Ok(()),
        Probe::Shared { .. } => "shared",
        Probe::Http { .. } => "http",
        Probe::Tcp { .. } => "tcp",
        Probe::Command { .. } => "command",
    };
    let started = std::time::Instant::now();
    let result = run_probe(p).await;
    crate::metrics::METRICS.health_check(kind, result.is_ok(), started.elapsed());
    result
}

async fn run_probe(p: Probe<'_>) -> Result<(), ProbeError> {
    match p {
        Probe::Up => Ok(()),
        Probe::Shared { addr, path, group } => {
            Ok(crate::proxy::socket::probe_shared(addr, path, group).await?)
        }
        Probe::Http { port, path } => match http_get(port, path).await {
            Ok(s) if (200..300).contains(&s) => Ok(()),
            Ok(status) => Err(ProbeError::Status {
                path: path.into(),
                port,
                status,
            }),
            Err(source) => Err(ProbeError::Http {
                path: path.into(),
                port,
                source,
            }),
        },
        Probe::Tcp { port } => tokio::time::timeout(
            HTTP_ATTEMPT_TIMEOUT,
            tokio::net::TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        .map_err(|_| ProbeError::TcpTimeout { port })?
        .map(|_| ())
        .map_err(|source| ProbeError::Tcp { port, source }),
        Probe::Command { argv, dir, env } => {
            let program =
                crate::program::resolve(&argv[0], dir, env.get("PATH").map(String::as_str));
            let mut child = tokio::process::Command::new(&program)
                .arg0(&argv[0])
                .args(&argv[1..])
                .current_dir(dir)
                .env_clear()
                .envs(env)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .process_group(0)
                .kill_on_drop(true)
                .spawn()
                .map_err(|source| ProbeError::CommandStart {
                    program: program.display().to_string(),
                    source,
                })?;
            let name = || argv[0].clone();
            match tokio::time::timeout(COMMAND_PROBE_TIMEOUT, child.wait()).await {
                Ok(Ok(s)) if s.success() => Ok(()),
                Ok(Ok(status)) => Err(ProbeError::CommandFailed {
                    program: name(),
                    status,
                }),
                Ok(Err(source)) => Err(ProbeError::CommandWait {
                    program: name(),
                    source,
                }),
                Err(_) => {
                    if let Some(pid) = child.id() {
                        let _ = nix::sys::signal::killpg(
                            nix::unistd::Pid::from_raw(pid as i32),
                            nix::sys::signal::SIGKILL,
                        );
                    }
                    Err(ProbeError::CommandTimeout { program: name() })
                }
            }
        }
    }
}

/// Checks one process once: alive, right release, env names, its probe.
pub async fn check_once(
    rec: &ProcRecord,
    release_dir: &Path,
    required_env: &[String],
    readiness: Probe<'_>,
) -> Verdict {
    if !rec.alive() {
        return Verdict::Failed {
            reason: format!(
                "process {} exited (see logs/{}.log)",
                rec.process, rec.process
            ),
            missing_env: vec![],
        };
    }
    if !supervisor::runs_from(rec.pid, release_dir) {
        let cwd = supervisor::cwd(rec.pid)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        return Verdict::Failed {
            reason: format!(
                "process {} runs from {cwd}, not from {}",
                rec.process,
                release_dir.display()
            ),
            missing_env: vec![],
        };
    }
    match env_names(rec.pid).map(|names| (names.is_empty(), missing_from(&names, required_env))) {
        // Mid-exec (a wrapper becoming the app) the environment reads empty
        // for an instant: not a verdict yet.
        Ok((true, missing)) if !missing.is_empty() => {
            return Verdict::NotReady(format!("process {} has no environment yet", rec.process));
        }
        Ok((_, missing)) if !missing.is_empty() => {
            return Verdict::Failed {
                reason: format!(
                    "process {} lacks required env: {}",
                    rec.process,
                    missing.join(", ")
                ),
                missing_env: missing,
            };
        }
        Ok(_) => {}
        Err(e) => {
            return Verdict::Failed {
                reason: format!("cannot read environment of process {}: {e}", rec.process),
                missing_env: vec![],
            };
        }
    }
    match probe(readiness).await {
        Ok(()) => Verdict::Healthy,
        Err(why) => Verdict::NotReady(why.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_names_not_values_from_a_real_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env_clear()
            .env("DATABASE_URL", "postgres://secret")
            .env("PATH", "/usr/bin:/bin")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        // spawn returns once exec is past its point of no return, which is
        // before the kernel has laid out the new environment: wait for it.
        let mut names = env_names(pid).unwrap();
        for _ in 0..200 {
            if names.contains("PATH") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            names = env_names(pid).unwrap();
        }
        assert!(names.contains("DATABASE_URL"), "{names:?}");
        assert!(names.iter().all(|n| !n.contains("secret")));
        assert_eq!(
            missing_env(pid, &["DATABASE_URL".into(), "REDIS_URL".into()]).unwrap(),
            vec!["REDIS_URL"]
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
