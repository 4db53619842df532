//! The systemd service backend against a REAL systemd: a private one runs as PID 1
//! of a new PID + mount namespace (../shared/TESTING.md), the agent runs inside it
//! with nsenter, the controller and slipctl outside on the same loopback.
//! Skipped, saying so, when not root or systemd is not installed.

use std::time::Duration;

use integration_tests::systemd_ns::NsSystemd;
use integration_tests::{Agent, Controller, ReleaseOpts, eventually, exit, publish, status_row};

const DB_ENV: &str = "DATABASE_URL=postgres://app@db/app\n";

#[test]
fn the_systemd_backend_deploys_rolls_back_and_reports() {
    let Some(ns) = NsSystemd::start(&[]) else {
        return;
    };
    // Not under /tmp: the namespace has its own, and the agent runs in there.
    let t = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let c = Controller::start(t.path());
    let mut agent = Agent::configured(t.path(), &c, "sys-1", "preprod", DB_ENV, true);
    let root = agent.app_dir();
    let mut cfg = std::fs::read_to_string(&agent.config).unwrap();
    cfg.push_str("service = \"systemd\"\n");
    std::fs::write(&agent.config, cfg).unwrap();
    ns.install_unit(
        "web-web.service",
        &format!(
            "[Service]\nType=exec\nWorkingDirectory={r}/current\nExecStart={r}/current/bin/slipway-sample-app\nEnvironmentFile={r}/shared/.env\nEnvironment=PORT={port}\nRestart=on-failure\n",
            r = root.display(),
            port = agent.app_port
        ),
    );
    agent.prefix = ns.prefix();
    agent.spawn();
    agent.wait_connected(&c);

    publish(&c, t.path(), &ReleaseOpts::new("1.0.0"));
    c.ctl(&[
        "deploy",
        "web",
        "1.0.0",
        "--env",
        "preprod",
        "--wait",
        "--timeout",
        "60",
    ])
    .ok();
    agent.wait_serving("1.0.0");
    let active = ns.exec(&["systemctl", "is-active", "web-web.service"]);
    assert_eq!(
        String::from_utf8_lossy(&active.stdout).trim(),
        "active",
        "systemd runs the app"
    );
    let main_pid = ns.exec(&[
        "systemctl",
        "show",
        "-p",
        "MainPID",
        "--value",
        "web-web.service",
    ]);
    let main_pid = String::from_utf8_lossy(&main_pid.stdout).trim().to_string();
    let cwd = ns.exec(&["readlink", &format!("/proc/{main_pid}/cwd")]);
    assert!(
        String::from_utf8_lossy(&cwd.stdout)
            .trim()
            .ends_with("releases/1.0.0")
    );

    publish(&c, t.path(), &ReleaseOpts::new("2.0.0"));
    c.ctl(&[
        "deploy",
        "web",
        "2.0.0",
        "--env",
        "preprod",
        "--wait",
        "--timeout",
        "60",
    ])
    .ok();
    agent.wait_serving("2.0.0");

    publish(
        &c,
        t.path(),
        &ReleaseOpts {
            healthy: false,
            ..ReleaseOpts::new("3.0.0")
        },
    );
    let out = c.ctl(&[
        "deploy",
        "web",
        "3.0.0",
        "--env",
        "preprod",
        "--wait",
        "--timeout",
        "60",
    ]);
    assert_eq!(out.code, exit::ROLLOUT_FAILED, "{}", out.stdout);
    agent.wait_serving("2.0.0");
    // Reverted to what runs: healthy again, the refused release on record.
    let row = eventually(
        Duration::from_secs(60),
        "the host to take the revert",
        || status_row(&c, "sys-1").filter(|r| r["state"] == "healthy"),
    );
    assert_eq!(row["running"], "2.0.0");
    assert_eq!(row["failed_version"], "3.0.0");
    assert!(
        out.stderr.contains("answered 503"),
        "the reason reaches CI: {}",
        out.stderr
    );
    drop(agent);
}
