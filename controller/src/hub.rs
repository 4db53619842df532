//! In-memory fan-out: which hosts hold a session right now, and the
//! desired-change signal. A change names its scope (tenant, environment, app,
//! and the hosts it concerns), and only the sessions inside it wake, told
//! which apps to recompute, so agents hear of a deploy at once instead of on a
//! polling timer and nobody else touches the store.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Whose desired state changed: the app in the tenant's environment, on
/// `hosts` (None: every host of the environment).
#[derive(Debug, Clone, Copy)]
pub struct DesiredChange<'a> {
    pub tenant: &'a str,
    pub environment: &'a str,
    pub app: &'a str,
    pub hosts: Option<&'a [String]>,
}

/// What a woken session recomputes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Recompute {
    #[default]
    Nothing,
    Apps(BTreeSet<String>),
    /// Every app of the host (a new session, its labels changed).
    All,
}

impl Recompute {
    fn add(&mut self, app: Option<&str>) {
        match (&mut *self, app) {
            (Recompute::All, _) => {}
            (_, None) => *self = Recompute::All,
            (Recompute::Apps(apps), Some(app)) => {
                apps.insert(app.to_string());
            }
            (Recompute::Nothing, Some(app)) => {
                *self = Recompute::Apps([app.to_string()].into());
            }
        }
    }

    /// Whether `app` is to be recomputed.
    pub fn covers(&self, app: &str) -> bool {
        match self {
            Recompute::Nothing => false,
            Recompute::Apps(apps) => apps.contains(app),
            Recompute::All => true,
        }
    }
}

/// A session's wake-up: what it has to recompute, and the bell.
#[derive(Default)]
struct Wake {
    pending: Mutex<Recompute>,
    bell: Notify,
}

impl Wake {
    fn ring(&self, app: Option<&str>) {
        self.pending.lock().expect("wake lock").add(app);
        self.bell.notify_one();
    }
}

/// A registered session: its id, and where its wake-ups arrive.
pub struct Session {
    pub id: u64,
    wake: Arc<Wake>,
}

impl Session {
    /// Waits until a change concerns this session and returns what to
    /// recompute (changes coalesce while the session is busy). Cancel-safe.
    pub async fn changed(&self) -> Recompute {
        loop {
            self.wake.bell.notified().await;
            let pending = std::mem::take(&mut *self.wake.pending.lock().expect("wake lock"));
            if pending != Recompute::Nothing {
                return pending;
            }
        }
    }
}

struct Entry {
    id: u64,
    environment: String,
    apps: Vec<String>,
    wake: Arc<Wake>,
}

#[derive(Clone)]
pub struct Hub {
    /// Wakes the rollout engine: a report arrived or a rollout changed.
    rollouts: Arc<Notify>,
    sessions: Arc<Mutex<HashMap<(String, String), Entry>>>,
    next_session: Arc<std::sync::atomic::AtomicU64>,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Self {
        Self {
            rollouts: Arc::new(Notify::new()),
            sessions: Arc::default(),
            next_session: Arc::new(std::sync::atomic::AtomicU64::new(1)),
        }
    }

    /// Wakes the sessions `c` concerns (their host is in its environment,
    /// among its hosts, and runs its app) to recompute that app.
    pub fn desired_changed(&self, c: &DesiredChange<'_>) {
        let sessions = self.sessions.lock().expect("hub lock");
        for ((tenant, host), e) in sessions.iter() {
            if tenant == c.tenant
                && e.environment == c.environment
                && e.apps.iter().any(|a| a == c.app)
                && c.hosts.is_none_or(|hosts| hosts.contains(host))
            {
                e.wake.ring(Some(c.app));
            }
        }
    }

    /// Wakes the host's session to recompute every app (its labels changed).
    pub fn host_changed(&self, tenant: &str, host: &str) {
        if let Some(e) = self
            .sessions
            .lock()
            .expect("hub lock")
            .get(&(tenant.to_string(), host.to_string()))
        {
            e.wake.ring(None);
        }
    }

    /// Wakes the rollout engine (coalesced: one pending wake-up at most).
    pub fn rollouts_changed(&self) {
        self.rollouts.notify_one();
    }

    pub fn rollout_signal(&self) -> Arc<Notify> {
        self.rollouts.clone()
    }

    /// Registers a session for (tenant, host) in `environment` running `apps`;
    /// a newer session replaces an older one (which is woken to see it).
    pub fn connect(&self, tenant: &str, host: &str, environment: &str, apps: &[String]) -> Session {
        let id = self
            .next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let wake = Arc::new(Wake::default());
        let old = self.sessions.lock().expect("hub lock").insert(
            (tenant.into(), host.into()),
            Entry {
                id,
                environment: environment.into(),
                apps: apps.to_vec(),
                wake: wake.clone(),
            },
        );
        if let Some(old) = old {
            old.wake.ring(None);
        }
        Session { id, wake }
    }

    pub fn disconnect(&self, tenant: &str, host: &str, id: u64) {
        let mut s = self.sessions.lock().expect("hub lock");
        let key = (tenant.to_string(), host.to_string());
        if s.get(&key).is_some_and(|e| e.id == id) {
            s.remove(&key);
        }
    }

    /// Ends the host's session (revoked): woken, its loop sees it is no
    /// longer current.
    pub fn evict(&self, tenant: &str, host: &str) {
        let old = self
            .sessions
            .lock()
            .expect("hub lock")
            .remove(&(tenant.to_string(), host.to_string()));
        if let Some(old) = old {
            old.wake.ring(None);
        }
    }

    pub fn is_current(&self, tenant: &str, host: &str, id: u64) -> bool {
        self.sessions
            .lock()
            .expect("hub lock")
            .get(&(tenant.to_string(), host.to_string()))
            .is_some_and(|e| e.id == id)
    }

    /// Whether the host's session said it runs `app`.
    pub fn runs(&self, tenant: &str, host: &str, app: &str) -> bool {
        self.sessions
            .lock()
            .expect("hub lock")
            .get(&(tenant.to_string(), host.to_string()))
            .is_some_and(|e| e.apps.iter().any(|a| a == app))
    }

    pub fn connected(&self, tenant: &str, host: &str) -> bool {
        self.sessions
            .lock()
            .expect("hub lock")
            .contains_key(&(tenant.to_string(), host.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// What each session was told to recompute (None: not woken).
    async fn woken(sessions: &[(&str, &Session)]) -> Vec<(String, Option<Recompute>)> {
        let mut out = Vec::new();
        for (name, s) in sessions {
            let got = tokio::time::timeout(Duration::from_millis(20), s.changed())
                .await
                .ok();
            out.push((name.to_string(), got));
        }
        out
    }

    fn apps(names: &[&str]) -> Option<Recompute> {
        Some(Recompute::Apps(
            names.iter().map(|s| s.to_string()).collect(),
        ))
    }

    #[tokio::test]
    async fn a_change_wakes_only_the_sessions_in_its_scope() {
        let hub = Hub::new();
        let web = vec!["web".to_string()];
        let both = vec!["web".to_string(), "api".to_string()];
        let a = hub.connect("t1", "a", "prod", &both);
        let b = hub.connect("t1", "b", "prod", &web);
        let c = hub.connect("t1", "c", "preprod", &web);
        let d = hub.connect("t2", "a", "prod", &web);
        let all = [("a", &a), ("b", &b), ("c", &c), ("d", &d)];
        let change = |app, hosts| DesiredChange {
            tenant: "t1",
            environment: "prod",
            app,
            hosts,
        };

        hub.desired_changed(&change("web", None));
        let expect = |a, b, c, d| {
            vec![
                ("a".to_string(), a),
                ("b".to_string(), b),
                ("c".to_string(), c),
                ("d".to_string(), d),
            ]
        };
        assert_eq!(
            woken(&all).await,
            expect(apps(&["web"]), apps(&["web"]), None, None)
        );

        // An admitted step: its hosts only; an app a host does not run: not it.
        let only_b = ["b".to_string()];
        hub.desired_changed(&change("web", Some(&only_b)));
        hub.desired_changed(&change("api", None));
        assert_eq!(
            woken(&all).await,
            expect(apps(&["api"]), apps(&["web"]), None, None)
        );

        // Changes coalesce until the session looks.
        hub.desired_changed(&change("web", None));
        hub.desired_changed(&change("api", None));
        hub.host_changed("t1", "c");
        assert_eq!(
            woken(&all).await,
            expect(
                apps(&["api", "web"]),
                apps(&["web"]),
                Some(Recompute::All),
                None
            )
        );
    }

    #[tokio::test]
    async fn a_replaced_or_evicted_session_is_woken_and_no_longer_current() {
        let hub = Hub::new();
        let web = vec!["web".to_string()];
        let old = hub.connect("t", "a", "prod", &web);
        let new = hub.connect("t", "a", "prod", &web);
        assert_eq!(old.changed().await, Recompute::All);
        assert!(!hub.is_current("t", "a", old.id) && hub.is_current("t", "a", new.id));
        hub.disconnect("t", "a", old.id);
        assert!(
            hub.connected("t", "a"),
            "the old session leaving keeps the new"
        );
        hub.evict("t", "a");
        assert_eq!(new.changed().await, Recompute::All);
        assert!(!hub.connected("t", "a"));
    }
}
