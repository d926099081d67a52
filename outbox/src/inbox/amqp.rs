//! RabbitMQ (AMQP 0-9-1) source for the inbox, on [lapin](https://docs.rs/lapin).
//!
//! [`AmqpSource`] consumes one queue with manual acknowledgements: a message
//! is acknowledged (`basic.ack`) only after the inbox transaction that
//! processed it committed, so a consumer that dies before the commit leaves
//! it unacknowledged and RabbitMQ delivers it again. The source declares
//! nothing: declare the queue and bind it to the exchange the
//! [publisher](crate::publisher::amqp) writes to, as part of the
//! deployment.
//!
//! ```no_run
//! use outbox::inbox::amqp::AmqpSource;
//! use outbox::inbox::{Consumers, Inbox};
//! # async fn demo(inbox: Inbox<outbox::sqlx::Postgres>, consumers: Consumers<outbox::sqlx::Postgres>) -> outbox::Result<()> {
//! let source = AmqpSource::builder("amqp://guest:guest@127.0.0.1:5672/%2f", "billing-events")
//!     .prefetch(32) // the loop's max_in_flight
//!     .build()
//!     .await?;
//! let report = inbox
//!     .consume(consumers)
//!     .max_in_flight(32)
//!     .run(source, std::future::pending()) // or a shutdown signal
//!     .await;
//! println!("{report:?}");
//! # Ok(()) }
//! ```
//!
//! # The message
//!
//! What [`publisher::amqp`](crate::publisher::amqp) writes is read back, so
//! an outbox and an inbox round-trip without configuration:
//!
//! | AMQP | becomes | when it is missing |
//! |---|---|---|
//! | body | the payload (JSON text) | bytes that are not UTF-8: a dead letter |
//! | `message_id` | the event id (the dedupe key) | a dead letter ("the message carries no event id"); also when it is not a UUID |
//! | `type` | the event name (picks the consumer) | a dead letter ("the message carries no event name") |
//! | `timestamp` (seconds) | when the event was recorded ([`Entry::created_at`](crate::Entry::created_at)) | the time of receipt |
//! | header [`VERSION_HEADER`] (`outbox-event-version`), text or an integer | the event version ([`Entry::version`](crate::Entry::version)): the consumer decodes the payload by it, upcasting an older one | version 1 (a sender from before versions); a value that is not an integer from 1 makes a dead letter |
//! | header [`STREAM_KEY_HEADER`] | the stream key (per-stream order) | no stream key |
//! | header [`CORRELATION_ID_HEADER`], else the `correlation_id` property | the correlation id | none |
//! | header [`CAUSATION_ID_HEADER`] | the causation id | none |
//! | every other header with a text value | a header of the entry ([`Entry::headers`](crate::Entry::headers)) | |
//!
//! Headers whose value is not text (numbers, tables, RabbitMQ's own
//! `x-death` lists) are left out, but for the version: an AMQP integer is
//! read as one, and any other value makes a dead letter. The routing key,
//! the exchange and the other properties are not kept.
//!
//! A message of a version newer than its consumer's event type knows (the
//! sender deployed first) is a dead letter whose reason says so: requeue
//! it (`outbox inbox dead requeue`) once a consumer that knows the version
//! runs. An older version is upcast to the consumer's (see
//! [`Event::decode`](crate::Event::decode)).
//!
//! # Acknowledgements
//!
//! | the inbox | RabbitMQ |
//! |---|---|
//! | settled the message (processed, duplicate, skipped, dead letter) | `basic.ack`, after the commit |
//! | holds it (a retry backoff, the database down) | nothing: it stays unacknowledged |
//! | stops with it unsettled ([`Acker::release`]) | `basic.nack` with requeue: ready for another consumer at once (RabbitMQ may hand it once more to the stopping one, which gives it back when its channel closes) |
//! | the process dies | the connection closes; RabbitMQ requeues every unacknowledged message |
//!
//! A message held longer than RabbitMQ's `consumer_timeout` (30 minutes by
//! default) makes the broker close the channel: the source reconnects and
//! the message comes back. Keep retry backoffs well below it.
//!
//! [`prefetch`](AmqpSourceBuilder::prefetch) bounds the unacknowledged
//! messages RabbitMQ sends (`basic.qos`); set it to the loop's
//! [`max_in_flight`](super::Consume::max_in_flight), so that a held message
//! never waits behind messages the loop has no slot for.
//!
//! # Lost connections
//!
//! When the connection (or the channel) is lost, [`Source::next`] returns an
//! error once, so the loop logs it and pauses, and connects again on the
//! next call (an error each time that fails, with the loop's growing
//! pause). Messages received on the lost channel cannot be acknowledged any
//! more: their [`ack`](Acker::ack) fails, RabbitMQ delivers them again on the
//! new channel and the inbox skips them as duplicates. A consumer cancelled
//! by RabbitMQ (its queue deleted) is subscribed again the same way, and a
//! missing queue is reported at each try.
//!
//! `next` is cancel-safe: a message taken from the connection is kept until
//! it is returned, and a connection being opened when the call is dropped
//! is closed, which gives its messages back.
//!
//! # Connections and TLS
//!
//! As the publisher's: `amqps://` is always TLS (rustls on *ring*), with the
//! system roots and [`tls_ca_pem`](AmqpSourceBuilder::tls_ca_pem); the URI's
//! password never appears in `Debug` output or in errors.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::DateTime;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection};

use super::{Acker, Delivery, Message, Source, SourceError};
use crate::error::{Error, Result};
use crate::publisher::amqp::{
    CAUSATION_ID_HEADER, CORRELATION_ID_HEADER, Endpoint, STREAM_KEY_HEADER, VERSION_HEADER,
};
use crate::publisher::redact::redact_url;

/// How long connecting and subscribing may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Consumes one RabbitMQ queue for an inbox; see the [module docs](self).
pub struct AmqpSource {
    settings: Settings,
    link: Option<Link>,
}

struct Settings {
    endpoint: Endpoint,
    queue: String,
    prefetch: u16,
    consumer_tag: String,
}

/// An open subscription. The channel keeps its connection open.
struct Link {
    channel: Channel,
    consumer: lapin::Consumer,
}

impl fmt::Debug for AmqpSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let settings = &self.settings;
        f.debug_struct("AmqpSource")
            .field("uri", &redact_url(&settings.endpoint.uri))
            .field("queue", &settings.queue)
            .field("prefetch", &settings.prefetch)
            .field("consumer_tag", &settings.consumer_tag)
            .field("tls_ca_pem", &settings.endpoint.tls.cert_chain.is_some())
            .field("connected", &self.link.is_some())
            .finish()
    }
}

/// Configures an [`AmqpSource`]; start with [`AmqpSource::builder`].
#[must_use]
pub struct AmqpSourceBuilder {
    uri: String,
    queue: String,
    prefetch: u16,
    consumer_tag: String,
    tls_ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for AmqpSourceBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpSourceBuilder")
            .field("uri", &redact_url(&self.uri))
            .field("queue", &self.queue)
            .field("prefetch", &self.prefetch)
            .field("consumer_tag", &self.consumer_tag)
            .field("tls_ca_pem", &self.tls_ca_pem.is_some())
            .finish()
    }
}

impl AmqpSource {
    /// Starts configuring a source for `queue` on the broker at `uri`, e.g.
    /// `amqp://guest:guest@127.0.0.1:5672/%2f` (the last segment is the
    /// vhost, `%2f` being `/`), or `amqps://...:5671/...` for TLS.
    pub fn builder(uri: impl Into<String>, queue: impl Into<String>) -> AmqpSourceBuilder {
        AmqpSourceBuilder {
            uri: uri.into(),
            queue: queue.into(),
            prefetch: 32,
            consumer_tag: String::new(),
            tls_ca_pem: None,
        }
    }

    /// The queue consumed.
    #[must_use]
    pub fn queue(&self) -> &str {
        &self.settings.queue
    }
}

impl AmqpSourceBuilder {
    /// How many unacknowledged messages RabbitMQ sends at most (`basic.qos`,
    /// at least 1). Default 32. Set it to the consumer loop's
    /// [`max_in_flight`](crate::inbox::Consume::max_in_flight).
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// The consumer tag (shown by `rabbitmqctl list_consumers`). Default:
    /// one RabbitMQ generates.
    pub fn consumer_tag(mut self, tag: impl Into<String>) -> Self {
        self.consumer_tag = tag.into();
        self
    }

    /// Trusts the CA certificate(s) in this PEM text for `amqps://`, next
    /// to the system roots. [`build`](Self::build) fails if the URI is not
    /// `amqps://` or the text holds no certificate.
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_ca_pem = Some(pem.into());
        self
    }

    /// Checks the settings, connects, sets the prefetch and starts
    /// consuming the queue with manual acknowledgements. Declares nothing:
    /// a queue that does not exist is an error here, as are a broker out
    /// of reach, a refused login and a failed TLS handshake.
    pub async fn build(self) -> Result<AmqpSource> {
        let config = |reason: String| Error::InboxSource {
            broker: "amqp",
            reason,
        };
        if self.queue.is_empty() {
            return Err(config(
                "the queue name is empty (the source consumes a named queue)".to_owned(),
            ));
        }
        for (what, value) in [
            ("queue name", &self.queue),
            ("consumer tag", &self.consumer_tag),
        ] {
            if ShortString::try_new(value.as_str()).is_err() {
                return Err(config(format!(
                    "the {what} is {} bytes, over AMQP's 255",
                    value.len()
                )));
            }
        }
        let settings = Settings {
            endpoint: Endpoint::new(self.uri, self.tls_ca_pem).map_err(config)?,
            queue: self.queue,
            prefetch: self.prefetch,
            consumer_tag: self.consumer_tag,
        };
        let link = settings.open().await.map_err(config)?;
        tracing::debug!(uri = %redact_url(&settings.endpoint.uri), queue = %settings.queue, "consuming from RabbitMQ");
        Ok(AmqpSource {
            settings,
            link: Some(link),
        })
    }
}

impl Settings {
    /// Connects, opens a channel, sets the prefetch and subscribes.
    async fn open(&self) -> Result<Link, String> {
        let connection = self.endpoint.connect("outbox-inbox", OPEN_TIMEOUT).await?;
        let subscribe = async {
            let channel = connection.create_channel().await?;
            channel
                .basic_qos(self.prefetch, BasicQosOptions::default())
                .await?;
            let consumer = channel
                .basic_consume(
                    self.queue.as_str().into(),
                    self.consumer_tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, lapin::Error>(Link { channel, consumer })
        };
        match tokio::time::timeout(OPEN_TIMEOUT, subscribe).await {
            Ok(Ok(link)) => Ok(link),
            Ok(Err(err)) => Err(self.subscribe_failure(&err, &connection)),
            Err(_) => Err(format!(
                "RabbitMQ did not start the consumer on queue `{}` within {OPEN_TIMEOUT:?}",
                self.queue
            )),
        }
    }

    /// Why the subscription could not start, with what to fix.
    fn subscribe_failure(&self, err: &lapin::Error, connection: &Connection) -> String {
        let queue = &self.queue;
        let vhost = &self.endpoint.parsed.vhost;
        let lapin::ErrorKind::ProtocolError(amqp) = err.kind() else {
            return format!("RabbitMQ unavailable: {err}");
        };
        let said = amqp.get_message().as_str();
        match amqp.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => format!(
                "queue `{queue}` does not exist in vhost `{vhost}` (404 NOT_FOUND); declare it \
                 and bind it to the publisher's exchange (the source declares nothing) [{said}]"
            ),
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => format!(
                "the user may not consume from queue `{queue}` (403 ACCESS_REFUSED); grant it \
                 read permission [{said}]"
            ),
            AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED) => format!(
                "queue `{queue}` is exclusive to another connection (405 RESOURCE_LOCKED) [{said}]"
            ),
            _ if !connection.status().connected() => {
                format!("RabbitMQ closed the connection ({}): {said}", amqp.get_id())
            }
            _ => format!(
                "RabbitMQ refused to consume from queue `{queue}` ({}): {said}",
                amqp.get_id()
            ),
        }
    }
}

#[async_trait]
impl Source for AmqpSource {
    async fn next(&mut self) -> Result<Option<Delivery>, SourceError> {
        if self.link.is_none() {
            let link = self.settings.open().await?;
            tracing::info!(uri = %redact_url(&self.settings.endpoint.uri), queue = %self.settings.queue, "reconnected to RabbitMQ");
            self.link = Some(link);
        }
        let Some(link) = self.link.as_mut() else {
            return Err("RabbitMQ: no subscription".into());
        };
        match link.consumer.next().await {
            Some(Ok(delivery)) => {
                let channel = link.channel.clone();
                Ok(Some(to_delivery(delivery, channel)))
            }
            Some(Err(err)) => {
                self.link = None;
                Err(format!(
                    "RabbitMQ connection lost while consuming queue `{}`: {err}; connecting again",
                    self.settings.queue
                )
                .into())
            }
            None => {
                self.link = None;
                Err(format!(
                    "RabbitMQ cancelled the consumer on queue `{}` (was the queue deleted?); \
                     subscribing again",
                    self.settings.queue
                )
                .into())
            }
        }
    }
}

/// Reads the inbox message out of a delivery (see the table in the module docs).
fn to_delivery(delivery: lapin::message::Delivery, channel: Channel) -> Delivery {
    let lapin::message::Delivery {
        properties,
        data,
        acker,
        ..
    } = delivery;
    let mut message = Message::new(data);
    if let Some(id) = properties.message_id() {
        message = message.event_id(id.as_str());
    }
    if let Some(name) = properties.kind() {
        message = message.name(name.as_str());
    }
    if let Some(at) = properties
        .timestamp()
        .filter(|&secs| secs > 0)
        .and_then(|secs| i64::try_from(secs).ok())
        .and_then(|secs| DateTime::from_timestamp(secs, 0))
    {
        message = message.created_at(at);
    }
    let mut correlation = properties
        .correlation_id()
        .as_ref()
        .map(ToString::to_string);
    if let Some(headers) = properties.headers() {
        for (key, value) in headers {
            if key.as_str() == VERSION_HEADER {
                // Any other type is passed on as shown, for the inbox to refuse.
                let version = text(value)
                    .or_else(|| integer(value))
                    .unwrap_or_else(|| format!("{value:?}"));
                message = message.version(version);
                continue;
            }
            let Some(text) = text(value) else {
                continue;
            };
            match key.as_str() {
                STREAM_KEY_HEADER => message = message.stream_key(text),
                CORRELATION_ID_HEADER => correlation = Some(text),
                CAUSATION_ID_HEADER => message = message.causation_id(text),
                name => message = message.header(name, text),
            }
        }
    }
    if let Some(id) = correlation {
        message = message.correlation_id(id);
    }
    Delivery::new(
        message,
        AmqpAcker {
            acker,
            _channel: channel,
        },
    )
}

/// A header value as text, if it is text.
fn text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// An integer header value in decimal (a version sent by a client that
/// writes numbers as AMQP integers).
fn integer(value: &AMQPValue) -> Option<String> {
    let n = match *value {
        AMQPValue::ShortShortInt(n) => i64::from(n),
        AMQPValue::ShortShortUInt(n) => i64::from(n),
        AMQPValue::ShortInt(n) => i64::from(n),
        AMQPValue::ShortUInt(n) => i64::from(n),
        AMQPValue::LongInt(n) => i64::from(n),
        AMQPValue::LongUInt(n) => i64::from(n),
        AMQPValue::LongLongInt(n) => n,
        _ => return None,
    };
    Some(n.to_string())
}

/// Settles one delivery on the channel it came from.
struct AmqpAcker {
    acker: lapin::Acker,
    /// Keeps the channel (and its connection) open while the message is
    /// worked on.
    _channel: Channel,
}

#[async_trait]
impl Acker for AmqpAcker {
    async fn ack(self: Box<Self>) -> Result<(), SourceError> {
        match self.acker.ack(BasicAckOptions::default()).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(
                "the channel the message came on is closed (the connection was \
                              lost): it cannot be acknowledged; RabbitMQ delivers it again"
                    .into(),
            ),
            Err(err) => Err(format!("RabbitMQ did not take the acknowledgement: {err}").into()),
        }
    }

    async fn release(self: Box<Self>) {
        let requeue = BasicNackOptions {
            multiple: false,
            requeue: true,
        };
        match self.acker.nack(requeue).await {
            Ok(true) => {}
            Ok(false) => tracing::debug!(
                "message not given back: its channel is closed (RabbitMQ requeued it already)"
            ),
            Err(err) => {
                tracing::debug!(error = %err, "message not given back (RabbitMQ requeues it when the channel closes)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn build_checks_settings_without_leaking_the_password() {
        for (uri, queue, wanted) in [
            ("http://guest:s3cret@127.0.0.1", "q", "does not parse"),
            (
                "amqp://guest:s3cret@127.0.0.1:5672/%2f",
                "",
                "queue name is empty",
            ),
        ] {
            let err = AmqpSource::builder(uri, queue).build().await.unwrap_err();
            let text = err.to_string();
            assert!(text.starts_with("amqp inbox source: "), "{text}");
            assert!(text.contains(wanted), "{text}");
            assert!(!text.contains("s3cret"), "{text}");
        }
        let err = AmqpSource::builder("amqp://guest:s3cret@127.0.0.1:5672/%2f", "q")
            .tls_ca_pem("not a certificate")
            .build()
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("amqps://") && !err.contains("s3cret"), "{err}");
        let err = AmqpSource::builder("amqp://127.0.0.1", "q".repeat(256))
            .build()
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("over AMQP's 255"), "{err}");
    }

    #[test]
    fn a_version_may_be_an_amqp_integer() {
        assert_eq!(integer(&AMQPValue::ShortShortUInt(2)).as_deref(), Some("2"));
        assert_eq!(integer(&AMQPValue::LongInt(-1)).as_deref(), Some("-1"));
        assert_eq!(integer(&AMQPValue::LongLongInt(7)).as_deref(), Some("7"));
        assert_eq!(integer(&AMQPValue::Boolean(true)), None);
    }

    #[test]
    fn debug_hides_the_password() {
        let builder =
            AmqpSource::builder("amqp://guest:s3cret@127.0.0.1:5672/%2f", "q").prefetch(0);
        let debug = format!("{builder:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("prefetch: 1"), "{debug}");
    }
}
