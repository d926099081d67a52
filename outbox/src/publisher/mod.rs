//! Publishers: what the relay hands each entry to.
//!
//! A typed [`Publisher<E>`] receives `&Recorded<E>`; a closure registered with
//! [`PublishersBuilder::on`] receives the `Recorded<E>` by value; one optional
//! catch-all [`RawPublisher`] takes the entries no typed publisher claims.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::FutureExt;

use crate::entry::{Entry, Recorded};
use crate::error::{Error, Result};
use crate::event::Event;

#[cfg(feature = "broker-amqp")]
#[cfg_attr(docsrs, doc(cfg(feature = "broker-amqp")))]
pub mod amqp;
#[cfg(feature = "broker-http")]
#[cfg_attr(docsrs, doc(cfg(feature = "broker-http")))]
pub mod http;
#[cfg(feature = "broker-nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "broker-nats")))]
pub mod nats;
#[cfg(any(
    feature = "broker-amqp",
    feature = "broker-nats",
    feature = "broker-redis",
    feature = "broker-http"
))]
mod redact;
#[cfg(feature = "broker-redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "broker-redis")))]
pub mod redis;

/// Why a publish failed, and whether that should cost the entry an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishError {
    kind: ErrorKind,
    message: String,
}

/// The two kinds of publish failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The broker or endpoint refused this event. Costs an attempt; after the
    /// last one the entry becomes a dead letter with this error as its reason.
    Rejected,
    /// The broker or endpoint could not be reached (connection lost, timeout).
    /// Costs no attempt: the run stops early and the entry is tried again later.
    Unavailable,
}

impl PublishError {
    /// The broker or endpoint refused this event (costs an attempt).
    pub fn rejected(message: impl fmt::Display) -> Self {
        Self {
            kind: ErrorKind::Rejected,
            message: message.to_string(),
        }
    }

    /// The broker or endpoint is unreachable (costs no attempt).
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
    /// [`publish_timeout`](crate::OutboxBuilder::publish_timeout), and stops
    /// after the first [`ErrorKind::Unavailable`]. An override is called
    /// without a timeout: bound its calls yourself.
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
/// a timeout is [`ErrorKind::Unavailable`].
async fn timed(publish: impl Future<Output = PublishResult>) -> PublishResult {
    match PUBLISH_TIMEOUT.try_with(|limit| *limit) {
        Ok(limit) => tokio::time::timeout(limit, publish)
            .await
            .unwrap_or_else(|_| {
                Err(PublishError::unavailable(format!(
                    "publish timed out after {limit:?}"
                )))
            }),
        Err(_) => publish.await,
    }
}

/// Publishes items one at a time, in order, each under the timeout, and
/// stops after the first outage.
async fn one_by_one<'a, T, F, Fut>(items: &'a [T], publish: F) -> Vec<PublishResult>
where
    F: Fn(&'a T) -> Fut,
    Fut: Future<Output = PublishResult>,
{
    let mut results = Vec::with_capacity(items.len());
    for item in items {
        let result = timed(publish(item)).await;
        let stop = result.as_ref().is_err_and(PublishError::is_unavailable);
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
    /// Publishes `entries` (all of one name, in order) and returns one
    /// delivery per entry, in the same order.
    async fn dispatch(&self, entries: Vec<Entry>) -> Vec<Delivery>;
}

/// Decodes each entry as `E`; undecodable ones are answered at once and the
/// rest are handed on, with their indexes.
fn decode_all<E: Event>(
    entries: Vec<Entry>,
    out: &mut [Delivery],
) -> (Vec<usize>, Vec<Recorded<E>>) {
    let mut index = Vec::with_capacity(entries.len());
    let mut records = Vec::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        match serde_json::from_str::<E>(&entry.payload) {
            Ok(event) => {
                index.push(i);
                records.push(Recorded::new(event, entry));
            }
            Err(err) => {
                out[i] = Delivery::Undecodable(format!(
                    "payload does not decode as `{}`: {err}",
                    std::any::type_name::<E>()
                ));
            }
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

/// Runs a publisher future; a panic becomes a rejection of every entry it held.
async fn guarded<F: Future<Output = Vec<PublishResult>>>(n: usize, fut: F) -> Vec<PublishResult> {
    match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(results) => results,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_owned());
            tracing::error!(panic = %msg, "publisher panicked");
            vec![Err(PublishError::rejected(format!("publisher panicked: {msg}"))); n]
        }
    }
}

struct Typed<E, P> {
    publisher: P,
    _event: PhantomData<fn() -> E>,
}

#[async_trait]
impl<E: Event, P: Publisher<E>> Dispatch for Typed<E, P> {
    async fn dispatch(&self, entries: Vec<Entry>) -> Vec<Delivery> {
        let mut out = not_attempted(entries.len());
        let (index, records) = decode_all::<E>(entries, &mut out);
        if !records.is_empty() {
            let results = guarded(records.len(), self.publisher.publish_batch(&records)).await;
            merge(&mut out, &index, results);
        }
        out
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
    async fn dispatch(&self, entries: Vec<Entry>) -> Vec<Delivery> {
        let mut out = not_attempted(entries.len());
        let (index, records) = decode_all::<E>(entries, &mut out);
        let mut results = Vec::with_capacity(records.len());
        for record in records {
            let result = guarded(1, timed((self.handler)(record)).map(|r| vec![r])).await;
            let result = result.into_iter().next().unwrap_or(Ok(()));
            let stop = result.as_ref().is_err_and(PublishError::is_unavailable);
            results.push(result);
            if stop {
                break;
            }
        }
        merge(&mut out, &index, results);
        out
    }
}

struct Raw<P>(P);

#[async_trait]
impl<P: RawPublisher> Dispatch for Raw<P> {
    async fn dispatch(&self, entries: Vec<Entry>) -> Vec<Delivery> {
        let n = entries.len();
        let results = guarded(n, self.0.publish_raw_batch(&entries)).await;
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
    async fn dispatch(&self, entries: Vec<Entry>) -> Vec<Delivery> {
        let mut out = not_attempted(entries.len());
        for (slot, entry) in out.iter_mut().zip(entries) {
            let result = guarded(1, timed((self.0)(entry)).map(|r| vec![r])).await;
            let result = result.into_iter().next().unwrap_or(Ok(()));
            let stop = result.as_ref().is_err_and(PublishError::is_unavailable);
            *slot = match result {
                Ok(()) => Delivery::Published,
                Err(err) => Delivery::Failed(err),
            };
            if stop {
                break;
            }
        }
        out
    }
}

/// The publishers one relay dispatches to: at most one per event type, plus
/// an optional catch-all. Build with [`Publishers::builder`].
pub struct Publishers {
    by_name: HashMap<&'static str, Box<dyn Dispatch>>,
    fallback: Option<Box<dyn Dispatch>>,
}

impl fmt::Debug for Publishers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.by_name.keys().collect();
        names.sort();
        f.debug_struct("Publishers")
            .field("events", &names)
            .field("fallback", &self.fallback.is_some())
            .finish()
    }
}

impl Publishers {
    /// Starts assembling publishers.
    pub fn builder() -> PublishersBuilder {
        PublishersBuilder {
            by_name: HashMap::new(),
            fallback: None,
            duplicate: None,
        }
    }

    /// The dispatcher for entries named `name`, if any.
    pub(crate) fn route(&self, name: &str) -> Option<&dyn Dispatch> {
        self.by_name
            .get(name)
            .or(self.fallback.as_ref())
            .map(Box::as_ref)
    }
}

/// Assembles [`Publishers`]; a second publisher for one event type is an
/// error at [`build`](PublishersBuilder::build).
#[must_use]
pub struct PublishersBuilder {
    by_name: HashMap<&'static str, Box<dyn Dispatch>>,
    fallback: Option<Box<dyn Dispatch>>,
    duplicate: Option<String>,
}

impl fmt::Debug for PublishersBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublishersBuilder").finish_non_exhaustive()
    }
}

impl PublishersBuilder {
    fn add(mut self, name: &'static str, dispatch: Box<dyn Dispatch>) -> Self {
        if self.by_name.insert(name, dispatch).is_some() {
            self.duplicate
                .get_or_insert_with(|| format!("event `{name}`"));
        }
        self
    }

    fn set_fallback(mut self, dispatch: Box<dyn Dispatch>) -> Self {
        if self.fallback.replace(dispatch).is_some() {
            self.duplicate
                .get_or_insert_with(|| "the catch-all".to_owned());
        }
        self
    }

    /// Registers a typed publisher for events of type `E`.
    pub fn publisher<E: Event, P: Publisher<E>>(self, publisher: P) -> Self {
        self.add(
            E::NAME,
            Box::new(Typed {
                publisher,
                _event: PhantomData::<fn() -> E>,
            }),
        )
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
        self.add(
            E::NAME,
            Box::new(TypedFn {
                handler,
                _event: PhantomData::<fn() -> E>,
            }),
        )
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
            by_name: self.by_name,
            fallback: self.fallback,
        })
    }
}
