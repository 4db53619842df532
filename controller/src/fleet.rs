//! How a host is doing with one app, and how that rolls up: per app and
//! environment, then per environment, always the worst of the parts. Pure
//! functions over what the store holds.

use crate::lifecycle::Health;

/// Best to worst; a rollup is the maximum of its hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum HostState {
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
    selector: &std::collections::BTreeMap<String, String>,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// How long a host may go unheard before it counts as offline: three missed
/// heartbeats, plus slack for a reconnect.
pub fn offline_after(heartbeat_secs: u32) -> i64 {
    3 * i64::from(heartbeat_secs.max(1)) + 2
}

/// A host is offline when it missed its heartbeats. A dropped session alone
/// is not enough: an agent reconnecting (its restart, the controller's) is
/// heard from again within a heartbeat or two.
pub fn offline(last_seen: i64, now: i64, heartbeat_secs: u32) -> bool {
    now - last_seen > offline_after(heartbeat_secs)
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
        assert!(!offline(100, 110, 10));
        assert!(offline(100, 140, 10));
        assert!(
            !offline(100, 101, 10),
            "a session just dropped: reconnecting, not offline"
        );
    }
}
