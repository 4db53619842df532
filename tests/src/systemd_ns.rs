//! A real systemd as PID 1 of its own PID and mount namespaces
//! (../shared/TESTING.md), with private /run, /tmp and /var/tmp and, on
//! request, private writable layers over host directories.

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::eventually;

/// A systemd running as PID 1 of its own namespaces; SIGKILL tears it all down.
pub struct NsSystemd {
    unshare: Child,
    pid: i32,
}

impl NsSystemd {
    /// Starts it; `overlays` are directories (e.g. `/usr`, `/etc`, `/var`)
    /// given a private writable layer inside the namespace, so a package
    /// installed in there never touches the host's.
    pub fn start(overlays: &[&str]) -> Option<Self> {
        if !nix::unistd::getuid().is_root()
            || !std::path::Path::new("/lib/systemd/systemd").exists()
        {
            eprintln!("SKIPPED: the systemd backend test needs root and /lib/systemd/systemd");
            return None;
        }
        // Private tmpfs on /run, /tmp and /var/tmp: a booting systemd empties /tmp
        // (systemd-tmpfiles), which must never reach the host's. Unit files go to
        // the private /run/systemd/system. The overlays' writable layers live in
        // the private /run; /var/tmp is mounted again over a /var overlay.
        let unshare = Command::new("unshare")
            .args(["--fork", "--pid", "--mount", "--mount-proc", "sh", "-c"])
            .arg(
                format!(
                    "set -e; for d in /run /tmp /var/tmp; do mount -t tmpfs tmpfs $d; done; \
                     for d in {}; do u=/run/overlay$d; mkdir -p $u/up $u/work; \
                     mount -t overlay overlay -o lowerdir=$d,upperdir=$u/up,workdir=$u/work $d; done; \
                     mount -t tmpfs tmpfs /var/tmp; mkdir -p /run/systemd/system; exec /lib/systemd/systemd --system",
                    overlays.join(" ")
                ),
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

    pub fn prefix(&self) -> Vec<String> {
        ["nsenter", "-t", &self.pid.to_string(), "-m", "-p", "--"]
            .map(String::from)
            .to_vec()
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Output {
        let prefix = self.prefix();
        Command::new(&prefix[0])
            .args(&prefix[1..])
            .args(args)
            .output()
            .expect("nsenter")
    }

    pub fn install_unit(&self, name: &str, text: &str) {
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
