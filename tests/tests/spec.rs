//! The release spec end to end: several processes with their own probes and
//! working dirs, hooks in order and in the right dirs, the restart warning.

use integration_tests::{Agent, Controller, ReleaseOpts, exit, sample_release};

const DB_ENV: &str = "DATABASE_URL=postgres://app@db/app\n";

/// A release of the sample app with `spec` as its slipway.toml.
fn publish_with_spec(
    c: &Controller,
    dir: &std::path::Path,
    version: &str,
    healthy: bool,
    spec: &str,
) {
    let rel = sample_release(
        dir,
        &ReleaseOpts {
            healthy,
            ..ReleaseOpts::new(version)
        },
    );
    std::fs::create_dir_all(rel.join("jobs")).unwrap();
    std::fs::write(rel.join("slipway.toml"), spec).unwrap();
    c.ctl(&[
        "publish",
        rel.to_str().unwrap(),
        "--app",
        "web",
        "--version",
        version,
    ])
    .ok();
}

const MULTI: &str = r#"
[processes.web]
command = ["bin/slipway-sample-app"]
required_env = ["DATABASE_URL"]
health = { http = "/health", timeout_secs = 5, min_healthy_secs = 1 }

[processes.worker]
command = ["sh", "-c", "exec sleep 600"]
cwd = "jobs"
required_env = ["DATABASE_URL"]
health = { min_healthy_secs = 1 }

[processes.probe]
command = ["sh", "-c", "exec sleep 600"]
health = { command = ["sh", "-c", "test -f sample.conf"], timeout_secs = 5, min_healthy_secs = 1 }

[hooks.prepare]
command = ["sh", "-c", "echo \"prepare $(basename $PWD)\" >> ../../shared/hooks.log"]

[hooks.post_activate]
command = ["sh", "-c", "echo \"post_activate $(basename $PWD)\" >> ../../shared/hooks.log"]

[hooks.on_rollback]
command = ["sh", "-c", "echo \"on_rollback $(basename $PWD)\" >> ../../shared/hooks.log"]

[restart_warning]
http = "/restart-warning"
seconds = 1

[shared]
files = [".env"]
"#;

fn hooks_log(agent: &Agent) -> Vec<String> {
    std::fs::read_to_string(agent.app_dir().join("shared/hooks.log"))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn several_processes_hooks_in_order_and_the_restart_warning() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let agent = Agent::start(t.path(), &c, "pre-1", "preprod", DB_ENV);

    publish_with_spec(&c, t.path(), "1.0.0", true, MULTI);
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
    assert_eq!(
        hooks_log(&agent),
        vec!["prepare 1.0.0", "post_activate 1.0.0"]
    );
    // Every process runs, each from its own dir inside the release.
    let run = agent.app_dir().join("run");
    for p in ["web", "worker", "probe"] {
        assert!(run.join(format!("{p}.json")).is_file(), "{p} is supervised");
    }
    let worker: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("worker.json")).unwrap()).unwrap();
    let cwd = std::fs::read_link(format!("/proc/{}/cwd", worker["pid"])).unwrap();
    assert!(cwd.ends_with("releases/1.0.0/jobs"), "{}", cwd.display());

    // v2 is broken: the restart warning reaches v1 first, v2's on_rollback runs
    // in v2's dir, v1 comes back.
    publish_with_spec(&c, t.path(), "2.0.0", false, MULTI);
    let out = c.ctl(&[
        "deploy",
        "web",
        "2.0.0",
        "--env",
        "preprod",
        "--wait",
        "--timeout",
        "60",
    ]);
    assert_eq!(out.code, exit::ROLLOUT_FAILED, "{}", out.stdout);
    agent.wait_serving("1.0.0");
    assert!(
        agent
            .app_dir()
            .join("releases/1.0.0/restart-warned")
            .is_file(),
        "v1 was warned before its restart"
    );
    assert_eq!(
        hooks_log(&agent),
        vec![
            "prepare 1.0.0",
            "post_activate 1.0.0",
            "prepare 2.0.0",
            "on_rollback 2.0.0"
        ]
    );
    let log = agent.deploy_log();
    let pos = |needle: &str| {
        log.find(needle)
            .unwrap_or_else(|| panic!("{needle} in deploy.log"))
    };
    assert!(pos("\"step\":\"restart_warning\"") < pos("\"version\":\"2.0.0\",\"step\":\"flip\""));
}

#[test]
fn a_port_probe_without_a_port_is_refused_before_anything_stops() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let agent = Agent::start_with(t.path(), &c, "pre-1", "preprod", DB_ENV, false);
    publish_with_spec(
        &c,
        t.path(),
        "1.0.0",
        true,
        "[processes.api]\ncommand = [\"bin/slipway-sample-app\"]\nhealth = { tcp = true }\n",
    );
    let out = c.ctl(&[
        "deploy",
        "web",
        "1.0.0",
        "--env",
        "preprod",
        "--wait",
        "--timeout",
        "60",
    ]);
    assert_eq!(out.code, exit::ROLLOUT_FAILED);
    assert!(
        out.stderr
            .contains("process api has an HTTP or TCP health check but no port"),
        "{}",
        out.stderr
    );
    assert!(
        !agent.app_dir().join("current").exists(),
        "nothing was activated"
    );
}

#[test]
fn a_process_port_from_the_spec_with_a_tcp_probe_and_a_failing_post_activate() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    // No port in the host config: the spec gives the process its own.
    let agent = Agent::start_with(t.path(), &c, "pre-1", "preprod", DB_ENV, false);
    let port = integration_tests::free_port();
    publish_with_spec(
        &c,
        t.path(),
        "1.0.0",
        true,
        &format!(
            "[processes.web]\ncommand = [\"bin/slipway-sample-app\"]\nport = {port}\nhealth = {{ tcp = true, min_healthy_secs = 1 }}\n\n[hooks.post_activate]\ncommand = [\"sh\", \"-c\", \"echo cache warm-up failed >&2; exit 2\"]\n"
        ),
    );
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
    let (status, body) =
        integration_tests::http_get(port, "/").expect("the app listens on the spec's port");
    assert_eq!((status, body.trim()), (200, "sample-app 1.0.0"));
    // post_activate failed: reported, the healthy release stays.
    let status = agent.status_json();
    assert_eq!(status["running_version"], "1.0.0");
    assert_eq!(status["state"], "healthy");
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .contains("cache warm-up failed"),
        "{status}"
    );
}
