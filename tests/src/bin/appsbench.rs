//! `slipway-appsbench`: the day-2 paths of issue 13 timed with real binaries
//! (a controller and one `slipway-agent` process per host, mTLS, this one
//! machine):
//! - a new host: from `slipway-agent join URL TOKEN` on a host with the agent
//!   installed to that host running its environment's release healthy (the
//!   app is declared environment-wide and has a desired release; the
//!   release's health hold is 1 s), `SLIPWAY_BENCH_ROUNDS` times;
//! - a new app on `SLIPWAY_BENCH_HOSTS` hosts (default 20): `slipctl apps add`
//!   (which waits) until every host runs the environment's release healthy,
//!   `slipctl logs -n 1000` across them (each worker wrote 2,000 lines), then
//!   `slipctl apps remove` until every host stopped it.
//!
//! The agents run with `--no-start` joins and are started by this process:
//! PID 1 here is not systemd (the package test starts the unit on a real one).

use std::time::{Duration, Instant};

use integration_tests::{Controller, eventually, join_host, worker_fleet};

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
    // A new app on N hosts: the hosts joined and connected, running nothing.
    let agents = worker_fleet(&c, t.path(), hosts, 2000);
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
    // Every host's output through its session: 1,000 lines from each,
    // side by side with `tail -n 1000` of the same files on this machine
    // (what an operator with a shell on every host reads, minus the SSH).
    let files: Vec<std::path::PathBuf> = agents
        .iter()
        .map(|a| a.state_dir.join("apps/web/logs/worker.log"))
        .collect();
    let mut logs = Vec::new();
    for _ in 0..rounds {
        let start = Instant::now();
        let out = c.ctl(&["logs", "web", "--env", "preprod", "-n", "1000"]);
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(out.code, 0, "logs: {}", out.stderr);
        let start = Instant::now();
        let mut local = 0;
        for f in &files {
            let tail = std::process::Command::new("tail")
                .args(["-n", "1000"])
                .arg(f)
                .output()?;
            local += tail.stdout.split(|b| *b == b'\n').count() - 1;
        }
        let tail_secs = start.elapsed().as_secs_f64();
        logs.push((secs, out.stdout.lines().count(), tail_secs, local));
    }
    println!(
        "slipctl logs web on {hosts} hosts, -n 1000: {} ({} lines); `tail -n 1000` of the {hosts} files here: {} ({} lines); ratio {}",
        logs.iter()
            .map(|l| format!("{:.3} s", l.0))
            .collect::<Vec<_>>()
            .join(" / "),
        logs[0].1,
        logs.iter()
            .map(|l| format!("{:.3} s", l.2))
            .collect::<Vec<_>>()
            .join(" / "),
        logs[0].3,
        logs.iter()
            .map(|l| format!("{:.1}x", l.0 / l.2))
            .collect::<Vec<_>>()
            .join(" / "),
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
        let mut agent = join_host(&c, t.path(), &host, "preprod");
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
