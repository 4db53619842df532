//! How a host is doing with one app, and how that rolls up: per app and
//! environment, then per environment, always the worst of the parts
//! (`rollup`). Pure functions over what the store holds.

use std::collections::BTreeMap;

use crate::lifecycle::Health;

/// Best to worst; a rollup is the maximum of its hosts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum HostState {
    #[default]
    Ok,
    Updating,
    Drifted,
    Offline,
    Failed,
}

impl HostState {
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Ok => "ok",
            HostState::Updating => "updating",
            HostState::Drifted => "drifted",
            HostState::Offline => "offline",
            HostState::Failed => "failed",
        }
    }
}

/// What classification needs of one host's row.
pub struct HostFacts<'a> {
    pub desired_version: &'a str,
    pub desired_generation: u64,
    /// The desired generation the host last acted on.
    pub generation: u64,
    pub running_version: &'a str,
    pub health: Health,
    pub failed_version: &'a str,
    pub offline: bool,
    pub drifted: bool,
}

pub fn classify(f: &HostFacts<'_>) -> HostState {
    // Refused this very change (an older refusal of the same version, on a
    // host a rollout still holds back, is not this change's failure).
    let refused = !f.desired_version.is_empty()
        && f.failed_version == f.desired_version
        && f.generation >= f.desired_generation;
    let at_desired = f.running_version == f.desired_version;
    if refused || (at_desired && f.health == Health::Unhealthy) {
        HostState::Failed
    } else if f.offline {
        HostState::Offline
    } else if f.drifted {
        HostState::Drifted
    } else if at_desired && f.health == Health::Healthy {
        HostState::Ok
    } else {
        HostState::Updating
    }
}

/// One classified host of an app in an environment: what `rollup` counts.
#[derive(Debug, Clone, Copy)]
pub struct Classified<'a> {
    pub app: &'a str,
    pub environment: &'a str,
    pub desired_version: &'a str,
    pub state: HostState,
}

/// Hosts counted by state, and the worst of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub hosts: u32,
    pub ok: u32,
    pub updating: u32,
    pub drifted: u32,
    pub offline: u32,
    pub failed: u32,
    pub worst: HostState,
}

impl Tally {
    fn add(&mut self, state: HostState) {
        self.hosts += 1;
        *match state {
            HostState::Ok => &mut self.ok,
            HostState::Updating => &mut self.updating,
            HostState::Drifted => &mut self.drifted,
            HostState::Offline => &mut self.offline,
            HostState::Failed => &mut self.failed,
        } += 1;
        self.worst = self.worst.max(state);
    }
}

/// An app in an environment: its desired version and its hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppEnvRollup {
    pub app: String,
    pub environment: String,
    pub desired_version: String,
    pub tally: Tally,
}

/// An environment: how many apps and hosts (a host counted once per app),
/// and the worst of its apps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvRollup {
    pub environment: String,
    pub apps: u32,
    pub hosts: u32,
    pub worst: HostState,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rollup {
    /// Ordered by app, then environment.
    pub apps: Vec<AppEnvRollup>,
    /// Ordered by environment.
    pub environments: Vec<EnvRollup>,
}

/// Rolls classified hosts up per app and environment, then per environment.
pub fn rollup<'a>(hosts: impl IntoIterator<Item = Classified<'a>>) -> Rollup {
    let mut apps: BTreeMap<(&str, &str), AppEnvRollup> = BTreeMap::new();
    for h in hosts {
        apps.entry((h.app, h.environment))
            .or_insert_with(|| AppEnvRollup {
                app: h.app.to_string(),
                environment: h.environment.to_string(),
                desired_version: h.desired_version.to_string(),
                tally: Tally::default(),
            })
            .tally
            .add(h.state);
    }
    let mut envs: BTreeMap<&str, EnvRollup> = BTreeMap::new();
    for ((_, env), a) in &apps {
        let e = envs.entry(env).or_insert_with(|| EnvRollup {
            environment: env.to_string(),
            apps: 0,
            hosts: 0,
            worst: HostState::Ok,
        });
        e.apps += 1;
        e.hosts += a.tally.hosts;
        e.worst = e.worst.max(a.tally.worst);
    }
    Rollup {
        environments: envs.into_values().collect(),
        apps: apps.into_values().collect(),
    }
}

/// The fingerprint an acknowledgement is bound to: the agent's digest of
/// the drift (paths and what they hold now), so a new edit needs a new ack;
/// the reported lines for an agent that sends no digest.
pub fn drift_fingerprint(digest: &str, drift: &str, count: u32) -> String {
    if digest.is_empty() {
        trust::sha256(format!("{count}\n{drift}").as_bytes())
    } else {
        digest.to_string()
    }
}

/// Whether the host's drift is there and not acknowledged.
pub fn drifted(digest: &str, drift: &str, count: u32, acked: &str) -> bool {
    count > 0 && drift_fingerprint(digest, drift, count) != acked
}

/// Whether a host's labels satisfy a selector (every label given must match).
pub fn selector_matches(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// How long a host may go unheard before it counts as offline: three missed
/// heartbeats, plus slack for a reconnect.
pub fn offline_after(heartbeat_secs: u32) -> i64 {
    3 * i64::from(heartbeat_secs.max(1)) + 2
}

/// A host is offline when no session of it is open and it missed its
/// heartbeats. An open session is proof enough, however stale `last_seen`
/// (its writes lag under load: with 1,000 agents it went stale for most
/// hosts while every session stayed up). A dropped session alone is not
/// enough either: an agent reconnecting (its restart, the controller's) is
/// heard from again within a heartbeat or two.
pub fn offline(connected: bool, last_seen: i64, now: i64, heartbeat_secs: u32) -> bool {
    !connected && now - last_seen > offline_after(heartbeat_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(running: &'a str, health: Health) -> HostFacts<'a> {
        HostFacts {
            desired_version: "2",
            desired_generation: 5,
            generation: 5,
            running_version: running,
            health,
            failed_version: "",
            offline: false,
            drifted: false,
        }
    }

    #[test]
    fn classification_prefers_the_worst_signal() {
        assert_eq!(classify(&facts("2", Health::Healthy)), HostState::Ok);
        assert_eq!(classify(&facts("1", Health::Healthy)), HostState::Updating);
        assert_eq!(classify(&facts("2", Health::Unhealthy)), HostState::Failed);
        let refused = HostFacts {
            failed_version: "2",
            offline: true,
            ..facts("1", Health::Healthy)
        };
        assert_eq!(classify(&refused), HostState::Failed);
        let held = HostFacts {
            failed_version: "2",
            generation: 4,
            ..facts("1", Health::Healthy)
        };
        assert_eq!(
            classify(&held),
            HostState::Updating,
            "an older refusal of 2, before this deploy of it"
        );
        let off = HostFacts {
            offline: true,
            drifted: true,
            ..facts("2", Health::Healthy)
        };
        assert_eq!(classify(&off), HostState::Offline);
        let drifted = HostFacts {
            drifted: true,
            ..facts("2", Health::Healthy)
        };
        assert_eq!(classify(&drifted), HostState::Drifted);
        assert!(HostState::Failed > HostState::Offline && HostState::Drifted > HostState::Updating);
    }

    #[test]
    fn an_ack_covers_only_the_drift_it_saw() {
        let ack = drift_fingerprint("", "changed app.py", 1);
        assert!(!drifted("", "changed app.py", 1, &ack));
        assert!(drifted("", "changed app.py\nadded x", 2, &ack));
        assert!(!drifted("", "", 0, ""));
        let ack = drift_fingerprint("sha256:one", "changed app.py", 1);
        assert!(
            drifted("sha256:two", "changed app.py", 1, &ack),
            "the same path edited again is new drift"
        );
    }

    #[test]
    fn offline_after_missed_heartbeats() {
        assert!(!offline(false, 100, 110, 10));
        assert!(offline(false, 100, 140, 10));
        assert!(
            !offline(true, 100, 140, 10),
            "an open session is not offline, however stale last_seen"
        );
        assert!(!offline(true, 0, 1_000_000, 2));
        assert!(
            !offline(false, 100, 101, 10),
            "a session just dropped: reconnecting, not offline"
        );
    }

    /// `hosts`: "app env desired state" per host; `expect`: one line per
    /// app@env ("app@env desired: hosts ok/updating/drifted/offline/failed
    /// -> worst"), then one per environment ("env: apps, hosts -> worst").
    fn check(hosts: &[&str], expect: &str) {
        let rows: Vec<Vec<&str>> = hosts.iter().map(|h| h.split(' ').collect()).collect();
        let state = |s: &str| match s {
            "ok" => HostState::Ok,
            "updating" => HostState::Updating,
            "drifted" => HostState::Drifted,
            "offline" => HostState::Offline,
            "failed" => HostState::Failed,
            other => panic!("no state {other:?}"),
        };
        let r = rollup(rows.iter().map(|r| Classified {
            app: r[0],
            environment: r[1],
            desired_version: r[2],
            state: state(r[3]),
        }));
        let mut got = String::new();
        for a in &r.apps {
            let t = &a.tally;
            got.push_str(&format!(
                "{}@{} {}: {} {}/{}/{}/{}/{} -> {}\n",
                a.app,
                a.environment,
                a.desired_version,
                t.hosts,
                t.ok,
                t.updating,
                t.drifted,
                t.offline,
                t.failed,
                t.worst.as_str()
            ));
        }
        for e in &r.environments {
            got.push_str(&format!(
                "{}: {} apps, {} hosts -> {}\n",
                e.environment,
                e.apps,
                e.hosts,
                e.worst.as_str()
            ));
        }
        assert_eq!(got.trim_end(), expect.trim(), "{hosts:?}");
    }

    #[test]
    fn rollups_count_hosts_and_keep_the_worst() {
        check(&[], "");
        check(
            &["web prod 2 ok", "web prod 2 ok"],
            "web@prod 2: 2 2/0/0/0/0 -> ok\nprod: 1 apps, 2 hosts -> ok",
        );
        check(
            &["web prod 2 ok", "web prod 2 updating", "web prod 2 drifted"],
            "web@prod 2: 3 1/1/1/0/0 -> drifted\nprod: 1 apps, 3 hosts -> drifted",
        );
        check(
            &[
                "web prod 2 offline",
                "web prod 2 failed",
                "web preprod 3 ok",
                "api prod 1 updating",
            ],
            "api@prod 1: 1 0/1/0/0/0 -> updating
web@preprod 3: 1 1/0/0/0/0 -> ok
web@prod 2: 2 0/0/0/1/1 -> failed
preprod: 1 apps, 1 hosts -> ok
prod: 2 apps, 3 hosts -> failed",
        );
        check(
            &["web staging  updating"],
            "web@staging : 1 0/1/0/0/0 -> updating\nstaging: 1 apps, 1 hosts -> updating",
        );
    }
}
