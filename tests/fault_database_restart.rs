//! Database outage: the PostgreSQL server is stopped for several seconds
//! and started again (`pg_ctlcluster ... stop` / `start`) while two relays
//! drain the outbox into RabbitMQ and the application keeps recording.
//! The relays reconnect by themselves; nothing is lost. What was committed
//! is read from the business table written in the same transactions (a
//! commit cut off by the outage may or may not have happened: the business
//! table says which).
//!
//! This suite stops the shared local database server, so it is its own
//! test binary with a single test (cargo runs test binaries one after
//! another). A guard starts the cluster again when the outage ends, even if
//! the test panics.

mod fault_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fault_support::{
    PostgresGuard, Tap, World, assert_delivered, backlog, consume, pool, record_ticks, stop_signal,
    tally, tap_publishers, unique, wait_postgres,
};

/// Events recorded before the relays start.
const BACKLOG: i64 = 15_000;
/// Transactions the producer commits for sure (plus whatever the outage cut off).
const WAVES: usize = 200;
const WAVE: i64 = 50;
const EVERY: Duration = Duration::from_millis(40);
/// How long the server stays stopped.
const OUTAGE: Duration = Duration::from_secs(6);
/// The relays' longest wait between tries while the database is down.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The relays must publish again within this long after the server is back.
const RESUME_BOUND: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_restarted_mid_drain_loses_nothing() {
    let world = World::new("fault_pgdown").await;
    // A backlog, so the outage hits the relays mid-drain.
    let writer = world.builder(world.admin.clone()).build().await.unwrap();
    backlog(&world, &writer, -BACKLOG, BACKLOG).await;
    let tap = Tap::new(world.rabbit());
    let (stop, signal) = stop_signal();
    let mut relays = Vec::new();
    for i in 0..2 {
        let relay_pool = pool(&unique(&format!("fault-pgdown-relay{i}")), 4).await;
        let outbox = world
            .builder(relay_pool)
            .lease(Duration::from_secs(5))
            .build()
            .await
            .unwrap();
        relays.push(tokio::spawn(
            outbox
                .relay(tap_publishers(&tap))
                .poll_interval(Duration::from_millis(200))
                .max_backoff(MAX_BACKOFF)
                .run(signal()),
        ));
    }

    // The application records all along; a transaction that fails in the
    // outage is simply tried again later with new events.
    let failures = Arc::new(AtomicUsize::new(0));
    let longest_stall = Arc::new(Mutex::new(Duration::ZERO));
    let producer = {
        let producer_pool = pool(&unique("fault-pgdown-app"), 2).await;
        let outbox = world.builder(producer_pool.clone()).build().await.unwrap();
        let (table, failures, stall) =
            (world.table.clone(), failures.clone(), longest_stall.clone());
        tokio::spawn(async move {
            let (mut committed, mut k) = (0, 0);
            while committed < WAVES {
                let started = Instant::now();
                let outcome = record_ticks(&outbox, &producer_pool, &table, k, WAVE, true).await;
                let took = started.elapsed();
                {
                    let mut longest = stall.lock().unwrap();
                    *longest = (*longest).max(took);
                }
                if outcome.is_ok() {
                    committed += 1;
                } else {
                    failures.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                k += WAVE;
                tokio::time::sleep(EVERY).await;
            }
        })
    };

    // Mid-drain: once the relays have published a few thousand of the backlog.
    while tap.confirmed() < 3_000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let confirmed_before = tap.confirmed();
    let pending_before = world.pending().await.unwrap();
    let guard = tokio::task::spawn_blocking(PostgresGuard::stop)
        .await
        .unwrap();
    let stopped_at = Instant::now();
    tokio::time::sleep(OUTAGE).await;
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();
    let accepting_after = wait_postgres(Duration::from_secs(60)).await;
    let back_at = Instant::now();
    let down_for = back_at - stopped_at;

    let resumed = loop {
        if let Some(at) = tap.first_ok_after(back_at) {
            break at - back_at;
        }
        assert!(
            back_at.elapsed() < RESUME_BOUND,
            "no relay published again within {RESUME_BOUND:?} of the database's return"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    producer.await.unwrap();
    let drained_after = world.wait_drained(Duration::from_secs(120)).await;
    stop.send(true).unwrap();
    let mut published = Vec::new();
    for relay in relays {
        published.push(relay.await.unwrap().published);
    }

    let committed = world.committed().await;
    let want = committed.keys().copied().collect();
    let received = consume(
        &world.queue,
        &want,
        Duration::from_secs(2),
        Duration::from_secs(120),
    )
    .await;
    let t = tally(&committed, &received);
    let failed = failures.load(Ordering::Relaxed);
    let stall = *longest_stall.lock().unwrap();
    eprintln!(
        "database restart: {} events committed (in the outage {failed} transactions failed, \
         the longest waited {stall:?}), \
         server down {down_for:?} (accepting {accepting_after:?} after start), \
         {confirmed_before} confirmed and {pending_before} pending before it, \
         relays published again {resumed:?} after it was back, drained {drained_after:?} later; \
         relays published {published:?}; {} messages consumed, {} duplicates, {} lost",
        t.events,
        t.received,
        t.duplicates,
        t.lost.len(),
    );
    assert_delivered(&t);
    assert!(t.events >= WAVES * usize::try_from(WAVE).unwrap() + usize::try_from(BACKLOG).unwrap());
    assert!(
        confirmed_before > 0,
        "the relays were draining before the outage"
    );
    assert!(pending_before > 0, "the outage was mid-drain");
    assert!(
        failed > 0 || stall >= OUTAGE / 2,
        "the application saw the outage"
    );
    assert!(resumed < RESUME_BOUND, "resumed after {resumed:?}");
    assert_eq!(world.dead().await, 0, "an outage makes no dead letters");
    world.drop_all().await;
}
