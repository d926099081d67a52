//! The RabbitMQ side of a scenario: the durable queue, the publisher the
//! relays use, and a real lapin consumer whose messages are compared with
//! what was committed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use outbox::publisher::amqp::AmqpPublisher;
use uuid::Uuid;

use super::{Tick, tick};

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
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
