//! Fleet benchmark (not a test): one real controller, N agents (default 200,
//! `SLIPWAY_BENCH_AGENTS` to change) running in this one process through the
//! agent library, each with its own state dir, enrolled identity and mTLS
//! session. A small artifact (a worker that stays up) is deployed to all of
//! them, first all at once, then with the default canary + 25% batches
//! (`SLIPWAY_BENCH_DEPLOYS=0`: none, for an idle-only run with many agents).
//! `SLIPWAY_BENCH_AGENT_DIR=/dev/shm` puts the agents' state dirs on tmpfs,
//! where every fsync of the install is free: installs made trivially cheap,
//! so what is left is the controller and the protocol (the controller's
//! data dir stays on disk). `SLIPWAY_BENCH_CONTROLLER_ENV="K=V …"` sets
//! variables in the controllers' environment only.
//! Prints the time from `deploy` until every host reports healthy and where
//! it goes: when the hosts began deploying (the agents' side) and when the
//! controller judged them healthy (its log), the CPU seconds the controller
//! and the simulated hosts (this process and its host groups) spent meanwhile; then, idle, the
//! controller's resident memory per connected session and its CPU at
//! heartbeats only. Figures are printed, never asserted.
//!
//! Issue 15: `SLIPWAY_BENCH_STORES=sqlite,postgres` runs the whole bench once
//! per store, one after the other in this one run, and prints them side by
//! side (PostgreSQL: a new database on `SLIPWAY_TEST_POSTGRES`, as
//! `scripts/with-postgres` provides). `SLIPWAY_BENCH_REPLICAS=N` (PostgreSQL
//! only; or `postgres:N` in the list) starts N controllers on one database and one blob directory and
//! spreads the agents over them round-robin; memory and CPU are then the sum
//! over the replicas.
//!
//! `SLIPWAY_BENCH_HOSTS_NICE=N` (with host processes) runs them at that
//! niceness: ten thousand simulated hosts retrying their joins otherwise
//! take the CPU the controllers need to answer them, which real hosts, on
//! machines of their own, do not.
//!
//! `SLIPWAY_BENCH_HOST_PROCS=K` runs the simulated hosts in K processes of
//! their own (this binary again, `--hosts FILE`) instead of this one: a real
//! host's agent is a small process, and every app process a simulated host
//! starts copies, then closes at `exec`, the descriptor table of the process
//! it is forked from (about six descriptors per host in it). The hosts' CPU
//! and memory are then the sum over those processes.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use integration_tests::{Controller, eventually, worker_release};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use integration_tests::proc_kib as rss_kib;

/// When each simulated agent received a version's directive ("desired release
/// received") and began deploying it ("deploying"): (event, version, when).
static DEPLOYING: Mutex<Vec<(&'static str, String, Instant)>> = Mutex::new(Vec::new());

/// When each simulated agent entered each step of a deploy: (step, version,
/// when); where the hosts' deploys spend their time.
static STEPS: Mutex<Vec<(String, String, Instant)>> = Mutex::new(Vec::new());

/// Simulated agents that ended with an error (enrollment refused, say).
static FAILED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The agents' events `DEPLOYING` records.
const RECEIVED: &str = "desired release received";
const BEGAN: &str = "deploying";

/// Records the agents' directive and deploy events into `DEPLOYING`.
struct DeployingLayer;

#[derive(Default)]
struct DeployingFields {
    message: String,
    version: String,
    step: String,
}

impl tracing::field::Visit for DeployingFields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "version" => self.version = format!("{value:?}"),
            _ => {}
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "step" => self.step = value.to_string(),
            _ => self.record_debug(field, &value),
        }
    }
}

/// The deploy step event `STEPS` records.
const STEP: &str = "deploy step";

/// A host group (`--hosts`) prints its events for the bench to read, rather
/// than keeping them.
static EVENTS_TO_STDOUT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for DeployingLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut f = DeployingFields::default();
        event.record(&mut f);
        if f.message != STEP && f.message != RECEIVED && f.message != BEGAN {
            return;
        }
        if EVENTS_TO_STDOUT.load(std::sync::atomic::Ordering::Relaxed) {
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            use std::io::Write;
            let _ = writeln!(
                std::io::stdout().lock(),
                "EVENT\t{}\t{}\t{}\t{nanos}",
                f.message,
                f.version,
                f.step
            );
            return;
        }
        record_event(&f.message, f.version, f.step, Instant::now());
    }
}

/// Keeps one agent event, from this process or a host group.
fn record_event(message: &str, version: String, step: String, at: Instant) {
    if message == STEP {
        STEPS.lock().expect("steps lock").push((step, version, at));
    } else if let Some(what) = [RECEIVED, BEGAN].into_iter().find(|m| message == *m) {
        DEPLOYING
            .lock()
            .expect("deploying lock")
            .push((what, version, at));
    }
}

/// The host groups' processes (`SLIPWAY_BENCH_HOST_PROCS`), if any.
static HOST_PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// CPU seconds the simulated hosts used so far: this process and its host
/// groups.
fn hosts_cpu(ticks: f64) -> f64 {
    let groups: f64 = HOST_PIDS
        .lock()
        .expect("host pids")
        .iter()
        .map(|pid| cpu_secs(*pid, ticks))
        .sum();
    cpu_secs(std::process::id(), ticks) + groups
}

/// Resident memory of the simulated hosts: this process and its host groups.
fn hosts_rss_kib() -> u64 {
    let groups: u64 = HOST_PIDS
        .lock()
        .expect("host pids")
        .iter()
        .map(|pid| rss_kib(*pid, "VmRSS:"))
        .sum();
    rss_kib(std::process::id(), "VmRSS:") + groups
}

/// Starts the agents of `configs` on `rt`, `start_rate` a second; a failed
/// agent counts in `FAILED` (a host group prints `FAILED`).
fn start_agents(
    rt: &tokio::runtime::Runtime,
    configs: Vec<agent::config::AgentConfig>,
    start_rate: usize,
    shutdown: &CancellationToken,
) {
    let per_tick = (start_rate / 10).max(1);
    for (i, cfg) in configs.into_iter().enumerate() {
        if i > 0 && i % per_tick == 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
        let token = shutdown.clone();
        rt.spawn(async move {
            if let Err(e) = agent::run(cfg, None, token).await {
                eprintln!("agent failed: {e:#}");
                if EVENTS_TO_STDOUT.load(std::sync::atomic::Ordering::Relaxed) {
                    println!("FAILED");
                } else {
                    FAILED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
    }
}

/// The runtime simulated hosts run on. Each deploying host holds a blocking
/// thread for its unpack (it reads the download as it arrives) while its
/// fetch needs others for its file writes: with tokio's default 512, over
/// ~500 hosts deploying at once in one process wait on each other for ever.
fn hosts_runtime(threads: usize, hosts: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .max_blocking_threads(2 * hosts + 64)
        .enable_all()
        .build()
}

/// `--hosts FILE`: a group of simulated hosts in a process of its own. FILE
/// lists their agent configs, a path a line. Their events go to stdout, a
/// line each (`EVENT\tmessage\tversion\tstep\tunix nanos`), a failed
/// agent as `FAILED`; runs until its stdin closes.
fn host_group(list: &Path, threads: usize, start_rate: usize) -> anyhow::Result<()> {
    EVENTS_TO_STDOUT.store(true, std::sync::atomic::Ordering::Relaxed);
    let text = std::fs::read_to_string(list)?;
    let configs = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|path| {
            let path = Path::new(path);
            let toml = std::fs::read_to_string(path)?;
            Ok(agent::config::AgentConfig::parse(&toml, path)?)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let rt = hosts_runtime(threads, configs.len())?;
    let shutdown = CancellationToken::new();
    start_agents(&rt, configs, start_rate, &shutdown);
    // Until the bench closes our stdin (or is gone).
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
    shutdown.cancel();
    rt.shutdown_timeout(Duration::from_secs(5));
    Ok(())
}

/// Starts `procs` host groups over `configs` (round-robin), each reading its
/// events into this process's records.
fn start_host_groups(
    dir: &Path,
    configs: &[std::path::PathBuf],
    procs: usize,
    threads: usize,
    start_rate: usize,
) -> anyhow::Result<Vec<std::process::Child>> {
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for g in 0..procs {
        let list: Vec<String> = configs
            .iter()
            .skip(g)
            .step_by(procs)
            .map(|p| p.display().to_string())
            .collect();
        let file = dir.join(format!("hosts-{g}.txt"));
        std::fs::write(&file, list.join("\n"))?;
        // SLIPWAY_BENCH_HOSTS_NICE=N: the simulated hosts run at that
        // niceness, so the controllers and the database get the CPU first,
        // as they would with the hosts on machines of their own.
        let nice = std::env::var("SLIPWAY_BENCH_HOSTS_NICE").unwrap_or_default();
        let mut command = if nice.is_empty() {
            std::process::Command::new(&exe)
        } else {
            let mut c = std::process::Command::new("nice");
            c.args(["-n", &nice]).arg(&exe);
            c
        };
        let mut child = command
            .arg("--hosts")
            .arg(&file)
            .env("SLIPWAY_BENCH_THREADS", threads.to_string())
            .env(
                "SLIPWAY_BENCH_START_RATE",
                (start_rate / procs).max(1).to_string(),
            )
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        HOST_PIDS.lock().expect("host pids").push(child.id());
        let out = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if line == "FAILED" {
                    FAILED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    continue;
                }
                let f: Vec<&str> = line.split('\t').collect();
                let [_, message, version, step, nanos] = f[..] else {
                    continue;
                };
                let Ok(nanos) = nanos.parse::<u64>() else {
                    continue;
                };
                let when = SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos);
                let ago = SystemTime::now().duration_since(when).unwrap_or_default();
                let at = Instant::now().checked_sub(ago).unwrap_or_else(Instant::now);
                record_event(message, version.to_string(), step.to_string(), at);
            }
        });
        children.push(child);
    }
    Ok(children)
}

/// CPU seconds (user + system, every thread) a process used so far.
fn cpu_secs(pid: u32, ticks_per_sec: f64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis: utime is the 12th, stime the 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (field(11) + field(12)) / ticks_per_sec
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`, 100 if unknown).
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Seconds since midnight UTC of a log line's RFC 3339 timestamp
/// (`2026-11-30T15:36:48.123456Z  INFO ...`).
fn log_secs_of_day(line: &str) -> Option<f64> {
    let stamp = line.split_whitespace().next()?;
    let time = stamp.split_once('T')?.1.trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// Seconds since midnight UTC now.
fn now_secs_of_day() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() % 86_400.0)
        .unwrap_or(0.0)
}

/// The value at quantile `q` of sorted `v` (0 when empty).
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// An agent's config; `with_app: false` (an idle-only run) leaves the app
/// out, so a simulated host holds its session's socket and no file watcher
/// (its fds stay within this process's limit at 10,000 hosts).
fn agent_config(
    dir: &Path,
    c: &Controller,
    host: &str,
    token: &str,
    with_app: bool,
) -> (agent::config::AgentConfig, std::path::PathBuf) {
    let state_dir = dir.join(format!("agent-{host}"));
    let join = dir.join(format!("{host}.join"));
    std::fs::write(&join, token).expect("join token");
    let path = dir.join(format!("{host}.toml"));
    let text = format!(
        "controller = \"{}\"\nhost = \"{host}\"\nenvironment = \"preprod\"\nstate_dir = \"{}\"\njoin_token_file = \"{}\"\n{}",
        c.url,
        state_dir.display(),
        join.display(),
        if with_app {
            "\n[apps.web]\nstop_grace_secs = 1\n"
        } else {
            ""
        }
    );
    std::fs::write(&path, &text).expect("config");
    let cfg = agent::config::AgentConfig::parse(&text, &path).expect("agent config parses");
    (cfg, path)
}

/// Kills the worker processes the agents started (they outlive agents by design).
fn kill_workers(dir: &Path, n: usize) {
    for i in 0..n {
        let run = dir.join(format!("agent-bench-{i:03}/apps/web/run"));
        let Ok(entries) = std::fs::read_dir(run) else {
            continue;
        };
        for e in entries.flatten() {
            let pid = std::fs::read_to_string(e.path())
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|v| v["pid"].as_i64());
            if let Some(pid) = pid {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::SIGKILL,
                );
            }
        }
    }
}

/// The controller's store query counter at each step admission and at the
/// end of the rollouts logged in `log` (the engine logs `store_queries=`).
fn query_marks(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("rollout step admitted") || l.contains("rollout succeeded"))
        .filter_map(|l| {
            let rest = &l[l.find("store_queries=")? + "store_queries=".len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

/// What one timed deploy measured.
struct Deployed {
    secs: f64,
    controller_cpu: f64,
    hosts_cpu: f64,
}

/// Deploys `version` with `strategy` flags and returns the seconds until
/// every host reports it healthy. Prints the store queries the controller ran
/// per admitted step (from one admission to the next, the last one to the
/// rollout's success: sessions recomputing, reports, the engine, status polls),
/// when the hosts began deploying and were judged healthy, and the CPU the
/// controller and the simulated hosts spent.
fn timed_deploy(fleet: &Fleet, version: &str, n: usize, strategy: &[&str], ticks: f64) -> Deployed {
    let c = &fleet.controllers[0];
    let mut args = vec!["deploy", "web", version, "--env", "preprod"];
    args.extend_from_slice(strategy);
    let log_from = fleet.log_lengths();
    let cpu_before = (fleet.cpu(ticks), hosts_cpu(ticks));
    let start_of_day = now_secs_of_day();
    let start = Instant::now();
    c.ctl(&args).ok();
    // Until every host is healthy, or the rollout ends otherwise (then its
    // state and reason are printed: a figure, not a panic). Polled every
    // 100 ms with the fleet summary only (the full rollout is read once the
    // summary says it is done or stuck), so the poll itself costs the
    // controller little.
    let ended = eventually(
        Duration::from_secs(900),
        &format!("{n} hosts healthy on {version}"),
        || {
            let s = c.ctl(&["status", "--app", "web", "--json"]).ok().json();
            if s["apps"][0]["at_desired"].as_u64() == Some(n as u64)
                && s["apps"][0]["desired"] == version
            {
                return Some(None);
            }
            let rollout = &s["apps"][0]["rollout"];
            if rollout["to_version"] == version
                && ["running", "paused"].contains(&rollout["state"].as_str().unwrap_or("running"))
            {
                return None;
            }
            let r = c
                .ctl(&["rollout", "status", "web", "--env", "preprod", "--json"])
                .ok()
                .json();
            (r["to_version"] == version && !["running", "paused"].contains(&r["state"].as_str()?))
                .then(|| Some(format!("{} {}: {}", r["state"], r["reason"], s["apps"][0])))
        },
    );
    let secs = start.elapsed().as_secs_f64();
    let controller_cpu = fleet.cpu(ticks) - cpu_before.0;
    let hosts_cpu = hosts_cpu(ticks) - cpu_before.1;
    if let Some(why) = ended {
        println!("deploy {version}: the rollout ended without every host healthy: {why}");
    }
    let r = c
        .ctl(&["rollout", "status", "web", "--env", "preprod", "--json"])
        .ok()
        .json();
    println!(
        "deploy {version} ({}): {secs:.1} s to {n} healthy; rollout {} in {} step(s)",
        if strategy.is_empty() {
            "environment default: canary 1, batches of 25%"
        } else {
            "all at once"
        },
        r["state"],
        r["steps"]
    );
    // The engine logs the rollout's success after the last host is judged.
    let marks = eventually(
        Duration::from_secs(30),
        "rollout logged as succeeded",
        || {
            let text = fleet.logs_since(&log_from);
            text.contains("rollout succeeded")
                .then(|| query_marks(&text))
        },
    );
    // Judged vs skipped: every host's outcome, and the hosts whose session was
    // open while their last_seen was stale at a step's admission (judged by
    // last_seen alone, as before issue 11, they were skipped as offline).
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for h in r["hosts"].as_array().into_iter().flatten() {
        *outcomes
            .entry(h["outcome"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    let text = fleet.logs_since(&log_from);
    let stale: Vec<u64> = text
        .lines()
        .filter(|l| l.contains("rollout step admitted"))
        .filter_map(|l| {
            let rest =
                &l[l.find("connected_stale_last_seen=")? + "connected_stale_last_seen=".len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect();
    println!(
        "  host outcomes: {outcomes:?}; skipped as offline: {}; connected but last_seen stale at admission, per step: {stale:?} (sum {})",
        r["skipped"],
        stale.iter().sum::<u64>()
    );
    // Where the time went: the hosts' side (when each began deploying: the
    // directive reached it) and the controller's (when it judged each healthy).
    let events = |what: &str| -> Vec<f64> {
        let mut v: Vec<f64> = DEPLOYING
            .lock()
            .expect("deploying lock")
            .iter()
            .filter(|(w, v, at)| *w == what && v == version && *at >= start)
            .map(|(_, _, at)| at.duration_since(start).as_secs_f64())
            .collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let received = events(RECEIVED);
    let began = events(BEGAN);
    let mut judged: Vec<f64> = text
        .lines()
        .filter(|l| l.contains("rollout host judged") && l.contains("outcome=healthy"))
        .filter_map(log_secs_of_day)
        .map(|t| (t - start_of_day).rem_euclid(86_400.0))
        .collect();
    judged.sort_by(f64::total_cmp);
    println!(
        "  timeline (s after deploy): directive received 50% {:.1} / 100% {:.1} ({} hosts); began deploying 50% {:.1} / 100% {:.1} ({} hosts); judged healthy 50% {:.1} / 100% {:.1} ({} hosts); all healthy seen {secs:.1}",
        quantile(&received, 0.5),
        quantile(&received, 1.0),
        received.len(),
        quantile(&began, 0.5),
        quantile(&began, 1.0),
        began.len(),
        quantile(&judged, 0.5),
        quantile(&judged, 1.0),
        judged.len(),
    );
    // When the hosts entered each step of the deploy, in the order the
    // first host did: where a host's deploy spends its time.
    let steps = STEPS.lock().expect("steps lock").clone();
    let mut order: Vec<(f64, String)> = Vec::new();
    let mut per_step = std::collections::HashMap::<String, Vec<f64>>::new();
    for (step, _, at) in steps
        .iter()
        .filter(|(_, v, at)| v == version && *at >= start)
    {
        let t = at.duration_since(start).as_secs_f64();
        let e = per_step.entry(step.clone()).or_default();
        if e.is_empty() {
            order.push((t, step.clone()));
        }
        e.push(t);
    }
    order.sort_by(|a, b| a.0.total_cmp(&b.0));
    let entered: Vec<String> = order
        .iter()
        .map(|(_, step)| {
            let mut v = per_step.remove(step).unwrap_or_default();
            v.sort_by(f64::total_cmp);
            format!("{step} {:.1} / {:.1}", quantile(&v, 0.5), quantile(&v, 1.0))
        })
        .collect();
    println!(
        "  steps entered (s after deploy, 50% / 100% of hosts): {}",
        entered.join("; ")
    );
    println!(
        "  CPU meanwhile: controller {controller_cpu:.1} s ({:.0}% of one core), simulated hosts {hosts_cpu:.1} s ({:.0}% of one core)",
        100.0 * controller_cpu / secs,
        100.0 * hosts_cpu / secs,
    );
    let per_step: Vec<u64> = marks.windows(2).map(|w| w[1] - w[0]).collect();
    if !per_step.is_empty() {
        println!(
            "  store queries per admitted step: {:.0} (mean of {:?})",
            per_step.iter().sum::<u64>() as f64 / per_step.len() as f64,
            per_step
        );
    }
    Deployed {
        secs,
        controller_cpu,
        hosts_cpu,
    }
}

/// The controllers of one configuration: one, or replicas on one database.
struct Fleet {
    controllers: Vec<Controller>,
}

impl Fleet {
    fn logs(&self) -> Vec<std::path::PathBuf> {
        self.controllers
            .iter()
            .map(|c| c.data_dir.with_file_name("controller.log"))
            .collect()
    }

    fn log_lengths(&self) -> Vec<usize> {
        self.logs()
            .iter()
            .map(|l| std::fs::metadata(l).map(|m| m.len()).unwrap_or(0) as usize)
            .collect()
    }

    /// What every controller logged since `from` (their lengths then).
    fn logs_since(&self, from: &[usize]) -> String {
        let mut out = String::new();
        for (log, from) in self.logs().iter().zip(from) {
            let text = std::fs::read(log).unwrap_or_default();
            out.push_str(&String::from_utf8_lossy(
                text.get(*from..).unwrap_or_default(),
            ));
        }
        out
    }

    fn cpu(&self, ticks: f64) -> f64 {
        self.controllers
            .iter()
            .map(|c| cpu_secs(c.pid().unwrap_or(0), ticks))
            .sum()
    }

    fn rss_kib(&self, field: &str) -> u64 {
        self.controllers
            .iter()
            .map(|c| rss_kib(c.pid().unwrap_or(0), field))
            .sum()
    }
}

/// What one configuration measured, for the side-by-side table.
struct Figures {
    label: String,
    connect_secs: f64,
    timed: Vec<(&'static str, Deployed)>,
    per_session_kib: f64,
    idle_cpu: f64,
}

struct Settings {
    n: usize,
    start_rate: usize,
    deploys: bool,
    threads: usize,
    /// Processes the simulated hosts run in (1: this one).
    host_procs: usize,
    idle_secs: f64,
    ticks: f64,
}

fn main() -> anyhow::Result<()> {
    let env_number = |name: &str, default: usize| -> usize {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let settings = Settings {
        n: env_number("SLIPWAY_BENCH_AGENTS", 200),
        start_rate: env_number("SLIPWAY_BENCH_START_RATE", 500),
        deploys: env_number("SLIPWAY_BENCH_DEPLOYS", 1) > 0,
        // The simulated agents' install path still makes blocking calls
        // (fsync) on the runtime's threads; with only one per core, one
        // host's fsync stalls every other host's session. Real hosts each
        // have their own.
        threads: env_number("SLIPWAY_BENCH_THREADS", 16),
        host_procs: env_number("SLIPWAY_BENCH_HOST_PROCS", 1).max(1),
        idle_secs: env_number("SLIPWAY_BENCH_IDLE_SECS", 10) as f64,
        ticks: clock_ticks(),
    };
    let args: Vec<String> = std::env::args().collect();
    tracing_subscriber::registry()
        .with(tracing_subscriber::Layer::with_filter(
            DeployingLayer,
            tracing_subscriber::filter::Targets::new()
                .with_target("agent::app::machine", tracing::Level::DEBUG)
                .with_target("agent::session", tracing::Level::INFO),
        ))
        .init();
    if let [_, flag, list] = &args[..]
        && flag == "--hosts"
    {
        return host_group(Path::new(list), settings.threads, settings.start_rate);
    }
    let replicas = env_number("SLIPWAY_BENCH_REPLICAS", 1).max(1);
    let stores = std::env::var("SLIPWAY_BENCH_STORES").unwrap_or_else(|_| "sqlite".into());
    // Every simulated agent's app watches its env file with inotify; the
    // default 128 instances per user would leave most of them polling.
    if settings.n > 100 {
        match std::fs::write("/proc/sys/fs/inotify/max_user_instances", "65536") {
            Ok(()) => {
                println!("fs.inotify.max_user_instances raised to 65536 for the simulated agents")
            }
            Err(e) => {
                println!("fs.inotify.max_user_instances left as it is ({e}): agents past it poll")
            }
        }
    }
    let mut all = Vec::new();
    for spec in stores.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        // `postgres:2`: that store with that many controllers.
        let (store, replicas) = match spec.split_once(':') {
            Some((store, r)) => (store, r.parse().unwrap_or(1)),
            None if spec == "postgres" => (spec, replicas),
            None => (spec, 1),
        };
        println!("\n== {store}, {replicas} controller(s) ==");
        all.push(run(store, replicas, &settings)?);
    }
    if all.len() > 1 {
        println!("\nside by side ({} agents):", settings.n);
        println!(
            "| | {} |",
            all.iter()
                .map(|f| f.label.as_str())
                .collect::<Vec<_>>()
                .join(" | ")
        );
        println!("|---|{}", "---|".repeat(all.len()));
        println!(
            "| enroll + connect all | {} |",
            all.iter()
                .map(|f| format!("{:.1} s", f.connect_secs))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        for (i, (what, _)) in all[0].timed.iter().enumerate() {
            println!(
                "| deploy → all healthy, {what} | {} |",
                all.iter()
                    .map(|f| f
                        .timed
                        .get(i)
                        .map(|(_, d)| format!(
                            "{:.1} s (controller CPU {:.1} s)",
                            d.secs, d.controller_cpu
                        ))
                        .unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
        }
        println!(
            "| controller memory per connected session | {} |",
            all.iter()
                .map(|f| format!("{:.1} KiB", f.per_session_kib))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        println!(
            "| controller CPU, idle sessions | {} |",
            all.iter()
                .map(|f| format!("{:.1}% of a core", 100.0 * f.idle_cpu))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    Ok(())
}

/// Join tokens for `n` hosts, made on `c` by 8 slipctl calls at a time.
fn join_tokens(c: &Controller, n: usize) -> Vec<String> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let tokens = Mutex::new(vec![String::new(); n]);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let t = c.join_token(&format!("bench-{i:03}"), "preprod");
                    tokens.lock().expect("tokens")[i] = t;
                }
            });
        }
    });
    tokens.into_inner().expect("tokens")
}

fn run(store: &str, replicas: usize, settings: &Settings) -> anyhow::Result<Figures> {
    let Settings {
        n,
        start_rate: _,
        deploys,
        threads,
        host_procs,
        idle_secs,
        ticks,
    } = *settings;
    let t = tempfile::tempdir()?;
    let agent_dir = match std::env::var_os("SLIPWAY_BENCH_AGENT_DIR") {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None => tempfile::tempdir_in(t.path())?,
    };
    // Every simulated agent comes from 127.0.0.1.
    let mut flags: Vec<String> = [
        "--max-connections-per-ip",
        "100000",
        "--enrolls-per-minute",
        "100000",
    ]
    .map(String::from)
    .to_vec();
    match store {
        "sqlite" => {}
        "postgres" => {
            let url = integration_tests::fresh_postgres_database().ok_or_else(|| {
                anyhow::anyhow!(
                    "the postgres store needs SLIPWAY_TEST_POSTGRES (scripts/with-postgres)"
                )
            })?;
            flags.extend(["--database".into(), url]);
            flags.extend([
                "--blobs".into(),
                t.path().join("blobs").display().to_string(),
            ]);
        }
        other => anyhow::bail!("SLIPWAY_BENCH_STORES: unknown store {other:?} (sqlite, postgres)"),
    }
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    // SLIPWAY_BENCH_CONTROLLER_ENV="K=V K2=V2": the controllers' environment
    // only (an allocator's tuning, say), not this process's.
    let env_text = std::env::var("SLIPWAY_BENCH_CONTROLLER_ENV").unwrap_or_default();
    let env = env_text
        .split_whitespace()
        .map(|kv| {
            kv.split_once('=').ok_or_else(|| {
                anyhow::anyhow!("SLIPWAY_BENCH_CONTROLLER_ENV: {kv:?} is not NAME=VALUE")
            })
        })
        .collect::<anyhow::Result<Vec<(&str, &str)>>>()?;
    let first_dir = t.path().join("r0");
    std::fs::create_dir_all(&first_dir)?;
    let first = Controller::start_with_env(&first_dir, &flags, &env);
    let mut controllers = vec![first];
    for i in 1..replicas {
        let r = integration_tests::start_replica(
            &controllers[0],
            &t.path().join(format!("r{i}")),
            &flags,
            &env,
        );
        controllers.push(r);
    }
    let fleet = Fleet { controllers };
    let c = &fleet.controllers[0];
    let made = Instant::now();
    let tokens = join_tokens(c, n);
    println!(
        "join tokens for {n} hosts: {:.1} s",
        made.elapsed().as_secs_f64()
    );
    let configs: Vec<_> = tokens
        .iter()
        .enumerate()
        .map(|(i, token)| {
            let on = &fleet.controllers[i % replicas];
            agent_config(
                agent_dir.path(),
                on,
                &format!("bench-{i:03}"),
                token,
                deploys,
            )
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let idle_kib = fleet.rss_kib("VmRSS:");

    let shutdown = CancellationToken::new();
    let start = Instant::now();
    // Started `start_rate` a second (SLIPWAY_BENCH_START_RATE, 500): a fleet
    // joins over time. Each join is a few serialized store writes (the token,
    // the certificate, the audit row, the session's hello); 10,000 at once on
    // PostgreSQL queue on the write lock while holding pooled connections,
    // and the calls waiting for one time out ("store unavailable"), retry,
    // and keep the queue full.
    let (configs, paths): (Vec<_>, Vec<_>) = configs.into_iter().unzip();
    let group_threads = threads.div_ceil(host_procs).max(2);
    let (rt, mut groups) = if host_procs > 1 {
        drop(configs);
        let groups = start_host_groups(
            agent_dir.path(),
            &paths,
            host_procs,
            group_threads,
            settings.start_rate,
        )?;
        (None, groups)
    } else {
        let rt = hosts_runtime(threads, n)?;
        start_agents(&rt, configs, settings.start_rate, &shutdown);
        (Some(rt), Vec::new())
    };
    eventually(Duration::from_secs(1800), "every agent connected", || {
        // A controller too busy to answer is asked again.
        let out = c.ctl(&["hosts", "--json"]);
        if out.code != 0 {
            return None;
        }
        let hosts = out.json();
        let connected = hosts
            .as_array()?
            .iter()
            .filter(|h| h["connected"] == true)
            .count();
        let failed = FAILED.load(std::sync::atomic::Ordering::Relaxed);
        (connected + failed >= n).then_some(())
    });
    let connect_secs = start.elapsed().as_secs_f64();
    let failed = FAILED.swap(0, std::sync::atomic::Ordering::Relaxed);
    if failed > 0 {
        println!("{failed} of {n} agents gave up (above); the figures are for the others");
    }
    let all = n;
    let n = n - failed;
    std::thread::sleep(Duration::from_secs(3));
    let connected_kib = fleet.rss_kib("VmRSS:");
    // Idle: every session open, nothing deploying; heartbeats only (every
    // 2 s in the harness, 10 s by default).
    let idle_from = (fleet.cpu(ticks), hosts_cpu(ticks));
    std::thread::sleep(Duration::from_secs_f64(idle_secs));
    let idle_cpu = (fleet.cpu(ticks) - idle_from.0) / idle_secs;
    let idle_hosts_cpu = (hosts_cpu(ticks) - idle_from.1) / idle_secs;

    let mut timed = Vec::new();
    if deploys {
        for version in ["1.0.0", "2.0.0"] {
            let rel = worker_release(t.path(), version);
            c.ctl(&[
                "publish",
                rel.to_str().unwrap_or_default(),
                "--app",
                "web",
                "--version",
                version,
                "--allow-dirty",
            ])
            .ok();
        }
        timed.push((
            "all at once",
            timed_deploy(
                &fleet,
                "1.0.0",
                n,
                &["--canary", "0", "--batch", "100%"],
                ticks,
            ),
        ));
        timed.push((
            "default strategy",
            timed_deploy(&fleet, "2.0.0", n, &[], ticks),
        ));
    }
    let after_kib = fleet.rss_kib("VmRSS:");
    let peak_kib = fleet.rss_kib("VmHWM:");
    let own_kib = hosts_rss_kib();
    let per_session_kib = (connected_kib.saturating_sub(idle_kib)) as f64 / n as f64;

    println!(
        "agents:                          {n} ({}, own state dir and mTLS session each; state dirs in {})",
        if host_procs > 1 {
            format!("in {host_procs} processes of {group_threads} runtime threads")
        } else {
            format!("in this process, {threads} runtime threads")
        },
        agent_dir.path().display()
    );
    println!("enroll + connect all:            {connect_secs:.1} s");
    for (what, d) in &timed {
        println!(
            "deploy -> all healthy, {what:<17} {:.1} s (controller CPU {:.1} s, simulated hosts CPU {:.1} s)",
            d.secs, d.controller_cpu, d.hosts_cpu
        );
    }
    println!(
        "controller RSS idle:             {:.1} MiB",
        idle_kib as f64 / 1024.0
    );
    println!(
        "controller RSS, all connected:   {:.1} MiB  ({per_session_kib:.1} KiB per connected session)",
        connected_kib as f64 / 1024.0,
    );
    println!(
        "controller CPU, idle sessions:   {:.1}% of one core over {idle_secs:.0} s (simulated hosts: {:.1}%)",
        100.0 * idle_cpu,
        100.0 * idle_hosts_cpu
    );
    println!(
        "controller RSS after deploys:    {:.1} MiB (peak {:.1} MiB)",
        after_kib as f64 / 1024.0,
        peak_kib as f64 / 1024.0
    );
    println!(
        "simulated hosts' RSS ({n} agents): {:.1} MiB ({:.1} KiB per agent)",
        own_kib as f64 / 1024.0,
        own_kib as f64 / n as f64
    );
    shutdown.cancel();
    if let Some(rt) = rt {
        rt.shutdown_timeout(Duration::from_secs(5));
    }
    for g in &mut groups {
        // Its stdin closes: it stops its agents and exits.
        drop(g.stdin.take());
    }
    for mut g in groups {
        let waited = Instant::now();
        while g.try_wait().ok().flatten().is_none() && waited.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = g.kill();
        let _ = g.wait();
    }
    HOST_PIDS.lock().expect("host pids").clear();
    kill_workers(agent_dir.path(), all);
    Ok(Figures {
        label: if replicas > 1 {
            format!("{store}, {replicas} controllers")
        } else {
            store.to_string()
        },
        connect_secs,
        timed,
        per_session_kib,
        idle_cpu,
    })
}
