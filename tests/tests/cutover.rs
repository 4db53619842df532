//! No request dropped at cutover: the real agent activates releases of an
//! unmodified app behind its proxy and of a `LISTEN_FDS` app on a socket it
//! holds, under continuous HTTP load, through good deploys and ones that fail
//! and roll back. Every request must get a 200, and a release that failed
//! must never have answered one.

use std::time::Duration;

use integration_tests::cutover::{Behaviour, Mode, Rig};
use integration_tests::{eventually, exit, load};

const WAIT: Duration = Duration::from_secs(30);

/// Deploys 1.0.0, then under load: 2.0.0 (good), 3.0.0 (fails, rolled
/// back), 4.0.0 (good), 5.0.0 (fails), 6.0.0 (good). Returns what the
/// clients saw.
fn deploys_under_load(rig: &Rig, keep_alive: bool) -> load::Stats {
    rig.publish("1.0.0", Behaviour::Good);
    rig.deploy("1.0.0").ok();
    let first = rig.body_of("1.0.0");
    eventually(WAIT, "1.0.0 to serve", || {
        (rig.says().as_deref() == Some(first.as_str())).then_some(())
    });
    let plan = [
        ("2.0.0", Behaviour::Good),
        ("3.0.0", Behaviour::Failing),
        ("4.0.0", Behaviour::Good),
        ("5.0.0", Behaviour::Failing),
        ("6.0.0", Behaviour::Good),
    ];
    for (v, b) in plan {
        rig.publish(v, b);
    }
    let clients = load::start(rig.agent.app_port, 4, 50, keep_alive);
    for (v, b) in plan {
        let out = rig.deploy(v);
        match b {
            Behaviour::Good => assert_eq!(out.code, 0, "{v}: {}{}", out.stdout, out.stderr),
            _ => assert_eq!(
                out.code,
                exit::ROLLOUT_FAILED,
                "{v} fails: {}{}",
                out.stdout,
                out.stderr
            ),
        }
    }
    let last = rig.body_of("6.0.0");
    eventually(WAIT, "6.0.0 to serve", || {
        (rig.says().as_deref() == Some(last.as_str())).then_some(())
    });
    clients.stop()
}

fn assert_no_request_dropped(rig: &Rig, stats: &load::Stats) {
    assert!(stats.sent > 500, "the clients ran: {stats:?}");
    assert_eq!(
        stats.failed, 0,
        "{} of {} requests failed; first failures: {:#?}",
        stats.failed, stats.sent, stats.errors
    );
    for failed in ["3.0.0", "5.0.0"] {
        assert!(
            !stats.bodies.contains_key(&rig.body_of(failed)),
            "the failed release {failed} answered requests: {:?}",
            stats.bodies
        );
    }
    for good in ["2.0.0", "4.0.0", "6.0.0"] {
        assert!(
            stats.bodies.contains_key(&rig.body_of(good)),
            "{good} served: {:?}",
            stats.bodies
        );
    }
    // After convergence one release runs: one instance, of 6.0.0.
    let running = eventually(WAIT, "the old instances to be stopped", || {
        let r = rig.running();
        (r.len() == 1).then_some(r)
    });
    assert!(running[0].0.starts_with("web@"), "{running:?}");
    assert_eq!(rig.agent.status_json()["running_version"], "6.0.0");
}

#[test]
fn proxy_activation_drops_no_request_and_never_routes_to_a_failed_release() {
    let t = tempfile::tempdir().unwrap();
    let rig = Rig::start(t.path(), Mode::Proxy, "drain_timeout_secs = 5\n");
    let stats = deploys_under_load(&rig, true);
    assert_no_request_dropped(&rig, &stats);
    let log = rig.agent.deploy_log();
    assert!(
        log.contains("\"step\":\"traffic\"") && log.contains("\"outcome\":\"moved\""),
        "deploy.log says when traffic moved: {log}"
    );
}

#[test]
fn socket_activation_drops_no_request_and_a_release_that_never_accepts_is_rolled_back() {
    let t = tempfile::tempdir().unwrap();
    let rig = Rig::start(t.path(), Mode::Socket, "drain_timeout_secs = 5\n");
    let stats = deploys_under_load(&rig, false);
    assert_no_request_dropped(&rig, &stats);
    let log = rig.agent.deploy_log();
    assert!(
        log.lines().any(|l| l.contains("\"version\":\"3.0.0\"")
            && l.contains("\"step\":\"health\"")
            && l.contains("was accepted by the new instance")),
        "the failure says the new instance never accepted on the socket: {log}"
    );
}

#[test]
fn an_app_that_ignores_its_drain_signal_is_killed_after_the_drain_timeout() {
    let t = tempfile::tempdir().unwrap();
    let rig = Rig::start(t.path(), Mode::Socket, "drain_timeout_secs = 2\n");
    rig.publish("1.0.0", Behaviour::IgnoresTerm);
    rig.deploy("1.0.0").ok();
    let old = rig.running();
    assert_eq!(old.len(), 1, "{old:?}");
    let old_pid = old[0].1;
    rig.publish("2.0.0", Behaviour::Good);
    rig.deploy("2.0.0").ok();
    let want = rig.body_of("2.0.0");
    eventually(WAIT, "2.0.0 to serve", || {
        (rig.says().as_deref() == Some(want.as_str())).then_some(())
    });
    eventually(WAIT, "the old instance to be killed", || {
        (!std::path::Path::new(&format!("/proc/{old_pid}")).exists()).then_some(())
    });
    assert!(
        rig.agent
            .log_text()
            .contains("did not stop within grace period; killing"),
        "the agent says it killed the instance that ignored SIGTERM"
    );
    let app_log =
        std::fs::read_to_string(rig.agent.app_dir().join("logs/web.log")).unwrap_or_default();
    assert!(app_log.contains("SIGTERM ignored"), "{app_log}");
}

#[test]
fn a_public_port_already_taken_is_reported_and_bound_once_free() {
    let t = tempfile::tempdir().unwrap();
    let c = integration_tests::Controller::start(t.path());
    let mut agent = integration_tests::Agent::configured(
        t.path(),
        &c,
        "zdt-1",
        "preprod",
        integration_tests::cutover::DB_ENV,
        true,
    );
    agent.append_config("activation = \"proxy\"\n");
    let squatter = std::net::TcpListener::bind(("0.0.0.0", agent.app_port)).unwrap();
    agent.spawn();
    agent.wait_connected(&c);
    eventually(WAIT, "the agent to report the taken port", || {
        agent
            .deploy_log()
            .lines()
            .find(|l| {
                l.contains("\"step\":\"proxy\"")
                    && l.contains("\"outcome\":\"failed\"")
                    && l.contains(&format!("listen on 0.0.0.0:{}", agent.app_port))
                    && l.contains("in use")
            })
            .map(|_| ())
    });
    integration_tests::publish(
        &c,
        t.path(),
        &integration_tests::ReleaseOpts {
            prepare: "",
            ..integration_tests::ReleaseOpts::new("1.0.0")
        },
    );
    c.deploy_wait("1.0.0", "preprod").ok();
    drop(squatter);
    agent.wait_serving("1.0.0");
}

#[test]
fn a_restarted_agent_adopts_the_instance_and_keeps_routing_to_it() {
    let t = tempfile::tempdir().unwrap();
    let mut rig = Rig::start(t.path(), Mode::Proxy, "");
    rig.publish("1.0.0", Behaviour::Good);
    rig.deploy("1.0.0").ok();
    rig.agent.wait_serving("1.0.0");
    let before = rig.running();
    rig.agent.kill();
    // The app lives on; its public port is the agent's, dark until it is back.
    assert_eq!(rig.running(), before, "the instance outlives the agent");
    rig.agent.spawn();
    rig.agent.wait_serving("1.0.0");
    assert_eq!(rig.running(), before, "adopted, not restarted");
    rig.publish("2.0.0", Behaviour::Good);
    rig.deploy("2.0.0").ok();
    rig.agent.wait_serving("2.0.0");
    let after = eventually(WAIT, "one instance", || {
        let r = rig.running();
        (r.len() == 1).then_some(r)
    });
    assert_ne!(after, before);
}

#[test]
fn a_rollback_on_the_host_moves_the_agents_proxy_without_dropping_a_request() {
    let t = tempfile::tempdir().unwrap();
    let rig = Rig::start(t.path(), Mode::Proxy, "drain_timeout_secs = 5\n");
    rig.publish("1.0.0", Behaviour::Good);
    rig.deploy("1.0.0").ok();
    rig.publish("2.0.0", Behaviour::Good);
    rig.deploy("2.0.0").ok();
    rig.agent.wait_serving("2.0.0");
    let clients = load::start(rig.agent.app_port, 4, 50, true);
    // `slipway-agent rollback` runs in its own process: it writes the route,
    // the agent's proxy picks it up.
    let out = rig.agent.local(&["rollback", "web"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    rig.agent.wait_serving("1.0.0");
    let stats = clients.stop();
    assert_eq!(
        stats.failed, 0,
        "{} of {} failed: {:#?}",
        stats.failed, stats.sent, stats.errors
    );
    assert!(stats.bodies.contains_key("sample-app 1.0.0"), "{stats:?}");
    let running = eventually(WAIT, "one instance", || {
        let r = rig.running();
        (r.len() == 1).then_some(r)
    });
    assert_eq!(running.len(), 1);
}

#[test]
fn a_restarted_agent_takes_the_socket_back_from_the_running_instance() {
    let t = tempfile::tempdir().unwrap();
    let mut rig = Rig::start(t.path(), Mode::Socket, "drain_timeout_secs = 5\n");
    rig.publish("1.0.0", Behaviour::Good);
    rig.deploy("1.0.0").ok();
    rig.publish("2.0.0", Behaviour::Good);
    rig.agent.kill();
    // The instance holds the socket: the port keeps answering without the agent.
    assert_eq!(rig.says().as_deref(), Some("zdt-app 1.0.0"));
    rig.agent.spawn();
    rig.agent.wait_connected(&rig.c);
    let clients = load::start(rig.agent.app_port, 2, 50, false);
    let out = rig.deploy("2.0.0");
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    eventually(WAIT, "2.0.0 to serve", || {
        (rig.says().as_deref() == Some("zdt-app 2.0.0")).then_some(())
    });
    let stats = clients.stop();
    assert_eq!(stats.failed, 0, "{:#?}", stats.errors);
    assert!(
        rig.agent
            .log_text()
            .contains("took the listening socket back from the running instance"),
        "the new agent reused the socket the apps hold instead of binding another"
    );
}
