//! The shared suite on PostgreSQL (`DATABASE_URL`, default the local server's
//! `test` database): every test gets its own table.

mod common;

use common::{Harness, Row};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool, Postgres, Row as _};
use std::time::Duration;

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

    const KIND: &'static str = "postgres";

    async fn execute(pool: &PgPool, statement: &str) {
        sqlx::query(statement).execute(pool).await.unwrap();
    }

    async fn cleanup(pool: &PgPool, table: &str) {
        let sql = format!(
            "DROP TABLE IF EXISTS \"{table}\", \"{table}_schema\", \"{table}_blocked\", \"{table}_biz\""
        );
        sqlx::query(&sql).execute(pool).await.unwrap();
        pool.close().await;
    }
}

backend_suite!(Pg);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_never_pass_an_open_transaction() {
    common::claims_never_pass_an_open_transaction::<Pg>().await;
}

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

/// With LISTEN/NOTIFY, an event committed while the relay sleeps a long
/// poll interval is published at once (the real figure is in the benchmark).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_wakes_an_idle_relay() {
    let (pool, table) = Pg::fresh().await;
    let outbox = outbox::Outbox::builder(pool.clone())
        .table(table.clone())
        .build()
        .await
        .unwrap();
    let (tx_seen, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let publishers = outbox::Publishers::builder()
        .on(move |r: outbox::Recorded<common::InvoicePaid>| {
            let tx_seen = tx_seen.clone();
            async move {
                tx_seen
                    .send((r.event().invoice_id, std::time::Instant::now()))
                    .unwrap();
                Ok(())
            }
        })
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(
        outbox
            .relay(publishers)
            .poll_interval(Duration::from_secs(10))
            .run(async {
                let _ = stopped.await;
            }),
    );
    // Idle long enough that the next poll is seconds away (10, 20, .. 2560 ms).
    tokio::time::sleep(Duration::from_secs(3)).await;
    for id in 1..=3 {
        let mut tx = pool.begin().await.unwrap();
        outbox.record(&mut *tx, &common::paid(id)).await.unwrap();
        let committed = std::time::Instant::now();
        tx.commit().await.unwrap();
        let (seen_id, at) = tokio::time::timeout(Duration::from_secs(5), seen.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seen_id, id);
        let latency = at.duration_since(committed);
        assert!(
            latency < Duration::from_secs(1),
            "published {latency:?} after commit"
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    stop.send(()).unwrap();
    assert_eq!(relay.await.unwrap().published, 3);
    Pg::cleanup(&pool, &table).await;
}

/// A relay process killed with SIGKILL mid-batch: another relay publishes
/// every committed entry once the lease expires; duplicates are bounded by
/// the batch size per kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_relay_process_loses_nothing() {
    use std::process::{Command, Stdio};
    let (pool, table) = Pg::fresh().await;
    let outbox = outbox::Outbox::builder(pool.clone())
        .table(table.clone())
        .build()
        .await
        .unwrap();
    let n = 2_000;
    let mut tx = pool.begin().await.unwrap();
    let events: Vec<_> = (1..=n).map(common::paid).collect();
    let ids: Vec<Uuid> = outbox
        .record_all(&mut *tx, &events)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.event_id().unwrap())
        .collect();
    tx.commit().await.unwrap();
    let log = std::env::temp_dir().join(format!("{table}.log"));
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_outbox-test-relay"))
            .arg(&table)
            .arg(&log)
            .env("DATABASE_URL", url())
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    let lines = || std::fs::read_to_string(&log).map_or(0, |s| s.lines().count());
    let kills = 3;
    for k in 1..=kills {
        let mut child = spawn();
        let target = k * 400;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while lines() < target && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let mut last = spawn();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !Pg::rows(&pool, &table).await.is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last.kill().unwrap();
    last.wait().unwrap();

    let text = std::fs::read_to_string(&log).unwrap();
    let published: Vec<Uuid> = text.lines().map(|l| l.parse().unwrap()).collect();
    let unique: std::collections::HashSet<Uuid> = published.iter().copied().collect();
    assert!(
        ids.iter().all(|id| unique.contains(id)),
        "every committed entry was published"
    );
    assert_eq!(unique.len(), ids.len());
    let duplicates = published.len() - unique.len();
    assert!(
        duplicates <= 100 * kills,
        "{duplicates} duplicates for {kills} kills of batches of 100"
    );
    assert!(Pg::rows(&pool, &table).await.is_empty());
    std::fs::remove_file(&log).unwrap();
    Pg::cleanup(&pool, &table).await;
}
