//! The inbox's RabbitMQ source end to end: an outbox on PostgreSQL, the
//! relay with `publisher::amqp`, the local RabbitMQ (`AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`), `inbox.consume(..).run(AmqpSource, ..)`
//! into a business table on PostgreSQL (`DATABASE_URL`). Each test declares
//! its own exchange and queue and its own tables (uuid names) and removes
//! them at the end.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use outbox::inbox::amqp::AmqpSource;
use outbox::inbox::{ConsumeError, ConsumeReport, Consumers, Inbox, Tx};
use outbox::publisher::amqp::{
    AmqpPublisher, CORRELATION_ID_HEADER, STREAM_KEY_HEADER, VERSION_HEADER,
};
use outbox::{Backoff, Error, Metadata, Outbox, Publishers, Recorded};
use serde::{Deserialize, Serialize};
use sqlx::{AssertSqlSafe, PgPool, Postgres};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// Version 2 on both sides: the version travels as a header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderPlaced {
    order: i64,
    note: String,
}

impl outbox::Event for OrderPlaced {
    const NAME: &'static str = "inbox_amqp.order_placed";
    const VERSION: u32 = 2;
}

/// How long any one wait of these tests may take before it fails.
const PATIENCE: Duration = Duration::from_secs(30);

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into())
}

/// One row of the business table: what the consumer saw.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Effect {
    event_id: Uuid,
    name: String,
    order: i64,
    stream_key: Option<String>,
    headers: BTreeMap<String, String>,
    correlation_id: Option<Uuid>,
    causation_id: Option<Uuid>,
    /// The event version the consumer received.
    version: i64,
}

/// What a test recorded in the outbox, by event id.
type Expected = HashMap<Uuid, Effect>;

/// A test's own tables, exchange and queue, and a lapin client of its own.
struct Setup {
    pool: PgPool,
    outbox_table: String,
    inbox_table: String,
    business: String,
    exchange: String,
    queue: String,
    _connection: Connection,
    channel: Channel,
}

impl Setup {
    async fn new() -> Self {
        // Table names stay under the library's 48 bytes.
        let id = Uuid::new_v4().simple().to_string()[..16].to_owned();
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(12)
            .connect(&database_url())
            .await
            .expect("PostgreSQL at DATABASE_URL");
        let business = format!("inbox_amqp_biz_{id}");
        // Not unique on event_id: an effect applied twice shows as two rows.
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE \"{business}\" (event_id UUID NOT NULL, name TEXT NOT NULL, \
             order_no BIGINT NOT NULL, stream_key TEXT, headers TEXT NOT NULL, \
             correlation_id UUID, causation_id UUID, version BIGINT NOT NULL)"
        )))
        .execute(&pool)
        .await
        .unwrap();
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ at AMQP_URL");
        let channel = connection.create_channel().await.unwrap();
        let exchange = format!("inbox-amqp-{id}");
        let queue = format!("inbox-amqp-{id}");
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        Self {
            pool,
            outbox_table: format!("inbox_amqp_outbox_{id}"),
            inbox_table: format!("inbox_amqp_inbox_{id}"),
            business,
            exchange,
            queue,
            _connection: connection,
            channel,
        }
    }

    async fn outbox(&self) -> Outbox<Postgres> {
        Outbox::builder(self.pool.clone())
            .table(self.outbox_table.as_str())
            .build()
            .await
            .unwrap()
    }

    /// The inbox; `backoff` between the attempts of a failing message.
    async fn inbox(&self, backoff: Backoff) -> Inbox<Postgres> {
        Inbox::builder(self.pool.clone())
            .table(self.inbox_table.as_str())
            .backoff(backoff)
            .build()
            .await
            .unwrap()
    }

    async fn source(&self, prefetch: u16) -> AmqpSource {
        AmqpSource::builder(amqp_url(), self.queue.as_str())
            .prefetch(prefetch)
            .build()
            .await
            .unwrap()
    }

    /// Records `n` events in transactions of five with stream keys, headers
    /// and correlation/causation ids (and one rolled-back transaction).
    async fn record(&self, outbox: &Outbox<Postgres>, n: i64) -> Expected {
        let mut expected = Expected::new();
        let mut tx = self.pool.begin().await.unwrap();
        for order in 0..n {
            let stream_key = format!("customer-{}", order % 4);
            let correlation = Uuid::new_v4();
            let causation = Uuid::new_v4();
            let meta = Metadata::new()
                .stream_key(stream_key.clone())
                .header("tenant", "acme")
                .header("seq", order.to_string())
                .correlation_id(correlation)
                .causation_id(causation);
            let event_id = outbox
                .record_with(
                    &mut *tx,
                    &OrderPlaced {
                        order,
                        note: format!("order {order}"),
                    },
                    meta,
                )
                .await
                .unwrap()
                .event_id()
                .unwrap();
            let headers = BTreeMap::from([
                ("seq".to_owned(), order.to_string()),
                ("tenant".to_owned(), "acme".to_owned()),
            ]);
            expected.insert(
                event_id,
                Effect {
                    event_id,
                    name: "inbox_amqp.order_placed".to_owned(),
                    order,
                    stream_key: Some(stream_key),
                    headers,
                    correlation_id: Some(correlation),
                    causation_id: Some(causation),
                    version: 2,
                },
            );
            if order % 5 == 4 {
                tx.commit().await.unwrap();
                tx = self.pool.begin().await.unwrap();
            }
        }
        tx.commit().await.unwrap();
        // Rolled back: never published, never consumed.
        let mut doomed = self.pool.begin().await.unwrap();
        let ghost = OrderPlaced {
            order: -1,
            note: "rolled back".to_owned(),
        };
        outbox.record(&mut *doomed, &ghost).await.unwrap();
        doomed.rollback().await.unwrap();
        expected
    }

    /// Starts the relay publishing the outbox to the test's exchange.
    fn relay(&self, outbox: &Outbox<Postgres>) -> Stoppable<outbox::Report> {
        let rabbit = AmqpPublisher::builder(amqp_url())
            .exchange(self.exchange.as_str())
            .build()
            .unwrap();
        let publishers = Publishers::builder().fallback(rabbit).build().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(
            outbox
                .relay(publishers)
                .poll_interval(Duration::from_millis(50))
                .run(async {
                    let _ = stopped.await;
                }),
        );
        Stoppable { stop, task }
    }

    /// Starts a consumer loop of `inbox` on the test's queue.
    async fn consume(
        &self,
        inbox: &Inbox<Postgres>,
        consumers: Consumers<Postgres>,
        in_flight: u16,
    ) -> Stoppable<ConsumeReport> {
        let source = self.source(in_flight).await;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(
            inbox
                .consume(consumers)
                .max_in_flight(usize::from(in_flight))
                .poll_interval(Duration::from_millis(100))
                .run(source, async {
                    let _ = stopped.await;
                }),
        );
        Stoppable { stop, task }
    }

    /// Every business row.
    async fn effects(&self) -> Vec<Effect> {
        let rows: Vec<(
            Uuid,
            String,
            i64,
            Option<String>,
            String,
            Option<Uuid>,
            Option<Uuid>,
            i64,
        )> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT event_id, name, order_no, stream_key, headers, correlation_id, \
                 causation_id, version FROM \"{}\" ORDER BY order_no",
            self.business
        )))
        .fetch_all(&self.pool)
        .await
        .unwrap();
        rows.into_iter()
            .map(
                |(
                    event_id,
                    name,
                    order,
                    stream_key,
                    headers,
                    correlation_id,
                    causation_id,
                    version,
                )| Effect {
                    event_id,
                    name,
                    order,
                    stream_key,
                    headers: serde_json::from_str(&headers).unwrap(),
                    correlation_id,
                    causation_id,
                    version,
                },
            )
            .collect()
    }

    async fn count(&self) -> usize {
        let (n,): (i64,) = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT count(*) FROM \"{}\"",
            self.business
        )))
        .fetch_one(&self.pool)
        .await
        .unwrap();
        usize::try_from(n).unwrap()
    }

    /// Waits until the business table holds exactly `n` rows (fails on more).
    async fn wait_for_rows(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let count = self.count().await;
            assert!(
                count <= n,
                "{count} business rows, more than the {n} expected"
            );
            if count == n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{count} of {n} business rows after {PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// (ready messages, consumers) of the queue, by a passive declare.
    async fn depth(&self) -> (u32, u32) {
        let queue = self
            .channel
            .queue_declare(
                self.queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        (queue.message_count(), queue.consumer_count())
    }

    /// The ready messages once no consumer is left (a stopped loop's
    /// connection closes in the background; until it has, its unacked
    /// messages are not back in the queue).
    async fn depth_without_consumers(&self) -> u32 {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let (messages, consumers) = self.depth().await;
            if consumers == 0 {
                return messages;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the stopped loop's consumer is still subscribed after {PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Publishes one message by hand to the queue (default exchange).
    async fn publish_raw(&self, properties: BasicProperties, body: &[u8]) {
        self.channel
            .basic_publish(
                "".into(),
                self.queue.as_str().into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    async fn cleanup(self) {
        self.channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
        self.channel
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await
            .unwrap();
        let (outbox, inbox, business) = (&self.outbox_table, &self.inbox_table, &self.business);
        sqlx::query(AssertSqlSafe(format!(
            "DROP TABLE IF EXISTS \"{outbox}\", \"{outbox}_schema\", \"{outbox}_blocked\", \
             \"{inbox}\", \"{inbox}_schema\", \"{business}\""
        )))
        .execute(&self.pool)
        .await
        .unwrap();
        self.pool.close().await;
    }
}

/// A spawned loop and the way to stop it.
struct Stoppable<T> {
    stop: oneshot::Sender<()>,
    task: JoinHandle<T>,
}

impl<T> Stoppable<T> {
    async fn stop(self) -> T {
        let _ = self.stop.send(());
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("the loop stops")
            .unwrap()
    }
}

/// Which messages a consumer holds forever inside its transaction (the
/// "crash" test), and the ids it held.
#[derive(Default)]
struct Gate {
    hold_every: Option<i64>,
    held: Mutex<Vec<Uuid>>,
    holding: AtomicUsize,
}

/// The business consumer: one row per event, with what it received.
fn consumers(business: &str, gate: Arc<Gate>) -> Consumers<Postgres> {
    let business: Arc<str> = Arc::from(business);
    Consumers::builder()
        .on(
            move |tx: &mut Tx<Postgres>, placed: Recorded<OrderPlaced>| {
                let business = Arc::clone(&business);
                let gate = Arc::clone(&gate);
                Box::pin(async move {
                    sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO \"{business}\" (event_id, name, order_no, stream_key, headers, \
                     correlation_id, causation_id, version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                )))
                .bind(placed.event_id())
                .bind(placed.name())
                .bind(placed.event().order)
                .bind(placed.stream_key())
                .bind(serde_json::to_string(placed.headers()).unwrap())
                .bind(placed.correlation_id())
                .bind(placed.causation_id())
                .bind(i64::from(placed.version()))
                .execute(&mut **tx)
                .await?;
                    if gate
                        .hold_every
                        .is_some_and(|every| placed.event().order % every == 0)
                    {
                        gate.held.lock().unwrap().push(placed.event_id());
                        gate.holding.fetch_add(1, Ordering::SeqCst);
                        // Never commits: the process "dies" with this open.
                        std::future::pending::<()>().await;
                    }
                    Ok::<(), ConsumeError>(())
                })
            },
        )
        .build()
        .unwrap()
}

/// Every recorded event has exactly one business row, equal to what was recorded.
fn assert_exactly_once(effects: &[Effect], expected: &Expected) {
    assert_eq!(effects.len(), expected.len(), "one row per event");
    let mut seen = HashSet::new();
    for effect in effects {
        assert!(
            seen.insert(effect.event_id),
            "event {} applied twice",
            effect.event_id
        );
        let wanted = expected
            .get(&effect.event_id)
            .unwrap_or_else(|| panic!("event {} was never recorded", effect.event_id));
        assert_eq!(effect, wanted);
    }
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// The properties `publisher::amqp` writes, for a message published by hand.
fn properties(event_id: Option<Uuid>, name: &str, headers: &[(&str, &str)]) -> BasicProperties {
    let mut table = FieldTable::default();
    for (key, value) in headers {
        table.insert(ShortString::from(*key), text(value));
    }
    let mut properties = BasicProperties::default()
        .with_type(name.into())
        .with_content_type("application/json".into())
        .with_headers(table);
    if let Some(id) = event_id {
        properties = properties.with_message_id(id.to_string().into());
    }
    properties
}

fn payload(order: i64) -> Vec<u8> {
    serde_json::to_vec(&OrderPlaced {
        order,
        note: format!("order {order}"),
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_to_rabbitmq_to_inbox_exactly_once_with_metadata() {
    let setup = Setup::new().await;
    let outbox = setup.outbox().await;
    let inbox = setup.inbox(Backoff::default()).await;
    let expected = setup.record(&outbox, 40).await;

    let consuming = setup
        .consume(&inbox, consumers(&setup.business, Arc::default()), 8)
        .await;
    let relay = setup.relay(&outbox);
    setup.wait_for_rows(expected.len()).await;
    let published = relay.stop().await;
    let report = consuming.stop().await;

    assert_eq!(published.published, 40);
    assert_exactly_once(&setup.effects().await, &expected);
    assert_eq!(report.processed, 40, "{report:?}");
    assert_eq!(
        (
            report.duplicates,
            report.dead,
            report.retries,
            report.ack_failures
        ),
        (0, 0, 0, 0),
        "{report:?}"
    );
    let stats = inbox.stats().await.unwrap();
    assert_eq!((stats.processed, stats.dead), (40, 0));
    assert_eq!(
        setup.depth_without_consumers().await,
        0,
        "every message acked"
    );
    setup.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_crash_mid_way_is_redelivered_and_applied_exactly_once() {
    let setup = Setup::new().await;
    let outbox = setup.outbox().await;
    let inbox = setup.inbox(Backoff::default()).await;
    let expected = setup.record(&outbox, 30).await;
    let relay = setup.relay(&outbox);

    // First process: every fifth event blocks inside its transaction.
    let gate = Arc::new(Gate {
        hold_every: Some(5),
        ..Gate::default()
    });
    let first = setup
        .consume(&inbox, consumers(&setup.business, Arc::clone(&gate)), 8)
        .await;
    // Orders 0, 5, .., 25 hold; the other 24 commit through the free slots.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while gate.holding.load(Ordering::SeqCst) < 6 || setup.count().await < 24 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first process never got busy"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The crash: the loop, its open transactions and its connection go away
    // without a word to the broker.
    first.task.abort();
    assert!(first.task.await.unwrap_err().is_cancelled());
    let committed = setup.count().await;
    let held = gate.held.lock().unwrap().clone();
    assert_eq!(committed, 24, "the crash landed mid-way");
    assert_eq!(held.len(), 6, "six messages unacked in flight at the crash");

    // Second process: RabbitMQ redelivers what the first never acked.
    let second = setup
        .consume(&inbox, consumers(&setup.business, Arc::default()), 8)
        .await;
    setup.wait_for_rows(expected.len()).await;
    relay.stop().await;
    let report = second.stop().await;

    let effects = setup.effects().await;
    assert_exactly_once(&effects, &expected);
    for id in &held {
        assert_eq!(
            effects.iter().filter(|e| e.event_id == *id).count(),
            1,
            "held message {id} applied once, after its redelivery"
        );
    }
    assert_eq!(
        usize::try_from(report.processed).unwrap(),
        expected.len() - committed,
        "the second process applied exactly what the first had not committed: {report:?}"
    );
    assert_eq!(report.dead, 0, "{report:?}");
    assert_eq!(setup.depth_without_consumers().await, 0);
    setup.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_published_twice_is_applied_once() {
    let setup = Setup::new().await;
    let inbox = setup.inbox(Backoff::default()).await;
    let twice = Uuid::new_v4();
    let last = Uuid::new_v4();
    let headers = [(STREAM_KEY_HEADER, "customer-7"), ("tenant", "acme")];
    for _ in 0..2 {
        setup
            .publish_raw(
                properties(Some(twice), "inbox_amqp.order_placed", &headers),
                &payload(7),
            )
            .await;
    }
    setup
        .publish_raw(
            properties(Some(last), "inbox_amqp.order_placed", &headers),
            &payload(8),
        )
        .await;

    // One at a time, so the last row means the copies before it are settled.
    let consuming = setup
        .consume(&inbox, consumers(&setup.business, Arc::default()), 1)
        .await;
    setup.wait_for_rows(2).await;
    let report = consuming.stop().await;

    let effects = setup.effects().await;
    assert_eq!(
        effects.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        [twice, last]
    );
    assert_eq!(effects[0].stream_key.as_deref(), Some("customer-7"));
    assert_eq!(
        effects[0].version, 1,
        "no version header: a sender from before versions"
    );
    assert_eq!(
        effects[0].headers,
        BTreeMap::from([("tenant".to_owned(), "acme".to_owned())])
    );
    assert_eq!((report.processed, report.duplicates), (2, 1), "{report:?}");
    assert_eq!(setup.depth_without_consumers().await, 0);
    setup.cleanup().await;
}

/// A payload that does not decode, a message without an id and one of a
/// version newer than the consumer knows (3, an AMQP integer header) are
/// dead letters, acked; one of version 2 (a text header) reaches the
/// consumer as version 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_become_dead_letters_and_are_acked() {
    let setup = Setup::new().await;
    let inbox = setup.inbox(Backoff::default()).await;
    let bad_json = Uuid::new_v4();
    let correlation = Uuid::new_v4();
    setup
        .publish_raw(
            properties(
                Some(bad_json),
                "inbox_amqp.order_placed",
                &[(CORRELATION_ID_HEADER, &correlation.to_string())],
            ),
            b"{not json",
        )
        .await;
    setup
        .publish_raw(
            properties(None, "inbox_amqp.order_placed", &[]),
            &payload(1),
        )
        .await;
    // Version 3, newer than the consumer knows, as an AMQP integer header.
    let newer = Uuid::new_v4();
    let mut table = FieldTable::default();
    table.insert(ShortString::from(VERSION_HEADER), AMQPValue::LongLongInt(3));
    setup
        .publish_raw(
            properties(Some(newer), "inbox_amqp.order_placed", &[]).with_headers(table),
            &payload(3),
        )
        .await;
    let last = Uuid::new_v4();
    setup
        .publish_raw(
            properties(
                Some(last),
                "inbox_amqp.order_placed",
                &[(VERSION_HEADER, "2")],
            ),
            &payload(2),
        )
        .await;

    let consuming = setup
        .consume(&inbox, consumers(&setup.business, Arc::default()), 1)
        .await;
    setup.wait_for_rows(1).await;
    let report = consuming.stop().await;

    assert_eq!((report.processed, report.dead), (1, 3), "{report:?}");
    let dead = inbox.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 3, "{dead:?}");
    let newer = dead.iter().find(|d| d.event_id == newer).unwrap();
    assert!(newer.reason.contains("newer"), "{newer:?}");
    assert_eq!(newer.version, 3, "{newer:?}");
    let undecodable = dead.iter().find(|d| d.event_id == bad_json).unwrap();
    assert!(
        undecodable.reason.contains("does not decode"),
        "{undecodable:?}"
    );
    assert_eq!(undecodable.payload, "{not json");
    assert_eq!(undecodable.correlation_id, Some(correlation));
    assert!(
        dead.iter().any(|d| d.reason.contains("no event id")),
        "{dead:?}"
    );
    let effects = setup.effects().await;
    assert_eq!((effects[0].event_id, effects[0].version), (last, 2));
    assert_eq!(
        setup.depth_without_consumers().await,
        0,
        "dead letters are acked"
    );
    setup.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_messages_are_given_back_at_shutdown() {
    let setup = Setup::new().await;
    // A long backoff: a failed message is held, unacked, until shutdown.
    let inbox = setup.inbox(Backoff::fixed(Duration::from_hours(1))).await;
    let failing = Consumers::builder()
        .on(|_: &mut Tx<Postgres>, _: Recorded<OrderPlaced>| {
            Box::pin(async { Err(ConsumeError::retry("not today")) })
        })
        .build()
        .unwrap();
    for order in 0..3 {
        setup
            .publish_raw(
                properties(Some(Uuid::new_v4()), "inbox_amqp.order_placed", &[]),
                &payload(order),
            )
            .await;
    }
    let consuming = setup.consume(&inbox, failing, 4).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while inbox.stats().await.unwrap().retrying < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the messages never failed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(setup.depth().await, (0, 1), "all three held, unacked");
    let report = consuming.stop().await;
    assert_eq!((report.retries, report.released), (3, 3), "{report:?}");
    // Given back (`basic.nack` with requeue). RabbitMQ may hand them again
    // to the stopping consumer before its channel closes; they are ready
    // again once it has.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while setup.depth().await != (3, 0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the held messages are not back in the queue: {:?}",
            setup.depth().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // They come back to the next process, which applies them.
    let consuming = setup
        .consume(&inbox, consumers(&setup.business, Arc::default()), 4)
        .await;
    setup.wait_for_rows(3).await;
    let report = consuming.stop().await;
    assert_eq!(report.processed, 3, "{report:?}");
    setup.cleanup().await;
}

#[tokio::test]
async fn a_missing_queue_is_a_clear_error_at_build() {
    let queue = format!("inbox-amqp-missing-{}", Uuid::new_v4().simple());
    let err = AmqpSource::builder(amqp_url(), queue.as_str())
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InboxSource { broker: "amqp", .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&format!("queue `{queue}` does not exist")) && text.contains("404"),
        "{text}"
    );
}
