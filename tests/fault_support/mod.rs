//! What the fault-injection suites (`fault_*`, `faults`, `security`) share:
//! a PostgreSQL outbox with a business table beside it (the business table
//! is the oracle of what was committed: its rows are written in the same
//! transactions as the events and never deleted), a durable RabbitMQ queue
//! with a real lapin consumer, a publisher wrapper that timestamps every
//! confirmed batch, guards that always bring a stopped service back, and a
//! small seeded random generator.

#![allow(dead_code)] // Reason: each test binary uses a different subset of the helpers.
#![allow(unreachable_pub)] // Reason: shared by several test crates through `mod fault_support`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Command;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use outbox::publisher::amqp::AmqpPublisher;
use outbox::{Entry, Event, Metadata, Outbox, PublishResult, Publisher, RawPublisher, Recorded};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};
use uuid::Uuid;

pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_owned())
}

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The event every scenario records: `n` is its number in the scenario,
/// also kept in the business table, so a delivered body can be checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, outbox::Event)]
#[outbox(name = "fault.tick")]
pub struct Tick {
    pub n: i64,
    pub note: String,
}

pub fn tick(n: i64) -> Tick {
    Tick {
        n,
        note: format!("tick {n}: naïve \"quoted\" ✓"),
    }
}

/// A lowercase name no other test uses, valid as a table and a queue name.
pub fn unique(prefix: &str) -> String {
    let rand = Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &rand[..12])
}

/// xorshift64*: small, seeded, reproducible. The seed is printed; set
/// `FAULT_SEED` to replay a run.
pub struct Rng(u64);

impl Rng {
    pub fn seeded(what: &str) -> Self {
        let seed = std::env::var("FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| Uuid::new_v4().as_u64_pair().0 | 1);
        eprintln!("{what}: FAULT_SEED={seed}");
        Self(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// An independent generator seeded from this one.
    pub fn fork(&mut self) -> Self {
        Self(self.next() | 1)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Uniform in `lo..hi` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo))
    }

    /// `true` with probability `percent`/100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A pool whose connections carry `application_name`, so a test can find
/// (and kill) them in `pg_stat_activity`.
pub async fn pool(application_name: &str, max_connections: u32) -> PgPool {
    let options = PgConnectOptions::from_str(&database_url())
        .expect("DATABASE_URL parses")
        .application_name(application_name);
    PgPoolOptions::new()
        .max_connections(max_connections)
        .connect_with(options)
        .await
        .expect("PostgreSQL must be reachable at DATABASE_URL (default postgres://root@127.0.0.1:5432/test)")
}

/// One scenario's world: the outbox table `table`, the business table
/// `{table}_biz (event_id, n)`, and the durable queue `queue` that the
/// relays publish to through the default exchange.
pub struct World {
    pub admin: PgPool,
    pub table: String,
    pub queue: String,
}

impl World {
    pub async fn new(prefix: &str) -> Self {
        let admin = pool(&format!("{prefix}-admin"), 4).await;
        let table = unique(prefix);
        outbox::migrate(&admin, &table).await.unwrap();
        sqlx::query(&format!(
            "CREATE TABLE \"{table}_biz\" (event_id UUID PRIMARY KEY, n BIGINT NOT NULL)"
        ))
        .execute(&admin)
        .await
        .unwrap();
        let queue = table.clone();
        declare_queue(&queue).await;
        Self {
            admin,
            table,
            queue,
        }
    }

    /// An outbox handle on `pool` for this table (no migration: the table exists).
    pub fn builder(&self, pool: PgPool) -> outbox::OutboxBuilder<Postgres> {
        Outbox::builder(pool)
            .table(self.table.clone())
            .migrate(false)
    }

    /// The RabbitMQ publisher every relay of the scenario uses: the default
    /// exchange, routed to the scenario's queue, mandatory, confirmed.
    pub fn rabbit(&self) -> AmqpPublisher {
        publisher_to(&self.queue)
    }

    /// What was committed: the business table, `event_id -> n`.
    pub async fn committed(&self) -> HashMap<Uuid, i64> {
        let rows: Vec<(Uuid, i64)> =
            sqlx::query_as(&format!("SELECT event_id, n FROM \"{}_biz\"", self.table))
                .fetch_all(&self.admin)
                .await
                .unwrap();
        rows.into_iter().collect()
    }

    /// Entries not yet published (pending, claimed or not); `None` while
    /// the database cannot be asked.
    pub async fn pending(&self) -> Option<i64> {
        sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM \"{}\" WHERE status = 'pending'",
            self.table
        ))
        .fetch_one(&self.admin)
        .await
        .ok()
    }

    /// Dead letters.
    pub async fn dead(&self) -> i64 {
        sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM \"{}\" WHERE status = 'dead'",
            self.table
        ))
        .fetch_one(&self.admin)
        .await
        .unwrap()
    }

    /// Waits until no entry is pending; returns how long that took.
    pub async fn wait_drained(&self, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            if self.pending().await == Some(0) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "the outbox did not drain within {within:?}: {:?} pending",
                self.pending().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Drops the tables and the queue.
    pub async fn drop_all(self) {
        let t = &self.table;
        sqlx::query(&format!(
            "DROP TABLE IF EXISTS \"{t}\", \"{t}_schema\", \"{t}_biz\""
        ))
        .execute(&self.admin)
        .await
        .unwrap();
        self.admin.close().await;
        delete_queue(&self.queue).await;
    }
}

/// A RabbitMQ publisher to `queue` through the default exchange.
pub fn publisher_to(queue: &str) -> AmqpPublisher {
    let queue = queue.to_owned();
    AmqpPublisher::builder(amqp_url())
        .routing_key(move |_entry| queue.clone())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Records ticks `first..first + n` and their business rows in one
/// transaction on `pool`, then commits (or rolls back). Returns the event
/// ids with their numbers; an `Err` is whatever failed (the outcome of a
/// commit that failed is unknown: the business table tells).
pub async fn record_ticks(
    outbox: &Outbox<Postgres>,
    pool: &PgPool,
    table: &str,
    first: i64,
    n: i64,
    commit: bool,
) -> Result<Vec<(Uuid, i64)>, String> {
    let mut tx = pool.begin().await.map_err(|e| e.to_string())?;
    let mut batch = outbox.batch();
    let mut ids = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    let mut numbers = Vec::with_capacity(ids.capacity());
    for k in first..first + n {
        let meta = Metadata::new().stream_key(format!("s-{}", k % 16));
        let id = batch
            .push_with(&tick(k), meta)
            .map_err(|e| e.to_string())?
            .event_id()
            .expect("stored");
        ids.push(id);
        numbers.push(k);
    }
    batch.record(&mut tx).await.map_err(|e| e.to_string())?;
    sqlx::query(&format!(
        "INSERT INTO \"{table}_biz\" (event_id, n) SELECT * FROM UNNEST($1::uuid[], $2::bigint[])"
    ))
    .bind(&ids)
    .bind(&numbers)
    .execute(&mut *tx)
    .await
    .map_err(|e| e.to_string())?;
    if commit {
        tx.commit().await.map_err(|e| e.to_string())?;
    } else {
        tx.rollback().await.map_err(|e| e.to_string())?;
    }
    Ok(ids.into_iter().zip(numbers).collect())
}

/// Records `n` ticks in transactions of 1,000; returns when committed.
pub async fn backlog(world: &World, outbox: &Outbox<Postgres>, first: i64, n: i64) {
    let mut k = first;
    while k < first + n {
        let size = 1_000.min(first + n - k);
        record_ticks(outbox, &world.admin, &world.table, k, size, true)
            .await
            .unwrap();
        k += size;
    }
}

// ------------------------------------------------------------- RabbitMQ

pub async fn connect_retrying(within: Duration) -> Connection {
    let deadline = Instant::now() + within;
    loop {
        match Connection::connect(&amqp_url(), ConnectionProperties::default()).await {
            Ok(connection) => return connection,
            Err(err) if Instant::now() < deadline => {
                eprintln!("waiting for RabbitMQ: {err}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(err) => panic!("RabbitMQ did not answer at AMQP_URL: {err}"),
        }
    }
}

/// A durable queue: it and its persistent, confirmed messages survive
/// `rabbitmqctl stop_app` / `start_app`.
pub async fn declare_queue(name: &str) {
    let connection = connect_retrying(Duration::from_secs(30)).await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    connection.close(200, "declared".into()).await.ok();
}

pub async fn delete_queue(name: &str) {
    let connection = connect_retrying(Duration::from_secs(30)).await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_delete(name.into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    connection.close(200, "deleted".into()).await.ok();
}

/// One message as the consumer received it.
#[derive(Debug, Clone)]
pub struct Message {
    pub event_id: Uuid,
    pub kind: Option<String>,
    pub body: Vec<u8>,
    pub headers: BTreeMap<String, Vec<u8>>,
}

fn bytes(value: &AMQPValue) -> Vec<u8> {
    match value {
        AMQPValue::LongString(s) => s.as_bytes().to_vec(),
        AMQPValue::ShortString(s) => s.as_str().as_bytes().to_vec(),
        other => format!("{other:?}").into_bytes(),
    }
}

/// Consumes `queue` with a real lapin consumer until every id of `expected_ids`
/// has arrived and then nothing more for `quiet` (so late duplicates are
/// counted too), or until `within` has passed.
pub async fn consume(
    queue: &str,
    expected_ids: &HashSet<Uuid>,
    quiet: Duration,
    within: Duration,
) -> Vec<Message> {
    let connection = connect_retrying(Duration::from_secs(30)).await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_qos(2_000, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "outbox-fault-check".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + within;
    let mut missing: HashSet<Uuid> = expected_ids.clone();
    let mut received = Vec::with_capacity(expected_ids.len());
    loop {
        let wait = if missing.is_empty() {
            quiet
        } else {
            deadline.saturating_duration_since(Instant::now())
        };
        let Ok(Some(delivery)) = tokio::time::timeout(wait, consumer.next()).await else {
            break;
        };
        let delivery = delivery.expect("consumer delivery");
        let p = &delivery.properties;
        let event_id: Uuid = p
            .message_id()
            .as_ref()
            .expect("message_id is set")
            .as_str()
            .parse()
            .expect("message_id is the event id");
        missing.remove(&event_id);
        received.push(Message {
            event_id,
            kind: p.kind().as_ref().map(ToString::to_string),
            body: delivery.data,
            headers: p
                .headers()
                .as_ref()
                .map(|h| {
                    h.inner()
                        .iter()
                        .map(|(k, v)| (k.to_string(), bytes(v)))
                        .collect()
                })
                .unwrap_or_default(),
        });
    }
    connection.close(200, "consumed".into()).await.ok();
    received
}

/// What a scenario's consumer saw, against what was committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Committed events.
    pub events: usize,
    /// Messages consumed.
    pub received: usize,
    /// Messages beyond the first of each event id.
    pub duplicates: usize,
    /// Committed events never received.
    pub lost: Vec<Uuid>,
    /// Received ids that were never committed.
    pub unexpected: Vec<Uuid>,
}

/// Compares by event id and checks each body against its committed `n`.
pub fn tally(committed: &HashMap<Uuid, i64>, received: &[Message]) -> Tally {
    let mut seen: HashMap<Uuid, usize> = HashMap::new();
    let mut unexpected = Vec::new();
    for m in received {
        match committed.get(&m.event_id) {
            Some(&n) => {
                let body: Tick = serde_json::from_slice(&m.body).expect("a tick body");
                assert_eq!(body, tick(n), "body of {}", m.event_id);
                *seen.entry(m.event_id).or_default() += 1;
            }
            None => unexpected.push(m.event_id),
        }
    }
    let lost = committed
        .keys()
        .filter(|id| !seen.contains_key(id))
        .copied()
        .collect();
    Tally {
        events: committed.len(),
        received: received.len(),
        duplicates: seen.values().map(|n| n - 1).sum(),
        lost,
        unexpected,
    }
}

/// Asserts the promise: every committed event arrived, nothing else did.
pub fn assert_delivered(tally: &Tally) {
    assert!(
        tally.lost.is_empty(),
        "{} committed events never arrived (of {}): {:?}",
        tally.lost.len(),
        tally.events,
        &tally.lost[..tally.lost.len().min(10)]
    );
    assert!(
        tally.unexpected.is_empty(),
        "{} messages were never committed: {:?}",
        tally.unexpected.len(),
        &tally.unexpected[..tally.unexpected.len().min(10)]
    );
}

/// Wraps the RabbitMQ publisher and timestamps every batch that was
/// confirmed, so a test can tell when a relay resumed after a fault.
#[derive(Clone)]
pub struct Tap {
    rabbit: AmqpPublisher,
    log: Arc<Mutex<Vec<(Instant, usize)>>>,
}

impl Tap {
    pub fn new(rabbit: AmqpPublisher) -> Self {
        Self {
            rabbit,
            log: Arc::default(),
        }
    }

    fn note(&self, results: &[PublishResult]) {
        let ok = results.iter().filter(|r| r.is_ok()).count();
        if ok > 0 {
            self.log.lock().unwrap().push((Instant::now(), ok));
        }
    }

    /// When the first publish confirmed after `t` happened.
    pub fn first_ok_after(&self, t: Instant) -> Option<Instant> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|(at, _)| *at)
            .find(|at| *at > t)
    }

    /// Messages confirmed so far.
    pub fn confirmed(&self) -> usize {
        self.log.lock().unwrap().iter().map(|(_, n)| n).sum()
    }

    /// Messages confirmed between `from` and `to`.
    pub fn confirmed_between(&self, from: Instant, to: Instant) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| *at > from && *at <= to)
            .map(|(_, n)| n)
            .sum()
    }
}

impl<E: Event> Publisher<E> for Tap {
    async fn publish(&self, event: &Recorded<E>) -> PublishResult {
        let results = self.publish_batch(std::slice::from_ref(event)).await;
        results.into_iter().next().unwrap_or(Ok(()))
    }

    async fn publish_batch(&self, events: &[Recorded<E>]) -> Vec<PublishResult> {
        let results = Publisher::<E>::publish_batch(&self.rabbit, events).await;
        self.note(&results);
        results
    }
}

impl RawPublisher for Tap {
    async fn publish_raw(&self, entry: &Entry) -> PublishResult {
        let results = self.publish_raw_batch(std::slice::from_ref(entry)).await;
        results.into_iter().next().unwrap_or(Ok(()))
    }

    async fn publish_raw_batch(&self, entries: &[Entry]) -> Vec<PublishResult> {
        let results = self.rabbit.publish_raw_batch(entries).await;
        self.note(&results);
        results
    }
}

/// The publishers of an in-process relay: ticks typed, anything else raw.
pub fn tap_publishers(tap: &Tap) -> outbox::Publishers {
    outbox::Publishers::builder()
        .publisher::<Tick, _>(tap.clone())
        .fallback(tap.clone())
        .build()
        .unwrap()
}

// ------------------------------------------------------ shared services

fn run(program: &str, args: &[&str]) -> bool {
    let started = Instant::now();
    let status = Command::new(program).args(args).status();
    eprintln!(
        "{program} {}: {status:?} in {:?}",
        args.join(" "),
        started.elapsed()
    );
    status.is_ok_and(|s| s.success())
}

pub fn rabbitmqctl(arg: &str) -> bool {
    run("rabbitmqctl", &[arg])
}

/// Starts RabbitMQ's application again when dropped, whatever happened.
pub struct RabbitGuard;

impl RabbitGuard {
    pub fn stop_app() -> Self {
        let guard = Self;
        assert!(rabbitmqctl("stop_app"), "rabbitmqctl stop_app failed");
        guard
    }
}

impl Drop for RabbitGuard {
    fn drop(&mut self) {
        if !rabbitmqctl("start_app") {
            eprintln!("guard: rabbitmqctl start_app failed");
        }
    }
}

/// The local cluster's version directory (`ls /etc/postgresql`).
pub fn pg_version() -> String {
    let mut versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .expect("/etc/postgresql")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    versions.sort();
    versions.pop().expect("a PostgreSQL cluster")
}

pub fn pg_ctlcluster(action: &str) -> bool {
    run(
        "pg_ctlcluster",
        &["--skip-systemctl-redirect", &pg_version(), "main", action],
    )
}

/// Starts the PostgreSQL cluster again when dropped, whatever happened
/// (starting a running cluster only prints that it runs).
pub struct PostgresGuard;

impl PostgresGuard {
    pub fn stop() -> Self {
        let guard = Self;
        assert!(pg_ctlcluster("stop"), "pg_ctlcluster stop failed");
        guard
    }
}

impl Drop for PostgresGuard {
    fn drop(&mut self) {
        if !pg_ctlcluster("start") {
            // Already running, or it failed: `status` says which.
            pg_ctlcluster("status");
        }
    }
}

/// Waits until PostgreSQL accepts a query again.
pub async fn wait_postgres(within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if let Ok(mut conn) =
            <sqlx::PgConnection as sqlx::Connection>::connect(&database_url()).await
            && sqlx::query("SELECT 1").execute(&mut conn).await.is_ok()
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "PostgreSQL did not come back within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A future that completes when a relay loop should stop.
pub type Signal = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// A stop switch for relay loops: `signal()` makes a future for each loop,
/// `stop.send(true)` completes them all.
pub fn stop_signal() -> (tokio::sync::watch::Sender<bool>, impl Fn() -> Signal) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let make = move || {
        let mut rx = rx.clone();
        Box::pin(async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }) as Signal
    };
    (tx, make)
}
