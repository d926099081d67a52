//! `gauges`: what the relay loop's gauge refresh costs with many kept
//! published entries. The loop calls [`Outbox::gauges`] every 15 s (pending
//! and dead entries only, through their partial indexes); the full report
//! [`Outbox::stats`] counts every row per name. Both run against the same
//! table, taking turns; the table is filled and drained through the
//! library alone (batch record, then a drain keeping published entries).

use std::time::Duration;

use outbox::{Outbox, PublishError, Publishers, Recorded};
use sqlx::PgPool;
use tokio::time::Instant;

use crate::common::{Bench, OrderPlaced, lib, order};
use crate::util::{Context, Res, Spread, bail, count, ms};

/// Rows per recording transaction while filling.
const FILL_BATCH: usize = 10_000;

/// Sizes: kept published, pending and dead entries, and timed calls per mode.
fn sizes(quick: bool) -> (usize, usize, usize, usize) {
    if quick {
        (20_000, 500, 100, 10)
    } else {
        (1_000_000, 5_000, 1_000, 30)
    }
}

pub(crate) async fn gauges(b: &Bench) -> Res<()> {
    let (kept, pending, dead, calls) = sizes(b.plan.quick);
    let table = b.table("gauges").await?;
    let pool = b.pool(4).await?;
    println!(
        "\n== gauges: the relay's gauge refresh (outbox.gauges) vs the full report (outbox.stats) with {} kept \
         published, {} pending and {} dead entries; {calls} calls per mode, taking turns",
        count(kept),
        count(pending),
        count(dead)
    );
    let outbox = lib(
        Outbox::builder(pool.clone())
            .table(table.as_str())
            .keep_published(Duration::from_hours(720))
            .max_attempts(1)
            .build()
            .await,
        "building the outbox",
    )?;
    let started = Instant::now();
    // Dead letters first (one attempt each), then the kept published
    // entries, then the pending ones: positions in that order.
    record(&pool, &outbox, dead).await?;
    let reject = lib(
        Publishers::builder()
            .on(|_: Recorded<OrderPlaced>| async {
                Err(PublishError::rejected("rejected by the benchmark"))
            })
            .build(),
        "building publishers",
    )?;
    drain(&outbox, &reject).await?;
    record(&pool, &outbox, kept).await?;
    let accept = lib(
        Publishers::builder()
            .on(|_: Recorded<OrderPlaced>| async { Ok(()) })
            .build(),
        "building publishers",
    )?;
    drain(&outbox, &accept).await?;
    record(&pool, &outbox, pending).await?;
    b.settle_db(&table).await?;
    println!(
        "  filled through the library in {:.1} s (batch record, drain keeping published entries), then VACUUM ANALYZE",
        started.elapsed().as_secs_f64()
    );
    let stats = lib(outbox.stats().await, "outbox.stats")?;
    let want = (pending as u64, dead as u64, kept as u64);
    if (stats.pending, stats.dead, stats.published) != want {
        bail!(
            "gauges: the table holds {} pending, {} dead, {} published; expected {want:?}",
            stats.pending,
            stats.dead,
            stats.published
        );
    }

    let mut full = Vec::with_capacity(calls);
    let mut refresh = Vec::with_capacity(calls);
    // Round 0 warms both up (plans, caches) and is not counted.
    for round in 0..=calls {
        for mode in order(2, round) {
            let start = Instant::now();
            let (pending_seen, dead_seen) = if mode == 0 {
                let s = lib(outbox.stats().await, "outbox.stats")?;
                (s.pending, s.dead)
            } else {
                let g = lib(outbox.gauges().await, "outbox.gauges")?;
                (g.pending, g.dead)
            };
            let took = ms(start.elapsed());
            if (pending_seen, dead_seen) != (want.0, want.1) {
                bail!("gauges: read {pending_seen} pending, {dead_seen} dead; expected {want:?}");
            }
            if round > 0 {
                if mode == 0 { &mut full } else { &mut refresh }.push(took);
            }
        }
    }
    let (full, refresh) = (Spread::of(&full), Spread::of(&refresh));
    println!("    {:<38} {full}", "outbox.stats (every row, per name)");
    println!(
        "    {:<38} {refresh}",
        "outbox.gauges (pending + dead only)"
    );
    println!(
        "  gauges ratio stats/gauges (p50) = {:.1}: the 15 s refresh costs {:.3} ms instead of {:.3} ms with {} kept \
         published entries",
        full.p50 / refresh.p50,
        refresh.p50,
        full.p50,
        count(kept)
    );
    pool.close().await;
    Ok(())
}

/// Records `n` events, `FILL_BATCH` per transaction (one insert each).
async fn record(pool: &PgPool, outbox: &Outbox<sqlx::Postgres>, n: usize) -> Res<()> {
    let mut seq = 0_u64;
    let mut left = n;
    while left > 0 {
        let now = left.min(FILL_BATCH);
        let mut batch = outbox.batch();
        for _ in 0..now {
            seq += 1;
            lib(batch.push(&OrderPlaced::new(seq)), "batch.push")?;
        }
        let mut tx = pool.begin().await.context("begin")?;
        lib(batch.record(&mut tx).await, "batch.record")?;
        tx.commit().await.context("commit")?;
        left -= now;
    }
    Ok(())
}

/// Runs the outbox until a run claims nothing.
async fn drain(outbox: &Outbox<sqlx::Postgres>, publishers: &Publishers) -> Res<()> {
    while lib(outbox.run(publishers, 1000).await, "outbox.run")?.claimed > 0 {}
    Ok(())
}
