//! The broker-outage scenario, shared by `fault_broker_outage` (RabbitMQ's
//! application stopped with `rabbitmqctl stop_app`: a graceful stop that
//! closes every connection with `320 CONNECTION_FORCED`) and
//! `fault_broker_kill` (the RabbitMQ node killed with SIGKILL: nothing is
//! closed or flushed, the connections are reset).
//!
//! Two relays drain a backlog into a durable queue while the application
//! keeps recording: the library's relay loop (`Outbox::relay`) and a loop
//! of `Outbox::run` whose publishers the test watches. Once a few thousand
//! events have been confirmed the broker goes down, the application goes on
//! recording, and the broker comes back. Asserted: every committed event
//! arrives (lost = 0), none becomes a dead letter and no attempt is spent
//! (an outage is the destination's, not the events'), nothing is confirmed
//! while the broker is down, both relays' publishers are blocked during the
//! outage (in the process, `Publishers::blocked`, and for every process,
//! `Stats::blocked`) and unblocked at the end, each relay publishes again
//! within [`RESUME_BOUND`] of the broker accepting connections by itself,
//! the backlog drains within [`DRAIN_BOUND`], and the duplicates stay within
//! the batches in flight per relay.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{
    AMQP_PORT, MAX_PAUSE, RabbitGuard, RabbitKill, RunLoop, Tap, World, assert_delivered, backlog,
    consume, ensure_postgres, ensure_rabbit, pool, record_ticks, stop_signal, tally,
    tap_publishers, unique, wait_port,
};

/// How the broker goes down.
#[derive(Debug, Clone, Copy)]
pub enum BrokerFault {
    /// `rabbitmqctl stop_app`, and `start_app` after this long.
    StopApp(Duration),
    /// SIGKILL to the node's `beam.smp`, and `rabbitmq-server -detached`
    /// after this long (the node's boot adds to the outage).
    Kill(Duration),
}

/// Events recorded before the relays start.
const BACKLOG: i64 = 20_000;
/// The application's transactions all along: `WAVE` events every `EVERY`.
const WAVE: i64 = 50;
const EVERY: Duration = Duration::from_millis(100);
/// The relays' batch (the library's default), and how many relays there are.
const BATCH: usize = 100;
const RELAYS: usize = 2;
/// Batches in flight per relay (pipelined publishing, the default).
const IN_FLIGHT: usize = 4;
/// The broker goes down once the relays have confirmed this many events.
const CONFIRMED_BEFORE: usize = 3_000;
/// A confirm that arrived just before the broker went down may be
/// timestamped (by the tap, after the publish returns) a little after.
const MARGIN: Duration = Duration::from_millis(200);
/// Each relay publishes again within this long of the broker accepting
/// connections: a pause of at most [`MAX_PAUSE`] may have just begun, a
/// probe that finds the broker still booting pauses once more, and one
/// second for the relay's wait and the new connection.
pub const RESUME_BOUND: Duration = Duration::from_secs(2 * MAX_PAUSE.as_secs() + 1);
/// Nothing is pending this long after the application's last commit.
pub const DRAIN_BOUND: Duration = Duration::from_secs(30);

/// One look at the blocked publishers.
struct Sample {
    at: Instant,
    /// `Publishers::blocked()` of the `Outbox::run` loop.
    in_process: Vec<String>,
    /// `Stats::blocked`, from the `<table>_blocked` rows the relays keep.
    in_table: Vec<String>,
}

/// Runs the scenario with `fault`; asserts everything the module docs list
/// and prints one line of figures.
#[allow(clippy::too_many_lines)] // Reason: one scenario, read top to bottom.
pub async fn broker_outage(fault: BrokerFault) {
    let (label, prefix) = match fault {
        BrokerFault::StopApp(_) => ("broker outage (stop_app)", "fault_broker"),
        BrokerFault::Kill(_) => ("broker killed (SIGKILL)", "fault_rkill"),
    };
    tokio::task::spawn_blocking(|| {
        ensure_postgres();
        ensure_rabbit();
    })
    .await
    .unwrap();
    let world = World::new(prefix).await;
    let writer = world.builder(world.admin.clone()).build().await.unwrap();
    backlog(&world, &writer, -BACKLOG, BACKLOG).await;

    // Relay A: the library's relay loop. Relay B: `Outbox::run` in a loop.
    let (tap_a, tap_b) = (Tap::new(world.rabbit()), Tap::new(world.rabbit()));
    let (stop, signal) = stop_signal();
    let relay_a = {
        let outbox = world
            .builder(pool(&unique("fault-broker-relay-a"), 4).await)
            .build()
            .await
            .unwrap();
        tokio::spawn(
            outbox
                .relay(tap_publishers(&tap_a))
                .in_flight(IN_FLIGHT)
                .poll_interval(Duration::from_millis(200))
                .run(signal()),
        )
    };
    let relay_b = {
        let outbox = world
            .builder(pool(&unique("fault-broker-relay-b"), 4).await)
            .batch_limit(BATCH)
            .build()
            .await
            .unwrap();
        RunLoop::spawn(outbox, tap_publishers(&tap_b), BATCH)
    };

    // The application records all along, before, during and after the outage.
    let commits: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let (stop_producing, mut producing_stopped) = tokio::sync::watch::channel(false);
    let producer = {
        let app_pool = pool(&unique("fault-broker-app"), 2).await;
        let app = world.builder(app_pool.clone()).build().await.unwrap();
        let (table, commits) = (world.table.clone(), commits.clone());
        tokio::spawn(async move {
            let mut k = 0;
            while !*producing_stopped.borrow() {
                record_ticks(&app, &app_pool, &table, k, WAVE, true)
                    .await
                    .unwrap();
                commits.lock().unwrap().push(Instant::now());
                k += WAVE;
                let _ = tokio::time::timeout(EVERY, producing_stopped.changed()).await;
            }
            k
        })
    };

    // Mid-drain: once the relays have published a few thousand of the backlog.
    let waiting = Instant::now();
    while tap_a.confirmed() + tap_b.confirmed() < CONFIRMED_BEFORE {
        assert!(
            waiting.elapsed() < Duration::from_mins(1),
            "the relays did not start draining"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let confirmed_before = (tap_a.confirmed(), tap_b.confirmed());
    let pending_at_fault = world.pending().await.unwrap();

    // Who is blocked, every 100 ms, from the fault to the end of the drain.
    let (stop_watching, watching_stopped) = tokio::sync::watch::channel(false);
    let watcher = {
        let (publishers, outbox) = (relay_b.publishers(), writer.clone());
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while !*watching_stopped.borrow() {
                let in_process = publishers.blocked();
                let in_table = outbox.stats().await.unwrap().blocked;
                samples.push(Sample {
                    at: Instant::now(),
                    in_process: in_process.iter().map(|b| b.reason.clone()).collect(),
                    in_table: in_table.iter().map(|b| b.reason.clone()).collect(),
                });
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            samples
        })
    };

    // The outage: `down_at` when the broker is surely down, `up_at` when its
    // port first accepted connections again.
    let (down_at, up_at, booted_at) = match fault {
        BrokerFault::StopApp(down_for) => {
            let guard = tokio::task::spawn_blocking(RabbitGuard::stop_app)
                .await
                .unwrap();
            let down_at = Instant::now();
            tokio::time::sleep(down_for).await;
            let port = tokio::task::spawn_blocking(|| wait_port(AMQP_PORT, Duration::from_mins(1)));
            tokio::task::spawn_blocking(move || drop(guard))
                .await
                .unwrap();
            let booted_at = Instant::now();
            let up_at = port
                .await
                .unwrap()
                .expect("RabbitMQ accepts connections again");
            (down_at, up_at, booted_at)
        }
        BrokerFault::Kill(dead_for) => {
            let guard = tokio::task::spawn_blocking(RabbitKill::kill).await.unwrap();
            let down_at = Instant::now();
            tokio::time::sleep(dead_for).await;
            let up_at = tokio::task::spawn_blocking(move || guard.restart())
                .await
                .unwrap();
            (down_at, up_at, Instant::now())
        }
    };
    let down_for = up_at - down_at;
    let confirmed_while_down = tap_a.confirmed_between(down_at + MARGIN, up_at)
        + tap_b.confirmed_between(down_at + MARGIN, up_at);

    // Each relay resumes by itself.
    let resumed = loop {
        if let (Some(a), Some(b)) = (tap_a.first_ok_after(up_at), tap_b.first_ok_after(up_at)) {
            break (a - up_at, b - up_at);
        }
        assert!(
            up_at.elapsed() < RESUME_BOUND * 4,
            "{label}: a relay did not publish again within {:?} of the broker's return \
             (loop: {:?}, run loop: {:?})",
            RESUME_BOUND * 4,
            tap_a.first_ok_after(up_at),
            tap_b.first_ok_after(up_at),
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // The application stops a second later; everything drains.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_producing.send(true).unwrap();
    let recorded = producer.await.unwrap();
    let drained_after = world.wait_drained(DRAIN_BOUND).await;
    stop.send(true).unwrap();
    let report_a = relay_a.await.unwrap();
    let blocked_at_end = relay_b.blocked();
    let report_b = relay_b.stop().await;
    stop_watching.send(true).unwrap();
    let samples = watcher.await.unwrap();
    let table_blocked_at_end = writer.stats().await.unwrap().blocked;

    let during = |s: &&Sample| s.at > down_at + MARGIN && s.at < up_at;
    let blocked_in_process = samples
        .iter()
        .filter(during)
        .filter(|s| !s.in_process.is_empty())
        .count();
    let blocked_in_table = samples
        .iter()
        .filter(during)
        .filter(|s| !s.in_table.is_empty())
        .count();
    let looks = samples.iter().filter(during).count();
    let reason = samples
        .iter()
        .filter(during)
        .find_map(|s| s.in_process.first().cloned())
        .unwrap_or_default();
    let recorded_while_down = commits
        .lock()
        .unwrap()
        .iter()
        .filter(|&&at| at > down_at && at < up_at)
        .count();

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
    eprintln!(
        "{label}: {} events; broker refused connections for {down_for:?} ({:?} until it had booted), \
         {pending_at_fault} pending when it went down, {recorded_while_down} transactions committed \
         meanwhile, {confirmed_while_down} messages confirmed meanwhile; publishers blocked in \
         {blocked_in_process}/{looks} looks in process and {blocked_in_table}/{looks} in \
         <table>_blocked ({reason:.120}); relays published again {:?} (loop) and {:?} (run loop) \
         after the broker accepted connections (bound {RESUME_BOUND:?}, max_pause {MAX_PAUSE:?}), \
         drained {drained_after:?} after the last commit; {} messages consumed, {} duplicates \
         (bound {}), {} lost, {} dead; reports: loop {report_a:?}, run loop {report_b:?}",
        t.events,
        booted_at - down_at,
        resumed.0,
        resumed.1,
        t.received,
        t.duplicates,
        BATCH * IN_FLIGHT * RELAYS,
        t.lost.len(),
        world.dead().await,
    );
    assert_delivered(&t);
    assert_eq!(t.events, usize::try_from(BACKLOG + recorded).unwrap());
    assert!(
        confirmed_before.0 > 0 && confirmed_before.1 > 0,
        "both relays were draining before the outage: {confirmed_before:?}"
    );
    assert!(pending_at_fault > 0, "the outage was mid-drain");
    match fault {
        BrokerFault::StopApp(at_least) | BrokerFault::Kill(at_least) => {
            assert!(down_for >= at_least, "down {down_for:?}");
        }
    }
    assert!(
        recorded_while_down > 0,
        "the application recorded while the broker was down"
    );
    assert_eq!(
        confirmed_while_down, 0,
        "nothing was confirmed while the broker was down"
    );
    assert!(
        blocked_in_process > 0,
        "Publishers::blocked() named the publisher during the outage"
    );
    assert!(
        blocked_in_table > 0,
        "Stats::blocked named the publisher during the outage"
    );
    assert!(
        blocked_at_end.is_empty(),
        "unblocked at the end: {blocked_at_end:?}"
    );
    assert!(
        table_blocked_at_end.is_empty(),
        "no blocked row at the end: {table_blocked_at_end:?}"
    );
    assert!(
        resumed.0 < RESUME_BOUND && resumed.1 < RESUME_BOUND,
        "resumed after {resumed:?}"
    );
    for report in [&report_a, &report_b] {
        assert!(
            report.unavailable > 0,
            "the relay saw the outage: {report:?}"
        );
        assert_eq!(
            (report.retried, report.dead, report.lost),
            (0, 0, 0),
            "an outage costs no attempt and loses no claim: {report:?}"
        );
    }
    assert_eq!(
        report_a.published + report_b.published,
        t.events,
        "each event's publication recorded once"
    );
    assert_eq!(world.dead().await, 0);
    assert!(
        t.duplicates <= BATCH * IN_FLIGHT * RELAYS,
        "{} duplicates: more than the batches in flight per relay",
        t.duplicates
    );
    world.drop_all().await;
}
