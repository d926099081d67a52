//! The inbox suite on any database: each `tests/<db>.rs` instantiates it
//! with `inbox_suite!` for its [`Harness`]. Every test gets a fresh inbox
//! table and a business table, and drives the public API: one message at a
//! time through `Inbox::handle`, or the `Consume` loop fed by
//! [`ChannelSource`] (the library's own `Source` trait over a tokio channel;
//! the database is real).

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox::inbox::{
    Acker, BoxFuture, Consume, ConsumeError, ConsumeReport, Consumers, ConsumersBuilder, Delivery,
    Inbox, InboxBuilder, Message, Outcome, Source, SourceError, Tx,
};
use outbox::{Backend, Backoff, Entry, Recorded};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::{Harness, InvoicePaid, paid, unique_table};

/// One step of a stream, for the per-stream order test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, outbox::Event)]
#[outbox(name = "inbox_suite.step")]
pub struct Step {
    pub stream: String,
    pub seq: i64,
}

/// What the order test needs beyond [`Harness`]: a business table that
/// keeps the order rows were written in (`{table}_biz`, so the harness's
/// cleanup drops it).
pub trait Journal: Backend {
    /// Creates `{table}_biz (pos, stream, seq)`, `pos` increasing with each insert.
    fn create_journal(pool: &sqlx::Pool<Self>, table: &str) -> impl Future<Output = ()> + Send;

    /// Appends one step through the consumer's connection.
    fn append(
        conn: &mut Self::Connection,
        table: &str,
        stream: &str,
        seq: i64,
    ) -> impl Future<Output = ()> + Send;

    /// Every step, in write order.
    fn journal(
        pool: &sqlx::Pool<Self>,
        table: &str,
    ) -> impl Future<Output = Vec<(String, i64)>> + Send;
}

/// [`Journal`] for `$db`: `{name}` in `create` is the quoted table name,
/// `values` the placeholders of the insert.
macro_rules! journal {
    (
        $feature:literal,
        $db:ty,
        quote = $q:literal,
        create = $create:literal,
        values = $values:literal
    ) => {
        #[cfg(feature = $feature)]
        impl Journal for $db {
            async fn create_journal(pool: &sqlx::Pool<Self>, table: &str) {
                let name = format!("{q}{table}_biz{q}", q = $q);
                let sql = format!($create, name = name);
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(pool)
                    .await
                    .unwrap();
            }

            async fn append(conn: &mut Self::Connection, table: &str, stream: &str, seq: i64) {
                let sql = format!(
                    "INSERT INTO {q}{table}_biz{q} (stream, seq) VALUES ({})",
                    $values,
                    q = $q
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(stream)
                    .bind(seq)
                    .execute(conn)
                    .await
                    .unwrap();
            }

            async fn journal(pool: &sqlx::Pool<Self>, table: &str) -> Vec<(String, i64)> {
                let sql = format!(
                    "SELECT stream, seq FROM {q}{table}_biz{q} ORDER BY pos",
                    q = $q
                );
                sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .fetch_all(pool)
                    .await
                    .unwrap()
            }
        }
    };
}

journal!(
    "postgres",
    sqlx::Postgres,
    quote = '"',
    create = "CREATE TABLE {name} (pos BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
              stream TEXT NOT NULL, seq BIGINT NOT NULL)",
    values = "$1, $2"
);
journal!(
    "sqlite",
    sqlx::Sqlite,
    quote = '"',
    create = "CREATE TABLE {name} (pos INTEGER PRIMARY KEY AUTOINCREMENT, \
              stream TEXT NOT NULL, seq INTEGER NOT NULL)",
    values = "?1, ?2"
);
journal!(
    "mysql",
    sqlx::MySql,
    quote = '`',
    create = "CREATE TABLE {name} (pos BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, \
              stream VARCHAR(64) NOT NULL, seq BIGINT NOT NULL) ENGINE = InnoDB",
    values = "?, ?"
);

// ------------------------------------------------------------ the fixture

/// A fresh inbox table `table` and its business table `{table}_biz`.
pub struct InboxCtx<H: Harness> {
    pub pool: sqlx::Pool<H::DB>,
    pub table: String,
}

impl<H: Harness> InboxCtx<H> {
    /// With the harness's business table (`id` primary key).
    pub async fn new() -> Self {
        let ctx = Self::bare().await;
        H::create_business(&ctx.pool, &ctx.table).await;
        ctx
    }

    /// Without a business table.
    pub async fn bare() -> Self {
        let (pool, _) = H::fresh().await;
        Self {
            pool,
            table: unique_table("inbox"),
        }
    }

    /// The inbox on this table, retries without backoff.
    pub fn builder(&self) -> InboxBuilder<H::DB> {
        Inbox::builder(self.pool.clone())
            .table(self.table.clone())
            .backoff(Backoff::none())
    }

    pub async fn inbox(&self) -> Inbox<H::DB> {
        self.builder().build().await.unwrap()
    }

    /// Business rows committed.
    pub async fn business(&self) -> i64 {
        H::count_business(&self.pool, &self.table).await
    }

    pub async fn done(self) {
        H::cleanup(&self.pool, &self.table).await;
    }
}

/// An `InvoicePaid` message as a publisher sends it.
pub fn message(event_id: Uuid, invoice_id: i64) -> Message {
    Message::new(serde_json::to_vec(&paid(invoice_id)).unwrap())
        .event_id(event_id.to_string())
        .name("billing.invoice_paid")
}

/// What a [`Probe`] consumer does after its business write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Commits.
    Write,
    /// `ConsumeError::retry`.
    Retry,
    /// `ConsumeError::reject`.
    Reject,
    /// Panics the first time, then commits.
    PanicOnce,
    /// `ConsumeError::unavailable`.
    Unavailable,
}

/// The consumer of `InvoicePaid` every test uses: inserts the invoice id
/// into the business table, then does what its [`Mode`] says; counts calls,
/// attempts and concurrent runs.
#[derive(Clone)]
pub struct Probe {
    pub mode: Arc<Mutex<Mode>>,
    pub delay: Duration,
    pub calls: Arc<AtomicUsize>,
    pub attempts: Arc<Mutex<Vec<u32>>>,
    pub running: Arc<AtomicUsize>,
    pub max_running: Arc<AtomicUsize>,
    panicked: Arc<AtomicBool>,
}

/// Decrements a counter when dropped (also when the consumer panics).
struct RunningGuard<'a>(&'a AtomicUsize);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Probe {
    pub fn new(mode: Mode) -> Self {
        Self {
            mode: Arc::new(Mutex::new(mode)),
            delay: Duration::ZERO,
            calls: Arc::default(),
            attempts: Arc::default(),
            running: Arc::default(),
            max_running: Arc::default(),
            panicked: Arc::default(),
        }
    }

    #[must_use]
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    pub fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn attempts(&self) -> Vec<u32> {
        self.attempts.lock().unwrap().clone()
    }

    async fn run<H: Harness>(
        &self,
        tx: &mut Tx<H::DB>,
        table: &str,
        paid: Recorded<InvoicePaid>,
    ) -> Result<(), ConsumeError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let attempt = paid.entry().attempt();
        self.attempts.lock().unwrap().push(attempt);
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        let _running = RunningGuard(&self.running);
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        H::insert_business(&mut **tx, table, paid.event().invoice_id).await;
        let mode = *self.mode.lock().unwrap();
        match mode {
            Mode::Write => Ok(()),
            Mode::Retry => Err(ConsumeError::retry(format!("boom at attempt {attempt}"))),
            Mode::Reject => Err(ConsumeError::reject("this invoice can never be paid")),
            Mode::PanicOnce => {
                assert!(
                    self.panicked.swap(true, Ordering::SeqCst),
                    "consumer bug on the first try"
                );
                Ok(())
            }
            Mode::Unavailable => Err(ConsumeError::unavailable("the ledger service is down")),
        }
    }

    /// Adds this probe as the `InvoicePaid` consumer writing into `{table}_biz`.
    pub fn on<H: Harness>(
        &self,
        builder: ConsumersBuilder<H::DB>,
        table: &str,
    ) -> ConsumersBuilder<H::DB> {
        let (probe, table) = (self.clone(), table.to_owned());
        builder.on(move |tx: &mut Tx<H::DB>, paid: Recorded<InvoicePaid>| {
            let (probe, table) = (probe.clone(), table.clone());
            Box::pin(async move { probe.run::<H>(tx, &table, paid).await })
        })
    }

    /// Consumers with only this probe.
    pub fn consumers<H: Harness>(&self, table: &str) -> Consumers<H::DB> {
        self.on::<H>(Consumers::builder(), table).build().unwrap()
    }
}

// ------------------------------------------------- a source over a channel

/// What the acknowledgements of a [`ChannelSource`] recorded.
#[derive(Clone, Default)]
pub struct Settled {
    /// Delivery tags acknowledged, in order.
    pub acks: Arc<Mutex<Vec<String>>>,
    /// Delivery tags given back.
    pub releases: Arc<Mutex<Vec<String>>>,
    /// Deliveries handed to the loop and not settled yet.
    pub outstanding: Arc<AtomicUsize>,
    pub max_outstanding: Arc<AtomicUsize>,
}

impl Settled {
    pub fn acks(&self) -> Vec<String> {
        self.acks.lock().unwrap().clone()
    }

    pub fn releases(&self) -> Vec<String> {
        self.releases.lock().unwrap().clone()
    }
}

/// Runs when a message is acknowledged, with its event id.
pub type AckCheck = Arc<dyn Fn(String) -> BoxFuture<'static, ()> + Send + Sync>;

/// The acker of one delivery: records the ack or the release.
pub struct TestAcker {
    tag: String,
    event_id: String,
    settled: Settled,
    check: Option<AckCheck>,
}

impl Acker for TestAcker {
    fn ack<'async_trait>(
        self: Box<Self>,
    ) -> Pin<Box<dyn Future<Output = Result<(), SourceError>> + Send + 'async_trait>>
    where
        Self: 'async_trait,
    {
        Box::pin(async move {
            if let Some(check) = &self.check {
                check(self.event_id.clone()).await;
            }
            self.settled.outstanding.fetch_sub(1, Ordering::SeqCst);
            self.settled.acks.lock().unwrap().push(self.tag);
            Ok(())
        })
    }

    fn release<'async_trait>(
        self: Box<Self>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'async_trait>>
    where
        Self: 'async_trait,
    {
        Box::pin(async move {
            self.settled.outstanding.fetch_sub(1, Ordering::SeqCst);
            self.settled.releases.lock().unwrap().push(self.tag);
        })
    }
}

/// Sends messages to a [`ChannelSource`].
pub struct Feed {
    tx: mpsc::UnboundedSender<Delivery>,
    pub settled: Settled,
    check: Option<AckCheck>,
}

impl Feed {
    /// Sends `message` under delivery tag `tag`.
    pub fn send(&self, tag: impl Into<String>, message: Message) {
        let acker = TestAcker {
            tag: tag.into(),
            event_id: message.id().unwrap_or_default().to_owned(),
            settled: self.settled.clone(),
            check: self.check.clone(),
        };
        self.tx.send(Delivery::new(message, acker)).unwrap();
    }
}

/// A `Source` fed from a tokio channel; ends when every [`Feed`] is dropped.
pub struct ChannelSource {
    rx: mpsc::UnboundedReceiver<Delivery>,
    settled: Settled,
}

impl Source for ChannelSource {
    fn next<'life0, 'async_trait>(
        &'life0 mut self,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Delivery>, SourceError>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let delivery = self.rx.recv().await;
            if delivery.is_some() {
                let now = self.settled.outstanding.fetch_add(1, Ordering::SeqCst) + 1;
                self.settled
                    .max_outstanding
                    .fetch_max(now, Ordering::SeqCst);
            }
            Ok(delivery)
        })
    }
}

/// A channel source and its feed; `check` runs at each acknowledgement.
pub fn channel(check: Option<AckCheck>) -> (Feed, ChannelSource) {
    let (tx, rx) = mpsc::unbounded_channel();
    let settled = Settled::default();
    (
        Feed {
            tx,
            settled: settled.clone(),
            check,
        },
        ChannelSource { rx, settled },
    )
}

/// A running consumer loop; [`Loop::stop`] shuts it down.
pub struct Loop {
    stop: oneshot::Sender<()>,
    task: JoinHandle<ConsumeReport>,
}

impl Loop {
    pub fn start<DB: Backend>(consume: Consume<DB>, source: ChannelSource) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(consume.run(source, async move {
            let _ = stopped.await;
        }));
        Self { stop, task }
    }

    pub async fn stop(self) -> ConsumeReport {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the consumer loop stops within 30 s")
            .unwrap()
    }
}

/// Waits (up to 30 s) until `ready` holds.
pub async fn wait_for(what: &str, mut ready: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !ready().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Hands `message` to the inbox from two tasks at once: how many were
/// processed and how many were duplicates.
async fn twice_at_once<DB: Backend>(
    inbox: &Inbox<DB>,
    consumers: &Consumers<DB>,
    message: Message,
) -> (usize, usize) {
    let both = [0, 1].map(|_| {
        let (inbox, consumers, m) = (inbox.clone(), consumers.clone(), message.clone());
        tokio::spawn(async move { inbox.handle(&consumers, m).await })
    });
    let mut outcomes = Vec::new();
    for task in both {
        outcomes.push(task.await.unwrap());
    }
    let count = |wanted: &Outcome| outcomes.iter().filter(|o| *o == wanted).count();
    let counts = (count(&Outcome::Processed), count(&Outcome::Duplicate));
    assert_eq!(counts.0 + counts.1, 2, "{outcomes:?}");
    counts
}

fn is_retry(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Retry { .. })
}

fn dead_reason(outcome: Outcome) -> String {
    match outcome {
        Outcome::Dead { reason } => reason,
        other => panic!("expected a dead letter, got {other:?}"),
    }
}

// ---------------------------------------------------------------- the suite

/// The same message twice, one after the other and from two tasks at
/// once (many times): one business row each, the other delivery a duplicate.
pub async fn inbox_same_message_twice_takes_effect_once<H: Harness>() {
    let ctx = InboxCtx::<H>::new().await;
    let inbox = ctx.inbox().await;
    // The consumer takes a while, so the second delivery meets the first
    // one's open transaction.
    let probe = Probe::new(Mode::Write).delay(Duration::from_millis(5));
    let consumers = probe.consumers::<H>(&ctx.table);

    let id = Uuid::new_v4();
    assert_eq!(
        inbox.handle(&consumers, message(id, 1)).await,
        Outcome::Processed
    );
    assert_eq!(
        inbox.handle(&consumers, message(id, 1)).await,
        Outcome::Duplicate
    );
    assert_eq!(ctx.business().await, 1);

    let rounds: i64 = 25;
    for round in 0..rounds {
        let outcomes =
            twice_at_once(&inbox, &consumers, message(Uuid::new_v4(), 100 + round)).await;
        assert_eq!(outcomes, (1, 1), "round {round}");
    }
    // The same for a message that failed once before (its row is there,
    // failed): the second delivery waits for the first one's row lock.
    let failed_rounds: i64 = 10;
    for round in 0..failed_rounds {
        let m = message(Uuid::new_v4(), 200 + round);
        probe.set(Mode::Retry);
        assert!(is_retry(&inbox.handle(&consumers, m.clone()).await));
        probe.set(Mode::Write);
        let outcomes = twice_at_once(&inbox, &consumers, m).await;
        assert_eq!(outcomes, (1, 1), "failed round {round}");
    }
    let total = 1 + rounds + failed_rounds;
    assert_eq!(
        probe.calls(),
        usize::try_from(total + failed_rounds).unwrap()
    );
    assert_eq!(ctx.business().await, total);
    let stats = inbox.stats().await.unwrap();
    assert_eq!(
        (stats.processed, stats.retrying, stats.dead, stats.requeued),
        (u64::try_from(total).unwrap(), 0, 0, 0)
    );
    ctx.done().await;
}

/// A failing consumer: its business write is rolled back at each attempt,
/// attempts count 1, 2, 3, and the third makes a dead letter that keeps
/// the whole message; a later delivery is a duplicate.
pub async fn inbox_retries_then_dead_letter_with_the_message<H: Harness>() {
    let ctx = InboxCtx::<H>::new().await;
    let inbox = ctx.builder().max_attempts(3).build().await.unwrap();
    let probe = Probe::new(Mode::Retry);
    let consumers = probe.consumers::<H>(&ctx.table);
    let (id, correlation, causation) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let m = message(id, 7)
        .stream_key("invoice-7")
        .header("tenant", "acme")
        .header("traceparent", "00-abc-def-01")
        .correlation_id(correlation.to_string())
        .causation_id(causation.to_string());

    for attempt in 1..=2 {
        let outcome = inbox.handle(&consumers, m.clone()).await;
        assert!(is_retry(&outcome), "attempt {attempt}: {outcome:?}");
        let stats = inbox.stats().await.unwrap();
        assert_eq!((stats.retrying, stats.dead, stats.processed), (1, 0, 0));
        assert_eq!(ctx.business().await, 0, "the failed attempt is rolled back");
    }
    let reason = dead_reason(inbox.handle(&consumers, m.clone()).await);
    assert_eq!(reason, "boom at attempt 3");
    assert_eq!(probe.attempts(), [1, 2, 3]);
    assert_eq!(ctx.business().await, 0);

    assert_eq!(inbox.handle(&consumers, m).await, Outcome::Duplicate);
    assert_eq!(probe.calls(), 3, "a dead letter is not consumed again");

    let dead = inbox.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.event_id, id);
    assert_eq!(d.name, "billing.invoice_paid");
    assert_eq!(
        serde_json::from_str::<InvoicePaid>(&d.payload).unwrap(),
        paid(7)
    );
    assert_eq!(d.attempts, 3);
    assert_eq!(d.reason, "boom at attempt 3");
    assert_eq!(d.stream_key.as_deref(), Some("invoice-7"));
    assert_eq!(d.headers.len(), 2);
    assert_eq!(d.headers["tenant"], "acme");
    assert_eq!(d.headers["traceparent"], "00-abc-def-01");
    assert_eq!(d.headers_error, None);
    assert_eq!(d.correlation_id, Some(correlation));
    assert_eq!(d.causation_id, Some(causation));
    assert!(d.dead_since >= d.created_at);
    let stats = inbox.stats().await.unwrap();
    assert_eq!(
        (stats.processed, stats.retrying, stats.dead, stats.requeued),
        (0, 0, 1, 0)
    );
    ctx.done().await;
}

/// `reject` is a dead letter at once; a panicking consumer is one failed
/// attempt (rolled back), and the next attempt commits.
pub async fn inbox_reject_is_dead_at_once_and_a_panic_is_a_retry<H: Harness>() {
    let ctx = InboxCtx::<H>::new().await;
    let inbox = ctx.builder().max_attempts(5).build().await.unwrap();
    let rejecting = Probe::new(Mode::Reject);
    let consumers = rejecting.consumers::<H>(&ctx.table);
    let rejected = Uuid::new_v4();
    let reason = dead_reason(inbox.handle(&consumers, message(rejected, 1)).await);
    assert_eq!(reason, "this invoice can never be paid");
    assert_eq!(rejecting.calls(), 1);
    let dead = inbox.dead_letter(rejected).await.unwrap().unwrap();
    assert_eq!(dead.attempts, 1);
    assert_eq!(
        inbox.handle(&consumers, message(rejected, 1)).await,
        Outcome::Duplicate
    );
    assert_eq!(rejecting.calls(), 1);

    let panicking = Probe::new(Mode::PanicOnce);
    let consumers = panicking.consumers::<H>(&ctx.table);
    let id = Uuid::new_v4();
    match inbox.handle(&consumers, message(id, 2)).await {
        Outcome::Retry { reason, .. } => {
            assert!(reason.contains("consumer panicked"), "{reason}");
            assert!(reason.contains("consumer bug on the first try"), "{reason}");
        }
        other => panic!("expected a retry, got {other:?}"),
    }
    assert_eq!(ctx.business().await, 0);
    assert_eq!(inbox.stats().await.unwrap().retrying, 1);
    assert_eq!(
        inbox.handle(&consumers, message(id, 2)).await,
        Outcome::Processed
    );
    assert_eq!(panicking.attempts(), [1, 2]);
    assert_eq!(ctx.business().await, 1);
    let stats = inbox.stats().await.unwrap();
    assert_eq!((stats.processed, stats.retrying, stats.dead), (1, 0, 1));
    ctx.done().await;
}

/// Messages that cannot be processed are dead letters at once, without
/// running a consumer: a payload that does not decode (not JSON, the wrong
/// shape, not UTF-8), no event id, an id that is not a UUID. A redelivery
/// of the same broken message is a duplicate, not a second dead letter.
pub async fn inbox_broken_messages_are_dead_at_once<H: Harness>() {
    let ctx = InboxCtx::<H>::new().await;
    let inbox = ctx.builder().max_attempts(5).build().await.unwrap();
    let probe = Probe::new(Mode::Write);
    let consumers = probe.consumers::<H>(&ctx.table);
    let invoice = |payload: &[u8], id: &str| {
        Message::new(payload.to_vec())
            .event_id(id)
            .name("billing.invoice_paid")
    };

    let not_json = Uuid::new_v4().to_string();
    let wrong_shape = Uuid::new_v4().to_string();
    let not_utf8 = Uuid::new_v4().to_string();
    let cases = [
        (
            invoice(b"not json", &not_json),
            "does not decode as `billing.invoice_paid`",
        ),
        (
            invoice(br#"{"invoice":"x"}"#, &wrong_shape),
            "does not decode as `billing.invoice_paid`",
        ),
        (invoice(b"{\xff\xfe}", &not_utf8), "payload is not UTF-8"),
        (
            invoice(br#"{"invoice_id":1,"amount_cents":100}"#, "order-17"),
            "event id `order-17` is not a UUID",
        ),
    ];
    for (m, expected) in &cases {
        let reason = dead_reason(inbox.handle(&consumers, m.clone()).await);
        assert!(reason.contains(expected), "{reason} should say {expected}");
        assert_eq!(
            inbox.handle(&consumers, m.clone()).await,
            Outcome::Duplicate,
            "a redelivery of {m:?}"
        );
    }
    let no_id = Message::new(serde_json::to_vec(&paid(3)).unwrap()).name("billing.invoice_paid");
    let reason = dead_reason(inbox.handle(&consumers, no_id).await);
    assert!(reason.contains("carries no event id"), "{reason}");

    assert_eq!(probe.calls(), 0);
    assert_eq!(ctx.business().await, 0);
    let dead = inbox.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 5);
    assert_eq!(
        dead[0].payload, "not json",
        "the payload is kept as received"
    );
    assert!(dead.iter().all(|d| d.attempts == 1));
    assert_eq!(
        dead[3].event_id,
        Uuid::new_v5(&Uuid::NAMESPACE_OID, b"order-17"),
        "a broken id maps to one row"
    );
    let stats = inbox.stats().await.unwrap();
    assert_eq!((stats.processed, stats.retrying, stats.dead), (0, 0, 5));
    ctx.done().await;
}

/// A name without a consumer: a dead letter by default; skipped (nothing
/// written) with `skip_unknown`; taken by a catch-all, which receives the
/// raw entry with its metadata.
pub async fn inbox_unknown_names_dead_skipped_or_caught<H: Harness>() {
    let ctx = InboxCtx::<H>::new().await;
    let inbox = ctx.inbox().await;
    let probe = Probe::new(Mode::Write);
    let stranger = |id: Uuid| {
        Message::new(br#"{"n":1}"#.to_vec())
            .event_id(id.to_string())
            .name("nobody.listens")
            .stream_key("k-1")
            .header("h", "v")
    };

    let kept = Uuid::new_v4();
    let reason = dead_reason(
        inbox
            .handle(&probe.consumers::<H>(&ctx.table), stranger(kept))
            .await,
    );
    assert_eq!(reason, "no consumer for `nobody.listens`");
    assert_eq!(
        inbox
            .dead_letters_named("nobody.listens", 10)
            .await
            .unwrap()
            .len(),
        1
    );

    let skipping = probe
        .on::<H>(Consumers::builder(), &ctx.table)
        .skip_unknown()
        .build()
        .unwrap();
    let skipped = Uuid::new_v4();
    assert_eq!(
        inbox.handle(&skipping, stranger(skipped)).await,
        Outcome::Skipped
    );
    let stats = inbox.stats().await.unwrap();
    assert_eq!(
        (stats.processed, stats.retrying, stats.dead),
        (0, 0, 1),
        "a skipped message writes nothing"
    );

    let seen: Arc<Mutex<Vec<Entry>>> = Arc::default();
    let table = ctx.table.clone();
    let catch_all = probe
        .on::<H>(Consumers::builder(), &ctx.table)
        .fallback_fn({
            let seen = Arc::clone(&seen);
            move |tx: &mut Tx<H::DB>, entry: Entry| {
                let (seen, table) = (Arc::clone(&seen), table.clone());
                Box::pin(async move {
                    H::insert_business(&mut **tx, &table, 9_000).await;
                    seen.lock().unwrap().push(entry);
                    Ok(())
                })
            }
        })
        .build()
        .unwrap();
    let caught = Uuid::new_v4();
    assert_eq!(
        inbox.handle(&catch_all, stranger(caught)).await,
        Outcome::Processed
    );
    assert_eq!(
        inbox.handle(&catch_all, message(Uuid::new_v4(), 1)).await,
        Outcome::Processed,
        "a typed consumer still takes its own name"
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].event_id(), caught);
    assert_eq!(seen[0].name(), "nobody.listens");
    assert_eq!(seen[0].payload_json(), r#"{"n":1}"#);
    assert_eq!(seen[0].stream_key(), Some("k-1"));
    assert_eq!(seen[0].headers()["h"], "v");
    assert_eq!(seen[0].attempt(), 1);
    assert_eq!(probe.calls(), 1);
    assert_eq!(ctx.business().await, 2);
    ctx.done().await;
}

/// A consumer of version 3 of `suite.payment` (see `common::versions`):
/// a version 1 message is upcast twice, one under the former name reaches
/// it, one of a newer version is a dead letter (kept, to requeue once a
/// consumer that knows it runs), a version that is not one is refused.
pub async fn inbox_versions_are_upcast_renames_routed_newer_kept<H: Harness>() {
    use super::versions::{Payment, PaymentV1};
    let ctx = InboxCtx::<H>::bare().await;
    let inbox = ctx.inbox().await;
    let seen: Arc<Mutex<Vec<Recorded<Payment>>>> = Arc::default();
    let consumers = Consumers::builder()
        .on({
            let seen = Arc::clone(&seen);
            move |_tx: &mut Tx<H::DB>, payment: Recorded<Payment>| {
                let seen = Arc::clone(&seen);
                Box::pin(async move {
                    seen.lock().unwrap().push(payment);
                    Ok(())
                })
            }
        })
        .build()
        .unwrap();
    let v1 = serde_json::to_vec(&PaymentV1 {
        invoice: 1,
        amount: 2.5,
    })
    .unwrap();
    let send = |name: &str, version: Option<&str>| {
        let message = Message::new(v1.clone())
            .event_id(Uuid::new_v4().to_string())
            .name(name);
        match version {
            Some(version) => message.version(version),
            None => message,
        }
    };
    let old = inbox
        .handle(&consumers, send("suite.payment", Some("1")))
        .await;
    assert_eq!(old, Outcome::Processed);
    let renamed = inbox
        .handle(&consumers, send("suite.payment_received", None))
        .await;
    assert_eq!(renamed, Outcome::Processed, "no header: version 1");
    let seen = seen.lock().unwrap().clone();
    let got: Vec<_> = seen
        .iter()
        .map(|p| (p.name(), p.version(), p.event().amount_cents))
        .collect();
    assert_eq!(
        got,
        [
            ("suite.payment", 1, 250),
            ("suite.payment_received", 1, 250)
        ]
    );
    assert_eq!(seen[0].event().currency, "EUR");

    let newer = send("suite.payment", Some("4"));
    let newer_id = newer.id().unwrap().parse().unwrap();
    let reason = dead_reason(inbox.handle(&consumers, newer).await);
    assert!(
        reason.contains("version 4") && reason.contains("newer"),
        "{reason}"
    );
    let dead = inbox.dead_letter(newer_id).await.unwrap().unwrap();
    assert_eq!(dead.version, 4);
    let reason = dead_reason(
        inbox
            .handle(&consumers, send("suite.payment", Some("0")))
            .await,
    );
    assert!(reason.contains("event version `0`"), "{reason}");
    ctx.done().await;
}

/// Dead letters listed (all, by name, one), purged (a later delivery is a
/// duplicate) and requeued: a running consumer loop processes a requeued
/// message from the table exactly once. Stats follow each step.
pub async fn inbox_dead_letters_listed_purged_and_requeued<H: Harness>() {
    let ctx = InboxCtx::<H>::new().await;
    let inbox = ctx.inbox().await;
    let probe = Probe::new(Mode::Reject);
    let consumers = probe.consumers::<H>(&ctx.table);
    let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    for (n, id) in (1..).zip(&ids) {
        dead_reason(inbox.handle(&consumers, message(*id, n)).await);
    }
    let stranger = Uuid::new_v4();
    let unknown = || {
        Message::new(b"{}".to_vec())
            .event_id(stranger.to_string())
            .name("nobody.listens")
    };
    dead_reason(inbox.handle(&consumers, unknown()).await);

    let all = inbox.dead_letters(10).await.unwrap();
    assert_eq!(
        all.iter().map(|d| d.event_id).collect::<Vec<_>>(),
        [ids[0], ids[1], ids[2], stranger],
        "oldest first"
    );
    assert_eq!(inbox.dead_letters(2).await.unwrap().len(), 2);
    assert_eq!(
        inbox
            .dead_letters_named("billing.invoice_paid", 10)
            .await
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        inbox.dead_letter(ids[1]).await.unwrap().unwrap().event_id,
        ids[1]
    );
    assert_eq!(inbox.dead_letter(Uuid::new_v4()).await.unwrap(), None);
    let stats = inbox.stats().await.unwrap();
    assert_eq!((stats.dead, stats.by_name.len()), (4, 2));
    assert_eq!(stats.by_name[0].name, "billing.invoice_paid");
    assert_eq!(stats.by_name[0].dead, 3);
    assert_eq!(stats.by_name[1].name, "nobody.listens");

    // Purge: the payload goes, the id stays as processed.
    assert!(inbox.purge(stranger).await.unwrap());
    assert!(!inbox.purge(stranger).await.unwrap());
    assert_eq!(inbox.dead_letter(stranger).await.unwrap(), None);
    assert_eq!(
        inbox.handle(&consumers, unknown()).await,
        Outcome::Duplicate
    );

    // Requeue without a loop: counted as requeued, still not processed.
    probe.set(Mode::Write);
    assert!(inbox.requeue(ids[0]).await.unwrap());
    assert!(
        !inbox.requeue(ids[0]).await.unwrap(),
        "not a dead letter any more"
    );
    let stats = inbox.stats().await.unwrap();
    assert_eq!((stats.processed, stats.dead, stats.requeued), (1, 2, 1));
    assert_eq!(probe.calls(), 3);

    let (feed, source) = channel(None);
    let running = Loop::start(
        inbox
            .consume(consumers.clone())
            .poll_interval(Duration::from_millis(10)),
        source,
    );
    wait_for("the requeued message", async || ctx.business().await == 1).await;
    assert_eq!(
        inbox.requeue_named("billing.invoice_paid").await.unwrap(),
        2
    );
    wait_for("the requeued messages", async || ctx.business().await == 3).await;
    wait_for("no requeued row", async || {
        inbox.stats().await.unwrap().requeued == 0
    })
    .await;
    let report = running.stop().await;
    drop(feed);
    assert_eq!(report.requeued, 3);
    assert_eq!(report.processed, 3);
    assert_eq!(probe.calls(), 6, "each requeued message ran exactly once");
    assert_eq!(probe.attempts()[3..], [1, 1, 1], "attempts start again");
    assert_eq!(ctx.business().await, 3);
    let stats = inbox.stats().await.unwrap();
    assert_eq!(
        (stats.processed, stats.retrying, stats.dead, stats.requeued),
        (4, 0, 0, 0)
    );
    assert_eq!(
        inbox.handle(&consumers, message(ids[2], 3)).await,
        Outcome::Duplicate
    );
    assert_eq!(inbox.requeue_all().await.unwrap(), 0);
    assert_eq!(inbox.purge_all().await.unwrap(), 0);
    ctx.done().await;
}

/// Cleanup deletes processed ids past the dedupe window (not dead
/// letters): a copy arriving later is processed again, as documented.
/// The consumer loop runs the same cleanup by itself.
pub async fn inbox_cleanup_forgets_processed_ids_after_the_window<H: Harness>() {
    let ctx = InboxCtx::<H>::new().await;
    let keeping = ctx.inbox().await;
    let probe = Probe::new(Mode::Write);
    let consumers = probe.consumers::<H>(&ctx.table);
    let (first, second, rejected) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    assert_eq!(
        keeping.handle(&consumers, message(first, 1)).await,
        Outcome::Processed
    );
    assert_eq!(
        keeping.handle(&consumers, message(second, 2)).await,
        Outcome::Processed
    );
    probe.set(Mode::Reject);
    dead_reason(keeping.handle(&consumers, message(rejected, 3)).await);
    probe.set(Mode::Write);

    assert_eq!(
        keeping.cleanup(1).await.unwrap(),
        0,
        "inside the 7-day window"
    );
    let forgetting = ctx
        .builder()
        .dedupe_window(Duration::from_millis(1))
        .build()
        .await
        .unwrap();
    // Setup: let the rows age past the 1 ms window.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        forgetting.cleanup(1).await.unwrap(),
        2,
        "batches of one until done"
    );
    let stats = forgetting.stats().await.unwrap();
    assert_eq!((stats.processed, stats.dead), (0, 1), "dead letters stay");

    // The id is forgotten: a late copy is processed again.
    assert_eq!(
        forgetting.handle(&consumers, message(first, 11)).await,
        Outcome::Processed
    );
    assert_eq!(ctx.business().await, 3);
    assert_eq!(forgetting.stats().await.unwrap().processed, 1);

    let (feed, source) = channel(None);
    let running = Loop::start(
        forgetting
            .consume(consumers)
            .poll_interval(Duration::from_millis(10))
            .cleanup_interval(Duration::ZERO),
        source,
    );
    wait_for("the loop's cleanup", async || {
        forgetting.stats().await.unwrap().processed == 0
    })
    .await;
    running.stop().await;
    drop(feed);
    assert_eq!(forgetting.stats().await.unwrap().dead, 1);
    ctx.done().await;
}

/// The database is unavailable (the inbox's pool is closed): nothing is
/// written, no attempt is counted, not even a dead letter for a broken
/// message; a consumer loop never acknowledges the message and gives it
/// back at shutdown.
pub async fn inbox_unavailable_database_writes_and_acks_nothing<H: Harness>() {
    let ctx = InboxCtx::<H>::new().await;
    let inbox = ctx.inbox().await;
    let options = (*ctx.pool.connect_options()).clone();
    let closed = sqlx::pool::PoolOptions::<H::DB>::new()
        .max_connections(1)
        .connect_lazy_with(options);
    closed.close().await;
    let down = Inbox::builder(closed)
        .table(ctx.table.clone())
        .migrate(false)
        .build()
        .await
        .unwrap();
    let probe = Probe::new(Mode::Write);
    let consumers = probe.consumers::<H>(&ctx.table);

    let outcome = down.handle(&consumers, message(Uuid::new_v4(), 1)).await;
    assert!(
        matches!(outcome, Outcome::Unavailable { .. }),
        "{outcome:?}"
    );
    assert!(!outcome.should_ack());
    let broken = Message::new(b"not json".to_vec())
        .event_id(Uuid::new_v4().to_string())
        .name("billing.invoice_paid");
    let outcome = down.handle(&consumers, broken).await;
    assert!(
        matches!(outcome, Outcome::Unavailable { .. }),
        "{outcome:?}"
    );

    let (feed, source) = channel(None);
    let running = Loop::start(down.consume(consumers), source);
    feed.send("d1", message(Uuid::new_v4(), 2));
    // The message waits (100 ms, 200 ms, ... pauses) and must not be
    // acknowledged in the meantime.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = running.stop().await;
    assert!(report.unavailable >= 1, "{report:?}");
    assert_eq!((report.processed, report.dead, report.retries), (0, 0, 0));
    assert_eq!(report.released, 1);
    assert_eq!(feed.settled.acks(), Vec::<String>::new());
    assert_eq!(feed.settled.releases(), ["d1"]);

    assert_eq!(probe.calls(), 0);
    assert_eq!(ctx.business().await, 0);
    let stats = inbox.stats().await.unwrap();
    assert!(
        stats.by_name.is_empty(),
        "no row: no id, no attempt, no dead letter: {stats:?}"
    );
    ctx.done().await;
}

/// A consumer reporting its dependency unavailable: no attempt counted and
/// no acknowledgement while it lasts; once it is back the message is
/// processed and acknowledged once.
pub async fn inbox_unavailable_dependency_holds_the_message<H: Harness>() {
    let ctx = InboxCtx::<H>::new().await;
    let inbox = ctx.builder().max_attempts(1).build().await.unwrap();
    let probe = Probe::new(Mode::Unavailable);
    let consumers = probe.consumers::<H>(&ctx.table);
    let (feed, source) = channel(None);
    let running = Loop::start(
        inbox
            .consume(consumers)
            .max_pause(Duration::from_millis(100)),
        source,
    );
    feed.send("d1", message(Uuid::new_v4(), 1));
    wait_for("three tries", async || probe.calls() >= 3).await;
    assert_eq!(feed.settled.acks(), Vec::<String>::new());
    let stats = inbox.stats().await.unwrap();
    assert!(stats.by_name.is_empty(), "no attempt is counted: {stats:?}");
    assert_eq!(ctx.business().await, 0);

    probe.set(Mode::Write);
    wait_for("the acknowledgement", async || {
        feed.settled.acks().len() == 1
    })
    .await;
    let report = running.stop().await;
    assert_eq!(feed.settled.acks(), ["d1"]);
    assert_eq!(feed.settled.releases(), Vec::<String>::new());
    assert_eq!((report.processed, report.dead, report.retries), (1, 0, 0));
    assert!(report.unavailable >= 3, "{report:?}");
    assert!(
        probe.attempts().iter().all(|a| *a == 1),
        "no attempt was counted"
    );
    assert_eq!(ctx.business().await, 1);
    ctx.done().await;
}

/// The loop acknowledges every delivery exactly once, and only after its
/// transaction committed (at each ack, the business table holds every
/// message acknowledged so far); redeliveries are acknowledged as duplicates.
pub async fn inbox_loop_acks_every_message_once_after_commit<H: Harness>() {
    let ctx = InboxCtx::<H>::new().await;
    let inbox = ctx.inbox().await;
    let probe = Probe::new(Mode::Write).delay(Duration::from_millis(2));
    let consumers = probe.consumers::<H>(&ctx.table);
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let early: Arc<Mutex<Vec<String>>> = Arc::default();
    let check: AckCheck = {
        let (pool, table) = (ctx.pool.clone(), ctx.table.clone());
        let (acked, early) = (Arc::clone(&acked), Arc::clone(&early));
        Arc::new(move |event_id: String| {
            let (pool, table) = (pool.clone(), table.clone());
            let (acked, early) = (Arc::clone(&acked), Arc::clone(&early));
            Box::pin(async move {
                let n = {
                    let mut acked = acked.lock().unwrap();
                    acked.insert(event_id.clone());
                    acked.len()
                };
                let committed = H::count_business(&pool, &table).await;
                if committed < i64::try_from(n).unwrap() {
                    early.lock().unwrap().push(event_id);
                }
            })
        })
    };
    let (feed, source) = channel(Some(check));
    let running = Loop::start(inbox.consume(consumers).max_in_flight(4), source);
    let n_messages: i64 = 40;
    let ids: Vec<Uuid> = (0..n_messages).map(|_| Uuid::new_v4()).collect();
    for (n, id) in (0..n_messages).zip(&ids) {
        feed.send(format!("d{n}"), message(*id, n));
    }
    // Five redeliveries of messages already sent.
    for n in 0..5 {
        feed.send(
            format!("again{n}"),
            message(ids[usize::try_from(n * 7).unwrap()], n * 7),
        );
    }
    wait_for("every acknowledgement", async || {
        feed.settled.acks().len() == 45
    })
    .await;
    let report = running.stop().await;
    let mut acks = feed.settled.acks();
    acks.sort();
    let mut expected: Vec<String> = (0..n_messages).map(|n| format!("d{n}")).collect();
    expected.extend((0..5).map(|n| format!("again{n}")));
    expected.sort();
    assert_eq!(acks, expected, "each delivery acknowledged exactly once");
    assert_eq!(feed.settled.releases(), Vec::<String>::new());
    assert_eq!(
        early.lock().unwrap().clone(),
        Vec::<String>::new(),
        "acked before commit"
    );
    assert_eq!((report.processed, report.duplicates), (40, 5));
    assert_eq!(ctx.business().await, n_messages);
    assert_eq!(probe.calls(), 40);
    ctx.done().await;
}

/// `max_in_flight(3)`: never more than three deliveries unsettled, and
/// never more than three consumers running, with enough slow messages that
/// the limit is reached (on SQLite, one writer at a time: one consumer).
pub async fn inbox_loop_never_exceeds_max_in_flight<H: Harness>() {
    let ctx = InboxCtx::<H>::new().await;
    let inbox = ctx.inbox().await;
    let probe = Probe::new(Mode::Write).delay(Duration::from_millis(15));
    let consumers = probe.consumers::<H>(&ctx.table);
    let (feed, source) = channel(None);
    let n_messages: i64 = 24;
    for n in 0..n_messages {
        feed.send(format!("d{n}"), message(Uuid::new_v4(), n));
    }
    let running = Loop::start(inbox.consume(consumers).max_in_flight(3), source);
    wait_for("every acknowledgement", async || {
        feed.settled.acks().len() == 24
    })
    .await;
    let report = running.stop().await;
    assert_eq!(report.processed, 24);
    assert_eq!(ctx.business().await, n_messages);
    assert_eq!(feed.settled.max_outstanding.load(Ordering::SeqCst), 3);
    let max_running = probe.max_running.load(Ordering::SeqCst);
    if H::KIND == "sqlite" {
        assert_eq!(max_running, 1, "SQLite has one writer");
    } else {
        assert_eq!(max_running, 3);
    }
    ctx.done().await;
}

/// `ordered_streams(true)` with four in flight: three interleaved streams,
/// each written in its arrival order (one message of a stream fails once
/// and holds back only its stream), while the streams run side by side.
pub async fn inbox_loop_keeps_arrival_order_per_stream<H: Harness>()
where
    H::DB: Journal,
{
    let ctx = InboxCtx::<H>::bare().await;
    H::DB::create_journal(&ctx.pool, &ctx.table).await;
    let inbox = ctx
        .builder()
        .backoff(Backoff::fixed(Duration::from_millis(200)))
        .build()
        .await
        .unwrap();
    let failed_once = Arc::new(AtomicBool::new(false));
    let table = ctx.table.clone();
    let consumers = Consumers::builder()
        .on({
            let failed_once = Arc::clone(&failed_once);
            move |tx: &mut Tx<H::DB>, step: Recorded<Step>| {
                let (table, failed_once) = (table.clone(), Arc::clone(&failed_once));
                Box::pin(async move {
                    let Step { stream, seq } = step.event().clone();
                    // Uneven work, so later messages of other streams overtake.
                    let pause =
                        u64::try_from((seq * 7 + i64::from(stream.as_bytes()[0])) % 6).unwrap();
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    H::DB::append(&mut **tx, &table, &stream, seq).await;
                    if stream == "b" && seq == 3 && !failed_once.swap(true, Ordering::SeqCst) {
                        return Err(ConsumeError::retry("b3 fails once"));
                    }
                    Ok(())
                })
            }
        })
        .build()
        .unwrap();
    let (feed, source) = channel(None);
    let per_stream: i64 = 12;
    let streams = ["a", "b", "c"];
    for seq in 0..per_stream {
        for stream in streams {
            let step = Step {
                stream: stream.to_owned(),
                seq,
            };
            feed.send(
                format!("{stream}{seq}"),
                Message::new(serde_json::to_vec(&step).unwrap())
                    .event_id(Uuid::new_v4().to_string())
                    .name("inbox_suite.step")
                    .stream_key(stream),
            );
        }
    }
    let running = Loop::start(
        inbox
            .consume(consumers)
            .max_in_flight(4)
            .ordered_streams(true),
        source,
    );
    wait_for("every acknowledgement", async || {
        feed.settled.acks().len() == 36
    })
    .await;
    let report = running.stop().await;
    assert_eq!((report.processed, report.retries), (36, 1));
    assert_eq!(feed.settled.max_outstanding.load(Ordering::SeqCst), 4);
    let journal = H::DB::journal(&ctx.pool, &ctx.table).await;
    assert_eq!(journal.len(), 36);
    for stream in streams {
        let seqs: Vec<i64> = journal
            .iter()
            .filter(|(s, _)| s == stream)
            .map(|(_, seq)| *seq)
            .collect();
        assert_eq!(seqs, (0..per_stream).collect::<Vec<_>>(), "stream {stream}");
    }
    // While b3 waited out its backoff, the other streams went on.
    let b3 = journal
        .iter()
        .position(|(s, q)| s == "b" && *q == 3)
        .unwrap();
    assert!(
        journal[..b3].iter().any(|(s, q)| s != "b" && *q > 3),
        "{journal:?}"
    );
    ctx.done().await;
}

/// Shutdown gives back the messages held for a retry (released, never
/// acknowledged, their failed attempt counted); a settled one was acked.
pub async fn inbox_loop_shutdown_releases_held_messages<H: Harness>() {
    let ctx = InboxCtx::<H>::new().await;
    let inbox = ctx
        .builder()
        .max_attempts(5)
        .backoff(Backoff::fixed(Duration::from_hours(1)))
        .build()
        .await
        .unwrap();
    let probe = Probe::new(Mode::Write);
    let consumers = probe.consumers::<H>(&ctx.table);
    let (feed, source) = channel(None);
    let running = Loop::start(inbox.consume(consumers).max_in_flight(4), source);
    feed.send("ok", message(Uuid::new_v4(), 1));
    wait_for("the first acknowledgement", async || {
        feed.settled.acks().len() == 1
    })
    .await;
    probe.set(Mode::Retry);
    feed.send("held1", message(Uuid::new_v4(), 2));
    feed.send("held2", message(Uuid::new_v4(), 3));
    wait_for("both failed attempts", async || {
        inbox.stats().await.unwrap().retrying == 2
    })
    .await;
    let report = running.stop().await;
    assert_eq!(feed.settled.acks(), ["ok"]);
    let mut releases = feed.settled.releases();
    releases.sort();
    assert_eq!(releases, ["held1", "held2"]);
    assert_eq!(
        (report.processed, report.retries, report.released),
        (1, 2, 2)
    );
    assert_eq!(probe.calls(), 3);
    assert_eq!(ctx.business().await, 1);
    ctx.done().await;
}

/// Instantiates every inbox test for one harness.
#[macro_export]
macro_rules! inbox_suite {
    ($harness:ty) => {
        $crate::inbox_suite!(@tests $harness;
            inbox_same_message_twice_takes_effect_once,
            inbox_retries_then_dead_letter_with_the_message,
            inbox_reject_is_dead_at_once_and_a_panic_is_a_retry,
            inbox_broken_messages_are_dead_at_once,
            inbox_unknown_names_dead_skipped_or_caught,
            inbox_dead_letters_listed_purged_and_requeued,
            inbox_cleanup_forgets_processed_ids_after_the_window,
            inbox_unavailable_database_writes_and_acks_nothing,
            inbox_unavailable_dependency_holds_the_message,
            inbox_loop_acks_every_message_once_after_commit,
            inbox_loop_never_exceeds_max_in_flight,
            inbox_loop_keeps_arrival_order_per_stream,
            inbox_loop_shutdown_releases_held_messages,
            inbox_versions_are_upcast_renames_routed_newer_kept,
        );
    };
    (@tests $harness:ty; $($name:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                common::inbox::$name::<$harness>().await;
            }
        )*
    };
}
