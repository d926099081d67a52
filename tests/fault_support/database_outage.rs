//! The database-outage scenario, shared by `fault_database_restart`
//! (PostgreSQL stopped with a fast shutdown: sessions are ended, a
//! checkpoint is written) and `fault_database_crash` (stopped with
//! `-m immediate`: every server process quits at once, as in a crash or a
//! power loss, and the next start replays the WAL).
//!
//! Two relay loops drain a backlog into RabbitMQ while the application
//! keeps recording; once a few thousand events have been confirmed the
//! server is stopped, and started again after [`DatabaseStop::outage`]. What was committed
//! is read from the business table written in the same transactions (a
//! commit cut off by the outage may or may not have happened: the business
//! table says which). Asserted: every committed event arrives (lost = 0),
//! none becomes a dead letter and no attempt is spent, each relay
//! reconnects and publishes again within [`RESUME_BOUND`] of the server
//! accepting queries, the backlog drains, and the duplicates stay within
//! the batches in flight per relay (the outcomes each relay could not write).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{
    PostgresGuard, Tap, World, assert_delivered, backlog, consume, ensure_postgres, ensure_rabbit,
    pool, record_ticks, stop_signal, tally, tap_publishers, unique, wait_postgres,
};

/// How the server is stopped.
#[derive(Debug, Clone, Copy)]
pub enum DatabaseStop {
    /// `pg_ctlcluster .. stop -m fast`.
    Fast,
    /// `pg_ctlcluster .. stop -m immediate`.
    Immediate,
}

impl DatabaseStop {
    /// How long the server stays stopped before it is started again. The
    /// start after an immediate stop runs crash recovery (about 7 s here),
    /// which adds to the outage: that one waits less, so that every outage
    /// stays under 15 s (other suites share the server).
    pub fn outage(self) -> Duration {
        match self {
            Self::Fast => Duration::from_secs(6),
            Self::Immediate => Duration::from_secs(4),
        }
    }
}

/// Events recorded before the relays start.
const BACKLOG: i64 = 15_000;
/// Transactions the application commits for sure (plus whatever the outage
/// cut off), of `WAVE` events every `EVERY`.
const WAVES: usize = 200;
const WAVE: i64 = 50;
const EVERY: Duration = Duration::from_millis(40);
/// The relays' batch (the library's default), their number and lease.
const BATCH: usize = 100;
const RELAYS: usize = 2;
/// Batches in flight per relay (pipelined publishing, the default).
const IN_FLIGHT: usize = 4;
const LEASE: Duration = Duration::from_secs(5);
/// The relay loop's longest wait between failed runs.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Each relay publishes again within this long of the server accepting
/// queries: a relay waiting for a connection retries with a backoff of up
/// to a fifth of the pool's `acquire_timeout` (30 s: 6 s), one between
/// runs waits at most [`MAX_BACKOFF`]; plus a margin.
pub const RESUME_BOUND: Duration = Duration::from_secs(10);
/// The relays go on past this many confirmed events before the outage.
const CONFIRMED_BEFORE: usize = 3_000;

/// Runs the scenario with `how`; asserts everything the module docs list
/// and prints one line of figures.
#[allow(clippy::too_many_lines)] // Reason: one scenario, read top to bottom.
pub async fn database_outage(how: DatabaseStop) {
    let (label, prefix) = match how {
        DatabaseStop::Fast => ("database restart (fast)", "fault_pgdown"),
        DatabaseStop::Immediate => ("database crash (immediate)", "fault_pgcrash"),
    };
    tokio::task::spawn_blocking(|| {
        ensure_postgres();
        ensure_rabbit();
    })
    .await
    .unwrap();
    let world = World::new(prefix).await;
    // A backlog, so the outage hits the relays mid-drain.
    let writer = world.builder(world.admin.clone()).build().await.unwrap();
    backlog(&world, &writer, -BACKLOG, BACKLOG).await;
    let taps = [Tap::new(world.rabbit()), Tap::new(world.rabbit())];
    let (stop, signal) = stop_signal();
    let mut relays = Vec::new();
    for (i, tap) in taps.iter().enumerate() {
        let relay_pool = pool(&unique(&format!("{prefix}-relay{i}")), 4).await;
        let outbox = world
            .builder(relay_pool)
            .lease(LEASE)
            .batch_limit(BATCH)
            .build()
            .await
            .unwrap();
        relays.push(tokio::spawn(
            outbox
                .relay(tap_publishers(tap))
                .in_flight(IN_FLIGHT)
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
        let producer_pool = pool(&unique(&format!("{prefix}-app")), 2).await;
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
    let confirmed = || taps.iter().map(Tap::confirmed).sum::<usize>();
    let waiting = Instant::now();
    while confirmed() < CONFIRMED_BEFORE {
        assert!(
            waiting.elapsed() < Duration::from_mins(1),
            "the relays did not start draining"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let confirmed_before = confirmed();
    let pending_before = world.pending().await.unwrap();
    let guard = match how {
        DatabaseStop::Fast => tokio::task::spawn_blocking(PostgresGuard::stop),
        DatabaseStop::Immediate => tokio::task::spawn_blocking(PostgresGuard::stop_immediate),
    }
    .await
    .unwrap();
    let stopped_at = Instant::now();
    tokio::time::sleep(how.outage()).await;
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();
    let accepting_after = wait_postgres(Duration::from_mins(1)).await;
    let back_at = Instant::now();
    let down_for = back_at - stopped_at;

    // Each relay reconnects and publishes again by itself.
    let resumed: Vec<Duration> = loop {
        let firsts: Vec<_> = taps.iter().map(|t| t.first_ok_after(back_at)).collect();
        if firsts.iter().all(Option::is_some) {
            break firsts
                .into_iter()
                .flatten()
                .map(|at| at - back_at)
                .collect();
        }
        assert!(
            back_at.elapsed() < RESUME_BOUND * 3,
            "{label}: a relay did not publish again within {:?} of the database's return: {firsts:?}",
            RESUME_BOUND * 3
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    producer.await.unwrap();
    let drained_after = world.wait_drained(Duration::from_mins(1)).await;
    stop.send(true).unwrap();
    let mut reports = Vec::new();
    for relay in relays {
        reports.push(relay.await.unwrap());
    }

    let committed = world.committed().await;
    let want = committed.keys().copied().collect();
    let received = consume(
        &world.queue,
        &want,
        Duration::from_secs(2),
        Duration::from_mins(2),
    )
    .await;
    let t = tally(&committed, &received);
    let failed = failures.load(Ordering::Relaxed);
    let stall = *longest_stall.lock().unwrap();
    eprintln!(
        "{label}: {} events committed (in the outage {failed} transactions failed, \
         the longest waited {stall:?}), server down {down_for:?} (accepting {accepting_after:?} \
         after start), {confirmed_before} confirmed and {pending_before} pending before it; \
         relays published again {resumed:?} after it was back (bound {RESUME_BOUND:?}), \
         drained {drained_after:?} after the last commit; {} messages consumed, {} duplicates \
         (bound {}), {} lost; reports {reports:?}",
        t.events,
        t.received,
        t.duplicates,
        BATCH * IN_FLIGHT * RELAYS,
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
        failed > 0 || stall >= how.outage() / 2,
        "the application saw the outage"
    );
    assert!(
        resumed.iter().all(|&r| r < RESUME_BOUND),
        "resumed after {resumed:?}"
    );
    for report in &reports {
        assert_eq!(
            (report.retried, report.dead),
            (0, 0),
            "an outage costs no attempt: {report:?}"
        );
    }
    assert_eq!(world.dead().await, 0, "an outage makes no dead letters");
    assert!(
        t.duplicates <= BATCH * IN_FLIGHT * RELAYS,
        "{} duplicates: more than the batches in flight per relay",
        t.duplicates
    );
    world.drop_all().await;
}
