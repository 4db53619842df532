//! `slipctl logs` through the agents' sessions. A query goes down each host's
//! session (`Hub::ask_logs`); the host answers on a `SendLogs` stream of its
//! own, which `LogQueries` matches by the query's id (and the host's
//! certificate) to whoever asked. A log stream never rides the session
//! itself: a host's reports and heartbeats never wait behind its output, and
//! each answer has HTTP/2 flow control of its own, so a slow reader slows
//! only the host it reads. A host whose session is on another replica is
//! asked through that replica (`relay`, over `Replicas.Logs`), one call per
//! replica, and its answer is bounded here as a host's is.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use artifact::{NameKind, validate_name};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use crate::ctx::SharedCtx;
use crate::error::ControllerError;
use crate::hub::Holder;

/// Most hosts one query reads at once (past it, name one with `--host`).
pub const MAX_HOSTS: usize = 100;
/// Most queries open on the controller at once, every tenant together, and
/// for one tenant (a query to 100 hosts is 100 queries).
pub const MAX_OPEN: usize = 256;
pub const MAX_OPEN_PER_TENANT: usize = 128;
/// Most lines `-n` may ask for per process (the agent's own bound).
pub const MAX_LINES: u32 = 10_000;
/// Longest `--grep` pattern, and the longest `--since`.
pub const MAX_PATTERN_BYTES: usize = 1024;
pub const MAX_SINCE: Duration = Duration::from_secs(90 * 24 * 3600);
/// A chunk from a host with more lines or bytes, or a longer line, is
/// refused: the agent batches at most 256 lines of at most 8 KiB (plus the
/// marker).
pub const MAX_CHUNK_LINES: usize = 512;
pub const MAX_CHUNK_BYTES: usize = 3 << 20;
pub const MAX_LINE_BYTES: usize = 9 * 1024;
/// How long a host has to open its answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of lines one host's answer may carry when a query bounds it
/// (the agent's own bound); and the longest a search may read on a host.
pub const MAX_ANSWER_BYTES: u64 = 16 << 20;
pub const MAX_SEARCH_SECS: u32 = 60;
/// A reader that takes nothing for this long is given up on.
pub const READER_STALL: Duration = Duration::from_secs(30);

/// A query for one host's agent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogAsk {
    pub id: u64,
    pub app: String,
    pub process: String,
    pub lines: u32,
    pub follow: bool,
    pub since_secs: u64,
    pub grep: String,
    /// Only lines written before this many seconds ago (0: up to now).
    pub until_secs: u64,
    /// Bytes of lines the answer carries at most (0: unbounded but for
    /// `lines` and the follow rate).
    pub max_bytes: u64,
    /// A search reads for at most this long on the host (0: its bound).
    pub deadline_secs: u32,
    /// The app's deploy log (its last `lines` steps) instead of its output.
    pub deploy_log: bool,
}

/// What a host answers.
#[derive(Debug, Clone, PartialEq)]
pub enum HostLog {
    /// Lines, and when each was written (unix seconds; empty or 0: not known).
    Lines(Vec<String>, Vec<u64>),
    /// The host cannot answer (the last message).
    Error(String),
}

/// A log query as slipctl or the dashboard asks it: which hosts, and what of
/// each.
#[derive(Debug, Clone, Default)]
pub struct LogRequest {
    pub app: String,
    /// Empty: every environment the app runs in.
    pub environment: String,
    /// Empty: every connected host that runs the app.
    pub host: String,
    pub ask: LogAsk,
}

impl LogRequest {
    /// Refuses a query past its bounds before any host hears of it.
    pub fn check(&self) -> Result<(), ControllerError> {
        let bad = |m: String| ControllerError::InvalidArgument(m);
        let a = &self.ask;
        validate_name(NameKind::App, &self.app).map_err(|e| bad(e.to_string()))?;
        if !self.environment.is_empty() {
            validate_name(NameKind::Environment, &self.environment)
                .map_err(|e| bad(e.to_string()))?;
        }
        if !self.host.is_empty() {
            validate_name(NameKind::Host, &self.host).map_err(|e| bad(format!("--host: {e}")))?;
        }
        if !a.process.is_empty() {
            validate_name(NameKind::App, &a.process).map_err(|e| bad(format!("process: {e}")))?;
        }
        if a.lines > MAX_LINES {
            return Err(bad(format!("-n {}: at most {MAX_LINES} lines", a.lines)));
        }
        for (what, secs) in [("--since", a.since_secs), ("--until", a.until_secs)] {
            if secs > MAX_SINCE.as_secs() {
                return Err(bad(format!(
                    "{what}: at most {} days",
                    MAX_SINCE.as_secs() / 86_400
                )));
            }
        }
        if a.until_secs > 0 && a.since_secs > 0 && a.until_secs >= a.since_secs {
            return Err(bad("the time range ends before it starts".into()));
        }
        if a.max_bytes > MAX_ANSWER_BYTES {
            return Err(bad(format!(
                "at most {} MiB of lines per host",
                MAX_ANSWER_BYTES >> 20
            )));
        }
        if a.deadline_secs > MAX_SEARCH_SECS {
            return Err(bad(format!(
                "a search reads for at most {MAX_SEARCH_SECS}s"
            )));
        }
        if a.grep.len() > MAX_PATTERN_BYTES {
            return Err(bad(format!("--grep: at most {MAX_PATTERN_BYTES} bytes")));
        }
        if !a.grep.is_empty() {
            pattern(&a.grep).map_err(|e| {
                let why = e.to_string();
                bad(format!(
                    "--grep: {}",
                    why.lines().last().unwrap_or("").trim()
                ))
            })?;
        }
        Ok(())
    }
}

/// A pattern compiled as the hosts compile it (linear time, bounded size).
pub fn pattern(re: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(re).size_limit(1 << 20).build()
}

/// One host's part of an answer, in the order it comes.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Lines {
        host: String,
        lines: Vec<String>,
        times: Vec<u64>,
    },
    /// The host did not answer, or stopped with this error.
    Failed { host: String, error: String },
    /// The host answered in full.
    Done { host: String },
}

/// Asks every connected host `r` names (and that runs its app) and streams
/// their answers as they come: each host's lines, then its `Done` or
/// `Failed`. The hosts asked come back too. A host whose session is on
/// another replica is asked through that replica (`Replicas.Logs`), with the
/// same bounds here. A host that does not open its answer within
/// `ANSWER_TIMEOUT`, or (a search) finish within its deadline and a margin,
/// is `Failed`; so is one whose answer outgrows `max_bytes`.
pub fn ask(
    ctx: &SharedCtx,
    tenant: &str,
    r: &LogRequest,
) -> Result<(Vec<String>, mpsc::Receiver<Answer>), ControllerError> {
    r.check()?;
    let (app, env) = (&r.app, &r.environment);
    let in_env = if env.is_empty() {
        String::new()
    } else {
        format!(" in {env}")
    };
    let mut hosts = ctx.hub.hosts_running(tenant, env, app);
    if !r.host.is_empty() {
        hosts.retain(|(h, _)| *h == r.host);
        if hosts.is_empty() {
            return Err(ControllerError::FailedPrecondition(
                if ctx.hub.connected(tenant, &r.host) {
                    format!("host {} does not run {app}{in_env}", r.host)
                } else {
                    format!("host {} is not connected", r.host)
                },
            ));
        }
    }
    if hosts.is_empty() {
        return Err(ControllerError::FailedPrecondition(format!(
            "no connected host{} runs {app}",
            if env.is_empty() {
                String::new()
            } else {
                format!(" of {env}")
            }
        )));
    }
    if hosts.len() > MAX_HOSTS {
        return Err(ControllerError::InvalidArgument(format!(
            "{} hosts run {app}{in_env}: name one with --host (at most {MAX_HOSTS} a query)",
            hosts.len()
        )));
    }
    // Room for every host's last word before anyone reads.
    let (out, rx) = mpsc::channel::<Answer>(16 + 2 * hosts.len());
    let bound = Bound::of(&r.ask);
    let mut elsewhere: BTreeMap<String, Vec<(String, mpsc::Sender<HostLog>)>> = BTreeMap::new();
    for (host, holder) in &hosts {
        match holder {
            Holder::Here => ask_host(ctx, tenant, host, r, &out, bound)?,
            Holder::Replica(replica) => {
                let (asked, answers) = ctx
                    .logs
                    .open(tenant, host)
                    .map_err(|e| ControllerError::Unavailable(e.to_string()))?;
                // Taken here, so no host's own answer can claim it.
                let Some(tx) = ctx.logs.answer(asked.id, tenant, host) else {
                    continue;
                };
                elsewhere
                    .entry(replica.clone())
                    .or_default()
                    .push((host.clone(), tx));
                tokio::spawn(forward(host.clone(), asked, answers, out.clone(), bound));
            }
        }
    }
    for (replica, hosts) in elsewhere {
        let ask = LogAsk {
            app: r.app.clone(),
            ..r.ask.clone()
        };
        tokio::spawn(relay(ctx.clone(), replica, tenant.to_string(), hosts, ask));
    }
    Ok((hosts.into_iter().map(|(h, _)| h).collect(), rx))
}

/// Asks `hosts`, whose sessions are on this replica, for `r` (another
/// replica relays a query made there): their answers as `ask`'s. A host
/// whose session is not here (it moved meanwhile) is `Failed`.
pub fn ask_here(
    ctx: &SharedCtx,
    tenant: &str,
    hosts: &[String],
    r: &LogRequest,
) -> Result<mpsc::Receiver<Answer>, ControllerError> {
    r.check()?;
    let (out, rx) = mpsc::channel::<Answer>(16 + 2 * hosts.len());
    let bound = Bound::of(&r.ask);
    for host in hosts {
        ask_host(ctx, tenant, host, r, &out, bound)?;
    }
    Ok(rx)
}

/// Asks one host whose session is here, its answer forwarded to `out`.
fn ask_host(
    ctx: &SharedCtx,
    tenant: &str,
    host: &str,
    r: &LogRequest,
    out: &mpsc::Sender<Answer>,
    bound: Bound,
) -> Result<(), ControllerError> {
    let (asked, answers) = ctx
        .logs
        .open(tenant, host)
        .map_err(|e| ControllerError::Unavailable(e.to_string()))?;
    let ask = LogAsk {
        id: asked.id,
        app: r.app.clone(),
        ..r.ask.clone()
    };
    if !ctx.hub.ask_logs(tenant, host, ask) {
        let _ = out.try_send(Answer::Failed {
            host: host.to_string(),
            error: "not connected, or busy answering".into(),
        });
        return Ok(());
    }
    tokio::spawn(forward(
        host.to_string(),
        asked,
        answers,
        out.clone(),
        bound,
    ));
    Ok(())
}

/// Carries a query to the replica holding `hosts`' sessions and each host's
/// answer back to where `ask` forwards it (`senders`, by host), until every
/// answer ended or nobody reads any more (then the call is dropped, which
/// ends the query there too).
async fn relay(
    ctx: SharedCtx,
    replica: String,
    tenant: String,
    hosts: Vec<(String, mpsc::Sender<HostLog>)>,
    ask: LogAsk,
) {
    let names: Vec<String> = hosts.iter().map(|(h, _)| h.clone()).collect();
    // What another replica says of itself is shown escaped.
    let shown = crate::sanitize::text(&replica, 256);
    let mut senders: HashMap<String, mpsc::Sender<HostLog>> = hosts.into_iter().collect();
    let Some(address) = ctx.hub.address_of(&replica) else {
        fail_all(
            &mut senders,
            &format!("its controller ({shown}) has not said where it is reached"),
        )
        .await;
        return;
    };
    let call = tokio::time::timeout(
        ANSWER_TIMEOUT,
        ctx.peers.logs(&replica, &address, &tenant, &names, &ask),
    )
    .await;
    let address = crate::sanitize::text(&address, 256);
    let mut answers = match call {
        Ok(Ok(s)) => Box::pin(s),
        Ok(Err(e)) => {
            let why = format!("its controller at {address} did not take the query: {e}");
            fail_all(&mut senders, &why).await;
            return;
        }
        Err(_) => {
            let why = format!(
                "its controller at {address} did not answer within {}s",
                ANSWER_TIMEOUT.as_secs()
            );
            fail_all(&mut senders, &why).await;
            return;
        }
    };
    // The other replica took the query: every host's answer is open there,
    // and its own bounds (the host opening in time) apply there.
    for tx in senders.values() {
        let _ = tx.send(HostLog::Lines(Vec::new(), Vec::new())).await;
    }
    while !senders.is_empty() {
        let next = {
            let all_gone = futures_util::future::join_all(senders.values().map(|tx| tx.closed()));
            tokio::select! {
                _ = all_gone => return,
                next = answers.next() => next,
            }
        };
        match next {
            Some(Ok(Answer::Lines { host, lines, times })) => {
                if let Some(tx) = senders.get(&host)
                    && tx.send(HostLog::Lines(lines, times)).await.is_err()
                {
                    senders.remove(&host);
                }
            }
            Some(Ok(Answer::Failed { host, error })) => {
                if let Some(tx) = senders.remove(&host) {
                    let _ = tx.send(HostLog::Error(error)).await;
                }
            }
            // Dropping its sender ends the host's answer in full.
            Some(Ok(Answer::Done { host })) => {
                senders.remove(&host);
            }
            Some(Err(e)) => {
                fail_all(&mut senders, &format!("its controller's answer ended: {e}")).await;
            }
            None => {
                fail_all(&mut senders, "its controller's answer ended early").await;
            }
        }
    }
}

async fn fail_all(senders: &mut HashMap<String, mpsc::Sender<HostLog>>, why: &str) {
    for (_, tx) in senders.drain() {
        let _ = tx.send(HostLog::Error(why.to_string())).await;
    }
}

/// What one host's answer may take.
#[derive(Debug, Clone, Copy)]
struct Bound {
    /// Bytes of lines (0: not bounded here).
    bytes: u64,
    /// Time to finish (None: a followed or plain tail, ended by the reader).
    within: Option<Duration>,
}

impl Bound {
    fn of(ask: &LogAsk) -> Self {
        let within = (!ask.follow && !ask.grep.is_empty()).then(|| {
            let secs = match ask.deadline_secs {
                0 => MAX_SEARCH_SECS,
                s => s,
            };
            Duration::from_secs(u64::from(secs)) + ANSWER_TIMEOUT
        });
        Bound {
            bytes: ask.max_bytes,
            within,
        }
    }
}

/// Forwards one host's answer until it ends, the host does not open it in
/// time, outgrows its bound, or whoever asked goes away (then `asked` drops,
/// and the host's `SendLogs` call is answered, which stops the host).
async fn forward(
    host: String,
    asked: Asked,
    mut answers: mpsc::Receiver<HostLog>,
    out: mpsc::Sender<Answer>,
    bound: Bound,
) {
    let failed = |error: String| Answer::Failed {
        host: host.clone(),
        error,
    };
    // The host opens its answer in time, or is said not to answer.
    let first = tokio::select! {
        _ = out.closed() => return,
        first = tokio::time::timeout(ANSWER_TIMEOUT, answers.recv()) => first,
    };
    let Ok(mut next) = first else {
        let _ = out
            .send(failed(format!(
                "did not answer within {}s",
                ANSWER_TIMEOUT.as_secs()
            )))
            .await;
        return;
    };
    let deadline = bound.within.map(|d| tokio::time::Instant::now() + d);
    // Slack for the host's own note past its bound.
    let max_bytes = match bound.bytes {
        0 => u64::MAX,
        b => b + 64 * 1024,
    };
    let mut bytes = 0u64;
    loop {
        let msg = match next {
            None => {
                let _ = out.send(Answer::Done { host: host.clone() }).await;
                break;
            }
            Some(HostLog::Lines(lines, times)) => {
                bytes += lines.iter().map(|l| l.len() as u64).sum::<u64>();
                if bytes > max_bytes {
                    let _ = out
                        .send(failed(format!(
                            "answer cut: more than {} bytes of lines",
                            bound.bytes
                        )))
                        .await;
                    break;
                }
                Answer::Lines {
                    host: host.clone(),
                    lines,
                    times,
                }
            }
            Some(HostLog::Error(e)) => {
                let _ = out.send(failed(e)).await;
                break;
            }
        };
        // (The host's first chunk, which only opens its answer, is empty.)
        // A reader that stops reading is dropped, and with it the host's part.
        if matches!(&msg, Answer::Lines { lines, .. } if !lines.is_empty())
            && !matches!(
                tokio::time::timeout(READER_STALL, out.send(msg)).await,
                Ok(Ok(()))
            )
        {
            break;
        }
        let too_late = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        next = tokio::select! {
            _ = out.closed() => break,
            _ = too_late => {
                let secs = bound.within.map_or(0, |d| d.as_secs());
                let _ = out.send(failed(format!("did not finish within {secs}s"))).await;
                break;
            }
            next = answers.recv() => next,
        };
    }
    drop(asked);
}

/// Queries asked and not yet answered or done, by id.
#[derive(Default)]
pub struct LogQueries {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Open>>,
}

struct Open {
    tenant: String,
    host: String,
    /// Taken by the host's answer (once).
    tx: Option<mpsc::Sender<HostLog>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TooMany {
    #[error("{MAX_OPEN} log queries are open on the controller; try again when one ends")]
    Controller,
    #[error("{MAX_OPEN_PER_TENANT} log queries of this tenant are open; try again when one ends")]
    Tenant,
}

/// Forgets its query when dropped (the reader went away or the host is done).
pub struct Asked {
    queries: Arc<LogQueries>,
    pub id: u64,
}

impl Drop for Asked {
    fn drop(&mut self) {
        self.queries
            .open
            .lock()
            .expect("log queries lock")
            .remove(&self.id);
    }
}

impl LogQueries {
    /// Opens a query to `host`: its id, where the host's answer arrives, and
    /// the guard that forgets it.
    pub fn open(
        self: &Arc<Self>,
        tenant: &str,
        host: &str,
    ) -> Result<(Asked, mpsc::Receiver<HostLog>), TooMany> {
        let mut open = self.open.lock().expect("log queries lock");
        if open.len() >= MAX_OPEN {
            return Err(TooMany::Controller);
        }
        if open.values().filter(|q| q.tenant == tenant).count() >= MAX_OPEN_PER_TENANT {
            return Err(TooMany::Tenant);
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::channel(4);
        open.insert(
            id,
            Open {
                tenant: tenant.to_string(),
                host: host.to_string(),
                tx: Some(tx),
            },
        );
        let asked = Asked {
            queries: self.clone(),
            id,
        };
        Ok((asked, rx))
    }

    /// Where `host` of `tenant` sends its answer to query `id`: None when no
    /// such query is open, it was asked of another host, or already answered.
    pub fn answer(&self, id: u64, tenant: &str, host: &str) -> Option<mpsc::Sender<HostLog>> {
        let mut open = self.open.lock().expect("log queries lock");
        let q = open.get_mut(&id)?;
        if q.tenant != tenant || q.host != host {
            return None;
        }
        q.tx.take()
    }

    pub fn open_count(&self) -> usize {
        self.open.lock().expect("log queries lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_taken_once_by_the_host_asked_and_forgotten_with_its_guard() {
        let q = Arc::new(LogQueries::default());
        let (asked, _rx) = q.open("t", "web-1").unwrap();
        assert!(q.answer(asked.id, "t", "web-2").is_none(), "another host");
        assert!(q.answer(asked.id, "u", "web-1").is_none(), "another tenant");
        assert!(q.answer(asked.id, "t", "web-1").is_some());
        assert!(q.answer(asked.id, "t", "web-1").is_none(), "answered once");
        assert_eq!(q.open_count(), 1);
        drop(asked);
        assert_eq!(q.open_count(), 0);
    }

    #[test]
    fn open_queries_are_bounded_per_tenant_and_in_all() {
        let q = Arc::new(LogQueries::default());
        let held: Vec<_> = (0..MAX_OPEN_PER_TENANT)
            .map(|_| q.open("t", "h").unwrap())
            .collect();
        assert!(matches!(q.open("t", "h"), Err(TooMany::Tenant)));
        let others: Vec<_> = (MAX_OPEN_PER_TENANT..MAX_OPEN)
            .map(|i| q.open(&format!("u{i}"), "h").unwrap())
            .collect();
        assert!(matches!(q.open("v", "h"), Err(TooMany::Controller)));
        drop((held, others));
        assert!(q.open("t", "h").is_ok());
    }
}
