//! The systemd service backend against a REAL systemd: a private one runs as PID 1
//! of a new PID + mount namespace (../shared/TESTING.md), the agent runs inside it
//! with nsenter, the controller and slipctl outside on the same loopback.
//! Skipped, saying so, when not root or systemd is not installed.

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use integration_tests::{Agent, Controller, ReleaseOpts, eventually, exit, publish, status_row};

const DB_ENV: &str = "DATABASE_URL=postgres://app@db/app\n";

/// A systemd running as PID 1 of its own namespaces; SIGKILL tears it all down.
struct NsSystemd {
    unshare: Child,
    pid: i32,
}

impl NsSystemd {
    fn start() -> Option<Self> {
        if !nix::unistd::getuid().is_root()
            || !std::path::Path::new("/lib/systemd/systemd").exists()
        {
            eprintln!("SKIPPED: the systemd backend test needs root and /lib/systemd/systemd");
            return None;
        }
        // Private tmpfs on /run, /tmp and /var/tmp: a booting systemd empties /tmp
        // (systemd-tmpfiles), which must never reach the host's. Unit files go to
        // the private /run/systemd/system.
        let unshare = Command::new("unshare")
            .args(["--fork", "--pid", "--mount", "--mount-proc", "sh", "-c"])
            .arg(
                "set -e; for d in /run /tmp /var/tmp; do mount -t tmpfs tmpfs $d; done; \
                 mkdir -p /run/systemd/system; exec /lib/systemd/systemd --system",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("unshare");
        let children = format!("/proc/{0}/task/{0}/children", unshare.id());
        let pid = eventually(Duration::from_secs(10), "systemd to start", || {
            std::fs::read_to_string(&children)
                .ok()?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        });
        let ns = NsSystemd { unshare, pid };
        eventually(
            Duration::from_secs(60),
            "the namespaced systemd to be running",
            || {
                let out = ns.exec(&["systemctl", "is-system-running"]);
                let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
                matches!(state.as_str(), "running" | "degraded").then_some(())
            },
        );
        Some(ns)
    }

    fn prefix(&self) -> Vec<String> {
        ["nsenter", "-t", &self.pid.to_string(), "-m", "-p", "--"]
            .map(String::from)
            .to_vec()
    }

    fn exec(&self, args: &[&str]) -> Output {
        let prefix = self.prefix();
        Command::new(&prefix[0])
            .args(&prefix[1..])
            .args(args)
            .output()
            .expect("nsenter")
    }

    fn install_unit(&self, name: &str, text: &str) {
        let path = format!("/run/systemd/system/{name}");
        let out = self.exec(&[
            "sh",
            "-c",
            &format!("cat > {path} <<'UNIT'\n{text}\nUNIT\nsystemctl daemon-reload"),
        ]);
        assert!(
            out.status.success(),
            "install unit: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for NsSystemd {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::SIGKILL,
        );
        let _ = self.unshare.wait();
    }
}

#[test]
fn the_systemd_backend_deploys_rolls_back_and_reports() {
    let Some(ns) = NsSystemd::start() else { return };
    // Not under /tmp: the namespace has its own, and the agent runs in there.
    let t = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let c = Controller::start(t.path());
    let mut agent = Agent::configured(t.path(), &c, "sys-1", "preprod", DB_ENV, true);
    let root = agent.app_dir();
    let mut cfg = std::fs::read_to_string(&agent.config).unwrap();
    cfg.push_str("service = \"systemd\"\n");
    std::fs::write(&agent.config, cfg).unwrap();
    ns.install_unit(
        "web-web.service",
        &format!(
            "[Service]\nType=exec\nWorkingDirectory={r}/current\nExecStart={r}/current/bin/slipway-sample-app\nEnvironmentFile={r}/shared/.env\nEnvironment=PORT={port}\nRestart=on-failure\n",
            r = root.display(),
            port = agent.app_port
        ),
    );
    agent.prefix = ns.prefix();
    agent.spawn();
    agent.wait_connected(&c);

    publish(&c, t.path(), &ReleaseOpts::new("1.0.0"));
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
    let active = ns.exec(&["systemctl", "is-active", "web-web.service"]);
    assert_eq!(
        String::from_utf8_lossy(&active.stdout).trim(),
        "active",
        "systemd runs the app"
    );
    let main_pid = ns.exec(&[
        "systemctl",
        "show",
        "-p",
        "MainPID",
        "--value",
        "web-web.service",
    ]);
    let main_pid = String::from_utf8_lossy(&main_pid.stdout).trim().to_string();
    let cwd = ns.exec(&["readlink", &format!("/proc/{main_pid}/cwd")]);
    assert!(
        String::from_utf8_lossy(&cwd.stdout)
            .trim()
            .ends_with("releases/1.0.0")
    );

    publish(&c, t.path(), &ReleaseOpts::new("2.0.0"));
    c.ctl(&[
        "deploy",
        "web",
        "2.0.0",
        "--env",
        "preprod",
        "--wait",
        "--timeout",
        "60",
    ])
    .ok();
    agent.wait_serving("2.0.0");

    publish(
        &c,
        t.path(),
        &ReleaseOpts {
            healthy: false,
            ..ReleaseOpts::new("3.0.0")
        },
    );
    let out = c.ctl(&[
        "deploy",
        "web",
        "3.0.0",
        "--env",
        "preprod",
        "--wait",
        "--timeout",
        "60",
    ]);
    assert_eq!(out.code, exit::ROLLOUT_FAILED, "{}", out.stdout);
    agent.wait_serving("2.0.0");
    // Reverted to what runs: healthy again, the refused release on record.
    let row = eventually(
        Duration::from_secs(60),
        "the host to take the revert",
        || status_row(&c, "sys-1").filter(|r| r["state"] == "healthy"),
    );
    assert_eq!(row["running"], "2.0.0");
    assert_eq!(row["failed_version"], "3.0.0");
    assert!(
        out.stderr.contains("answered 503"),
        "the reason reaches CI: {}",
        out.stderr
    );
    drop(agent);
}
