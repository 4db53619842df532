//! End to end: the real controller, agents and slipctl on 127.0.0.1, the real
//! sample app serving HTTP, real files under temp dirs.

use std::time::Duration;

use integration_tests::{
    Agent, Controller, ReleaseOpts, eventually, exit, http_get, publish, sample_release, status_row,
};

const DB_ENV: &str = "DATABASE_URL=postgres://app@db/app\n";
const WAIT: Duration = Duration::from_secs(30);

/// Counts deploy.log lines for `version` at `step`.
fn steps(agent: &Agent, version: &str, step: &str) -> usize {
    agent
        .deploy_log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["version"] == version && v["step"] == step)
        .count()
}

#[test]
fn publish_deploy_upgrade_and_automatic_rollbacks() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let agent = Agent::start(t.path(), &c, "pre-1", "preprod", DB_ENV);

    // v1: published, deployed, serving; the prepare hook ran in the release dir.
    publish(&c, t.path(), &ReleaseOpts::new("1.0.0"));
    let out = c.deploy_wait("1.0.0", "preprod").ok();
    assert!(
        out.stdout.contains("pre-1: 1.0.0 healthy"),
        "{}",
        out.stdout
    );
    agent.wait_serving("1.0.0");
    assert!(
        agent.app_dir().join("releases/1.0.0/.migrated").is_file(),
        "prepare hook ran in the new release"
    );
    assert_eq!(
        std::fs::read_link(agent.app_dir().join("current"))
            .unwrap()
            .to_str(),
        Some("releases/1.0.0")
    );
    assert!(
        http_get(agent.app_port, "/data").unwrap().0 == 200,
        "the app got DATABASE_URL from shared/.env"
    );

    // v2: upgrade.
    publish(&c, t.path(), &ReleaseOpts::new("2.0.0"));
    c.deploy_wait("2.0.0", "preprod").ok();
    agent.wait_serving("2.0.0");

    // v3: health never passes → rolled back to v2, and status says why.
    publish(
        &c,
        t.path(),
        &ReleaseOpts {
            healthy: false,
            ..ReleaseOpts::new("3.0.0")
        },
    );
    let out = c.deploy_wait("3.0.0", "preprod");
    assert_eq!(
        out.code,
        exit::ROLLOUT_FAILED,
        "--wait fails when the release is refused: {}",
        out.stdout
    );
    assert!(
        out.stderr.contains("503"),
        "the reason reaches CI: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("reverted to 2.0.0"),
        "the failed rollout put the previous release back: {}",
        out.stderr
    );
    agent.wait_serving("2.0.0");
    assert!(
        agent.status_json()["failed"]["reason"]
            .as_str()
            .unwrap()
            .contains("answered 503"),
        "the host keeps why it rolled back"
    );
    // Once the revert points the environment back at what the host runs,
    // state, status and note agree: healthy on 2.0.0, no stale note; the
    // refused release stays named, and the rollout says why it was reverted.
    let row = eventually(WAIT, "the host to take the revert", || {
        status_row(&c, "pre-1").filter(|r| r["state"] == "healthy")
    });
    assert_eq!(row["running"], "2.0.0");
    assert_eq!(
        row["desired"], "2.0.0",
        "auto-revert points the environment back at 2.0.0"
    );
    assert_eq!(row["failed_version"], "3.0.0");
    assert_eq!(row["last_error"], "", "{row}");
    let table = c.ctl(&["status"]).ok().stdout;
    assert!(
        table.contains("3.0.0 reverted") && table.contains("answered 503"),
        "the summary says the rollout was reverted, and why: {table}"
    );
    let table = c.ctl(&["status", "--hosts"]).ok().stdout;
    assert!(!table.contains("rolled_back"), "{table}");

    // v4 lacks a required env var: rolled back, the missing NAME reported.
    publish(
        &c,
        t.path(),
        &ReleaseOpts {
            required_env: &["DATABASE_URL", "PAYMENT_KEY"],
            ..ReleaseOpts::new("4.0.0")
        },
    );
    let out = c.deploy_wait("4.0.0", "preprod");
    assert_eq!(out.code, exit::ROLLOUT_FAILED);
    agent.wait_serving("2.0.0");
    let local = agent.status_json();
    assert!(
        local["failed"]["reason"]
            .as_str()
            .unwrap()
            .contains("lacks required env: PAYMENT_KEY"),
        "{local}"
    );
    assert!(
        out.stderr.contains("lacks required env: PAYMENT_KEY"),
        "the reason reaches the controller and CI: {}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("postgres://") && !local.to_string().contains("postgres://"),
        "values never travel"
    );
    let local = agent.status_json();
    assert_eq!(local["failed"]["version"], "4.0.0");
    assert_eq!(local["running_version"], "2.0.0");

    // No flapping: across several reconcile cycles the agent does not try v4 again…
    let flips = steps(&agent, "4.0.0", "flip");
    assert_eq!(flips, 1);
    std::thread::sleep(Duration::from_secs(6)); // one monitor cycle; nothing to poll for: asserting absence
    assert_eq!(
        steps(&agent, "4.0.0", "flip"),
        1,
        "a refused release is not retried by itself"
    );
    // …until it is deployed again.
    let out = c.deploy_wait("4.0.0", "preprod");
    assert_eq!(out.code, exit::ROLLOUT_FAILED);
    assert_eq!(
        steps(&agent, "4.0.0", "flip"),
        2,
        "a new deploy makes the host try once more"
    );

    // Keep-N and the deploy log.
    assert!(agent.app_dir().join("releases/1.0.0").is_dir());
    let log = agent.deploy_log();
    for step in ["fetch", "unpack", "prepare", "flip", "health", "rollback"] {
        assert!(
            log.contains(&format!("\"step\":\"{step}\"")),
            "deploy.log records {step}"
        );
    }
    assert!(
        !log.contains("postgres://"),
        "deploy.log never holds env values"
    );

    // Rollback through the controller goes to the previous desired release.
    let out = c
        .ctl(&[
            "rollback", "web", "--env", "preprod", "--to", "1.0.0", "--wait",
        ])
        .ok();
    assert!(out.stdout.contains("-> 1.0.0"), "{}", out.stdout);
    agent.wait_serving("1.0.0");
}

#[test]
fn a_failing_prepare_hook_leaves_the_old_release_serving() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let agent = Agent::start(t.path(), &c, "pre-1", "preprod", DB_ENV);
    publish(&c, t.path(), &ReleaseOpts::new("1.0.0"));
    c.deploy_wait("1.0.0", "preprod").ok();
    let pid = agent.app_pid().unwrap();

    publish(
        &c,
        t.path(),
        &ReleaseOpts {
            prepare: "echo migration 42 failed >&2; exit 3",
            ..ReleaseOpts::new("2.0.0")
        },
    );
    let out = c.deploy_wait("2.0.0", "preprod");
    assert_eq!(out.code, exit::ROLLOUT_FAILED);
    assert!(
        out.stderr.contains("migration 42 failed"),
        "hook output explains: {}",
        out.stderr
    );
    agent.wait_serving("1.0.0");
    assert_eq!(
        agent.app_pid(),
        Some(pid),
        "the old process was never restarted"
    );
    assert_eq!(
        std::fs::read_link(agent.app_dir().join("current"))
            .unwrap()
            .to_str(),
        Some("releases/1.0.0")
    );
    assert!(
        !agent.app_dir().join("releases/2.0.0").exists(),
        "the half-installed release is removed"
    );
}

#[test]
fn promote_runs_the_same_digest_on_the_prod_host() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let pre = Agent::start(t.path(), &c, "pre-1", "preprod", DB_ENV);
    let prod = Agent::start(t.path(), &c, "prod-1", "prod", DB_ENV);
    let digest = publish(&c, t.path(), &ReleaseOpts::new("1.0.0"));

    // Nothing healthy in preprod yet: nothing to promote.
    let out = c.ctl(&["promote", "web", "--from", "preprod", "--to", "prod"]);
    assert_eq!(out.code, exit::FAILED);
    assert!(
        out.stderr.contains("has no release in preprod"),
        "{}",
        out.stderr
    );

    c.deploy_wait("1.0.0", "preprod").ok();
    pre.wait_serving("1.0.0");
    assert_eq!(prod.app_says(), None, "prod untouched by a preprod deploy");

    let out = c
        .ctl(&[
            "promote",
            "web",
            "--from",
            "preprod",
            "--to",
            "prod",
            "--wait",
            "--timeout",
            "60",
        ])
        .ok();
    assert!(out.stdout.contains(&digest), "{}", out.stdout);
    prod.wait_serving("1.0.0");
    let pre_row = status_row(&c, "pre-1").unwrap();
    let prod_row = status_row(&c, "prod-1").unwrap();
    assert_eq!(pre_row["running_digest"], digest.as_str());
    assert_eq!(
        prod_row["running_digest"],
        digest.as_str(),
        "byte-for-byte the artifact preprod ran"
    );
    assert_eq!(prod_row["environment"], "prod");

    let history = c.ctl(&["history", "web", "--json"]).ok().json();
    let promote = history
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "promote")
        .unwrap()
        .clone();
    assert!(
        promote["actor"]
            .as_str()
            .unwrap()
            .starts_with("bootstrap-admin (token "),
        "{promote}"
    );
    assert_eq!(promote["outcome"], "ok");
}

#[test]
fn the_app_keeps_serving_while_the_controller_is_down() {
    let t = tempfile::tempdir().unwrap();
    let mut c = Controller::start(t.path());
    let agent = Agent::start(t.path(), &c, "pre-1", "preprod", DB_ENV);
    publish(&c, t.path(), &ReleaseOpts::new("1.0.0"));
    c.deploy_wait("1.0.0", "preprod").ok();
    let pid = agent.app_pid().unwrap();

    c.kill();
    let out = c.ctl(&["status"]);
    assert_eq!(
        out.code,
        exit::UNREACHABLE,
        "unreachable controller has its own exit code"
    );
    assert_eq!(
        out.stderr.lines().count(),
        1,
        "one line, no stack trace: {}",
        out.stderr
    );
    assert!(
        out.stderr.starts_with("error: cannot reach controller at"),
        "{}",
        out.stderr
    );
    for _ in 0..5 {
        assert_eq!(agent.app_says().as_deref(), Some("sample-app 1.0.0"));
        std::thread::sleep(Duration::from_millis(300));
    }

    c.restart();
    eventually(WAIT, "agent to reconnect", || {
        status_row(&c, "pre-1").filter(|r| r["connected"] == true && r["running"] == "1.0.0")
    });
    assert_eq!(
        agent.app_pid(),
        Some(pid),
        "reconnecting does not restart the app"
    );
    publish(&c, t.path(), &ReleaseOpts::new("2.0.0"));
    c.deploy_wait("2.0.0", "preprod").ok();
    agent.wait_serving("2.0.0");
}

#[test]
fn a_restarted_agent_adopts_the_running_app() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let mut agent = Agent::start(t.path(), &c, "pre-1", "preprod", DB_ENV);
    publish(&c, t.path(), &ReleaseOpts::new("1.0.0"));
    c.deploy_wait("1.0.0", "preprod").ok();
    let pid = agent.app_pid().unwrap();

    agent.kill();
    agent.wait_serving("1.0.0");
    agent.spawn();
    eventually(WAIT, "adoption to be logged", || {
        (steps(&agent, "1.0.0", "adopt") == 1).then_some(())
    });
    eventually(WAIT, "agent to report again", || {
        status_row(&c, "pre-1").filter(|r| r["connected"] == true && r["health"] == "healthy")
    });
    assert_eq!(
        agent.app_pid(),
        Some(pid),
        "same process: adopted, not restarted"
    );
    assert_eq!(steps(&agent, "1.0.0", "fetch"), 1, "not redeployed");
}

#[test]
fn a_crashed_app_process_is_restarted() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let agent = Agent::start(t.path(), &c, "pre-1", "preprod", DB_ENV);
    publish(&c, t.path(), &ReleaseOpts::new("1.0.0"));
    c.deploy_wait("1.0.0", "preprod").ok();
    let pid = agent.app_pid().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    let new_pid = eventually(WAIT, "the app to be restarted", || {
        agent.app_pid().filter(|p| *p != pid)
    });
    assert_ne!(new_pid, pid);
    agent.wait_serving("1.0.0");
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    publish(&c, t.path(), &ReleaseOpts::new("1.0.0"));

    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["deploy", "api", "1.0.0", "--env", "preprod"],
            exit::NOT_FOUND,
            "unknown app \"api\"",
        ),
        (
            &["deploy", "web", "9.9.9", "--env", "preprod"],
            exit::NOT_FOUND,
            "unknown version \"9.9.9\"",
        ),
        (
            &["deploy", "web", "1.0.0", "--env", "staging"],
            exit::NOT_FOUND,
            "unknown environment \"staging\" (known: preprod, prod)",
        ),
        (
            &["releases", "nope"],
            exit::NOT_FOUND,
            "unknown app \"nope\"",
        ),
        (
            &["rollback", "web", "--env", "preprod"],
            exit::FAILED,
            "has no release in preprod",
        ),
    ];
    for (args, code, want) in cases {
        let out = c.ctl(args);
        assert_eq!(out.code, *code, "{args:?}: {}", out.stderr);
        assert_eq!(
            out.stderr.lines().count(),
            1,
            "{args:?}: one line: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains(want),
            "{args:?}: {} lacks {want}",
            out.stderr
        );
    }

    // Versions are immutable: same version, other content → refused.
    let rel = sample_release(
        t.path(),
        &ReleaseOpts {
            healthy: false,
            ..ReleaseOpts::new("1.0.0")
        },
    );
    let out = c.ctl(&[
        "publish",
        rel.to_str().unwrap(),
        "--app",
        "web",
        "--version",
        "1.0.0",
    ]);
    assert_eq!(out.code, exit::FAILED);
    assert!(
        out.stderr
            .contains("already published with different content"),
        "{}",
        out.stderr
    );
    // Bad names never reach the controller.
    let out = c.ctl(&[
        "publish",
        rel.to_str().unwrap(),
        "--app",
        "web",
        "--version",
        "../1",
    ]);
    assert_eq!(out.code, exit::USAGE);
    assert!(
        out.stderr.contains("invalid version name"),
        "{}",
        out.stderr
    );
    // A tree without a spec is refused before anything is uploaded.
    let empty = t.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = c.ctl(&[
        "publish",
        empty.to_str().unwrap(),
        "--app",
        "web",
        "--version",
        "2.0.0",
    ]);
    assert_eq!(out.code, exit::FAILED);
    assert!(out.stderr.contains("slipway.toml"), "{}", out.stderr);

    let envs = c.ctl(&["envs"]).ok().stdout;
    assert!(
        envs.lines()
            .any(|l| l.trim_start().starts_with("preprod ") && l.contains(" no "))
            && envs
                .lines()
                .any(|l| l.trim_start().starts_with("prod ") && l.contains(" yes ")),
        "{envs}"
    );
    let releases = c.ctl(&["releases", "web", "--json"]).ok().json();
    assert_eq!(
        releases.as_array().unwrap().len(),
        1,
        "nothing registered by the refused calls"
    );
    assert!(
        c.ctl(&["status", "--json"]).ok().json()["hosts"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn publish_is_deterministic_and_uploads_once() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let rel = sample_release(t.path(), &ReleaseOpts::new("1.0.0"));
    let first = c
        .ctl(&[
            "publish",
            rel.to_str().unwrap(),
            "--app",
            "web",
            "--version",
            "1.0.0",
        ])
        .ok();
    assert!(
        first.stdout.contains("3 of 3 file objects uploaded"),
        "{}",
        first.stdout
    );
    let again = c
        .ctl(&[
            "publish",
            rel.to_str().unwrap(),
            "--app",
            "web",
            "--version",
            "1.0.0",
        ])
        .ok();
    assert!(
        again.stdout.contains("already published, unchanged"),
        "{}",
        again.stdout
    );
    assert!(
        again.stdout.contains("nothing uploaded"),
        "{}",
        again.stdout
    );
    // Same tree under another version: same objects, so nothing uploaded,
    // and the same full pack.
    let other = c
        .ctl(&[
            "publish",
            rel.to_str().unwrap(),
            "--app",
            "web",
            "--version",
            "1.0.1",
        ])
        .ok();
    assert!(
        other.stdout.contains("nothing uploaded"),
        "{}",
        other.stdout
    );
    let blob = |s: &str| {
        s.lines()
            .find(|l| l.trim().starts_with("pack"))
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    };
    assert_eq!(blob(&first.stdout), blob(&other.stdout));
    let blobs = std::fs::read_dir(c.data_dir.join("blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 1);
}

#[test]
fn git_checkouts_record_their_commit_and_dirty_trees_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let rel = sample_release(t.path(), &ReleaseOpts::new("1.0.0"));
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(&rel)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&[
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@e",
        "commit",
        "-qm",
        "v1",
    ]);
    let head = git(&["rev-parse", "HEAD"]);

    let out = c
        .ctl(&[
            "publish",
            rel.to_str().unwrap(),
            "--app",
            "web",
            "--version",
            "1.0.0",
        ])
        .ok();
    assert!(out.stdout.contains(&head), "{}", out.stdout);
    let listed = c.ctl(&["releases", "web", "--json"]).ok().json();
    assert_eq!(listed[0]["git_commit"], head.as_str());

    std::fs::write(rel.join("hotfix.txt"), "applied by hand").unwrap();
    let out = c.ctl(&[
        "publish",
        rel.to_str().unwrap(),
        "--app",
        "web",
        "--version",
        "1.0.1",
    ]);
    assert_eq!(out.code, exit::FAILED);
    assert!(
        out.stderr.contains("uncommitted change") && out.stderr.contains("--allow-dirty"),
        "{}",
        out.stderr
    );
    let out = c
        .ctl(&[
            "publish",
            rel.to_str().unwrap(),
            "--app",
            "web",
            "--version",
            "1.0.1",
            "--allow-dirty",
        ])
        .ok();
    assert!(
        out.stderr.contains("warning: publishing a dirty tree"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_broken_env_file_refuses_the_release_before_anything_stops() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let agent = Agent::start(t.path(), &c, "pre-1", "preprod", DB_ENV);
    publish(
        &c,
        t.path(),
        &ReleaseOpts {
            prepare: "",
            ..ReleaseOpts::new("1.0.0")
        },
    );
    c.deploy_wait("1.0.0", "preprod").ok();
    let pid = agent.app_pid().unwrap();

    let env = agent.app_dir().join("shared/.env");
    std::fs::write(&env, format!("{DB_ENV}-----BEGIN PRIVATE KEY-----\n")).unwrap();
    publish(
        &c,
        t.path(),
        &ReleaseOpts {
            prepare: "",
            ..ReleaseOpts::new("2.0.0")
        },
    );
    let out = c.deploy_wait("2.0.0", "preprod");
    assert_eq!(out.code, exit::ROLLOUT_FAILED);
    assert!(
        out.stderr.contains("line 2: expected KEY=VALUE"),
        "{}",
        out.stderr
    );
    assert_eq!(
        agent.app_pid(),
        Some(pid),
        "the running release was never stopped"
    );
    agent.wait_serving("1.0.0");
}

#[test]
fn hook_output_is_reported_with_env_values_masked() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let agent = Agent::start(
        t.path(),
        &c,
        "pre-1",
        "preprod",
        "DATABASE_URL=postgres://app:canary-7731@db/app\n",
    );
    publish(
        &c,
        t.path(),
        &ReleaseOpts {
            prepare: "echo \"cannot reach $DATABASE_URL\" >&2; exit 1",
            ..ReleaseOpts::new("1.0.0")
        },
    );
    let out = c.deploy_wait("1.0.0", "preprod");
    assert_eq!(out.code, exit::ROLLOUT_FAILED);
    assert!(out.stderr.contains("cannot reach ***"), "{}", out.stderr);
    assert!(!out.stderr.contains("canary-7731"));
    assert!(!agent.deploy_log().contains("canary-7731"));
    let status = std::fs::read_to_string(agent.app_dir().join("status.json")).unwrap();
    assert!(!status.contains("canary-7731"));
}

#[test]
fn a_wrapper_whose_child_holds_the_port_is_stopped_as_a_group() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let agent = Agent::start(t.path(), &c, "pre-1", "preprod", DB_ENV);
    publish(
        &c,
        t.path(),
        &ReleaseOpts {
            wrapper: true,
            ..ReleaseOpts::new("1.0.0")
        },
    );
    c.deploy_wait("1.0.0", "preprod").ok();
    agent.wait_serving("1.0.0");
    // If only the shell were stopped, its child would keep the port and 2.0.0
    // could not bind it.
    publish(&c, t.path(), &ReleaseOpts::new("2.0.0"));
    c.deploy_wait("2.0.0", "preprod").ok();
    agent.wait_serving("2.0.0");
}

#[test]
fn an_agent_restarted_mid_activation_judges_the_release_and_rolls_back() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let mut agent = Agent::start(t.path(), &c, "pre-1", "preprod", DB_ENV);
    publish(&c, t.path(), &ReleaseOpts::new("1.0.0"));
    c.deploy_wait("1.0.0", "preprod").ok();

    publish(
        &c,
        t.path(),
        &ReleaseOpts {
            healthy: false,
            ..ReleaseOpts::new("2.0.0")
        },
    );
    c.ctl(&["deploy", "web", "2.0.0", "--env", "preprod"]).ok();
    eventually(WAIT, "the flip to 2.0.0", || {
        (steps(&agent, "2.0.0", "flip") == 1).then_some(())
    });
    agent.kill(); // between the flip and the verdict
    assert_eq!(
        std::fs::read_link(agent.app_dir().join("current"))
            .unwrap()
            .to_str(),
        Some("releases/2.0.0")
    );
    agent.spawn();

    eventually(
        Duration::from_secs(90),
        "the resumed activation to roll back",
        || {
            // Rolled back, then (the rollout failed) reverted to what runs.
            status_row(&c, "pre-1")
                .filter(|r| r["running"] == "1.0.0" && r["failed_version"] == "2.0.0")
        },
    );
    agent.wait_serving("1.0.0");
    assert_eq!(steps(&agent, "2.0.0", "activation"), 1);
    assert_eq!(agent.status_json()["failed"]["version"], "2.0.0");
    assert!(agent.status_json()["deploy"].is_null());
}

#[test]
fn an_env_file_edit_restarts_the_app_and_a_removed_variable_is_reported() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let agent = Agent::start(t.path(), &c, "pre-1", "preprod", DB_ENV);
    publish(&c, t.path(), &ReleaseOpts::new("1.0.0"));
    c.deploy_wait("1.0.0", "preprod").ok();
    let pid = agent.app_pid().unwrap();
    let env = agent.app_dir().join("shared/.env");

    std::fs::write(&env, format!("{DB_ENV}FEATURE_FLAG=on\n")).unwrap();
    let new_pid = eventually(WAIT, "a restart with the new env", || {
        agent.app_pid().filter(|p| *p != pid)
    });
    let environ = std::fs::read(format!("/proc/{new_pid}/environ")).unwrap();
    assert!(String::from_utf8_lossy(&environ).contains("FEATURE_FLAG=on"));
    agent.wait_serving("1.0.0");

    // Someone drops DATABASE_URL: the app restarts without it and the fleet sees why.
    std::fs::write(&env, "FEATURE_FLAG=on\n").unwrap();
    let row = eventually(WAIT, "the missing variable to be reported", || {
        status_row(&c, "pre-1").filter(|r| r["env_check"] == "missing DATABASE_URL")
    });
    assert_eq!(row["health"], "unhealthy");
    assert_eq!(row["missing_env"][0], "DATABASE_URL");
    assert_eq!(
        http_get(agent.app_port, "/data").unwrap().0,
        500,
        "the route the check protects"
    );
    let log = agent.deploy_log();
    assert!(
        log.contains("\"step\":\"env\",\"outcome\":\"changed\""),
        "{log}"
    );
    assert!(!log.contains("postgres://"));
}

#[test]
fn an_app_defined_in_its_own_host_file_installs_under_its_install_root() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let mut agent = Agent::start(t.path(), &c, "pre-1", "preprod", DB_ENV);
    agent.kill();
    // Move the app's settings out of agent.toml into apps/web.toml, /opt-style root.
    let cfg = std::fs::read_to_string(&agent.config).unwrap();
    let (main, _) = cfg.split_once("[apps.web]").unwrap();
    std::fs::write(&agent.config, main).unwrap();
    let root = t.path().join("opt-web");
    std::fs::create_dir_all(root.join("shared")).unwrap();
    std::fs::write(root.join("shared/.env"), DB_ENV).unwrap();
    let apps_dir = agent.config.parent().unwrap().join("apps");
    std::fs::create_dir_all(&apps_dir).unwrap();
    std::fs::write(
        apps_dir.join("web.toml"),
        format!(
            "port = {}\ninstall_root = {:?}\n",
            agent.app_port,
            root.display().to_string()
        ),
    )
    .unwrap();
    agent.spawn();
    agent.wait_connected(&c);

    publish(&c, t.path(), &ReleaseOpts::new("1.0.0"));
    c.deploy_wait("1.0.0", "preprod").ok();
    agent.wait_serving("1.0.0");
    assert_eq!(
        std::fs::read_link(root.join("current")).unwrap().to_str(),
        Some("releases/1.0.0")
    );
    assert!(root.join("deploy.log").is_file());
    assert!(
        !agent.app_dir().join("releases/1.0.0").exists(),
        "nothing under the state dir"
    );
    // The harness cleans up the app via the state dir's pid files: stop it here.
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("run/web.json")).unwrap()).unwrap();
    let pid = nix::unistd::Pid::from_raw(rec["pid"].as_i64().unwrap() as i32);
    agent.kill();
    let _ = nix::sys::signal::killpg(pid, nix::sys::signal::SIGKILL);
}

#[test]
fn the_app_runs_as_its_user_and_its_logs_rotate() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    // The app's user must be able to reach its files.
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .unwrap()
        .uid
        .as_raw();
    let c = Controller::start(t.path());
    let mut agent = Agent::configured(t.path(), &c, "pre-1", "preprod", DB_ENV, true);
    let mut cfg = std::fs::read_to_string(&agent.config).unwrap();
    cfg.push_str("user = \"nobody\"\nlog_max_bytes = 2048\nlog_keep = 2\n");
    std::fs::write(&agent.config, cfg).unwrap();
    agent.spawn();
    agent.wait_connected(&c);

    publish(
        &c,
        t.path(),
        &ReleaseOpts {
            prepare: "id -u > .hook-uid",
            ..ReleaseOpts::new("1.0.0")
        },
    );
    c.deploy_wait("1.0.0", "preprod").ok();
    let pid = agent.app_pid().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid_line.split_whitespace().nth(1),
        Some(nobody.to_string().as_str()),
        "{uid_line}"
    );
    let hook_uid =
        std::fs::read_to_string(agent.app_dir().join("releases/1.0.0/.hook-uid")).unwrap();
    assert_eq!(
        hook_uid.trim(),
        nobody.to_string(),
        "the prepare hook ran as the app's user"
    );
    assert!(
        agent
            .deploy_log()
            .contains(&format!("unpacked as uid {nobody}")),
        "the archive was unpacked by the app's user: {}",
        agent.deploy_log()
    );
    let owner = std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata(
            agent
                .app_dir()
                .join("releases/1.0.0/bin/slipway-sample-app"),
        )
        .unwrap(),
    );
    assert_eq!(owner, nobody, "the release tree belongs to the app's user");

    // The sample app logs every request: push its log past 2 KiB.
    for _ in 0..400 {
        http_get(agent.app_port, "/").unwrap();
    }
    let logs = agent.app_dir().join("logs");
    eventually(WAIT, "the log to be rotated", || {
        logs.join("web.log.1").is_file().then_some(())
    });
    assert!(std::fs::metadata(logs.join("web.log")).unwrap().len() < 4096);
    assert!(
        !logs.join("web.log.3").exists(),
        "log_keep bounds the rotated files"
    );
    agent.wait_serving("1.0.0");
}

#[test]
fn the_command_backend_drives_an_outside_process_manager() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let mut agent = Agent::configured(t.path(), &c, "pre-1", "preprod", DB_ENV, true);
    // A stand-in for pm2: starts the app detached, records and reports its pid.
    let mut cfg = std::fs::read_to_string(&agent.config).unwrap();
    cfg.push_str(concat!(
        "service = \"command\"\n",
        "[apps.web.commands.web]\n",
        "start = [\"sh\", \"-c\", \"setsid bin/slipway-sample-app >> ../../logs/pm.log 2>&1 < /dev/null & echo $! > ../../pm.pid\"]\n",
        "stop = [\"sh\", \"-c\", \"kill $(cat ../../pm.pid)\"]\n",
        "pid = [\"cat\", \"../../pm.pid\"]\n",
    ));
    std::fs::write(&agent.config, cfg).unwrap();
    agent.spawn();
    agent.wait_connected(&c);

    for v in ["1.0.0", "2.0.0"] {
        publish(&c, t.path(), &ReleaseOpts::new(v));
        c.deploy_wait(v, "preprod").ok();
        agent.wait_serving(v);
    }
    let pid: i32 = std::fs::read_to_string(agent.app_dir().join("pm.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        agent.app_pid(),
        Some(pid),
        "health checks follow the pid the manager reports"
    );
    let row = status_row(&c, "pre-1").unwrap();
    assert_eq!(row["health"], "healthy");
    assert_eq!(
        row["env_check"], "ok",
        "env names read from the managed process"
    );

    publish(
        &c,
        t.path(),
        &ReleaseOpts {
            healthy: false,
            ..ReleaseOpts::new("3.0.0")
        },
    );
    assert_eq!(c.deploy_wait("3.0.0", "preprod").code, exit::ROLLOUT_FAILED);
    agent.wait_serving("2.0.0");
}

#[test]
fn a_config_edit_applies_live_and_a_broken_one_is_rejected() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let mut agent = Agent::start(t.path(), &c, "pre-1", "preprod", DB_ENV);
    publish(&c, t.path(), &ReleaseOpts::new("1.0.0"));
    c.deploy_wait("1.0.0", "preprod").ok();
    let good = std::fs::read_to_string(&agent.config).unwrap();

    // A broken edit: rejected, logged, the app untouched.
    let pid = agent.app_pid().unwrap();
    std::fs::write(&agent.config, format!("{good}\nthis is not toml\n")).unwrap();
    eventually(WAIT, "the rejection to be logged", || {
        agent
            .log_text()
            .contains("config edit rejected")
            .then_some(())
    });
    assert_eq!(agent.app_pid(), Some(pid));
    agent.wait_serving("1.0.0");

    // A valid edit: the app moves to its new port without an agent restart.
    let old_port = agent.app_port;
    let new_port = integration_tests::free_port();
    std::fs::write(
        &agent.config,
        good.replace(&format!("port = {old_port}"), &format!("port = {new_port}")),
    )
    .unwrap();
    agent.app_port = new_port;
    agent.wait_serving("1.0.0");
    assert!(
        http_get(old_port, "/").is_none(),
        "nothing left on the old port"
    );
    assert!(agent.log_text().contains("config reloaded"));
    eventually(WAIT, "the agent to report healthy on the new port", || {
        status_row(&c, "pre-1").filter(|r| r["health"] == "healthy" && r["connected"] == true)
    });
}

#[test]
fn a_rollback_skips_a_release_superseded_before_it_ran_healthy() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let agent = Agent::start(t.path(), &c, "pre-1", "preprod", DB_ENV);
    publish(&c, t.path(), &ReleaseOpts::new("1.0.0"));
    c.deploy_wait("1.0.0", "preprod").ok();
    agent.wait_serving("1.0.0");

    // 6.0.0 never gets healthy; 7.0.0 is deployed while pre-1 is still
    // activating 6.0.0, so 6.0.0's rollout is superseded before pre-1 is judged.
    publish(
        &c,
        t.path(),
        &ReleaseOpts {
            healthy: false,
            ..ReleaseOpts::new("6.0.0")
        },
    );
    publish(&c, t.path(), &ReleaseOpts::new("7.0.0"));
    c.ctl(&["deploy", "web", "6.0.0", "--env", "preprod"]).ok();
    eventually(WAIT, "pre-1 to activate 6.0.0", || {
        (steps(&agent, "6.0.0", "flip") == 1).then_some(())
    });
    c.ctl(&["deploy", "web", "7.0.0", "--env", "preprod"]).ok();
    agent.wait_serving("7.0.0");
    assert_eq!(
        steps(&agent, "6.0.0", "rollback"),
        1,
        "pre-1 rolled 6.0.0 back: {}",
        agent.deploy_log()
    );
    let history = c.ctl(&["history", "web", "--json"]).ok().json();
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["action"] != "rollout-revert" && e["action"] != "rollout-halt"),
        "6.0.0's rollout was superseded, not judged: {history}"
    );

    // 6.0.0 never ran healthy here: the rollback goes to 1.0.0.
    let out = c
        .ctl(&[
            "rollback",
            "web",
            "--env",
            "preprod",
            "--wait",
            "--timeout",
            "60",
        ])
        .ok();
    assert!(out.stdout.contains("-> 1.0.0"), "{}", out.stdout);
    agent.wait_serving("1.0.0");
    assert_eq!(
        steps(&agent, "6.0.0", "flip"),
        1,
        "6.0.0 was not tried again"
    );
}
