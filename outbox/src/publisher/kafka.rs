//! Kafka publisher, on [rdkafka](https://docs.rs/rdkafka) (the bundled
//! librdkafka).
//!
//! [`KafkaPublisher`] produces every entry it is handed to a topic derived
//! from the event name and waits for its delivery report: an entry counts
//! as published only once the partition leader and its in-sync replicas
//! stored it (`acks=all`). The producer is idempotent by default
//! (`enable.idempotence=true`): a retry inside librdkafka never writes a
//! message twice or out of order. (A batch the relay publishes again after
//! a crash is written again: consumers deduplicate on the event id, as the
//! inbox does.)
//!
//! ```no_run
//! use outbox::publisher::kafka::KafkaPublisher;
//! use outbox::Publishers;
//! # #[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
//! # #[outbox(name = "billing.invoice_paid")]
//! # struct InvoicePaid { amount_cents: i64 }
//! # async fn run<DB: outbox::Backend>(outbox: outbox::Outbox<DB>) -> outbox::Result<()> {
//!
//! // Produces `billing.invoice_paid` to the topic `events.billing.invoice_paid`.
//! let kafka = KafkaPublisher::builder("127.0.0.1:9092")
//!     .topic_prefix("events.")
//!     .build()?;
//!
//! let publishers = Publishers::builder()
//!     .publisher::<InvoicePaid, _>(kafka.clone()) // typed
//!     .fallback(kafka) // and every other event, raw
//!     .build()?;
//! outbox.relay(publishers).run(std::future::pending()).await;
//! # Ok(())
//! # }
//! ```
//!
//! # The message
//!
//! | Kafka             | value                                                 |
//! |-------------------|-------------------------------------------------------|
//! | topic             | prefix + event name, a fixed [`topic`](KafkaPublisherBuilder::topic), or [`topic_fn`](KafkaPublisherBuilder::topic_fn)'s choice |
//! | key               | the stream key (a stream stays in one partition, in order), else the event id |
//! | value             | the payload exactly as stored (JSON text)             |
//! | timestamp         | when the event was recorded (ms)                      |
//! | [`EVENT_ID_HEADER`] | the event id (the consumer's dedupe key)            |
//! | [`EVENT_NAME_HEADER`] | the event name                                    |
//! | [`VERSION_HEADER`] | the event version ([`Entry::version`]), decimal, on every message (`1` too) |
//! | [`STREAM_KEY_HEADER`], [`CORRELATION_ID_HEADER`], [`CAUSATION_ID_HEADER`] | when set |
//! | other headers     | the entry's headers, as given (ours come last)        |
//!
//! The header names are those of the NATS publisher; the inbox's Kafka
//! source ([`inbox::kafka`](crate::inbox::kafka)) reads them back.
//! The payload is the one the version in [`VERSION_HEADER`] wrote (or the
//! typed publisher's own version, with
//! [`publish_upcast`](crate::PublishersBuilder::publish_upcast)): a consumer
//! decodes it by that version.
//!
//! # Failures
//!
//! Every failure has a kind (see "Failure scopes" in [the publisher
//! docs](crate::publisher)): *rejected* costs the entry an attempt and, after
//! the last one, makes it a dead letter; *transient* costs an attempt only
//! while the cluster delivers other messages; *unavailable* costs nothing,
//! blocks the publisher (listed by
//! [`Publishers::blocked`](crate::Publishers::blocked) with the reason) and
//! pauses it until the cluster answers again. A missing topic or a missing
//! permission is a setting to fix, not a bad event: the backlog waits and
//! goes out by itself once it is fixed.
//!
//! | what Kafka (or librdkafka) says | kind | the reason says |
//! |---|---|---|
//! | the delivery report is a success | published | |
//! | `UNKNOWN_TOPIC_OR_PARTITION`, unknown topic (the topic does not exist and the broker does not create it) | unavailable | topic `t` does not exist; create it or fix the topic |
//! | `TOPIC_AUTHORIZATION_FAILED`, `CLUSTER_AUTHORIZATION_FAILED`, SASL or TLS failures, `Authentication` | unavailable | the client may not write to topic `t`, or the login failed |
//! | no delivery within the [`timeout`](KafkaPublisherBuilder::timeout) (`message.timeout.ms`, `MSG_TIMED_OUT`), `REQUEST_TIMED_OUT` | unavailable | no delivery report within the timeout |
//! | transport errors: all brokers down, broker transport failure, name resolution, `NETWORK_EXCEPTION`, `BROKER_NOT_AVAILABLE`, no leader, `NOT_ENOUGH_REPLICAS`, the local queue full | unavailable | librdkafka's error |
//! | a fatal error of the idempotent producer (e.g. `OUT_OF_ORDER_SEQUENCE_NUMBER`, `PRODUCER_FENCED`) | unavailable; the producer is replaced on the next call | librdkafka's error |
//! | `MESSAGE_TOO_LARGE` (over the producer's `message.max.bytes` or the topic's `max.message.bytes`), `INVALID_RECORD`, `CORRUPT_MESSAGE`, `INVALID_TIMESTAMP` | rejected | the broker's error |
//! | (the entry cannot be expressed in Kafka: an invalid topic name) | rejected | what is invalid |
//! | any other error | transient | librdkafka's error |
//!
//! A rejection concerns its entry only; the rest of the batch is delivered.
//! After an unavailable outcome the rest of the batch is given back at no
//! cost (already produced messages may still arrive: they are sent again
//! later, duplicates that the consumer skips).
//!
//! # Batches and connections
//!
//! [`Publisher::publish_batch`] and [`RawPublisher::publish_raw_batch`]
//! produce the whole batch, then await every delivery report, so a batch
//! costs about one round trip (`linger.ms` is 5 by default here). The
//! producer connects in the background; librdkafka reconnects by itself.
//! Clones share one producer.
//!
//! # Settings, TLS and SASL
//!
//! Any librdkafka setting passes through with
//! [`config`](KafkaPublisherBuilder::config) (see librdkafka's
//! `CONFIGURATION.md`). The bundled librdkafka is built without OpenSSL and
//! Cyrus SASL: `sasl_plaintext` with the `PLAIN` mechanism works as built,
//! while `security.protocol=ssl`/`sasl_ssl`, the `SCRAM-SHA-*` mechanisms
//! and `GSSAPI` are refused by librdkafka when the producer is built (a
//! configuration error). They need rdkafka's `ssl` (or `ssl-vendored`) and
//! `gssapi` features, which this crate does not enable: OpenSSL and, for
//! GSSAPI, libsasl2 with its headers on the build machine.
//! Values of settings never appear in `Debug` output or in errors (a
//! `sasl.password` stays secret); only their keys do.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use crate::entry::{Entry, Recorded};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::publisher::{PublishError, PublishResult, Publisher, RawPublisher};

/// Header carrying the event id (the consumer's dedupe key).
pub const EVENT_ID_HEADER: &str = "outbox-event-id";
/// Header carrying the event name.
pub const EVENT_NAME_HEADER: &str = "outbox-event-name";
/// Header carrying the event version ([`Entry::version`]) in decimal, on
/// every message: the version of the event type that wrote the payload.
pub const VERSION_HEADER: &str = "outbox-event-version";
/// Header carrying the entry's stream (aggregate) key, when it has one.
pub const STREAM_KEY_HEADER: &str = "outbox-stream-key";
/// Header carrying the entry's correlation id, when it has one.
pub const CORRELATION_ID_HEADER: &str = "outbox-correlation-id";
/// Header carrying the entry's causation id, when it has one.
pub const CAUSATION_ID_HEADER: &str = "outbox-causation-id";

type TopicFn = dyn Fn(&Entry) -> String + Send + Sync;

enum Topic {
    Prefix(String),
    Fixed(String),
    Custom(Box<TopicFn>),
}

impl Topic {
    fn debug(&self, s: &mut fmt::DebugStruct<'_, '_>) {
        match self {
            Topic::Prefix(prefix) => s.field("topic_prefix", prefix),
            Topic::Fixed(topic) => s.field("topic", topic),
            Topic::Custom(_) => s.field("topic_fn", &"<fn>"),
        };
    }
}

/// Produces entries to Kafka and awaits their delivery reports; see the
/// [module docs](self). Cheap to clone: clones share one producer.
#[derive(Clone)]
pub struct KafkaPublisher {
    inner: Arc<Inner>,
}

struct Inner {
    brokers: String,
    topic: Topic,
    timeout: Duration,
    config: ClientConfig,
    keys: Vec<String>,
    producer: Mutex<Option<FutureProducer>>,
}

impl fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        let mut s = f.debug_struct("KafkaPublisher");
        s.field("brokers", &shown(&inner.brokers));
        inner.topic.debug(&mut s);
        s.field("timeout", &inner.timeout)
            .field("config_keys", &inner.keys)
            .finish_non_exhaustive()
    }
}

/// Configures a [`KafkaPublisher`]; start with [`KafkaPublisher::builder`].
#[must_use]
pub struct KafkaPublisherBuilder {
    brokers: String,
    topic: Topic,
    timeout: Duration,
    config: Vec<(String, String)>,
}

impl fmt::Debug for KafkaPublisherBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("KafkaPublisherBuilder");
        s.field("brokers", &shown(&self.brokers));
        self.topic.debug(&mut s);
        let keys: Vec<&str> = self.config.iter().map(|(k, _)| k.as_str()).collect();
        s.field("timeout", &self.timeout)
            .field("config_keys", &keys)
            .finish()
    }
}

/// A broker list without credentials (`user:pass@host:port` would be a
/// mistake, but one that must not leak).
pub(crate) fn shown(brokers: &str) -> String {
    brokers
        .split(',')
        .map(|broker| {
            let broker = broker.trim();
            match broker.rfind('@') {
                Some(at) => format!("***@{}", &broker[at + 1..]),
                None => broker.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Settings the publisher owns; [`KafkaPublisherBuilder::config`] may not
/// change them.
const OWNED: [&str; 1] = ["bootstrap.servers"];

impl KafkaPublisher {
    /// Starts configuring a publisher for the cluster at `brokers` (a
    /// comma-separated `host:port` list, as `bootstrap.servers`).
    pub fn builder(brokers: impl Into<String>) -> KafkaPublisherBuilder {
        KafkaPublisherBuilder {
            brokers: brokers.into(),
            topic: Topic::Prefix(String::new()),
            timeout: Duration::from_secs(10),
            config: Vec::new(),
        }
    }
}

impl KafkaPublisherBuilder {
    /// Produces to `prefix` + event name (default: no prefix, the event name
    /// itself). Include the separator: `"events."`.
    pub fn topic_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.topic = Topic::Prefix(prefix.into());
        self
    }

    /// Produces every entry to this one topic (replaces any prefix).
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Topic::Fixed(topic.into());
        self
    }

    /// Chooses each entry's topic (replaces any prefix or fixed topic).
    ///
    /// ```
    /// # use outbox::publisher::kafka::KafkaPublisher;
    /// let kafka = KafkaPublisher::builder("127.0.0.1:9092")
    ///     .topic_fn(|entry| entry.name().split('.').next().unwrap_or("events").to_owned())
    ///     .build()?;
    /// # Ok::<(), outbox::Error>(())
    /// ```
    pub fn topic_fn(mut self, topic: impl Fn(&Entry) -> String + Send + Sync + 'static) -> Self {
        self.topic = Topic::Custom(Box::new(topic));
        self
    }

    /// How long a message may take to be delivered, retries included
    /// (librdkafka's `message.timeout.ms`; default 10 s). Past it the
    /// cluster counts as unavailable. Keep it well under the outbox's lease.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets a librdkafka producer setting (`security.protocol`,
    /// `sasl.mechanism`, `sasl.username`, `sasl.password`, `compression.type`,
    /// `linger.ms`, ...), over this publisher's defaults (`acks=all`,
    /// `enable.idempotence=true`, `linger.ms=5`). Values are never shown in
    /// `Debug` or errors. `bootstrap.servers` comes from
    /// [`KafkaPublisher::builder`].
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.push((key.into(), value.into()));
        self
    }

    /// Checks the configuration and builds the publisher. Does not connect
    /// (librdkafka connects in the background on first use).
    pub fn build(self) -> Result<KafkaPublisher> {
        let fail = |reason: String| Error::PublisherConfig {
            publisher: "kafka",
            reason,
        };
        if self.brokers.trim().is_empty() {
            return Err(fail("the broker list is empty".to_owned()));
        }
        if self.timeout.is_zero() {
            return Err(fail("timeout is zero".to_owned()));
        }
        match &self.topic {
            Topic::Prefix(prefix) if !prefix.is_empty() => {
                check_topic(&format!("{prefix}x"))
                    .map_err(|why| fail(format!("topic prefix {prefix:?} is not valid: {why}")))?;
            }
            Topic::Fixed(topic) => {
                check_topic(topic)
                    .map_err(|why| fail(format!("topic {topic:?} is not valid: {why}")))?;
            }
            _ => {}
        }
        let timeout_ms = u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX);
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("message.timeout.ms", timeout_ms.to_string())
            .set("client.id", "outbox");
        let mut keys = Vec::new();
        for (key, value) in &self.config {
            if OWNED.contains(&key.as_str()) {
                return Err(fail(format!(
                    "`{key}` is set by KafkaPublisher::builder, not .config(..)"
                )));
            }
            config.set(key, value);
            keys.push(key.clone());
        }
        let producer = create(&config).map_err(fail)?;
        Ok(KafkaPublisher {
            inner: Arc::new(Inner {
                brokers: self.brokers,
                topic: self.topic,
                timeout: self.timeout,
                config,
                keys,
                producer: Mutex::new(Some(producer)),
            }),
        })
    }
}

/// Creates a producer; the error names the setting but never its value.
fn create(config: &ClientConfig) -> Result<FutureProducer, String> {
    config.create().map_err(|err| match err {
        KafkaError::ClientConfig(_, _, key, _) => {
            format!("librdkafka refused the setting `{key}` (unknown key or invalid value)")
        }
        KafkaError::ClientCreation(why) => format!("cannot create the Kafka producer: {why}"),
        other => format!("cannot create the Kafka producer: {other}"),
    })
}

/// Why `topic` is not a valid Kafka topic name, if it is not.
pub(crate) fn check_topic(topic: &str) -> Result<(), &'static str> {
    if topic.is_empty() {
        return Err("it is empty");
    }
    if topic == "." || topic == ".." {
        return Err("`.` and `..` are not topic names");
    }
    if topic.len() > 249 {
        return Err("it is longer than 249 characters");
    }
    if !topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("only ASCII letters, digits, `.`, `_` and `-` are allowed");
    }
    Ok(())
}

impl KafkaPublisher {
    /// Connects now (fetches the cluster's metadata, within the
    /// [`timeout`](KafkaPublisherBuilder::timeout)), to see a wrong address
    /// at startup and to have the first batch skip the connection.
    /// Publishing works without calling it.
    pub async fn connect(&self) -> Result<(), PublishError> {
        let producer = self.producer()?;
        let timeout = self.inner.timeout;
        let brokers = shown(&self.inner.brokers);
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, timeout)
                .map(drop)
                .map_err(|err| {
                    PublishError::unavailable(format!(
                        "cannot connect to Kafka at {brokers}: {err}"
                    ))
                })
        })
        .await
        .unwrap_or_else(|err| Err(PublishError::unavailable(format!("Kafka connect: {err}"))))
    }

    /// The producer, creating a new one if a fatal error retired the last.
    fn producer(&self) -> Result<FutureProducer, PublishError> {
        let mut producer = self
            .inner
            .producer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(producer) = &*producer {
            return Ok(producer.clone());
        }
        let fresh = create(&self.inner.config).map_err(PublishError::unavailable)?;
        *producer = Some(fresh.clone());
        Ok(fresh)
    }

    /// Retires `producer` after a fatal error, or after the cluster stopped
    /// answering (`doubt`): the next call makes a new one. An idempotent
    /// producer whose messages timed out may otherwise wait for an epoch
    /// bump that a restarted broker never grants; a fresh producer gets a
    /// fresh producer id. The old one is purged and dropped off the async
    /// threads (dropping it blocks for up to 500 ms).
    fn retire(&self, producer: FutureProducer, doubt: bool) {
        let fatal = producer.client().fatal_error();
        if !doubt && fatal.is_none() {
            return;
        }
        if let Some((code, why)) = fatal {
            tracing::warn!(error = %why, code = ?code, "the Kafka producer hit a fatal error; it is replaced");
        } else {
            tracing::debug!("the Kafka cluster stopped answering; the producer is replaced");
        }
        let retired = {
            let mut slot = self
                .inner
                .producer
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Only if no other call replaced it already.
            let same = slot.as_ref().is_some_and(|current| {
                std::ptr::eq(
                    current.client().native_ptr(),
                    producer.client().native_ptr(),
                )
            });
            if same { slot.take() } else { None }
        };
        drop(tokio::task::spawn_blocking(move || {
            drop((producer, retired));
        }));
    }

    /// The entry's topic.
    fn topic_of(&self, entry: &Entry) -> String {
        match &self.inner.topic {
            Topic::Prefix(prefix) => format!("{prefix}{}", entry.name()),
            Topic::Fixed(topic) => topic.clone(),
            Topic::Custom(topic) => topic(entry),
        }
    }

    /// Produces `entries`, then awaits their delivery reports in order.
    async fn send(&self, entries: &[&Entry]) -> Vec<PublishResult> {
        if entries.is_empty() {
            return Vec::new();
        }
        let producer = match self.producer() {
            Ok(producer) => producer,
            Err(err) => return vec![Err(err)],
        };

        // 1. Produce everything without waiting.
        let mut doubt = false;
        let mut pending: Vec<Result<(String, DeliveryFuture), PublishError>> =
            Vec::with_capacity(entries.len());
        for entry in entries {
            let topic = self.topic_of(entry);
            if let Err(why) = check_topic(&topic) {
                pending.push(Err(PublishError::rejected(format!(
                    "topic {topic:?} is not a valid Kafka topic name: {why}"
                ))));
                continue;
            }
            let event_id = entry.event_id().to_string();
            let key = entry.stream_key().unwrap_or(&event_id);
            let record = FutureRecord::to(&topic)
                .key(key)
                .payload(entry.payload_json())
                .timestamp(entry.created_at().timestamp_millis())
                .headers(headers(entry, &event_id));
            match producer.send_result(record) {
                Ok(delivery) => pending.push(Ok((topic, delivery))),
                Err((err, _)) => {
                    let (err, stop) = self.failure(&topic, &err);
                    pending.push(Err(err));
                    if stop {
                        doubt = true;
                        break;
                    }
                }
            }
        }

        // 2. Await every delivery report (librdkafka bounds each by `message.timeout.ms`).
        let mut results = Vec::with_capacity(pending.len());
        let mut stopped = false;
        for item in pending {
            let result = match item {
                Err(err) => Err(err),
                Ok((topic, delivery)) => match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((err, _))) => {
                        let (err, stop) = self.failure(&topic, &err);
                        stopped |= stop;
                        Err(err)
                    }
                    Err(_canceled) => {
                        stopped = true;
                        Err(PublishError::unavailable(
                            "the Kafka producer was closed before the delivery report",
                        ))
                    }
                },
            };
            results.push(result);
            if stopped {
                // The rest are given back at no cost (they may still be
                // delivered: duplicates the consumer skips).
                break;
            }
        }
        if results.iter().any(Result::is_err) {
            self.retire(producer, stopped || doubt);
        }
        results
    }

    /// Classifies a produce error, and says whether the rest of the batch
    /// is to be given back (the cluster is in doubt) rather than awaited.
    fn failure(&self, topic: &str, err: &KafkaError) -> (PublishError, bool) {
        use RDKafkaErrorCode as C;
        let brokers = || shown(&self.inner.brokers);
        let Some(code) = err.rdkafka_error_code() else {
            return (
                PublishError::unavailable(format!("Kafka at {}: {err}", brokers())),
                true,
            );
        };
        match code {
            C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownTopicId => (
                PublishError::unavailable(format!(
                    "Kafka topic `{topic}` does not exist at {}; create it or fix the topic",
                    brokers()
                )),
                false,
            ),
            C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::SaslAuthenticationFailed
            | C::Authentication
            | C::UnsupportedSASLMechanism
            | C::IllegalSASLState
            | C::SSL => (
                PublishError::unavailable(format!(
                    "Kafka at {} refused to let this client write to topic `{topic}` \
                     (authorization or login failed): {code}",
                    brokers()
                )),
                true,
            ),
            C::MessageTimedOut | C::RequestTimedOut | C::OperationTimedOut | C::TimedOutQueue => (
                PublishError::unavailable(format!(
                    "no Kafka delivery report for topic `{topic}` within {:?} (Kafka at {})",
                    self.inner.timeout,
                    brokers()
                )),
                true,
            ),
            C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::InvalidRecord
            | C::InvalidMessage
            | C::InvalidTimestamp => (
                PublishError::rejected(format!(
                    "Kafka refused the message on topic `{topic}`: {code}"
                )),
                false,
            ),
            C::InvalidTopic => (
                PublishError::rejected(format!(
                    "topic {topic:?} is not a valid Kafka topic name: {code}"
                )),
                false,
            ),
            C::AllBrokersDown
            | C::BrokerTransportFailure
            | C::Resolve
            | C::NetworkException
            | C::BrokerNotAvailable
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition
            | C::NotEnoughReplicas
            | C::NotEnoughReplicasAfterAppend
            | C::QueueFull
            | C::Fatal
            | C::OutOfOrderSequenceNumber
            | C::InvalidProducerEpoch
            | C::ProducerFenced
            | C::Fenced
            | C::PurgeQueue
            | C::PurgeInflight
            | C::BrokerDestroy
            | C::DestroyBroker => (
                PublishError::unavailable(format!(
                    "Kafka at {} unavailable (topic `{topic}`): {code}",
                    brokers()
                )),
                true,
            ),
            _ => (
                PublishError::transient(format!(
                    "Kafka failed the message on topic `{topic}`: {code}"
                )),
                false,
            ),
        }
    }
}

/// The headers of `entry`'s message: the entry's own, then ours.
fn headers(entry: &Entry, event_id: &str) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new_with_capacity(entry.headers().len() + 6);
    let mut add = |key: &str, value: &str| {
        headers = std::mem::take(&mut headers).insert(Header {
            key,
            value: Some(value.as_bytes()),
        });
    };
    for (k, v) in entry.headers() {
        add(k, v);
    }
    add(EVENT_ID_HEADER, event_id);
    add(EVENT_NAME_HEADER, entry.name());
    add(VERSION_HEADER, &entry.version().to_string());
    if let Some(stream) = entry.stream_key() {
        add(STREAM_KEY_HEADER, stream);
    }
    if let Some(id) = entry.correlation_id() {
        add(CORRELATION_ID_HEADER, &id.to_string());
    }
    if let Some(id) = entry.causation_id() {
        add(CAUSATION_ID_HEADER, &id.to_string());
    }
    headers
}

impl<E: Event> Publisher<E> for KafkaPublisher {
    async fn publish(&self, event: &Recorded<E>) -> PublishResult {
        first(self.send(&[event.entry()]).await)
    }

    async fn publish_batch(&self, events: &[Recorded<E>]) -> Vec<PublishResult> {
        let entries: Vec<&Entry> = events.iter().map(Recorded::entry).collect();
        self.send(&entries).await
    }
}

impl RawPublisher for KafkaPublisher {
    async fn publish_raw(&self, entry: &Entry) -> PublishResult {
        first(self.send(&[entry]).await)
    }

    async fn publish_raw_batch(&self, entries: &[Entry]) -> Vec<PublishResult> {
        let entries: Vec<&Entry> = entries.iter().collect();
        self.send(&entries).await
    }
}

/// The result of a one-entry batch.
fn first(results: Vec<PublishResult>) -> PublishResult {
    results.into_iter().next().unwrap_or_else(|| {
        Err(PublishError::unavailable(
            "Kafka publisher returned no result",
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics() {
        assert!(check_topic("billing.invoice_paid").is_ok());
        assert!(check_topic("a-b_c.D9").is_ok());
        assert!(check_topic("").is_err());
        assert!(check_topic("..").is_err());
        assert!(check_topic("a b").is_err());
        assert!(check_topic("a/b").is_err());
        assert!(check_topic(&"x".repeat(250)).is_err());
    }

    #[test]
    fn bad_settings_are_config_errors() {
        let err = KafkaPublisher::builder("127.0.0.1:9092")
            .topic_prefix("events/")
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("prefix"), "{err}");
        let err = KafkaPublisher::builder("127.0.0.1:9092")
            .config("no.such.setting", "s3cret")
            .build()
            .unwrap_err()
            .to_string();
        assert!(err.contains("no.such.setting"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        let err = KafkaPublisher::builder("127.0.0.1:9092")
            .config("bootstrap.servers", "elsewhere:9092")
            .build()
            .unwrap_err()
            .to_string();
        assert!(err.contains("bootstrap.servers"), "{err}");
    }

    #[test]
    fn debug_hides_secrets() {
        let builder = KafkaPublisher::builder("u:s3cret@127.0.0.1:9092")
            .config("sasl.username", "svc")
            .config("sasl.password", "s3cret");
        let debug = format!("{builder:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("sasl.password"), "{debug}");
        let publisher = KafkaPublisher::builder("127.0.0.1:9092")
            .config("sasl.username", "svc")
            .config("sasl.password", "s3cret")
            .build()
            .unwrap();
        let debug = format!("{publisher:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
    }
}
