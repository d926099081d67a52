//! The inbox crash scenario (issue #11, "the test that proves it"), shared
//! by `fault_inbox_amqp` and `fault_inbox_nats`.
//!
//! Service A records events in PostgreSQL (its outbox table and a business
//! table written in the same transactions: the oracle of what committed;
//! 30% of the transactions roll back). Two relay processes
//! (`outbox-fault-relay`) publish them to RabbitMQ or NATS JetStream. Two
//! consumer processes of service B (`outbox-test-consumer`) consume them
//! through B's inbox table into B's business table, which has no unique
//! key. While that runs, relay and consumer processes are killed with
//! SIGKILL and started again, the consumers' PostgreSQL connections are
//! terminated, and (RabbitMQ scenario) the broker is killed with SIGKILL
//! and started again once. At the end B's business table must hold exactly one row per committed
//! event, with its number.

#![allow(dead_code)] // Reason: each of the two test binaries uses one broker's half.
#![allow(unreachable_pub)] // Reason: shared by two test crates through `mod inbox_fault_support`.

mod broker;
mod fleet;
mod service_a;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use outbox::inbox::Inbox;
use sqlx::PgPool;
use uuid::Uuid;

use crate::fault_support::{Rng, ensure_postgres, ensure_rabbit, pool, unique};
pub use broker::Broker;
use broker::BrokerSetup;
use fleet::Fleet;
use service_a::Writers;

/// Events service A commits (transactions that roll back come on top).
pub const EVENTS: usize = 20_000;
/// Relay and consumer processes running at any time.
const PROCESSES: usize = 2;
/// Kill rounds go on at least until B has applied this share of the events
/// (in percent) and every writer is done, so every fault lands mid-stream.
const KILL_UNTIL_PERCENT: usize = 85;
/// Rounds that happen in any case (each kind of fault several times).
const MIN_ROUNDS: usize = 15;
/// The kill rounds stop after this long even if B lags (the drain check
/// then says what is missing).
const KILL_PHASE_LIMIT: Duration = Duration::from_secs(80);
/// Everything is consumed, acknowledged and the outbox empty within this
/// long after the last fault.
const DRAIN_BOUND: Duration = Duration::from_secs(90);

/// The faults injected, counted as they happened.
#[derive(Debug, Default)]
struct Faults {
    relay_kills: usize,
    consumer_kills: usize,
    /// Per consumer kill: B's business rows at the kill, and how many
    /// messages the killed process had taken from the broker without their
    /// effect being committed (a lower bound of what it had in flight).
    consumer_kill_points: Vec<(i64, usize)>,
    /// Rounds of `pg_terminate_backend` on the consumers' connections.
    terminate_rounds: usize,
    /// Connections terminated, and how many of them were in a query or a
    /// transaction at the time.
    terminated: usize,
    terminated_busy: usize,
    broker_kills: usize,
    /// From the broker's SIGKILL until it accepted connections again.
    broker_down: Option<Duration>,
}

/// Runs the scenario against `broker` and asserts the outcome.
pub async fn scenario(broker: Broker) {
    tokio::task::spawn_blocking(|| {
        ensure_postgres();
        ensure_rabbit();
    })
    .await
    .unwrap();
    let label = broker.label();
    let mut rng = Rng::seeded(&format!("inbox crash ({label})"));
    let base = unique("inbox_crash");
    let check = pool(&format!("{base}-check"), 4).await;

    // Service A: outbox + business table; service B: inbox + business table.
    let outbox_table = format!("{base}_a");
    let inbox_table = format!("{base}_inbox");
    let b_business = format!("{base}_b_biz");
    outbox::migrate(&check, &outbox_table).await.unwrap();
    execute(
        &check,
        &format!(
            "CREATE TABLE \"{outbox_table}_biz\" (event_id UUID PRIMARY KEY, n BIGINT NOT NULL)"
        ),
    )
    .await;
    outbox::inbox::migrate(&check, &inbox_table).await.unwrap();
    // No unique key: an effect applied twice shows as two rows.
    execute(
        &check,
        &format!("CREATE TABLE \"{b_business}\" (event_id UUID NOT NULL, n BIGINT NOT NULL)"),
    )
    .await;
    let setup = BrokerSetup::create(broker, &base).await;
    let consumer_app = format!("{base}-b");
    let mut fleet = Fleet::new(
        &base,
        &setup,
        &outbox_table,
        &inbox_table,
        &b_business,
        &consumer_app,
    );

    let started = Instant::now();
    let writers = Writers::start(&base, &outbox_table, EVENTS, &mut rng).await;
    for _ in 0..PROCESSES {
        fleet.spawn_relay();
        fleet.spawn_consumer();
    }

    // The faults, until B has applied most of the events.
    let mut faults = Faults::default();
    let broker_round = MIN_ROUNDS / 2;
    let mut round = 0;
    loop {
        tokio::time::sleep(rng.millis(250, 800)).await;
        let applied = count(&check, &b_business).await;
        let committed = writers.committed();
        if round >= MIN_ROUNDS
            && writers.done()
            && usize::try_from(applied).unwrap() * 100 >= committed * KILL_UNTIL_PERCENT
        {
            break;
        }
        if started.elapsed() > KILL_PHASE_LIMIT {
            eprintln!(
                "{label}: kill phase stopped at its limit ({applied} of {committed} applied)"
            );
            break;
        }
        if round == broker_round && setup.broker == Broker::Amqp {
            faults.broker_down = Some(kill_rabbit().await);
            faults.broker_kills += 1;
        }
        match round % 5 {
            0 | 2 => {
                let slot = usize::try_from(rng.below(PROCESSES as u64)).unwrap();
                let delivered = fleet.kill_consumer(slot);
                let in_flight = delivered.len() - applied_of(&check, &b_business, &delivered).await;
                faults.consumer_kill_points.push((applied, in_flight));
                faults.consumer_kills += 1;
                fleet.spawn_consumer_at(slot);
            }
            1 | 3 => {
                let slot = usize::try_from(rng.below(PROCESSES as u64)).unwrap();
                fleet.kill_relay(slot);
                faults.relay_kills += 1;
                fleet.spawn_relay_at(slot);
            }
            _ => {
                let (all, busy) = terminate_backends(&check, &consumer_app).await;
                faults.terminate_rounds += 1;
                faults.terminated += all;
                faults.terminated_busy += busy;
            }
        }
        round += 1;
    }
    let last_fault = started.elapsed();
    let (committed_by_writers, rolled_back) = writers.finish().await;

    // Service A's oracle: what committed.
    let committed: HashMap<Uuid, i64> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT event_id, n FROM \"{outbox_table}_biz\""
    )))
    .fetch_all(&check)
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(
        committed.len(),
        committed_by_writers,
        "A's business table agrees with the writers"
    );
    assert!(committed.len() >= EVENTS);
    let n = i64::try_from(committed.len()).unwrap();

    // Drained: the outbox is empty, B applied every event, the broker holds
    // nothing (delivered and acknowledged).
    let drain_started = Instant::now();
    loop {
        let outbox_rows = count(&check, &outbox_table).await;
        let applied: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(DISTINCT event_id) FROM \"{b_business}\""
        )))
        .fetch_one(&check)
        .await
        .unwrap();
        if outbox_rows == 0 && applied >= n && setup.unsettled().await == Some(0) {
            break;
        }
        assert!(
            drain_started.elapsed() < DRAIN_BOUND,
            "{label}: not drained {DRAIN_BOUND:?} after the last fault: {outbox_rows} rows in the outbox, \
             {applied} of {n} events applied by B, {:?} messages unsettled in the broker",
            setup.unsettled().await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let drained_after = drain_started.elapsed();

    // B's effects, exactly.
    let rows: Vec<(Uuid, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT event_id, n FROM \"{b_business}\""
    )))
    .fetch_all(&check)
    .await
    .unwrap();
    let mut applied: HashMap<Uuid, usize> = HashMap::new();
    let mut unexpected = Vec::new();
    for (id, number) in &rows {
        match committed.get(id) {
            Some(want) => {
                assert_eq!(
                    number, want,
                    "B's row for {id} carries the committed number"
                );
                *applied.entry(*id).or_default() += 1;
            }
            None => unexpected.push(*id),
        }
    }
    let doubled: Vec<_> = applied
        .iter()
        .filter(|(_, k)| **k > 1)
        .map(|(id, k)| (*id, *k))
        .collect();
    let lost: Vec<_> = committed
        .keys()
        .filter(|id| !applied.contains_key(id))
        .copied()
        .collect();
    let rolled_back_ids: HashSet<Uuid> = rolled_back.iter().copied().collect();
    let from_rollbacks = unexpected
        .iter()
        .filter(|id| rolled_back_ids.contains(id))
        .count();
    let inbox = Inbox::builder(check.clone())
        .table(inbox_table.clone())
        .migrate(false)
        .build()
        .await
        .unwrap();
    let stats = inbox.stats().await.unwrap();
    let outbox_rows = count(&check, &outbox_table).await;

    // Stop the consumers gracefully: each prints its report and exits 0.
    let reports = fleet.stop_consumers().await;
    let unsettled_after_stop = setup.unsettled().await;
    let deliveries = fleet.deliveries();
    let distinct_deliveries = deliveries.iter().collect::<HashSet<_>>().len();
    let redeliveries = deliveries.len() - distinct_deliveries;
    drop(fleet);

    let in_flight_kills = faults
        .consumer_kill_points
        .iter()
        .filter(|&&(at, in_flight)| in_flight > 0 && at > 0 && at < n)
        .count();
    let max_in_flight = faults
        .consumer_kill_points
        .iter()
        .map(|p| p.1)
        .max()
        .unwrap_or(0);
    eprintln!(
        "inbox crash ({label}): {n} events committed by A ({} rolled back), {} rows in B's business table \
         ({} doubled, {} lost, {} from rolled-back transactions, {} unknown); inbox: {} processed, {} dead, {} retrying; \
         outbox rows left {outbox_rows}; faults over {last_fault:?}: {} relay SIGKILLs, {} consumer SIGKILLs \
         ({in_flight_kills} with messages in flight, up to {max_in_flight}; B's rows at each kill: {:?}), \
         {} consumer connections terminated in {} rounds ({} busy), {} broker SIGKILL(s) (down {:?}); \
         {} deliveries to consumers, {redeliveries} redeliveries; surviving consumers' reports: {reports:?}; \
         drained {drained_after:?} after the last fault; total {:?}",
        rolled_back.len(),
        rows.len(),
        doubled.len(),
        lost.len(),
        from_rollbacks,
        unexpected.len(),
        stats.processed,
        stats.dead,
        stats.retrying,
        faults.relay_kills,
        faults.consumer_kills,
        faults
            .consumer_kill_points
            .iter()
            .map(|p| p.0)
            .collect::<Vec<_>>(),
        faults.terminated,
        faults.terminate_rounds,
        faults.terminated_busy,
        faults.broker_kills,
        faults.broker_down,
        deliveries.len(),
        started.elapsed(),
    );

    // Exactly once: zero lost, zero doubled, zero from rolled-back
    // transactions.
    assert!(
        lost.is_empty(),
        "{} committed events never applied: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    assert!(
        doubled.is_empty(),
        "{} events applied more than once: {:?}",
        doubled.len(),
        &doubled[..doubled.len().min(10)]
    );
    assert_eq!(
        from_rollbacks, 0,
        "events of rolled-back transactions were applied"
    );
    assert!(
        unexpected.is_empty(),
        "rows for ids A never committed: {:?}",
        &unexpected[..unexpected.len().min(10)]
    );
    assert_eq!(rows.len(), committed.len(), "one row per committed event");
    assert_eq!(
        stats.processed,
        u64::try_from(n).unwrap(),
        "the inbox kept every id once"
    );
    assert_eq!(stats.dead, 0, "no dead letter");
    assert_eq!(stats.retrying, 0, "no message left failing");
    assert_eq!(stats.requeued, 0);
    assert_eq!(outbox_rows, 0, "the outbox is empty");
    assert_eq!(
        unsettled_after_stop,
        Some(0),
        "the broker holds nothing after the consumers stopped"
    );
    assert!(
        reports.iter().all(|r| r.dead == 0),
        "no consumer made a dead letter: {reports:?}"
    );

    // The faults really happened, and consumer kills landed mid-stream.
    assert!(faults.relay_kills > 0 && faults.consumer_kills > 0);
    assert!(
        faults.terminated > 0,
        "no consumer connection was terminated"
    );
    if setup.broker == Broker::Amqp {
        assert_eq!(faults.broker_kills, 1, "RabbitMQ was killed once");
    }
    assert!(
        in_flight_kills > 0,
        "no consumer kill landed while it had messages in flight: {:?}",
        faults.consumer_kill_points
    );
    assert!(
        redeliveries > 0,
        "a killed consumer's messages were delivered again"
    );

    drop_tables(&check, &outbox_table, &inbox_table, &b_business).await;
    setup.delete().await;
    check.close().await;
}

async fn execute(pool: &PgPool, sql: &str) {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
        .unwrap();
}

async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM \"{table}\""
    )))
    .fetch_one(pool)
    .await
    .unwrap()
}

/// How many of `ids` have their effect in B's business table.
async fn applied_of(pool: &PgPool, b_business: &str, ids: &HashSet<Uuid>) -> usize {
    let ids: Vec<Uuid> = ids.iter().copied().collect();
    let applied: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(DISTINCT event_id) FROM \"{b_business}\" WHERE event_id = ANY($1)"
    )))
    .bind(&ids)
    .fetch_one(pool)
    .await
    .unwrap();
    usize::try_from(applied).unwrap()
}

/// Terminates every PostgreSQL backend of the consumer processes; returns
/// how many, and how many of them were running a query or a transaction.
async fn terminate_backends(pool: &PgPool, application_name: &str) -> (usize, usize) {
    let rows: Vec<(Option<String>, bool)> = sqlx::query_as(
        "SELECT state, pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = $1 AND pid <> pg_backend_pid()",
    )
    .bind(application_name)
    .fetch_all(pool)
    .await
    .unwrap();
    let killed = rows.iter().filter(|(_, ok)| *ok);
    let busy = killed
        .clone()
        .filter(|(state, _)| state.as_deref().is_some_and(|s| s != "idle"))
        .count();
    (killed.count(), busy)
}

/// SIGKILLs the RabbitMQ node and starts it again 1 s later; returns how
/// long it accepted no connections.
async fn kill_rabbit() -> Duration {
    tokio::task::spawn_blocking(|| {
        let killed = crate::fault_support::RabbitKill::kill();
        let down = Instant::now();
        std::thread::sleep(Duration::from_secs(1));
        killed.restart() - down
    })
    .await
    .unwrap()
}

async fn drop_tables(pool: &PgPool, outbox_table: &str, inbox_table: &str, b_business: &str) {
    let a = outbox_table;
    execute(
        pool,
        &format!(
            "DROP TABLE IF EXISTS \"{a}\", \"{a}_schema\", \"{a}_blocked\", \"{a}_biz\", \
             \"{inbox_table}\", \"{inbox_table}_schema\", \"{b_business}\""
        ),
    )
    .await;
}
