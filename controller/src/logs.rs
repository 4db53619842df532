//! `slipctl logs` through the agents' sessions. A query goes down each host's
//! session (`Hub::ask_logs`); the host answers on a `SendLogs` stream of its
//! own, which `LogQueries` matches by the query's id (and the host's
//! certificate) to whoever asked. A log stream never rides the session
//! itself: a host's reports and heartbeats never wait behind its output, and
//! each answer has HTTP/2 flow control of its own, so a slow reader slows
//! only the host it reads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

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

/// A query for one host's agent.
#[derive(Debug, Clone, PartialEq)]
pub struct LogAsk {
    pub id: u64,
    pub app: String,
    pub process: String,
    pub lines: u32,
    pub follow: bool,
    pub since_secs: u64,
    pub grep: String,
}

/// What a host answers.
#[derive(Debug, Clone, PartialEq)]
pub enum HostLog {
    Lines(Vec<String>),
    /// The host cannot answer (the last message).
    Error(String),
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
