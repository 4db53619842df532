//! The release spec, `slipway.toml` at the root of every release: which processes
//! run, how their health is judged, which env var NAMES they need, hooks and shared
//! files. It travels with the code; host-specific settings live on the host.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::manifest::check_clean_path;
use crate::names::{NameKind, validate_name};

pub const SPEC_FILE: &str = "slipway.toml";
const MAX_SPEC_BYTES: u64 = 256 * 1024;

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReleaseSpec {
    pub processes: BTreeMap<String, ProcessSpec>,
    #[serde(default)]
    pub hooks: Hooks,
    #[serde(default)]
    pub shared: Shared,
    pub restart_warning: Option<RestartWarning>,
    pub migrations: Option<Migrations>,
}

/// How a host's refusal of a release begins when migrations are pending that
/// its environment does not apply without a promoter's approval: the
/// controller's rollout engine waits for that approval instead of reverting.
pub const MIGRATIONS_AWAITING: &str = "awaiting a promoter's approval";

/// The release's database migrations: a command that lists the pending ones
/// (one name a line, nothing when none), and optionally one that tries them
/// without keeping anything and one that applies them. Each runs in the new
/// release's dir with the app's environment, before anything stops; the
/// environment's policy says whether the agent applies them itself.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Migrations {
    pub pending: Vec<String>,
    pub dry_run: Option<Vec<String>>,
    pub apply: Option<Vec<String>>,
    /// Bound of each command.
    #[serde(default = "default_hook_timeout")]
    pub timeout_secs: u64,
}

impl Migrations {
    /// A command of the table as a hook (argv and the table's bound).
    pub fn hook(&self, command: &[String]) -> HookSpec {
        HookSpec {
            command: command.to_vec(),
            timeout_secs: self.timeout_secs,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    /// argv, run without a shell, relative paths resolved in the release dir.
    pub command: Vec<String>,
    /// Names of env vars the running process must have (values are never read).
    #[serde(default)]
    pub required_env: Vec<String>,
    #[serde(default)]
    pub health: HealthSpec,
    /// Working dir, relative to the release dir (default: the release dir).
    pub cwd: Option<String>,
    /// Port this process listens on (given to it as `PORT`, used by HTTP/TCP
    /// health); default: the app's port from the host config.
    pub port: Option<u16>,
}

/// How a process proves it is ready: at most one probe (HTTP path, TCP connect
/// or a command); with none, a process that stays up for `min_healthy_secs`
/// (a worker) is healthy.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    /// HTTP readiness path, polled until it answers 2xx.
    pub http: Option<String>,
    /// Ready when a TCP connect to the process's port succeeds.
    #[serde(default)]
    pub tcp: bool,
    /// Ready when this command (argv, run in the release dir with the app's env)
    /// exits 0.
    pub command: Option<Vec<String>>,
    /// Deadline for the first passing check.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// How long every check must keep passing before the release counts as healthy.
    #[serde(default = "default_min_healthy")]
    pub min_healthy_secs: u64,
}

impl Default for HealthSpec {
    fn default() -> Self {
        Self {
            http: None,
            tcp: false,
            command: None,
            timeout_secs: default_timeout(),
            min_healthy_secs: default_min_healthy(),
        }
    }
}

fn default_timeout() -> u64 {
    30
}
fn default_min_healthy() -> u64 {
    2
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// Runs in the new release dir before `current` flips; failure aborts the deploy.
    pub prepare: Option<HookSpec>,
    /// Runs in the release dir once it is healthy; a failure is reported, the
    /// release stays.
    pub post_activate: Option<HookSpec>,
    /// Runs in the failed release's dir after its processes stopped, before the
    /// previous release starts again (e.g. to undo a migration).
    pub on_rollback: Option<HookSpec>,
}

/// Tell the running app it is about to be restarted: an HTTP POST to one of its
/// processes, then a pause.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RestartWarning {
    /// Path to POST to, e.g. `/admin/restart-warning`.
    pub http: String,
    /// Process that receives it (default: the first process with a port-based probe).
    pub process: Option<String>,
    /// Seconds to wait after the POST before stopping the app.
    #[serde(default = "default_warning_secs")]
    pub seconds: u64,
}

fn default_warning_secs() -> u64 {
    10
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HookSpec {
    pub command: Vec<String>,
    #[serde(default = "default_hook_timeout")]
    pub timeout_secs: u64,
}

fn default_hook_timeout() -> u64 {
    300
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Shared {
    /// Files under the app's `shared/` dir linked into every release (e.g. `.env`).
    #[serde(default)]
    pub files: Vec<String>,
    /// Dirs under `shared/` linked into every release (e.g. `uploads`).
    #[serde(default)]
    pub dirs: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: larger than {MAX_SPEC_BYTES} bytes")]
    TooLarge { file: String },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: {key}: {why}")]
    Invalid {
        file: String,
        key: String,
        why: String,
    },
}

impl ReleaseSpec {
    /// Reads and validates `<release>/slipway.toml`.
    pub fn load(release_dir: &Path) -> Result<Self, SpecError> {
        let path = release_dir.join(SPEC_FILE);
        let file = path.display().to_string();
        let meta = std::fs::symlink_metadata(&path).map_err(|source| SpecError::Read {
            file: file.clone(),
            source,
        })?;
        if meta.len() > MAX_SPEC_BYTES {
            return Err(SpecError::TooLarge { file });
        }
        let text = std::fs::read_to_string(&path).map_err(|source| SpecError::Read {
            file: file.clone(),
            source,
        })?;
        Self::parse(&text, &file)
    }

    pub fn parse(text: &str, file: &str) -> Result<Self, SpecError> {
        let spec: ReleaseSpec = toml::from_str(text).map_err(|e| SpecError::Parse {
            file: file.to_string(),
            message: e.message().to_string()
                + &e.span()
                    .map(|s| format!(" (at byte {})", s.start))
                    .unwrap_or_default(),
        })?;
        spec.validate(file)?;
        Ok(spec)
    }

    fn validate(&self, file: &str) -> Result<(), SpecError> {
        let invalid = |key: String, why: String| SpecError::Invalid {
            file: file.to_string(),
            key,
            why,
        };
        if self.processes.is_empty() {
            return Err(invalid(
                "processes".into(),
                "at least one process is required".into(),
            ));
        }
        for (name, p) in &self.processes {
            let key = format!("processes.{name}");
            validate_name(NameKind::Process, name)
                .map_err(|e| invalid(key.clone(), e.why.to_string()))?;
            if p.command.is_empty() || p.command[0].is_empty() {
                return Err(invalid(
                    format!("{key}.command"),
                    "must name a program".into(),
                ));
            }
            for var in &p.required_env {
                if !is_env_name(var) {
                    return Err(invalid(
                        format!("{key}.required_env"),
                        format!("{var:?} is not a valid variable name"),
                    ));
                }
            }
            let probes = usize::from(p.health.http.is_some())
                + usize::from(p.health.tcp)
                + usize::from(p.health.command.is_some());
            if probes > 1 {
                return Err(invalid(
                    format!("{key}.health"),
                    "http, tcp and command are alternatives: choose one".into(),
                ));
            }
            if p.health.command.as_ref().is_some_and(|c| c.is_empty()) {
                return Err(invalid(
                    format!("{key}.health.command"),
                    "must name a program".into(),
                ));
            }
            if let Some(cwd) = &p.cwd {
                check_clean_path(cwd).map_err(|e| invalid(format!("{key}.cwd"), e.to_string()))?;
            }
            if p.port == Some(0) {
                return Err(invalid(
                    format!("{key}.port"),
                    "must be between 1 and 65535".into(),
                ));
            }
            if let Some(path) = &p.health.http
                && !path.starts_with('/')
            {
                return Err(invalid(
                    format!("{key}.health.http"),
                    "must be a path starting with /".into(),
                ));
            }
            if p.health.timeout_secs == 0 || p.health.timeout_secs > 3600 {
                return Err(invalid(
                    format!("{key}.health.timeout_secs"),
                    "must be between 1 and 3600".into(),
                ));
            }
            if p.health.min_healthy_secs > 3600 {
                return Err(invalid(
                    format!("{key}.health.min_healthy_secs"),
                    "must be at most 3600".into(),
                ));
            }
        }
        let hooks = [
            ("prepare", &self.hooks.prepare),
            ("post_activate", &self.hooks.post_activate),
            ("on_rollback", &self.hooks.on_rollback),
        ];
        for (name, hook) in hooks {
            let Some(h) = hook else { continue };
            if h.command.is_empty() {
                return Err(invalid(
                    format!("hooks.{name}.command"),
                    "must name a program".into(),
                ));
            }
            if h.timeout_secs == 0 || h.timeout_secs > 24 * 3600 {
                return Err(invalid(
                    format!("hooks.{name}.timeout_secs"),
                    "must be between 1 and 86400".into(),
                ));
            }
        }
        if let Some(m) = &self.migrations {
            for (name, command) in [
                ("pending", Some(&m.pending)),
                ("dry_run", m.dry_run.as_ref()),
                ("apply", m.apply.as_ref()),
            ] {
                if command.is_some_and(|c| c.is_empty() || c[0].is_empty()) {
                    return Err(invalid(
                        format!("migrations.{name}"),
                        "must name a program".into(),
                    ));
                }
            }
            if m.timeout_secs == 0 || m.timeout_secs > 24 * 3600 {
                return Err(invalid(
                    "migrations.timeout_secs".into(),
                    "must be between 1 and 86400".into(),
                ));
            }
        }
        if let Some(w) = &self.restart_warning {
            if !w.http.starts_with('/') {
                return Err(invalid(
                    "restart_warning.http".into(),
                    "must be a path starting with /".into(),
                ));
            }
            if w.seconds > 600 {
                return Err(invalid(
                    "restart_warning.seconds".into(),
                    "must be at most 600".into(),
                ));
            }
            if let Some(p) = &w.process
                && !self.processes.contains_key(p)
            {
                return Err(invalid(
                    "restart_warning.process".into(),
                    format!("no process named {p:?}"),
                ));
            }
        }
        for (key, list) in [
            ("shared.files", &self.shared.files),
            ("shared.dirs", &self.shared.dirs),
        ] {
            for p in list {
                check_clean_path(p).map_err(|e| invalid(key.into(), e.to_string()))?;
            }
        }
        Ok(())
    }

    /// Every required env var name across processes, sorted and deduplicated.
    pub fn required_env(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .processes
            .values()
            .flat_map(|p| p.required_env.iter().cloned())
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

pub fn is_env_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && s.len() <= 256
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expect_err: Option<&str>) {
        match (ReleaseSpec::parse(text, "slipway.toml"), expect_err) {
            (Ok(_), None) => {}
            (Err(e), Some(want)) => {
                let msg = e.to_string();
                assert!(msg.contains(want), "error {msg:?} lacks {want:?}");
                assert!(
                    msg.starts_with("slipway.toml: "),
                    "error names the file: {msg}"
                );
            }
            (got, want) => panic!("got {got:?}, wanted error {want:?}"),
        }
    }

    #[test]
    fn parses_a_full_spec() {
        let text = r#"
[processes.web]
command = ["bin/app", "--serve"]
required_env = ["DATABASE_URL"]
health = { http = "/health", timeout_secs = 10, min_healthy_secs = 1 }

[hooks.prepare]
command = ["sh", "-c", "touch migrated"]

[shared]
files = [".env"]
dirs = ["uploads"]
"#;
        let s = ReleaseSpec::parse(text, "slipway.toml").unwrap();
        assert_eq!(s.processes["web"].health.http.as_deref(), Some("/health"));
        assert_eq!(s.required_env(), vec!["DATABASE_URL"]);
        assert_eq!(s.hooks.prepare.as_ref().unwrap().timeout_secs, 300);
    }

    #[test]
    fn errors_name_the_key_and_the_problem() {
        check("", Some("processes"));
        check("[processes]\n", Some("processes: at least one process"));
        check(
            "[processes.web]\ncommand = []\n",
            Some("processes.web.command"),
        );
        check(
            "[processes.web]\ncommand = [\"x\"]\nrequired_env = [\"A-B\"]\n",
            Some("processes.web.required_env"),
        );
        check(
            "[processes.web]\ncommand = [\"x\"]\nhealth = { http = \"health\" }\n",
            Some("processes.web.health.http"),
        );
        check(
            "[processes.web]\ncommand = [\"x\"]\ncolour = 3\n",
            Some("unknown field `colour`"),
        );
        check(
            "[processes.web]\ncommand = [\"x\"]\nhealth = { http = \"/h\", tcp = true }\n",
            Some("processes.web.health: http, tcp and command are alternatives"),
        );
        check(
            "[processes.web]\ncommand = [\"x\"]\ncwd = \"../up\"\n",
            Some("processes.web.cwd"),
        );
        check(
            "[processes.web]\ncommand = [\"x\"]\n[restart_warning]\nhttp = \"/w\"\nprocess = \"api\"\n",
            Some("restart_warning.process: no process named \"api\""),
        );
        check(
            "[processes.web]\ncommand = [\"x\"]\n[hooks.on_rollback]\ncommand = []\n",
            Some("hooks.on_rollback.command"),
        );
        check(
            "[processes.web]\ncommand = [\"x\"]\n[migrations]\npending = [\"m\"]\napply = []\n",
            Some("migrations.apply: must name a program"),
        );
        check(
            "[processes.web]\ncommand = [\"x\"]\n[migrations]\napply = [\"m\"]\n",
            Some("missing field `pending`"),
        );
        check(
            "[processes.web]\ncommand = [\"x\"]\n[migrations]\npending = [\"m\"]\ntimeout_secs = 0\n",
            Some("migrations.timeout_secs"),
        );
        check(
            "[processes.web]\ncommand = [\"x\"]\n[shared]\nfiles = [\"../.env\"]\n",
            Some("shared.files"),
        );
    }
}
