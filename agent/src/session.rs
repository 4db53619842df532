//! The agent's one long-lived session with the controller: hello with what runs,
//! desired state pushed down the moment it changes, status reports pushed up as
//! they change, heartbeats. Reconnects with capped, jittered backoff; apps keep
//! running whatever the controller does.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use proto::v1::agents_client::AgentsClient;
use proto::v1::{
    AgentMessage, AppReport, AppsAck, DeclaredApps, DesiredApp, Heartbeat, Hello, LogChunk,
    LogsQuery, agent_message, controller_message,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::backoff::Backoff;
use crate::config::AgentConfig;
use crate::declared::Declared;
use crate::directive::{Desired, Directive, DirectiveGuard};
use crate::identity::{self, Identity};
use crate::state::AppStatus;

const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Log queries this host answers at once.
const MAX_LOG_QUERIES: usize = 8;
static OPEN_LOG_QUERIES: AtomicUsize = AtomicUsize::new(0);

/// The innermost cause of an error ("Connection refused" rather than "transport error").
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// PRETTY_NAME from /etc/os-release, for the inventory.
fn os_name() -> String {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').chars().take(128).collect())
        .unwrap_or_default()
}

/// What this host says about the declaration it took.
fn ack(d: &Declared) -> AppsAck {
    AppsAck {
        revision: d.revision,
        refused: d.refused.clone().into_iter().collect(),
    }
}

pub struct Session {
    /// The config this host runs: `local` with the declared apps it took.
    pub cfg: Arc<AgentConfig>,
    /// The config from the host's own files.
    pub local: Arc<AgentConfig>,
    /// What this host took of the controller's declared apps, and where a
    /// change of it goes (the agent restarts its runners with it).
    pub declared: std::sync::Mutex<Declared>,
    pub declared_tx: mpsc::Sender<Declared>,
    pub desired: HashMap<String, watch::Sender<Option<Desired>>>,
    pub board: watch::Sender<BTreeMap<String, AppStatus>>,
    pub channel: watch::Sender<Option<Channel>>,
    pub identity: std::sync::Mutex<Identity>,
    pub guard: std::sync::Mutex<DirectiveGuard>,
}

/// How often a live session checks whether its certificate is due for renewal.
const RENEWAL_CHECK: Duration = Duration::from_secs(30);

impl Session {
    /// Keeps a session with one of the controllers: the one in use until
    /// it fails, then the next in the list after a short jitter (a dead
    /// replica's agents spread over the others instead of landing in the
    /// same instant), backing off only once every one failed in a row.
    pub async fn run(self, shutdown: CancellationToken) {
        let urls: Vec<String> = self
            .cfg
            .controller_urls()
            .into_iter()
            .map(String::from)
            .collect();
        let mut backoff = Backoff::new(Duration::from_millis(200), MAX_BACKOFF).jittered();
        let mut at = 0;
        let mut failed_in_a_row = 0;
        loop {
            let url = &urls[at];
            let mut connected = false;
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.serve(url, &mut backoff, &shutdown, &mut connected) => r,
            };
            self.channel.send_replace(None);
            if shutdown.is_cancelled() {
                return;
            }
            let Err(e) = result else {
                continue; // a renewed certificate: again, at once
            };
            failed_in_a_row = if connected { 1 } else { failed_in_a_row + 1 };
            at = (at + 1) % urls.len();
            let wait = if failed_in_a_row < urls.len() {
                Duration::from_millis(fastrand::u64(0..=1_000))
            } else {
                failed_in_a_row = 0;
                backoff.next_wait()
            };
            tracing::warn!(controller = %url, error = %e, retry_in = ?wait, next = %urls[at], "controller session ended");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn report(&self, app: &str, statuses: &BTreeMap<String, AppStatus>) -> AppReport {
        statuses
            .get(app)
            .map(AppStatus::to_report)
            .unwrap_or_else(|| AppReport {
                app: app.to_string(),
                ..Default::default()
            })
    }

    /// One session with the controller at `url`; `connected` once it
    /// welcomed this host.
    async fn serve(
        &self,
        url: &str,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
        connected: &mut bool,
    ) -> anyhow::Result<()> {
        let id = self.identity.lock().expect("identity lock").clone();
        let channel = trust::tls::connect(url, Some(id.tls()?), false)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if id.needs_renewal(identity::now()) {
            let renewed = identity::renew(&self.cfg, &id, channel.clone()).await?;
            *self.identity.lock().expect("identity lock") = renewed;
            // Reconnect with the new certificate.
            backoff.reset();
            return Ok(());
        }
        let mut client = AgentsClient::new(channel.clone())
            .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(proto::MAX_MESSAGE_BYTES);

        let mut board = self.board.subscribe();
        let mut sent: BTreeMap<String, AppReport> = BTreeMap::new();
        let apps: Vec<AppReport> = {
            let statuses = board.borrow_and_update();
            self.cfg
                .apps
                .keys()
                .map(|a| self.report(a, &statuses))
                .collect()
        };
        for r in &apps {
            sent.insert(r.app.clone(), r.clone());
        }
        let (tx, rx) = mpsc::channel::<AgentMessage>(32);
        let (apps_revision, apps_refused) = {
            let d = self.declared.lock().expect("declared lock");
            (d.revision, d.refused.clone().into_iter().collect())
        };
        let hello = Hello {
            apps_revision,
            apps_refused,
            host: self.cfg.host.clone(),
            tenant: self.cfg.tenant.clone(),
            environment: self.cfg.environment.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            apps,
            os: os_name(),
            directive_sequence: self.guard.lock().expect("guard lock").highest(),
        };
        tx.send(AgentMessage {
            msg: Some(agent_message::Msg::Hello(hello)),
        })
        .await?;
        let mut inbound = client
            .session(ReceiverStream::new(rx))
            .await
            .map_err(|s| anyhow::anyhow!("controller refused the session: {}", s.message()))?
            .into_inner();
        self.channel.send_replace(Some(channel));
        let mut heartbeat = tokio::time::interval(Duration::from_secs(10));
        heartbeat.reset();
        // Check a few times per certificate life, at least every RENEWAL_CHECK.
        let life = Duration::from_secs((id.not_after - id.issued_at).max(6) as u64);
        let mut renewal = tokio::time::interval((life / 6).min(RENEWAL_CHECK));
        renewal.reset();

        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                msg = inbound.message() => {
                    let msg = msg.map_err(|s| anyhow::anyhow!("session: {}", s.message()))?;
                    let Some(msg) = msg else { anyhow::bail!("controller closed the session") };
                    match msg.msg {
                        Some(controller_message::Msg::Welcome(w)) => {
                            tracing::info!(controller = %url, host = %self.cfg.host, "connected to controller");
                            crate::join::mark_connected(&self.cfg.state_dir, &self.cfg.controller);
                            *connected = true;
                            backoff.reset();
                            heartbeat = tokio::time::interval(Duration::from_secs(u64::from(w.heartbeat_secs.clamp(1, 300))));
                            heartbeat.reset();
                        }
                        Some(controller_message::Msg::Desired(state)) => self.apply_desired(&mut client, state.apps).await?,
                        Some(controller_message::Msg::Apps(apps)) => {
                            if let Some((ack, change)) = self.apply_declared(apps) {
                                // Said first: the change restarts this session.
                                tx.send(AgentMessage { msg: Some(agent_message::Msg::AppsAck(ack)) }).await?;
                                if let Some(next) = change {
                                    let _ = self.declared_tx.send(next).await;
                                }
                            }
                        }
                        Some(controller_message::Msg::Logs(q)) => self.answer_logs(client.clone(), q),
                        None => {}
                    }
                }
                changed = board.changed() => {
                    if changed.is_err() { return Ok(()); }
                    let updates: Vec<AppReport> = {
                        let statuses = board.borrow_and_update();
                        self.cfg.apps.keys().map(|a| self.report(a, &statuses)).filter(|r| sent.get(&r.app) != Some(r)).collect()
                    };
                    for r in updates {
                        sent.insert(r.app.clone(), r.clone());
                        tx.send(AgentMessage { msg: Some(agent_message::Msg::Report(r)) }).await?;
                    }
                }
                _ = renewal.tick() => {
                    if id.needs_renewal(identity::now()) {
                        tracing::info!("certificate due for renewal; reconnecting");
                        return Ok(());
                    }
                }
                _ = heartbeat.tick() => {
                    tx.send(AgentMessage { msg: Some(agent_message::Msg::Heartbeat(Heartbeat {})) }).await?;
                }
            }
        }
    }

    /// Answers a log query on a `SendLogs` stream of its own (`logs::show`
    /// on a blocking thread, through a rate-bounded `logs::Sink`); at most
    /// `MAX_LOG_QUERIES` at once. Ends when the query is done or the
    /// controller answers the stream (whoever asked went away).
    fn answer_logs(&self, mut client: AgentsClient<Channel>, q: LogsQuery) {
        let id = q.id;
        let chunk = move |batch: crate::logs::Batch, error: String| LogChunk {
            query: id,
            written_at: if batch.times.iter().any(|t| *t > 0) {
                batch.times
            } else {
                Vec::new()
            },
            lines: batch.lines,
            error,
        };
        let (out, out_rx) = mpsc::channel::<LogChunk>(4);
        let mut call =
            tokio::spawn(async move { client.send_logs(ReceiverStream::new(out_rx)).await });
        let open = OPEN_LOG_QUERIES.fetch_add(1, Ordering::SeqCst);
        if open >= MAX_LOG_QUERIES {
            OPEN_LOG_QUERIES.fetch_sub(1, Ordering::SeqCst);
            let error = format!("{MAX_LOG_QUERIES} log queries already open on this host");
            let _ = out.try_send(chunk(Default::default(), error));
            return;
        }
        let cfg = self.cfg.clone();
        tokio::spawn(async move {
            let stop = Arc::new(AtomicBool::new(false));
            let (tx, mut rx) = mpsc::channel::<crate::logs::Batch>(4);
            let max_bytes = match q.max_bytes {
                // As before bounds existed: -n and the follow rate bound it.
                0 => usize::MAX,
                n => usize::try_from(n)
                    .unwrap_or(usize::MAX)
                    .min(crate::logs::MAX_ANSWER_BYTES),
            };
            let query = crate::logs::Query {
                process: Some(q.process).filter(|p| !p.is_empty()),
                lines: q.lines as usize,
                follow: q.follow,
                grep: Some(q.grep).filter(|g| !g.is_empty()),
                since: Some(Duration::from_secs(q.since_secs)).filter(|d| !d.is_zero()),
                until: Some(Duration::from_secs(q.until_secs)).filter(|d| !d.is_zero()),
                deadline: Some(Duration::from_secs(q.deadline_secs.into()))
                    .filter(|d| !d.is_zero()),
                deploy_log: q.deploy_log,
                max_bytes,
            };
            let worker = tokio::task::spawn_blocking({
                let stop = stop.clone();
                move || {
                    let mut sink = crate::logs::Sink::new(tx, max_bytes);
                    let r = crate::logs::show(&cfg, &q.app, &query, &mut sink, &stop);
                    r.and_then(|()| {
                        std::io::Write::flush(&mut sink).map_err(|_| crate::logs::LogsError::Closed)
                    })
                }
            });
            // Owns the worker's channel: dropped with it, which a blocked
            // worker sees as a closed pipe.
            let forward = {
                let out = out.clone();
                async move {
                    // The first chunk opens the answer.
                    out.send(chunk(Default::default(), String::new())).await?;
                    while let Some(batch) = rx.recv().await {
                        out.send(chunk(batch, String::new())).await?;
                    }
                    match worker.await {
                        Ok(Err(crate::logs::LogsError::Closed)) | Ok(Ok(())) => {}
                        Ok(Err(e)) => out.send(chunk(Default::default(), e.to_string())).await?,
                        Err(e) => out.send(chunk(Default::default(), e.to_string())).await?,
                    }
                    Ok::<_, mpsc::error::SendError<LogChunk>>(())
                }
            };
            let answered = tokio::select! {
                _ = forward => false,
                // The controller answered (or the call failed): nobody
                // reads any more.
                _ = out.closed() => false,
                _ = &mut call => true,
            };
            stop.store(true, Ordering::Relaxed);
            drop(out);
            if !answered {
                let _ = call.await;
            }
            OPEN_LOG_QUERIES.fetch_sub(1, Ordering::SeqCst);
        });
    }

    /// Takes what the controller declares for this host (signature checked,
    /// then app by app: `Declared::take`), keeps it on disk, and hands a
    /// change to the agent, which restarts its runners with it. Returns the
    /// acknowledgement to send and the change to hand on (None: the message
    /// was refused whole).
    fn apply_declared(&self, d: DeclaredApps) -> Option<(AppsAck, Option<Declared>)> {
        let id = self.identity.lock().expect("identity lock").clone();
        let checked =
            self.guard
                .lock()
                .expect("guard lock")
                .check_declaration(&id, &d, identity::now());
        if let Err(why) = checked {
            tracing::warn!(revision = d.revision, reason = %why, "declared apps refused; nothing changes");
            return None;
        }
        let incoming = match artifact::settings::parse_declaration(&d.settings) {
            Ok(apps) => apps,
            Err(why) => {
                tracing::warn!(revision = d.revision, reason = %why, "declared apps refused; nothing changes");
                return None;
            }
        };
        let next = {
            let mut cur = self.declared.lock().expect("declared lock");
            let next = cur.take(&self.local, d.revision, incoming);
            if next == *cur {
                return Some((ack(&next), None));
            }
            if let Err(e) = next.save(&self.cfg.state_dir) {
                tracing::error!(error = %e, "declared apps not kept; nothing changes");
                return None;
            }
            // Kept, not yet acknowledged nor applied: a restart applies it.
            crate::failpoint::hit("declared-saved");
            *cur = next.clone();
            next
        };
        tracing::info!(revision = next.revision, apps = ?next.apps.keys().collect::<Vec<_>>(), refused = ?next.refused.keys().collect::<Vec<_>>(), "declared apps taken");
        Some((ack(&next), Some(next)))
    }

    /// Hands each checked directive to its app's runner, its manifest
    /// fetched by digest first. A manifest that cannot be fetched ends the
    /// session: the controller sends the desired state again on reconnect.
    async fn apply_desired(
        &self,
        client: &mut AgentsClient<Channel>,
        apps: Vec<DesiredApp>,
    ) -> anyhow::Result<()> {
        let id = self.identity.lock().expect("identity lock").clone();
        for mut d in apps {
            let checked = self
                .guard
                .lock()
                .expect("guard lock")
                .check(&id, &d, identity::now());
            if let Err(why) = checked {
                tracing::warn!(app = %d.app, version = %d.version, reason = %why, "directive refused; nothing changes");
                continue;
            }
            let Some(tx) = self.desired.get(&d.app) else {
                tracing::warn!(app = %d.app, "desired state for an app this host does not run; ignored");
                continue;
            };
            if d.manifest.is_empty() && !d.manifest_digest.is_empty() {
                let cache = crate::manifests::Manifests::new(&self.cfg.state_dir, &d.app);
                d.manifest = cache
                    .get(client, &d.manifest_digest, d.manifest_size)
                    .await
                    .map_err(|e| anyhow::anyhow!("{}: {e}", d.app))?;
            }
            let (app, version, generation) = (d.app.clone(), d.version.clone(), d.generation);
            let desired = Directive::parse(d);
            let target = desired.target();
            tx.send_if_modified(|cur| {
                let same = cur.as_ref().is_some_and(|c| {
                    let t = c.target();
                    t.digest == target.digest && t.generation == target.generation
                });
                if !same {
                    tracing::info!(%app, %version, generation, "desired release received");
                    *cur = Some(desired);
                }
                !same
            });
        }
        Ok(())
    }
}
