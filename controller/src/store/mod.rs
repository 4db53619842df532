//! The controller's database: `Store`, `StoreError`, opening and migrating it.
//! Queries live by table group: `releases` (apps, blobs, releases, desired),
//! `hosts` (hello, reports, the fleet as hosts report it), `rollouts`,
//! `fleet` (environments, inventory, placements, drift acks), `trust`
//! (tokens, certificates, tenants) and `audit`. SQLite (one file, WAL) through
//! sqlx with runtime queries decoded by column name into `FromRow` structs, so
//! a Postgres dialect can sit beside it; list columns hold JSON arrays.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub mod audit;
mod declared;
mod fleet;
mod hosts;
mod releases;
mod rollouts;
mod trust;
mod web;

pub use audit::{AuditRow, HistoryFilter};
pub use declared::{DeclaredRow, HostAppsAck, PutRefused};
pub use fleet::{EnvChange, EnvPolicy, HostChange, Placements, labels_from_json};
pub use hosts::{FleetRow, HostAppReport};
pub use releases::{DesiredRow, ReleaseRow, YankRefused};
pub use rollouts::{NewRollout, RolloutHostRow, RolloutRow, Started};
pub use trust::{ApiTokenRow, CertOwner, HostRow, JoinRefused, LAST_USED_RESOLUTION_SECS};
pub use web::{MAX_SESSIONS_PER_TOKEN, WebSessionRow};

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
    /// Reads (WAL: they never wait for the writer).
    pool: SqlitePool,
    /// Every write, on one connection: writers queue here in order instead
    /// of polling SQLite's lock (its busy handler sleeps up to 100 ms a try,
    /// which stretched a 1,000-host rollout while the CPU sat idle).
    writer: SqlitePool,
    /// Statements and transactions run so far (`queries`), for benchmarks.
    queries: Arc<AtomicU64>,
}

/// The schema, applied by `open_sqlite` (and by `#[sqlx::test]` in tests).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A list column's text: a JSON array of strings.
fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
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
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts.clone())
            .await?;
        MIGRATOR.run(&writer).await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await?;
        Ok(Self {
            pool,
            writer,
            queries: Arc::default(),
        })
    }

    /// A store over a pool whose schema is already migrated (tests): reads
    /// and writes share it.
    #[cfg(test)]
    pub(crate) fn from_pool(pool: SqlitePool) -> Self {
        Self {
            writer: pool.clone(),
            pool,
            queries: Arc::default(),
        }
    }

    /// The pool, counting one query: every statement outside a transaction,
    /// and every transaction, goes through here.
    fn db(&self) -> &SqlitePool {
        self.queries.fetch_add(1, Ordering::Relaxed);
        &self.pool
    }

    /// The writer's connection, counting one query like `db`: every
    /// statement that writes and every write transaction goes through here.
    fn writer(&self) -> &SqlitePool {
        self.queries.fetch_add(1, Ordering::Relaxed);
        &self.writer
    }

    /// How many queries (statements or transactions) this store ran.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn release(version: &str, digest: &str) -> ReleaseRow {
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
            yanked_at: None,
            yank_reason: String::new(),
        }
    }

    #[sqlx::test(migrations = "../migrations/sqlite")]
    async fn starts_with_default_tenant_and_environments(pool: SqlitePool) {
        let s = Store::from_pool(pool);
        assert!(s.tenant_exists("default").await.unwrap());
        assert_eq!(s.environment("default", "prod").await.unwrap(), Some(true));
        assert_eq!(
            s.environment("default", "preprod").await.unwrap(),
            Some(false)
        );
        assert_eq!(s.environment("default", "staging").await.unwrap(), None);
    }

    #[tokio::test]
    async fn open_sqlite_creates_the_file_and_reopens_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slipway.db");
        let s = Store::open_sqlite(&path).await.unwrap();
        s.insert_blob("sha256:b", 1).await.unwrap();
        s.insert_release("default", &release("1", "sha256:m1"), b"{}")
            .await
            .unwrap();
        drop(s);
        let s = Store::open_sqlite(&path).await.unwrap();
        assert!(s.release("default", "web", "1").await.unwrap().is_some());
    }

    /// A controller upgraded in place reads the rows an older one wrote: the
    /// joined list columns come back as the same lists.
    #[sqlx::test(migrations = false)]
    async fn rows_written_before_the_json_lists_read_back_after(pool: SqlitePool) {
        MIGRATOR.run_to(3, &pool).await.unwrap();
        sqlx::raw_sql(
            "INSERT INTO api_tokens (id, tenant, name, roles, secret_hash, created_at, created_by)
                 VALUES ('t1', 'default', 'ci', 'deployer,reader', 'h', 0, 'admin');
             INSERT INTO api_tokens (id, tenant, name, roles, secret_hash, created_at, created_by)
                 VALUES ('t2', 'default', 'empty', '', 'h', 0, 'admin');
             INSERT INTO hosts (tenant, name, environment, agent_version, last_seen)
                 VALUES ('default', 'h1', 'preprod', '0.1.0', 0);
             INSERT INTO host_status (tenant, host, app, missing_env, drift, drift_count, drift_digest, updated_at)
                 VALUES ('default', 'h1', 'web', 'DATABASE_URL,API_KEY',
                         'changed: a,b.txt' || char(10) || 'added: \"q\"', 2, 'sha256:d', 0);
             INSERT INTO hosts (tenant, name, environment, agent_version, last_seen)
                 VALUES ('default', 'h2', 'preprod', '0.1.0', 0);
             INSERT INTO host_status (tenant, host, app, updated_at) VALUES ('default', 'h2', 'web', 0);",
        )
        .execute(&pool)
        .await
        .unwrap();
        MIGRATOR.run(&pool).await.unwrap();
        let s = Store::from_pool(pool);

        let t = s.api_token("t1").await.unwrap().unwrap();
        assert_eq!(t.roles, vec!["deployer".to_string(), "reader".into()]);
        assert!(s.api_token("t2").await.unwrap().unwrap().roles.is_empty());
        let fleet = s.fleet("default", "web", "preprod").await.unwrap();
        let h1 = &fleet[0].report;
        assert_eq!(
            h1.missing_env,
            vec!["DATABASE_URL".to_string(), "API_KEY".into()]
        );
        assert_eq!(
            h1.drift,
            vec!["changed: a,b.txt".to_string(), "added: \"q\"".into()]
        );
        assert_eq!(
            fleet[0].drift_fingerprint(),
            crate::fleet::drift_fingerprint("sha256:d", "changed: a,b.txt\nadded: \"q\"", 2),
            "an acknowledgement made before the upgrade still matches"
        );
        let h2 = &fleet[1].report;
        assert!(h2.missing_env.is_empty() && h2.drift.is_empty());
    }

    /// Releases that older controllers saw run healthy stay rollback targets
    /// after the upgrade: judged healthy in a rollout, or running healthy now.
    #[sqlx::test(migrations = false)]
    async fn releases_proven_before_the_upgrade_stay_rollback_targets(pool: SqlitePool) {
        MIGRATOR.run_to(3, &pool).await.unwrap();
        let mut sql = String::from(
            "INSERT INTO apps (tenant, name, created_at) VALUES ('default', 'web', 0);
             INSERT INTO blobs (digest, size, created_at) VALUES ('sha256:b', 1, 0);
             INSERT INTO hosts (tenant, name, environment, agent_version, last_seen)
                 VALUES ('default', 'h1', 'preprod', '0.1.0', 0), ('default', 'h2', 'preprod', '0.1.0', 0);
             INSERT INTO host_status (tenant, host, app, running_version, running_digest, health, updated_at)
                 VALUES ('default', 'h2', 'web', '2', 'sha256:m2', 2, 0);",
        );
        // 1: judged healthy on h1; 2: runs healthy on h2 now; 3: superseded
        // before h1 was judged; 4: current.
        for (v, state, outcome) in [
            (1, "succeeded", "healthy"),
            (2, "succeeded", "timeout"),
            (3, "superseded", "pending"),
            (4, "running", "pending"),
        ] {
            sql.push_str(&format!(
                "INSERT INTO releases (tenant, app, version, manifest_digest, blob_digest, blob_size, entries, manifest, created_at)
                     VALUES ('default', 'web', '{v}', 'sha256:m{v}', 'sha256:b', 1, 1, x'7b7d', 0);
                 INSERT INTO desired_history (tenant, app, environment, version, generation, at)
                     VALUES ('default', 'web', 'preprod', '{v}', {v}, 0);
                 INSERT INTO rollouts (id, tenant, app, environment, to_version, to_digest, generation, canary, batch,
                         batch_timeout_secs, pause_secs, max_failures, auto_revert, state, steps, created_by, created_at, updated_at)
                     VALUES ({v}, 'default', 'web', 'preprod', '{v}', 'sha256:m{v}', {v}, 0, '100%', 600, 0, '0', 1,
                             '{state}', 1, 'ci', 0, 0);
                 INSERT INTO rollout_hosts (rollout_id, host, step, admitted_at, outcome)
                     VALUES ({v}, 'h1', 0, 1, '{outcome}');"
            ));
        }
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap();
        MIGRATOR.run(&pool).await.unwrap();
        let s = Store::from_pool(pool);
        let target = |current: &'static str| {
            let s = s.clone();
            async move {
                s.rollback_target("default", "web", "preprod", current)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(target("4").await.as_deref(), Some("2"));
        assert_eq!(
            target("2").await.as_deref(),
            Some("1"),
            "3 never ran healthy"
        );
        assert_eq!(
            s.rollout(3).await.unwrap().unwrap().state,
            crate::lifecycle::RolloutState::Superseded,
            "old state text decodes"
        );
    }
}
