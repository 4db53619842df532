//! A new app in one command: `slipctl apps add` declares an app's host
//! settings on the controller; every joined host its selector places it on
//! (and whose `accept_apps` names it) runs it, with a host's override on top,
//! and keeps running it without the controller. A host that cannot run the
//! settings (an env file missing there, an app it does not accept) refuses
//! them, and slipctl undoes the change everywhere and names the host.
//! Removing the app stops it on every host.

use std::path::{Path, PathBuf};
use std::time::Duration;

use integration_tests::{
    Agent, Controller, CtlOutput, ReleaseOpts, eventually, free_port, http_get, join_host, publish,
    wait_hosts_connected,
};

/// A joined host (`integration_tests::join_host`), started; `accept`: its
/// accept_apps instead of join's `["*"]`.
fn joined(c: &Controller, dir: &Path, host: &str, port: u16, accept: Option<&str>) -> Agent {
    let joined = join_host(c, dir, host, "preprod");
    if let Some(accept) = accept {
        let cfg = std::fs::read_to_string(&joined.config).unwrap();
        assert!(cfg.contains("accept_apps = [\"*\"]"), "{cfg}");
        std::fs::write(&joined.config, cfg.replace("accept_apps = [\"*\"]", accept)).unwrap();
    }
    // The release links shared/.env; the app's variables come from the
    // env file the declaration names.
    let shared = joined.state_dir.join("apps/web/shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join(".env"), "").unwrap();
    let mut agent = Agent::with_config(dir, host, &joined.config, &joined.state_dir, port);
    agent.spawn();
    wait_hosts_connected(c, &[host]);
    agent
}

fn show(c: &Controller) -> CtlOutput {
    c.ctl(&["apps", "show", "web", "--env", "preprod", "-o", "json"])
}

fn declared_apps(state: &Path) -> serde_json::Value {
    let path: PathBuf = state.join("declared-apps.json");
    serde_json::from_slice(&std::fs::read(path).unwrap_or_default())
        .unwrap_or(serde_json::Value::Null)
}

#[test]
fn an_app_added_on_the_controller_runs_on_its_hosts_and_removing_it_stops_it() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let env_file = t.path().join("web.env");
    std::fs::write(&env_file, "DATABASE_URL=postgres://app@db/app\n").unwrap();
    let env_file = env_file.to_str().unwrap().to_string();
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let mut h1 = joined(&c, t.path(), "h1", p1, None);
    let h2 = joined(&c, t.path(), "h2", p2, None);
    // h3 takes only the apps its operator named: not web.
    let h3 = joined(&c, t.path(), "h3", p3, Some("accept_apps = [\"api\"]"));
    publish(&c, t.path(), &ReleaseOpts::new("1.0.0"));

    // An env file no host has: every host refuses, nothing stays declared.
    let port = p1.to_string();
    let out = c.ctl(&[
        "apps",
        "add",
        "web",
        "--env",
        "preprod",
        "--port",
        &port,
        "--env-file",
        "/nonexistent/web.env",
    ]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    let err = out.stderr.trim();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains(": env file /nonexistent/web.env does not exist on this host")
            && err.contains("the change was undone"),
        "{err}"
    );
    assert_eq!(show(&c).code, 5, "not declared after the undo");

    // h3 does not accept web: refused there, undone everywhere.
    let out = c.ctl(&[
        "apps",
        "add",
        "web",
        "--env",
        "preprod",
        "--port",
        &port,
        "--env-file",
        &env_file,
    ]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains("h3: web is not in this host's accept_apps (api)"),
        "{}",
        out.stderr
    );
    eventually(Duration::from_secs(10), "h1 to drop the undone app", || {
        let d = declared_apps(&h1.state_dir);
        (d["apps"].as_object().is_some_and(|a| a.is_empty())).then_some(())
    });

    // Placed on h1 and h2 only, by label; h2 on its own port (an override).
    for h in ["h1", "h2"] {
        c.ctl(&["hosts", "set", h, "--label", "role=web"]).ok();
    }
    c.ctl(&[
        "apps",
        "place",
        "web",
        "--env",
        "preprod",
        "--selector",
        "role=web",
    ])
    .ok();
    let out = c
        .ctl(&[
            "apps",
            "add",
            "web",
            "--env",
            "preprod",
            "--port",
            &port,
            "--env-file",
            &env_file,
            "--keep",
            "3",
        ])
        .ok();
    assert!(out.stdout.contains("port="), "{}", out.stdout);
    c.ctl(&[
        "apps",
        "add",
        "web",
        "--env",
        "preprod",
        "--host",
        "h2",
        "--port",
        &p2.to_string(),
    ])
    .ok();
    let shown = show(&c).ok().json();
    assert_eq!(shown["settings"]["port"], p1);
    assert_eq!(shown["overrides"]["h2"]["port"], p2);
    let hosts: Vec<&str> = shown["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["host"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, ["h1", "h2"], "h3 is not placed");

    // Another app on a port web holds on a host: refused before any host
    // hears of it, in one line naming the host.
    let out = c.ctl(&["apps", "add", "api", "--env", "preprod", "--port", &port]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert_eq!(
        out.stderr.trim(),
        format!("error: port {p1} on host h1 is already app web's")
    );
    let out = c.ctl(&["apps", "show", "api", "--env", "preprod"]);
    assert_eq!(out.code, 5, "nothing stored: {}", out.stdout);

    // Without waiting there is no undo: h3 keeps refusing, and says why on
    // the host too.
    c.ctl(&["apps", "add", "worker", "--env", "preprod", "--no-wait"])
        .ok();
    let line = eventually(Duration::from_secs(20), "h3 to refuse worker", || {
        let out = h3.local(&["status", "--json"]);
        let rows: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
        rows.as_array()?
            .iter()
            .find(|r| r["app"] == "worker")
            .cloned()
    });
    assert_eq!(line["state"], "refused");
    assert_eq!(line["source"], "declared");
    assert_eq!(
        line["note"],
        "worker is not in this host's accept_apps (api)"
    );
    let table = h3.local(&["status"]).stdout;
    assert!(
        table.contains("worker") && table.contains("refused"),
        "{table}"
    );
    c.ctl(&["apps", "remove", "worker", "--env", "preprod"])
        .ok();

    // The environment's release: both hosts run it, each on its port, with
    // the variables of the declared env file.
    let out = c.deploy_wait("1.0.0", "preprod");
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    h1.wait_serving("1.0.0");
    h2.wait_serving("1.0.0");
    assert!(http_get(p3, "/").is_none(), "h3 runs nothing");

    // The declaration is the host's own: an agent restarted while the
    // controller is down runs the app as before.
    let mut c = c;
    c.kill();
    h1.kill();
    h1.spawn();
    eventually(Duration::from_secs(20), "h1's agent to adopt web", || {
        h1.local(&["status", "--json"])
            .stdout
            .contains("\"web\"")
            .then_some(())
    });
    h1.wait_serving("1.0.0");
    c.restart();
    wait_hosts_connected(&c, &["h1"]);

    // A change of settings reaches both hosts; then removing the app stops it.
    let out = c
        .ctl(&[
            "apps", "set", "web", "--env", "preprod", "--keep", "4", "-o", "json",
        ])
        .ok()
        .json();
    assert_eq!(out["settings"]["keep_releases"], 4);
    assert_eq!(out["hosts"].as_array().unwrap().len(), 2);
    assert!(
        out["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["took"] == true && h["health"] == "healthy"),
        "{out}"
    );
    c.ctl(&["apps", "remove", "web", "--env", "preprod"]).ok();
    for (h, port) in [(&h1, p1), (&h2, p2)] {
        eventually(
            Duration::from_secs(20),
            &format!("{} to stop web", h.host),
            || http_get(port, "/").is_none().then_some(()),
        );
    }
    assert_eq!(show(&c).code, 5);
    drop(h3);
}

/// An agent SIGKILLed after it kept a new declaration, before it told the
/// controller or applied it: restarted, it runs the app, and the controller
/// learns it took the revision (`apps add` then finds it done).
#[test]
fn an_agent_killed_after_keeping_a_declaration_applies_it_when_restarted() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let mut h = join_host(&c, t.path(), "k1", "preprod");
    h.spawn_env(&[("SLIPWAY_FAILPOINT", "declared-saved")]);
    wait_hosts_connected(&c, &["k1"]);
    let rel = integration_tests::worker_release(t.path(), "1.0.0");
    c.ctl(&[
        "publish",
        rel.to_str().unwrap(),
        "--app",
        "web",
        "--version",
        "1.0.0",
        "--allow-dirty",
    ])
    .ok();
    c.ctl(&["deploy", "web", "1.0.0", "--env", "preprod"]).ok();
    c.ctl(&["apps", "add", "web", "--env", "preprod", "--no-wait"])
        .ok();
    h.wait_exit(
        Duration::from_secs(20),
        "the agent to die at declared-saved",
    );
    assert!(
        h.state_dir.join("declared-apps.json").exists(),
        "kept before the kill"
    );
    h.spawn();
    // (Once it is back: `apps set` waits for the hosts connected then.)
    wait_hosts_connected(&c, &["k1"]);
    // The same command, run again, finds the host done.
    let out = c
        .ctl(&[
            "apps",
            "set",
            "web",
            "--env",
            "preprod",
            "--stop-grace",
            "1",
            "-o",
            "json",
        ])
        .ok()
        .json();
    let host = &out["hosts"][0];
    assert_eq!(
        (
            host["host"].as_str(),
            host["took"].as_bool(),
            host["running_version"].as_str(),
            host["health"].as_str()
        ),
        (Some("k1"), Some(true), Some("1.0.0"), Some("healthy")),
        "{out}"
    );
    let runs = std::fs::read_dir(h.state_dir.join("apps/web/run"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .count();
    assert_eq!(runs, 1, "one instance of the worker");
}
