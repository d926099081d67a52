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
//! | `headers`                | the entry's headers as strings, plus [`VERSION_HEADER`] (always) and [`STREAM_KEY_HEADER`], [`CORRELATION_ID_HEADER`], [`CAUSATION_ID_HEADER`] when set |
//!
//! [`VERSION_HEADER`] (`outbox-event-version`) is the version of the event
//! type that recorded the entry ([`Entry::version`]), in decimal, on every
//! message (`1` too), as a text value like the other headers. The body is the
//! payload as that version wrote it (unless
//! [`publish_upcast`](crate::PublishersBuilder::publish_upcast) is on): a
//! consumer decodes it by this version. The inbox's
//! [AMQP source](crate::inbox::amqp) reads it back.
//!
//! # Failures
//!
//! Every failure has a kind (see "Failure scopes" in [the publisher
//! docs](crate::publisher)): *rejected* costs the entry an attempt and, after
//! the last one, makes it a dead letter; *unavailable* costs nothing, blocks
//! the publisher (listed by [`Publishers::blocked`](crate::Publishers::blocked)
//! with the reason below) and pauses it until RabbitMQ answers again. A
//! setting that is wrong on the broker's side (a missing exchange, nothing
//! bound, a refused login) is *unavailable*, never a rejection: after a
//! deploy mistake the backlog waits, and goes out by itself once it is fixed.
//!
//! | what RabbitMQ does | kind | the reason says |
//! |---|---|---|
//! | acks the message | published | |
//! | returns it (`312 NO_ROUTE`: [mandatory](AmqpPublisherBuilder::mandatory), no queue bound for its routing key), then acks it | unavailable | no queue is bound to exchange `x` for routing key `k` (`312 NO_ROUTE`): the message was returned; bind a queue or publish with `.mandatory(false)` |
//! | closes the channel, `404 NOT_FOUND` (the exchange does not exist) | unavailable | exchange `x` does not exist (`404 NOT_FOUND`); declare it or fix `.exchange(..)` |
//! | closes the channel, `403 ACCESS_REFUSED` (the user may not write to the exchange, or declare it) | unavailable | the user may not publish to exchange `x`: grant it write permission |
//! | closes the channel on [`declare_exchange`](AmqpPublisherBuilder::declare_exchange), `406 PRECONDITION_FAILED` (the exchange exists with another type or settings) | unavailable | exchange `x` exists with other settings; make `.declare_exchange(..)` match it |
//! | closes the channel with another channel error (`405 RESOURCE_LOCKED`, ...) | unavailable | the broker's text |
//! | refuses the login, `403 ACCESS_REFUSED` (wrong user or password) | unavailable | check the user and password in the URI |
//! | refuses the virtual host, `530 NOT_ALLOWED` (it does not exist, or the user has no access) | unavailable | check the vhost in the URI and the user's permissions |
//! | cannot be reached (connection refused, DNS, no answer within the [`timeout`](AmqpPublisherBuilder::timeout)) | unavailable | cannot connect to RabbitMQ at `host` |
//! | fails the TLS handshake of an `amqps://` URI (untrusted certificate, wrong host name, a plaintext port) | unavailable | the TLS handshake failed, and why |
//! | closes the connection (`320 CONNECTION_FORCED` on `rabbitmqctl stop_app`, any other connection error, a lost socket, missed heartbeats) | unavailable | the broker's text; the connection is opened again on the next call |
//! | sends no confirm within the [`timeout`](AmqpPublisherBuilder::timeout) (also while a memory or disk alarm blocks publishers) | unavailable | no confirm within the timeout; the connection is opened again |
//! | nacks the message (a queue's `reject-publish` overflow, an internal error in a queue) | transient: an attempt while other messages are acked; when every message is nacked (a full queue) the publisher is blocked instead | RabbitMQ nacked the message |
//! | closes the channel over one message: `406 PRECONDITION_FAILED` (e.g. over the broker's `max_message_size`), `311 CONTENT_TOO_LARGE` | rejected | the broker's text |
//! | (the entry cannot be expressed in AMQP: a routing key, event name or header name over 255 bytes) | rejected | which field is too long |
//!
//! A rejection concerns its entry only; the other entries of the batch are
//! delivered or given back at no cost. When RabbitMQ closes the channel over
//! one message it does not say which one: the first entry of the batch not
//! yet confirmed is charged and the rest are given back (if earlier messages
//! were still awaiting their confirm, one of them may be charged instead: it
//! costs that entry one attempt and a duplicate, and the culprit, tried
//! next, is charged in its turn). A channel that RabbitMQ closed is replaced
//! on the next call; the connection stays.
//!
//! # Batches
//!
//! [`Publisher::publish_batch`] and [`RawPublisher::publish_raw_batch`]
//! publish the whole batch on one channel, then await the confirms once, so
//! a batch costs about one round trip. Delivery is at least once: a confirm
//! that is lost (timeout, connection closed) makes the entry go out again
//! later. Consumers deduplicate on `message_id`.
//!
//! # Connections and TLS
//!
//! The publisher connects on first use (or when [`AmqpPublisher::connect`] is
//! called), keeps one connection and one confirm-mode channel, and replaces
//! them when they break. Clones share them. The URI's password never appears
//! in `Debug` output or in errors.
//!
//! An `amqps://` URI is always TLS (rustls on *ring*), never a plaintext
//! fallback: the broker's certificate must be valid for the URI's host and
//! signed by a CA among the system roots or given with
//! [`tls_ca_pem`](AmqpPublisherBuilder::tls_ca_pem). A handshake that fails
//! is an outage (unavailable) naming the reason.
//!
//! ```no_run
//! # use outbox::publisher::amqp::AmqpPublisher;
//! let rabbit = AmqpPublisher::builder("amqps://app:secret@rabbit.internal:5671/%2f")
//!     .exchange("billing")
//!     .tls_ca_pem(std::fs::read("/etc/outbox/rabbit-ca.pem")?)
//!     .build()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::redact::redact_url;
use crate::entry::{Entry, Recorded};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::publisher::{PublishError, PublishResult, Publisher, RawPublisher};

/// Header carrying the event version ([`Entry::version`]) in decimal, on
/// every message.
pub const VERSION_HEADER: &str = "outbox-event-version";
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
    endpoint: Endpoint,
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
            .field("uri", &redact_url(&inner.endpoint.uri))
            .field("exchange", &inner.exchange)
            .field("custom_routing_key", &inner.routing_key.is_some())
            .field("declare", &inner.declare)
            .field("mandatory", &inner.mandatory)
            .field("timeout", &inner.timeout)
            .field("tls_ca_pem", &inner.endpoint.tls.cert_chain.is_some())
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
    tls_ca_pem: Option<Vec<u8>>,
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
            .field("tls_ca_pem", &self.tls_ca_pem.is_some())
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
    /// exist. A declaration that conflicts with the existing exchange
    /// (`406 PRECONDITION_FAILED`) makes the publisher unavailable, with the
    /// broker's reason, until the two agree.
    pub fn declare_exchange(mut self, kind: ExchangeKind) -> Self {
        self.declare = Some(kind);
        self
    }

    /// Whether messages are published *mandatory* (default `true`): a message
    /// that no queue receives is returned by the broker (`312 NO_ROUTE`) and
    /// the publisher is unavailable (blocked, no attempt counted) until a
    /// queue is bound, instead of the message being dropped silently while
    /// counting as published. Set `false` for exchanges where having no
    /// queue bound is normal.
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

    /// Trusts the CA certificate(s) in this PEM text for `amqps://`, next
    /// to the system roots (for a broker whose certificate a private CA
    /// signed). [`build`](Self::build) fails if the URI is not `amqps://` or
    /// the text holds no certificate.
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_ca_pem = Some(pem.into());
        self
    }

    /// Checks the URI, exchange name and TLS settings and builds the
    /// publisher. Does not connect: see [`AmqpPublisher::connect`].
    pub fn build(self) -> Result<AmqpPublisher> {
        let config = |reason: String| Error::PublisherConfig {
            publisher: "amqp",
            reason,
        };
        let endpoint = Endpoint::new(self.uri, self.tls_ca_pem).map_err(config)?;
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
                endpoint,
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

/// Where a broker is and how to reach it: what the publisher and the inbox
/// source (`inbox::amqp`) share. The URI is kept only for redacted messages.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub(crate) uri: String,
    pub(crate) parsed: AMQPUri,
    pub(crate) tls: OwnedTLSConfig,
}

impl Endpoint {
    /// Parses `uri` and checks `tls_ca_pem` (it needs `amqps://` and at
    /// least one certificate). The error never holds the password.
    pub(crate) fn new(uri: String, tls_ca_pem: Option<Vec<u8>>) -> Result<Self, String> {
        let parsed = uri
            .parse::<AMQPUri>()
            .map_err(|err| format!("URI {} does not parse: {err}", redact_url(&uri)))?;
        let mut tls = OwnedTLSConfig::default();
        if let Some(pem) = tls_ca_pem {
            if parsed.scheme != AMQPScheme::AMQPS {
                return Err(format!(
                    "{} is not an amqps:// URI, but `tls_ca_pem` asks for TLS",
                    redact_url(&uri)
                ));
            }
            tls.cert_chain = Some(checked_pem(pem)?);
        }
        Ok(Self { uri, parsed, tls })
    }

    /// Opens a connection named `name` (TLS for `amqps://`) within
    /// `timeout`; the error says what to fix.
    pub(crate) async fn connect(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<Connection, String> {
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let connect = async {
            let runtime = lapin::runtime::default_runtime()?;
            Connection::connect_uri_with_config(
                self.parsed.clone(),
                properties,
                self.tls.clone(),
                runtime,
            )
            .await
        };
        match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(err)) => Err(self.connect_failure(&err)),
            Err(_) => Err(format!(
                "cannot connect to RabbitMQ at {}: no answer within {timeout:?}",
                redact_url(&self.uri)
            )),
        }
    }

    /// Why a connection could not be opened: the login, the vhost, the TLS
    /// handshake, or the broker out of reach.
    fn connect_failure(&self, err: &lapin::Error) -> String {
        match err.kind() {
            lapin::ErrorKind::ProtocolError(amqp) => {
                let said = amqp.get_message().as_str();
                match amqp.kind() {
                    AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => format!(
                        "RabbitMQ refused the login (403 ACCESS_REFUSED): check the user and \
                         password in the URI [{said}]"
                    ),
                    AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => format!(
                        "RabbitMQ refused the virtual host `{}` (530 NOT_ALLOWED): check \
                         the vhost in the URI (`%2f` is `/`) and the user's permissions [{said}]",
                        self.parsed.vhost
                    ),
                    _ => format!("RabbitMQ closed the connection ({}): {said}", amqp.get_id()),
                }
            }
            lapin::ErrorKind::IOError(io)
                if self.parsed.scheme == AMQPScheme::AMQPS
                    && matches!(
                        io.kind(),
                        std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
                    ) =>
            {
                format!(
                    "the TLS handshake with RabbitMQ at {} failed: {io} (is the port a TLS port? \
                     is the broker's certificate valid for this host and signed by a CA of the \
                     system roots or of tls_ca_pem?)",
                    redact_url(&self.uri)
                )
            }
            _ => format!(
                "cannot connect to RabbitMQ at {}: {err}",
                redact_url(&self.uri)
            ),
        }
    }
}

/// The PEM text of `tls_ca_pem` if it holds at least one certificate and
/// nothing that fails to parse.
fn checked_pem(pem: Vec<u8>) -> Result<String, String> {
    let mut certificates = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        cert.map_err(|err| format!("tls_ca_pem: {err}"))?;
        certificates += 1;
    }
    if certificates == 0 {
        return Err("tls_ca_pem: no CERTIFICATE block in the PEM text".to_owned());
    }
    String::from_utf8(pem).map_err(|_| "tls_ca_pem: the PEM text is not UTF-8".to_owned())
}

/// Where a lapin error happened; the same AMQP code means different things
/// at each step.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Opening a channel and declaring the exchange.
    Open,
    /// Publishing and awaiting confirms.
    Publish,
}

/// What a failed call means for the entries and the link.
enum Failure {
    /// RabbitMQ closed the channel over one message: that entry is rejected.
    Message(String),
    /// The destination is misconfigured or refuses us: unavailable; RabbitMQ
    /// closed the channel, the connection stays.
    Setup(String),
    /// The connection is gone or never opened: unavailable; open a new one.
    Link(String),
}

impl Failure {
    fn into_error(self) -> PublishError {
        match self {
            Self::Message(reason) => PublishError::rejected(reason),
            Self::Setup(reason) | Self::Link(reason) => PublishError::unavailable(reason),
        }
    }
}

impl Inner {
    /// The exchange as the reasons name it.
    fn exchange_shown(&self) -> String {
        if self.exchange.is_empty() {
            "the default exchange \"\"".to_owned()
        } else {
            format!("exchange `{}`", self.exchange)
        }
    }

    /// Classifies a lapin error met at `step`, with a reason that says what
    /// to fix.
    fn classify(&self, err: &lapin::Error, step: Step) -> Failure {
        let vhost = &self.endpoint.parsed.vhost;
        let exchange = self.exchange_shown();
        match err.kind() {
            lapin::ErrorKind::ProtocolError(amqp) => {
                let said = amqp.get_message().as_str();
                let code = amqp.get_id();
                match (amqp.kind(), step) {
                    (AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND), _) => Failure::Setup(format!(
                        "RabbitMQ: {exchange} does not exist in vhost `{vhost}` (404 NOT_FOUND); \
                         declare it or fix .exchange(..) [{said}]"
                    )),
                    (AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED), _) => {
                        Failure::Setup(format!(
                            "RabbitMQ: the user may not publish to {exchange} (403 ACCESS_REFUSED); \
                             grant it write permission (and configure permission for \
                             declare_exchange) [{said}]"
                        ))
                    }
                    (AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED), Step::Open) => {
                        Failure::Setup(format!(
                            "RabbitMQ: {exchange} exists with other settings (406 \
                             PRECONDITION_FAILED); make .declare_exchange(..) match it [{said}]"
                        ))
                    }
                    (
                        AMQPErrorKind::Soft(
                            AMQPSoftError::PRECONDITIONFAILED | AMQPSoftError::CONTENTTOOLARGE,
                        ),
                        Step::Publish,
                    ) => Failure::Message(format!(
                        "RabbitMQ refused the message and closed the channel ({code}): {said}"
                    )),
                    (AMQPErrorKind::Hard(_), _) => {
                        Failure::Link(format!("RabbitMQ closed the connection ({code}): {said}"))
                    }
                    (AMQPErrorKind::Soft(_), _) => Failure::Setup(format!(
                        "RabbitMQ closed the channel on {exchange} ({code}): {said}"
                    )),
                }
            }
            _ => Failure::Link(format!("RabbitMQ unavailable: {err}")),
        }
    }

    /// The reason for a message RabbitMQ returned as unroutable.
    fn unroutable(&self, routing_key: &str, code: u16, text: &str) -> String {
        if self.exchange.is_empty() {
            format!(
                "RabbitMQ: no queue is named `{routing_key}` (the default exchange routes by queue \
                 name) ({code} {text}): the message was returned; declare the queue, fix the \
                 routing key, or publish with .mandatory(false)"
            )
        } else {
            format!(
                "RabbitMQ: no queue is bound to exchange `{}` for routing key `{routing_key}` \
                 ({code} {text}): the message was returned; bind a queue or publish with \
                 .mandatory(false)",
                self.exchange
            )
        }
    }
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

/// What one awaited confirm means for its entry, and whether the rest of
/// the batch can still be judged (`false`: the channel or link is gone).
struct Outcome {
    result: PublishResult,
    go_on: bool,
}

impl AmqpPublisher {
    /// Starts configuring a publisher for the broker at `uri`, e.g.
    /// `amqp://guest:guest@127.0.0.1:5672/%2f` (the last segment is the
    /// vhost, `%2f` being `/`), or `amqps://...:5671/...` for TLS.
    pub fn builder(uri: impl Into<String>) -> AmqpPublisherBuilder {
        AmqpPublisherBuilder {
            uri: uri.into(),
            exchange: String::new(),
            routing_key: None,
            declare: None,
            mandatory: true,
            timeout: Duration::from_secs(10),
            tls_ca_pem: None,
        }
    }

    /// Connects now (and declares the exchange if asked) instead of on first
    /// use, to find a wrong URI, wrong credentials, a failing TLS handshake
    /// or a missing broker at startup. Publishing works without calling it.
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
                    Err(failure) => {
                        if matches!(failure, Failure::Link(_)) {
                            // A connection that cannot open a channel is no good.
                            link.open = None;
                            link.generation += 1;
                        }
                        return Err(failure.into_error());
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
        let connection = self.open_connection().await?;
        let channel = self
            .open_channel(&connection)
            .await
            .map_err(Failure::into_error)?;
        tracing::debug!(uri = %redact_url(&inner.endpoint.uri), "connected to RabbitMQ");
        link.open = Some((connection, channel.clone()));
        Ok((channel, link.generation))
    }

    /// Opens a connection (TLS for `amqps://`), within the timeout.
    async fn open_connection(&self) -> Result<Connection, PublishError> {
        let inner = &*self.inner;
        inner
            .endpoint
            .connect("outbox", inner.timeout)
            .await
            .map_err(PublishError::unavailable)
    }

    /// Opens a channel in confirm mode and declares the exchange if asked.
    async fn open_channel(&self, connection: &Connection) -> Result<Channel, Failure> {
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
            Ok(Err(err)) => Err(inner.classify(&err, Step::Open)),
            Err(_) => Err(Failure::Link(format!(
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
        text_header(VERSION_HEADER, entry.version().to_string());
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

    /// What one awaited confirm means for its entry.
    async fn outcome(
        &self,
        confirmed: Result<lapin::Result<Confirmation>, tokio::time::error::Elapsed>,
        generation: u64,
    ) -> Outcome {
        let inner = &*self.inner;
        let (result, go_on) = match confirmed {
            Ok(Ok(Confirmation::Ack(None))) => (Ok(()), true),
            // Returned (mandatory, unroutable): the broker answers every
            // message of the batch alike, so the others are still judged.
            Ok(Ok(Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)))) => (
                Err(PublishError::unavailable(inner.unroutable(
                    returned.delivery.routing_key.as_str(),
                    returned.reply_code,
                    returned.reply_text.as_str(),
                ))),
                true,
            ),
            // A nack is the broker's "not now" (a full queue under
            // `reject-publish`): charged to the entry while other messages
            // are acked, the destination's when every message is nacked.
            Ok(Ok(Confirmation::Nack(None))) => (
                Err(PublishError::transient(
                    "RabbitMQ nacked the message (it could not take responsibility for it, \
                     e.g. a queue's reject-publish overflow)",
                )),
                true,
            ),
            Ok(Ok(Confirmation::NotRequested)) => {
                self.reset(generation).await;
                (
                    Err(PublishError::unavailable(
                        "the channel is not in confirm mode; it will be reopened",
                    )),
                    false,
                )
            }
            Ok(Err(err)) => {
                let failure = inner.classify(&err, Step::Publish);
                if matches!(failure, Failure::Link(_)) {
                    self.reset(generation).await;
                }
                (Err(failure.into_error()), false)
            }
            Err(_) => {
                self.reset(generation).await;
                (
                    Err(PublishError::unavailable(format!(
                        "no confirm from RabbitMQ within {:?}",
                        inner.timeout
                    ))),
                    false,
                )
            }
        };
        Outcome { result, go_on }
    }

    /// Publishes `entries` on one channel, then awaits their confirms.
    async fn send(&self, entries: &[&Entry]) -> Vec<PublishResult> {
        if entries.is_empty() {
            return Vec::new();
        }
        let inner = &*self.inner;
        let (channel, generation) = match self.channel().await {
            Ok(open) => open,
            // Unavailable: the relay stops here; the rest are not attempted.
            Err(err) => return vec![Err(err)],
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
                    // Usually the channel closing over an earlier message,
                    // whose confirm says why.
                    send_failure = Some(inner.classify(&err, Step::Publish));
                    break;
                }
                Err(_) => {
                    send_failure = Some(Failure::Link(format!(
                        "RabbitMQ did not take the messages within {:?}",
                        inner.timeout
                    )));
                    break;
                }
            }
        }

        // 2. Await the confirms, in order.
        let mut results = Vec::with_capacity(entries.len());
        for item in pending {
            let confirm = match item {
                Pending::Invalid(err) => {
                    results.push(Err(err));
                    continue;
                }
                Pending::Sent(confirm) => confirm,
            };
            let outcome = self
                .outcome(tokio::time::timeout_at(deadline, confirm).await, generation)
                .await;
            results.push(outcome.result);
            if !outcome.go_on {
                // The channel or the connection is gone: the rest of the
                // batch goes out again later, at no cost.
                return results;
            }
        }
        if let Some(failure) = send_failure {
            // Nothing before it was refused: the channel or connection broke.
            self.reset(generation).await;
            let reason = match failure {
                Failure::Message(reason) | Failure::Setup(reason) | Failure::Link(reason) => reason,
            };
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

    #[test]
    fn a_ca_needs_amqps_and_a_certificate() {
        // A CA asks for TLS: a plaintext URI with one is a mistake, not a fallback.
        let err = AmqpPublisher::builder("amqp://guest:s3cret@127.0.0.1:5672/%2f")
            .tls_ca_pem(TEST_CA)
            .build()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("amqps://") && err.contains("tls_ca_pem"),
            "{err}"
        );
        assert!(!err.contains("s3cret"), "{err}");
        for pem in [
            &b"not a certificate"[..],
            b"-----BEGIN CERTIFICATE-----\nAAAA\n",
        ] {
            let err = AmqpPublisher::builder("amqps://127.0.0.1:5671/%2f")
                .tls_ca_pem(pem)
                .build()
                .unwrap_err();
            assert!(err.to_string().contains("tls_ca_pem"), "{err}");
        }
        let publisher = AmqpPublisher::builder("amqps://127.0.0.1:5671/%2f")
            .tls_ca_pem(TEST_CA)
            .build()
            .unwrap();
        assert!(format!("{publisher:?}").contains("tls_ca_pem: true"));
    }

    /// A throwaway self-signed CA certificate (its key was never kept).
    const TEST_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBkDCCATegAwIBAgIUX8ti2FDras9f0J/5UkuRp1go1PQwCgYIKoZIzj0EAwIw
HjEcMBoGA1UEAwwTb3V0Ym94LXVuaXQtdGVzdC1jYTAeFw0yNjExMzAxMTAyNDVa
Fw0zNjExMjcxMTAyNDVaMB4xHDAaBgNVBAMME291dGJveC11bml0LXRlc3QtY2Ew
WTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQn/jMVljM7QQdCp4mX1WXlo0Qxveb6
UWT3jNiijw8A6m4ivp55LxjM9jqEV6jISB9UVr+bEu/C8U8Q6wPSSNNvo1MwUTAd
BgNVHQ4EFgQU+KdiL6KecZPrrSaGZxqlp5Tjg90wHwYDVR0jBBgwFoAU+KdiL6Ke
cZPrrSaGZxqlp5Tjg90wDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNHADBE
AiBobARhdF0R8k9pS/XRRkp9LsGhRu8JDqUGs31zQBwGUgIgT+slgjLoItQw5EOm
dMSZYNvmzZL2KLtGmAkB5cMBSPk=
-----END CERTIFICATE-----
";
}
