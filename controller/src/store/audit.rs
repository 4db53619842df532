//! The audit log: who did what to which app and environment, and how it
//! ended.

use sqlx::FromRow;

use super::{Result, Store, now};

#[derive(Debug, Clone, FromRow)]
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

impl Store {
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
        .execute(self.db())
        .await?;
        Ok(())
    }

    /// The newest `limit` audit rows of the tenant (of one app unless empty).
    pub async fn history(&self, tenant: &str, app: &str, limit: u32) -> Result<Vec<AuditRow>> {
        Ok(sqlx::query_as(
            "SELECT at, actor, action, app, environment, detail, outcome, peer FROM audit
             WHERE tenant = ? AND (? = '' OR app = ?) ORDER BY id DESC LIMIT ?",
        )
        .bind(tenant)
        .bind(app)
        .bind(app)
        .bind(i64::from(limit))
        .fetch_all(self.db())
        .await?)
    }
}
