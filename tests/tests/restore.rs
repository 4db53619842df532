//! A store restored from an older backup: the hosts accepted directives the
//! backup never saw, and without anything done on them they take the next
//! ones (a host's hello tells the controller the highest sequence it
//! accepted). Both stores, each backed up and restored as the README says.

use std::path::Path;
use std::process::Command;

use integration_tests::*;

const DB_ENV: &str = "DATABASE_URL=postgres://app@db/app\n";

/// Deploys 1.0.0, backs the store up with `backup`, deploys 2.0.0, restores
/// with `restore` (the controller stopped for both), and checks that 3.0.0
/// deploys with no step on the host.
fn deploy_across_a_restore(
    dir: &Path,
    c: &mut Controller,
    backup: impl Fn(&Controller),
    restore: impl Fn(&Controller),
) {
    let agent = Agent::start(dir, c, "pre-1", "preprod", DB_ENV);
    publish(c, dir, &ReleaseOpts::new("1.0.0"));
    c.deploy_wait("1.0.0", "preprod").ok();
    c.kill();
    backup(c);
    c.restart();
    publish(c, dir, &ReleaseOpts::new("2.0.0"));
    c.deploy_wait("2.0.0", "preprod").ok();
    agent.wait_serving("2.0.0");
    c.kill();
    restore(c);
    c.restart();
    // The restored store knows 1.0.0 only and a lower directive sequence
    // than the host accepted; the host still runs 2.0.0.
    let releases = c.ctl(&["releases", "web"]).ok().stdout;
    assert!(!releases.contains("2.0.0"), "{releases}");
    publish(c, dir, &ReleaseOpts::new("3.0.0"));
    let out = c.deploy_wait("3.0.0", "preprod");
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    agent.wait_serving("3.0.0");
    assert!(
        !agent.log_text().contains("replayed directive"),
        "no directive was refused as a replay"
    );
}

#[test]
fn a_sqlite_store_restored_from_a_backup_deploys_without_touching_the_hosts() {
    let t = tempfile::tempdir().unwrap();
    let mut c = Controller::start_with(t.path(), &[]);
    if c.extra_args.iter().any(|a| a == "--database") {
        return; // SLIPWAY_E2E_STORE=postgres: the test below covers it
    }
    let backup_dir = t.path().join("backup");
    deploy_across_a_restore(
        t.path(),
        &mut c,
        |c| {
            // The controller is stopped: the database file and its WAL are
            // a consistent copy (SQLite replays the WAL when it opens it).
            std::fs::create_dir_all(&backup_dir).unwrap();
            for f in ["slipway.db", "slipway.db-wal", "slipway.db-shm"] {
                let from = c.data_dir.join(f);
                if from.exists() {
                    std::fs::copy(&from, backup_dir.join(f)).unwrap();
                }
            }
        },
        |c| {
            for f in ["slipway.db", "slipway.db-wal", "slipway.db-shm"] {
                let _ = std::fs::remove_file(c.data_dir.join(f));
                let from = backup_dir.join(f);
                if from.exists() {
                    std::fs::copy(&from, c.data_dir.join(f)).unwrap();
                }
            }
        },
    );
}

#[test]
fn a_postgres_store_restored_from_a_backup_deploys_without_touching_the_hosts() {
    let t = tempfile::tempdir().unwrap();
    let Some(database) = fresh_postgres_database() else {
        return;
    };
    let mut c = Controller::start_with(t.path(), &["--database", &database]);
    let dump = t.path().join("slipway.dump");
    let run = |cmd: &mut Command| {
        let out = cmd.output().expect("run a PostgreSQL client");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    deploy_across_a_restore(
        t.path(),
        &mut c,
        |_| {
            run(Command::new("pg_dump")
                .args(["--format=custom", "--file"])
                .arg(&dump)
                .arg(&database))
        },
        |_| {
            run(Command::new("pg_restore")
                .args(["--clean", "--if-exists", "--single-transaction", "--dbname"])
                .arg(&database)
                .arg(&dump))
        },
    );
}
