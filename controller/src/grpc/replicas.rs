//! `Replicas`: what one controller asks of another that shares its store.
//! Today one call: a log query made on one replica for hosts whose session is
//! on another (`crate::logs::ask` relays it here). Both sides live here, as
//! the edge of the wire between replicas.
//!
//! Who may call: only a client certificate the shared CA issued to a replica
//! (`trust::pki::REPLICA_NAME`, checked at the edge), which every replica
//! makes for itself at start. A replica calls another at the address it
//! announced (`--advertise-address`, carried by the fan-out) and checks that
//! the server's certificate, from the same CA, names a replica.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use artifact::{NameKind, validate_name};
use proto::v1::replicas_client::ReplicasClient;
use proto::v1::replicas_server::Replicas;
use proto::v1::{LogsQuery, ReplicaLogAnswer, ReplicaLogsRequest};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::SharedCtx;
use crate::error::ControllerError;
use crate::logs::{Answer, LogAsk, LogRequest, MAX_CHUNK_LINES, MAX_HOSTS, MAX_LINE_BYTES};

/// How long a replica's certificate for calling the others lives (made
/// again at every start, like the server certificate).
const CERT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Replicas' addresses kept connected at most (dead ones are forgotten by
/// the hub; past this the kept ones are dropped and made again).
const MAX_ADDRESSES: usize = 64;
/// Connections to each other replica, taken in turn: a connection carries
/// at most `MAX_STREAMS_PER_CONNECTION` (32) calls at once, and a followed
/// query holds its call open; eight carry as many relays as a replica has
/// log queries open (`logs::MAX_OPEN`, 256).
const CONNECTIONS_PER_REPLICA: usize = 8;

/// The calling replica, as the edge found it.
#[derive(Debug, Clone)]
pub struct ReplicaPeer;

/// Whether a client certificate chain (leaf first, already checked against
/// the CA by the handshake) is a replica's.
pub fn replica_from_certs(
    certs: Option<&[tonic::transport::CertificateDer<'static>]>,
) -> Result<ReplicaPeer, Status> {
    match certs.and_then(|c| c.first()) {
        Some(leaf) if trust::pki::is_replica_cert(leaf) => Ok(ReplicaPeer),
        Some(_) => Err(Status::permission_denied(
            "only another controller may call Replicas",
        )),
        None => Err(Status::unauthenticated(
            "a controller's client certificate is required",
        )),
    }
}

fn log_request(q: LogsQuery) -> LogRequest {
    LogRequest {
        app: q.app.clone(),
        environment: String::new(),
        host: String::new(),
        ask: LogAsk {
            id: 0,
            app: q.app,
            process: q.process,
            lines: q.lines,
            follow: q.follow,
            since_secs: q.since_secs,
            grep: q.grep,
            until_secs: q.until_secs,
            max_bytes: q.max_bytes,
            deadline_secs: q.deadline_secs,
            deploy_log: q.deploy_log,
        },
    }
}

fn wire(a: Answer) -> ReplicaLogAnswer {
    match a {
        Answer::Lines { host, lines, times } => ReplicaLogAnswer {
            host,
            lines,
            written_at: times,
            ..Default::default()
        },
        Answer::Failed { host, error } => ReplicaLogAnswer {
            host,
            error,
            ..Default::default()
        },
        Answer::Done { host } => ReplicaLogAnswer {
            host,
            done: true,
            ..Default::default()
        },
    }
}

/// Another replica's answer as this one takes it: bounded and escaped like
/// a host's chunk (it is relayed to a terminal or a page).
fn answer(a: ReplicaLogAnswer) -> Result<Answer, ControllerError> {
    let host = crate::sanitize::owned(a.host, 256);
    if !a.error.is_empty() {
        return Ok(Answer::Failed {
            host,
            error: crate::sanitize::owned(a.error, 4096),
        });
    }
    if a.done {
        return Ok(Answer::Done { host });
    }
    if a.lines.len() > MAX_CHUNK_LINES
        || !(a.written_at.is_empty() || a.written_at.len() == a.lines.len())
    {
        return Err(ControllerError::Unavailable(format!(
            "another controller sent {} lines with {} times (at most {MAX_CHUNK_LINES}, a time each)",
            a.lines.len(),
            a.written_at.len()
        )));
    }
    Ok(Answer::Lines {
        host,
        lines: a
            .lines
            .into_iter()
            .map(|l| crate::sanitize::owned(l, MAX_LINE_BYTES))
            .collect(),
        times: a.written_at,
    })
}

pub struct ReplicasService {
    pub ctx: SharedCtx,
}

type AnswerStream = Pin<Box<dyn Stream<Item = Result<ReplicaLogAnswer, Status>> + Send>>;

#[tonic::async_trait]
impl Replicas for ReplicasService {
    type LogsStream = AnswerStream;

    async fn logs(
        &self,
        req: Request<ReplicaLogsRequest>,
    ) -> Result<Response<AnswerStream>, Status> {
        match req.extensions().get::<ReplicaPeer>() {
            Some(_) => {}
            None => {
                replica_from_certs(req.peer_certs().as_deref().map(Vec::as_slice))?;
            }
        }
        let r = req.into_inner();
        if r.replica != self.ctx.replica {
            return Err(Status::failed_precondition(format!(
                "this is controller {}, not {}: check the other's --advertise-address",
                self.ctx.replica,
                crate::sanitize::text(&r.replica, 128)
            )));
        }
        let tenant = super::tenant_of(&r.tenant)?;
        if r.hosts.is_empty() || r.hosts.len() > MAX_HOSTS {
            return Err(Status::invalid_argument(format!(
                "{} hosts asked (1 to {MAX_HOSTS})",
                r.hosts.len()
            )));
        }
        for h in &r.hosts {
            validate_name(NameKind::Host, h)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        let q = r
            .query
            .ok_or_else(|| Status::invalid_argument("no query"))?;
        let request = log_request(q);
        let answers = crate::logs::ask_here(&self.ctx, &tenant, &r.hosts, &request)?;
        tracing::info!(%tenant, app = %request.app, hosts = r.hosts.len(), follow = request.ask.follow, "logs asked by another controller");
        Ok(Response::new(Box::pin(
            ReceiverStream::new(answers).map(|a| Ok(wire(a))),
        )))
    }
}

/// This replica's side of calling the others: its certificate, and one
/// channel per address it called.
pub struct Peers {
    tls: Arc<rustls::ClientConfig>,
    /// Per address: its connections, and which one the next call takes.
    channels: Mutex<HashMap<String, (Vec<Channel>, usize)>>,
}

impl Peers {
    /// Makes this replica's client certificate from the CA.
    pub fn new(ca: &trust::pki::Ca) -> anyhow::Result<Self> {
        let (cert_pem, key_pem) = ca.issue_replica(CERT_TTL)?;
        let tls = trust::tls::client_config(
            trust::tls::ServerTrust::Roots(ca.cert_pem.clone()),
            Some(&trust::tls::ClientIdentity { cert_pem, key_pem }),
        )?;
        Ok(Peers {
            tls: Arc::new(tls),
            channels: Mutex::default(),
        })
    }

    async fn channel(&self, address: &str) -> Result<Channel, ControllerError> {
        if let Some((conns, next)) = self.channels.lock().expect("peers lock").get_mut(address) {
            *next = (*next + 1) % conns.len();
            return Ok(conns[*next].clone());
        }
        // Lazy: each connects at its first call.
        let mut conns = Vec::with_capacity(CONNECTIONS_PER_REPLICA);
        for _ in 0..CONNECTIONS_PER_REPLICA {
            conns.push(
                trust::tls::connect_as(
                    address,
                    Some(self.tls.clone()),
                    Some(trust::pki::REPLICA_NAME),
                    true,
                )
                .await
                .map_err(|e| ControllerError::Unavailable(e.to_string()))?,
            );
        }
        let first = conns[0].clone();
        let mut channels = self.channels.lock().expect("peers lock");
        if channels.len() >= MAX_ADDRESSES {
            channels.clear();
        }
        channels.insert(address.to_string(), (conns, 0));
        Ok(first)
    }

    /// Asks `replica` at `address` for the answers of `hosts` (held there)
    /// to `ask`: each host's lines, then its end, as they come.
    pub async fn logs(
        &self,
        replica: &str,
        address: &str,
        tenant: &str,
        hosts: &[String],
        ask: &LogAsk,
    ) -> Result<impl Stream<Item = Result<Answer, ControllerError>> + Send + use<>, ControllerError>
    {
        let limit = proto::MAX_MESSAGE_BYTES;
        let mut client = ReplicasClient::new(self.channel(address).await?)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit);
        let stream = client
            .logs(ReplicaLogsRequest {
                tenant: tenant.to_string(),
                hosts: hosts.to_vec(),
                query: Some(super::agents::logs_query(LogAsk {
                    id: 0,
                    ..ask.clone()
                })),
                replica: replica.to_string(),
            })
            .await
            .map_err(|s| {
                ControllerError::Unavailable(crate::sanitize::owned(s.message().to_string(), 512))
            })?
            .into_inner();
        Ok(stream.map(|m| match m {
            Ok(a) => answer(a),
            Err(s) => Err(ControllerError::Unavailable(crate::sanitize::owned(
                s.message().to_string(),
                512,
            ))),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_replicas_answer_is_bounded_and_escaped() {
        let a = answer(ReplicaLogAnswer {
            host: "web-1".into(),
            lines: vec!["[web] \u{1b}[31mred".into()],
            written_at: vec![7],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            a,
            Answer::Lines {
                host: "web-1".into(),
                lines: vec!["[web] \\u{1b}[31mred".into()],
                times: vec![7],
            }
        );
        let too_many = ReplicaLogAnswer {
            host: "web-1".into(),
            lines: vec![String::new(); MAX_CHUNK_LINES + 1],
            ..Default::default()
        };
        assert!(answer(too_many).is_err());
        let long = answer(ReplicaLogAnswer {
            host: "web-1".into(),
            lines: vec!["x".repeat(MAX_LINE_BYTES * 2)],
            ..Default::default()
        })
        .unwrap();
        assert!(
            matches!(&long, Answer::Lines { lines, .. } if lines[0].len() <= MAX_LINE_BYTES),
            "{long:?}"
        );
        // A query goes over the wire and back unchanged.
        let ask = LogAsk {
            app: "web".into(),
            process: "worker".into(),
            lines: 20,
            grep: "GET".into(),
            until_secs: 60,
            max_bytes: 1 << 20,
            deadline_secs: 5,
            deploy_log: true,
            ..LogAsk::default()
        };
        assert_eq!(
            log_request(super::super::agents::logs_query(ask.clone())).ask,
            ask
        );
    }
}
