//! The shared suite on MySQL/MariaDB (`MYSQL_URL`, default the local server's
//! `test` database): every test gets its own table. Plus what only a server
//! with concurrent relays can show: `SKIP LOCKED` claims, serialized
//! migrations, `db.table` names, and times independent of the session zone.

mod common;
mod discard_support;
mod gauges_support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Harness, Row};
use outbox::{Outbox, Publishers, Recorded};
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{MySql, MySqlConnection, MySqlPool, Row as _};
use uuid::Uuid;

struct My;

fn url() -> String {
    std::env::var("MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned())
}

async fn pool_with(options: MySqlConnectOptions, max: u32) -> MySqlPool {
    MySqlPoolOptions::new()
        .max_connections(max)
        .connect_with(options)
        .await
        .expect("MySQL/MariaDB must be reachable at MYSQL_URL (default mysql://root@127.0.0.1:3306/test)")
}

fn options() -> MySqlConnectOptions {
    url().parse().expect("MYSQL_URL is a valid mysql:// URL")
}

impl Harness for My {
    type DB = MySql;

    async fn fresh() -> (MySqlPool, String) {
        (
            pool_with(options(), 5).await,
            common::unique_table("outbox"),
        )
    }

    async fn rows(pool: &MySqlPool, table: &str) -> Vec<Row> {
        let sql = format!(
            "SELECT event_id, name, status, attempts, last_error FROM `{table}` ORDER BY id"
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
                attempts: i64::from(r.get::<i32, _>("attempts")),
                last_error: r.get("last_error"),
            })
            .collect()
    }

    async fn create_business(pool: &MySqlPool, table: &str) {
        let sql = format!("CREATE TABLE `{table}_biz` (id BIGINT PRIMARY KEY) ENGINE = InnoDB");
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .execute(pool)
            .await
            .unwrap();
    }

    async fn insert_business(conn: &mut MySqlConnection, table: &str, id: i64) {
        let sql = format!("INSERT INTO `{table}_biz` (id) VALUES (?)");
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(id)
            .execute(conn)
            .await
            .unwrap();
    }

    async fn count_business(pool: &MySqlPool, table: &str) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM `{table}_biz`");
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
            .fetch_one(pool)
            .await
            .unwrap()
    }

    async fn set_payload(pool: &MySqlPool, table: &str, event_id: Uuid, payload: &str) {
        let sql = format!("UPDATE `{table}` SET payload = ? WHERE event_id = ?");
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(payload)
            .bind(event_id.to_string())
            .execute(pool)
            .await
            .unwrap();
    }

    const KIND: &'static str = "mysql";

    async fn execute(pool: &MySqlPool, statement: &str) {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(pool)
            .await
            .unwrap();
    }

    async fn cleanup(pool: &MySqlPool, table: &str) {
        let sql = format!(
            "DROP TABLE IF EXISTS `{table}`, `{table}_schema`, `{table}_blocked`, `{table}_biz`"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .execute(pool)
            .await
            .unwrap();
        pool.close().await;
    }
}

backend_suite!(My);
inbox_suite!(My);

/// MySQL takes `database.table` names.
#[tokio::test]
async fn schema_qualified_table() {
    let (pool, table) = My::fresh().await;
    let schema = format!("s_{table}");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{schema}`")))
        .execute(&pool)
        .await
        .unwrap();
    let outbox = Outbox::builder(pool.clone())
        .table(format!("{schema}.events"))
        .build()
        .await
        .unwrap();
    outbox::migrate(&pool, &format!("{schema}.events"))
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    let recorded = outbox.record(&mut *tx, &common::paid(1)).await.unwrap();
    assert!(!recorded.is_filtered());
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
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(table_name AS CHAR) FROM information_schema.tables \
         WHERE table_schema = ? ORDER BY table_name",
    )
    .bind(&schema)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(tables, ["events", "events_blocked", "events_schema"]);
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE `{schema}`")))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

/// Four relays, each with its own pool, drain one table at once: every entry
/// is handed to exactly one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_relays_never_double_dispatch() {
    let (pool, table) = My::fresh().await;
    let outbox = Outbox::builder(pool.clone())
        .table(table.clone())
        .build()
        .await
        .unwrap();
    let events: Vec<_> = (1..=400).map(common::paid).collect();
    let mut tx = pool.begin().await.unwrap();
    outbox.record_all(&mut *tx, &events).await.unwrap();
    tx.commit().await.unwrap();

    let seen: Arc<Mutex<Vec<(usize, i64)>>> = Arc::default();
    let mut relays = Vec::new();
    for relay in 0..4 {
        let relay_pool = pool_with(options(), 2).await;
        let outbox = Outbox::builder(relay_pool.clone())
            .table(table.clone())
            .build()
            .await
            .unwrap();
        let sink = seen.clone();
        let p = Publishers::builder()
            .on(move |r: Recorded<common::InvoicePaid>| {
                let sink = sink.clone();
                async move {
                    sink.lock().unwrap().push((relay, r.event().invoice_id));
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    Ok(())
                }
            })
            .build()
            .unwrap();
        relays.push(tokio::spawn(async move {
            let mut claimed = 0;
            loop {
                let report = outbox.run(&p, 25).await.unwrap();
                if report.claimed == 0 {
                    break;
                }
                claimed += report.claimed;
            }
            relay_pool.close().await;
            claimed
        }));
    }
    let mut per_relay = Vec::new();
    for relay in relays {
        per_relay.push(relay.await.unwrap());
    }
    let seen = seen.lock().unwrap().clone();
    let ids: Vec<i64> = seen.iter().map(|(_, id)| *id).collect();
    let unique: HashSet<i64> = ids.iter().copied().collect();
    assert_eq!(ids.len(), 400, "{per_relay:?}");
    assert_eq!(unique.len(), 400, "no entry was dispatched twice");
    assert_eq!(per_relay.iter().sum::<usize>(), 400);
    assert!(
        per_relay.iter().filter(|&&n| n > 0).count() > 1,
        "the relays shared the work: {per_relay:?}"
    );
    assert!(My::rows(&pool, &table).await.is_empty());
    My::cleanup(&pool, &table).await;
}

/// Entries another transaction holds locked (as a relay in the middle of
/// its claim does) are skipped, not waited for, and recording goes on
/// meanwhile; they are taken once the lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_rows_are_skipped_and_inserts_go_on() {
    let (pool, table) = My::fresh().await;
    let outbox = Outbox::builder(pool.clone())
        .table(table.clone())
        .build()
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    outbox
        .record_all(&mut *tx, &[common::paid(1), common::paid(2)])
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // Another session holds the first entry locked, as a relay in the middle
    // of its claim would.
    let mut locker = pool.begin().await.unwrap();
    let lock_first = format!("SELECT id FROM `{table}` ORDER BY id LIMIT 1 FOR UPDATE");
    sqlx::query(sqlx::AssertSqlSafe(lock_first.clone()))
        .execute(&mut *locker)
        .await
        .unwrap();

    let rec = common::Recorder::default();
    let p = common::publishers(&rec);
    let run = outbox.run(&p, 100);
    let report = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("the claim skips locked rows instead of waiting")
        .unwrap();
    assert_eq!((report.claimed, report.published), (1, 1));
    assert_eq!(rec.ids(), [2]);

    let mut tx = pool.begin().await.unwrap();
    let third = common::paid(3);
    let insert = outbox.record(&mut *tx, &third);
    let recorded = tokio::time::timeout(Duration::from_secs(5), insert)
        .await
        .expect("inserts are not blocked")
        .unwrap();
    assert!(!recorded.is_filtered());
    tx.commit().await.unwrap();
    locker.rollback().await.unwrap();

    let report = outbox.run(&p, 100).await.unwrap();
    assert_eq!(report.published, 2);
    assert_eq!(rec.ids(), [2, 1, 3]);
    My::cleanup(&pool, &table).await;
}

/// Migrations of one table from many connections at once apply each version
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_migrations_are_serialized() {
    let (pool, table) = My::fresh().await;
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (pool, table) = (pool.clone(), table.clone());
        tasks.push(tokio::spawn(
            async move { outbox::migrate(&pool, &table).await },
        ));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let versions: Vec<i32> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT version FROM `{table}_schema`"
    )))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(versions, [1, 2, 3]);
    My::cleanup(&pool, &table).await;
}

/// Times are UTC whatever the session's `time_zone`: an entry recorded
/// through a connection set to +09:00 is due at once for a relay at -07:00,
/// and its `created_at` is the real instant.
#[tokio::test]
async fn session_time_zone_does_not_matter() {
    let (pool, table) = My::fresh().await;
    let east = pool_with(options().timezone(Some("+09:00".to_owned())), 2).await;
    let west = pool_with(options().timezone(Some("-07:00".to_owned())), 2).await;
    let writer = Outbox::builder(east.clone())
        .table(table.clone())
        .build()
        .await
        .unwrap();
    let relay = Outbox::builder(west.clone())
        .table(table.clone())
        .build()
        .await
        .unwrap();
    let before = chrono::Utc::now() - chrono::Duration::seconds(5);
    let mut tx = east.begin().await.unwrap();
    let recorded = writer.record(&mut *tx, &common::paid(1)).await.unwrap();
    assert!(!recorded.is_filtered());
    tx.commit().await.unwrap();
    let rec = common::Recorder::default();
    let report = relay.run(&common::publishers(&rec), 10).await.unwrap();
    assert_eq!(report.published, 1, "due at once: {report:?}");
    let created = rec.seen.lock().unwrap()[0].created_at();
    assert!(
        created > before && created < chrono::Utc::now() + chrono::Duration::seconds(5),
        "{created}"
    );
    east.close().await;
    west.close().await;
    My::cleanup(&pool, &table).await;
}

/// The relay loop's gauges (pending and dead entries only) equal the
/// totals of `stats()` (a scan of the whole table).
#[tokio::test]
async fn gauges_equal_the_totals_of_stats() {
    let (pool, table) = My::fresh().await;
    gauges_support::gauges_equal_stats(&pool, &table).await;
    My::cleanup(&pool, &table).await;
}

/// Pending entries discarded by id and by name (other names, dead letters
/// and live claims untouched, nothing discarded is published); dead
/// letters carry their headers.
#[tokio::test]
async fn discard_pending_entries_and_dead_letter_headers() {
    let (pool, table) = My::fresh().await;
    discard_support::discard_and_dead_letter_headers(&pool, &table, '`').await;
    My::cleanup(&pool, &table).await;
}
