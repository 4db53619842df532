//! Stores for tests, in both dialects: every store test runs once on a
//! SQLite file in a temporary directory and once on a fresh PostgreSQL
//! database when `SLIPWAY_TEST_POSTGRES` names a server the test may create
//! databases on (`scripts/with-postgres` starts one). Without it the
//! PostgreSQL half says it is skipped, unless `SLIPWAY_REQUIRE_POSTGRES=1`
//! (CI) makes that a failure.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::Connection;

use super::Store;

/// Runs `test` on a new SQLite store.
pub async fn on_sqlite<F, Fut>(test: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("slipway.db"))
        .await
        .unwrap();
    test(store).await;
}

/// Runs `test` on a new PostgreSQL database, or says why it cannot.
pub async fn on_postgres<F, Fut>(test: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(url) = fresh_postgres_database().await else {
        return;
    };
    let store = Store::open_postgres(&url).await.unwrap();
    test(store).await;
}

/// The URL of a new, empty database on the test server, or None (after
/// saying so) when there is no server to use.
pub async fn fresh_postgres_database() -> Option<String> {
    let Ok(server) = std::env::var("SLIPWAY_TEST_POSTGRES") else {
        assert!(
            std::env::var("SLIPWAY_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "SLIPWAY_REQUIRE_POSTGRES=1 but SLIPWAY_TEST_POSTGRES is not set"
        );
        eprintln!(
            "skipped: no PostgreSQL (set SLIPWAY_TEST_POSTGRES, or run under scripts/with-postgres)"
        );
        return None;
    };
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "slipway_unit_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let mut admin = sqlx::PgConnection::connect(&server)
        .await
        .expect("connect to SLIPWAY_TEST_POSTGRES");
    for sql in [
        format!("DROP DATABASE IF EXISTS {name}"),
        format!("CREATE DATABASE {name}"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut admin)
            .await
            .unwrap();
    }
    Some(with_database(&server, &name))
}

/// `server` (a postgres:// URL) with its database replaced by `name`.
fn with_database(server: &str, name: &str) -> String {
    let (base, query) = server.split_once('?').unwrap_or((server, ""));
    let authority_end = base
        .find("://")
        .map(|i| i + 3)
        .and_then(|start| base[start..].find('/').map(|j| start + j))
        .unwrap_or(base.len());
    let mut url = format!("{}/{name}", &base[..authority_end]);
    if !query.is_empty() {
        url.push('?');
        url.push_str(query);
    }
    url
}

/// Turns each named `async fn(Store)` into a module of two tests,
/// `sqlite` and `postgres`, running it on a new store of each dialect.
macro_rules! on_both_dialects {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    $crate::store::testing::on_sqlite(super::$name).await;
                }

                #[tokio::test]
                async fn postgres() {
                    $crate::store::testing::on_postgres(super::$name).await;
                }
            }
        )*
    };
}
pub(crate) use on_both_dialects;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_is_replaced_in_the_url() {
        assert_eq!(
            with_database("postgres://u@h:5/postgres", "x"),
            "postgres://u@h:5/x"
        );
        assert_eq!(
            with_database("postgres://u@h:5?sslmode=disable", "x"),
            "postgres://u@h:5/x?sslmode=disable"
        );
    }
}
