//! The agent's TOML config: which controller, who this host is, where state
//! lives, and the apps this host runs with their host-side settings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use artifact::{NameKind, validate_name};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Controller URL, e.g. `http://127.0.0.1:7400`.
    pub controller: String,
    pub host: String,
    #[serde(default = "default_tenant")]
    pub tenant: String,
    pub environment: String,
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default)]
    pub apps: BTreeMap<String, AppConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// Port the app listens on; given to it as `PORT` and used for HTTP health.
    pub port: Option<u16>,
    /// Env files, most shared first, most local last (the last one wins).
    /// Default: `<state_dir>/apps/<app>/shared/.env` when it exists.
    #[serde(default)]
    pub env_files: Vec<PathBuf>,
    /// Releases kept on disk (never fewer than current and previous).
    #[serde(default = "default_keep")]
    pub keep_releases: usize,
    /// Seconds between SIGTERM and SIGKILL when stopping the app.
    #[serde(default = "default_grace")]
    pub stop_grace_secs: u64,
}

fn default_tenant() -> String {
    "default".into()
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/slipway")
}
fn default_keep() -> usize {
    5
}
fn default_grace() -> u64 {
    10
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: {key}: {why}")]
    Invalid {
        path: PathBuf,
        key: String,
        why: String,
    },
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: AgentConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.message().to_string(),
        })?;
        let invalid = |key: &str, why: String| ConfigError::Invalid {
            path: path.into(),
            key: key.into(),
            why,
        };
        validate_name(NameKind::Host, &cfg.host).map_err(|e| invalid("host", e.why.into()))?;
        validate_name(NameKind::Tenant, &cfg.tenant)
            .map_err(|e| invalid("tenant", e.why.into()))?;
        validate_name(NameKind::Environment, &cfg.environment)
            .map_err(|e| invalid("environment", e.why.into()))?;
        if !(cfg.controller.starts_with("http://") || cfg.controller.starts_with("https://")) {
            return Err(invalid(
                "controller",
                "must be an http:// or https:// URL".into(),
            ));
        }
        for (name, app) in &cfg.apps {
            validate_name(NameKind::App, name)
                .map_err(|e| invalid(&format!("apps.{name}"), e.why.into()))?;
            if app.keep_releases < 2 {
                return Err(invalid(
                    &format!("apps.{name}.keep_releases"),
                    "must be at least 2".into(),
                ));
            }
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let ok = "controller = \"http://127.0.0.1:7400\"\nhost = \"h1\"\nenvironment = \"preprod\"\n[apps.web]\nport = 8080\n";
        let c = AgentConfig::parse(ok, Path::new("agent.toml")).unwrap();
        assert_eq!(c.tenant, "default");
        assert_eq!(c.apps["web"].keep_releases, 5);

        let bad = ok.replace("h1", "../h1");
        let e = AgentConfig::parse(&bad, Path::new("agent.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("agent.toml: host"), "{e}");
        let e = AgentConfig::parse(&format!("{ok}colour = 1\n"), Path::new("a.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `colour`"), "{e}");
    }
}
