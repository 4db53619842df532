//! The deploy lifecycle as data: every step, the step that follows each
//! outcome, the time each step may take, and what an agent restarted in the
//! middle of a step does about it. The executor (`machine.rs`) only walks this
//! table; nothing else decides a transition.
//!
//! ```text
//! Verify ─▶ Fetch ─▶ Unpack ─▶ Prepare ─▶ Stop ─▶ Flip ─▶ Start ─▶ Health ─▶ Hold ─▶ Healthy
//!   │  └─(kept on disk)──────────────────▶ │        │       │        │        │
//!   └──────┴────────┴─────────┴──▶ Refused  └────────┴───────┴────────┴────────┴──▶ RollingBack
//! ```
//! Before `Stop` nothing that serves has been touched, so a failure refuses the
//! release and the old one keeps serving; from `Stop` on, a failure puts the
//! previous release back.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Publisher signatures and downgrade rules; is the release kept on disk?
    Verify,
    /// Download the blob into the app's cache (resumable) and unpack it as it
    /// arrives, beside the running release, checked against the manifest; the
    /// tree is synced to disk and named only once the whole blob verified.
    Fetch,
    /// Record the unpacked tree as installed.
    Unpack,
    /// Check the spec, link shared files, read the env, run `prepare`, take
    /// the drift baseline.
    Prepare,
    /// Restart warning, then stop the running release's processes.
    Stop,
    /// Point `current` at the new release (rename over the link).
    Flip,
    /// Start the new release's processes.
    Start,
    /// Each process ready within its deadline: alive, right release, env names,
    /// its probe.
    Health,
    /// All checks hold for the minimum healthy time.
    Hold,
    /// Record the release as running; prune old releases; `post_activate`.
    Healthy,
    /// Put the previous release back (stop, `on_rollback`, flip back, start,
    /// check).
    RollingBack,
    /// Record the refusal; the running release was never touched.
    Refused,
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// `Verify` only: the release is already unpacked on this host and matches
    /// its baseline, so fetching and unpacking it again is skipped.
    Kept,
    Failed,
}

/// What a restarted agent does with the step it found persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRestart {
    /// Nothing serving was touched: drop the half-done work (its release dir
    /// unless `current` holds it) and start over when the directive comes again.
    Undo,
    /// Run this step again (every step from `Stop` on is idempotent).
    Redo,
    /// Run this step instead.
    Resume(Step),
}

/// A step's time limit: fixed, or given by the release's spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Fixed(Duration),
    /// The `prepare` hook's `timeout_secs`, plus time to hash the release for
    /// its drift baseline.
    PrepareHook,
    /// The release's processes' `health.timeout_secs` (checked one after the
    /// other), plus slack.
    Readiness,
    /// The longest `min_healthy_secs`, plus slack.
    MinHealthy,
    /// What the service backend may take to stop each running process, plus
    /// the running release's restart warning.
    StopGrace,
    /// Stopping, `on_rollback`'s timeout, then the previous release's
    /// readiness and minimum healthy time.
    RollBack,
    /// Bookkeeping, and with side-by-side activation moving traffic and
    /// draining the old instance: the drain timeout and the stop bound.
    Drain,
}

const fn secs(s: u64) -> Limit {
    Limit::Fixed(Duration::from_secs(s))
}

/// One row of the table: the step's limit, where each outcome leads, and what a
/// restart does.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub limit: Limit,
    pub on_ok: Option<Step>,
    pub on_failure: Option<Step>,
    pub on_restart: OnRestart,
}

impl Step {
    pub const ALL: [Step; 12] = [
        Step::Verify,
        Step::Fetch,
        Step::Unpack,
        Step::Prepare,
        Step::Stop,
        Step::Flip,
        Step::Start,
        Step::Health,
        Step::Hold,
        Step::Healthy,
        Step::RollingBack,
        Step::Refused,
    ];

    /// The transition table.
    pub const fn row(self) -> Row {
        use OnRestart::*;
        use Step::*;
        let (limit, on_ok, on_failure, on_restart) = match self {
            Verify => (secs(30), Some(Fetch), Some(Refused), Undo),
            // A stalled stream is given up after 60 s by the fetcher itself; a
            // big release on a slow link may take long, and running out of time
            // here postpones the deploy instead of refusing the release.
            Fetch => (secs(24 * 3600), Some(Unpack), Some(Refused), Undo),
            Unpack => (secs(24 * 3600), Some(Prepare), Some(Refused), Undo),
            Prepare => (Limit::PrepareHook, Some(Stop), Some(Refused), Undo),
            Stop => (Limit::StopGrace, Some(Flip), Some(RollingBack), Redo),
            Flip => (secs(30), Some(Start), Some(RollingBack), Redo),
            Start => (secs(120), Some(Health), Some(RollingBack), Redo),
            Health => (Limit::Readiness, Some(Hold), Some(RollingBack), Redo),
            // A restart cannot know how long the release held: judge it anew.
            Hold => (
                Limit::MinHealthy,
                Some(Healthy),
                Some(RollingBack),
                Resume(Health),
            ),
            Healthy => (Limit::Drain, None, None, Redo),
            RollingBack => (Limit::RollBack, None, None, Redo),
            Refused => (secs(30), None, None, Redo),
        };
        Row {
            limit,
            on_ok,
            on_failure,
            on_restart,
        }
    }

    /// The step after `outcome`; None when the deploy is over.
    pub fn next(self, outcome: Outcome) -> Option<Step> {
        match (self, outcome) {
            (Step::Verify, Outcome::Kept) => Some(Step::Prepare),
            (_, Outcome::Ok | Outcome::Kept) => self.row().on_ok,
            (_, Outcome::Failed) => self.row().on_failure,
        }
    }

    /// Running out of time here is not the release's fault (a slow link, a
    /// big tree): the deploy is postponed, nothing is recorded against it.
    pub fn timeout_postpones(self) -> bool {
        matches!(self, Step::Fetch | Step::Unpack)
    }

    /// True once the running release may have been stopped: a failure from
    /// here on must put the previous release back.
    pub fn touches_serving(self) -> bool {
        matches!(
            self,
            Step::Stop | Step::Flip | Step::Start | Step::Health | Step::Hold | Step::RollingBack
        )
    }

    /// The name used in `deploy.log`, status and errors.
    pub fn name(self) -> &'static str {
        match self {
            Step::Verify => "verify",
            Step::Fetch => "fetch",
            Step::Unpack => "unpack",
            Step::Prepare => "prepare",
            Step::Stop => "stop",
            Step::Flip => "flip",
            Step::Start => "start",
            Step::Health => "health",
            Step::Hold => "hold",
            Step::Healthy => "healthy",
            Step::RollingBack => "rolling_back",
            Step::Refused => "refused",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the table from `from` with every step answering `outcome`
    /// (Verify may answer `first`).
    fn path(first: Outcome, outcome: Outcome) -> Vec<Step> {
        let mut out = vec![Step::Verify];
        let mut step = Step::Verify.next(first);
        while let Some(s) = step {
            out.push(s);
            step = s.next(outcome);
            assert!(out.len() <= Step::ALL.len(), "the table loops: {out:?}");
        }
        out
    }

    #[test]
    fn a_good_release_walks_every_step_once_and_ends_healthy() {
        use Step::*;
        assert_eq!(
            path(Outcome::Ok, Outcome::Ok),
            [
                Verify, Fetch, Unpack, Prepare, Stop, Flip, Start, Health, Hold, Healthy
            ]
        );
    }

    #[test]
    fn a_release_kept_on_disk_skips_fetch_and_unpack() {
        use Step::*;
        assert_eq!(
            path(Outcome::Kept, Outcome::Ok),
            [Verify, Prepare, Stop, Flip, Start, Health, Hold, Healthy]
        );
    }

    #[test]
    fn failures_before_stop_refuse_and_after_it_roll_back() {
        for step in Step::ALL {
            let after = step.next(Outcome::Failed);
            match step {
                Step::Verify | Step::Fetch | Step::Unpack | Step::Prepare => {
                    assert_eq!(after, Some(Step::Refused), "{step}");
                    assert!(!step.touches_serving(), "{step}");
                }
                Step::Stop | Step::Flip | Step::Start | Step::Health | Step::Hold => {
                    assert_eq!(after, Some(Step::RollingBack), "{step}");
                    assert!(step.touches_serving(), "{step}");
                }
                Step::Healthy | Step::RollingBack | Step::Refused => {
                    assert_eq!(after, None, "{step} is terminal")
                }
            }
        }
    }

    #[test]
    fn a_restart_undoes_what_left_serving_untouched_and_finishes_the_rest() {
        for step in Step::ALL {
            let resume = step.row().on_restart;
            if step.touches_serving() || step.next(Outcome::Ok).is_none() {
                assert_ne!(
                    resume,
                    OnRestart::Undo,
                    "{step} must be finished, not undone"
                );
            } else {
                assert_eq!(resume, OnRestart::Undo, "{step} touched nothing serving");
            }
        }
        assert_eq!(Step::Hold.row().on_restart, OnRestart::Resume(Step::Health));
    }

    #[test]
    fn every_step_has_a_limit_and_a_distinct_name() {
        let names: std::collections::BTreeSet<_> = Step::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(names.len(), Step::ALL.len());
        for step in Step::ALL {
            if let Limit::Fixed(d) = step.row().limit {
                assert!(d > Duration::ZERO, "{step}");
            }
            // Round-trips through status.json under its snake_case name.
            let json = serde_json::to_string(&step).unwrap();
            assert_eq!(json, format!("\"{}\"", step.name()));
        }
    }
}
