//! Changes of desired release, rollout strategies and plans: which hosts
//! change in which step. Pure functions, no I/O: `intent`, the engine
//! (`rollout::run`) and the store use them.

use std::collections::BTreeMap;
use std::fmt;

/// A change of desired release to roll out.
pub struct Change<'a> {
    pub tenant: &'a str,
    pub app: &'a str,
    pub environment: &'a str,
    pub version: &'a str,
    pub digest: &'a str,
    pub authorization: &'a str,
    pub strategy: Strategy,
    pub actor: &'a str,
    /// The desired generation this change was decided against (0: none
    /// yet): if app@env moved on meanwhile (a change made at the same time,
    /// on this replica or another), the change is refused, not stacked.
    pub expected_generation: u64,
}

/// A number of hosts, absolute or relative to the environment's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    Count(u32),
    Percent(u32),
}

impl Amount {
    /// "3" or "25%".
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad = || format!("{s:?} is not a host count (\"N\") or a share (\"N%\")");
        if let Some(p) = s.strip_suffix('%') {
            let p: u32 = p.trim().parse().map_err(|_| bad())?;
            if p > 100 {
                return Err(format!("{s:?}: a share is at most 100%"));
            }
            Ok(Amount::Percent(p))
        } else {
            s.parse().map(Amount::Count).map_err(|_| bad())
        }
    }

    /// How many of `total` hosts this amounts to (a share rounds up: batch sizes).
    pub fn of(self, total: usize) -> usize {
        match self {
            Amount::Count(n) => n as usize,
            Amount::Percent(p) => (total * p as usize).div_ceil(100),
        }
    }

    /// Failures this tolerates among `total` hosts (a share rounds down:
    /// 10% of 6 hosts tolerates none).
    pub fn tolerated_of(self, total: usize) -> usize {
        match self {
            Amount::Count(n) => n as usize,
            Amount::Percent(p) => total * p as usize / 100,
        }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Count(n) => write!(f, "{n}"),
            Amount::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// What a rollout does with a host that is offline (no session, and its
/// heartbeats stale) when its step starts or during it. Never a canary: an
/// offline canary is always waited for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OfflinePolicy {
    /// Count it failed at once (against the failure threshold).
    Fail,
    /// Hold the step until it comes back and is judged, or the step times
    /// out: then it counts failed (timeout). The default: a rollout never
    /// passes a step on hosts it did not judge, and a host that reconnects
    /// within the batch timeout (an agent restart, a network blip) costs
    /// nothing.
    #[default]
    Wait,
    /// Skip it (outcome `offline`): it converges when it comes back, unjudged.
    Skip,
}

impl OfflinePolicy {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "fail" => Some(Self::Fail),
            "wait" => Some(Self::Wait),
            "skip" => Some(Self::Skip),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fail => "fail",
            Self::Wait => "wait",
            Self::Skip => "skip",
        }
    }
}

impl fmt::Display for OfflinePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who applies a release's pending database migrations in an environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationPolicy {
    /// The agent applies them before the flip (after a passing dry run).
    Auto,
    /// The agent refuses the release while any is pending, before anything
    /// stops, until a promoter approves them (`slipctl migrate`).
    Manual,
}

impl MigrationPolicy {
    /// Production never applies migrations by itself unless told to.
    pub fn default_for(production: bool) -> Self {
        if production { Self::Manual } else { Self::Auto }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(Self::Auto),
            "manual" => Some(Self::Manual),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Manual => "manual",
        }
    }
}

/// How a change of desired release reaches an environment's hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Strategy {
    /// Hosts changed first, alone; a failure among them always halts.
    pub canary: u32,
    /// Hosts per batch after the canary (at least one).
    pub batch: Amount,
    pub batch_timeout_secs: u32,
    pub pause_secs: u32,
    /// Failed hosts tolerated before the rollout halts.
    pub max_failures: Amount,
    pub auto_revert: bool,
    pub offline: OfflinePolicy,
}

impl Default for Strategy {
    fn default() -> Self {
        Self {
            canary: 1,
            batch: Amount::Percent(25),
            batch_timeout_secs: 600,
            pause_secs: 0,
            max_failures: Amount::Count(0),
            auto_revert: true,
            offline: OfflinePolicy::Wait,
        }
    }
}

impl Strategy {
    /// Every host at once and nothing reverted: a manual rollback must not
    /// wait for canaries, and one host failing it must not put the whole
    /// environment back on the release being rolled back from.
    pub fn rollback(self) -> Self {
        Self {
            canary: 0,
            batch: Amount::Percent(100),
            max_failures: Amount::Percent(100),
            auto_revert: false,
            ..self
        }
    }
}

/// The strategy fields one change sets for itself (`None`: the
/// environment's), already validated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StrategyOverride {
    pub canary: Option<u32>,
    pub batch: Option<Amount>,
    pub batch_timeout_secs: Option<u32>,
    pub pause_secs: Option<u32>,
    pub max_failures: Option<Amount>,
    pub auto_revert: Option<bool>,
    pub offline: Option<OfflinePolicy>,
}

impl Strategy {
    /// This strategy with the fields `o` sets.
    pub fn with(self, o: &StrategyOverride) -> Self {
        Self {
            canary: o.canary.unwrap_or(self.canary),
            batch: o.batch.unwrap_or(self.batch),
            batch_timeout_secs: o.batch_timeout_secs.unwrap_or(self.batch_timeout_secs),
            pause_secs: o.pause_secs.unwrap_or(self.pause_secs),
            max_failures: o.max_failures.unwrap_or(self.max_failures),
            auto_revert: o.auto_revert.unwrap_or(self.auto_revert),
            offline: o.offline.unwrap_or(self.offline),
        }
    }
}

/// What the planner needs to know of a host.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub name: String,
    pub criticality: String,
    pub labels: BTreeMap<String, String>,
}

fn criticality_rank(c: &str) -> u8 {
    match c {
        "low" => 0,
        "high" => 2,
        "critical" => 3,
        _ => 1,
    }
}

pub const CRITICALITIES: [&str; 4] = ["low", "medium", "high", "critical"];

/// Orders the hosts (label `canary=true` first, then the least critical, then
/// by name) and cuts them into steps: step 0 the canaries, then batches.
/// Returns (host, step) for every host, and the number of steps.
pub fn plan(hosts: &[Candidate], s: &Strategy) -> (Vec<(String, u32)>, u32) {
    let mut order: Vec<&Candidate> = hosts.iter().collect();
    order.sort_by(|a, b| {
        let canary = |c: &Candidate| c.labels.get("canary").map(String::as_str) != Some("true");
        (canary(a), criticality_rank(&a.criticality), &a.name).cmp(&(
            canary(b),
            criticality_rank(&b.criticality),
            &b.name,
        ))
    });
    let total = order.len();
    let mut out = Vec::with_capacity(total);
    let mut step = 0u32;
    let mut rest = order.as_slice();
    let canaries = (s.canary as usize).min(total);
    if canaries > 0 {
        let (first, tail) = rest.split_at(canaries);
        out.extend(first.iter().map(|c| (c.name.clone(), step)));
        rest = tail;
        step += 1;
    }
    let batch = s.batch.of(total).max(1);
    for chunk in rest.chunks(batch) {
        out.extend(chunk.iter().map(|c| (c.name.clone(), step)));
        step += 1;
    }
    (out, step)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, criticality: &str, canary: bool) -> Candidate {
        let mut labels = BTreeMap::new();
        if canary {
            labels.insert("canary".into(), "true".into());
        }
        Candidate {
            name: name.into(),
            criticality: criticality.into(),
            labels,
        }
    }

    fn steps_of(plan: &[(String, u32)]) -> Vec<Vec<&str>> {
        let mut out: Vec<Vec<&str>> = Vec::new();
        for (h, s) in plan {
            if out.len() <= *s as usize {
                out.resize(*s as usize + 1, Vec::new());
            }
            out[*s as usize].push(h);
        }
        out
    }

    #[test]
    fn amounts_parse_and_round_up() {
        assert_eq!(Amount::parse("2"), Ok(Amount::Count(2)));
        assert_eq!(Amount::parse("25%"), Ok(Amount::Percent(25)));
        assert!(Amount::parse("150%").is_err());
        assert!(Amount::parse("two").unwrap_err().contains("\"two\""));
        assert_eq!(Amount::Percent(25).of(6), 2, "1.5 hosts round up");
        assert_eq!(Amount::Percent(100).of(6), 6);
        assert_eq!(Amount::Count(3).of(6), 3);
        assert_eq!(
            Amount::Percent(10).tolerated_of(6),
            0,
            "failures round down"
        );
        assert_eq!(Amount::Percent(50).tolerated_of(5), 2);
    }

    #[test]
    fn canary_first_then_batches() {
        let hosts: Vec<_> = (1..=6)
            .map(|i| host(&format!("h{i}"), "medium", false))
            .collect();
        let s = Strategy {
            batch: Amount::Count(2),
            ..Strategy::default()
        };
        let (plan, steps) = plan(&hosts, &s);
        assert_eq!(steps, 4);
        assert_eq!(
            steps_of(&plan),
            vec![vec!["h1"], vec!["h2", "h3"], vec!["h4", "h5"], vec!["h6"]]
        );
    }

    #[test]
    fn labelled_canaries_and_low_criticality_go_first() {
        let hosts = vec![
            host("a", "critical", false),
            host("b", "low", false),
            host("c", "high", true),
            host("d", "medium", false),
        ];
        let (plan, steps) = plan(
            &hosts,
            &Strategy {
                batch: Amount::Percent(50),
                ..Strategy::default()
            },
        );
        assert_eq!(steps, 3);
        assert_eq!(steps_of(&plan), vec![vec!["c"], vec!["b", "d"], vec!["a"]]);
    }

    #[test]
    fn all_at_once_and_empty() {
        let hosts: Vec<_> = (1..=3).map(|i| host(&format!("h{i}"), "", false)).collect();
        let (plan1, steps) = plan(&hosts, &Strategy::default().rollback());
        assert_eq!(steps, 1);
        assert_eq!(plan1.len(), 3);
        let (none, steps) = plan(&[], &Strategy::default());
        assert!(none.is_empty());
        assert_eq!(steps, 0);
    }
}
