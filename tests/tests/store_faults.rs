//! The PostgreSQL store going away under a running controller, and not
//! being there at its start, through a TCP proxy of the test's own (the
//! server other tests share stays up). Says skipped without PostgreSQL.

use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::tcp_proxy::TcpProxy;
use integration_tests::*;

const DB_ENV: &str = "DATABASE_URL=postgres://app@db/app\n";

/// A new database, and its URL through a proxy that can cut it off.
fn database_behind_a_proxy() -> Option<(TcpProxy, String)> {
    let url = fresh_postgres_database()?;
    let (scheme_user, rest) = url.rsplit_once('@').expect("user@host:port/db");
    let (addr, db) = rest.split_once('/').expect("host:port/db");
    let proxy = TcpProxy::start(addr);
    let via = format!("{scheme_user}@127.0.0.1:{}/{db}", proxy.port);
    Some((proxy, via))
}

#[test]
fn a_store_that_goes_away_fails_calls_cleanly_and_everything_resumes_when_it_returns() {
    let t = tempfile::tempdir().unwrap();
    let Some((proxy, database)) = database_behind_a_proxy() else {
        return;
    };
    let c = Controller::start_with(t.path(), &["--database", &database]);
    let agent = Agent::start(t.path(), &c, "pre-1", "preprod", DB_ENV);
    publish(&c, t.path(), &ReleaseOpts::new("1.0.0"));
    c.deploy_wait("1.0.0", "preprod").ok();
    agent.wait_serving("1.0.0");
    let sessions_before = agent.log_text().matches("connected to controller").count();

    proxy.cut();
    let cut_at = Instant::now();
    let out = c.ctl(&["status"]);
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(out.stderr.contains("store unavailable"), "{}", out.stderr);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    let out = c.ctl(&["deploy", "web", "1.0.0", "--env", "preprod"]);
    assert!(out.stderr.contains("store unavailable"), "{}", out.stderr);
    // Cut off from the store, the controller stops leading rollouts within
    // its lease, and the app never notices.
    let log = t.path().join("controller.log");
    eventually(
        Duration::from_secs(20),
        "the controller to stop leading",
        || {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|l| l.contains("stopped leading rollouts"))
        },
    );
    for _ in 0..20 {
        assert_eq!(
            agent.app_says().as_deref(),
            Some("sample-app 1.0.0"),
            "the app keeps serving"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let down_for = cut_at.elapsed();

    proxy.restore();
    eventually(Duration::from_secs(30), "status to answer again", || {
        (c.ctl(&["status"]).code == 0).then_some(())
    });
    publish(&c, t.path(), &ReleaseOpts::new("2.0.0"));
    let out = c.deploy_wait("2.0.0", "preprod");
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    agent.wait_serving("2.0.0");
    assert_eq!(
        agent.log_text().matches("connected to controller").count(),
        sessions_before,
        "the host's session stayed up through the {:.0}s without a store",
        down_for.as_secs_f64()
    );
}

#[test]
fn a_controller_whose_store_is_unreachable_at_start_says_so_and_exits() {
    let t = tempfile::tempdir().unwrap();
    let Some((proxy, database)) = database_behind_a_proxy() else {
        return;
    };
    proxy.cut();
    let mut child = Command::new(bin("slipway-controller"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--http-listen", "off", "--database", &database])
        .arg("--data-dir")
        .arg(t.path().join("controller"))
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start controller");
    let status = eventually(Duration::from_secs(60), "the controller to exit", || {
        child.try_wait().ok().flatten()
    });
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains("store unavailable"), "{err}");
    assert!(!err.contains("password"), "{err}");
}
