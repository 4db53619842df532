//! What an operator can do on the host when the controller is down:
//! `slipway-agent status | releases | rollback | logs`.

use std::process::{Command, Stdio};
use std::time::Duration;

use integration_tests::{
    Agent, Controller, ReleaseOpts, bin, eventually, http_get, publish, status_row,
};

const DB_ENV: &str = "DATABASE_URL=postgres://app@db/app\n";

#[test]
fn rollback_on_the_host_works_with_the_controller_stopped_and_is_reported_later() {
    let t = tempfile::tempdir().unwrap();
    let mut c = Controller::start(t.path());
    let agent = Agent::start(t.path(), &c, "pre-1", "preprod", DB_ENV);
    for v in ["1.0.0", "2.0.0"] {
        publish(&c, t.path(), &ReleaseOpts::new(v));
        c.ctl(&["deploy", "web", v, "--env", "preprod", "--wait"])
            .ok();
    }
    agent.wait_serving("2.0.0");
    c.kill();

    let out = agent.local(&["releases", "web"]).ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines[1].starts_with("2.0.0") && lines[1].contains("current"),
        "{}",
        out.stdout
    );
    assert!(lines[2].starts_with("1.0.0"), "{}", out.stdout);

    let out = agent.local(&["rollback", "web", "--to", "0.9.0"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("release 0.9.0 is not on this host (kept: 1.0.0, 2.0.0)"),
        "{}",
        out.stderr
    );

    // A lock file left by a process that died never blocks: the lock is a flock
    // the kernel drops with its holder, not the file's existence.
    std::fs::write(agent.app_dir().join(".lock"), "pid 999999\n").unwrap();
    let out = agent.local(&["rollback", "web"]).ok();
    assert!(
        out.stdout.contains("2.0.0 -> 1.0.0, healthy"),
        "{}",
        out.stdout
    );
    agent.wait_serving("1.0.0");
    // The running agent adopts what the command did and does not re-apply 2.0.0.
    std::thread::sleep(Duration::from_secs(6)); // a monitor cycle; asserting absence
    assert_eq!(agent.app_says().as_deref(), Some("sample-app 1.0.0"));
    let status = agent.local(&["status", "--json"]).ok().json();
    assert_eq!(status[0]["running"], "1.0.0");
    assert_eq!(status[0]["state"], "rolled_back");
    assert!(agent.deploy_log().contains("\"step\":\"local_rollback\""));

    c.restart();
    let row = eventually(
        Duration::from_secs(30),
        "the local rollback to reach the controller",
        || status_row(&c, "pre-1").filter(|r| r["connected"] == true && r["running"] == "1.0.0"),
    );
    assert_eq!(row["state"], "rolled_back");
    assert!(
        row["last_error"]
            .as_str()
            .unwrap()
            .contains("rolled back on the host by ops-on-host"),
        "{row}"
    );
    assert_eq!(
        row["desired"], "2.0.0",
        "the controller still wants 2.0.0; a retry or new deploy re-applies it"
    );

    c.ctl(&["retry", "web", "--env", "preprod", "--wait"]).ok();
    agent.wait_serving("2.0.0");
}

#[test]
fn logs_show_the_apps_output_with_env_values_masked_and_follow_it() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let agent = Agent::start(t.path(), &c, "log-1", "preprod", DB_ENV);
    publish(&c, t.path(), &ReleaseOpts::new("1.0.0"));
    c.deploy_wait("1.0.0", "preprod").ok();
    agent.wait_serving("1.0.0");
    // The app logs every request's path: one that holds the env file's value.
    http_get(agent.app_port, "/postgres://app@db/app");
    let out = eventually(Duration::from_secs(10), "the request in the log", || {
        let out = agent.local(&["logs", "web", "-n", "200"]);
        out.stdout.contains("[web] GET /***").then_some(out)
    });
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("[web] sample-app 1.0.0 listening"),
        "{}",
        out.stdout
    );
    assert!(
        !out.stdout.contains("postgres://app@db/app"),
        "{}",
        out.stdout
    );

    let out = agent.local(&["logs", "web", "--grep", "GET /h[e]alth", "-n", "3"]);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(!lines.is_empty() && lines.len() <= 3, "{}", out.stdout);
    assert!(
        lines.iter().all(|l| l.starts_with("[web] GET /health")),
        "{}",
        out.stdout
    );

    // -f prints what the app writes from now on.
    let mut follow = Command::new(bin("slipway-agent"))
        .arg("--config")
        .arg(&agent.config)
        .args(["logs", "web", "-f", "-n", "0"])
        .env("SLIPWAY_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = integration_tests::stdout_lines(&mut follow);
    let seen = eventually(Duration::from_secs(10), "the followed request", || {
        http_get(agent.app_port, "/followed-42");
        rx.try_iter().find(|l| l == "[web] GET /followed-42")
    });
    assert_eq!(seen, "[web] GET /followed-42");
    follow.kill().unwrap();
    follow.wait().unwrap();

    // Bad queries: one line each, exit 1.
    for (args, says) in [
        (
            &["logs", "nope"][..],
            "no app \"nope\" on this host (apps: web)",
        ),
        (
            &["logs", "web", "--process", "db"][..],
            "app web has no process \"db\" with a log (processes: web)",
        ),
        (
            &["logs", "web", "-n", "20000"][..],
            "-n: at most 10000 lines",
        ),
        (&["logs", "web", "--grep", "("][..], "--grep: "),
    ] {
        let out = agent.local(args);
        assert_eq!(out.code, 1, "{args:?}");
        let err = out.stderr.trim();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
