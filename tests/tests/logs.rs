//! `slipctl logs`: an app's output from every host that runs it, through the
//! agents' sessions, with the real controller, agents and app.

use std::process::{Command, Stdio};
use std::time::Duration;

use integration_tests::{Agent, Controller, ReleaseOpts, bin, eventually, http_get, publish};

const DB_ENV: &str = "DATABASE_URL=postgres://app@db/app\n";

/// `slipctl logs ARGS -f` as a child, and its stdout lines as they come.
fn follow(
    c: &Controller,
    args: &[&str],
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(bin("slipctl"))
        .args(args)
        .env("SLIPWAY_CONTROLLER", &c.url)
        .env("SLIPWAY_CA_CERT", c.ca_cert())
        .env("SLIPWAY_TOKEN", c.token("reader", &["viewer"]))
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let rx = integration_tests::stdout_lines(&mut child);
    (child, rx)
}

#[test]
fn logs_come_from_every_host_named_by_it_masked_and_followed() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let a = Agent::start(t.path(), &c, "log-1", "preprod", DB_ENV);
    let b = Agent::start(t.path(), &c, "log-2", "preprod", DB_ENV);
    publish(&c, t.path(), &ReleaseOpts::new("1.0.0"));
    c.deploy_wait("1.0.0", "preprod").ok();
    a.wait_serving("1.0.0");
    b.wait_serving("1.0.0");
    // Each app logs a request whose path holds the env file's value.
    http_get(a.app_port, "/on-1/postgres://app@db/app");
    http_get(b.app_port, "/on-2/postgres://app@db/app");

    let reader = c.token("reader", &["viewer"]);
    let out = eventually(Duration::from_secs(10), "both requests in the logs", || {
        let out = c.ctl_as(&reader, &["logs", "web", "--env", "preprod", "-n", "500"]);
        (out.stdout.contains("log-1 [web] GET /on-1/***")
            && out.stdout.contains("log-2 [web] GET /on-2/***"))
        .then_some(out)
    });
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("log-1 [web] sample-app 1.0.0 listening")
            && out
                .stdout
                .contains("log-2 [web] sample-app 1.0.0 listening"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("postgres://"), "{}", out.stdout);

    // One host, lines that match, the last N.
    let out = c
        .ctl(&[
            "logs", "web", "--env", "preprod", "--host", "log-2", "--grep", "GET /on-", "-n", "5",
            "--since", "1h",
        ])
        .ok();
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        ["log-2 [web] GET /on-2/***"]
    );
    // A pattern is matched against the masked line: it cannot probe a value.
    let out = c
        .ctl(&[
            "logs",
            "web",
            "--env",
            "preprod",
            "--grep",
            "postgres://app@db/a",
        ])
        .ok();
    assert_eq!(out.stdout, "", "a masked value matched");
    // JSON, a line each.
    let out = c
        .ctl(&[
            "logs", "web", "--env", "preprod", "--host", "log-1", "--grep", "GET /on-", "-o",
            "json",
        ])
        .ok();
    let line: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(line["host"], "log-1");
    assert_eq!(line["line"], "[web] GET /on-1/***");

    // -f follows what the apps write from now on, from both hosts; a
    // follower that goes away ends its query on the host (past the host's
    // bound of 8 open queries, a new one is still answered).
    for round in 0..10 {
        let (mut child, rx) = follow(&c, &["logs", "web", "--env", "preprod", "-f", "-n", "0"]);
        let want = [
            format!("log-1 [web] GET /followed-{round}"),
            format!("log-2 [web] GET /followed-{round}"),
        ];
        let mut seen = Vec::new();
        eventually(Duration::from_secs(15), "the followed requests", || {
            http_get(a.app_port, &format!("/followed-{round}"));
            http_get(b.app_port, &format!("/followed-{round}"));
            seen.extend(rx.try_iter());
            (want.iter().all(|w| seen.contains(w))).then_some(())
        });
        // -n 0: nothing written before it started.
        assert!(
            !seen
                .iter()
                .any(|l| l.contains("listening") || l.contains("/on-")),
            "{seen:?}"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }

    // Bad queries: refused with what is wrong, exit non-zero.
    for (args, says) in [
        (
            &["logs", "web", "--env", "preprod", "--process", "db"][..],
            "app web has no process \"db\" with a log (processes: web)",
        ),
        (
            &["logs", "web", "--env", "preprod", "--host", "nosuch"][..],
            "host nosuch is not connected",
        ),
        (
            &["logs", "web", "--env", "prod"][..],
            "no connected host of prod runs web",
        ),
        (
            &["logs", "web", "--env", "preprod", "-n", "20000"][..],
            "-n 20000: at most 10000 lines",
        ),
        (
            &["logs", "web", "--env", "preprod", "--grep", "("][..],
            "--grep: ",
        ),
    ] {
        let out = c.ctl(args);
        assert_ne!(out.code, 0, "{args:?}");
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
    }
}
