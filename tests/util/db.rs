//! The real PostgreSQL and MariaDB for tests, with the same SKIPPED rule as
//! the broker: missing is a failure with `SWITCHYARD_REQUIRE_BROKER=1` (CI),
//! else a loud SKIPPED line. SQLite needs nothing.

use std::time::Duration;

use sqlx::Connection as _;

pub const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const MARIADB: &str = "mysql://root@127.0.0.1:3306/test";

/// The URL of `which` ("postgres" or "mariadb") once it answers; None: skipped.
pub async fn available(test: &str, url: &'static str) -> Option<&'static str> {
    let answers = tokio::time::timeout(Duration::from_secs(10), async {
        if url.starts_with("postgres") {
            sqlx::PgConnection::connect(url).await.is_ok()
        } else {
            sqlx::MySqlConnection::connect(url).await.is_ok()
        }
    })
    .await
    .unwrap_or(false);
    if answers {
        return Some(url);
    }
    if std::env::var("SWITCHYARD_REQUIRE_BROKER").is_ok_and(|v| v == "1") {
        panic!("{test}: the database at {url} is not reachable and SWITCHYARD_REQUIRE_BROKER=1");
    }
    eprintln!(
        "SKIPPED {test}: the database at {url} is not reachable (set SWITCHYARD_REQUIRE_BROKER=1 to fail instead)"
    );
    None
}

/// A unique table name for one test.
pub fn table(prefix: &str) -> String {
    format!("sy_{prefix}_{}", uuid::Uuid::now_v7().simple())
}
