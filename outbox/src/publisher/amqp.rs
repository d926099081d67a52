//! RabbitMQ (AMQP 0-9-1) publisher, on [lapin](https://docs.rs/lapin).
//!
//! [`AmqpPublisher`] publishes every entry it is handed to one exchange,
//! with the event name as routing key (or a key of your own), as a
//! persistent message, and waits for RabbitMQ's publisher confirm: an entry
//! counts as published only once the broker acknowledged it.
//!
//! ```no_run
//! use outbox::publisher::amqp::{AmqpPublisher, ExchangeKind};
//! use outbox::Publishers;
//! # #[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
//! # #[outbox(name = "billing.invoice_paid")]
//! # struct InvoicePaid { amount_cents: i64 }
//! # async fn run<DB: outbox::Backend>(outbox: outbox::Outbox<DB>) -> outbox::Result<()> {
//!
//! let rabbit = AmqpPublisher::builder("amqp://guest:guest@127.0.0.1:5672/%2f")
//!     .exchange("billing")
//!     .declare_exchange(ExchangeKind::Topic) // optional: declares nothing otherwise
//!     .build()?;
//!
//! let publishers = Publishers::builder()
//!     .publisher::<InvoicePaid, _>(rabbit.clone()) // typed
//!     .fallback(rabbit) // and every other event, raw
//!     .build()?;
//! outbox.relay(publishers).run(std::future::pending()).await;
//! # Ok(())
//! # }
//! ```
//!
//! # The message
//!
//! | AMQP                     | value                                             |
//! |--------------------------|---------------------------------------------------|
//! | body                     | the payload exactly as stored (JSON text)         |
//! | `message_id`             | the event id                                      |
//! | `type`                   | the event name                                    |
//! | `content_type`           | `application/json`                                |
//! | `delivery_mode`          | 2 (persistent)                                    |
//! | `timestamp`              | when the event was recorded (seconds)             |
//! | `correlation_id`         | the correlation id, if any                        |
//! | `headers`                | the entry's headers as strings, plus [`STREAM_KEY_HEADER`], [`CORRELATION_ID_HEADER`], [`CAUSATION_ID_HEADER`] when set |
//!
//! # Outcomes
//!
//! - **Published**: the broker acked the message.
//! - **Rejected** (costs an attempt; the reason becomes the entry's last
//!   error and, after the last attempt, its dead-letter reason):
//!   - the broker nacked it;
//!   - the message was *mandatory* (the default, see
//!     [`mandatory`](AmqpPublisherBuilder::mandatory)) and no queue was bound
//!     for its routing key: the broker returned it (`312 NO_ROUTE`);
//!   - the broker closed the channel over it with a channel-level error, for
//!     example `404 NOT_FOUND - no exchange 'x'` when the exchange does not
//!     exist, or `403 ACCESS_REFUSED`. These two concern the exchange, which
//!     every message of the batch shares, so every entry of the batch not yet
//!     confirmed is rejected with the broker's reason. For any other
//!     channel error (e.g. `406 PRECONDITION_FAILED` for a message over the
//!     broker's size limit) only the first unconfirmed entry is rejected and
//!     the rest of the batch is left for the next run, at no cost. (RabbitMQ
//!     does not say which message it closed the channel over; when earlier
//!     messages were still awaiting their confirm, one of them may be charged
//!     instead: it costs that entry one attempt and a duplicate, and the
//!     culprit, tried next, is charged in its turn.) The next call opens a
//!     new channel;
//!   - the entry cannot be expressed in AMQP (a routing key, event name or
//!     header name over 255 bytes).
//! - **Unavailable** (costs no attempt; the relay backs off and tries again):
//!   the broker cannot be reached, the connection was closed (for example by
//!   `rabbitmqctl stop_app`: `320 CONNECTION_FORCED`), or no confirm arrived
//!   within the [`timeout`](AmqpPublisherBuilder::timeout). The connection is
//!   dropped and opened again on the next call.
//!
//! # Batches
//!
//! [`Publisher::publish_batch`] and [`RawPublisher::publish_raw_batch`]
//! publish the whole batch on one channel, then await the confirms once, so
//! a batch costs about one round trip. Delivery is at least once: a confirm
//! that is lost (timeout, connection closed) makes the entry go out again
//! later. Consumers deduplicate on `message_id`.
//!
//! # Connections
//!
//! The publisher connects on first use (or when [`AmqpPublisher::connect`] is
//! called), keeps one connection and one confirm-mode channel, and replaces
//! them when they break. Clones share them. TLS (`amqps://`) needs one of
//! lapin's TLS features enabled in your own `Cargo.toml`; this crate enables
//! none. The URI's password never appears in `Debug` output or in errors.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::redact::redact_url;
use crate::entry::{Entry, Recorded};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::publisher::{PublishError, PublishResult, Publisher, RawPublisher};

/// Header carrying the entry's stream (aggregate) key, when it has one.
pub const STREAM_KEY_HEADER: &str = "outbox-stream-key";
/// Header carrying the entry's correlation id, when it has one (it is also
/// the AMQP `correlation_id` property).
pub const CORRELATION_ID_HEADER: &str = "outbox-correlation-id";
/// Header carrying the entry's causation id, when it has one.
pub const CAUSATION_ID_HEADER: &str = "outbox-causation-id";

/// The type of exchange [`AmqpPublisherBuilder::declare_exchange`] declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExchangeKind {
    /// Routes to the queues bound with exactly the routing key.
    Direct,
    /// Routes to every bound queue.
    Fanout,
    /// Routes by routing-key pattern (`billing.*`, `#`); event names such as
    /// `billing.invoice_paid` suit it well.
    Topic,
    /// Routes by header values.
    Headers,
}

impl ExchangeKind {
    fn to_lapin(self) -> lapin::ExchangeKind {
        match self {
            Self::Direct => lapin::ExchangeKind::Direct,
            Self::Fanout => lapin::ExchangeKind::Fanout,
            Self::Topic => lapin::ExchangeKind::Topic,
            Self::Headers => lapin::ExchangeKind::Headers,
        }
    }
}

type RoutingFn = dyn Fn(&Entry) -> String + Send + Sync;

/// Publishes entries to RabbitMQ with publisher confirms; see the
/// [module docs](self). Cheap to clone: clones share one connection.
#[derive(Clone)]
pub struct AmqpPublisher {
    inner: Arc<Inner>,
}

struct Inner {
    uri: String,
    exchange: String,
    routing_key: Option<Box<RoutingFn>>,
    declare: Option<ExchangeKind>,
    mandatory: bool,
    timeout: Duration,
    link: Mutex<Link>,
}

/// The current connection and channel; `generation` changes each time they
/// are replaced, so a failure seen on an old channel never drops a new one.
#[derive(Default)]
struct Link {
    open: Option<(Connection, Channel)>,
    generation: u64,
}

impl fmt::Debug for AmqpPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("AmqpPublisher")
            .field("uri", &redact_url(&inner.uri))
            .field("exchange", &inner.exchange)
            .field("custom_routing_key", &inner.routing_key.is_some())
            .field("declare", &inner.declare)
            .field("mandatory", &inner.mandatory)
            .field("timeout", &inner.timeout)
            .finish_non_exhaustive()
    }
}

/// Configures an [`AmqpPublisher`]; start with [`AmqpPublisher::builder`].
#[must_use]
pub struct AmqpPublisherBuilder {
    uri: String,
    exchange: String,
    routing_key: Option<Box<RoutingFn>>,
    declare: Option<ExchangeKind>,
    mandatory: bool,
    timeout: Duration,
}

impl fmt::Debug for AmqpPublisherBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpPublisherBuilder")
            .field("uri", &redact_url(&self.uri))
            .field("exchange", &self.exchange)
            .field("custom_routing_key", &self.routing_key.is_some())
            .field("declare", &self.declare)
            .field("mandatory", &self.mandatory)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl AmqpPublisherBuilder {
    /// The exchange to publish to (default `""`, RabbitMQ's default exchange,
    /// which routes to the queue named by the routing key).
    pub fn exchange(mut self, name: impl Into<String>) -> Self {
        self.exchange = name.into();
        self
    }

    /// The routing key of each entry (default: the event name).
    ///
    /// ```
    /// # use outbox::publisher::amqp::AmqpPublisher;
    /// let rabbit = AmqpPublisher::builder("amqp://127.0.0.1:5672/%2f")
    ///     .exchange("events")
    ///     .routing_key(|entry| format!("{}.{}", entry.name(), entry.stream_key().unwrap_or("-")))
    ///     .build()?;
    /// # Ok::<(), outbox::Error>(())
    /// ```
    pub fn routing_key(mut self, key: impl Fn(&Entry) -> String + Send + Sync + 'static) -> Self {
        self.routing_key = Some(Box::new(key));
        self
    }

    /// Declares the exchange (durable, of this kind) each time a channel is
    /// opened. Without it the publisher declares nothing: the exchange must
    /// exist. A declaration that conflicts with the existing exchange is a
    /// rejection carrying the broker's `406 PRECONDITION_FAILED` reason.
    pub fn declare_exchange(mut self, kind: ExchangeKind) -> Self {
        self.declare = Some(kind);
        self
    }

    /// Whether messages are published *mandatory* (default `true`): a message
    /// that no queue receives is returned by the broker and the entry is
    /// rejected (`312 NO_ROUTE`), instead of being dropped silently while
    /// counting as published. Set `false` for exchanges where having no
    /// consumer bound is normal.
    pub fn mandatory(mut self, mandatory: bool) -> Self {
        self.mandatory = mandatory;
        self
    }

    /// How long to wait for the connection to open, and for a batch's
    /// confirms (default 10 s). Past it the broker counts as unavailable.
    /// Keep it well under the outbox's lease.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Checks the URI and exchange name and builds the publisher. Does not
    /// connect: see [`AmqpPublisher::connect`].
    pub fn build(self) -> Result<AmqpPublisher> {
        let config = |reason: String| Error::PublisherConfig {
            publisher: "amqp",
            reason,
        };
        self.uri.parse::<lapin::uri::AMQPUri>().map_err(|err| {
            config(format!(
                "URI {} does not parse: {err}",
                redact_url(&self.uri)
            ))
        })?;
        if ShortString::try_new(self.exchange.as_str()).is_err() {
            return Err(config(format!(
                "exchange name is {} bytes, over AMQP's 255",
                self.exchange.len()
            )));
        }
        if self.timeout.is_zero() {
            return Err(config("timeout is zero".to_owned()));
        }
        if self.declare.is_some() && self.exchange.is_empty() {
            return Err(config(
                "declare_exchange needs an exchange name: the default exchange \"\" cannot be declared"
                    .to_owned(),
            ));
        }
        Ok(AmqpPublisher {
            inner: Arc::new(Inner {
                uri: self.uri,
                exchange: self.exchange,
                routing_key: self.routing_key,
                declare: self.declare,
                mandatory: self.mandatory,
                timeout: self.timeout,
                link: Mutex::new(Link::default()),
            }),
        })
    }
}

/// How a failed confirm or publish call is to be reported.
enum Failure {
    /// The broker closed the channel with a channel-level error.
    Refused {
        reason: String,
        /// The error concerns the exchange (404, 403), so every message of
        /// the batch is refused alike.
        whole_batch: bool,
    },
    /// Anything else: the broker is gone or the link is broken.
    Unavailable(String),
}

fn classify(err: &lapin::Error) -> Failure {
    if let lapin::ErrorKind::ProtocolError(amqp) = err.kind()
        && let AMQPErrorKind::Soft(soft) = amqp.kind()
    {
        return Failure::Refused {
            reason: format!("RabbitMQ closed the channel: {amqp}"),
            whole_batch: matches!(soft, AMQPSoftError::NOTFOUND | AMQPSoftError::ACCESSREFUSED),
        };
    }
    Failure::Unavailable(format!("RabbitMQ unavailable: {err}"))
}

/// A message ready to send: everything the entry becomes on the wire.
struct Message<'e> {
    routing_key: ShortString,
    payload: &'e [u8],
    properties: BasicProperties,
}

enum Pending {
    Sent(lapin::PublisherConfirm),
    /// Could not be expressed in AMQP; never sent.
    Invalid(PublishError),
}

impl AmqpPublisher {
    /// Starts configuring a publisher for the broker at `uri`, e.g.
    /// `amqp://guest:guest@127.0.0.1:5672/%2f` (the last segment is the
    /// vhost, `%2f` being `/`).
    pub fn builder(uri: impl Into<String>) -> AmqpPublisherBuilder {
        AmqpPublisherBuilder {
            uri: uri.into(),
            exchange: String::new(),
            routing_key: None,
            declare: None,
            mandatory: true,
            timeout: Duration::from_secs(10),
        }
    }

    /// Connects now (and declares the exchange if asked) instead of on first
    /// use, to find a wrong URI, wrong credentials or a missing broker at
    /// startup. Publishing works without calling it.
    pub async fn connect(&self) -> Result<(), PublishError> {
        self.channel().await.map(drop)
    }

    /// The open channel, opening a connection and/or channel if needed.
    async fn channel(&self) -> Result<(Channel, u64), PublishError> {
        let inner = &*self.inner;
        let mut link = inner.link.lock().await;
        if let Some((connection, channel)) = &link.open {
            if channel.status().connected() {
                return Ok((channel.clone(), link.generation));
            }
            if connection.status().connected() {
                // Only the channel was closed (by a channel-level error).
                let channel = match self.open_channel(connection).await {
                    Ok(channel) => channel,
                    Err(err) => {
                        if err.is_unavailable() {
                            // A connection that cannot open a channel is no good.
                            link.open = None;
                            link.generation += 1;
                        }
                        return Err(err);
                    }
                };
                link.generation += 1;
                if let Some(open) = link.open.as_mut() {
                    open.1 = channel.clone();
                }
                return Ok((channel, link.generation));
            }
        }
        // No connection, or a dead one: dropping it closes it if it still can.
        link.open = None;
        link.generation += 1;
        let properties = ConnectionProperties::default().with_connection_name("outbox".into());
        let connection =
            match tokio::time::timeout(inner.timeout, Connection::connect(&inner.uri, properties))
                .await
            {
                Ok(Ok(connection)) => connection,
                Ok(Err(err)) => {
                    return Err(PublishError::unavailable(format!(
                        "cannot connect to RabbitMQ at {}: {err}",
                        redact_url(&inner.uri)
                    )));
                }
                Err(_) => {
                    return Err(PublishError::unavailable(format!(
                        "cannot connect to RabbitMQ at {}: no answer within {:?}",
                        redact_url(&inner.uri),
                        inner.timeout
                    )));
                }
            };
        let channel = self.open_channel(&connection).await?;
        tracing::debug!(uri = %redact_url(&inner.uri), "connected to RabbitMQ");
        link.open = Some((connection, channel.clone()));
        Ok((channel, link.generation))
    }

    /// Opens a channel in confirm mode and declares the exchange if asked.
    async fn open_channel(&self, connection: &Connection) -> Result<Channel, PublishError> {
        let inner = &*self.inner;
        let open = async {
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            if let Some(kind) = inner.declare {
                channel
                    .exchange_declare(
                        inner.exchange.as_str().into(),
                        kind.to_lapin(),
                        ExchangeDeclareOptions {
                            durable: true,
                            ..ExchangeDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await?;
            }
            Ok::<_, lapin::Error>(channel)
        };
        match tokio::time::timeout(inner.timeout, open).await {
            Ok(Ok(channel)) => Ok(channel),
            Ok(Err(err)) => Err(match classify(&err) {
                Failure::Refused { reason, .. } => PublishError::rejected(format!(
                    "opening a channel on exchange `{}`: {reason}",
                    inner.exchange
                )),
                Failure::Unavailable(reason) => PublishError::unavailable(reason),
            }),
            Err(_) => Err(PublishError::unavailable(format!(
                "RabbitMQ did not open a channel within {:?}",
                inner.timeout
            ))),
        }
    }

    /// Drops the connection if it is still the one of `generation`.
    async fn reset(&self, generation: u64) {
        let mut link = self.inner.link.lock().await;
        if link.generation == generation {
            link.open = None;
            link.generation += 1;
        }
    }

    /// Builds the AMQP message for `entry`.
    fn message<'e>(&self, entry: &'e Entry) -> Result<Message<'e>, PublishError> {
        let too_long = |what: &str, len: usize| {
            PublishError::rejected(format!(
                "{what} is {len} bytes, over AMQP's limit of 255 for a short string"
            ))
        };
        let key = match &self.inner.routing_key {
            Some(key) => key(entry),
            None => entry.name().to_owned(),
        };
        let key_len = key.len();
        let routing_key =
            ShortString::try_new(key).map_err(|_| too_long("the routing key", key_len))?;
        let kind = ShortString::try_new(entry.name())
            .map_err(|_| too_long("the event name", entry.name().len()))?;

        let mut headers = FieldTable::default();
        for (name, value) in entry.headers() {
            let key = ShortString::try_new(name.as_str())
                .map_err(|_| too_long(&format!("header name `{name:.40}...`"), name.len()))?;
            headers.insert(key, AMQPValue::LongString(LongString::from(value.as_str())));
        }
        let mut text_header = |name: &'static str, value: String| {
            headers.insert(
                ShortString::from(name),
                AMQPValue::LongString(LongString::from(value)),
            );
        };
        if let Some(stream) = entry.stream_key() {
            text_header(STREAM_KEY_HEADER, stream.to_owned());
        }
        if let Some(id) = entry.correlation_id() {
            text_header(CORRELATION_ID_HEADER, id.to_string());
        }
        if let Some(id) = entry.causation_id() {
            text_header(CAUSATION_ID_HEADER, id.to_string());
        }

        let mut properties = BasicProperties::default()
            .with_message_id(entry.event_id().to_string().into())
            .with_type(kind)
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_timestamp(u64::try_from(entry.created_at().timestamp()).unwrap_or(0))
            .with_headers(headers);
        if let Some(id) = entry.correlation_id() {
            properties = properties.with_correlation_id(id.to_string().into());
        }
        Ok(Message {
            routing_key,
            payload: entry.payload_json().as_bytes(),
            properties,
        })
    }

    /// What one awaited confirm means for its entry; a refusal also returns
    /// the broker's reason and whether it concerns the whole batch.
    async fn outcome(
        &self,
        confirmed: Result<lapin::Result<Confirmation>, tokio::time::error::Elapsed>,
        generation: u64,
    ) -> (PublishResult, Option<(String, bool)>) {
        let inner = &*self.inner;
        let result = match confirmed {
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(returned)))) => Err(PublishError::rejected(format!(
                "RabbitMQ returned the message as unroutable ({} {}): no queue is bound to \
                 exchange `{}` for routing key `{}`",
                returned.reply_code,
                returned.reply_text,
                inner.exchange,
                returned.delivery.routing_key,
            ))),
            Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::rejected(
                "RabbitMQ nacked the message (it could not take responsibility for it)",
            )),
            Ok(Ok(Confirmation::NotRequested)) => {
                self.reset(generation).await;
                Err(PublishError::unavailable(
                    "the channel is not in confirm mode; it will be reopened",
                ))
            }
            Ok(Err(err)) => match classify(&err) {
                Failure::Refused {
                    reason,
                    whole_batch,
                } => {
                    let err = PublishError::rejected(&reason);
                    return (Err(err), Some((reason, whole_batch)));
                }
                Failure::Unavailable(reason) => {
                    self.reset(generation).await;
                    Err(PublishError::unavailable(reason))
                }
            },
            Err(_) => {
                self.reset(generation).await;
                Err(PublishError::unavailable(format!(
                    "no confirm from RabbitMQ within {:?}",
                    inner.timeout
                )))
            }
        };
        (result, None)
    }

    /// Publishes `entries` on one channel, then awaits their confirms.
    async fn send(&self, entries: &[&Entry]) -> Vec<PublishResult> {
        if entries.is_empty() {
            return Vec::new();
        }
        let inner = &*self.inner;
        let (channel, generation) = match self.channel().await {
            Ok(open) => open,
            Err(err) => {
                if err.is_unavailable() {
                    return vec![Err(err)];
                }
                // The exchange could not be declared: it concerns them all.
                return vec![Err(err); entries.len()];
            }
        };
        let options = BasicPublishOptions {
            mandatory: inner.mandatory,
            ..BasicPublishOptions::default()
        };

        // One deadline for the whole batch: sending (a blocked connection
        // stops reading) and confirms.
        let deadline = Instant::now() + inner.timeout;

        // 1. Publish everything without waiting for confirms.
        let mut pending = Vec::with_capacity(entries.len());
        let mut send_failure = None;
        for entry in entries {
            let message = match self.message(entry) {
                Ok(message) => message,
                Err(err) => {
                    pending.push(Pending::Invalid(err));
                    continue;
                }
            };
            let publish = channel.basic_publish(
                inner.exchange.as_str().into(),
                message.routing_key,
                options,
                message.payload,
                message.properties,
            );
            match tokio::time::timeout_at(deadline, publish).await {
                Ok(Ok(confirm)) => pending.push(Pending::Sent(confirm)),
                Ok(Err(err)) => {
                    send_failure = Some(match classify(&err) {
                        Failure::Refused { reason, .. } | Failure::Unavailable(reason) => reason,
                    });
                    break;
                }
                Err(_) => {
                    send_failure = Some(format!(
                        "RabbitMQ did not take the messages within {:?}",
                        inner.timeout
                    ));
                    break;
                }
            }
        }

        // 2. Await the confirms, in order.
        let mut results = Vec::with_capacity(entries.len());
        let mut refused: Option<(String, bool)> = None;
        for item in pending {
            let confirm = match item {
                Pending::Invalid(err) => {
                    results.push(Err(err));
                    continue;
                }
                Pending::Sent(confirm) => confirm,
            };
            let (result, refusal) = self
                .outcome(tokio::time::timeout_at(deadline, confirm).await, generation)
                .await;
            if refusal.is_some() {
                refused = refusal;
            }
            let unavailable = result.as_ref().is_err_and(PublishError::is_unavailable);
            results.push(result);
            if unavailable {
                // The relay stops here; the rest are not attempted.
                return results;
            }
            if let Some((reason, whole_batch)) = &refused {
                if *whole_batch {
                    // The exchange refuses them all, sent or not.
                    let err = PublishError::rejected(reason);
                    results.resize(entries.len(), Err(err));
                }
                // Otherwise only this entry is blamed; the rest of the
                // batch goes out again on a new channel, at no cost.
                return results;
            }
        }
        if let Some(reason) = send_failure {
            // Nothing before it was refused: the channel or connection broke.
            self.reset(generation).await;
            results.push(Err(PublishError::unavailable(reason)));
        }
        results
    }
}

impl<E: Event> Publisher<E> for AmqpPublisher {
    async fn publish(&self, event: &Recorded<E>) -> PublishResult {
        first(self.send(&[event.entry()]).await)
    }

    async fn publish_batch(&self, events: &[Recorded<E>]) -> Vec<PublishResult> {
        let entries: Vec<&Entry> = events.iter().map(Recorded::entry).collect();
        self.send(&entries).await
    }
}

impl RawPublisher for AmqpPublisher {
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
            "RabbitMQ publisher returned no result",
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let publisher = AmqpPublisher::builder("amqp://guest:s3cret@127.0.0.1:5672/%2f")
            .exchange("events")
            .build()
            .unwrap();
        let debug = format!("{publisher:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("***@127.0.0.1:5672"), "{debug}");
    }

    #[test]
    fn declaring_the_default_exchange_is_a_config_error() {
        let err = AmqpPublisher::builder("amqp://127.0.0.1")
            .declare_exchange(ExchangeKind::Topic)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("declare_exchange"), "{err}");
    }

    #[test]
    fn build_checks_the_uri_without_leaking_it() {
        let err = AmqpPublisher::builder("http://guest:s3cret@127.0.0.1")
            .build()
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("amqp"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
    }
}
