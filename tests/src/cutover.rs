//! A rig for zero-downtime activation, shared by `tests/cutover.rs` and the
//! `slipway-cutoverbench` benchmark: the real controller and agent, one app
//! `web` activated by stop-start, by the agent's proxy (the unmodified sample
//! app, binding `$PORT`) or through an inherited socket (`slipway-zdtapp`,
//! `LISTEN_FDS`), and releases that pass or fail their health check.

use std::path::{Path, PathBuf};

use crate::{Agent, Controller, CtlOutput, ReleaseOpts, bin, http_get, publish, publish_dir};

/// How the rig's app is activated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    StopStart,
    Proxy,
    Socket,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::StopStart => "stop-start",
            Mode::Proxy => "proxy",
            Mode::Socket => "socket",
        }
    }
}

/// What a release does when started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    Good,
    /// Fails its health check: the sample app answers 503 on `/health` (and
    /// 200 on `/`); the socket app holds the socket and never accepts.
    Failing,
    /// Socket app only: serves, but ignores SIGTERM (its drain signal).
    IgnoresTerm,
}

pub const DB_ENV: &str = "DATABASE_URL=postgres://app@db/app\n";

pub struct Rig {
    pub c: Controller,
    pub agent: Agent,
    pub mode: Mode,
    dir: PathBuf,
}

impl Rig {
    /// A controller and one agent running app `web` in `mode`, with `extra`
    /// lines for the app's host settings.
    pub fn start(dir: &Path, mode: Mode, extra: &str) -> Rig {
        let c = Controller::start(dir);
        let mut agent = Agent::configured(dir, &c, "zdt-1", "preprod", DB_ENV, true);
        agent.append_config(&format!("activation = \"{}\"\n{extra}", mode.name()));
        agent.spawn();
        agent.wait_connected(&c);
        Rig {
            c,
            agent,
            mode,
            dir: dir.to_path_buf(),
        }
    }

    /// Publishes `version`, behaving as said.
    pub fn publish(&self, version: &str, b: Behaviour) {
        match self.mode {
            Mode::Socket => {
                let rel = zdt_release(&self.dir, version, b);
                publish_dir(&self.c, &rel, version);
            }
            _ => {
                assert!(
                    b != Behaviour::IgnoresTerm,
                    "the sample app has no such mode"
                );
                publish(
                    &self.c,
                    &self.dir,
                    &ReleaseOpts {
                        healthy: b == Behaviour::Good,
                        prepare: "",
                        ..ReleaseOpts::new(version)
                    },
                );
            }
        }
    }

    /// `slipctl deploy web VERSION --wait`.
    pub fn deploy(&self, version: &str) -> CtlOutput {
        self.c.deploy_wait(version, "preprod")
    }

    /// The body the public port answers `/` with, trimmed.
    pub fn says(&self) -> Option<String> {
        http_get(self.agent.app_port, "/").map(|(_, b)| b.trim().to_string())
    }

    /// What `/` answers when `version` serves.
    pub fn body_of(&self, version: &str) -> String {
        match self.mode {
            Mode::Socket => format!("zdt-app {version}"),
            _ => format!("sample-app {version}"),
        }
    }

    /// Live app processes the agent has pid files for: (process file, pid).
    pub fn running(&self) -> Vec<(String, i32)> {
        let mut out = Vec::new();
        let Ok(dir) = std::fs::read_dir(self.agent.app_dir().join("run")) else {
            return out;
        };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".json") {
                continue;
            }
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(
                &std::fs::read(e.path()).unwrap_or_default(),
            ) else {
                continue;
            };
            if let Some(pid) = v["pid"].as_i64()
                && std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                out.push((name, pid as i32));
            }
        }
        out
    }
}

/// A release dir of the socket test app under `dir/zdt-<version>`.
pub fn zdt_release(dir: &Path, version: &str, b: Behaviour) -> PathBuf {
    let rel = dir.join(format!("zdt-{version}"));
    std::fs::create_dir_all(rel.join("bin")).expect("release dir");
    std::fs::copy(bin("slipway-zdtapp"), rel.join("bin/slipway-zdtapp")).expect("copy app");
    let mode = match b {
        Behaviour::Good => "ok",
        Behaviour::Failing => "never-accept",
        Behaviour::IgnoresTerm => "ignore-term",
    };
    std::fs::write(
        rel.join("zdt.conf"),
        format!("version={version}\nmode={mode}\n"),
    )
    .expect("conf");
    std::fs::write(
        rel.join("slipway.toml"),
        "[processes.web]\ncommand = [\"bin/slipway-zdtapp\"]\nrequired_env = [\"DATABASE_URL\"]\nhealth = { http = \"/health\", timeout_secs = 5, min_healthy_secs = 1 }\n\n[shared]\nfiles = [\".env\"]\n",
    )
    .expect("spec");
    rel
}
