//! The rollout lifecycle as types: the state of a rollout and the outcome of
//! each host in it. Stored as lowercase text (`as_str`), carried as strings in
//! the proto (converted at the gRPC edge).

use std::fmt;

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, sqlx::Type)]
#[sqlx(rename_all = "lowercase")]
pub enum RolloutState {
    /// Admitting steps and judging hosts.
    Running,
    /// Judged but admits no new step until resumed.
    Paused,
    /// Stopped past its failure threshold, nothing reverted (auto-revert off
    /// or no previous release); still holds the hosts it did not admit.
    Halted,
    /// Every step judged within the failure threshold.
    Succeeded,
    /// Halted and put back to its previous release by the engine.
    Reverted,
    /// Stopped and reverted by an operator.
    Aborted,
    /// Replaced by a newer change of the same app@env before it ended.
    Superseded,
}

impl RolloutState {
    /// States in which a rollout holds back the hosts it has not admitted.
    pub const HOLDING: [RolloutState; 3] = [Self::Running, Self::Paused, Self::Halted];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Halted => "halted",
            Self::Succeeded => "succeeded",
            Self::Reverted => "reverted",
            Self::Aborted => "aborted",
            Self::Superseded => "superseded",
        }
    }

    /// The rollout holds back hosts it has not admitted.
    pub fn is_holding(self) -> bool {
        Self::HOLDING.contains(&self)
    }

    /// The rollout ended in failure: the engine or an operator stopped it.
    pub fn is_failure(self) -> bool {
        matches!(self, Self::Halted | Self::Reverted | Self::Aborted)
    }
}

impl fmt::Display for RolloutState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one host of a rollout ended (or that it has not yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, sqlx::Type)]
#[sqlx(rename_all = "lowercase")]
pub enum HostOutcome {
    /// Not judged yet (not admitted, or on its way).
    Pending,
    /// Reported the new release healthy.
    Healthy,
    /// Refused the release or rolled it back.
    Failed,
    /// No healthy report within the batch timeout.
    Timeout,
    /// Offline when its step started or during it: skipped.
    Offline,
    /// Had the new release when the rollout was reverted.
    Reverted,
}

impl HostOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Healthy => "healthy",
            Self::Failed => "failed",
            Self::Timeout => "timeout",
            Self::Offline => "offline",
            Self::Reverted => "reverted",
        }
    }

    /// Counts against the rollout's failure threshold.
    pub fn is_failure(self) -> bool {
        matches!(self, Self::Failed | Self::Timeout)
    }
}

impl fmt::Display for HostOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_text_is_the_lowercase_name() {
        for s in [
            RolloutState::Running,
            RolloutState::Paused,
            RolloutState::Halted,
            RolloutState::Succeeded,
            RolloutState::Reverted,
            RolloutState::Aborted,
            RolloutState::Superseded,
        ] {
            assert_eq!(s.as_str(), format!("{s:?}").to_lowercase());
        }
        for o in [
            HostOutcome::Pending,
            HostOutcome::Healthy,
            HostOutcome::Failed,
            HostOutcome::Timeout,
            HostOutcome::Offline,
            HostOutcome::Reverted,
        ] {
            assert_eq!(o.as_str(), format!("{o:?}").to_lowercase());
        }
    }
}
