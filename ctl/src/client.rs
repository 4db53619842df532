//! Connecting to the controller: TLS with the controller's CA (plaintext only
//! to a loopback address), and the API token on every call.

use std::path::PathBuf;
use std::sync::Arc;

use proto::v1::admin_client::AdminClient;
use proto::v1::deployments_client::DeploymentsClient;
use proto::v1::releases_client::ReleasesClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::cli::Global;
use crate::error::{CtlError, Result};

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
    pub releases: ReleasesClient<InterceptedService<Channel, Token>>,
    pub deployments: DeploymentsClient<InterceptedService<Channel, Token>>,
    pub admin: AdminClient<InterceptedService<Channel, Token>>,
}

pub async fn connect(g: &Global) -> Result<Clients> {
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
    let channel = trust::tls::connect(url, tls, false)
        .await
        .map_err(|e| CtlError::Unreachable(e.to_string()))?;
    let limit = proto::MAX_MESSAGE_BYTES;
    Ok(Clients {
        url: url.to_string(),
        releases: ReleasesClient::with_interceptor(channel.clone(), token.clone())
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit),
        deployments: DeploymentsClient::with_interceptor(channel.clone(), token.clone())
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit),
        admin: AdminClient::with_interceptor(channel, token),
    })
}
