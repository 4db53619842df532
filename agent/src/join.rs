//! `slipway-agent join [URL] TOKEN`: a fresh host joins the fleet in one
//! command. It enrolls with the join token (the controller is checked
//! against the CA pin the token carries, and the certificate it issues says
//! which host, tenant and environment this is), writes the agent config
//! from that certificate when there is none, enables and starts the
//! `slipway-agent` unit, and waits until the agent has connected.
//!
//! Running it again is harmless: a host already enrolled as the token's
//! host keeps its identity (the token is not spent), and the unit is
//! started if it is not running. Nothing is written before enrollment
//! succeeds, and the config only after the identity: a failed join leaves
//! the host as it was.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::config::AgentConfig;
use crate::identity::{self, Identity};

/// The unit the packages install.
pub const UNIT: &str = "slipway-agent.service";

/// What `join` was asked to do.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// The controller's URL; None: the one the existing config names.
    pub controller: Option<String>,
    pub token: String,
    /// Where the agent config is (written there when absent).
    pub config: PathBuf,
    /// State dir of a config written here.
    pub state_dir: PathBuf,
    /// Enable and start the unit, then wait for the agent to connect.
    pub start: bool,
    /// How long to wait for that.
    pub timeout: Duration,
}

/// What `join` did.
#[derive(Debug)]
pub struct Joined {
    pub identity: Identity,
    /// False: the host was enrolled already; the token was not used.
    pub enrolled_now: bool,
    pub config_written: bool,
    /// How long the agent took to connect once started; None when not
    /// started here.
    pub connected_after: Option<Duration>,
}

pub async fn join(req: &JoinRequest) -> anyhow::Result<Joined> {
    // A malformed token fails before anything is contacted.
    trust::secret::JoinToken::parse(&req.token).context("join token")?;
    let existing = if req.config.exists() {
        Some(AgentConfig::load(&req.config)?)
    } else {
        None
    };
    let controller = match (&req.controller, &existing) {
        (Some(url), Some(cfg))
            if url.trim_end_matches('/') != cfg.controller.trim_end_matches('/') =>
        {
            bail!(
                "{} names controller {}, not {url}: remove it (and {}) to join another controller",
                req.config.display(),
                cfg.controller,
                identity::dir(&cfg.state_dir).display()
            )
        }
        (Some(url), _) => url.clone(),
        (None, Some(cfg)) => cfg.controller.clone(),
        (None, None) => bail!(
            "no controller URL given and no config at {}: slipway-agent join https://CONTROLLER:7400 TOKEN",
            req.config.display()
        ),
    };
    let state_dir = existing
        .as_ref()
        .map_or_else(|| req.state_dir.clone(), |c| c.state_dir.clone());
    // Before anything is written: a unit that cannot start would leave a
    // host enrolled but not running.
    if req.start && systemd_here() && !unit_installed() {
        bail!(
            "the {UNIT} unit is not installed: install the slipway-agent package (or copy systemd/{UNIT} to /etc/systemd/system), or pass --no-start"
        );
    }

    let (identity, enrolled_now) = match Identity::load(&state_dir)? {
        Some(id) => {
            if let Some(cfg) = &existing {
                id.check(cfg)?;
            }
            (id, false)
        }
        None => {
            let host = existing.as_ref().map_or("", |c| c.host.as_str());
            let id = identity::enroll_to(&controller, host, &req.token)
                .await
                .map_err(|e| explain(e, &controller))?;
            if let Some(cfg) = &existing {
                id.check(cfg)?;
            }
            id.save(&state_dir)?;
            (id, true)
        }
    };
    let config_written = existing.is_none();
    if config_written {
        write_config(&req.config, &controller, &identity, &state_dir)?;
    }
    let connected_after = if req.start {
        start_unit(&state_dir, req.timeout).await?
    } else {
        None
    };
    Ok(Joined {
        identity,
        enrolled_now,
        config_written,
        connected_after,
    })
}

/// A connection failure says what to check, in one line.
fn explain(e: anyhow::Error, controller: &str) -> anyhow::Error {
    let text = format!("{e:#}");
    if text.contains("does not match the join token's pin") {
        return anyhow::anyhow!(
            "the controller at {controller} does not hold the CA this token pins: a token of another controller?"
        );
    }
    if text.starts_with("enrollment refused") || text.starts_with("cannot reach controller") {
        return e;
    }
    anyhow::anyhow!("cannot reach the controller at {controller}: {text}")
}

/// The agent config a joined host starts with: who it is, from its
/// certificate, accepting every app the controller declares here
/// (`slipctl apps add`); local app files beside it win (`apps/<app>.toml`).
fn write_config(
    path: &Path,
    controller: &str,
    id: &Identity,
    state_dir: &Path,
) -> anyhow::Result<()> {
    let mut t = toml::Table::new();
    t.insert("controller".into(), controller.into());
    t.insert("host".into(), id.host.clone().into());
    t.insert("tenant".into(), id.tenant.clone().into());
    t.insert("environment".into(), id.environment.clone().into());
    t.insert(
        "state_dir".into(),
        state_dir.to_string_lossy().into_owned().into(),
    );
    t.insert("accept_apps".into(), vec!["*".to_string()].into());
    let text = format!(
        "# Written by `slipway-agent join` from this host's certificate.\n\
         # Apps come from the controller (`slipctl apps add`); accept_apps limits\n\
         # which. A local file in apps/ beside this one (apps/<app>.toml) wins.\n{}",
        toml::to_string(&t).context("agent config")?
    );
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    artifact::unpack::write_atomic(path, text.as_bytes())
        .with_context(|| format!("write {}", path.display()))?;
    // What it says must be what the agent will read.
    let cfg = AgentConfig::load(path)?;
    id.check(&cfg)?;
    Ok(())
}

/// Enables and starts the unit and waits until the agent has connected;
/// None when this host has no systemd (then the caller says how to start).
async fn start_unit(state_dir: &Path, timeout: Duration) -> anyhow::Result<Option<Duration>> {
    if !systemd_here() {
        return Ok(None);
    }
    let started = Instant::now();
    let since = identity::now();
    systemctl(&["enable", UNIT])?;
    // A running agent read its config before this join wrote it.
    systemctl(&["restart", UNIT])?;
    loop {
        if connected(state_dir).is_some_and(|c| c.connected_at >= since) {
            return Ok(Some(started.elapsed()));
        }
        if started.elapsed() > timeout {
            bail!(
                "the agent did not connect within {}s: see `journalctl -u {UNIT}`",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether systemd is this host's init (its runtime dir exists).
fn systemd_here() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

fn unit_installed() -> bool {
    std::process::Command::new("systemctl")
        .args(["cat", UNIT])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn systemctl(args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new("systemctl")
        .args(args)
        .output()
        .context("run systemctl")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "systemctl {}: {}",
            args.join(" "),
            err.lines().next().unwrap_or("failed").trim()
        );
    }
    Ok(())
}

/// When the agent's session was last welcomed by the controller.
#[derive(Debug, Serialize, Deserialize)]
pub struct Connected {
    pub controller: String,
    pub connected_at: i64,
}

fn connected_path(state_dir: &Path) -> PathBuf {
    state_dir.join("connected.json")
}

/// Records that the controller welcomed this agent's session (what `join`
/// waits for). Best effort: a write that fails is logged.
pub fn mark_connected(state_dir: &Path, controller: &str) {
    let c = Connected {
        controller: controller.to_string(),
        connected_at: identity::now(),
    };
    let path = connected_path(state_dir);
    let tmp = path.with_extension("json.tmp");
    let written = serde_json::to_vec(&c)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "could not record the connection");
    }
}

/// The last recorded connection, if any.
pub fn connected(state_dir: &Path) -> Option<Connected> {
    serde_json::from_slice(&std::fs::read(connected_path(state_dir)).ok()?).ok()
}
