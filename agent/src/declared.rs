//! Apps the controller declares for this host (`slipctl apps add`): which of
//! them this host takes, kept in `<state_dir>/declared-apps.json` so they
//! run across restarts without the controller, and how they join the local
//! config. The local config wins: an app configured in a local file runs with
//! the local settings whatever the controller declares, and the controller
//! may only declare apps the local `accept_apps` allow-list names. A declared
//! app this host cannot run (a user or env file missing here, a port or root
//! another app holds) is refused and keeps the settings it ran with before,
//! if any: a host never ends with a config it cannot run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use artifact::settings::{AppSettings, Declaration, SettingsError};
use serde::{Deserialize, Serialize};

use crate::config::{self, AgentConfig, AppConfig};

/// Why this host does not run a declared app as declared.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{app} is not in this host's accept_apps ({accepted})")]
    NotAccepted { app: String, accepted: String },
    #[error("{0}")]
    Settings(#[from] SettingsError),
    #[error("{0}")]
    Name(#[from] artifact::NameError),
    #[error("{key}: {why}")]
    Config { key: &'static str, why: String },
    #[error("env file {} does not exist on this host", .0.display())]
    EnvFile(PathBuf),
    #[error("port {port} is already app {other}'s on this host")]
    Port { port: u16, other: String },
    #[error("{0}")]
    Root(#[from] config::ConfigError),
}

/// What this host took of the controller's declarations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Declared {
    /// The environment's apps revision these came with.
    pub revision: u64,
    /// The apps this host runs as declared (local apps excluded).
    pub apps: Declaration,
    /// Declared apps this host does not run as declared, and why.
    pub refused: BTreeMap<String, String>,
}

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("declared-apps.json")
}

impl Declared {
    /// What was taken last (nothing when never declared or unreadable: the
    /// next declaration from the controller replaces it).
    pub fn load(state_dir: &Path) -> Self {
        let Ok(bytes) = std::fs::read(path(state_dir)) else {
            return Self::default();
        };
        match serde_json::from_slice(&bytes) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "declared-apps.json does not parse; running local apps only until the controller declares again");
                Self::default()
            }
        }
    }

    pub fn save(&self, state_dir: &Path) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec_pretty(self)?;
        trust::write_private(&path(state_dir), &bytes)
            .map_err(|e| anyhow::anyhow!("save declared apps: {e}"))
    }

    /// Which of `incoming` (at `revision`) this host takes, given its local
    /// config and what it took before (`self`).
    pub fn take(&self, local: &AgentConfig, revision: u64, incoming: Declaration) -> Declared {
        let mut next = Declared {
            revision,
            ..Default::default()
        };
        // Ports and roots held so far: local apps first, then each taken app.
        let mut holding = local.clone();
        for (name, settings) in incoming {
            if local.apps.contains_key(&name) {
                // The local file wins; nothing to refuse.
                continue;
            }
            let verdict = if !local.accepts(&name) {
                Err(Refusal::NotAccepted {
                    app: name.clone(),
                    accepted: if local.accept_apps.is_empty() {
                        "empty".to_string()
                    } else {
                        local.accept_apps.join(", ")
                    },
                })
            } else {
                runnable(&holding, &name, &settings)
            };
            match verdict {
                Ok(app) => {
                    holding.apps.insert(name.clone(), app);
                    next.apps.insert(name, settings);
                }
                Err(why) => {
                    let why = why.to_string();
                    tracing::warn!(app = %name, reason = %why, "declared app refused");
                    // What ran before keeps running, if it still can.
                    if let Some(prev) = self.apps.get(&name)
                        && let Ok(app) = runnable(&holding, &name, prev)
                    {
                        holding.apps.insert(name.clone(), app);
                        next.apps.insert(name.clone(), prev.clone());
                    }
                    next.refused.insert(name, why);
                }
            }
        }
        next
    }
}

/// A declared app's settings as the agent's own app config.
pub fn app_config(s: &AppSettings) -> AppConfig {
    let mut app = AppConfig::default();
    if let Some(port) = s.port {
        app.port = Some(port);
    }
    if let Some(service) = s.service {
        app.service = match service {
            artifact::settings::Service::Supervise => config::Backend::Supervise,
            artifact::settings::Service::Systemd => config::Backend::Systemd,
        };
    }
    if let Some(files) = &s.env_files {
        app.env_files = files.iter().map(PathBuf::from).collect();
    }
    app.user = s.user.clone();
    if let Some(keep) = s.keep_releases {
        app.keep_releases = keep as usize;
    }
    if let Some(a) = s.activation {
        app.activation = match a {
            artifact::settings::Activation::StopStart => config::Activation::StopStart,
            artifact::settings::Activation::Proxy => config::Activation::Proxy,
            artifact::settings::Activation::Socket => config::Activation::Socket,
        };
    }
    if let Some(d) = s.drain_timeout_secs {
        app.drain_timeout_secs = d;
    }
    if let Some(g) = s.stop_grace_secs {
        app.stop_grace_secs = g;
    }
    app
}

/// Whether this host can run `name` with `settings` beside the apps in
/// `holding`: every check the local config gets, plus the env files exist
/// here and the port is free of the other apps.
fn runnable(
    holding: &AgentConfig,
    name: &str,
    settings: &AppSettings,
) -> Result<AppConfig, Refusal> {
    artifact::validate_name(artifact::NameKind::App, name)?;
    settings.check()?;
    let app = app_config(settings);
    config::validate_app(&app).map_err(|(key, why)| Refusal::Config { key, why })?;
    if let Some(f) = app.env_files.iter().find(|f| !f.is_file()) {
        return Err(Refusal::EnvFile(f.clone()));
    }
    if let Some(port) = app.port
        && let Some((other, _)) = holding.apps.iter().find(|(_, a)| a.port == Some(port))
    {
        return Err(Refusal::Port {
            port,
            other: other.clone(),
        });
    }
    let mut with = holding.clone();
    with.apps.insert(name.to_string(), app.clone());
    with.check_roots(Path::new("declared apps"))?;
    Ok(app)
}

impl AgentConfig {
    /// Whether the controller may declare `app` here.
    pub fn accepts(&self, app: &str) -> bool {
        self.accept_apps.iter().any(|a| a == "*" || a == app)
    }

    /// The config this host runs: the local one with the declared apps it
    /// took (the local file wins for an app it configures).
    pub fn with_declared(&self, d: &Declared) -> AgentConfig {
        let mut cfg = self.clone();
        for (name, s) in &d.apps {
            if !cfg.apps.contains_key(name) && self.accepts(name) {
                cfg.apps.insert(name.clone(), app_config(s));
            }
        }
        cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(extra: &str) -> AgentConfig {
        AgentConfig::parse(
            &format!("controller = \"https://127.0.0.1:1\"\nhost = \"h1\"\nenvironment = \"prod\"\nstate_dir = \"/tmp/slipway-declared-test\"\n{extra}"),
            Path::new("agent.toml"),
        )
        .unwrap()
    }

    fn settings(json: &str) -> AppSettings {
        AppSettings::from_json(json).unwrap()
    }

    #[test]
    fn only_accepted_apps_are_taken_and_the_local_file_wins() {
        let cfg = local("accept_apps = [\"web\", \"api\"]\n[apps.api]\nport = 7000\n");
        let incoming: Declaration = [
            ("web".to_string(), settings(r#"{"port":8080}"#)),
            ("api".to_string(), settings(r#"{"port":9000}"#)),
            ("worker".to_string(), settings("{}")),
        ]
        .into();
        let d = Declared::default().take(&cfg, 3, incoming);
        assert_eq!(d.revision, 3);
        assert_eq!(d.apps.keys().collect::<Vec<_>>(), ["web"]);
        assert!(
            d.refused["worker"].contains("not in this host's accept_apps"),
            "{:?}",
            d.refused
        );
        assert!(
            !d.refused.contains_key("api"),
            "a local app is not a refusal"
        );
        let eff = cfg.with_declared(&d);
        assert_eq!(eff.apps["api"].port, Some(7000), "the local file wins");
        assert_eq!(eff.apps["web"].port, Some(8080));
    }

    #[test]
    fn a_missing_env_file_or_a_held_port_is_refused_and_the_previous_settings_stay() {
        let cfg = local("accept_apps = [\"*\"]\n[apps.api]\nport = 7000\n");
        let before = Declared::default().take(
            &cfg,
            1,
            [("web".to_string(), settings(r#"{"port":8080}"#))].into(),
        );
        assert!(before.refused.is_empty(), "{:?}", before.refused);
        let after = before.take(
            &cfg,
            2,
            [(
                "web".to_string(),
                settings(r#"{"port":8080,"env_files":["/nonexistent/web.env"]}"#),
            )]
            .into(),
        );
        assert_eq!(
            after.refused["web"],
            "env file /nonexistent/web.env does not exist on this host"
        );
        assert_eq!(
            after.apps["web"], before.apps["web"],
            "still runs as before"
        );

        let clash = Declared::default().take(
            &cfg,
            3,
            [("web".to_string(), settings(r#"{"port":7000}"#))].into(),
        );
        assert_eq!(
            clash.refused["web"],
            "port 7000 is already app api's on this host"
        );
        assert!(clash.apps.is_empty(), "nothing to fall back to: not run");

        let nobody = Declared::default().take(
            &cfg,
            4,
            [(
                "web".to_string(),
                settings(r#"{"user":"no-such-user-here"}"#),
            )]
            .into(),
        );
        assert!(
            nobody.refused["web"].contains("no such user"),
            "{:?}",
            nobody.refused
        );
    }
}
