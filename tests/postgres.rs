//! The shared suite on PostgreSQL (`DATABASE_URL`, default the local server's
//! `test` database): every test gets its own table.

mod common;
mod discard_support;
mod gauges_support;

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
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
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
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .execute(pool)
            .await
            .unwrap();
    }

    async fn insert_business(conn: &mut PgConnection, table: &str, id: i64) {
        let sql = format!("INSERT INTO \"{table}_biz\" (id) VALUES ($1)");
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(id)
            .execute(conn)
            .await
            .unwrap();
    }

    async fn count_business(pool: &PgPool, table: &str) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM \"{table}_biz\"");
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
            .fetch_one(pool)
            .await
            .unwrap()
    }

    async fn set_payload(pool: &PgPool, table: &str, event_id: Uuid, payload: &str) {
        let sql = format!("UPDATE \"{table}\" SET payload = $1::json WHERE event_id = $2");
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(payload)
            .bind(event_id)
            .execute(pool)
            .await
            .unwrap();
    }

    const KIND: &'static str = "postgres";

    async fn execute(pool: &PgPool, statement: &str) {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(pool)
            .await
            .unwrap();
    }

    async fn cleanup(pool: &PgPool, table: &str) {
        let sql = format!(
            "DROP TABLE IF EXISTS \"{table}\", \"{table}_schema\", \"{table}_blocked\", \"{table}_biz\""
        );
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .execute(pool)
            .await
            .unwrap();
        pool.close().await;
    }
}

backend_suite!(Pg);
inbox_suite!(Pg);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_never_pass_an_open_transaction() {
    common::claims_never_pass_an_open_transaction::<Pg>().await;
}

/// PostgreSQL takes `schema.table` names.
#[tokio::test]
async fn schema_qualified_table() {
    let (pool, table) = Pg::fresh().await;
    let schema = format!("s_{table}");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\"")))
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
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{schema}\" CASCADE"
    )))
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
        let deadline = std::time::Instant::now() + Duration::from_mins(1);
        while lines() < target && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let mut last = spawn();
    let deadline = std::time::Instant::now() + Duration::from_mins(2);
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

/// The relay loop's gauges (pending and dead entries only) equal the
/// totals of `stats()` (a scan of the whole table).
#[tokio::test]
async fn gauges_equal_the_totals_of_stats() {
    let (pool, table) = Pg::fresh().await;
    gauges_support::gauges_equal_stats(&pool, &table).await;
    Pg::cleanup(&pool, &table).await;
}

/// `seq_scan` of `table` in `pg_stat_user_tables`, after `flusher`'s backend
/// flushed its pending counters (they are flushed when it goes idle).
async fn seq_and_index_scans(admin: &PgPool, flusher: &PgPool, table: &str) -> (i64, i64) {
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(flusher)
        .await
        .unwrap();
    // Autocommit: a fresh statistics snapshot.
    sqlx::query_as(
        "SELECT seq_scan, COALESCE(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = $1",
    )
    .bind(table)
    .fetch_one(admin)
    .await
    .unwrap()
}

/// The gauge refresh reads pending and dead entries through their partial
/// indexes: with 20,000 kept published rows (analyzed) it makes no
/// sequential scan of the table, where `stats()` does.
#[tokio::test]
async fn gauges_make_no_sequential_scan() {
    let (pool, table) = Pg::fresh().await;
    let publishers = gauges_support::publishers();
    let kept = gauges_support::outbox(&pool, &table, 1).await;
    gauges_support::record(&pool, &kept, 10, gauges_support::Fate::Reject).await;
    for _ in 0..20 {
        gauges_support::record(&pool, &kept, 1000, gauges_support::Fate::Publish).await;
    }
    gauges_support::drain(&kept, &publishers).await;
    gauges_support::record(&pool, &kept, 30, gauges_support::Fate::Publish).await;
    sqlx::query(sqlx::AssertSqlSafe(format!("VACUUM ANALYZE \"{table}\"")))
        .execute(&pool)
        .await
        .unwrap();
    // One connection: the backend whose counters are flushed is the one
    // that ran the query.
    let single = PgPoolOptions::new()
        .max_connections(1)
        .connect(&url())
        .await
        .unwrap();
    let watched = outbox::Outbox::builder(single.clone())
        .table(&table)
        .migrate(false)
        .build()
        .await
        .unwrap();

    let before = seq_and_index_scans(&pool, &single, &table).await;
    let gauges = watched.gauges().await.unwrap();
    let after = seq_and_index_scans(&pool, &single, &table).await;
    assert_eq!((gauges.pending, gauges.dead), (30, 10), "{gauges:?}");
    assert_eq!(
        after.0, before.0,
        "the gauges scanned the table: {before:?} -> {after:?}"
    );
    assert!(
        after.1 > before.1,
        "no index scan counted: {before:?} -> {after:?}"
    );

    // The counter works: `stats()` reads every row.
    let stats = watched.stats().await.unwrap();
    assert_eq!(stats.published, 20_000);
    let full = seq_and_index_scans(&pool, &single, &table).await;
    assert!(
        full.0 > after.0,
        "stats() made no sequential scan: {after:?} -> {full:?}"
    );
    single.close().await;
    Pg::cleanup(&pool, &table).await;
}

/// `Follow` sees entries when their transactions commit, not in position
/// order: T1 writes, T2 writes, T2 commits, a read sees T2's entry; T1
/// commits, the next read sees T1's (an earlier position) once, even after
/// a relay published it meanwhile (kept published entries).
#[tokio::test]
async fn follow_sees_each_commit_once_in_commit_order() {
    let (pool, table) = Pg::fresh().await;
    let kept = gauges_support::outbox(&pool, &table, 3).await;
    let mut follow = kept.follow().await.unwrap();
    assert_eq!(follow.pending_at_start(), 0);

    let mut t1 = pool.begin().await.unwrap();
    let first = kept
        .record(
            &mut *t1,
            &gauges_support::Probe {
                fate: gauges_support::Fate::Publish,
            },
        )
        .await
        .unwrap()
        .event_id()
        .unwrap();
    let mut t2 = pool.begin().await.unwrap();
    let second = kept
        .record(
            &mut *t2,
            &gauges_support::Probe {
                fate: gauges_support::Fate::Publish,
            },
        )
        .await
        .unwrap()
        .event_id()
        .unwrap();
    t2.commit().await.unwrap();

    let (tick, seen) = read(&mut follow).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].event_id, second.to_string());
    assert_eq!((tick.arrived, tick.pending), (1, 1));
    let (tick, seen) = read(&mut follow).await;
    assert!(seen.is_empty(), "{seen:?}");
    assert_eq!(tick.arrived, 0);

    t1.commit().await.unwrap();
    // Published (and kept) before the next read: still seen.
    let report = kept.run(&gauges_support::publishers(), 10).await.unwrap();
    assert_eq!(report.published, 2);
    let (tick, later) = read(&mut follow).await;
    assert_eq!(later.len(), 1, "{later:?}");
    assert_eq!(later[0].event_id, first.to_string());
    assert!(
        later[0].position < seen_position(&pool, &table, second).await,
        "T1's entry has the earlier position"
    );
    assert_eq!((tick.arrived, tick.pending), (1, 0));
    let (tick, seen) = read(&mut follow).await;
    assert!(seen.is_empty(), "{seen:?}");
    assert_eq!(tick.arrived, 0);

    // A rolled-back entry is never seen.
    let mut t3 = pool.begin().await.unwrap();
    kept.record(
        &mut *t3,
        &gauges_support::Probe {
            fate: gauges_support::Fate::Publish,
        },
    )
    .await
    .unwrap();
    t3.rollback().await.unwrap();
    let (_, seen) = read(&mut follow).await;
    assert!(seen.is_empty(), "{seen:?}");
    Pg::cleanup(&pool, &table).await;
}

async fn read(
    follow: &mut outbox::Follow<Postgres>,
) -> (outbox::FollowTick, Vec<outbox::Followed>) {
    let mut seen = Vec::new();
    let tick = follow.next(|entry| seen.push(entry)).await.unwrap();
    (tick, seen)
}

async fn seen_position(pool: &PgPool, table: &str, event_id: Uuid) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT id FROM \"{table}\" WHERE event_id = $1"
    )))
    .bind(event_id)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Pending entries discarded by id and by name (other names, dead letters
/// and live claims untouched, nothing discarded is published); dead
/// letters carry their headers.
#[tokio::test]
async fn discard_pending_entries_and_dead_letter_headers() {
    let (pool, table) = Pg::fresh().await;
    discard_support::discard_and_dead_letter_headers(&pool, &table, '"').await;
    Pg::cleanup(&pool, &table).await;
}
