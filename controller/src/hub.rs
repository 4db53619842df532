//! In-memory fan-out: which hosts hold a session right now and when each was
//! last heard from, the desired-change signal, and the engine's wake-up with
//! the hosts that reported. A change names its scope (tenant, environment,
//! app, and the hosts it concerns), and only the sessions inside it wake, told
//! which apps to recompute, so agents hear of a deploy at once instead of on a
//! polling timer and nobody else touches the store. A heartbeat touches only
//! memory here; `last_seen` reaches the store in batches (`to_flush`).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc};

use crate::logs::LogAsk;

/// Whose desired state changed: the app in the tenant's environment, on
/// `hosts` (None: every host of the environment).
#[derive(Debug, Clone, Copy)]
pub struct DesiredChange<'a> {
    pub tenant: &'a str,
    pub environment: &'a str,
    pub app: &'a str,
    pub hosts: Option<&'a [String]>,
}

/// A change as it travels between replicas (`peers`): names and ids only,
/// never a row; each replica reads the store again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    Desired {
        tenant: String,
        environment: String,
        app: String,
        /// None: every host of the environment.
        hosts: Option<Vec<String>>,
    },
    Apps {
        tenant: String,
        environment: String,
    },
    Host {
        tenant: String,
        host: String,
    },
    Evict {
        tenant: String,
        host: String,
    },
    /// The host was given a certificate (`fingerprint`): every other one it
    /// had stops working, and an RPC made with one is looked up in the store
    /// again (which refuses it).
    Certified {
        tenant: String,
        host: String,
        fingerprint: String,
    },
    Rollouts,
    Reported {
        hosts: Vec<Reported>,
    },
    /// The sender holds the host's session now, in `environment`, running
    /// `apps` (what a log query made on another replica goes by; None: not
    /// said, too many to fit a message, and the host may run any app).
    Connected {
        tenant: String,
        host: String,
        #[serde(default)]
        environment: String,
        #[serde(default)]
        apps: Option<Vec<String>>,
    },
    /// The sender's session of the host ended.
    Disconnected {
        tenant: String,
        host: String,
    },
    /// Nothing happened; the sender is alive (sent every few seconds).
    Alive,
}

/// Sessions held by other replicas, as their changes said.
#[derive(Default)]
struct Remote {
    /// Each host's session on another replica.
    sessions: HashMap<HostKey, RemoteSession>,
    /// When each replica was last heard from.
    heard: HashMap<String, std::time::Instant>,
    /// Where each replica says the others reach it (`https://HOST:PORT`).
    addresses: HashMap<String, String>,
}

struct RemoteSession {
    replica: String,
    environment: String,
    /// None: not known (the host may run any app).
    apps: Option<Vec<String>>,
}

/// Where a host's session is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    Here,
    /// On the replica of that name.
    Replica(String),
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

/// A session's wake-up: what it has to recompute, and the bell; and when
/// its host was last heard from (unix seconds) and what of it the store has.
#[derive(Default)]
struct Wake {
    pending: Mutex<Recompute>,
    /// The apps declared in the session's environment changed: only the
    /// declaration is recomputed, not every app's desired release.
    declared: AtomicBool,
    bell: Notify,
    heard: AtomicI64,
    flushed: AtomicI64,
    /// Replaced by a newer session or evicted.
    ended: AtomicBool,
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
    /// Log queries for the host (`Hub::ask_logs`), taken by the session loop.
    asks: Mutex<Option<mpsc::Receiver<Box<LogAsk>>>>,
}

impl Session {
    /// The host was heard from (a heartbeat, a report): memory only, no lock.
    pub fn heard(&self, at: i64) {
        self.wake.heard.fetch_max(at, Ordering::Relaxed);
    }

    /// Still the host's session: not replaced by a newer one, not evicted
    /// (no lock: checked after every message).
    pub fn is_current(&self) -> bool {
        !self.wake.ended.load(Ordering::Relaxed)
    }

    /// The log queries asked of this host (once: the session loop's).
    pub fn take_asks(&self) -> Option<mpsc::Receiver<Box<LogAsk>>> {
        self.asks.lock().expect("asks lock").take()
    }

    /// Waits until a change concerns this session and returns what to
    /// recompute, and whether its declared apps changed (changes coalesce
    /// while the session is busy). Cancel-safe.
    pub async fn changed(&self) -> (Recompute, bool) {
        loop {
            self.wake.bell.notified().await;
            let pending = std::mem::take(&mut *self.wake.pending.lock().expect("wake lock"));
            let declared = self.wake.declared.swap(false, Ordering::Relaxed);
            if pending != Recompute::Nothing || declared {
                return (pending, declared);
            }
        }
    }
}

struct Entry {
    id: u64,
    /// The fingerprint of the certificate the session was opened with, while
    /// it is still the host's (empty once the host was given another, or
    /// changes may have been missed): the host's other calls made with it
    /// take the session's identity without a store read (`identity`).
    cert: String,
    environment: String,
    apps: Vec<String>,
    wake: Arc<Wake>,
    /// Boxed: a channel keeps a block of slots per session, idle or not.
    asks: mpsc::Sender<Box<LogAsk>>,
}

/// Log queries waiting for one session to carry them.
const MAX_ASKS_QUEUED: usize = 8;

/// (tenant, host).
type HostKey = (String, String);

/// A host that reported an app: (tenant, host, app).
pub type Reported = (String, String, String);

#[derive(Clone)]
pub struct Hub {
    /// Wakes the rollout engine: a report arrived or a rollout changed.
    rollouts: Arc<Notify>,
    /// Hosts that reported since the engine last looked (`take_reported`).
    reported: Arc<Mutex<HashSet<Reported>>>,
    sessions: Arc<Mutex<HashMap<HostKey, Entry>>>,
    /// Certificate fingerprint → the session opened with it (an index of
    /// `Entry::cert`; an entry is used only while that session is current
    /// and still holds the certificate).
    certs: Arc<Mutex<HashMap<String, (HostKey, u64)>>>,
    /// When hosts whose session ended were last heard from, until the store
    /// has it (`flushed`).
    departed: Arc<Mutex<HashMap<HostKey, i64>>>,
    /// Sessions ended so far (`departures`).
    ended: Arc<std::sync::atomic::AtomicU64>,
    next_session: Arc<std::sync::atomic::AtomicU64>,
    /// Where the changes made here go to the other replicas (`peers`),
    /// when there are any.
    outbox: Arc<std::sync::OnceLock<crate::peers::Outbox>>,
    /// Changes may have been missed: the engine judges every host (`resync`).
    resync_rollouts: Arc<AtomicBool>,
    remote: Arc<Mutex<Remote>>,
    /// See `epoch`.
    epoch: Arc<std::sync::atomic::AtomicU64>,
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
            reported: Arc::default(),
            sessions: Arc::default(),
            certs: Arc::default(),
            departed: Arc::default(),
            ended: Arc::default(),
            next_session: Arc::new(std::sync::atomic::AtomicU64::new(1)),
            outbox: Arc::default(),
            resync_rollouts: Arc::default(),
            remote: Arc::default(),
            epoch: Arc::default(),
        }
    }

    /// From now on, every change made here is also sent to `outbox`.
    pub fn publish_to(&self, outbox: crate::peers::Outbox) {
        let _ = self.outbox.set(outbox);
    }

    fn publish(&self, event: impl FnOnce() -> Change) {
        if let Some(outbox) = self.outbox.get() {
            outbox.send(event());
        }
    }

    /// A change the replica `from` made: its sessions and engine are woken
    /// here as they were there (and it is not sent on again).
    pub fn apply(&self, from: &str, change: Change) {
        self.remote
            .lock()
            .expect("hub lock")
            .heard
            .insert(from.to_string(), std::time::Instant::now());
        match change {
            Change::Desired {
                tenant,
                environment,
                app,
                hosts,
            } => self.wake_desired(&DesiredChange {
                tenant: &tenant,
                environment: &environment,
                app: &app,
                hosts: hosts.as_deref(),
            }),
            Change::Apps {
                tenant,
                environment,
            } => self.wake_apps(&tenant, &environment),
            Change::Host { tenant, host } => self.wake_host(&tenant, &host),
            Change::Evict { tenant, host } => self.end_session(&tenant, &host),
            Change::Certified {
                tenant,
                host,
                fingerprint,
            } => self.forget_certs(&tenant, &host, &fingerprint),
            Change::Rollouts => self.rollouts.notify_one(),
            Change::Reported { hosts } => {
                self.reported.lock().expect("hub lock").extend(hosts);
                self.rollouts.notify_one();
            }
            Change::Connected {
                tenant,
                host,
                environment,
                apps,
            } => {
                self.remote.lock().expect("hub lock").sessions.insert(
                    (tenant, host),
                    RemoteSession {
                        replica: from.to_string(),
                        environment,
                        apps,
                    },
                );
            }
            Change::Disconnected { tenant, host } => {
                let mut remote = self.remote.lock().expect("hub lock");
                let key = (tenant, host);
                if remote.sessions.get(&key).is_some_and(|r| r.replica == from) {
                    remote.sessions.remove(&key);
                    self.ended.fetch_add(1, Ordering::SeqCst);
                    self.rollouts.notify_one();
                }
            }
            Change::Alive => {}
        }
    }

    /// Forgets what the replica `from` said of its sessions (it resyncs and
    /// says it all again).
    pub fn forget_replica(&self, from: &str) {
        let mut remote = self.remote.lock().expect("hub lock");
        let before = remote.sessions.len();
        remote.sessions.retain(|_, r| r.replica != from);
        if remote.sessions.len() != before {
            self.ended.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Forgets the sessions of replicas not heard from for `ttl` (dead, or
    /// cut off from the store): their hosts count as disconnected, and the
    /// engine is woken to see it.
    pub fn expire_replicas(&self, ttl: std::time::Duration) {
        let mut remote = self.remote.lock().expect("hub lock");
        let Remote {
            sessions,
            heard,
            addresses,
        } = &mut *remote;
        heard.retain(|_, at| at.elapsed() <= ttl);
        addresses.retain(|r, _| heard.contains_key(r));
        let before = sessions.len();
        sessions.retain(|_, r| heard.contains_key(&r.replica));
        if sessions.len() != before {
            tracing::warn!(
                sessions = before - sessions.len(),
                "another controller went silent; its hosts count as disconnected"
            );
            self.ended.fetch_add(1, Ordering::SeqCst);
            self.rollouts.notify_one();
        }
    }

    /// Every session held here, as changes (for a replica that asks).
    pub fn announce(&self) -> Vec<Change> {
        self.sessions
            .lock()
            .expect("hub lock")
            .iter()
            .map(|((tenant, host), e)| Change::Connected {
                tenant: tenant.clone(),
                host: host.clone(),
                environment: e.environment.clone(),
                apps: Some(e.apps.clone()),
            })
            .collect()
    }

    /// After changes from other replicas may have been missed (the
    /// listener reconnected): every session recomputes everything and the
    /// engine looks at every rollout whole. A revocation or a new
    /// certificate may be among what was missed: the sessions' certificates
    /// are looked up in the store again.
    pub fn resync(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        for e in self.sessions.lock().expect("hub lock").values_mut() {
            e.cert.clear();
            e.wake.declared.store(true, Ordering::Relaxed);
            e.wake.ring(None);
        }
        self.certs.lock().expect("hub lock").clear();
        self.resync_rollouts.store(true, Ordering::Relaxed);
        self.rollouts.notify_one();
    }

    /// Counts the changes that wake sessions to read desired state again
    /// (a desired release, a rollout's step, a placement, declared apps, a
    /// resync), made here or heard from another replica: a read shared by
    /// sessions is good only while this stays what it was before the read
    /// (`SharedReads`).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Whether the engine is to judge every host again (`resync`), once.
    pub fn take_resync(&self) -> bool {
        self.resync_rollouts.swap(false, Ordering::Relaxed)
    }

    /// Wakes the sessions `c` concerns (their host is in its environment,
    /// among its hosts, and runs its app) to recompute that app, here and
    /// on every other replica.
    pub fn desired_changed(&self, c: &DesiredChange<'_>) {
        self.wake_desired(c);
        self.publish(|| Change::Desired {
            tenant: c.tenant.into(),
            environment: c.environment.into(),
            app: c.app.into(),
            hosts: c.hosts.map(<[String]>::to_vec),
        });
    }

    fn wake_desired(&self, c: &DesiredChange<'_>) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let hosts: Option<HashSet<&str>> = c
            .hosts
            .map(|hosts| hosts.iter().map(String::as_str).collect());
        let sessions = self.sessions.lock().expect("hub lock");
        for ((tenant, host), e) in sessions.iter() {
            if tenant == c.tenant
                && e.environment == c.environment
                && e.apps.iter().any(|a| a == c.app)
                && hosts
                    .as_ref()
                    .is_none_or(|hosts| hosts.contains(host.as_str()))
            {
                e.wake.ring(Some(c.app));
            }
        }
    }

    /// Wakes every session of `environment` to recompute its declared apps
    /// (only those: no app's desired release is read again): the apps
    /// declared there changed, or where they are placed.
    pub fn apps_changed(&self, tenant: &str, environment: &str) {
        self.wake_apps(tenant, environment);
        self.publish(|| Change::Apps {
            tenant: tenant.into(),
            environment: environment.into(),
        });
    }

    fn wake_apps(&self, tenant: &str, environment: &str) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let sessions = self.sessions.lock().expect("hub lock");
        for ((t, _), e) in sessions.iter() {
            if t == tenant && e.environment == environment {
                e.wake.declared.store(true, Ordering::Relaxed);
                e.wake.bell.notify_one();
            }
        }
    }

    /// Wakes the host's session to recompute every app (its labels changed).
    pub fn host_changed(&self, tenant: &str, host: &str) {
        self.wake_host(tenant, host);
        self.publish(|| Change::Host {
            tenant: tenant.into(),
            host: host.into(),
        });
    }

    fn wake_host(&self, tenant: &str, host: &str) {
        if let Some(e) = self
            .sessions
            .lock()
            .expect("hub lock")
            .get(&(tenant.to_string(), host.to_string()))
        {
            e.wake.ring(None);
        }
    }

    /// Wakes the rollout engine (coalesced: one pending wake-up at most),
    /// wherever it runs.
    pub fn rollouts_changed(&self) {
        self.rollouts.notify_one();
        self.publish(|| Change::Rollouts);
    }

    pub fn rollout_signal(&self) -> Arc<Notify> {
        self.rollouts.clone()
    }

    /// A host reported `app`: the engine judges that host (and only it) on
    /// its next look, and is woken.
    pub fn host_reported(&self, tenant: &str, host: &str, app: &str) {
        let key = (tenant.to_string(), host.to_string(), app.to_string());
        self.publish(|| Change::Reported {
            hosts: vec![key.clone()],
        });
        self.reported.lock().expect("hub lock").insert(key);
        self.rollouts.notify_one();
    }

    /// The hosts that reported since the last call.
    pub fn take_reported(&self) -> HashSet<Reported> {
        std::mem::take(&mut *self.reported.lock().expect("hub lock"))
    }

    /// When the host was last heard from, as far as memory knows: its open
    /// session's last message, or, once it ended, the last message before
    /// (until the store has it). None: nothing newer than the store's.
    pub fn last_heard(&self, tenant: &str, host: &str) -> Option<i64> {
        let key = (tenant.to_string(), host.to_string());
        if let Some(e) = self.sessions.lock().expect("hub lock").get(&key) {
            return Some(e.wake.heard.load(Ordering::Relaxed));
        }
        self.departed.lock().expect("hub lock").get(&key).copied()
    }

    /// The host's `last_seen`: the store's, or memory's when newer.
    pub fn last_seen(&self, tenant: &str, host: &str, stored: i64) -> i64 {
        self.last_heard(tenant, host)
            .map_or(stored, |t| t.max(stored))
    }

    /// Whether the host is offline (`fleet::offline`): no open session, and
    /// last heard from (the store's `last_seen` or newer, from memory) more
    /// than three heartbeats ago.
    pub fn offline(
        &self,
        tenant: &str,
        host: &str,
        stored: i64,
        now: i64,
        heartbeat_secs: u32,
    ) -> bool {
        let connected = self.connected(tenant, host);
        crate::fleet::offline(
            connected,
            self.last_seen(tenant, host, stored),
            now,
            heartbeat_secs,
        )
    }

    /// `last_seen` values the store does not have yet: (tenant, host, when).
    pub fn to_flush(&self) -> Vec<(String, String, i64)> {
        let mut out: Vec<(String, String, i64)> = self
            .sessions
            .lock()
            .expect("hub lock")
            .iter()
            .filter_map(|((t, h), e)| {
                let heard = e.wake.heard.load(Ordering::Relaxed);
                (heard > e.wake.flushed.load(Ordering::Relaxed))
                    .then(|| (t.clone(), h.clone(), heard))
            })
            .collect();
        out.extend(
            self.departed
                .lock()
                .expect("hub lock")
                .iter()
                .map(|((t, h), at)| (t.clone(), h.clone(), *at)),
        );
        out
    }

    /// The store now has these `last_seen` values (from `to_flush`).
    pub fn flushed(&self, written: &[(String, String, i64)]) {
        let sessions = self.sessions.lock().expect("hub lock");
        let mut departed = self.departed.lock().expect("hub lock");
        for (t, h, at) in written {
            let key = (t.clone(), h.clone());
            if let Some(e) = sessions.get(&key) {
                e.wake.flushed.fetch_max(*at, Ordering::Relaxed);
            }
            if departed.get(&key).is_some_and(|d| d <= at) {
                departed.remove(&key);
            }
        }
    }

    /// Registers a session for (tenant, host) in `environment` running `apps`;
    /// a newer session replaces an older one (which is woken to see it).
    /// Registers the host's session, opened with the certificate whose
    /// fingerprint is `cert` (empty: none to remember); it replaces the
    /// host's earlier session here, if any.
    pub fn connect(
        &self,
        tenant: &str,
        host: &str,
        environment: &str,
        apps: &[String],
        cert: &str,
    ) -> Session {
        let id = self
            .next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let wake = Arc::new(Wake::default());
        let (asks_tx, asks) = mpsc::channel(MAX_ASKS_QUEUED);
        // The hello that opened it is a message heard.
        wake.heard.store(crate::store::now(), Ordering::Relaxed);
        let old = {
            // Both maps under the sessions lock (sessions, then certs, as
            // everywhere), so a session ending meanwhile leaves no entry.
            let mut sessions = self.sessions.lock().expect("hub lock");
            let old = sessions.insert(
                (tenant.into(), host.into()),
                Entry {
                    id,
                    cert: cert.into(),
                    environment: environment.into(),
                    apps: apps.to_vec(),
                    wake: wake.clone(),
                    asks: asks_tx,
                },
            );
            let mut certs = self.certs.lock().expect("hub lock");
            if let Some(old) = &old {
                certs.remove(&old.cert);
            }
            if !cert.is_empty() {
                certs.insert(cert.into(), ((tenant.into(), host.into()), id));
            }
            old
        };
        if let Some(old) = old {
            old.wake.ended.store(true, Ordering::Relaxed);
            old.wake.ring(None);
        }
        self.publish(|| Change::Connected {
            tenant: tenant.into(),
            host: host.into(),
            environment: environment.into(),
            apps: Some(apps.to_vec()),
        });
        Session {
            id,
            wake,
            asks: Mutex::new(Some(asks)),
        }
    }

    pub fn disconnect(&self, tenant: &str, host: &str, id: u64) {
        let mut s = self.sessions.lock().expect("hub lock");
        let key = (tenant.to_string(), host.to_string());
        if s.get(&key).is_some_and(|e| e.id == id)
            && let Some(e) = s.remove(&key)
        {
            self.certs.lock().expect("hub lock").remove(&e.cert);
            self.depart(key, &e);
            self.publish(|| Change::Disconnected {
                tenant: tenant.into(),
                host: host.into(),
            });
        }
    }

    /// How many sessions ended (disconnected, replaced, evicted) so far:
    /// while it stays the same, no host lost its session (the engine then
    /// need not ask about every pending host again).
    pub fn departures(&self) -> u64 {
        self.ended.load(Ordering::SeqCst)
    }

    /// Keeps when a host whose session ended was last heard from, for the
    /// offline rule, until the store has it.
    fn depart(&self, key: HostKey, e: &Entry) {
        self.ended.fetch_add(1, Ordering::SeqCst);
        let heard = e.wake.heard.load(Ordering::Relaxed);
        if heard > e.wake.flushed.load(Ordering::Relaxed) {
            let mut d = self.departed.lock().expect("hub lock");
            let at = d.entry(key).or_insert(heard);
            *at = (*at).max(heard);
        }
    }

    /// Ends the host's session (revoked), on whichever replica holds it:
    /// woken, its loop sees it is no longer current.
    pub fn evict(&self, tenant: &str, host: &str) {
        self.end_session(tenant, host);
        self.publish(|| Change::Evict {
            tenant: tenant.into(),
            host: host.into(),
        });
    }

    fn end_session(&self, tenant: &str, host: &str) {
        let old = self
            .sessions
            .lock()
            .expect("hub lock")
            .remove(&(tenant.to_string(), host.to_string()));
        if let Some(old) = old {
            self.certs.lock().expect("hub lock").remove(&old.cert);
            self.depart((tenant.to_string(), host.to_string()), &old);
            old.wake.ended.store(true, Ordering::Relaxed);
            old.wake.ring(None);
            self.publish(|| Change::Disconnected {
                tenant: tenant.into(),
                host: host.into(),
            });
        }
    }

    /// The host `fingerprint` belongs to and its environment, if a session
    /// held here was opened with that certificate and nothing has taken it
    /// from the host since: revoked (the session is evicted), another
    /// certificate issued (`certified`), or changes missed (`resync`). Else
    /// None, and the caller asks the store.
    pub fn identity(&self, fingerprint: &str) -> Option<(String, String, String)> {
        let (key, id) = self
            .certs
            .lock()
            .expect("hub lock")
            .get(fingerprint)?
            .clone();
        let sessions = self.sessions.lock().expect("hub lock");
        let e = sessions.get(&key)?;
        (e.id == id && e.cert == fingerprint).then(|| (key.0, key.1, e.environment.clone()))
    }

    /// The host was given the certificate `fingerprint`, here or on another
    /// replica: its other certificates stop standing for it at once.
    pub fn certified(&self, tenant: &str, host: &str, fingerprint: &str) {
        self.forget_certs(tenant, host, fingerprint);
        self.publish(|| Change::Certified {
            tenant: tenant.into(),
            host: host.into(),
            fingerprint: fingerprint.into(),
        });
    }

    fn forget_certs(&self, tenant: &str, host: &str, fingerprint: &str) {
        let mut sessions = self.sessions.lock().expect("hub lock");
        if let Some(e) = sessions.get_mut(&(tenant.to_string(), host.to_string()))
            && e.cert != fingerprint
        {
            self.certs.lock().expect("hub lock").remove(&e.cert);
            e.cert.clear();
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

    /// The connected hosts of `environment` (empty: any) whose session said
    /// they run `app`, by name, and where each session is: here, or on
    /// another replica as its changes said.
    pub fn hosts_running(
        &self,
        tenant: &str,
        environment: &str,
        app: &str,
    ) -> Vec<(String, Holder)> {
        let fits = |t: &str, env: &str, apps: Option<&[String]>| {
            t == tenant
                && (environment.is_empty() || env == environment)
                && apps.is_none_or(|apps| apps.iter().any(|a| a == app))
        };
        let mut hosts: std::collections::BTreeMap<String, Holder> = self
            .remote
            .lock()
            .expect("hub lock")
            .sessions
            .iter()
            .filter(|((t, _), r)| fits(t, &r.environment, r.apps.as_deref()))
            .map(|((_, h), r)| (h.clone(), Holder::Replica(r.replica.clone())))
            .collect();
        // A session here is newer than what another replica last said.
        for ((t, h), e) in self.sessions.lock().expect("hub lock").iter() {
            if fits(t, &e.environment, Some(&e.apps)) {
                hosts.insert(h.clone(), Holder::Here);
            }
        }
        hosts.into_iter().collect()
    }

    /// The replica `from` says the others reach it at `address`: kept if it
    /// is an `https://` address (a relay is never sent in plaintext).
    pub fn addressed(&self, from: &str, address: &str) {
        if !trust::tls::ControllerUrl::parse(address).is_ok_and(|u| u.tls) {
            return;
        }
        let mut remote = self.remote.lock().expect("hub lock");
        if remote.addresses.get(from).map(String::as_str) != Some(address) {
            remote
                .addresses
                .insert(from.to_string(), address.to_string());
        }
    }

    /// Where the replica `name` said it is reached, if it is alive.
    pub fn address_of(&self, name: &str) -> Option<String> {
        self.remote
            .lock()
            .expect("hub lock")
            .addresses
            .get(name)
            .cloned()
    }

    /// Hands a log query to the host's session: false when the host is not
    /// connected or has too many queries waiting.
    pub fn ask_logs(&self, tenant: &str, host: &str, ask: LogAsk) -> bool {
        self.sessions
            .lock()
            .expect("hub lock")
            .get(&(tenant.to_string(), host.to_string()))
            .is_some_and(|e| e.asks.try_send(Box::new(ask)).is_ok())
    }

    /// Agent sessions open now.
    pub fn session_count(&self) -> usize {
        self.sessions.lock().expect("hub lock").len()
    }

    /// Whether the host holds a session here or, as far as their changes
    /// said, on another replica.
    pub fn connected(&self, tenant: &str, host: &str) -> bool {
        let key = (tenant.to_string(), host.to_string());
        self.sessions.lock().expect("hub lock").contains_key(&key)
            || self
                .remote
                .lock()
                .expect("hub lock")
                .sessions
                .contains_key(&key)
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
                .ok()
                .map(|(desired, _)| desired);
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
        let a = hub.connect("t1", "a", "prod", &both, "");
        let b = hub.connect("t1", "b", "prod", &web, "");
        let c = hub.connect("t1", "c", "preprod", &web, "");
        let d = hub.connect("t2", "a", "prod", &web, "");
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
    async fn declared_apps_changing_wakes_its_environment_for_the_declaration_only() {
        let hub = Hub::new();
        let web = vec!["web".to_string()];
        let a = hub.connect("t", "a", "prod", &web, "");
        let b = hub.connect("t", "b", "preprod", &web, "");
        hub.apps_changed("t", "prod");
        assert_eq!(
            a.changed().await,
            (Recompute::Nothing, true),
            "no desired release to read again"
        );
        let other = tokio::time::timeout(Duration::from_millis(20), b.changed()).await;
        assert!(other.is_err(), "another environment sleeps");
    }

    #[tokio::test]
    async fn a_replaced_or_evicted_session_is_woken_and_no_longer_current() {
        let hub = Hub::new();
        let web = vec!["web".to_string()];
        let old = hub.connect("t", "a", "prod", &web, "");
        let new = hub.connect("t", "a", "prod", &web, "");
        assert_eq!(old.changed().await.0, Recompute::All);
        assert!(!hub.is_current("t", "a", old.id) && hub.is_current("t", "a", new.id));
        assert!(!old.is_current() && new.is_current());
        hub.disconnect("t", "a", old.id);
        assert!(
            hub.connected("t", "a"),
            "the old session leaving keeps the new"
        );
        hub.evict("t", "a");
        assert_eq!(new.changed().await.0, Recompute::All);
        assert!(!hub.connected("t", "a"));
        assert!(!new.is_current());
    }

    #[test]
    fn a_sessions_certificate_stands_for_its_host_until_taken_away() {
        let hub = Hub::new();
        let web = vec!["web".to_string()];
        let who = |fp: &str| hub.identity(fp).map(|(t, h, e)| format!("{t}/{h}/{e}"));
        assert_eq!(who("fp1"), None, "no session: the store is asked");
        let first = hub.connect("t", "a", "prod", &web, "fp1");
        assert_eq!(who("fp1").as_deref(), Some("t/a/prod"));
        assert_eq!(who("fp2"), None, "another certificate is looked up");
        hub.certified("t", "a", "fp1");
        assert_eq!(
            who("fp1").as_deref(),
            Some("t/a/prod"),
            "its own certificate again"
        );
        hub.certified("t", "a", "fp2");
        assert_eq!(who("fp1"), None, "a new certificate replaced it");

        // A new session with the new certificate; the old one leaving keeps it.
        let second = hub.connect("t", "a", "prod", &web, "fp2");
        hub.disconnect("t", "a", first.id);
        assert_eq!(who("fp2").as_deref(), Some("t/a/prod"));
        // Told by another replica.
        hub.apply(
            "r2",
            Change::Certified {
                tenant: "t".into(),
                host: "a".into(),
                fingerprint: "fp3".into(),
            },
        );
        assert_eq!(who("fp2"), None, "another replica issued a certificate");

        let third = hub.connect("t", "a", "prod", &web, "fp3");
        hub.resync();
        assert_eq!(who("fp3"), None, "changes may have been missed");
        hub.disconnect("t", "a", third.id);

        let _fourth = hub.connect("t", "a", "prod", &web, "fp4");
        hub.evict("t", "a");
        assert_eq!(who("fp4"), None, "revoked: its session was evicted");
        let fifth = hub.connect("t", "a", "prod", &web, "fp5");
        hub.disconnect("t", "a", fifth.id);
        assert_eq!(who("fp5"), None, "the session ended");
        assert!(hub.certs.lock().unwrap().is_empty(), "nothing left behind");
        drop(second);
    }

    /// Every change that wakes sessions to read desired state again moves
    /// the epoch on, whether made here or heard from another replica.
    #[test]
    fn changes_that_wake_sessions_move_the_epoch_on() {
        let hub = Hub::new();
        let mut last = hub.epoch();
        let mut moved = |what: &str| {
            let now = hub.epoch();
            assert!(now > last, "{what} moves the epoch on");
            last = now;
        };
        hub.desired_changed(&DesiredChange {
            tenant: "t",
            environment: "prod",
            app: "web",
            hosts: Some(&["a".to_string()]),
        });
        moved("a step admitted");
        hub.apps_changed("t", "prod");
        moved("declared apps");
        hub.apply(
            "r2",
            Change::Desired {
                tenant: "t".into(),
                environment: "prod".into(),
                app: "web".into(),
                hosts: None,
            },
        );
        moved("another replica's deploy");
        hub.apply(
            "r2",
            Change::Apps {
                tenant: "t".into(),
                environment: "prod".into(),
            },
        );
        moved("another replica's placement");
        hub.resync();
        moved("changes missed");
        let before = hub.epoch();
        hub.apply("r2", Change::Alive);
        assert_eq!(hub.epoch(), before, "nothing changed");
    }
}
