//! What the broker suites (`amqp`, `amqp_outage`, `nats`, `kafka`) share:
//! two event types (of versions 1 and 2), a SQLite outbox in a fresh temp
//! file, recording N events with several stream keys and headers, and
//! checking what came back from the broker against what was recorded,
//! version header included.

#![allow(dead_code)] // Reason: each test binary uses a different subset of the helpers.
#![allow(unreachable_pub)] // Reason: shared by several test crates through `mod broker_support`.

pub mod blocked;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use outbox::{Metadata, Outbox};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{Sqlite, SqlitePool};
use uuid::Uuid;

/// Published through a typed publisher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, outbox::Event)]
#[outbox(name = "shop.order_placed")]
pub struct OrderPlaced {
    pub order: u32,
    pub seq: u32,
    pub amount_cents: i64,
    pub note: String,
}

/// Published through the catch-all (raw) publisher. Version 2, so the
/// version header is checked with a version other than the default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderShipped {
    pub order: u32,
    pub seq: u32,
}

impl outbox::Event for OrderShipped {
    const NAME: &'static str = "shop.order_shipped";
    const VERSION: u32 = 2;
}

/// The header the AMQP, NATS and Kafka publishers carry the event version
/// in (each module's `VERSION_HEADER`).
pub const VERSION_HEADER: &str = "outbox-event-version";

/// A unique suffix for queue, exchange, stream and subject names.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", Uuid::new_v4().simple())
}

/// A SQLite outbox in a fresh file.
pub async fn sqlite_outbox(
    configure: impl FnOnce(outbox::OutboxBuilder<Sqlite>) -> outbox::OutboxBuilder<Sqlite>,
) -> (Outbox<Sqlite>, SqlitePool) {
    let dir = std::env::temp_dir().join("outbox-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{}.db", Uuid::new_v4()));
    let options = SqliteConnectOptions::new()
        .filename(&file)
        .create_if_missing(true)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .unwrap();
    let outbox = configure(Outbox::builder(pool.clone()))
        .build()
        .await
        .unwrap();
    (outbox, pool)
}

/// Rows still in the outbox table that are not dead letters.
pub async fn pending(pool: &SqlitePool) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE status <> 'dead'")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// What was recorded, to compare with what the broker delivers.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    pub event_id: Uuid,
    pub name: String,
    /// The recording type's `Event::VERSION`.
    pub version: u32,
    pub payload: String,
    pub stream_key: String,
    pub headers: BTreeMap<String, String>,
    pub correlation_id: Option<Uuid>,
}

/// What came back from the broker.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub event_id: Uuid,
    pub name: String,
    pub payload: String,
    /// Every header of the message.
    pub headers: BTreeMap<String, String>,
}

pub const STREAMS: u32 = 5;

/// Records `n` events (`first..first + n` as global numbers) over
/// [`STREAMS`] stream keys, in transactions of 50, with headers; mostly
/// `OrderPlaced`, every 4th and 5th of 7 an `OrderShipped`, so batches of
/// one name hold several entries.
pub async fn record(
    outbox: &Outbox<Sqlite>,
    pool: &SqlitePool,
    first: u32,
    n: u32,
) -> Vec<Expected> {
    let mut expected = Vec::with_capacity(n as usize);
    let mut i = first;
    while i < first + n {
        let mut tx = pool.begin().await.unwrap();
        let mut batch = outbox.batch();
        let end = (i + 50).min(first + n);
        for k in i..end {
            let order = k % STREAMS;
            let stream_key = format!("order-{order}");
            let correlation = (k % 3 == 0).then(Uuid::now_v7);
            let mut meta = Metadata::new()
                .stream_key(stream_key.clone())
                .header("tenant", format!("tenant-{}", k % 2))
                .header("seq", k.to_string());
            if let Some(id) = correlation {
                meta = meta.correlation_id(id);
            }
            let headers: BTreeMap<String, String> = [
                ("tenant".to_owned(), format!("tenant-{}", k % 2)),
                ("seq".to_owned(), k.to_string()),
            ]
            .into();
            let (name, version, payload, recording) = if k % 7 >= 5 {
                let event = OrderShipped { order, seq: k };
                let payload = serde_json::to_string(&event).unwrap();
                (
                    "shop.order_shipped",
                    2,
                    payload,
                    batch.push_with(&event, meta).unwrap(),
                )
            } else {
                let event = OrderPlaced {
                    order,
                    seq: k,
                    amount_cents: i64::from(k) * 100 + 1,
                    note: "naïve \"quoted\" ✓ \\ end".to_owned(),
                };
                let payload = serde_json::to_string(&event).unwrap();
                (
                    "shop.order_placed",
                    1,
                    payload,
                    batch.push_with(&event, meta).unwrap(),
                )
            };
            expected.push(Expected {
                event_id: recording.event_id().expect("stored"),
                name: name.to_owned(),
                version,
                payload,
                stream_key,
                headers,
                correlation_id: correlation,
            });
        }
        batch.record(&mut tx).await.unwrap();
        tx.commit().await.unwrap();
        i = end;
    }
    expected
}

/// Checks that `received` is exactly `expected` (same ids, names, payloads,
/// headers, stream keys), each once, and in record order per stream (with
/// batches pipelined, only per-stream order keeps that).
/// `stream_key_header` and `correlation_header` name the adapter's headers.
pub fn check_exactly(
    expected: &[Expected],
    received: &[Received],
    stream_key_header: &str,
    correlation_header: &str,
) {
    assert_eq!(received.len(), expected.len(), "message count");
    check_contents(expected, received, stream_key_header, correlation_header);
    // Order per stream: the stream's events arrive in record order.
    let mut want: HashMap<&str, Vec<Uuid>> = HashMap::new();
    for e in expected {
        want.entry(&e.stream_key).or_default().push(e.event_id);
    }
    let mut got: HashMap<&str, Vec<Uuid>> = HashMap::new();
    for r in received {
        got.entry(r.headers[stream_key_header].as_str())
            .or_default()
            .push(r.event_id);
    }
    assert_eq!(got.len(), STREAMS as usize);
    for (stream, ids) in &want {
        assert_eq!(&got[stream], ids, "order of stream {stream}");
    }
}

/// Checks every received message against its recorded event (its
/// [`VERSION_HEADER`] too) and that every recorded event arrived at least
/// once; returns how many were duplicates.
pub fn check_contents(
    expected: &[Expected],
    received: &[Received],
    stream_key_header: &str,
    correlation_header: &str,
) -> usize {
    let by_id: HashMap<Uuid, &Expected> = expected.iter().map(|e| (e.event_id, e)).collect();
    let mut seen: HashMap<Uuid, usize> = HashMap::new();
    for r in received {
        let e = by_id
            .get(&r.event_id)
            .unwrap_or_else(|| panic!("unknown event id {}", r.event_id));
        assert_eq!(r.name, e.name, "name of {}", r.event_id);
        assert_eq!(r.payload, e.payload, "payload of {}", r.event_id);
        assert_eq!(
            r.headers.get(VERSION_HEADER),
            Some(&e.version.to_string()),
            "version of {} ({})",
            r.event_id,
            e.name
        );
        for (k, v) in &e.headers {
            assert_eq!(r.headers.get(k), Some(v), "header {k} of {}", r.event_id);
        }
        assert_eq!(
            r.headers.get(stream_key_header),
            Some(&e.stream_key),
            "stream key of {}",
            r.event_id
        );
        assert_eq!(
            r.headers.get(correlation_header).map(String::as_str),
            e.correlation_id.map(|id| id.to_string()).as_deref(),
            "correlation id of {}",
            r.event_id
        );
        *seen.entry(r.event_id).or_default() += 1;
    }
    let missing: Vec<_> = expected
        .iter()
        .filter(|e| !seen.contains_key(&e.event_id))
        .map(|e| e.event_id)
        .collect();
    assert!(
        missing.is_empty(),
        "{} events never arrived: {missing:?}",
        missing.len()
    );
    received.len() - seen.len()
}

/// Records `n` `OrderPlaced` events (one name, so the relay hands the
/// publisher whole batches), 1,000 per transaction.
pub async fn record_placed(outbox: &Outbox<Sqlite>, pool: &SqlitePool, n: u32) {
    let mut i = 0;
    while i < n {
        let end = (i + 1_000).min(n);
        let events: Vec<OrderPlaced> = (i..end)
            .map(|k| OrderPlaced {
                order: k % STREAMS,
                seq: k,
                amount_cents: i64::from(k),
                note: "benchmark".to_owned(),
            })
            .collect();
        let mut tx = pool.begin().await.unwrap();
        outbox.record_all(&mut tx, &events).await.unwrap();
        tx.commit().await.unwrap();
        i = end;
    }
}

/// Drains the outbox with `outbox.run(publishers, limit)` and returns
/// events per second (published entries over wall time).
pub async fn drain_rate(
    outbox: &Outbox<Sqlite>,
    publishers: &outbox::Publishers,
    limit: usize,
) -> (usize, f64) {
    let started = std::time::Instant::now();
    let mut published = 0;
    loop {
        let report = outbox.run(publishers, limit).await.unwrap();
        assert_eq!(
            report.dead + report.retried + report.unavailable,
            0,
            "{report:?}"
        );
        published += report.published;
        if report.claimed == 0 {
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    #[allow(clippy::cast_precision_loss)] // Reason: a rate for display.
    let rate = published as f64 / secs;
    (published, rate)
}
