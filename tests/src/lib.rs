//! Test harness: starts the real `slipway-controller`, `slipway-agent` and
//! `slipctl` binaries on 127.0.0.1 with ephemeral ports and temp dirs, builds
//! releases of the sample app, and cleans every process up on drop (including
//! the app processes the agent leaves running by design).

pub mod cutover;
pub mod load;
pub mod systemd_ns;
pub mod tcp_proxy;
pub mod web;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// slipctl's documented exit codes (README, `slipctl --help`, `ctl/src/error.rs`).
pub mod exit {
    pub const FAILED: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const UNREACHABLE: i32 = 3;
    pub const PERMISSION_DENIED: i32 = 4;
    pub const NOT_FOUND: i32 = 5;
    pub const ROLLOUT_FAILED: i32 = 6;
}

/// Path of a workspace binary, next to the test executable's `deps/` dir.
/// The binaries must be built first (`cargo build --workspace`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target dir"); // test executables live in target/<profile>/deps
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace` before the tests (the README's test command does)",
        path.display()
    );
    path
}

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A `/proc/<pid>/status` memory field in KiB (`VmRSS:`, `VmHWM:`), 0 if unknown.
pub fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A port that was free a moment ago, below the kernel's ephemeral range
/// (32768 and up by default): an outgoing connection never takes it, not
/// even while the server that listens on it restarts (a port the kernel
/// handed out once was taken by an agent reconnecting to the restarting
/// controller). Each test process walks its own stretch of 20000–31999.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(97) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (start + n) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}..{}", LOW + SPAN)
}

/// Polls `f` until it returns Some, or panics naming `what` after `timeout`.
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One plain HTTP GET: (status, body), or None if nothing answered.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

fn print_log_on_panic(name: &str, path: &Path) {
    if std::thread::panicking()
        && let Ok(log) = std::fs::read_to_string(path)
    {
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        eprintln!("----- {name} log ({}) -----", path.display());
        for l in tail.iter().rev() {
            eprintln!("{l}");
        }
    }
}

/// The URL of a new, empty database on the `SLIPWAY_TEST_POSTGRES` server
/// (`scripts/with-postgres` starts one), made with `psql`; None when no
/// server is named. A test that needs one says skipped on None, unless
/// `SLIPWAY_REQUIRE_POSTGRES=1` (CI) makes that a failure.
pub fn fresh_postgres_database() -> Option<String> {
    let Ok(server) = std::env::var("SLIPWAY_TEST_POSTGRES") else {
        assert!(
            std::env::var("SLIPWAY_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "SLIPWAY_REQUIRE_POSTGRES=1 but SLIPWAY_TEST_POSTGRES is not set"
        );
        eprintln!("skipped: no PostgreSQL (run under scripts/with-postgres)");
        return None;
    };
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!(
        "slipway_e2e_{}_{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let out = Command::new("psql")
        .args([&server, "-v", "ON_ERROR_STOP=1", "-qc"])
        .arg(format!("CREATE DATABASE {name}"))
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "create database {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (base, _) = server
        .rsplit_once('/')
        .expect("a postgres:// URL with a database");
    Some(format!("{base}/{name}"))
}

/// Runs `sql` on `database` with psql; its output, trimmed.
pub fn psql(database: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([database, "-AtXqc", sql])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Another controller of the store `first` uses, started under `dir` with
/// `flags` and `env`, given what an operator copies to a new replica: the
/// first one's `pki/` (CA and directive-signing key), and here its admin
/// token too.
pub fn start_replica(
    first: &Controller,
    dir: &Path,
    flags: &[&str],
    env: &[(&str, &str)],
) -> Controller {
    let data_dir = dir.join("controller");
    std::fs::create_dir_all(data_dir.join("pki")).expect("replica pki dir");
    for f in [
        "pki/ca.pem",
        "pki/ca.key",
        "pki/directive.key",
        "admin.token",
    ] {
        std::fs::copy(first.data_dir.join(f), data_dir.join(f)).expect("copy the keys");
    }
    Controller::start_with_env(dir, flags, env)
}

/// An S3-compatible server for a test: moto in server mode (`moto[server]`
/// from PyPI, found on PATH or in /opt/slipway-moto), on a free loopback
/// port, with `bucket` created; stopped when dropped. None (after saying so)
/// without moto, unless `SLIPWAY_REQUIRE_S3=1` (CI) makes that a failure.
pub struct S3Server {
    child: Child,
    pub endpoint: String,
}

impl S3Server {
    pub fn start(bucket: &str) -> Option<Self> {
        let found = ["/opt/slipway-moto/bin/moto_server"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .or_else(|| {
                std::env::var_os("PATH").and_then(|paths| {
                    std::env::split_paths(&paths)
                        .map(|d| d.join("moto_server"))
                        .find(|p| p.is_file())
                })
            });
        let Some(moto) = found else {
            assert!(
                std::env::var("SLIPWAY_REQUIRE_S3").as_deref() != Ok("1"),
                "SLIPWAY_REQUIRE_S3=1 but moto_server is not installed"
            );
            eprintln!(
                "skipped: no moto_server (python3 -m venv /opt/slipway-moto && /opt/slipway-moto/bin/pip install 'moto[server]')"
            );
            return None;
        };
        let port = free_port();
        let child = Command::new(moto)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let endpoint = format!("http://127.0.0.1:{port}");
        eventually(Duration::from_secs(30), "moto_server to listen", || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        let server = S3Server { child, endpoint };
        server.curl(&["-X", "PUT", &format!("{}/{bucket}", server.endpoint)]);
        Some(server)
    }

    /// The credentials and region a controller needs for it.
    pub fn env() -> [(&'static str, &'static str); 3] {
        [
            ("AWS_ACCESS_KEY_ID", "slipway-test"),
            ("AWS_SECRET_ACCESS_KEY", "slipway-test"),
            ("AWS_REGION", "us-east-1"),
        ]
    }

    /// `curl -sf ARGS`, signed with the test credentials (SigV4, as S3
    /// wants): its output.
    pub fn curl(&self, args: &[&str]) -> String {
        let out = Command::new("curl")
            .args(["-sf", "--aws-sigv4", "aws:amz:us-east-1:s3"])
            .args(["--user", "slipway-test:slipway-test"])
            .args(args)
            .output()
            .expect("curl");
        assert!(out.status.success(), "curl {args:?} failed");
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// PUTs `body` (curl's `--data-binary`: text, or `@FILE`) at `url`, as
    /// bytes (no form encoding, no `Expect: 100-continue` wait).
    pub fn put(&self, url: &str, body: &str) {
        self.curl(&[
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            "-H",
            "Expect:",
            "--data-binary",
            body,
            url,
        ]);
    }

    /// Stops the server (the bucket becomes unreachable).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

pub struct Controller {
    child: Option<Child>,
    pub port: u16,
    pub url: String,
    /// The HTTPS listener (`/healthz`, `/metrics`, the dashboard).
    pub http_port: u16,
    pub data_dir: PathBuf,
    /// The bootstrap admin token the controller wrote at its first start.
    pub admin_token: String,
    log: PathBuf,
    /// Extra flags for every start.
    pub extra_args: Vec<String>,
    /// Extra environment for every start.
    pub env: Vec<(String, String)>,
}

impl Controller {
    pub fn start(dir: &Path) -> Self {
        Self::start_with(dir, &[])
    }

    /// A controller started with extra flags. Under
    /// `SLIPWAY_E2E_STORE=postgres` its store is a new database on the
    /// `SLIPWAY_TEST_POSTGRES` server (unless the flags name one).
    pub fn start_with(dir: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(dir, extra, &[])
    }

    /// A controller started with extra flags and environment variables.
    pub fn start_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut extra_args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if std::env::var("SLIPWAY_E2E_STORE").as_deref() == Ok("postgres")
            && !extra.contains(&"--database")
        {
            let url = fresh_postgres_database()
                .expect("SLIPWAY_E2E_STORE=postgres needs SLIPWAY_TEST_POSTGRES");
            extra_args.extend(["--database".to_string(), url]);
        }
        let port = free_port();
        let mut c = Controller {
            child: None,
            port,
            url: format!("https://127.0.0.1:{port}"),
            http_port: free_port(),
            data_dir: dir.join("controller"),
            admin_token: String::new(),
            log: dir.join("controller.log"),
            extra_args,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        c.spawn();
        let token_file = c.data_dir.join("admin.token");
        c.admin_token = eventually(Duration::from_secs(10), "admin token", || {
            std::fs::read_to_string(&token_file).ok()
        })
        .trim()
        .to_string();
        c
    }

    /// The controller's CA certificate (what slipctl and tests trust).
    pub fn ca_cert(&self) -> PathBuf {
        match self.extra_args.iter().position(|a| a == "--ca-cert") {
            Some(i) => PathBuf::from(&self.extra_args[i + 1]),
            None => self.data_dir.join("pki/ca.pem"),
        }
    }

    /// An API token with these roles (made with the admin token).
    pub fn token(&self, name: &str, roles: &[&str]) -> String {
        let mut args = vec!["tokens", "create", name];
        for r in roles {
            args.push("--role");
            args.push(r);
        }
        self.ctl(&args).ok().stdout.trim().to_string()
    }

    /// A one-time join token for `host` in `env`.
    pub fn join_token(&self, host: &str, env: &str) -> String {
        self.ctl(&["hosts", "add", host, "--env", env])
            .ok()
            .stdout
            .trim()
            .to_string()
    }

    /// `slipctl deploy web VERSION --env ENV --wait` (60 s), with the admin token.
    pub fn deploy_wait(&self, version: &str, env: &str) -> CtlOutput {
        self.ctl(&[
            "deploy",
            "web",
            version,
            "--env",
            env,
            "--wait",
            "--timeout",
            "60",
        ])
    }

    /// A TLS gRPC channel to the controller (no client certificate).
    pub async fn channel(&self) -> tonic::transport::Channel {
        let pem = std::fs::read_to_string(self.ca_cert()).expect("ca.pem");
        let cfg = trust::tls::client_config(trust::tls::ServerTrust::Roots(pem), None).unwrap();
        trust::tls::connect(&self.url, Some(std::sync::Arc::new(cfg)), false)
            .await
            .expect("connect")
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let child = Command::new(bin("slipway-controller"))
            .args([
                "--listen",
                &format!("127.0.0.1:{}", self.port),
                "--heartbeat-secs",
                "2",
                "--http-listen",
                &format!("127.0.0.1:{}", self.http_port),
            ])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra_args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("SLIPWAY_LOG", "info")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start controller");
        self.child = Some(child);
        let port = self.port;
        eventually(Duration::from_secs(20), "controller to listen", || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
    }

    /// SIGKILL: no graceful shutdown, like a crash or an OOM kill.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Runs slipctl against this controller with the admin token.
    pub fn ctl(&self, args: &[&str]) -> CtlOutput {
        self.ctl_as(&self.admin_token, args)
    }

    /// Runs slipctl against this controller with `token`.
    pub fn ctl_as(&self, token: &str, args: &[&str]) -> CtlOutput {
        Command::new(bin("slipctl"))
            .args(args)
            .env("SLIPWAY_CONTROLLER", &self.url)
            .env("SLIPWAY_CA_CERT", self.ca_cert())
            .env("SLIPWAY_TOKEN", token)
            .stdin(Stdio::null())
            .output()
            .expect("run slipctl")
            .into()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
        print_log_on_panic("controller", &self.log);
    }
}

pub struct CtlOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CtlOutput {
    /// Panics with both streams unless slipctl exited 0.
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "slipctl failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("bad json ({e}): {}", self.stdout))
    }
}

impl From<Output> for CtlOutput {
    fn from(out: Output) -> Self {
        CtlOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// slipctl with no token or CA (for usage and reachability errors).
pub fn slipctl(url: &str, args: &[&str]) -> CtlOutput {
    Command::new(bin("slipctl"))
        .args(args)
        .env("SLIPWAY_CONTROLLER", url)
        .env_remove("SLIPWAY_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("run slipctl")
        .into()
}

pub struct Agent {
    child: Option<Child>,
    /// Command the agent runs under (e.g. `nsenter … --` into a namespaced
    /// systemd); its app pids are then not this namespace's and are not touched.
    pub prefix: Vec<String>,
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub app_port: u16,
    pub host: String,
    log: PathBuf,
}

impl Agent {
    /// An agent for `host` in `env` running app `web` on a fresh port, with
    /// `shared/.env` holding `env_lines`.
    pub fn start(
        dir: &Path,
        controller: &Controller,
        host: &str,
        env: &str,
        env_lines: &str,
    ) -> Self {
        Self::start_with(dir, controller, host, env, env_lines, true)
    }

    /// Like `start`; `with_port: false` leaves `port` out of the app's config.
    pub fn start_with(
        dir: &Path,
        controller: &Controller,
        host: &str,
        env: &str,
        env_lines: &str,
        with_port: bool,
    ) -> Self {
        let mut a = Self::configured(dir, controller, host, env, env_lines, with_port);
        a.spawn();
        a.wait_connected(controller);
        a
    }

    /// Returns once the controller sees this agent connected: a deploy made
    /// before would find no host to roll out to.
    pub fn wait_connected(&self, controller: &Controller) {
        eventually(
            Duration::from_secs(30),
            &format!("{} to connect", self.host),
            || status_row(controller, &self.host).filter(|r| r["connected"] == true),
        );
    }

    /// The agent's files, without starting it.
    pub fn configured(
        dir: &Path,
        controller: &Controller,
        host: &str,
        env: &str,
        env_lines: &str,
        with_port: bool,
    ) -> Self {
        let state_dir = dir.join(format!("agent-{host}"));
        let shared = state_dir.join("apps/web/shared");
        std::fs::create_dir_all(&shared).expect("shared dir");
        std::fs::write(shared.join(".env"), env_lines).expect("write .env");
        let app_port = free_port();
        let config = dir.join(format!("agent-{host}.toml"));
        let join = dir.join(format!("agent-{host}.join"));
        if !state_dir.join("identity/identity.json").exists() {
            std::fs::write(&join, controller.join_token(host, env)).expect("write join token");
        }
        std::fs::write(
            &config,
            format!(
                "controller = \"{}\"\nhost = \"{host}\"\nenvironment = \"{env}\"\nstate_dir = \"{}\"\njoin_token_file = \"{}\"\n\n[apps.web]\n{}stop_grace_secs = 3\n",
                controller.url,
                state_dir.display(),
                join.display(),
                if with_port { format!("port = {app_port}\n") } else { String::new() },
            ),
        )
        .expect("write agent config");
        Agent {
            child: None,
            prefix: Vec::new(),
            config,
            state_dir,
            app_port,
            host: host.to_string(),
            log: dir.join(format!("agent-{host}.log")),
        }
    }

    /// An agent to run with a config written elsewhere (by `slipway-agent
    /// join`, say), not started.
    pub fn with_config(
        dir: &Path,
        host: &str,
        config: &Path,
        state_dir: &Path,
        app_port: u16,
    ) -> Self {
        Agent {
            child: None,
            prefix: Vec::new(),
            config: config.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            app_port,
            host: host.to_string(),
            log: dir.join(format!("agent-{host}.log")),
        }
    }

    /// Appends lines to the agent's config (to `[apps.web]`, or new tables).
    pub fn append_config(&self, text: &str) {
        let mut cfg = std::fs::read_to_string(&self.config).expect("agent config");
        cfg.push_str(text);
        std::fs::write(&self.config, cfg).expect("write agent config");
    }

    pub fn spawn(&mut self) {
        self.spawn_env(&[]);
    }

    /// Starts the agent with extra environment variables (e.g. a kill point:
    /// `SLIPWAY_FAILPOINT`).
    pub fn spawn_env(&mut self, vars: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let mut cmd = match self.prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin("slipway-agent"));
                c
            }
            None => Command::new(bin("slipway-agent")),
        };
        let child = cmd
            .arg("--config")
            .arg(&self.config)
            .env("SLIPWAY_LOG", "info")
            .envs(vars.iter().copied())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start agent");
        self.child = Some(child);
    }

    /// Waits until the agent process has ended by itself (a kill point);
    /// how it ended.
    pub fn wait_exit(&mut self, timeout: Duration, what: &str) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("agent running");
        let status = eventually(timeout, what, || child.try_wait().ok().flatten());
        self.child = None;
        status
    }

    /// SIGKILL the agent only; the app it supervises keeps running.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Pid of the agent process this harness started.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Runs a local `slipway-agent` subcommand against this agent's config.
    pub fn local(&self, args: &[&str]) -> CtlOutput {
        Command::new(bin("slipway-agent"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env("SLIPWAY_LOG", "warn")
            .env("USER", "ops-on-host")
            .output()
            .expect("run slipway-agent")
            .into()
    }

    /// A gRPC channel to `c` that presents this agent's certificate (mTLS).
    pub async fn channel(&self, c: &Controller) -> tonic::transport::Channel {
        let dir = self.state_dir.join("identity");
        let read = |n: &str| std::fs::read_to_string(dir.join(n)).expect("identity file");
        let id = trust::tls::ClientIdentity {
            cert_pem: read("agent.pem"),
            key_pem: read("agent.key"),
        };
        let cfg =
            trust::tls::client_config(trust::tls::ServerTrust::Roots(read("ca.pem")), Some(&id))
                .unwrap();
        trust::tls::connect(&c.url, Some(std::sync::Arc::new(cfg)), false)
            .await
            .expect("connect")
    }

    /// The agent's own log (stderr).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn app_dir(&self) -> PathBuf {
        self.state_dir.join("apps/web")
    }

    pub fn deploy_log(&self) -> String {
        std::fs::read_to_string(self.app_dir().join("deploy.log")).unwrap_or_default()
    }

    pub fn status_json(&self) -> serde_json::Value {
        let text =
            std::fs::read_to_string(self.app_dir().join("status.json")).expect("status.json");
        serde_json::from_str(&text).expect("status.json parses")
    }

    /// Pid of the running app process, from the agent's pid file.
    pub fn app_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.app_dir().join("run/web.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["pid"].as_i64().map(|p| p as i32)
    }

    /// What the app answers on `/` (e.g. "sample-app 1.0.0").
    pub fn app_says(&self) -> Option<String> {
        http_get(self.app_port, "/").map(|(_, body)| body.trim().to_string())
    }

    /// Waits until the app answers `/` with `sample-app <version>`.
    pub fn wait_serving(&self, version: &str) {
        let want = format!("sample-app {version}");
        eventually(
            Duration::from_secs(30),
            &format!("{} to serve {want}", self.host),
            || (self.app_says().as_deref() == Some(want.as_str())).then_some(()),
        );
    }

    fn kill_apps(&self) {
        if !self.prefix.is_empty() {
            return; // pids of another pid namespace: its owner tears it down
        }
        let Ok(dir) = std::fs::read_dir(self.app_dir().join("run")) else {
            return;
        };
        for entry in dir.flatten() {
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            // Only the process the record names: a pid the kernel gave to
            // another process since (pid_max is small, builds churn through
            // pids) must not be killed, nor its group.
            let Some(pid) = v["pid"].as_i64() else {
                continue;
            };
            let started = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let rest = stat.get(stat.rfind(')')? + 2..)?.to_string();
                    rest.split(' ').nth(19)?.parse::<u64>().ok()
                });
            if started.is_some() && started == v["start_time"].as_u64() {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::SIGKILL,
                );
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        self.kill_apps();
        print_log_on_panic(&format!("agent {}", self.host), &self.log);
    }
}

/// Options of a sample-app release.
pub struct ReleaseOpts<'a> {
    pub version: &'a str,
    pub healthy: bool,
    pub required_env: &'a [&'a str],
    /// Shell command of the prepare hook; empty: no hook.
    pub prepare: &'a str,
    /// Start the app through `sh -c` without exec: a wrapper whose child holds the port.
    pub wrapper: bool,
}

impl<'a> ReleaseOpts<'a> {
    pub fn new(version: &'a str) -> Self {
        Self {
            version,
            healthy: true,
            required_env: &["DATABASE_URL"],
            prepare: "echo migrated > .migrated",
            wrapper: false,
        }
    }
}

/// Writes a release dir of the sample app under `dir/release-<version>`.
pub fn sample_release(dir: &Path, o: &ReleaseOpts) -> PathBuf {
    let rel = dir.join(format!("release-{}", o.version));
    std::fs::create_dir_all(rel.join("bin")).expect("release dir");
    std::fs::copy(
        bin("slipway-sample-app"),
        rel.join("bin/slipway-sample-app"),
    )
    .expect("copy sample app");
    std::fs::write(
        rel.join("sample.conf"),
        format!("version={}\nhealthy={}\n", o.version, o.healthy),
    )
    .expect("conf");
    let required: Vec<String> = o.required_env.iter().map(|n| format!("{n:?}")).collect();
    let command = if o.wrapper {
        r#"["sh", "-c", "bin/slipway-sample-app; echo wrapper done"]"#
    } else {
        r#"["bin/slipway-sample-app"]"#
    };
    let hook = if o.prepare.is_empty() {
        String::new()
    } else {
        format!(
            "\n[hooks.prepare]\ncommand = [\"sh\", \"-c\", {:?}]\ntimeout_secs = 20\n",
            o.prepare
        )
    };
    std::fs::write(
        rel.join("slipway.toml"),
        format!(
            "[processes.web]\ncommand = {command}\nrequired_env = [{}]\nhealth = {{ http = \"/health\", timeout_secs = 5, min_healthy_secs = 1 }}\n{hook}\n[shared]\nfiles = [\".env\"]\n",
            required.join(", "),
        ),
    )
    .expect("spec");
    rel
}

/// `slipctl publish REL --app web --version VERSION --allow-dirty`, which must
/// succeed.
pub fn publish_dir(c: &Controller, rel: &Path, version: &str) -> CtlOutput {
    c.ctl(&[
        "publish",
        rel.to_str().expect("utf8"),
        "--app",
        "web",
        "--version",
        version,
        "--allow-dirty",
    ])
    .ok()
}

/// Publishes a sample release and returns its release digest.
pub fn publish(c: &Controller, dir: &Path, o: &ReleaseOpts) -> String {
    let rel = sample_release(dir, o);
    let out = publish_dir(c, &rel, o.version);
    out.stdout
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("release")
                .map(|d| d.trim().to_string())
        })
        .expect("publish prints the release digest")
}

/// The status row of `host` for app `web`.
pub fn status_row(c: &Controller, host: &str) -> Option<serde_json::Value> {
    let out = c.ctl(&["status", "--app", "web", "--json"]);
    if out.code != 0 {
        return None;
    }
    out.json()["hosts"]
        .as_array()?
        .iter()
        .find(|r| r["host"] == host)
        .cloned()
}

/// A release whose one process is a worker (`sleep`): healthy once it stays
/// up 1 s; no port, no env.
pub fn worker_release(dir: &Path, version: &str) -> PathBuf {
    worker_release_writing(dir, version, 0)
}

/// A worker release whose process writes `lines` numbered lines to its
/// output when it starts (`worker line N`), then sleeps.
pub fn worker_release_writing(dir: &Path, version: &str, lines: u32) -> PathBuf {
    let rel = dir.join(format!("worker-release-{version}"));
    std::fs::create_dir_all(&rel).expect("release dir");
    let write = if lines == 0 {
        String::new()
    } else {
        format!("seq -f 'worker line %g' {lines}; ")
    };
    std::fs::write(
        rel.join("slipway.toml"),
        format!(
            "[processes.worker]\ncommand = [\"sh\", \"-c\", \"{write}exec sleep 100000\"]\nhealth = {{ min_healthy_secs = 1 }}\n"
        ),
    )
    .expect("spec");
    std::fs::write(rel.join("VERSION"), version).expect("version file");
    rel
}

/// What a new host does: `slipctl hosts add HOST --env ENV`, then
/// `slipway-agent join URL TOKEN --no-start` with its own config
/// (`dir/HOST/agent.toml`) and state dir (`dir/HOST/state`). Not started.
pub fn join_host(c: &Controller, dir: &Path, host: &str, env: &str) -> Agent {
    let added = c
        .ctl(&["hosts", "add", host, "--env", env, "-o", "json"])
        .ok()
        .json();
    let token = added["join_token"].as_str().expect("join token");
    let config = dir.join(host).join("agent.toml");
    let state = dir.join(host).join("state");
    let out: CtlOutput = Command::new(bin("slipway-agent"))
        .arg("--config")
        .arg(&config)
        .args(["join", &c.url, token, "--no-start", "--state-dir"])
        .arg(&state)
        .env("SLIPWAY_LOG", "warn")
        .output()
        .expect("run slipway-agent join")
        .into();
    assert_eq!(out.code, 0, "join: {}{}", out.stdout, out.stderr);
    Agent::with_config(dir, host, &config, &state, 0)
}

/// The fleet the day-2 benchmarks start from: a worker release of `web`
/// whose process writes `lines` lines, published and desired in preprod, and
/// `hosts` hosts (`host-00`…) joined, started and connected, running nothing
/// until `web` is declared for them.
pub fn worker_fleet(c: &Controller, dir: &Path, hosts: usize, lines: u32) -> Vec<Agent> {
    let rel = worker_release_writing(dir, "1.0.0", lines);
    c.ctl(&[
        "publish",
        rel.to_str().expect("utf8"),
        "--app",
        "web",
        "--version",
        "1.0.0",
        "--allow-dirty",
    ])
    .ok();
    c.ctl(&["deploy", "web", "1.0.0", "--env", "preprod"]).ok();
    let names: Vec<String> = (0..hosts).map(|i| format!("host-{i:02}")).collect();
    let mut agents: Vec<Agent> = names
        .iter()
        .map(|h| join_host(c, dir, h, "preprod"))
        .collect();
    for a in &mut agents {
        a.spawn();
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    wait_hosts_connected(c, &names);
    agents
}

/// Waits until `slipctl hosts` shows each of `hosts` connected.
pub fn wait_hosts_connected(c: &Controller, hosts: &[&str]) {
    eventually(
        Duration::from_secs(120),
        &format!("{} to connect", hosts.join(", ")),
        || {
            let list = c.ctl(&["hosts", "-o", "json"]).ok().json();
            let list = list.as_array()?;
            hosts
                .iter()
                .all(|h| {
                    list.iter()
                        .any(|x| x["name"] == *h && x["connected"] == true)
                })
                .then_some(())
        },
    );
}

/// The lines a child writes on its piped stdout, as they come (read on a
/// thread of their own until the pipe closes or the receiver is dropped).
pub fn stdout_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("stdout piped");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}
