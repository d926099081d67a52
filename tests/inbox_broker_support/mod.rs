//! What the broker inbox suites (`inbox_nats`, `inbox_redis`,
//! `inbox_kafka`) share: service A's outbox and service B's inbox and
//! business table on the local PostgreSQL (tables of their own per test),
//! recording events (of version 2) with every kind of metadata, a typed
//! consumer that writes one business row per event with the version it
//! received (not unique on the event id, so a doubled effect shows), the
//! exact check of those rows against what was recorded, and the poison and
//! version messages a test publishes by hand.

#![allow(dead_code)] // Reason: each test binary uses a different subset of the helpers.
#![allow(unreachable_pub)] // Reason: shared by several test crates through `mod inbox_broker_support`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use outbox::inbox::{ConsumeError, ConsumeReport, Consumers, Inbox, Source, Tx};
use outbox::{Metadata, Outbox, Publishers, Recorded};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// The event service A records and service B consumes, at version 2 on
/// both sides: the version travels with each message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvoicePaid {
    pub invoice_id: i64,
    pub note: String,
}

impl outbox::Event for InvoicePaid {
    const NAME: &'static str = "inbox_test.invoice_paid";
    const VERSION: u32 = 2;
}

/// A poison payload: an [`InvoicePaid`] that does not decode.
pub const UNDECODABLE: &str = "{\"invoice_id\": \"seven\"}";

/// A payload that decodes, for a poison message without an event id.
pub const WITHOUT_ID: &str = "{\"invoice_id\": 7, \"note\": \"\"}";

/// Three messages a poison test publishes by hand beside the poison ones,
/// each with the payload [`WITHOUT_ID`] and an event id: one without a
/// version (a sender from before versions: version 1), one of version 2
/// ([`InvoicePaid`]'s), and one of version 3, newer than the consumer
/// knows (a dead letter).
pub struct Versions {
    pub unversioned: Uuid,
    pub current: Uuid,
    pub newer: Uuid,
}

impl Versions {
    /// Fresh event ids.
    pub fn fresh() -> Self {
        Self {
            unversioned: Uuid::now_v7(),
            current: Uuid::now_v7(),
            newer: Uuid::now_v7(),
        }
    }

    /// Each message's event id and version header value (none for the
    /// first).
    pub fn messages(&self) -> [(Uuid, Option<&'static str>); 3] {
        [
            (self.unversioned, None),
            (self.current, Some("2")),
            (self.newer, Some("3")),
        ]
    }
}

/// A pool on the local PostgreSQL (`DATABASE_URL`).
pub async fn pool() -> PgPool {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_owned());
    PgPoolOptions::new()
        .max_connections(12)
        .connect(&url)
        .await
        .expect("PostgreSQL at DATABASE_URL (default postgres://root@127.0.0.1:5432/test)")
}

/// Service A's outbox and service B's inbox and business table, each a
/// table of this test's own.
pub struct Services {
    pub pool: PgPool,
    pub outbox: Outbox<Postgres>,
    pub inbox: Inbox<Postgres>,
    pub business: String,
    suffix: String,
}

impl Services {
    pub async fn new() -> Self {
        let pool = pool().await;
        let suffix = Uuid::new_v4().simple().to_string();
        let outbox = Outbox::builder(pool.clone())
            .table(format!("outbox_{suffix}"))
            .build()
            .await
            .unwrap();
        let inbox = Inbox::builder(pool.clone())
            .table(format!("inbox_{suffix}"))
            .build()
            .await
            .unwrap();
        let business = format!("paid_{suffix}");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE {business} (event_id uuid NOT NULL, invoice_id bigint NOT NULL, \
             note text NOT NULL, stream_key text, headers text NOT NULL, \
             correlation_id uuid, causation_id uuid, version bigint NOT NULL)"
        )))
        .execute(&pool)
        .await
        .unwrap();
        Self {
            pool,
            outbox,
            inbox,
            business,
            suffix,
        }
    }

    /// Records `n` events in transactions of 10: stream keys over three
    /// streams, two headers, a correlation id on every 2nd, a causation id
    /// on every 3rd.
    pub async fn record(&self, n: i64) -> Vec<Expected> {
        let mut expected = Vec::new();
        let mut tx = self.pool.begin().await.unwrap();
        for i in 0..n {
            let event = InvoicePaid {
                invoice_id: i,
                note: format!("naïve \"quoted\" ✓ {i}"),
            };
            let stream_key = format!("invoice-{}", i % 3);
            let headers: BTreeMap<String, String> = [
                ("tenant".to_owned(), format!("tenant-{}", i % 2)),
                ("x-seq".to_owned(), i.to_string()),
            ]
            .into();
            let correlation_id = (i % 2 == 0).then(Uuid::now_v7);
            let causation_id = (i % 3 == 0).then(Uuid::now_v7);
            let mut meta = Metadata::new().stream_key(stream_key.clone());
            for (k, v) in &headers {
                meta = meta.header(k.clone(), v.clone());
            }
            if let Some(id) = correlation_id {
                meta = meta.correlation_id(id);
            }
            if let Some(id) = causation_id {
                meta = meta.causation_id(id);
            }
            let recording = self
                .outbox
                .record_with(&mut *tx, &event, meta)
                .await
                .unwrap();
            expected.push(Expected {
                event_id: recording.event_id().expect("stored"),
                invoice_id: i,
                note: event.note,
                stream_key: Some(stream_key),
                headers,
                correlation_id,
                causation_id,
                version: <InvoicePaid as outbox::Event>::VERSION,
            });
            if i % 10 == 9 {
                tx.commit().await.unwrap();
                tx = self.pool.begin().await.unwrap();
            }
        }
        tx.commit().await.unwrap();
        expected
    }

    /// Runs the relay loop with `publishers` until [`Relay::stop`].
    pub fn relay(&self, publishers: Publishers) -> Relay {
        let (stop, stopped) = oneshot::channel::<()>();
        let relay = self.outbox.relay(publishers);
        let task = tokio::spawn(async move {
            relay
                .run(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Relay { stop, task }
    }

    /// The consumer: one business row per event, with its metadata.
    pub fn consumers(&self) -> Consumers<Postgres> {
        consumers(self.business.clone(), None)
    }

    /// Business rows, in no particular order.
    pub async fn rows(&self) -> Vec<Expected> {
        type Row = (
            Uuid,
            i64,
            String,
            Option<String>,
            String,
            Option<Uuid>,
            Option<Uuid>,
            i64,
        );
        let rows: Vec<Row> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT event_id, invoice_id, note, stream_key, headers, correlation_id, causation_id, version FROM {}",
                self.business
            )))
            .fetch_all(&self.pool)
            .await
            .unwrap();
        rows.into_iter()
            .map(
                |(
                    event_id,
                    invoice_id,
                    note,
                    stream_key,
                    headers,
                    correlation_id,
                    causation_id,
                    version,
                )| Expected {
                    event_id,
                    invoice_id,
                    note,
                    stream_key,
                    headers: serde_json::from_str(&headers).unwrap(),
                    correlation_id,
                    causation_id,
                    version: u32::try_from(version).unwrap(),
                },
            )
            .collect()
    }

    pub async fn count(&self) -> usize {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM {}",
            self.business
        )))
        .fetch_one(&self.pool)
        .await
        .unwrap();
        usize::try_from(n).unwrap()
    }

    /// Waits (up to 60 s) until the business table holds `n` rows.
    pub async fn wait_for_rows(&self, n: usize) {
        until(&format!("{n} business rows"), || async {
            self.count().await >= n
        })
        .await;
    }

    /// Checks that the business table holds exactly one row per expected
    /// event, with the metadata that was recorded.
    pub async fn check_exactly_once(&self, expected: &[Expected]) {
        let mut rows = self.rows().await;
        rows.sort_by_key(|row| row.invoice_id);
        let mut want = expected.to_vec();
        want.sort_by_key(|row| row.invoice_id);
        assert_eq!(rows.len(), want.len(), "one business row per event");
        assert_eq!(rows, want);
    }

    /// Checks a loop that consumed every event of `expected` once, with
    /// nothing dead or doubled: the business rows, the report and the
    /// inbox's count of processed ids.
    pub async fn check_clean_run(&self, report: &ConsumeReport, expected: &[Expected]) {
        self.check_exactly_once(expected).await;
        let n = u64::try_from(expected.len()).unwrap();
        assert_eq!(report.processed, n);
        assert_eq!(report.duplicates, 0);
        assert_eq!(report.dead, 0);
        assert_eq!(report.ack_failures, 0);
        assert_eq!(self.inbox.stats().await.unwrap().processed, n);
    }

    /// Runs a loop over `source` whose consumer processes 5 events, then
    /// hangs on the next 4 (`max_in_flight`) with more waiting in its
    /// source, and kills it: its loop aborted, its source dropped.
    pub async fn hang_and_kill(&self, source: impl Source + 'static) {
        let calls = Arc::new(AtomicUsize::new(0));
        let hanging = consumers(self.business.clone(), Some((5, Arc::clone(&calls))));
        let first = Running::start(&self.inbox, hanging, source);
        until("4 hanging consumers", || async {
            calls.load(Ordering::SeqCst) == 9
        })
        .await;
        assert_eq!(self.count().await, 5);
        first.task.abort();
        assert!(first.task.await.unwrap_err().is_cancelled());
    }

    /// Checks a loop over the two poison messages, [`UNDECODABLE`] under
    /// the event id `bad_id` and [`WITHOUT_ID`] without one, and the
    /// [`Versions`] messages. The poison ones are dead letters with their
    /// reasons; the unversioned one reached the consumer as version 1, the
    /// version-2 one as version 2; the version-3 one is a dead letter that
    /// says it is newer than the consumer knows.
    pub async fn check_poison(&self, report: &ConsumeReport, bad_id: Uuid, versions: &Versions) {
        assert_eq!(report.dead, 3, "{report:?}");
        assert_eq!(report.processed, 2, "{report:?}");
        let versions_seen: BTreeMap<Uuid, u32> = self
            .rows()
            .await
            .into_iter()
            .map(|row| (row.event_id, row.version))
            .collect();
        assert_eq!(
            versions_seen,
            BTreeMap::from([(versions.unversioned, 1), (versions.current, 2)]),
            "the versions the consumer received"
        );
        let dead = self.inbox.dead_letters(10).await.unwrap();
        assert_eq!(dead.len(), 3, "{dead:?}");
        let newer = dead
            .iter()
            .find(|d| d.event_id == versions.newer)
            .expect("the newer version is a dead letter");
        assert!(newer.reason.contains("newer"), "{}", newer.reason);
        assert_eq!(newer.version, 3, "{newer:?}");
        let undecodable = dead
            .iter()
            .find(|d| d.event_id == bad_id)
            .expect("by its id");
        assert!(
            undecodable.reason.contains("does not decode"),
            "{}",
            undecodable.reason
        );
        assert_eq!(undecodable.payload, UNDECODABLE);
        assert!(
            dead.iter().any(|d| d.reason.contains("no event id")),
            "{dead:?}"
        );
    }

    /// Drops the test's tables.
    pub async fn cleanup(self) {
        for table in [
            format!("outbox_{}", self.suffix),
            format!("outbox_{}_blocked", self.suffix),
            format!("inbox_{}", self.suffix),
            format!("inbox_{}_schema", self.suffix),
            self.business.clone(),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP TABLE IF EXISTS {table} CASCADE"
            )))
            .execute(&self.pool)
            .await
            .unwrap();
        }
    }
}

/// A consumer writing one business row per event; with `gate`, it counts
/// its calls and, from call `gate.0` on, never finishes (a consumer that
/// hangs with its messages unacknowledged).
pub fn consumers(business: String, gate: Option<(usize, Arc<AtomicUsize>)>) -> Consumers<Postgres> {
    Consumers::builder()
        .on(move |tx: &mut Tx<Postgres>, paid: Recorded<InvoicePaid>| {
            let business = business.clone();
            let gate = gate.clone();
            Box::pin(async move {
                if let Some((hang_from, calls)) = gate {
                    let call = calls.fetch_add(1, Ordering::SeqCst);
                    if call >= hang_from {
                        std::future::pending::<()>().await;
                    }
                }
                insert(tx, &business, &paid).await
            })
        })
        .build()
        .unwrap()
}

async fn insert(
    tx: &mut Tx<Postgres>,
    business: &str,
    paid: &Recorded<InvoicePaid>,
) -> Result<(), ConsumeError> {
    let entry = paid.entry();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {business} (event_id, invoice_id, note, stream_key, headers, correlation_id, causation_id, version) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    )))
    .bind(entry.event_id())
    .bind(paid.event().invoice_id)
    .bind(&paid.event().note)
    .bind(entry.stream_key())
    .bind(serde_json::to_string(entry.headers()).unwrap())
    .bind(entry.correlation_id())
    .bind(entry.causation_id())
    .bind(i64::from(paid.version()))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A recorded event, or a business row made from one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub event_id: Uuid,
    pub invoice_id: i64,
    pub note: String,
    pub stream_key: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub correlation_id: Option<Uuid>,
    pub causation_id: Option<Uuid>,
    /// The event version: recorded, or as the consumer received it.
    pub version: u32,
}

/// A running relay loop.
pub struct Relay {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Relay {
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

/// A running consumer loop and its shutdown.
pub struct Running {
    stop: oneshot::Sender<()>,
    pub task: JoinHandle<ConsumeReport>,
}

impl Running {
    /// Runs `inbox.consume(consumers)` (`max_in_flight` 4) over `source`.
    pub fn start(
        inbox: &Inbox<Postgres>,
        consumers: Consumers<Postgres>,
        source: impl Source + 'static,
    ) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let consume = inbox
            .consume(consumers)
            .max_in_flight(4)
            .poll_interval(Duration::from_millis(200));
        let task = tokio::spawn(consume.run(source, async {
            let _ = stopped.await;
        }));
        Self { stop, task }
    }

    /// Shuts the loop down and returns its report.
    pub async fn stop(self) -> ConsumeReport {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the loop stops")
            .unwrap()
    }
}

/// Polls `check` every 20 ms until it holds; panics after 60 s.
pub async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_mins(1);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
