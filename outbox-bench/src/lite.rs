//! `drain_sqlite`: the no-op drain on an SQLite file (WAL, synchronous=NORMAL).

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use outbox::{Event, Outbox, Publishers};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::types::uuid::fmt::Hyphenated;
use sqlx::{Acquire, Executor, Row, Sqlite, SqliteConnection, SqlitePool};
use tokio::time::Instant;
use uuid::Uuid;

use crate::broker::Sink;
use crate::common::{
    BATCH, Bench, Counter, LEASE_MS, Noop, OrderPlaced, RawRow, drain_deadline, lib, order,
};
use crate::report::{Throughput, print_ratio};
use crate::util::{Context, Res, count, median, ms, rate};

/// The database file and its WAL companions, removed on drop.
pub(crate) struct TempDb(PathBuf);

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

pub(crate) struct LiteSql {
    claim: String,
    delete_full: String,
    /// The library's form: ids as a JSON array.
    delete_json: String,
    table: String,
}

impl LiteSql {
    pub(crate) fn new(table: &str) -> Self {
        let t = format!("\"{table}\"");
        Self {
            claim: format!(
                "UPDATE {t} SET claim_token = ?1, available_at = ?2 + ?3 WHERE id IN \
                 (SELECT c.id FROM {t} c WHERE c.status = 'pending' AND c.available_at <= ?2 \
                 ORDER BY c.id LIMIT ?4) \
                 RETURNING id, event_id, name, payload, stream_key, headers, correlation_id, causation_id, \
                 created_at, attempts"
            ),
            delete_full: Self::delete(table, BATCH),
            delete_json: format!(
                "DELETE FROM {t} WHERE claim_token = ?1 AND id IN (SELECT value FROM json_each(?2))"
            ),
            table: t,
        }
    }

    /// `DELETE .. WHERE claim_token = ?1 AND id IN (?2, .., ?n+1)`.
    fn delete(table: &str, n: usize) -> String {
        let marks: Vec<&str> = std::iter::repeat_n("?", n).collect();
        format!(
            "DELETE FROM \"{table}\" WHERE claim_token = ?1 AND id IN ({})",
            marks.join(", ")
        )
    }
}

/// A fresh SQLite file (WAL, synchronous=NORMAL) and a pool of 4 on it.
pub(crate) async fn open(b: &Bench, name: &str) -> Res<(TempDb, SqlitePool)> {
    let file = TempDb(std::env::temp_dir().join(format!("outbox-bench-{}-{name}.db", b.run)));
    let options = SqliteConnectOptions::new()
        .filename(&file.0)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .context(format!("opening SQLite file {}", file.0.display()))?;
    Ok((file, pool))
}

pub(crate) async fn drain_sqlite(b: &Bench) -> Res<()> {
    let (_file, pool) = open(b, "drain").await?;
    let result = figure(b, &pool).await;
    pool.close().await;
    result
}

async fn figure(b: &Bench, pool: &SqlitePool) -> Res<()> {
    let table = "outbox_bench";
    let outbox = lib(
        Outbox::builder(pool.clone()).table(table).build().await,
        "building the SQLite outbox",
    )?;
    let version: String = sqlx::query_scalar("SELECT sqlite_version()")
        .fetch_one(pool)
        .await
        .context("SQLite version")?;
    let sql = LiteSql::new(table);
    let n = b.plan.sqlite_n;
    let reps = b.plan.drain_reps;
    println!(
        "\n== drain_sqlite: {} pending entries drained by 1 relay, publisher that does nothing; SQLite {version} \
         file, WAL, synchronous=NORMAL; batches of {BATCH}, {reps} repetitions each, median",
        count(n)
    );
    let mut library = Throughput::new("library relay, typed no-op publisher");
    let mut raw = Throughput::new("raw loop (sqlx: UPDATE..RETURNING, DELETE)");
    let mut startup = [Vec::new(), Vec::new()];
    for rep in 0..reps {
        for mode in order(2, rep) {
            refill(pool, &sql, n).await?;
            let counter = Counter::new(n);
            let timing = if mode == 0 {
                let publishers = lib(
                    Publishers::builder()
                        .publisher::<OrderPlaced, _>(Noop(counter.clone()))
                        .build(),
                    "building publishers",
                )?;
                let start = Instant::now();
                let relay = outbox.relay(publishers).run(counter.stopped());
                if tokio::time::timeout(drain_deadline(n), relay)
                    .await
                    .is_err()
                {
                    counter.fail("timed out");
                }
                let timing = counter.timing(start, Instant::now());
                counter.check("library drain (SQLite)")?;
                timing
            } else {
                let mut conn = pool.acquire().await.context("raw SQLite connection")?;
                let start = Instant::now();
                raw_drain(&mut conn, &sql, &counter).await?;
                let timing = counter.timing(start, Instant::now());
                counter.check("raw drain (SQLite)")?;
                timing
            };
            if mode == 0 { &mut library } else { &mut raw }.push(rate(n, timing.steady));
            startup[mode].push(ms(timing.startup()));
        }
    }
    library.print();
    raw.print();
    print_ratio(
        "drain_sqlite",
        library.median() / raw.median(),
        ">=",
        0.80,
        "library/raw",
    );
    println!(
        "  (events/s from the first publisher call to the last outcome committed; start-up before it, \
         median: library {:.1} ms, raw {:.1} ms)",
        median(&startup[0]),
        median(&startup[1]),
    );
    Ok(())
}

pub(crate) async fn refill(pool: &SqlitePool, sql: &LiteSql, n: usize) -> Res<()> {
    let t = &sql.table;
    pool.execute(sqlx::AssertSqlSafe(format!("DELETE FROM {t}")))
        .await
        .context("emptying the SQLite table")?;
    let fill = format!(
        "WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < ?1) \
         INSERT INTO {t} (event_id, name, payload, created_at, available_at) \
         SELECT printf('%08x-%04x-7%03x-%04x-%012x', (?2 + x) >> 16, (?2 + x) & 65535, x & 4095, \
                       32768 | (abs(random()) & 16383), abs(random()) & 281474976710655), \
                ?3, \
                '{{\"order_id\":' || x || ',\"customer\":\"customer-' || x || '\",\"amount_cents\":' \
                || (x * 7) || ',\"seq\":' || x || '}}', \
                ?2, ?2 \
         FROM g"
    );
    sqlx::query(sqlx::AssertSqlSafe(fill.clone()))
        .bind(i64::try_from(n).unwrap_or(i64::MAX))
        .bind(Utc::now().timestamp_millis())
        .bind(OrderPlaced::NAME)
        .execute(pool)
        .await
        .context("filling the SQLite table")?;
    pool.execute(sqlx::AssertSqlSafe(format!(
        "ANALYZE {t}; PRAGMA wal_checkpoint(TRUNCATE)"
    )))
    .await
    .context("ANALYZE")?;
    Ok(())
}

fn decode(row: &SqliteRow) -> Res<RawRow> {
    let read = || -> Result<RawRow, sqlx::Error> {
        Ok(RawRow {
            id: row.try_get(0)?,
            event_id: row.try_get::<Hyphenated, _>(1)?.into(),
            name: row.try_get(2)?,
            payload: row.try_get(3)?,
            stream_key: row.try_get(4)?,
            headers: row.try_get(5)?,
            correlation_id: row.try_get::<Option<Hyphenated>, _>(6)?.map(Uuid::from),
            causation_id: row.try_get::<Option<Hyphenated>, _>(7)?.map(Uuid::from),
            created_at: DateTime::from_timestamp_millis(row.try_get(8)?).unwrap_or_default(),
            attempts: row.try_get(9)?,
        })
    };
    read().context("decoding a claimed SQLite row")
}

/// The raw relay on SQLite: claim (one UPDATE .. RETURNING), hand each
/// entry decoded to a no-op handler, delete the batch.
async fn raw_drain(conn: &mut PoolConnection<Sqlite>, sql: &LiteSql, counter: &Counter) -> Res<()> {
    let mut sink = Sink::Noop;
    loop {
        let token = Uuid::new_v4();
        let rows = raw_claim(conn, sql, token).await?;
        if rows.is_empty() {
            break;
        }
        counter.begin();
        sink.publish(&rows).await?;
        raw_delete(conn, sql, &rows, token, Delete::List).await?;
        counter.add(rows.len());
    }
    Ok(())
}

pub(crate) async fn raw_claim(
    conn: &mut SqliteConnection,
    sql: &LiteSql,
    token: Uuid,
) -> Res<Vec<RawRow>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql.claim.clone()))
        .bind(token.hyphenated())
        .bind(Utc::now().timestamp_millis())
        .bind(LEASE_MS)
        .bind(i64::try_from(BATCH).unwrap_or(i64::MAX))
        .fetch_all(&mut *conn)
        .await
        .context("raw SQLite claim")?;
    let mut rows = rows.iter().map(decode).collect::<Res<Vec<_>>>()?;
    rows.sort_unstable_by_key(|row| row.id);
    Ok(rows)
}

/// How the raw loop deletes a batch on SQLite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delete {
    /// `id IN (?, ?, ..)`, one statement, autocommit (the raw loop's choice).
    List,
    /// The library's way: `BEGIN`, `id IN (SELECT value FROM json_each(?))`, `COMMIT`.
    JsonInTransaction,
}

pub(crate) async fn raw_delete(
    conn: &mut SqliteConnection,
    sql: &LiteSql,
    rows: &[RawRow],
    token: Uuid,
    how: Delete,
) -> Res<()> {
    if how == Delete::JsonInTransaction {
        let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
        let ids = serde_json::to_string(&ids).context("encoding ids")?;
        let mut tx = conn.begin().await.context("BEGIN")?;
        sqlx::query(sqlx::AssertSqlSafe(sql.delete_json.clone()))
            .bind(token.hyphenated())
            .bind(ids)
            .execute(&mut *tx)
            .await
            .context("raw SQLite delete")?;
        tx.commit().await.context("COMMIT")?;
        return Ok(());
    }
    let partial;
    let text: &str = if rows.len() == BATCH {
        &sql.delete_full
    } else {
        partial = LiteSql::delete(sql.table.trim_matches('"'), rows.len());
        &partial
    };
    let mut delete = sqlx::query(sqlx::AssertSqlSafe(text)).bind(token.hyphenated());
    for row in rows {
        delete = delete.bind(row.id);
    }
    delete
        .execute(&mut *conn)
        .await
        .context("raw SQLite delete")?;
    Ok(())
}
