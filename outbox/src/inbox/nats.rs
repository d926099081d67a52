//! NATS JetStream source: a durable pull consumer with explicit acks, on
//! [async-nats](https://docs.rs/async-nats).
//!
//! [`NatsSource`] pulls messages from an existing JetStream stream through a
//! durable pull consumer and hands them to a [`Consume`](super::Consume)
//! loop; each message is acknowledged only after the inbox transaction
//! committed. What [`publisher::nats`](crate::publisher::nats) publishes
//! round-trips without configuration.
//!
//! ```no_run
//! use outbox::inbox::nats::NatsSource;
//! use outbox::inbox::{Consumers, Inbox};
//! # async fn run(inbox: Inbox<outbox::sqlx::Postgres>, consumers: Consumers<outbox::sqlx::Postgres>) -> outbox::Result<()> {
//! // The stream `EVENTS` exists (it captures `events.>`); the durable
//! // consumer `billing` is created on first start and reused afterwards.
//! let source = NatsSource::builder("nats://127.0.0.1:4222", "EVENTS", "billing")
//!     .filter_subject("events.billing.>")
//!     .batch(32)
//!     .build()
//!     .await?;
//! inbox
//!     .consume(consumers)
//!     .max_in_flight(32)
//!     .run(source, async { /* shutdown signal */ })
//!     .await;
//! # Ok(())
//! # }
//! ```
//!
//! # The message
//!
//! | NATS | [`Message`] |
//! |---|---|
//! | payload | the payload (JSON text; bytes that are not UTF-8 make a dead letter) |
//! | `Nats-Msg-Id` | the event id (the dedupe key; a message without it is a dead letter) |
//! | [`EVENT_NAME_HEADER`] (`outbox-event-name`) | the event name |
//! | [`VERSION_HEADER`] (`outbox-event-version`) | the event version ([`Entry::version`](crate::Entry::version)): the consumer decodes the payload by it, upcasting an older one. Without it, version 1 (a sender from before versions); a value that is not an integer from 1 makes a dead letter |
//! | [`STREAM_KEY_HEADER`] (`outbox-stream-key`) | the stream key |
//! | [`CORRELATION_ID_HEADER`] (`outbox-correlation-id`) | the correlation id |
//! | [`CAUSATION_ID_HEADER`] (`outbox-causation-id`) | the causation id |
//! | any other `Nats-*` header | ignored (the server's metadata) |
//! | every other header | an entry header, as given (the last value of a repeated one) |
//!
//! Header names are matched without regard to case.
//!
//! A message of a version newer than its consumer's event type knows (the
//! sender deployed first) is a dead letter whose reason says so: requeue
//! it (`outbox inbox dead requeue`) once a consumer that knows the version
//! runs. An older version is upcast to the consumer's (see
//! [`Event::decode`](crate::Event::decode)).
//!
//! # Acknowledgements
//!
//! | the loop | NATS |
//! |---|---|
//! | settled the message (processed, duplicate, dead letter) after the commit | a double ack (`+ACK`, then wait for the server to confirm it): an ack the server did not take is reported as an ack failure; the message comes back after `ack_wait` and the inbox skips it |
//! | still works on it (a retry backoff, a database outage), every 10 s | `+WPI` (progress): the server restarts its `ack_wait` |
//! | stops without settling it | `-NAK` (no delay): redelivered at once to another consumer of the durable |
//!
//! A consumer that dies leaves its messages unacknowledged: JetStream
//! delivers them again after [`ack_wait`](NatsSourceBuilder::ack_wait) to
//! whichever client pulls from the durable next (a restarted process, or
//! another one sharing the durable).
//!
//! # Pulling
//!
//! The source keeps one pull subscription open and asks for
//! [`batch`](NatsSourceBuilder::batch) messages at a time, asking for more
//! when half are taken: about `batch` to `1.5 × batch` messages wait in the
//! client, delivered but not acknowledged, and their `ack_wait` runs. Set
//! `batch` to the loop's [`max_in_flight`](super::Consume::max_in_flight).
//! [`Source::next`] is cancel-safe: a message it had not returned stays in
//! the subscription, and one the client dropped is redelivered after
//! `ack_wait`.
//!
//! # Failures
//!
//! Reconnecting is async-nats' own. A pull error (a missed heartbeat, the
//! consumer deleted, no responders) is returned as an error, so the loop
//! logs it and pauses; the next call opens a new pull subscription (and
//! creates the durable again if it was deleted). [`build`](NatsSourceBuilder::build)
//! fails with [`Error::InboxSource`] for a URL that does not parse, a
//! server that cannot be reached (or refuses the credentials, or fails the
//! TLS handshake) and a stream that does not exist. URLs in errors and
//! `Debug` output never show credentials.
//!
//! # TLS
//!
//! As for the publisher: TLS (rustls on ring) for a `tls://` URL, with
//! [`tls_ca_pem`](NatsSourceBuilder::tls_ca_pem), or when the server
//! requires it; never a plaintext fallback.

use std::fmt;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::message::Acker as JsAcker;
use async_nats::jetstream::{self, AckKind};
use async_nats::rustls::ClientConfig;
use async_trait::async_trait;
use futures_util::StreamExt;

use super::{Acker, Delivery, Message, Source, SourceError};
use crate::error::{Error, Result};
use crate::publisher::nats::{
    CAUSATION_ID_HEADER, CORRELATION_ID_HEADER, EVENT_NAME_HEADER, STREAM_KEY_HEADER,
    VERSION_HEADER, client_config, connect, shown,
};

/// The header carrying the event id (JetStream's own dedup id).
const MSG_ID_HEADER: &str = "Nats-Msg-Id";
/// How long connecting, asking the server and confirming an ack may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A JetStream durable pull consumer as an inbox [`Source`]; see the
/// [module docs](self).
pub struct NatsSource {
    url: String,
    stream: jetstream::stream::Stream,
    config: pull::Config,
    batch: usize,
    consumer: Option<PullConsumer>,
    messages: Option<pull::Stream>,
}

impl fmt::Debug for NatsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSource")
            .field("url", &shown(&self.url))
            .field("durable", &self.config.durable_name)
            .field("filter_subject", &self.config.filter_subject)
            .field("batch", &self.batch)
            .field("ack_wait", &self.config.ack_wait)
            .finish_non_exhaustive()
    }
}

/// Configures a [`NatsSource`]; start with [`NatsSource::builder`].
#[must_use]
pub struct NatsSourceBuilder {
    url: String,
    stream: String,
    durable: String,
    filter_subject: String,
    batch: usize,
    ack_wait: Duration,
    tls_ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for NatsSourceBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSourceBuilder")
            .field("url", &shown(&self.url))
            .field("stream", &self.stream)
            .field("durable", &self.durable)
            .field("filter_subject", &self.filter_subject)
            .field("batch", &self.batch)
            .field("ack_wait", &self.ack_wait)
            .field("tls_ca_pem", &self.tls_ca_pem.is_some())
            .finish()
    }
}

impl NatsSource {
    /// Starts configuring a source that reads the JetStream stream `stream`
    /// through the durable pull consumer `durable`, from the server at
    /// `url` (`nats://host:4222`, `tls://host:4222`; credentials may be in
    /// the URL).
    pub fn builder(url: impl Into<String>, stream: &str, durable: &str) -> NatsSourceBuilder {
        NatsSourceBuilder {
            url: url.into(),
            stream: stream.to_owned(),
            durable: durable.to_owned(),
            filter_subject: String::new(),
            batch: 32,
            ack_wait: Duration::from_secs(30),
            tls_ca_pem: None,
        }
    }
}

impl NatsSourceBuilder {
    /// Reads only the stream's messages on this subject (wildcards allowed:
    /// `events.billing.>`). Default: every message of the stream.
    pub fn filter_subject(mut self, subject: impl Into<String>) -> Self {
        self.filter_subject = subject.into();
        self
    }

    /// Messages asked for per pull request (at least 1). Default 32. Set it
    /// to the loop's [`max_in_flight`](super::Consume::max_in_flight): more
    /// would wait in the client with their `ack_wait` running.
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// How long JetStream waits for the ack of a delivered message before
    /// it delivers it again (default 30 s). The loop sends progress every
    /// 10 s for a message it holds, so keep it above that; a dead consumer's
    /// messages come back after it.
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// Trusts the CA certificate(s) in this PEM text, next to the system
    /// roots, and requires TLS. [`build`](Self::build) fails if the text
    /// holds no certificate.
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_ca_pem = Some(pem.into());
        self
    }

    /// Connects, checks that the stream exists, and creates the durable
    /// pull consumer (explicit acks) or updates an existing one to these
    /// settings.
    pub async fn build(self) -> Result<NatsSource> {
        let fail = |reason: String| Error::InboxSource {
            broker: "nats",
            reason,
        };
        if self.url.trim().is_empty() {
            return Err(fail("the server URL is empty".to_owned()));
        }
        for server in self.url.split(',') {
            if server.trim().parse::<async_nats::ServerAddr>().is_err() {
                return Err(fail(format!(
                    "server address {} does not parse",
                    shown(server.trim())
                )));
            }
        }
        if self.durable.is_empty() {
            return Err(fail("the durable consumer name is empty".to_owned()));
        }
        if self.ack_wait.is_zero() {
            return Err(fail("ack_wait is zero".to_owned()));
        }
        let tls: Option<ClientConfig> = match &self.tls_ca_pem {
            Some(pem) => Some(client_config(pem).map_err(fail)?),
            None => None,
        };
        let client = connect(&self.url, TIMEOUT, tls.is_some(), tls.as_ref())
            .await
            .map_err(fail)?;
        let context = jetstream::ContextBuilder::new()
            .timeout(TIMEOUT)
            .build(client);
        let stream = context.get_stream(&self.stream).await.map_err(|err| {
            let missing = matches!(err.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref e)
                if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND);
            if missing {
                fail(format!(
                    "JetStream stream `{}` does not exist on {}: create it (with subjects that \
                     capture what the publisher sends) before consuming",
                    self.stream,
                    shown(&self.url)
                ))
            } else {
                fail(format!(
                    "cannot read JetStream stream `{}` on {}: {err}",
                    self.stream,
                    shown(&self.url)
                ))
            }
        })?;
        let config = pull::Config {
            durable_name: Some(self.durable.clone()),
            filter_subject: self.filter_subject,
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            ..pull::Config::default()
        };
        let consumer = stream
            .create_consumer(config.clone())
            .await
            .map_err(|err| {
                fail(format!(
                    "cannot create the durable consumer `{}` on stream `{}`: {err}",
                    self.durable, self.stream
                ))
            })?;
        Ok(NatsSource {
            url: self.url,
            stream,
            config,
            batch: self.batch,
            consumer: Some(consumer),
            messages: None,
        })
    }
}

impl NatsSource {
    /// The open pull subscription, opening one (and creating the durable
    /// again if it was lost) when there is none.
    async fn messages(&mut self) -> Result<&mut pull::Stream, SourceError> {
        if self.messages.is_none() {
            if self.consumer.is_none() {
                self.consumer = Some(self.stream.create_consumer(self.config.clone()).await?);
            }
            let Some(consumer) = &self.consumer else {
                return Err("no durable consumer".into());
            };
            let messages = consumer
                .stream()
                .max_messages_per_batch(self.batch)
                .messages()
                .await?;
            self.messages = Some(messages);
        }
        match self.messages.as_mut() {
            Some(messages) => Ok(messages),
            None => Err("no pull subscription".into()),
        }
    }
}

#[async_trait]
impl Source for NatsSource {
    async fn next(&mut self) -> Result<Option<Delivery>, SourceError> {
        let durable = self.config.durable_name.clone().unwrap_or_default();
        let next = self.messages().await?.next().await;
        match next {
            Some(Ok(message)) => {
                let (message, acker) = message.split();
                Ok(Some(Delivery::new(message_of(&message), NatsAcker(acker))))
            }
            Some(Err(err)) => {
                use pull::MessagesErrorKind as Kind;
                match err.kind() {
                    Kind::ConsumerDeleted => {
                        self.messages = None;
                        self.consumer = None;
                    }
                    Kind::MissingHeartbeat
                    | Kind::NoResponders
                    | Kind::PushBasedConsumer
                    | Kind::RequestLimitExceeded => self.messages = None,
                    _ => {}
                }
                Err(format!("NATS pull from durable `{durable}` failed: {err}").into())
            }
            None => {
                self.messages = None;
                Err(
                    format!("NATS pull subscription of durable `{durable}` ended; pulling again")
                        .into(),
                )
            }
        }
    }
}

/// Settles one JetStream message; see the [module docs](self).
struct NatsAcker(JsAcker);

#[async_trait]
impl Acker for NatsAcker {
    async fn ack(self: Box<Self>) -> Result<(), SourceError> {
        self.0.double_ack().await
    }

    async fn release(self: Box<Self>) {
        if let Err(err) = self.0.ack_with(AckKind::Nak(None)).await {
            tracing::debug!(error = %err, "NATS nak failed; the message comes back after ack_wait");
        }
    }

    async fn keep_alive(&self) {
        if let Err(err) = self.0.ack_with(AckKind::Progress).await {
            tracing::debug!(error = %err, "NATS progress ack failed");
        }
    }
}

/// The inbox message of a NATS message: the table in the module docs.
fn message_of(nats: &async_nats::Message) -> Message {
    let mut message = Message::new(nats.payload.to_vec());
    let Some(headers) = &nats.headers else {
        return message;
    };
    for (name, values) in headers.iter() {
        let Some(value) = values.last() else {
            continue;
        };
        let (name, value): (&str, &str) = (name.as_ref(), value.as_str());
        let is = |ours: &str| name.eq_ignore_ascii_case(ours);
        message = if is(MSG_ID_HEADER) {
            message.event_id(value)
        } else if is(EVENT_NAME_HEADER) {
            message.name(value)
        } else if is(VERSION_HEADER) {
            message.version(value)
        } else if is(STREAM_KEY_HEADER) {
            message.stream_key(value)
        } else if is(CORRELATION_ID_HEADER) {
            message.correlation_id(value)
        } else if is(CAUSATION_ID_HEADER) {
            message.causation_id(value)
        } else if name
            .get(..5)
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case("nats-"))
        {
            message
        } else {
            message.header(name, value)
        };
    }
    message
}

#[cfg(test)]
mod tests {
    use async_nats::HeaderMap;

    use super::*;

    #[test]
    fn headers_map_to_the_message() {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", "0190a0a0-0000-7000-8000-000000000001");
        headers.insert(EVENT_NAME_HEADER, "billing.invoice_paid");
        headers.insert(VERSION_HEADER, "3");
        headers.insert(STREAM_KEY_HEADER, "invoice-7");
        headers.insert(
            CORRELATION_ID_HEADER,
            "0190a0a0-0000-7000-8000-000000000002",
        );
        headers.insert(CAUSATION_ID_HEADER, "0190a0a0-0000-7000-8000-000000000003");
        headers.insert("Nats-Expected-Stream", "EVENTS");
        headers.insert("tenant", "acme");
        let nats = async_nats::Message {
            subject: "events.billing.invoice_paid".into(),
            reply: None,
            payload: bytes::Bytes::from_static(b"{\"invoice_id\":7}"),
            headers: Some(headers),
            status: None,
            description: None,
            length: 0,
        };
        let want = Message::new(b"{\"invoice_id\":7}".to_vec())
            .event_id("0190a0a0-0000-7000-8000-000000000001")
            .name("billing.invoice_paid")
            .version("3")
            .stream_key("invoice-7")
            .correlation_id("0190a0a0-0000-7000-8000-000000000002")
            .causation_id("0190a0a0-0000-7000-8000-000000000003")
            .header("tenant", "acme");
        assert_eq!(message_of(&nats), want);
    }

    #[tokio::test]
    async fn build_errors_hide_credentials() {
        let err = NatsSource::builder("nats://u:s3cret@127.0.0.1:99999", "S", "d")
            .build()
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not parse"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        let debug = format!(
            "{:?}",
            NatsSource::builder("nats://u:s3cret@h:4222", "S", "d")
        );
        assert!(!debug.contains("s3cret"), "{debug}");
    }
}
