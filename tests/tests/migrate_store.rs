//! Moving an installation from the embedded SQLite to PostgreSQL with
//! `slipway-controller migrate-store`: every row moves, the same data dir
//! (keys, blobs) serves on, the hosts notice nothing but a reconnect, and a
//! second run into the now-full database is refused without writing.

use std::process::Command;

use integration_tests::*;

const DB_ENV: &str = "DATABASE_URL=postgres://app@db/app\n";

fn migrate(from: &str, to: &str) -> std::process::Output {
    Command::new(bin("slipway-controller"))
        .args(["migrate-store", "--from", from, "--to", to])
        .output()
        .expect("run migrate-store")
}

#[test]
fn an_installation_moves_from_sqlite_to_postgres_without_losing_a_row() {
    let t = tempfile::tempdir().unwrap();
    let Some(database) = fresh_postgres_database() else {
        return;
    };
    let mut c = Controller::start_with(t.path(), &[]);
    if c.extra_args.iter().any(|a| a == "--database") {
        return; // SLIPWAY_E2E_STORE=postgres: there is no SQLite to move
    }
    let agent = Agent::start(t.path(), &c, "pre-1", "preprod", DB_ENV);
    publish(&c, t.path(), &ReleaseOpts::new("1.0.0"));
    c.deploy_wait("1.0.0", "preprod").ok();
    agent.wait_serving("1.0.0");
    let ci = c.token("ci", &["deployer"]);
    let history_before = c.ctl(&["history", "--json"]).ok().json();
    c.kill();

    let sqlite = format!("sqlite://{}", c.data_dir.join("slipway.db").display());
    let out = migrate(&sqlite, &database);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("every table counted on both sides"),
        "{stdout}"
    );
    let releases_line = stdout.lines().find(|l| l.starts_with("releases ")).unwrap();
    assert!(releases_line.ends_with(" 1"), "{releases_line}");

    // Again, into the database that now holds it all: refused, unchanged.
    let audit_rows = psql(&database, "SELECT count(*) FROM audit");
    let out = migrate(&sqlite, &database);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already holds data"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(psql(&database, "SELECT count(*) FROM audit"), audit_rows);

    // The same data dir on PostgreSQL: same keys, blobs, tokens, history.
    c.extra_args = vec!["--database".into(), database.clone()];
    c.restart();
    agent.wait_connected(&c);
    let row = status_row(&c, "pre-1").unwrap();
    assert_eq!(row["running"], "1.0.0", "{row}");
    assert_eq!(
        c.ctl(&["history", "--json"])
            .ok()
            .json()
            .as_array()
            .unwrap()[..],
        history_before.as_array().unwrap()[..],
        "the history moved whole"
    );
    let out = c.ctl_as(&ci, &["releases", "web"]).ok();
    assert!(out.stdout.contains("1.0.0"), "{}", out.stdout);
    publish(&c, t.path(), &ReleaseOpts::new("2.0.0"));
    c.deploy_wait("2.0.0", "preprod").ok();
    agent.wait_serving("2.0.0");
    let ids: Vec<i64> = psql(&database, "SELECT id FROM audit ORDER BY id")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(ids, unique, "new audit rows numbered after the copied ones");
}

#[test]
fn migrate_store_refuses_bad_input_by_name() {
    let t = tempfile::tempdir().unwrap();
    let missing = format!("sqlite://{}", t.path().join("nope.db").display());
    let out = migrate(&missing, "postgres://x@127.0.0.1:1/x");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no such SQLite file"), "{err}");
    let out = migrate("mysql://db/x", "postgres://x@127.0.0.1:1/x");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("mysql://db/x"),
        "{err}"
    );
    let out = migrate(&missing, &missing);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the same store"), "{err}");
}
