//! The agent's TOML config: which controller, who this host is, where state
//! lives, and the apps this host runs with their host-side settings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use artifact::{NameKind, validate_name};
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Controller URL, e.g. `https://127.0.0.1:7400`.
    pub controller: String,
    /// More controllers of the same store (replicas), tried in turn when
    /// the one in use stops answering. (One DNS name with several
    /// addresses in `controller` fails over too: every address is tried.)
    #[serde(default)]
    pub controllers: Vec<String>,
    pub host: String,
    #[serde(default = "default_tenant")]
    pub tenant: String,
    pub environment: String,
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default)]
    pub apps: BTreeMap<String, AppConfig>,
    /// Dir of per-app host settings, one `<app>.toml` each (same keys as
    /// `[apps.<app>]`). Default: `apps/` beside this config file.
    pub apps_dir: Option<PathBuf>,
    /// A file holding a join token from `slipctl hosts add`: used once, at the
    /// first start, to enroll (`slipway-agent join TOKEN` does the same by hand).
    pub join_token_file: Option<PathBuf>,
    /// Which publisher keys releases must be signed with.
    #[serde(default)]
    pub trust: TrustConfig,
    /// Apps the controller may declare on this host (`slipctl apps add`):
    /// names, or `"*"` for any. Empty (the default): local apps only.
    #[serde(default)]
    pub accept_apps: Vec<String>,
    /// Serve Prometheus metrics over plain HTTP here (`127.0.0.1:9480`):
    /// loopback addresses only. Unset (the default): no listener.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Controllers an agent may list besides `controller`.
const MAX_CONTROLLERS: usize = 16;

impl AgentConfig {
    /// Every controller this host may talk to: `controller` first, then
    /// `controllers` in their order.
    pub fn controller_urls(&self) -> Vec<&str> {
        std::iter::once(self.controller.as_str())
            .chain(self.controllers.iter().map(String::as_str))
            .collect()
    }
}

/// Release signature policy. With no keys, releases are not checked for
/// publisher signatures (directives from the controller always are).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustConfig {
    /// Trusted publisher keys, `ed25519:<hex>` (from `slipctl keys generate`).
    /// Several may be listed at once so keys rotate without a flag day.
    #[serde(default)]
    pub publisher_keys: Vec<String>,
    /// Valid signatures by distinct trusted keys a release needs (default 1).
    #[serde(default = "default_threshold")]
    pub signatures_required: usize,
}

fn default_threshold() -> usize {
    1
}

impl TrustConfig {
    pub fn enforced(&self) -> bool {
        !self.publisher_keys.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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
    /// How the app's processes run: `supervise` (the agent's own supervisor,
    /// default) or `systemd` (units the operator installed, driven by systemctl).
    #[serde(default)]
    pub service: Backend,
    /// systemd backend: unit of each process (default `<app>-<process>.service`).
    #[serde(default)]
    pub units: BTreeMap<String, String>,
    /// command backend: start/stop/pid commands of each process.
    #[serde(default)]
    pub commands: BTreeMap<String, CommandSet>,
    /// Unix user the app's processes and hooks run as (default: the agent's).
    /// The release tree is handed to this user after unpacking.
    pub user: Option<String>,
    /// A process log is rotated (copy + truncate) past this size.
    #[serde(default = "default_log_max")]
    pub log_max_bytes: u64,
    /// Rotated logs kept per process.
    #[serde(default = "default_log_keep")]
    pub log_keep: u32,
    /// Where the app's releases, `current` and `shared/` live, e.g. `/opt/web`
    /// (default: `<state_dir>/apps/<app>`).
    pub install_root: Option<PathBuf>,
    /// Seconds between full drift checks of the running release against its
    /// baseline (file changes seen by `notify` are checked at once too).
    #[serde(default = "default_drift_check")]
    pub drift_check_secs: u64,
    /// How a new release replaces the running one: `stop-start` (default:
    /// stop the old processes, then start the new ones), `proxy` (the agent
    /// fronts `port` and moves traffic to the new instance once it is healthy)
    /// or `socket` (the agent holds the listening socket on `port` and every
    /// instance inherits it, systemd's `LISTEN_FDS` protocol).
    #[serde(default)]
    pub activation: Activation,
    /// Seconds the old instance may take to finish its in-flight requests
    /// after traffic moved (proxy, socket), before it is stopped (`proxy`) or
    /// killed (`socket`: its stop signal is its drain signal).
    #[serde(default = "default_drain")]
    pub drain_timeout_secs: u64,
    /// Address the agent's proxy (or the held socket) listens on, with `port`.
    #[serde(default = "default_public_address")]
    pub public_address: std::net::IpAddr,
}

/// How a new release takes over from the running one (see `AppConfig::activation`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    #[default]
    StopStart,
    Proxy,
    Socket,
}

impl Activation {
    /// Whether the new release starts beside the old one (zero downtime).
    pub fn side_by_side(self) -> bool {
        self != Activation::StopStart
    }

    pub fn name(self) -> &'static str {
        match self {
            Activation::StopStart => "stop-start",
            Activation::Proxy => "proxy",
            Activation::Socket => "socket",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Supervise,
    Systemd,
    Command,
}

/// How the `command` backend starts, stops and finds one process (argv each,
/// run in `current/` with the app's env).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSet {
    pub start: Vec<String>,
    pub stop: Vec<String>,
    /// Prints the pid of the running process (health and env checks use it).
    pub pid: Vec<String>,
}

/// Who the app runs as.
#[derive(Debug, Clone, Copy)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

impl AppConfig {
    /// The app's user, resolved (validated at load, so only a user deleted since
    /// then yields None).
    pub fn run_as(&self) -> Option<RunAs> {
        let name = self.user.as_ref()?;
        let u = nix::unistd::User::from_name(name).ok()??;
        Some(RunAs {
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        })
    }

    /// The systemd unit of a process.
    pub fn unit(&self, app: &str, process: &str) -> String {
        self.units
            .get(process)
            .cloned()
            .unwrap_or_else(|| format!("{app}-{process}.service"))
    }
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
fn default_log_max() -> u64 {
    10 * 1024 * 1024
}
fn default_drift_check() -> u64 {
    60
}
fn default_log_keep() -> u32 {
    5
}
fn default_grace() -> u64 {
    10
}
fn default_drain() -> u64 {
    30
}
fn default_public_address() -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
}

const MAX_APPS: usize = 256;

impl Default for AppConfig {
    /// The settings of an app table with no keys.
    fn default() -> Self {
        toml::from_str("").expect("every app key has a default")
    }
}

/// Checks one app's host settings: Err((key, why)).
pub fn validate_app(app: &AppConfig) -> Result<(), (&'static str, String)> {
    if app.keep_releases < 2 {
        return Err(("keep_releases", "must be at least 2".into()));
    }
    if !app.commands.is_empty() && app.service != Backend::Command {
        return Err(("commands", "only applies with service = \"command\"".into()));
    }
    if app.service == Backend::Command && app.commands.is_empty() {
        return Err((
            "commands",
            "service = \"command\" needs start/stop/pid commands per process".into(),
        ));
    }
    if app
        .commands
        .values()
        .any(|c| c.start.is_empty() || c.stop.is_empty() || c.pid.is_empty())
    {
        return Err((
            "commands",
            "start, stop and pid must each name a program".into(),
        ));
    }
    if !app.units.is_empty() && app.service != Backend::Systemd {
        return Err(("units", "only applies with service = \"systemd\"".into()));
    }
    if let Some(user) = &app.user {
        match nix::unistd::User::from_name(user) {
            Ok(Some(_)) => {}
            _ => return Err(("user", format!("no such user {user:?} on this host"))),
        }
        if app.service == Backend::Systemd {
            return Err((
                "user",
                "with service = \"systemd\" the unit sets User=".into(),
            ));
        }
    }
    if app.log_keep == 0 || app.log_keep > 100 || app.log_max_bytes < 1024 {
        return Err((
            "log_keep",
            "log_keep must be 1..=100 and log_max_bytes at least 1024".into(),
        ));
    }
    if let Some(root) = &app.install_root
        && !root.is_absolute()
    {
        return Err(("install_root", "must be an absolute path".into()));
    }
    if app.activation.side_by_side() {
        let mode = app.activation.name();
        if app.service != Backend::Supervise {
            return Err((
                "activation",
                format!(
                    "activation = \"{mode}\" needs service = \"supervise\": systemd units and operator commands run one instance per process and cannot start a release beside the running one"
                ),
            ));
        }
        if app.port.is_none() {
            return Err((
                "activation",
                format!("activation = \"{mode}\" needs the app's public port (port = N)"),
            ));
        }
    }
    if app.drain_timeout_secs == 0 || app.drain_timeout_secs > 3600 {
        return Err(("drain_timeout_secs", "must be 1..=3600".into()));
    }
    Ok(())
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
    /// Reads the agent config and the per-app files of its apps dir.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let mut cfg = Self::parse(&text, path)?;
        let dir = cfg
            .apps_dir
            .clone()
            .unwrap_or_else(|| path.parent().unwrap_or(Path::new(".")).join("apps"));
        let Ok(entries) = std::fs::read_dir(&dir) else {
            cfg.check_roots(path)?;
            return Ok(cfg);
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        if files.len() > MAX_APPS {
            return Err(ConfigError::Invalid {
                path: dir,
                key: "apps".into(),
                why: format!("more than {MAX_APPS} app files"),
            });
        }
        for file in files {
            let name = file
                .file_stem()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            let invalid = |key: &str, why: String| ConfigError::Invalid {
                path: file.clone(),
                key: key.into(),
                why,
            };
            validate_name(NameKind::App, &name).map_err(|e| invalid("file name", e.why.into()))?;
            if cfg.apps.contains_key(&name) {
                return Err(invalid(
                    "app",
                    format!(
                        "{name} is also defined in {} under [apps.{name}]: keep one",
                        path.display()
                    ),
                ));
            }
            let text = std::fs::read_to_string(&file).map_err(|source| ConfigError::Read {
                path: file.clone(),
                source,
            })?;
            let app: AppConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: file.clone(),
                message: e.message().to_string(),
            })?;
            validate_app(&app).map_err(|(key, why)| invalid(key, why))?;
            cfg.apps.insert(name, app);
        }
        cfg.check_roots(path)?;
        Ok(cfg)
    }

    /// Two apps must never share a root: they would fight over `current`.
    pub fn check_roots(&self, path: &Path) -> Result<(), ConfigError> {
        let mut seen: BTreeMap<PathBuf, &str> = BTreeMap::new();
        for (name, app) in &self.apps {
            let root = app
                .install_root
                .clone()
                .unwrap_or_else(|| self.state_dir.join("apps").join(name));
            if let Some(other) = seen.insert(root.clone(), name) {
                return Err(ConfigError::Invalid {
                    path: path.into(),
                    key: format!("apps.{name}.install_root"),
                    why: format!("{} is also the root of app {other}", root.display()),
                });
            }
        }
        Ok(())
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
        if let Some(addr) = cfg.metrics_listen
            && !addr.ip().is_loopback()
        {
            return Err(invalid(
                "metrics_listen",
                format!(
                    "{addr} is not a loopback address: the metrics listener has no authentication"
                ),
            ));
        }
        validate_name(NameKind::Tenant, &cfg.tenant)
            .map_err(|e| invalid("tenant", e.why.into()))?;
        validate_name(NameKind::Environment, &cfg.environment)
            .map_err(|e| invalid("environment", e.why.into()))?;
        if cfg.controllers.len() > MAX_CONTROLLERS {
            return Err(invalid(
                "controllers",
                format!(
                    "{} listed; at most {MAX_CONTROLLERS}",
                    cfg.controllers.len()
                ),
            ));
        }
        for (key, url) in std::iter::once(("controller", &cfg.controller))
            .chain(cfg.controllers.iter().map(|u| ("controllers", u)))
        {
            if !url.starts_with("https://") {
                return Err(invalid(
                    key,
                    format!(
                        "{url:?} must be an https:// URL (agents talk to the controller over mutual TLS only)"
                    ),
                ));
            }
            trust::tls::ControllerUrl::parse(url).map_err(|e| invalid(key, e.to_string()))?;
        }
        for k in &cfg.trust.publisher_keys {
            trust::sign::parse_public(k)
                .map_err(|e| invalid("trust.publisher_keys", e.to_string()))?;
        }
        if cfg.trust.enforced()
            && (cfg.trust.signatures_required == 0
                || cfg.trust.signatures_required > cfg.trust.publisher_keys.len())
        {
            return Err(invalid(
                "trust.signatures_required",
                format!(
                    "must be between 1 and the number of publisher_keys ({})",
                    cfg.trust.publisher_keys.len()
                ),
            ));
        }
        for name in &cfg.accept_apps {
            if name != "*" {
                validate_name(NameKind::App, name)
                    .map_err(|e| invalid("accept_apps", format!("{name:?}: {}", e.why)))?;
            }
        }
        for (name, app) in &cfg.apps {
            validate_name(NameKind::App, name)
                .map_err(|e| invalid(&format!("apps.{name}"), e.why.into()))?;
            validate_app(app).map_err(|(key, why)| invalid(&format!("apps.{name}.{key}"), why))?;
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let ok = "controller = \"https://127.0.0.1:7400\"\nhost = \"h1\"\nenvironment = \"preprod\"\n[apps.web]\nport = 8080\n";
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

        let with = |addr: &str| {
            ok.replace(
                "[apps.web]",
                &format!("metrics_listen = \"{addr}\"\n[apps.web]"),
            )
        };
        let c = AgentConfig::parse(&with("127.0.0.1:9480"), Path::new("a.toml")).unwrap();
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9480".parse().unwrap()));
        let e = AgentConfig::parse(&with("0.0.0.0:9480"), Path::new("a.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("metrics_listen") && e.contains("not a loopback address"),
            "{e}"
        );
    }

    #[test]
    fn per_app_files_join_the_config_and_conflicts_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let main = d.path().join("agent.toml");
        std::fs::write(
            &main,
            "controller = \"https://127.0.0.1:1\"\nhost = \"h1\"\nenvironment = \"prod\"\n",
        )
        .unwrap();
        std::fs::create_dir_all(d.path().join("apps")).unwrap();
        std::fs::write(
            d.path().join("apps/web.toml"),
            "port = 8080\ninstall_root = \"/opt/web\"\n",
        )
        .unwrap();
        let c = AgentConfig::load(&main).unwrap();
        assert_eq!(c.apps["web"].port, Some(8080));
        assert_eq!(
            c.apps["web"].install_root.as_deref(),
            Some(Path::new("/opt/web"))
        );

        std::fs::write(
            d.path().join("apps/api.toml"),
            "install_root = \"opt/api\"\n",
        )
        .unwrap();
        let e = AgentConfig::load(&main).unwrap_err().to_string();
        assert!(
            e.contains("api.toml: install_root: must be an absolute path"),
            "{e}"
        );
        std::fs::remove_file(d.path().join("apps/api.toml")).unwrap();

        std::fs::write(&main, "controller = \"https://127.0.0.1:1\"\nhost = \"h1\"\nenvironment = \"prod\"\n[apps.web]\n").unwrap();
        let e = AgentConfig::load(&main).unwrap_err().to_string();
        assert!(e.contains("web is also defined in"), "{e}");

        std::fs::write(&main, "controller = \"https://127.0.0.1:1\"\nhost = \"h1\"\nenvironment = \"prod\"\n[apps.api]\ninstall_root = \"/opt/web\"\n").unwrap();
        let e = AgentConfig::load(&main).unwrap_err().to_string();
        assert!(e.contains("/opt/web is also the root of app"), "{e}");
    }

    #[test]
    fn side_by_side_activation_needs_the_supervisor_and_a_port() {
        let base = "controller = \"https://127.0.0.1:7400\"\nhost = \"h1\"\nenvironment = \"preprod\"\n[apps.web]\n";
        let parse =
            |app: &str| AgentConfig::parse(&format!("{base}{app}"), Path::new("agent.toml"));
        let c = parse("port = 8080\n").unwrap();
        assert_eq!(
            c.apps["web"].activation,
            Activation::StopStart,
            "the default is unchanged"
        );
        let c = parse("port = 8080\nactivation = \"proxy\"\n").unwrap();
        assert_eq!(c.apps["web"].activation, Activation::Proxy);
        assert_eq!(c.apps["web"].drain_timeout_secs, 30);
        for (app, want) in [
            (
                "port = 8080\nactivation = \"proxy\"\nservice = \"systemd\"\n",
                "apps.web.activation: activation = \"proxy\" needs service = \"supervise\"",
            ),
            (
                "activation = \"socket\"\n",
                "apps.web.activation: activation = \"socket\" needs the app's public port",
            ),
            (
                "port = 8080\nactivation = \"proxy\"\ndrain_timeout_secs = 0\n",
                "apps.web.drain_timeout_secs: must be 1..=3600",
            ),
            (
                "port = 8080\nactivation = \"blue-green\"\n",
                "unknown variant `blue-green`",
            ),
        ] {
            let e = parse(app).unwrap_err().to_string();
            assert!(e.contains(want), "{app}: {e}");
        }
    }
}
