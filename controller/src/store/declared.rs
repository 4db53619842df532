//! Apps declared on the controller: their host settings per environment and
//! per-host overrides (`app_settings`), the environment's apps revision
//! (`app_revisions`), and what each host said it took (`hosts.apps_*`).

use std::collections::BTreeMap;

use super::{Result, Store};

/// One stored declaration: `host` empty for the environment's settings.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeclaredRow {
    pub app: String,
    pub host: String,
    pub settings: String,
}

/// What a host said about the declarations it took.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct HostAppsAck {
    pub name: String,
    pub apps_revision: i64,
    pub apps_refused: String,
    pub last_seen: i64,
    pub labels: String,
}

/// Why a declaration change was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PutRefused {
    Exists,
    Missing,
}

impl Store {
    /// Every declaration of an environment (settings and overrides).
    pub async fn declared_apps(&self, tenant: &str, env: &str) -> Result<Vec<DeclaredRow>> {
        Ok(sqlx::query_as(
            "SELECT app, host, settings FROM app_settings WHERE tenant = $1 AND environment = $2
             ORDER BY app, host",
        )
        .bind(tenant)
        .bind(env)
        .fetch_all(self.db())
        .await?)
    }

    /// The environment's apps revision (0: nothing was ever declared).
    pub async fn apps_revision(&self, tenant: &str, env: &str) -> Result<u64> {
        let r: Option<i64> = sqlx::query_scalar(
            "SELECT revision FROM app_revisions WHERE tenant = $1 AND environment = $2",
        )
        .bind(tenant)
        .bind(env)
        .fetch_optional(self.db())
        .await?;
        Ok(r.unwrap_or(0) as u64)
    }

    /// Stores (`Some`) or deletes (`None`) the settings of app@env on `host`
    /// ('' : the environment's; deleting those deletes the app's overrides
    /// too) and bumps the revision, in one transaction. `check` sees what is
    /// stored now and may refuse the change. Returns the new revision.
    pub async fn put_app_settings(
        &self,
        tenant: &str,
        env: &str,
        app: &str,
        host: &str,
        settings: Option<&str>,
        check: impl FnOnce(Option<&str>) -> std::result::Result<(), PutRefused>,
    ) -> Result<std::result::Result<u64, PutRefused>> {
        let mut tx = self.begin_write().await?;
        let stored: Option<String> = sqlx::query_scalar(
            "SELECT settings FROM app_settings WHERE tenant = $1 AND environment = $2 AND app = $3 AND host = $4",
        )
        .bind(tenant)
        .bind(env)
        .bind(app)
        .bind(host)
        .fetch_optional(&mut *tx)
        .await?;
        if let Err(refused) = check(stored.as_deref()) {
            return Ok(Err(refused));
        }
        match settings {
            Some(json) => {
                sqlx::query(
                    "INSERT INTO app_settings (tenant, environment, app, host, settings, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (tenant, environment, app, host)
                     DO UPDATE SET settings = excluded.settings, updated_at = excluded.updated_at",
                )
                .bind(tenant)
                .bind(env)
                .bind(app)
                .bind(host)
                .bind(json)
                .bind(super::now())
                .execute(&mut *tx)
                .await?;
            }
            None => {
                sqlx::query(
                    "DELETE FROM app_settings WHERE tenant = $1 AND environment = $2 AND app = $3
                     AND (host = $4 OR $5 = '')",
                )
                .bind(tenant)
                .bind(env)
                .bind(app)
                .bind(host)
                .bind(host)
                .execute(&mut *tx)
                .await?;
            }
        }
        let revision: i64 = sqlx::query_scalar(
            "INSERT INTO app_revisions (tenant, environment, revision) VALUES ($1, $2, 1)
             ON CONFLICT (tenant, environment) DO UPDATE SET revision = app_revisions.revision + 1
             RETURNING revision",
        )
        .bind(tenant)
        .bind(env)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(revision as u64))
    }

    /// Records what a host took of its declarations: the revision and the
    /// apps it refused (app -> reason, JSON).
    pub async fn record_apps_ack(
        &self,
        tenant: &str,
        host: &str,
        revision: u64,
        refused: &BTreeMap<String, String>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE hosts SET apps_revision = $1, apps_refused = $2 WHERE tenant = $3 AND name = $4",
        )
        .bind(revision as i64)
        .bind(serde_json::to_string(refused).unwrap_or_else(|_| "{}".into()))
        .bind(tenant)
        .bind(host)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// The environment's live hosts with what they took of its declarations.
    pub async fn hosts_apps_acks(&self, tenant: &str, env: &str) -> Result<Vec<HostAppsAck>> {
        Ok(sqlx::query_as(
            "SELECT name, apps_revision, apps_refused, last_seen, labels FROM hosts
             WHERE tenant = $1 AND environment = $2 AND revoked_at IS NULL ORDER BY name",
        )
        .bind(tenant)
        .bind(env)
        .fetch_all(self.db())
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn a_change_bumps_the_revision_and_removing_an_app_drops_its_overrides(s: Store) {
        let ok = |_: Option<&str>| Ok(());
        let r1 = s
            .put_app_settings("default", "prod", "web", "", Some(r#"{"port":8080}"#), ok)
            .await
            .unwrap()
            .unwrap();
        let r2 = s
            .put_app_settings("default", "prod", "web", "h1", Some(r#"{"port":9090}"#), ok)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((r1, r2), (1, 2));
        assert_eq!(s.declared_apps("default", "prod").await.unwrap().len(), 2);
        assert_eq!(s.apps_revision("default", "preprod").await.unwrap(), 0);

        let refused = s
            .put_app_settings("default", "prod", "web", "", Some("{}"), |cur| {
                if cur.is_some() {
                    Err(PutRefused::Exists)
                } else {
                    Ok(())
                }
            })
            .await
            .unwrap();
        assert_eq!(refused, Err(PutRefused::Exists));
        assert_eq!(s.apps_revision("default", "prod").await.unwrap(), 2);

        s.put_app_settings("default", "prod", "web", "", None, ok)
            .await
            .unwrap()
            .unwrap();
        assert!(s.declared_apps("default", "prod").await.unwrap().is_empty());
        assert_eq!(s.apps_revision("default", "prod").await.unwrap(), 3);
    }

    crate::store::testing::on_both_dialects!(
        a_change_bumps_the_revision_and_removing_an_app_drops_its_overrides,
    );
}
