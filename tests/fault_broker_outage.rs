//! Broker outage: RabbitMQ is stopped (`rabbitmqctl stop_app`) for more than
//! ten seconds while a relay drains a PostgreSQL outbox into it and the
//! application keeps recording, then started again. Nothing is lost, no
//! entry becomes a dead letter (an outage costs no attempt), and the relay
//! resumes by itself; how long after `start_app` it did is measured.
//!
//! This suite stops the shared local broker, so it is its own test binary
//! with a single test (cargo runs test binaries one after another). A guard
//! runs `rabbitmqctl start_app` when the outage ends, even if the test panics.

mod fault_support;

use std::time::{Duration, Instant};

use fault_support::{
    RabbitGuard, Tap, World, assert_delivered, consume, pool, record_ticks, stop_signal, tally,
    tap_publishers, unique,
};

/// Events recorded over the run, in waves of `WAVE` every `EVERY`.
const N: i64 = 10_000;
const WAVE: i64 = 50;
const EVERY: Duration = Duration::from_millis(100);
/// How long the broker stays stopped (between `stop_app` and `start_app`).
const OUTAGE: Duration = Duration::from_secs(12);
/// The relay's longest wait between tries while the broker is down (the
/// default is 30 s): it bounds how long after the broker's return it resumes.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The relay must publish again within this long after `start_app`.
const RESUME_BOUND: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stopped_mid_drain_loses_nothing_and_kills_nothing() {
    let world = World::new("fault_broker").await;
    let relay_pool = pool(&unique("fault-broker-relay"), 4).await;
    let outbox = world
        .builder(relay_pool)
        .max_attempts(3)
        .build()
        .await
        .unwrap();
    let tap = Tap::new(world.rabbit());
    let (stop, signal) = stop_signal();
    let relay = tokio::spawn(
        outbox
            .relay(tap_publishers(&tap))
            .poll_interval(Duration::from_millis(200))
            .max_backoff(MAX_BACKOFF)
            .run(signal()),
    );

    // The application records all along: before, during and after the outage.
    let producer = {
        let (outbox, pool, table) = (outbox.clone(), world.admin.clone(), world.table.clone());
        tokio::spawn(async move {
            let mut k = 0;
            while k < N {
                record_ticks(&outbox, &pool, &table, k, WAVE, true)
                    .await
                    .unwrap();
                k += WAVE;
                tokio::time::sleep(EVERY).await;
            }
        })
    };

    tokio::time::sleep(Duration::from_secs(3)).await;
    let confirmed_before = tap.confirmed();
    let guard = tokio::task::spawn_blocking(RabbitGuard::stop_app)
        .await
        .unwrap();
    let stopped_at = Instant::now();
    tokio::time::sleep(OUTAGE).await;
    let pending_during = world.pending().await.unwrap();
    let confirmed_during = tap.confirmed_between(stopped_at, Instant::now());
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();
    let back_at = Instant::now();
    let down_for = back_at - stopped_at;

    let resumed = loop {
        if let Some(at) = tap.first_ok_after(back_at) {
            break at - back_at;
        }
        assert!(
            back_at.elapsed() < RESUME_BOUND,
            "the relay did not publish again within {RESUME_BOUND:?} of start_app"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    producer.await.unwrap();
    let drained_after = world.wait_drained(Duration::from_secs(120)).await;
    stop.send(true).unwrap();
    let report = relay.await.unwrap();

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
    eprintln!(
        "broker outage: {} events, broker down {down_for:?} (stop_app..start_app), \
         {confirmed_before} confirmed before it, {pending_during} pending at its end, \
         relay published again {resumed:?} after start_app, drained {drained_after:?} later; \
         {} messages consumed, {} duplicates, {} lost, {} dead; relay report {report:?}",
        t.events,
        t.received,
        t.duplicates,
        t.lost.len(),
        report.dead,
    );
    assert_delivered(&t);
    assert_eq!(t.events, usize::try_from(N).unwrap());
    assert!(down_for >= Duration::from_secs(10), "down {down_for:?}");
    assert!(
        confirmed_before > 0,
        "the relay was draining before the outage"
    );
    assert!(pending_during > 0, "the outage was mid-drain");
    assert_eq!(
        confirmed_during, 0,
        "nothing was confirmed while the broker was down"
    );
    assert!(
        report.unavailable > 0,
        "the relay saw the outage: {report:?}"
    );
    assert_eq!(report.dead, 0, "an outage costs no attempt: {report:?}");
    assert_eq!(world.dead().await, 0);
    assert!(resumed < RESUME_BOUND, "resumed after {resumed:?}");
    world.drop_all().await;
}
