//! The shared suite on SQLite: a fresh database file per test.

mod common;
mod discard_support;
mod gauges_support;

use common::{Harness, Row};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{Row as _, Sqlite, SqliteConnection, SqlitePool};
use uuid::Uuid;

struct Lite;

impl Harness for Lite {
    type DB = Sqlite;

    async fn fresh() -> (SqlitePool, String) {
        let dir = std::env::temp_dir().join("outbox-tests");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("{}.db", Uuid::new_v4()));
        let options = SqliteConnectOptions::new()
            .filename(&file)
            .create_if_missing(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .unwrap();
        (pool, common::unique_table("outbox"))
    }

    async fn rows(pool: &SqlitePool, table: &str) -> Vec<Row> {
        let sql = format!(
            "SELECT event_id, name, status, attempts, last_error FROM \"{table}\" ORDER BY id"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .fetch_all(pool)
            .await
            .unwrap()
            .iter()
            .map(|r| Row {
                event_id: r.get::<String, _>("event_id").parse().unwrap(),
                name: r.get("name"),
                status: r.get("status"),
                attempts: r.get("attempts"),
                last_error: r.get("last_error"),
            })
            .collect()
    }

    async fn create_business(pool: &SqlitePool, table: &str) {
        let sql = format!("CREATE TABLE \"{table}_biz\" (id INTEGER PRIMARY KEY)");
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .execute(pool)
            .await
            .unwrap();
    }

    async fn insert_business(conn: &mut SqliteConnection, table: &str, id: i64) {
        let sql = format!("INSERT INTO \"{table}_biz\" (id) VALUES (?)");
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(id)
            .execute(conn)
            .await
            .unwrap();
    }

    async fn count_business(pool: &SqlitePool, table: &str) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM \"{table}_biz\"");
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
            .fetch_one(pool)
            .await
            .unwrap()
    }

    async fn set_payload(pool: &SqlitePool, table: &str, event_id: Uuid, payload: &str) {
        let sql = format!("UPDATE \"{table}\" SET payload = ? WHERE event_id = ?");
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(payload)
            .bind(event_id.to_string())
            .execute(pool)
            .await
            .unwrap();
    }

    const KIND: &'static str = "sqlite";

    async fn execute(pool: &SqlitePool, statement: &str) {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(pool)
            .await
            .unwrap();
    }

    async fn cleanup(pool: &SqlitePool, _table: &str) {
        pool.close().await;
    }
}

backend_suite!(Lite);
inbox_suite!(Lite);

/// SQLite takes no schema-qualified names.
#[tokio::test]
async fn schema_names_are_refused_on_sqlite() {
    let (pool, _) = Lite::fresh().await;
    let err = outbox::Outbox::builder(pool)
        .table("main.outbox")
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("schema"), "{err}");
}

/// The relay loop's gauges (pending and dead entries only) equal the
/// totals of `stats()` (a scan of the whole table).
#[tokio::test]
async fn gauges_equal_the_totals_of_stats() {
    let (pool, table) = Lite::fresh().await;
    gauges_support::gauges_equal_stats(&pool, &table).await;
    Lite::cleanup(&pool, &table).await;
}

/// Pending entries discarded by id and by name (other names, dead letters
/// and live claims untouched, nothing discarded is published); dead
/// letters carry their headers.
#[tokio::test]
async fn discard_pending_entries_and_dead_letter_headers() {
    let (pool, table) = Lite::fresh().await;
    discard_support::discard_and_dead_letter_headers(&pool, &table, '"').await;
    Lite::cleanup(&pool, &table).await;
}
