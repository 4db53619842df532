//! What a power cut could leave: the real agent deploys under `strace`, which
//! records every sync and rename it (and its unpack) makes. A release dir must
//! exist under its name only after a `syncfs` put its whole tree on disk, and
//! `current` is flipped to it only after that; no file of the tree is fsynced
//! on its own (one `syncfs` replaces an fsync per entry). The kill tests in
//! `crash.rs` cover the same points with a real SIGKILL (`fetch-streaming`,
//! `unpack-synced`, `step:unpack`, `step:flip`); a power cut itself cannot be
//! staged here (no VM, no device-mapper), so the order of the syscalls is what
//! this test holds to.

use std::path::Path;

use integration_tests::{Agent, Controller, ReleaseOpts, publish_dir, sample_release};

#[test]
fn a_release_is_on_disk_before_it_is_named_and_before_current_points_at_it() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let trace = t.path().join("agent.strace");
    let mut agent = Agent::configured(
        t.path(),
        &c,
        "pre-1",
        "preprod",
        "DATABASE_URL=postgres://app@db/app\n",
        true,
    );
    agent.prefix = [
        "strace",
        "-f",
        "-qq",
        "-y",
        "-o",
        trace.to_str().unwrap(),
        "-e",
        "trace=syncfs,fsync,fdatasync,rename,renameat,renameat2",
    ]
    .map(String::from)
    .to_vec();
    agent.spawn();
    agent.wait_connected(&c);
    // Only the start went through strace; the harness kills the app as usual.
    agent.prefix.clear();

    let rel = sample_release(t.path(), &ReleaseOpts::new("1.0.0"));
    publish_dir(&c, &rel, "1.0.0");
    let out = c.deploy_wait("1.0.0", "preprod");
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    agent.wait_serving("1.0.0");

    let text = std::fs::read_to_string(&trace).expect("strace output (is strace installed?)");
    let lines: Vec<&str> = text.lines().collect();
    let releases = agent.app_dir().join("releases");
    let named = format!("\"{}\"", releases.join("1.0.0").display());
    let position = |what: &str, pred: &dyn Fn(&str) -> bool| {
        lines
            .iter()
            .position(|l| pred(l))
            .unwrap_or_else(|| panic!("no {what} in the trace:\n{text}"))
    };
    let rename_in = position("rename into releases/1.0.0", &|l: &str| {
        l.contains("rename") && l.trim_end().ends_with("= 0") && l.contains(&named)
    });
    let flip = position("rename of current", &|l: &str| {
        l.contains("rename")
            && l.contains(&format!(
                "\"{}\"",
                agent.app_dir().join("current").display()
            ))
    });
    // By the thread that renames: a writeback thread also syncs while the
    // tree is written, but only the sync after the last write makes it whole.
    let thread = |l: &str| l.split_whitespace().next().unwrap_or_default().to_string();
    let synced = lines[..rename_in].iter().rposition(|l| {
        l.contains("syncfs(")
            && l.contains(&releases.display().to_string())
            && thread(l) == thread(lines[rename_in])
    });
    assert!(
        synced.is_some(),
        "a syncfs of the release's filesystem, by the thread that renames, precedes its rename into place:\n{}",
        lines[..=rename_in].join("\n")
    );
    assert!(
        flip > rename_in,
        "current is flipped after the release is named"
    );
    let per_file: Vec<&&str> = lines
        .iter()
        .filter(|l| (l.contains("fsync(") || l.contains("fdatasync(")) && l.contains("/.tmp-"))
        .collect();
    assert!(
        per_file.is_empty(),
        "no entry of the tree is fsynced on its own: {per_file:?}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&releases)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    stop_traced_agent(&agent.config);
}

/// strace 6.1 has no `--kill-on-exit`: killing it would leave the agent it
/// traced running, so the agent is found by its config path and killed.
fn stop_traced_agent(config: &Path) {
    let needle = config.to_string_lossy().into_owned();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.starts_with(integration_tests::bin("slipway-agent").to_str().unwrap())
            && cmdline.contains(&needle)
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
