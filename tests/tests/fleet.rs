//! A fleet: one controller and six agents on loopback, each with its own
//! state dir, host identity and app port. Rollouts go canary → batches, halt
//! and revert on failure, skip offline hosts that converge when back, survive
//! a controller restart; promotion waits for the soak and refuses drift.

use std::time::Duration;

use integration_tests::{
    Agent, Controller, ReleaseOpts, eventually, exit, publish, sample_release, status_row,
};

/// `web` log lines of `agent` for `version` at `step`.
fn steps(agent: &Agent, version: &str, step: &str) -> usize {
    agent
        .deploy_log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["version"] == version && v["step"] == step)
        .count()
}

/// Starts one agent per name in `env` and waits until each has said hello.
fn fleet(dir: &std::path::Path, c: &Controller, env: &str, names: &[&str]) -> Vec<Agent> {
    let agents: Vec<Agent> = names
        .iter()
        .map(|h| Agent::start(dir, c, h, env, "DATABASE_URL=postgres://db/app\n"))
        .collect();
    for h in names {
        eventually(Duration::from_secs(30), &format!("{h} to connect"), || {
            status_row(c, h).filter(|r| r["connected"] == true)
        });
    }
    agents
}

fn rollout(c: &Controller, env: &str) -> serde_json::Value {
    c.ctl(&["rollout", "status", "web", "--env", env, "--json"])
        .ok()
        .json()
}

/// Step of every host in the rollout, in host order.
fn plan(r: &serde_json::Value) -> Vec<(String, u64)> {
    let mut p: Vec<(String, u64)> = r["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["host"].as_str().unwrap().to_string(),
                h["step"].as_u64().unwrap(),
            )
        })
        .collect();
    p.sort();
    p
}

fn outcomes(r: &serde_json::Value) -> Vec<(String, String)> {
    let mut o: Vec<(String, String)> = r["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["host"].as_str().unwrap().to_string(),
                h["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    o.sort();
    o
}

fn deploy(c: &Controller, version: &str, extra: &[&str]) -> integration_tests::CtlOutput {
    let mut args = vec![
        "deploy",
        "web",
        version,
        "--env",
        "preprod",
        "--wait",
        "--timeout",
        "120",
    ];
    args.extend_from_slice(extra);
    c.ctl(&args)
}

const HOSTS: [&str; 6] = ["pre-1", "pre-2", "pre-3", "pre-4", "pre-5", "pre-6"];

#[test]
fn rollouts_go_canary_then_batches_and_revert_what_they_changed() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let mut agents = fleet(t.path(), &c, "preprod", &HOSTS);
    // FEATURE_FLAG exists on the first three hosts only: 3.0.0 needs it.
    for a in &agents[..3] {
        std::fs::write(
            a.app_dir().join("shared/.env"),
            "DATABASE_URL=postgres://db/app\nFEATURE_FLAG=1\n",
        )
        .unwrap();
    }

    publish(&c, t.path(), &ReleaseOpts::new("1.0.0"));
    deploy(&c, "1.0.0", &["--canary", "0", "--batch", "100%"]).ok();
    assert_eq!(plan(&rollout(&c, "preprod")).len(), 6);

    // 2.0.0: canary first, then batches of two.
    publish(&c, t.path(), &ReleaseOpts::new("2.0.0"));
    let out = deploy(&c, "2.0.0", &["--canary", "1", "--batch", "2"]).ok();
    let r = rollout(&c, "preprod");
    assert_eq!(r["state"], "succeeded");
    assert_eq!(r["steps"], 4);
    assert_eq!(
        plan(&r),
        vec![
            ("pre-1".into(), 0),
            ("pre-2".into(), 1),
            ("pre-3".into(), 1),
            ("pre-4".into(), 2),
            ("pre-5".into(), 2),
            ("pre-6".into(), 3)
        ]
    );
    let seen = |needle: &str| {
        out.stdout
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} in:\n{}", out.stdout))
    };
    assert!(
        seen("pre-1: 2.0.0 healthy") < seen("pre-2: updating to 2.0.0")
            && seen("pre-3: 2.0.0 healthy") < seen("pre-4: updating to 2.0.0")
            && seen("pre-5: 2.0.0 healthy") < seen("pre-6: updating to 2.0.0"),
        "each step starts after the previous one is healthy:\n{}",
        out.stdout
    );
    for a in &agents {
        a.wait_serving("2.0.0");
    }

    // 3.0.0 never gets healthy: the canary fails, the rollout halts and
    // reverts it, and no other host is touched.
    publish(
        &c,
        t.path(),
        &ReleaseOpts {
            healthy: false,
            ..ReleaseOpts::new("3.0.0")
        },
    );
    let out = deploy(&c, "3.0.0", &["--canary", "1", "--batch", "2"]);
    assert_eq!(
        out.code,
        exit::ROLLOUT_FAILED,
        "--wait fails a halted rollout: {}",
        out.stdout
    );
    assert!(
        out.stderr.contains("canary failed") && out.stderr.contains("reverted to 2.0.0"),
        "{}",
        out.stderr
    );
    let r = rollout(&c, "preprod");
    assert_eq!(r["state"], "reverted");
    assert_eq!(outcomes(&r)[0], ("pre-1".into(), "failed".into()));
    for a in &agents[1..] {
        assert_eq!(
            steps(a, "3.0.0", "fetch") + steps(a, "3.0.0", "flip"),
            0,
            "{} never saw 3.0.0",
            a.host
        );
        a.wait_serving("2.0.0");
    }
    agents[0].wait_serving("2.0.0");
    assert_eq!(status_row(&c, "pre-3").unwrap()["desired"], "2.0.0");

    // 4.0.0 needs FEATURE_FLAG: canary and batch 1 (pre-1..3) take it, batch 2
    // (pre-4, pre-5) fails; the threshold (0) is crossed, and batches 1 and
    // 2 go back to 2.0.0 at once. pre-6 is never touched.
    publish(
        &c,
        t.path(),
        &ReleaseOpts {
            required_env: &["DATABASE_URL", "FEATURE_FLAG"],
            ..ReleaseOpts::new("4.0.0")
        },
    );
    let out = deploy(&c, "4.0.0", &["--canary", "1", "--batch", "2"]);
    assert_eq!(out.code, exit::ROLLOUT_FAILED, "{}", out.stdout);
    assert!(
        out.stderr.contains("failure threshold crossed at step 3/4")
            && out.stderr.contains("FEATURE_FLAG")
            && out.stderr.contains("reverted to 2.0.0"),
        "{}",
        out.stderr
    );
    for a in &agents[..3] {
        assert!(
            steps(a, "4.0.0", "deploy") == 1,
            "{} ran 4.0.0 healthy first: {}",
            a.host,
            a.deploy_log()
        );
    }
    for a in &agents[..5] {
        a.wait_serving("2.0.0");
    }
    assert_eq!(steps(&agents[5], "4.0.0", "flip"), 0, "pre-6 untouched");
    let r = rollout(&c, "preprod");
    assert_eq!(r["state"], "reverted");
    let o = outcomes(&r);
    assert!(
        o[..3].iter().all(|(_, v)| v == "reverted"),
        "canary and batch 1 were changed, then reverted: {o:?}"
    );
    assert!(
        o[3..5].iter().any(|(_, v)| v == "failed"),
        "batch 2 failed: {o:?}"
    );
    assert_eq!(o[5].1, "pending", "never admitted: {o:?}");

    // A host offline during a rollout is skipped under `--offline skip` (the
    // default, wait, would hold the batch for it), and converges when back;
    // the success says it did not judge it.
    agents[5].kill();
    eventually(Duration::from_secs(30), "pre-6 offline", || {
        status_row(&c, "pre-6").filter(|r| r["status"] == "offline")
    });
    let hosts_json = c.ctl(&["hosts", "--offline", "--json"]).ok().json();
    assert_eq!(hosts_json.as_array().unwrap().len(), 1);
    assert_eq!(hosts_json[0]["name"], "pre-6");
    publish(&c, t.path(), &ReleaseOpts::new("5.0.0"));
    let out = deploy(
        &c,
        "5.0.0",
        &["--canary", "1", "--batch", "50%", "--offline", "skip"],
    )
    .ok();
    assert!(
        out.stdout
            .contains("pre-6: offline: skipped, not judged; converges when back")
            && out
                .stdout
                .contains("succeeded with 1 skipped: not judged (offline): pre-6"),
        "{}",
        out.stdout
    );
    assert_eq!(rollout(&c, "preprod")["skipped"], 1);
    let summary = c.ctl(&["status", "--json"]).ok().json();
    assert_eq!(summary["apps"][0]["offline"], 1, "{summary}");
    assert_eq!(summary["apps"][0]["status"], "offline");
    assert_eq!(summary["environments"][0]["status"], "offline");
    agents[5].spawn();
    agents[5].wait_serving("5.0.0");
    eventually(Duration::from_secs(30), "every host ok", || {
        let s = c.ctl(&["status", "--json"]).ok().json();
        (s["apps"][0]["status"] == "ok" && s["apps"][0]["at_desired"] == 6).then_some(())
    });

    // A new host joining the environment gets the desired release by itself.
    let newcomer = Agent::start(
        t.path(),
        &c,
        "pre-7",
        "preprod",
        "DATABASE_URL=postgres://db/app\n",
    );
    newcomer.wait_serving("5.0.0");

    // Abort: a rollout paused after its canary is stopped and the canary reverted.
    publish(&c, t.path(), &ReleaseOpts::new("6.0.0"));
    c.ctl(&[
        "deploy", "web", "6.0.0", "--env", "preprod", "--canary", "1", "--pause", "600",
    ])
    .ok();
    agents[0].wait_serving("6.0.0");
    let out = c.ctl(&["rollout", "abort", "web", "--env", "preprod"]).ok();
    assert!(out.stdout.contains("aborted"), "{}", out.stdout);
    agents[0].wait_serving("5.0.0");
    assert_eq!(steps(&agents[1], "6.0.0", "flip"), 0);
    let history = c.ctl(&["history", "web", "--json"]).ok().json();
    let actions: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"rollout-abort") && actions.contains(&"rollout-revert"),
        "{actions:?}"
    );
    // Paused is not blind: a canary that fails while the rollout is paused
    // still halts it and reverts.
    publish(
        &c,
        t.path(),
        &ReleaseOpts {
            healthy: false,
            ..ReleaseOpts::new("7.0.0")
        },
    );
    c.ctl(&[
        "deploy", "web", "7.0.0", "--env", "preprod", "--canary", "1",
    ])
    .ok();
    c.ctl(&["rollout", "pause", "web", "--env", "preprod"]).ok();
    eventually(
        Duration::from_secs(60),
        "the paused rollout to revert",
        || (rollout(&c, "preprod")["state"] == "reverted").then_some(()),
    );
    agents[0].wait_serving("5.0.0");
}

#[test]
fn a_controller_restarted_mid_rollout_finishes_it_host_by_host() {
    let t = tempfile::tempdir().unwrap();
    let mut c = Controller::start(t.path());
    let agents = fleet(t.path(), &c, "preprod", &HOSTS);
    c.ctl(&[
        "hosts",
        "set",
        "pre-4",
        "--label",
        "canary=true",
        "--criticality",
        "low",
    ])
    .ok();
    c.ctl(&[
        "envs", "set", "preprod", "--canary", "1", "--batch", "2", "--pause", "2",
    ])
    .ok();
    publish(&c, t.path(), &ReleaseOpts::new("1.0.0"));
    deploy(&c, "1.0.0", &[]).ok();
    let r = rollout(&c, "preprod");
    assert_eq!(r["steps"], 4, "the environment's strategy applies");
    assert_eq!(
        plan(&r).iter().find(|(_, s)| *s == 0).unwrap().0,
        "pre-4",
        "the host labelled canary=true goes first"
    );
    let listed = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["hosts", "--json"];
        all.extend_from_slice(args);
        c.ctl(&all)
            .ok()
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(listed(&["--label", "canary=true"]), ["pre-4"]);
    assert_eq!(
        listed(&["--criticality", "low", "--env", "preprod"]),
        ["pre-4"]
    );
    assert_eq!(listed(&["--criticality", "high"]), Vec::<String>::new());

    publish(&c, t.path(), &ReleaseOpts::new("2.0.0"));
    c.ctl(&["deploy", "web", "2.0.0", "--env", "preprod"]).ok();
    eventually(Duration::from_secs(60), "batch 1 admitted", || {
        (rollout(&c, "preprod")["step"].as_u64() >= Some(1)).then_some(())
    });
    let paused = c.ctl(&["rollout", "pause", "web", "--env", "preprod"]).ok();
    assert!(paused.stdout.contains("paused"), "{}", paused.stdout);
    // A paused rollout does not end by itself: --wait gives up at --timeout, exit 6.
    let out = c.ctl(&[
        "rollout",
        "status",
        "web",
        "--env",
        "preprod",
        "--wait",
        "--timeout",
        "1",
    ]);
    assert_eq!(out.code, exit::ROLLOUT_FAILED, "{}", out.stderr);
    assert!(
        out.stderr.contains("timed out; rollout") && out.stderr.contains(" is paused at step"),
        "{}",
        out.stderr
    );
    let step = rollout(&c, "preprod")["step"].as_u64().unwrap();
    c.ctl(&["rollout", "resume", "web", "--env", "preprod"])
        .ok();

    // Killed mid-rollout, and down long enough for every host to look
    // unheard of when it comes back: the state is in the database, and hosts
    // get the time to reconnect before anyone is judged offline.
    c.kill();
    std::thread::sleep(Duration::from_secs(9)); // longer than three heartbeats: the case under test
    c.restart();
    let out = c
        .ctl(&[
            "rollout",
            "status",
            "web",
            "--env",
            "preprod",
            "--wait",
            "--timeout",
            "120",
        ])
        .ok();
    assert!(out.stdout.contains("succeeded"), "{}", out.stdout);
    let r = rollout(&c, "preprod");
    assert!(r["step"].as_u64().unwrap() > step);
    assert!(
        outcomes(&r).iter().all(|(_, o)| o == "healthy"),
        "every host proved healthy, none skipped as offline: {:?}",
        outcomes(&r)
    );
    for a in &agents {
        a.wait_serving("2.0.0");
    }

    // A label selector places the app on pre-1..3 only: the others keep what
    // they run and get no new release, until a label puts them in.
    for h in &HOSTS[..3] {
        c.ctl(&["hosts", "set", h, "--label", "role=web"]).ok();
    }
    let placed = c
        .ctl(&[
            "apps",
            "place",
            "web",
            "--env",
            "preprod",
            "--selector",
            "role=web",
        ])
        .ok();
    assert!(
        placed.stdout.contains("pre-1,pre-2,pre-3"),
        "{}",
        placed.stdout
    );
    publish(&c, t.path(), &ReleaseOpts::new("3.0.0"));
    deploy(&c, "3.0.0", &[]).ok();
    assert_eq!(plan(&rollout(&c, "preprod")).len(), 3);
    for a in &agents[..3] {
        a.wait_serving("3.0.0");
    }
    let apps = c.ctl(&["apps", "--env", "preprod", "--json"]).ok().json();
    assert_eq!(
        apps[0]["excluded"],
        serde_json::json!(["pre-4", "pre-5", "pre-6"])
    );
    let summary = c.ctl(&["status", "--json"]).ok().json();
    assert_eq!(summary["apps"][0]["hosts"], 3, "{summary}");
    assert_eq!(summary["apps"][0]["status"], "ok");
    let table = c.ctl(&["status"]).ok().stdout;
    assert!(
        table.contains("pre-4, pre-5, pre-6 outside its selector keep what they run"),
        "{table}"
    );
    c.ctl(&["hosts", "set", "pre-4", "--label", "role=web"])
        .ok();
    agents[3].wait_serving("3.0.0");
    assert_eq!(steps(&agents[4], "3.0.0", "flip"), 0, "pre-5 left out");
    assert_eq!(agents[4].app_says().as_deref(), Some("sample-app 2.0.0"));
}

#[test]
fn promotion_waits_for_the_soak_and_refuses_drift() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let pre = fleet(t.path(), &c, "preprod", &["pre-1", "pre-2", "pre-3"]);
    let prod = fleet(t.path(), &c, "prod", &["prod-1", "prod-2", "prod-3"]);
    c.ctl(&["envs", "set", "prod", "--soak", "5"]).ok();

    publish(&c, t.path(), &ReleaseOpts::new("1.0.0"));
    deploy(&c, "1.0.0", &[]).ok();
    let promote = |force: bool| {
        let mut args = vec![
            "promote",
            "web",
            "--from",
            "preprod",
            "--to",
            "prod",
            "--wait",
            "--timeout",
            "120",
        ];
        if force {
            args.push("--force");
        }
        c.ctl(&args)
    };
    let out = promote(false);
    assert_eq!(out.code, exit::FAILED, "{}", out.stdout);
    assert!(
        out.stderr.contains("of the 5s soak"),
        "refused before the soak: {}",
        out.stderr
    );
    assert!(
        status_row(&c, "prod-1").unwrap()["running"] == "",
        "nothing reached prod"
    );
    // --force is the promoter's: a deployer cannot skip the soak, even into a
    // non-production environment.
    c.ctl(&["envs", "set", "staging", "--create", "--soak", "600"])
        .ok();
    let ci = c.token("ci", &["deployer"]);
    let out = c.ctl_as(
        &ci,
        &[
            "promote", "web", "--from", "preprod", "--to", "staging", "--force",
        ],
    );
    assert_eq!(out.code, exit::PERMISSION_DENIED);
    assert!(
        out.stderr.contains("--force needs the promoter role") && out.stderr.contains("soak"),
        "{}",
        out.stderr
    );
    let out = c.ctl(&["envs", "set", "staging", "--batch-timeout", "0"]);
    assert!(
        out.code == exit::FAILED && out.stderr.contains("batch timeout: at least 1 second"),
        "{}",
        out.stderr
    );
    let out = c.ctl(&["envs", "set", "stagnig", "--soak", "1"]);
    assert!(
        out.code == exit::NOT_FOUND && out.stderr.contains("add --create"),
        "a typo does not make an environment: {}",
        out.stderr
    );
    // Allowed once every preprod host has run it healthy for 5 s.
    let out = eventually(Duration::from_secs(30), "the soak to pass", || {
        let out = promote(false);
        (out.code == 0).then_some(out)
    });
    assert!(out.stdout.contains("succeeded"), "{}", out.stdout);
    for a in &prod {
        a.wait_serving("1.0.0");
    }

    // A hand edit in prod-2's running release is drift: reported with its
    // path, shown in status, and it blocks the next promotion.
    let conf = prod[1].app_dir().join("current/sample.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("# hotfix applied by hand\n");
    std::fs::write(&conf, text).unwrap();
    let row = eventually(Duration::from_secs(30), "drift on prod-2", || {
        status_row(&c, "prod-2").filter(|r| r["status"] == "drifted")
    });
    assert_eq!(row["drift"][0], "changed sample.conf", "{row}");
    let table = c.ctl(&["status"]).ok().stdout;
    assert!(
        table.contains("prod-2 web (prod): drift: changed sample.conf"),
        "{table}"
    );
    publish(&c, t.path(), &ReleaseOpts::new("2.0.0"));
    deploy(&c, "2.0.0", &[]).ok();
    std::thread::sleep(Duration::from_secs(6)); // let the soak pass: only drift blocks now
    let out = promote(false);
    assert_eq!(out.code, exit::FAILED);
    assert!(
        out.stderr
            .contains("prod-2 (prod) has drift: changed sample.conf"),
        "{}",
        out.stderr
    );
    let out = c.ctl(&["drift", "ack", "web", "--env", "prod"]).ok();
    assert!(out.stdout.contains("prod-2"), "{}", out.stdout);
    // The ack covers that edit only: editing the file again is new drift.
    eventually(Duration::from_secs(10), "the ack to show", || {
        status_row(&c, "prod-2").filter(|r| r["status"] == "ok" && r["drift_acked"] == true)
    });
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("# and a second one\n");
    std::fs::write(&conf, text).unwrap();
    eventually(Duration::from_secs(30), "new drift on prod-2", || {
        status_row(&c, "prod-2").filter(|r| r["status"] == "drifted")
    });
    assert_eq!(promote(false).code, exit::FAILED, "blocked again");
    c.ctl(&["drift", "ack", "web", "--env", "prod", "--host", "prod-2"])
        .ok();
    promote(false).ok();
    for a in &prod {
        a.wait_serving("2.0.0");
    }
    let row = eventually(
        Duration::from_secs(30),
        "drift gone with the redeploy",
        || status_row(&c, "prod-2").filter(|r| r["drift_count"] == 0 && r["status"] == "ok"),
    );
    assert_eq!(row["running"], "2.0.0");

    // --force skips the soak, and the audit log says so.
    publish(&c, t.path(), &ReleaseOpts::new("3.0.0"));
    deploy(&c, "3.0.0", &[]).ok();
    assert_eq!(promote(false).code, exit::FAILED);
    promote(true).ok();
    for a in &prod {
        a.wait_serving("3.0.0");
    }
    let history = c.ctl(&["history", "web", "--json"]).ok().json();
    let forced = history
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "promote --force")
        .expect("a promote --force audit row");
    assert!(
        forced["detail"].as_str().unwrap().contains("soak"),
        "{forced}"
    );
    drop(pre);

    // A typo in a filter is an error, not an empty fleet; a closed pipe ends
    // slipctl quietly.
    let out = c.ctl(&["status", "--app", "wbe"]);
    assert_eq!(out.code, exit::NOT_FOUND);
    assert!(out.stderr.contains("\"wbe\""), "{}", out.stderr);
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} history web | true",
            integration_tests::bin("slipctl").display()
        ))
        .env("SLIPWAY_CONTROLLER", &c.url)
        .env("SLIPWAY_CA_CERT", c.ca_cert())
        .env("SLIPWAY_TOKEN", &c.admin_token)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_rollback_every_host_refuses_halts_and_names_them() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let key = t.path().join("release.key");
    let public = c
        .ctl(&["keys", "generate", "--out", key.to_str().unwrap()])
        .ok()
        .stdout;
    // Agents that enforce publisher signatures refuse an unsigned downgrade.
    let names = ["pre-1", "pre-2"];
    let agents: Vec<Agent> = names
        .iter()
        .map(|h| {
            let mut a = Agent::configured(
                t.path(),
                &c,
                h,
                "preprod",
                "DATABASE_URL=postgres://db/app\n",
                true,
            );
            a.append_config(&format!(
                "\n[trust]\npublisher_keys = [\"{}\"]\n",
                public.trim()
            ));
            a.spawn();
            a
        })
        .collect();
    for h in names {
        eventually(Duration::from_secs(30), &format!("{h} to connect"), || {
            status_row(&c, h).filter(|r| r["connected"] == true)
        });
    }
    for version in ["1.0.0", "2.0.0"] {
        let rel = sample_release(t.path(), &ReleaseOpts::new(version));
        c.ctl(&[
            "publish",
            rel.to_str().unwrap(),
            "--app",
            "web",
            "--version",
            version,
            "--sign",
            key.to_str().unwrap(),
        ])
        .ok();
        deploy(&c, version, &["--canary", "0", "--batch", "100%"]).ok();
    }
    for a in &agents {
        a.wait_serving("2.0.0");
    }

    let out = c.ctl(&[
        "rollback",
        "web",
        "--env",
        "preprod",
        "--to",
        "1.0.0",
        "--wait",
        "--timeout",
        "60",
    ]);
    assert_eq!(
        out.code,
        exit::ROLLOUT_FAILED,
        "a rollback no host took fails --wait: {}{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stderr.contains("halted")
            && out.stderr.contains("pre-1 failed")
            && out.stderr.contains("pre-2 failed")
            && out.stderr.contains("downgrade refused"),
        "names every host and why: {}",
        out.stderr
    );
    let r = rollout(&c, "preprod");
    assert_eq!(r["state"], "halted", "{r}");
    assert_eq!(
        outcomes(&r),
        vec![
            ("pre-1".to_string(), "failed".to_string()),
            ("pre-2".to_string(), "failed".to_string())
        ]
    );
    for (h, a) in names.iter().zip(&agents) {
        assert_eq!(
            status_row(&c, h).unwrap()["desired"],
            "1.0.0",
            "the rollback is not reverted"
        );
        assert_eq!(a.app_says().as_deref(), Some("sample-app 2.0.0"));
    }
}
