//! The consumer loop: a [`Source`] of broker messages, bounded concurrency,
//! optional per-stream order, ack after commit.

use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinSet;
use uuid::Uuid;

use super::{Consumers, Inbox, Message, Outcome};
use crate::store::Backend;

/// An error a [`Source`] or an [`Acker`] reports.
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// Where a consumer loop gets its messages: a broker subscription.
///
/// The ready sources are `inbox::amqp`, `inbox::nats` and `inbox::redis`
/// (each behind its broker feature); implement this trait for any other.
#[async_trait]
pub trait Source: Send {
    /// The next message, waiting for one. `Ok(None)` ends the loop (the
    /// subscription closed for good); an error is logged and asked again
    /// after a pause (100 ms, doubling to the loop's `max_pause`).
    ///
    /// Must be cancel-safe: the loop drops a pending call at shutdown, and
    /// a message it had taken from the broker must then be redelivered
    /// (unacked), not lost.
    async fn next(&mut self) -> Result<Option<Delivery>, SourceError>;
}

/// Settles one delivered message with its broker.
#[async_trait]
pub trait Acker: Send + Sync + 'static {
    /// The message is settled (processed, duplicate, skipped or a dead
    /// letter in the inbox table): the broker may forget it. Called only
    /// after the inbox transaction committed. A failure is logged: the
    /// broker delivers the message again and the inbox skips it as a
    /// duplicate.
    async fn ack(self: Box<Self>) -> Result<(), SourceError>;

    /// The loop stops without having settled the message: give it back
    /// for redelivery (a negative acknowledgement with requeue). Default:
    /// nothing, the broker redelivers it when the connection closes or its
    /// ack deadline passes.
    #[allow(clippy::must_use_candidate)] // Reason: async_trait returns the future; dropping it is the caller's choice.
    async fn release(self: Box<Self>) {}

    /// Called every 10 s while the loop still works on the message (a
    /// retry backoff, a database outage): extend its ack deadline where the
    /// broker has one. Default: nothing.
    async fn keep_alive(&self) {}
}

/// One message from a [`Source`] and how to settle it.
pub struct Delivery {
    message: Message,
    acker: Box<dyn Acker>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &self.message)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// A message and its acker.
    #[must_use]
    pub fn new(message: Message, acker: impl Acker) -> Self {
        Self {
            message,
            acker: Box::new(acker),
        }
    }

    /// The message.
    #[must_use]
    pub fn message(&self) -> &Message {
        &self.message
    }
}

/// What a consumer loop did: see [`Consume::run`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumeReport {
    /// Messages whose consumer ran and committed.
    pub processed: u64,
    /// Messages skipped as already processed (or dead).
    pub duplicates: u64,
    /// Messages with no consumer, dropped (`skip_unknown`).
    pub skipped: u64,
    /// Messages that became dead letters.
    pub dead: u64,
    /// Failed attempts that were retried.
    pub retries: u64,
    /// Times a message waited for an unavailable database or dependency.
    pub unavailable: u64,
    /// Messages given back unsettled at shutdown.
    pub released: u64,
    /// Acknowledgements the broker did not take (the message comes back
    /// and is skipped as a duplicate).
    pub ack_failures: u64,
    /// Requeued dead letters processed from the table.
    pub requeued: u64,
}

#[derive(Default)]
struct Counters {
    processed: AtomicU64,
    duplicates: AtomicU64,
    skipped: AtomicU64,
    dead: AtomicU64,
    retries: AtomicU64,
    unavailable: AtomicU64,
    released: AtomicU64,
    ack_failures: AtomicU64,
    requeued: AtomicU64,
}

impl Counters {
    fn report(&self) -> ConsumeReport {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ConsumeReport {
            processed: get(&self.processed),
            duplicates: get(&self.duplicates),
            skipped: get(&self.skipped),
            dead: get(&self.dead),
            retries: get(&self.retries),
            unavailable: get(&self.unavailable),
            released: get(&self.released),
            ack_failures: get(&self.ack_failures),
            requeued: get(&self.requeued),
        }
    }

    fn count(&self, table: &str, outcome: &Outcome) {
        let (counter, label) = match outcome {
            Outcome::Processed => (&self.processed, "processed"),
            Outcome::Duplicate => (&self.duplicates, "duplicate"),
            Outcome::Skipped => (&self.skipped, "skipped"),
            Outcome::Dead { .. } => (&self.dead, "dead"),
            Outcome::Retry { .. } => (&self.retries, "retry"),
            Outcome::Unavailable { .. } => (&self.unavailable, "unavailable"),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("outbox_inbox_messages_total", "table" => table.to_owned(), "outcome" => label)
            .increment(1);
    }
}

/// A consumer loop: [`Inbox::consume`] starts one, [`run`](Self::run)
/// drives it.
///
/// At most [`max_in_flight`](Self::max_in_flight) messages are worked on
/// at once (the loop asks the source for the next one only when a slot is
/// free; set the broker's prefetch to the same number). Each message is
/// [handled](Inbox::handle); a [`Retry`](Outcome::Retry) is held for its
/// backoff and tried again, an [`Unavailable`](Outcome::Unavailable) waits
/// for a pause (100 ms doubling to [`max_pause`](Self::max_pause)) and is
/// tried again; the broker is acknowledged once the message is settled.
/// Beside that, every [`poll_interval`](Self::poll_interval) it processes
/// requeued dead letters from the table, and every
/// [`cleanup_interval`](Self::cleanup_interval) it deletes processed ids
/// past the dedupe window.
pub struct Consume<DB: Backend> {
    inbox: Inbox<DB>,
    consumers: Consumers<DB>,
    max_in_flight: usize,
    ordered: bool,
    max_pause: Duration,
    poll_interval: Duration,
    cleanup_interval: Duration,
}

impl<DB: Backend> std::fmt::Debug for Consume<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consume")
            .field("inbox", &self.inbox)
            .field("max_in_flight", &self.max_in_flight)
            .field("ordered_streams", &self.ordered)
            .finish_non_exhaustive()
    }
}

/// How often a held message's acker is told the loop still works on it.
const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// The first pause after an unavailable database or a source error.
const FIRST_PAUSE: Duration = Duration::from_millis(100);
/// Processed ids deleted per cleanup statement.
const CLEANUP_BATCH: usize = 1_000;

impl<DB: Backend> Consume<DB> {
    pub(super) fn new(inbox: Inbox<DB>, consumers: Consumers<DB>) -> Self {
        Self {
            inbox,
            consumers,
            max_in_flight: 32,
            ordered: false,
            max_pause: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            cleanup_interval: Duration::from_mins(1),
        }
    }

    /// Messages worked on at once (at least 1). Default 32.
    #[must_use]
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// Per-stream order: messages with the same stream key are handled one
    /// at a time, in the order the source delivered them (a failing one
    /// holds back only its stream). Default off.
    #[must_use]
    pub fn ordered_streams(mut self, ordered: bool) -> Self {
        self.ordered = ordered;
        self
    }

    /// The longest pause while the database is unavailable. Default 30 s.
    #[must_use]
    pub fn max_pause(mut self, max: Duration) -> Self {
        self.max_pause = max.max(FIRST_PAUSE);
        self
    }

    /// How often requeued dead letters are looked for. Default 1 s.
    #[must_use]
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How often processed ids past the dedupe window are deleted. Default 1 min.
    #[must_use]
    pub fn cleanup_interval(mut self, interval: Duration) -> Self {
        self.cleanup_interval = interval;
        self
    }

    /// Consumes from `source` until `shutdown` completes (or the source
    /// ends), then stops taking messages, lets the messages in flight
    /// settle (one held for a retry or an outage is released unsettled)
    /// and returns what it did.
    pub async fn run(
        self,
        mut source: impl Source,
        shutdown: impl Future<Output = ()>,
    ) -> ConsumeReport {
        let counters = Arc::new(Counters::default());
        let (stop_tx, stop) = watch::channel(false);
        let slots = Arc::new(Semaphore::new(self.max_in_flight));
        let mut tasks = JoinSet::new();
        let mut chains: HashMap<String, oneshot::Receiver<()>> = HashMap::new();
        let table = self.inbox.table().to_string();
        let housekeeping = tokio::spawn(housekeeping(
            self.inbox.clone(),
            self.consumers.clone(),
            Arc::clone(&counters),
            self.poll_interval,
            self.cleanup_interval,
            self.max_in_flight,
            stop.clone(),
        ));
        let mut shutdown = pin!(shutdown);
        let mut pause = FIRST_PAUSE;
        loop {
            while tasks.try_join_next().is_some() {}
            let permit = tokio::select! {
                biased;
                () = &mut shutdown => break,
                permit = Arc::clone(&slots).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let delivery = tokio::select! {
                biased;
                () = &mut shutdown => break,
                next = source.next() => next,
            };
            let delivery = match delivery {
                Ok(Some(delivery)) => {
                    pause = FIRST_PAUSE;
                    delivery
                }
                Ok(None) => {
                    tracing::info!(inbox = %table, "source ended; the consumer loop stops");
                    break;
                }
                Err(err) => {
                    tracing::warn!(inbox = %table, error = %err, pause = ?pause, "source failed; trying again after a pause");
                    tokio::select! {
                        biased;
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(self.max_pause);
                    continue;
                }
            };
            let (before, done) = match delivery.message.key().filter(|_| self.ordered) {
                Some(key) => {
                    let (done, next) = oneshot::channel::<()>();
                    (chains.insert(key.to_owned(), next), Some(done))
                }
                None => (None, None),
            };
            if chains.len() > self.max_in_flight * 4 {
                // Forget streams whose last message is settled.
                chains.retain(|_, rx| {
                    matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty))
                });
            }
            let job = Job {
                inbox: self.inbox.clone(),
                consumers: self.consumers.clone(),
                counters: Arc::clone(&counters),
                stop: stop.clone(),
                max_pause: self.max_pause,
                table: table.clone(),
            };
            tasks.spawn(async move {
                if let Some(before) = before {
                    // Settled or given back: either way it is this one's turn.
                    let _ = before.await;
                }
                job.process(delivery).await;
                drop(done);
                drop(permit);
            });
        }
        let _ = stop_tx.send(true);
        while tasks.join_next().await.is_some() {}
        let _ = housekeeping.await;
        counters.report()
    }
}

struct Job<DB: Backend> {
    inbox: Inbox<DB>,
    consumers: Consumers<DB>,
    counters: Arc<Counters>,
    stop: watch::Receiver<bool>,
    max_pause: Duration,
    table: String,
}

impl<DB: Backend> Job<DB> {
    async fn process(mut self, delivery: Delivery) {
        let Delivery { message, acker } = delivery;
        let mut pause = FIRST_PAUSE;
        loop {
            if *self.stop.borrow() {
                self.counters.released.fetch_add(1, Ordering::Relaxed);
                acker.release().await;
                return;
            }
            let outcome = self.inbox.handle(&self.consumers, message.clone()).await;
            self.counters.count(&self.table, &outcome);
            let wait = match outcome {
                Outcome::Retry { after, .. } => after,
                Outcome::Unavailable { reason } => {
                    tracing::warn!(inbox = %self.table, event_id = ?message.id(), %reason, pause = ?pause, "inbox unavailable; the message waits, unacknowledged");
                    let wait = pause;
                    pause = (pause * 2).min(self.max_pause);
                    wait
                }
                _ => break,
            };
            if !self.hold(&*acker, wait).await {
                self.counters.released.fetch_add(1, Ordering::Relaxed);
                acker.release().await;
                return;
            }
        }
        if let Err(err) = acker.ack().await {
            self.counters.ack_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(inbox = %self.table, event_id = ?message.id(), error = %err, "acknowledgement failed; the broker will deliver the message again and the inbox will skip it");
        }
    }

    /// Waits `wait`, keeping the message alive; `false` if the loop stops.
    async fn hold(&mut self, acker: &dyn Acker, wait: Duration) -> bool {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let now = tokio::time::Instant::now();
            if now >= until {
                return true;
            }
            let step = (until - now).min(KEEP_ALIVE);
            tokio::select! {
                () = tokio::time::sleep(step) => {}
                _ = self.stop.changed() => return false,
            }
            if tokio::time::Instant::now() < until {
                acker.keep_alive().await;
            }
        }
    }
}

/// Requeued dead letters every `poll`, cleanup every `cleanup`, until stopped.
async fn housekeeping<DB: Backend>(
    inbox: Inbox<DB>,
    consumers: Consumers<DB>,
    counters: Arc<Counters>,
    poll: Duration,
    cleanup: Duration,
    limit: usize,
    mut stop: watch::Receiver<bool>,
) {
    let mut last_cleanup = tokio::time::Instant::now();
    // A requeued message that failed again waits for its backoff here.
    let mut not_before: HashMap<Uuid, tokio::time::Instant> = HashMap::new();
    loop {
        tokio::select! {
            () = tokio::time::sleep(poll) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        match inbox.requeued_rows(limit).await {
            Ok(rows) => {
                let now = tokio::time::Instant::now();
                not_before.retain(|_, at| *at > now);
                for row in rows {
                    if not_before.contains_key(&row.event_id) {
                        continue;
                    }
                    let id = row.event_id;
                    let outcome = inbox.handle_row(&consumers, row, None).await;
                    counters.count(&inbox.table().to_string(), &outcome);
                    match outcome {
                        Outcome::Retry { after, .. } => {
                            not_before.insert(id, tokio::time::Instant::now() + after);
                        }
                        Outcome::Unavailable { .. } => break,
                        _ => {
                            counters.requeued.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            Err(err) => tracing::debug!(error = %err, "requeued inbox messages not readable now"),
        }
        if last_cleanup.elapsed() >= cleanup {
            last_cleanup = tokio::time::Instant::now();
            match inbox.cleanup(CLEANUP_BATCH).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::debug!(inbox = %inbox.table(), deleted = n, "processed ids past the dedupe window deleted");
                }
                Err(err) => {
                    tracing::warn!(inbox = %inbox.table(), error = %err, "inbox cleanup failed");
                }
            }
        }
    }
}
