//! The audit log: who did what to which app and environment, and how it
//! ended. Every field is bounded and escaped on the way in (and again on the
//! way out, for rows written before that), so no row can be larger than a
//! few KiB and none carries a terminal escape.

use sqlx::FromRow;

use super::{Result, Store, now};
use crate::sanitize;

/// Bounds of the audit log's fields, in bytes.
pub const MAX_ACTOR: usize = 256;
pub const MAX_ACTION: usize = 64;
pub const MAX_NAME: usize = 256;
pub const MAX_DETAIL: usize = 1024;
pub const MAX_PEER: usize = 128;

/// Most rows one history page holds: with the bounds above a page stays
/// under 1 MiB, far below the message limit.
pub const HISTORY_PAGE_MAX: u32 = 200;

impl AuditRow {
    /// The row with every field bounded and escaped.
    fn bounded(self) -> Self {
        AuditRow {
            id: self.id,
            at: self.at,
            actor: sanitize::owned(self.actor, MAX_ACTOR),
            action: sanitize::owned(self.action, MAX_ACTION),
            app: sanitize::owned(self.app, MAX_NAME),
            environment: sanitize::owned(self.environment, MAX_NAME),
            detail: sanitize::owned(self.detail, MAX_DETAIL),
            outcome: sanitize::owned(self.outcome, MAX_DETAIL),
            peer: sanitize::owned(self.peer, MAX_PEER),
        }
    }
}

/// What `history_where` keeps: an app and an environment (exactly), an
/// actor (a part of its name), an outcome (how it starts: `ok`, `refused`,
/// `failed`). Empty fields keep everything.
#[derive(Debug, Clone, Default)]
pub struct HistoryFilter {
    pub app: String,
    pub environment: String,
    pub actor: String,
    pub outcome: String,
}

#[derive(Debug, Clone, FromRow)]
pub struct AuditRow {
    pub id: i64,
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
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(now())
        .bind(tenant)
        .bind(sanitize::text(actor, MAX_ACTOR))
        .bind(sanitize::text(action, MAX_ACTION))
        .bind(sanitize::text(app, MAX_NAME))
        .bind(sanitize::text(env, MAX_NAME))
        .bind(sanitize::text(detail, MAX_DETAIL))
        .bind(sanitize::text(outcome, MAX_DETAIL))
        .bind(sanitize::text(peer, MAX_PEER))
        .execute(self.writer())
        .await?;
        Ok(())
    }

    /// The newest `limit` (at most `HISTORY_PAGE_MAX`) audit rows of the
    /// tenant (of one app unless empty) older than `before_id` (0: the
    /// newest), newest first. Fields are read cut (a row written before the
    /// bounds existed may be megabytes) and come back bounded and escaped.
    pub async fn history(
        &self,
        tenant: &str,
        app: &str,
        limit: u32,
        before_id: i64,
    ) -> Result<Vec<AuditRow>> {
        let filter = HistoryFilter {
            app: app.to_string(),
            ..HistoryFilter::default()
        };
        self.history_where(tenant, &filter, limit, before_id).await
    }

    /// `history` narrowed by `filter`.
    pub async fn history_where(
        &self,
        tenant: &str,
        filter: &HistoryFilter,
        limit: u32,
        before_id: i64,
    ) -> Result<Vec<AuditRow>> {
        let rows: Vec<AuditRow> = sqlx::query_as(
            "SELECT id, at, substr(actor, 1, 1024) AS actor, substr(action, 1, 256) AS action,
                    substr(app, 1, 1024) AS app, substr(environment, 1, 1024) AS environment,
                    substr(detail, 1, 4096) AS detail, substr(outcome, 1, 4096) AS outcome,
                    substr(peer, 1, 512) AS peer
             FROM audit
             WHERE tenant = $1 AND ($2 = '' OR app = $3) AND ($4 = '' OR environment = $5)
               AND instr(actor, $6) > 0 AND instr(outcome, $7) = 1 AND ($8 <= 0 OR id < $9)
             ORDER BY id DESC LIMIT $10",
        )
        .bind(tenant)
        .bind(&filter.app)
        .bind(&filter.app)
        .bind(&filter.environment)
        .bind(&filter.environment)
        .bind(&filter.actor)
        .bind(&filter.outcome)
        .bind(before_id)
        .bind(before_id)
        .bind(i64::from(limit.min(HISTORY_PAGE_MAX)))
        .fetch_all(self.db())
        .await?;
        Ok(rows.into_iter().map(AuditRow::bounded).collect())
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    async fn fields_are_bounded_and_escaped_and_history_pages(store: Store) {
        let huge = "a".repeat(9 << 20);
        store
            .audit(
                "default",
                "x",
                "deploy",
                &huge,
                "\x1b]0;pwned\x07\nfake",
                "",
                "ok",
                "",
            )
            .await
            .unwrap();
        for i in 0..5 {
            store
                .audit(
                    "default",
                    "x",
                    "deploy",
                    "web",
                    "prod",
                    &i.to_string(),
                    "ok",
                    "",
                )
                .await
                .unwrap();
        }
        let page = store.history("default", "", 3, 0).await.unwrap();
        assert_eq!(
            page.iter().map(|r| r.detail.as_str()).collect::<Vec<_>>(),
            ["4", "3", "2"]
        );
        let next = store.history("default", "", 3, page[2].id).await.unwrap();
        assert_eq!(next.len(), 3);
        assert_eq!(next[0].detail, "1");
        let big = &next[2];
        assert!(big.app.len() <= MAX_NAME, "{}", big.app.len());
        assert!(big.app.ends_with(sanitize::CUT_MARKER));
        assert_eq!(big.environment, "\\u{1b}]0;pwned\\u{7}\\nfake");
        assert!(
            store
                .history("default", "", 3, big.id)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            store.history("default", "", 10_000, 0).await.unwrap().len()
                <= HISTORY_PAGE_MAX as usize
        );
    }

    crate::store::testing::on_both_dialects!(fields_are_bounded_and_escaped_and_history_pages,);
}
