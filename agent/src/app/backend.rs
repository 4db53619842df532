//! What the deploy machine needs from the outside world, as two traits: a
//! `Fetch` that brings a blob into the app's cache, and `Processes` that starts,
//! stops, adopts and checks the app's processes through its service backend.
//! The agent runs with `ControllerFetch` and `HostProcesses`; unit tests drive
//! every transition with fakes.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use artifact::Digest;
use artifact::spec::{ProcessSpec, ReleaseSpec};
use proto::v1::agents_client::AgentsClient;
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::config::{AppConfig, Backend};
use crate::follow::Feed;
use crate::health::{self, Probe, Verdict};
use crate::paths::AppPaths;
use crate::supervisor::{self, ProcRecord};

use super::DeployError;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Env values handed to processes and hooks (kept on this host only).
pub type Env = BTreeMap<String, String>;

/// Brings a release blob into `cache`, verified; returns its path. Tells
/// `feed` as the file grows, so the unpack can follow the download (a fetcher
/// that never does is followed from its result).
pub trait Fetch: Send + Sync {
    fn fetch<'a>(
        &'a self,
        cache: &'a Path,
        blob: &'a Digest,
        size: u64,
        feed: &'a Feed,
    ) -> BoxFuture<'a, Result<PathBuf, DeployError>>;

    /// Brings the object pack of `want` (objects of release `release`, in
    /// this order) into `cache`, telling `feed` as it grows; its path.
    fn fetch_objects<'a>(
        &'a self,
        _cache: &'a Path,
        _release: &'a str,
        _want: &'a [(Digest, u64)],
        _feed: &'a Feed,
    ) -> BoxFuture<'a, Result<PathBuf, DeployError>> {
        Box::pin(async {
            Err(DeployError::Transient(
                "no controller to fetch objects from".into(),
            ))
        })
    }

    /// The bucket's copy of `blob` proved wrong: fetch it through the
    /// controller from now on.
    fn distrust_bucket(&self, _blob: &Digest) {}
}

/// Fetches from the controller over the session's channel.
pub struct ControllerFetch {
    pub channel: watch::Receiver<Option<Channel>>,
    /// Answered fetches of one digest that failed in a row: after
    /// [`FETCH_ATTEMPTS`] the release is failed, not postponed again.
    failures: std::sync::Mutex<(Option<Digest>, u32)>,
    /// Blobs whose bucket copy did not verify: fetched through the
    /// controller from then on (bounded: one per release fetched).
    not_direct: std::sync::Mutex<std::collections::HashSet<Digest>>,
}

/// Fetches of the same blob the controller answers with an error before the
/// release is reported failed (an unreachable controller never counts).
pub const FETCH_ATTEMPTS: u32 = 5;

impl ControllerFetch {
    pub fn new(channel: watch::Receiver<Option<Channel>>) -> Self {
        ControllerFetch {
            channel,
            failures: std::sync::Mutex::new((None, 0)),
            not_direct: std::sync::Mutex::default(),
        }
    }

    /// Counts one more answered failure for `blob`; the count so far.
    fn failed_again(&self, blob: &Digest) -> u32 {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if f.0.as_ref() != Some(blob) {
            *f = (Some(blob.clone()), 0);
        }
        f.1 += 1;
        f.1
    }

    fn succeeded(&self) {
        *self.failures.lock().unwrap_or_else(|e| e.into_inner()) = (None, 0);
    }

    /// A client on the session's channel; none while disconnected.
    fn client(&self) -> Result<AgentsClient<Channel>, DeployError> {
        let Some(channel) = self.channel.borrow().clone() else {
            return Err(DeployError::Transient("controller not connected".into()));
        };
        Ok(AgentsClient::new(channel).max_decoding_message_size(proto::MAX_MESSAGE_BYTES))
    }

    /// Maps a failed object fetch like a failed blob fetch: unreachable
    /// postpones; the controller's corrupt copy, lost objects or a refusal
    /// fail the release; any other answered error (a full pack the
    /// controller failed to build, say) is tried again, [`FETCH_ATTEMPTS`]
    /// times in all.
    fn objects_error(&self, release: &str, status: tonic::Status) -> DeployError {
        if unreachable(status.code()) {
            return DeployError::Transient(format!("fetch objects: {}", status.message()));
        }
        let digest = Digest::parse(release).unwrap_or_else(|_| Digest::of(release.as_bytes()));
        let n = self.failed_again(&digest);
        let final_answer = matches!(
            status.code(),
            tonic::Code::DataLoss
                | tonic::Code::PermissionDenied
                | tonic::Code::InvalidArgument
                | tonic::Code::FailedPrecondition
                | tonic::Code::NotFound
        );
        if n < FETCH_ATTEMPTS && !final_answer {
            return DeployError::Transient(format!(
                "fetch objects (attempt {n} of {FETCH_ATTEMPTS}): {}",
                status.message()
            ));
        }
        self.succeeded();
        DeployError::Fetch(crate::fetch::FetchError::GaveUp {
            digest,
            attempts: n,
            message: format!("objects of {release}: {}", status.message()),
        })
    }
}

/// Whether a fetch failing with `code` says nothing about the blob: the
/// controller could not be reached or answer in time.
fn unreachable(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
    )
}

impl Fetch for ControllerFetch {
    fn fetch<'a>(
        &'a self,
        cache: &'a Path,
        blob: &'a Digest,
        size: u64,
        feed: &'a Feed,
    ) -> BoxFuture<'a, Result<PathBuf, DeployError>> {
        Box::pin(async move {
            let mut client = self.client()?;
            let direct = !self
                .not_direct
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(blob);
            let err = match crate::fetch::fetch_blob(&mut client, cache, blob, size, feed, direct)
                .await
            {
                Ok(p) => {
                    self.succeeded();
                    return Ok(p);
                }
                Err(e) => e,
            };
            let status = match &err {
                crate::fetch::FetchError::Rpc { status, .. } => status,
                // A corrupt partial file from an earlier attempt, now removed.
                // The bucket's copy is wrong (the controller checks its own).
                crate::fetch::FetchError::Mismatch {
                    from_bucket: true, ..
                } => {
                    tracing::error!(digest = %blob, "the bucket's copy did not verify; fetching through the controller");
                    self.distrust_bucket(blob);
                    return Err(DeployError::Transient(format!(
                        "{err}: the bucket's copy; fetching through the controller"
                    )));
                }
                crate::fetch::FetchError::Mismatch { resumed: true, .. } => {
                    tracing::warn!(digest = %blob, "resumed download did not verify; fetching from the start");
                    return Err(DeployError::Transient(format!(
                        "{err}; fetching again from the start"
                    )));
                }
                _ => return Err(err.into()),
            };
            if status.code() == tonic::Code::NotFound {
                return Err(err.into());
            }
            if unreachable(status.code()) {
                return Err(DeployError::Transient(format!(
                    "fetch: {}",
                    status.message()
                )));
            }
            let n = self.failed_again(blob);
            // The controller's copy is corrupt (it checks what it streams):
            // nothing to wait for until the release is published again.
            if n >= FETCH_ATTEMPTS || status.code() == tonic::Code::DataLoss {
                self.succeeded();
                return Err(DeployError::Fetch(crate::fetch::FetchError::GaveUp {
                    digest: blob.clone(),
                    attempts: n,
                    message: status.message().to_string(),
                }));
            }
            Err(DeployError::Transient(format!(
                "fetch (attempt {n} of {FETCH_ATTEMPTS}): {}",
                status.message()
            )))
        })
    }

    fn distrust_bucket(&self, blob: &Digest) {
        let mut refused = self.not_direct.lock().unwrap_or_else(|e| e.into_inner());
        if refused.len() >= 64 {
            refused.clear();
        }
        refused.insert(blob.clone());
    }

    fn fetch_objects<'a>(
        &'a self,
        cache: &'a Path,
        release: &'a str,
        want: &'a [(Digest, u64)],
        feed: &'a Feed,
    ) -> BoxFuture<'a, Result<PathBuf, DeployError>> {
        Box::pin(async move {
            let mut client = self.client()?;
            crate::fetch::fetch_objects(&mut client, cache, release, want, feed)
                .await
                .inspect(|_| self.succeeded())
                .map_err(|e| match e {
                    crate::fetch::FetchError::Rpc { status, .. } => {
                        self.objects_error(release, *status)
                    }
                    other => other.into(),
                })
        })
    }
}

/// The app's processes, through its service backend.
pub trait Processes: Send + Sync {
    /// The processes still running from an earlier start (pid files).
    fn adopt(&self) -> Vec<ProcRecord>;
    /// Starts every process of `spec` for `version`; leaves nothing half-started.
    fn start<'a>(
        &'a self,
        spec: &'a ReleaseSpec,
        version: &'a str,
        env: &'a Env,
    ) -> BoxFuture<'a, Result<Vec<ProcRecord>, DeployError>>;
    fn stop<'a>(&'a self, rec: &'a ProcRecord) -> BoxFuture<'a, ()>;
    /// Starts every process of `spec` for `version` beside whatever runs, each
    /// as its own instance (`side` gives the front process its private port or
    /// the app's socket); leaves nothing half-started. Backends that run one
    /// instance per process refuse.
    fn start_beside<'a>(
        &'a self,
        spec: &'a ReleaseSpec,
        version: &'a str,
        env: &'a Env,
        front: &'a str,
        listen: Listen<'a>,
    ) -> BoxFuture<'a, Result<Vec<ProcRecord>, DeployError>> {
        let _ = (spec, version, env, front, listen);
        Box::pin(async {
            Err(DeployError::Process(
                "this service backend cannot start a release beside the running one".into(),
            ))
        })
    }
    /// One round of checks on one process: alive, right release, env names,
    /// its readiness probe.
    fn check<'a>(
        &'a self,
        rec: &'a ProcRecord,
        ps: &'a ProcessSpec,
        release: &'a Path,
        env: &'a Env,
    ) -> BoxFuture<'a, Verdict>;
}

/// What the front process of a side-by-side instance listens on.
#[derive(Debug, Clone, Copy)]
pub enum Listen<'a> {
    /// A private loopback port of its own, as `PORT` (proxy activation).
    PrivatePort,
    /// The app's listening socket, inherited as fd 3 (socket activation).
    Socket(&'a std::net::TcpListener),
}

/// The real backends: the built-in supervisor, systemd units, or operator
/// commands, as the host config says.
pub struct HostProcesses {
    pub app: String,
    pub cfg: AppConfig,
    pub paths: AppPaths,
}

impl HostProcesses {
    fn grace(&self) -> Duration {
        Duration::from_secs(self.cfg.stop_grace_secs)
    }

    /// How long a process may take to stop: an instance sharing the app's
    /// socket drains on its stop signal, so it gets the drain timeout.
    fn grace_for(&self, rec: &ProcRecord) -> Duration {
        if rec.listen_fds {
            Duration::from_secs(self.cfg.drain_timeout_secs)
        } else {
            self.grace()
        }
    }

    /// Values of the host's env files: masked in anything reported.
    fn secrets(&self) -> Vec<String> {
        super::processes::env_secrets(&self.cfg, &self.paths)
    }

    async fn start_one(
        &self,
        name: &str,
        p: &ProcessSpec,
        version: &str,
        env: &Env,
        side: Option<&supervisor::Side<'_>>,
    ) -> Result<ProcRecord, DeployError> {
        let mut env = env.clone();
        if let Some(port) = side.and_then(|s| s.port).or(port_of(&self.cfg, p)) {
            env.insert("PORT".into(), port.to_string());
        }
        let (paths, process, version) = (self.paths.clone(), name.to_string(), version.to_string());
        let run_as = self.cfg.run_as();
        match self.cfg.service {
            Backend::Supervise => match supervisor::start(
                &paths,
                &process,
                &version,
                &p.command,
                p.cwd.as_deref(),
                &env,
                run_as,
                side,
            ) {
                Ok(rec) => Ok(rec),
                // Crashed at once: say how, with what it printed.
                Err(supervisor::SuperviseError::Vanished { status, .. }) => Err(
                    DeployError::Process(self.crash_reason(name, "right after start", &status)),
                ),
                Err(e) => Err(e.into()),
            },
            // The unit holds command, cwd and env files; it points at current/.
            Backend::Systemd => {
                let unit = self.cfg.unit(&self.app, name);
                Ok(
                    blocking(move || crate::systemd::restart(&paths, &process, &unit, &version))
                        .await??,
                )
            }
            Backend::Command => match self.cfg.commands.get(name).cloned() {
                // Operator commands may print what the env files hold: masked.
                Some(cmds) => blocking(move || {
                    crate::command_backend::start(&paths, &process, &cmds, &env, &version, run_as)
                })
                .await?
                .map_err(|e| {
                    DeployError::Process(crate::envfile::redact(
                        &e.to_string(),
                        self.secrets().iter(),
                    ))
                }),
                None => Err(DeployError::Spec(format!(
                    "process {name} has no commands in the host config"
                ))),
            },
        }
    }

    /// Why a process is gone: its exit status when the supervisor reaped it,
    /// and the last lines of its log, env values masked.
    fn exit_reason(&self, rec: &ProcRecord) -> String {
        let status = supervisor::exit_status(&self.paths, rec).unwrap_or_default();
        self.crash_reason(&rec.process, "", &status)
    }

    /// "process web exited (exit status: 3); last output: …", env values masked
    /// and control characters escaped.
    fn crash_reason(&self, process: &str, when: &str, status: &str) -> String {
        let mut what = format!("process {process} exited");
        if !when.is_empty() {
            what = format!("{what} {when}");
        }
        if !status.is_empty() {
            what = format!("{what} ({status})");
        }
        let tail = supervisor::log_tail(&self.paths, process, LOG_TAIL_LINES, &self.secrets());
        let tail: String = tail.escape_debug().collect();
        if tail.is_empty() {
            format!("{what}; logs/{process}.log is empty")
        } else {
            format!("{what}; last output: {tail}")
        }
    }
}

/// Lines of a crashed process's log put in its failure reason.
const LOG_TAIL_LINES: usize = 5;

/// Runs a blocking backend call off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, DeployError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DeployError::Process(format!("backend task failed: {e}")))
}

impl Processes for HostProcesses {
    fn adopt(&self) -> Vec<ProcRecord> {
        supervisor::adopt(&self.paths)
    }

    fn start<'a>(
        &'a self,
        spec: &'a ReleaseSpec,
        version: &'a str,
        env: &'a Env,
    ) -> BoxFuture<'a, Result<Vec<ProcRecord>, DeployError>> {
        Box::pin(async move {
            let mut procs = Vec::new();
            for (name, p) in &spec.processes {
                match self.start_one(name, p, version, env, None).await {
                    Ok(r) => procs.push(r),
                    Err(e) => {
                        // Leave nothing half-started.
                        for r in &procs {
                            self.stop(r).await;
                        }
                        return Err(e);
                    }
                }
            }
            Ok(procs)
        })
    }

    fn start_beside<'a>(
        &'a self,
        spec: &'a ReleaseSpec,
        version: &'a str,
        env: &'a Env,
        front: &'a str,
        listen: Listen<'a>,
    ) -> BoxFuture<'a, Result<Vec<ProcRecord>, DeployError>> {
        Box::pin(async move {
            if self.cfg.service != Backend::Supervise {
                return Err(DeployError::Process(format!(
                    "activation = \"{}\" needs the built-in supervisor",
                    self.cfg.activation.name()
                )));
            }
            let mut procs = Vec::new();
            for (name, p) in &spec.processes {
                let mut side = supervisor::Side {
                    instance: supervisor::instance_id(),
                    ..supervisor::Side::default()
                };
                // Every process that would take the app's port gets a private
                // one, so two instances never fight over a port; only the
                // front one is routed to.
                let shares_app_port = p.port.is_none();
                match listen {
                    Listen::Socket(l) if name == front => side.listener = Some(l),
                    Listen::Socket(_) => {}
                    Listen::PrivatePort if shares_app_port => {
                        side.port = Some(supervisor::free_loopback_port().map_err(|e| {
                            DeployError::Process(format!("pick a private port for {name}: {e}"))
                        })?);
                    }
                    Listen::PrivatePort => {}
                }
                match self.start_one(name, p, version, env, Some(&side)).await {
                    Ok(r) => procs.push(r),
                    Err(e) => {
                        for r in &procs {
                            self.stop(r).await;
                        }
                        return Err(e);
                    }
                }
            }
            Ok(procs)
        })
    }

    fn stop<'a>(&'a self, p: &'a ProcRecord) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let (paths, rec) = (self.paths.clone(), p.clone());
            match self.cfg.service {
                Backend::Supervise => supervisor::stop(&self.paths, p, self.grace_for(p)).await,
                Backend::Systemd => {
                    let unit = self.cfg.unit(&self.app, &p.process);
                    let _ = blocking(move || crate::systemd::stop(&paths, &rec, &unit)).await;
                }
                Backend::Command => {
                    let Some(cmds) = self.cfg.commands.get(&p.process).cloned() else {
                        return;
                    };
                    let env = super::app_env(&self.app, &self.cfg, &self.paths, &p.version)
                        .unwrap_or_default();
                    let run_as = self.cfg.run_as();
                    let _ = blocking(move || {
                        crate::command_backend::stop(&paths, &rec, &cmds, &env, run_as)
                    })
                    .await;
                }
            }
        })
    }

    fn check<'a>(
        &'a self,
        rec: &'a ProcRecord,
        ps: &'a ProcessSpec,
        release: &'a Path,
        env: &'a Env,
    ) -> BoxFuture<'a, Verdict> {
        Box::pin(async move {
            let mut probe = probe_for(&self.cfg, ps, release, env, rec.port);
            if rec.listen_fds {
                // Old and new share the socket: the probe counts only when
                // this instance accepted the connection.
                probe = match probe {
                    Probe::Http { port, path } => Probe::Shared {
                        addr: crate::proxy::loopback_of(self.cfg.public_address, port),
                        path: Some(path),
                        group: rec.pid,
                    },
                    Probe::Tcp { port } => Probe::Shared {
                        addr: crate::proxy::loopback_of(self.cfg.public_address, port),
                        path: None,
                        group: rec.pid,
                    },
                    p => p,
                };
            }
            match health::check_once(rec, release, &ps.required_env, probe).await {
                Verdict::Failed { missing_env, .. } if !rec.alive() => Verdict::Failed {
                    reason: self.exit_reason(rec),
                    missing_env,
                },
                v => v,
            }
        })
    }
}

/// The port a process listens on: its own from the spec, else the app's.
pub fn port_of(cfg: &AppConfig, ps: &ProcessSpec) -> Option<u16> {
    ps.port.or(cfg.port)
}

/// The readiness probe of a process. A port-based probe without a port was
/// refused at deploy; for a release already running it degrades to "up".
fn probe_for<'a>(
    cfg: &AppConfig,
    ps: &'a ProcessSpec,
    dir: &'a Path,
    env: &'a Env,
    private: Option<u16>,
) -> Probe<'a> {
    match (&ps.health, private.or(port_of(cfg, ps))) {
        (h, Some(port)) if h.http.is_some() => Probe::Http {
            port,
            path: h.http.as_deref().unwrap_or("/"),
        },
        (h, Some(port)) if h.tcp => Probe::Tcp { port },
        (h, _) if h.command.is_some() => Probe::Command {
            argv: h.command.as_deref().unwrap_or_default(),
            dir,
            env,
        },
        _ => Probe::Up,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A controller that answers every `FetchBlob` with `code`, on a real
    /// loopback socket. A stand-in: the real controller cannot be made to fail
    /// a read on demand (its own corrupt-blob path is tested end to end).
    struct Failing(tonic::Code);

    #[tonic::async_trait]
    impl proto::v1::agents_server::Agents for Failing {
        type SessionStream =
            tokio_stream::Empty<Result<proto::v1::ControllerMessage, tonic::Status>>;
        type FetchBlobStream = tokio_stream::Empty<Result<proto::v1::BlobChunk, tonic::Status>>;
        type FetchObjectsStream = tokio_stream::Empty<Result<proto::v1::BlobChunk, tonic::Status>>;
        async fn fetch_objects(
            &self,
            _: tonic::Request<proto::v1::FetchObjectsRequest>,
        ) -> Result<tonic::Response<Self::FetchObjectsStream>, tonic::Status> {
            Err(tonic::Status::new(
                self.0,
                "read object: input/output error",
            ))
        }
        async fn fetch_manifest(
            &self,
            _: tonic::Request<proto::v1::FetchManifestRequest>,
        ) -> Result<tonic::Response<proto::v1::FetchManifestResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("fetch_manifest"))
        }
        async fn session(
            &self,
            _: tonic::Request<tonic::Streaming<proto::v1::AgentMessage>>,
        ) -> Result<tonic::Response<Self::SessionStream>, tonic::Status> {
            Err(tonic::Status::unimplemented("session"))
        }
        async fn fetch_blob(
            &self,
            _: tonic::Request<proto::v1::FetchBlobRequest>,
        ) -> Result<tonic::Response<Self::FetchBlobStream>, tonic::Status> {
            Err(tonic::Status::new(self.0, "read blob: input/output error"))
        }
        async fn blob_url(
            &self,
            _: tonic::Request<proto::v1::BlobUrlRequest>,
        ) -> Result<tonic::Response<proto::v1::BlobUrlResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("blob_url"))
        }
        async fn renew(
            &self,
            _: tonic::Request<proto::v1::RenewRequest>,
        ) -> Result<tonic::Response<proto::v1::EnrollResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("renew"))
        }
        async fn send_logs(
            &self,
            _: tonic::Request<tonic::Streaming<proto::v1::LogChunk>>,
        ) -> Result<tonic::Response<proto::v1::SendLogsResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("send_logs"))
        }
    }

    /// The fetcher, its cache, and the channel's sender (kept alive).
    type Fetcher = (
        ControllerFetch,
        tempfile::TempDir,
        watch::Sender<Option<Channel>>,
    );

    async fn fetch_from(code: tonic::Code) -> Fetcher {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(proto::v1::agents_server::AgentsServer::new(Failing(code)))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let (tx, rx) = watch::channel(Some(channel));
        (ControllerFetch::new(rx), tempfile::tempdir().unwrap(), tx)
    }

    #[tokio::test]
    async fn a_blob_the_controller_keeps_failing_to_serve_fails_the_release() {
        let blob = Digest::of(b"release");
        let (fetch, cache, _tx) = fetch_from(tonic::Code::Internal).await;
        for attempt in 1..FETCH_ATTEMPTS {
            let e = fetch
                .fetch(cache.path(), &blob, 7, &crate::follow::pair().0)
                .await
                .unwrap_err();
            assert!(e.is_transient(), "attempt {attempt} postpones: {e}");
        }
        let e = fetch
            .fetch(cache.path(), &blob, 7, &crate::follow::pair().0)
            .await
            .unwrap_err();
        assert!(
            !e.is_transient(),
            "attempt {FETCH_ATTEMPTS} fails the release"
        );
        assert!(
            e.to_string()
                .contains("input/output error (attempt 5, not retried)"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_corrupt_blob_fails_at_once_and_an_unreachable_controller_never_does() {
        let blob = Digest::of(b"release");
        let (fetch, cache, _tx) = fetch_from(tonic::Code::DataLoss).await;
        let e = fetch
            .fetch(cache.path(), &blob, 7, &crate::follow::pair().0)
            .await
            .unwrap_err();
        assert!(!e.is_transient(), "{e}");
        let (fetch, cache, _tx) = fetch_from(tonic::Code::Unavailable).await;
        for _ in 0..FETCH_ATTEMPTS * 2 {
            let e = fetch
                .fetch(cache.path(), &blob, 7, &crate::follow::pair().0)
                .await
                .unwrap_err();
            assert!(e.is_transient(), "{e}");
        }
    }

    /// A real process started by the real supervisor crashes at start.
    #[tokio::test]
    async fn a_crashed_process_is_reported_with_its_exit_status_and_last_output_masked() {
        let dir = tempfile::tempdir().unwrap();
        let cfg: AppConfig = toml::from_str("").unwrap();
        let paths = AppPaths::for_app(dir.path(), "web", &cfg);
        paths.create().unwrap();
        std::fs::create_dir_all(paths.release("1.0.0")).unwrap();
        std::os::unix::fs::symlink("releases/1.0.0", &paths.current).unwrap();
        std::fs::write(
            paths.shared.join(".env"),
            "DATABASE_URL=postgres://u:s3cret-77@db/app\n",
        )
        .unwrap();
        let spec: ReleaseSpec = toml::from_str(
            r#"
            [processes.web]
            command = ["sh", "-c", "echo starting; echo \"cannot connect to $DATABASE_URL\" >&2; exit 3"]
            "#,
        )
        .unwrap();
        let procs = HostProcesses {
            app: "web".into(),
            cfg: cfg.clone(),
            paths: paths.clone(),
        };
        let env = super::super::app_env("web", &cfg, &paths, "1.0.0").unwrap();
        // It may be gone before the supervisor records it (the start fails)
        // or just after (the next check fails): either way, the same account.
        let reason = match procs.start(&spec, "1.0.0", &env).await {
            Err(e) => e.to_string(),
            Ok(started) => {
                let ps = &spec.processes["web"];
                let release = paths.release("1.0.0");
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                loop {
                    match procs.check(&started[0], ps, &release, &env).await {
                        Verdict::Failed { reason, .. }
                            if reason.contains("exit status")
                                || std::time::Instant::now() > deadline =>
                        {
                            break reason;
                        }
                        _ => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            }
        };
        assert!(reason.contains("process web exited"), "{reason}");
        assert!(reason.contains("(exit status: 3)"), "{reason}");
        assert!(reason.contains("cannot connect to ***"), "{reason}");
        assert!(
            reason.contains("starting"),
            "stdout is in the log too: {reason}"
        );
        assert!(!reason.contains("s3cret-77"), "{reason}");
    }
}
