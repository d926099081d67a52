//! Kafka as an inbox [`Source`]: a consumer group member, on
//! [rdkafka](https://docs.rs/rdkafka), whose offsets are committed only
//! after the inbox transaction committed.
//!
//! ```no_run
//! use outbox::inbox::kafka::KafkaSource;
//! # async fn demo(inbox: outbox::inbox::Inbox<sqlx::Postgres>, consumers: outbox::inbox::Consumers<sqlx::Postgres>) -> outbox::Result<()> {
//! let source = KafkaSource::builder("127.0.0.1:9092", "billing-service")
//!     .topic("events.billing.invoice_paid")
//!     .build()?;
//! let report = inbox
//!     .consume(consumers)
//!     .max_in_flight(32)
//!     .run(source, std::future::pending())
//!     .await;
//! # Ok(()) }
//! ```
//!
//! # The message
//!
//! What [`publisher::kafka`](crate::publisher::kafka) writes is read back:
//!
//! | Kafka | inbox [`Message`] |
//! |---|---|
//! | value | the payload |
//! | [`EVENT_ID_HEADER`] | the event id (a message without it is a dead letter) |
//! | [`EVENT_NAME_HEADER`] | the event name |
//! | [`VERSION_HEADER`] (`outbox-event-version`) | the event version ([`Entry::version`](crate::Entry::version)): the consumer decodes the payload by it, upcasting an older one. Without it, version 1 (a sender from before versions); a value that is not an integer from 1 makes a dead letter |
//! | [`STREAM_KEY_HEADER`] | the stream key (else the record key, when it is not the event id) |
//! | [`CORRELATION_ID_HEADER`], [`CAUSATION_ID_HEADER`] | the correlation and causation ids |
//! | other headers | the message's headers (values as UTF-8, lossy) |
//!
//! A message of a version newer than its consumer's event type knows (the
//! sender deployed first) is a dead letter whose reason says so: requeue
//! it (`outbox inbox dead requeue`) once a consumer that knows the version
//! runs. An older version is upcast to the consumer's (see
//! [`Event::decode`](crate::Event::decode)).
//!
//! # Offsets
//!
//! Auto-commit is off. A message is *settled* when the inbox is done with
//! it (processed, a duplicate, skipped or a dead letter: its transaction
//! committed). The offset of a partition is committed only up to the first
//! message that is not settled: with `max_in_flight` above 1, messages of
//! one partition finish out of order, and an offset past an unsettled one
//! would lose it in a crash. So a crash, a kill or a rebalance redelivers
//! at most the messages after the last contiguous settled one, and the
//! inbox skips those it had already processed (exactly-once effects).
//!
//! A message the loop gives back at shutdown ([`Acker::release`]) stays
//! uncommitted: the group's next member reads it again. Commits are
//! asynchronous; when the source is dropped (the loop ended) the settled
//! positions are committed once more, synchronously.
//!
//! # Rebalances
//!
//! When partitions are revoked, the source forgets their unsettled
//! messages: their settlement later commits nothing (the new owner starts
//! from the last committed offset and the inbox skips what was already
//! processed). Messages are fetched ahead by librdkafka and never
//! committed before they are settled, so none is lost. Keep the loop's
//! work per message well under `max.poll.interval.ms` (librdkafka's
//! default 5 min): a member that does not ask for messages that long
//! leaves the group (its partitions move, nothing is lost).
//!
//! # Settings, TLS and SASL
//!
//! Any librdkafka consumer setting passes through with
//! [`config`](KafkaSourceBuilder::config); as for the publisher, this build
//! has no TLS nor SCRAM/GSSAPI (see [the publisher
//! docs](crate::publisher::kafka)), and setting values never appear in
//! `Debug` output or errors.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Headers, Message as _};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::{Acker, Delivery, Message, Source, SourceError};
use crate::error::{Error, Result};
use crate::publisher::kafka::shown;
pub use crate::publisher::kafka::{
    CAUSATION_ID_HEADER, CORRELATION_ID_HEADER, EVENT_ID_HEADER, EVENT_NAME_HEADER,
    STREAM_KEY_HEADER, VERSION_HEADER,
};

/// Which partition of which topic.
type Partition = (String, i32);

/// The delivered and settled offsets of the partitions this member owns.
#[derive(Default)]
struct Tracker {
    partitions: HashMap<Partition, Track>,
    /// Bumped at every assignment, so a settlement from before a
    /// rebalance does not count after it.
    generation: u64,
}

struct Track {
    generation: u64,
    /// Delivered, not yet settled.
    unsettled: BTreeSet<i64>,
    /// The offset after the last delivered message.
    next: i64,
    /// The last position committed (or asked to be).
    committed: i64,
}

impl Tracker {
    /// A message was delivered; returns the generation it belongs to.
    fn delivered(&mut self, partition: Partition, offset: i64) -> u64 {
        let generation = self.generation;
        let track = self.partitions.entry(partition).or_insert_with(|| Track {
            generation,
            unsettled: BTreeSet::new(),
            next: offset,
            committed: offset,
        });
        track.unsettled.insert(offset);
        track.next = track.next.max(offset + 1);
        track.generation
    }

    /// A message was settled; returns the position to commit if it moved.
    fn settled(&mut self, partition: &Partition, offset: i64, generation: u64) -> Option<i64> {
        let track = self.partitions.get_mut(partition)?;
        if track.generation != generation || !track.unsettled.remove(&offset) {
            return None;
        }
        let position = track.unsettled.first().copied().unwrap_or(track.next);
        (position > track.committed).then(|| {
            track.committed = position;
            position
        })
    }

    /// Partitions were revoked: forget them.
    fn revoked(&mut self, tpl: &TopicPartitionList) {
        for element in tpl.elements() {
            self.partitions
                .remove(&(element.topic().to_owned(), element.partition()));
        }
    }

    /// Every committed position, to commit again at the end.
    fn positions(&self) -> Vec<(Partition, i64)> {
        self.partitions
            .iter()
            .map(|(partition, track)| (partition.clone(), track.committed))
            .collect()
    }
}

/// The consumer's context: keeps the tracker in step with rebalances and
/// logs failed commits.
struct Context {
    tracker: Arc<Mutex<Tracker>>,
    group: String,
}

impl ClientContext for Context {}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut tracker = self.tracker.lock().unwrap_or_else(PoisonError::into_inner);
        match rebalance {
            Rebalance::Revoke(tpl) => {
                tracing::info!(group = %self.group, partitions = tpl.count(), "Kafka partitions revoked; their unsettled messages go to the next owner");
                tracker.revoked(tpl);
            }
            Rebalance::Assign(tpl) => {
                tracing::info!(group = %self.group, partitions = tpl.count(), "Kafka partitions assigned");
                tracker.generation += 1;
                tracker.revoked(tpl);
            }
            Rebalance::Error(err) => {
                tracing::warn!(group = %self.group, error = %err, "Kafka rebalance failed");
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(err) = result {
            tracing::warn!(group = %self.group, error = %err, "Kafka offset commit failed; the messages after the last committed offset come again and the inbox skips them");
        }
    }
}

type Inner = StreamConsumer<Context>;

/// A Kafka consumer group member as an inbox [`Source`]; see the [module
/// docs](self).
pub struct KafkaSource {
    consumer: Arc<Inner>,
    tracker: Arc<Mutex<Tracker>>,
    brokers: String,
    group: String,
    topics: Vec<String>,
}

impl fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSource")
            .field("brokers", &shown(&self.brokers))
            .field("group", &self.group)
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

/// Configures a [`KafkaSource`]; start with [`KafkaSource::builder`].
#[must_use]
pub struct KafkaSourceBuilder {
    brokers: String,
    group: String,
    topics: Vec<String>,
    config: Vec<(String, String)>,
}

impl fmt::Debug for KafkaSourceBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<&str> = self.config.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("KafkaSourceBuilder")
            .field("brokers", &shown(&self.brokers))
            .field("group", &self.group)
            .field("topics", &self.topics)
            .field("config_keys", &keys)
            .finish()
    }
}

/// Settings the source owns.
const OWNED: [&str; 4] = [
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
];

impl KafkaSource {
    /// Starts configuring a member of the consumer group `group` on the
    /// cluster at `brokers` (a comma-separated `host:port` list).
    pub fn builder(brokers: impl Into<String>, group: impl Into<String>) -> KafkaSourceBuilder {
        KafkaSourceBuilder {
            brokers: brokers.into(),
            group: group.into(),
            topics: Vec::new(),
            config: Vec::new(),
        }
    }
}

impl KafkaSourceBuilder {
    /// Subscribes to this topic (repeatable; at least one).
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topics.push(topic.into());
        self
    }

    /// Sets a librdkafka consumer setting (`auto.offset.reset`,
    /// `session.timeout.ms`, `security.protocol`, `sasl.password`, ...)
    /// over the source's defaults (`auto.offset.reset=earliest`). Values
    /// are never shown. `group.id`, `bootstrap.servers` and the commit
    /// settings are the source's.
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.push((key.into(), value.into()));
        self
    }

    /// Creates the consumer and subscribes (librdkafka joins the group in
    /// the background; an unreachable cluster shows as no messages and
    /// warnings in the log, not as an error here).
    pub fn build(self) -> Result<KafkaSource> {
        let fail = |reason: String| Error::InboxSource {
            broker: "kafka",
            reason,
        };
        if self.brokers.trim().is_empty() {
            return Err(fail("the broker list is empty".to_owned()));
        }
        if self.group.is_empty() {
            return Err(fail("the consumer group is empty".to_owned()));
        }
        if self.topics.is_empty() {
            return Err(fail("no topic: add one with .topic(..)".to_owned()));
        }
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("client.id", "outbox-inbox");
        for (key, value) in &self.config {
            if OWNED.contains(&key.as_str()) {
                return Err(fail(format!(
                    "`{key}` is set by the source, not .config(..)"
                )));
            }
            config.set(key, value);
        }
        let tracker = Arc::new(Mutex::new(Tracker::default()));
        let context = Context {
            tracker: Arc::clone(&tracker),
            group: self.group.clone(),
        };
        let consumer: Inner = config
            .create_with_context(context)
            .map_err(|err| match err {
                KafkaError::ClientConfig(_, _, key, _) => fail(format!(
                    "librdkafka refused the setting `{key}` (unknown key or invalid value)"
                )),
                other => fail(format!("cannot create the Kafka consumer: {other}")),
            })?;
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|err| fail(format!("cannot subscribe to {topics:?}: {err}")))?;
        Ok(KafkaSource {
            consumer: Arc::new(consumer),
            tracker,
            brokers: self.brokers,
            group: self.group,
            topics: self.topics,
        })
    }
}

#[async_trait]
impl Source for KafkaSource {
    async fn next(&mut self) -> Result<Option<Delivery>, SourceError> {
        // Cancel-safe: a message `recv` had not returned stays in
        // librdkafka's queue.
        let message = self
            .consumer
            .recv()
            .await
            .map_err(|err| format!("Kafka consumer of group `{}`: {err}", self.group))?;
        let partition = (message.topic().to_owned(), message.partition());
        let offset = message.offset();
        let inbox_message = message_of(&message);
        drop(message);
        let generation = self
            .tracker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .delivered(partition.clone(), offset);
        Ok(Some(Delivery::new(
            inbox_message,
            KafkaAcker {
                consumer: Arc::clone(&self.consumer),
                tracker: Arc::clone(&self.tracker),
                partition,
                offset,
                generation,
            },
        )))
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        let positions = self
            .tracker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .positions();
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), position) in positions {
            if tpl
                .add_partition_offset(&topic, partition, Offset::Offset(position))
                .is_err()
            {
                return;
            }
        }
        if tpl.count() > 0
            && let Err(err) = self.consumer.commit(&tpl, CommitMode::Sync)
        {
            tracing::debug!(group = %self.group, error = %err, "final Kafka offset commit failed");
        }
    }
}

/// Settles one Kafka message: commits its partition's offset as far as
/// every earlier message is settled.
struct KafkaAcker {
    consumer: Arc<Inner>,
    tracker: Arc<Mutex<Tracker>>,
    partition: Partition,
    offset: i64,
    generation: u64,
}

#[async_trait]
impl Acker for KafkaAcker {
    async fn ack(self: Box<Self>) -> Result<(), SourceError> {
        let position = self
            .tracker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .settled(&self.partition, self.offset, self.generation);
        let Some(position) = position else {
            return Ok(());
        };
        let (topic, partition) = &self.partition;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, *partition, Offset::Offset(position))?;
        self.consumer.commit(&tpl, CommitMode::Async)?;
        Ok(())
    }
}

/// The inbox message of a Kafka message: the table in the module docs.
fn message_of(kafka: &BorrowedMessage<'_>) -> Message {
    let mut message = Message::new(kafka.payload().unwrap_or_default().to_vec());
    let mut stream_key = None;
    let mut event_id = None;
    if let Some(headers) = kafka.headers() {
        for header in headers.iter() {
            let value = String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned();
            let name = header.key;
            let is = |ours: &str| name.eq_ignore_ascii_case(ours);
            if is(EVENT_ID_HEADER) {
                event_id = Some(value.clone());
                message = message.event_id(value);
            } else if is(EVENT_NAME_HEADER) {
                message = message.name(value);
            } else if is(VERSION_HEADER) {
                message = message.version(value);
            } else if is(STREAM_KEY_HEADER) {
                stream_key = Some(value);
            } else if is(CORRELATION_ID_HEADER) {
                message = message.correlation_id(value);
            } else if is(CAUSATION_ID_HEADER) {
                message = message.causation_id(value);
            } else {
                message = message.header(name, value);
            }
        }
    }
    let key = kafka
        .key()
        .map(|key| String::from_utf8_lossy(key).into_owned())
        .filter(|key| Some(key) != event_id.as_ref());
    if let Some(stream_key) = stream_key.or(key) {
        message = message.stream_key(stream_key);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition() -> Partition {
        ("t".to_owned(), 0)
    }

    #[test]
    fn commits_only_past_contiguous_settled_offsets() {
        let mut tracker = Tracker::default();
        let g = tracker.delivered(partition(), 10);
        for offset in 11..15 {
            tracker.delivered(partition(), offset);
        }
        // 12 and 13 finish first: nothing to commit while 10 is open.
        assert_eq!(tracker.settled(&partition(), 12, g), None);
        assert_eq!(tracker.settled(&partition(), 13, g), None);
        assert_eq!(tracker.settled(&partition(), 10, g), Some(11));
        assert_eq!(tracker.settled(&partition(), 11, g), Some(14));
        assert_eq!(tracker.settled(&partition(), 14, g), Some(15));
        // Twice is nothing.
        assert_eq!(tracker.settled(&partition(), 14, g), None);
    }

    #[test]
    fn a_revoked_partition_commits_nothing() {
        let mut tracker = Tracker::default();
        let g = tracker.delivered(partition(), 0);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition("t", 0);
        tracker.revoked(&tpl);
        tracker.generation += 1;
        assert_eq!(tracker.settled(&partition(), 0, g), None);
        // Assigned again: a new track, from the next delivery.
        let g2 = tracker.delivered(partition(), 0);
        assert_ne!(g, g2);
        assert_eq!(tracker.settled(&partition(), 0, g), None);
        assert_eq!(tracker.settled(&partition(), 0, g2), Some(1));
    }

    #[test]
    fn debug_hides_secrets() {
        let builder = KafkaSource::builder("u:s3cret@127.0.0.1:9092", "g")
            .topic("t")
            .config("sasl.password", "s3cret");
        let debug = format!("{builder:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        let err = KafkaSource::builder("127.0.0.1:9092", "g")
            .topic("t")
            .config("no.such.setting", "s3cret")
            .build()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no.such.setting") && !err.contains("s3cret"),
            "{err}"
        );
    }
}
