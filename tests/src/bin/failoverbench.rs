//! Failover benchmark (not a test; issue 15): three controllers on one
//! PostgreSQL database (`SLIPWAY_TEST_POSTGRES`, as `scripts/with-postgres`
//! provides) and one blob directory, 50 real agent processes spread over
//! them (each listing all three), each running the sample app behind the
//! agent's proxy (`activation = "proxy"`) under a steady load of requests.
//! A release rolls out in steps (canary 1, batches of 10%, 2 s pauses); once
//! the canary and a batch are judged, the replica running the rollout engine
//! is killed with SIGKILL. Printed, per round: seconds until the rollout
//! moves again (another host judged, seen from a live replica), seconds until
//! every host the killed replica held is connected to another one, and the
//! requests the apps failed meanwhile. Then the killed replica is started
//! again for the next round. `SLIPWAY_BENCH_AGENTS` (50) and
//! `SLIPWAY_BENCH_ROUNDS` (3) change the sizes. Figures are printed, never
//! asserted.

use std::path::Path;
use std::time::{Duration, Instant};

use integration_tests::*;

const DB_ENV: &str = "DATABASE_URL=postgres://app@db/app\n";

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The replica holding the rollouts lease, by index.
fn leader(database: &str, controllers: &[Controller]) -> usize {
    eventually(Duration::from_secs(30), "a leader", || {
        let holder = psql(
            database,
            "SELECT holder FROM leases WHERE name = 'rollouts'",
        );
        controllers.iter().position(|c| {
            c.pid()
                .is_some_and(|pid| holder.contains(&format!("-{pid}-")))
        })
    })
}

/// Which replica holds the host's session now, from the agent's log.
fn connected_to(a: &Agent, controllers: &[Controller]) -> Option<usize> {
    let log = a.log_text();
    let last = log
        .lines()
        .rev()
        .find(|l| l.contains("connected to controller"))?;
    controllers
        .iter()
        .position(|c| last.contains(&format!("127.0.0.1:{}", c.port)))
}

/// Hosts of the rollout to `version` judged healthy, seen from `c`.
fn judged(c: &Controller, version: &str) -> Option<usize> {
    let r = c
        .ctl(&["rollout", "status", "web", "--env", "preprod", "--json"])
        .json();
    if r["to_version"] != version {
        return None;
    }
    Some(
        r["hosts"]
            .as_array()?
            .iter()
            .filter(|h| h["outcome"] == "healthy")
            .count(),
    )
}

fn main() -> anyhow::Result<()> {
    let n = env_number("SLIPWAY_BENCH_AGENTS", 50);
    let rounds = env_number("SLIPWAY_BENCH_ROUNDS", 3);
    let database = fresh_postgres_database().ok_or_else(|| {
        anyhow::anyhow!("needs SLIPWAY_TEST_POSTGRES: run under scripts/with-postgres")
    })?;
    let t = tempfile::tempdir()?;
    let blobs = t.path().join("blobs");
    let flags = [
        "--database".to_string(),
        database.clone(),
        "--blobs".to_string(),
        blobs.display().to_string(),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    std::fs::create_dir_all(t.path().join("r0"))?;
    let mut controllers = vec![Controller::start_with(&t.path().join("r0"), &flags)];
    for i in 1..3 {
        let r = start_replica(
            &controllers[0],
            &t.path().join(format!("r{i}")),
            &flags,
            &[],
        );
        controllers.push(r);
    }
    let agents: Vec<Agent> = (0..n)
        .map(|i| start_agent(t.path(), &controllers, i % 3, &format!("pre-{i:02}")))
        .collect();
    println!("{n} agents connected, spread over 3 controllers");

    let mut rows = Vec::new();
    // Round 0 puts the first release everywhere; rounds 1..=N each kill.
    for round in 0..=rounds {
        let version = format!("{}.0.0", round + 1);
        publish(&controllers[0], t.path(), &ReleaseOpts::new(&version));
        if round == 0 {
            // The first release everywhere at once: the rounds roll out over it.
            controllers[0]
                .ctl(&[
                    "deploy",
                    "web",
                    &version,
                    "--env",
                    "preprod",
                    "--canary",
                    "0",
                    "--batch",
                    "100%",
                    "--wait",
                    "--timeout",
                    "300",
                ])
                .ok();
            for a in &agents {
                a.wait_serving(&version);
            }
            continue;
        }
        let loads: Vec<_> = agents
            .iter()
            .map(|a| load::start(a.app_port, 1, 10, true))
            .collect();
        let live = leader(&database, &controllers);
        let asker = (live + 1) % 3;
        controllers[asker]
            .ctl(&[
                "deploy", "web", &version, "--env", "preprod", "--canary", "1", "--batch", "10%",
                "--pause", "2",
            ])
            .ok();
        // Kill the engine's replica once the canary and a batch are judged.
        let step = n / 10 + 1;
        let before = eventually(Duration::from_secs(300), "canary and a batch", || {
            judged(&controllers[asker], &version).filter(|j| *j >= step)
        });
        let killed = leader(&database, &controllers);
        let held: Vec<usize> = (0..n)
            .filter(|i| connected_to(&agents[*i], &controllers) == Some(killed))
            .collect();
        controllers[killed].kill();
        let at = Instant::now();
        let survivor = (killed + 1) % 3;
        let mut moved = None;
        let mut reconnected = None;
        let mut judged_at_kill = before;
        while moved.is_none() || reconnected.is_none() {
            if at.elapsed() > Duration::from_secs(120) {
                break;
            }
            let now = judged(&controllers[survivor], &version).unwrap_or(0);
            if moved.is_none() {
                // Judged before the kill but not yet seen: not a move.
                if at.elapsed() < Duration::from_millis(300) {
                    judged_at_kill = judged_at_kill.max(now);
                } else if now > judged_at_kill {
                    moved = Some(at.elapsed());
                }
            }
            if reconnected.is_none()
                && held
                    .iter()
                    .all(|i| connected_to(&agents[*i], &controllers).is_some_and(|c| c != killed))
            {
                reconnected = Some(at.elapsed());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let done = eventually(Duration::from_secs(300), "the rollout to end", || {
            let r = controllers[survivor]
                .ctl(&["rollout", "status", "web", "--env", "preprod", "--json"])
                .json();
            (r["to_version"] == version.as_str() && r["state"] != "running")
                .then(|| r["state"].as_str().unwrap_or("?").to_string())
        });
        let mut sent = 0;
        let mut failed = 0;
        let mut errors = Vec::new();
        for l in loads {
            let s = l.stop();
            sent += s.sent;
            failed += s.failed;
            errors.extend(s.errors.into_iter().take(2));
        }
        let new_leader = leader(&database, &controllers);
        let secs = |d: Option<Duration>| {
            d.map(|d| format!("{:.1} s", d.as_secs_f64()))
                .unwrap_or_else(|| "not within 120 s".into())
        };
        println!(
            "round {round}: leader r{killed} killed after {before} of {n} hosts judged; rollout moved again after {}; its {} hosts connected elsewhere after {}; r{new_leader} leads; rollout {done}; app requests failed {failed} of {sent}",
            secs(moved),
            held.len(),
            secs(reconnected),
        );
        for e in errors.iter().take(5) {
            println!("  failed request: {e}");
        }
        rows.push((moved, reconnected, held.len(), failed, sent));
        controllers[killed].restart();
        std::thread::sleep(Duration::from_secs(2));
    }
    println!(
        "\n| round | rollout moves again | killed replica's hosts connected elsewhere | app requests failed |"
    );
    println!("|---|---|---|---|");
    for (i, (moved, reconnected, held, failed, sent)) in rows.iter().enumerate() {
        let secs = |d: &Option<Duration>| {
            d.map(|d| format!("{:.1} s", d.as_secs_f64()))
                .unwrap_or_else(|| "—".into())
        };
        println!(
            "| {} | {} | {} ({held} hosts) | {failed} of {sent} |",
            i + 1,
            secs(moved),
            secs(reconnected)
        );
    }
    // Dropping the agents stops them and their apps.
    Ok(())
}

/// An agent enrolled through `primary`, listing every controller, its app
/// behind the agent's proxy.
fn start_agent(dir: &Path, controllers: &[Controller], primary: usize, host: &str) -> Agent {
    let mut a = Agent::configured(dir, &controllers[primary], host, "preprod", DB_ENV, true);
    a.append_config("activation = \"proxy\"\n");
    let others: Vec<String> = (0..controllers.len())
        .filter(|i| *i != primary)
        .map(|i| format!("{:?}", controllers[i].url))
        .collect();
    let cfg = std::fs::read_to_string(&a.config).expect("agent config");
    let (first, rest) = cfg.split_once('\n').expect("config lines");
    std::fs::write(
        &a.config,
        format!("{first}\ncontrollers = [{}]\n{rest}", others.join(", ")),
    )
    .expect("write agent config");
    a.spawn();
    a.wait_connected(&controllers[primary]);
    a
}
