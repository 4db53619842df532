//! API tokens (`swt_<id>_<secret>`) and join tokens (`swj_<id>_<secret>_<ca pin>`).
//! Only the id and the sha256 of the secret are ever stored; the secret is shown
//! once, when the token is created.

use rand_core::{OsRng, RngCore};

use crate::{Result, TrustError};

/// `n` random bytes from the OS, hex-encoded.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    OsRng.fill_bytes(&mut buf);
    hex::encode(buf)
}

/// sha256 hex of a token secret, as stored.
pub fn hash_secret(secret: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

const ID_HEX: usize = 16;
const SECRET_HEX: usize = 64;

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// An API token for slipctl and CI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub id: String,
    pub secret: String,
}

impl ApiToken {
    pub fn generate() -> Self {
        ApiToken {
            id: random_hex(ID_HEX / 2),
            secret: random_hex(SECRET_HEX / 2),
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        let bad = || TrustError::Invalid("malformed API token (expected swt_<id>_<secret>)".into());
        let rest = s.trim().strip_prefix("swt_").ok_or_else(bad)?;
        let (id, secret) = rest.split_once('_').ok_or_else(bad)?;
        if !is_hex(id, ID_HEX) || !is_hex(secret, SECRET_HEX) {
            return Err(bad());
        }
        Ok(ApiToken {
            id: id.into(),
            secret: secret.into(),
        })
    }

    pub fn encode(&self) -> String {
        format!("swt_{}_{}", self.id, self.secret)
    }
}

/// A one-time join token: which enrollment it is, its secret, and the pin
/// (sha256 of the CA's public key) the agent checks the controller against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub id: String,
    pub secret: String,
    /// `sha256:<hex>` of the controller CA's SubjectPublicKeyInfo.
    pub ca_pin: String,
}

impl JoinToken {
    pub fn generate(ca_pin: &str) -> Self {
        JoinToken {
            id: random_hex(ID_HEX / 2),
            secret: random_hex(SECRET_HEX / 2),
            ca_pin: ca_pin.into(),
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        let bad = || {
            TrustError::Invalid(
                "malformed join token (expected swj_<id>_<secret>_<ca pin>, as `slipctl hosts add` prints it)"
                    .into(),
            )
        };
        let rest = s.trim().strip_prefix("swj_").ok_or_else(bad)?;
        let mut parts = rest.split('_');
        let (Some(id), Some(secret), Some(pin), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        if !is_hex(id, ID_HEX) || !is_hex(secret, SECRET_HEX) || !is_hex(pin, 64) {
            return Err(bad());
        }
        Ok(JoinToken {
            id: id.into(),
            secret: secret.into(),
            ca_pin: format!("sha256:{pin}"),
        })
    }

    pub fn encode(&self) -> String {
        let pin = self.ca_pin.strip_prefix("sha256:").unwrap_or(&self.ca_pin);
        format!("swj_{}_{}_{}", self.id, self.secret, pin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let t = ApiToken::generate();
        assert_eq!(ApiToken::parse(&t.encode()).unwrap(), t);
        assert!(ApiToken::parse("swt_abc_def").is_err());
        assert!(ApiToken::parse(&t.encode().replace("swt_", "swx_")).is_err());
        let pin = format!("sha256:{}", "ab".repeat(32));
        let j = JoinToken::generate(&pin);
        assert_eq!(JoinToken::parse(&j.encode()).unwrap(), j);
        assert!(JoinToken::parse(&format!("{}_x", j.encode())).is_err());
        assert_ne!(hash_secret(&t.secret), t.secret);
    }
}
