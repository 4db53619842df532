//! kill -9 of the real agent at every step of a deploy, and of a rollback: the
//! agent is started with a kill point (`SLIPWAY_FAILPOINT`, the `failpoints`
//! feature the tests crate turns on) and SIGKILLs itself there, exactly as a
//! crash or a power cut would leave it. Restarted without one, it must
//! converge: the rollout ends as the release deserves (an agent restart is
//! never a verdict), exactly one copy of the app runs, `current` is right, no
//! deploy is left in progress, no temp dir is left, and no hook ran beside
//! another copy of itself.

use std::path::Path;
use std::time::Duration;

use integration_tests::{
    Agent, Controller, ReleaseOpts, eventually, exit, publish_dir, sample_release,
};

const DB_ENV: &str = "DATABASE_URL=postgres://app@db/app\n";
const WAIT: Duration = Duration::from_secs(60);

/// A hook script that notes, in the app dir, if another copy of itself is
/// alive when it starts, then takes a second (so a kill lands inside it).
fn guarded(name: &str, then: &str) -> String {
    format!(
        "p=$(cat ../../{name}.pid 2>/dev/null); if [ -n \"$p\" ] && [ -e /proc/$p/stat ] && [ \"$(cut -d' ' -f3 /proc/$p/stat)\" != Z ]; then echo \"$p $(cat /proc/$p/stat)\" >> ../../{name}.overlap; fi; echo $$ > ../../{name}.pid; sleep 1; {then}"
    )
}

/// Publishes the sample app at `version`; a failing release gets an
/// `on_rollback` hook as well.
fn publish(c: &Controller, dir: &Path, version: &str, healthy: bool) {
    let prepare = guarded("prepare", "echo migrated > .migrated");
    let rel = sample_release(
        dir,
        &ReleaseOpts {
            healthy,
            prepare: &prepare,
            ..ReleaseOpts::new(version)
        },
    );
    if !healthy {
        let spec = rel.join("slipway.toml");
        let mut text = std::fs::read_to_string(&spec).unwrap();
        text.push_str(&format!(
            "\n[hooks.on_rollback]\ncommand = [\"sh\", \"-c\", {:?}]\ntimeout_secs = 20\n",
            guarded("on_rollback", "echo undone >> ../../on_rollback.log")
        ));
        std::fs::write(spec, text).unwrap();
    }
    publish_dir(c, &rel, version);
}

/// Live processes running from under the agent's app dir.
fn app_processes(agent: &Agent) -> Vec<i32> {
    let root = std::fs::canonicalize(agent.app_dir()).unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rfind(')')
                .is_some_and(|i| stat[i + 1..].trim_start().starts_with('Z'));
            !zombie
                && std::fs::read_link(format!("/proc/{pid}/cwd"))
                    .is_ok_and(|cwd| cwd.starts_with(&root))
        })
        .collect()
}

/// Deploys 1.0.0, restarts the agent armed at `point`, deploys 2.0.0 (healthy
/// or not) with `--wait` while the agent kills itself there and comes back.
fn killed_at(point: &str, healthy: bool) {
    killed_at_in(point, healthy, "");
}

/// `killed_at` with extra host settings for the app (e.g. an activation mode).
fn killed_at_in(point: &str, healthy: bool, settings: &str) {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let mut agent = Agent::configured(t.path(), &c, "pre-1", "preprod", DB_ENV, true);
    agent.append_config(settings);
    agent.spawn();
    agent.wait_connected(&c);
    publish(&c, t.path(), "1.0.0", true);
    publish(&c, t.path(), "2.0.0", healthy);
    c.deploy_wait("1.0.0", "preprod").ok();
    agent.wait_serving("1.0.0");

    agent.kill();
    agent.spawn_env(&[("SLIPWAY_FAILPOINT", point)]);
    agent.wait_connected(&c);
    let out = std::thread::scope(|s| {
        let deploy = s.spawn(|| c.deploy_wait("2.0.0", "preprod"));
        let died = agent.wait_exit(WAIT, &format!("the agent to die at {point}"));
        assert!(!died.success(), "the agent ended by its kill point: {died}");
        agent.spawn();
        deploy.join().unwrap()
    });

    let app = agent.app_dir();
    let serving = if healthy { "2.0.0" } else { "1.0.0" };
    if healthy {
        assert_eq!(
            out.code, 0,
            "an agent restart is no verdict on the release: {}{}",
            out.stdout, out.stderr
        );
    } else {
        assert_eq!(out.code, exit::ROLLOUT_FAILED, "{}", out.stdout);
        assert!(
            out.stderr.contains("503") && !out.stderr.contains("restarted"),
            "the release's own failure is the reason: {}",
            out.stderr
        );
    }
    agent.wait_serving(serving);
    let status = eventually(WAIT, "the deploy to be finished on the host", || {
        let s = agent.status_json();
        (s["deploy"].is_null() && s["state"] != "activating").then_some(s)
    });
    if !healthy {
        let reason = status["failed"]["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("answered 503") && !reason.contains("restarted"),
            "{status}"
        );
        let undone = std::fs::read_to_string(app.join("on_rollback.log")).unwrap_or_default();
        assert_eq!(
            undone.lines().count(),
            1,
            "on_rollback ran once: {undone:?}"
        );
    }
    assert_eq!(
        std::fs::read_link(app.join("current")).unwrap().to_str(),
        Some(format!("releases/{serving}").as_str())
    );
    let procs = eventually(WAIT, "one copy of the app", || {
        let p = app_processes(&agent);
        (p.len() == 1).then_some(p)
    });
    assert_eq!(
        recorded_pids(&agent),
        procs,
        "the one running is the one recorded"
    );
    let leftovers: Vec<String> = std::fs::read_dir(app.join("releases"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temp dirs left: {leftovers:?}");
    for hook in ["prepare", "on_rollback"] {
        let overlap = std::fs::read_to_string(app.join(format!("{hook}.overlap")));
        assert!(
            overlap.is_err(),
            "{hook} ran beside a copy of itself: {overlap:?}"
        );
    }
    assert!(
        agent.log_text().contains(&format!(
            "failpoint reached: killing this agent point=\"{point}\""
        )),
        "the kill point was the one that ended the agent"
    );
}

/// Pids in the agent's pid files (`run/<process>[@<instance>].json`).
fn recorded_pids(agent: &Agent) -> Vec<i32> {
    std::fs::read_dir(agent.app_dir().join("run"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .filter_map(|e| {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
            v["pid"].as_i64().map(|p| p as i32)
        })
        .collect()
}

macro_rules! kill_points {
    ($($name:ident: $point:literal, $healthy:literal;)*) => {$(
        #[test]
        fn $name() {
            killed_at($point, $healthy);
        }
    )*};
}

kill_points! {
    killed_at_verify: "step:verify", true;
    killed_at_fetch: "step:fetch", true;
    killed_while_the_blob_streams_into_the_unpack: "fetch-streaming", true;
    killed_with_the_tree_synced_but_not_named: "unpack-synced", true;
    killed_at_unpack: "step:unpack", true;
    killed_at_prepare: "step:prepare", true;
    killed_while_the_prepare_hook_runs: "hook-started:prepare", true;
    killed_between_hook_spawn_and_record: "hook-spawned", true;
    killed_at_stop: "step:stop", true;
    killed_at_flip: "step:flip", true;
    killed_at_start: "step:start", true;
    killed_between_spawn_and_pid_file: "supervisor-spawned", true;
    killed_at_health: "step:health", true;
    killed_at_hold: "step:hold", true;
    killed_at_healthy: "step:healthy", true;
    killed_at_rolling_back: "step:rolling_back", false;
    killed_while_on_rollback_runs: "hook-started:on_rollback", false;
    killed_after_the_flip_back: "rollback-flipped", false;
}

/// The same kill points with the agent's proxy in front (`activation =
/// "proxy"`): the old instance serves until the new one is proven, so the
/// restarted agent must route to the right one and converge on one instance.
macro_rules! proxy_kill_points {
    ($($name:ident: $point:literal, $healthy:literal;)*) => {$(
        #[test]
        fn $name() {
            killed_at_in($point, $healthy, "activation = \"proxy\"\ndrain_timeout_secs = 3\n");
        }
    )*};
}

proxy_kill_points! {
    proxy_killed_at_stop: "step:stop", true;
    proxy_killed_at_start: "step:start", true;
    proxy_killed_between_spawn_and_pid_file: "supervisor-spawned", true;
    proxy_killed_at_health: "step:health", true;
    proxy_killed_at_hold: "step:hold", true;
    proxy_killed_at_healthy: "step:healthy", true;
    proxy_killed_after_traffic_moved: "traffic-moved", true;
    proxy_killed_at_rolling_back: "step:rolling_back", false;
    proxy_killed_after_the_flip_back: "rollback-flipped", false;
}
