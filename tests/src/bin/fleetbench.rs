//! Fleet benchmark (not a test): one real controller, N agents (default 200,
//! `SLIPWAY_BENCH_AGENTS` to change) running in this one process through the
//! agent library, each with its own state dir, enrolled identity and mTLS
//! session. A small artifact (a worker that stays up) is deployed to all of
//! them, first all at once, then with the default canary + 25% batches
//! (`SLIPWAY_BENCH_DEPLOYS=0`: none, for an idle-only run with many agents).
//! `SLIPWAY_BENCH_AGENT_DIR=/dev/shm` puts the agents' state dirs on tmpfs,
//! where every fsync of the install is free: installs made trivially cheap,
//! so what is left is the controller and the protocol (the controller's
//! data dir stays on disk).
//! Prints the time from `deploy` until every host reports healthy and where
//! it goes: when the hosts began deploying (the agents' side) and when the
//! controller judged them healthy (its log), the CPU seconds the controller
//! and the simulated hosts (this process) spent meanwhile; then, idle, the
//! controller's resident memory per connected session and its CPU at
//! heartbeats only. Figures are printed, never asserted.

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

/// The agents' events `DEPLOYING` records.
const RECEIVED: &str = "desired release received";
const BEGAN: &str = "deploying";

/// Records the agents' directive and deploy events into `DEPLOYING`.
struct DeployingLayer;

#[derive(Default)]
struct DeployingFields {
    message: String,
    version: String,
}

impl tracing::field::Visit for DeployingFields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "version" => self.version = format!("{value:?}"),
            _ => {}
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for DeployingLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut f = DeployingFields::default();
        event.record(&mut f);
        if let Some(what) = [RECEIVED, BEGAN].into_iter().find(|m| f.message == *m) {
            DEPLOYING
                .lock()
                .expect("deploying lock")
                .push((what, f.version, Instant::now()));
        }
    }
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

fn agent_config(dir: &Path, c: &Controller, host: &str) -> agent::config::AgentConfig {
    let state_dir = dir.join(format!("agent-{host}"));
    let join = dir.join(format!("{host}.join"));
    std::fs::write(&join, c.join_token(host, "preprod")).expect("join token");
    let path = dir.join(format!("{host}.toml"));
    let text = format!(
        "controller = \"{}\"\nhost = \"{host}\"\nenvironment = \"preprod\"\nstate_dir = \"{}\"\njoin_token_file = \"{}\"\n\n[apps.web]\nstop_grace_secs = 1\n",
        c.url,
        state_dir.display(),
        join.display()
    );
    std::fs::write(&path, &text).expect("config");
    agent::config::AgentConfig::parse(&text, &path).expect("agent config parses")
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
fn timed_deploy(
    c: &Controller,
    log: &Path,
    version: &str,
    n: usize,
    strategy: &[&str],
    ticks: f64,
) -> Deployed {
    let mut args = vec!["deploy", "web", version, "--env", "preprod"];
    args.extend_from_slice(strategy);
    let log_from = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0) as usize;
    let controller_pid = c.pid().unwrap_or(0);
    let cpu_before = (
        cpu_secs(controller_pid, ticks),
        cpu_secs(std::process::id(), ticks),
    );
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
    let controller_cpu = cpu_secs(controller_pid, ticks) - cpu_before.0;
    let hosts_cpu = cpu_secs(std::process::id(), ticks) - cpu_before.1;
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
            let text = std::fs::read(log).ok()?;
            let text = String::from_utf8_lossy(text.get(log_from..)?).into_owned();
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
    let text = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(text.get(log_from..).unwrap_or_default()).into_owned();
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
    println!(
        "  CPU meanwhile: controller {controller_cpu:.1} s ({:.0}% of one core), simulated hosts (this process) {hosts_cpu:.1} s ({:.0}% of one core)",
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

fn main() -> anyhow::Result<()> {
    let env_number = |name: &str, default: usize| -> usize {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let n = env_number("SLIPWAY_BENCH_AGENTS", 200);
    let deploys = env_number("SLIPWAY_BENCH_DEPLOYS", 1) > 0;
    // The simulated agents' install path still makes blocking calls (fsync)
    // on the runtime's threads; with only one per core, one host's fsync
    // stalls every other host's session. Real hosts each have their own.
    let threads = env_number("SLIPWAY_BENCH_THREADS", 16);
    let idle_secs = env_number("SLIPWAY_BENCH_IDLE_SECS", 10) as f64;
    let ticks = clock_ticks();
    tracing_subscriber::registry()
        .with(tracing_subscriber::Layer::with_filter(
            DeployingLayer,
            tracing_subscriber::filter::Targets::new()
                .with_target("agent::app::machine", tracing::Level::INFO)
                .with_target("agent::session", tracing::Level::INFO),
        ))
        .init();
    let t = tempfile::tempdir()?;
    let agent_dir = match std::env::var_os("SLIPWAY_BENCH_AGENT_DIR") {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None => tempfile::tempdir_in(t.path())?,
    };
    let c = Controller::start_with(
        t.path(),
        // Every simulated agent comes from 127.0.0.1.
        &[
            "--max-connections-per-ip",
            "100000",
            "--enrolls-per-minute",
            "100000",
        ],
    );
    let controller_pid = c.pid().unwrap_or(0);
    let configs: Vec<_> = (0..n)
        .map(|i| agent_config(agent_dir.path(), &c, &format!("bench-{i:03}")))
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let idle_kib = rss_kib(controller_pid, "VmRSS:");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    let shutdown = CancellationToken::new();
    let start = Instant::now();
    for cfg in configs {
        let token = shutdown.clone();
        rt.spawn(async move {
            if let Err(e) = agent::run(cfg, None, token).await {
                eprintln!("agent failed: {e:#}");
            }
        });
    }
    eventually(Duration::from_secs(600), "every agent connected", || {
        let hosts = c.ctl(&["hosts", "--json"]).ok().json();
        let connected = hosts
            .as_array()?
            .iter()
            .filter(|h| h["connected"] == true)
            .count();
        (connected == n).then_some(())
    });
    let connect_secs = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(3));
    let connected_kib = rss_kib(controller_pid, "VmRSS:");
    // Idle: every session open, nothing deploying; heartbeats only (every
    // 2 s in the harness, 10 s by default).
    let idle_from = (
        cpu_secs(controller_pid, ticks),
        cpu_secs(std::process::id(), ticks),
    );
    std::thread::sleep(Duration::from_secs_f64(idle_secs));
    let idle_cpu = (cpu_secs(controller_pid, ticks) - idle_from.0) / idle_secs;
    let idle_hosts_cpu = (cpu_secs(std::process::id(), ticks) - idle_from.1) / idle_secs;

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
        let log = t.path().join("controller.log");
        timed.push((
            "all at once",
            timed_deploy(
                &c,
                &log,
                "1.0.0",
                n,
                &["--canary", "0", "--batch", "100%"],
                ticks,
            ),
        ));
        timed.push((
            "default strategy",
            timed_deploy(&c, &log, "2.0.0", n, &[], ticks),
        ));
    }
    let after_kib = rss_kib(controller_pid, "VmRSS:");
    let peak_kib = rss_kib(controller_pid, "VmHWM:");
    let own_kib = rss_kib(std::process::id(), "VmRSS:");

    println!(
        "agents:                          {n} (one process, own state dir and mTLS session each; {threads} runtime threads; state dirs in {})",
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
        "controller RSS, all connected:   {:.1} MiB  ({:.1} KiB per connected session)",
        connected_kib as f64 / 1024.0,
        (connected_kib.saturating_sub(idle_kib)) as f64 / n as f64
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
        "bench process RSS ({n} agents):  {:.1} MiB ({:.1} KiB per agent)",
        own_kib as f64 / 1024.0,
        own_kib as f64 / n as f64
    );
    shutdown.cancel();
    rt.shutdown_timeout(Duration::from_secs(5));
    kill_workers(agent_dir.path(), n);
    Ok(())
}
