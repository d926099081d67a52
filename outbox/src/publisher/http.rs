//! HTTP webhook publisher: one `POST` per event, carrying the stored payload.
//!
//! ```no_run
//! use std::time::Duration;
//! use outbox::publisher::http::WebhookPublisher;
//! use outbox::{Outbox, Publishers};
//! # #[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
//! # #[outbox(name = "billing.invoice_paid")]
//! # struct InvoicePaid { invoice_id: i64 }
//!
//! # async fn relay<DB: outbox::Backend>(outbox: Outbox<DB>) -> Result<(), outbox::Error> {
//! let webhook = WebhookPublisher::builder()
//!     .url("https://hooks.example.com/events") // every event ...
//!     .route("billing.invoice_paid", "https://billing.example.com/hooks/paid") // ... but this one
//!     .header("Authorization", "Bearer s3cr3t")
//!     .signing_secret("shared-secret") // X-Outbox-Signature: sha256=<hex>
//!     .timeout(Duration::from_secs(5))
//!     .build()?;
//! let publishers = Publishers::builder()
//!     .publisher::<InvoicePaid, _>(webhook.clone()) // typed
//!     .fallback(webhook) // and every other event, raw
//!     .build()?;
//! outbox.relay(publishers).run(async { /* shutdown signal */ }).await;
//! # Ok(())
//! # }
//! ```
//!
//! # The request
//!
//! `POST <url>`; the body is [`Entry::payload_json`], the stored JSON text
//! byte for byte (never re-serialized). Headers:
//!
//! | header | value |
//! |---|---|
//! | `Content-Type` | `application/json` |
//! | `Idempotency-Key` | the event id (hyphenated UUID): the receiver's dedup key |
//! | `X-Event-Id` | the event id again, for receivers that log it |
//! | `X-Event-Name` | the event name |
//! | `X-Outbox-Event-Version` | the event version ([`Entry::version`]) in decimal, on every request (`1` too): the version of the event type that wrote the body |
//! | `X-Outbox-Stream-Key` | the stream key, when the entry has one |
//! | `X-Outbox-Correlation-Id`, `X-Outbox-Causation-Id` | when set |
//! | `X-Outbox-Headers` | the entry's headers as one JSON object, when there are any |
//! | `traceparent`, `tracestate` | the entry's headers of these names (W3C trace context), when it has them and they are valid header values |
//! | `X-Outbox-Timestamp` | Unix seconds, with [`signature_timestamp`](WebhookPublisherBuilder::signature_timestamp) |
//! | `X-Outbox-Signature` | `sha256=<hex>`, with a [signing secret](WebhookPublisherBuilder::signing_secret) |
//!
//! Entry headers travel as one JSON header rather than one HTTP header each
//! because their names are case-sensitive and may hold any character, and
//! HTTP header names are neither. The JSON is pure ASCII (other characters
//! are `\uXXXX` escapes), so any JSON parser reads it back exactly.
//! The W3C trace context headers are the exception: they also go out as
//! the standard HTTP headers, so the receiver's tracing continues the trace
//! (feature `opentelemetry`: from the relay's `outbox.publish` span); a
//! value HTTP cannot carry is left out rather than failing the event.
//! `X-Event-Name` and `X-Outbox-Stream-Key` carry printable ASCII as is; any
//! other byte of their UTF-8, and `%`, is percent-encoded.
//! [Static headers](WebhookPublisherBuilder::header) go out with every
//! request; they cannot replace the headers above.
//!
//! # Signature
//!
//! With a signing secret, `X-Outbox-Signature: sha256=<hex>` is the
//! HMAC-SHA256 of the exact body. With
//! [`signature_timestamp(true)`](WebhookPublisherBuilder::signature_timestamp)
//! the request also carries `X-Outbox-Timestamp: <unix seconds>` and the
//! HMAC covers `<timestamp>.<body>`, so a receiver can refuse replays of old
//! requests. Receivers check with [`verify_signature`] or
//! [`verify_timestamped_signature`] (constant-time comparisons).
//!
//! # Outcomes
//!
//! Each failure has a scope (see "Failure scopes" in [`publisher`](super)):
//! the event, this event this time, or the endpoint. A wrong URL or wrong
//! credentials is a setting, not the event: it pauses the publisher instead
//! of turning the backlog into dead letters.
//!
//! | response | kind | why |
//! |---|---|---|
//! | 2xx | published | |
//! | 400, 409, 411, 412, 413, 414, 415, 422, 451 and every other 4xx not below | [`rejected`](PublishError::rejected) | the endpoint refused this event |
//! | 408, 423, 425, 429, and 5xx but 501, 505, 511 | [`transient`](PublishError::transient) | this event, this time: it backs off on its own (an attempt while the endpoint answers others; 3 entries in a row with no answer in between block the publisher) |
//! | a request timeout ([`timeout`](WebhookPublisherBuilder::timeout)), or the connection lost after it was made (reset or closed before the response) | [`transient`](PublishError::transient) | as above: the endpoint was reached |
//! | 401, 403, 407 (credentials), 404, 405, 410, 421 (URL), 426 (use TLS), 501, 505 (the endpoint cannot take this request at all), 511 (a proxy wants credentials) | [`unavailable`](PublishError::unavailable) | a setting of the endpoint: every event would get the same; no attempt, the publisher pauses and resumes when the endpoint takes a request again |
//! | 503 with [`X-Outbox-Outcome: unavailable`](OUTCOME_HEADER) (an inbox [`WebhookReceiver`](crate::inbox::http::WebhookReceiver) whose database is down) | [`unavailable`](PublishError::unavailable) | the receiver cannot take any event now: no attempt, the publisher pauses (a plain 503 is transient, above) |
//! | 3xx (redirects are not followed; the message names the `Location`) | [`unavailable`](PublishError::unavailable) | the URL is outdated: update it |
//! | connection refused, DNS failure, connect timeout, TLS handshake failure (untrusted or mismatched certificate, a plaintext server behind `https://`) | [`unavailable`](PublishError::unavailable) | the endpoint is down or unreachable |
//! | an `http://` URL from a [`url_fn`](WebhookPublisherBuilder::url_fn) while a TLS option is set | [`unavailable`](PublishError::unavailable) | a setting: it is never sent in plaintext |
//!
//! Error messages carry the status, the start of the response body, and
//! `Retry-After` when the endpoint sent one. `Retry-After` is not honoured:
//! the entry's next attempt follows the outbox's
//! [`backoff`](crate::OutboxBuilder::backoff) (and, while the publisher is
//! blocked, its pause).
//!
//! A publisher keeps one health per event type it is registered for (the
//! catch-all has one for all its events), so with [`route`]s or a
//! [`url_fn`] one refusing URL pauses every event of that publisher; register
//! separate publishers for endpoints that should fail apart.
//!
//! [`route`]: WebhookPublisherBuilder::route
//! [`url_fn`]: WebhookPublisherBuilder::url_fn
//!
//! # TLS
//!
//! `https://` URLs use rustls (on the `ring` provider) with the system's
//! root certificates. [`tls_ca_pem`](WebhookPublisherBuilder::tls_ca_pem)
//! trusts one more CA (a private one, or a test CA) and makes TLS required:
//! every configured URL must then be `https://` (checked at
//! [`build`](WebhookPublisherBuilder::build)), and an `http://` URL from a
//! `url_fn` is refused before anything is sent. A handshake that fails is
//! an outage of the endpoint; nothing ever falls back to plaintext.
//!
//! # Order and concurrency
//!
//! By default (`concurrency(1)`) a batch is sent one request at a time, in
//! record order. With
//! [`concurrency(n)`](WebhookPublisherBuilder::concurrency), up to `n`
//! requests of a batch are in flight at once: faster, but events (even of one
//! stream key) may then arrive in any order within a batch. Either way no
//! new request of the batch starts after an
//! [`unavailable`](PublishError::unavailable) failure, or after 3
//! [`transient`](PublishError::transient) ones before the endpoint answered
//! anything (it is then presumed down); the requests in flight are awaited,
//! and the entries not sent cost nothing.
//!
//! URLs may hold credentials (userinfo is sent as basic auth) or secret path
//! segments: `Debug` output and error messages show only the scheme, host
//! and port.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use hmac::{Hmac, Mac};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};
use sha2::Sha256;

use super::redact::redact_url;
use super::{ErrorKind, PublishError, PublishResult, Publisher, RawPublisher, Stopper};
use crate::entry::{Entry, Recorded};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::trace::{TRACEPARENT, TRACESTATE};

/// `Idempotency-Key`: the event id.
pub const IDEMPOTENCY_KEY_HEADER: &str = "Idempotency-Key";
/// `X-Event-Id`: the event id.
pub const EVENT_ID_HEADER: &str = "X-Event-Id";
/// `X-Event-Name`: the event name (percent-encoded outside printable ASCII).
pub const EVENT_NAME_HEADER: &str = "X-Event-Name";
/// `X-Outbox-Event-Version`: the event version ([`Entry::version`]), decimal.
pub const VERSION_HEADER: &str = "X-Outbox-Event-Version";
/// `X-Outbox-Stream-Key`: the stream key (percent-encoded outside printable ASCII).
pub const STREAM_KEY_HEADER: &str = "X-Outbox-Stream-Key";
/// `X-Outbox-Correlation-Id`: the correlation id.
pub const CORRELATION_ID_HEADER: &str = "X-Outbox-Correlation-Id";
/// `X-Outbox-Causation-Id`: the causation id.
pub const CAUSATION_ID_HEADER: &str = "X-Outbox-Causation-Id";
/// `X-Outbox-Headers`: the entry's headers as an ASCII JSON object.
pub const HEADERS_HEADER: &str = "X-Outbox-Headers";
/// `X-Outbox-Timestamp`: Unix seconds, covered by a timestamped signature.
pub const TIMESTAMP_HEADER: &str = "X-Outbox-Timestamp";
/// `X-Outbox-Signature`: `sha256=<hex HMAC-SHA256>`.
pub const SIGNATURE_HEADER: &str = "X-Outbox-Signature";
/// `X-Outbox-Outcome`: a response header the inbox's
/// [`WebhookReceiver`](crate::inbox::http::WebhookReceiver) sends with every
/// answer (`processed`, `duplicate`, `retry`, `unavailable`, ...). A `503`
/// with `X-Outbox-Outcome: unavailable` (the receiver's database is down) is
/// an outage of the endpoint, not a failure of the event.
pub const OUTCOME_HEADER: &str = "X-Outbox-Outcome";

/// How many bytes of an error response's body the error message quotes.
const EXCERPT_BYTES: usize = 200;
/// How much of a 2xx body is read (so the connection can be reused).
const DRAIN_BYTES: usize = 64 * 1024;

type UrlFn = dyn Fn(&Entry) -> String + Send + Sync;
type HmacSha256 = Hmac<Sha256>;

/// A parsed endpoint and its redacted form.
#[derive(Clone)]
struct Target {
    url: Url,
    shown: String,
}

impl Target {
    fn parse(url: &str) -> std::result::Result<Self, String> {
        let shown = redact_url(url);
        let parsed = Url::parse(url).map_err(|err| format!("{shown}: {err}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("{shown}: not an http(s) URL"));
        }
        Ok(Self { url: parsed, shown })
    }
}

enum Routes {
    Table {
        default: Option<Target>,
        by_name: HashMap<String, Target>,
    },
    Mapped(Arc<UrlFn>),
}

impl Routes {
    fn target(&self, entry: &Entry) -> std::result::Result<Target, PublishError> {
        match self {
            Self::Table { default, by_name } => by_name
                .get(entry.name())
                .or(default.as_ref())
                .cloned()
                .ok_or_else(|| {
                    PublishError::rejected(format!(
                        "no webhook URL for event `{}` (no route and no default URL)",
                        entry.name()
                    ))
                }),
            Self::Mapped(f) => Target::parse(&f(entry))
                .map_err(|err| PublishError::rejected(format!("bad webhook URL: {err}"))),
        }
    }
}

impl fmt::Debug for Routes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Table { default, by_name } => {
                let mut names: Vec<_> = by_name.iter().collect();
                names.sort_by_key(|(name, _)| *name);
                f.debug_struct("Routes")
                    .field("default", &default.as_ref().map(|t| &t.shown))
                    .field(
                        "by_name",
                        &names
                            .iter()
                            .map(|(name, t)| (name, &t.shown))
                            .collect::<Vec<_>>(),
                    )
                    .finish()
            }
            Self::Mapped(_) => f.write_str("<url_fn>"),
        }
    }
}

/// Posts each entry to a webhook; see the [module docs](self).
///
/// Cheap to clone (one shared connection pool), so one publisher can be
/// registered for several event types and as the catch-all.
#[derive(Clone)]
pub struct WebhookPublisher {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    routes: Routes,
    headers: HeaderMap,
    signer: Option<HmacSha256>,
    timestamped: bool,
    timeout: Duration,
    concurrency: usize,
    /// A TLS option is set: only `https://` URLs are sent to.
    tls_required: bool,
}

impl fmt::Debug for WebhookPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("WebhookPublisher")
            .field("routes", &inner.routes)
            .field("headers", &inner.headers.keys().collect::<Vec<_>>())
            .field("signed", &inner.signer.is_some())
            .field("timestamped", &inner.timestamped)
            .field("timeout", &inner.timeout)
            .field("concurrency", &inner.concurrency)
            .field("tls_required", &inner.tls_required)
            .finish()
    }
}

/// Configures a [`WebhookPublisher`]; start with [`WebhookPublisher::builder`].
#[must_use]
pub struct WebhookPublisherBuilder {
    default_url: Option<String>,
    routes: Vec<(String, String)>,
    url_fn: Option<Arc<UrlFn>>,
    headers: Vec<(String, String)>,
    secret: Option<Vec<u8>>,
    timestamped: bool,
    timeout: Duration,
    concurrency: usize,
    tls_ca: Option<Vec<u8>>,
}

impl fmt::Debug for WebhookPublisherBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookPublisherBuilder")
            .field("default_url", &self.default_url.as_deref().map(redact_url))
            .field(
                "routes",
                &self
                    .routes
                    .iter()
                    .map(|(name, url)| (name, redact_url(url)))
                    .collect::<Vec<_>>(),
            )
            .field("url_fn", &self.url_fn.is_some())
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("signed", &self.secret.is_some())
            .field("timestamped", &self.timestamped)
            .field("timeout", &self.timeout)
            .field("concurrency", &self.concurrency)
            .field("tls_ca", &self.tls_ca.is_some())
            .finish()
    }
}

impl WebhookPublisher {
    /// Starts configuring a webhook publisher.
    pub fn builder() -> WebhookPublisherBuilder {
        WebhookPublisherBuilder {
            default_url: None,
            routes: Vec::new(),
            url_fn: None,
            headers: Vec::new(),
            secret: None,
            timestamped: false,
            timeout: Duration::from_secs(10),
            concurrency: 1,
            tls_ca: None,
        }
    }

    /// The headers of one request (static ones first; ours win).
    fn headers_for(&self, entry: &Entry) -> std::result::Result<HeaderMap, PublishError> {
        let inner = &self.inner;
        let mut headers = inner.headers.clone();
        let id = HeaderValue::from_str(&entry.event_id().hyphenated().to_string())
            .map_err(PublishError::rejected)?;
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(IDEMPOTENCY_KEY_HEADER, id.clone());
        headers.insert(EVENT_ID_HEADER, id);
        headers.insert(
            EVENT_NAME_HEADER,
            ascii_value(&percent_encode(entry.name()))?,
        );
        headers.insert(VERSION_HEADER, HeaderValue::from(entry.version()));
        if let Some(key) = entry.stream_key() {
            headers.insert(STREAM_KEY_HEADER, ascii_value(&percent_encode(key))?);
        }
        if let Some(id) = entry.correlation_id() {
            headers.insert(
                CORRELATION_ID_HEADER,
                ascii_value(&id.hyphenated().to_string())?,
            );
        }
        if let Some(id) = entry.causation_id() {
            headers.insert(
                CAUSATION_ID_HEADER,
                ascii_value(&id.hyphenated().to_string())?,
            );
        }
        if !entry.headers().is_empty() {
            let json = serde_json::to_string(entry.headers())
                .map_err(|err| PublishError::rejected(format!("headers do not encode: {err}")))?;
            headers.insert(HEADERS_HEADER, ascii_value(&ascii_json(&json))?);
        }
        for name in [TRACEPARENT, TRACESTATE] {
            if let Some(value) = entry.headers().get(name)
                && let Ok(value) = HeaderValue::from_str(value)
            {
                headers.insert(name, value);
            }
        }
        if let Some(mac) = &inner.signer {
            let body = entry.payload_json().as_bytes();
            let signature = if inner.timestamped {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
                    .to_string();
                let signature = sign(mac.clone(), Some(&now), body);
                headers.insert(TIMESTAMP_HEADER, ascii_value(&now)?);
                signature
            } else {
                sign(mac.clone(), None, body)
            };
            headers.insert(SIGNATURE_HEADER, ascii_value(&signature)?);
        }
        Ok(headers)
    }

    /// Posts one entry and classifies the outcome.
    async fn send(&self, entry: &Entry) -> PublishResult {
        let inner = &self.inner;
        let target = inner.routes.target(entry)?;
        if inner.tls_required && target.url.scheme() != "https" {
            return Err(PublishError::unavailable(format!(
                "webhook {}: not an https:// URL, and TLS is required (a TLS option is set); nothing was sent",
                target.shown
            )));
        }
        let headers = self.headers_for(entry)?;
        let response = inner
            .client
            .post(target.url.clone())
            .headers(headers)
            .body(entry.payload_json().to_owned())
            .send()
            .await;
        match response {
            Ok(response) => judge(&target, response).await,
            Err(err) => Err(transport_error(&target, inner.timeout, &err)),
        }
    }

    /// Sends `entries` with up to `concurrency` requests in flight; results
    /// in entry order. No new request starts after an unavailable failure,
    /// or after 3 transient ones before anything was answered (the relay's
    /// rule for one-at-a-time publishing); the ones in flight are awaited
    /// and reported.
    async fn send_all(&self, entries: &[&Entry]) -> Vec<PublishResult> {
        let limit = self.inner.concurrency;
        let mut results = Vec::with_capacity(entries.len());
        let mut waiting = entries.iter();
        let mut in_flight = FuturesOrdered::new();
        let mut stopper = Stopper::default();
        let mut no_more = false;
        loop {
            while !no_more && in_flight.len() < limit {
                match waiting.next() {
                    Some(entry) => in_flight.push_back(self.send(entry)),
                    None => break,
                }
            }
            let Some(result) = in_flight.next().await else {
                break;
            };
            no_more |= stopper.stop_after(&result);
            results.push(result);
        }
        results
    }
}

impl WebhookPublisherBuilder {
    /// The default URL: where events without a [`route`](Self::route) go.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.default_url = Some(url.into());
        self
    }

    /// Sends events named `name` to `url` instead of the default URL.
    pub fn route(mut self, name: impl Into<String>, url: impl Into<String>) -> Self {
        self.routes.push((name.into(), url.into()));
        self
    }

    /// Chooses each entry's URL with a function instead of
    /// [`url`](Self::url)/[`route`](Self::route) (not both). A URL it returns
    /// that does not parse is a rejection of that event.
    pub fn url_fn(mut self, f: impl Fn(&Entry) -> String + Send + Sync + 'static) -> Self {
        self.url_fn = Some(Arc::new(f));
        self
    }

    /// Adds a header sent with every request, e.g. `Authorization` (values
    /// are marked sensitive and never shown in `Debug`).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Signs every request: `X-Outbox-Signature: sha256=<hex>`, the
    /// HMAC-SHA256 of the body under `secret`.
    pub fn signing_secret(mut self, secret: impl Into<Vec<u8>>) -> Self {
        self.secret = Some(secret.into());
        self
    }

    /// With `true`, sends `X-Outbox-Timestamp` and signs `<timestamp>.<body>`
    /// instead of the body alone (default `false`). Needs a signing secret.
    pub fn signature_timestamp(mut self, on: bool) -> Self {
        self.timestamped = on;
        self
    }

    /// The longest one request may take, from connecting to the end of the
    /// response (default 10 s), and the longest a connection may take to
    /// open. A request that times out is [transient](PublishError::transient)
    /// (this event, this time); a connection that cannot be opened in time
    /// is [unavailable](PublishError::unavailable).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How many requests of one batch may be in flight at once (default 1:
    /// strictly in order). Above 1, order within a batch is not kept.
    pub fn concurrency(mut self, requests: usize) -> Self {
        self.concurrency = requests;
        self
    }

    /// Trusts the CA certificate(s) in `pem` (PEM text, one or more
    /// `CERTIFICATE` blocks) for `https://` endpoints, in addition to the
    /// system's roots, and requires TLS: [`build`](Self::build) fails for an
    /// `http://` URL, and an `http://` URL from a [`url_fn`](Self::url_fn)
    /// is refused (unavailable) without sending anything.
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_ca = Some(pem.into());
        self
    }

    /// Checks the configuration and finishes.
    ///
    /// Fails with [`Error::PublisherConfig`] for a URL that does not parse
    /// or is not http(s), no URL at all, both a `url_fn` and URLs, an
    /// invalid header, a timestamp without a secret, a concurrency of 0, or
    /// a [`tls_ca_pem`](Self::tls_ca_pem) with no certificate in it or with
    /// an `http://` URL.
    pub fn build(self) -> Result<WebhookPublisher> {
        let config_error = |reason: String| Error::PublisherConfig {
            publisher: "webhook",
            reason,
        };
        let routes = match self.url_fn {
            Some(_) if self.default_url.is_some() || !self.routes.is_empty() => {
                return Err(config_error(
                    "both `url_fn` and `url`/`route` were given".to_owned(),
                ));
            }
            Some(f) => Routes::Mapped(f),
            None => {
                if self.default_url.is_none() && self.routes.is_empty() {
                    return Err(config_error(
                        "no URL: call `.url(..)`, `.route(..)` or `.url_fn(..)`".to_owned(),
                    ));
                }
                let default = self
                    .default_url
                    .as_deref()
                    .map(Target::parse)
                    .transpose()
                    .map_err(config_error)?;
                let mut by_name = HashMap::new();
                for (name, url) in &self.routes {
                    by_name.insert(name.clone(), Target::parse(url).map_err(config_error)?);
                }
                Routes::Table { default, by_name }
            }
        };
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| config_error(format!("`{name}` is not a valid header name")))?;
            let mut value = HeaderValue::from_str(value)
                .map_err(|_| config_error(format!("the value of header `{name}` is not valid")))?;
            value.set_sensitive(true);
            headers.append(header, value);
        }
        if self.timestamped && self.secret.is_none() {
            return Err(config_error(
                "`signature_timestamp(true)` needs a `signing_secret`".to_owned(),
            ));
        }
        let signer = self
            .secret
            .map(|secret| HmacSha256::new_from_slice(&secret))
            .transpose()
            .map_err(|err| config_error(format!("signing secret: {err}")))?;
        if self.concurrency == 0 {
            return Err(config_error("concurrency must be at least 1".to_owned()));
        }
        let tls_required = self.tls_ca.is_some();
        if tls_required
            && let Routes::Table { default, by_name } = &routes
            && let Some(plain) = default
                .iter()
                .chain(by_name.values())
                .find(|target| target.url.scheme() != "https")
        {
            return Err(config_error(format!(
                "{} is not an https:// URL, but `tls_ca_pem` asks for TLS",
                plain.shown
            )));
        }
        let mut client = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .https_only(tls_required)
            .user_agent(concat!("outbox/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &self.tls_ca {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|err| config_error(format!("tls_ca_pem: {err}")))?;
            if certs.is_empty() {
                return Err(config_error(
                    "tls_ca_pem: no CERTIFICATE block in the PEM text".to_owned(),
                ));
            }
            for cert in certs {
                client = client.add_root_certificate(cert);
            }
        }
        let client = client
            .build()
            .map_err(|err| config_error(format!("HTTP client: {err}")))?;
        Ok(WebhookPublisher {
            inner: Arc::new(Inner {
                client,
                routes,
                headers,
                signer,
                timestamped: self.timestamped,
                timeout: self.timeout,
                concurrency: self.concurrency,
                tls_required,
            }),
        })
    }
}

/// Turns a response into the outcome; reads at most a little of the body.
async fn judge(target: &Target, mut response: reqwest::Response) -> PublishResult {
    let status = response.status();
    if status.is_success() {
        // Read a small body to the end so the connection goes back to the pool.
        let mut read = 0;
        while read < DRAIN_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                Ok(None) | Err(_) => break,
            }
        }
        return Ok(());
    }
    let scope = if status == StatusCode::SERVICE_UNAVAILABLE
        && response
            .headers()
            .get(OUTCOME_HEADER)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"unavailable"))
    {
        // An inbox receiver whose database is down: every event would get
        // the same answer.
        ErrorKind::Unavailable
    } else {
        status_scope(status)
    };
    let mut notes = Vec::new();
    if status.is_redirection() {
        let location = header_text(&response, reqwest::header::LOCATION)
            .map_or_else(|| "nowhere".to_owned(), |to| redact_url(&to));
        notes.push(format!(
            "redirect to {location} not followed: update the URL"
        ));
    }
    if let Some(after) = header_text(&response, reqwest::header::RETRY_AFTER) {
        notes.push(format!("Retry-After: {after}"));
    }
    let mut body = Vec::new();
    while body.len() < EXCERPT_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    let excerpt = excerpt(&body);
    let mut message = format!("webhook {} answered {status}", target.shown);
    if !excerpt.is_empty() {
        message.push_str(": ");
        message.push_str(&excerpt);
    }
    if !notes.is_empty() {
        message.push_str(" (");
        message.push_str(&notes.join("; "));
        message.push(')');
    }
    Err(match scope {
        ErrorKind::Unavailable => PublishError::unavailable(message),
        ErrorKind::Transient => PublishError::transient(message),
        _ => PublishError::rejected(message),
    })
}

/// A response header as text (printable ASCII only), for messages.
fn header_text(response: &reqwest::Response, name: HeaderName) -> Option<String> {
    let value = response.headers().get(name)?.to_str().ok()?;
    let value: String = value.chars().take(EXCERPT_BYTES).collect();
    Some(value)
}

/// The scope of a status other than 2xx (the table in the module docs).
fn status_scope(status: StatusCode) -> ErrorKind {
    match status.as_u16() {
        // Redirects are not followed: the URL is outdated. Credentials (401,
        // 403, 407), the URL (404, 405, 410, 421), plaintext refused (426),
        // a method or protocol the endpoint never takes (501, 505), a proxy
        // that wants credentials (511): the same for every event.
        300..=399 | 401 | 403 | 404 | 405 | 407 | 410 | 421 | 426 | 501 | 505 | 511 => {
            ErrorKind::Unavailable
        }
        // Not now: this event may pass on a later try.
        408 | 423 | 425 | 429 | 500..=599 => ErrorKind::Transient,
        // The endpoint refused this event.
        _ => ErrorKind::Rejected,
    }
}

/// No response: a connection that could not be made (refused, DNS, connect
/// timeout, TLS handshake) is an outage of the endpoint; a request that
/// timed out or lost its connection after it was made is transient (the
/// endpoint may or may not have the event; the idempotency key makes
/// sending it again safe).
fn transport_error(target: &Target, timeout: Duration, err: &reqwest::Error) -> PublishError {
    let connect = err.is_connect();
    if err.is_timeout() && !connect {
        return PublishError::transient(format!(
            "webhook {} timed out after {timeout:?}",
            target.shown
        ));
    }
    // The error's own text without the URL, then its causes.
    let mut text = err_without_url(err);
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    let text = text.replace(target.url.as_str(), &target.shown);
    if connect || err.is_builder() {
        PublishError::unavailable(format!("webhook {} unreachable: {text}", target.shown))
    } else {
        PublishError::transient(format!(
            "webhook {} failed before answering: {text}",
            target.shown
        ))
    }
}

fn err_without_url(err: &reqwest::Error) -> String {
    // `reqwest::Error` is not `Clone`; its `Display` appends " for url (...)"
    // when it holds one, which is cut off here.
    let text = err.to_string();
    match text.find(" for url (") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// The start of a response body, on one line.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(EXCERPT_BYTES)]);
    let mut out = String::with_capacity(text.len());
    for word in text.split(|c: char| c.is_whitespace() || c.is_control()) {
        if word.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    if body.len() > EXCERPT_BYTES {
        out.push_str(" ...");
    }
    out
}

fn ascii_value(text: &str) -> std::result::Result<HeaderValue, PublishError> {
    HeaderValue::from_str(text)
        .map_err(|_| PublishError::rejected(format!("not a valid header value: {text:?}")))
}

/// Printable ASCII other than `%` as is; every other byte as `%XX`.
fn percent_encode(text: &str) -> String {
    use fmt::Write as _;
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x21..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// `serde_json` output with every non-ASCII character (and DEL) escaped as
/// `\uXXXX`: still the same JSON, now a valid header value.
fn ascii_json(json: &str) -> String {
    use fmt::Write as _;
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() && c != '\u{7f}' {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        }
    }
    out
}

/// `sha256=<hex>` of `[timestamp "."] body`.
fn sign(mut mac: HmacSha256, timestamp: Option<&str>, body: &[u8]) -> String {
    use fmt::Write as _;
    if let Some(timestamp) = timestamp {
        mac.update(timestamp.as_bytes());
        mac.update(b".");
    }
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 2 * digest.len());
    out.push_str("sha256=");
    for byte in digest {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    hex.as_bytes()
        .chunks_exact(2)
        .map(|pair| Some((nibble(pair[0])? << 4) | nibble(pair[1])?))
        .collect()
}

/// Checks `header_value` (`sha256=<hex>`) against the HMAC-SHA256 of
/// `[timestamp "."] body` under `secret`, in constant time (`verify_slice`).
pub(crate) fn verify(
    secret: &[u8],
    timestamp: Option<&str>,
    body: &[u8],
    header_value: &str,
) -> bool {
    let Some(expected) = header_value
        .trim()
        .strip_prefix("sha256=")
        .and_then(decode_hex)
    else {
        return false;
    };
    let Ok(mut mac) = HmacSha256::new_from_slice(secret) else {
        return false;
    };
    if let Some(timestamp) = timestamp {
        mac.update(timestamp.as_bytes());
        mac.update(b".");
    }
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// For receivers: `true` if `header_value` (the `X-Outbox-Signature`
/// header, `sha256=<hex>`) is the HMAC-SHA256 of `body` under `secret`.
///
/// Pass the raw request body, before any JSON parsing. The comparison is
/// constant-time.
///
/// ```
/// use outbox::publisher::http::verify_signature;
/// let body = br#"{"invoice_id":7}"#;
/// assert!(!verify_signature("secret", body, "sha256=00"));
/// ```
#[must_use]
pub fn verify_signature(secret: impl AsRef<[u8]>, body: &[u8], header_value: &str) -> bool {
    verify(secret.as_ref(), None, body, header_value)
}

/// For receivers of [timestamped](WebhookPublisherBuilder::signature_timestamp)
/// signatures: `true` if `header_value` is the HMAC-SHA256 of
/// `<timestamp>.<body>` under `secret` and `timestamp` (the
/// `X-Outbox-Timestamp` header, Unix seconds) is at most `max_age` away from
/// this machine's clock, so old requests cannot be replayed.
#[must_use]
pub fn verify_timestamped_signature(
    secret: impl AsRef<[u8]>,
    timestamp: &str,
    body: &[u8],
    header_value: &str,
    max_age: Duration,
) -> bool {
    if timestamp_skew(timestamp).is_none_or(|skew| skew > max_age.as_secs()) {
        return false;
    }
    verify(secret.as_ref(), Some(timestamp.trim()), body, header_value)
}

/// How many seconds `timestamp` (Unix seconds) is away from this machine's
/// clock, either way; `None` if it is not a number.
pub(crate) fn timestamp_skew(timestamp: &str) -> Option<u64> {
    let sent = timestamp.trim().parse::<u64>().ok()?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Some(now.abs_diff(sent))
}

impl RawPublisher for WebhookPublisher {
    async fn publish_raw(&self, entry: &Entry) -> PublishResult {
        self.send(entry).await
    }

    async fn publish_raw_batch(&self, entries: &[Entry]) -> Vec<PublishResult> {
        let entries: Vec<&Entry> = entries.iter().collect();
        self.send_all(&entries).await
    }
}

impl<E: Event> Publisher<E> for WebhookPublisher {
    async fn publish(&self, event: &Recorded<E>) -> PublishResult {
        self.send(event.entry()).await
    }

    async fn publish_batch(&self, events: &[Recorded<E>]) -> Vec<PublishResult> {
        let entries: Vec<&Entry> = events.iter().map(Recorded::entry).collect();
        self.send_all(&entries).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_round_trip_and_fail_when_tampered() {
        let mac = HmacSha256::new_from_slice(b"k").unwrap();
        let sig = sign(mac.clone(), None, b"{\"a\":1}");
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64, "{sig}");
        assert!(verify_signature("k", b"{\"a\":1}", &sig));
        assert!(verify_signature(
            "k",
            b"{\"a\":1}",
            &sig.to_uppercase().replace("SHA256=", "sha256=")
        ));
        assert!(!verify_signature("k", b"{\"a\":2}", &sig));
        assert!(!verify_signature("other", b"{\"a\":1}", &sig));
        assert!(!verify_signature("k", b"{\"a\":1}", &sig[7..]));
        assert!(!verify_signature("k", b"{\"a\":1}", "sha256=zz"));
        assert!(!verify_signature("k", b"{\"a\":1}", &sig[..sig.len() - 2]));

        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .to_string();
        let sig = sign(mac, Some(&now), b"body");
        let day = Duration::from_hours(24);
        assert!(verify_timestamped_signature("k", &now, b"body", &sig, day));
        assert!(!verify_signature("k", b"body", &sig));
        assert!(!verify_timestamped_signature("k", "12", b"body", &sig, day));
        let old = sign(
            HmacSha256::new_from_slice(b"k").unwrap(),
            Some("12"),
            b"body",
        );
        assert!(!verify_timestamped_signature("k", "12", b"body", &old, day));
    }

    /// A 503 is the event's (transient) unless an inbox receiver says its
    /// database is down: then it is the endpoint's.
    #[tokio::test]
    async fn an_inbox_outage_is_the_endpoints() {
        let target = Target::parse("http://127.0.0.1:9/hooks").unwrap();
        let answer = |outcome: Option<&str>| {
            let mut response = http::Response::builder().status(503);
            if let Some(outcome) = outcome {
                response = response.header(OUTCOME_HEADER, outcome);
            }
            reqwest::Response::from(response.body("{}").unwrap())
        };
        let err = judge(&target, answer(Some("unavailable")))
            .await
            .unwrap_err();
        assert!(err.is_unavailable(), "{err}");
        for outcome in [Some("retry"), None] {
            let err = judge(&target, answer(outcome)).await.unwrap_err();
            assert!(err.is_transient(), "{err}");
        }
    }

    #[test]
    fn header_encodings() {
        assert_eq!(percent_encode("order:42/a"), "order:42/a");
        assert_eq!(percent_encode("a b%ä"), "a%20b%25%C3%A4");
        let json = serde_json::to_string(&crate::Headers::from([
            ("Tenant".to_owned(), "ä😀\u{7f}".to_owned()),
            ("x\"y".to_owned(), "\n".to_owned()),
        ]))
        .unwrap();
        let ascii = ascii_json(&json);
        assert!(ascii.is_ascii() && !ascii.contains('\u{7f}'), "{ascii}");
        assert!(HeaderValue::from_str(&ascii).is_ok());
        let back: crate::Headers = serde_json::from_str(&ascii).unwrap();
        assert_eq!(back["Tenant"], "ä😀\u{7f}");
        assert_eq!(back["x\"y"], "\n");
    }

    #[test]
    fn statuses_and_excerpts() {
        let scope = |code| status_scope(StatusCode::from_u16(code).unwrap());
        for code in [408, 423, 425, 429, 500, 502, 503, 504, 599] {
            assert_eq!(scope(code), ErrorKind::Transient, "{code}");
        }
        for code in [
            300, 301, 302, 307, 308, 401, 403, 404, 405, 407, 410, 421, 426, 501, 505, 511,
        ] {
            assert_eq!(scope(code), ErrorKind::Unavailable, "{code}");
        }
        for code in [
            400, 402, 406, 409, 411, 412, 413, 414, 415, 416, 422, 451, 499,
        ] {
            assert_eq!(scope(code), ErrorKind::Rejected, "{code}");
        }
        assert_eq!(
            excerpt(b"  {\"error\":\n  \"bad\"}\r\n"),
            "{\"error\": \"bad\"}"
        );
        let long = "x".repeat(500);
        let e = excerpt(long.as_bytes());
        assert!(e.ends_with(" ...") && e.len() == EXCERPT_BYTES + 4, "{e}");
    }

    #[test]
    fn build_checks_and_redacts() {
        let err = WebhookPublisher::builder().build().unwrap_err();
        assert!(err.to_string().contains("no URL"), "{err}");
        let err = WebhookPublisher::builder()
            .url("ftp://u:hunter2@x/y")
            .build()
            .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = WebhookPublisher::builder()
            .url("https://x")
            .url_fn(|_| String::new())
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("both"), "{err}");
        let err = WebhookPublisher::builder()
            .url("https://x")
            .header("bad name", "v")
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("bad name"), "{err}");
        let err = WebhookPublisher::builder()
            .url("https://x")
            .signature_timestamp(true)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("signing_secret"), "{err}");
        let p = WebhookPublisher::builder()
            .url("https://user:hunter2@hooks.example/T0/B0/topsecret")
            .route("a", "https://b.example/tok/xyzzy")
            .header("Authorization", "Bearer hunter3")
            .signing_secret("hunter4")
            .build()
            .unwrap();
        let debug = format!("{p:?}");
        for secret in ["hunter2", "topsecret", "xyzzy", "hunter3", "hunter4"] {
            assert!(!debug.contains(secret), "{debug}");
        }
        assert!(debug.contains("https://***@hooks.example/***"), "{debug}");
    }

    #[test]
    fn a_tls_option_needs_https_and_a_certificate() {
        let err = WebhookPublisher::builder()
            .url("https://a.example/x")
            .route("e", "http://u:hunter2@b.example/secret")
            .tls_ca_pem(TEST_CA)
            .build()
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("http://***@b.example/***"), "{text}");
        assert!(text.contains("not an https:// URL"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        for pem in ["", "not pem at all"] {
            let err = WebhookPublisher::builder()
                .url("https://a.example/x")
                .tls_ca_pem(pem)
                .build()
                .unwrap_err();
            assert!(err.to_string().contains("tls_ca_pem"), "{err}");
        }
        let p = WebhookPublisher::builder()
            .url("https://a.example/x")
            .tls_ca_pem(TEST_CA)
            .build()
            .unwrap();
        assert!(format!("{p:?}").contains("tls_required: true"), "{p:?}");
    }

    /// A self-signed CA certificate (only parsed here, never trusted).
    const TEST_CA: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBkjCCATmgAwIBAgIUSQiltfQ3EgMCmHjdqfzaYnt2SfswCgYIKoZIzj0EAwIw\n\
HjEcMBoGA1UEAwwTb3V0Ym94IHVuaXQgdGVzdCBDQTAgFw0yNjExMzAxMDU3NTBa\n\
GA8yMTI2MTEwNjEwNTc1MFowHjEcMBoGA1UEAwwTb3V0Ym94IHVuaXQgdGVzdCBD\n\
QTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABMicZbdo/CzDoEA78wxJJpj7yJnL\n\
rxFhXZdHXjIqAEAE2nMCKeRMcVurT3ZxqbuBnuOOrEBqdGhsidThq5B6AaijUzBR\n\
MB0GA1UdDgQWBBRnjRqO4P3+g+j0dUt7TIEX3/MvPzAfBgNVHSMEGDAWgBRnjRqO\n\
4P3+g+j0dUt7TIEX3/MvPzAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0cA\n\
MEQCIBtkO3aRwOnHUCY3HefqDPKKrtrHyNKVxGp2RmjozRsEAiAZIMr/IVLimxAu\n\
J1PKnA/5BzGCioSB4L31fOjb9Mg60g==\n\
-----END CERTIFICATE-----\n";
}
