//! Cutover benchmark (not a test): for each activation mode side by side in
//! one run — stop-start (the old default), the agent's proxy in front of the
//! unmodified sample app, and a socket the agent holds for an app that takes
//! it over `LISTEN_FDS` — deploys 20 releases back to back (2 of them fail
//! their health check and roll back) under continuous HTTP load (4 clients
//! at 100 req/s each: 2 keep their connection alive, 2 open one per
//! request), and prints requests sent / failed and how many a failed release
//! answered. Then the proxy's added latency (p50/p99 through the proxy vs
//! straight to the instance's private port, rounds alternated), and what an
//! agent restart (SIGKILL, start again) costs each mode under the same load.
//! Figures are printed, never asserted. `SLIPWAY_BENCH_DEPLOYS` changes 20.

use std::time::{Duration, Instant};

use integration_tests::cutover::{Behaviour, Mode, Rig};
use integration_tests::{eventually, http_get, load};

const WAIT: Duration = Duration::from_secs(60);

fn start_load(port: u16) -> (load::Load, load::Load) {
    (
        load::start(port, 2, 100, true),
        load::start(port, 2, 100, false),
    )
}

fn stop_load(l: (load::Load, load::Load)) -> load::Stats {
    let mut a = l.0.stop();
    let b = l.1.stop();
    a.sent += b.sent;
    a.failed += b.failed;
    for (k, v) in b.bodies {
        *a.bodies.entry(k).or_default() += v;
    }
    a.errors.extend(b.errors);
    a.latencies.extend(b.latencies);
    a
}

struct Row {
    mode: Mode,
    deploys: usize,
    rolled_back: usize,
    stats: load::Stats,
    by_failed: u64,
    secs: f64,
    restart_failed: u64,
    restart_sent: u64,
    dark_ms: f64,
}

fn run_mode(mode: Mode, deploys: usize) -> Row {
    let dir = tempfile::tempdir().expect("temp dir");
    let rig = Rig::start(dir.path(), mode, "drain_timeout_secs = 30\n");
    let failing = |i: usize| i == deploys / 3 || i == 2 * deploys / 3;
    let version = |i: usize| format!("1.0.{i}");
    for i in 0..=deploys {
        let b = if i > 0 && failing(i) {
            Behaviour::Failing
        } else {
            Behaviour::Good
        };
        rig.publish(&version(i), b);
    }
    rig.deploy(&version(0)).ok();
    let first = rig.body_of(&version(0));
    eventually(WAIT, "the first release to serve", || {
        (rig.says().as_deref() == Some(first.as_str())).then_some(())
    });
    let clients = start_load(rig.agent.app_port);
    let t0 = Instant::now();
    let mut rolled_back = 0;
    for i in 1..=deploys {
        let out = rig.deploy(&version(i));
        if failing(i) {
            assert_ne!(out.code, 0, "{} should fail", version(i));
            rolled_back += 1;
        } else {
            assert_eq!(out.code, 0, "{}: {}{}", version(i), out.stdout, out.stderr);
        }
    }
    let last = rig.body_of(&version(deploys));
    eventually(WAIT, "the last release to serve", || {
        (rig.says().as_deref() == Some(last.as_str())).then_some(())
    });
    let secs = t0.elapsed().as_secs_f64();
    let stats = stop_load(clients);
    let by_failed = (1..=deploys)
        .filter(|i| failing(*i))
        .map(|i| {
            stats
                .bodies
                .get(&rig.body_of(&version(i)))
                .copied()
                .unwrap_or(0)
        })
        .sum();
    // An agent restart under the same load.
    let mut rig = rig;
    let clients = start_load(rig.agent.app_port);
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    rig.agent.kill();
    rig.agent.spawn();
    // The last moment the public port did not answer.
    let mut dark = Duration::ZERO;
    loop {
        let ok = http_get(rig.agent.app_port, "/").is_some_and(|(s, _)| s == 200);
        if !ok {
            dark = t.elapsed();
        } else if t.elapsed() > Duration::from_secs(3)
            || (dark.is_zero() && t.elapsed() > Duration::from_millis(500)) && ok
        {
            break;
        }
        assert!(
            t.elapsed() < WAIT,
            "the app answers again after the agent restart"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(500));
    let restart = stop_load(clients);
    Row {
        mode,
        deploys,
        rolled_back,
        stats,
        by_failed,
        secs,
        restart_failed: restart.failed,
        restart_sent: restart.sent,
        dark_ms: dark.as_secs_f64() * 1000.0,
    }
}

/// p50/p99 of sequential GETs for `each` through the proxy and straight to the
/// instance, alternating rounds, with a fresh connection per request and
/// with one kept alive (the instance itself closes every connection).
fn proxy_latency(rounds: usize, each: Duration) {
    let dir = tempfile::tempdir().expect("temp dir");
    let rig = Rig::start(dir.path(), Mode::Proxy, "");
    rig.publish("1.0.0", Behaviour::Good);
    rig.deploy("1.0.0").ok();
    rig.agent.wait_serving("1.0.0");
    let route: serde_json::Value = serde_json::from_slice(
        &std::fs::read(rig.agent.app_dir().join("run/proxy.route")).expect("route file"),
    )
    .expect("route json");
    let private = route["port"].as_u64().expect("port") as u16;
    let public = rig.agent.app_port;
    let measure = |port: u16, keep: bool| {
        // One client, as fast as it goes, for n requests.
        let l = load::start(port, 1, 100_000, keep);
        let t = Instant::now();
        while t.elapsed() < each {
            std::thread::sleep(Duration::from_millis(50));
        }
        l.stop()
    };
    let mut through = load::Stats::default();
    let mut through_ka = load::Stats::default();
    let mut direct = load::Stats::default();
    for _ in 0..rounds {
        direct.latencies.extend(measure(private, false).latencies);
        through.latencies.extend(measure(public, false).latencies);
        through_ka.latencies.extend(measure(public, true).latencies);
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!();
    println!(
        "proxy latency ({rounds} alternated rounds; requests: direct {}, proxy {}, proxy keep-alive {})",
        direct.latencies.len(),
        through.latencies.len(),
        through_ka.latencies.len()
    );
    println!("| path | p50 | p99 |");
    println!("|---|---|---|");
    for (name, s) in [
        ("straight to the instance (new connection each)", &direct),
        ("through the proxy (new connection each)", &through),
        (
            "through the proxy (client connection kept alive)",
            &through_ka,
        ),
    ] {
        println!(
            "| {name} | {:.3} ms | {:.3} ms |",
            ms(s.quantile(0.5)),
            ms(s.quantile(0.99))
        );
    }
    println!(
        "added by the proxy (new connection each): p50 {:+.3} ms, p99 {:+.3} ms",
        ms(through.quantile(0.5)) - ms(direct.quantile(0.5)),
        ms(through.quantile(0.99)) - ms(direct.quantile(0.99))
    );
}

fn main() {
    let deploys: usize = std::env::var("SLIPWAY_BENCH_DEPLOYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut rows = Vec::new();
    for mode in [Mode::StopStart, Mode::Proxy, Mode::Socket] {
        eprintln!("cutoverbench: {} …", mode.name());
        rows.push(run_mode(mode, deploys));
    }
    println!(
        "| activation | deploys (rolled back) | requests sent | failed | answered by a failed release | wall | agent restart: failed / sent, dark |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} ({}) | {} | {} ({:.2}%) | {} | {:.1} s | {} / {}, {:.0} ms |",
            r.mode.name(),
            r.deploys,
            r.rolled_back,
            r.stats.sent,
            r.stats.failed,
            100.0 * r.stats.failed as f64 / r.stats.sent.max(1) as f64,
            r.by_failed,
            r.secs,
            r.restart_failed,
            r.restart_sent,
            r.dark_ms,
        );
    }
    for r in &rows {
        if !r.stats.errors.is_empty() {
            println!(
                "{}: first failures: {:?}",
                r.mode.name(),
                &r.stats.errors[..r.stats.errors.len().min(3)]
            );
        }
    }
    proxy_latency(5, Duration::from_secs(2));
}
