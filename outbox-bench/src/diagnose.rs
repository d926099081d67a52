//! `--diagnose`: where the library's time goes, measured against variants
//! of the raw loop, one batch (or one transaction) at a time with the
//! variants taking turns, so background load hits them all alike. Used for
//! the profiling notes; prints medians per batch / per transaction.

use outbox::{Event, Outbox, Publishers};
use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};
use tokio::time::Instant;
use uuid::Uuid;

use crate::broker::Sink;
use crate::common::{
    BATCH, Bench, Counter, Noop, OrderPlaced, RawSql, lib, order, raw_claim, raw_delete,
};
use crate::lite::{self, Delete, LiteSql};
use crate::util::{Context, Res, bail, median};

pub(crate) async fn diagnose(b: &Bench) -> Res<()> {
    drain(b).await?;
    sqlite(b).await?;
    scale(b).await?;
    for per_tx in [1, 100] {
        record(b, per_tx).await?;
    }
    Ok(())
}

/// A pool like a user's, but without sqlx's ping before handing out a connection.
async fn pool_without_ping(b: &Bench) -> Res<PgPool> {
    let options = PgConnectOptions::from_str(&b.database_url)
        .context("the database URL")?
        .application_name("outbox-bench");
    PgPoolOptions::new()
        .max_connections(8)
        .test_before_acquire(false)
        .connect_with(options)
        .await
        .context("connecting without test_before_acquire")
}

/// One batch of 100 (claim, no-op publish, delete), four ways, in turns.
async fn drain(b: &Bench) -> Res<()> {
    let rounds = if b.plan.quick { 50 } else { 500 };
    let table = b.table("diagdrain").await?;
    b.refill(&table, rounds * 5 * BATCH).await?;
    let pool = b.pool(8).await?;
    let unpinged = pool_without_ping(b).await?;
    let build = |pool: &PgPool| Outbox::builder(pool.clone()).table(table.as_str()).build();
    let outbox = lib(build(&pool).await, "building the outbox")?;
    let outbox_unpinged = lib(build(&unpinged).await, "building the outbox")?;
    let publishers = lib(
        Publishers::builder()
            .publisher::<OrderPlaced, _>(Noop(Counter::new(usize::MAX / 2)))
            .build(),
        "building publishers",
    )?;
    let sql = RawSql::new(&table);
    let mut held = pool.acquire().await.context("raw connection")?;
    let mut sink = Sink::Noop;
    let labels = [
        "library outbox.run (sqlx default pool)",
        "raw loop, one held connection",
        "raw loop, pool.acquire() per statement",
        "library outbox.run (pool without test_before_acquire)",
        "raw loop, held, DELETE fused into the next claim",
    ];
    // Headroom: the previous batch's DELETE and the next claim as one
    // statement (one round trip, one flush per batch).
    let t = format!("\"{table}\"");
    let fused = format!(
        "WITH done AS (DELETE FROM {t} WHERE id = ANY($4) AND claim_token = $5), \
         due AS (SELECT c.id FROM {t} c WHERE c.status = 'pending' AND c.available_at <= now() \
         ORDER BY c.id LIMIT $1 FOR UPDATE SKIP LOCKED) \
         UPDATE {t} AS o SET claim_token = $2, available_at = now() + $3 * interval '1 millisecond' \
         FROM due WHERE o.id = due.id \
         RETURNING o.id, o.event_id, o.name, o.payload::text, o.stream_key, o.headers::text, \
         o.correlation_id, o.causation_id, o.created_at, o.attempts"
    );
    let mut previous: (Vec<i64>, Uuid) = (Vec::new(), Uuid::nil());
    let mut times: [Vec<f64>; 5] = Default::default();
    for round in 0..rounds {
        for variant in order(5, round) {
            let start = Instant::now();
            let done = match variant {
                4 => fused_batch(&mut held, &fused, &mut sink, &mut previous).await?,
                0 | 3 => {
                    let outbox = if variant == 0 {
                        &outbox
                    } else {
                        &outbox_unpinged
                    };
                    lib(outbox.run(&publishers, BATCH).await, "outbox.run")?.published
                }
                1 => {
                    let token = Uuid::new_v4();
                    let rows = raw_claim(&mut held, &sql, token, 0).await?;
                    sink.publish(&rows).await?;
                    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
                    raw_delete(&mut held, &sql, &ids, token).await?;
                    rows.len()
                }
                _ => {
                    let token = Uuid::new_v4();
                    let mut conn = pool.acquire().await.context("acquire")?;
                    let rows = raw_claim(&mut conn, &sql, token, 0).await?;
                    drop(conn);
                    sink.publish(&rows).await?;
                    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
                    let mut conn = pool.acquire().await.context("acquire")?;
                    raw_delete(&mut conn, &sql, &ids, token).await?;
                    rows.len()
                }
            };
            if done != BATCH {
                bail!("diagnose: a batch published {done}, not {BATCH}");
            }
            times[variant].push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    println!(
        "\n== diagnose drain: one batch of {BATCH} (claim, no-op publish, delete), {rounds} rounds, median per batch"
    );
    let raw = median(&times[1]);
    for (label, t) in labels.iter().zip(&times) {
        let m = median(t);
        println!(
            "  {label:<56} {m:.3} ms   (raw held connection / this = {:.3})",
            raw / m
        );
    }
    drop(held);
    pool.close().await;
    unpinged.close().await;
    Ok(())
}

/// One transaction recording `per_tx` events, four ways, in turns.
async fn record(b: &Bench, per_tx: usize) -> Res<()> {
    let rounds = if b.plan.quick { 50 } else { 400 };
    let table = b.table(&format!("diagrec{per_tx}")).await?;
    let pool = b.pool(4).await?;
    let outbox = lib(
        Outbox::builder(pool.clone())
            .table(table.as_str())
            .notify(false)
            .build()
            .await,
        "building the outbox",
    )?;
    let t = format!("\"{table}\"");
    let three = format!(
        "INSERT INTO {t} (event_id, name, payload) SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[]::json[])"
    );
    // The library's statement (without NOTIFY): every column, every row.
    let seven = format!(
        "INSERT INTO {t} (event_id, name, payload, stream_key, headers, correlation_id, causation_id) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[]::json[], $4::text[], $5::text[]::json[], \
         $6::uuid[], $7::uuid[])"
    );
    let labels = [
        "library record_all, notify off",
        "raw UNNEST of the 3 columns it sets",
        "raw UNNEST of the library's 7 columns",
        "BEGIN + COMMIT alone",
    ];
    let mut times: [Vec<f64>; 4] = Default::default();
    let mut seq = 0_u64;
    let step = u64::try_from(per_tx).unwrap_or(1);
    for round in 0..rounds {
        if round % 100 == 0 {
            b.truncate(&table).await?;
        }
        for variant in order(4, round) {
            let events: Vec<OrderPlaced> = (seq..seq + step).map(OrderPlaced::new).collect();
            seq += step;
            let start = Instant::now();
            let mut tx = pool.begin().await.context("BEGIN")?;
            match variant {
                0 => lib(outbox.record_all(&mut *tx, &events).await, "record_all").map(drop)?,
                1 | 2 => {
                    raw_unnest(
                        &mut tx,
                        if variant == 1 { &three } else { &seven },
                        &events,
                        variant == 2,
                    )
                    .await?;
                }
                _ => {}
            }
            tx.commit().await.context("COMMIT")?;
            times[variant].push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    println!(
        "\n== diagnose record: one transaction of {per_tx} event{}, {rounds} rounds, median per transaction",
        if per_tx == 1 { "" } else { "s" }
    );
    let raw = median(&times[1]);
    for (label, t) in labels.iter().zip(&times) {
        let m = median(t);
        println!(
            "  {label:<56} {m:.3} ms   (raw 3 columns / this = {:.3})",
            raw / m
        );
    }
    pool.close().await;
    Ok(())
}

async fn raw_unnest(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    text: &str,
    events: &[OrderPlaced],
    every_column: bool,
) -> Res<()> {
    let ids: Vec<Uuid> = events.iter().map(|_| Uuid::now_v7()).collect();
    let names: Vec<&str> = events.iter().map(|_| OrderPlaced::NAME).collect();
    let payloads = events
        .iter()
        .map(serde_json::to_string)
        .collect::<Result<Vec<_>, _>>()
        .context("encoding")?;
    let mut query = sqlx::query(sqlx::AssertSqlSafe(text))
        .bind(ids)
        .bind(names)
        .bind(payloads);
    if every_column {
        let none: Vec<Option<Uuid>> = vec![None; events.len()];
        query = query
            .bind(vec![None::<&str>; events.len()])
            .bind(vec!["{}"; events.len()])
            .bind(none.clone())
            .bind(none);
    }
    query.execute(&mut **tx).await.context("raw UNNEST")?;
    Ok(())
}

/// One batch of the fused loop: deletes `previous` and claims the next batch
/// in one statement, publishes it, and keeps it as the next `previous`.
async fn fused_batch(
    conn: &mut sqlx::pool::PoolConnection<Postgres>,
    fused: &str,
    sink: &mut Sink,
    previous: &mut (Vec<i64>, Uuid),
) -> Res<usize> {
    let token = Uuid::new_v4();
    let rows = sqlx::query(sqlx::AssertSqlSafe(fused))
        .bind(i64::try_from(BATCH).unwrap_or(i64::MAX))
        .bind(token)
        .bind(crate::common::LEASE_MS)
        .bind(&previous.0)
        .bind(previous.1)
        .fetch_all(&mut **conn)
        .await
        .context("fused claim")?;
    let mut rows = rows
        .iter()
        .map(crate::common::decode_row)
        .collect::<Res<Vec<_>>>()?;
    rows.sort_unstable_by_key(|row| row.id);
    sink.publish(&rows).await?;
    *previous = (rows.iter().map(|r| r.id).collect(), token);
    Ok(rows.len())
}

/// One SQLite batch of 100 (claim, no-op publish, delete), four ways, in turns.
async fn sqlite(b: &Bench) -> Res<()> {
    let rounds = if b.plan.quick { 50 } else { 500 };
    let (_file, pool) = lite::open(b, "diagnose").await?;
    let table = "outbox_bench";
    let outbox = lib(
        Outbox::builder(pool.clone()).table(table).build().await,
        "building the SQLite outbox",
    )?;
    let sql = LiteSql::new(table);
    lite::refill(&pool, &sql, rounds * 4 * BATCH).await?;
    let publishers = lib(
        Publishers::builder()
            .publisher::<OrderPlaced, _>(Noop(Counter::new(usize::MAX / 2)))
            .build(),
        "building publishers",
    )?;
    let mut held = pool.acquire().await.context("raw connection")?;
    let mut sink = Sink::Noop;
    let labels = [
        "library outbox.run (sqlx default pool)",
        "raw loop, one held connection, DELETE .. IN (?, ..)",
        "raw loop, pool.acquire() per statement",
        "raw loop, held, the library's BEGIN + json_each + COMMIT",
    ];
    let mut times: [Vec<f64>; 4] = Default::default();
    for round in 0..rounds {
        for variant in order(4, round) {
            let start = Instant::now();
            let token = Uuid::new_v4();
            let done = match variant {
                0 => lib(outbox.run(&publishers, BATCH).await, "outbox.run")?.published,
                2 => {
                    let mut conn = pool.acquire().await.context("acquire")?;
                    let rows = lite::raw_claim(&mut conn, &sql, token).await?;
                    drop(conn);
                    sink.publish(&rows).await?;
                    let mut conn = pool.acquire().await.context("acquire")?;
                    lite::raw_delete(&mut conn, &sql, &rows, token, Delete::List).await?;
                    rows.len()
                }
                _ => {
                    let rows = lite::raw_claim(&mut held, &sql, token).await?;
                    sink.publish(&rows).await?;
                    let how = if variant == 1 {
                        Delete::List
                    } else {
                        Delete::JsonInTransaction
                    };
                    lite::raw_delete(&mut held, &sql, &rows, token, how).await?;
                    rows.len()
                }
            };
            if done != BATCH {
                bail!("diagnose: an SQLite batch published {done}, not {BATCH}");
            }
            times[variant].push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    println!(
        "\n== diagnose drain_sqlite: one batch of {BATCH} (claim, no-op publish, delete), {rounds} rounds, \
         median per batch"
    );
    let raw = median(&times[1]);
    for (label, t) in labels.iter().zip(&times) {
        let m = median(t);
        println!(
            "  {label:<56} {m:.3} ms   (raw held connection / this = {:.3})",
            raw / m
        );
    }
    drop(held);
    pool.close().await;
    Ok(())
}

/// The raw loop over a large backlog, with every claim scanning from the
/// first entry and with the claim bounded below by the last full batch's
/// highest id (as the figures' raw loop and the library's relay do): the
/// bounded scan no longer walks the index entries that the batches already
/// deleted left behind.
async fn scale(b: &Bench) -> Res<()> {
    let n = if b.plan.quick { 50_000 } else { 1_000_000 };
    let table = b.table("diagscale").await?;
    let pool = b.pool(2).await?;
    let sql = RawSql::new(&table);
    println!(
        "\n== diagnose scale: {n} pending entries drained by the raw loop, claim scan unbounded vs bounded below"
    );
    for bounded in [false, true] {
        b.refill(&table, n).await?;
        let mut conn = pool.acquire().await.context("raw connection")?;
        let mut sink = Sink::Noop;
        let start = Instant::now();
        let (mut after, mut drained, mut full_scans) = (0_i64, 0_usize, 0_usize);
        loop {
            let token = Uuid::new_v4();
            if after == 0 {
                full_scans += 1;
            }
            let rows = raw_claim(&mut conn, &sql, token, after).await?;
            if rows.is_empty() {
                if after == 0 {
                    break;
                }
                after = 0;
                continue;
            }
            after = if bounded && rows.len() == BATCH {
                rows.last().map_or(0, |r| r.id)
            } else {
                0
            };
            sink.publish(&rows).await?;
            let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
            raw_delete(&mut conn, &sql, &ids, token).await?;
            drained += rows.len();
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "  {:<56} {secs:.3} s, {:.2} us/event, {full_scans} unbounded claims",
            if bounded {
                "raw loop, claim bounded below (id > last batch)"
            } else {
                "raw loop, every claim from the first entry"
            },
            secs * 1e6 / crate::util::float(drained.max(1)),
        );
    }
    pool.close().await;
    Ok(())
}
