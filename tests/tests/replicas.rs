//! Several controllers on one PostgreSQL store and one blob directory: any
//! replica serves any call, a change made on one reaches the sessions held by
//! the others, the rollout engine runs on one replica and another takes over
//! when it is killed, agents fail over, racing promotes do not stack, a log
//! query on either replica reaches the other's hosts, and a replica with
//! other keys or an older schema refuses to start. Needs the PostgreSQL server of
//! `scripts/with-postgres`; says skipped without one (CI requires it).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::web::Https;
use integration_tests::*;

const DB_ENV: &str = "DATABASE_URL=postgres://app@db/app\n";

/// Controllers sharing one database and one blob directory; the first made
/// the keys and the admin token, which the others got a copy of.
struct Replicas {
    database: String,
    controllers: Vec<Controller>,
}

impl Replicas {
    fn start(dir: &Path, n: usize) -> Option<Self> {
        let database = fresh_postgres_database()?;
        let blobs = dir.join("blobs");
        let flags = |db: &str| {
            vec![
                "--database".to_string(),
                db.to_string(),
                "--blobs".to_string(),
                blobs.display().to_string(),
            ]
        };
        let first_flags = flags(&database);
        let first_flags: Vec<&str> = first_flags.iter().map(String::as_str).collect();
        std::fs::create_dir_all(dir.join("r0")).unwrap();
        let first = Controller::start_with(&dir.join("r0"), &first_flags);
        let mut controllers = vec![first];
        for i in 1..n {
            let f = flags(&database);
            let f: Vec<&str> = f.iter().map(String::as_str).collect();
            let r = start_replica(&controllers[0], &dir.join(format!("r{i}")), &f, &[]);
            controllers.push(r);
        }
        Some(Self {
            database,
            controllers,
        })
    }

    /// The replica holding the rollouts lease, by its index.
    fn leader(&self) -> usize {
        eventually(Duration::from_secs(20), "a leader", || {
            let holder = psql(
                &self.database,
                "SELECT holder FROM leases WHERE name = 'rollouts'",
            );
            self.controllers.iter().position(|c| {
                c.pid()
                    .is_some_and(|pid| holder.contains(&format!("-{pid}-")))
            })
        })
    }
}

/// An agent enrolled through `primary`, listing every replica (`primary`
/// first).
fn agent(dir: &Path, r: &Replicas, primary: usize, host: &str, env: &str) -> Agent {
    let mut a = Agent::configured(dir, &r.controllers[primary], host, env, DB_ENV, true);
    let others: Vec<String> = (0..r.controllers.len())
        .filter(|i| *i != primary)
        .map(|i| format!("{:?}", r.controllers[i].url))
        .collect();
    let cfg = std::fs::read_to_string(&a.config).unwrap();
    let (first, rest) = cfg.split_once('\n').unwrap();
    std::fs::write(
        &a.config,
        format!("{first}\ncontrollers = [{}]\n{rest}", others.join(", ")),
    )
    .unwrap();
    a.spawn();
    a.wait_connected(&r.controllers[primary]);
    a
}

/// Which replica holds the host's session, from the agent's log.
fn connected_to(a: &Agent, r: &Replicas) -> Option<usize> {
    let log = a.log_text();
    let last = log
        .lines()
        .rev()
        .find(|l| l.contains("connected to controller"))?;
    r.controllers
        .iter()
        .position(|c| last.contains(&format!("127.0.0.1:{}", c.port)))
}

#[test]
fn three_replicas_serve_any_call_and_a_killed_leader_is_replaced() {
    let t = tempfile::tempdir().unwrap();
    let Some(mut r) = Replicas::start(t.path(), 3) else {
        return;
    };
    // One host on each replica: whichever leads holds one.
    let agents = [
        agent(t.path(), &r, 0, "pre-0", "preprod"),
        agent(t.path(), &r, 1, "pre-1", "preprod"),
        agent(t.path(), &r, 2, "pre-2", "preprod"),
    ];
    for (a, at) in agents.iter().zip([0, 1, 2]) {
        assert_eq!(
            connected_to(a, &r),
            Some(at),
            "{} on its first controller",
            a.host
        );
    }

    // Published on one replica, deployed through another, to hosts held by
    // all three: the change reaches every replica's sessions.
    publish(&r.controllers[0], t.path(), &ReleaseOpts::new("1.0.0"));
    let out = r.controllers[1].deploy_wait("1.0.0", "preprod").ok();
    for a in &agents {
        assert!(
            out.stdout.contains(&format!("{}: 1.0.0 healthy", a.host)),
            "{}",
            out.stdout
        );
    }
    for a in &agents {
        a.wait_serving("1.0.0");
    }
    // Every replica sees both hosts connected, wherever their session is.
    for c in &r.controllers {
        for a in &agents {
            let row = status_row(c, &a.host).expect("a status row");
            assert_eq!(
                row["connected"], true,
                "{} seen from {}: {row}",
                a.host, c.url
            );
        }
    }

    // Kill -9 the replica that runs the rollout engine, with the apps under
    // load: another replica takes the lease, the hosts it held reconnect
    // elsewhere, and the apps never notice.
    let leader = r.leader();
    let loads: Vec<_> = agents
        .iter()
        .map(|a| load::start(a.app_port, 2, 50, true))
        .collect();
    r.controllers[leader].kill();
    let killed_at = Instant::now();
    let survivor = (leader + 1) % 3;
    for a in &agents {
        eventually(
            Duration::from_secs(30),
            "the host on a live replica",
            || connected_to(a, &r).filter(|on| *on != leader),
        );
    }
    let moved = killed_at.elapsed();
    let new_leader = eventually(Duration::from_secs(30), "a new leader", || {
        let l = r.leader();
        (l != leader).then_some(l)
    });
    let took_over = killed_at.elapsed();
    for (load, a) in loads.into_iter().zip(&agents) {
        let stats = load.stop();
        assert!(stats.sent > 100, "{} requests", stats.sent);
        assert_eq!(
            stats.failed, 0,
            "{}: the app failed requests while a controller died: {:?}",
            a.host, stats.errors
        );
    }
    publish(
        &r.controllers[survivor],
        t.path(),
        &ReleaseOpts::new("2.0.0"),
    );
    let out = r.controllers[survivor].deploy_wait("2.0.0", "preprod").ok();
    for a in &agents {
        assert!(
            out.stdout.contains(&format!("{}: 2.0.0 healthy", a.host)),
            "{}",
            out.stdout
        );
    }
    for a in &agents {
        a.wait_serving("2.0.0");
    }
    eprintln!(
        "replicas: leader r{leader} killed; r{new_leader} leads after {:.1}s; its hosts connected elsewhere after {:.1}s",
        took_over.as_secs_f64(),
        moved.as_secs_f64()
    );
}

/// `slipctl logs` and the dashboard asked of either replica reach the hosts
/// whose sessions the other holds, through it: a tail, a search of one
/// host, a follow, and a host page's deploy steps.
#[test]
fn a_log_query_on_either_replica_reaches_the_hosts_the_other_holds() {
    let t = tempfile::tempdir().unwrap();
    let Some(r) = Replicas::start(t.path(), 2) else {
        return;
    };
    let agents = [
        agent(t.path(), &r, 0, "log-0", "preprod"),
        agent(t.path(), &r, 1, "log-1", "preprod"),
    ];
    publish(&r.controllers[0], t.path(), &ReleaseOpts::new("1.0.0"));
    r.controllers[0].deploy_wait("1.0.0", "preprod").ok();
    for (i, a) in agents.iter().enumerate() {
        a.wait_serving("1.0.0");
        assert_eq!(connected_to(a, &r), Some(i), "{} on r{i}", a.host);
        // Each app logs a request whose path holds the env file's value.
        http_get(a.app_port, &format!("/on-{i}/postgres://app@db/app"));
    }
    for c in &r.controllers {
        let out = eventually(Duration::from_secs(15), "both hosts' lines", || {
            let out = c.ctl(&["logs", "web", "--env", "preprod", "-n", "500"]);
            (out.stdout.contains("log-0 [web] GET /on-0/***")
                && out.stdout.contains("log-1 [web] GET /on-1/***"))
            .then_some(out)
        });
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert!(!out.stdout.contains("postgres://"), "{}", out.stdout);
    }
    // A search of one host the other replica holds.
    let out = r.controllers[0]
        .ctl(&[
            "logs", "web", "--env", "preprod", "--host", "log-1", "--grep", "GET /on-", "-n", "5",
        ])
        .ok();
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        ["log-1 [web] GET /on-1/***"]
    );

    // -f through r1 follows what both apps write from now on.
    let c = &r.controllers[1];
    let mut child = Command::new(bin("slipctl"))
        .args(["logs", "web", "--env", "preprod", "-f", "-n", "0"])
        .env("SLIPWAY_CONTROLLER", &c.url)
        .env("SLIPWAY_CA_CERT", c.ca_cert())
        .env("SLIPWAY_TOKEN", c.token("reader", &["viewer"]))
        .stdout(std::process::Stdio::piped())
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let rx = stdout_lines(&mut child);
    let want = ["log-0 [web] GET /followed", "log-1 [web] GET /followed"];
    let mut seen = Vec::new();
    eventually(Duration::from_secs(15), "the followed requests", || {
        for a in &agents {
            http_get(a.app_port, "/followed");
        }
        seen.extend(rx.try_iter());
        want.iter()
            .all(|w| seen.iter().any(|l| l == w))
            .then_some(())
    });
    assert!(!seen.iter().any(|l| l.contains("/on-")), "-n 0: {seen:?}");
    child.kill().unwrap();
    child.wait().unwrap();

    // The dashboard's page of a host the other replica holds shows the
    // last steps of its deploy log.
    let c = &r.controllers[0];
    let web = Https::new(c);
    let session = web.sign_in(&c.token("looker", &["viewer"])).unwrap();
    let page = eventually(Duration::from_secs(15), "log-1's deploy steps", || {
        let page = web.get("/t/default/hosts/log-1", std::slice::from_ref(&session));
        page.body.contains("deploy healthy 1.0.0").then_some(page)
    });
    assert!(page.body.contains("fetch ok 1.0.0"), "{}", page.body);
}

#[test]
fn two_promotes_racing_on_two_replicas_one_wins_and_nothing_is_doubled() {
    let t = tempfile::tempdir().unwrap();
    let Some(r) = Replicas::start(t.path(), 2) else {
        return;
    };
    let _pre = agent(t.path(), &r, 0, "pre-1", "preprod");
    let _prod = agent(t.path(), &r, 1, "prod-1", "prod");
    publish(&r.controllers[0], t.path(), &ReleaseOpts::new("1.0.0"));
    r.controllers[0].deploy_wait("1.0.0", "preprod").ok();
    let before = psql(
        &r.database,
        "SELECT count(*) FROM desired_history WHERE environment = 'prod'",
    );
    let promotes: Vec<_> = r
        .controllers
        .iter()
        .map(|c| {
            let (url, token, ca) = (c.url.clone(), c.admin_token.clone(), c.ca_cert());
            std::thread::spawn(move || {
                Command::new(bin("slipctl"))
                    .args(["promote", "web", "--from", "preprod", "--to", "prod"])
                    .env("SLIPWAY_CONTROLLER", &url)
                    .env("SLIPWAY_TOKEN", &token)
                    .env("SLIPWAY_CA_CERT", &ca)
                    .output()
                    .expect("slipctl")
            })
        })
        .collect();
    let outs: Vec<_> = promotes.into_iter().map(|p| p.join().unwrap()).collect();
    let won = outs.iter().filter(|o| o.status.success()).count();
    assert_eq!(
        won,
        1,
        "{:?}",
        outs.iter()
            .map(|o| format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ))
            .collect::<Vec<_>>()
    );
    let lost = outs.iter().find(|o| !o.status.success()).unwrap();
    let why = String::from_utf8_lossy(&lost.stderr);
    assert!(
        why.contains("changed while this change was decided")
            || why.contains("is already desired in prod"),
        "{why}"
    );
    assert_eq!(
        psql(
            &r.database,
            "SELECT count(*) FROM desired_history WHERE environment = 'prod'"
        )
        .parse::<u32>()
        .unwrap(),
        before.parse::<u32>().unwrap() + 1,
        "one promote written"
    );
    assert_eq!(
        psql(
            &r.database,
            "SELECT count(*) FROM audit WHERE action = 'promote' AND outcome = 'ok'"
        ),
        "1"
    );
    assert_eq!(
        psql(
            &r.database,
            "SELECT count(*) FROM rollouts WHERE environment = 'prod'"
        ),
        "1",
        "one rollout to prod"
    );
}

/// Starts another controller on `r`'s database with a data dir of its own
/// (`dir`: its own keys): it must refuse to start; what it said.
fn refused_start(r: &Replicas, dir: &Path) -> String {
    let out = Command::new(bin("slipway-controller"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--http-listen", "off", "--database", &r.database])
        .arg("--data-dir")
        .arg(dir)
        .output()
        .expect("run controller");
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_replica_with_other_keys_refuses_to_start_and_says_why() {
    let t = tempfile::tempdir().unwrap();
    let Some(r) = Replicas::start(t.path(), 1) else {
        return;
    };
    // Its own fresh pki: another CA and another directive key.
    let err = refused_start(&r, &t.path().join("stranger"));
    assert!(
        err.contains("but the store's controllers use") && err.contains("the same DATA_DIR/pki"),
        "{err}"
    );
}

/// A replica of an older release, started on a store a newer one migrated
/// further, refuses to start and says why, before touching the store.
#[test]
fn a_replica_of_an_older_release_refuses_a_newer_schema_and_says_why() {
    let t = tempfile::tempdir().unwrap();
    let Some(r) = Replicas::start(t.path(), 1) else {
        return;
    };
    psql(
        &r.database,
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (99999, 'from a newer release', TRUE, '\\x00', 0)",
    );
    let err = refused_start(&r, &t.path().join("older"));
    assert!(
        err.contains("the store's schema is at version 99999, newer than this controller's"),
        "{err}"
    );
    // The running replica is untouched and still answers.
    r.controllers[0].ctl(&["status"]).ok();
}
