//! Slipway's trust primitives, shared by controller, agent and slipctl:
//! - [`pki`]: the controller's CA (rcgen), certificates for the controller and for
//!   enrolled agents, fingerprints and CA pins;
//! - [`secret`]: API tokens and one-time join tokens (generated, parsed, hashed);
//! - [`sign`]: ed25519 publisher keys and the statements they sign (releases,
//!   rollback authorizations) and the controller's signed directives;
//! - [`tls`]: rustls client configs (a pinned CA for enrollment, the CA plus a
//!   client certificate after) and gRPC channels over them.

pub mod pki;
pub mod secret;
pub mod sign;
pub mod tls;

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{0}")]
    Invalid(String),
    /// The cause is part of the message (one line), not a separate source.
    #[error("{what}: {cause}")]
    Io { what: String, cause: std::io::Error },
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
}

pub type Result<T> = std::result::Result<T, TrustError>;

/// sha256 of `bytes` as `sha256:<hex>`.
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TrustError {
    let what = what.into();
    move |cause| TrustError::Io { what, cause }
}

/// Writes a secret file readable by its owner only (0600), atomically.
pub fn write_private(path: &std::path::Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(format!("create {}", tmp.display())))?;
    f.write_all(contents)
        .and_then(|_| f.sync_all())
        .map_err(io_err(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io_err(format!("rename to {}", path.display())))
}

/// Constant-time byte comparison (for secret hashes).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
