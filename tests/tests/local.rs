//! What an operator can do on the host when the controller is down:
//! `slipway-agent status | releases | rollback`.

use std::time::Duration;

use integration_tests::{Agent, Controller, ReleaseOpts, eventually, publish, status_row};

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
