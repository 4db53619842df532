//! Client-side TLS: rustls configs and gRPC channels over them.
//!
//! Before enrollment an agent knows only the CA pin from its join token, so
//! [`PinnedCa`] accepts the controller's certificate chain only if it holds a
//! certificate whose public key matches the pin and the server certificate
//! checks out against it (kubeadm's discovery-token-ca-cert-hash). After
//! enrollment the agent and slipctl use the CA itself as the only root.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tonic::transport::{Channel, Endpoint};

use crate::{Result, TrustError};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// How the client checks the controller.
pub enum ServerTrust {
    /// Only a chain holding the CA with this public key pin (`sha256:<hex>`).
    Pinned(String),
    /// These CA certificates (PEM).
    Roots(String),
}

/// A client certificate chain and its key, PEM.
pub struct ClientIdentity {
    pub cert_pem: String,
    pub key_pem: String,
}

fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| TrustError::Invalid(format!("bad certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(TrustError::Invalid("no certificate in PEM".into()));
    }
    Ok(certs)
}

/// A server config for the controller's HTTPS listener: its certificate
/// chain and key (PEM), no client certificates, HTTP/1.1.
pub fn server_config(cert_pem: &str, key_pem: &str) -> Result<rustls::ServerConfig> {
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| TrustError::Invalid(format!("bad key PEM: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs(cert_pem)?, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

pub fn client_config(
    trust: ServerTrust,
    identity: Option<&ClientIdentity>,
) -> Result<ClientConfig> {
    let builder =
        ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match trust {
        ServerTrust::Pinned(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCa {
                pin,
                provider: provider(),
            })),
        ServerTrust::Roots(pem) => {
            let mut roots = RootCertStore::empty();
            for c in certs(&pem)? {
                roots.add(c)?;
            }
            builder.with_root_certificates(roots)
        }
    };
    let mut cfg = match identity {
        Some(id) => {
            let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes())
                .map_err(|e| TrustError::Invalid(format!("bad private key PEM: {e}")))?;
            builder.with_client_auth_cert(certs(&id.cert_pem)?, key)?
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

#[derive(Debug)]
struct PinnedCa {
    pin: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        for ca in intermediates {
            if crate::pki::spki_pin(ca).ok().as_deref() != Some(self.pin.as_str()) {
                continue;
            }
            let mut roots = RootCertStore::empty();
            roots.add(ca.clone().into_owned())?;
            let verifier =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                    .build()
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
            return verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now);
        }
        Err(rustls::Error::General(
            "the controller's CA does not match the join token's pin".into(),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A parsed controller address.
#[derive(Debug, Clone)]
pub struct ControllerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl ControllerUrl {
    /// `https://host:port`, or `http://` for a loopback address only: plaintext
    /// never crosses a network.
    pub fn parse(url: &str) -> Result<Self> {
        let bad =
            |why: &str| TrustError::Invalid(format!("invalid controller address {url:?}: {why}"));
        let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("use https://HOST:PORT")),
        };
        let host = uri
            .host()
            .ok_or_else(|| bad("no host"))?
            .trim_matches(['[', ']'])
            .to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        if !tls && !is_loopback(&host) {
            return Err(bad(
                "plaintext http:// is allowed on loopback only; use https://",
            ));
        }
        Ok(ControllerUrl { tls, host, port })
    }
}

pub fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Connects a gRPC channel to `url`; `tls` is required for https.
pub async fn connect(url: &str, tls: Option<Arc<ClientConfig>>, lazy: bool) -> Result<Channel> {
    connect_as(url, tls, None, lazy).await
}

/// `connect`, checking the server's certificate for `server_name` instead of
/// the host of `url` (a controller calling another by address checks that it
/// reached a replica: `pki::REPLICA_NAME`).
pub async fn connect_as(
    url: &str,
    tls: Option<Arc<ClientConfig>>,
    server_name: Option<&str>,
    lazy: bool,
) -> Result<Channel> {
    let parsed = ControllerUrl::parse(url)?;
    if server_name.is_some() && !parsed.tls {
        return Err(TrustError::Invalid(format!(
            "invalid controller address {url:?}: a server name to check needs https://"
        )));
    }
    let endpoint =
        Endpoint::from_shared(format!("http://{}:{}", bracket(&parsed.host), parsed.port))
            .map_err(|e| TrustError::Invalid(format!("invalid controller address {url:?}: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true);
    let connector =
        Connector {
            tls: if parsed.tls {
                Some(tls.ok_or_else(|| {
                    TrustError::Invalid("https:// needs a TLS configuration".into())
                })?)
            } else {
                None
            },
            host: parsed.host.clone(),
            port: parsed.port,
            server_name: server_name.unwrap_or(&parsed.host).to_string(),
        };
    if lazy {
        return Ok(endpoint.connect_with_connector_lazy(connector));
    }
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| {
            let mut cause: &dyn std::error::Error = &e;
            while let Some(next) = cause.source() {
                cause = next;
            }
            TrustError::Io {
                what: format!("cannot reach controller at {url}"),
                cause: std::io::Error::other(cause.to_string()),
            }
        })
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// TCP, then TLS when configured; hands hyper the stream.
#[derive(Clone)]
struct Connector {
    tls: Option<Arc<ClientConfig>>,
    host: String,
    port: u16,
    /// What the server's certificate must name.
    server_name: String,
}

type Io = TokioIo<Box<dyn IoStream>>;
trait IoStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> IoStream for T {}

impl tower_service::Service<http::Uri> for Connector {
    type Response = Io;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Io>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect((this.host.as_str(), this.port)).await?;
            tcp.set_nodelay(true)?;
            let Some(cfg) = this.tls else {
                return Ok(TokioIo::new(Box::new(tcp) as Box<dyn IoStream>));
            };
            let name = ServerName::try_from(this.server_name.clone())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(Box::new(tls) as Box<dyn IoStream>))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server name to check (one replica calling another) is never
    /// given up for plaintext, even on loopback.
    #[tokio::test]
    async fn a_named_server_is_called_over_tls_only() {
        let e = connect_as("http://127.0.0.1:7400", None, Some("replica.slipway"), true)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("needs https://"), "{e}");
        assert!(connect("http://127.0.0.1:7400", None, true).await.is_ok());
    }
}
