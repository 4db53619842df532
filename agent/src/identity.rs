//! This host's identity: the client certificate and key it got by enrolling
//! with a one-time join token, the controller CA it trusts, and the controller's
//! directive key. Kept under `<state_dir>/identity/` (keys 0600).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use proto::v1::agents_client::AgentsClient;
use proto::v1::enrollment_client::EnrollmentClient;
use proto::v1::{EnrollRequest, EnrollResponse, RenewRequest};
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

use crate::config::AgentConfig;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub tenant: String,
    pub host: String,
    pub environment: String,
    /// `ed25519:<hex>`: the key the controller signs directives with.
    pub directive_key: String,
    pub issued_at: i64,
    pub not_after: i64,
    #[serde(skip)]
    pub cert_pem: String,
    #[serde(skip)]
    pub key_pem: String,
    #[serde(skip)]
    pub ca_pem: String,
}

pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("identity")
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Identity {
    /// The saved identity, or None when this host never enrolled.
    pub fn load(state_dir: &Path) -> anyhow::Result<Option<Identity>> {
        let d = dir(state_dir);
        let meta = d.join("identity.json");
        if !meta.exists() {
            return Ok(None);
        }
        let read = |name: &str| {
            std::fs::read_to_string(d.join(name))
                .with_context(|| format!("read {}", d.join(name).display()))
        };
        let mut id: Identity = serde_json::from_str(&read("identity.json")?)
            .with_context(|| format!("parse {}", meta.display()))?;
        id.cert_pem = read("agent.pem")?;
        id.key_pem = read("agent.key")?;
        id.ca_pem = read("ca.pem")?;
        Ok(Some(id))
    }

    pub fn save(&self, state_dir: &Path) -> anyhow::Result<()> {
        let d = dir(state_dir);
        std::fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
        trust::write_private(&d.join("agent.key"), self.key_pem.as_bytes())?;
        trust::write_private(&d.join("agent.pem"), self.cert_pem.as_bytes())?;
        trust::write_private(&d.join("ca.pem"), self.ca_pem.as_bytes())?;
        // Last: its presence means the others are complete.
        trust::write_private(
            &d.join("identity.json"),
            serde_json::to_string_pretty(self)?.as_bytes(),
        )?;
        Ok(())
    }

    fn from_response(r: EnrollResponse, key_pem: String) -> Identity {
        Identity {
            tenant: r.tenant,
            host: r.host,
            environment: r.environment,
            directive_key: r.directive_key,
            issued_at: now(),
            not_after: r.not_after,
            cert_pem: r.cert_pem,
            key_pem,
            ca_pem: r.ca_pem,
        }
    }

    /// mTLS to the controller: its CA is the only root, this host's certificate the client's.
    pub fn tls(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let id = trust::tls::ClientIdentity {
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
        };
        Ok(Arc::new(trust::tls::client_config(
            trust::tls::ServerTrust::Roots(self.ca_pem.clone()),
            Some(&id),
        )?))
    }

    /// Past two thirds of the certificate's life.
    pub fn needs_renewal(&self, now: i64) -> bool {
        let life = (self.not_after - self.issued_at).max(1);
        now >= self.issued_at + life * 2 / 3
    }

    /// Checks the identity belongs to this config.
    pub fn check(&self, cfg: &AgentConfig) -> anyhow::Result<()> {
        if self.host != cfg.host || self.tenant != cfg.tenant || self.environment != cfg.environment
        {
            bail!(
                "this host enrolled as {}/{} in {}, but the config says {}/{} in {}: enroll again with a new join token",
                self.tenant,
                self.host,
                self.environment,
                cfg.tenant,
                cfg.host,
                cfg.environment
            );
        }
        Ok(())
    }
}

/// The controller answered an enrollment with an error. `busy`: it could not
/// serve it now (its store unavailable, a rate limit), or the call was cut
/// off on the way (the connection closed, a deadline), so trying again later
/// may succeed; otherwise the token or the request was refused.
#[derive(Debug, thiserror::Error)]
#[error("enrollment refused: {message}")]
pub struct EnrollRefused {
    pub message: String,
    pub busy: bool,
}

/// Enrolls with a join token: checks the controller against the token's CA
/// pin, sends a CSR for a fresh key, and saves the identity it gets back.
pub async fn enroll(cfg: &AgentConfig, token_text: &str) -> anyhow::Result<Identity> {
    enroll_with(cfg, token_text, &trust::pki::agent_key_and_csr(&cfg.host)?).await
}

/// [`enroll`] with a key and CSR made beforehand: asking again with the same
/// ones after a lost answer is answered again (the token stays this host's).
pub async fn enroll_with(
    cfg: &AgentConfig,
    token_text: &str,
    key_and_csr: &(String, String),
) -> anyhow::Result<Identity> {
    let id = enroll_as(&cfg.controller, &cfg.host, token_text, key_and_csr).await?;
    id.check(cfg)?;
    id.save(&cfg.state_dir)?;
    tracing::info!(host = %id.host, tenant = %id.tenant, env = %id.environment, not_after = id.not_after, "enrolled");
    Ok(id)
}

/// Enrolls with the controller at `controller` (checked against the token's
/// CA pin) as `host` — empty: as the host the token was made for — and
/// returns the identity, not saved yet.
pub async fn enroll_to(controller: &str, host: &str, token_text: &str) -> anyhow::Result<Identity> {
    let key_and_csr = trust::pki::agent_key_and_csr(if host.is_empty() {
        "slipway-agent"
    } else {
        host
    })?;
    enroll_as(controller, host, token_text, &key_and_csr).await
}

async fn enroll_as(
    controller: &str,
    host: &str,
    token_text: &str,
    (key_pem, csr_pem): &(String, String),
) -> anyhow::Result<Identity> {
    let token = trust::secret::JoinToken::parse(token_text)?;
    let (key_pem, csr_pem) = (key_pem.clone(), csr_pem.clone());
    let tls =
        trust::tls::client_config(trust::tls::ServerTrust::Pinned(token.ca_pin.clone()), None)?;
    let channel = trust::tls::connect(controller, Some(Arc::new(tls)), false).await?;
    let resp = EnrollmentClient::new(channel)
        .enroll(EnrollRequest {
            join_token: token_text.trim().to_string(),
            host: host.to_string(),
            csr_pem,
        })
        .await
        .map_err(|s| EnrollRefused {
            message: s.message().to_string(),
            busy: is_busy(s.code()),
        })?
        .into_inner();
    let ca_pin = trust::pki::spki_pin(&trust::pki::first_cert_der(&resp.ca_pem)?)?;
    if ca_pin != token.ca_pin {
        bail!("the controller sent a CA that does not match the join token's pin");
    }
    trust::sign::parse_public(&resp.directive_key)?;
    Ok(Identity::from_response(resp, key_pem))
}

/// Whether an enrollment answered with `code` is worth trying again: the
/// controller was busy, or the call was cut off before its answer (seen
/// with 10,000 agents joining at once: "operation was canceled"). The same
/// CSR goes again, so a join whose answer was lost is answered again.
fn is_busy(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::ResourceExhausted
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded
    )
}

/// Trades the current certificate for a fresh one (new key) over mTLS.
pub async fn renew(
    cfg: &AgentConfig,
    current: &Identity,
    channel: Channel,
) -> anyhow::Result<Identity> {
    let (key_pem, csr_pem) = trust::pki::agent_key_and_csr(&cfg.host)?;
    let resp = AgentsClient::new(channel)
        .renew(RenewRequest { csr_pem })
        .await
        .map_err(|s| anyhow::anyhow!("certificate renewal refused: {}", s.message()))?
        .into_inner();
    if resp.ca_pem != current.ca_pem || resp.host != current.host {
        bail!("renewal answered with another CA or host; keeping the current certificate");
    }
    let id = Identity::from_response(resp, key_pem);
    id.save(&cfg.state_dir)?;
    tracing::info!(host = %id.host, not_after = id.not_after, "certificate renewed");
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_or_busy_enrollment_is_tried_again_and_a_refused_one_is_not() {
        for code in [
            tonic::Code::Unavailable,
            tonic::Code::ResourceExhausted,
            tonic::Code::Cancelled,
            tonic::Code::DeadlineExceeded,
        ] {
            assert!(is_busy(code), "{code:?}");
        }
        // A spent, expired or wrong token, a bad CSR: trying again changes
        // nothing, the agent says why and stops.
        for code in [
            tonic::Code::PermissionDenied,
            tonic::Code::Unauthenticated,
            tonic::Code::InvalidArgument,
            tonic::Code::Internal,
        ] {
            assert!(!is_busy(code), "{code:?}");
        }
    }
}
