//! The receiving half: an inbox that turns at-least-once delivery into
//! exactly-once database effects.
//!
//! A service that consumes the events another service's outbox publishes
//! uses the same `#[derive(Event)]` types. A [`Consumer`] (a trait impl or a
//! closure) receives the decoded [`Recorded<E>`] **and the open database
//! transaction**. For each message the inbox, in that one transaction,
//! inserts the event id into the inbox table (unique) and runs the
//! consumer's writes; it commits, and only then acknowledges the broker.
//!
//! ```no_run
//! use outbox::inbox::{ConsumeError, Consumers, Inbox, Message, Tx};
//! use outbox::{Recorded, sqlx};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize, outbox::Event)]
//! #[outbox(name = "billing.invoice_paid")]
//! struct InvoicePaid {
//!     invoice_id: i64,
//!     amount_cents: i64,
//! }
//!
//! # async fn demo(pool: sqlx::PgPool, message: Message) -> Result<(), outbox::Error> {
//! let inbox = Inbox::builder(pool).build().await?; // creates the table `inbox`
//! let consumers = Consumers::builder()
//!     .on(|tx: &mut Tx<sqlx::Postgres>, paid: Recorded<InvoicePaid>| {
//!         Box::pin(async move {
//!             sqlx::query("INSERT INTO payments (invoice_id, cents) VALUES ($1, $2)")
//!                 .bind(paid.event().invoice_id)
//!                 .bind(paid.event().amount_cents)
//!                 .execute(&mut **tx)
//!                 .await?;
//!             Ok(())
//!         })
//!     })
//!     .build()?;
//! // From a broker: `inbox.consume(consumers).run(source, shutdown)` (see
//! // `inbox::amqp`, `inbox::nats`, `inbox::redis`); or one message at a time:
//! let outcome = inbox.handle(&consumers, message).await;
//! assert!(outcome.should_ack());
//! # Ok(()) }
//! ```
//!
//! # What is exactly once, and what is not
//!
//! **Exactly once**: the database writes a consumer makes through the
//! transaction it is given. They commit together with the event id, so a
//! second delivery of the same message (a redelivery after a crash, a
//! broker duplicate, a relay that published twice) finds the id and skips
//! the consumer. A crash before the commit leaves nothing of the first try
//! and the message unacknowledged: the broker delivers it again and the
//! consumer runs again from scratch.
//!
//! **Not exactly once**: anything a consumer does outside that transaction
//! (an HTTP call, an email, a write to another database) may happen once
//! per delivery attempt. Make such effects idempotent, or record them as
//! events in an outbox in the same transaction and let a relay send them.
//!
//! The dedupe window ([`InboxBuilder::dedupe_window`], default 7 days) is
//! how long processed ids are kept: a copy of a message that arrives later
//! than that is processed again.
//!
//! # Failures
//!
//! The same scopes as publishing (see [`ConsumeError`]):
//!
//! | what happened | what the inbox does | the broker message |
//! |---|---|---|
//! | the consumer returned [`ConsumeError::retry`] (or panicked) | rolls back, counts an attempt in the inbox table, tries again after the [`Backoff`]; after the last attempt (default 3) a **dead letter** with the reason and the whole message | held (unacked) while retrying; acked once dead |
//! | the consumer returned [`ConsumeError::reject`] | rolls back; a dead letter at once | acked |
//! | the message does not decode (payload, headers, no event id) | a dead letter at once | acked |
//! | no consumer for the name | a dead letter (default) or skipped ([`ConsumersBuilder::skip_unknown`]) | acked |
//! | the database is down, or the consumer returned [`ConsumeError::unavailable`] | nothing written, no attempt counted; the loop pauses (100 ms doubling to 30 s) and tries again | held, never acked |
//! | a duplicate (processed or dead already) | the consumer does not run | acked |
//!
//! Dead letters stay in the inbox table until they are requeued (a running
//! consumer loop then processes them from the table, attempts reset) or
//! purged; from the library ([`Inbox::requeue`], [`Inbox::purge`]) or the
//! CLI (`outbox inbox dead list|show|requeue|purge`).

#[cfg(feature = "broker-amqp")]
#[cfg_attr(docsrs, doc(cfg(feature = "broker-amqp")))]
pub mod amqp;
mod consume;
#[cfg(feature = "broker-http")]
#[cfg_attr(docsrs, doc(cfg(feature = "broker-http")))]
pub mod http;
#[cfg(feature = "broker-kafka")]
#[cfg_attr(docsrs, doc(cfg(feature = "broker-kafka")))]
pub mod kafka;
#[cfg(feature = "broker-nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "broker-nats")))]
pub mod nats;
#[cfg(feature = "broker-redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "broker-redis")))]
pub mod redis;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use uuid::Uuid;

use crate::entry::{Entry, Headers, Recorded};
use crate::error::{Error, Result};
use crate::event::{Decoded, Event};
use crate::publisher::panic_message;
use crate::relay::Backoff;
use crate::store::inbox::{InboxRow, Take};
use crate::store::{Backend, DeadLetter, TableName, Which};

pub use consume::{Acker, Consume, ConsumeReport, Delivery, Source, SourceError};
/// A boxed, sendable future: what a closure consumer returns
/// (`Box::pin(async move { .. })`).
pub use futures_util::future::BoxFuture;

/// The transaction a consumer writes through: commit and rollback are the
/// inbox's, the consumer only runs statements on it (`&mut **tx`).
pub type Tx<DB> = sqlx::Transaction<'static, DB>;

/// Why a consumer failed, and what it should cost the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumeError {
    kind: ConsumeErrorKind,
    message: String,
}

/// The three kinds of consumer failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConsumeErrorKind {
    /// This message failed this time: one attempt, backoff, a dead letter
    /// after the last attempt.
    Retry,
    /// This message can never be processed: a dead letter at once.
    Reject,
    /// Something the consumer needs is down (its database, a service it
    /// calls): no attempt, no dead letter; consuming pauses and the message
    /// is tried again.
    Unavailable,
}

impl ConsumeError {
    /// A failure that may pass on a later try (costs an attempt).
    pub fn retry(message: impl fmt::Display) -> Self {
        Self {
            kind: ConsumeErrorKind::Retry,
            message: message.to_string(),
        }
    }

    /// This message can never be processed: a dead letter at once.
    pub fn reject(message: impl fmt::Display) -> Self {
        Self {
            kind: ConsumeErrorKind::Reject,
            message: message.to_string(),
        }
    }

    /// A dependency is down: no attempt; consuming pauses.
    pub fn unavailable(message: impl fmt::Display) -> Self {
        Self {
            kind: ConsumeErrorKind::Unavailable,
            message: message.to_string(),
        }
    }

    /// Which kind of failure this is.
    #[must_use]
    pub fn kind(&self) -> ConsumeErrorKind {
        self.kind
    }

    /// The message given.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConsumeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConsumeError {}

/// A database error inside a consumer: a lost connection, a pool timeout
/// or a closed pool is [`unavailable`](ConsumeError::unavailable) (no
/// attempt); anything else (a constraint, a syntax error) is a
/// [`retry`](ConsumeError::retry).
impl From<sqlx::Error> for ConsumeError {
    fn from(err: sqlx::Error) -> Self {
        if is_connection_error(&err) {
            Self::unavailable(format!("database unavailable: {err}"))
        } else {
            Self::retry(format!("database error: {err}"))
        }
    }
}

impl From<Error> for ConsumeError {
    fn from(err: Error) -> Self {
        match err {
            Error::Database(err) => err.into(),
            other => Self::retry(other),
        }
    }
}

fn is_connection_error(err: &sqlx::Error) -> bool {
    matches!(
        err,
        sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
    ) || matches!(err, sqlx::Error::Database(db)
        // PostgreSQL: admin shutdown, crash shutdown, cannot connect now;
        // SQLSTATE class 08 (connection exceptions) everywhere. A lost MySQL
        // connection surfaces as an I/O error.
        if db.code().is_some_and(|code| code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03")))
}

/// A typed consumer of event `E` on database `DB`.
///
/// ```
/// use outbox::inbox::{ConsumeError, Consumer, Tx};
/// use outbox::{Recorded, sqlx};
/// # #[derive(Debug, serde::Serialize, serde::Deserialize, outbox::Event)]
/// # struct InvoicePaid { invoice_id: i64 }
///
/// struct MarkPaid;
///
/// impl Consumer<sqlx::Postgres, InvoicePaid> for MarkPaid {
///     async fn consume(&self, tx: &mut Tx<sqlx::Postgres>, paid: Recorded<InvoicePaid>) -> Result<(), ConsumeError> {
///         sqlx::query("UPDATE invoices SET paid = true WHERE id = $1")
///             .bind(paid.event().invoice_id)
///             .execute(&mut **tx)
///             .await?;
///         Ok(())
///     }
/// }
/// ```
pub trait Consumer<DB: Backend, E: Event>: Send + Sync + 'static {
    /// Handles one message inside `tx`. `Ok` commits (and then the broker
    /// is acknowledged); an error rolls back and is handled by its kind.
    fn consume(
        &self,
        tx: &mut Tx<DB>,
        event: Recorded<E>,
    ) -> impl Future<Output = Result<(), ConsumeError>> + Send;
}

/// A consumer of raw entries (any name): the catch-all.
pub trait RawConsumer<DB: Backend>: Send + Sync + 'static {
    /// Handles one message inside `tx`, as [`Consumer::consume`].
    fn consume_raw(
        &self,
        tx: &mut Tx<DB>,
        entry: Entry,
    ) -> impl Future<Output = Result<(), ConsumeError>> + Send;
}

/// One route as the inbox sees it: decode, then run in the transaction.
#[async_trait]
trait Handle<DB: Backend>: Send + Sync {
    async fn handle(&self, tx: &mut Tx<DB>, entry: Entry) -> Result<(), ConsumeError>;
}

/// Decodes the payload as `E`, upcasting an older version. A version newer
/// than `E` knows is rejected (a dead letter, kept): requeue it once a
/// consumer that knows the version runs.
fn decode<E: Event>(entry: &Entry) -> std::result::Result<E, ConsumeError> {
    match crate::event::decode::<E>(entry.version(), entry.payload_json()) {
        Decoded::Event(event) => Ok(event),
        Decoded::Failed(reason) => Err(ConsumeError::reject(reason)),
        Decoded::Newer => Err(ConsumeError::reject(format!(
            "version {} of `{}` is newer than this consumer knows ({}): requeue it once a consumer that knows it runs",
            entry.version(),
            entry.name(),
            E::VERSION
        ))),
    }
}

struct Typed<E, C>(C, PhantomData<fn() -> E>);

#[async_trait]
impl<DB: Backend, E: Event, C: Consumer<DB, E>> Handle<DB> for Typed<E, C> {
    async fn handle(&self, tx: &mut Tx<DB>, entry: Entry) -> Result<(), ConsumeError> {
        let event = decode::<E>(&entry)?;
        self.0.consume(tx, Recorded::new(event, entry)).await
    }
}

struct TypedFn<E, F>(F, PhantomData<fn() -> E>);

#[async_trait]
impl<DB, E, F> Handle<DB> for TypedFn<E, F>
where
    DB: Backend,
    E: Event,
    F: for<'t> Fn(&'t mut Tx<DB>, Recorded<E>) -> BoxFuture<'t, Result<(), ConsumeError>>
        + Send
        + Sync
        + 'static,
{
    async fn handle(&self, tx: &mut Tx<DB>, entry: Entry) -> Result<(), ConsumeError> {
        let event = decode::<E>(&entry)?;
        (self.0)(tx, Recorded::new(event, entry)).await
    }
}

struct Raw<C>(C);

#[async_trait]
impl<DB: Backend, C: RawConsumer<DB>> Handle<DB> for Raw<C> {
    async fn handle(&self, tx: &mut Tx<DB>, entry: Entry) -> Result<(), ConsumeError> {
        self.0.consume_raw(tx, entry).await
    }
}

struct RawFn<F>(F);

#[async_trait]
impl<DB, F> Handle<DB> for RawFn<F>
where
    DB: Backend,
    F: for<'t> Fn(&'t mut Tx<DB>, Entry) -> BoxFuture<'t, Result<(), ConsumeError>>
        + Send
        + Sync
        + 'static,
{
    async fn handle(&self, tx: &mut Tx<DB>, entry: Entry) -> Result<(), ConsumeError> {
        (self.0)(tx, entry).await
    }
}

/// The consumers of one inbox: at most one per event type, plus an
/// optional catch-all. Cheap to clone (shared).
pub struct Consumers<DB: Backend> {
    inner: Arc<ConsumersInner<DB>>,
}

struct ConsumersInner<DB: Backend> {
    /// By event name and alias (the aliases of a type share its handle).
    typed: HashMap<&'static str, Arc<dyn Handle<DB>>>,
    fallback: Option<Box<dyn Handle<DB>>>,
    skip_unknown: bool,
}

impl<DB: Backend> Clone for Consumers<DB> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<DB: Backend> fmt::Debug for Consumers<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.inner.typed.keys().collect();
        names.sort();
        f.debug_struct("Consumers")
            .field("events", &names)
            .field("fallback", &self.inner.fallback.is_some())
            .field("skip_unknown", &self.inner.skip_unknown)
            .finish()
    }
}

impl<DB: Backend> Consumers<DB> {
    /// Starts an empty set of consumers.
    #[must_use]
    pub fn builder() -> ConsumersBuilder<DB> {
        ConsumersBuilder {
            typed: HashMap::new(),
            fallback: None,
            skip_unknown: false,
            duplicate: None,
        }
    }

    fn route(&self, name: &str) -> Option<&dyn Handle<DB>> {
        match self.inner.typed.get(name) {
            Some(handle) => Some(handle.as_ref()),
            None => self.inner.fallback.as_deref(),
        }
    }
}

/// Builds [`Consumers`].
pub struct ConsumersBuilder<DB: Backend> {
    typed: HashMap<&'static str, Arc<dyn Handle<DB>>>,
    fallback: Option<Box<dyn Handle<DB>>>,
    skip_unknown: bool,
    duplicate: Option<String>,
}

impl<DB: Backend> fmt::Debug for ConsumersBuilder<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumersBuilder")
            .field("events", &self.typed.len())
            .finish_non_exhaustive()
    }
}

impl<DB: Backend> ConsumersBuilder<DB> {
    /// Routes `E`'s name and aliases to `handle`.
    fn add<E: Event>(mut self, handle: Arc<dyn Handle<DB>>) -> Self {
        let mut routes: Vec<_> = E::ALIASES
            .iter()
            .map(|&alias| (alias, Arc::clone(&handle)))
            .collect();
        routes.push((E::NAME, handle));
        for (name, handle) in routes {
            if self.typed.insert(name, handle).is_some() {
                self.duplicate
                    .get_or_insert_with(|| format!("event `{name}`"));
            }
        }
        self
    }

    /// The consumer of event `E` (a [`Consumer`] impl).
    #[must_use]
    pub fn consumer<E: Event, C: Consumer<DB, E>>(self, consumer: C) -> Self {
        self.add::<E>(Arc::new(Typed(consumer, PhantomData)))
    }

    /// The consumer of event `E`, as a closure returning a boxed future:
    /// `|tx, paid: Recorded<InvoicePaid>| Box::pin(async move { .. })`.
    #[must_use]
    pub fn on<E, F>(self, handler: F) -> Self
    where
        E: Event,
        F: for<'t> Fn(&'t mut Tx<DB>, Recorded<E>) -> BoxFuture<'t, Result<(), ConsumeError>>
            + Send
            + Sync
            + 'static,
    {
        self.add::<E>(Arc::new(TypedFn(handler, PhantomData)))
    }

    fn set_fallback(mut self, handle: Box<dyn Handle<DB>>) -> Self {
        if self.fallback.replace(handle).is_some() {
            self.duplicate
                .get_or_insert_with(|| "the catch-all".to_owned());
        }
        self
    }

    /// The catch-all: takes every message whose name has no typed consumer.
    #[must_use]
    pub fn fallback<C: RawConsumer<DB>>(self, consumer: C) -> Self {
        self.set_fallback(Box::new(Raw(consumer)))
    }

    /// The catch-all as a closure: `|tx, entry: Entry| Box::pin(async move { .. })`.
    #[must_use]
    pub fn fallback_fn<F>(self, handler: F) -> Self
    where
        F: for<'t> Fn(&'t mut Tx<DB>, Entry) -> BoxFuture<'t, Result<(), ConsumeError>>
            + Send
            + Sync
            + 'static,
    {
        self.set_fallback(Box::new(RawFn(handler)))
    }

    /// A message whose name has no consumer (and no catch-all) is
    /// acknowledged and dropped, with nothing written. Default: it is kept
    /// as a dead letter ("no consumer for `name`"), so nothing is lost;
    /// requeue it once a consumer exists.
    #[must_use]
    pub fn skip_unknown(mut self) -> Self {
        self.skip_unknown = true;
        self
    }

    /// Checks the registry (no two types share a name) and that no event
    /// type got two consumers.
    pub fn build(self) -> Result<Consumers<DB>> {
        crate::registry::check()?;
        if let Some(what) = self.duplicate {
            return Err(Error::DuplicateConsumer { what });
        }
        Ok(Consumers {
            inner: Arc::new(ConsumersInner {
                typed: self.typed,
                fallback: self.fallback,
                skip_unknown: self.skip_unknown,
            }),
        })
    }
}

/// One message as a source received it, before the inbox checks it.
///
/// Sources fill it from the broker's metadata (each source module's docs
/// say which field comes from where); a hand-written source or an HTTP
/// endpoint builds it with [`Message::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub(crate) event_id: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) version: Option<String>,
    pub(crate) payload: std::result::Result<String, String>,
    pub(crate) stream_key: Option<String>,
    pub(crate) headers: Headers,
    pub(crate) correlation_id: Option<String>,
    pub(crate) causation_id: Option<String>,
    pub(crate) created_at: Option<DateTime<Utc>>,
}

impl Message {
    /// A message with its payload bytes (JSON text; bytes that are not
    /// UTF-8 make the message a dead letter).
    #[must_use]
    pub fn new(payload: impl Into<Vec<u8>>) -> Self {
        let payload = String::from_utf8(payload.into()).map_err(|err| {
            format!(
                "payload is not UTF-8 text: {err}; kept as {}",
                String::from_utf8_lossy(err.as_bytes())
            )
        });
        Self {
            event_id: None,
            name: None,
            version: None,
            payload,
            stream_key: None,
            headers: Headers::new(),
            correlation_id: None,
            causation_id: None,
            created_at: None,
        }
    }

    /// The event id (a UUID, as the outbox writes it): the dedupe key.
    #[must_use]
    pub fn event_id(mut self, id: impl Into<String>) -> Self {
        self.event_id = Some(id.into());
        self
    }

    /// The event name (routes to the consumer).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The sender's event version, as the broker header carries it (an
    /// integer from 1; the message is a dead letter otherwise). A message
    /// that does not say is version 1.
    #[must_use]
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// The stream key (per-stream order).
    #[must_use]
    pub fn stream_key(mut self, key: impl Into<String>) -> Self {
        self.stream_key = Some(key.into());
        self
    }

    /// One of the entry's headers (not the broker's own metadata).
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// The correlation id (a UUID).
    #[must_use]
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// The causation id (a UUID).
    #[must_use]
    pub fn causation_id(mut self, id: impl Into<String>) -> Self {
        self.causation_id = Some(id.into());
        self
    }

    /// When the event was recorded, if the message says.
    #[must_use]
    pub fn created_at(mut self, at: DateTime<Utc>) -> Self {
        self.created_at = Some(at);
        self
    }

    /// The stream key, if any.
    #[must_use]
    pub fn key(&self) -> Option<&str> {
        self.stream_key.as_deref()
    }

    /// The event id as received, if any.
    #[must_use]
    pub fn id(&self) -> Option<&str> {
        self.event_id.as_deref()
    }

    /// Checks the metadata: the row to store and, when it is a dead letter
    /// at once, why.
    fn check(self) -> (InboxRow, Option<String>) {
        let mut problems = Vec::new();
        let event_id = match self.event_id.as_deref().map(Uuid::try_parse) {
            Some(Ok(id)) => id,
            Some(Err(_)) => {
                let raw = self.event_id.as_deref().unwrap_or_default();
                problems.push(format!("event id `{raw}` is not a UUID"));
                // The same broken id maps to the same row, so a redelivery
                // is a duplicate, not a second dead letter.
                Uuid::new_v5(&Uuid::NAMESPACE_OID, raw.as_bytes())
            }
            None => {
                problems.push("the message carries no event id".to_owned());
                // Keyed by what it carries, so a redelivery of it is a
                // duplicate, not a second dead letter.
                let mut key = self.name.clone().unwrap_or_default().into_bytes();
                key.push(0);
                key.extend_from_slice(self.payload.as_ref().unwrap_or_else(|e| e).as_bytes());
                Uuid::new_v5(&Uuid::NAMESPACE_OID, &key)
            }
        };
        let version = match self.version.as_deref().map(str::parse::<i32>) {
            None => 1,
            Some(Ok(version)) if version >= 1 => version,
            Some(_) => {
                problems.push(format!(
                    "event version `{}` is not an integer from 1",
                    self.version.as_deref().unwrap_or_default()
                ));
                1
            }
        };
        let name = self.name.unwrap_or_else(|| {
            problems.push("the message carries no event name".to_owned());
            String::new()
        });
        let payload = self.payload.unwrap_or_else(|err| {
            problems.push(err.clone());
            err
        });
        let mut uuid =
            |what: &str, value: Option<String>| match value.as_deref().map(Uuid::try_parse) {
                None => None,
                Some(Ok(id)) => Some(id),
                Some(Err(_)) => {
                    problems.push(format!(
                        "{what} `{}` is not a UUID",
                        value.as_deref().unwrap_or_default()
                    ));
                    None
                }
            };
        let correlation_id = uuid("correlation id", self.correlation_id);
        let causation_id = uuid("causation id", self.causation_id);
        let headers = serde_json::to_string(&self.headers).unwrap_or_else(|_| "{}".to_owned());
        let row = InboxRow {
            event_id,
            name,
            version,
            payload,
            stream_key: self.stream_key,
            headers,
            correlation_id,
            causation_id,
        };
        let problem = (!problems.is_empty()).then(|| problems.join("; "));
        (row, problem)
    }
}

/// What [`Inbox::handle`] did with one message, and whether the source
/// should acknowledge it ([`should_ack`](Self::should_ack)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The consumer ran and its transaction committed.
    Processed,
    /// The id was processed (or dead-lettered) before: the consumer did not run.
    Duplicate,
    /// No consumer for the name and [`ConsumersBuilder::skip_unknown`]: nothing written.
    Skipped,
    /// The message is a dead letter now, kept in the inbox table.
    Dead {
        /// Why.
        reason: String,
    },
    /// The consumer failed and the attempt was counted: try again after the delay.
    Retry {
        /// The backoff before the next attempt.
        after: Duration,
        /// The consumer's error.
        reason: String,
    },
    /// The database (or a dependency the consumer reported) is unavailable:
    /// nothing was written and no attempt counted. Do not acknowledge.
    Unavailable {
        /// Why.
        reason: String,
    },
}

impl Outcome {
    /// `true` when the message is settled (processed, duplicate, skipped or
    /// dead) and the broker should be acknowledged.
    #[must_use]
    pub fn should_ack(&self) -> bool {
        matches!(
            self,
            Self::Processed | Self::Duplicate | Self::Skipped | Self::Dead { .. }
        )
    }
}

/// Counts of an inbox table: see [`Inbox::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct InboxStats {
    /// Processed ids still kept for deduplication.
    pub processed: u64,
    /// Messages that failed at least once and are not dead (yet).
    pub retrying: u64,
    /// Dead letters.
    pub dead: u64,
    /// Dead letters requeued and not processed yet.
    pub requeued: u64,
    /// The same counts per event name, sorted by name.
    pub by_name: Vec<InboxNameStats>,
}

/// [`InboxStats`] for one event name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct InboxNameStats {
    /// The event name.
    pub name: String,
    /// Processed ids kept.
    pub processed: u64,
    /// Failed at least once, not dead.
    pub retrying: u64,
    /// Dead letters.
    pub dead: u64,
    /// Requeued.
    pub requeued: u64,
}

impl InboxStats {
    /// Sums per-name rows into the totals.
    pub(crate) fn from_names(by_name: Vec<InboxNameStats>) -> Self {
        let mut stats = Self::default();
        for n in &by_name {
            stats.processed += n.processed;
            stats.retrying += n.retrying;
            stats.dead += n.dead;
            stats.requeued += n.requeued;
        }
        stats.by_name = by_name;
        stats
    }
}

/// An inbox table and its settings. Cheap to clone.
pub struct Inbox<DB: Backend> {
    inner: Arc<InboxInner<DB>>,
}

struct InboxInner<DB: Backend> {
    pool: sqlx::Pool<DB>,
    table: TableName,
    sql: DB::InboxSql,
    max_attempts: u32,
    backoff: Backoff,
    dedupe_window: Duration,
}

impl<DB: Backend> Clone for Inbox<DB> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<DB: Backend> fmt::Debug for Inbox<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbox")
            .field("table", &self.inner.table)
            .field("max_attempts", &self.inner.max_attempts)
            .field("backoff", &self.inner.backoff)
            .field("dedupe_window", &self.inner.dedupe_window)
            .finish_non_exhaustive()
    }
}

/// Builds an [`Inbox`].
pub struct InboxBuilder<DB: Backend> {
    pool: sqlx::Pool<DB>,
    table: String,
    max_attempts: u32,
    backoff: Backoff,
    dedupe_window: Duration,
    migrate: bool,
}

impl<DB: Backend> fmt::Debug for InboxBuilder<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboxBuilder")
            .field("table", &self.table)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

impl<DB: Backend> InboxBuilder<DB> {
    /// The inbox table (`table` or `schema.table`). Default `inbox`.
    #[must_use]
    pub fn table(mut self, name: impl Into<String>) -> Self {
        self.table = name.into();
        self
    }

    /// Attempts before a failing message becomes a dead letter (at least 1). Default 3.
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The wait between attempts of a failing message. Default: 1 s,
    /// doubling, at most 5 min.
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// How long processed ids are kept for deduplication. Default 7 days.
    /// A copy of a message arriving later than that is processed again.
    #[must_use]
    pub fn dedupe_window(mut self, window: Duration) -> Self {
        self.dedupe_window = window;
        self
    }

    /// Whether [`build`](Self::build) creates or upgrades the table. Default `true`.
    #[must_use]
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }

    /// Validates the table name, runs the migrations (unless turned off)
    /// and checks the event registry.
    pub async fn build(self) -> Result<Inbox<DB>> {
        crate::registry::check()?;
        let table = TableName::new(&self.table)?;
        if table.has_schema() && !DB::SCHEMAS {
            return Err(Error::InvalidTableName {
                name: self.table,
                reason: "this database has no schemas".to_owned(),
            });
        }
        if self.migrate {
            DB::inbox_migrate(&self.pool, &table).await?;
        }
        Ok(Inbox {
            inner: Arc::new(InboxInner {
                sql: DB::inbox_sql(&table),
                pool: self.pool,
                table,
                max_attempts: self.max_attempts,
                backoff: self.backoff,
                dedupe_window: self.dedupe_window,
            }),
        })
    }
}

/// Creates or upgrades the inbox table `table` (what `outbox inbox
/// migrate` runs).
pub async fn migrate<DB: Backend>(pool: &sqlx::Pool<DB>, table: &str) -> Result<()> {
    DB::inbox_migrate(pool, &TableName::new(table)?).await
}

impl<DB: Backend> Inbox<DB> {
    /// Starts building an inbox on `pool`.
    #[must_use]
    pub fn builder(pool: sqlx::Pool<DB>) -> InboxBuilder<DB> {
        InboxBuilder {
            pool,
            table: "inbox".to_owned(),
            max_attempts: 3,
            backoff: Backoff::default(),
            dedupe_window: Duration::from_hours(24 * 7),
            migrate: true,
        }
    }

    /// The inbox table.
    #[must_use]
    pub fn table(&self) -> &TableName {
        &self.inner.table
    }

    /// The database pool.
    #[must_use]
    pub fn pool(&self) -> &sqlx::Pool<DB> {
        &self.inner.pool
    }

    /// The attempts a failing message gets.
    #[must_use]
    pub fn max_attempts(&self) -> u32 {
        self.inner.max_attempts
    }

    /// A consumer loop over a [`Source`]: see [`Consume`].
    #[must_use]
    pub fn consume(&self, consumers: Consumers<DB>) -> Consume<DB> {
        Consume::new(self.clone(), consumers)
    }

    /// Processes one message once: checks it, takes its id and runs its
    /// consumer in one transaction, commits; or counts the failure. Never
    /// retries by itself: the [`Outcome`] says what to do next (a
    /// [`Consume`] loop holds a [`Retry`](Outcome::Retry) for its delay and
    /// tries again; an HTTP endpoint answers 503 and lets the sender retry).
    pub async fn handle(&self, consumers: &Consumers<DB>, message: Message) -> Outcome {
        let created_at = message.created_at;
        let (row, problem) = message.check();
        if let Some(reason) = problem {
            return self.dead_now(&row, reason).await;
        }
        self.handle_row(consumers, row, created_at).await
    }

    pub(crate) async fn handle_row(
        &self,
        consumers: &Consumers<DB>,
        row: InboxRow,
        created_at: Option<DateTime<Utc>>,
    ) -> Outcome {
        let headers = match crate::store::decode_headers(&row.headers) {
            Ok(headers) => headers,
            Err(reason) => return self.dead_now(&row, reason).await,
        };
        let mut entry = Entry {
            position: 0,
            event_id: row.event_id,
            name: row.name.clone(),
            version: u32::try_from(row.version).unwrap_or(0),
            payload: row.payload.clone(),
            stream_key: row.stream_key.clone(),
            headers,
            correlation_id: row.correlation_id,
            causation_id: row.causation_id,
            created_at: created_at.unwrap_or_else(Utc::now),
            attempt: 1,
        };
        let Some(route) = consumers.route(&row.name) else {
            if consumers.inner.skip_unknown {
                tracing::debug!(name = %row.name, event_id = %row.event_id, "no consumer; skipped");
                return Outcome::Skipped;
            }
            let reason = format!("no consumer for `{}`", row.name);
            return self.dead_now(&row, reason).await;
        };
        let mut tx = match self.inner.pool.begin().await {
            Ok(tx) => tx,
            Err(err) => return unavailable(&err),
        };
        match DB::inbox_take(&mut tx, &self.inner.sql, &row).await {
            Ok(Take::Seen) => {
                drop(tx);
                return Outcome::Duplicate;
            }
            Ok(Take::Taken { position, attempts }) => {
                entry.position = position;
                entry.attempt = attempts.saturating_add(1);
            }
            Err(err) => return unavailable(&err),
        }
        let result = AssertUnwindSafe(route.handle(&mut tx, entry))
            .catch_unwind()
            .await;
        let error = match result {
            Ok(Ok(())) => {
                return match tx.commit().await {
                    Ok(()) => Outcome::Processed,
                    // Whether it committed is unknown: the message stays
                    // unacked, and a redelivery finds the id if it did.
                    Err(err) => unavailable(&Error::Database(err)),
                };
            }
            Ok(Err(error)) => error,
            Err(panic) => {
                ConsumeError::retry(format!("consumer panicked: {}", panic_message(&*panic)))
            }
        };
        // Best effort: the failure is written in its own transaction.
        let _ = tx.rollback().await;
        match error.kind {
            ConsumeErrorKind::Unavailable => Outcome::Unavailable {
                reason: error.message,
            },
            ConsumeErrorKind::Reject => self.dead_now(&row, error.message).await,
            ConsumeErrorKind::Retry => {
                self.fail(&row, error.message, self.inner.max_attempts)
                    .await
            }
        }
    }

    async fn dead_now(&self, row: &InboxRow, reason: String) -> Outcome {
        self.fail(row, reason, 1).await
    }

    async fn fail(&self, row: &InboxRow, reason: String, dead_at: u32) -> Outcome {
        match DB::inbox_fail(&self.inner.pool, &self.inner.sql, row, &reason, dead_at).await {
            Ok(None) => Outcome::Duplicate,
            Ok(Some((_, true))) => {
                tracing::warn!(event_id = %row.event_id, name = %row.name, reason = %reason, "inbox message is a dead letter");
                Outcome::Dead { reason }
            }
            Ok(Some((attempts, false))) => {
                let after = self.inner.backoff.delay(attempts);
                tracing::info!(event_id = %row.event_id, name = %row.name, attempts, reason = %reason, "inbox consumer failed; retrying");
                Outcome::Retry { after, reason }
            }
            Err(err) => unavailable(&err),
        }
    }

    /// Counts by state and name.
    pub async fn stats(&self) -> Result<InboxStats> {
        DB::inbox_stats(&self.inner.pool, &self.inner.sql).await
    }

    /// Dead letters, oldest first, at most `limit`.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        DB::inbox_dead_letters(&self.inner.pool, &self.inner.sql, Which::All, limit).await
    }

    /// Dead letters of one event name, oldest first, at most `limit`.
    pub async fn dead_letters_named(&self, name: &str, limit: usize) -> Result<Vec<DeadLetter>> {
        let which = Which::Name(name.to_owned());
        DB::inbox_dead_letters(&self.inner.pool, &self.inner.sql, which, limit).await
    }

    /// One dead letter by event id.
    pub async fn dead_letter(&self, event_id: Uuid) -> Result<Option<DeadLetter>> {
        let which = Which::One(event_id);
        let mut found = DB::inbox_dead_letters(&self.inner.pool, &self.inner.sql, which, 1).await?;
        Ok(found.pop())
    }

    /// Gives one dead letter back (attempts reset): a running consumer loop
    /// processes it from the table. `false` if it is not a dead letter.
    pub async fn requeue(&self, event_id: Uuid) -> Result<bool> {
        let n = DB::inbox_requeue(&self.inner.pool, &self.inner.sql, Which::One(event_id)).await?;
        Ok(n > 0)
    }

    /// Gives every dead letter back; returns how many.
    pub async fn requeue_all(&self) -> Result<u64> {
        DB::inbox_requeue(&self.inner.pool, &self.inner.sql, Which::All).await
    }

    /// Gives back the dead letters of one event name; returns how many.
    pub async fn requeue_named(&self, name: &str) -> Result<u64> {
        let which = Which::Name(name.to_owned());
        DB::inbox_requeue(&self.inner.pool, &self.inner.sql, which).await
    }

    /// Drops one dead letter: its payload is deleted and its id kept as
    /// processed for the dedupe window (a redelivery is a duplicate).
    /// `false` if it is not a dead letter.
    pub async fn purge(&self, event_id: Uuid) -> Result<bool> {
        let n = DB::inbox_purge(&self.inner.pool, &self.inner.sql, Which::One(event_id)).await?;
        Ok(n > 0)
    }

    /// Drops every dead letter; returns how many.
    pub async fn purge_all(&self) -> Result<u64> {
        DB::inbox_purge(&self.inner.pool, &self.inner.sql, Which::All).await
    }

    /// Drops the dead letters older than `age`; returns how many.
    pub async fn purge_dead_for(&self, age: Duration) -> Result<u64> {
        DB::inbox_purge(&self.inner.pool, &self.inner.sql, Which::DeadFor(age)).await
    }

    /// Deletes processed ids older than the dedupe window, `batch` at a
    /// time until none is left; returns how many. The consumer loop runs it
    /// every minute.
    pub async fn cleanup(&self, batch: usize) -> Result<u64> {
        let batch = batch.max(1);
        let mut total = 0;
        loop {
            let n = DB::inbox_cleanup(
                &self.inner.pool,
                &self.inner.sql,
                self.inner.dedupe_window,
                batch,
            )
            .await?;
            total += n;
            if n < batch as u64 {
                return Ok(total);
            }
        }
    }

    /// Processes up to `limit` requeued dead letters from the table, one
    /// attempt each; returns how many were settled. A consumer loop does
    /// this every poll interval (and waits out the backoff of one that
    /// fails again); call it yourself where no loop runs (an HTTP-only
    /// inbox). A requeued message that fails stays requeued until its
    /// attempts run out.
    pub async fn process_requeued(&self, consumers: &Consumers<DB>, limit: usize) -> Result<u64> {
        let mut settled = 0;
        for row in self.requeued_rows(limit).await? {
            if self.handle_row(consumers, row, None).await.should_ack() {
                settled += 1;
            }
        }
        Ok(settled)
    }

    pub(crate) async fn requeued_rows(&self, limit: usize) -> Result<Vec<InboxRow>> {
        DB::inbox_requeued(&self.inner.pool, &self.inner.sql, limit).await
    }
}

fn unavailable(err: &dyn fmt::Display) -> Outcome {
    Outcome::Unavailable {
        reason: format!("database unavailable: {err}"),
    }
}
