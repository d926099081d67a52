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
//! | [`VERSION_HEADER`] | the event version ([`Entry::version`]), decimal, on every message (`1` too) |
//! | [`STREAM_KEY_HEADER`], [`CORRELATION_ID_HEADER`], [`CAUSATION_ID_HEADER`] | when set |
//! | other headers     | the entry's headers, as given (ours win on a clash)   |
//!
//! The payload is the one the version in [`VERSION_HEADER`] wrote (or the
//! typed publisher's own version, with
//! [`publish_upcast`](crate::PublishersBuilder::publish_upcast)): a
//! consumer decodes it by that version. The inbox's
//! [NATS source](crate::inbox::nats) reads it back.
//!
//! # Failures
//!
//! Every failure has a kind (see "Failure scopes" in [the publisher
//! docs](crate::publisher)): *rejected* costs the entry an attempt and, after
//! the last one, makes it a dead letter; *unavailable* costs nothing, blocks
//! the publisher (listed by [`Publishers::blocked`](crate::Publishers::blocked)
//! with the reason below) and pauses it until the server answers again. A
//! subject that no stream captures is a setting to fix, not a bad event:
//! the backlog waits and goes out by itself once the stream exists.
//!
//! | what NATS does | kind | the reason says |
//! |---|---|---|
//! | a stream acks the message (also as a duplicate of one it stored) | published | |
//! | nobody answers the publish (no stream captures the subject, or JetStream is off: "no responders") | unavailable | no JetStream stream captures subject `s`; create a stream whose subjects include it, or fix the subject |
//! | JetStream answers 503 (temporarily unavailable, no leader, a stream full under `discard: new`: "maximum messages exceeded", 10077) | unavailable | JetStream's answer |
//! | no ack within the [`timeout`](NatsPublisherBuilder::timeout) (also a publish the server's permissions drop) | unavailable | no JetStream ack within the timeout |
//! | the connection is lost, too many acks pending | unavailable | the client's error |
//! | cannot connect: refused, DNS, timed out | unavailable | cannot connect to NATS at `host` |
//! | refuses the credentials (authorization violation) | unavailable | check the credentials in the URL |
//! | fails the TLS handshake (untrusted certificate, wrong host name, a plaintext server behind `tls://`) | unavailable | the TLS handshake failed, and why |
//! | the stream refuses the message (code 400: over the stream's `max_msg_size`, 10054; any other JetStream error but 503) | rejected | JetStream's answer |
//! | the message is over the server's `max_payload` (the client refuses to send it) | rejected | the client's error |
//! | (the entry cannot be expressed in NATS: an invalid subject, a header name or value NATS cannot carry) | rejected | what is invalid |
//!
//! A rejection concerns its entry only; the rest of the batch is delivered.
//! After a lost connection or a missing ack the rest of the batch is given
//! back at no cost (and sent again later under the same `Nats-Msg-Id`).
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
//! in errors.
//!
//! # TLS
//!
//! TLS (rustls on *ring*) is used for a `tls://` URL, with
//! [`require_tls`](NatsPublisherBuilder::require_tls), with
//! [`tls_ca_pem`](NatsPublisherBuilder::tls_ca_pem), or when the server
//! requires it; in each case a server that does not speak TLS is an error
//! (unavailable), never a plaintext fallback. The server's certificate must
//! be valid for the URL's host and signed by a CA among the system roots or
//! given with `tls_ca_pem`.
//!
//! ```no_run
//! # use outbox::publisher::nats::NatsPublisher;
//! let nats = NatsPublisher::builder("tls://nats.internal:4222")
//!     .subject_prefix("events.")
//!     .tls_ca_pem(std::fs::read("/etc/outbox/nats-ca.pem")?)
//!     .build()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_nats::header::{self, HeaderMap, HeaderName, HeaderValue};
use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::{self, Context};
use async_nats::rustls::pki_types::CertificateDer;
use async_nats::rustls::pki_types::pem::PemObject;
use async_nats::rustls::{self, ClientConfig, RootCertStore};
use async_nats::{ConnectErrorKind, ServerAddr};
use bytes::Bytes;
use tokio::sync::Mutex;

use super::redact::redact_url;
use crate::entry::{Entry, Recorded};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::publisher::{PublishError, PublishResult, Publisher, RawPublisher};

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
    require_tls: bool,
    /// Trusts the system roots and the CA of `tls_ca_pem`.
    tls: Option<ClientConfig>,
    context: Mutex<Option<Context>>,
}

/// `url` (or a bare `host:port`) without credentials.
pub(crate) fn shown(url: &str) -> String {
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
        s.field("timeout", &inner.timeout)
            .field("require_tls", &inner.require_tls)
            .field("tls_ca_pem", &inner.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// Configures a [`NatsPublisher`]; start with [`NatsPublisher::builder`].
#[must_use]
pub struct NatsPublisherBuilder {
    url: String,
    subject: Subject,
    timeout: Duration,
    require_tls: bool,
    tls_ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for NatsPublisherBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("NatsPublisherBuilder");
        s.field("url", &shown(&self.url));
        match &self.subject {
            Subject::Prefix(prefix) => s.field("subject_prefix", prefix),
            Subject::Custom(_) => s.field("subject", &"<fn>"),
        };
        s.field("timeout", &self.timeout)
            .field("require_tls", &self.require_tls)
            .field("tls_ca_pem", &self.tls_ca_pem.is_some())
            .finish()
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

    /// Requires TLS whatever the URL's scheme (default: only for `tls://`
    /// URLs and servers that require it). A server that does not speak TLS
    /// is then an error, never a plaintext connection.
    pub fn require_tls(mut self, required: bool) -> Self {
        self.require_tls = required;
        self
    }

    /// Trusts the CA certificate(s) in this PEM text, next to the system
    /// roots (for a server whose certificate a private CA signed); implies
    /// [`require_tls`](Self::require_tls). [`build`](Self::build) fails if
    /// the text holds no certificate or one that does not parse.
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_ca_pem = Some(pem.into());
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
        for server in self.url.split(',') {
            if server.trim().parse::<ServerAddr>().is_err() {
                return Err(config(format!(
                    "server address {} does not parse",
                    shown(server.trim())
                )));
            }
        }
        if self.timeout.is_zero() {
            return Err(config("timeout is zero".to_owned()));
        }
        let tls = match &self.tls_ca_pem {
            Some(pem) => Some(client_config(pem).map_err(config)?),
            None => None,
        };
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
                require_tls: self.require_tls || tls.is_some(),
                tls,
                context: Mutex::new(None),
            }),
        })
    }
}

/// A TLS client configuration (rustls on ring) trusting the system roots
/// and the CA certificates in `pem`.
pub(crate) fn client_config(pem: &[u8]) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|err| format!("tls_ca_pem: {err}"))?;
        roots
            .add(cert)
            .map_err(|err| format!("tls_ca_pem: {err}"))?;
    }
    if roots.is_empty() {
        return Err("tls_ca_pem: no CERTIFICATE block in the PEM text".to_owned());
    }
    // Best effort, as async-nats itself does: unreadable system roots
    // leave the given CA.
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("TLS: {err}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Connects to `url` (TLS as asked or as the server requires, rustls on
/// ring); the error says what to check and never holds credentials.
pub(crate) async fn connect(
    url: &str,
    timeout: Duration,
    require_tls: bool,
    tls: Option<&ClientConfig>,
) -> Result<async_nats::Client, String> {
    let mut options = async_nats::ConnectOptions::new()
        .name("outbox")
        .connection_timeout(timeout)
        .require_tls(require_tls);
    if let Some(tls) = tls {
        options = options.tls_client_config(tls.clone());
    }
    options
        .connect(url)
        .await
        .map_err(|err| connect_failure(url, require_tls, &err))
}

/// The reason for a failed connect, saying what to check.
fn connect_failure(url: &str, require_tls: bool, err: &async_nats::ConnectError) -> String {
    let shown_url = shown(url);
    // TLS was asked for, or the server asked for it and rustls failed.
    let tls = require_tls
        || url
            .split(',')
            .any(|server| server.trim().to_ascii_lowercase().starts_with("tls://"))
        || is_tls_failure(err);
    match err.kind() {
        ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => {
            format!(
                "NATS at {shown_url} refused the credentials ({err}): check the user, password or \
                 token in the URL"
            )
        }
        ConnectErrorKind::Tls | ConnectErrorKind::Io if tls => format!(
            "the TLS connection to NATS at {shown_url} failed: {err} (does the server speak TLS on \
             this port? is its certificate valid for this host and signed by a CA of the \
             system roots or of tls_ca_pem?)"
        ),
        _ => format!("cannot connect to NATS at {shown_url}: {err}"),
    }
}

/// Whether rustls is behind a connect error (a handshake or certificate
/// failure).
fn is_tls_failure(err: &async_nats::ConnectError) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let wrapped = cause
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref);
        if cause.is::<rustls::Error>()
            || matches!(wrapped, Some(inner) if inner.is::<rustls::Error>())
        {
            return true;
        }
        source = cause.source();
    }
    false
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
            require_tls: false,
            tls_ca_pem: None,
        }
    }

    /// Connects now instead of on first use, to find a wrong URL, refused
    /// credentials, a failing TLS handshake or a missing server at startup.
    /// Publishing works without calling it.
    pub async fn connect(&self) -> Result<(), PublishError> {
        self.context().await.map(drop)
    }

    async fn context(&self) -> Result<Context, PublishError> {
        let inner = &*self.inner;
        let mut context = inner.context.lock().await;
        if let Some(context) = &*context {
            return Ok(context.clone());
        }
        let client = connect(
            &inner.url,
            inner.timeout,
            inner.require_tls,
            inner.tls.as_ref(),
        )
        .await
        .map_err(PublishError::unavailable)?;
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
        ours(VERSION_HEADER, &entry.version().to_string())?;
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
                    let (err, stop) = self.failure(&subject, &err);
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
            let (result, stop) = match item {
                Err(err) => (Err(err), false),
                Ok((subject, ack)) => match ack.await {
                    Ok(ack) => {
                        if ack.duplicate {
                            tracing::debug!(stream = %ack.stream, sequence = ack.sequence, "JetStream dropped a duplicate (same Nats-Msg-Id)");
                        }
                        (Ok(()), false)
                    }
                    Err(err) => {
                        let (err, stop) = self.failure(&subject, &err);
                        (Err(err), stop)
                    }
                },
            };
            results.push(result);
            if stop {
                // The relay stops here; the rest are not attempted (those
                // already sent go out again later under the same msg id).
                break;
            }
        }
        results
    }

    /// Classifies a JetStream publish error, and says whether the rest of
    /// the batch is to be given back (the connection is in doubt) rather
    /// than awaited (the server answered about this message).
    fn failure(
        &self,
        subject: &str,
        err: &jetstream::context::PublishError,
    ) -> (PublishError, bool) {
        let url = || shown(&self.inner.url);
        match err.kind() {
            PublishErrorKind::StreamNotFound => (
                PublishError::unavailable(format!(
                    "NATS: no JetStream stream captures subject `{subject}` (no responders); \
                     create a stream whose subjects include it, or fix the subject"
                )),
                false,
            ),
            PublishErrorKind::TimedOut => (
                PublishError::unavailable(format!(
                    "no JetStream ack for subject `{subject}` within {:?} (NATS at {})",
                    self.inner.timeout,
                    url()
                )),
                true,
            ),
            PublishErrorKind::BrokenPipe | PublishErrorKind::MaxAckPending => (
                PublishError::unavailable(format!("NATS at {} unavailable: {err}", url())),
                true,
            ),
            PublishErrorKind::Other => {
                let api = std::error::Error::source(err)
                    .and_then(|source| source.downcast_ref::<jetstream::Error>());
                match api {
                    // 503: JetStream is temporarily unavailable (no leader,
                    // a full stream under `discard: new`, ...).
                    Some(api) if api.code() == 503 => (
                        PublishError::unavailable(format!(
                            "JetStream cannot take messages on subject `{subject}`: {api}"
                        )),
                        false,
                    ),
                    Some(api) => (
                        PublishError::rejected(format!(
                            "JetStream refused the message on subject `{subject}`: {api}"
                        )),
                        false,
                    ),
                    None => (
                        PublishError::unavailable(format!("NATS at {} unavailable: {err}", url())),
                        true,
                    ),
                }
            }
            // MaxPayloadExceeded, WrongLastMessageId, WrongLastSequence and
            // any kind added later: the server refused this message.
            _ => (
                PublishError::rejected(format!(
                    "JetStream refused the message on subject `{subject}`: {err}"
                )),
                false,
            ),
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
    fn a_ca_must_hold_a_certificate_and_implies_tls() {
        for pem in [
            &b"not a certificate"[..],
            b"-----BEGIN CERTIFICATE-----\nAAAA\n",
        ] {
            let err = NatsPublisher::builder("nats://127.0.0.1:4222")
                .tls_ca_pem(pem)
                .build()
                .unwrap_err();
            assert!(err.to_string().contains("tls_ca_pem"), "{err}");
        }
        let nats = NatsPublisher::builder("nats://127.0.0.1:4222")
            .tls_ca_pem(TEST_CA)
            .build()
            .unwrap();
        let debug = format!("{nats:?}");
        assert!(debug.contains("require_tls: true"), "{debug}");
        assert!(debug.contains("tls_ca_pem: true"), "{debug}");
    }

    #[test]
    fn a_bad_server_address_is_a_config_error() {
        let err = NatsPublisher::builder("nats://u:s3cret@127.0.0.1:99999")
            .build()
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not parse"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
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

    #[test]
    fn debug_hides_credentials() {
        for url in ["nats://u:s3cret@127.0.0.1:4222", "s3cret@127.0.0.1:4222"] {
            let publisher = NatsPublisher::builder(url).build().unwrap();
            let debug = format!("{publisher:?}");
            assert!(!debug.contains("s3cret"), "{debug}");
        }
    }
}
