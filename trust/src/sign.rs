//! ed25519 signatures (`verify_strict`) over canonical JSON statements.
//!
//! Two keys, two jobs (Uptane's split): a tenant's *publisher* keys, held by
//! people and CI, sign what a release is ([`ReleaseStatement`]) and authorize
//! going back to an older one ([`RollbackStatement`]); the *controller's*
//! directive key signs what one host should run now ([`Directive`]). A
//! compromised controller can therefore not invent a release, and a stolen
//! publisher key cannot aim a release at a host.
//!
//! Verifiers never parse a statement they were sent: they rebuild it from what
//! they know and check the signature over the rebuilt bytes, so any field that
//! differs fails the check.

use std::path::Path;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use rand_core::OsRng;
use serde::{Deserialize, Serialize};

use crate::{Result, TrustError, io_err};

const SECRET_PREFIX: &str = "slipway-ed25519-secret:";
const PUBLIC_PREFIX: &str = "ed25519:";

/// A signature and the public key (`ed25519:<hex>`) that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    pub key: String,
    /// 64 bytes, hex.
    pub sig: String,
}

impl Signature {
    /// `(key, signature)`, as [`count_trusted`] takes them.
    pub fn pair(&self) -> (&str, &str) {
        (&self.key, &self.sig)
    }
}

/// An ed25519 key pair (a publisher key, or the controller's directive key).
pub struct KeyPair(SigningKey);

impl KeyPair {
    pub fn generate() -> Self {
        KeyPair(SigningKey::generate(&mut OsRng))
    }

    /// The text of a key file: `slipway-ed25519-secret:<hex>`.
    pub fn encode_secret(&self) -> String {
        format!("{SECRET_PREFIX}{}\n", hex::encode(self.0.to_bytes()))
    }

    pub fn parse_secret(text: &str) -> Result<Self> {
        let bad = || TrustError::Invalid("not a slipway ed25519 secret key".into());
        let hex_part = text.trim().strip_prefix(SECRET_PREFIX).ok_or_else(bad)?;
        let bytes: [u8; 32] = hex::decode(hex_part)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(bad)?;
        Ok(KeyPair(SigningKey::from_bytes(&bytes)))
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(io_err(format!("read key {}", path.display())))?;
        Self::parse_secret(&text)
            .map_err(|e| TrustError::Invalid(format!("{}: {e}", path.display())))
    }

    /// Loads the key at `path`, generating and saving (0600) one on first use.
    pub fn load_or_create(path: &Path) -> Result<Self> {
        if path.exists() {
            return Self::load(path);
        }
        let key = Self::generate();
        crate::write_private(path, key.encode_secret().as_bytes())?;
        Ok(key)
    }

    /// `ed25519:<hex>`, the form configs and signatures name keys by.
    pub fn public(&self) -> String {
        format!(
            "{PUBLIC_PREFIX}{}",
            hex::encode(self.0.verifying_key().to_bytes())
        )
    }

    pub fn sign(&self, payload: &[u8]) -> Signature {
        Signature {
            key: self.public(),
            sig: hex::encode(self.0.sign(payload).to_bytes()),
        }
    }
}

/// Parses `ed25519:<hex>`.
pub fn parse_public(s: &str) -> Result<VerifyingKey> {
    let bad = || {
        TrustError::Invalid(format!(
            "invalid public key {s:?} (expected ed25519:<64 hex>)"
        ))
    };
    let hex_part = s.trim().strip_prefix(PUBLIC_PREFIX).ok_or_else(bad)?;
    let bytes: [u8; 32] = hex::decode(hex_part)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(bad)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| bad())
}

/// Whether `sig` is `key`'s strict signature over `payload`.
pub fn verify(key: &VerifyingKey, payload: &[u8], sig_hex: &str) -> bool {
    let Some(bytes) = hex::decode(sig_hex)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
    else {
        return false;
    };
    key.verify_strict(payload, &ed25519_dalek::Signature::from_bytes(&bytes))
        .is_ok()
}

/// How many *distinct* trusted keys validly signed `payload`, given
/// `(key, signature)` pairs. Signatures by unknown keys, bad signatures and
/// repeats of one key count for nothing.
pub fn count_trusted<'a>(
    payload: &[u8],
    sigs: impl IntoIterator<Item = (&'a str, &'a str)>,
    trusted: &[String],
) -> usize {
    let mut seen: Vec<[u8; 32]> = Vec::new();
    for (key_text, sig) in sigs {
        if !trusted.iter().any(|t| t.trim() == key_text.trim()) {
            continue;
        }
        let Ok(key) = parse_public(key_text) else {
            continue;
        };
        if seen.contains(&key.to_bytes()) {
            continue;
        }
        if verify(&key, payload, sig) {
            seen.push(key.to_bytes());
        }
    }
    seen.len()
}

fn canonical<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("statements serialize")
}

/// What a publisher signs about a release: the manifest digest covers the blob
/// digest and size and every entry; the counter orders releases of the app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseStatement<'a> {
    pub tenant: &'a str,
    pub app: &'a str,
    pub version: &'a str,
    pub counter: u64,
    pub manifest_digest: &'a str,
}

impl ReleaseStatement<'_> {
    pub fn bytes(&self) -> Vec<u8> {
        canonical(&("slipway.release.v1", self))
    }
}

/// An operator's permission to run an older release (lower counter) in an
/// environment: without it, agents that enforce signatures refuse downgrades.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RollbackStatement<'a> {
    pub tenant: &'a str,
    pub app: &'a str,
    pub environment: &'a str,
    pub version: &'a str,
    pub manifest_digest: &'a str,
}

impl RollbackStatement<'_> {
    pub fn bytes(&self) -> Vec<u8> {
        canonical(&("slipway.rollback.v1", self))
    }
}

/// What the controller tells one host: run this release of this app. The
/// sequence only grows per host; the expiry bounds how long a captured
/// directive could be replayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Directive<'a> {
    pub tenant: &'a str,
    pub host: &'a str,
    pub environment: &'a str,
    pub app: &'a str,
    pub version: &'a str,
    pub manifest_digest: &'a str,
    pub counter: u64,
    pub generation: u64,
    pub sequence: u64,
    /// Unix seconds.
    pub expires_at: i64,
    /// The directive carries an operator-signed rollback authorization.
    pub rollback_authorized: bool,
}

impl Directive<'_> {
    pub fn bytes(&self) -> Vec<u8> {
        canonical(&("slipway.directive.v1", self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stmt(counter: u64) -> Vec<u8> {
        ReleaseStatement {
            tenant: "default",
            app: "web",
            version: "1",
            counter,
            manifest_digest: "sha256:aa",
        }
        .bytes()
    }

    #[test]
    fn signatures_count_once_per_trusted_key() {
        let a = KeyPair::generate();
        let b = KeyPair::generate();
        let stranger = KeyPair::generate();
        let trusted = vec![a.public(), b.public()];
        let payload = stmt(3);
        let sa = a.sign(&payload);
        let sb = b.sign(&payload);
        let ss = stranger.sign(&payload);
        assert_eq!(count_trusted(&payload, [sa.pair()], &trusted), 1);
        assert_eq!(
            count_trusted(&payload, [sa.pair(), sa.pair()], &trusted),
            1,
            "one key twice counts once"
        );
        assert_eq!(count_trusted(&payload, [sa.pair(), sb.pair()], &trusted), 2);
        assert_eq!(count_trusted(&payload, [ss.pair()], &trusted), 0);
        // A signature over another counter does not verify.
        assert_eq!(count_trusted(&stmt(4), [sa.pair()], &trusted), 0);
        // A stranger's signature relabelled with a trusted key name fails.
        let forged = Signature {
            key: a.public(),
            sig: stranger.sign(&payload).sig,
        };
        assert_eq!(count_trusted(&payload, [forged.pair()], &trusted), 0);
    }

    #[test]
    fn secret_keys_round_trip() {
        let k = KeyPair::generate();
        let again = KeyPair::parse_secret(&k.encode_secret()).unwrap();
        assert_eq!(again.public(), k.public());
        assert!(parse_public(&k.public()).is_ok());
        assert!(parse_public("ed25519:zz").is_err());
        assert!(KeyPair::parse_secret("garbage").is_err());
    }
}
