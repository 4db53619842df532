//! What hosts say: their hello (agent version, OS), heartbeats, each app's
//! report (`host_status`), and the fleet view that joins reports with hosts
//! and desired releases.

use std::collections::BTreeMap;

use sqlx::FromRow;

use super::{Dialect, Result, Store, StoreError, json_list, now};
use crate::lifecycle::Health;

/// One host's report for one app, as stored.
#[derive(Debug, Clone, Default, FromRow)]
pub struct HostAppReport {
    pub app: String,
    pub running_version: String,
    pub running_digest: String,
    pub state: i32,
    pub health: Health,
    pub health_reason: String,
    pub env_check: i32,
    #[sqlx(try_from = "super::JsonText<Vec<String>>")]
    pub missing_env: Vec<String>,
    pub last_error: String,
    pub failed_version: String,
    pub failed_digest: String,
    #[sqlx(try_from = "i64")]
    pub generation: u64,
    /// Drift lines (bounded) and how many paths drifted in all.
    #[sqlx(try_from = "super::JsonText<Vec<String>>")]
    pub drift: Vec<String>,
    #[sqlx(try_from = "i64")]
    pub drift_count: u32,
    pub drift_digest: String,
}

#[derive(Debug, Clone, FromRow)]
pub struct FleetRow {
    pub host: String,
    pub environment: String,
    pub desired_version: Option<String>,
    #[sqlx(try_from = "i64")]
    pub desired_generation: u64,
    pub last_seen: i64,
    #[sqlx(flatten)]
    pub report: HostAppReport,
    pub healthy_since: i64,
    pub drift_acked: String,
    #[sqlx(try_from = "super::JsonText<BTreeMap<String, String>>")]
    pub labels: BTreeMap<String, String>,
}

impl FleetRow {
    /// Drift reported and not acknowledged.
    pub fn drifted(&self) -> bool {
        self.report.drift_count > 0 && self.drift_fingerprint() != self.drift_acked
    }

    /// What an acknowledgement of this host's drift is bound to.
    pub fn drift_fingerprint(&self) -> String {
        crate::fleet::drift_fingerprint(
            &self.report.drift_digest,
            &self.report.drift.join("\n"),
            self.report.drift_count,
        )
    }
}

/// The highest directive sequence a host's hello can move the store to
/// (far below where an `i64` counter would overflow).
const MAX_SEQUENCE: u64 = 1 << 62;

/// How many directive sequence numbers a session reserves at a time: a
/// deploy to a thousand hosts then writes no sequence at all (the hello
/// reserved it), and a busy session one write per this many directives.
const SEQUENCE_BLOCK: u64 = 64;

/// Directive sequence numbers reserved for one session, `next..=last`:
/// above every number handed out before, on any replica, so a session
/// takes them in memory. Numbers a session leaves unused are skipped.
#[derive(Debug)]
pub struct SequenceBlock {
    next: u64,
    last: u64,
}

impl SequenceBlock {
    /// The block that ends at `last`, as the store's counter now stands.
    fn ending_at(last: i64) -> Self {
        let last = last.max(0) as u64;
        SequenceBlock {
            next: last.saturating_sub(SEQUENCE_BLOCK - 1).max(1),
            last,
        }
    }

    /// The next number; None when the block is spent.
    pub fn take(&mut self) -> Option<u64> {
        (self.next <= self.last).then(|| {
            self.next += 1;
            self.next - 1
        })
    }
}

/// A session's host that the store no longer has (removed meanwhile).
fn unregistered(host: &str) -> StoreError {
    StoreError::Conflict(format!("host {host:?} is not registered"))
}

impl Store {
    /// A host said hello: what agent it runs, that it was seen, and the
    /// declared-apps revision it runs with the apps it refused there (app ->
    /// why). Hosts are created by `hosts add`, never by an agent. Returns
    /// the session's first block of directive sequence numbers, reserved in
    /// the same write.
    pub async fn host_hello(
        &self,
        tenant: &str,
        host: &str,
        agent_version: &str,
        os: &str,
        (apps_revision, apps_refused): (u64, &std::collections::BTreeMap<String, String>),
        directive_sequence: u64,
    ) -> Result<SequenceBlock> {
        // The host's highest accepted directive sequence moves the store's
        // forward, never back: after a restore from an older backup, the
        // next directive is above what the host accepted (the host is the
        // witness; a host that lies only confuses its own directives).
        let accepted = directive_sequence.min(MAX_SEQUENCE) as i64;
        let last: i64 = sqlx::query_scalar(
            "UPDATE hosts SET agent_version = $1, os = $2, last_seen = $3, apps_revision = $4, apps_refused = $5,
                 directive_seq = CASE WHEN directive_seq < $8 THEN $8 ELSE directive_seq END + $9
             WHERE tenant = $6 AND name = $7 RETURNING directive_seq",
        )
        .bind(agent_version)
        .bind(os)
        .bind(now())
        .bind(apps_revision as i64)
        .bind(serde_json::to_string(apps_refused).unwrap_or_else(|_| "{}".into()))
        .bind(tenant)
        .bind(host)
        .bind(accepted)
        .bind(SEQUENCE_BLOCK as i64)
        .fetch_optional(self.writer())
        .await?
        .ok_or_else(|| unregistered(host))?;
        Ok(SequenceBlock::ending_at(last))
    }

    /// Another block of directive sequence numbers for a session that spent
    /// its last one.
    pub async fn reserve_directive_seqs(&self, tenant: &str, host: &str) -> Result<SequenceBlock> {
        let last: i64 = sqlx::query_scalar(
            "UPDATE hosts SET directive_seq = directive_seq + $1 WHERE tenant = $2 AND name = $3 RETURNING directive_seq",
        )
        .bind(SEQUENCE_BLOCK as i64)
        .bind(tenant)
        .bind(host)
        .fetch_optional(self.writer())
        .await?
        .ok_or_else(|| unregistered(host))?;
        Ok(SequenceBlock::ending_at(last))
    }

    /// Writes when hosts were last heard from, all in one statement: the
    /// hub batches heartbeats in memory (`Hub::to_flush`) and a value never
    /// moves back.
    pub async fn record_last_seen(&self, seen: &[(String, String, i64)]) -> Result<()> {
        if seen.is_empty() {
            return Ok(());
        }
        let rows = serde_json::to_string(seen).unwrap_or_else(|_| "[]".into());
        let sql = match self.dialect {
            Dialect::Sqlite => {
                "UPDATE hosts SET last_seen = MAX(hosts.last_seen, j.at)
                 FROM (SELECT value ->> 0 AS tenant, value ->> 1 AS name, value ->> 2 AS at
                       FROM json_each($1)) AS j
                 WHERE hosts.tenant = j.tenant AND hosts.name = j.name"
            }
            Dialect::Postgres => {
                "UPDATE hosts SET last_seen = GREATEST(hosts.last_seen, j.at)
                 FROM (SELECT value ->> 0 AS tenant, value ->> 1 AS name, (value ->> 2)::bigint AS at
                       FROM jsonb_array_elements($1::jsonb)) AS j
                 WHERE hosts.tenant = j.tenant AND hosts.name = j.name"
            }
        };
        sqlx::query(sql).bind(rows).execute(self.writer()).await?;
        Ok(())
    }

    /// Records a host's report for one app (that the host was heard from is
    /// the hub's to batch).
    pub async fn record_report(&self, tenant: &str, host: &str, r: &HostAppReport) -> Result<()> {
        let mut tx = self.begin_write().await?;
        write_report(&mut tx, tenant, host, r).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records many hosts' reports in one transaction: (tenant, host, report).
    pub async fn record_reports(&self, reports: &[(String, String, HostAppReport)]) -> Result<()> {
        let mut tx = self.begin_write().await?;
        for (tenant, host, r) in reports {
            write_report(&mut tx, tenant, host, r).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Forgets apps a host no longer runs (its config dropped them).
    pub async fn retain_host_apps(&self, tenant: &str, host: &str, apps: &[String]) -> Result<()> {
        let existing: Vec<String> =
            sqlx::query_scalar("SELECT app FROM host_status WHERE tenant = $1 AND host = $2")
                .bind(tenant)
                .bind(host)
                .fetch_all(self.db())
                .await?;
        for app in existing.iter().filter(|a| !apps.contains(a)) {
            sqlx::query("DELETE FROM host_status WHERE tenant = $1 AND host = $2 AND app = $3")
                .bind(tenant)
                .bind(host)
                .bind(app)
                .execute(self.writer())
                .await?;
        }
        Ok(())
    }

    /// What every host placed on an app reports (hosts a selector leaves out
    /// are not part of the app's fleet).
    pub async fn fleet(&self, tenant: &str, app: &str, env: &str) -> Result<Vec<FleetRow>> {
        self.fleet_of(tenant, app, env, None).await
    }

    /// `fleet`, of the named hosts only (the rollout engine judging the
    /// hosts that reported).
    pub async fn fleet_hosts(
        &self,
        tenant: &str,
        app: &str,
        env: &str,
        hosts: &[String],
    ) -> Result<Vec<FleetRow>> {
        if hosts.is_empty() {
            return Ok(Vec::new());
        }
        self.fleet_of(tenant, app, env, Some(&json_list(hosts)))
            .await
    }

    /// `fleet`, of the hosts in the JSON array `hosts` when given.
    async fn fleet_of(
        &self,
        tenant: &str,
        app: &str,
        env: &str,
        hosts: Option<&str>,
    ) -> Result<Vec<FleetRow>> {
        let placements = self.placements(tenant).await?;
        let rows: Vec<FleetRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT s.host, h.environment, d.version AS desired_version,
                    COALESCE(d.generation, 0) AS desired_generation, h.last_seen, h.labels,
                    s.app, s.running_version, s.running_digest, s.state, s.health, s.health_reason, s.env_check,
                    s.missing_env, s.last_error, s.failed_version, s.failed_digest, s.generation,
                    s.healthy_since, s.drift, s.drift_count, s.drift_acked, s.drift_digest
             FROM host_status s
             JOIN hosts h ON h.tenant = s.tenant AND h.name = s.host
             LEFT JOIN desired d ON d.tenant = s.tenant AND d.app = s.app AND d.environment = h.environment
             WHERE s.tenant = $1 AND ($2 = '' OR s.app = $3) AND ($4 = '' OR h.environment = $5)
               AND h.revoked_at IS NULL
               AND ($6 IS NULL OR s.host IN (SELECT value FROM {}))
             ORDER BY s.app, h.environment, s.host",
            self.json_array_elements_text("$7")
        )))
        .bind(tenant)
        .bind(app)
        .bind(app)
        .bind(env)
        .bind(env)
        .bind(hosts)
        .bind(hosts)
        .fetch_all(self.db())
        .await?;
        Ok(rows
            .into_iter()
            .filter(|f| {
                placements
                    .get(&(f.report.app.clone(), f.environment.clone()))
                    .is_none_or(|sel| crate::fleet::selector_matches(sel, &f.labels))
            })
            .collect())
    }
}

/// Writes one host's report for one app inside the caller's transaction.
async fn write_report(
    tx: &mut sqlx::AnyConnection,
    tenant: &str,
    host: &str,
    r: &HostAppReport,
) -> Result<()> {
    let t = now();
    let healthy = r.health == Health::Healthy;
    sqlx::query(
            "INSERT INTO host_status (tenant, host, app, running_version, running_digest, state, health, health_reason,
                env_check, missing_env, last_error, failed_version, failed_digest, generation, updated_at,
                healthy_since, drift, drift_count, drift_digest)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)
             ON CONFLICT (tenant, host, app) DO UPDATE SET
                healthy_since = CASE
                    WHEN excluded.healthy_since = 0 THEN 0
                    WHEN host_status.healthy_since > 0 AND host_status.running_digest = excluded.running_digest
                        THEN host_status.healthy_since
                    ELSE excluded.healthy_since END,
                drift = excluded.drift, drift_count = excluded.drift_count, drift_digest = excluded.drift_digest,
                running_version = excluded.running_version, running_digest = excluded.running_digest,
                state = excluded.state, health = excluded.health, health_reason = excluded.health_reason,
                env_check = excluded.env_check, missing_env = excluded.missing_env, last_error = excluded.last_error,
                failed_version = excluded.failed_version, failed_digest = excluded.failed_digest,
                generation = excluded.generation, updated_at = excluded.updated_at",
        )
        .bind(tenant)
        .bind(host)
        .bind(&r.app)
        .bind(&r.running_version)
        .bind(&r.running_digest)
        .bind(r.state)
        .bind(r.health)
        .bind(&r.health_reason)
        .bind(r.env_check)
        .bind(json_list(&r.missing_env))
        .bind(&r.last_error)
        .bind(&r.failed_version)
        .bind(&r.failed_digest)
        .bind(r.generation as i64)
        .bind(t)
        .bind(if healthy { t } else { 0 })
        .bind(json_list(&r.drift))
        .bind(i64::from(r.drift_count))
        .bind(&r.drift_digest)
        .execute(&mut *tx)
        .await?;
    if healthy && !r.running_digest.is_empty() {
        // The release ran healthy in the host's environment: a rollback
        // may go back to it.
        sqlx::query(
                "INSERT INTO healthy_releases (tenant, app, environment, manifest_digest, first_at)
                 SELECT h.tenant, $1, h.environment, $2, $3 FROM hosts h WHERE h.tenant = $4 AND h.name = $5
                 ON CONFLICT DO NOTHING",
            )
            .bind(&r.app)
            .bind(&r.running_digest)
            .bind(t)
            .bind(tenant)
            .bind(host)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    use super::*;

    async fn a_report_reads_back_with_its_lists(s: Store) {
        s.add_host("default", "h1", "preprod", "j1", "x", now() + 60, "test")
            .await
            .unwrap();
        let report = HostAppReport {
            app: "web".into(),
            running_version: "1".into(),
            running_digest: "sha256:m1".into(),
            health: Health::Healthy,
            missing_env: vec!["DATABASE_URL".into(), "API_KEY".into()],
            generation: 3,
            drift: vec!["changed: a,b.txt".into(), "added: \"q\"".into()],
            drift_count: 2,
            drift_digest: "sha256:d".into(),
            ..Default::default()
        };
        s.record_report("default", "h1", &report).await.unwrap();
        let fleet = s.fleet("default", "web", "preprod").await.unwrap();
        assert_eq!(fleet.len(), 1);
        let f = &fleet[0];
        assert_eq!((f.host.as_str(), f.environment.as_str()), ("h1", "preprod"));
        assert_eq!(f.desired_version, None);
        assert_eq!(f.report.missing_env, report.missing_env);
        assert_eq!(f.report.drift, report.drift);
        assert_eq!(f.report.generation, 3);
        assert!(f.healthy_since > 0);
        assert!(f.drifted());
        // Batched heard-from times: one statement, never moving back.
        s.add_host("default", "h2", "preprod", "j2", "x", now() + 60, "test")
            .await
            .unwrap();
        s.record_report("default", "h2", &report).await.unwrap();
        let seen = |h: &str, at: i64| ("default".to_string(), h.to_string(), at);
        s.record_last_seen(&[seen("h1", 500), seen("h2", 700), seen("nobody", 9)])
            .await
            .unwrap();
        s.record_last_seen(&[seen("h1", 400)]).await.unwrap();
        let last_seen = |rows: &[FleetRow]| -> Vec<(String, i64)> {
            rows.iter().map(|f| (f.host.clone(), f.last_seen)).collect()
        };
        assert_eq!(
            last_seen(&s.fleet("default", "web", "preprod").await.unwrap()),
            [("h1".to_string(), 500), ("h2".to_string(), 700)]
        );
        let only = s
            .fleet_hosts("default", "web", "preprod", &["h2".to_string()])
            .await
            .unwrap();
        assert_eq!(last_seen(&only), [("h2".to_string(), 700)]);
        s.retain_host_apps("default", "h2", &[]).await.unwrap();
        s.retain_host_apps("default", "h1", &[]).await.unwrap();
        assert!(s.fleet("default", "", "").await.unwrap().is_empty());
    }

    /// Every session's directive numbers are above every number handed out
    /// before, whichever replica reserved them, and above the highest the
    /// host says it accepted (a store restored from an older backup).
    async fn sessions_take_directive_numbers_above_all_before(s: Store) {
        s.add_host("default", "h1", "preprod", "j1", "x", now() + 60, "test")
            .await
            .unwrap();
        let hello = |said: u64| {
            let s = s.clone();
            async move {
                s.host_hello("default", "h1", "1", "", (0, &BTreeMap::new()), said)
                    .await
                    .unwrap()
            }
        };
        let drain = |mut b: SequenceBlock| std::iter::from_fn(move || b.take()).collect::<Vec<_>>();
        let first = drain(hello(0).await);
        assert_eq!(first.len() as u64, SEQUENCE_BLOCK);
        assert_eq!(first[0], 1);
        assert!(first.windows(2).all(|w| w[1] == w[0] + 1));
        // Another session (this replica or another): all above.
        let second = drain(hello(0).await);
        assert!(second[0] > *first.last().unwrap());
        let more = drain(s.reserve_directive_seqs("default", "h1").await.unwrap());
        assert!(more[0] > *second.last().unwrap());
        // The host accepted 10,000 (the store was restored from an older
        // backup): the next session starts above it.
        let restored = drain(hello(10_000).await);
        assert_eq!(restored[0], 10_001);
        // A host the store no longer has: refused, nothing handed out.
        let e = s
            .host_hello("default", "gone", "1", "", (0, &BTreeMap::new()), 0)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("\"gone\" is not registered"), "{e}");
        assert!(s.reserve_directive_seqs("default", "gone").await.is_err());
    }

    crate::store::testing::on_both_dialects!(
        a_report_reads_back_with_its_lists,
        sessions_take_directive_numbers_above_all_before,
    );
}
