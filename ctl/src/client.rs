//! Connecting to the controller and stamping requests with who asks.

use std::time::Duration;

use proto::v1::deployments_client::DeploymentsClient;
use proto::v1::releases_client::ReleasesClient;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::error::{CtlError, Result};

/// Adds `x-slipway-actor` (`$SLIPWAY_ACTOR`, else `$USER`, else the uid) to every call.
#[derive(Clone)]
pub struct Actor(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for Actor {
    fn call(
        &mut self,
        mut req: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("x-slipway-actor", v.clone());
        }
        Ok(req)
    }
}

fn actor() -> Actor {
    let name = std::env::var("SLIPWAY_ACTOR")
        .or_else(|_| std::env::var("USER"))
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| format!("uid:{}", nix::unistd::getuid()));
    Actor(name.parse().ok())
}

pub struct Clients {
    pub url: String,
    pub releases: ReleasesClient<InterceptedService<Channel, Actor>>,
    pub deployments: DeploymentsClient<InterceptedService<Channel, Actor>>,
}

pub async fn connect(url: &str) -> Result<Clients> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| CtlError::Failed(format!("invalid controller address {url:?}: {e}")))?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint.connect().await.map_err(|e| {
        let mut cause: &dyn std::error::Error = &e;
        while let Some(next) = cause.source() {
            cause = next;
        }
        CtlError::Unreachable(format!("cannot reach controller at {url}: {cause}"))
    })?;
    let limit = proto::MAX_MESSAGE_BYTES;
    Ok(Clients {
        url: url.to_string(),
        releases: ReleasesClient::with_interceptor(channel.clone(), actor())
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit),
        deployments: DeploymentsClient::with_interceptor(channel, actor())
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit),
    })
}
