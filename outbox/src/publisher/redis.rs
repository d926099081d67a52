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
//! | `version` | [`Entry::version`] in decimal, on every entry (`1` too): the version of the event type that wrote the payload |
//! | `payload` | [`Entry::payload_json`]: the stored JSON text, byte for byte (with [`publish_upcast`](crate::PublishersBuilder::publish_upcast), a typed publisher's entry re-encoded at its own version) |
//! | `headers` | [`Entry::headers`] as a JSON object (`{}` when there are none) |
//! | `stream_key` | [`Entry::stream_key`], only when the entry has one |
//! | `correlation_id` | [`Entry::correlation_id`], only when set |
//! | `causation_id` | [`Entry::causation_id`], only when set |
//! | `traceparent`, `tracestate` | the entry's headers of these names (W3C trace context; also in `headers`), only when it has them |
//!
//! The stream entry id is the server's (`*`). Redis has no dedup of its own:
//! an event published again after a crash (at-least-once) is a second stream
//! entry with the same `event_id`.
//!
//! # Errors
//!
//! Each failure has a scope (see "Failure scopes" in [`publisher`](super)):
//! the event, this event this time, or the server. A wrong setting (a
//! password, an ACL, a key that holds something else) pauses the publisher
//! instead of turning the backlog into dead letters.
//!
//! | failure | kind | why |
//! |---|---|---|
//! | connection refused, lost or timed out; no reply to a batch within the [response timeout](RedisStreamPublisherBuilder::response_timeout); a TLS handshake that fails (untrusted certificate, a plaintext server behind `rediss://`) | [`unavailable`](PublishError::unavailable) | the server is down or unreachable |
//! | `NOAUTH`, `WRONGPASS` (and any failed `AUTH` while connecting), `NOPERM` | [`unavailable`](PublishError::unavailable) | credentials or ACL: a setting, the same for every event |
//! | `WRONGTYPE` (the stream key holds a string, a list, ...) | [`unavailable`](PublishError::unavailable) | a setting: every event for that key fails the same way until the key is freed or the stream name changed; dead-lettering the backlog would not fix it |
//! | `ERR unknown command` (no `XADD`: Redis before 5.0, or the command renamed or disabled), `MOVED`, `ASK`, `CROSSSLOT`, `CLUSTERDOWN` (a cluster behind a non-cluster client) | [`unavailable`](PublishError::unavailable) | the server cannot take `XADD` as configured |
//! | `LOADING`, `BUSY`, `MASTERDOWN`, `READONLY`, `OOM`, `MISCONF`, `NOREPLICAS` | [`unavailable`](PublishError::unavailable) | the whole server refuses writes for now; the publisher pauses and resumes when a write passes |
//! | `TRYAGAIN` | [`transient`](PublishError::transient) | this key, this time (a slot being migrated) |
//! | any other error reply to the `XADD` | [`rejected`](PublishError::rejected), with the server's message | the server refused this entry |
//!
//! A publisher keeps one health per event type it is registered for (the
//! catch-all has one for all its events): with a
//! [`stream_fn`](RedisStreamPublisherBuilder::stream_fn), a `WRONGTYPE` on
//! one key pauses every event of that publisher (the others of the batch
//! that went through are published) until the key is fixed.
//!
//! # Connection and TLS
//!
//! [`build`](RedisStreamPublisherBuilder::build) only checks the URL; the
//! connection is made on the first publish (so a relay can start while Redis
//! is down) and kept by a `redis` `ConnectionManager`, which reconnects after
//! a lost connection. The URL, which may hold a password, appears in `Debug`
//! output and error messages only redacted.
//!
//! `rediss://host:port` connects with TLS (rustls on the `ring` provider),
//! verifying the server's certificate and name against the system's root
//! certificates, or only against the CA given with
//! [`tls_ca_pem`](RedisStreamPublisherBuilder::tls_ca_pem). There is no way
//! to turn verification off (`rediss://..#insecure` is refused at build),
//! and a TLS option with a `redis://` URL is an error: nothing falls back to
//! plaintext. The `redis` crate builds its TLS configuration from rustls'
//! process-wide default provider; if none is installed when a `rediss://`
//! publisher is built, `ring`'s is installed (an application that installs
//! its own first keeps it).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, RedisError, Value};
use tokio::sync::OnceCell;

use super::redact::redact_url;
use super::{PublishError, PublishResult, Publisher, RawPublisher};
use crate::entry::{Entry, Recorded};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::trace::{TRACEPARENT, TRACESTATE};

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
    tls_ca: Option<Vec<u8>>,
}

impl fmt::Debug for RedisStreamPublisherBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStreamPublisherBuilder")
            .field("url", &redact_url(&self.url))
            .field("stream", &self.stream)
            .field("max_len", &self.max_len)
            .field("connection_timeout", &self.connection_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("tls_ca", &self.tls_ca.is_some())
            .finish()
    }
}

impl RedisStreamPublisher {
    /// Starts configuring a publisher for the server at `url`
    /// (`redis://[[user]:password@]host[:port][/db]`, or `rediss://` for
    /// TLS).
    pub fn builder(url: impl Into<String>) -> RedisStreamPublisherBuilder {
        RedisStreamPublisherBuilder {
            url: url.into(),
            stream: None,
            max_len: None,
            connection_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(10),
            tls_ca: None,
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
                .arg("version")
                .arg(entry.version())
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
            for name in [TRACEPARENT, TRACESTATE] {
                if let Some(value) = entry.headers().get(name) {
                    cmd.arg(name).arg(value);
                }
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

    /// Verifies a `rediss://` server against the CA certificate(s) in `pem`
    /// (PEM text, one or more `CERTIFICATE` blocks) instead of the system's
    /// roots. Needs a `rediss://` URL: [`build`](Self::build) fails for a
    /// plaintext one.
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_ca = Some(pem.into());
        self
    }

    /// Checks the URL and finishes. Connects on the first publish, not here.
    ///
    /// Fails with [`Error::PublisherConfig`] when the URL does not parse, no
    /// stream was given, a `rediss://` URL asks for no certificate
    /// verification (`#insecure`), or [`tls_ca_pem`](Self::tls_ca_pem) has
    /// no certificate in it or comes with a plaintext URL.
    pub fn build(self) -> Result<RedisStreamPublisher> {
        let url = redact_url(&self.url);
        let config_error = |reason: String| Error::PublisherConfig {
            publisher: "redis",
            reason,
        };
        let stream = self.stream.ok_or_else(|| {
            config_error("no stream: call `.stream(key)` or `.stream_fn(..)`".to_owned())
        })?;
        let client = client(&self.url, self.tls_ca.as_deref()).map_err(config_error)?;
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

/// A client for `url` (`redis://`, or `rediss://` verified against the
/// system roots or only against the CA in `tls_ca`), as the publisher
/// checks it: certificate verification cannot be turned off and a CA needs
/// a `rediss://` URL. Installs ring's rustls provider for TLS. The error
/// never holds credentials.
pub(crate) fn client(
    url: &str,
    tls_ca: Option<&[u8]>,
) -> std::result::Result<redis::Client, String> {
    let shown = redact_url(url);
    let info = redis::IntoConnectionInfo::into_connection_info(url)
        .map_err(|err| format!("{shown}: {}", describe(&err)))?;
    let tls = match info.addr() {
        ConnectionAddr::TcpTls { insecure: true, .. } => {
            return Err(format!(
                "{shown}: certificate verification cannot be turned off (`#insecure`)"
            ));
        }
        ConnectionAddr::TcpTls { .. } => true,
        _ => false,
    };
    let client = match tls_ca {
        Some(_) if !tls => {
            return Err(format!(
                "{shown} is not a rediss:// URL, but `tls_ca_pem` asks for TLS"
            ));
        }
        Some(pem) => {
            use rustls::pki_types::pem::PemObject as _;
            let certs = rustls::pki_types::CertificateDer::pem_slice_iter(pem)
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|err| format!("tls_ca_pem: {err}"))?;
            if certs.is_empty() {
                return Err("tls_ca_pem: no CERTIFICATE block in the PEM text".to_owned());
            }
            let certificates = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.to_vec()),
            };
            redis::Client::build_with_tls(info, certificates)
        }
        None => redis::Client::open(info),
    }
    .map_err(|err| format!("{shown}: {}", describe(&err)))?;
    if tls {
        install_ring_provider();
    }
    Ok(client)
}

/// Installs `ring` as rustls' process-wide provider unless one is
/// installed: the `redis` crate builds its TLS configuration from the
/// process default, which rustls cannot choose by itself when both of its
/// providers are compiled in.
fn install_ring_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may install one first; theirs then stays.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// The text of a client-side error (never contains the URL).
fn describe(err: &RedisError) -> String {
    err.to_string()
}

/// Reply codes that are the server's or a setting's, not the event's: the
/// same for every event (the table in the module docs).
const DESTINATION: &[&str] = &[
    // Credentials and ACL.
    "NOAUTH",
    "WRONGPASS",
    "NOPERM",
    // The stream key holds another type.
    "WRONGTYPE",
    // A cluster behind a non-cluster client.
    "MOVED",
    "ASK",
    "CROSSSLOT",
    "CLUSTERDOWN",
    // The whole server refuses writes for now.
    "LOADING",
    "BUSY",
    "MASTERDOWN",
    "READONLY",
    "OOM",
    "MISCONF",
    "NOREPLICAS",
];

/// Reply codes that say "this key, not now".
const TRANSIENT: &[&str] = &["TRYAGAIN"];

fn classify_reply(url: &str, stream: &str, code: &str, detail: Option<&str>) -> PublishError {
    let reply = match detail {
        Some(detail) => format!("{code} {detail}"),
        None => code.to_owned(),
    };
    let unknown_command = code == "ERR" && detail.is_some_and(|d| d.starts_with("unknown command"));
    if DESTINATION.contains(&code) || unknown_command {
        PublishError::unavailable(format!("redis {url}: XADD to `{stream}`: {reply}"))
    } else if TRANSIENT.contains(&code) {
        PublishError::transient(format!("redis {url}: XADD to `{stream}`: {reply}"))
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
    use super::super::ErrorKind;
    use super::*;

    #[test]
    fn replies_are_classified_by_code() {
        let wrongtype = classify_reply(
            "redis://***@h:6379",
            "s",
            "WRONGTYPE",
            Some("Operation against a key holding the wrong kind of value"),
        );
        assert!(wrongtype.is_unavailable());
        assert_eq!(
            wrongtype.message(),
            "redis redis://***@h:6379: XADD to `s`: WRONGTYPE Operation against a key holding the wrong kind of value"
        );
        for code in [
            "NOAUTH",
            "WRONGPASS",
            "NOPERM",
            "LOADING",
            "BUSY",
            "MASTERDOWN",
            "READONLY",
            "OOM",
            "MISCONF",
            "NOREPLICAS",
            "MOVED",
            "CLUSTERDOWN",
        ] {
            let err = classify_reply("u", "s", code, None);
            assert_eq!(err.kind(), ErrorKind::Unavailable, "{code}");
        }
        let unknown = classify_reply("u", "s", "ERR", Some("unknown command 'XADD', with args"));
        assert_eq!(unknown.kind(), ErrorKind::Unavailable);
        let busy_key = classify_reply("u", "s", "TRYAGAIN", Some("Multiple keys request"));
        assert_eq!(busy_key.kind(), ErrorKind::Transient);
        for (code, detail) in [
            ("ERR", Some("syntax error")),
            ("EXECABORT", None),
            ("X", None),
        ] {
            let err = classify_reply("u", "s", code, detail);
            assert_eq!(err.kind(), ErrorKind::Rejected, "{code}");
        }
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

    #[test]
    fn tls_is_required_and_verified_or_refused() {
        let err = RedisStreamPublisher::builder("redis://:hunter2@127.0.0.1:6379")
            .stream("s")
            .tls_ca_pem(b"-----BEGIN CERTIFICATE-----".to_vec())
            .build()
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("not a rediss:// URL"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        let err = RedisStreamPublisher::builder("rediss://127.0.0.1:6380/#insecure")
            .stream("s")
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("cannot be turned off"), "{err}");
        for pem in ["", "no pem here"] {
            let err = RedisStreamPublisher::builder("rediss://127.0.0.1:6380")
                .stream("s")
                .tls_ca_pem(pem)
                .build()
                .unwrap_err();
            assert!(err.to_string().contains("tls_ca_pem"), "{err}");
        }
        let p = RedisStreamPublisher::builder("rediss://127.0.0.1:6380")
            .stream("s")
            .build()
            .unwrap();
        assert!(
            format!("{p:?}").contains("rediss://127.0.0.1:6380"),
            "{p:?}"
        );
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
