//! Connecting to the controller: TLS with the controller's CA (plaintext only
//! to a loopback address), the API token on every call, and the questions
//! several commands ask first (who am I, which tenant, the highest counter).

use std::path::PathBuf;
use std::sync::Arc;

use proto::v1::admin_client::AdminClient;
use proto::v1::deployments_client::DeploymentsClient;
use proto::v1::releases_client::ReleasesClient;
use proto::v1::{ListReleasesRequest, WhoAmIRequest, WhoAmIResponse};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::cli::Global;
use crate::error::{CtlError, Result, from_status, plaintext_hint};

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Token(Option<MetadataValue<Ascii>>);

impl Interceptor for Token {
    fn call(
        &mut self,
        mut req: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// `$SLIPWAY_TOKEN`, else the first line of `--token-file`; None when neither.
fn token(file: Option<&PathBuf>) -> Result<Token> {
    let text = match (
        std::env::var("SLIPWAY_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
        file,
    ) {
        (Some(t), _) => t,
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| CtlError::Usage(format!("read token file {}: {e}", path.display())))?,
        (None, None) => return Ok(Token(None)),
    };
    let text = text.trim();
    trust::secret::ApiToken::parse(text).map_err(|e| CtlError::Usage(e.to_string()))?;
    let value = format!("Bearer {text}")
        .parse()
        .map_err(|_| CtlError::Usage("API token is not valid header text".into()))?;
    Ok(Token(Some(value)))
}

pub struct Clients {
    pub url: String,
    /// `--tenant`; empty: the API token's.
    pub tenant: String,
    pub releases: ReleasesClient<InterceptedService<Channel, Token>>,
    pub deployments: DeploymentsClient<InterceptedService<Channel, Token>>,
    pub admin: AdminClient<InterceptedService<Channel, Token>>,
}

pub async fn connect(g: &Global) -> Result<Clients> {
    let path = crate::context::path();
    let file = match &path {
        Some(p) => crate::context::ConfigFile::load(p)?,
        None => crate::context::ConfigFile::default(),
    };
    let g = &crate::context::resolve(
        &g.given(),
        &file,
        path.as_deref()
            .unwrap_or(std::path::Path::new("~/.config/slipway/config.toml")),
    )?;
    let url = g.controller.as_str();
    let parsed =
        trust::tls::ControllerUrl::parse(url).map_err(|e| CtlError::Usage(e.to_string()))?;
    let tls = if parsed.tls {
        let Some(ca) = &g.ca_cert else {
            return Err(CtlError::Usage(
                "https needs the controller's CA certificate: --ca-cert or SLIPWAY_CA_CERT (the controller writes it to DATA_DIR/pki/ca.pem)".into(),
            ));
        };
        let pem = std::fs::read_to_string(ca)
            .map_err(|e| CtlError::Usage(format!("read CA certificate {}: {e}", ca.display())))?;
        let cfg = trust::tls::client_config(trust::tls::ServerTrust::Roots(pem), None)
            .map_err(|e| CtlError::Usage(format!("{}: {e}", ca.display())))?;
        Some(Arc::new(cfg))
    } else {
        None
    };
    let token = token(g.token_file.as_ref())?;
    let channel = trust::tls::connect(url, tls, false).await.map_err(|e| {
        let msg = e.to_string();
        CtlError::Unreachable(format!("{msg}{}", plaintext_hint(url, &msg)))
    })?;
    let limit = proto::MAX_MESSAGE_BYTES;
    Ok(Clients {
        url: url.to_string(),
        tenant: g.tenant.clone(),
        releases: ReleasesClient::with_interceptor(channel.clone(), token.clone())
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit),
        deployments: DeploymentsClient::with_interceptor(channel.clone(), token.clone())
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit),
        admin: AdminClient::with_interceptor(channel, token),
    })
}

impl Clients {
    /// Which tenant, token and roles the API token stands for.
    pub async fn whoami(&mut self) -> Result<WhoAmIResponse> {
        Ok(self
            .admin
            .who_am_i(WhoAmIRequest {})
            .await
            .map_err(|s| from_status(&self.url, s))?
            .into_inner())
    }

    /// The tenant to act on: `--tenant`, else the API token's (asked of the controller).
    pub async fn resolved_tenant(&mut self) -> Result<String> {
        if !self.tenant.is_empty() {
            return Ok(self.tenant.clone());
        }
        Ok(self.whoami().await?.tenant)
    }

    /// The highest release counter of `app` (0 when it has no release yet);
    /// yanked releases do not count, as the controller leaves them out too.
    pub async fn highest_counter(&mut self, tenant: &str, app: &str) -> Result<u64> {
        let req = ListReleasesRequest {
            tenant: tenant.into(),
            app: app.into(),
        };
        match self.releases.list_releases(req).await {
            Ok(r) => Ok(r
                .into_inner()
                .releases
                .iter()
                .filter(|r| r.yanked_at == 0)
                .map(|r| r.counter)
                .max()
                .unwrap_or(0)),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(0),
            Err(s) => Err(from_status(&self.url, s)),
        }
    }
}
