//! The controller's edge against hostile callers (issue 11): calls without
//! credentials are refused before their body is read and leave no audit row,
//! per-peer caps and idle timeouts hold, what a host reports reaches the
//! operator escaped, renewed certificates replace the old one, enrollment is
//! rate-limited and a bad CSR keeps the join token, tokens expire.

use std::sync::Arc;
use std::time::Duration;

use integration_tests::{Controller, eventually, free_port, proc_kib};
use proto::v1::{
    AgentMessage, AppReport, DeployRequest, EnrollRequest, EnrollResponse, Hello, LogsQuery,
    RenewRequest, ReplicaLogsRequest, UploadBlobHeader, UploadBlobRequest, agent_message,
    agents_client::AgentsClient, deployments_client::DeploymentsClient,
    enrollment_client::EnrollmentClient, releases_client::ReleasesClient,
    replicas_client::ReplicasClient, upload_blob_request,
};
use tonic::transport::Channel;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A controller that also serves slipctl's API in plaintext on loopback:
/// (controller, plaintext port).
fn controller_with_plaintext(dir: &std::path::Path, extra: &[&str]) -> (Controller, u16) {
    let plain = free_port();
    let addr = format!("127.0.0.1:{plain}");
    let mut args = vec!["--plaintext-listen", addr.as_str()];
    args.extend_from_slice(extra);
    (Controller::start_with(dir, &args), plain)
}

/// Where the attack connects: the TLS listener (as an agent or slipctl
/// would, without a client certificate) or the loopback plaintext one.
#[derive(Clone, Copy, Debug)]
enum Listener {
    Tls,
    Plaintext(u16),
}

/// Opens `n` streams without a token on one HTTP/2 connection, each
/// announcing a 15 MiB CreateRelease message and sending 12 MiB of it, never
/// the rest. Returns each stream's grpc-status once answered (None: not
/// answered within 20 s) and the controller's highest VmRSS meanwhile, in KiB.
async fn announce_large_messages(
    c: &Controller,
    to: Listener,
    n: usize,
) -> (Vec<Option<String>>, u64) {
    let pid = c.pid().unwrap();
    let port = match to {
        Listener::Tls => c.port,
        Listener::Plaintext(p) => p,
    };
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let io: Box<dyn Io> = match to {
        Listener::Plaintext(_) => Box::new(tcp),
        Listener::Tls => {
            let ca = std::fs::read_to_string(c.ca_cert()).unwrap();
            let cfg = trust::tls::client_config(trust::tls::ServerTrust::Roots(ca), None).unwrap();
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            Box::new(
                tokio_rustls::TlsConnector::from(Arc::new(cfg))
                    .connect(name, tcp)
                    .await
                    .unwrap(),
            )
        }
    };
    let (client, conn) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let mut answers = Vec::new();
    let mut held = Vec::new();
    for _ in 0..n {
        let req = http::Request::post(format!(
            "https://127.0.0.1:{port}/slipway.v1.Releases/CreateRelease"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
        let (resp, mut body) = client.send_request(req, false).unwrap();
        let mut frame = vec![0u8; 5];
        frame[1..5].copy_from_slice(&(15u32 << 20).to_be_bytes());
        frame.extend(std::iter::repeat_n(b'x', 12 << 20));
        // Buffered by h2 and sent as the controller's window allows.
        let _ = body.send_data(frame.into(), false);
        held.push(body);
        answers.push(tokio::spawn(async move {
            let resp = tokio::time::timeout(Duration::from_secs(20), resp)
                .await
                .ok()?
                .ok()?;
            resp.headers()
                .get("grpc-status")
                .map(|v| v.to_str().unwrap_or("?").to_string())
        }));
        client = client.ready().await.unwrap();
    }
    let mut peak = 0;
    let mut statuses = Vec::new();
    for a in answers {
        // Sample while the streams are open (and, before the fix, filling).
        peak = peak.max(proc_kib(pid, "VmRSS:"));
        statuses.push(a.await.unwrap());
        peak = peak.max(proc_kib(pid, "VmRSS:"));
    }
    for _ in 0..10 {
        peak = peak.max(proc_kib(pid, "VmRSS:"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(held);
    (statuses, peak)
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

#[test]
fn the_grpc_health_check_answers_without_a_token() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let rt = rt();
    rt.block_on(async {
        // What a load balancer asks: no token, no client certificate.
        let mut health = HealthClient::new(c.channel().await);
        let serving = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("the controller answers its health check")
            .into_inner();
        assert_eq!(
            serving.status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving
        );
        let unknown = health
            .check(HealthCheckRequest {
                service: "nope".into(),
            })
            .await
            .expect_err("an unknown service");
        assert_eq!(unknown.code(), tonic::Code::NotFound);
    });
}

#[test]
fn anonymous_streams_announcing_large_messages_are_refused_unread() {
    let t = tempfile::tempdir().unwrap();
    let (c, plain) = controller_with_plaintext(t.path(), &[]);
    let pid = c.pid().unwrap();
    let rt = rt();
    for (to, n) in [
        (Listener::Tls, 12),
        (Listener::Tls, 16),
        (Listener::Plaintext(plain), 16),
    ] {
        let before = proc_kib(pid, "VmRSS:");
        let (statuses, peak) = rt.block_on(announce_large_messages(&c, to, n));
        eprintln!(
            "{to:?}: {n} anonymous streams x 15 MiB announced: controller VmRSS {} -> peak {} MiB",
            before / 1024,
            peak / 1024
        );
        // Unauthenticated (16), answered while the message was unfinished.
        assert!(
            statuses.iter().all(|s| s.as_deref() == Some("16")),
            "{to:?}: {statuses:?}"
        );
        assert!(
            peak < before + 48 * 1024,
            "{to:?}: controller grew from {before} KiB to {peak} KiB under anonymous streams"
        );
    }
    // Still serving, and nothing reached the audit log.
    let history = c.ctl(&["history", "--json"]).ok().json();
    assert_eq!(history.as_array().unwrap().len(), 0, "{history}");
}

#[test]
fn a_stalled_upload_is_cut_off() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start_with(t.path(), &["--upload-idle-secs", "2"]);
    let rt = rt();
    let status = rt.block_on(async {
        let mut client = ReleasesClient::new(authed(c.channel().await, &c.admin_token));
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(UploadBlobRequest {
            part: Some(upload_blob_request::Part::Header(UploadBlobHeader {
                tenant: String::new(),
                digest: format!("sha256:{}", "1".repeat(64)),
                size: 1 << 20,
            })),
        })
        .await
        .unwrap();
        // The header and then nothing, the stream left open.
        let call = client.upload_blob(tokio_stream::wrappers::ReceiverStream::new(rx));
        let result = tokio::time::timeout(Duration::from_secs(60), call)
            .await
            .expect("the controller cut the stalled upload off");
        drop(tx);
        result.expect_err("a stalled upload is refused")
    });
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("stalled"), "{status:?}");
}

#[test]
fn connections_past_the_per_ip_cap_are_closed() {
    use std::io::Read;
    let t = tempfile::tempdir().unwrap();
    let (_c, plain) = controller_with_plaintext(t.path(), &["--max-connections-per-ip", "3"]);
    let held: Vec<_> = (0..3)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", plain)).unwrap())
        .collect();
    let mut extra = std::net::TcpStream::connect(("127.0.0.1", plain)).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 16];
    let n = extra.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the fourth connection is closed without a byte");
    drop(held);
    // Once they are gone, a new one is served again.
    eventually(Duration::from_secs(20), "a connection to be served", || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", plain)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        // An HTTP/2 server speaks first: its SETTINGS frame.
        (s.read(&mut buf).ok()? > 0).then_some(())
    });
}

/// `channel` with `authorization: Bearer <token>` on every call.
fn authed(
    channel: Channel,
    token: &str,
) -> tonic::service::interceptor::InterceptedService<
    Channel,
    impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone,
> {
    let value: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
    tonic::service::interceptor::InterceptedService::new(
        channel,
        move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", value.clone());
            Ok(req)
        },
    )
}

#[test]
fn only_authenticated_refusals_are_audited_bounded_and_escaped_and_history_pages() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let viewer = c.token("look", &["viewer"]);
    let rt = rt();
    let hostile_env = "prod\x1b]0;pwned\x07\nFORGED row";
    let (anonymous, refused) = rt.block_on(async {
        // No token, a 9 MiB app name, another tenant named.
        let mut anon = DeploymentsClient::new(c.channel().await)
            .max_encoding_message_size(proto::MAX_MESSAGE_BYTES);
        let anonymous = anon
            .deploy(DeployRequest {
                tenant: "default".into(),
                app: "a".repeat(9 << 20),
                version: "1.0.0".into(),
                environment: hostile_env.into(),
                ..Default::default()
            })
            .await
            .expect_err("refused");
        // A viewer may not deploy: 120 refusals, each a bounded row.
        let mut client = DeploymentsClient::new(authed(c.channel().await, &viewer))
            .max_encoding_message_size(proto::MAX_MESSAGE_BYTES);
        let mut refused = Vec::new();
        for i in 0..120 {
            let app = if i == 0 {
                "b".repeat(1 << 20)
            } else {
                "web".into()
            };
            refused.push(
                client
                    .deploy(DeployRequest {
                        tenant: String::new(),
                        app,
                        version: "1.0.0".into(),
                        environment: hostile_env.into(),
                        ..Default::default()
                    })
                    .await
                    .expect_err("refused")
                    .code(),
            );
        }
        (anonymous, refused)
    });
    assert_eq!(
        anonymous.code(),
        tonic::Code::Unauthenticated,
        "{anonymous:?}"
    );
    assert!(refused.iter().all(|c| *c == tonic::Code::PermissionDenied));

    // 120 rows, fetched in pages of at most 100 by slipctl.
    let all = c.ctl(&["history", "--limit", "500", "--json"]).ok().json();
    let rows: Vec<_> = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] != "token-create")
        .collect();
    assert_eq!(rows.len(), 120, "only the viewer's refusals are audited");
    assert!(
        rows.iter()
            .all(|r| r["actor"].as_str().unwrap().starts_with("look ")),
        "{all}"
    );
    let oldest = rows[119];
    assert!(oldest["app"].as_str().unwrap().len() <= 256, "app bounded");
    assert!(oldest["app"].as_str().unwrap().ends_with("…[cut]"));
    assert_eq!(
        oldest["environment"], "prod\\u{1b}]0;pwned\\u{7}\\nFORGED row",
        "control characters stored escaped"
    );
    assert_eq!(
        c.ctl(&["history", "--limit", "7", "--json"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .len(),
        7
    );
    let table = c.ctl(&["history", "--limit", "500"]).ok().stdout;
    assert!(
        !table.contains('\x1b') && !table.contains("\nFORGED"),
        "{table}"
    );
}

/// A fresh agent key, a join token for `host` and its enrollment.
async fn enroll(c: &Controller, host: &str) -> (trust::tls::ClientIdentity, EnrollResponse) {
    let token = c.join_token(host, "preprod");
    let (key_pem, csr_pem) = trust::pki::agent_key_and_csr(host).unwrap();
    let resp = EnrollmentClient::new(c.channel().await)
        .enroll(EnrollRequest {
            join_token: token,
            host: host.into(),
            csr_pem,
        })
        .await
        .expect("enrolled")
        .into_inner();
    (
        trust::tls::ClientIdentity {
            cert_pem: resp.cert_pem.clone(),
            key_pem,
        },
        resp,
    )
}

/// A channel presenting `id` (mTLS).
async fn as_host(c: &Controller, id: &trust::tls::ClientIdentity) -> Channel {
    let ca = std::fs::read_to_string(c.ca_cert()).unwrap();
    let cfg = trust::tls::client_config(trust::tls::ServerTrust::Roots(ca), Some(id)).unwrap();
    trust::tls::connect(&c.url, Some(Arc::new(cfg)), false)
        .await
        .unwrap()
}

/// Opens a session as `id` with `hello`, read up to the welcome; it stays open
/// while the returned sender lives.
async fn open_session(
    c: &Controller,
    id: &trust::tls::ClientIdentity,
    hello: Hello,
) -> (
    tokio::sync::mpsc::Sender<AgentMessage>,
    tonic::Streaming<proto::v1::ControllerMessage>,
) {
    let mut client = AgentsClient::new(as_host(c, id).await);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(AgentMessage {
        msg: Some(agent_message::Msg::Hello(hello)),
    })
    .await
    .unwrap();
    let mut inbound = client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("session")
        .into_inner();
    inbound.message().await.expect("welcome");
    (tx, inbound)
}

#[test]
fn what_a_host_reports_reaches_operators_escaped() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let rt = rt();
    let evil = "\x1b[2J\x1b]0;owned\x07\nINFO forged controller line";
    let _session = rt.block_on(async {
        let (id, _) = enroll(&c, "web-1").await;
        let hello = Hello {
            host: "web-1".into(),
            agent_version: format!("9.9{evil}"),
            os: format!("Evil OS{evil}"),
            apps: vec![AppReport {
                app: "web".into(),
                running_version: format!("1.0{evil}"),
                health_reason: format!("sick{evil}"),
                last_error: format!("boom{evil}{}", "y".repeat(10_000)),
                drift: vec![format!("changed a{evil}")],
                drift_count: 1,
                ..Default::default()
            }],
            ..Default::default()
        };
        open_session(&c, &id, hello).await
    });
    let hosts = c.ctl(&["hosts", "--json"]).ok().json();
    assert_eq!(
        hosts[0]["agent_version"],
        "9.9\\u{1b}[2J\\u{1b}]0;owned\\u{7}\\nINFO forged controller line"
    );
    let status = c.ctl(&["status", "--app", "web", "--json"]).ok().json();
    let row = &status["hosts"][0];
    assert!(row["last_error"].as_str().unwrap().len() <= 4096);
    assert!(row["last_error"].as_str().unwrap().ends_with("…[cut]"));
    for out in [
        c.ctl(&["hosts"]).ok().stdout,
        c.ctl(&["status"]).ok().stdout,
        c.ctl(&["status", "--hosts"]).ok().stdout,
        c.ctl(&["status", "--app", "web", "--json"]).ok().stdout,
        c.ctl(&["hosts", "--json"]).ok().stdout,
    ] {
        assert!(!out.contains('\x1b') && !out.contains('\x07'), "{out}");
        assert!(!out.contains("\nINFO forged"), "{out}");
    }
    let log = std::fs::read_to_string(t.path().join("controller.log")).unwrap();
    assert!(
        !log.contains('\x1b') && !log.lines().any(|l| l.starts_with("INFO forged")),
        "no forged line in the controller's log"
    );
}

/// Renews `host`'s certificate as `id`: the new identity.
async fn renew(
    c: &Controller,
    id: &trust::tls::ClientIdentity,
    host: &str,
) -> trust::tls::ClientIdentity {
    let (key_pem, csr_pem) = trust::pki::agent_key_and_csr(host).unwrap();
    let renewed = AgentsClient::new(as_host(c, id).await)
        .renew(RenewRequest { csr_pem })
        .await
        .expect("renewed")
        .into_inner();
    trust::tls::ClientIdentity {
        cert_pem: renewed.cert_pem,
        key_pem,
    }
}

#[test]
fn a_renewed_certificate_replaces_the_old_one() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let rt = rt();
    rt.block_on(async {
        let (old, _) = enroll(&c, "web-1").await;
        let new = renew(&c, &old, "web-1").await;
        let (_, csr_pem) = trust::pki::agent_key_and_csr("web-1").unwrap();
        let refused = AgentsClient::new(as_host(&c, &old).await)
            .renew(RenewRequest { csr_pem })
            .await
            .expect_err("the old certificate is refused after renewal");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
        assert!(
            refused.message().contains("unknown client certificate"),
            "{refused:?}"
        );
        // The new one works.
        let (_, csr_pem) = trust::pki::agent_key_and_csr("web-1").unwrap();
        AgentsClient::new(as_host(&c, &new).await)
            .renew(RenewRequest { csr_pem })
            .await
            .expect("the renewed certificate works");
    });
}

/// A call made as `id`: Ok if the controller took the certificate for a
/// host (it then refuses the unknown release), else the refusal.
async fn call_as(c: &Controller, id: &trust::tls::ClientIdentity) -> Result<(), tonic::Status> {
    let refused = AgentsClient::new(as_host(c, id).await)
        .fetch_manifest(proto::v1::FetchManifestRequest {
            digest: format!("sha256:{}", "0".repeat(64)),
            ..Default::default()
        })
        .await
        .expect_err("no such release");
    if refused.code() == tonic::Code::PermissionDenied
        && refused.message().contains("is not one this host runs")
    {
        Ok(())
    } else {
        Err(refused)
    }
}

/// A session's calls skip the store's certificate lookup while the session
/// lives; a new certificate or a revocation still ends the old one's use at
/// once, session or not.
#[test]
fn a_live_session_does_not_keep_a_replaced_or_revoked_certificate_working() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let rt = rt();
    rt.block_on(async {
        let (old, _) = enroll(&c, "web-1").await;
        let web_1 = || Hello {
            host: "web-1".into(),
            ..Default::default()
        };
        let _old_session = open_session(&c, &old, web_1()).await;
        call_as(&c, &old)
            .await
            .expect("the session's certificate works");

        let new = renew(&c, &old, "web-1").await;
        let refused = call_as(&c, &old)
            .await
            .expect_err("the replaced certificate is refused while its session lives");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

        let _new_session = open_session(&c, &new, web_1()).await;
        call_as(&c, &new).await.expect("the new certificate works");
        c.ctl(&["hosts", "revoke", "web-1"]).ok();
        let refused = call_as(&c, &new)
            .await
            .expect_err("a revoked host's certificate is refused");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    });
}

/// A host revoked while its session waits to say hello (its certificate
/// already checked): the hello is refused, and the certificate does not
/// come to stand for the host on this replica.
#[test]
fn a_host_revoked_before_its_hello_gets_no_session() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let rt = rt();
    rt.block_on(async {
        let (id, _) = enroll(&c, "web-1").await;
        let mut client = AgentsClient::new(as_host(&c, &id).await);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let opening = tokio::spawn(async move {
            client
                .session(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
        // The controller has checked the certificate and waits for the hello.
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.ctl(&["hosts", "revoke", "web-1"]).ok();
        tx.send(AgentMessage {
            msg: Some(agent_message::Msg::Hello(Hello {
                host: "web-1".into(),
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        let refused = opening
            .await
            .unwrap()
            .expect_err("the session of a revoked host is refused");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
        let refused = call_as(&c, &id)
            .await
            .expect_err("its certificate is refused");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    });
}

/// A channel to `c` presenting a replica certificate made by `ca`, checking
/// that the server names a replica.
async fn as_replica(c: &Controller, ca: &trust::pki::Ca) -> Channel {
    let (cert_pem, key_pem) = ca.issue_replica(Duration::from_secs(300)).unwrap();
    let roots = std::fs::read_to_string(c.ca_cert()).unwrap();
    let cfg = trust::tls::client_config(
        trust::tls::ServerTrust::Roots(roots),
        Some(&trust::tls::ClientIdentity { cert_pem, key_pem }),
    )
    .unwrap();
    trust::tls::connect_as(
        &c.url,
        Some(Arc::new(cfg)),
        Some(trust::pki::REPLICA_NAME),
        true,
    )
    .await
    .unwrap()
}

/// Only another controller (a client certificate its CA made for a replica)
/// may relay a log query: no certificate, a host's, or a replica
/// certificate from another CA is refused; a bad relay is refused with why.
#[test]
fn only_another_controller_may_relay_a_log_query() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let rt = rt();
    rt.block_on(async {
        let to = |replica: &str, hosts: &[&str]| ReplicaLogsRequest {
            tenant: "default".into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            query: Some(LogsQuery {
                app: "web".into(),
                lines: 10,
                ..Default::default()
            }),
            replica: replica.into(),
        };
        let ask = |hosts: &[&str]| to("", hosts);
        let refused = ReplicasClient::new(c.channel().await)
            .logs(ask(&["web-1"]))
            .await
            .expect_err("no certificate");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
        let (id, _) = enroll(&c, "web-1").await;
        let refused = ReplicasClient::new(as_host(&c, &id).await)
            .logs(ask(&["web-1"]))
            .await
            .expect_err("a host's certificate");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        assert!(
            refused.message().contains("only another controller"),
            "{refused:?}"
        );

        // This controller's CA: let in. A relay meant for another replica
        // (a wrong address) is refused with the name of the one reached.
        let ca_pem = c.ca_cert();
        let ca = trust::pki::Ca::load(&ca_pem, &ca_pem.with_file_name("ca.key")).unwrap();
        let refused = ReplicasClient::new(as_replica(&c, &ca).await)
            .logs(to("elsewhere-1", &["web-1"]))
            .await
            .expect_err("meant for another replica");
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        let name = refused
            .message()
            .strip_prefix("this is controller ")
            .and_then(|m| m.split_once(", not elsewhere-1"))
            .unwrap_or_else(|| panic!("{refused:?}"))
            .0
            .to_string();
        let ask = |hosts: &[&str]| to(&name, hosts);
        // The host holds no session here.
        let mut answers = ReplicasClient::new(as_replica(&c, &ca).await)
            .logs(ask(&["web-1"]))
            .await
            .expect("a replica is let in")
            .into_inner();
        let first = answers.message().await.unwrap().expect("an answer");
        assert_eq!(first.host, "web-1");
        assert!(first.error.contains("not connected"), "{first:?}");
        let refused = ReplicasClient::new(as_replica(&c, &ca).await)
            .logs(ask(&[]))
            .await
            .expect_err("no host");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        let refused = ReplicasClient::new(as_replica(&c, &ca).await)
            .logs(ask(&["../x"]))
            .await
            .expect_err("a bad name");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");

        // Another CA's replica certificate: the handshake refuses it.
        let other = trust::pki::Ca::load_or_create(&t.path().join("other-ca")).unwrap();
        let refused = ReplicasClient::new(as_replica(&c, &other).await)
            .logs(ask(&["web-1"]))
            .await;
        assert!(refused.is_err(), "{refused:?}");
    });
}

/// An enrollment with a garbage token from this address: how it is refused.
async fn garbage_enroll(client: &mut EnrollmentClient<Channel>) -> tonic::Code {
    client
        .enroll(EnrollRequest {
            join_token: "swj_garbage".into(),
            host: "web-9".into(),
            csr_pem: "nope".into(),
        })
        .await
        .expect_err("garbage is refused")
        .code()
}

#[test]
fn a_bad_csr_keeps_the_join_token_and_anonymous_enrollment_is_rate_limited() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let rt = rt();
    rt.block_on(async {
        let token = c.join_token("web-1", "preprod");
        let mut client = EnrollmentClient::new(c.channel().await);
        let bad = client
            .enroll(EnrollRequest {
                join_token: token.clone(),
                host: "web-1".into(),
                csr_pem: "-----BEGIN CERTIFICATE REQUEST-----\ngarbage\n-----END CERTIFICATE REQUEST-----\n".into(),
            })
            .await
            .expect_err("a malformed CSR is refused");
        assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
        let (_, csr_pem) = trust::pki::agent_key_and_csr("web-1").unwrap();
        client
            .enroll(EnrollRequest {
                join_token: token,
                host: "web-1".into(),
                csr_pem,
            })
            .await
            .expect("the join token survived the bad CSR");

        // 200 garbage calls from one address: refused, past the burst as
        // resource exhausted.
        let mut exhausted = 0;
        for _ in 0..200 {
            if garbage_enroll(&mut client).await == tonic::Code::ResourceExhausted {
                exhausted += 1;
            }
        }
        assert!(exhausted >= 150, "only {exhausted} of 200 were rate-limited");
    });
    // One audit row: the enrollment that worked.
    let history = c.ctl(&["history", "--json"]).ok().json();
    let enrolls: Vec<_> = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "enroll")
        .collect();
    assert_eq!(enrolls.len(), 1, "{history}");
    assert!(enrolls[0]["outcome"].as_str().unwrap().starts_with("ok"));
}

/// An agent turned away at enrollment by a busy controller (here its
/// enrollment rate spent by another caller of the same address) keeps its
/// key and CSR, tries again with backoff, and joins once there is room.
#[test]
fn an_agent_turned_away_by_a_busy_controller_enrolls_when_there_is_room() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start_with(t.path(), &["--enrolls-per-minute", "30"]);
    let mut agent = integration_tests::Agent::configured(
        t.path(),
        &c,
        "busy-1",
        "preprod",
        "DATABASE_URL=postgres://app@db/app\n",
        true,
    );
    // Another caller spends the address's enrollments until the agent has
    // been turned away at least once.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let exhausted = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let hammer = std::thread::spawn({
        let (stop, exhausted) = (stop.clone(), exhausted.clone());
        let (url, ca) = (c.url.clone(), c.ca_cert());
        move || {
            rt().block_on(async {
                let roots = std::fs::read_to_string(ca).unwrap();
                let cfg =
                    trust::tls::client_config(trust::tls::ServerTrust::Roots(roots), None).unwrap();
                let channel = trust::tls::connect(&url, Some(Arc::new(cfg)), false)
                    .await
                    .unwrap();
                let mut client = EnrollmentClient::new(channel);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if garbage_enroll(&mut client).await == tonic::Code::ResourceExhausted {
                        exhausted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            })
        }
    });
    eventually(
        Duration::from_secs(10),
        "the address's enrollments spent",
        || (exhausted.load(std::sync::atomic::Ordering::Relaxed) > 0).then_some(()),
    );
    agent.spawn();
    eventually(Duration::from_secs(20), "the agent turned away", || {
        agent
            .log_text()
            .contains("enrollment: controller busy")
            .then_some(())
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    hammer.join().unwrap();
    agent.wait_connected(&c);
    let log = agent.log_text();
    assert!(log.contains("enrolled"), "{log}");
    assert!(
        !log.contains("join token already used"),
        "a retry lost its token: {log}"
    );
}

#[test]
fn tokens_expire_and_show_their_last_use() {
    let t = tempfile::tempdir().unwrap();
    let c = Controller::start(t.path());
    let bad = c.ctl(&[
        "tokens",
        "create",
        "x",
        "--role",
        "viewer",
        "--expires",
        "3w",
    ]);
    assert_eq!(bad.code, integration_tests::exit::USAGE, "{}", bad.stderr);
    let short = c
        .ctl(&[
            "tokens",
            "create",
            "brief",
            "--role",
            "viewer",
            "--expires",
            "3s",
        ])
        .ok()
        .stdout
        .trim()
        .to_string();
    let long = c
        .ctl(&[
            "tokens",
            "create",
            "ci",
            "--role",
            "viewer",
            "--expires",
            "90d",
        ])
        .ok()
        .stdout
        .trim()
        .to_string();
    let list = c.ctl(&["tokens", "list", "--json"]).ok().json();
    let ci = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "ci")
        .unwrap()
        .clone();
    assert!(ci["expires_at"].is_string(), "{ci}");
    assert!(ci["last_used_at"].is_null(), "never used yet: {ci}");
    c.ctl_as(&long, &["status"]).ok();
    let list = c.ctl(&["tokens", "list", "--json"]).ok().json();
    let ci = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "ci")
        .unwrap()
        .clone();
    assert!(ci["last_used_at"].is_string(), "used now: {ci}");
    let table = c.ctl(&["tokens", "list"]).ok().stdout;
    assert!(
        table.contains("LAST USED") && table.contains("EXPIRES"),
        "{table}"
    );

    let refused = eventually(Duration::from_secs(20), "the short token to expire", || {
        let out = c.ctl_as(&short, &["status"]);
        (out.code != 0).then_some(out)
    });
    assert!(
        refused.stderr.contains("token expired"),
        "{}",
        refused.stderr
    );
    let table = c.ctl(&["tokens", "list"]).ok().stdout;
    let row = table
        .lines()
        .find(|l| l.trim_start().starts_with("brief"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("expired"), "{table}");
}
