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

/// A change of desired release and the plan of the rollout that carries it.
pub struct NewRollout<'a> {
    pub change: &'a crate::rollout::Change<'a>,
    pub plan: &'a [(String, u32)],
    pub steps: u32,
}

/// What `start_rollout` did.
#[derive(Debug, Clone)]
pub struct Started {
    pub rollout_id: i64,
    pub generation: u64,
    /// What hosts not yet admitted keep running.
    pub from_version: String,
    pub planned_hosts: usize,
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

async fn rollout_by_id(conn: &mut sqlx::SqliteConnection, id: i64) -> Result<Option<RolloutRow>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM rollouts WHERE id = ?"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(row.as_ref().map(rollout_from_row))
}

impl Store {
    /// Sets the desired release and records the rollout that carries it, in
    /// one transaction, so no session ever sees the new release without the
    /// rollout holding hosts back. A rollout of app@env still holding hosts is
    /// superseded (its held hosts stay held at the same release). An empty
    /// plan is finished at once.
    pub async fn start_rollout(&self, n: &NewRollout<'_>) -> Result<Started> {
        let c = n.change;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let t = now();
        let holding = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT from_version, from_generation, id, to_version, generation FROM rollouts
             WHERE tenant = ? AND app = ? AND environment = ? AND state IN {HOLDING} ORDER BY id DESC LIMIT 1"
        )))
        .bind(c.tenant)
        .bind(c.app)
        .bind(c.environment)
        .fetch_optional(&mut *tx)
        .await?;
        // Per host of a superseded rollout: what it runs by now (the new
        // release once admitted and not failed, else what it was held at).
        let mut kept: std::collections::HashMap<String, (String, i64)> = Default::default();
        if let Some(h) = &holding {
            let (id, to_version, generation): (i64, String, i64) = (h.get(2), h.get(3), h.get(4));
            for row in sqlx::query(
                "SELECT host, admitted_at, outcome, hold_version, hold_generation FROM rollout_hosts WHERE rollout_id = ?",
            )
            .bind(id)
            .fetch_all(&mut *tx)
            .await?
            {
                let (admitted, outcome): (i64, String) = (row.get(1), row.get(2));
                let hold = if admitted > 0 && !matches!(outcome.as_str(), "failed" | "timeout") {
                    (to_version.clone(), generation)
                } else {
                    (row.get(3), row.get(4))
                };
                kept.insert(row.get(0), hold);
            }
        }
        let (from_version, from_generation): (String, i64) = match holding {
            Some(r) => (r.get(0), r.get(1)),
            None => sqlx::query(
                "SELECT version, generation FROM desired WHERE tenant = ? AND app = ? AND environment = ?",
            )
            .bind(c.tenant)
            .bind(c.app)
            .bind(c.environment)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| (r.get(0), r.get(1)))
            .unwrap_or_default(),
        };
        let generation = super::upsert_desired(
            &mut tx,
            c.tenant,
            c.app,
            c.environment,
            c.version,
            c.authorization,
        )
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE rollouts SET state = 'superseded', updated_at = ? WHERE tenant = ? AND app = ? AND environment = ?
             AND state IN {HOLDING}"
        )))
        .bind(t)
        .bind(c.tenant)
        .bind(c.app)
        .bind(c.environment)
        .execute(&mut *tx)
        .await?;
        let state = if n.steps == 0 { "succeeded" } else { "running" };
        let s = &c.strategy;
        let id: i64 = sqlx::query(
            "INSERT INTO rollouts (tenant, app, environment, from_version, from_generation, to_version, to_digest,
                generation, canary, batch, batch_timeout_secs, pause_secs, max_failures, auto_revert, state, steps,
                created_by, created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(c.tenant)
        .bind(c.app)
        .bind(c.environment)
        .bind(&from_version)
        .bind(from_generation)
        .bind(c.version)
        .bind(c.digest)
        .bind(generation as i64)
        .bind(i64::from(s.canary))
        .bind(s.batch.to_string())
        .bind(i64::from(s.batch_timeout_secs))
        .bind(i64::from(s.pause_secs))
        .bind(s.max_failures.to_string())
        .bind(i64::from(s.auto_revert))
        .bind(state)
        .bind(i64::from(n.steps))
        .bind(c.actor)
        .bind(t)
        .bind(t)
        .fetch_one(&mut *tx)
        .await?
        .get(0);
        for (host, step) in n.plan {
            let (hold_version, hold_generation) = kept
                .get(host)
                .cloned()
                .unwrap_or_else(|| (from_version.clone(), from_generation));
            sqlx::query(
                "INSERT INTO rollout_hosts (rollout_id, host, step, hold_version, hold_generation) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(id)
            .bind(host)
            .bind(i64::from(*step))
            .bind(hold_version)
            .bind(hold_generation)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Started {
            rollout_id: id,
            generation,
            from_version,
            planned_hosts: n.plan.len(),
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
        let Some(r) = rollout_by_id(&mut tx, id).await? else {
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

    #[cfg(test)]
    pub async fn rollout(&self, id: i64) -> Result<Option<RolloutRow>> {
        rollout_by_id(&mut *self.pool.acquire().await?, id).await
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

    /// Every rollout the engine has to drive (paused ones are still judged).
    pub async fn active_rollouts(&self) -> Result<Vec<RolloutRow>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM rollouts WHERE state IN ('running', 'paused') ORDER BY id"
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
        let row = sqlx::query(
            "SELECT admitted_at, hold_version, hold_generation FROM rollout_hosts WHERE rollout_id = ? AND host = ?",
        )
        .bind(r.id)
        .bind(host)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            // Not in the plan (joined since): the rollout's previous release.
            None => Some((r.from_version, r.from_generation)),
            Some(row) if row.get::<i64, _>(0) > 0 => None,
            Some(row) => Some((row.get(1), row.get::<i64, _>(2) as u64)),
        })
    }

    /// Admits the hosts of the rollout's current step; `offline` ones are
    /// admitted too (they converge when back) but not waited for. False when
    /// the rollout is no longer running at that step (paused meanwhile).
    pub async fn admit_step(&self, id: i64, step: u32, offline: &[String]) -> Result<bool> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let t = now();
        let moved = sqlx::query(
            "UPDATE rollouts SET step_started_at = ?, next_step_at = 0, updated_at = ?
             WHERE id = ? AND state = 'running' AND step = ? AND step_started_at = 0",
        )
        .bind(t)
        .bind(t)
        .bind(id)
        .bind(i64::from(step))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query("UPDATE rollout_hosts SET admitted_at = ? WHERE rollout_id = ? AND step = ?")
            .bind(t)
            .bind(id)
            .bind(i64::from(step))
            .execute(&mut *tx)
            .await?;
        for h in offline {
            sqlx::query(
                "UPDATE rollout_hosts SET outcome = 'offline', reason = 'offline when its step started'
                 WHERE rollout_id = ? AND host = ?",
            )
            .bind(id)
            .bind(h)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    pub async fn set_host_outcome(
        &self,
        id: i64,
        host: &str,
        outcome: &str,
        reason: &str,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE rollout_hosts SET outcome = ?, reason = ? WHERE rollout_id = ? AND host = ? AND outcome = 'pending'",
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

#[cfg(test)]
pub(in crate::store) mod tests {
    use super::*;

    async fn store_with_releases() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_sqlite(&dir.path().join("slipway.db"))
            .await
            .unwrap();
        s.insert_blob("sha256:b", 1).await.unwrap();
        for v in ["1", "2", "3"] {
            let r = crate::store::tests::release(v, &format!("sha256:m{v}"));
            s.insert_release("default", &r, b"{}").await.unwrap();
        }
        (dir, s)
    }

    /// Sets web@preprod to `version` through a rollout over `plan`.
    pub(in crate::store) async fn start(s: &Store, version: &str, plan: &[(&str, u32)]) -> Started {
        let plan: Vec<(String, u32)> = plan.iter().map(|(h, st)| (h.to_string(), *st)).collect();
        let steps = plan.iter().map(|(_, st)| st + 1).max().unwrap_or(0);
        let digest = format!("sha256:m{version}");
        let change = crate::rollout::Change {
            tenant: "default",
            app: "web",
            environment: "preprod",
            version,
            digest: &digest,
            authorization: "[]",
            strategy: Strategy::default(),
            actor: "test",
        };
        s.start_rollout(&NewRollout {
            change: &change,
            plan: &plan,
            steps,
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn hosts_are_held_at_the_previous_release_until_admitted() {
        let (_d, s) = store_with_releases().await;
        let first = start(&s, "1", &[]).await;
        assert_eq!(first.from_version, "");
        assert_eq!(
            s.rollout(first.rollout_id).await.unwrap().unwrap().state,
            "succeeded",
            "an empty plan is done at once"
        );
        let second = start(&s, "2", &[("a", 0), ("b", 1)]).await;
        assert_eq!(second.from_version, "1");
        assert_eq!(
            s.desired("default", "web", "preprod").await.unwrap(),
            Some(("2".into(), second.generation))
        );
        let held = s.held_at("default", "web", "preprod", "a").await.unwrap();
        assert_eq!(held, Some(("1".into(), first.generation)));
        s.admit_step(second.rollout_id, 0, &[]).await.unwrap();
        assert_eq!(
            s.held_at("default", "web", "preprod", "a").await.unwrap(),
            None
        );
        assert!(
            s.held_at("default", "web", "preprod", "b")
                .await
                .unwrap()
                .is_some(),
            "batch 1 not admitted yet"
        );
        assert!(
            s.held_at("default", "web", "preprod", "newcomer")
                .await
                .unwrap()
                .is_some(),
            "a host outside the plan waits for the rollout to end"
        );
    }

    #[tokio::test]
    async fn a_superseding_deploy_keeps_held_hosts_on_the_same_release() {
        let (_d, s) = store_with_releases().await;
        let first = start(&s, "1", &[]).await;
        let second = start(&s, "2", &[("a", 0), ("b", 1)]).await;
        s.admit_step(second.rollout_id, 0, &[]).await.unwrap();
        let third = start(&s, "3", &[("a", 0), ("b", 1)]).await;
        assert_eq!(
            s.rollout(second.rollout_id).await.unwrap().unwrap().state,
            "superseded"
        );
        assert_eq!(third.from_version, "1", "b never left 1");
        assert_eq!(
            s.held_at("default", "web", "preprod", "b").await.unwrap(),
            Some(("1".into(), first.generation))
        );
        assert_eq!(
            s.held_at("default", "web", "preprod", "a").await.unwrap(),
            Some(("2".into(), second.generation)),
            "a already had 2: it keeps it, not 1, until its step"
        );
        assert!(
            !s.admit_step(second.rollout_id, 1, &[]).await.unwrap(),
            "a superseded rollout admits nothing"
        );
    }

    #[tokio::test]
    async fn a_revert_points_desired_back_and_releases_the_hold() {
        let (_d, s) = store_with_releases().await;
        start(&s, "1", &[]).await;
        let second = start(&s, "2", &[("a", 0), ("b", 1)]).await;
        s.admit_step(second.rollout_id, 0, &[]).await.unwrap();
        let generation = s
            .revert_rollout(second.rollout_id, &["running"], "reverted", "canary failed")
            .await
            .unwrap()
            .expect("reverted");
        assert!(generation > second.generation);
        assert_eq!(
            s.desired("default", "web", "preprod").await.unwrap(),
            Some(("1".into(), generation))
        );
        let r = s.rollout(second.rollout_id).await.unwrap().unwrap();
        assert_eq!(
            (r.state.as_str(), r.reason.as_str()),
            ("reverted", "canary failed")
        );
        assert_eq!(
            s.held_at("default", "web", "preprod", "b").await.unwrap(),
            None
        );
        let hosts = s.rollout_hosts(second.rollout_id).await.unwrap();
        assert_eq!(hosts[0].outcome, "reverted");
        assert_eq!(hosts[1].outcome, "pending");
        assert_eq!(
            s.previous_desired("default", "web", "preprod", "1")
                .await
                .unwrap(),
            None,
            "a rollback never goes back to the release just reverted"
        );
        assert!(
            s.revert_rollout(second.rollout_id, &["running"], "reverted", "again")
                .await
                .unwrap()
                .is_none(),
            "only once"
        );
    }
}
