//! Contexts: named sets of the global options (controller, CA certificate,
//! token file, tenant) kept in `~/.config/slipway/config.toml`
//! (`$XDG_CONFIG_HOME`, or `$SLIPWAY_CONFIG` for the file itself), kubectl
//! style: `slipctl config set-context prod --controller … --ca-cert …
//! --token-file …`, `use-context prod`, and `--context` / `$SLIPWAY_CONTEXT`
//! for one command. A flag or its environment variable wins over the
//! context; the context wins over the built-in default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{CtlError, Result};

/// The controller when neither a flag, a variable nor a context names one.
pub const DEFAULT_CONTROLLER: &str = "https://127.0.0.1:7400";
/// Contexts in one file at most (bounds what is read).
const MAX_CONTEXTS: usize = 256;
const MAX_FILE_BYTES: u64 = 256 * 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// Where the contexts live.
pub fn path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SLIPWAY_CONFIG") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("slipway").join("config.toml"))
}

impl ConfigFile {
    /// The file at `path`; empty when it does not exist.
    pub fn load(path: &Path) -> Result<Self> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(CtlError::Usage(format!("read {}: {e}", path.display()))),
        };
        if meta.len() > MAX_FILE_BYTES {
            return Err(CtlError::Usage(format!(
                "{}: larger than {MAX_FILE_BYTES} bytes",
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| CtlError::Usage(format!("read {}: {e}", path.display())))?;
        let file: ConfigFile = toml::from_str(&text)
            .map_err(|e| CtlError::Usage(format!("{}: {}", path.display(), e.message())))?;
        if file.contexts.len() > MAX_CONTEXTS {
            return Err(CtlError::Usage(format!(
                "{}: more than {MAX_CONTEXTS} contexts",
                path.display()
            )));
        }
        Ok(file)
    }

    /// Writes the file (its directory made if needed), atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = toml::to_string(self).map_err(|e| CtlError::Failed(e.to_string()))?;
        let local = |what: &str, source| CtlError::Local {
            what: format!("{what} {}", path.display()),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| local("create the directory of", e))?;
        }
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, text).map_err(|e| local("write", e))?;
        std::fs::rename(&tmp, path).map_err(|e| local("replace", e))
    }

    /// The context `name` names, or says which exist.
    pub fn get(&self, name: &str, path: &Path) -> Result<&Context> {
        self.contexts.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.contexts.keys().map(String::as_str).collect();
            CtlError::Usage(format!(
                "no context {name:?} in {} ({})",
                path.display(),
                if known.is_empty() {
                    "none yet: slipctl config set-context NAME --controller URL …".to_string()
                } else {
                    format!("contexts: {}", known.join(", "))
                }
            ))
        })
    }
}

/// A context name: what a shell and a TOML key take without quoting.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(CtlError::Usage(format!(
            "context name {:?}: 1-63 letters, digits, '-', '_' or '.'",
            name.escape_debug().to_string()
        )))
    }
}

/// What a command talks to, once flags, variables and the context are merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub controller: String,
    pub ca_cert: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub tenant: String,
    /// The context used, if any.
    pub context: Option<String>,
}

/// The global options as given (flag or variable), before contexts.
#[derive(Debug, Clone, Default)]
pub struct Given {
    pub context: Option<String>,
    pub controller: Option<String>,
    pub ca_cert: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub tenant: Option<String>,
}

/// Merges `given` over the context it (or the file's current one) names.
pub fn resolve(given: &Given, file: &ConfigFile, path: &Path) -> Result<Target> {
    let name = given
        .context
        .clone()
        .or_else(|| file.current_context.clone());
    let ctx = match &name {
        Some(n) => file.get(n, path)?.clone(),
        None => Context::default(),
    };
    Ok(Target {
        controller: given
            .controller
            .clone()
            .or(ctx.controller)
            .unwrap_or_else(|| DEFAULT_CONTROLLER.to_string()),
        ca_cert: given.ca_cert.clone().or(ctx.ca_cert),
        token_file: given.token_file.clone().or(ctx.token_file),
        tenant: given.tenant.clone().or(ctx.tenant).unwrap_or_default(),
        context: name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> ConfigFile {
        toml::from_str(
            "current_context = \"prod\"\n[contexts.prod]\ncontroller = \"https://prod:7400\"\nca_cert = \"/etc/prod-ca.pem\"\ntoken_file = \"/home/me/prod.token\"\n[contexts.dev]\ncontroller = \"https://dev:7400\"\n",
        )
        .unwrap()
    }

    #[test]
    fn a_flag_wins_over_the_context_and_the_context_over_the_default() {
        let p = Path::new("config.toml");
        let t = resolve(&Given::default(), &file(), p).unwrap();
        assert_eq!(t.controller, "https://prod:7400");
        assert_eq!(t.context.as_deref(), Some("prod"));
        let given = Given {
            context: Some("dev".into()),
            token_file: Some("/tmp/t".into()),
            ..Default::default()
        };
        let t = resolve(&given, &file(), p).unwrap();
        assert_eq!(t.controller, "https://dev:7400");
        assert_eq!(t.token_file.as_deref(), Some(Path::new("/tmp/t")));
        assert_eq!(t.ca_cert, None, "dev names no CA");
        let t = resolve(&Given::default(), &ConfigFile::default(), p).unwrap();
        assert_eq!(t.controller, DEFAULT_CONTROLLER);
        let e = resolve(
            &Given {
                context: Some("staging".into()),
                ..Default::default()
            },
            &file(),
            p,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "no context \"staging\" in config.toml (contexts: dev, prod)"
        );
    }
}
