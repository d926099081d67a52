//! `record_1_per_tx` (1 and 8 writers) and `record_100_per_tx`: writers
//! committing transactions that record events, for a fixed time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use outbox::{Event, Outbox};
use sqlx::{PgConnection, PgPool, Postgres};
use tokio::time::Instant;
use uuid::Uuid;

use crate::common::{Bench, OrderPlaced, RawSql, lib, order};
use crate::report::{Throughput, print_ratio};
use crate::util::{Context, Res, float, rate};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `outbox.record` / `record_all` with the default (NOTIFY on).
    LibNotify,
    /// The same with `.notify(false)`.
    LibPlain,
    /// Hand-written INSERT plus `pg_notify` in the same statement.
    RawNotify,
    /// Hand-written INSERT.
    RawPlain,
}

const MODES: [Mode; 4] = [
    Mode::LibNotify,
    Mode::LibPlain,
    Mode::RawNotify,
    Mode::RawPlain,
];

impl Mode {
    fn label(self, per_tx: usize) -> &'static str {
        match (self, per_tx) {
            (Self::LibNotify, 1) => "library record, notify on (default)",
            (Self::LibPlain, 1) => "library record, notify off",
            (Self::LibNotify, _) => "library record_all, notify on (default)",
            (Self::LibPlain, _) => "library record_all, notify off",
            (Self::RawNotify, 1) => "raw INSERT .. VALUES + pg_notify",
            (Self::RawPlain, 1) => "raw INSERT .. VALUES",
            (Self::RawNotify, _) => "raw INSERT .. UNNEST + pg_notify",
            (Self::RawPlain, _) => "raw INSERT .. UNNEST",
        }
    }
}

/// What every writer task needs.
#[derive(Clone)]
struct Writers {
    pool: PgPool,
    notify: Outbox<Postgres>,
    plain: Outbox<Postgres>,
    sql: RawSql,
}

/// Records one event per transaction (`per_tx == 1`) or `per_tx` events
/// in one call, with `writers` concurrent writers.
pub(crate) async fn record(b: &Bench, writers: usize, per_tx: usize) -> Res<()> {
    let name = format!("record_{per_tx}_per_tx");
    let table = b.table(&format!("rec{per_tx}w{writers}")).await?;
    let pool = b
        .pool(u32::try_from(writers + 2).unwrap_or(u32::MAX))
        .await?;
    let build = |notify: bool| {
        Outbox::builder(pool.clone())
            .table(table.as_str())
            .notify(notify)
            .build()
    };
    let w = Writers {
        notify: lib(build(true).await, "building the outbox")?,
        plain: lib(build(false).await, "building the outbox")?,
        pool: pool.clone(),
        sql: RawSql::new(&table),
    };
    let plan = b.plan;
    println!(
        "\n== {name}, {writers} writer{}: {} per transaction (BEGIN, {}, COMMIT); the four modes take \
         turns in {} slices of {:.2} s each (order rotated), median of the slices",
        if writers == 1 { "" } else { "s" },
        if per_tx == 1 {
            "one event".to_owned()
        } else {
            format!("{per_tx} events")
        },
        if per_tx == 1 { "record" } else { "record_all" },
        plan.record_slices,
        plan.record_slice.as_secs_f64(),
    );
    // Warm-up: connections, prepared statements, the table's first pages.
    for mode in MODES {
        measure(&w, mode, writers, per_tx, plan.record_slice).await?;
    }
    let mut results: Vec<Throughput> = MODES
        .iter()
        .map(|mode| Throughput::new(mode.label(per_tx)))
        .collect();
    for slice in 0..plan.record_slices {
        // Keep the table's size in the same range throughout.
        if slice % 4 == 0 {
            b.truncate(&table).await?;
        }
        for i in order(MODES.len(), slice) {
            let value = measure(&w, MODES[i], writers, per_tx, plan.record_slice).await?;
            results[i].push(value);
        }
    }
    for result in &results {
        result.print();
    }
    let [lib_notify, lib_plain, raw_notify, raw_plain] = [0, 1, 2, 3].map(|i| results[i].median());
    let tag = format!(
        "{name} ({writers} writer{})",
        if writers == 1 { "" } else { "s" }
    );
    print_ratio(
        &tag,
        lib_notify / raw_notify,
        ">=",
        0.90,
        "library/raw, notify on (same work: INSERT + pg_notify)",
    );
    print_ratio(
        &tag,
        lib_plain / raw_plain,
        ">=",
        0.90,
        "library/raw, notify off (plain INSERT)",
    );
    println!(
        "  note: the library's default (notify on) against a plain raw INSERT: {:.3}; \
         transactions/s library {:.0}, raw {:.0}",
        lib_notify / raw_plain,
        lib_notify / float(per_tx),
        raw_plain / float(per_tx),
    );
    pool.close().await;
    Ok(())
}

/// Runs `writers` writers in `mode` for `duration`; events per second.
async fn measure(
    w: &Writers,
    mode: Mode,
    writers: usize,
    per_tx: usize,
    duration: std::time::Duration,
) -> Res<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|i| {
            let first = u64::try_from(i).unwrap_or(0) << 40;
            tokio::spawn(writer(w.clone(), mode, per_tx, stop.clone(), first))
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut events = 0;
    for task in tasks {
        events += task.await.context("a writer task")??;
    }
    Ok(rate(events, start.elapsed()))
}

async fn writer(
    w: Writers,
    mode: Mode,
    per_tx: usize,
    stop: Arc<AtomicBool>,
    first: u64,
) -> Res<usize> {
    let mut seq = first;
    let mut done = 0;
    let per_tx_u64 = u64::try_from(per_tx).unwrap_or(1);
    while !stop.load(Ordering::Relaxed) {
        // The application builds its events in both modes.
        let events: Vec<OrderPlaced> = (seq..seq + per_tx_u64).map(OrderPlaced::new).collect();
        seq += per_tx_u64;
        let mut tx = w.pool.begin().await.context("BEGIN")?;
        match mode {
            Mode::LibNotify | Mode::LibPlain => {
                let outbox = if mode == Mode::LibNotify {
                    &w.notify
                } else {
                    &w.plain
                };
                if per_tx == 1 {
                    let _recording = lib(outbox.record(&mut *tx, &events[0]).await, "record")?;
                } else {
                    lib(outbox.record_all(&mut *tx, &events).await, "record_all")?;
                }
            }
            Mode::RawNotify | Mode::RawPlain => {
                raw_insert(&mut tx, &w.sql, &events, mode == Mode::RawNotify).await?;
            }
        }
        tx.commit().await.context("COMMIT")?;
        done += per_tx;
    }
    Ok(done)
}

/// The hand-written insert: `VALUES` for one event, `UNNEST` for many;
/// serializes each event and gives it a UUID v7, as the library does.
async fn raw_insert(
    conn: &mut PgConnection,
    sql: &RawSql,
    events: &[OrderPlaced],
    notify: bool,
) -> Res<()> {
    if let [event] = events {
        let payload = serde_json::to_string(event).context("encoding")?;
        let text = if notify {
            &sql.insert_one_notify
        } else {
            &sql.insert_one
        };
        let mut query = sqlx::query(sqlx::AssertSqlSafe(text.clone()))
            .bind(Uuid::now_v7())
            .bind(OrderPlaced::NAME)
            .bind(payload);
        if notify {
            query = query.bind(&*sql.channel);
        }
        query.execute(conn).await.context("raw INSERT")?;
        return Ok(());
    }
    let mut ids = Vec::with_capacity(events.len());
    let mut names = Vec::with_capacity(events.len());
    let mut payloads = Vec::with_capacity(events.len());
    for event in events {
        ids.push(Uuid::now_v7());
        names.push(OrderPlaced::NAME);
        payloads.push(serde_json::to_string(event).context("encoding")?);
    }
    let text = if notify {
        &sql.insert_many_notify
    } else {
        &sql.insert_many
    };
    let mut query = sqlx::query(sqlx::AssertSqlSafe(text.clone()))
        .bind(ids)
        .bind(names)
        .bind(payloads);
    if notify {
        query = query.bind(&*sql.channel);
    }
    query.execute(conn).await.context("raw INSERT .. UNNEST")?;
    Ok(())
}
