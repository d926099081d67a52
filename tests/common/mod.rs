//! The backend-independent test suite. Each `tests/<db>.rs` implements
//! [`Harness`] for its database and instantiates every test with
//! `backend_suite!`, so SQLite and PostgreSQL run the same assertions.

#![allow(dead_code)] // Reason: each test binary uses a different subset of the helpers.
#![allow(unreachable_pub)] // Reason: shared by several test crates through `mod common`.

pub mod inbox;
pub mod versions;

pub use versions::*;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox::{
    Backend, Backoff, Entry, Error, FilterReason, Metadata, Outbox, OutboxBuilder, PublishError,
    Publisher, Publishers, Recorded, Recording,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The state of one outbox row, read with plain SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub event_id: Uuid,
    pub name: String,
    pub status: String,
    pub attempts: i64,
    pub last_error: Option<String>,
}

/// What a backend's test file provides.
pub trait Harness: Send + Sync + 'static {
    type DB: Backend;

    /// A pool on an isolated database, and a table name no other test uses.
    fn fresh() -> impl Future<Output = (sqlx::Pool<Self::DB>, String)> + Send;

    /// Every outbox row, in record order.
    fn rows(pool: &sqlx::Pool<Self::DB>, table: &str) -> impl Future<Output = Vec<Row>> + Send;

    /// Creates the business table `{table}_biz`.
    fn create_business(pool: &sqlx::Pool<Self::DB>, table: &str)
    -> impl Future<Output = ()> + Send;

    /// Inserts a business row through the caller's connection.
    fn insert_business(
        conn: &mut <Self::DB as sqlx::Database>::Connection,
        table: &str,
        id: i64,
    ) -> impl Future<Output = ()> + Send;

    /// Counts business rows.
    fn count_business(pool: &sqlx::Pool<Self::DB>, table: &str)
    -> impl Future<Output = i64> + Send;

    /// Overwrites the stored payload of `event_id` with `payload`.
    fn set_payload(
        pool: &sqlx::Pool<Self::DB>,
        table: &str,
        event_id: Uuid,
        payload: &str,
    ) -> impl Future<Output = ()> + Send;

    /// `"postgres"`, `"mysql"` or `"sqlite"`: picks the SQL of a test that
    /// must reach into the table (to fake a fault).
    const KIND: &'static str;

    /// Runs one statement.
    fn execute(pool: &sqlx::Pool<Self::DB>, statement: &str) -> impl Future<Output = ()> + Send;

    /// Drops the test's tables.
    fn cleanup(pool: &sqlx::Pool<Self::DB>, table: &str) -> impl Future<Output = ()> + Send;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, outbox::Event)]
#[outbox(name = "billing.invoice_paid")]
pub struct InvoicePaid {
    pub invoice_id: i64,
    pub amount_cents: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, outbox::Event)]
#[outbox(name = "shipping.parcel_sent")]
pub struct ParcelSent {
    pub parcel: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, outbox::Event)]
#[outbox(name = "crm.customer_noted", publish_if = CustomerNoted::is_external)]
pub struct CustomerNoted {
    pub note: String,
    pub internal: bool,
}

impl CustomerNoted {
    fn is_external(&self) -> bool {
        !self.internal
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, outbox::Event)]
#[outbox(skip)]
pub struct CacheWarmed {
    pub key: String,
}

pub fn paid(invoice_id: i64) -> InvoicePaid {
    InvoicePaid {
        invoice_id,
        amount_cents: invoice_id * 100,
    }
}

/// A publisher that keeps every event it is handed and answers from a script.
#[derive(Clone, Default)]
pub struct Recorder {
    pub seen: Arc<Mutex<Vec<Recorded<InvoicePaid>>>>,
    /// Invoice ids to fail, and how.
    pub fail: Arc<Mutex<Vec<(i64, PublishError)>>>,
}

impl Recorder {
    pub fn ids(&self) -> Vec<i64> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.event().invoice_id)
            .collect()
    }

    pub fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn fail_with(&self, invoice_id: i64, err: PublishError) {
        self.fail.lock().unwrap().push((invoice_id, err));
    }
}

impl Publisher<InvoicePaid> for Recorder {
    async fn publish(&self, event: &Recorded<InvoicePaid>) -> Result<(), PublishError> {
        self.seen.lock().unwrap().push(event.clone());
        let fail = self.fail.lock().unwrap();
        match fail.iter().find(|(id, _)| *id == event.event().invoice_id) {
            Some((_, err)) => Err(err.clone()),
            None => Ok(()),
        }
    }
}

pub fn publishers(recorder: &Recorder) -> Publishers {
    Publishers::builder()
        .publisher(recorder.clone())
        .build()
        .unwrap()
}

pub struct Ctx<H: Harness> {
    pub pool: sqlx::Pool<H::DB>,
    pub table: String,
}

impl<H: Harness> Ctx<H> {
    pub async fn new() -> Self {
        let (pool, table) = H::fresh().await;
        Self { pool, table }
    }

    pub fn builder(&self) -> OutboxBuilder<H::DB> {
        Outbox::builder(self.pool.clone())
            .table(self.table.clone())
            .backoff(Backoff::none())
    }

    pub async fn outbox(&self) -> Outbox<H::DB> {
        self.builder().build().await.unwrap()
    }

    pub async fn rows(&self) -> Vec<Row> {
        H::rows(&self.pool, &self.table).await
    }

    /// Records each event in its own committed transaction.
    pub async fn record_each(
        &self,
        outbox: &Outbox<H::DB>,
        ids: impl IntoIterator<Item = i64>,
    ) -> Vec<Uuid> {
        let mut out = Vec::new();
        for id in ids {
            let mut tx = self.pool.begin().await.unwrap();
            let rec = outbox.record(&mut *tx, &paid(id)).await.unwrap();
            tx.commit().await.unwrap();
            out.push(rec.event_id().unwrap());
        }
        out
    }

    pub async fn done(self) {
        H::cleanup(&self.pool, &self.table).await;
    }
}

// ---------------------------------------------------------------- the suite

pub async fn empty_outbox_makes_no_call<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx.outbox().await;
    let rec = Recorder::default();
    let report = outbox.run(&publishers(&rec), 100).await.unwrap();
    assert_eq!(report, outbox::Report::default());
    assert_eq!(rec.calls(), 0);
    ctx.done().await;
}

pub async fn limit_takes_exactly_that_many<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx.outbox().await;
    ctx.record_each(&outbox, [1, 2, 3]).await;
    let rec = Recorder::default();
    let p = publishers(&rec);
    let first = outbox.run(&p, 2).await.unwrap();
    assert_eq!((first.claimed, first.published), (2, 2));
    assert_eq!(rec.ids(), [1, 2]);
    assert_eq!(ctx.rows().await.len(), 1);
    let second = outbox.run(&p, 2).await.unwrap();
    assert_eq!((second.claimed, second.published), (1, 1));
    assert_eq!(rec.ids(), [1, 2, 3]);
    assert!(ctx.rows().await.is_empty());
    ctx.done().await;
}

pub async fn one_event_one_call_with_its_metadata<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx.outbox().await;
    let correlation = Uuid::now_v7();
    let causation = Uuid::now_v7();
    let meta = Metadata::new()
        .stream_key("invoice-7")
        .header("tenant", "acme")
        .header("trace", "00-abc-01")
        .correlation_id(correlation)
        .causation_id(causation);
    let before = chrono::Utc::now() - chrono::Duration::seconds(5);
    let mut tx = ctx.pool.begin().await.unwrap();
    let recording = outbox.record_with(&mut *tx, &paid(7), meta).await.unwrap();
    tx.commit().await.unwrap();
    let event_id = recording.event_id().expect("stored");
    assert_eq!(event_id.get_version_num(), 7, "event ids are UUID v7");

    let rec = Recorder::default();
    outbox.run(&publishers(&rec), 100).await.unwrap();
    let seen = rec.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r.event(), &paid(7));
    assert_eq!(r.event_id(), event_id);
    assert_eq!(r.name(), "billing.invoice_paid");
    assert_eq!(r.stream_key(), Some("invoice-7"));
    assert_eq!(r.headers().get("tenant").map(String::as_str), Some("acme"));
    assert_eq!(
        r.headers().get("trace").map(String::as_str),
        Some("00-abc-01")
    );
    assert_eq!(r.correlation_id(), Some(correlation));
    assert_eq!(r.causation_id(), Some(causation));
    assert_eq!(r.attempt(), 1);
    assert!(r.position() > 0);
    assert!(
        r.created_at() > before
            && r.created_at() < chrono::Utc::now() + chrono::Duration::seconds(5)
    );
    assert_eq!(
        serde_json::from_str::<InvoicePaid>(r.payload_json()).unwrap(),
        paid(7)
    );
    ctx.done().await;
}

pub async fn published_entry_is_never_published_again<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx.outbox().await;
    ctx.record_each(&outbox, [1]).await;
    let rec = Recorder::default();
    let p = publishers(&rec);
    for _ in 0..4 {
        outbox.run(&p, 100).await.unwrap();
    }
    assert_eq!(rec.calls(), 1);
    assert!(ctx.rows().await.is_empty(), "published entries are deleted");
    ctx.done().await;
}

pub async fn always_failing_publisher_ends_in_dead_letter<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx.builder().max_attempts(3).build().await.unwrap();
    let [event_id] = ctx.record_each(&outbox, [1]).await[..] else {
        unreachable!()
    };
    let rec = Recorder::default();
    rec.fail_with(
        1,
        PublishError::rejected("broker said no: 406 PRECONDITION_FAILED"),
    );
    let p = publishers(&rec);
    let mut reports = Vec::new();
    for _ in 0..4 {
        reports.push(outbox.run(&p, 100).await.unwrap());
    }
    assert_eq!(
        rec.calls(),
        3,
        "called exactly max_attempts times over max_attempts + 1 runs"
    );
    assert_eq!(reports.iter().map(|r| r.retried).sum::<usize>(), 2);
    assert_eq!(reports.iter().map(|r| r.dead).sum::<usize>(), 1);
    assert_eq!(reports[3].claimed, 0);
    let attempts: Vec<u32> = rec
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.attempt())
        .collect();
    assert_eq!(attempts, [1, 2, 3]);
    let rows = ctx.rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, "dead");
    assert_eq!(rows[0].attempts, 3);
    assert_eq!(
        rows[0].last_error.as_deref(),
        Some("broker said no: 406 PRECONDITION_FAILED")
    );
    let dead = outbox.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event_id, event_id);
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(dead[0].reason, "broker said no: 406 PRECONDITION_FAILED");
    assert_eq!(dead[0].name, "billing.invoice_paid");
    ctx.done().await;
}

pub async fn filter_rejecting_everything_writes_nothing<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx.builder().filter(|_| false).build().await.unwrap();
    let mut tx = ctx.pool.begin().await.unwrap();
    let r = outbox.record(&mut *tx, &paid(1)).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(r, Recording::Filtered(FilterReason::NameFilter));
    let rec = Recorder::default();
    outbox.run(&publishers(&rec), 100).await.unwrap();
    assert_eq!(rec.calls(), 0);
    assert!(ctx.rows().await.is_empty());
    ctx.done().await;
}

pub async fn name_filter_selects_by_prefix<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx
        .builder()
        .filter(|name| name.starts_with("billing."))
        .build()
        .await
        .unwrap();
    let mut tx = ctx.pool.begin().await.unwrap();
    let a = outbox.record(&mut *tx, &paid(1)).await.unwrap();
    let b = outbox
        .record(&mut *tx, &ParcelSent { parcel: "p".into() })
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(!a.is_filtered());
    assert_eq!(b, Recording::Filtered(FilterReason::NameFilter));
    let rows = ctx.rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].name, "billing.invoice_paid");
    ctx.done().await;
}

pub async fn skip_and_publish_if_write_nothing<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx.outbox().await;
    let mut tx = ctx.pool.begin().await.unwrap();
    let skipped = outbox
        .record(&mut *tx, &CacheWarmed { key: "k".into() })
        .await
        .unwrap();
    let internal = outbox
        .record(
            &mut *tx,
            &CustomerNoted {
                note: "n".into(),
                internal: true,
            },
        )
        .await
        .unwrap();
    let external = outbox
        .record(
            &mut *tx,
            &CustomerNoted {
                note: "n".into(),
                internal: false,
            },
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(skipped, Recording::Filtered(FilterReason::Skipped));
    assert_eq!(internal, Recording::Filtered(FilterReason::PublishIf));
    assert!(external.event_id().is_some());
    let rows = ctx.rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].event_id, external.event_id().unwrap());
    ctx.done().await;
}

pub async fn events_arrive_in_record_order<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx.outbox().await;
    ctx.record_each(&outbox, 1..=20).await;
    let rec = Recorder::default();
    let p = publishers(&rec);
    while outbox.run(&p, 7).await.unwrap().claimed > 0 {}
    assert_eq!(rec.ids(), (1..=20).collect::<Vec<_>>());
    let positions: Vec<i64> = rec
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.position())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
    ctx.done().await;
}

pub async fn rollback_leaves_no_row<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx.outbox().await;
    H::create_business(&ctx.pool, &ctx.table).await;

    let mut tx = ctx.pool.begin().await.unwrap();
    H::insert_business(&mut *tx, &ctx.table, 1).await;
    outbox.record(&mut *tx, &paid(1)).await.unwrap();
    tx.rollback().await.unwrap();

    let mut tx = ctx.pool.begin().await.unwrap();
    H::insert_business(&mut *tx, &ctx.table, 2).await;
    outbox.record(&mut *tx, &paid(2)).await.unwrap();
    drop(tx); // dropped without commit: rolled back too

    let mut tx = ctx.pool.begin().await.unwrap();
    H::insert_business(&mut *tx, &ctx.table, 3).await;
    outbox.record(&mut *tx, &paid(3)).await.unwrap();
    tx.commit().await.unwrap();

    assert_eq!(H::count_business(&ctx.pool, &ctx.table).await, 1);
    assert_eq!(ctx.rows().await.len(), 1);
    let rec = Recorder::default();
    outbox.run(&publishers(&rec), 100).await.unwrap();
    assert_eq!(rec.ids(), [3], "nothing rolled back is ever sent");
    ctx.done().await;
}

pub async fn mixed_batch_commits_every_outcome<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx.builder().max_attempts(2).build().await.unwrap();
    ctx.record_each(&outbox, 1..=6).await;
    let rec = Recorder::default();
    rec.fail_with(2, PublishError::rejected("no 2"));
    rec.fail_with(5, PublishError::rejected("no 5"));
    let report = outbox.run(&publishers(&rec), 100).await.unwrap();
    assert_eq!(
        (
            report.claimed,
            report.published,
            report.retried,
            report.dead
        ),
        (6, 4, 2, 0)
    );
    let rows = ctx.rows().await;
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter()
            .all(|r| r.status == "pending" && r.attempts == 1)
    );
    assert_eq!(rows[0].last_error.as_deref(), Some("no 2"));
    assert_eq!(rows[1].last_error.as_deref(), Some("no 5"));
    ctx.done().await;
}

/// Documented order: entries are dispatched in record order; a failed entry
/// does not hold back the others, it is retried after its backoff, in record
/// order among the entries due at that time.
pub async fn order_after_failure_and_retry<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx.outbox().await;
    ctx.record_each(&outbox, 1..=3).await;
    let rec = Recorder::default();
    rec.fail_with(2, PublishError::rejected("later"));
    let p = publishers(&rec);
    outbox.run(&p, 100).await.unwrap();
    ctx.record_each(&outbox, [4]).await;
    rec.fail.lock().unwrap().clear();
    outbox.run(&p, 100).await.unwrap();
    assert_eq!(rec.ids(), [1, 2, 3, 2, 4]);
    ctx.done().await;
}

/// A destination-scope failure costs no attempt and makes no dead letter,
/// even with `max_attempts(1)`: the publisher is blocked (in process and in
/// `stats()`), paused, and resumes by itself once the destination answers.
pub async fn unavailable_blocks_the_publisher_without_attempts<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx.builder().max_attempts(1).build().await.unwrap();
    ctx.record_each(&outbox, 1..=4).await;
    let rec = Recorder::default();
    rec.fail_with(2, PublishError::unavailable("connection refused"));
    let p = Publishers::builder()
        .publisher(rec.clone())
        .max_pause(Duration::from_millis(200))
        .build()
        .unwrap();
    let report = outbox.run(&p, 100).await.unwrap();
    assert_eq!(rec.ids(), [1, 2], "the publisher stops at the outage");
    assert_eq!(
        (
            report.published,
            report.unavailable,
            report.dead,
            report.retried
        ),
        (1, 3, 0, 0)
    );
    let blocked = p.blocked();
    assert_eq!(blocked.len(), 1, "{blocked:?}");
    assert_eq!(
        (blocked[0].publisher.as_str(), blocked[0].reason.as_str()),
        ("billing.invoice_paid", "connection refused")
    );
    let stats = outbox.stats().await.unwrap();
    assert_eq!(stats.blocked.len(), 1, "the relay wrote its block down");
    assert_eq!(stats.blocked[0].reason, "connection refused");
    // While paused, nothing is sent and nothing is charged.
    let calls = rec.calls();
    let paused = outbox.run(&p, 100).await.unwrap();
    assert_eq!(rec.calls(), calls, "a paused publisher is not called");
    assert_eq!(paused.published + paused.dead + paused.retried, 0);
    // Many more outages never make a dead letter, even with max_attempts = 1.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        outbox.run(&p, 100).await.unwrap();
    }
    let rows = ctx.rows().await;
    assert_eq!(rows.len(), 3);
    assert!(
        rows.iter()
            .all(|r| r.status == "pending" && r.attempts == 0)
    );
    // The destination is back: the next run after the pause delivers all.
    rec.fail.lock().unwrap().clear();
    let mut published = 0;
    for _ in 0..50 {
        published += outbox.run(&p, 100).await.unwrap().published;
        if published == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(published, 3);
    assert!(ctx.rows().await.is_empty());
    assert!(p.blocked().is_empty(), "unblocked by the first answer");
    assert!(outbox.stats().await.unwrap().blocked.is_empty());
    ctx.done().await;
}

/// Item 1 of the failure-scopes issue: one event that a working
/// destination keeps failing (500, timeout) never stalls the others; it
/// backs off on its own and ends as a dead letter with its reason.
pub async fn one_failing_event_never_stalls_the_others<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx
        .builder()
        .max_attempts(3)
        .backoff(Backoff::fixed(Duration::from_millis(50)))
        .batch_limit(10)
        .build()
        .await
        .unwrap();
    ctx.record_each(&outbox, 1..=40).await;
    let rec = Recorder::default();
    rec.fail_with(1, PublishError::transient("HTTP 500 Internal Server Error"));
    let p = publishers(&rec);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(
        outbox
            .relay(p)
            .poll_interval(Duration::from_millis(50))
            .run(async {
                stopped.await.ok();
            }),
    );
    let mut dead = Vec::new();
    for _ in 0..200 {
        dead = outbox.dead_letters(10).await.unwrap();
        if !dead.is_empty() && ctx.rows().await.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(()).unwrap();
    let totals = relay.await.unwrap();
    let mut delivered: Vec<i64> = rec.ids().into_iter().filter(|id| *id != 1).collect();
    delivered.sort_unstable();
    assert_eq!(
        delivered,
        (2..=40).collect::<Vec<_>>(),
        "the others all went out, once each"
    );
    assert_eq!(dead.len(), 1, "the failing event is a dead letter");
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(dead[0].reason, "HTTP 500 Internal Server Error");
    assert_eq!(
        totals.unavailable, 0,
        "never taken for a destination outage: {totals:?}"
    );
    assert_eq!(
        rec.ids().iter().filter(|id| **id == 1).count(),
        3,
        "tried exactly max_attempts times"
    );
    ctx.done().await;
}

/// A destination failing everything transiently (503 for all) is taken
/// for down after 3 distinct entries: at most 2 attempts are charged, no
/// dead letter, and it resumes by itself.
pub async fn transient_everywhere_blocks_without_dead_letters<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx.builder().max_attempts(1).build().await.unwrap();
    ctx.record_each(&outbox, 1..=20).await;
    let down = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (flag, log) = (down.clone(), seen.clone());
    let p = Publishers::builder()
        .on(move |r: Recorded<InvoicePaid>| {
            let (flag, log) = (flag.clone(), log.clone());
            async move {
                if flag.load(Ordering::SeqCst) {
                    return Err(PublishError::transient("HTTP 503 Service Unavailable"));
                }
                log.lock().unwrap().push(r.event().invoice_id);
                Ok(())
            }
        })
        .max_pause(Duration::from_millis(100))
        .build()
        .unwrap();
    let mut charged = 0;
    for _ in 0..10 {
        let report = outbox.run(&p, 100).await.unwrap();
        charged += report.dead + report.retried;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(
        charged <= 2,
        "{charged} entries charged for a destination outage"
    );
    assert_eq!(p.blocked().len(), 1);
    assert_eq!(p.blocked()[0].reason, "HTTP 503 Service Unavailable");
    down.store(false, Ordering::SeqCst);
    let mut delivered = 0;
    for _ in 0..100 {
        delivered += outbox.run(&p, 100).await.unwrap().published;
        if delivered + charged == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        delivered + charged,
        20,
        "every entry either delivered or charged"
    );
    let mut got = seen.lock().unwrap().clone();
    got.sort_unstable();
    got.dedup();
    assert_eq!(got.len(), delivered, "each delivered once");
    assert!(p.blocked().is_empty());
    ctx.done().await;
}

pub async fn undecodable_payload_is_dead_at_once<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx.outbox().await;
    let ids = ctx.record_each(&outbox, 1..=3).await;
    H::set_payload(
        &ctx.pool,
        &ctx.table,
        ids[1],
        r#"{"invoice_id": "not a number"}"#,
    )
    .await;
    let rec = Recorder::default();
    let report = outbox.run(&publishers(&rec), 100).await.unwrap();
    assert_eq!(rec.ids(), [1, 3], "the rest of the batch is published");
    assert_eq!((report.published, report.dead), (2, 1));
    let rows = ctx.rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, "dead");
    assert_eq!(rows[0].attempts, 0);
    let reason = rows[0].last_error.clone().unwrap();
    assert!(
        reason.contains("does not decode") && reason.contains("InvoicePaid"),
        "{reason}"
    );
    ctx.done().await;
}

pub async fn unroutable_entry_stays_pending<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx.outbox().await;
    let mut tx = ctx.pool.begin().await.unwrap();
    outbox
        .record(
            &mut *tx,
            &ParcelSent {
                parcel: "p1".into(),
            },
        )
        .await
        .unwrap();
    outbox.record(&mut *tx, &paid(1)).await.unwrap();
    tx.commit().await.unwrap();
    let rec = Recorder::default();
    let report = outbox.run(&publishers(&rec), 100).await.unwrap();
    assert_eq!((report.unroutable, report.published), (1, 1));
    let rows = ctx.rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (
            rows[0].name.as_str(),
            rows[0].status.as_str(),
            rows[0].attempts
        ),
        ("shipping.parcel_sent", "pending", 0)
    );
    // It waits out the unroutable delay instead of blocking the head of the queue.
    ctx.record_each(&outbox, [2]).await;
    let report = outbox.run(&publishers(&rec), 1).await.unwrap();
    assert_eq!((report.claimed, report.published), (1, 1));
    assert_eq!(rec.ids(), [1, 2]);
    ctx.done().await;
}

pub async fn catch_all_takes_unclaimed_entries<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx.outbox().await;
    let mut tx = ctx.pool.begin().await.unwrap();
    outbox
        .record(
            &mut *tx,
            &ParcelSent {
                parcel: "p1".into(),
            },
        )
        .await
        .unwrap();
    outbox.record(&mut *tx, &paid(1)).await.unwrap();
    tx.commit().await.unwrap();
    let raw: Arc<Mutex<Vec<Entry>>> = Arc::default();
    let rec = Recorder::default();
    let sink = raw.clone();
    let p = Publishers::builder()
        .publisher(rec.clone())
        .fallback_fn(move |entry: Entry| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(entry);
                Ok(())
            }
        })
        .build()
        .unwrap();
    let report = outbox.run(&p, 100).await.unwrap();
    assert_eq!((report.published, report.unroutable), (2, 0));
    assert_eq!(rec.ids(), [1]);
    let raw = raw.lock().unwrap().clone();
    assert_eq!(raw.len(), 1);
    assert_eq!(raw[0].name(), "shipping.parcel_sent");
    assert_eq!(raw[0].payload_json(), r#"{"parcel":"p1"}"#);
    ctx.done().await;
}

pub async fn panicking_publisher_is_a_failed_attempt<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx.builder().max_attempts(2).build().await.unwrap();
    ctx.record_each(&outbox, [1]).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let p = Publishers::builder()
        .on(move |_: Recorded<InvoicePaid>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move { panic!("boom in publisher") }
        })
        .build()
        .unwrap();
    let first = outbox.run(&p, 100).await.unwrap();
    assert_eq!(first.retried, 1);
    let rows = ctx.rows().await;
    assert_eq!(rows[0].attempts, 1);
    assert!(
        rows[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("boom in publisher")
    );
    let second = outbox.run(&p, 100).await.unwrap();
    assert_eq!(second.dead, 1);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    ctx.done().await;
}

pub async fn requeue_and_purge_dead_letters<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx.builder().max_attempts(1).build().await.unwrap();
    let ids = ctx.record_each(&outbox, 1..=3).await;
    let rec = Recorder::default();
    for id in 1..=3 {
        rec.fail_with(id, PublishError::rejected("down"));
    }
    let p = publishers(&rec);
    assert_eq!(outbox.run(&p, 100).await.unwrap().dead, 3);
    assert_eq!(outbox.dead_letters(100).await.unwrap().len(), 3);
    // Dead letters are never offered again on their own.
    assert_eq!(outbox.run(&p, 100).await.unwrap().claimed, 0);
    rec.fail.lock().unwrap().clear();

    assert!(outbox.requeue(ids[0]).await.unwrap());
    assert!(!outbox.requeue(Uuid::now_v7()).await.unwrap());
    let report = outbox.run(&p, 100).await.unwrap();
    assert_eq!(report.published, 1);
    assert_eq!(rec.ids(), [1, 2, 3, 1]);
    assert_eq!(
        rec.seen.lock().unwrap()[3].attempt(),
        1,
        "requeue resets attempts"
    );

    assert!(outbox.purge(ids[1]).await.unwrap());
    assert!(!outbox.purge(ids[1]).await.unwrap());
    assert_eq!(outbox.requeue_all().await.unwrap(), 1);
    assert_eq!(outbox.run(&p, 100).await.unwrap().published, 1);
    assert_eq!(rec.ids(), [1, 2, 3, 1, 3]);
    assert!(ctx.rows().await.is_empty());

    rec.fail_with(4, PublishError::rejected("down"));
    ctx.record_each(&outbox, [4]).await;
    outbox.run(&p, 100).await.unwrap();
    assert_eq!(outbox.purge_all().await.unwrap(), 1);
    assert!(ctx.rows().await.is_empty());
    ctx.done().await;
}

pub async fn batch_record_mixes_types_in_one_insert<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx.outbox().await;
    let events: Vec<InvoicePaid> = (1..=250).map(paid).collect();
    let mut tx = ctx.pool.begin().await.unwrap();
    let recs = outbox.record_all(&mut *tx, &events).await.unwrap();
    let mut batch = outbox.batch();
    batch.push(&ParcelSent { parcel: "x".into() }).unwrap();
    let filtered = batch.push(&CacheWarmed { key: "k".into() }).unwrap();
    batch
        .push_with(&paid(251), Metadata::new().stream_key("s"))
        .unwrap();
    assert_eq!(batch.len(), 2);
    assert!(filtered.is_filtered());
    batch.record(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(recs.len(), 250);
    let rows = ctx.rows().await;
    assert_eq!(rows.len(), 252);
    assert_eq!(rows[0].event_id, recs[0].event_id().unwrap());
    assert_eq!(rows[249].event_id, recs[249].event_id().unwrap());
    let rec = Recorder::default();
    let p = publishers(&rec);
    while outbox.run(&p, 100).await.unwrap().claimed > 0 {}
    assert_eq!(rec.ids(), (1..=251).collect::<Vec<_>>());
    ctx.done().await;
}

pub async fn bad_table_names_are_refused<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    for bad in ["outbox; DROP TABLE x", "a\"b", "", "1x", "a.b.c"] {
        let err = Outbox::builder(ctx.pool.clone())
            .table(bad)
            .build()
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidTableName { .. }),
            "{bad:?}: {err}"
        );
        assert!(err.to_string().contains("invalid outbox table name"));
    }
    let err = outbox::migrate(&ctx.pool, "x y").await.unwrap_err();
    assert!(matches!(err, Error::InvalidTableName { .. }));
    ctx.done().await;
}

pub async fn oversized_payload_is_refused<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx.builder().max_payload_bytes(64).build().await.unwrap();
    let mut tx = ctx.pool.begin().await.unwrap();
    let err = outbox
        .record(
            &mut *tx,
            &ParcelSent {
                parcel: "x".repeat(100),
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::PayloadTooLarge { max: 64, .. }),
        "{err}"
    );
    outbox
        .record(
            &mut *tx,
            &ParcelSent {
                parcel: "small".into(),
            },
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(ctx.rows().await.len(), 1);
    ctx.done().await;
}

pub async fn duplicate_publisher_is_refused<H: Harness>() {
    let rec = Recorder::default();
    let err = Publishers::builder()
        .publisher(rec.clone())
        .on(|_: Recorded<InvoicePaid>| async { Ok(()) })
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::DuplicatePublisher { .. }));
    assert!(err.to_string().contains("billing.invoice_paid"), "{err}");
    let err = Publishers::builder()
        .fallback_fn(|_: Entry| async { Ok(()) })
        .fallback_fn(|_: Entry| async { Ok(()) })
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("catch-all"), "{err}");
}

/// No transaction (and on SQLite no write lock) is held while a publisher
/// runs: the application records and commits from inside the publisher.
pub async fn application_writes_while_publisher_runs<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx.outbox().await;
    H::create_business(&ctx.pool, &ctx.table).await;
    ctx.record_each(&outbox, [1]).await;
    let (pool, table, app_outbox) = (ctx.pool.clone(), ctx.table.clone(), outbox.clone());
    let p = Publishers::builder()
        .on(move |_: Recorded<InvoicePaid>| {
            let (pool, table, app_outbox) = (pool.clone(), table.clone(), app_outbox.clone());
            async move {
                let write = async {
                    let mut tx = pool.begin().await.unwrap();
                    H::insert_business(&mut *tx, &table, 99).await;
                    app_outbox.record(&mut *tx, &paid(99)).await.unwrap();
                    tx.commit().await.unwrap();
                };
                tokio::time::timeout(Duration::from_secs(2), write)
                    .await
                    .map_err(|_| PublishError::rejected("application write blocked by the relay"))
            }
        })
        .build()
        .unwrap();
    let report = outbox.run(&p, 100).await.unwrap();
    assert_eq!(report.published, 1, "{report:?}");
    assert_eq!(H::count_business(&ctx.pool, &ctx.table).await, 1);
    let rows = ctx.rows().await;
    assert_eq!(
        rows.len(),
        1,
        "the event written during the publish is pending"
    );
    ctx.done().await;
}

/// A relay whose lease ran out cannot overwrite the outcome recorded by the
/// relay that took its entries over.
/// A batch slower than the lease keeps its claim: the lease is renewed
/// while it is in flight, so another relay cannot take (and publish again)
/// its entries.
pub async fn slow_batch_renews_its_lease<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let slow = ctx
        .builder()
        .lease(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let fast = ctx.outbox().await;
    ctx.record_each(&fast, [1]).await;
    let p_slow = Publishers::builder()
        .on(|_: Recorded<InvoicePaid>| async {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            Ok(())
        })
        .build()
        .unwrap();
    let slow_run = tokio::spawn(async move { slow.run(&p_slow, 100).await.unwrap() });
    let rec = Recorder::default();
    let p_fast = publishers(&rec);
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let report = fast.run(&p_fast, 100).await.unwrap();
        assert_eq!(
            report.claimed, 0,
            "the renewed lease keeps the entry claimed"
        );
    }
    let slow_report = slow_run.await.unwrap();
    assert_eq!((slow_report.published, slow_report.lost), (1, 0));
    assert_eq!(
        rec.calls(),
        0,
        "published once, by the relay that claimed it"
    );
    assert!(ctx.rows().await.is_empty());
    ctx.done().await;
}

/// An outcome that finds its claim gone (the lease ran out: here the claim
/// is taken away by hand while the batch is in flight) writes nothing, is
/// reported as lost, and is not counted as published.
pub async fn lost_claim_is_reported_not_counted<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx.outbox().await;
    ctx.record_each(&outbox, [1, 2]).await;
    let (pool, table) = (ctx.pool.clone(), ctx.table.clone());
    let p = Publishers::builder()
        .on(move |r: Recorded<InvoicePaid>| {
            let (pool, table) = (pool.clone(), table.clone());
            async move {
                if r.event().invoice_id == 1 {
                    // Another relay's claim replaces ours.
                    let steal = match H::KIND {
                        "postgres" => format!(
                            "UPDATE \"{table}\" SET claim_token = gen_random_uuid() WHERE id = {}",
                            r.position()
                        ),
                        "mysql" => format!(
                            "UPDATE `{table}` SET claim_token = UUID() WHERE id = {}",
                            r.position()
                        ),
                        _ => format!(
                            "UPDATE \"{table}\" SET claim_token = 'stolen' WHERE id = {}",
                            r.position()
                        ),
                    };
                    H::execute(&pool, &steal).await;
                }
                Ok(())
            }
        })
        .build()
        .unwrap();
    let report = outbox.run(&p, 100).await.unwrap();
    assert_eq!((report.published, report.lost), (1, 1), "{report:?}");
    let rows = ctx.rows().await;
    assert_eq!(
        rows.len(),
        1,
        "the lost entry is still there for its new owner"
    );
    assert_eq!((rows[0].status.as_str(), rows[0].attempts), ("pending", 0));
    ctx.done().await;
}

/// The relay loop publishes, sleeps when idle, wakes for new entries on its
/// poll interval, and stops after the batch in flight.
pub async fn relay_loop_runs_and_stops_gracefully<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx.builder().batch_limit(10).build().await.unwrap();
    ctx.record_each(&outbox, 1..=25).await;
    let rec = Recorder::default();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let relay = outbox
        .relay(publishers(&rec))
        .poll_interval(Duration::from_millis(20));
    let handle = tokio::spawn(relay.run(async {
        let _ = stop_rx.await;
    }));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while rec.calls() < 25 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ctx.record_each(&outbox, [26]).await;
    while rec.calls() < 26 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop_tx.send(()).unwrap();
    let totals = tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(totals.published, 26);
    assert_eq!(rec.ids(), (1..=26).collect::<Vec<_>>());
    assert!(ctx.rows().await.is_empty());
    ctx.done().await;
}

/// Shutdown while a batch is in flight: the batch finishes and commits.
pub async fn shutdown_finishes_the_batch_in_flight<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx.builder().batch_limit(5).build().await.unwrap();
    ctx.record_each(&outbox, 1..=5).await;
    let started = Arc::new(tokio::sync::Notify::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let (s, c) = (started.clone(), calls.clone());
    let p = Publishers::builder()
        .on(move |_: Recorded<InvoicePaid>| {
            let (s, c) = (s.clone(), c.clone());
            async move {
                s.notify_one();
                tokio::time::sleep(Duration::from_millis(50)).await;
                c.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .build()
        .unwrap();
    let totals = outbox
        .relay(p)
        .poll_interval(Duration::from_mins(1))
        .run(async move { started.notified().await })
        .await;
    assert_eq!(totals.published, 5);
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    assert!(
        ctx.rows().await.is_empty(),
        "outcomes were committed before returning"
    );
    ctx.done().await;
}

pub async fn migrate_is_idempotent<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    outbox::migrate(&ctx.pool, &ctx.table).await.unwrap();
    outbox::migrate(&ctx.pool, &ctx.table).await.unwrap();
    let outbox = ctx.outbox().await;
    ctx.record_each(&outbox, [1]).await;
    let _again = ctx.outbox().await;
    assert_eq!(ctx.rows().await.len(), 1);
    ctx.done().await;
}

// ------------------------------------------------ production relay (issue 3)

/// Records `n` events in transactions of 1,000, stream keys `s0..s{streams}`.
pub async fn record_many<H: Harness>(ctx: &Ctx<H>, outbox: &Outbox<H::DB>, n: i64, streams: i64) {
    let mut next = 1;
    while next <= n {
        let mut tx = ctx.pool.begin().await.unwrap();
        let mut batch = outbox.batch();
        for id in next..(next + 1000).min(n + 1) {
            batch
                .push_with(
                    &paid(id),
                    Metadata::new().stream_key(format!("s{}", id % streams)),
                )
                .unwrap();
        }
        batch.record(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
        next += 1000;
    }
}

/// Runs `relays` concurrent relays (each `run` in a loop) until a round
/// finds nothing due anywhere.
pub async fn drain_with<H: Harness>(
    outbox: &Outbox<H::DB>,
    publishers: Arc<Publishers>,
    relays: usize,
    limit: usize,
) {
    let mut tasks = Vec::new();
    for _ in 0..relays {
        let (outbox, publishers) = (outbox.clone(), publishers.clone());
        tasks.push(tokio::spawn(async move {
            let mut empty = 0;
            while empty < 3 {
                let report = outbox.run(&publishers, limit).await.unwrap();
                if report.claimed == 0 {
                    empty += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                } else {
                    empty = 0;
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// A publisher that records (invoice id, stream key) and fails a scripted
/// share of calls.
#[derive(Clone, Default)]
pub struct Ledger {
    pub published: Arc<Mutex<Vec<(i64, Option<String>)>>>,
    pub calls: Arc<AtomicUsize>,
    /// Fail about this share (in percent) of calls, pseudo-randomly by call number and invoice.
    pub fail_percent: usize,
}

impl Publisher<InvoicePaid> for Ledger {
    async fn publish(&self, event: &Recorded<InvoicePaid>) -> Result<(), PublishError> {
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        let id = u64::try_from(event.event().invoice_id).unwrap();
        if scramble((call as u64) << 32 ^ id) % 100 < self.fail_percent as u64 {
            return Err(PublishError::rejected("injected failure"));
        }
        self.published.lock().unwrap().push((
            event.event().invoice_id,
            event.stream_key().map(str::to_owned),
        ));
        Ok(())
    }
}

/// A fixed pseudo-random scramble (splitmix64's finalizer).
pub fn scramble(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

pub async fn four_relays_publish_each_entry_exactly_once<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx.outbox().await;
    record_many(&ctx, &outbox, 20_000, 50).await;
    let ledger = Ledger::default();
    let publishers = Arc::new(
        Publishers::builder()
            .publisher(ledger.clone())
            .build()
            .unwrap(),
    );
    drain_with::<H>(&outbox, publishers, 4, 100).await;
    let mut ids: Vec<i64> = ledger
        .published
        .lock()
        .unwrap()
        .iter()
        .map(|p| p.0)
        .collect();
    assert_eq!(ids.len(), 20_000, "each entry exactly once");
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        ids,
        (1..=20_000).collect::<Vec<_>>(),
        "none missing, none twice"
    );
    assert!(ctx.rows().await.is_empty());
    ctx.done().await;
}

pub async fn four_relays_with_failures_lose_nothing<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx.builder().max_attempts(3).build().await.unwrap();
    record_many(&ctx, &outbox, 20_000, 50).await;
    let ledger = Ledger {
        fail_percent: 10,
        ..Ledger::default()
    };
    let publishers = Arc::new(
        Publishers::builder()
            .publisher(ledger.clone())
            .build()
            .unwrap(),
    );
    drain_with::<H>(&outbox, publishers, 4, 100).await;
    let mut published: Vec<i64> = ledger
        .published
        .lock()
        .unwrap()
        .iter()
        .map(|p| p.0)
        .collect();
    let total_published = published.len();
    published.sort_unstable();
    published.dedup();
    assert_eq!(
        total_published,
        published.len(),
        "no failures were injected after success: no duplicates"
    );
    let rows = ctx.rows().await;
    assert!(
        rows.iter().all(|r| r.status == "dead"),
        "only dead letters remain"
    );
    for row in &rows {
        assert_eq!(row.attempts, 3, "dead only where attempts ran out");
        assert_eq!(row.last_error.as_deref(), Some("injected failure"));
    }
    assert_eq!(
        published.len() + rows.len(),
        20_000,
        "every entry is published or dead: none lost"
    );
    let calls = ledger.calls.load(Ordering::Relaxed);
    assert!(calls > 20_000 && calls < 20_000 * 3, "{calls} calls");
    ctx.done().await;
}

/// Per-stream order with several relays and injected failures: each
/// stream's events are published in record order.
pub async fn per_stream_order_holds_under_failures<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx
        .builder()
        .ordered_streams(true)
        .max_attempts(1000)
        .build()
        .await
        .unwrap();
    record_many(&ctx, &outbox, 3_000, 7).await;
    let ledger = Ledger {
        fail_percent: 20,
        ..Ledger::default()
    };
    let publishers = Arc::new(
        Publishers::builder()
            .publisher(ledger.clone())
            .build()
            .unwrap(),
    );
    drain_with::<H>(&outbox, publishers, 3, 50).await;
    let published = ledger.published.lock().unwrap().clone();
    assert_eq!(published.len(), 3_000);
    let mut last = std::collections::HashMap::<String, i64>::new();
    for (id, stream) in published {
        let stream = stream.unwrap();
        if let Some(prev) = last.insert(stream.clone(), id) {
            assert!(prev < id, "stream {stream}: {id} published after {prev}");
        }
    }
    let calls = ledger.calls.load(Ordering::Relaxed);
    assert!(calls > 3_000, "failures were injected: {calls} calls");
    assert!(ctx.rows().await.is_empty());
    ctx.done().await;
}

/// Runs `relays` relay loops (`Outbox::relay`, small poll interval) until
/// `ledger` has seen `n` publications, then stops them.
pub async fn drain_with_relay_loops<H: Harness>(
    outbox: &Outbox<H::DB>,
    ledger: &Ledger,
    relays: usize,
    n: usize,
) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for _ in 0..relays {
        let publishers = Publishers::builder()
            .publisher(ledger.clone())
            .build()
            .unwrap();
        let mut stop = stop_rx.clone();
        let relay = outbox
            .relay(publishers)
            .poll_interval(Duration::from_millis(100));
        tasks.push(tokio::spawn(relay.run(async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        })));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_mins(1);
    while ledger.published.lock().unwrap().len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} published",
            ledger.published.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_tx.send(true).unwrap();
    for task in tasks {
        task.await.unwrap();
    }
}

/// The relay loop claims past its last full batch while a backlog drains
/// (skipping what it already drained); entries behind it (retries, given
/// back with per-stream order) are still published, each stream in order.
pub async fn relay_loops_past_a_backlog_keep_order_and_retries<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    for ordered in [false, true] {
        let outbox = ctx
            .builder()
            .ordered_streams(ordered)
            .batch_limit(25)
            .max_attempts(1000)
            .backoff(Backoff::fixed(Duration::from_millis(5)))
            .build()
            .await
            .unwrap();
        record_many(&ctx, &outbox, 2_000, 7).await;
        let ledger = Ledger {
            fail_percent: 15,
            ..Ledger::default()
        };
        drain_with_relay_loops::<H>(&outbox, &ledger, 3, 2_000).await;
        let published = ledger.published.lock().unwrap().clone();
        let mut ids: Vec<i64> = published.iter().map(|p| p.0).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids, (1..=2_000).collect::<Vec<_>>(), "each once, none lost");
        assert_eq!(published.len(), 2_000, "no duplicates");
        if ordered {
            let mut last = std::collections::HashMap::<String, i64>::new();
            for (id, stream) in published {
                let stream = stream.unwrap();
                if let Some(prev) = last.insert(stream.clone(), id) {
                    assert!(prev < id, "stream {stream}: {id} published after {prev}");
                }
            }
        }
        let calls = ledger.calls.load(Ordering::Relaxed);
        assert!(calls > 2_000, "failures were injected: {calls} calls");
        assert!(ctx.rows().await.is_empty());
    }
    ctx.done().await;
}

/// With per-stream order, a dead letter holds back the rest of its stream
/// (never silently reordered) while other streams go on; requeueing it
/// releases the stream in order.
pub async fn dead_letter_holds_back_its_stream<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx
        .builder()
        .ordered_streams(true)
        .max_attempts(1)
        .build()
        .await
        .unwrap();
    let mut tx = ctx.pool.begin().await.unwrap();
    for (id, stream) in [(1, "a"), (2, "b"), (3, "a"), (4, "b"), (5, "a")] {
        outbox
            .record_with(&mut *tx, &paid(id), Metadata::new().stream_key(stream))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let rec = Recorder::default();
    rec.fail_with(1, PublishError::rejected("poison"));
    let p = publishers(&rec);
    let first = outbox.run(&p, 100).await.unwrap();
    assert_eq!((first.dead, first.published), (1, 2), "{first:?}");
    for _ in 0..3 {
        outbox.run(&p, 100).await.unwrap();
    }
    assert_eq!(
        rec.ids(),
        [1, 2, 4],
        "stream a waits behind its dead letter; b goes on"
    );
    assert_eq!(ctx.rows().await.len(), 3);
    let stats = outbox.stats().await.unwrap();
    assert_eq!((stats.pending, stats.dead), (2, 1));

    rec.fail.lock().unwrap().clear();
    let dead = outbox.dead_letters(10).await.unwrap();
    assert!(outbox.requeue(dead[0].event_id).await.unwrap());
    while outbox.run(&p, 100).await.unwrap().claimed > 0 {}
    assert_eq!(
        rec.ids(),
        [1, 2, 4, 1, 3, 5],
        "after requeue, stream a resumes in order"
    );
    ctx.done().await;
}

pub async fn retention_keeps_published_then_cleans_up<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx
        .builder()
        .keep_published(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    ctx.record_each(&outbox, 1..=5).await;
    let rec = Recorder::default();
    let p = publishers(&rec);
    assert_eq!(outbox.run(&p, 100).await.unwrap().published, 5);
    assert_eq!(
        outbox.run(&p, 100).await.unwrap().claimed,
        0,
        "kept entries are not offered again"
    );
    let rows = ctx.rows().await;
    assert_eq!(rows.len(), 5);
    assert!(rows.iter().all(|r| r.status == "published"));
    assert_eq!(outbox.stats().await.unwrap().published, 5);
    assert_eq!(outbox.cleanup(2).await.unwrap(), 0, "not expired yet");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        outbox.cleanup(2).await.unwrap(),
        5,
        "deleted in batches of 2"
    );
    assert!(ctx.rows().await.is_empty());
    // Without retention, cleanup has nothing to do.
    assert_eq!(ctx.outbox().await.cleanup(10).await.unwrap(), 0);
    ctx.done().await;
}

pub async fn relay_loop_cleans_up_expired_entries<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx
        .builder()
        .keep_published(Duration::ZERO)
        .build()
        .await
        .unwrap();
    ctx.record_each(&outbox, 1..=3).await;
    let rec = Recorder::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = outbox
        .relay(publishers(&rec))
        .poll_interval(Duration::from_millis(20))
        .cleanup_interval(Duration::from_millis(50));
    let handle = tokio::spawn(relay.run(async {
        let _ = stopped.await;
    }));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(rec.calls() == 3 && ctx.rows().await.is_empty())
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(()).unwrap();
    handle.await.unwrap();
    assert_eq!(rec.calls(), 3);
    assert!(
        ctx.rows().await.is_empty(),
        "the loop's cleanup removed the kept entries"
    );
    ctx.done().await;
}

pub async fn stats_report_pending_retrying_dead_and_age<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx.builder().max_attempts(2).build().await.unwrap();
    let empty = outbox.stats().await.unwrap();
    assert_eq!(
        (empty.pending, empty.dead, empty.oldest_pending_age),
        (0, 0, None)
    );
    ctx.record_each(&outbox, 1..=4).await;
    let mut tx = ctx.pool.begin().await.unwrap();
    outbox
        .record(&mut *tx, &ParcelSent { parcel: "p".into() })
        .await
        .unwrap();
    tx.commit().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let rec = Recorder::default();
    rec.fail_with(1, PublishError::rejected("x"));
    rec.fail_with(2, PublishError::rejected("y"));
    let p = publishers(&rec);
    outbox.run(&p, 100).await.unwrap(); // 1, 2 retrying; 3, 4 published; parcel unroutable
    rec.fail.lock().unwrap().retain(|(id, _)| *id == 2);
    outbox.run(&p, 100).await.unwrap(); // 1 published; 2 dead
    let stats = outbox.stats().await.unwrap();
    assert_eq!(
        (stats.pending, stats.retrying, stats.dead),
        (1, 0, 1),
        "{stats:?}"
    );
    let age = stats.oldest_pending_age.expect("one pending entry");
    assert!(
        age >= Duration::from_millis(40) && age < Duration::from_mins(1),
        "{age:?}"
    );
    assert_eq!(stats.by_name.len(), 2);
    let billing = stats
        .by_name
        .iter()
        .find(|n| n.name == "billing.invoice_paid")
        .unwrap();
    assert_eq!((billing.pending, billing.dead), (0, 1));
    let parcels = stats
        .by_name
        .iter()
        .find(|n| n.name == "shipping.parcel_sent")
        .unwrap();
    assert_eq!((parcels.pending, parcels.retrying), (1, 0));

    ctx.record_each(&outbox, [5]).await;
    rec.fail_with(5, PublishError::rejected("z"));
    outbox.run(&p, 100).await.unwrap();
    let stats = outbox.stats().await.unwrap();
    assert_eq!((stats.pending, stats.retrying), (2, 1), "{stats:?}");
    ctx.done().await;
}

/// Shutdown under load: the batch in flight commits; a second relay then
/// finishes; nothing is published twice.
pub async fn shutdown_under_load_publishes_nothing_twice<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx.builder().batch_limit(50).build().await.unwrap();
    record_many(&ctx, &outbox, 3_000, 10).await;
    let ledger = Ledger::default();
    let publishers = || {
        Publishers::builder()
            .publisher(ledger.clone())
            .build()
            .unwrap()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let first = tokio::spawn(outbox.relay(publishers()).run(async {
        let _ = stopped.await;
    }));
    while ledger.published.lock().unwrap().len() < 500 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    stop.send(()).unwrap();
    let totals = first.await.unwrap();
    assert!(totals.published < 3_000, "stopped mid-way");
    assert_eq!(totals.published, ledger.published.lock().unwrap().len());
    drain_with::<H>(&outbox, Arc::new(publishers()), 1, 100).await;
    let mut ids: Vec<i64> = ledger
        .published
        .lock()
        .unwrap()
        .iter()
        .map(|p| p.0)
        .collect();
    assert_eq!(
        ids.len(),
        3_000,
        "nothing published twice because of the shutdown"
    );
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3_000);
    ctx.done().await;
}

pub async fn dead_letters_by_id_name_and_age<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx.builder().max_attempts(1).build().await.unwrap();
    let ids = ctx.record_each(&outbox, 1..=2).await;
    let mut tx = ctx.pool.begin().await.unwrap();
    let parcel = outbox
        .record_with(
            &mut *tx,
            &ParcelSent { parcel: "p".into() },
            Metadata::new().stream_key("route-9"),
        )
        .await
        .unwrap()
        .event_id()
        .unwrap();
    tx.commit().await.unwrap();
    let p = Publishers::builder()
        .on(|_: Recorded<InvoicePaid>| async { Err(PublishError::rejected("no invoices")) })
        .on(|_: Recorded<ParcelSent>| async { Err(PublishError::rejected("no parcels")) })
        .build()
        .unwrap();
    assert_eq!(outbox.run(&p, 100).await.unwrap().dead, 3);

    let one = outbox
        .dead_letter(parcel)
        .await
        .unwrap()
        .expect("a dead letter");
    assert_eq!(
        (one.name.as_str(), one.reason.as_str()),
        ("shipping.parcel_sent", "no parcels")
    );
    assert_eq!(one.stream_key.as_deref(), Some("route-9"));
    assert_eq!(one.payload, r#"{"parcel":"p"}"#);
    assert!(one.dead_since >= one.created_at);
    assert!(outbox.dead_letter(Uuid::now_v7()).await.unwrap().is_none());
    let named = outbox
        .dead_letters_named("billing.invoice_paid", 10)
        .await
        .unwrap();
    assert_eq!(named.iter().map(|d| d.event_id).collect::<Vec<_>>(), ids);

    assert_eq!(
        outbox
            .purge_dead_for(Duration::from_hours(1))
            .await
            .unwrap(),
        0,
        "none died an hour ago"
    );
    assert_eq!(
        outbox.requeue_named("billing.invoice_paid").await.unwrap(),
        2
    );
    assert_eq!(outbox.dead_letters(10).await.unwrap().len(), 1);
    let stats = outbox.stats().await.unwrap();
    assert_eq!((stats.pending, stats.dead), (2, 1));
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(
        outbox
            .purge_dead_for(Duration::from_millis(10))
            .await
            .unwrap(),
        1
    );
    assert!(outbox.dead_letters(10).await.unwrap().is_empty());
    ctx.done().await;
}

/// A publisher that hangs on invoice 3.
struct Hangs(Recorder);

impl Publisher<InvoicePaid> for Hangs {
    async fn publish(&self, event: &Recorded<InvoicePaid>) -> Result<(), PublishError> {
        if event.event().invoice_id == 3 {
            std::future::pending::<()>().await;
        }
        self.0.publish(event).await
    }
}

/// A hanging publish is abandoned after the per-publish timeout and is a
/// transient failure of that entry: the destination answered the others,
/// so it costs that entry an attempt, and the rest of the batch goes on.
pub async fn hanging_publish_times_out_as_transient<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx
        .builder()
        .publish_timeout(Some(Duration::from_millis(200)))
        .max_attempts(1)
        .build()
        .await
        .unwrap();
    ctx.record_each(&outbox, 1..=5).await;
    let rec = Recorder::default();
    let p = Publishers::builder()
        .publisher(Hangs(rec.clone()))
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let report = outbox.run(&p, 100).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        (report.published, report.unavailable, report.dead),
        (4, 0, 1),
        "{report:?}"
    );
    assert_eq!(rec.ids(), [1, 2, 4, 5]);
    let dead = outbox.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.contains("timed out"), "{}", dead[0].reason);

    // A closure that hangs on everything: after 3 timeouts in a row with no
    // answer the destination is taken for down; nothing is charged.
    ctx.record_each(&outbox, 6..=10).await;
    let p = Publishers::builder()
        .on(|_: Recorded<InvoicePaid>| async move {
            std::future::pending::<()>().await;
            Ok(())
        })
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let report = outbox.run(&p, 100).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "at most 3 timeouts per batch"
    );
    assert_eq!(
        (report.published, report.unavailable, report.dead),
        (0, 5, 0),
        "{report:?}"
    );
    assert_eq!(p.blocked().len(), 1);
    let pending: Vec<_> = ctx
        .rows()
        .await
        .into_iter()
        .filter(|r| r.status == "pending")
        .collect();
    assert_eq!(pending.len(), 5);
    assert!(pending.iter().all(|r| r.attempts == 0));
    ctx.done().await;
}

/// A panic inside `publish_batch` charges only the entry that causes it:
/// the batch is published again one entry at a time.
pub async fn panic_in_a_batch_is_charged_to_its_entry<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx.builder().max_attempts(1).build().await.unwrap();
    ctx.record_each(&outbox, 1..=5).await;
    let sent = Arc::new(Mutex::new(Vec::new()));
    let p = Publishers::builder()
        .publisher(PanicsInBatch(sent.clone()))
        .build()
        .unwrap();
    let report = outbox.run(&p, 100).await.unwrap();
    assert_eq!((report.published, report.dead), (4, 1), "{report:?}");
    let dead = outbox.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].reason.contains("invoice 3 is cursed"),
        "{}",
        dead[0].reason
    );
    // Entries 1 and 2 went out in the batch before the panic, and again one
    // by one: at least once.
    assert_eq!(*sent.lock().unwrap(), [1, 2, 1, 2, 4, 5]);
    ctx.done().await;
}

/// Publishes a batch in order and panics on invoice 3.
struct PanicsInBatch(Arc<Mutex<Vec<i64>>>);

impl Publisher<InvoicePaid> for PanicsInBatch {
    async fn publish(&self, event: &Recorded<InvoicePaid>) -> Result<(), PublishError> {
        let id = event.event().invoice_id;
        assert!(id != 3, "invoice 3 is cursed");
        self.0.lock().unwrap().push(id);
        Ok(())
    }

    async fn publish_batch(
        &self,
        events: &[Recorded<InvoicePaid>],
    ) -> Vec<Result<(), PublishError>> {
        let mut out = Vec::new();
        for event in events {
            out.push(self.publish(event).await);
        }
        out
    }
}

/// With per-stream order, a stored row that does not decode becomes a dead
/// letter and holds back the later entries of its stream, in the same batch
/// and after it.
pub async fn poison_row_holds_back_its_stream<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx.builder().ordered_streams(true).build().await.unwrap();
    let mut ids = Vec::new();
    for (invoice, stream) in [(1, "s"), (2, "s"), (3, "other")] {
        let mut tx = ctx.pool.begin().await.unwrap();
        let rec = outbox
            .record_with(&mut *tx, &paid(invoice), Metadata::new().stream_key(stream))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        ids.push(rec.event_id().unwrap());
    }
    let t = &ctx.table;
    let poison = match H::KIND {
        "postgres" => format!(
            "UPDATE \"{t}\" SET created_at = 'infinity' WHERE event_id = '{}'",
            ids[0]
        ),
        "mysql" => format!(
            "UPDATE `{t}` SET event_id = 'not-a-uuid' WHERE event_id = '{}'",
            ids[0]
        ),
        _ => format!(
            "UPDATE \"{t}\" SET event_id = 'not-a-uuid' WHERE event_id = '{}'",
            ids[0]
        ),
    };
    H::execute(&ctx.pool, &poison).await;
    let rec = Recorder::default();
    let p = publishers(&rec);
    let report = outbox.run(&p, 100).await.unwrap();
    assert_eq!((report.dead, report.published), (1, 1), "{report:?}");
    assert_eq!(rec.ids(), [3], "the poison row's stream is held");
    for _ in 0..3 {
        outbox.run(&p, 100).await.unwrap();
    }
    assert_eq!(rec.ids(), [3], "...for as long as the dead letter stays");
    ctx.done().await;
}

/// PostgreSQL: a claim never passes an entry whose transaction may still
/// commit. T1 records (stream "s"), T2 records later (stream "s") and
/// commits first: T2's entry is not claimable while T1 is open, and once T1
/// commits both go out in record order.
pub async fn claims_never_pass_an_open_transaction<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx.builder().ordered_streams(true).build().await.unwrap();
    let unordered = ctx.outbox().await;
    let meta = || Metadata::new().stream_key("s");
    let mut t1 = ctx.pool.begin().await.unwrap();
    outbox
        .record_with(&mut *t1, &paid(1), meta())
        .await
        .unwrap();
    let mut t2 = ctx.pool.begin().await.unwrap();
    outbox
        .record_with(&mut *t2, &paid(2), meta())
        .await
        .unwrap();
    t2.commit().await.unwrap();
    let rec = Recorder::default();
    let p = publishers(&rec);
    for relay in [&outbox, &unordered] {
        let report = relay.run(&p, 100).await.unwrap();
        assert_eq!(
            report.claimed, 0,
            "T1 may still commit an earlier entry: {report:?}"
        );
    }
    t1.commit().await.unwrap();
    let report = outbox.run(&p, 100).await.unwrap();
    assert_eq!(report.published, 2);
    assert_eq!(rec.ids(), [1, 2], "record order, once T1 has ended");
    ctx.done().await;
}

/// A table that is not an outbox table (or has an older schema) is
/// reported as such, with what to run, instead of a missing-column error
/// at the first claim.
pub async fn foreign_or_outdated_table_is_named<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    H::create_business(&ctx.pool, &ctx.table).await;
    let foreign = format!("{}_biz", ctx.table);
    for migrate in [false, true] {
        let err = Outbox::builder(ctx.pool.clone())
            .table(foreign.clone())
            .migrate(migrate)
            .build()
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::NotAnOutboxTable { .. }), "{text}");
        assert!(
            text.contains(&foreign) && text.contains("outbox migrate"),
            "{text}"
        );
    }
    // A missing table.
    let err = Outbox::builder(ctx.pool.clone())
        .table(format!("{}_missing", ctx.table))
        .migrate(false)
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotAnOutboxTable { .. }), "{err}");
    // An outbox table whose schema is older than this build.
    ctx.outbox().await;
    let q = if H::KIND == "mysql" { '`' } else { '"' };
    H::execute(
        &ctx.pool,
        &format!("DELETE FROM {q}{}_schema{q} WHERE version > 1", ctx.table),
    )
    .await;
    let err = ctx.builder().migrate(false).build().await.unwrap_err();
    assert!(
        err.to_string().contains("version 1, this build needs"),
        "{err}"
    );
    ctx.done().await;
}

// ------------------------------------------------------- model-based test

/// What the scripted publisher answers for the k-th call of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Ok,
    Reject,
    Unavailable,
}

#[derive(Debug, Clone)]
pub enum Op {
    /// Record `count` events in one transaction, committed or rolled back.
    Record {
        count: i64,
        commit: bool,
    },
    /// `run(limit)` with a publisher answering `pattern[k % len]` to its k-th call.
    Run {
        limit: usize,
        pattern: Vec<Answer>,
    },
    RequeueAll,
    /// A relay claims up to `limit` entries, publishes them all, and dies
    /// before recording any outcome.
    Crash {
        limit: usize,
    },
}

pub fn op_strategy() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    let answer = prop_oneof![6 => Just(Answer::Ok), 3 => Just(Answer::Reject), 1 => Just(Answer::Unavailable)];
    prop_oneof![
        4 => (1i64..4, proptest::bool::weighted(0.7)).prop_map(|(count, commit)| Op::Record { count, commit }),
        4 => (1usize..6, proptest::collection::vec(answer, 1..4)).prop_map(|(limit, pattern)| Op::Run { limit, pattern }),
        1 => Just(Op::RequeueAll),
        1 => (1usize..4).prop_map(|limit| Op::Crash { limit }),
    ]
}

/// The promised semantics, in memory.
#[derive(Debug, Default)]
struct Model {
    next_invoice: i64,
    /// Committed, not yet published: invoice -> (attempts, dead).
    entries: std::collections::BTreeMap<i64, (i64, bool)>,
    committed: std::collections::BTreeSet<i64>,
    /// How often each invoice may have been delivered so far (1 + crashes it was caught in).
    allowed: std::collections::BTreeMap<i64, usize>,
    /// Invoices whose publication was confirmed (settled).
    published: std::collections::BTreeSet<i64>,
}

impl Model {
    fn due(&self, limit: usize) -> Vec<i64> {
        self.entries
            .iter()
            .filter(|(_, (_, dead))| !dead)
            .map(|(id, _)| *id)
            .take(limit)
            .collect()
    }

    fn run(&mut self, limit: usize, pattern: &[Answer]) {
        let mut stopped = false;
        for (k, id) in self.due(limit).into_iter().enumerate() {
            if stopped {
                continue;
            }
            match pattern[k % pattern.len()] {
                Answer::Ok => {
                    self.entries.remove(&id);
                    self.published.insert(id);
                    *self.allowed.entry(id).or_default() += 1;
                }
                Answer::Reject => {
                    let entry = self.entries.get_mut(&id).unwrap();
                    entry.0 += 1;
                    entry.1 = entry.0 >= 3;
                }
                Answer::Unavailable => stopped = true,
            }
        }
    }
}

/// A publisher driven by a script; records every call's invoice.
#[derive(Clone, Default)]
struct Scripted {
    pattern: Arc<Mutex<Vec<Answer>>>,
    calls: Arc<AtomicUsize>,
    delivered: Arc<Mutex<Vec<i64>>>,
}

impl Publisher<InvoicePaid> for Scripted {
    async fn publish(&self, event: &Recorded<InvoicePaid>) -> Result<(), PublishError> {
        let k = self.calls.fetch_add(1, Ordering::SeqCst);
        let answer = {
            let pattern = self.pattern.lock().unwrap();
            pattern[k % pattern.len()]
        };
        match answer {
            Answer::Ok => {
                self.delivered
                    .lock()
                    .unwrap()
                    .push(event.event().invoice_id);
                Ok(())
            }
            Answer::Reject => Err(PublishError::rejected("scripted rejection")),
            Answer::Unavailable => Err(PublishError::unavailable("scripted outage")),
        }
    }
}

/// Publishes the whole batch, then hangs: dropped, it is a relay that died
/// between publishing and recording the outcomes.
struct DiesAfterPublishing(Arc<Mutex<Vec<i64>>>);

impl Publisher<InvoicePaid> for DiesAfterPublishing {
    async fn publish(&self, _: &Recorded<InvoicePaid>) -> Result<(), PublishError> {
        unreachable!("publish_batch is overridden")
    }

    async fn publish_batch(
        &self,
        events: &[Recorded<InvoicePaid>],
    ) -> Vec<Result<(), PublishError>> {
        self.0
            .lock()
            .unwrap()
            .extend(events.iter().map(|e| e.event().invoice_id));
        std::future::pending().await
    }
}

const CRASH_LEASE: Duration = Duration::from_millis(300);

async fn check_model<H: Harness>(
    ctx: &Ctx<H>,
    model: &Model,
    ids: &std::collections::HashMap<Uuid, i64>,
    delivered: &[i64],
) {
    let rows = ctx.rows().await;
    let actual: Vec<(i64, i64, bool)> = rows
        .iter()
        .map(|r| (ids[&r.event_id], r.attempts, r.status == "dead"))
        .collect();
    let expected: Vec<(i64, i64, bool)> = model
        .entries
        .iter()
        .map(|(id, (a, d))| (*id, *a, *d))
        .collect();
    assert_eq!(actual, expected, "table rows match the model");
    let mut counts = std::collections::BTreeMap::<i64, usize>::new();
    for id in delivered {
        *counts.entry(*id).or_default() += 1;
    }
    for (id, n) in &counts {
        assert!(
            model.committed.contains(id),
            "invoice {id} was rolled back but delivered"
        );
        assert!(
            *n <= model.allowed.get(id).copied().unwrap_or(0),
            "invoice {id} delivered {n} times: more than allowed"
        );
    }
    for id in &model.published {
        assert!(
            counts.contains_key(id),
            "invoice {id} settled as published but never delivered"
        );
    }
}

async fn model_case<H: Harness>(ops: Vec<Op>) {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx.builder().max_attempts(3).build().await.unwrap();
    let crasher = ctx.builder().lease(CRASH_LEASE).build().await.unwrap();
    let scripted = Scripted::default();
    // No pause after an outage: the model's runs take the entries again at once.
    let publishers = Publishers::builder()
        .publisher(scripted.clone())
        .max_pause(Duration::ZERO)
        .build()
        .unwrap();
    let crash_publishers = Publishers::builder()
        .publisher(DiesAfterPublishing(scripted.delivered.clone()))
        .build()
        .unwrap();
    let mut model = Model::default();
    let mut ids = std::collections::HashMap::new();
    for op in ops {
        match op {
            Op::Record { count, commit } => {
                let mut tx = ctx.pool.begin().await.unwrap();
                for _ in 0..count {
                    model.next_invoice += 1;
                    let id = model.next_invoice;
                    let rec = outbox.record(&mut *tx, &paid(id)).await.unwrap();
                    ids.insert(rec.event_id().unwrap(), id);
                    if commit {
                        model.entries.insert(id, (0, false));
                        model.committed.insert(id);
                    }
                }
                if commit {
                    tx.commit().await.unwrap();
                } else {
                    tx.rollback().await.unwrap();
                }
            }
            Op::Run { limit, pattern } => {
                scripted.pattern.lock().unwrap().clone_from(&pattern);
                scripted.calls.store(0, Ordering::SeqCst);
                outbox.run(&publishers, limit).await.unwrap();
                model.run(limit, &pattern);
            }
            Op::RequeueAll => {
                outbox.requeue_all().await.unwrap();
                for entry in model.entries.values_mut() {
                    if entry.1 {
                        *entry = (0, false);
                    }
                }
            }
            Op::Crash { limit } => {
                let died = tokio::time::timeout(
                    Duration::from_millis(100),
                    crasher.run(&crash_publishers, limit),
                )
                .await;
                let caught = model.due(limit);
                assert_eq!(
                    died.is_err(),
                    !caught.is_empty(),
                    "a relay that claimed something never settles"
                );
                for id in caught {
                    *model.allowed.entry(id).or_default() += 1;
                }
                // Its lease runs out; the entries are due again, attempts unchanged.
                tokio::time::sleep(CRASH_LEASE + Duration::from_millis(100)).await;
            }
        }
        let delivered = scripted.delivered.lock().unwrap().clone();
        check_model(&ctx, &model, &ids, &delivered).await;
    }
    // Finally everything committed is delivered: requeue the dead, publish all.
    outbox.requeue_all().await.unwrap();
    *scripted.pattern.lock().unwrap() = vec![Answer::Ok];
    while outbox.run(&publishers, 100).await.unwrap().claimed > 0 {}
    let delivered: std::collections::BTreeSet<i64> =
        scripted.delivered.lock().unwrap().iter().copied().collect();
    assert_eq!(
        delivered, model.committed,
        "exactly the committed events are delivered"
    );
    assert!(ctx.rows().await.is_empty());
    ctx.done().await;
}

/// Random sequences of record / commit / rollback / run / fail / requeue /
/// crash, checked after every step against an in-memory model of the
/// promised semantics.
pub async fn model_based_sequences_match_the_model<H: Harness>() {
    use proptest::strategy::{Strategy, ValueTree};
    let cases: u32 = std::env::var("OUTBOX_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases,
        ..proptest::test_runner::Config::default()
    });
    let strategy = proptest::collection::vec(op_strategy(), 1..25);
    for _ in 0..cases {
        let ops = strategy.new_tree(&mut runner).unwrap().current();
        let shown = format!("{ops:?}");
        let outcome = tokio::spawn(model_case::<H>(ops)).await;
        if let Err(err) = outcome {
            panic!("model violated for ops {shown}: {err}");
        }
    }
}

/// Instantiates every test of the suite for one harness.
#[macro_export]
macro_rules! backend_suite {
    ($harness:ty) => {
        $crate::backend_suite!(@tests $harness;
            empty_outbox_makes_no_call,
            limit_takes_exactly_that_many,
            one_event_one_call_with_its_metadata,
            published_entry_is_never_published_again,
            always_failing_publisher_ends_in_dead_letter,
            filter_rejecting_everything_writes_nothing,
            name_filter_selects_by_prefix,
            skip_and_publish_if_write_nothing,
            events_arrive_in_record_order,
            rollback_leaves_no_row,
            mixed_batch_commits_every_outcome,
            order_after_failure_and_retry,
            unavailable_blocks_the_publisher_without_attempts,
            one_failing_event_never_stalls_the_others,
            transient_everywhere_blocks_without_dead_letters,
            undecodable_payload_is_dead_at_once,
            unroutable_entry_stays_pending,
            catch_all_takes_unclaimed_entries,
            panicking_publisher_is_a_failed_attempt,
            requeue_and_purge_dead_letters,
            batch_record_mixes_types_in_one_insert,
            bad_table_names_are_refused,
            oversized_payload_is_refused,
            duplicate_publisher_is_refused,
            application_writes_while_publisher_runs,
            slow_batch_renews_its_lease,
            lost_claim_is_reported_not_counted,
            relay_loop_runs_and_stops_gracefully,
            shutdown_finishes_the_batch_in_flight,
            migrate_is_idempotent,
            four_relays_publish_each_entry_exactly_once,
            four_relays_with_failures_lose_nothing,
            per_stream_order_holds_under_failures,
            relay_loops_past_a_backlog_keep_order_and_retries,
            dead_letter_holds_back_its_stream,
            retention_keeps_published_then_cleans_up,
            relay_loop_cleans_up_expired_entries,
            stats_report_pending_retrying_dead_and_age,
            shutdown_under_load_publishes_nothing_twice,
            dead_letters_by_id_name_and_age,
            hanging_publish_times_out_as_transient,
            panic_in_a_batch_is_charged_to_its_entry,
            poison_row_holds_back_its_stream,
            foreign_or_outdated_table_is_named,
            model_based_sequences_match_the_model,
            version_1_entry_reaches_the_version_3_publisher,
            publish_upcast_hands_on_the_current_version,
            renamed_type_receives_entries_of_its_old_name,
            newer_version_waits_without_attempts_for_newer_code,
            old_version_dead_letter_is_delivered_once_an_upcaster_exists,
            catch_all_publishes_every_version_as_stored,
            a_name_and_its_aliases_take_one_publisher,
        );
    };
    (@tests $harness:ty; $($name:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                common::$name::<$harness>().await;
            }
        )*
    };
}

/// A table name unique to this process and call.
pub fn unique_table(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let rand = Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}_{n}", &rand[..10])
}
