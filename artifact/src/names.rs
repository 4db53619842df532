//! Names that become paths or keys (tenant, app, version, environment, host) are
//! checked in one place, at publish and again on the agent.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    Tenant,
    App,
    Version,
    Environment,
    Host,
    Process,
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::Tenant => "tenant",
            NameKind::App => "app",
            NameKind::Version => "version",
            NameKind::Environment => "environment",
            NameKind::Host => "host",
            NameKind::Process => "process",
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {kind} name {name:?}: {why}")]
pub struct NameError {
    pub kind: NameKind,
    pub name: String,
    pub why: &'static str,
}

pub const MAX_NAME_LEN: usize = 128;

/// Accepts `[A-Za-z0-9][A-Za-z0-9._+-]*`, at most 128 bytes (versions may carry
/// `+build` metadata; `.` and `..` can never match since the first byte is alphanumeric).
pub fn validate_name(kind: NameKind, name: &str) -> Result<(), NameError> {
    let err = |why| NameError {
        kind,
        name: name.chars().take(MAX_NAME_LEN).collect(),
        why,
    };
    if name.is_empty() {
        return Err(err("must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(err("longer than 128 bytes"));
    }
    let first = name.as_bytes()[0];
    if !first.is_ascii_alphanumeric() {
        return Err(err("must start with a letter or digit"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'))
    {
        return Err(err("only letters, digits and . _ - + are allowed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_usual_names() {
        for ok in [
            "web",
            "1.4.2",
            "v2+build.7",
            "prod",
            "host-01.example",
            "a_b",
        ] {
            validate_name(NameKind::Version, ok).unwrap();
        }
    }

    #[test]
    fn rejects_names_that_could_escape_a_path() {
        for bad in [
            "", ".", "..", "../x", "a/b", "/abs", ".hidden", "a b", "a\0b", "é",
        ] {
            let e = validate_name(NameKind::App, bad).unwrap_err();
            assert_eq!(e.kind, NameKind::App);
        }
        assert!(validate_name(NameKind::App, &"a".repeat(129)).is_err());
    }
}
