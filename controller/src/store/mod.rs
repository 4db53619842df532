//! The controller's database: `Store`, `StoreError`, opening and migrating it.
//! Queries live by table group: `releases` (apps, blobs, releases, desired),
//! `hosts` (hello, reports, the fleet as hosts report it), `rollouts`,
//! `fleet` (environments, inventory, placements, drift acks), `trust`
//! (tokens, certificates, tenants) and `audit`. SQLite (one file, WAL) through
//! sqlx with runtime queries decoded by column name into `FromRow` structs, so
//! a Postgres dialect can sit beside it; list columns hold JSON arrays.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub mod audit;
mod declared;
mod fleet;
mod hosts;
pub mod migrate;
mod releases;
mod replicas;
mod rollouts;
#[cfg(test)]
pub(crate) mod testing;
mod trust;
mod web;

pub use audit::{AuditRow, HistoryFilter};
pub use declared::{DeclaredRow, HostAppsAck, PutRefused};
pub use fleet::{EnvChange, EnvPolicy, HostChange, Placements, labels_from_json};
pub use hosts::{FleetRow, HostAppReport, SequenceBlock};
pub use releases::{DesiredGeneration, DesiredRow, ReleaseRow, YankRefused};
pub use rollouts::{NewRollout, RolloutHostRow, RolloutRow, Started};
pub use trust::{
    ApiTokenRow, CertOwner, HostRow, Join, JoinRefused, Joined, LAST_USED_RESOLUTION_SECS, NewCert,
};
pub use web::{MAX_SESSIONS_PER_TOKEN, WebSessionRow};

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use sqlx::{Any, Executor, Transaction};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("store URL {0:?}: expected sqlite://PATH or postgres://…")]
    Url(String),
    /// A write decided against state that changed meanwhile; refused whole.
    #[error("{0}")]
    Conflict(String),
    /// A controller of a newer release migrated the store past what this
    /// one knows (a replica not upgraded yet, an older binary restarted).
    #[error(
        "the store's schema is at version {store}, newer than this controller's {ours}: a newer release of slipway-controller migrated it; run that release here too"
    )]
    SchemaNewer { store: i64, ours: i64 },
}

pub type Result<T> = std::result::Result<T, StoreError>;

impl StoreError {
    /// The database could not be reached or went away (not a refusal of
    /// this statement): the caller may try again later.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Db(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed => true,
                // PostgreSQL's connection exceptions (08xxx), and its
                // shutting down or starting up (57P01..57P03).
                sqlx::Error::Database(d) => d
                    .code()
                    .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
                _ => false,
            },
            _ => false,
        }
    }
}

/// Which database the store speaks. The SQL is the same text for both
/// (`$n` placeholders, which SQLite reads too); the few spellings that
/// differ are chosen by `Dialect` where they are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Store {
    /// Reads (SQLite in WAL: they never wait for the writer).
    pool: AnyPool,
    /// Write transactions, on one connection: they queue here in order. On
    /// SQLite, every write, instead of polling SQLite's lock (its busy
    /// handler sleeps up to 100 ms a try, which stretched a 1,000-host
    /// rollout while the CPU sat idle). On PostgreSQL, write transactions
    /// also take a transaction-scoped advisory lock (`begin_write`), which
    /// orders them across replicas; a replica's wait for it here, on one
    /// connection, not on pooled ones reads need (a join storm once held
    /// every pooled connection in that wait, and every read timed out).
    /// Single write statements take no lock and use the pool (`writer`).
    writer: AnyPool,
    /// Leadership's lease (`replicas`): on PostgreSQL a connection of its
    /// own, so a storm of calls holding every pooled connection (10,000
    /// agents enrolling at once) does not keep the leader from renewing and
    /// make it step down. On SQLite, the writer.
    lease: AnyPool,
    dialect: Dialect,
    /// The PostgreSQL URL (for a listener's connection of its own).
    url: Option<Arc<str>>,
    /// Statements and transactions run so far (`queries`), for benchmarks.
    queries: Arc<AtomicU64>,
    manifests: releases::ManifestCache,
}

/// The schema, applied by `open` on SQLite.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
/// The same schema for PostgreSQL.
pub static PG_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// The advisory lock every PostgreSQL write transaction takes first, so
/// that writes run one at a time across every replica, as SQLite's single
/// writer runs them: read-then-write transactions (a promote's checks, a
/// rollout's step) need no retry loop. (The key is "slipway" in ASCII.)
const WRITE_LOCK: i64 = 0x0073_6c69_7077_6179;

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

/// A flag column, 0 or 1 in both dialects, read as an integer and turned
/// into a `bool` (`#[sqlx(try_from = "Flag")]`): the `Any` driver decodes
/// `bool` only from a column its database calls boolean.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Flag(i64);

impl From<Flag> for bool {
    fn from(f: Flag) -> bool {
        f.0 != 0
    }
}

impl sqlx::Type<Any> for Flag {
    fn type_info() -> sqlx::any::AnyTypeInfo {
        <i64 as sqlx::Type<Any>>::type_info()
    }

    fn compatible(ty: &sqlx::any::AnyTypeInfo) -> bool {
        <i64 as sqlx::Type<Any>>::compatible(ty) || <bool as sqlx::Type<Any>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, Any> for Flag {
    fn decode(
        value: sqlx::any::AnyValueRef<'r>,
    ) -> std::result::Result<Self, sqlx::error::BoxDynError> {
        if <bool as sqlx::Type<Any>>::compatible(&sqlx::ValueRef::type_info(&value)) {
            return Ok(Self(i64::from(<bool as sqlx::Decode<Any>>::decode(value)?)));
        }
        Ok(Self(<i64 as sqlx::Decode<Any>>::decode(value)?))
    }
}

/// A column holding JSON text, decoded into `T` (`sqlx::types::Json` has
/// no `Any` decoding).
#[derive(Debug, Clone, Default)]
pub(crate) struct JsonText<T>(pub T);

impl From<JsonText<Vec<String>>> for Vec<String> {
    fn from(j: JsonText<Vec<String>>) -> Self {
        j.0
    }
}

impl From<JsonText<std::collections::BTreeMap<String, String>>>
    for std::collections::BTreeMap<String, String>
{
    fn from(j: JsonText<std::collections::BTreeMap<String, String>>) -> Self {
        j.0
    }
}

impl<T> sqlx::Type<Any> for JsonText<T> {
    fn type_info() -> sqlx::any::AnyTypeInfo {
        <str as sqlx::Type<Any>>::type_info()
    }

    fn compatible(ty: &sqlx::any::AnyTypeInfo) -> bool {
        <str as sqlx::Type<Any>>::compatible(ty)
    }
}

impl<'r, T: serde::de::DeserializeOwned> sqlx::Decode<'r, Any> for JsonText<T> {
    fn decode(
        value: sqlx::any::AnyValueRef<'r>,
    ) -> std::result::Result<Self, sqlx::error::BoxDynError> {
        let text = <&str as sqlx::Decode<Any>>::decode(value)?;
        Ok(Self(serde_json::from_str(text)?))
    }
}

impl Store {
    /// Opens the store a URL names: `sqlite://PATH` (created if missing) or
    /// `postgres://…`; applies pending migrations.
    pub async fn open(url: &str) -> Result<Self> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            Self::open_sqlite(Path::new(path)).await
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Self::open_postgres(url).await
        } else {
            Err(StoreError::Url(url.to_string()))
        }
    }

    /// Opens (creating if needed) the SQLite file and applies pending migrations.
    pub async fn open_sqlite(path: &Path) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let url = sqlite_url(path);
        let writer = sqlite_pool(1).connect(&url).await?;
        // WAL is a property of the file: set once, kept by every connection.
        writer.execute("PRAGMA journal_mode = WAL").await?;
        not_newer(&writer, &MIGRATOR).await?;
        MIGRATOR.run(&writer).await?;
        let pool = sqlite_pool(4).connect(&url).await?;
        Ok(Self {
            pool,
            lease: writer.clone(),
            writer,
            dialect: Dialect::Sqlite,
            url: None,
            queries: Arc::default(),
            manifests: releases::ManifestCache::new(),
        })
    }

    /// Connects to PostgreSQL and applies pending migrations (one replica at
    /// a time: sqlx's migrator holds an advisory lock while it runs).
    pub async fn open_postgres(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(16)
            // A store that does not answer fails a call in seconds ("store
            // unavailable") rather than holding it.
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await?;
        not_newer(&pool, &PG_MIGRATOR).await?;
        PG_MIGRATOR.run(&pool).await?;
        let writer = AnyPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await?;
        let lease = AnyPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(2))
            .connect(url)
            .await?;
        Ok(Self {
            writer,
            lease,
            pool,
            dialect: Dialect::Postgres,
            url: Some(url.into()),
            queries: Arc::default(),
            manifests: releases::ManifestCache::new(),
        })
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The PostgreSQL store's URL (None on SQLite).
    pub fn postgres_url(&self) -> Option<&str> {
        self.url.as_deref()
    }

    /// The pool, counting one query: every statement outside a transaction,
    /// and every transaction, goes through here.
    fn db(&self) -> &AnyPool {
        self.queries.fetch_add(1, Ordering::Relaxed);
        &self.pool
    }

    /// Where a write statement outside a transaction goes, counting one
    /// query like `db`: SQLite's one writer connection; on PostgreSQL the
    /// shared pool, since such a statement takes no lock and must not wait
    /// behind write transactions waiting for one (a host's hello, a batch
    /// of heartbeats).
    fn writer(&self) -> &AnyPool {
        self.queries.fetch_add(1, Ordering::Relaxed);
        match self.dialect {
            Dialect::Sqlite => &self.writer,
            Dialect::Postgres => &self.pool,
        }
    }

    /// The lease's connection, counting one query like `db`.
    fn lease_db(&self) -> &AnyPool {
        self.queries.fetch_add(1, Ordering::Relaxed);
        &self.lease
    }

    /// A write transaction, serialized with every other one: SQLite's
    /// `BEGIN IMMEDIATE` on the one writer connection, or PostgreSQL's
    /// `BEGIN` and the store-wide advisory lock (released at commit or
    /// rollback, and by the server if the connection dies).
    async fn begin_write(&self) -> Result<Transaction<'static, Any>> {
        match self.dialect {
            Dialect::Sqlite => Ok(self.writer().begin_with("BEGIN IMMEDIATE").await?),
            Dialect::Postgres => {
                self.queries.fetch_add(1, Ordering::Relaxed);
                let mut tx = self.writer.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(WRITE_LOCK)
                    .execute(&mut *tx)
                    .await?;
                Ok(tx)
            }
        }
    }

    /// A table of the elements of the JSON array bound at `param`, one
    /// column named `value` (`value ->> N` reads an element's Nth item).
    fn json_rows(&self, param: &str) -> String {
        match self.dialect {
            Dialect::Sqlite => format!("json_each({param})"),
            Dialect::Postgres => format!("jsonb_array_elements({param}::jsonb)"),
        }
    }

    /// A table of the strings in the JSON array bound at `param`, one
    /// column named `value`.
    fn json_array_elements_text(&self, param: &str) -> String {
        match self.dialect {
            Dialect::Sqlite => format!("json_each({param})"),
            Dialect::Postgres => format!("jsonb_array_elements_text({param}::jsonb)"),
        }
    }

    /// How many queries (statements or transactions) this store ran.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    /// The pool itself, for tests that set up rows the API cannot.
    #[cfg(test)]
    pub(crate) fn pool_for_tests(&self) -> &AnyPool {
        &self.pool
    }
}

/// Refuses a store migrated past `migrator`'s last version, before anything
/// is applied: another replica of a newer release shares it (sqlx would say
/// only that a migration "is missing in the resolved migrations"). A store
/// with no migrations table yet is new.
async fn not_newer(pool: &AnyPool, migrator: &sqlx::migrate::Migrator) -> Result<()> {
    let ours = migrator.iter().map(|m| m.version).max().unwrap_or(0);
    let applied: std::result::Result<Option<i64>, _> =
        sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await;
    match applied {
        Ok(Some(store)) if store > ours => Err(StoreError::SchemaNewer { store, ours }),
        _ => Ok(()),
    }
}

/// A store URL fit for a log line: a password in it replaced by `***`, and
/// the query (which may carry one too) left out.
pub fn redacted(url: &str) -> String {
    let url = url.split('?').next().unwrap_or(url);
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{path}")
        }
        _ => url.to_string(),
    }
}

/// Pool options for a SQLite file: every connection checks foreign keys,
/// waits up to 10 s for a lock and syncs at WAL's normal level.
fn sqlite_pool(max: u32) -> AnyPoolOptions {
    AnyPoolOptions::new()
        .max_connections(max)
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute(
                    "PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000; PRAGMA synchronous = NORMAL;",
                )
                .await?;
                Ok(())
            })
        })
}

/// `sqlite://PATH?mode=rwc` with the path percent-encoded (a data dir may
/// hold spaces or `?`).
fn sqlite_url(path: &Path) -> String {
    let mut url = String::from("sqlite://");
    for b in path.as_os_str().as_encoded_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => {
                url.push(*b as char)
            }
            _ => url.push_str(&format!("%{b:02X}")),
        }
    }
    url.push_str("?mode=rwc");
    url
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

    async fn starts_with_default_tenant_and_environments(s: Store) {
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

    #[tokio::test]
    async fn a_data_dir_with_odd_characters_opens() {
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("my data?#%20");
        std::fs::create_dir(&odd).unwrap();
        let s = Store::open(&format!("sqlite://{}", odd.join("s.db").display()))
            .await
            .unwrap();
        assert!(s.tenant_exists("default").await.unwrap());
        assert!(odd.join("s.db").exists(), "the file is where it was named");
    }

    #[test]
    fn store_urls_are_logged_without_their_password() {
        assert_eq!(
            redacted("postgres://slipway:s3cret@db:5432/slipway?sslmode=require&password=x"),
            "postgres://slipway:***@db:5432/slipway"
        );
        assert_eq!(
            redacted("postgres://slipway@db/s"),
            "postgres://slipway@db/s"
        );
        assert_eq!(redacted("sqlite:///var/lib/s.db"), "sqlite:///var/lib/s.db");
    }

    #[tokio::test]
    async fn an_unknown_store_url_is_refused_by_name() {
        let e = Store::open("mysql://db/x").await.err().unwrap();
        assert!(e.to_string().contains("mysql://db/x"), "{e}");
    }

    /// A SQLite file migrated up to `version`, as an older controller left it.
    async fn sqlite_at_migration(
        version: i64,
    ) -> (tempfile::TempDir, std::path::PathBuf, sqlx::SqlitePool) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slipway.db");
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
        MIGRATOR.run_to(version, &pool).await.unwrap();
        (dir, path, pool)
    }

    /// A controller upgraded in place reads the rows an older one wrote: the
    /// joined list columns come back as the same lists.
    #[tokio::test]
    async fn rows_written_before_the_json_lists_read_back_after() {
        let (_dir, path, pool) = sqlite_at_migration(3).await;
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
        pool.close().await;
        let s = Store::open_sqlite(&path).await.unwrap();

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
    #[tokio::test]
    async fn releases_proven_before_the_upgrade_stay_rollback_targets() {
        let (_dir, path, pool) = sqlite_at_migration(3).await;
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
        pool.close().await;
        let s = Store::open_sqlite(&path).await.unwrap();
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

    /// A store a newer release migrated further is refused by name, before
    /// this controller applies or assumes anything.
    async fn a_store_migrated_by_a_newer_release_is_refused(s: Store) {
        let migrator = match s.dialect() {
            Dialect::Sqlite => &MIGRATOR,
            Dialect::Postgres => &PG_MIGRATOR,
        };
        not_newer(s.pool_for_tests(), migrator).await.unwrap();
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
             VALUES (99999, 'from a newer release', TRUE, $1, 0)",
        )
        .bind(vec![0u8; 4])
        .execute(s.pool_for_tests())
        .await
        .unwrap();
        let e = not_newer(s.pool_for_tests(), migrator).await.unwrap_err();
        let ours = migrator.iter().map(|m| m.version).max().unwrap();
        assert!(
            matches!(e, StoreError::SchemaNewer { store: 99999, ours: o } if o == ours),
            "{e}"
        );
        assert!(
            e.to_string().contains("newer than this controller's"),
            "{e}"
        );
    }

    crate::store::testing::on_both_dialects!(
        starts_with_default_tenant_and_environments,
        a_store_migrated_by_a_newer_release_is_refused,
    );
}
