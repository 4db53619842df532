//! Fleet benchmark (not a test): one real controller, N agents (default 200,
//! `SLIPWAY_BENCH_AGENTS` to change) running in this one process through the
//! agent library, each with its own state dir, enrolled identity and mTLS
//! session. A small artifact (a worker that stays up) is deployed to all of
//! them, first all at once, then with the default canary + 25% batches.
//! Prints the time from `deploy` until every host reports healthy, and the
//! controller's resident memory per connected agent. Figures are printed,
//! never asserted.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use integration_tests::{Controller, eventually};
use tokio_util::sync::CancellationToken;

use integration_tests::proc_kib as rss_kib;

/// A release whose one process is a worker (healthy when it stays up 1 s).
fn small_release(dir: &Path, version: &str) -> PathBuf {
    let rel = dir.join(format!("bench-release-{version}"));
    std::fs::create_dir_all(&rel).expect("release dir");
    std::fs::write(
        rel.join("slipway.toml"),
        "[processes.worker]\ncommand = [\"sh\", \"-c\", \"exec sleep 100000\"]\nhealth = { min_healthy_secs = 1 }\n",
    )
    .expect("spec");
    std::fs::write(rel.join("VERSION"), version).expect("version file");
    rel
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

/// Deploys `version` with `strategy` flags and returns the seconds until
/// every host reports it healthy. Prints the store queries the controller ran
/// per admitted step (from one admission to the next, the last one to the
/// rollout's success: sessions recomputing, reports, the engine, status polls).
fn timed_deploy(c: &Controller, log: &Path, version: &str, n: usize, strategy: &[&str]) -> f64 {
    let mut args = vec!["deploy", "web", version, "--env", "preprod"];
    args.extend_from_slice(strategy);
    let log_from = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0) as usize;
    let start = Instant::now();
    c.ctl(&args).ok();
    // Until every host is healthy, or the rollout ends otherwise (then its
    // state and reason are printed: a figure, not a panic).
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
            let r = c
                .ctl(&["rollout", "status", "web", "--env", "preprod", "--json"])
                .ok()
                .json();
            (r["to_version"] == version && !["running", "paused"].contains(&r["state"].as_str()?))
                .then(|| Some(format!("{} {}: {}", r["state"], r["reason"], s["apps"][0])))
        },
    );
    if let Some(why) = ended {
        println!("deploy {version}: the rollout ended without every host healthy: {why}");
    }
    let secs = start.elapsed().as_secs_f64();
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
    let per_step: Vec<u64> = marks.windows(2).map(|w| w[1] - w[0]).collect();
    if !per_step.is_empty() {
        println!(
            "  store queries per admitted step: {:.0} (mean of {:?})",
            per_step.iter().sum::<u64>() as f64 / per_step.len() as f64,
            per_step
        );
    }
    secs
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("SLIPWAY_BENCH_AGENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let t = tempfile::tempdir()?;
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
        .map(|i| agent_config(t.path(), &c, &format!("bench-{i:03}")))
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let idle_kib = rss_kib(controller_pid, "VmRSS:");

    let rt = tokio::runtime::Builder::new_multi_thread()
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
    eventually(Duration::from_secs(300), "every agent connected", || {
        let hosts = c.ctl(&["hosts", "--json"]).ok().json();
        let connected = hosts
            .as_array()?
            .iter()
            .filter(|h| h["connected"] == true)
            .count();
        (connected == n).then_some(())
    });
    let connect_secs = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    let connected_kib = rss_kib(controller_pid, "VmRSS:");

    for version in ["1.0.0", "2.0.0"] {
        let rel = small_release(t.path(), version);
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
    timed_deploy(&c, &log, "1.0.0", n, &["--canary", "0", "--batch", "100%"]);
    timed_deploy(&c, &log, "2.0.0", n, &[]);
    let after_kib = rss_kib(controller_pid, "VmRSS:");
    let peak_kib = rss_kib(controller_pid, "VmHWM:");
    let own_kib = rss_kib(std::process::id(), "VmRSS:");

    println!(
        "agents:                          {n} (one process, own state dir and mTLS session each)"
    );
    println!("enroll + connect all:            {connect_secs:.1} s");
    println!(
        "controller RSS idle:             {:.1} MiB",
        idle_kib as f64 / 1024.0
    );
    println!(
        "controller RSS, all connected:   {:.1} MiB  ({:.1} KiB per connected agent)",
        connected_kib as f64 / 1024.0,
        (connected_kib.saturating_sub(idle_kib)) as f64 / n as f64
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
    kill_workers(t.path(), n);
    Ok(())
}
