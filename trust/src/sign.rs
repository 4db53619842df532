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
/// It authorizes one downgrade, once, recently: from the release whose
/// counter is `from_counter` (what the environment desired when it was
/// signed), until `expires_at`, and the `nonce` is spent on first use (the
/// controller and every agent remember it). `slipway.rollback.v1` statements,
/// which had none of these, are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RollbackStatement<'a> {
    pub tenant: &'a str,
    pub app: &'a str,
    pub environment: &'a str,
    pub version: &'a str,
    pub manifest_digest: &'a str,
    pub from_counter: u64,
    /// Unix seconds.
    pub expires_at: i64,
    pub nonce: &'a str,
}

impl RollbackStatement<'_> {
    pub fn bytes(&self) -> Vec<u8> {
        canonical(&("slipway.rollback.v2", self))
    }
}

/// How long `slipctl` makes a rollback authorization last by default.
pub const ROLLBACK_DEFAULT_LIFETIME_SECS: i64 = 3600;
/// The furthest ahead a rollback authorization may expire: the controller and
/// agents refuse longer-lived ones.
pub const ROLLBACK_MAX_LIFETIME_SECS: i64 = 24 * 3600;

/// The terms a rollback statement adds to the release it names; they travel
/// beside the signatures (`DesiredApp.rollback_terms`) so every verifier can
/// rebuild the statement.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackTerms {
    pub from_counter: u64,
    /// Unix seconds.
    pub expires_at: i64,
    /// 32 hex characters (16 random bytes).
    pub nonce: String,
}

/// Why rollback terms are refused before any signature is checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TermsError {
    #[error(
        "rollback authorization has no expiry, nonce or counter floor (a slipway.rollback.v1 statement): v1 authorizations are refused; sign a new one (slipctl rollback --to VERSION --sign KEY)"
    )]
    V1,
    #[error("rollback authorization expired at {expires_at} (now {now}); sign a new one")]
    Expired { expires_at: i64, now: i64 },
    #[error(
        "rollback authorization expires at {expires_at}, more than {max_secs}s ahead (now {now}); sign one that expires sooner"
    )]
    TooLong {
        expires_at: i64,
        now: i64,
        max_secs: i64,
    },
    #[error("rollback authorization nonce must be 32 lowercase hex characters")]
    Nonce,
    #[error("rollback authorization has no from counter")]
    NoFrom,
}

impl RollbackTerms {
    /// Fresh terms: a random nonce, expiring `lifetime_secs` after `now`.
    pub fn new(from_counter: u64, now: i64, lifetime_secs: i64) -> Self {
        let mut bytes = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut OsRng, &mut bytes);
        RollbackTerms {
            from_counter,
            expires_at: now.saturating_add(lifetime_secs),
            nonce: hex::encode(bytes),
        }
    }

    /// Well formed and valid at `now`: not expired, not too far ahead.
    pub fn check(&self, now: i64) -> std::result::Result<(), TermsError> {
        if self.nonce.is_empty() && self.expires_at == 0 && self.from_counter == 0 {
            return Err(TermsError::V1);
        }
        if self.nonce.len() != 32
            || !self
                .nonce
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(TermsError::Nonce);
        }
        if self.from_counter == 0 {
            return Err(TermsError::NoFrom);
        }
        if self.expires_at <= now {
            return Err(TermsError::Expired {
                expires_at: self.expires_at,
                now,
            });
        }
        if self.expires_at - now > ROLLBACK_MAX_LIFETIME_SECS {
            return Err(TermsError::TooLong {
                expires_at: self.expires_at,
                now,
                max_secs: ROLLBACK_MAX_LIFETIME_SECS,
            });
        }
        Ok(())
    }

    /// The statement these terms complete.
    pub fn statement<'a>(
        &'a self,
        tenant: &'a str,
        app: &'a str,
        environment: &'a str,
        version: &'a str,
        manifest_digest: &'a str,
    ) -> RollbackStatement<'a> {
        RollbackStatement {
            tenant,
            app,
            environment,
            version,
            manifest_digest,
            from_counter: self.from_counter,
            expires_at: self.expires_at,
            nonce: &self.nonce,
        }
    }
}

/// An operator's rollback authorization as the controller stores it with the
/// desired release: the signatures and the terms they cover. Rows written
/// before v2 hold a bare list of signatures (no terms).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackAuthorization {
    pub signatures: Vec<Signature>,
    pub terms: Option<RollbackTerms>,
}

impl RollbackAuthorization {
    /// Parses the stored JSON (an object, or an older bare list of signatures).
    pub fn from_stored(json: &str) -> Self {
        if let Ok(a) = serde_json::from_str::<RollbackAuthorization>(json) {
            return a;
        }
        RollbackAuthorization {
            signatures: serde_json::from_str(json).unwrap_or_default(),
            terms: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.signatures.is_empty()
    }

    pub fn to_stored(&self) -> String {
        if self.is_empty() {
            return "[]".into();
        }
        serde_json::to_string(self).expect("authorizations serialize")
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
    /// The host may apply the release's pending migrations itself (the
    /// environment's policy, or a promoter's `slipctl migrate`). Left out
    /// of the statement when false, so earlier statements read the same.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub apply_migrations: bool,
}

impl Directive<'_> {
    pub fn bytes(&self) -> Vec<u8> {
        canonical(&("slipway.directive.v1", self))
    }
}

/// What the controller signs when it declares a host's apps: the host, its
/// scope, the environment's apps revision, the sequence it shares with
/// directives, an expiry, and the sha256 of the settings JSON it carries.
#[derive(Serialize)]
pub struct AppsDeclaration<'a> {
    pub tenant: &'a str,
    pub host: &'a str,
    pub environment: &'a str,
    pub revision: u64,
    pub sequence: u64,
    /// Unix seconds.
    pub expires_at: i64,
    pub settings_digest: &'a str,
}

impl AppsDeclaration<'_> {
    pub fn bytes(&self) -> Vec<u8> {
        canonical(&("slipway.apps.v1", self))
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
    fn rollback_terms_are_fresh_bounded_and_v2() {
        let now = 1_000_000;
        let t = RollbackTerms::new(7, now, ROLLBACK_DEFAULT_LIFETIME_SECS);
        assert_eq!(t.check(now), Ok(()));
        assert_ne!(t.nonce, RollbackTerms::new(7, now, 60).nonce);
        let check = |t: RollbackTerms, at: i64| t.check(at).map_err(|e| e.to_string());
        assert!(matches!(
            t.check(t.expires_at),
            Err(TermsError::Expired { .. })
        ));
        let long = RollbackTerms::new(7, now, ROLLBACK_MAX_LIFETIME_SECS + 1);
        assert!(matches!(long.check(now), Err(TermsError::TooLong { .. })));
        assert!(
            check(RollbackTerms::default(), now)
                .unwrap_err()
                .contains("v1")
        );
        let bad = RollbackTerms {
            nonce: "XYZ".into(),
            ..t.clone()
        };
        assert_eq!(bad.check(now), Err(TermsError::Nonce));
        // The terms are signed: another nonce or floor is another statement.
        let s = t
            .statement("default", "web", "prod", "1", "sha256:aa")
            .bytes();
        let other = RollbackTerms {
            from_counter: 8,
            ..t.clone()
        };
        assert_ne!(
            s,
            other
                .statement("default", "web", "prod", "1", "sha256:aa")
                .bytes()
        );
        assert!(
            String::from_utf8(s)
                .unwrap()
                .starts_with("[\"slipway.rollback.v2\"")
        );
        // Stored forms: the object, and the bare list older controllers wrote.
        let a = RollbackAuthorization {
            signatures: vec![KeyPair::generate().sign(b"x")],
            terms: Some(t),
        };
        assert_eq!(RollbackAuthorization::from_stored(&a.to_stored()), a);
        let old = serde_json::to_string(&a.signatures).unwrap();
        let parsed = RollbackAuthorization::from_stored(&old);
        assert_eq!((parsed.signatures, parsed.terms), (a.signatures, None));
        assert!(RollbackAuthorization::from_stored("[]").is_empty());
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
