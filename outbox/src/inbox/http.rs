//! The HTTP inbox endpoint: receives the webhooks that
//! [`publisher::http`](crate::publisher::http) sends, checks their
//! signature, and hands each to [`Inbox::handle`]; the answer is `2xx` only
//! after the consumer's transaction committed.
//!
//! [`WebhookReceiver::receive`] takes the request's headers and raw body
//! and returns an [`http::Response`] (the `http` 1.x types that axum, hyper
//! and tower share), so it plugs into any of them:
//!
//! ```no_run
//! use outbox::inbox::http::WebhookReceiver;
//! use outbox::inbox::{Consumers, Inbox};
//! use outbox::sqlx;
//!
//! # async fn demo(pool: sqlx::PgPool, consumers: Consumers<sqlx::Postgres>) -> Result<(), outbox::Error> {
//! let inbox = Inbox::builder(pool).build().await?;
//! let receiver = WebhookReceiver::new(inbox, consumers)
//!     .signing_secret("shared-secret") // the publisher's `signing_secret`
//!     .require_timestamp(true); // the publisher's `signature_timestamp(true)`
//!
//! // In the framework's handler, with the request collected:
//! async fn endpoint(
//!     receiver: &WebhookReceiver<sqlx::Postgres>,
//!     request: http::Request<Vec<u8>>,
//! ) -> http::Response<String> {
//!     receiver.receive(request.headers(), request.body()).await
//! }
//! # Ok(()) }
//! ```
//!
//! With axum, for instance: `post(|State(r): State<WebhookReceiver<Postgres>>,
//! headers: HeaderMap, body: Bytes| async move { r.receive(&headers, &body).await })`
//! (the response converts as it is).
//! Bound the body size in the framework (e.g. axum's `DefaultBodyLimit`):
//! the receiver gets the whole body.
//!
//! # Checks
//!
//! With a [signing secret](WebhookReceiver::signing_secret) (required:
//! without one every request is refused unless
//! [`allow_unsigned`](WebhookReceiver::allow_unsigned) was called), the
//! `X-Outbox-Signature` must be the HMAC-SHA256 of the body, or of
//! `<timestamp>.<body>` when the request carries `X-Outbox-Timestamp`; a
//! timestamp must be at most [`max_age`](WebhookReceiver::max_age) (default
//! 5 min) from this machine's clock. With
//! [`require_timestamp(true)`](WebhookReceiver::require_timestamp) a request
//! without a timestamp is refused. The check is the one behind
//! [`verify_signature`](crate::publisher::http::verify_signature) and
//! [`verify_timestamped_signature`](crate::publisher::http::verify_timestamped_signature)
//! (a constant-time comparison). A refused request writes nothing.
//!
//! Replays: a copy of a request the inbox has processed is a duplicate for
//! the inbox's [dedupe window](crate::inbox::InboxBuilder::dedupe_window)
//! (default 7 days); a timestamped signature with a `max_age` shorter than
//! that window also refuses copies that arrive after it.
//!
//! # The request
//!
//! The headers `publisher::http` writes become the inbox [`Message`]:
//!
//! | header | becomes |
//! |---|---|
//! | `X-Event-Id` (else `Idempotency-Key`) | the event id: the dedupe key |
//! | `X-Event-Name` (percent-decoded) | the event name: the consumer |
//! | `X-Outbox-Event-Version` | the event version ([`Entry::version`](crate::Entry::version)): the consumer decodes the payload by it, upcasting an older one; without it, version 1 (a sender from before versions) |
//! | `X-Outbox-Stream-Key` (percent-decoded) | the stream key |
//! | `X-Outbox-Correlation-Id`, `X-Outbox-Causation-Id` | the correlation and causation ids |
//! | `X-Outbox-Headers` (a JSON object of strings) | the entry's headers |
//! | the body | the payload, byte for byte |
//!
//! A message with no event id or name, an id that is not a UUID, a
//! version that is not an integer from 1, or a payload that does not
//! decode is a dead letter at once (see
//! [`Inbox::handle`]). A request the publisher could not have sent (one of
//! the headers above not text, `X-Event-Name` not percent-encoded UTF-8,
//! `X-Outbox-Headers` not a JSON object of strings) is answered `400` and
//! nothing is written.
//!
//! A message of a version newer than its consumer's event type knows (the
//! sender deployed first) is a dead letter whose reason says so: requeue
//! it (`outbox inbox dead requeue`) once a consumer that knows the version
//! runs. An older version is upcast to the consumer's (see
//! [`Event::decode`](crate::Event::decode)).
//!
//! # The answer, and what `publisher::http` does with it
//!
//! Every answer has a short JSON body `{"outcome": "..."}` and the same
//! word in the header [`X-Outbox-Outcome`](crate::publisher::http::OUTCOME_HEADER).
//!
//! | [`Outcome`] | status | `outcome` | the publisher (its "Outcomes" table) |
//! |---|---|---|---|
//! | [`Processed`](Outcome::Processed): the consumer's transaction committed | 200 | `processed` | published |
//! | [`Duplicate`](Outcome::Duplicate): processed (or a dead letter) before | 200 | `duplicate` | published |
//! | [`Skipped`](Outcome::Skipped): no consumer, [`skip_unknown`](crate::inbox::ConsumersBuilder::skip_unknown) | 200 | `skipped` | published |
//! | [`Dead`](Outcome::Dead): a dead letter now, kept in the inbox table | 200 | `dead` | published: the receiver keeps the dead letter |
//! | [`Retry`](Outcome::Retry): the consumer failed, the attempt is counted | 503, `Retry-After: <seconds>` | `retry` | transient: an attempt of this event, which backs off on its own |
//! | [`Unavailable`](Outcome::Unavailable): the database (or a dependency the consumer reported) is down; nothing written | 503 | `unavailable` | unavailable: no attempt; the publisher pauses and probes until the receiver answers again |
//! | the signature or its timestamp refused | 401 | `unauthorized` (and `error`) | unavailable: a setting (the secret, clocks) |
//! | a request the publisher could not have sent | 400 | `bad_request` (and `error`) | rejected: attempts, then a dead letter at the sender |
//!
//! How the two halves' retries meet:
//!
//! - **A consumer that fails** (`Retry`): each delivery is one attempt in
//!   the inbox table *and* one attempt in the sender's outbox. The publisher
//!   charges a transient failure to the event while the endpoint answers
//!   other events, or while fewer than 3 *distinct* entries failed in a row;
//!   one event failing again and again never blocks the publisher, and the
//!   events around it flow. The last attempt that the inbox allows is
//!   answered `200` with `dead` (the dead letter stays in the inbox table),
//!   so keep the inbox's [`max_attempts`](crate::inbox::InboxBuilder::max_attempts)
//!   at most the sender's (both default to 3): otherwise the sender gives
//!   up first and the event is a dead letter in the sender's outbox, and
//!   the inbox keeps it as failing. The delay between attempts is the
//!   sender's backoff; `Retry-After` (the inbox's backoff) is only shown in
//!   the sender's error message. A consumer failing for *every* event (3
//!   distinct events in a row and nothing else answered) makes the
//!   publisher presume the endpoint down: it pauses and no more sender
//!   attempts are counted, while each probe still counts an inbox attempt,
//!   so those events end up as dead letters in the inbox.
//! - **The receiver's database is down** (`Unavailable`): `503` with
//!   `X-Outbox-Outcome: unavailable`, which the publisher treats as an
//!   outage of the endpoint: no attempt on either side, no dead letter
//!   anywhere; the publisher pauses (100 ms doubling to its `max_pause`)
//!   and the first answer after the database is back resumes it.
//!
//! # Housekeeping
//!
//! Without a [`Consume`](crate::inbox::Consume) loop nothing processes
//! requeued dead letters or drops old ids: run
//! [`Inbox::process_requeued`] and [`Inbox::cleanup`] on a timer (e.g. every
//! minute) next to the endpoint.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{HeaderMap, Response, StatusCode};

use super::{Consumers, Inbox, Message, Outcome};
use crate::entry::Headers;
use crate::publisher::http::{
    CAUSATION_ID_HEADER, CORRELATION_ID_HEADER, EVENT_ID_HEADER, EVENT_NAME_HEADER, HEADERS_HEADER,
    IDEMPOTENCY_KEY_HEADER, OUTCOME_HEADER, SIGNATURE_HEADER, STREAM_KEY_HEADER, TIMESTAMP_HEADER,
    VERSION_HEADER, timestamp_skew, verify,
};
use crate::store::Backend;

/// Receives the webhooks of [`publisher::http`](crate::publisher::http)
/// into an [`Inbox`]; see the [module docs](self). Cheap to clone.
pub struct WebhookReceiver<DB: Backend> {
    inbox: Inbox<DB>,
    consumers: Consumers<DB>,
    secret: Option<Arc<[u8]>>,
    allow_unsigned: bool,
    require_timestamp: bool,
    max_age: Duration,
}

impl<DB: Backend> Clone for WebhookReceiver<DB> {
    fn clone(&self) -> Self {
        Self {
            inbox: self.inbox.clone(),
            consumers: self.consumers.clone(),
            secret: self.secret.clone(),
            allow_unsigned: self.allow_unsigned,
            require_timestamp: self.require_timestamp,
            max_age: self.max_age,
        }
    }
}

impl<DB: Backend> fmt::Debug for WebhookReceiver<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookReceiver")
            .field("inbox", &self.inbox)
            .field("consumers", &self.consumers)
            .field("signed", &self.secret.is_some())
            .field("allow_unsigned", &self.allow_unsigned)
            .field("require_timestamp", &self.require_timestamp)
            .field("max_age", &self.max_age)
            .finish()
    }
}

/// Why a request is refused before the inbox sees it.
enum Refusal {
    /// 401: the signature or its timestamp.
    Unauthorized(&'static str),
    /// 400: a header the publisher would have written differently.
    BadRequest(String),
}

impl<DB: Backend> WebhookReceiver<DB> {
    /// A receiver handing each request to `inbox` with `consumers`. Set a
    /// [`signing_secret`](Self::signing_secret) (or call
    /// [`allow_unsigned`](Self::allow_unsigned)): until then every request
    /// is refused with `401`.
    #[must_use]
    pub fn new(inbox: Inbox<DB>, consumers: Consumers<DB>) -> Self {
        Self {
            inbox,
            consumers,
            secret: None,
            allow_unsigned: false,
            require_timestamp: false,
            max_age: Duration::from_mins(5),
        }
    }

    /// The secret the publisher signs with
    /// ([`signing_secret`](crate::publisher::http::WebhookPublisherBuilder::signing_secret)):
    /// every request must carry a valid `X-Outbox-Signature`.
    #[must_use]
    pub fn signing_secret(mut self, secret: impl Into<Vec<u8>>) -> Self {
        self.secret = Some(secret.into().into());
        self
    }

    /// Takes requests without checking any signature: only for an endpoint
    /// that something else authenticates (a private network, mTLS, a
    /// gateway). Ignored once a [signing secret](Self::signing_secret) is set.
    #[must_use]
    pub fn allow_unsigned(mut self) -> Self {
        self.allow_unsigned = true;
        self
    }

    /// With `true`, a request must carry `X-Outbox-Timestamp` (the
    /// publisher's [`signature_timestamp(true)`](crate::publisher::http::WebhookPublisherBuilder::signature_timestamp)).
    /// Default `false`: a request without one is checked against the body
    /// alone; a request with one is always checked against
    /// [`max_age`](Self::max_age).
    #[must_use]
    pub fn require_timestamp(mut self, on: bool) -> Self {
        self.require_timestamp = on;
        self
    }

    /// How far a signed timestamp may be from this machine's clock, either
    /// way (default 5 min). Older requests are refused as replays.
    #[must_use]
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = age;
        self
    }

    /// Handles one request: `headers` and the raw `body` (before any JSON
    /// parsing). Checks the signature, builds the [`Message`], runs
    /// [`Inbox::handle`] (one attempt) and answers as the
    /// [module docs](self) table says: `200` only after the commit.
    pub async fn receive(&self, headers: &HeaderMap, body: &[u8]) -> Response<String> {
        if let Err(refusal) = self.check_signature(headers, body) {
            return refused(&refusal);
        }
        let message = match message(headers, body) {
            Ok(message) => message,
            Err(refusal) => return refused(&refusal),
        };
        let outcome = self.inbox.handle(&self.consumers, message).await;
        answer(&outcome)
    }

    fn check_signature(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), Refusal> {
        let Some(secret) = &self.secret else {
            if self.allow_unsigned {
                return Ok(());
            }
            tracing::error!(
                "webhook receiver has no signing secret (and `allow_unsigned` was not called): request refused"
            );
            return Err(Refusal::Unauthorized("the receiver has no signing secret"));
        };
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let Some(signature) = text(SIGNATURE_HEADER) else {
            return Err(Refusal::Unauthorized("no X-Outbox-Signature"));
        };
        let refusal = match text(TIMESTAMP_HEADER).map(str::trim) {
            None if self.require_timestamp => Some("no X-Outbox-Timestamp"),
            None => (!verify(secret, None, body, signature)).then_some("bad signature"),
            Some(timestamp) => {
                if !verify(secret, Some(timestamp), body, signature) {
                    Some("bad signature")
                } else if timestamp_skew(timestamp).is_none_or(|skew| skew > self.max_age.as_secs())
                {
                    Some("timestamp too old or too far ahead (a replay, or clocks apart)")
                } else {
                    None
                }
            }
        };
        match refusal {
            Some(why) => {
                tracing::warn!(reason = why, "webhook request refused");
                Err(Refusal::Unauthorized(why))
            }
            None => Ok(()),
        }
    }
}

/// The inbox message the publisher's headers describe.
fn message(headers: &HeaderMap, body: &[u8]) -> Result<Message, Refusal> {
    let text = |name: &str| -> Result<Option<&str>, Refusal> {
        headers
            .get(name)
            .map(|v| {
                v.to_str()
                    .map(str::trim)
                    .map_err(|_| Refusal::BadRequest(format!("{name} is not text")))
            })
            .transpose()
    };
    let decoded = |name: &str| -> Result<Option<String>, Refusal> {
        text(name)?
            .map(|v| {
                percent_encoding::percent_decode_str(v)
                    .decode_utf8()
                    .map(std::borrow::Cow::into_owned)
                    .map_err(|_| {
                        Refusal::BadRequest(format!("{name} is not percent-encoded UTF-8"))
                    })
            })
            .transpose()
    };
    let mut message = Message::new(body);
    if let Some(id) = text(EVENT_ID_HEADER)?.or(text(IDEMPOTENCY_KEY_HEADER)?) {
        message = message.event_id(id);
    }
    if let Some(name) = decoded(EVENT_NAME_HEADER)? {
        message = message.name(name);
    }
    if let Some(version) = text(VERSION_HEADER)? {
        message = message.version(version);
    }
    if let Some(key) = decoded(STREAM_KEY_HEADER)? {
        message = message.stream_key(key);
    }
    if let Some(id) = text(CORRELATION_ID_HEADER)? {
        message = message.correlation_id(id);
    }
    if let Some(id) = text(CAUSATION_ID_HEADER)? {
        message = message.causation_id(id);
    }
    if let Some(json) = text(HEADERS_HEADER)? {
        let entry_headers: Headers = serde_json::from_str(json).map_err(|err| {
            Refusal::BadRequest(format!(
                "{HEADERS_HEADER} is not a JSON object of strings: {err}"
            ))
        })?;
        for (name, value) in entry_headers {
            message = message.header(name, value);
        }
    }
    Ok(message)
}

fn refused(refusal: &Refusal) -> Response<String> {
    let (status, outcome, error) = match refusal {
        Refusal::Unauthorized(why) => (StatusCode::UNAUTHORIZED, "unauthorized", *why),
        Refusal::BadRequest(why) => (StatusCode::BAD_REQUEST, "bad_request", why.as_str()),
    };
    let body = serde_json::json!({ "outcome": outcome, "error": error }).to_string();
    response(status, outcome, body)
}

fn answer(outcome: &Outcome) -> Response<String> {
    let (status, word) = match outcome {
        Outcome::Processed => (StatusCode::OK, "processed"),
        Outcome::Duplicate => (StatusCode::OK, "duplicate"),
        Outcome::Skipped => (StatusCode::OK, "skipped"),
        Outcome::Dead { .. } => (StatusCode::OK, "dead"),
        Outcome::Retry { .. } => (StatusCode::SERVICE_UNAVAILABLE, "retry"),
        Outcome::Unavailable { reason } => {
            tracing::warn!(reason = %reason, "webhook request not taken: inbox unavailable");
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        }
    };
    let body = serde_json::json!({ "outcome": word }).to_string();
    let mut response = response(status, word, body);
    if let Outcome::Retry { after, .. } = outcome {
        // Whole seconds, rounded up: `Retry-After: 0` would say "now".
        let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    }
    response
}

fn response(status: StatusCode, outcome: &'static str, body: String) -> Response<String> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(OUTCOME_HEADER, HeaderValue::from_static(outcome));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn headers_become_the_message() {
        let id = "0190a5c8-3c2e-7b4a-9f3e-2f1c0a7b5d11";
        let m = message(
            &headers(&[
                ("x-event-id", id),
                ("x-event-name", "order.placed%20%C3%A4"),
                ("x-outbox-event-version", "3"),
                ("x-outbox-stream-key", "order:%2542"),
                ("x-outbox-correlation-id", id),
                ("x-outbox-headers", r#"{"Tenant":"\u00e4"}"#),
            ]),
            b"{}",
        )
        .ok()
        .unwrap();
        assert_eq!(m.id(), Some(id));
        assert_eq!(m.name.as_deref(), Some("order.placed ä"));
        assert_eq!(m.key(), Some("order:%42"));
        assert_eq!(m.version.as_deref(), Some("3"));
        assert_eq!(m.correlation_id.as_deref(), Some(id));
        assert_eq!(m.headers["Tenant"], "ä");

        let m = message(&headers(&[("idempotency-key", id)]), b"{}")
            .ok()
            .unwrap();
        assert_eq!(m.id(), Some(id));
        assert_eq!(m.version, None, "version 1 for the inbox");

        for bad in [("x-outbox-headers", r#"{"a":1}"#), ("x-event-name", "%FF")] {
            assert!(matches!(
                message(&headers(&[bad]), b"{}"),
                Err(Refusal::BadRequest(_))
            ));
        }
    }

    #[test]
    fn outcomes_map_to_statuses() {
        let retry = answer(&Outcome::Retry {
            after: Duration::from_millis(1500),
            reason: "x".to_owned(),
        });
        assert_eq!(retry.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry.headers()[RETRY_AFTER], "2");
        assert_eq!(retry.body(), r#"{"outcome":"retry"}"#);
        let dead = answer(&Outcome::Dead {
            reason: "secret detail".to_owned(),
        });
        assert_eq!(dead.status(), StatusCode::OK);
        assert_eq!(dead.body(), r#"{"outcome":"dead"}"#);
        let down = answer(&Outcome::Unavailable {
            reason: "x".to_owned(),
        });
        assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(down.headers()[OUTCOME_HEADER], "unavailable");
        assert!(down.headers().get(RETRY_AFTER).is_none());
        assert_eq!(answer(&Outcome::Duplicate).status(), StatusCode::OK);
    }
}
