//! Dashboard sessions (`web_sessions`): created at sign-in, looked up on
//! every request, deleted at sign-out or once expired.

use super::{Result, Store};

/// Sessions one token may hold at once; a new sign-in beyond it ends the
/// oldest (a script signing in in a loop cannot grow the table).
pub const MAX_SESSIONS_PER_TOKEN: i64 = 32;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WebSessionRow {
    pub token_id: String,
    pub csrf: String,
    pub expires_at: i64,
}

impl Store {
    /// Stores a new session, dropping expired ones and the token's oldest
    /// beyond `MAX_SESSIONS_PER_TOKEN`.
    pub async fn create_web_session(
        &self,
        id_hash: &str,
        token_id: &str,
        csrf: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM web_sessions WHERE expires_at <= $1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO web_sessions (id_hash, token_id, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id_hash)
        .bind(token_id)
        .bind(csrf)
        .bind(now)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM web_sessions WHERE token_id = $1 AND id_hash NOT IN
               (SELECT id_hash FROM web_sessions WHERE token_id = $2
                ORDER BY created_at DESC, id_hash LIMIT $3)",
        )
        .bind(token_id)
        .bind(token_id)
        .bind(MAX_SESSIONS_PER_TOKEN)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The session with this id hash, unless it expired.
    pub async fn web_session(&self, id_hash: &str, now: i64) -> Result<Option<WebSessionRow>> {
        Ok(sqlx::query_as(
            "SELECT token_id, csrf, expires_at FROM web_sessions WHERE id_hash = $1 AND expires_at > $2",
        )
        .bind(id_hash)
        .bind(now)
        .fetch_optional(self.db())
        .await?)
    }

    pub async fn delete_web_session(&self, id_hash: &str) -> Result<()> {
        sqlx::query("DELETE FROM web_sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(self.writer())
            .await?;
        Ok(())
    }
}
