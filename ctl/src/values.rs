//! Typed flag values, parsed by clap before anything is sent: host amounts
//! (`N` or `N%`), roles, criticality, labels and inventory text. A typo exits 2
//! offline instead of costing a round trip and an audit entry. The controller
//! checks them again.

use std::fmt;

/// A number of hosts, or a share of an environment's hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Amount {
    Count(u32),
    Percent(u32),
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Count(n) => write!(f, "{n}"),
            Amount::Percent(p) => write!(f, "{p}%"),
        }
    }
}

fn amount(s: &str) -> Result<Amount, String> {
    let bad = || "not a host count (N) or a share (N%)".to_string();
    match s.strip_suffix('%') {
        Some(p) => {
            let p: u32 = p.parse().map_err(|_| bad())?;
            if p > 100 {
                return Err("a share is at most 100%".into());
            }
            Ok(Amount::Percent(p))
        }
        None => s.parse().map(Amount::Count).map_err(|_| bad()),
    }
}

/// `--batch`: at least one host per batch.
pub fn batch(s: &str) -> Result<Amount, String> {
    let a = amount(s)?;
    if matches!(a, Amount::Count(0) | Amount::Percent(0)) {
        return Err("a batch holds at least one host".into());
    }
    Ok(a)
}

/// `--max-failures`: 0 tolerates none.
pub fn max_failures(s: &str) -> Result<Amount, String> {
    amount(s)
}

/// What an API token may do.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Read everything of the tenant.
    Viewer,
    /// Publish releases.
    Publisher,
    /// Change non-production environments.
    Deployer,
    /// Change production environments.
    Promoter,
    /// Everything, including tokens and hosts.
    Admin,
}

/// What a rollout does with a host offline in its step (never a canary: an
/// offline canary is always waited for).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offline {
    /// Count it failed at once.
    Fail,
    /// Hold the step until it returns, or the batch timeout counts it failed.
    Wait,
    /// Skip it unjudged; it converges when it returns.
    Skip,
}

impl Offline {
    pub fn to_proto(self) -> proto::v1::OfflinePolicy {
        match self {
            Offline::Fail => proto::v1::OfflinePolicy::Fail,
            Offline::Wait => proto::v1::OfflinePolicy::Wait,
            Offline::Skip => proto::v1::OfflinePolicy::Skip,
        }
    }
}

/// How much a host matters; canaries are picked among the least critical.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Criticality {
    Low,
    Medium,
    High,
    Critical,
}

/// How a host runs an app's processes (`apps add --backend`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Supervise,
    Systemd,
}

/// How a new release replaces the running one (`apps add --activation`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivationMode {
    StopStart,
    Proxy,
    Socket,
}

/// The settings `apps set --unset` takes, by flag name, and their JSON keys.
pub const SETTING_KEYS: [(&str, &str); 8] = [
    ("port", "port"),
    ("backend", "service"),
    ("env-file", "env_files"),
    ("user", "user"),
    ("keep", "keep_releases"),
    ("activation", "activation"),
    ("drain-timeout", "drain_timeout_secs"),
    ("stop-grace", "stop_grace_secs"),
];

/// `--unset KEY`: one of the setting flags' names.
pub fn setting_key() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(SETTING_KEYS.map(|(flag, _)| flag))
}

/// A setting's flag name as its JSON key (the name itself if unknown).
pub fn setting_json_key(flag: &str) -> &str {
    SETTING_KEYS
        .iter()
        .find(|(f, _)| *f == flag)
        .map_or(flag, |(_, key)| key)
}

/// The name clap shows and the controller expects.
pub fn name<T: clap::ValueEnum>(v: T) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

const MAX_LABEL_KEY: usize = 63;
const MAX_TEXT: usize = 128;

/// A label key: 1 to 63 of `a-z A-Z 0-9 . _ - /`.
pub fn label_key(k: &str) -> Result<String, String> {
    let ok = !k.is_empty()
        && k.len() <= MAX_LABEL_KEY
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b));
    if !ok {
        return Err(format!(
            "label key {k:?}: 1 to {MAX_LABEL_KEY} of a-z, A-Z, 0-9, '.', '_', '-', '/'"
        ));
    }
    Ok(k.to_string())
}

/// Free text the inventory keeps (purpose, label values): short, printable.
pub fn text(s: &str) -> Result<String, String> {
    if s.len() > MAX_TEXT || s.chars().any(char::is_control) {
        return Err(format!("at most {MAX_TEXT} bytes of printable text"));
    }
    Ok(s.to_string())
}

/// A lifetime that is not a number with an s, m, h or d suffix.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a lifetime: give a number with s, m, h or d (90d, 12h, 30m, 45s)")]
pub struct BadLifetime(String);

/// `90d`, `12h`, `30m`, `45s`: a lifetime in seconds (more than zero).
pub fn lifetime(s: &str) -> Result<u64, BadLifetime> {
    let bad = || BadLifetime(s.to_string());
    let split = s
        .len()
        .checked_sub(1)
        .filter(|&i| s.is_char_boundary(i))
        .ok_or_else(bad)?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(bad()),
    };
    n.checked_mul(scale)
        .filter(|&secs| secs > 0)
        .ok_or_else(bad)
}

/// `KEY=VALUE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Label {
    pub key: String,
    pub value: String,
}

pub fn label(s: &str) -> Result<Label, String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| "expected KEY=VALUE".to_string())?;
    Ok(Label {
        key: label_key(k)?,
        value: text(v).map_err(|e| format!("label value: {e}"))?,
    })
}

/// Labels as the wire wants them.
pub fn label_map(labels: &[Label]) -> std::collections::HashMap<String, String> {
    labels
        .iter()
        .map(|l| (l.key.clone(), l.value.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_take_a_unit_suffix() {
        for (text, want) in [
            ("45s", Some(45)),
            ("30m", Some(1800)),
            ("12h", Some(43200)),
            ("90d", Some(90 * 86400)),
            ("0d", None),
            ("90", None),
            ("d", None),
            ("", None),
            ("1w", None),
            ("-1d", None),
            ("1.5h", None),
            ("99999999999999999999d", None),
        ] {
            assert_eq!(lifetime(text).ok(), want, "{text:?}");
        }
    }

    #[test]
    fn amounts_are_counts_or_shares() {
        let cases: [(&str, Result<Amount, &str>); 8] = [
            ("3", Ok(Amount::Count(3))),
            ("25%", Ok(Amount::Percent(25))),
            ("100%", Ok(Amount::Percent(100))),
            ("0", Err("a batch holds at least one host")),
            ("0%", Err("a batch holds at least one host")),
            ("150%", Err("a share is at most 100%")),
            ("2x", Err("not a host count (N) or a share (N%)")),
            ("-1", Err("not a host count (N) or a share (N%)")),
        ];
        for (input, want) in cases {
            assert_eq!(batch(input), want.map_err(String::from), "{input}");
        }
        assert_eq!(max_failures("0"), Ok(Amount::Count(0)));
        assert_eq!(Amount::Percent(25).to_string(), "25%");
    }

    #[test]
    fn labels_have_valid_keys_and_printable_values() {
        assert_eq!(
            label("zone=fsn1"),
            Ok(Label {
                key: "zone".into(),
                value: "fsn1".into()
            })
        );
        assert_eq!(label("canary=").map(|l| l.value), Ok(String::new()));
        assert!(label("zone").is_err());
        assert!(label("=x").is_err());
        assert!(label("a b=c").is_err());
        assert!(label("k=line\nbreak").is_err());
        assert!(label(&format!("{}=v", "k".repeat(64))).is_err());
    }

    #[test]
    fn enum_names_are_what_the_controller_expects() {
        assert_eq!(name(Role::Promoter), "promoter");
        assert_eq!(name(Criticality::Critical), "critical");
    }
}
