//! `Agents`: one long-lived session per host. The agent says hello with what it
//! runs; the controller pushes the host's desired state whenever it changes and
//! records every report. Blobs are fetched with resumable, chunked streams.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use artifact::{Digest, NameKind, validate_name};
use proto::v1::agents_server::Agents;
use proto::v1::{
    AgentMessage, AppReport, BlobChunk, BlobUrlRequest, BlobUrlResponse, ControllerMessage,
    DeclaredApps, DesiredApp, DesiredState, EnrollResponse, FetchBlobRequest, FetchManifestRequest,
    FetchManifestResponse, FetchObjectsRequest, Hello, LogChunk, LogsQuery, RenewRequest,
    SendLogsResponse, Welcome, agent_message, controller_message,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::SharedCtx;
use crate::auth::{self, AgentId};
use crate::error::ControllerError;
use crate::hub::Recompute;
use crate::logs::{HostLog, LogAsk, MAX_CHUNK_BYTES, MAX_CHUNK_LINES, MAX_LINE_BYTES};
use crate::store::HostAppReport;

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_APPS_PER_HOST: usize = 256;
const MAX_TEXT: usize = 4096;
const MAX_MISSING_NAMES: usize = 256;
const MAX_DRIFT_LINES: usize = 50;
const MAX_DRIFT_LINE: usize = 512;
const MAX_OS: usize = 256;
const MAX_REFUSAL: usize = 512;

/// A log query as the wire carries it (to a host, or to another replica).
pub(super) fn logs_query(a: LogAsk) -> LogsQuery {
    LogsQuery {
        id: a.id,
        app: a.app,
        process: a.process,
        lines: a.lines,
        follow: a.follow,
        since_secs: a.since_secs,
        grep: a.grep,
        until_secs: a.until_secs,
        max_bytes: a.max_bytes,
        deadline_secs: a.deadline_secs,
        deploy_log: a.deploy_log,
    }
}

/// A host's log chunk, bounded and escaped: a host is not trusted to.
fn host_log(c: LogChunk) -> Result<HostLog, Status> {
    let now = u64::try_from(crate::store::now()).unwrap_or(0);
    if !c.error.is_empty() {
        return Ok(HostLog::Error(crate::sanitize::owned(c.error, MAX_TEXT)));
    }
    let bytes: usize = c.lines.iter().map(String::len).sum();
    if c.lines.len() > MAX_CHUNK_LINES
        || bytes > MAX_CHUNK_BYTES
        || !(c.written_at.is_empty() || c.written_at.len() == c.lines.len())
    {
        return Err(Status::invalid_argument(format!(
            "a log chunk of {} lines, {bytes} bytes, {} times (at most {MAX_CHUNK_LINES} lines, {MAX_CHUNK_BYTES} bytes, a time per line)",
            c.lines.len(),
            c.written_at.len()
        )));
    }
    Ok(HostLog::Lines(
        c.lines
            .into_iter()
            .map(|l| crate::sanitize::owned(l, MAX_LINE_BYTES))
            .collect(),
        // A time from the future is not known.
        c.written_at
            .into_iter()
            .map(|t| if t > now + 86_400 { 0 } else { t })
            .collect(),
    ))
}

pub struct AgentsService {
    pub ctx: SharedCtx,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Host-sent text as the controller keeps it: control characters escaped,
/// at most `MAX_TEXT` bytes (`crate::sanitize`).
fn bounded(s: String) -> String {
    bounded_to(s, MAX_TEXT)
}

/// Host-sent text escaped and cut to at most `max` bytes (with a marker).
fn bounded_to(s: String, max: usize) -> String {
    crate::sanitize::owned(s, max)
}

fn report_from_proto(r: AppReport) -> Result<HostAppReport, Status> {
    validate_name(NameKind::App, &r.app).map_err(|e| Status::invalid_argument(e.to_string()))?;
    if r.missing_env.len() > MAX_MISSING_NAMES
        || !r.missing_env.iter().all(|n| artifact::spec::is_env_name(n))
    {
        return Err(Status::invalid_argument(
            "report: missing_env must hold variable names only",
        ));
    }
    // Drift is the host's to describe, bounded here: cut, never refused (a
    // refusal would end the session of a host whose only fault is a long path).
    let drift: Vec<String> = r
        .drift
        .into_iter()
        .take(MAX_DRIFT_LINES)
        .map(|l| bounded_to(l, MAX_DRIFT_LINE))
        .collect();
    Ok(HostAppReport {
        drift,
        drift_count: r.drift_count,
        drift_digest: bounded(r.drift_digest),
        app: r.app,
        running_version: bounded(r.running_version),
        running_digest: bounded(r.running_digest),
        state: r.state,
        health: super::health_from_proto(r.health),
        health_reason: bounded(r.health_reason),
        env_check: r.env_check,
        missing_env: r.missing_env.into_iter().map(bounded).collect(),
        last_error: bounded(r.last_error),
        failed_version: bounded(r.failed_version),
        failed_digest: bounded(r.failed_digest),
        generation: r.generation,
    })
}

/// A host's word on the apps it refused: app names checked, reasons bounded.
fn refused_from_proto(
    refused: std::collections::HashMap<String, String>,
) -> Result<std::collections::BTreeMap<String, String>, Status> {
    if refused.len() > MAX_APPS_PER_HOST {
        return Err(Status::invalid_argument(format!(
            "at most {MAX_APPS_PER_HOST} refused apps"
        )));
    }
    refused
        .into_iter()
        .map(|(app, why)| {
            validate_name(NameKind::App, &app)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            Ok((app, bounded_to(why, MAX_REFUSAL)))
        })
        .collect()
}

/// The identity a session runs under, fixed by its hello.
struct SessionHost {
    tenant: String,
    host: String,
    environment: String,
    apps: Vec<String>,
    /// The declared-apps revision the host said it runs.
    apps_revision: u64,
    /// Directive sequence numbers reserved for this session.
    sequences: crate::store::SequenceBlock,
}

impl AgentsService {
    /// Accepts a hello from the host `id` (its certificate): what the agent
    /// says about itself must agree with it, and never overrides it.
    async fn accept_hello(&self, hello: Hello, id: AgentId) -> Result<SessionHost, Status> {
        let store = &self.ctx.store;
        for (what, said, is) in [
            ("host", &hello.host, &id.host),
            ("tenant", &hello.tenant, &id.tenant),
            ("environment", &hello.environment, &id.environment),
        ] {
            if !said.is_empty() && said != is {
                return Err(Status::permission_denied(format!(
                    "this agent's certificate is for {what} {is:?}, but its config says {said:?}"
                )));
            }
        }
        let AgentId {
            tenant,
            host: hello_host,
            environment: hello_env,
            cert: _,
        } = id;
        if hello.apps.len() > MAX_APPS_PER_HOST {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_APPS_PER_HOST} apps per host"
            )));
        }
        let apps_revision = hello.apps_revision;
        let refused = refused_from_proto(hello.apps_refused)?;
        // One write: the agent, when it was seen, the declaration it runs,
        // and the session's first directive sequence numbers.
        let sequences = store
            .host_hello(
                &tenant,
                &hello_host,
                &bounded(hello.agent_version),
                &bounded_to(hello.os, MAX_OS),
                (apps_revision, &refused),
                hello.directive_sequence,
            )
            .await
            .map_err(ControllerError::from)?;
        let mut apps = Vec::new();
        for r in hello.apps {
            let report = report_from_proto(r)?;
            apps.push(report.app.clone());
            store
                .record_report(&tenant, &hello_host, &report)
                .await
                .map_err(ControllerError::from)?;
        }
        store
            .retain_host_apps(&tenant, &hello_host, &apps)
            .await
            .map_err(ControllerError::from)?;
        Ok(SessionHost {
            tenant,
            host: hello_host,
            environment: hello_env,
            apps,
            apps_revision,
            sequences,
        })
    }

    /// The session's next directive sequence number: from its block, or a
    /// new block once that is spent.
    async fn next_sequence(&self, h: &mut SessionHost) -> Result<u64, ControllerError> {
        if let Some(n) = h.sequences.take() {
            return Ok(n);
        }
        h.sequences = self
            .ctx
            .store
            .reserve_directive_seqs(&h.tenant, &h.host)
            .await?;
        h.sequences
            .take()
            .ok_or_else(|| ControllerError::Internal("an empty sequence block".into()))
    }

    /// What this host should run of each of its apps in `scope`, where it
    /// differs from what was last sent: the environment's desired release, unless a rollout
    /// holds the host back at the previous one (its step is not admitted
    /// yet). Manifests are loaded for changed apps only, and each goes out in
    /// its own message so no message carries more than one manifest.
    async fn changed_desired(
        &self,
        h: &mut SessionHost,
        sent: &HashMap<String, (String, u64)>,
        scope: &Recompute,
    ) -> Result<Vec<DesiredApp>, ControllerError> {
        let store = &self.ctx.store;
        let mut out = Vec::new();
        // Taken before anything is read: a change after it wakes this
        // session again, and the reads shared with other sessions are made
        // at it or after.
        let epoch = self.ctx.hub.epoch();
        // With each app's placement: one statement per change, for every
        // session of the environment.
        let desired = self
            .ctx
            .reads
            .desired_generations(store, epoch, &h.tenant, &h.environment)
            .await?;
        let labels = if desired.iter().any(|d| d.selector.is_some()) {
            store.host_labels(&h.tenant, &h.host).await?
        } else {
            Default::default()
        };
        for crate::store::DesiredGeneration {
            app,
            generation,
            selector,
        } in desired
        {
            if !h.apps.contains(&app) || !scope.covers(&app) {
                continue;
            }
            // A selector that leaves this host out: it gets no releases of the app.
            if selector.is_some_and(|sel| !crate::fleet::selector_matches(&sel, &labels)) {
                continue;
            }
            let row = match store
                .held_at(&h.tenant, &app, &h.environment, &h.host)
                .await?
            {
                // Held back with nothing to keep (a first release): nothing yet.
                Some((version, _)) if version.is_empty() => None,
                Some((version, held_generation)) => {
                    if sent.get(&app) == Some(&(version.clone(), held_generation)) {
                        continue;
                    }
                    store
                        .release_as_desired(&h.tenant, &app, &version, held_generation)
                        .await?
                }
                None => {
                    if sent.get(&app).is_some_and(|(_, g)| *g == generation) {
                        continue;
                    }
                    self.ctx
                        .reads
                        .desired_app(store, epoch, &h.tenant, &h.environment, &app)
                        .await?
                }
            };
            if let Some(d) = row {
                out.push(self.signed_directive(h, d).await?);
            }
        }
        Ok(out)
    }
}

impl AgentsService {
    /// The apps declared for this host, signed, unless it was sent already
    /// at this revision with these settings (`sent`).
    async fn changed_declaration(
        &self,
        h: &mut SessionHost,
        sent: &mut Option<(u64, String)>,
    ) -> Result<Option<DeclaredApps>, ControllerError> {
        let (revision, declaration) =
            crate::declare::host_declaration(&self.ctx.store, &h.tenant, &h.environment, &h.host)
                .await?;
        // Nothing was ever declared here and the host runs no declaration:
        // nothing to say (and no sequence number spent per connect).
        if revision == 0 && h.apps_revision == 0 && declaration.is_empty() {
            return Ok(None);
        }
        let settings = artifact::settings::declaration_bytes(&declaration);
        let digest = trust::sha256(&settings);
        let key = (revision, digest);
        if sent.as_ref() == Some(&key) {
            return Ok(None);
        }
        let sequence = self.next_sequence(h).await?;
        let expires_at = crate::store::now() + self.ctx.directive_ttl.as_secs() as i64;
        let statement = trust::sign::AppsDeclaration {
            tenant: &h.tenant,
            host: &h.host,
            environment: &h.environment,
            revision,
            sequence,
            expires_at,
            settings_digest: &key.1,
        };
        let signature = self.ctx.directive_key.sign(&statement.bytes()).sig;
        *sent = Some(key);
        Ok(Some(DeclaredApps {
            tenant: h.tenant.clone(),
            host: h.host.clone(),
            environment: h.environment.clone(),
            revision,
            sequence,
            expires_at,
            settings,
            signature,
        }))
    }

    /// The desired release as a directive for this one host: a fresh sequence
    /// number, an expiry, and the controller's signature over both.
    async fn signed_directive(
        &self,
        h: &mut SessionHost,
        d: crate::store::DesiredRow,
    ) -> Result<DesiredApp, ControllerError> {
        let sequence = self.next_sequence(h).await?;
        let expires_at = crate::store::now() + self.ctx.directive_ttl.as_secs() as i64;
        let (rollback_authorization, rollback_terms) =
            super::releases::stored_authorization(&d.authorization);
        let apply_migrations = d.has_migrations
            && self
                .ctx
                .store
                .migrations_allowed(&h.tenant, &h.environment, &d.app, &d.version)
                .await?;
        let directive = trust::sign::Directive {
            tenant: &h.tenant,
            host: &h.host,
            environment: &h.environment,
            app: &d.app,
            version: &d.version,
            manifest_digest: &d.manifest_digest,
            counter: d.counter,
            generation: d.generation,
            sequence,
            expires_at,
            rollback_authorized: !rollback_authorization.is_empty(),
            apply_migrations,
        };
        let directive_signature = self.ctx.directive_key.sign(&directive.bytes()).sig;
        crate::metrics::METRICS.directives_sent.inc();
        Ok(DesiredApp {
            release_signatures: super::releases::stored_signatures(&d.signatures),
            rollback_authorization,
            rollback_terms,
            tenant: h.tenant.clone(),
            host: h.host.clone(),
            environment: h.environment.clone(),
            sequence,
            expires_at,
            directive_signature,
            counter: d.counter,
            app: d.app,
            version: d.version,
            manifest_digest: d.manifest_digest,
            blob_digest: d.blob_digest,
            blob_size: d.blob_size,
            manifest_size: d.manifest_size,
            // Fetched by digest once per release (FetchManifest), not
            // carried in every directive.
            manifest: Vec::new(),
            generation: d.generation,
            apply_migrations,
        })
    }
}

#[tonic::async_trait]
impl Agents for AgentsService {
    type SessionStream = BoxStream<ControllerMessage>;
    type FetchBlobStream = BoxStream<BlobChunk>;
    type FetchObjectsStream = BoxStream<BlobChunk>;

    async fn session(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let peer = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let id = auth::agent(&self.ctx, &req).await?;
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10s"))??;
        let Some(AgentMessage {
            msg: Some(agent_message::Msg::Hello(hello)),
        }) = first
        else {
            return Err(Status::invalid_argument("a session must start with hello"));
        };
        let cert = id.cert.clone();
        let mut host = self.accept_hello(hello, id).await?;
        let session = self.ctx.hub.connect(
            &host.tenant,
            &host.host,
            &host.environment,
            &host.apps,
            &cert,
        );
        // A revocation or a new certificate that landed after this call's
        // certificate was checked found no session here to clear: asked
        // again now that the session stands for the certificate (one that
        // lands from now on finds it, see `Hub::identity`).
        if !cert.is_empty() {
            let still = self.ctx.store.cert_owner(&cert).await;
            if !matches!(&still, Ok(Some(owner)) if !owner.revoked) {
                self.ctx
                    .hub
                    .disconnect(&host.tenant, &host.host, session.id);
                return Err(match still {
                    Err(e) => ControllerError::from(e).into(),
                    Ok(_) => Status::unauthenticated(
                        "this certificate was replaced or revoked: enroll again",
                    ),
                });
            }
        }
        // A host coming back may unblock a rollout step: its hello reported
        // every app.
        for app in &host.apps {
            self.ctx.hub.host_reported(&host.tenant, &host.host, app);
        }
        self.ctx.hub.rollouts_changed();
        let session_id = session.id;
        tracing::info!(tenant = %host.tenant, host = %host.host, env = %host.environment, %peer, "agent connected");

        // Boxed items: a channel allocates its slots 32 at a time, whatever
        // its capacity, and a message or a Status is a few hundred bytes.
        let (tx, rx) = mpsc::channel::<Box<Result<ControllerMessage, Status>>>(8);
        let welcome = ControllerMessage {
            msg: Some(controller_message::Msg::Welcome(Welcome {
                heartbeat_secs: self.ctx.heartbeat_secs,
            })),
        };
        tx.send(Box::new(Ok(welcome)))
            .await
            .map_err(|_| Status::cancelled("agent went away"))?;

        let svc = AgentsService {
            ctx: self.ctx.clone(),
        };
        let shutdown = self.ctx.shutdown.clone();
        // The session's own task: an idle one holds about 2.6 KiB here.
        let task = async move {
            let mut asks = session.take_asks();
            let mut sent: HashMap<String, (String, u64)> = HashMap::new();
            let mut sent_apps: Option<(u64, String)> = None;
            // Everything at first; then what the hub says changed.
            let mut push = Recompute::All;
            let mut push_declared = true;
            'session: loop {
                let scope = std::mem::take(&mut push);
                // The declared apps first: a change restarts the agent's
                // runners and this session with them.
                // (A host's labels changed: All, as its placement may have.)
                if std::mem::take(&mut push_declared) || scope == Recompute::All {
                    match Box::pin(svc.changed_declaration(&mut host, &mut sent_apps)).await {
                        Ok(Some(apps)) => {
                            let msg = ControllerMessage {
                                msg: Some(controller_message::Msg::Apps(apps)),
                            };
                            if tx.send(Box::new(Ok(msg))).await.is_err() {
                                break 'session;
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::error!(host = %host.host, error = %e, "computing declared apps failed")
                        }
                    }
                }
                if scope != Recompute::Nothing {
                    // Boxed: an idle session's task stays small (the
                    // recompute's store futures live only while it runs).
                    match Box::pin(svc.changed_desired(&mut host, &sent, &scope)).await {
                        Ok(apps) => {
                            for app in apps {
                                let key = (app.version.clone(), app.generation);
                                let name = app.app.clone();
                                let msg = ControllerMessage {
                                    msg: Some(controller_message::Msg::Desired(DesiredState {
                                        apps: vec![app],
                                    })),
                                };
                                if tx.send(Box::new(Ok(msg))).await.is_err() {
                                    break 'session;
                                }
                                sent.insert(name, key);
                            }
                        }
                        Err(e) => {
                            tracing::error!(host = %host.host, error = %e, "computing desired state failed")
                        }
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    (scope, declared) = session.changed() => {
                        push = scope;
                        push_declared = declared;
                    }
                    Some(ask) = async { asks.as_mut()?.recv().await }, if asks.is_some() => {
                        let msg = ControllerMessage { msg: Some(controller_message::Msg::Logs(logs_query(*ask))) };
                        if tx.send(Box::new(Ok(msg))).await.is_err() {
                            break;
                        }
                    }
                    msg = inbound.message() => match msg {
                        Ok(Some(AgentMessage { msg: Some(agent_message::Msg::Report(r)) })) => {
                            match report_from_proto(r) {
                                Ok(report) => {
                                    if !host.apps.contains(&report.app) {
                                        tracing::warn!(host = %host.host, app = %report.app, "report for an app the host did not announce");
                                        continue;
                                    }
                                    session.heard(crate::store::now());
                                    // Batched with other sessions' reports; the
                                    // writer names the host to the engine.
                                    // Boxed, as the store write below: an idle
                                    // session's task keeps only what it awaits now.
                                    if let Err(e) = Box::pin(svc.ctx.reports.record(&host.tenant, &host.host, report)).await {
                                        tracing::error!(host = %host.host, error = %e, "recording report failed");
                                    }
                                }
                                Err(status) => {
                                    let _ = tx.send(Box::new(Err(status))).await;
                                    break;
                                }
                            }
                        }
                        Ok(Some(AgentMessage { msg: Some(agent_message::Msg::AppsAck(ack)) })) => {
                            session.heard(crate::store::now());
                            let recorded = match refused_from_proto(ack.refused) {
                                Ok(refused) => Box::pin(svc.ctx.store.record_apps_ack(&host.tenant, &host.host, ack.revision, &refused)).await.map_err(|e| e.to_string()),
                                Err(status) => {
                                    let _ = tx.send(Box::new(Err(status))).await;
                                    break;
                                }
                            };
                            if let Err(e) = recorded {
                                tracing::error!(host = %host.host, error = %e, "recording declared apps ack failed");
                            }
                        }
                        // A heartbeat: memory only; the hub batches last_seen.
                        Ok(Some(_)) => session.heard(crate::store::now()),
                        Ok(None) | Err(_) => break,
                    },
                }
                if !session.is_current() {
                    tracing::info!(host = %host.host, "session replaced by a newer one");
                    break;
                }
            }
            svc.ctx.hub.disconnect(&host.tenant, &host.host, session_id);
            tracing::info!(tenant = %host.tenant, host = %host.host, "agent disconnected");
        };
        tokio::spawn(task);
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(|m| *m))))
    }

    async fn fetch_blob(
        &self,
        req: Request<FetchBlobRequest>,
    ) -> Result<Response<Self::FetchBlobStream>, Status> {
        let id = auth::agent(&self.ctx, &req).await?;
        let req = req.into_inner();
        let (digest, size) = self.tenant_blob(&id, &req.digest).await?;
        if req.offset > size {
            return Err(Status::out_of_range(format!(
                "offset {} is past the end of {digest} ({size} bytes)",
                req.offset
            )));
        }
        Ok(Response::new(Box::pin(
            self.stream_blob(digest, size, req.offset).await?,
        )))
    }

    async fn blob_url(
        &self,
        req: Request<BlobUrlRequest>,
    ) -> Result<Response<BlobUrlResponse>, Status> {
        let id = auth::agent(&self.ctx, &req).await?;
        let (digest, size) = self.tenant_blob(&id, &req.into_inner().digest).await?;
        let answer = match self.ctx.blobs.download_url(&digest, size).await {
            Some((url, ttl)) => {
                tracing::debug!(host = %id.host, %digest, "blob handed out as a presigned URL");
                BlobUrlResponse {
                    url,
                    expires_in_secs: ttl.as_secs(),
                }
            }
            None => BlobUrlResponse::default(),
        };
        Ok(Response::new(answer))
    }

    async fn fetch_objects(
        &self,
        req: Request<FetchObjectsRequest>,
    ) -> Result<Response<Self::FetchObjectsStream>, Status> {
        let id = auth::agent(&self.ctx, &req).await?;
        let req = req.into_inner();
        let (manifest, full_pack) = self.release_for_host(&id, &req.manifest_digest).await?;
        let objects: HashMap<Digest, u64> = manifest.objects().into_iter().collect();
        if req.digests.len() > objects.len() {
            return Err(Status::invalid_argument(format!(
                "{} objects asked for; release {} has {}",
                req.digests.len(),
                req.manifest_digest,
                objects.len()
            )));
        }
        let mut order = Vec::with_capacity(req.digests.len());
        let mut seen = std::collections::HashSet::new();
        for d in &req.digests {
            let digest = Digest::parse(d).map_err(|e| Status::invalid_argument(e.to_string()))?;
            let Some(size) = objects.get(&digest) else {
                return Err(Status::permission_denied(format!(
                    "object {digest} is not a file of release {}",
                    req.manifest_digest
                )));
            };
            if !seen.insert(digest.clone()) {
                return Err(Status::invalid_argument(format!(
                    "object {digest} asked twice"
                )));
            }
            order.push((digest, *size));
        }
        // Every object, in order: what the release's full pack holds. A host
        // with none of the files gets that pack, built now if the release was
        // published as a delta and nobody needed it before.
        if order == manifest.objects() {
            let present = match &full_pack {
                Some((p, _)) => self.ctx.blobs.present(p).await,
                None => false,
            };
            let (pack, size) = match full_pack.filter(|_| present) {
                Some(found) => found,
                None => crate::packs::ensure(&self.ctx, &id.tenant, &manifest, false).await?,
            };
            return Ok(Response::new(Box::pin(
                self.stream_blob(pack, size, 0).await?,
            )));
        }
        let digests: Vec<Digest> = order.iter().map(|(d, _)| d.clone()).collect();
        crate::packs::refile_lost(&self.ctx, &id.tenant, &digests).await?;
        let store = self
            .ctx
            .blobs
            .tenant_objects(&id.tenant)
            .map_err(ControllerError::from)?;
        let chunks = crate::objects::stream_pack(store, order, proto::CHUNK_BYTES);
        let stream = ReceiverStream::new(chunks).map(|c| match c {
            Ok(data) => {
                crate::metrics::METRICS
                    .blob_bytes_served
                    .inc_by(data.len() as u64);
                Ok(BlobChunk { data })
            }
            Err(artifact::PackError::Changed(path)) => Err(Status::data_loss(format!(
                "object {} is corrupt on the controller's disk; moved aside: publish the release again to repair it",
                path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
            ))),
            Err(e) => Err(Status::internal(format!("object store: {e}"))),
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn fetch_manifest(
        &self,
        req: Request<FetchManifestRequest>,
    ) -> Result<Response<FetchManifestResponse>, Status> {
        let id = auth::agent(&self.ctx, &req).await?;
        let req = req.into_inner();
        let (_, bytes, _, _) = self.release_bytes_for_host(&id, &req.digest).await?;
        // The base is used only if this host may read it too.
        let base = match req.base_digest.as_str() {
            "" => None,
            b => self
                .release_bytes_for_host(&id, b)
                .await
                .ok()
                .map(|(_, m, _, _)| m),
        };
        let size = bytes.len() as u64;
        let used = base.is_some();
        let compressed = tokio::task::spawn_blocking(move || {
            artifact::manifest::compress(&bytes, base.as_deref())
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::internal(format!("compress manifest: {e}")))?;
        let base_digest = if used { req.base_digest } else { String::new() };
        Ok(Response::new(FetchManifestResponse {
            compressed,
            base_digest,
            size,
        }))
    }

    async fn send_logs(
        &self,
        req: Request<Streaming<LogChunk>>,
    ) -> Result<Response<SendLogsResponse>, Status> {
        let id = auth::agent(&self.ctx, &req).await?;
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no log chunk within 10s"))??
            .ok_or_else(|| Status::invalid_argument("an empty answer"))?;
        let Some(answers) = self.ctx.logs.answer(first.query, &id.tenant, &id.host) else {
            return Err(Status::not_found(format!(
                "no log query {} open for this host",
                first.query
            )));
        };
        let mut chunk = first;
        loop {
            let msg = match host_log(chunk) {
                Ok(msg) => msg,
                Err(status) => {
                    // Whoever asked hears why the output stops.
                    let why = format!("answer refused: {}", status.message());
                    let _ = answers.send(HostLog::Error(why)).await;
                    return Err(status);
                }
            };
            let last = matches!(msg, HostLog::Error(_));
            if answers.send(msg).await.is_err() || last {
                break;
            }
            // Whoever asked may go away while the host has nothing to say.
            chunk = tokio::select! {
                _ = answers.closed() => break,
                next = inbound.message() => match next {
                    Ok(Some(c)) => c,
                    Ok(None) => break,
                    Err(status) => {
                        let why = crate::sanitize::text(status.message(), MAX_TEXT);
                        let _ = answers.send(HostLog::Error(format!("answer ended: {why}"))).await;
                        return Err(status);
                    }
                },
            };
        }
        Ok(Response::new(SendLogsResponse {}))
    }

    async fn renew(&self, req: Request<RenewRequest>) -> Result<Response<EnrollResponse>, Status> {
        let id = auth::agent(&self.ctx, &req).await?;
        let csr = req.into_inner().csr_pem;
        let resp = super::enrollment::issue(&self.ctx, &id, &csr).await?;
        tracing::info!(tenant = %id.tenant, host = %id.host, not_after = resp.not_after, "agent certificate renewed");
        Ok(Response::new(resp))
    }
}

impl AgentsService {
    /// A release's app, manifest bytes and blob, if the calling host may read
    /// it: a release of its tenant, of an app its session runs. Anything else
    /// is refused the same way whether or not it exists.
    async fn release_bytes_for_host(
        &self,
        id: &AgentId,
        manifest_digest: &str,
    ) -> Result<(String, Vec<u8>, String, i64), Status> {
        let refused = || {
            Status::permission_denied(format!(
                "release {manifest_digest} is not one this host runs"
            ))
        };
        let row = self
            .ctx
            .store
            .release_manifest(&id.tenant, manifest_digest)
            .await
            .map_err(ControllerError::from)?
            .ok_or_else(refused)?;
        if !self.ctx.hub.runs(&id.tenant, &id.host, &row.0) {
            return Err(refused());
        }
        Ok(row)
    }

    /// A stored blob as chunks from `offset`, checked at rest while it
    /// streams: a corrupt blob ends the stream with DataLoss (never OK) and
    /// is moved aside, so it reads as missing until a publish uploads it
    /// again.
    async fn stream_blob(
        &self,
        digest: Digest,
        size: u64,
        offset: u64,
    ) -> Result<impl tokio_stream::Stream<Item = Result<BlobChunk, Status>> + use<>, Status> {
        let chunks = self
            .ctx
            .blobs
            .read_verified(digest.clone(), size, offset, proto::CHUNK_BYTES)
            .await
            .map_err(|e| match e {
                crate::blobs::BlobError::Corrupt { .. } => Status::data_loss(e.to_string()),
                e => {
                    tracing::error!(digest = %digest, error = %e, "blob listed in the store but unreadable");
                    Status::not_found(format!("no blob {digest}"))
                }
            })?;
        Ok(ReceiverStream::new(chunks).map(move |c| match c {
            Ok(data) => {
                crate::metrics::METRICS
                    .blob_bytes_served
                    .inc_by(data.len() as u64);
                Ok(BlobChunk { data })
            }
            Err(e) => Err(Status::data_loss(format!("reading blob: {e}"))),
        }))
    }

    /// The blob `digest` names and its size, through the host's tenant's own
    /// link only: another tenant's blob is "missing".
    async fn tenant_blob(&self, id: &AgentId, digest: &str) -> Result<(Digest, u64), Status> {
        let parsed = Digest::parse(digest).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let size = self
            .ctx
            .store
            .tenant_blob_size(&id.tenant, digest)
            .await
            .map_err(ControllerError::from)?
            .ok_or_else(|| Status::not_found(format!("no blob {parsed}")))?;
        Ok((parsed, size))
    }

    /// The release's manifest, parsed, and (format 2) its full pack.
    async fn release_for_host(
        &self,
        id: &AgentId,
        manifest_digest: &str,
    ) -> Result<(artifact::Manifest, Option<(Digest, u64)>), Status> {
        let (_, bytes, blob, size) = self.release_bytes_for_host(id, manifest_digest).await?;
        let manifest = artifact::Manifest::from_canonical_bytes(
            &bytes,
            artifact::unpack::MAX_ENTRIES,
            artifact::unpack::MAX_TOTAL_BYTES,
        )
        .map_err(|e| Status::internal(format!("stored manifest: {e}")))?;
        let full_pack = match (&manifest.blob, Digest::parse(&blob)) {
            (None, Ok(d)) => Some((d, size as u64)),
            _ => None,
        };
        Ok((manifest, full_pack))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_drift_lines_are_cut_not_refused() {
        let report = report_from_proto(AppReport {
            app: "web".into(),
            drift: vec![
                format!("added {}", "x/".repeat(2000)),
                "changed a\nb".into(),
            ],
            drift_count: 2,
            ..Default::default()
        })
        .expect("a host is never cut off for a long path");
        assert!(report.drift[0].len() <= MAX_DRIFT_LINE);
        assert!(report.drift[0].ends_with(crate::sanitize::CUT_MARKER));
        assert_eq!(report.drift[1], "changed a\\nb");
        let many = report_from_proto(AppReport {
            app: "web".into(),
            drift: vec!["changed a".into(); 500],
            drift_count: 500,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(many.drift.len(), MAX_DRIFT_LINES);
    }
}
