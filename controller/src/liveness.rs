//! Writes when hosts were last heard from to the store in batches. A
//! heartbeat touches only the hub's memory (an open session is what proves a
//! host online); `last_seen` reaches the store every `FLUSH_EVERY` in one
//! statement, and once more at shutdown. Between two flushes the hub answers
//! for it (`Hub::last_seen`), so the offline rule and `slipctl hosts` see the
//! newest value; after a crash the store's value is at most `FLUSH_EVERY`
//! old, and the engine trusts no offline verdict until agents had the time
//! to reconnect.

use std::time::Duration;

use crate::ctx::{Ctx, SharedCtx};

/// How often heard-from times are written (one statement for every host).
pub const FLUSH_EVERY: Duration = Duration::from_secs(15);

/// How often this store gets heard-from times: every `FLUSH_EVERY`, or
/// on PostgreSQL every heartbeat, because there the replica leading the
/// rollouts may not hold the host's session and judges it from the store.
pub fn flush_every(ctx: &Ctx) -> Duration {
    match ctx.store.dialect() {
        crate::store::Dialect::Sqlite => FLUSH_EVERY,
        crate::store::Dialect::Postgres => {
            FLUSH_EVERY.min(Duration::from_secs(ctx.heartbeat_secs.max(1).into()))
        }
    }
}

/// Flushes every `flush_every` until shutdown, then once more.
pub async fn run(ctx: SharedCtx) {
    let every = flush_every(&ctx);
    loop {
        let stop = tokio::select! {
            _ = ctx.shutdown.cancelled() => true,
            _ = tokio::time::sleep(every) => false,
        };
        flush(&ctx).await;
        if stop {
            return;
        }
    }
}

/// Writes every heard-from time the store does not have yet.
pub async fn flush(ctx: &Ctx) {
    let seen = ctx.hub.to_flush();
    if seen.is_empty() {
        return;
    }
    match ctx.store.record_last_seen(&seen).await {
        Ok(()) => ctx.hub.flushed(&seen),
        Err(e) => {
            tracing::error!(hosts = seen.len(), error = %e, "writing last_seen failed; kept for the next flush")
        }
    }
}
