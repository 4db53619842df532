//! What the controllers sharing one store agree on: the public side of the
//! keys every one of them must hold, and leases that name the replica
//! running a job alone (the rollout engine), timed on the database's clock.

use std::time::Duration;

use super::{Dialect, Result, Store, now};

impl Store {
    /// The public key recorded under `name` (`ca`, `directive`): `public`
    /// if none was, which is recorded then.
    pub async fn controller_key(&self, name: &str, public: &str) -> Result<String> {
        sqlx::query(
            "INSERT INTO controller_keys (name, public, recorded_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(public)
        .bind(now())
        .execute(self.writer())
        .await?;
        Ok(
            sqlx::query_scalar("SELECT public FROM controller_keys WHERE name = $1")
                .bind(name)
                .fetch_one(self.db())
                .await?,
        )
    }

    /// Takes the lease `name` for `holder`, or renews it, for `ttl` from the
    /// database's clock now: true when `holder` holds it. Taken only when
    /// nobody holds it or its holder let it expire.
    pub async fn hold_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        let sql = format!(
            "INSERT INTO leases (name, holder, expires_at_ms) VALUES ($1, $2, {now} + $3)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at_ms = excluded.expires_at_ms
             WHERE leases.holder = excluded.holder OR leases.expires_at_ms < {now}
             RETURNING holder",
            now = self.clock_ms()
        );
        let held: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(name)
            .bind(holder)
            .bind(ttl.as_millis() as i64)
            .fetch_optional(self.lease_db())
            .await?;
        Ok(held.is_some())
    }

    /// Gives the lease up (a replica shutting down), so another takes it at
    /// once instead of when it expires.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(self.lease_db())
            .await?;
        Ok(())
    }

    /// Who holds the lease `name` now, if anyone.
    pub async fn lease_holder(&self, name: &str) -> Result<Option<String>> {
        let sql = format!(
            "SELECT holder FROM leases WHERE name = $1 AND expires_at_ms >= {}",
            self.clock_ms()
        );
        Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(name)
            .fetch_optional(self.lease_db())
            .await?)
    }

    /// Sends `payload` to every listener of `channel` (PostgreSQL's
    /// `NOTIFY`; delivered once this statement commits).
    pub async fn notify(&self, channel: &str, payload: &str) -> Result<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(self.db())
            .await?;
        Ok(())
    }

    /// The database's clock in unix milliseconds, as SQL.
    fn clock_ms(&self) -> &'static str {
        match self.dialect {
            Dialect::Sqlite => "CAST(unixepoch('subsec') * 1000 AS INTEGER)",
            Dialect::Postgres => "CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT)",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn the_first_key_recorded_is_the_one_kept(s: Store) {
        assert_eq!(s.controller_key("ca", "pin-a").await.unwrap(), "pin-a");
        assert_eq!(
            s.controller_key("ca", "pin-b").await.unwrap(),
            "pin-a",
            "a second controller with another CA sees the first one's"
        );
        assert_eq!(s.controller_key("directive", "k").await.unwrap(), "k");
    }

    async fn a_lease_has_one_holder_until_it_expires_or_is_given_up(s: Store) {
        let ttl = Duration::from_millis(400);
        assert!(s.hold_lease("rollouts", "a", ttl).await.unwrap());
        assert!(!s.hold_lease("rollouts", "b", ttl).await.unwrap());
        assert!(s.hold_lease("rollouts", "a", ttl).await.unwrap(), "renewed");
        assert_eq!(
            s.lease_holder("rollouts").await.unwrap().as_deref(),
            Some("a")
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(s.lease_holder("rollouts").await.unwrap(), None, "expired");
        assert!(
            s.hold_lease("rollouts", "b", ttl).await.unwrap(),
            "taken over"
        );
        assert!(!s.hold_lease("rollouts", "a", ttl).await.unwrap());
        s.release_lease("rollouts", "a").await.unwrap();
        assert!(
            !s.hold_lease("rollouts", "a", ttl).await.unwrap(),
            "only the holder gives it up"
        );
        s.release_lease("rollouts", "b").await.unwrap();
        assert!(s.hold_lease("rollouts", "a", ttl).await.unwrap());
    }

    crate::store::testing::on_both_dialects!(
        the_first_key_recorded_is_the_one_kept,
        a_lease_has_one_holder_until_it_expires_or_is_given_up,
    );
}
