//! `slipway-appsbench`: the day-2 paths of issue 13 timed with real binaries
//! (a controller and one `slipway-agent` process per host, mTLS, this one
//! machine):
//! - a new host: from `slipway-agent join URL TOKEN` on a host with the agent
//!   installed to that host running its environment's release healthy (the
//!   app is declared environment-wide and has a desired release; the
//!   release's health hold is 1 s), `SLIPWAY_BENCH_ROUNDS` times;
//! - a new app on `SLIPWAY_BENCH_HOSTS` hosts (default 20): `slipctl apps add`
//!   (which waits) until every host runs the environment's release healthy,
//!   then `slipctl apps remove` until every host stopped it.
//!
//! The agents run with `--no-start` joins and are started by this process:
//! PID 1 here is not systemd (the package test starts the unit on a real one).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::{Agent, Controller, CtlOutput, bin, eventually};

/// A release whose one process is a worker (healthy when it stays up 1 s).
fn worker_release(dir: &Path, version: &str) -> PathBuf {
    let rel = dir.join(format!("release-{version}"));
    std::fs::create_dir_all(&rel).expect("release dir");
    std::fs::write(
        rel.join("slipway.toml"),
        "[processes.worker]\ncommand = [\"sh\", \"-c\", \"exec sleep 100000\"]\nhealth = { min_healthy_secs = 1 }\n",
    )
    .expect("spec");
    std::fs::write(rel.join("VERSION"), version).expect("version file");
    rel
}

/// `hosts add` + `slipway-agent join --no-start`: the host's config and
/// state dir, ready to start.
fn join(c: &Controller, dir: &Path, host: &str) -> Agent {
    let added = c
        .ctl(&["hosts", "add", host, "--env", "preprod", "-o", "json"])
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

/// Hosts whose `web` runs `version` healthy, per `slipctl apps show`.
fn healthy_hosts(c: &Controller, version: &str) -> usize {
    let out = c.ctl(&["apps", "show", "web", "--env", "preprod", "-o", "json"]);
    if out.code != 0 {
        return 0;
    }
    out.json()["hosts"]
        .as_array()
        .map(|hosts| {
            hosts
                .iter()
                .filter(|h| h["running_version"] == version && h["health"] == "healthy")
                .count()
        })
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let number = |name: &str, default: usize| -> usize {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let hosts = number("SLIPWAY_BENCH_HOSTS", 20);
    let rounds = number("SLIPWAY_BENCH_ROUNDS", 3).max(1);
    let t = tempfile::tempdir()?;
    let c = Controller::start(t.path());
    let rel = worker_release(t.path(), "1.0.0");
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

    // A new app on N hosts: the hosts joined and connected, running nothing.
    let mut agents: Vec<Agent> = (0..hosts)
        .map(|i| join(&c, t.path(), &format!("host-{i:02}")))
        .collect();
    for a in &mut agents {
        a.spawn();
    }
    eventually(Duration::from_secs(120), "every host connected", || {
        let list = c.ctl(&["hosts", "-o", "json"]).ok().json();
        let connected = list
            .as_array()?
            .iter()
            .filter(|h| h["connected"] == true)
            .count();
        (connected == hosts).then_some(())
    });
    let start = Instant::now();
    let out = c.ctl(&[
        "apps",
        "add",
        "web",
        "--env",
        "preprod",
        "--stop-grace",
        "1",
    ]);
    let add_secs = start.elapsed().as_secs_f64();
    assert_eq!(out.code, 0, "apps add: {}{}", out.stdout, out.stderr);
    let healthy = healthy_hosts(&c, "1.0.0");
    println!(
        "apps add web on {hosts} hosts: {add_secs:.2} s until every host ran 1.0.0 healthy ({healthy} healthy; 1 s health hold)"
    );
    let start = Instant::now();
    let out = c.ctl(&["apps", "remove", "web", "--env", "preprod"]);
    let remove_secs = start.elapsed().as_secs_f64();
    assert_eq!(out.code, 0, "apps remove: {}{}", out.stdout, out.stderr);
    println!(
        "apps remove web on {hosts} hosts: {remove_secs:.2} s until every host stopped it and said so"
    );
    drop(agents);

    // A new host: the app is declared environment-wide and has a release.
    c.ctl(&[
        "apps",
        "add",
        "web",
        "--env",
        "preprod",
        "--stop-grace",
        "1",
    ])
    .ok();
    let mut secs = Vec::new();
    for round in 0..rounds {
        let host = format!("new-{round}");
        let start = Instant::now();
        let mut agent = join(&c, t.path(), &host);
        let joined = start.elapsed().as_secs_f64();
        agent.spawn();
        eventually(Duration::from_secs(120), &format!("{host} healthy"), || {
            let out = c.ctl(&["apps", "show", "web", "--env", "preprod", "-o", "json"]);
            let v = out.json();
            v["hosts"]
                .as_array()?
                .iter()
                .any(|h| {
                    h["host"] == host.as_str()
                        && h["running_version"] == "1.0.0"
                        && h["health"] == "healthy"
                })
                .then_some(())
        });
        let total = start.elapsed().as_secs_f64();
        println!(
            "new host {host}: join {joined:.2} s, join -> running 1.0.0 healthy {total:.2} s (1 s health hold)"
        );
        secs.push(total);
    }
    println!(
        "new host, median of {rounds}: {:.2} s from `slipway-agent join` to healthy",
        median(secs)
    );
    Ok(())
}
