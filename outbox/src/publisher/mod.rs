//! Publishers: what the relay hands each entry to.
//!
//! A typed [`Publisher<E>`] receives `&Recorded<E>`; a closure registered with
//! [`PublishersBuilder::on`] receives the `Recorded<E>` by value; one optional
//! catch-all [`RawPublisher`] takes the entries no typed publisher claims.
//!
//! # Failure scopes
//!
//! A failed publish returns a [`PublishError`] of one of three kinds, and
//! the kind decides what the failure costs:
//!
//! | kind | scope | what the relay does |
//! |---|---|---|
//! | [`rejected`](PublishError::rejected) | *the event*: the destination refused this message | one attempt, the entry's own backoff, a dead letter (with this reason) after the last attempt |
//! | [`transient`](PublishError::transient) | *this event, this time* (500, 408, 429, a timeout for this message) | the entry backs off on its own and never holds the head of the queue; an attempt while the destination works, none while it is down (the rule below) |
//! | [`unavailable`](PublishError::unavailable) | *the destination*: down, unreachable or misconfigured | no attempt, no dead letter: the publisher is **blocked** and paused; the others go on |
//!
//! **The rule for transient failures.** A transient failure is charged to
//! the event (an attempt) when the destination shows that it works: it
//! answered another entry of the same dispatch (delivered or refused it),
//! or fewer than 3 distinct entries have failed transiently in a row since
//! it last answered. The third distinct entry in a row with no answer in
//! between blocks the publisher: the destination is presumed down, and no
//! more attempts are counted until it answers again. So one event that a
//! working endpoint answers with 500 becomes a dead letter after its
//! attempts while the rest flows, and an endpoint that answers 503 to
//! everything costs at most 2 entries one attempt each before the relay
//! stops counting.
//!
//! **A blocked publisher** is logged at `error` level with its reason when
//! it blocks and every 10 s while it stays blocked, sets the gauge
//! `outbox_publisher_blocked{publisher}` to 1, appears in
//! [`Publishers::blocked`], in [`Outbox::stats`](crate::Outbox::stats)
//! (`Stats::blocked`, from the table `<table>_blocked` that the relay keeps)
//! and in `outbox status`. Its entries are given back without an attempt:
//! those of the failing dispatch wait for the publisher's pause (100 ms,
//! doubling up to [`max_pause`](PublishersBuilder::max_pause), default
//! 30 s) and are then tried again (the probe); the ones claimed while it is
//! paused are not sent and wait out the pause. The first entry the
//! destination answers unblocks it (logged at `info`). A paused publisher
//! never holds back the others: its entries step out of the head of the
//! queue. (During a long outage the relay therefore rewrites each waiting
//! entry about once per `max_pause`.)
//!
//! Every ready publisher maps its broker's errors to these kinds; each
//! module's docs has the table.
//!
//! **Panics.** A panic in `publish` (or a closure) rejects that entry. A
//! panic in [`Publisher::publish_batch`] does not charge the whole batch:
//! the batch is published again one entry at a time with `publish`, so
//! only the entry that panics is charged (entries the broker had already
//! confirmed are sent twice: at least once, as always).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::FutureExt;

use crate::entry::{Entry, Recorded};
use crate::error::{Error, Result};
use crate::event::{Decoded, Event};

pub use health::Blocked;
pub(crate) use health::{Health, Judgement};

#[cfg(feature = "broker-amqp")]
#[cfg_attr(docsrs, doc(cfg(feature = "broker-amqp")))]
pub mod amqp;
mod health;
#[cfg(feature = "broker-http")]
#[cfg_attr(docsrs, doc(cfg(feature = "broker-http")))]
pub mod http;
#[cfg(feature = "broker-kafka")]
#[cfg_attr(docsrs, doc(cfg(feature = "broker-kafka")))]
pub mod kafka;
#[cfg(feature = "broker-nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "broker-nats")))]
pub mod nats;
#[cfg(any(
    feature = "broker-amqp",
    feature = "broker-nats",
    feature = "broker-redis",
    feature = "broker-http"
))]
pub(crate) mod redact;
#[cfg(feature = "broker-redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "broker-redis")))]
pub mod redis;

/// Why a publish failed, and whether that should cost the entry an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishError {
    kind: ErrorKind,
    message: String,
}

/// The three kinds of publish failure; each has its own scope and cost (see
/// the module docs, "Failure scopes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// *The event*: the destination refused this message (a nack, a
    /// malformed or oversized message, an HTTP 400/422). Costs an attempt;
    /// after the last one the entry becomes a dead letter with this error as
    /// its reason.
    Rejected,
    /// *This event, this time*: a failure that may pass on a later try (an
    /// HTTP 500, 408 or 429, a timeout for this one message). The entry
    /// backs off on its own and never holds the head of the queue. Whether it
    /// costs an attempt depends on whether the destination works: see
    /// "Failure scopes" in the module docs.
    Transient,
    /// *The destination*: down, unreachable or misconfigured (connection
    /// refused or lost, credentials refused, a missing exchange or stream,
    /// nothing bound, every request answered 401/403/404). Costs no attempt
    /// and makes no dead letter: the relay pauses this publisher, reports it
    /// as blocked, and tries again after a growing pause.
    Unavailable,
}

impl PublishError {
    /// The destination refused this event (costs an attempt).
    pub fn rejected(message: impl fmt::Display) -> Self {
        Self {
            kind: ErrorKind::Rejected,
            message: message.to_string(),
        }
    }

    /// This event failed this time and may pass later (its own backoff; an
    /// attempt only while the destination delivers other events).
    pub fn transient(message: impl fmt::Display) -> Self {
        Self {
            kind: ErrorKind::Transient,
            message: message.to_string(),
        }
    }

    /// The destination is down, unreachable or misconfigured (costs no
    /// attempt; pauses the publisher).
    pub fn unavailable(message: impl fmt::Display) -> Self {
        Self {
            kind: ErrorKind::Unavailable,
            message: message.to_string(),
        }
    }

    /// Which kind of failure this is.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// `true` for [`ErrorKind::Unavailable`].
    #[must_use]
    pub fn is_unavailable(&self) -> bool {
        self.kind == ErrorKind::Unavailable
    }

    /// `true` for [`ErrorKind::Transient`].
    #[must_use]
    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Transient
    }

    /// The error text (kept as the entry's last error).
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PublishError {}

/// The outcome of publishing one entry.
pub type PublishResult = Result<(), PublishError>;

/// Publishes events of type `E`.
///
/// ```
/// use outbox::{Event, PublishError, Publisher, Recorded};
/// # #[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
/// # struct InvoicePaid { amount_cents: i64 }
///
/// struct Log;
///
/// impl Publisher<InvoicePaid> for Log {
///     async fn publish(&self, event: &Recorded<InvoicePaid>) -> Result<(), PublishError> {
///         println!("{} paid {}", event.event_id(), event.event().amount_cents);
///         Ok(())
///     }
/// }
/// ```
pub trait Publisher<E: Event>: Send + Sync + 'static {
    /// Publishes one event. `Ok` means the broker has it: the entry is done.
    fn publish(&self, event: &Recorded<E>) -> impl Future<Output = PublishResult> + Send;

    /// Publishes consecutive events of this type, in order, and returns one
    /// result per event, in the same order.
    ///
    /// Override it to pipeline sends and await confirms once per batch. A
    /// result list shorter than `events` means the rest were not attempted:
    /// they cost no attempt and are tried again later. The default calls
    /// [`publish`](Publisher::publish) for each, each under the outbox's
    /// [`publish_timeout`](crate::OutboxBuilder::publish_timeout) (a timeout
    /// is [`ErrorKind::Transient`]), goes on past rejections and transient
    /// failures, and stops after an [`ErrorKind::Unavailable`] or after 3
    /// transient failures before anything was answered. An override is
    /// called without a timeout: bound its calls yourself.
    fn publish_batch(
        &self,
        events: &[Recorded<E>],
    ) -> impl Future<Output = Vec<PublishResult>> + Send {
        one_by_one(events, |event| self.publish(event))
    }
}

/// Publishes entries of any name as raw JSON: the catch-all publisher, and
/// what broker adapters implement for services that do not know the types.
pub trait RawPublisher: Send + Sync + 'static {
    /// Publishes one entry.
    fn publish_raw(&self, entry: &Entry) -> impl Future<Output = PublishResult> + Send;

    /// Publishes consecutive entries; same contract as [`Publisher::publish_batch`].
    fn publish_raw_batch(
        &self,
        entries: &[Entry],
    ) -> impl Future<Output = Vec<PublishResult>> + Send {
        one_by_one(entries, |entry| self.publish_raw(entry))
    }
}

tokio::task_local! {
    /// The per-publish timeout of the relay run this task is dispatching for.
    pub(crate) static PUBLISH_TIMEOUT: Duration;
}

/// Runs one publish under the relay's per-publish timeout, if one is set;
/// a timeout is [`ErrorKind::Transient`] (this message took too long; the
/// relay tells from the others whether the destination is down).
async fn timed(publish: impl Future<Output = PublishResult>) -> PublishResult {
    match PUBLISH_TIMEOUT.try_with(|limit| *limit) {
        Ok(limit) => tokio::time::timeout(limit, publish)
            .await
            .unwrap_or_else(|_| {
                Err(PublishError::transient(format!(
                    "publish timed out after {limit:?}"
                )))
            }),
        Err(_) => publish.await,
    }
}

/// Whether a one-at-a-time publisher stops after `result`: after an
/// [`ErrorKind::Unavailable`], or after [`STREAK`](health::STREAK)
/// transient failures in a row with nothing delivered before them (the
/// destination is then presumed down, and a hanging one costs at most that
/// many timeouts per batch).
#[derive(Default)]
struct Stopper {
    answered: bool,
    transient: usize,
}

impl Stopper {
    fn stop_after(&mut self, result: &PublishResult) -> bool {
        match result {
            Err(err) if err.is_unavailable() => true,
            Err(err) if err.is_transient() => {
                self.transient += 1;
                !self.answered && self.transient >= health::STREAK
            }
            _ => {
                self.answered = true;
                false
            }
        }
    }
}

/// Publishes items one at a time, in order, each under the timeout and
/// with its panics caught (a panic rejects that item only); stops as
/// [`Stopper`] says.
async fn one_by_one<I, F, Fut>(items: I, mut publish: F) -> Vec<PublishResult>
where
    I: IntoIterator,
    F: FnMut(I::Item) -> Fut,
    Fut: Future<Output = PublishResult>,
{
    let items = items.into_iter();
    let mut results = Vec::with_capacity(items.size_hint().0);
    let mut stopper = Stopper::default();
    for item in items {
        let result = guarded(timed(publish(item))).await;
        let stop = stopper.stop_after(&result);
        results.push(result);
        if stop {
            break;
        }
    }
    results
}

/// What happened to one entry handed to a dispatcher.
#[derive(Debug)]
pub(crate) enum Delivery {
    Published,
    Failed(PublishError),
    /// The payload or headers do not decode: dead at once.
    Undecodable(String),
    /// Not attempted (the publisher stopped early): costs nothing.
    NotAttempted,
}

/// The object-safe face of a typed publisher, a closure or the catch-all.
#[async_trait]
pub(crate) trait Dispatch: Send + Sync {
    /// Publishes `entries` (all of one name, in order, none of a version
    /// newer than [`version`](Dispatch::version)) and returns one delivery
    /// per entry, in the same order. With `upcast`, a typed publisher hands
    /// on older entries re-encoded at its version and under its name.
    async fn dispatch(&self, entries: Vec<Entry>, upcast: bool) -> Vec<Delivery>;

    /// The newest version this publisher decodes (`Event::VERSION` of its
    /// type); `None` for the catch-all, which takes entries as stored.
    fn version(&self) -> Option<u32>;
}

/// Decodes each entry as `E` (upcasting older versions); undecodable ones
/// are answered at once and the rest are handed on, with their indexes.
/// With `upcast`, an entry of an older version or a former name gets the
/// payload, version and name of `E`.
fn decode_all<E: Event>(
    entries: Vec<Entry>,
    upcast: bool,
    out: &mut [Delivery],
) -> (Vec<usize>, Vec<Recorded<E>>) {
    let mut index = Vec::with_capacity(entries.len());
    let mut records = Vec::with_capacity(entries.len());
    for (i, mut entry) in entries.into_iter().enumerate() {
        match crate::event::decode::<E>(entry.version, &entry.payload) {
            Decoded::Event(event) => {
                if upcast && (entry.version != E::VERSION || entry.name != E::NAME) {
                    match serde_json::to_string(&event) {
                        Ok(payload) => {
                            entry.payload = payload;
                            entry.version = E::VERSION;
                            E::NAME.clone_into(&mut entry.name);
                        }
                        Err(err) => {
                            out[i] = Delivery::Undecodable(format!(
                                "the upcast event does not encode as JSON: {err}"
                            ));
                            continue;
                        }
                    }
                }
                index.push(i);
                records.push(Recorded::new(event, entry));
            }
            Decoded::Failed(reason) => out[i] = Delivery::Undecodable(reason),
            // The relay sets newer entries aside before dispatching; one
            // that gets here anyway is given back without an attempt.
            Decoded::Newer => {}
        }
    }
    (index, records)
}

/// Fills `out[index[k]]` from the k-th result; missing results stay `NotAttempted`.
fn merge(out: &mut [Delivery], index: &[usize], results: Vec<PublishResult>) {
    for (&i, result) in index.iter().zip(results) {
        out[i] = match result {
            Ok(()) => Delivery::Published,
            Err(err) => Delivery::Failed(err),
        };
    }
}

fn not_attempted(n: usize) -> Vec<Delivery> {
    std::iter::repeat_with(|| Delivery::NotAttempted)
        .take(n)
        .collect()
}

/// The text of a panic payload.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

/// Runs one publish; a panic becomes a rejection of that entry.
async fn guarded(fut: impl Future<Output = PublishResult>) -> PublishResult {
    AssertUnwindSafe(fut)
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let msg = panic_message(&*panic);
            tracing::error!(panic = %msg, "publisher panicked");
            Err(PublishError::rejected(format!("publisher panicked: {msg}")))
        })
}

/// Runs a batch publish; if it panics, the batch is published again one
/// entry at a time with `one`, so the panic is charged to the entry that
/// causes it and not to the others (some of which the broker may already
/// have confirmed: they are sent twice, at least once as always).
async fn batch_or_one_by_one<'a, T, B, F, Fut>(
    items: &'a [T],
    batch: B,
    one: F,
) -> Vec<PublishResult>
where
    B: Future<Output = Vec<PublishResult>>,
    F: FnMut(&'a T) -> Fut,
    Fut: Future<Output = PublishResult>,
{
    match AssertUnwindSafe(batch).catch_unwind().await {
        Ok(results) => results,
        Err(panic) => {
            let msg = panic_message(&*panic);
            tracing::error!(panic = %msg, entries = items.len(), "publisher panicked in a batch; publishing its entries one at a time");
            one_by_one(items, one).await
        }
    }
}

struct Typed<E, P> {
    publisher: P,
    _event: PhantomData<fn() -> E>,
}

#[async_trait]
impl<E: Event, P: Publisher<E>> Dispatch for Typed<E, P> {
    async fn dispatch(&self, entries: Vec<Entry>, upcast: bool) -> Vec<Delivery> {
        let mut out = not_attempted(entries.len());
        let (index, records) = decode_all::<E>(entries, upcast, &mut out);
        if !records.is_empty() {
            let results =
                batch_or_one_by_one(&records, self.publisher.publish_batch(&records), |record| {
                    self.publisher.publish(record)
                })
                .await;
            merge(&mut out, &index, results);
        }
        out
    }

    fn version(&self) -> Option<u32> {
        Some(E::VERSION)
    }
}

struct TypedFn<E, F> {
    handler: F,
    _event: PhantomData<fn() -> E>,
}

#[async_trait]
impl<E, F, Fut> Dispatch for TypedFn<E, F>
where
    E: Event,
    F: Fn(Recorded<E>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = PublishResult> + Send,
{
    async fn dispatch(&self, entries: Vec<Entry>, upcast: bool) -> Vec<Delivery> {
        let mut out = not_attempted(entries.len());
        let (index, records) = decode_all::<E>(entries, upcast, &mut out);
        let results = one_by_one(records, &self.handler).await;
        merge(&mut out, &index, results);
        out
    }

    fn version(&self) -> Option<u32> {
        Some(E::VERSION)
    }
}

struct Raw<P>(P);

#[async_trait]
impl<P: RawPublisher> Dispatch for Raw<P> {
    fn version(&self) -> Option<u32> {
        None
    }

    async fn dispatch(&self, entries: Vec<Entry>, _upcast: bool) -> Vec<Delivery> {
        let n = entries.len();
        let results = batch_or_one_by_one(&entries, self.0.publish_raw_batch(&entries), |entry| {
            self.0.publish_raw(entry)
        })
        .await;
        let mut out = not_attempted(n);
        let index: Vec<usize> = (0..n).collect();
        merge(&mut out, &index, results);
        out
    }
}

struct RawFn<F>(F);

#[async_trait]
impl<F, Fut> Dispatch for RawFn<F>
where
    F: Fn(Entry) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = PublishResult> + Send,
{
    fn version(&self) -> Option<u32> {
        None
    }

    async fn dispatch(&self, entries: Vec<Entry>, _upcast: bool) -> Vec<Delivery> {
        let mut out = not_attempted(entries.len());
        let index: Vec<usize> = (0..entries.len()).collect();
        let results = one_by_one(entries, &self.0).await;
        merge(&mut out, &index, results);
        out
    }
}

/// One publisher as the relay sees it: how to dispatch, and its health.
pub(crate) struct Route {
    pub(crate) dispatch: Box<dyn Dispatch>,
    pub(crate) health: Arc<Health>,
}

/// The publishers one relay dispatches to: at most one per event type, plus
/// an optional catch-all. Build with [`Publishers::builder`].
///
/// Each publisher keeps its own health (see "Failure scopes" in the module
/// docs): a blocked one is paused while the others go on.
pub struct Publishers {
    typed: Vec<Route>,
    /// Index into `typed` by event name and alias.
    by_name: HashMap<&'static str, usize>,
    fallback: Option<Route>,
    max_pause: Duration,
    upcast: bool,
}

impl fmt::Debug for Publishers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.by_name.keys().collect();
        names.sort();
        f.debug_struct("Publishers")
            .field("events", &names)
            .field("fallback", &self.fallback.is_some())
            .field("max_pause", &self.max_pause)
            .field("publish_upcast", &self.upcast)
            .finish_non_exhaustive()
    }
}

impl Publishers {
    /// Starts assembling publishers.
    pub fn builder() -> PublishersBuilder {
        PublishersBuilder {
            typed: Vec::new(),
            by_name: HashMap::new(),
            fallback: None,
            duplicate: None,
            max_pause: Duration::from_secs(30),
            upcast: false,
        }
    }

    /// The publisher for entries named `name`, if any.
    pub(crate) fn route(&self, name: &str) -> Option<&Route> {
        match self.by_name.get(name) {
            Some(&i) => self.typed.get(i),
            None => self.fallback.as_ref(),
        }
    }

    /// Whether typed publishers receive older entries upcast (see
    /// [`PublishersBuilder::publish_upcast`]).
    pub(crate) fn upcast(&self) -> bool {
        self.upcast
    }

    /// The longest pause of a blocked publisher.
    pub(crate) fn max_pause(&self) -> Duration {
        self.max_pause
    }

    fn routes(&self) -> impl Iterator<Item = &Route> {
        self.typed.iter().chain(self.fallback.iter())
    }

    /// The publishers that are blocked now (their destination is down,
    /// unreachable or misconfigured), by publisher label.
    #[must_use]
    pub fn blocked(&self) -> Vec<Blocked> {
        let mut blocked: Vec<_> = self.routes().filter_map(|r| r.health.blocked()).collect();
        blocked.sort_by(|a, b| a.publisher.cmp(&b.publisher));
        blocked
    }

    /// A handle that lists the blocked publishers after these publishers
    /// moved into a [`Relay`](crate::Relay): for a readiness probe next to
    /// the relay loop. It sees the same state as [`blocked`](Self::blocked).
    #[must_use]
    pub fn watch(&self) -> BlockedWatch {
        BlockedWatch {
            health: self.routes().map(|r| Arc::clone(&r.health)).collect(),
        }
    }

    /// Blocked-state changes not yet written to the database: rows to
    /// write (`Ok`) or labels to delete (`Err`).
    pub(crate) fn take_changes(&self) -> Vec<Result<Blocked, String>> {
        self.routes()
            .filter_map(|r| r.health.take_change())
            .collect()
    }
}

/// The blocked publishers of one [`Publishers`], readable from another task
/// while a relay runs them. Made by [`Publishers::watch`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct BlockedWatch {
    health: Vec<Arc<Health>>,
}

impl BlockedWatch {
    /// The publishers that are blocked now, by publisher label (as
    /// [`Publishers::blocked`]).
    #[must_use]
    pub fn blocked(&self) -> Vec<Blocked> {
        let mut blocked: Vec<_> = self.health.iter().filter_map(|h| h.blocked()).collect();
        blocked.sort_by(|a, b| a.publisher.cmp(&b.publisher));
        blocked
    }
}

/// Assembles [`Publishers`]; a second publisher for one event type is an
/// error at [`build`](PublishersBuilder::build).
#[must_use]
pub struct PublishersBuilder {
    typed: Vec<Route>,
    by_name: HashMap<&'static str, usize>,
    fallback: Option<Route>,
    duplicate: Option<String>,
    max_pause: Duration,
    upcast: bool,
}

impl fmt::Debug for PublishersBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublishersBuilder").finish_non_exhaustive()
    }
}

/// The label of the catch-all publisher in logs, metrics and [`Blocked`].
pub(crate) const CATCH_ALL: &str = "*";

impl PublishersBuilder {
    /// Routes `E`'s name and aliases to `dispatch` (one route, one health,
    /// labelled with the name).
    fn add<E: Event>(mut self, dispatch: Box<dyn Dispatch>) -> Self {
        let index = self.typed.len();
        self.typed.push(Route {
            dispatch,
            health: Arc::new(Health::new(E::NAME.to_owned())),
        });
        for name in std::iter::once(E::NAME).chain(E::ALIASES.iter().copied()) {
            if self.by_name.insert(name, index).is_some() {
                self.duplicate
                    .get_or_insert_with(|| format!("event `{name}`"));
            }
        }
        self
    }

    fn set_fallback(mut self, dispatch: Box<dyn Dispatch>) -> Self {
        let route = Route {
            dispatch,
            health: Arc::new(Health::new(CATCH_ALL.to_owned())),
        };
        if self.fallback.replace(route).is_some() {
            self.duplicate
                .get_or_insert_with(|| "the catch-all".to_owned());
        }
        self
    }

    /// The longest pause of a blocked publisher (default 30 s). A blocked
    /// publisher is tried again after 100 ms, then after pauses that double
    /// up to this; entries it could not take wait at most this long once
    /// its destination is back.
    pub fn max_pause(mut self, max: Duration) -> Self {
        self.max_pause = max;
        self
    }

    /// Hands typed publishers the entries of older versions (and former
    /// names) upcast: [`Entry::payload_json`] re-encoded from the upcast
    /// event, [`Entry::version`] and [`Entry::name`] those of the
    /// publisher's type. Default `false`: every entry is published as
    /// stored, byte for byte, and only [`Recorded::event`] is upcast.
    ///
    /// The trade-off: with it on, consumers see only the current shape and
    /// name (old ones need no upcasters of their own), but the published
    /// bytes are no longer the recorded ones (serde re-encodes them: field
    /// order, number formats, and fields the current type drops), and each
    /// older entry costs one more encode. The catch-all always publishes
    /// as stored: it has no type to upcast to.
    pub fn publish_upcast(mut self, upcast: bool) -> Self {
        self.upcast = upcast;
        self
    }

    /// Registers a typed publisher for events of type `E` (and for entries
    /// stored under its [aliases](Event::ALIASES)).
    pub fn publisher<E: Event, P: Publisher<E>>(self, publisher: P) -> Self {
        self.add::<E>(Box::new(Typed {
            publisher,
            _event: PhantomData::<fn() -> E>,
        }))
    }

    /// Registers an async closure for events of type `E`; it receives the
    /// `Recorded<E>` by value.
    ///
    /// ```
    /// # #[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
    /// # struct InvoicePaid { amount_cents: i64 }
    /// let publishers = outbox::Publishers::builder()
    ///     .on(|paid: outbox::Recorded<InvoicePaid>| async move {
    ///         println!("paid {}", paid.event().amount_cents);
    ///         Ok(())
    ///     })
    ///     .build()?;
    /// # Ok::<(), outbox::Error>(())
    /// ```
    pub fn on<E, F, Fut>(self, handler: F) -> Self
    where
        E: Event,
        F: Fn(Recorded<E>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = PublishResult> + Send + 'static,
    {
        self.add::<E>(Box::new(TypedFn {
            handler,
            _event: PhantomData::<fn() -> E>,
        }))
    }

    /// Sets the catch-all publisher for entries no typed publisher claims.
    pub fn fallback<P: RawPublisher>(self, publisher: P) -> Self {
        self.set_fallback(Box::new(Raw(publisher)))
    }

    /// Sets an async closure as the catch-all; it receives the [`Entry`] by value.
    pub fn fallback_fn<F, Fut>(self, handler: F) -> Self
    where
        F: Fn(Entry) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = PublishResult> + Send + 'static,
    {
        self.set_fallback(Box::new(RawFn(handler)))
    }

    /// Finishes; fails with [`Error::DuplicatePublisher`] if one event type,
    /// or the catch-all, got two publishers.
    pub fn build(self) -> Result<Publishers> {
        if let Some(what) = self.duplicate {
            return Err(Error::DuplicatePublisher { what });
        }
        Ok(Publishers {
            typed: self.typed,
            by_name: self.by_name,
            fallback: self.fallback,
            max_pause: self.max_pause,
            upcast: self.upcast,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_sees_the_health_of_publishers_that_moved() {
        let publishers = Publishers::builder()
            .fallback_fn(|_entry| async { Ok(()) })
            .build()
            .unwrap();
        let watch = publishers.watch();
        let moved = Box::new(publishers);
        assert!(watch.blocked().is_empty());
        let health = &moved.fallback.as_ref().unwrap().health;
        let max = Duration::from_secs(30);
        health.judge(0, &[], Some("connection refused"), max);
        let blocked = watch.blocked();
        assert_eq!(blocked.len(), 1);
        assert_eq!(blocked[0].publisher, CATCH_ALL);
        assert_eq!(blocked[0].reason, "connection refused");
        assert_eq!(blocked, moved.blocked());
        health.judge(1, &[], None, max);
        assert!(watch.blocked().is_empty());
    }
}
