//! Redis Streams publisher: one `XADD` per event, a whole batch pipelined
//! in one round trip.
//!
//! ```no_run
//! use outbox::publisher::redis::RedisStreamPublisher;
//! use outbox::{Outbox, Publishers};
//! # #[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
//! # #[outbox(name = "billing.invoice_paid")]
//! # struct InvoicePaid { invoice_id: i64 }
//!
//! # async fn relay<DB: outbox::Backend>(outbox: Outbox<DB>) -> Result<(), outbox::Error> {
//! let redis = RedisStreamPublisher::builder("redis://127.0.0.1:6379")
//!     // one stream per event name; or `.stream("events")` for one stream
//!     .stream_fn(|entry| format!("events:{}", entry.name()))
//!     .max_len(100_000) // XADD ... MAXLEN ~ 100000
//!     .build()?;
//! let publishers = Publishers::builder()
//!     .publisher::<InvoicePaid, _>(redis.clone()) // typed
//!     .fallback(redis) // and every other event, raw
//!     .build()?;
//! outbox.relay(publishers).run(async { /* shutdown signal */ }).await;
//! # Ok(())
//! # }
//! ```
//!
//! # The stream entry
//!
//! `XADD <stream> [MAXLEN ~ <n>] * <fields>` with these fields, in this order:
//!
//! | field | value |
//! |---|---|
//! | `event_id` | [`Entry::event_id`], hyphenated UUID: the consumer's dedup key |
//! | `name` | [`Entry::name`] |
//! | `payload` | [`Entry::payload_json`]: the stored JSON text, byte for byte |
//! | `headers` | [`Entry::headers`] as a JSON object (`{}` when there are none) |
//! | `stream_key` | [`Entry::stream_key`], only when the entry has one |
//! | `correlation_id` | [`Entry::correlation_id`], only when set |
//! | `causation_id` | [`Entry::causation_id`], only when set |
//!
//! The stream entry id is the server's (`*`). Redis has no dedup of its own:
//! an event published again after a crash (at-least-once) is a second stream
//! entry with the same `event_id`.
//!
//! # Errors
//!
//! - Connection refused, lost or timed out, and the server's transient
//!   replies (`LOADING`, `BUSY`, `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN`,
//!   `READONLY`, `OOM`, `NOREPLICAS`), failed authentication and `NOPERM`
//!   (a credentials or ACL problem, the same for every event):
//!   [`PublishError::unavailable`], which costs no attempt.
//! - Any other error reply to the `XADD` (e.g. `WRONGTYPE` because the key
//!   holds a string): [`PublishError::rejected`] with the server's message.
//!
//! # Connection
//!
//! [`build`](RedisStreamPublisherBuilder::build) only checks the URL; the
//! connection is made on the first publish (so a relay can start while Redis
//! is down) and kept by a `redis` `ConnectionManager`, which reconnects after
//! a lost connection. The URL, which may hold a password, appears in `Debug`
//! output and error messages only redacted. TLS (`rediss://`) is not enabled.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Value};
use tokio::sync::OnceCell;

use super::redact::redact_url;
use super::{PublishError, PublishResult, Publisher, RawPublisher};
use crate::entry::{Entry, Recorded};
use crate::error::{Error, Result};
use crate::event::Event;

type StreamFn = dyn Fn(&Entry) -> String + Send + Sync;

/// Which stream an entry goes to.
#[derive(Clone)]
enum Stream {
    Fixed(String),
    Mapped(Arc<StreamFn>),
}

impl Stream {
    fn key(&self, entry: &Entry) -> String {
        match self {
            Self::Fixed(key) => key.clone(),
            Self::Mapped(f) => f(entry),
        }
    }
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed(key) => fmt::Debug::fmt(key, f),
            Self::Mapped(_) => f.write_str("<fn>"),
        }
    }
}

/// Publishes entries to Redis Streams with `XADD`; see the [module docs](self).
///
/// Cheap to clone (one shared connection), so one publisher can be
/// registered for several event types and as the catch-all.
#[derive(Clone)]
pub struct RedisStreamPublisher {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    config: ConnectionManagerConfig,
    conn: OnceCell<ConnectionManager>,
    /// The URL with credentials redacted: the only form ever shown.
    url: String,
    stream: Stream,
    max_len: Option<usize>,
}

impl fmt::Debug for RedisStreamPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStreamPublisher")
            .field("url", &self.inner.url)
            .field("stream", &self.inner.stream)
            .field("max_len", &self.inner.max_len)
            .finish_non_exhaustive()
    }
}

/// Configures a [`RedisStreamPublisher`]; start with
/// [`RedisStreamPublisher::builder`].
#[must_use]
pub struct RedisStreamPublisherBuilder {
    url: String,
    stream: Option<Stream>,
    max_len: Option<usize>,
    connection_timeout: Duration,
    response_timeout: Duration,
}

impl fmt::Debug for RedisStreamPublisherBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStreamPublisherBuilder")
            .field("url", &redact_url(&self.url))
            .field("stream", &self.stream)
            .field("max_len", &self.max_len)
            .field("connection_timeout", &self.connection_timeout)
            .field("response_timeout", &self.response_timeout)
            .finish()
    }
}

impl RedisStreamPublisher {
    /// Starts configuring a publisher for the server at `url`
    /// (`redis://[[user]:password@]host[:port][/db]`).
    pub fn builder(url: impl Into<String>) -> RedisStreamPublisherBuilder {
        RedisStreamPublisherBuilder {
            url: url.into(),
            stream: None,
            max_len: None,
            connection_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(10),
        }
    }

    /// The connection, made on first use; a failure is an outage.
    async fn connection(&self) -> Result<ConnectionManager, PublishError> {
        let inner = &self.inner;
        inner
            .conn
            .get_or_try_init(|| {
                ConnectionManager::new_with_config(inner.client.clone(), inner.config.clone())
            })
            .await
            .cloned()
            .map_err(|err| {
                PublishError::unavailable(format!(
                    "redis {}: cannot connect: {}",
                    inner.url,
                    describe(&err)
                ))
            })
    }

    /// `XADD`s every entry in one pipeline; one result per entry, in order
    /// (shorter when the round trip itself failed: the rest were not sent).
    async fn send(&self, entries: &[&Entry]) -> Vec<PublishResult> {
        if entries.is_empty() {
            return Vec::new();
        }
        let inner = &self.inner;
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let mut streams = Vec::with_capacity(entries.len());
        for entry in entries {
            let stream = inner.stream.key(entry);
            let headers = match serde_json::to_string(entry.headers()) {
                Ok(json) => json,
                // A map of strings always serializes; answer without sending anything.
                Err(err) => {
                    let err = PublishError::rejected(format!("headers do not encode: {err}"));
                    return vec![Err(err); entries.len()];
                }
            };
            let cmd = pipe.cmd("XADD").arg(&stream);
            if let Some(max_len) = inner.max_len {
                cmd.arg("MAXLEN").arg("~").arg(max_len);
            }
            cmd.arg("*")
                .arg("event_id")
                .arg(entry.event_id().hyphenated().to_string())
                .arg("name")
                .arg(entry.name())
                .arg("payload")
                .arg(entry.payload_json())
                .arg("headers")
                .arg(headers);
            if let Some(key) = entry.stream_key() {
                cmd.arg("stream_key").arg(key);
            }
            if let Some(id) = entry.correlation_id() {
                cmd.arg("correlation_id").arg(id.hyphenated().to_string());
            }
            if let Some(id) = entry.causation_id() {
                cmd.arg("causation_id").arg(id.hyphenated().to_string());
            }
            streams.push(stream);
        }
        let mut conn = match self.connection().await {
            Ok(conn) => conn,
            Err(err) => return vec![Err(err)],
        };
        match pipe.query_async::<Vec<Value>>(&mut conn).await {
            Ok(replies) => replies
                .into_iter()
                .zip(&streams)
                .map(|(reply, stream)| match reply {
                    Value::ServerError(err) => Err(classify_reply(
                        &inner.url,
                        stream,
                        err.code(),
                        err.details(),
                    )),
                    _ => Ok(()),
                })
                .collect(),
            Err(err) => {
                let err = classify(&inner.url, &err);
                if err.is_unavailable() {
                    vec![Err(err)]
                } else {
                    vec![Err(err); entries.len()]
                }
            }
        }
    }
}

impl RedisStreamPublisherBuilder {
    /// Sends every entry to the stream `key`.
    pub fn stream(mut self, key: impl Into<String>) -> Self {
        self.stream = Some(Stream::Fixed(key.into()));
        self
    }

    /// Chooses each entry's stream, e.g. per event name:
    /// `.stream_fn(|e| format!("events:{}", e.name()))`.
    pub fn stream_fn(mut self, f: impl Fn(&Entry) -> String + Send + Sync + 'static) -> Self {
        self.stream = Some(Stream::Mapped(Arc::new(f)));
        self
    }

    /// Caps each stream at about `max_len` entries (`XADD ... MAXLEN ~ n`):
    /// Redis trims whole macro nodes, so a stream may hold somewhat more.
    pub fn max_len(mut self, max_len: usize) -> Self {
        self.max_len = Some(max_len);
        self
    }

    /// How long to wait for a TCP connection (default 5 s).
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// How long to wait for the replies to one batch (default 10 s); a
    /// timeout is an outage.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Checks the URL and finishes. Connects on the first publish, not here.
    ///
    /// Fails with [`Error::PublisherConfig`] when the URL does not parse or
    /// no stream was given.
    pub fn build(self) -> Result<RedisStreamPublisher> {
        let url = redact_url(&self.url);
        let config_error = |reason: String| Error::PublisherConfig {
            publisher: "redis",
            reason,
        };
        let stream = self.stream.ok_or_else(|| {
            config_error("no stream: call `.stream(key)` or `.stream_fn(..)`".to_owned())
        })?;
        let client = redis::Client::open(self.url.as_str())
            .map_err(|err| config_error(format!("{url}: {}", describe(&err))))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connection_timeout))
            .set_response_timeout(Some(self.response_timeout))
            // The relay backs off between runs itself; retry the connect only briefly.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        Ok(RedisStreamPublisher {
            inner: Arc::new(Inner {
                client,
                config,
                conn: OnceCell::new(),
                url,
                stream,
                max_len: self.max_len,
            }),
        })
    }
}

/// The text of a client-side error (never contains the URL).
fn describe(err: &RedisError) -> String {
    err.to_string()
}

/// Reply codes that say "not now" rather than "not this event".
const TRANSIENT: &[&str] = &[
    "LOADING",
    "BUSY",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "MASTERDOWN",
    "READONLY",
    "OOM",
    "NOREPLICAS",
    "NOAUTH",
    "NOPERM",
    "WRONGPASS",
];

fn classify_reply(url: &str, stream: &str, code: &str, detail: Option<&str>) -> PublishError {
    let reply = match detail {
        Some(detail) => format!("{code} {detail}"),
        None => code.to_owned(),
    };
    if TRANSIENT.contains(&code) {
        PublishError::unavailable(format!("redis {url}: XADD to `{stream}`: {reply}"))
    } else {
        PublishError::rejected(format!("redis rejected XADD to `{stream}`: {reply}"))
    }
}

/// A failed round trip: an error reply to the whole pipeline is judged by
/// its code, everything else (I/O, timeout, protocol) is an outage.
fn classify(url: &str, err: &RedisError) -> PublishError {
    match err.code() {
        Some(code) => classify_reply(url, "<batch>", code, err.detail()),
        None => PublishError::unavailable(format!("redis {url}: {}", describe(err))),
    }
}

impl RawPublisher for RedisStreamPublisher {
    async fn publish_raw(&self, entry: &Entry) -> PublishResult {
        first(self.send(&[entry]).await)
    }

    async fn publish_raw_batch(&self, entries: &[Entry]) -> Vec<PublishResult> {
        let entries: Vec<&Entry> = entries.iter().collect();
        self.send(&entries).await
    }
}

impl<E: Event> Publisher<E> for RedisStreamPublisher {
    async fn publish(&self, event: &Recorded<E>) -> PublishResult {
        first(self.send(&[event.entry()]).await)
    }

    async fn publish_batch(&self, events: &[Recorded<E>]) -> Vec<PublishResult> {
        let entries: Vec<&Entry> = events.iter().map(Recorded::entry).collect();
        self.send(&entries).await
    }
}

fn first(results: Vec<PublishResult>) -> PublishResult {
    results.into_iter().next().unwrap_or_else(|| {
        Err(PublishError::unavailable(
            "redis: no reply for the XADD (connection lost)",
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_classified_by_code() {
        let wrongtype = classify_reply(
            "redis://h:6379",
            "s",
            "WRONGTYPE",
            Some("Operation against a key holding the wrong kind of value"),
        );
        assert!(!wrongtype.is_unavailable());
        assert_eq!(
            wrongtype.message(),
            "redis rejected XADD to `s`: WRONGTYPE Operation against a key holding the wrong kind of value"
        );
        for code in ["LOADING", "OOM", "READONLY", "NOPERM", "TRYAGAIN"] {
            assert!(
                classify_reply("u", "s", code, None).is_unavailable(),
                "{code}"
            );
        }
        assert!(!classify_reply("u", "s", "ERR", Some("syntax")).is_unavailable());
    }

    #[test]
    fn build_checks_url_and_stream_and_redacts() {
        let err = RedisStreamPublisher::builder("redis://127.0.0.1")
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("no stream"), "{err}");
        let err = RedisStreamPublisher::builder("http://:hunter2@x")
            .stream("s")
            .build()
            .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let p = RedisStreamPublisher::builder("redis://:hunter2@127.0.0.1:6379/0")
            .stream("s")
            .build()
            .unwrap();
        let debug = format!("{p:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("redis://***@127.0.0.1:6379/0"), "{debug}");
    }
}
