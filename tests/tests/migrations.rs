//! Database migrations as a step of their own, with the real controller,
//! agents and app: preprod applies them before the flip, production waits
//! for a promoter's `slipctl migrate`, a failing dry run refuses a release
//! before anything stops, and `--dry-run` prints the plan and changes nothing.
//! The "database" is a file of applied migration names the hosts of an
//! environment share (its path comes from their env files, as a
//! DATABASE_URL would).

use std::path::Path;

use integration_tests::{Agent, Controller, ReleaseOpts, publish_dir, sample_release};

/// A sample release with `[migrations]` over a file database and the named
/// migrations (a migration holding "FAIL" fails the dry run).
fn release(dir: &Path, version: &str, migrations: &[(&str, &str)]) -> std::path::PathBuf {
    let rel = sample_release(
        dir,
        &ReleaseOpts {
            prepare: "",
            ..ReleaseOpts::new(version)
        },
    );
    std::fs::create_dir_all(rel.join("migrations")).unwrap();
    for (name, body) in migrations {
        std::fs::write(rel.join("migrations").join(name), body).unwrap();
    }
    let pending = r#"for f in migrations/*; do [ -e "$f" ] || continue; n=$(basename $f); grep -qx $n $MIGRATIONS_DB 2>/dev/null || echo $n; done"#;
    let dry_run = r#"if grep -l FAIL migrations/* >/dev/null; then echo "would fail on $DATABASE_URL"; exit 1; fi"#;
    let apply = r#"for f in migrations/*; do [ -e "$f" ] || continue; n=$(basename $f); grep -qx $n $MIGRATIONS_DB 2>/dev/null || echo $n >> $MIGRATIONS_DB; done; echo "applied to $DATABASE_URL""#;
    let mut spec = std::fs::read_to_string(rel.join("slipway.toml")).unwrap();
    spec.push_str(&format!(
        "\n[migrations]\npending = [\"sh\", \"-c\", {pending:?}]\ndry_run = [\"sh\", \"-c\", {dry_run:?}]\napply = [\"sh\", \"-c\", {apply:?}]\ntimeout_secs = 20\n"
    ));
    std::fs::write(rel.join("slipway.toml"), spec).unwrap();
    rel
}

fn env_lines(db: &Path) -> String {
    format!(
        "DATABASE_URL=postgres://app@db/app\nMIGRATIONS_DB={}\n",
        db.display()
    )
}

fn applied(db: &Path) -> Vec<String> {
    std::fs::read_to_string(db)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn preprod_applies_migrations_production_waits_for_a_promoter_and_a_failing_dry_run_refuses() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let (pre_db, prod_db) = (t.path().join("preprod.db"), t.path().join("prod.db"));
    let pre = Agent::start(t.path(), &c, "pre-1", "preprod", &env_lines(&pre_db));
    let prod1 = Agent::start(t.path(), &c, "prod-1", "prod", &env_lines(&prod_db));
    let prod2 = Agent::start(t.path(), &c, "prod-2", "prod", &env_lines(&prod_db));
    let envs = c.ctl(&["envs", "-o", "json"]).ok().json();
    let policy = |name: &str| {
        envs.as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["migrations"].clone())
            .unwrap()
    };
    assert_eq!(policy("preprod"), "auto");
    assert_eq!(
        policy("prod"),
        "manual",
        "production never applies by itself"
    );

    // 0.9.0, before any migration, runs everywhere.
    let rel = release(t.path(), "0.9.0", &[]);
    publish_dir(&c, &rel, "0.9.0");
    c.deploy_wait("0.9.0", "preprod").ok();
    c.ctl(&[
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
    prod1.wait_serving("0.9.0");
    prod2.wait_serving("0.9.0");
    let prod1_pid = prod1.app_pid();

    // Preprod (auto): applied before the flip, the output masked.
    let rel = release(t.path(), "1.0.0", &[("0001_users", "create table users")]);
    publish_dir(&c, &rel, "1.0.0");
    c.deploy_wait("1.0.0", "preprod").ok();
    pre.wait_serving("1.0.0");
    assert_eq!(applied(&pre_db), ["0001_users"]);
    let log = pre.deploy_log();
    assert!(log.contains("applied to ***"), "{log}");
    assert!(!log.contains("postgres://app@db/app"), "{log}");
    // Nothing waits for an approval there.
    let out = c.ctl(&["migrate", "web", "--env", "preprod"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr
            .contains("no rollout of web 1.0.0 in preprod waits for migrations to be approved"),
        "{}",
        out.stderr
    );

    // A dry run of the promotion: the plan, nothing changed.
    let before = c.ctl(&["history", "-o", "json"]).ok().stdout;
    let out = c
        .ctl(&[
            "promote",
            "web",
            "--from",
            "preprod",
            "--to",
            "prod",
            "--dry-run",
        ])
        .ok();
    for want in [
        "promote (dry run, nothing changed): web in prod: 0.9.0 -> 1.0.0",
        "step 1 (canary): prod-1 (connected, runs 0.9.0)",
        "step 2: prod-2 (connected, runs 0.9.0)",
        "held at what they run until their step: prod-2",
        "migrations (manual)",
    ] {
        assert!(out.stdout.contains(want), "{want:?} in {}", out.stdout);
    }
    assert_eq!(c.ctl(&["history", "-o", "json"]).ok().stdout, before);
    let plan = c
        .ctl(&[
            "promote",
            "web",
            "--from",
            "preprod",
            "--to",
            "prod",
            "--dry-run",
            "-o",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["plan"]["steps"][0]["hosts"][0]["host"], "prod-1");
    assert_eq!(plan["plan"]["migrations"], "manual");

    // Production (manual): the canary refuses before anything stops there,
    // naming what is pending; nothing is applied, nothing reverted.
    let out = c.ctl(&[
        "promote",
        "web",
        "--from",
        "preprod",
        "--to",
        "prod",
        "--wait",
        "--timeout",
        "60",
    ]);
    assert_ne!(out.code, 0, "{}", out.stdout);
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(
        said.contains("migrations (manual): if the release has pending migrations")
            && said.contains("waiting for migrations to be approved at step 1/2")
            && said.contains("awaiting a promoter's approval: 1 pending (0001_users)")
            && said.contains("slipctl migrate web --env prod"),
        "{said}"
    );
    assert!(applied(&prod_db).is_empty());
    assert_eq!(prod1.app_says().as_deref(), Some("sample-app 0.9.0"));
    assert_eq!(prod1.app_pid(), prod1_pid, "nothing stopped on the canary");
    assert_eq!(prod2.app_says().as_deref(), Some("sample-app 0.9.0"));
    let rollout = || {
        c.ctl(&["rollout", "status", "web", "--env", "prod", "-o", "json"])
            .ok()
            .json()
    };
    let status = rollout();
    assert_eq!(status["state"], "halted", "{status}");
    assert_eq!(status["to_version"], "1.0.0", "not reverted: {status}");
    // A dry run of the approval changes nothing.
    c.ctl(&["migrate", "web", "--env", "prod", "--dry-run"])
        .ok();
    assert_eq!(rollout()["id"], status["id"]);
    assert!(applied(&prod_db).is_empty());

    // Only a promoter approves; then the canary applies, the next host
    // finds nothing pending, and both serve.
    let deployer = c.token("ci", &["deployer"]);
    let out = c.ctl_as(&deployer, &["migrate", "web", "--env", "prod"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("promoter"), "{}", out.stderr);
    c.ctl(&[
        "migrate",
        "web",
        "--env",
        "prod",
        "--wait",
        "--timeout",
        "60",
    ])
    .ok();
    prod1.wait_serving("1.0.0");
    prod2.wait_serving("1.0.0");
    assert_eq!(applied(&prod_db), ["0001_users"], "applied once");
    assert!(prod2.deploy_log().contains("none pending"));

    // A failing dry run refuses the release before anything stops: 1.0.0
    // keeps serving from the same process, nothing is applied.
    let pid = pre.app_pid();
    let rel = release(
        t.path(),
        "2.0.0",
        &[("0001_users", "create table users"), ("0002_bad", "FAIL")],
    );
    publish_dir(&c, &rel, "2.0.0");
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
    assert_ne!(out.code, 0);
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(
        said.contains("dry run of 1 pending (0002_bad) failed"),
        "{said}"
    );
    assert!(said.contains("would fail on ***"), "{said}");
    assert_eq!(pre.app_says().as_deref(), Some("sample-app 1.0.0"));
    assert_eq!(pre.app_pid(), pid, "the serving process never stopped");
    assert_eq!(applied(&pre_db), ["0001_users"]);
}

#[test]
fn an_agent_killed_while_applying_migrations_converges_when_restarted() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let db = t.path().join("preprod.db");
    let mut a = Agent::configured(t.path(), &c, "kill-1", "preprod", &env_lines(&db), true);
    a.spawn_env(&[("SLIPWAY_FAILPOINT", "hook-started:migrations_apply")]);
    a.wait_connected(&c);
    let rel = release(t.path(), "1.0.0", &[("0001_users", "create table users")]);
    publish_dir(&c, &rel, "1.0.0");
    c.ctl(&["deploy", "web", "1.0.0", "--env", "preprod"]).ok();
    a.wait_exit(
        std::time::Duration::from_secs(30),
        "the agent to die as the apply starts",
    );
    // Restarted: what the killed agent left is undone, the deploy runs
    // again and ends serving, the migration applied once.
    a.spawn();
    a.wait_serving("1.0.0");
    assert_eq!(applied(&db), ["0001_users"]);
    // The apply the killed agent started finished or was killed; either way
    // the deploy after the restart listed again before applying.
    let log = a.deploy_log();
    assert!(
        log.matches("\"step\":\"migrations_pending\"").count() >= 2,
        "{log}"
    );
    assert!(
        log.contains("none pending") || log.contains("\"outcome\":\"applied\""),
        "{log}"
    );
}
