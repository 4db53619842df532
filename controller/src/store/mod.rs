//! The controller's database: tenants, environments, apps, blobs, releases,
//! desired state, hosts and what they report, and the audit log. SQLite (one file,
//! WAL) through sqlx with runtime queries, so a Postgres dialect can sit beside it.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

mod fleet;
mod rollouts;
mod trust;

pub use fleet::{EnvChange, EnvPolicy, HostChange, Placements, labels_from_json};
pub use rollouts::{NewRollout, RolloutHostRow, RolloutRow, Started};
pub use trust::{ApiTokenRow, CertOwner, HostRow, JoinRefused};

use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
}

#[derive(Debug, Clone)]
pub struct ReleaseRow {
    pub app: String,
    pub version: String,
    pub manifest_digest: String,
    pub blob_digest: String,
    pub blob_size: u64,
    pub git_commit: Option<String>,
    pub entries: u32,
    pub created_at: i64,
    pub counter: u64,
    /// Publisher signatures, JSON (`[{"key","sig"}]`).
    pub signatures: String,
}

#[derive(Debug, Clone)]
pub struct DesiredRow {
    pub app: String,
    pub version: String,
    pub generation: u64,
    pub manifest_digest: String,
    pub blob_digest: String,
    pub blob_size: u64,
    pub manifest: Vec<u8>,
    pub counter: u64,
    pub signatures: String,
    /// Operator rollback authorization, JSON signatures.
    pub authorization: String,
}

/// One host's report for one app, as stored.
#[derive(Debug, Clone, Default)]
pub struct HostAppReport {
    pub app: String,
    pub running_version: String,
    pub running_digest: String,
    pub state: i32,
    pub health: i32,
    pub health_reason: String,
    pub env_check: i32,
    pub missing_env: Vec<String>,
    pub last_error: String,
    pub failed_version: String,
    pub failed_digest: String,
    pub generation: u64,
    /// Drift lines (bounded) and how many paths drifted in all.
    pub drift: Vec<String>,
    pub drift_count: u32,
    pub drift_digest: String,
}

#[derive(Debug, Clone)]
pub struct FleetRow {
    pub host: String,
    pub environment: String,
    pub desired_version: Option<String>,
    pub desired_generation: u64,
    pub last_seen: i64,
    pub report: HostAppReport,
    pub healthy_since: i64,
    pub drift_acked: String,
    pub labels: std::collections::BTreeMap<String, String>,
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

#[derive(Debug, Clone)]
pub struct AuditRow {
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub app: String,
    pub environment: String,
    pub detail: String,
    pub outcome: String,
    pub peer: String,
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Store {
    /// Opens (creating if needed) the SQLite file and applies pending migrations.
    pub async fn open_sqlite(path: &Path) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("../migrations/sqlite").run(&pool).await?;
        Ok(Self { pool })
    }

    pub async fn tenant_exists(&self, tenant: &str) -> Result<bool> {
        let row = sqlx::query("SELECT 1 FROM tenants WHERE name = ?")
            .bind(tenant)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// `Some(production)` when the environment exists.
    pub async fn environment(&self, tenant: &str, env: &str) -> Result<Option<bool>> {
        let row = sqlx::query("SELECT production FROM environments WHERE tenant = ? AND name = ?")
            .bind(tenant)
            .bind(env)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get::<i64, _>(0) != 0))
    }

    pub async fn environments(&self, tenant: &str) -> Result<Vec<(String, bool)>> {
        let rows =
            sqlx::query("SELECT name, production FROM environments WHERE tenant = ? ORDER BY name")
                .bind(tenant)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get(0), r.get::<i64, _>(1) != 0))
            .collect())
    }

    pub async fn app_exists(&self, tenant: &str, app: &str) -> Result<bool> {
        let row = sqlx::query("SELECT 1 FROM apps WHERE tenant = ? AND name = ?")
            .bind(tenant)
            .bind(app)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    pub async fn insert_blob(&self, digest: &str, size: u64) -> Result<()> {
        sqlx::query(
            "INSERT INTO blobs (digest, size, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(digest)
        .bind(size as i64)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Inserts the release unless (tenant, app, version) exists; returns the stored
    /// release and whether it was already there.
    pub async fn insert_release(
        &self,
        tenant: &str,
        r: &ReleaseRow,
        manifest: &[u8],
    ) -> Result<(ReleaseRow, bool)> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(
            "INSERT INTO apps (tenant, name, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(tenant)
        .bind(&r.app)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        let inserted = sqlx::query(
            "INSERT INTO releases (tenant, app, version, manifest_digest, blob_digest, blob_size, git_commit, entries, manifest, created_at, counter, signatures)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(tenant)
        .bind(&r.app)
        .bind(&r.version)
        .bind(&r.manifest_digest)
        .bind(&r.blob_digest)
        .bind(r.blob_size as i64)
        .bind(&r.git_commit)
        .bind(r.entries as i64)
        .bind(manifest)
        .bind(r.created_at)
        .bind(r.counter as i64)
        .bind(&r.signatures)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        tx.commit().await?;
        let stored = self
            .release(tenant, &r.app, &r.version)
            .await?
            .expect("release row exists after insert");
        Ok((stored, !inserted))
    }

    pub async fn release(
        &self,
        tenant: &str,
        app: &str,
        version: &str,
    ) -> Result<Option<ReleaseRow>> {
        let row = sqlx::query(
            "SELECT app, version, manifest_digest, blob_digest, blob_size, git_commit, entries, created_at, counter, signatures
             FROM releases WHERE tenant = ? AND app = ? AND version = ?",
        )
        .bind(tenant)
        .bind(app)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(release_from_row))
    }

    pub async fn releases(&self, tenant: &str, app: &str) -> Result<Vec<ReleaseRow>> {
        let rows = sqlx::query(
            "SELECT app, version, manifest_digest, blob_digest, blob_size, git_commit, entries, created_at, counter, signatures
             FROM releases WHERE tenant = ? AND app = ? ORDER BY created_at DESC, rowid DESC",
        )
        .bind(tenant)
        .bind(app)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(release_from_row).collect())
    }

    /// Current desired (version, generation) of app@env.
    pub async fn desired(
        &self,
        tenant: &str,
        app: &str,
        env: &str,
    ) -> Result<Option<(String, u64)>> {
        let row = sqlx::query("SELECT version, generation FROM desired WHERE tenant = ? AND app = ? AND environment = ?")
            .bind(tenant)
            .bind(app)
            .bind(env)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| (r.get(0), r.get::<i64, _>(1) as u64)))
    }

    /// The newest version desired before, that differs from `current` and
    /// whose latest rollout here did not fail (halted, reverted, aborted): a
    /// rollback never goes back to a release that was just reverted.
    pub async fn previous_desired(
        &self,
        tenant: &str,
        app: &str,
        env: &str,
        current: &str,
    ) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT version FROM desired_history d WHERE tenant = ? AND app = ? AND environment = ? AND version != ?
               AND COALESCE((SELECT state FROM rollouts r WHERE r.tenant = d.tenant AND r.app = d.app
                   AND r.environment = d.environment AND r.to_version = d.version ORDER BY r.id DESC LIMIT 1), '')
                   NOT IN ('halted', 'reverted', 'aborted')
             ORDER BY id DESC LIMIT 1",
        )
        .bind(tenant)
        .bind(app)
        .bind(env)
        .bind(current)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// (app, generation) of every desired release in an environment: cheap, read
    /// on every desired-state change by every session.
    pub async fn desired_generations(&self, tenant: &str, env: &str) -> Result<Vec<(String, u64)>> {
        let rows = sqlx::query(
            "SELECT app, generation FROM desired WHERE tenant = ? AND environment = ? ORDER BY app",
        )
        .bind(tenant)
        .bind(env)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get(0), r.get::<i64, _>(1) as u64))
            .collect())
    }

    /// The desired release of app@env with its manifest.
    pub async fn desired_app(
        &self,
        tenant: &str,
        env: &str,
        app: &str,
    ) -> Result<Option<DesiredRow>> {
        let Some(row) = sqlx::query(
            "SELECT version, generation, authorization FROM desired WHERE tenant = ? AND environment = ? AND app = ?",
        )
        .bind(tenant)
        .bind(env)
        .bind(app)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let version: String = row.get(0);
        let generation = row.get::<i64, _>(1) as u64;
        let desired = self
            .release_as_desired(tenant, app, &version, generation)
            .await?;
        Ok(desired.map(|d| DesiredRow {
            authorization: row.get(2),
            ..d
        }))
    }

    /// A release as a directive row (no rollback authorization): what a host
    /// held back by a rollout keeps, and the base of `desired_app`.
    pub async fn release_as_desired(
        &self,
        tenant: &str,
        app: &str,
        version: &str,
        generation: u64,
    ) -> Result<Option<DesiredRow>> {
        let row = sqlx::query(
            "SELECT app, version, manifest_digest, blob_digest, blob_size, manifest, counter, signatures
             FROM releases WHERE tenant = ? AND app = ? AND version = ?",
        )
        .bind(tenant)
        .bind(app)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| DesiredRow {
            app: r.get(0),
            version: r.get(1),
            generation,
            manifest_digest: r.get(2),
            blob_digest: r.get(3),
            blob_size: r.get::<i64, _>(4) as u64,
            manifest: r.get(5),
            counter: r.get::<i64, _>(6) as u64,
            signatures: r.get(7),
            authorization: "[]".into(),
        }))
    }

    /// A host said hello: what agent it runs, and that it was seen. Hosts are
    /// created by `hosts add`, never by an agent.
    pub async fn host_hello(
        &self,
        tenant: &str,
        host: &str,
        agent_version: &str,
        os: &str,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE hosts SET agent_version = ?, os = ?, last_seen = ? WHERE tenant = ? AND name = ?",
        )
        .bind(agent_version)
        .bind(os)
        .bind(now())
        .bind(tenant)
        .bind(host)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn touch_host(&self, tenant: &str, host: &str) -> Result<()> {
        sqlx::query("UPDATE hosts SET last_seen = ? WHERE tenant = ? AND name = ?")
            .bind(now())
            .bind(tenant)
            .bind(host)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records a host's report for one app (and that the host was seen).
    pub async fn record_report(&self, tenant: &str, host: &str, r: &HostAppReport) -> Result<()> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(
            "INSERT INTO host_status (tenant, host, app, running_version, running_digest, state, health, health_reason,
                env_check, missing_env, last_error, failed_version, failed_digest, generation, updated_at,
                healthy_since, drift, drift_count, drift_digest)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
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
        .bind(r.missing_env.join(","))
        .bind(&r.last_error)
        .bind(&r.failed_version)
        .bind(&r.failed_digest)
        .bind(r.generation as i64)
        .bind(now())
        .bind(if r.health == proto::v1::Health::Healthy as i32 {
            now()
        } else {
            0
        })
        .bind(r.drift.join("\n"))
        .bind(i64::from(r.drift_count))
        .bind(&r.drift_digest)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE hosts SET last_seen = ? WHERE tenant = ? AND name = ?")
            .bind(now())
            .bind(tenant)
            .bind(host)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Forgets apps a host no longer runs (its config dropped them).
    pub async fn retain_host_apps(&self, tenant: &str, host: &str, apps: &[String]) -> Result<()> {
        let existing = sqlx::query("SELECT app FROM host_status WHERE tenant = ? AND host = ?")
            .bind(tenant)
            .bind(host)
            .fetch_all(&self.pool)
            .await?;
        for row in existing {
            let app: String = row.get(0);
            if !apps.contains(&app) {
                sqlx::query("DELETE FROM host_status WHERE tenant = ? AND host = ? AND app = ?")
                    .bind(tenant)
                    .bind(host)
                    .bind(&app)
                    .execute(&self.pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// What every host placed on an app reports (hosts a selector leaves out
    /// are not part of the app's fleet).
    pub async fn fleet(&self, tenant: &str, app: &str, env: &str) -> Result<Vec<FleetRow>> {
        let placements = self.placements(tenant).await?;
        let rows = sqlx::query(
            "SELECT s.host, h.environment, d.version, h.last_seen, s.app, s.running_version, s.running_digest, s.state,
                    s.health, s.health_reason, s.env_check, s.missing_env, s.last_error, s.failed_version,
                    s.failed_digest, s.generation, s.healthy_since, s.drift, s.drift_count, s.drift_acked,
                    h.labels, s.drift_digest, COALESCE(d.generation, 0)
             FROM host_status s
             JOIN hosts h ON h.tenant = s.tenant AND h.name = s.host
             LEFT JOIN desired d ON d.tenant = s.tenant AND d.app = s.app AND d.environment = h.environment
             WHERE s.tenant = ? AND (? = '' OR s.app = ?) AND (? = '' OR h.environment = ?)
               AND h.revoked_at IS NULL
             ORDER BY s.app, h.environment, s.host",
        )
        .bind(tenant)
        .bind(app)
        .bind(app)
        .bind(env)
        .bind(env)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let missing: String = r.get(11);
                let drift: String = r.get(17);
                FleetRow {
                    labels: labels_from_json(&r.get::<String, _>(20)),
                    healthy_since: r.get(16),
                    drift_acked: r.get(19),
                    host: r.get(0),
                    environment: r.get(1),
                    desired_version: r.get(2),
                    desired_generation: r.get::<i64, _>(22) as u64,
                    last_seen: r.get(3),
                    report: HostAppReport {
                        app: r.get(4),
                        running_version: r.get(5),
                        running_digest: r.get(6),
                        state: r.get(7),
                        health: r.get(8),
                        health_reason: r.get(9),
                        env_check: r.get(10),
                        missing_env: missing
                            .split(',')
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect(),
                        last_error: r.get(12),
                        failed_version: r.get(13),
                        failed_digest: r.get(14),
                        generation: r.get::<i64, _>(15) as u64,
                        drift: drift
                            .split('\n')
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect(),
                        drift_count: r.get::<i64, _>(18) as u32,
                        drift_digest: r.get(21),
                    },
                }
            })
            .filter(|f: &FleetRow| {
                placements
                    .get(&(f.report.app.clone(), f.environment.clone()))
                    .is_none_or(|sel| crate::fleet::selector_matches(sel, &f.labels))
            })
            .collect())
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one column per argument, all named at the call site"
    )]
    pub async fn audit(
        &self,
        tenant: &str,
        actor: &str,
        action: &str,
        app: &str,
        env: &str,
        detail: &str,
        outcome: &str,
        peer: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit (at, tenant, actor, action, app, environment, detail, outcome, peer)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(now())
        .bind(tenant)
        .bind(actor)
        .bind(action)
        .bind(app)
        .bind(env)
        .bind(detail)
        .bind(outcome)
        .bind(peer)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn history(&self, tenant: &str, app: &str, limit: u32) -> Result<Vec<AuditRow>> {
        let rows = sqlx::query(
            "SELECT at, actor, action, app, environment, detail, outcome, peer FROM audit
             WHERE tenant = ? AND (? = '' OR app = ?) ORDER BY id DESC LIMIT ?",
        )
        .bind(tenant)
        .bind(app)
        .bind(app)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| AuditRow {
                at: r.get(0),
                actor: r.get(1),
                action: r.get(2),
                app: r.get(3),
                environment: r.get(4),
                detail: r.get(5),
                outcome: r.get(6),
                peer: r.get(7),
            })
            .collect())
    }
}

/// Points app@env at `version` (new generation, history row) inside a transaction.
async fn upsert_desired(
    tx: &mut sqlx::SqliteConnection,
    tenant: &str,
    app: &str,
    env: &str,
    version: &str,
    authorization: &str,
) -> Result<u64> {
    let generation: i64 = sqlx::query(
        "INSERT INTO desired (tenant, app, environment, version, generation, updated_at, authorization) VALUES (?, ?, ?, ?, 1, ?, ?)
         ON CONFLICT (tenant, app, environment) DO UPDATE
           SET version = excluded.version, generation = desired.generation + 1, updated_at = excluded.updated_at,
               authorization = excluded.authorization
         RETURNING generation",
    )
    .bind(tenant)
    .bind(app)
    .bind(env)
    .bind(version)
    .bind(now())
    .bind(authorization)
    .fetch_one(&mut *tx)
    .await?
    .get(0);
    sqlx::query(
        "INSERT INTO desired_history (tenant, app, environment, version, generation, at) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(tenant)
    .bind(app)
    .bind(env)
    .bind(version)
    .bind(generation)
    .bind(now())
    .execute(&mut *tx)
    .await?;
    Ok(generation as u64)
}

fn release_from_row(r: sqlx::sqlite::SqliteRow) -> ReleaseRow {
    ReleaseRow {
        app: r.get(0),
        version: r.get(1),
        manifest_digest: r.get(2),
        blob_digest: r.get(3),
        blob_size: r.get::<i64, _>(4) as u64,
        git_commit: r.get(5),
        entries: r.get::<i64, _>(6) as u32,
        created_at: r.get(7),
        counter: r.get::<i64, _>(8) as u64,
        signatures: r.get(9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_sqlite(&dir.path().join("slipway.db"))
            .await
            .unwrap();
        (dir, s)
    }

    pub(super) fn release(version: &str, digest: &str) -> ReleaseRow {
        ReleaseRow {
            app: "web".into(),
            version: version.into(),
            manifest_digest: digest.into(),
            blob_digest: "sha256:b".into(),
            blob_size: 1,
            git_commit: None,
            entries: 1,
            created_at: now(),
            counter: 0,
            signatures: "[]".into(),
        }
    }

    #[tokio::test]
    async fn starts_with_default_tenant_and_environments() {
        let (_d, s) = store().await;
        assert!(s.tenant_exists("default").await.unwrap());
        assert_eq!(s.environment("default", "prod").await.unwrap(), Some(true));
        assert_eq!(
            s.environment("default", "preprod").await.unwrap(),
            Some(false)
        );
        assert_eq!(s.environment("default", "staging").await.unwrap(), None);
    }

    #[tokio::test]
    async fn versions_are_immutable_and_generations_grow() {
        let (_d, s) = store().await;
        s.insert_blob("sha256:b", 1).await.unwrap();
        let (_, existed) = s
            .insert_release("default", &release("1", "sha256:m1"), b"{}")
            .await
            .unwrap();
        assert!(!existed);
        let (stored, existed) = s
            .insert_release("default", &release("1", "sha256:other"), b"{}")
            .await
            .unwrap();
        assert!(existed);
        assert_eq!(
            stored.manifest_digest, "sha256:m1",
            "the first registration wins"
        );
        s.insert_release("default", &release("2", "sha256:m2"), b"{}")
            .await
            .unwrap();

        assert_eq!(rollouts::tests::start(&s, "1", &[]).await.generation, 1);
        assert_eq!(rollouts::tests::start(&s, "2", &[]).await.generation, 2);
        assert_eq!(
            s.previous_desired("default", "web", "preprod", "2")
                .await
                .unwrap()
                .as_deref(),
            Some("1")
        );
        let d = s
            .desired_app("default", "preprod", "web")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((d.version.as_str(), d.generation), ("2", 2));
        assert_eq!(
            s.desired_generations("default", "preprod").await.unwrap(),
            vec![("web".to_string(), 2)]
        );
        assert!(
            s.desired_app("default", "prod", "web")
                .await
                .unwrap()
                .is_none()
        );
    }
}
