//! The rollout lifecycle as types: the state of a rollout and the outcome of
//! each host in it, stored as lowercase text (`as_str`) and carried as the
//! proto's enums of the same names; and the health a host reports of an app,
//! stored as a number. All converted at the gRPC edge.

use std::fmt;

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

    /// Every state (for tests that walk them all).
    pub const ALL: [RolloutState; 7] = [
        Self::Running,
        Self::Paused,
        Self::Halted,
        Self::Succeeded,
        Self::Reverted,
        Self::Aborted,
        Self::Superseded,
    ];

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    /// Every outcome (for tests that walk them all).
    pub const ALL: [HostOutcome; 6] = [
        Self::Pending,
        Self::Healthy,
        Self::Failed,
        Self::Timeout,
        Self::Offline,
        Self::Reverted,
    ];

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

/// Whether a host's reported deploy state (the wire's `DeployState` number,
/// stored as sent) says a deploy is under way there: fetching, installing or
/// activating. The health it reports then may be what ran before, so it is no
/// verdict on the release (the numbers are checked against the proto's enum in
/// `grpc::tests`).
/// A host's deploy state (the wire's `DeployState` number) in words.
pub fn deploy_state_name(state: i32) -> &'static str {
    match state {
        1 => "idle",
        2 => "fetching",
        3 => "installing",
        4 => "activating",
        5 => "healthy",
        6 => "rolled back",
        7 => "failed",
        8 => "unhealthy",
        _ => "unknown",
    }
}

pub fn deploying(state: i32) -> bool {
    matches!(state, 2..=4)
}

/// The health a host reports of an app (its probes' verdict). Stored as the
/// number the wire has always used; a number this controller does not know
/// reads as `Unspecified`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Health {
    #[default]
    Unspecified,
    /// Not probed yet, or no release running.
    Unknown,
    Healthy,
    Unhealthy,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified | Self::Unknown => "unknown",
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
        }
    }

    /// The stored number (kept equal to the proto's enum values).
    pub fn code(self) -> i32 {
        match self {
            Self::Unspecified => 0,
            Self::Unknown => 1,
            Self::Healthy => 2,
            Self::Unhealthy => 3,
        }
    }

    pub fn from_code(code: i32) -> Self {
        match code {
            1 => Self::Unknown,
            2 => Self::Healthy,
            3 => Self::Unhealthy,
            _ => Self::Unspecified,
        }
    }
}

/// Stored as its lowercase name (`as_str`), in either store dialect.
macro_rules! stored_as_text {
    ($t:ty) => {
        impl sqlx::Type<sqlx::Any> for $t {
            fn type_info() -> sqlx::any::AnyTypeInfo {
                <str as sqlx::Type<sqlx::Any>>::type_info()
            }

            fn compatible(ty: &sqlx::any::AnyTypeInfo) -> bool {
                <str as sqlx::Type<sqlx::Any>>::compatible(ty)
            }
        }

        impl<'q> sqlx::Encode<'q, sqlx::Any> for $t {
            fn encode_by_ref(
                &self,
                buf: &mut <sqlx::Any as sqlx::Database>::ArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<'q, sqlx::Any>>::encode(self.as_str(), buf)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Any> for $t {
            fn decode(value: sqlx::any::AnyValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                let text = <&str as sqlx::Decode<'r, sqlx::Any>>::decode(value)?;
                Self::ALL
                    .into_iter()
                    .find(|v| v.as_str() == text)
                    .ok_or_else(|| format!("unknown {} {text:?}", stringify!($t)).into())
            }
        }
    };
}

stored_as_text!(RolloutState);
stored_as_text!(HostOutcome);

impl sqlx::Type<sqlx::Any> for Health {
    fn type_info() -> sqlx::any::AnyTypeInfo {
        <i64 as sqlx::Type<sqlx::Any>>::type_info()
    }

    fn compatible(ty: &sqlx::any::AnyTypeInfo) -> bool {
        <i64 as sqlx::Type<sqlx::Any>>::compatible(ty)
    }
}

impl<'q> sqlx::Encode<'q, sqlx::Any> for Health {
    fn encode_by_ref(
        &self,
        buf: &mut <sqlx::Any as sqlx::Database>::ArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <i64 as sqlx::Encode<'q, sqlx::Any>>::encode(i64::from(self.code()), buf)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Any> for Health {
    fn decode(value: sqlx::any::AnyValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        let code = <i64 as sqlx::Decode<'r, sqlx::Any>>::decode(value)?;
        Ok(Self::from_code(i32::try_from(code).unwrap_or(-1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_text_is_the_lowercase_name() {
        for s in RolloutState::ALL {
            assert_eq!(s.as_str(), format!("{s:?}").to_lowercase());
        }
        for o in HostOutcome::ALL {
            assert_eq!(o.as_str(), format!("{o:?}").to_lowercase());
        }
    }

    #[test]
    fn health_codes_round_trip_and_unknown_codes_read_unspecified() {
        for h in [
            Health::Unspecified,
            Health::Unknown,
            Health::Healthy,
            Health::Unhealthy,
        ] {
            assert_eq!(Health::from_code(h.code()), h);
        }
        assert_eq!(
            Health::Healthy.code(),
            2,
            "rows written by older controllers"
        );
        assert_eq!(Health::from_code(42), Health::Unspecified);
        assert_eq!(Health::from_code(-1), Health::Unspecified);
    }
}
