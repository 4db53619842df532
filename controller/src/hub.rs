//! In-memory fan-out: which hosts hold a session right now, and a signal that
//! wakes every session when any desired state changes, so agents hear of a deploy
//! at once instead of on a polling timer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, watch};

#[derive(Clone)]
pub struct Hub {
    desired_tx: Arc<watch::Sender<u64>>,
    /// Wakes the rollout engine: a report arrived or a rollout changed.
    rollouts: Arc<Notify>,
    sessions: Arc<Mutex<HashMap<(String, String), u64>>>,
    next_session: Arc<std::sync::atomic::AtomicU64>,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Self {
        let (tx, _rx) = watch::channel(0);
        Self {
            desired_tx: Arc::new(tx),
            rollouts: Arc::new(Notify::new()),
            sessions: Arc::default(),
            next_session: Arc::new(std::sync::atomic::AtomicU64::new(1)),
        }
    }

    /// Wakes every session to recompute its host's desired state.
    pub fn desired_changed(&self) {
        self.desired_tx.send_modify(|g| *g += 1);
    }

    /// Wakes the rollout engine (coalesced: one pending wake-up at most).
    pub fn rollouts_changed(&self) {
        self.rollouts.notify_one();
    }

    pub fn rollout_signal(&self) -> Arc<Notify> {
        self.rollouts.clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.desired_tx.subscribe()
    }

    /// Registers a session for (tenant, host); a newer session replaces an older one.
    pub fn connect(&self, tenant: &str, host: &str) -> u64 {
        let id = self
            .next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.sessions
            .lock()
            .expect("hub lock")
            .insert((tenant.into(), host.into()), id);
        id
    }

    pub fn disconnect(&self, tenant: &str, host: &str, id: u64) {
        let mut s = self.sessions.lock().expect("hub lock");
        if s.get(&(tenant.to_string(), host.to_string())) == Some(&id) {
            s.remove(&(tenant.to_string(), host.to_string()));
        }
    }

    /// Ends the host's session (revoked): its loop sees it is no longer current.
    pub fn evict(&self, tenant: &str, host: &str) {
        self.sessions
            .lock()
            .expect("hub lock")
            .remove(&(tenant.to_string(), host.to_string()));
        self.desired_changed();
    }

    pub fn is_current(&self, tenant: &str, host: &str, id: u64) -> bool {
        self.sessions
            .lock()
            .expect("hub lock")
            .get(&(tenant.to_string(), host.to_string()))
            == Some(&id)
    }

    pub fn connected(&self, tenant: &str, host: &str) -> bool {
        self.sessions
            .lock()
            .expect("hub lock")
            .contains_key(&(tenant.to_string(), host.to_string()))
    }
}
