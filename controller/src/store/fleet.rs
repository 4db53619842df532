//! The inventory side of the store: hosts' purpose, criticality, labels and
//! OS; environments with their soak and rollout strategy; placements; drift
//! acknowledgements.

use std::collections::BTreeMap;

use sqlx::FromRow;

use super::{Flag, JsonText, Result, Store};
use crate::plan::{Amount, MigrationPolicy, OfflinePolicy, Strategy};

/// An environment and its policy.
#[derive(Debug, Clone)]
pub struct EnvPolicy {
    pub name: String,
    pub production: bool,
    pub soak_secs: u32,
    pub strategy: Strategy,
    pub migrations: MigrationPolicy,
}

/// Changes to an environment; `None` keeps what is stored.
#[derive(Debug, Clone, Default)]
pub struct EnvChange {
    pub production: Option<bool>,
    pub soak_secs: Option<u32>,
    pub canary: Option<u32>,
    pub batch: Option<Amount>,
    pub batch_timeout_secs: Option<u32>,
    pub pause_secs: Option<u32>,
    pub max_failures: Option<Amount>,
    pub auto_revert: Option<bool>,
    pub offline: Option<OfflinePolicy>,
    pub migrations: Option<MigrationPolicy>,
}

/// Inventory fields a host is registered or updated with.
#[derive(Debug, Clone, Default)]
pub struct HostChange {
    pub purpose: Option<String>,
    pub criticality: Option<String>,
    pub set_labels: BTreeMap<String, String>,
    pub remove_labels: Vec<String>,
}

pub fn labels_from_json(text: &str) -> BTreeMap<String, String> {
    serde_json::from_str(text).unwrap_or_default()
}

fn labels_to_json(labels: &BTreeMap<String, String>) -> String {
    serde_json::to_string(labels).unwrap_or_else(|_| "{}".into())
}

/// An `environments` row as stored (amounts as text).
#[derive(FromRow)]
struct EnvRecord {
    name: String,
    #[sqlx(try_from = "super::Flag")]
    production: bool,
    #[sqlx(try_from = "i64")]
    soak_secs: u32,
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
    migrations: String,
}

impl From<EnvRecord> for EnvPolicy {
    fn from(r: EnvRecord) -> Self {
        EnvPolicy {
            migrations: MigrationPolicy::parse(&r.migrations)
                .unwrap_or(MigrationPolicy::default_for(r.production)),
            name: r.name,
            production: r.production,
            soak_secs: r.soak_secs,
            strategy: Strategy {
                canary: r.canary,
                batch: Amount::parse(&r.batch).unwrap_or(Amount::Percent(25)),
                batch_timeout_secs: r.batch_timeout_secs,
                pause_secs: r.pause_secs,
                max_failures: Amount::parse(&r.max_failures).unwrap_or(Amount::Count(0)),
                auto_revert: r.auto_revert,
                offline: OfflinePolicy::parse(&r.offline).unwrap_or_default(),
            },
        }
    }
}

/// Drift a host reports for an app, as `ack_drift` fingerprints it.
#[derive(FromRow)]
struct DriftRecord {
    host: String,
    #[sqlx(try_from = "super::JsonText<Vec<String>>")]
    drift: Vec<String>,
    #[sqlx(try_from = "i64")]
    drift_count: u32,
    drift_digest: String,
}

#[derive(FromRow)]
struct CandidateRecord {
    name: String,
    criticality: String,
    labels: JsonText<BTreeMap<String, String>>,
}

#[derive(FromRow)]
struct PlacementRecord {
    app: String,
    environment: String,
    selector: JsonText<BTreeMap<String, String>>,
}

#[derive(FromRow)]
struct HostApp {
    host: String,
    app: String,
}

const ENV_COLUMNS: &str = "name, production, soak_secs, canary, batch, batch_timeout_secs, pause_secs, max_failures, auto_revert, offline, migrations";

#[derive(FromRow)]
struct EnvName {
    name: String,
    #[sqlx(try_from = "super::Flag")]
    production: bool,
}

impl Store {
    /// Whether hosts of `env` may apply `version`'s pending migrations
    /// themselves: the environment's policy says so, or a promoter approved
    /// them for that release.
    pub async fn migrations_allowed(
        &self,
        tenant: &str,
        env: &str,
        app: &str,
        version: &str,
    ) -> Result<bool> {
        let row: Option<(String, Flag, Flag)> = sqlx::query_as(
            "SELECT e.migrations, e.production, EXISTS (SELECT 1 FROM migration_approvals a
                WHERE a.tenant = e.tenant AND a.environment = e.name AND a.app = $1 AND a.version = $2)
             FROM environments e WHERE e.tenant = $3 AND e.name = $4",
        )
        .bind(app)
        .bind(version)
        .bind(tenant)
        .bind(env)
        .fetch_optional(self.db())
        .await?;
        Ok(row.is_some_and(|(policy, production, approved)| {
            bool::from(approved)
                || MigrationPolicy::parse(&policy)
                    .unwrap_or(MigrationPolicy::default_for(production.into()))
                    == MigrationPolicy::Auto
        }))
    }

    /// A promoter's approval of `version`'s migrations in `env`.
    pub async fn approve_migrations(
        &self,
        tenant: &str,
        env: &str,
        app: &str,
        version: &str,
        actor: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO migration_approvals (tenant, app, environment, version, approved_by, approved_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (tenant, app, environment, version) DO UPDATE SET approved_by = excluded.approved_by,
             approved_at = excluded.approved_at",
        )
        .bind(tenant)
        .bind(app)
        .bind(env)
        .bind(version)
        .bind(actor)
        .bind(super::now())
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// `Some(production)` when the environment exists.
    pub async fn environment(&self, tenant: &str, env: &str) -> Result<Option<bool>> {
        let production: Option<Flag> = sqlx::query_scalar(
            "SELECT production FROM environments WHERE tenant = $1 AND name = $2",
        )
        .bind(tenant)
        .bind(env)
        .fetch_optional(self.db())
        .await?;
        Ok(production.map(bool::from))
    }

    /// (name, production) of every environment of the tenant.
    pub async fn environments(&self, tenant: &str) -> Result<Vec<(String, bool)>> {
        let rows: Vec<EnvName> = sqlx::query_as(
            "SELECT name, production FROM environments WHERE tenant = $1 ORDER BY name",
        )
        .bind(tenant)
        .fetch_all(self.db())
        .await?;
        Ok(rows.into_iter().map(|e| (e.name, e.production)).collect())
    }

    pub async fn env_policy(&self, tenant: &str, env: &str) -> Result<Option<EnvPolicy>> {
        let row: Option<EnvRecord> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ENV_COLUMNS} FROM environments WHERE tenant = $1 AND name = $2"
        )))
        .bind(tenant)
        .bind(env)
        .fetch_optional(self.db())
        .await?;
        Ok(row.map(EnvPolicy::from))
    }

    pub async fn env_policies(&self, tenant: &str) -> Result<Vec<EnvPolicy>> {
        let rows: Vec<EnvRecord> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ENV_COLUMNS} FROM environments WHERE tenant = $1 ORDER BY name"
        )))
        .bind(tenant)
        .fetch_all(self.db())
        .await?;
        Ok(rows.into_iter().map(EnvPolicy::from).collect())
    }

    /// Creates the environment if needed and applies the changes.
    pub async fn set_environment(
        &self,
        tenant: &str,
        env: &str,
        c: &EnvChange,
    ) -> Result<EnvPolicy> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO environments (tenant, name, production) VALUES ($1, $2, 0) ON CONFLICT DO NOTHING",
        )
        .bind(tenant)
        .bind(env)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE environments SET
                production = COALESCE($1, production), soak_secs = COALESCE($2, soak_secs),
                canary = COALESCE($3, canary), batch = COALESCE($4, batch),
                batch_timeout_secs = COALESCE($5, batch_timeout_secs), pause_secs = COALESCE($6, pause_secs),
                max_failures = COALESCE($7, max_failures), auto_revert = COALESCE($8, auto_revert),
                offline = COALESCE($9, offline), migrations = COALESCE($10, migrations)
             WHERE tenant = $11 AND name = $12",
        )
        .bind(c.production.map(i64::from))
        .bind(c.soak_secs.map(i64::from))
        .bind(c.canary.map(i64::from))
        .bind(c.batch.map(|a| a.to_string()))
        .bind(c.batch_timeout_secs.map(i64::from))
        .bind(c.pause_secs.map(i64::from))
        .bind(c.max_failures.map(|a| a.to_string()))
        .bind(c.auto_revert.map(i64::from))
        .bind(c.offline.map(|o| o.as_str()))
        .bind(c.migrations.map(|m| m.as_str()))
        .bind(tenant)
        .bind(env)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(self
            .env_policy(tenant, env)
            .await?
            .expect("environment exists after upsert"))
    }

    /// Applies inventory changes to a host; false when there is no such host.
    pub async fn update_host(&self, tenant: &str, host: &str, c: &HostChange) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let Some(labels) = sqlx::query_scalar::<_, String>(
            "SELECT labels FROM hosts WHERE tenant = $1 AND name = $2",
        )
        .bind(tenant)
        .bind(host)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(false);
        };
        let mut labels = labels_from_json(&labels);
        for k in &c.remove_labels {
            labels.remove(k);
        }
        labels.extend(c.set_labels.clone());
        sqlx::query(
            "UPDATE hosts SET purpose = COALESCE($1, purpose), criticality = COALESCE($2, criticality), labels = $3
             WHERE tenant = $4 AND name = $5",
        )
        .bind(&c.purpose)
        .bind(&c.criticality)
        .bind(labels_to_json(&labels))
        .bind(tenant)
        .bind(host)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Acknowledges the drift app@env's hosts (or one host) report now; the
    /// hosts whose drift was acknowledged, with what it was.
    pub async fn ack_drift(
        &self,
        tenant: &str,
        app: &str,
        env: &str,
        host: &str,
    ) -> Result<Vec<(String, String)>> {
        let rows: Vec<DriftRecord> = sqlx::query_as(
            "SELECT s.host, s.drift, s.drift_count, s.drift_digest FROM host_status s
             JOIN hosts h ON h.tenant = s.tenant AND h.name = s.host
             WHERE s.tenant = $1 AND s.app = $2 AND h.environment = $3 AND ($4 = '' OR s.host = $5) AND s.drift_count > 0",
        )
        .bind(tenant)
        .bind(app)
        .bind(env)
        .bind(host)
        .bind(host)
        .fetch_all(self.db())
        .await?;
        let mut acked = Vec::new();
        for r in rows {
            let (h, count) = (r.host, r.drift_count);
            let fp = crate::fleet::drift_fingerprint(&r.drift_digest, &r.drift.join("\n"), count);
            sqlx::query(
                "UPDATE host_status SET drift_acked = $1 WHERE tenant = $2 AND host = $3 AND app = $4",
            )
            .bind(fp)
            .bind(tenant)
            .bind(&h)
            .bind(app)
            .execute(self.writer())
            .await?;
            let first: Vec<&str> = r.drift.iter().take(3).map(String::as_str).collect();
            acked.push((h, format!("{} ({count} path(s))", first.join(", "))));
        }
        Ok(acked)
    }

    /// Hosts of an environment that announced `app` and match its selector,
    /// for planning a rollout.
    pub async fn app_hosts(
        &self,
        tenant: &str,
        app: &str,
        env: &str,
    ) -> Result<Vec<crate::plan::Candidate>> {
        let rows: Vec<CandidateRecord> = sqlx::query_as(
            "SELECT h.name, h.criticality, h.labels FROM hosts h
             JOIN host_status s ON s.tenant = h.tenant AND s.host = h.name AND s.app = $1
             WHERE h.tenant = $2 AND h.environment = $3 AND h.revoked_at IS NULL ORDER BY h.name",
        )
        .bind(app)
        .bind(tenant)
        .bind(env)
        .fetch_all(self.db())
        .await?;
        let selector = self
            .placements(tenant)
            .await?
            .remove(&(app.to_string(), env.to_string()))
            .unwrap_or_default();
        Ok(rows
            .into_iter()
            .map(|r| crate::plan::Candidate {
                name: r.name,
                criticality: r.criticality,
                labels: r.labels.0,
            })
            .filter(|c| crate::fleet::selector_matches(&selector, &c.labels))
            .collect())
    }
}

/// Label selectors per (app, environment).
pub type Placements = BTreeMap<(String, String), BTreeMap<String, String>>;

impl Store {
    /// Sets the label selector of app@env (empty: every configured host).
    pub async fn set_placement(
        &self,
        tenant: &str,
        app: &str,
        env: &str,
        selector: &BTreeMap<String, String>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO placements (tenant, app, environment, selector, updated_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (tenant, app, environment) DO UPDATE SET selector = excluded.selector, updated_at = excluded.updated_at",
        )
        .bind(tenant)
        .bind(app)
        .bind(env)
        .bind(labels_to_json(selector))
        .bind(super::now())
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// Every selector of the tenant (app@env without one: every host).
    pub async fn placements(&self, tenant: &str) -> Result<Placements> {
        let rows: Vec<PlacementRecord> =
            sqlx::query_as("SELECT app, environment, selector FROM placements WHERE tenant = $1")
                .bind(tenant)
                .fetch_all(self.db())
                .await?;
        Ok(rows
            .into_iter()
            .map(|r| ((r.app, r.environment), r.selector.0))
            .collect())
    }

    /// A host's labels (empty for an unknown host).
    pub async fn host_labels(&self, tenant: &str, host: &str) -> Result<BTreeMap<String, String>> {
        let labels: Option<String> =
            sqlx::query_scalar("SELECT labels FROM hosts WHERE tenant = $1 AND name = $2")
                .bind(tenant)
                .bind(host)
                .fetch_optional(self.db())
                .await?;
        Ok(labels.as_deref().map(labels_from_json).unwrap_or_default())
    }

    /// (host, app) pairs the agents announced, per environment.
    pub async fn configured_apps(&self, tenant: &str) -> Result<Vec<(String, String)>> {
        let rows: Vec<HostApp> = sqlx::query_as(
            "SELECT s.host, s.app FROM host_status s JOIN hosts h ON h.tenant = s.tenant AND h.name = s.host
             WHERE s.tenant = $1 AND h.revoked_at IS NULL",
        )
        .bind(tenant)
        .fetch_all(self.db())
        .await?;
        Ok(rows.into_iter().map(|r| (r.host, r.app)).collect())
    }
}
