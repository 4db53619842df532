//! Rollouts as the store keeps them: one row per change of desired release,
//! one row per host with the step it belongs to, when it was admitted and how
//! it ended. Everything the engine knows lives here, so a restarted
//! controller resumes where it stopped.

use sqlx::FromRow;

use super::{Result, Store, StoreError, now};
use crate::lifecycle::{HostOutcome, RolloutState};
use crate::plan::{Amount, OfflinePolicy, Strategy};

/// The states that hold hosts back (`RolloutState::HOLDING`) as SQL;
/// `holding_states_in_sql_are_the_holding_states` checks the two agree.
const STATE_IS_HOLDING: &str = "state IN ('running', 'paused', 'halted')";

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
    pub state: RolloutState,
    pub step: u32,
    pub steps: u32,
    pub step_started_at: i64,
    pub next_step_at: i64,
    pub reason: String,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, FromRow)]
pub struct RolloutHostRow {
    pub host: String,
    #[sqlx(try_from = "i64")]
    pub step: u32,
    pub admitted_at: i64,
    pub outcome: HostOutcome,
    pub reason: String,
}

/// A change of desired release and the plan of the rollout that carries it.
pub struct NewRollout<'a> {
    pub change: &'a crate::plan::Change<'a>,
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
    canary, batch, batch_timeout_secs, pause_secs, max_failures, auto_revert, offline, state, step, steps, step_started_at,
    next_step_at, reason, created_by, created_at, updated_at";

/// A `rollouts` row as stored (the strategy's amounts as text).
#[derive(FromRow)]
struct RolloutRecord {
    id: i64,
    tenant: String,
    app: String,
    environment: String,
    from_version: String,
    #[sqlx(try_from = "i64")]
    from_generation: u64,
    to_version: String,
    to_digest: String,
    #[sqlx(try_from = "i64")]
    generation: u64,
    #[sqlx(try_from = "i64")]
    canary: u32,
    batch: String,
    #[sqlx(try_from = "i64")]
    batch_timeout_secs: u32,
    #[sqlx(try_from = "i64")]
    pause_secs: u32,
    max_failures: String,
    #[sqlx(try_from = "super::Flag")]
    auto_revert: bool,
    offline: String,
    state: RolloutState,
    #[sqlx(try_from = "i64")]
    step: u32,
    #[sqlx(try_from = "i64")]
    steps: u32,
    step_started_at: i64,
    next_step_at: i64,
    reason: String,
    created_by: String,
    created_at: i64,
    updated_at: i64,
}

impl From<RolloutRecord> for RolloutRow {
    fn from(r: RolloutRecord) -> Self {
        let amount = |s: &str| Amount::parse(s).unwrap_or(Amount::Count(0));
        RolloutRow {
            id: r.id,
            tenant: r.tenant,
            app: r.app,
            environment: r.environment,
            from_version: r.from_version,
            from_generation: r.from_generation,
            to_version: r.to_version,
            to_digest: r.to_digest,
            generation: r.generation,
            strategy: Strategy {
                canary: r.canary,
                batch: amount(&r.batch),
                batch_timeout_secs: r.batch_timeout_secs,
                pause_secs: r.pause_secs,
                max_failures: amount(&r.max_failures),
                auto_revert: r.auto_revert,
                offline: OfflinePolicy::parse(&r.offline).unwrap_or(OfflinePolicy::Skip),
            },
            state: r.state,
            step: r.step,
            steps: r.steps,
            step_started_at: r.step_started_at,
            next_step_at: r.next_step_at,
            reason: r.reason,
            created_by: r.created_by,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// The rollout a new one supersedes: what its hosts were held at.
#[derive(FromRow)]
struct Holding {
    id: i64,
    from_version: String,
    from_generation: i64,
    to_version: String,
    generation: i64,
}

/// A host of a superseded rollout: admitted or not, how it ended, what it
/// was held at.
#[derive(FromRow)]
struct HeldHost {
    host: String,
    admitted_at: i64,
    outcome: HostOutcome,
    hold_version: String,
    hold_generation: i64,
}

#[derive(FromRow)]
struct Desired {
    version: String,
    generation: i64,
}

/// The latest rollout of an app@env with one host's row in its plan (None
/// when the host is not in it).
#[derive(FromRow)]
struct HeldRow {
    state: RolloutState,
    from_version: String,
    from_generation: i64,
    admitted_at: Option<i64>,
    hold_version: Option<String>,
    hold_generation: Option<i64>,
}

async fn rollout_by_id(conn: &mut sqlx::AnyConnection, id: i64) -> Result<Option<RolloutRow>> {
    let row: Option<RolloutRecord> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM rollouts WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(RolloutRow::from))
}

impl Store {
    /// Sets the desired release and records the rollout that carries it, in
    /// one transaction, so no session ever sees the new release without the
    /// rollout holding hosts back. A rollout of app@env still holding hosts is
    /// superseded (its held hosts stay held at the same release). An empty
    /// plan is finished at once.
    pub async fn start_rollout(&self, n: &NewRollout<'_>) -> Result<Started> {
        let c = n.change;
        let mut tx = self.begin_write().await?;
        let t = now();
        let current: Option<i64> = sqlx::query_scalar(
            "SELECT generation FROM desired WHERE tenant = $1 AND app = $2 AND environment = $3",
        )
        .bind(c.tenant)
        .bind(c.app)
        .bind(c.environment)
        .fetch_optional(&mut *tx)
        .await?;
        let current = current.unwrap_or(0) as u64;
        if current != c.expected_generation {
            return Err(StoreError::Conflict(format!(
                "{}@{} changed while this change was decided (desired generation {current} now, {} then): look again and retry",
                c.app, c.environment, c.expected_generation
            )));
        }
        let q = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT id, from_version, from_generation, to_version, generation FROM rollouts
             WHERE tenant = $1 AND app = $2 AND environment = $3 AND {STATE_IS_HOLDING} ORDER BY id DESC LIMIT 1"
        )))
        .bind(c.tenant)
        .bind(c.app)
        .bind(c.environment);
        let holding: Option<Holding> = q.fetch_optional(&mut *tx).await?;
        // Per host of a superseded rollout: what it runs by now (the new
        // release once admitted and not failed, else what it was held at).
        let mut kept: std::collections::HashMap<String, (String, i64)> = Default::default();
        if let Some(h) = &holding {
            let hosts: Vec<HeldHost> = sqlx::query_as(
                "SELECT host, admitted_at, outcome, hold_version, hold_generation FROM rollout_hosts WHERE rollout_id = $1",
            )
            .bind(h.id)
            .fetch_all(&mut *tx)
            .await?;
            for row in hosts {
                let hold = if row.admitted_at > 0 && !row.outcome.is_failure() {
                    (h.to_version.clone(), h.generation)
                } else {
                    (row.hold_version, row.hold_generation)
                };
                kept.insert(row.host, hold);
            }
        }
        let (from_version, from_generation): (String, i64) = match holding {
            Some(r) => (r.from_version, r.from_generation),
            None => sqlx::query_as::<_, Desired>(
                "SELECT version, generation FROM desired WHERE tenant = $1 AND app = $2 AND environment = $3",
            )
            .bind(c.tenant)
            .bind(c.app)
            .bind(c.environment)
            .fetch_optional(&mut *tx)
            .await?
            .map(|d| (d.version, d.generation))
            .unwrap_or_default(),
        };
        let generation = super::releases::upsert_desired(
            &mut tx,
            c.tenant,
            c.app,
            c.environment,
            c.version,
            c.authorization,
        )
        .await?;
        let supersede = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE rollouts SET state = $1, updated_at = $2 WHERE tenant = $3 AND app = $4 AND environment = $5
             AND {STATE_IS_HOLDING}"
        )))
        .bind(RolloutState::Superseded)
        .bind(t)
        .bind(c.tenant)
        .bind(c.app)
        .bind(c.environment);
        supersede.execute(&mut *tx).await?;
        let state = if n.steps == 0 {
            RolloutState::Succeeded
        } else {
            RolloutState::Running
        };
        let s = &c.strategy;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO rollouts (tenant, app, environment, from_version, from_generation, to_version, to_digest,
                generation, canary, batch, batch_timeout_secs, pause_secs, max_failures, auto_revert, offline, state, steps,
                created_by, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20) RETURNING id",
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
        .bind(s.offline.as_str())
        .bind(state)
        .bind(i64::from(n.steps))
        .bind(c.actor)
        .bind(t)
        .bind(t)
        .fetch_one(&mut *tx)
        .await?;
        for (host, step) in n.plan {
            let (hold_version, hold_generation) = kept
                .get(host)
                .cloned()
                .unwrap_or_else(|| (from_version.clone(), from_generation));
            sqlx::query(
                "INSERT INTO rollout_hosts (rollout_id, host, step, hold_version, hold_generation) VALUES ($1, $2, $3, $4, $5)",
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
        from: &[RolloutState],
        state: RolloutState,
        reason: &str,
    ) -> Result<Option<u64>> {
        let mut tx = self.begin_write().await?;
        let Some(r) = rollout_by_id(&mut tx, id).await? else {
            return Ok(None);
        };
        if !from.contains(&r.state) || r.from_version.is_empty() {
            return Ok(None);
        }
        let generation = super::releases::upsert_desired(
            &mut tx,
            &r.tenant,
            &r.app,
            &r.environment,
            &r.from_version,
            "[]",
        )
        .await?;
        sqlx::query("UPDATE rollouts SET state = $1, reason = $2, updated_at = $3 WHERE id = $4")
            .bind(state)
            .bind(reason)
            .bind(now())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE rollout_hosts SET outcome = $1 WHERE rollout_id = $2 AND admitted_at > 0 AND outcome IN ($3, $4)",
        )
        .bind(HostOutcome::Reverted)
        .bind(id)
        .bind(HostOutcome::Healthy)
        .bind(HostOutcome::Pending)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(generation))
    }

    #[cfg(test)]
    pub async fn rollout(&self, id: i64) -> Result<Option<RolloutRow>> {
        rollout_by_id(&mut *self.db().acquire().await?, id).await
    }

    /// The newest rollout of app@env.
    pub async fn latest_rollout(
        &self,
        tenant: &str,
        app: &str,
        env: &str,
    ) -> Result<Option<RolloutRow>> {
        let row: Option<RolloutRecord> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM rollouts WHERE tenant = $1 AND app = $2 AND environment = $3 ORDER BY id DESC LIMIT 1"
        )))
        .bind(tenant)
        .bind(app)
        .bind(env)
        .fetch_optional(self.db())
        .await?;
        Ok(row.map(RolloutRow::from))
    }

    /// Every rollout the engine has to drive (paused ones are still judged).
    /// How many rollouts are in each state (all tenants).
    pub async fn rollout_counts(&self) -> Result<Vec<(String, i64)>> {
        Ok(
            sqlx::query_as("SELECT state, COUNT(*) FROM rollouts GROUP BY state ORDER BY state")
                .fetch_all(self.db())
                .await?,
        )
    }

    pub async fn active_rollouts(&self) -> Result<Vec<RolloutRow>> {
        let rows: Vec<RolloutRecord> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM rollouts WHERE state IN ($1, $2) ORDER BY id"
        )))
        .bind(RolloutState::Running)
        .bind(RolloutState::Paused)
        .fetch_all(self.db())
        .await?;
        Ok(rows.into_iter().map(RolloutRow::from).collect())
    }

    pub async fn rollout_hosts(&self, id: i64) -> Result<Vec<RolloutHostRow>> {
        Ok(sqlx::query_as(
            "SELECT host, step, admitted_at, outcome, reason FROM rollout_hosts WHERE rollout_id = $1 ORDER BY step, host",
        )
        .bind(id)
        .fetch_all(self.db())
        .await?)
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
        // One statement: every session reads this on every desired change.
        let row: Option<HeldRow> = sqlx::query_as(
            "SELECT o.state, o.from_version, o.from_generation,
                    h.admitted_at, h.hold_version, h.hold_generation
             FROM rollouts o
             LEFT JOIN rollout_hosts h ON h.rollout_id = o.id AND h.host = $4
             WHERE o.tenant = $1 AND o.app = $2 AND o.environment = $3
             ORDER BY o.id DESC LIMIT 1",
        )
        .bind(tenant)
        .bind(app)
        .bind(env)
        .bind(host)
        .fetch_optional(self.db())
        .await?;
        let Some(r) = row.filter(|r| r.state.is_holding()) else {
            return Ok(None);
        };
        let generation = |g: i64| u64::try_from(g).unwrap_or_default();
        Ok(match (r.admitted_at, r.hold_version, r.hold_generation) {
            // Not in the plan (joined since): the rollout's previous release.
            (None, _, _) => Some((r.from_version, generation(r.from_generation))),
            (Some(at), _, _) if at > 0 => None,
            (Some(_), version, held) => Some((
                version.unwrap_or_default(),
                generation(held.unwrap_or_default()),
            )),
        })
    }

    /// Admits the hosts of the rollout's current step; `offline` ones are
    /// admitted too (they converge when back) but not waited for. False when
    /// the rollout is no longer running at that step (paused meanwhile).
    pub async fn admit_step(&self, id: i64, step: u32, offline: &[String]) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let t = now();
        let moved = sqlx::query(
            "UPDATE rollouts SET step_started_at = $1, next_step_at = 0, updated_at = $2
             WHERE id = $3 AND state = $4 AND step = $5 AND step_started_at = 0",
        )
        .bind(t)
        .bind(t)
        .bind(id)
        .bind(RolloutState::Running)
        .bind(i64::from(step))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(
            "UPDATE rollout_hosts SET admitted_at = $1 WHERE rollout_id = $2 AND step = $3",
        )
        .bind(t)
        .bind(id)
        .bind(i64::from(step))
        .execute(&mut *tx)
        .await?;
        for h in offline {
            sqlx::query(
                "UPDATE rollout_hosts SET outcome = $1, reason = 'offline when its step started'
                 WHERE rollout_id = $2 AND host = $3",
            )
            .bind(HostOutcome::Offline)
            .bind(id)
            .bind(h)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Records the engine's verdicts on pending hosts, all in one
    /// transaction: (host, outcome, reason).
    pub async fn set_host_outcomes(
        &self,
        id: i64,
        verdicts: &[(String, HostOutcome, String)],
    ) -> Result<()> {
        if verdicts.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for (host, outcome, reason) in verdicts {
            sqlx::query(
                "UPDATE rollout_hosts SET outcome = $1, reason = $2 WHERE rollout_id = $3 AND host = $4 AND outcome = $5",
            )
            .bind(outcome)
            .bind(reason)
            .bind(id)
            .bind(host)
            .bind(HostOutcome::Pending)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// How many of the rollout's hosts ended how, per step: what the engine
    /// concludes from without reading every host.
    pub async fn rollout_tally(&self, id: i64) -> Result<Vec<(u32, HostOutcome, u64)>> {
        let rows: Vec<(i64, HostOutcome, i64)> = sqlx::query_as(
            "SELECT step, outcome, COUNT(*) FROM rollout_hosts WHERE rollout_id = $1 GROUP BY step, outcome",
        )
        .bind(id)
        .fetch_all(self.db())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(step, outcome, n)| (step as u32, outcome, n as u64))
            .collect())
    }

    /// Moves a running rollout to its next step, admitted at `next_step_at`
    /// (0: at once).
    pub async fn next_step(&self, id: i64, step: u32, next_step_at: i64) -> Result<()> {
        sqlx::query(
            "UPDATE rollouts SET step = $1, step_started_at = 0, next_step_at = $2, updated_at = $3
             WHERE id = $4 AND state = $5",
        )
        .bind(i64::from(step))
        .bind(next_step_at)
        .bind(now())
        .bind(id)
        .bind(RolloutState::Running)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// Changes the state of a rollout that is in one of `from`; false when it
    /// was not (someone else changed it first).
    pub async fn transition_rollout(
        &self,
        id: i64,
        from: &[RolloutState],
        to: RolloutState,
        reason: Option<&str>,
    ) -> Result<bool> {
        let placeholders = (5..5 + from.len())
            .map(|n| format!("${n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "UPDATE rollouts SET state = $1, reason = COALESCE($2, reason), updated_at = $3
             WHERE id = $4 AND state IN ({placeholders})"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(to)
            .bind(reason)
            .bind(now())
            .bind(id);
        for f in from {
            q = q.bind(*f);
        }
        Ok(q.execute(self.writer()).await?.rows_affected() == 1)
    }

    /// A resumed rollout's current step restarts its clock (a pause does not
    /// count against the batch timeout).
    pub async fn restart_step_clock(&self, id: i64) -> Result<()> {
        sqlx::query(
            "UPDATE rollouts SET step_started_at = CASE WHEN step_started_at > 0 THEN $1 ELSE 0 END WHERE id = $2",
        )
        .bind(now())
        .bind(id)
        .execute(self.writer())
        .await?;
        Ok(())
    }
}

#[cfg(test)]
pub(in crate::store) mod tests {

    use super::*;

    async fn store_with_releases(s: Store) -> Store {
        s.insert_blob("sha256:b", 1).await.unwrap();
        for v in ["1", "2", "3"] {
            let r = crate::store::tests::release(v, &format!("sha256:m{v}"));
            s.insert_release("default", &r, b"{}").await.unwrap();
        }
        s
    }

    /// Sets web@preprod to `version` through a rollout over `plan`.
    pub(in crate::store) async fn start(s: &Store, version: &str, plan: &[(&str, u32)]) -> Started {
        let plan: Vec<(String, u32)> = plan.iter().map(|(h, st)| (h.to_string(), *st)).collect();
        let steps = plan.iter().map(|(_, st)| st + 1).max().unwrap_or(0);
        let digest = format!("sha256:m{version}");
        let change = crate::plan::Change {
            tenant: "default",
            app: "web",
            environment: "preprod",
            version,
            digest: &digest,
            authorization: "[]",
            strategy: Strategy::default(),
            actor: "test",
            expected_generation: s
                .desired("default", "web", "preprod")
                .await
                .unwrap()
                .map_or(0, |(_, g)| g),
        };
        s.start_rollout(&NewRollout {
            change: &change,
            plan: &plan,
            steps,
        })
        .await
        .unwrap()
    }

    async fn hosts_are_held_at_the_previous_release_until_admitted(db: Store) {
        let s = store_with_releases(db).await;
        let first = start(&s, "1", &[]).await;
        assert_eq!(first.from_version, "");
        assert_eq!(
            s.rollout(first.rollout_id).await.unwrap().unwrap().state,
            RolloutState::Succeeded,
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

    async fn a_superseding_deploy_keeps_held_hosts_on_the_same_release(db: Store) {
        let s = store_with_releases(db).await;
        let first = start(&s, "1", &[]).await;
        let second = start(&s, "2", &[("a", 0), ("b", 1)]).await;
        s.admit_step(second.rollout_id, 0, &[]).await.unwrap();
        let third = start(&s, "3", &[("a", 0), ("b", 1)]).await;
        assert_eq!(
            s.rollout(second.rollout_id).await.unwrap().unwrap().state,
            RolloutState::Superseded
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

    async fn a_revert_points_desired_back_and_releases_the_hold(db: Store) {
        let s = store_with_releases(db).await;
        start(&s, "1", &[]).await;
        let second = start(&s, "2", &[("a", 0), ("b", 1)]).await;
        s.admit_step(second.rollout_id, 0, &[]).await.unwrap();
        // a ran 2 healthy before b's step failed.
        s.add_host("default", "a", "preprod", "j1", "x", now() + 60, "test")
            .await
            .unwrap();
        let healthy = crate::store::HostAppReport {
            app: "web".into(),
            running_version: "2".into(),
            running_digest: "sha256:m2".into(),
            health: crate::lifecycle::Health::Healthy,
            ..Default::default()
        };
        s.record_report("default", "a", &healthy).await.unwrap();
        let generation = s
            .revert_rollout(
                second.rollout_id,
                &[RolloutState::Running],
                RolloutState::Reverted,
                "canary failed",
            )
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
            (r.state, r.reason.as_str()),
            (RolloutState::Reverted, "canary failed")
        );
        assert_eq!(
            s.held_at("default", "web", "preprod", "b").await.unwrap(),
            None
        );
        let hosts = s.rollout_hosts(second.rollout_id).await.unwrap();
        assert_eq!(hosts[0].outcome, HostOutcome::Reverted);
        assert_eq!(hosts[1].outcome, HostOutcome::Pending);
        assert_eq!(
            s.rollback_target("default", "web", "preprod", "1")
                .await
                .unwrap(),
            None,
            "a rollback never goes back to the release just reverted"
        );
        assert!(
            s.revert_rollout(
                second.rollout_id,
                &[RolloutState::Running],
                RolloutState::Reverted,
                "again"
            )
            .await
            .unwrap()
            .is_none(),
            "only once"
        );
    }

    /// Two changes decided against the same state, written at once (two
    /// promotes on two replicas): one is written, the other refused whole.
    async fn two_changes_decided_against_one_generation_one_wins(db: Store) {
        let s = store_with_releases(db).await;
        let first = start(&s, "1", &[]).await;
        let change = |version: &'static str, digest: &'static str| crate::plan::Change {
            tenant: "default",
            app: "web",
            environment: "preprod",
            version,
            digest,
            authorization: "[]",
            strategy: Strategy::default(),
            actor: "test",
            expected_generation: first.generation,
        };
        let (two, three) = (change("2", "sha256:m2"), change("3", "sha256:m3"));
        let new = |c| NewRollout {
            change: c,
            plan: &[],
            steps: 0,
        };
        let (two, three) = (new(&two), new(&three));
        let (a, b) = tokio::join!(s.start_rollout(&two), s.start_rollout(&three));
        let refused: Vec<String> = [&a, &b]
            .iter()
            .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
            .collect();
        assert_eq!(refused.len(), 1, "{a:?} {b:?}");
        assert!(
            refused[0].contains("changed while this change was decided"),
            "{refused:?}"
        );
        let (version, generation) = s
            .desired("default", "web", "preprod")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(generation, first.generation + 1, "one change written");
        let winner = if a.is_ok() { "2" } else { "3" };
        assert_eq!(version, winner);
    }

    crate::store::testing::on_both_dialects!(
        two_changes_decided_against_one_generation_one_wins,
        hosts_are_held_at_the_previous_release_until_admitted,
        a_superseding_deploy_keeps_held_hosts_on_the_same_release,
        a_revert_points_desired_back_and_releases_the_hold,
    );
}
