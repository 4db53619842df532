//! The agent's Debian package on a real systemd: `dpkg -i` inside a private
//! systemd (PID 1 of its own namespaces, ../shared/TESTING.md) whose /usr,
//! /etc and /var are writable layers over the host's, so the host is never
//! touched; then the one command a new host needs, `slipway-agent join URL
//! TOKEN`, which enables and starts the packaged unit, and the host runs its
//! environment's release. Prints the seconds from join to healthy.
//!
//! Needs the package: `packaging/build-debs.sh --dev` (CI builds it and sets
//! SLIPWAY_REQUIRE_DEB=1, so a missing package fails there); skipped, saying
//! so, when it is absent elsewhere, or when not root or systemd is absent.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use integration_tests::systemd_ns::NsSystemd;
use integration_tests::{Controller, eventually, worker_release};

fn agent_deb() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debian");
    let found = std::fs::read_dir(&dir).ok().and_then(|entries| {
        entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("slipway-agent_") && n.ends_with(".deb"))
            })
            .max()
    });
    if found.is_none() {
        assert!(
            std::env::var_os("SLIPWAY_REQUIRE_DEB").is_none(),
            "no slipway-agent .deb in {}: run packaging/build-debs.sh --dev",
            dir.display()
        );
        eprintln!("SKIPPED: no slipway-agent .deb (packaging/build-debs.sh --dev builds it)");
    }
    found
}

#[test]
fn the_agent_package_installs_joins_with_one_command_and_runs_its_release() {
    let Some(deb) = agent_deb() else { return };
    let Some(ns) = NsSystemd::start(&["/usr", "/etc", "/var"]) else {
        return;
    };
    let t = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let c = Controller::start(t.path());
    let rel = worker_release(t.path(), "1.0.0");
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
    c.ctl(&[
        "apps",
        "add",
        "web",
        "--env",
        "preprod",
        "--stop-grace",
        "1",
    ])
    .ok();

    let out = ns.exec(&["dpkg", "-i", deb.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "dpkg -i: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // What the package put in place: the binary, the unit (not enabled: it
    // waits for join), the man page.
    for path in [
        "/usr/bin/slipway-agent",
        "/lib/systemd/system/slipway-agent.service",
        "/usr/share/man/man8/slipway-agent.8.gz",
    ] {
        assert!(
            ns.exec(&["test", "-e", path]).status.success(),
            "{path} installed"
        );
    }
    let enabled = ns.exec(&["systemctl", "is-enabled", "slipway-agent"]);
    assert_eq!(
        String::from_utf8_lossy(&enabled.stdout).trim(),
        "disabled",
        "the unit waits for join"
    );

    let added = c
        .ctl(&["hosts", "add", "pkg-1", "--env", "preprod", "-o", "json"])
        .ok()
        .json();
    let command = added["join_command"].as_str().unwrap().to_string();
    let words: Vec<&str> = command.split_whitespace().collect();
    assert_eq!(words[..2], ["slipway-agent", "join"], "{command}");
    let start = Instant::now();
    // The printed line, as root on the host (the packaged binary in /usr/bin).
    let mut argv = vec!["/usr/bin/slipway-agent"];
    argv.extend(&words[1..]);
    let out = ns.exec(&argv);
    let joined = start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "join: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let active = ns.exec(&["systemctl", "is-active", "slipway-agent"]);
    assert_eq!(String::from_utf8_lossy(&active.stdout).trim(), "active");
    eventually(
        Duration::from_secs(60),
        "pkg-1 to run 1.0.0 healthy",
        || {
            let shown = c
                .ctl(&["apps", "show", "web", "--env", "preprod", "-o", "json"])
                .json();
            shown["hosts"]
                .as_array()?
                .iter()
                .any(|h| {
                    h["host"] == "pkg-1"
                        && h["running_version"] == "1.0.0"
                        && h["health"] == "healthy"
                })
                .then_some(())
        },
    );
    eprintln!(
        "packaged host: join {joined:.2} s (enroll, config, enable, start, connected); join -> running 1.0.0 healthy {:.2} s (1 s health hold)",
        start.elapsed().as_secs_f64()
    );
    // Running it again is harmless: enrolled, nothing changes.
    let again = ns.exec(&argv);
    assert!(again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("already enrolled as pkg-1"),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
}
