//! NATS JetStream publisher, on [async-nats](https://docs.rs/async-nats).
//!
//! [`NatsPublisher`] publishes every entry it is handed to a JetStream
//! subject derived from the event name and waits for the stream's publish
//! ack: an entry counts as published only once a stream stored it. The
//! event id travels as `Nats-Msg-Id`, so the server drops a second copy of
//! the same event inside the stream's duplicate window (2 minutes by
//! default): a batch that is published again after a crash before the
//! relay recorded it is stored once.
//!
//! ```no_run
//! use outbox::publisher::nats::NatsPublisher;
//! use outbox::Publishers;
//! # #[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
//! # #[outbox(name = "billing.invoice_paid")]
//! # struct InvoicePaid { amount_cents: i64 }
//! # async fn run<DB: outbox::Backend>(outbox: outbox::Outbox<DB>) -> outbox::Result<()> {
//!
//! // Publishes `billing.invoice_paid` to the subject `events.billing.invoice_paid`;
//! // a stream must capture it (e.g. subjects = ["events.>"]).
//! let nats = NatsPublisher::builder("nats://127.0.0.1:4222")
//!     .subject_prefix("events.")
//!     .build()?;
//!
//! let publishers = Publishers::builder()
//!     .publisher::<InvoicePaid, _>(nats.clone()) // typed
//!     .fallback(nats) // and every other event, raw
//!     .build()?;
//! outbox.relay(publishers).run(std::future::pending()).await;
//! # Ok(())
//! # }
//! ```
//!
//! # The message
//!
//! | NATS              | value                                                 |
//! |-------------------|-------------------------------------------------------|
//! | subject           | prefix + event name, or [`subject`](NatsPublisherBuilder::subject)'s choice |
//! | payload           | the payload exactly as stored (JSON text)             |
//! | `Nats-Msg-Id`     | the event id (server-side deduplication)              |
//! | [`EVENT_NAME_HEADER`] | the event name                                    |
//! | [`STREAM_KEY_HEADER`], [`CORRELATION_ID_HEADER`], [`CAUSATION_ID_HEADER`] | when set |
//! | other headers     | the entry's headers, as given (ours win on a clash)   |
//!
//! # Outcomes
//!
//! - **Published**: a stream acked the message (also when it recognised it as
//!   a duplicate of one it already stored).
//! - **Rejected** (costs an attempt): no stream captures the subject
//!   ("no JetStream stream matches subject `...`"); the stream refused the
//!   message (its limits, a message over the server's maximum payload); the
//!   entry cannot be expressed in NATS (an invalid subject, a header name or
//!   value NATS cannot carry).
//! - **Unavailable** (costs no attempt; the relay backs off and tries again):
//!   the server cannot be reached, no ack arrived within the
//!   [`timeout`](NatsPublisherBuilder::timeout), or JetStream answered that
//!   it is temporarily unavailable (503).
//!
//! # Batches and connections
//!
//! [`Publisher::publish_batch`] and [`RawPublisher::publish_raw_batch`] send
//! the whole batch, then await the acks, so a batch costs about one round
//! trip. The publisher connects on first use (or on
//! [`NatsPublisher::connect`]); afterwards the client reconnects by itself,
//! and messages sent while it is away are simply not acked in time
//! (unavailable), then sent again with the same `Nats-Msg-Id`. Clones share
//! one connection. Credentials in the URL never appear in `Debug` output or
//! in errors. TLS needs `tls://` or `tls_required` on the server side, which
//! this crate's build of async-nats supports (rustls on ring).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_nats::header::{self, HeaderMap, HeaderName, HeaderValue};
use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::{self, Context};
use bytes::Bytes;
use tokio::sync::Mutex;

use super::redact::redact_url;
use crate::entry::{Entry, Recorded};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::publisher::{PublishError, PublishResult, Publisher, RawPublisher};

/// Header carrying the event name.
pub const EVENT_NAME_HEADER: &str = "outbox-event-name";
/// Header carrying the entry's stream (aggregate) key, when it has one.
pub const STREAM_KEY_HEADER: &str = "outbox-stream-key";
/// Header carrying the entry's correlation id, when it has one.
pub const CORRELATION_ID_HEADER: &str = "outbox-correlation-id";
/// Header carrying the entry's causation id, when it has one.
pub const CAUSATION_ID_HEADER: &str = "outbox-causation-id";

type SubjectFn = dyn Fn(&Entry) -> String + Send + Sync;

enum Subject {
    Prefix(String),
    Custom(Box<SubjectFn>),
}

/// Publishes entries to NATS JetStream and awaits the publish acks; see the
/// [module docs](self). Cheap to clone: clones share one connection.
#[derive(Clone)]
pub struct NatsPublisher {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    subject: Subject,
    timeout: Duration,
    context: Mutex<Option<Context>>,
}

fn shown(url: &str) -> String {
    if url.contains("://") {
        redact_url(url)
    } else {
        redact_url(&format!("nats://{url}"))
    }
}

impl fmt::Debug for NatsPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        let mut s = f.debug_struct("NatsPublisher");
        s.field("url", &shown(&inner.url));
        match &inner.subject {
            Subject::Prefix(prefix) => s.field("subject_prefix", prefix),
            Subject::Custom(_) => s.field("subject", &"<fn>"),
        };
        s.field("timeout", &inner.timeout).finish_non_exhaustive()
    }
}

/// Configures a [`NatsPublisher`]; start with [`NatsPublisher::builder`].
#[must_use]
pub struct NatsPublisherBuilder {
    url: String,
    subject: Subject,
    timeout: Duration,
}

impl fmt::Debug for NatsPublisherBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("NatsPublisherBuilder");
        s.field("url", &shown(&self.url));
        match &self.subject {
            Subject::Prefix(prefix) => s.field("subject_prefix", prefix),
            Subject::Custom(_) => s.field("subject", &"<fn>"),
        };
        s.field("timeout", &self.timeout).finish()
    }
}

impl NatsPublisherBuilder {
    /// Publishes to `prefix` + event name (default: no prefix, the event name
    /// itself). Include the separator: `"events."`.
    pub fn subject_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.subject = Subject::Prefix(prefix.into());
        self
    }

    /// Chooses each entry's subject (replaces any prefix).
    ///
    /// ```
    /// # use outbox::publisher::nats::NatsPublisher;
    /// let nats = NatsPublisher::builder("nats://127.0.0.1:4222")
    ///     .subject(|entry| format!("events.{}.{}", entry.name(), entry.stream_key().unwrap_or("none")))
    ///     .build()?;
    /// # Ok::<(), outbox::Error>(())
    /// ```
    pub fn subject(mut self, subject: impl Fn(&Entry) -> String + Send + Sync + 'static) -> Self {
        self.subject = Subject::Custom(Box::new(subject));
        self
    }

    /// How long to wait for the connection and for each publish ack
    /// (default 10 s). Past it the server counts as unavailable. Keep it well
    /// under the outbox's lease.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Checks the configuration and builds the publisher. Does not connect:
    /// see [`NatsPublisher::connect`].
    pub fn build(self) -> Result<NatsPublisher> {
        let config = |reason: String| Error::PublisherConfig {
            publisher: "nats",
            reason,
        };
        if self.url.trim().is_empty() {
            return Err(config("the server URL is empty".to_owned()));
        }
        if self.timeout.is_zero() {
            return Err(config("timeout is zero".to_owned()));
        }
        // The prefix must read as the start of a valid subject.
        if let Subject::Prefix(prefix) = &self.subject
            && !prefix.is_empty()
        {
            check_subject(&format!("{prefix}x"))
                .map_err(|why| config(format!("subject prefix {prefix:?} is not valid: {why}")))?;
        }
        Ok(NatsPublisher {
            inner: Arc::new(Inner {
                url: self.url,
                subject: self.subject,
                timeout: self.timeout,
                context: Mutex::new(None),
            }),
        })
    }
}

/// Why `subject` cannot be published to, if it cannot.
fn check_subject(subject: &str) -> Result<(), &'static str> {
    if subject.is_empty() {
        return Err("it is empty");
    }
    if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("it contains whitespace or a control character");
    }
    for token in subject.split('.') {
        if token.is_empty() {
            return Err("it has an empty token (a leading, trailing or doubled '.')");
        }
        if token == "*" || token == ">" {
            return Err("it contains a wildcard token ('*' or '>')");
        }
    }
    Ok(())
}

impl NatsPublisher {
    /// Starts configuring a publisher for the server at `url`, e.g.
    /// `nats://127.0.0.1:4222` (credentials may be given in the URL:
    /// `nats://user:password@host:4222`, `nats://token@host:4222`).
    pub fn builder(url: impl Into<String>) -> NatsPublisherBuilder {
        NatsPublisherBuilder {
            url: url.into(),
            subject: Subject::Prefix(String::new()),
            timeout: Duration::from_secs(10),
        }
    }

    /// Connects now instead of on first use, to find a wrong URL or a
    /// missing server at startup. Publishing works without calling it.
    pub async fn connect(&self) -> Result<(), PublishError> {
        self.context().await.map(drop)
    }

    async fn context(&self) -> Result<Context, PublishError> {
        let inner = &*self.inner;
        let mut context = inner.context.lock().await;
        if let Some(context) = &*context {
            return Ok(context.clone());
        }
        let client = async_nats::ConnectOptions::new()
            .name("outbox")
            .connection_timeout(inner.timeout)
            .connect(inner.url.as_str())
            .await
            .map_err(|err| {
                PublishError::unavailable(format!(
                    "cannot connect to NATS at {}: {err}",
                    shown(&inner.url)
                ))
            })?;
        tracing::debug!(url = %shown(&inner.url), "connected to NATS");
        let js = jetstream::ContextBuilder::new()
            .timeout(inner.timeout)
            .build(client);
        *context = Some(js.clone());
        Ok(js)
    }

    fn subject_of(&self, entry: &Entry) -> String {
        match &self.inner.subject {
            Subject::Prefix(prefix) => format!("{prefix}{}", entry.name()),
            Subject::Custom(subject) => subject(entry),
        }
    }

    /// The headers of `entry`'s message.
    fn headers(entry: &Entry) -> Result<HeaderMap, PublishError> {
        fn name(name: &str) -> Result<HeaderName, PublishError> {
            name.parse().map_err(|err| {
                PublishError::rejected(format!(
                    "header name {name:?} cannot be sent over NATS: {err}"
                ))
            })
        }
        fn value(name: &str, value: &str) -> Result<HeaderValue, PublishError> {
            value.parse().map_err(|err| {
                PublishError::rejected(format!(
                    "the value of header {name:?} cannot be sent over NATS: {err}"
                ))
            })
        }
        let mut headers = HeaderMap::new();
        for (k, v) in entry.headers() {
            headers.insert(name(k)?, value(k, v)?);
        }
        let mut ours = |key: &'static str, v: &str| -> Result<(), PublishError> {
            headers.insert(name(key)?, value(key, v)?);
            Ok(())
        };
        ours(EVENT_NAME_HEADER, entry.name())?;
        if let Some(stream) = entry.stream_key() {
            ours(STREAM_KEY_HEADER, stream)?;
        }
        if let Some(id) = entry.correlation_id() {
            ours(CORRELATION_ID_HEADER, &id.to_string())?;
        }
        if let Some(id) = entry.causation_id() {
            ours(CAUSATION_ID_HEADER, &id.to_string())?;
        }
        headers.insert(
            header::NATS_MESSAGE_ID,
            value("Nats-Msg-Id", &entry.event_id().to_string())?,
        );
        Ok(headers)
    }

    /// Sends `entries`, then awaits their acks in order.
    async fn send(&self, entries: &[&Entry]) -> Vec<PublishResult> {
        if entries.is_empty() {
            return Vec::new();
        }
        let context = match self.context().await {
            Ok(context) => context,
            Err(err) => return vec![Err(err)],
        };

        // 1. Send everything without waiting for acks.
        let mut pending: Vec<Result<(String, PublishAckFuture), PublishError>> =
            Vec::with_capacity(entries.len());
        for entry in entries {
            let subject = self.subject_of(entry);
            if let Err(why) = check_subject(&subject) {
                pending.push(Err(PublishError::rejected(format!(
                    "subject {subject:?} is not a valid NATS subject: {why}"
                ))));
                continue;
            }
            let headers = match Self::headers(entry) {
                Ok(headers) => headers,
                Err(err) => {
                    pending.push(Err(err));
                    continue;
                }
            };
            let payload = Bytes::copy_from_slice(entry.payload_json().as_bytes());
            match context
                .publish_with_headers(subject.clone(), headers, payload)
                .await
            {
                Ok(ack) => pending.push(Ok((subject, ack))),
                Err(err) => {
                    let err = self.failure(&subject, &err);
                    let stop = err.is_unavailable();
                    pending.push(Err(err));
                    if stop {
                        break;
                    }
                }
            }
        }

        // 2. Await the acks in order; each waits up to the timeout.
        let mut results = Vec::with_capacity(pending.len());
        for item in pending {
            let result = match item {
                Err(err) => Err(err),
                Ok((subject, ack)) => match ack.await {
                    Ok(ack) => {
                        if ack.duplicate {
                            tracing::debug!(stream = %ack.stream, sequence = ack.sequence, "JetStream dropped a duplicate (same Nats-Msg-Id)");
                        }
                        Ok(())
                    }
                    Err(err) => Err(self.failure(&subject, &err)),
                },
            };
            let stop = result.as_ref().is_err_and(PublishError::is_unavailable);
            results.push(result);
            if stop {
                // The relay stops here; the rest are not attempted (those
                // already sent go out again later under the same msg id).
                break;
            }
        }
        results
    }

    /// Classifies a JetStream publish error.
    fn failure(&self, subject: &str, err: &jetstream::context::PublishError) -> PublishError {
        match err.kind() {
            PublishErrorKind::StreamNotFound => PublishError::rejected(format!(
                "no JetStream stream matches subject `{subject}` (create a stream whose subjects include it)"
            )),
            PublishErrorKind::TimedOut => PublishError::unavailable(format!(
                "no JetStream ack for subject `{subject}` within {:?} (NATS at {})",
                self.inner.timeout,
                shown(&self.inner.url)
            )),
            PublishErrorKind::BrokenPipe | PublishErrorKind::MaxAckPending => {
                PublishError::unavailable(format!(
                    "NATS at {} unavailable: {err}",
                    shown(&self.inner.url)
                ))
            }
            PublishErrorKind::Other => {
                let api = std::error::Error::source(err)
                    .and_then(|source| source.downcast_ref::<jetstream::Error>());
                match api {
                    // 503: JetStream is temporarily unavailable (no leader, ...).
                    Some(api) if api.code() == 503 => PublishError::unavailable(format!(
                        "JetStream unavailable for subject `{subject}`: {api}"
                    )),
                    Some(api) => PublishError::rejected(format!(
                        "JetStream refused the message on subject `{subject}`: {api}"
                    )),
                    None => PublishError::unavailable(format!(
                        "NATS at {} unavailable: {err}",
                        shown(&self.inner.url)
                    )),
                }
            }
            // MaxPayloadExceeded, WrongLastMessageId, WrongLastSequence and
            // any kind added later: the server refused this message.
            _ => PublishError::rejected(format!(
                "JetStream refused the message on subject `{subject}`: {err}"
            )),
        }
    }
}

impl<E: Event> Publisher<E> for NatsPublisher {
    async fn publish(&self, event: &Recorded<E>) -> PublishResult {
        first(self.send(&[event.entry()]).await)
    }

    async fn publish_batch(&self, events: &[Recorded<E>]) -> Vec<PublishResult> {
        let entries: Vec<&Entry> = events.iter().map(Recorded::entry).collect();
        self.send(&entries).await
    }
}

impl RawPublisher for NatsPublisher {
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
            "NATS publisher returned no result",
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects() {
        assert!(check_subject("billing.invoice_paid").is_ok());
        assert!(check_subject("").is_err());
        assert!(check_subject("a..b").is_err());
        assert!(check_subject(".a").is_err());
        assert!(check_subject("a.").is_err());
        assert!(check_subject("a b").is_err());
        assert!(check_subject("a.*").is_err());
        assert!(check_subject("a.>").is_err());
    }

    #[test]
    fn bad_prefix_is_a_config_error() {
        let err = NatsPublisher::builder("nats://127.0.0.1:4222")
            .subject_prefix("events..")
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("prefix"), "{err}");
    }

    #[test]
    fn debug_hides_credentials() {
        for url in ["nats://u:s3cret@127.0.0.1:4222", "s3cret@127.0.0.1:4222"] {
            let publisher = NatsPublisher::builder(url).build().unwrap();
            let debug = format!("{publisher:?}");
            assert!(!debug.contains("s3cret"), "{debug}");
        }
    }
}
