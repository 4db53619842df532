//! A new host in one command: `slipctl hosts add` prints the line to run on
//! the host, and `slipway-agent join URL TOKEN` enrolls, writes the agent
//! config from the certificate (host, tenant, environment) and — here with
//! `--no-start`, as this machine's PID 1 is not systemd (the package test
//! starts the unit on a real one) — leaves an agent that connects and runs
//! its environment's release. Running it again is harmless; a bad address, a
//! token of another controller, a used or malformed token each get a
//! one-line error and leave nothing behind.

use std::path::{Path, PathBuf};
use std::process::Command;

use integration_tests::{Agent, Controller, CtlOutput, ReleaseOpts, bin, free_port, publish};

const DB_ENV: &str = "DATABASE_URL=postgres://app@db/app\n";

/// `slipway-agent --config CONFIG join ARGS… --no-start --state-dir STATE`.
fn join(config: &Path, state: &Path, args: &[&str]) -> CtlOutput {
    Command::new(bin("slipway-agent"))
        .arg("--config")
        .arg(config)
        .arg("join")
        .args(args)
        .arg("--no-start")
        .arg("--state-dir")
        .arg(state)
        .env("SLIPWAY_LOG", "warn")
        .output()
        .expect("run slipway-agent join")
        .into()
}

fn add_host(c: &Controller, host: &str) -> serde_json::Value {
    c.ctl(&["hosts", "add", host, "--env", "preprod", "-o", "json"])
        .ok()
        .json()
}

fn paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(name).join("etc/slipway/agent.toml"),
        dir.join(name).join("var/lib/slipway"),
    )
}

#[test]
fn a_host_joins_with_one_command_and_runs_its_environments_release() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let added = add_host(&c, "web-1");
    let token = added["join_token"].as_str().unwrap();
    assert_eq!(
        added["join_command"],
        format!("slipway-agent join {} {token}", c.url),
        "hosts add prints the line to run on the host"
    );

    let (config, state) = paths(t.path(), "web-1");
    let out = join(&config, &state, &[&c.url, token]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("enrolled web-1 in default/preprod"),
        "{}",
        out.stdout
    );
    let written = std::fs::read_to_string(&config).unwrap();
    for line in [
        format!("controller = \"{}\"", c.url),
        "host = \"web-1\"".to_string(),
        "tenant = \"default\"".to_string(),
        "environment = \"preprod\"".to_string(),
    ] {
        assert!(written.contains(&line), "{line} in:\n{written}");
    }
    let cert = std::fs::read(state.join("identity/agent.pem")).unwrap();

    // Again, with the token now spent: harmless, nothing changes.
    let again = join(&config, &state, &[&c.url, token]);
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    assert!(
        again.stdout.contains("already enrolled as web-1"),
        "{}",
        again.stdout
    );
    assert_eq!(
        std::fs::read(state.join("identity/agent.pem")).unwrap(),
        cert
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), written);

    // The app's host settings beside the config; the agent starts, connects
    // and runs what its environment is told to run.
    let port = free_port();
    let apps = config.parent().unwrap().join("apps");
    std::fs::create_dir_all(&apps).unwrap();
    std::fs::write(
        apps.join("web.toml"),
        format!("port = {port}\nstop_grace_secs = 3\n"),
    )
    .unwrap();
    let shared = state.join("apps/web/shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join(".env"), DB_ENV).unwrap();
    let mut agent = Agent::with_config(t.path(), "web-1", &config, &state, port);
    agent.spawn();
    agent.wait_connected(&c);
    let connected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("connected.json")).unwrap()).unwrap();
    assert_eq!(connected["controller"], c.url.as_str());
    publish(&c, t.path(), &ReleaseOpts::new("1.0.0"));
    let out = c.deploy_wait("1.0.0", "preprod");
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    agent.wait_serving("1.0.0");
}

#[test]
fn a_bad_join_says_what_is_wrong_in_one_line_and_leaves_nothing() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let other_dir = t.path().join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let other = Controller::start(&other_dir);
    let used = add_host(&c, "web-1")["join_token"]
        .as_str()
        .unwrap()
        .to_string();
    let (config, state) = paths(t.path(), "first");
    assert_eq!(join(&config, &state, &[&c.url, &used]).code, 0);
    let fresh = add_host(&c, "web-2")["join_token"]
        .as_str()
        .unwrap()
        .to_string();
    let foreign = add_host(&other, "web-3")["join_token"]
        .as_str()
        .unwrap()
        .to_string();
    let nowhere = format!("https://127.0.0.1:{}", free_port());

    for (name, url, token, says) in [
        ("malformed", c.url.as_str(), "swj_nope", "join token"),
        (
            "wrong address",
            nowhere.as_str(),
            fresh.as_str(),
            "cannot reach controller at",
        ),
        (
            "another controller's token",
            c.url.as_str(),
            foreign.as_str(),
            "does not hold the CA this token pins",
        ),
        (
            "used token",
            c.url.as_str(),
            used.as_str(),
            "join token already used",
        ),
    ] {
        let (config, state) = paths(t.path(), name);
        let out = join(&config, &state, &[url, token]);
        eprintln!("{name}: {}", out.stderr.trim());
        assert_eq!(out.code, 1, "{name}: {}{}", out.stdout, out.stderr);
        assert!(out.stderr.contains(says), "{name}: {}", out.stderr);
        assert_eq!(
            out.stderr.trim().lines().count(),
            1,
            "{name}: {}",
            out.stderr
        );
        assert!(!config.exists(), "{name}: no config written");
        assert!(!state.join("identity").exists(), "{name}: no identity");
    }
    // The token that went to the wrong address is still good.
    let (config, state) = paths(t.path(), "second");
    let out = join(&config, &state, &[&c.url, &fresh]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
}
