//! Who runs the rollout engine. Every replica serves agents and CLI calls;
//! only one at a time advances rollouts: the holder of the `rollouts`
//! lease, a row renewed every `RENEW_EVERY` for `LEASE_TTL` on the
//! database's clock (a lease, not a session advisory lock: a pooled
//! connection that dies or is killed while idle loses such a lock without
//! a word). A leader that cannot renew stops its engine before its lease can
//! have expired (`MARGIN`), so two engines never run at once; another
//! replica takes the lease once it expires, or at once when a leader shuts
//! down and gives it up. A new leader's engine starts as after a restart:
//! from the store, judging every host again. A SQLite store has one
//! controller, which always leads.

use std::time::Duration;

use tokio::time::Instant;

use crate::ctx::SharedCtx;
use crate::store::Dialect;

pub const LEASE: &str = "rollouts";
/// How long a lease lasts unrenewed: the longest a dead leader's rollouts
/// wait for another replica (plus one `RENEW_EVERY`).
pub const LEASE_TTL: Duration = Duration::from_secs(6);
pub const RENEW_EVERY: Duration = Duration::from_secs(2);
/// A leader stops this long before its lease could expire (clock rates,
/// the time a renewal takes to reach the database).
const MARGIN: Duration = Duration::from_secs(1);

/// Runs the rollout engine whenever this replica (`replica`) leads, until
/// shutdown; gives the lease up on the way out.
pub async fn run(ctx: SharedCtx, replica: String) {
    if ctx.store.dialect() == Dialect::Sqlite {
        crate::metrics::METRICS.leading.set(1);
        crate::rollout::run(ctx.clone(), ctx.shutdown.clone()).await;
        return;
    }
    loop {
        let asked = Instant::now();
        match ctx.store.hold_lease(LEASE, &replica, LEASE_TTL).await {
            Ok(true) => {
                lead(&ctx, &replica, asked).await;
                if ctx.shutdown.is_cancelled() {
                    if let Err(e) = ctx.store.release_lease(LEASE, &replica).await {
                        tracing::warn!(error = %e, "giving up the rollouts lease failed; it expires by itself");
                    }
                    return;
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "asking for the rollouts lease failed"),
        }
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = tokio::time::sleep(RENEW_EVERY) => {}
        }
    }
}

/// Leads from a lease granted when asked at `asked`: runs the engine and
/// renews, until a renewal is refused, cannot be confirmed in time, or
/// shutdown.
async fn lead(ctx: &SharedCtx, replica: &str, asked: Instant) {
    tracing::info!(replica, "leading rollouts");
    crate::metrics::METRICS.leading.set(1);
    let term = ctx.shutdown.child_token();
    let engine = tokio::spawn(crate::rollout::run(ctx.clone(), term.clone()));
    let mut until = asked + LEASE_TTL - MARGIN;
    let why = loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => break "shutting down",
            _ = tokio::time::sleep(RENEW_EVERY) => {}
        }
        let asked = Instant::now();
        match tokio::time::timeout_at(until, ctx.store.hold_lease(LEASE, replica, LEASE_TTL)).await
        {
            Ok(Ok(true)) => until = asked + LEASE_TTL - MARGIN,
            Ok(Ok(false)) => break "another replica holds the lease",
            Ok(Err(e)) if Instant::now() < until => {
                tracing::warn!(error = %e, "renewing the rollouts lease failed; trying again");
            }
            Ok(Err(_)) | Err(_) => break "the store did not confirm the lease in time",
        }
    };
    term.cancel();
    let _ = engine.await;
    crate::metrics::METRICS.leading.set(0);
    tracing::warn!(replica, why, "stopped leading rollouts");
}

/// A name for this replica in leases and change messages: unique per
/// process (a restarted replica is a new one), readable in the store.
pub fn replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    format!(
        "{}-{}-{}",
        if host.is_empty() { "controller" } else { &host },
        std::process::id(),
        trust::secret::random_hex(4)
    )
}
