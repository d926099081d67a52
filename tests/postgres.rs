//! The shared suite on PostgreSQL (`DATABASE_URL`, default the local server's
//! `test` database): every test gets its own table.

mod common;

use common::{Harness, Row};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool, Postgres, Row as _};
use uuid::Uuid;

struct Pg;

pub fn url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_owned())
}

impl Harness for Pg {
    type DB = Postgres;

    async fn fresh() -> (PgPool, String) {
        let pool = PgPoolOptions::new()
            .max_connections(5)
            .connect(&url())
            .await
            .expect("PostgreSQL must be reachable at DATABASE_URL (default postgres://root@127.0.0.1:5432/test)");
        (pool, common::unique_table("outbox"))
    }

    async fn rows(pool: &PgPool, table: &str) -> Vec<Row> {
        let sql = format!(
            "SELECT event_id, name, status, attempts, last_error FROM \"{table}\" ORDER BY id"
        );
        sqlx::query(&sql)
            .fetch_all(pool)
            .await
            .unwrap()
            .iter()
            .map(|r| Row {
                event_id: r.get("event_id"),
                name: r.get("name"),
                status: r.get("status"),
                attempts: i64::from(r.get::<i32, _>("attempts")),
                last_error: r.get("last_error"),
            })
            .collect()
    }

    async fn create_business(pool: &PgPool, table: &str) {
        let sql = format!("CREATE TABLE \"{table}_biz\" (id BIGINT PRIMARY KEY)");
        sqlx::query(&sql).execute(pool).await.unwrap();
    }

    async fn insert_business(conn: &mut PgConnection, table: &str, id: i64) {
        let sql = format!("INSERT INTO \"{table}_biz\" (id) VALUES ($1)");
        sqlx::query(&sql).bind(id).execute(conn).await.unwrap();
    }

    async fn count_business(pool: &PgPool, table: &str) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM \"{table}_biz\"");
        sqlx::query_scalar(&sql).fetch_one(pool).await.unwrap()
    }

    async fn set_payload(pool: &PgPool, table: &str, event_id: Uuid, payload: &str) {
        let sql = format!("UPDATE \"{table}\" SET payload = $1::json WHERE event_id = $2");
        sqlx::query(&sql)
            .bind(payload)
            .bind(event_id)
            .execute(pool)
            .await
            .unwrap();
    }

    async fn cleanup(pool: &PgPool, table: &str) {
        let sql = format!("DROP TABLE IF EXISTS \"{table}\", \"{table}_schema\", \"{table}_biz\"");
        sqlx::query(&sql).execute(pool).await.unwrap();
        pool.close().await;
    }
}

backend_suite!(Pg);

/// PostgreSQL takes `schema.table` names.
#[tokio::test]
async fn schema_qualified_table() {
    let (pool, table) = Pg::fresh().await;
    let schema = format!("s_{table}");
    sqlx::query(&format!("CREATE SCHEMA \"{schema}\""))
        .execute(&pool)
        .await
        .unwrap();
    let outbox = outbox::Outbox::builder(pool.clone())
        .table(format!("{schema}.events"))
        .build()
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    outbox.record(&mut *tx, &common::paid(1)).await.unwrap();
    tx.commit().await.unwrap();
    let rec = common::Recorder::default();
    assert_eq!(
        outbox
            .run(&common::publishers(&rec), 10)
            .await
            .unwrap()
            .published,
        1
    );
    sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .execute(&pool)
        .await
        .unwrap();
}
