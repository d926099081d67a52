//! Relay crash: relay processes (`outbox-fault-relay`, the library's relay
//! loop publishing to RabbitMQ through `AmqpPublisher`) are killed with SIGKILL at
//! random moments while they drain a PostgreSQL outbox, and started again
//! each time. A real consumer then checks, by event id, that every
//! committed event arrived, and counts the duplicates: there must be some
//! (the proof that kills landed between a broker's confirm and the outcome
//! commit, the window the relays widen with a 20 ms pause), and no more
//! than the batches in flight (4) per kill.
//!
//! Its own test binary with a single test: it starts and kills processes
//! and should not share the machine's two cores with another suite.

mod fault_support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fault_support::{
    Rng, World, amqp_url, assert_delivered, backlog, consume, database_url, record_ticks, tally,
};

/// Kills (SIGKILL) over the run.
const KILLS: usize = 24;
/// Entries per claim in the relay processes: the bound on duplicates per kill.
const BATCH: usize = 100;
/// Batches in flight per relay (pipelined publishing, the default).
const IN_FLIGHT: usize = 4;
/// Events recorded before the relays start; more are added while the
/// backlog runs low, so every kill lands mid-drain.
const BACKLOG: i64 = 10_000;
/// The relays' lease: a killed relay's batch is published again once it expires.
const LEASE: Duration = Duration::from_secs(5);
/// The pause between a batch's confirm and its outcome commit in the relay
/// processes: the window a kill must land in to leave a duplicate.
const SETTLE_DELAY_MS: u64 = 20;
/// Everything is published this long after the last kill: the killed
/// relay's lease, then the rest of the backlog (under 10,000 entries).
const DRAIN_BOUND: Duration = Duration::from_secs(20);

/// Kills the relay processes still running when dropped (a failed test
/// leaves none behind).
struct Relays(Vec<Child>);

impl Drop for Relays {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn(world: &World) -> Child {
    Command::new(env!("CARGO_BIN_EXE_outbox-fault-relay"))
        .arg(&world.table)
        .arg(&world.queue)
        .env("DATABASE_URL", database_url())
        .env("AMQP_URL", amqp_url())
        .env("FAULT_BATCH", BATCH.to_string())
        .env("FAULT_IN_FLIGHT", IN_FLIGHT.to_string())
        .env("FAULT_LEASE_MS", LEASE.as_millis().to_string())
        .env("FAULT_SETTLE_DELAY_MS", SETTLE_DELAY_MS.to_string())
        .env("FAULT_MAX_PAUSE_MS", "2000")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("outbox-fault-relay starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_relay_processes_lose_nothing() {
    let world = World::new("fault_crash").await;
    let outbox = world.builder(world.admin.clone()).build().await.unwrap();
    let mut rng = Rng::seeded("relay crash");
    backlog(&world, &outbox, 0, BACKLOG).await;

    // Keeps at least 3,000 entries pending while the kills go on, so every
    // kill lands mid-drain.
    let (stop_topping, mut stopped) = tokio::sync::watch::channel(false);
    let topper = {
        let (outbox, pool, table) = (outbox.clone(), world.admin.clone(), world.table.clone());
        tokio::spawn(async move {
            let mut recorded = BACKLOG;
            while !*stopped.borrow() {
                let pending: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT COUNT(*) FROM \"{table}\" WHERE status = 'pending'"
                )))
                .fetch_one(&pool)
                .await
                .unwrap();
                if pending < 3_000 {
                    record_ticks(&outbox, &pool, &table, recorded, 1_000, true)
                        .await
                        .unwrap();
                    recorded += 1_000;
                } else {
                    let _ =
                        tokio::time::timeout(Duration::from_millis(50), stopped.changed()).await;
                }
            }
            recorded
        })
    };

    let started = Instant::now();
    let mut relays = Relays(vec![spawn(&world), spawn(&world)]);
    let mut pending_at_kill = Vec::with_capacity(KILLS);
    for _ in 0..KILLS {
        tokio::time::sleep(rng.millis(150, 900)).await;
        let pending = world.pending().await.expect("PostgreSQL answers");
        let victim = usize::try_from(rng.below(2)).unwrap();
        let child = &mut relays.0[victim];
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        pending_at_kill.push(pending);
        relays.0[victim] = spawn(&world);
    }
    stop_topping.send(true).unwrap();
    let recorded = topper.await.unwrap();
    let last_kill = started.elapsed();
    let drained_after = world.wait_drained(DRAIN_BOUND).await;
    drop(relays);

    let committed = world.committed().await;
    assert_eq!(committed.len(), usize::try_from(recorded).unwrap());
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
        "relay crash: {} events, {KILLS} SIGKILLs over {last_kill:?} (pending at each kill: min {}, max {}), \
         {} messages consumed, {} duplicates (bound {} = batch {BATCH} x {IN_FLIGHT} in flight x {KILLS} kills), {} lost; \
         drained {drained_after:?} after the last kill (lease {LEASE:?}, bound {DRAIN_BOUND:?})",
        t.events,
        pending_at_kill.iter().min().unwrap(),
        pending_at_kill.iter().max().unwrap(),
        t.received,
        t.duplicates,
        BATCH * IN_FLIGHT * KILLS,
        t.lost.len(),
    );
    assert_delivered(&t);
    assert!(
        t.duplicates <= BATCH * IN_FLIGHT * KILLS,
        "{} duplicates for {KILLS} kills of {IN_FLIGHT} batches of {BATCH} in flight",
        t.duplicates
    );
    assert!(
        t.duplicates > 0,
        "no kill landed between a confirm and its outcome commit (the {SETTLE_DELAY_MS} ms window)"
    );
    assert!(
        pending_at_kill.iter().all(|&p| p > 0),
        "every kill landed mid-drain: {pending_at_kill:?}"
    );
    assert_eq!(world.dead().await, 0, "a crash costs no attempt");
    world.drop_all().await;
}
