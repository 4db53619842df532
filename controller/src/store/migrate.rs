//! Moving an installation from one store to another (`slipway-controller
//! migrate-store --from sqlite://… --to postgres://…`): every row of every
//! table, in an order the foreign keys accept, in one transaction on the
//! target, then each table's rows counted on both sides. The target must be
//! a new store (its schema applied, nothing else); the source's controller
//! is stopped first. Blobs are files: they move with the blob directory.

use sqlx::any::AnyRow;
use sqlx::{Column, Row, TypeInfo, ValueRef};

use super::{Dialect, Result, Store, StoreError};

/// Every table, parents before children. `store::migrate::tests` checks it
/// against the schema, so a new table cannot be forgotten.
pub const TABLES: &[&str] = &[
    "tenants",
    "environments",
    "apps",
    "blobs",
    "releases",
    "desired",
    "desired_history",
    "hosts",
    "host_status",
    "audit",
    "api_tokens",
    "join_tokens",
    "host_certs",
    "blob_links",
    "rollouts",
    "rollout_hosts",
    "placements",
    "healthy_releases",
    "rollback_nonces",
    "app_settings",
    "app_revisions",
    "migration_approvals",
    "web_sessions",
    "controller_keys",
    "release_packs",
];

/// Tables whose `id` the database numbers: the target's counter moves past
/// the ids copied.
const NUMBERED: &[&str] = &["desired_history", "audit", "rollouts"];

/// Rows a new store holds before anything happened (its migrations' seed).
const SEEDED: &[&str] = &["tenants", "environments", "blobs"];

/// Tables with these many rows or fewer of their own count as empty.
fn seed_rows(table: &str) -> i64 {
    match table {
        "tenants" => 1,
        "environments" => 2,
        "blobs" => 1,
        _ => 0,
    }
}

/// What was copied: (table, rows).
pub type Copied = Vec<(&'static str, i64)>;

/// A column value as the `Any` driver can carry it.
enum Value {
    /// A NULL, typed as its column is declared (PostgreSQL refuses a text
    /// NULL in a BIGINT column).
    NullInt,
    NullText,
    Int(i64),
    Real(f64),
    Text(String),
    Bytes(Vec<u8>),
}

impl Store {
    /// Copies every row of `self` into `to`, which must hold nothing but
    /// its seed; refuses (and writes nothing) otherwise. Returns the rows
    /// copied per table, each checked against a count on the target.
    pub async fn copy_into(&self, to: &Store) -> Result<Copied> {
        for table in TABLES {
            let n = to.count(table).await?;
            if n > seed_rows(table) {
                return Err(StoreError::Conflict(format!(
                    "the target store already holds data ({n} rows in {table}): migrate into a new, empty database"
                )));
            }
        }
        let mut tx = to.begin_write().await?;
        for table in SEEDED.iter().rev() {
            sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table}")))
                .execute(&mut *tx)
                .await?;
        }
        let mut copied = Vec::new();
        for table in TABLES {
            let order = match (self.dialect, *table) {
                // The implicit rowid orders releases of one second; the
                // target numbers them in this order.
                (Dialect::Sqlite, "releases") => " ORDER BY rowid",
                _ => "",
            };
            let rows: Vec<AnyRow> =
                sqlx::query(sqlx::AssertSqlSafe(format!("SELECT * FROM {table}{order}")))
                    .fetch_all(self.db())
                    .await?;
            let mut n = 0i64;
            for row in &rows {
                let columns: Vec<&str> = row
                    .columns()
                    .iter()
                    .map(|c| c.name())
                    .filter(|c| *c != "rowid")
                    .collect();
                let names: Vec<String> = columns.iter().map(|c| format!("\"{c}\"")).collect();
                let params: Vec<String> = (1..=columns.len()).map(|i| format!("${i}")).collect();
                let sql = format!(
                    "INSERT INTO {table} ({}) VALUES ({})",
                    names.join(", "),
                    params.join(", ")
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for c in &columns {
                    q = match value(row, c)? {
                        Value::NullInt => q.bind(Option::<i64>::None),
                        Value::NullText => q.bind(Option::<String>::None),
                        Value::Int(v) => q.bind(v),
                        Value::Real(v) => q.bind(v),
                        Value::Text(v) => q.bind(v),
                        Value::Bytes(v) => q.bind(v),
                    };
                }
                q.execute(&mut *tx).await?;
                n += 1;
            }
            copied.push((*table, n));
        }
        if to.dialect == Dialect::Postgres {
            for table in NUMBERED {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT setval(pg_get_serial_sequence('{table}', 'id'), COALESCE(MAX(id), 0) + 1, false) FROM {table}"
                )))
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        for (table, n) in &copied {
            let there = to.count(table).await?;
            if there != *n {
                return Err(StoreError::Conflict(format!(
                    "{table}: {n} rows copied but {there} in the target"
                )));
            }
        }
        Ok(copied)
    }

    async fn count(&self, table: &str) -> Result<i64> {
        Ok(
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                .fetch_one(self.db())
                .await?,
        )
    }
}

/// The value of `column`, by what the database holds there.
fn value(row: &AnyRow, column: &str) -> Result<Value> {
    let raw = row.try_get_raw(column)?;
    if raw.is_null() {
        let declared = row
            .columns()
            .iter()
            .find(|c| c.name() == column)
            .map(|c| c.type_info().name().to_ascii_uppercase())
            .unwrap_or_default();
        return Ok(match declared.as_str() {
            "SMALLINT" | "INTEGER" | "BIGINT" | "BOOLEAN" => Value::NullInt,
            _ => Value::NullText,
        });
    }
    let kind = raw.type_info().name().to_ascii_uppercase();
    Ok(match kind.as_str() {
        "BOOLEAN" => Value::Int(i64::from(row.try_get::<bool, _>(column)?)),
        "SMALLINT" | "INTEGER" | "BIGINT" => Value::Int(row.try_get(column)?),
        "REAL" | "DOUBLE" => Value::Real(row.try_get(column)?),
        "BLOB" => Value::Bytes(row.try_get(column)?),
        _ => Value::Text(row.try_get(column)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every table of the schema is in `TABLES`, once.
    #[tokio::test]
    async fn every_table_is_copied() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_sqlite(&dir.path().join("s.db")).await.unwrap();
        let mut tables: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table'
             AND name NOT IN ('_sqlx_migrations', 'sqlite_sequence', 'leases') ORDER BY name",
        )
        .fetch_all(s.pool_for_tests())
        .await
        .unwrap();
        let mut listed: Vec<String> = TABLES.iter().map(|t| t.to_string()).collect();
        listed.sort();
        tables.sort();
        assert_eq!(listed, tables);
    }
}
