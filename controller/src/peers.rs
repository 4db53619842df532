//! Changes between the replicas that share one PostgreSQL store. A change
//! made on one replica (a deploy, a step admitted, a host revoked, a host's
//! report) wakes that replica's sessions and engine through the `Hub`, and is
//! also sent here: batched into `NOTIFY` messages on one channel (names and
//! ids only, under PostgreSQL's 8,000-byte payload limit), heard by every
//! other replica's listener and applied to its own hub. Nothing is replayed
//! after a listener reconnects, so a replica that may have missed changes
//! resyncs: every session recomputes everything and the engine judges every
//! host again. A SQLite store has one controller and none of this runs.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::hub::{Change, Hub};
use crate::store::Store;

/// The channel every replica listens on.
pub const CHANNEL: &str = "slipway_changes";
/// Under PostgreSQL's default limit of 8,000 bytes for a payload.
const MAX_PAYLOAD: usize = 7_800;
/// Changes waiting to be sent; past this they are dropped and a resync is
/// sent instead (a store that stopped answering, a burst of reports).
const QUEUED: usize = 4_096;
/// Every replica says it is alive this often, changes or not...
const ALIVE_EVERY: Duration = Duration::from_secs(2);
/// ...and one not heard from for this long is taken for dead: the sessions
/// it held count as ended (its agents are reconnecting elsewhere).
pub const REPLICA_TTL: Duration = Duration::from_secs(6);

/// Where the hub puts the changes made on this replica.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Change>,
    /// Changes were dropped: the next message says resync.
    overflowed: Arc<AtomicBool>,
    /// The next message asks the others for their sessions.
    asking: Arc<AtomicBool>,
}

impl Outbox {
    pub fn send(&self, change: Change) {
        if self.tx.try_send(change).is_err() {
            self.overflowed.store(true, Ordering::Relaxed);
        }
    }

    /// Asks the other replicas to say every session they hold (this one
    /// has just started listening, or may have missed their changes).
    fn ask(&self) {
        self.asking.store(true, Ordering::Relaxed);
        self.send(Change::Alive);
    }
}

/// One NOTIFY payload.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Message {
    /// The sending replica (it does not apply its own).
    from: String,
    /// Where the others reach the sender (`--advertise-address`).
    #[serde(default)]
    address: String,
    #[serde(default)]
    changes: Vec<Change>,
    /// Changes of the sender's were lost on the way: everyone recomputes
    /// everything and forgets the sender's sessions, which follow again.
    #[serde(default)]
    resync: bool,
    /// Everyone says every session it holds.
    #[serde(default)]
    ask: bool,
}

/// Starts sending this replica's changes and applying the others', until
/// `shutdown`.
pub fn start(store: Store, url: String, hub: Hub, me: Me, shutdown: CancellationToken) {
    let Me { replica, address } = me;
    let (tx, rx) = mpsc::channel(QUEUED);
    let outbox = Outbox {
        tx,
        overflowed: Arc::default(),
        asking: Arc::default(),
    };
    hub.publish_to(outbox.clone());
    tokio::spawn(send(
        store,
        rx,
        outbox.clone(),
        hub.clone(),
        Me {
            replica: replica.clone(),
            address,
        },
    ));
    tokio::spawn({
        let (outbox, shutdown) = (outbox.clone(), shutdown.clone());
        async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(ALIVE_EVERY) => outbox.send(Change::Alive),
                }
            }
        }
    });
    tokio::spawn(listen(url, hub, outbox, replica, shutdown));
}

/// This replica, as the others know it.
#[derive(Debug, Clone, Default)]
pub struct Me {
    pub replica: String,
    /// Where the others call it (`https://HOST:PORT`).
    pub address: String,
}

/// Sends the changes queued, as few messages as fit them.
async fn send(store: Store, mut rx: mpsc::Receiver<Change>, outbox: Outbox, hub: Hub, me: Me) {
    let mut owe_resync = false;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(c) = rx.try_recv() {
            batch.push(c);
            if batch.len() >= 1_024 {
                break;
            }
        }
        owe_resync |= outbox.overflowed.swap(false, Ordering::Relaxed);
        let ask = outbox.asking.swap(false, Ordering::Relaxed);
        if owe_resync {
            // The others forget what this replica said of its sessions: say
            // it all again, after the resync.
            batch.extend(hub.announce());
        }
        let mut failed = false;
        for payload in payloads(&me, batch, owe_resync, ask) {
            if let Err(e) = store.notify(CHANNEL, &payload).await {
                tracing::warn!(error = %e, "sending changes to the other controllers failed; they will resync");
                failed = true;
                break;
            }
        }
        owe_resync = failed;
    }
}

/// The changes as messages of at most `MAX_PAYLOAD` bytes, duplicates left
/// out. A desired change naming too many hosts to fit names none (every
/// host of the environment recomputes the app, which changes nothing for
/// the others).
fn payloads(me: &Me, changes: Vec<Change>, resync: bool, ask: bool) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut current = Message {
        from: me.replica.clone(),
        address: me.address.clone(),
        changes: Vec::new(),
        resync,
        ask,
    };
    let empty = serde_json::to_string(&current).unwrap_or_default().len();
    let mut size = empty;
    for mut c in changes {
        let mut text = serde_json::to_string(&c).unwrap_or_default();
        if empty + text.len() + 1 > MAX_PAYLOAD {
            // Too big for one message: say less. A desired change for too
            // many hosts names none; a session with too many apps names none
            // (another replica then asks it for any app's logs).
            match &mut c {
                Change::Desired { hosts, .. } => *hosts = None,
                Change::Connected { apps, .. } => *apps = None,
                _ => {}
            }
            text = serde_json::to_string(&c).unwrap_or_default();
        }
        if empty + text.len() + 1 > MAX_PAYLOAD {
            // Never fits: left out, not left to fail the messages after it.
            tracing::warn!(
                bytes = text.len(),
                "a change too large to send to the other controllers was left out"
            );
            continue;
        }
        if !seen.insert(text.clone()) {
            continue;
        }
        if size + text.len() + 1 > MAX_PAYLOAD && !current.changes.is_empty() {
            out.push(serde_json::to_string(&current).unwrap_or_default());
            current.changes.clear();
            current.resync = false;
            current.ask = false;
            size = empty;
        }
        size += text.len() + 1;
        current.changes.push(c);
    }
    if !current.changes.is_empty() || current.resync || current.ask {
        out.push(serde_json::to_string(&current).unwrap_or_default());
    }
    out
}

/// Applies the other replicas' changes to `hub`. At every (re)connect it
/// asks them for their sessions; after a reconnect (changes sent meanwhile
/// are lost) it also resyncs. Replicas gone silent lose their sessions.
async fn listen(
    url: String,
    hub: Hub,
    outbox: Outbox,
    replica: String,
    shutdown: CancellationToken,
) {
    let mut first = true;
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    loop {
        let connected = async {
            let mut l = PgListener::connect(&url).await?;
            l.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        let mut listener = tokio::select! {
            _ = shutdown.cancelled() => return,
            l = connected => match l {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "listening for other controllers' changes failed; retrying");
                    hub.expire_replicas(REPLICA_TTL);
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            },
        };
        if !first {
            tracing::info!("listening for other controllers' changes again; resyncing");
            hub.resync();
        }
        first = false;
        outbox.ask();
        loop {
            let got = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = sweep.tick() => {
                    hub.expire_replicas(REPLICA_TTL);
                    continue;
                }
                got = listener.try_recv() => got,
            };
            match got {
                Ok(Some(n)) => apply(&hub, &outbox, &replica, n.payload()),
                Ok(None) | Err(_) => {
                    tracing::warn!("lost the connection that hears other controllers' changes");
                    hub.resync();
                    break;
                }
            }
        }
    }
}

fn apply(hub: &Hub, outbox: &Outbox, replica: &str, payload: &str) {
    let message: Message = match serde_json::from_str(payload) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, bytes = payload.len(), "unreadable change from another controller; resyncing");
            hub.resync();
            return;
        }
    };
    if message.from == replica {
        return;
    }
    hub.addressed(&message.from, &message.address);
    if message.resync {
        hub.forget_replica(&message.from);
        hub.resync();
    }
    if message.ask {
        for c in hub.announce() {
            outbox.send(c);
        }
    }
    for c in message.changes {
        hub.apply(&message.from, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Holder;

    fn desired(hosts: Option<Vec<String>>) -> Change {
        Change::Desired {
            tenant: "t".into(),
            environment: "prod".into(),
            app: "web".into(),
            hosts,
        }
    }

    #[test]
    fn changes_fit_the_payload_limit_without_duplicates() {
        let mut changes: Vec<Change> = (0..2_000)
            .map(|i| Change::Reported {
                hosts: vec![("t".into(), format!("host-{i:04}"), "web".into())],
            })
            .collect();
        changes.push(Change::Rollouts);
        changes.push(Change::Rollouts);
        let many: Vec<String> = (0..1_000).map(|i| format!("host-{i:04}")).collect();
        changes.push(desired(Some(many)));
        // A host with 256 long app names: its session is said without them.
        let apps: Vec<String> = (0..256).map(|i| format!("{i:0>100}")).collect();
        let connected = |apps| Change::Connected {
            tenant: "t".into(),
            host: "big".into(),
            environment: "prod".into(),
            apps,
        };
        changes.push(connected(Some(apps)));
        let me = Me {
            replica: "r1".into(),
            address: "https://10.0.0.1:7443".into(),
        };
        let out = payloads(&me, changes, true, false);
        assert!(out.len() > 1);
        let mut back = Vec::new();
        for (i, p) in out.iter().enumerate() {
            assert!(p.len() <= MAX_PAYLOAD, "{} bytes", p.len());
            let m: Message = serde_json::from_str(p).unwrap();
            assert_eq!(m.from, "r1");
            assert_eq!(m.address, me.address, "every message says where r1 is");
            assert_eq!(m.resync, i == 0, "the resync goes once, first");
            back.extend(m.changes);
        }
        assert_eq!(back.len(), 2_000 + 1 + 1 + 1, "one Rollouts kept");
        assert_eq!(
            back[back.len() - 2],
            desired(None),
            "too many hosts to name: the whole environment"
        );
        assert_eq!(
            back.last(),
            Some(&connected(None)),
            "too many apps to name: any app"
        );
    }

    fn test_outbox() -> (Outbox, mpsc::Receiver<Change>) {
        let (tx, rx) = mpsc::channel(QUEUED);
        let outbox = Outbox {
            tx,
            overflowed: Arc::default(),
            asking: Arc::default(),
        };
        (outbox, rx)
    }

    fn message(from: &str, changes: Vec<Change>, resync: bool, ask: bool) -> String {
        serde_json::to_string(&Message {
            from: from.into(),
            address: format!("https://{from}.example:7443"),
            changes,
            resync,
            ask,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn sessions_on_other_replicas_count_as_connected_until_they_end_or_go_silent() {
        let hub = Hub::new();
        let (outbox, mut rx) = test_outbox();
        let connected = |host: &str| Change::Connected {
            tenant: "t".into(),
            host: host.into(),
            environment: "prod".into(),
            apps: Some(vec!["web".into()]),
        };
        apply(
            &hub,
            &outbox,
            "me",
            &message("b", vec![connected("h1"), connected("h2")], false, false),
        );
        apply(
            &hub,
            &outbox,
            "me",
            &message("c", vec![connected("h3")], false, false),
        );
        assert!(hub.connected("t", "h1") && hub.connected("t", "h3"));
        // A log query made here finds them, and where to ask.
        let _here = hub.connect("t", "h0", "prod", &["web".into()], "");
        let _other_env = hub.connect("t", "h9", "preprod", &["web".into()], "");
        assert_eq!(
            hub.hosts_running("t", "prod", "web"),
            [
                ("h0".to_string(), Holder::Here),
                ("h1".to_string(), Holder::Replica("b".into())),
                ("h2".to_string(), Holder::Replica("b".into())),
                ("h3".to_string(), Holder::Replica("c".into())),
            ]
        );
        assert!(hub.hosts_running("t", "prod", "api").is_empty());
        assert!(hub.hosts_running("u", "prod", "web").is_empty());
        // A session said without its apps (too many) may run any app.
        let unsaid = Change::Connected {
            tenant: "t".into(),
            host: "h5".into(),
            environment: "prod".into(),
            apps: None,
        };
        apply(
            &hub,
            &outbox,
            "me",
            &message("c", vec![unsaid], false, false),
        );
        assert_eq!(
            hub.hosts_running("t", "prod", "api"),
            [("h5".to_string(), Holder::Replica("c".into()))]
        );
        assert_eq!(
            hub.address_of("c").as_deref(),
            Some("https://c.example:7443")
        );
        // A relay never goes in plaintext, nor to what is not an address.
        for bad in ["http://127.0.0.1:7400", "not an address", ""] {
            hub.addressed("x", bad);
            assert_eq!(hub.address_of("x"), None, "{bad:?}");
        }
        let before = hub.departures();
        apply(
            &hub,
            &outbox,
            "me",
            &message(
                "c",
                vec![Change::Disconnected {
                    tenant: "t".into(),
                    host: "h1".into(),
                }],
                false,
                false,
            ),
        );
        assert!(hub.connected("t", "h1"), "c does not hold h1: b does");
        assert_eq!(hub.departures(), before);
        apply(
            &hub,
            &outbox,
            "me",
            &message(
                "b",
                vec![Change::Disconnected {
                    tenant: "t".into(),
                    host: "h1".into(),
                }],
                false,
                false,
            ),
        );
        assert!(!hub.connected("t", "h1"));
        assert!(
            hub.departures() > before,
            "the engine asks again who is connected"
        );

        // b resyncs: what it said before is forgotten, what follows counts.
        apply(
            &hub,
            &outbox,
            "me",
            &message("b", vec![connected("h4")], true, false),
        );
        assert!(!hub.connected("t", "h2") && hub.connected("t", "h4"));

        // A replica that asks hears of this one's sessions.
        let _mine = hub.connect("t", "local", "prod", &["web".into()], "");
        while rx.try_recv().is_ok() {}
        apply(&hub, &outbox, "me", &message("d", vec![], false, true));
        let mut told = Vec::new();
        while let Ok(c) = rx.try_recv() {
            told.push(c);
        }
        assert!(told.contains(&connected("local")), "{told:?}");

        // c goes silent: its sessions end here.
        std::thread::sleep(Duration::from_millis(60));
        apply(
            &hub,
            &outbox,
            "me",
            &message("b", vec![Change::Alive], false, false),
        );
        hub.expire_replicas(Duration::from_millis(50));
        assert!(!hub.connected("t", "h3"), "c was not heard from");
        assert!(hub.connected("t", "h4"), "b was");
        assert_eq!(hub.address_of("c"), None, "a silent replica is not called");
    }

    #[tokio::test]
    async fn a_replica_ignores_its_own_changes_and_resyncs_on_garbage() {
        let hub = Hub::new();
        let (outbox, _rx) = test_outbox();
        let s = hub.connect("t", "h1", "prod", &["web".into()], "");
        let msg = |from: &str| {
            serde_json::to_string(&Message {
                from: from.into(),
                address: String::new(),
                changes: vec![desired(None)],
                resync: false,
                ask: false,
            })
            .unwrap()
        };
        apply(&hub, &outbox, "me", &msg("me"));
        let quiet = tokio::time::timeout(Duration::from_millis(50), s.changed()).await;
        assert!(
            quiet.is_err(),
            "its own change was applied when it was made"
        );
        apply(&hub, &outbox, "me", &msg("other"));
        let (what, _) = tokio::time::timeout(Duration::from_secs(1), s.changed())
            .await
            .unwrap();
        assert!(what.covers("web"));
        apply(&hub, &outbox, "me", "{not json");
        let (what, declared) = tokio::time::timeout(Duration::from_secs(1), s.changed())
            .await
            .unwrap();
        assert!(what.covers("anything") && declared, "resync: everything");
        assert!(hub.take_resync());
    }
}
