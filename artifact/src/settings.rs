//! Host settings an app is declared with on the controller (`slipctl apps
//! add`), as they are stored there and travel to agents in a signed
//! `DeclaredApps`: the JSON both sides read, its checks that need no host,
//! and how an override and a patch apply. The agent turns them into its own
//! app config and checks what only the host can (users, env files, ports).
//! Here beside the release spec: both are what an app needs from a host.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Largest declaration a host accepts (every app's settings, as JSON).
pub const MAX_DECLARATION_BYTES: usize = 256 * 1024;
/// Apps declared per host at most (the agent's own limit).
pub const MAX_APPS: usize = 256;
const MAX_ENV_FILES: usize = 16;
const MAX_PATH: usize = 1024;

/// How the host runs the app's processes (the `command` backend runs the
/// operator's own commands and is configured on the host only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    Supervise,
    Systemd,
}

/// How a new release replaces the running one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    StopStart,
    Proxy,
    Socket,
}

/// Why settings or a declaration are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// A key's value is wrong.
    #[error("{key}: {why}")]
    Invalid { key: &'static str, why: String },
    /// Not JSON of the settings' shape (an unknown key, a wrong type).
    #[error("{0}")]
    Shape(String),
    /// A whole declaration is refused.
    #[error("declared apps: {0}")]
    Declaration(String),
}

fn invalid(key: &'static str, why: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        key,
        why: why.into(),
    }
}

/// One app's declared host settings; unset keys take the agent's defaults.
/// The names are those of the agent's `[apps.<app>]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<Service>,
    /// Paths on the host: the files' contents never leave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_files: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_releases: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation: Option<Activation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_timeout_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_secs: Option<u64>,
}

/// Every app declared for one host: app -> settings.
pub type Declaration = BTreeMap<String, AppSettings>;

/// A user name as `useradd` takes it.
fn valid_user(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b.iter().enumerate().all(|(i, c)| {
            c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || *c == b'_'
                || *c == b'-'
                || (*c == b'$' && i == b.len() - 1)
        })
}

impl AppSettings {
    /// Parses settings JSON, refusing unknown keys and bad values.
    pub fn from_json(text: &str) -> Result<Self, SettingsError> {
        let s: AppSettings =
            serde_json::from_str(text).map_err(|e| SettingsError::Shape(e.to_string()))?;
        s.check()?;
        Ok(s)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("settings serialize")
    }

    /// `over`'s keys replace these (a host's override of the environment's).
    pub fn with(&self, over: &AppSettings) -> AppSettings {
        AppSettings {
            port: over.port.or(self.port),
            service: over.service.or(self.service),
            env_files: over.env_files.clone().or_else(|| self.env_files.clone()),
            user: over.user.clone().or_else(|| self.user.clone()),
            keep_releases: over.keep_releases.or(self.keep_releases),
            activation: over.activation.or(self.activation),
            drain_timeout_secs: over.drain_timeout_secs.or(self.drain_timeout_secs),
            stop_grace_secs: over.stop_grace_secs.or(self.stop_grace_secs),
        }
    }

    /// The checks that need no host: `Err` names the key and what is wrong.
    pub fn check(&self) -> Result<(), SettingsError> {
        if self.port == Some(0) {
            return Err(invalid("port", "must be 1..=65535"));
        }
        if let Some(files) = &self.env_files {
            if files.len() > MAX_ENV_FILES {
                return Err(invalid("env_files", format!("at most {MAX_ENV_FILES}")));
            }
            for f in files {
                if !f.starts_with('/') || f.len() > MAX_PATH || f.chars().any(char::is_control) {
                    return Err(invalid(
                        "env_files",
                        format!(
                            "{:?} must be an absolute path of at most {MAX_PATH} bytes",
                            f.escape_debug().to_string()
                        ),
                    ));
                }
            }
        }
        if let Some(user) = &self.user
            && !valid_user(user)
        {
            return Err(invalid(
                "user",
                format!(
                    "{:?} is not a valid user name",
                    user.escape_debug().to_string()
                ),
            ));
        }
        if let Some(keep) = self.keep_releases
            && !(2..=100).contains(&keep)
        {
            return Err(invalid("keep_releases", "must be 2..=100"));
        }
        for (key, v) in [
            ("drain_timeout_secs", self.drain_timeout_secs),
            ("stop_grace_secs", self.stop_grace_secs),
        ] {
            if let Some(v) = v
                && !(1..=3600).contains(&v)
            {
                return Err(invalid(key, "must be 1..=3600"));
            }
        }
        if let Some(mode @ (Activation::Proxy | Activation::Socket)) = self.activation {
            let name = if mode == Activation::Proxy {
                "proxy"
            } else {
                "socket"
            };
            if self.port.is_none() {
                return Err(invalid(
                    "activation",
                    format!("{name} needs the app's public port (port)"),
                ));
            }
            if self.service == Some(Service::Systemd) {
                return Err(invalid(
                    "activation",
                    format!("{name} needs service supervise (systemd units run one instance)"),
                ));
            }
        }
        if self.user.is_some() && self.service == Some(Service::Systemd) {
            return Err(invalid("user", "with service systemd the unit sets User="));
        }
        Ok(())
    }
}

/// Applies an RFC 7396 JSON merge patch: `null` removes a key, an object
/// merges, anything else replaces.
pub fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    let serde_json::Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = serde_json::Value::Object(Default::default());
    }
    let t = target.as_object_mut().expect("object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(serde_json::Value::Null), v);
        }
    }
}

/// Reads a declaration a host received (already signature-checked).
pub fn parse_declaration(bytes: &[u8]) -> Result<Declaration, SettingsError> {
    if bytes.len() > MAX_DECLARATION_BYTES {
        return Err(SettingsError::Declaration(format!(
            "{} bytes, more than {MAX_DECLARATION_BYTES}",
            bytes.len()
        )));
    }
    if bytes.is_empty() {
        return Ok(Declaration::new());
    }
    let d: Declaration =
        serde_json::from_slice(bytes).map_err(|e| SettingsError::Declaration(e.to_string()))?;
    if d.len() > MAX_APPS {
        return Err(SettingsError::Declaration(format!(
            "more than {MAX_APPS} apps"
        )));
    }
    Ok(d)
}

pub fn declaration_bytes(d: &Declaration) -> Vec<u8> {
    serde_json::to_vec(d).expect("declaration serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_refuse_unknown_keys_and_bad_values() {
        let s = AppSettings::from_json(r#"{"port":8080,"env_files":["/etc/web.env"]}"#).unwrap();
        assert_eq!(s.port, Some(8080));
        for (json, want) in [
            (r#"{"prot":8080}"#, "unknown field `prot`"),
            (r#"{"port":0}"#, "port: must be 1..=65535"),
            (r#"{"port":70000}"#, "invalid value"),
            (
                r#"{"env_files":["etc/web.env"]}"#,
                "must be an absolute path",
            ),
            (r#"{"user":"Root; rm"}"#, "not a valid user name"),
            (r#"{"keep_releases":1}"#, "keep_releases: must be 2..=100"),
            (
                r#"{"activation":"proxy"}"#,
                "activation: proxy needs the app's public port",
            ),
            (r#"{"service":"command"}"#, "unknown variant `command`"),
        ] {
            let e = AppSettings::from_json(json).unwrap_err().to_string();
            assert!(e.contains(want), "{json}: {e}");
        }
    }

    #[test]
    fn a_patch_changes_only_its_keys_and_null_removes_one() {
        let mut v = serde_json::json!({"port": 8080, "user": "web", "env_files": ["/a"]});
        merge_patch(&mut v, &serde_json::json!({"port": 9090, "user": null}));
        assert_eq!(v, serde_json::json!({"port": 9090, "env_files": ["/a"]}));
    }

    #[test]
    fn a_host_override_wins_key_by_key() {
        let env = AppSettings::from_json(r#"{"port":8080,"user":"web"}"#).unwrap();
        let host = AppSettings::from_json(r#"{"port":9090}"#).unwrap();
        let s = env.with(&host);
        assert_eq!((s.port, s.user.as_deref()), (Some(9090), Some("web")));
    }
}
