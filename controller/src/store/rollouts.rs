//! Rollouts as the store keeps them: one row per change of desired release,
//! one row per host with the step it belongs to, when it was admitted and how
//! it ended. Everything the engine knows lives here, so a restarted
//! controller resumes where it stopped.

use sqlx::Row;

use super::{Result, Store, now};
use crate::rollout::plan::{Amount, Strategy};

/// States in which a rollout holds back the hosts it has not admitted.
pub const HOLDING: &str = "('running', 'paused', 'halted')";

#[derive(Debug, Clone)]
pub struct RolloutRow {
    pub id: i64,
    pub tenant: String,
    pub app: String,
    pub environment: String,
    pub from_version: String,
    pub from_generation: u64,
    pub to_version: String,
    pub to_digest: String,
    pub generation: u64,
    pub strategy: Strategy,
    pub state: String,
    pub step: u32,
    pub steps: u32,
    pub step_started_at: i64,
    pub next_step_at: i64,
    pub reason: String,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone)]
pub struct RolloutHostRow {
    pub host: String,
    pub step: u32,
    pub admitted_at: i64,
    pub outcome: String,
    pub reason: String,
}

/// A change of desired release and the rollout that carries it.
pub struct NewRollout<'a> {
    pub tenant: &'a str,
    pub app: &'a str,
    pub environment: &'a str,
    pub to_version: &'a str,
    pub to_digest: &'a str,
    /// Operator rollback authorization, JSON signatures.
    pub authorization: &'a str,
    pub strategy: Strategy,
    pub plan: &'a [(String, u32)],
    pub steps: u32,
    pub created_by: &'a str,
}

/// What `start_rollout` did.
#[derive(Debug, Clone)]
pub struct Started {
    pub rollout_id: i64,
    pub generation: u64,
    /// What hosts not yet admitted keep running.
    pub from_version: String,
}

const COLUMNS: &str = "id, tenant, app, environment, from_version, from_generation, to_version, to_digest, generation,
    canary, batch, batch_timeout_secs, pause_secs, max_failures, auto_revert, state, step, steps, step_started_at,
    next_step_at, reason, created_by, created_at, updated_at";

fn rollout_from_row(r: &sqlx::sqlite::SqliteRow) -> RolloutRow {
    let amount = |col: &str| Amount::parse(&r.get::<String, _>(col)).unwrap_or(Amount::Count(0));
    RolloutRow {
        id: r.get("id"),
        tenant: r.get("tenant"),
        app: r.get("app"),
        environment: r.get("environment"),
        from_version: r.get("from_version"),
        from_generation: r.get::<i64, _>("from_generation") as u64,
        to_version: r.get("to_version"),
        to_digest: r.get("to_digest"),
        generation: r.get::<i64, _>("generation") as u64,
        strategy: Strategy {
            canary: r.get::<i64, _>("canary") as u32,
            batch: amount("batch"),
            batch_timeout_secs: r.get::<i64, _>("batch_timeout_secs") as u32,
            pause_secs: r.get::<i64, _>("pause_secs") as u32,
            max_failures: amount("max_failures"),
            auto_revert: r.get::<i64, _>("auto_revert") != 0,
        },
        state: r.get("state"),
        step: r.get::<i64, _>("step") as u32,
        steps: r.get::<i64, _>("steps") as u32,
        step_started_at: r.get("step_started_at"),
        next_step_at: r.get("next_step_at"),
        reason: r.get("reason"),
        created_by: r.get("created_by"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
    }
}

impl Store {
    /// Sets the desired release and records the rollout that carries it, in
    /// one transaction, so no session ever sees the new release without the
    /// rollout holding hosts back. A rollout of app@env still holding hosts is
    /// superseded (its held hosts stay held at the same release). An empty
    /// plan is finished at once.
    pub async fn start_rollout(&self, n: &NewRollout<'_>) -> Result<Started> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let t = now();
        let holding = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT from_version, from_generation FROM rollouts WHERE tenant = ? AND app = ? AND environment = ?
             AND state IN {HOLDING} ORDER BY id DESC LIMIT 1"
        )))
        .bind(n.tenant)
        .bind(n.app)
        .bind(n.environment)
        .fetch_optional(&mut *tx)
        .await?;
        let (from_version, from_generation): (String, i64) = match holding {
            Some(r) => (r.get(0), r.get(1)),
            None => sqlx::query(
                "SELECT version, generation FROM desired WHERE tenant = ? AND app = ? AND environment = ?",
            )
            .bind(n.tenant)
            .bind(n.app)
            .bind(n.environment)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| (r.get(0), r.get(1)))
            .unwrap_or_default(),
        };
        let generation = super::upsert_desired(
            &mut tx,
            n.tenant,
            n.app,
            n.environment,
            n.to_version,
            n.authorization,
        )
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE rollouts SET state = 'superseded', updated_at = ? WHERE tenant = ? AND app = ? AND environment = ?
             AND state IN {HOLDING}"
        )))
        .bind(t)
        .bind(n.tenant)
        .bind(n.app)
        .bind(n.environment)
        .execute(&mut *tx)
        .await?;
        let state = if n.steps == 0 { "succeeded" } else { "running" };
        let s = &n.strategy;
        let id: i64 = sqlx::query(
            "INSERT INTO rollouts (tenant, app, environment, from_version, from_generation, to_version, to_digest,
                generation, canary, batch, batch_timeout_secs, pause_secs, max_failures, auto_revert, state, steps,
                created_by, created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(n.tenant)
        .bind(n.app)
        .bind(n.environment)
        .bind(&from_version)
        .bind(from_generation)
        .bind(n.to_version)
        .bind(n.to_digest)
        .bind(generation as i64)
        .bind(i64::from(s.canary))
        .bind(s.batch.to_string())
        .bind(i64::from(s.batch_timeout_secs))
        .bind(i64::from(s.pause_secs))
        .bind(s.max_failures.to_string())
        .bind(i64::from(s.auto_revert))
        .bind(state)
        .bind(i64::from(n.steps))
        .bind(n.created_by)
        .bind(t)
        .bind(t)
        .fetch_one(&mut *tx)
        .await?
        .get(0);
        for (host, step) in n.plan {
            sqlx::query("INSERT INTO rollout_hosts (rollout_id, host, step) VALUES (?, ?, ?)")
                .bind(id)
                .bind(host)
                .bind(i64::from(*step))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Started {
            rollout_id: id,
            generation,
            from_version,
        })
    }

    /// Ends a rollout that is in one of `from` as `state` and, when it has a
    /// previous release, points app@env back at it (a new generation every
    /// host acts on at once: no canary, no batches). The new generation, or
    /// None when the rollout was no longer in `from`.
    pub async fn revert_rollout(
        &self,
        id: i64,
        from: &[&str],
        state: &str,
        reason: &str,
    ) -> Result<Option<u64>> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let Some(r) = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM rollouts WHERE id = ?"
        )))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| rollout_from_row(&r)) else {
            return Ok(None);
        };
        if !from.contains(&r.state.as_str()) || r.from_version.is_empty() {
            return Ok(None);
        }
        let generation = super::upsert_desired(
            &mut tx,
            &r.tenant,
            &r.app,
            &r.environment,
            &r.from_version,
            "[]",
        )
        .await?;
        sqlx::query("UPDATE rollouts SET state = ?, reason = ?, updated_at = ? WHERE id = ?")
            .bind(state)
            .bind(reason)
            .bind(now())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE rollout_hosts SET outcome = 'reverted' WHERE rollout_id = ? AND admitted_at > 0 AND outcome IN ('healthy', 'pending')",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(generation))
    }

    pub async fn rollout(&self, id: i64) -> Result<Option<RolloutRow>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM rollouts WHERE id = ?"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(rollout_from_row))
    }

    /// The newest rollout of app@env.
    pub async fn latest_rollout(
        &self,
        tenant: &str,
        app: &str,
        env: &str,
    ) -> Result<Option<RolloutRow>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM rollouts WHERE tenant = ? AND app = ? AND environment = ? ORDER BY id DESC LIMIT 1"
        )))
        .bind(tenant)
        .bind(app)
        .bind(env)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(rollout_from_row))
    }

    /// The rollout of app@env that holds hosts back, if any.
    pub async fn holding_rollout(
        &self,
        tenant: &str,
        app: &str,
        env: &str,
    ) -> Result<Option<RolloutRow>> {
        Ok(self
            .latest_rollout(tenant, app, env)
            .await?
            .filter(|r| matches!(r.state.as_str(), "running" | "paused" | "halted")))
    }

    /// Every rollout the engine has to drive.
    pub async fn running_rollouts(&self) -> Result<Vec<RolloutRow>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM rollouts WHERE state = 'running' ORDER BY id"
        )))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(rollout_from_row).collect())
    }

    pub async fn rollout_hosts(&self, id: i64) -> Result<Vec<RolloutHostRow>> {
        let rows = sqlx::query(
            "SELECT host, step, admitted_at, outcome, reason FROM rollout_hosts WHERE rollout_id = ? ORDER BY step, host",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| RolloutHostRow {
                host: r.get(0),
                step: r.get::<i64, _>(1) as u32,
                admitted_at: r.get(2),
                outcome: r.get(3),
                reason: r.get(4),
            })
            .collect())
    }

    /// What a host held back by a rollout keeps running: (version, generation).
    /// None when no rollout holds it (it gets the environment's desired release).
    pub async fn held_at(
        &self,
        tenant: &str,
        app: &str,
        env: &str,
        host: &str,
    ) -> Result<Option<(String, u64)>> {
        let Some(r) = self.holding_rollout(tenant, app, env).await? else {
            return Ok(None);
        };
        let admitted = sqlx::query(
            "SELECT 1 FROM rollout_hosts WHERE rollout_id = ? AND host = ? AND admitted_at > 0",
        )
        .bind(r.id)
        .bind(host)
        .fetch_optional(&self.pool)
        .await?
        .is_some();
        Ok((!admitted).then_some((r.from_version, r.from_generation)))
    }

    /// Admits the hosts of the rollout's current step; `offline` ones are
    /// admitted too (they converge when back) but not waited for.
    pub async fn admit_step(&self, id: i64, step: u32, offline: &[String]) -> Result<()> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let t = now();
        sqlx::query("UPDATE rollout_hosts SET admitted_at = ? WHERE rollout_id = ? AND step = ?")
            .bind(t)
            .bind(id)
            .bind(i64::from(step))
            .execute(&mut *tx)
            .await?;
        for h in offline {
            sqlx::query(
                "UPDATE rollout_hosts SET outcome = 'offline', reason = 'offline when its batch started'
                 WHERE rollout_id = ? AND host = ?",
            )
            .bind(id)
            .bind(h)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "UPDATE rollouts SET step_started_at = ?, next_step_at = 0, updated_at = ? WHERE id = ? AND state = 'running'",
        )
        .bind(t)
        .bind(t)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn set_host_outcome(
        &self,
        id: i64,
        host: &str,
        outcome: &str,
        reason: &str,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE rollout_hosts SET outcome = ?, reason = ? WHERE rollout_id = ? AND host = ?",
        )
        .bind(outcome)
        .bind(reason)
        .bind(id)
        .bind(host)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Moves a running rollout to its next step, admitted at `next_step_at`
    /// (0: at once).
    pub async fn next_step(&self, id: i64, step: u32, next_step_at: i64) -> Result<()> {
        sqlx::query(
            "UPDATE rollouts SET step = ?, step_started_at = 0, next_step_at = ?, updated_at = ?
             WHERE id = ? AND state = 'running'",
        )
        .bind(i64::from(step))
        .bind(next_step_at)
        .bind(now())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Changes the state of a rollout that is in one of `from`; false when it
    /// was not (someone else changed it first).
    pub async fn transition_rollout(
        &self,
        id: i64,
        from: &[&str],
        to: &str,
        reason: Option<&str>,
    ) -> Result<bool> {
        let placeholders = vec!["?"; from.len()].join(", ");
        let sql = format!(
            "UPDATE rollouts SET state = ?, reason = COALESCE(?, reason), updated_at = ?
             WHERE id = ? AND state IN ({placeholders})"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(to)
            .bind(reason)
            .bind(now())
            .bind(id);
        for f in from {
            q = q.bind(*f);
        }
        Ok(q.execute(&self.pool).await?.rows_affected() == 1)
    }

    /// A resumed rollout's current step restarts its clock (a pause does not
    /// count against the batch timeout).
    pub async fn restart_step_clock(&self, id: i64) -> Result<()> {
        sqlx::query(
            "UPDATE rollouts SET step_started_at = CASE WHEN step_started_at > 0 THEN ? ELSE 0 END WHERE id = ?",
        )
        .bind(now())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
