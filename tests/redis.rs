//! The Redis Streams publisher against the local Redis (`REDIS_URL`,
//! default `redis://127.0.0.1:6379`), with SQLite outboxes. Every test uses
//! its own stream keys and deletes them at the end.

mod lite;

use std::collections::BTreeMap;
use std::time::Duration;

use lite::{Expected, InvoicePaid, Lite};
use outbox::publisher::redis::RedisStreamPublisher;
use outbox::{Metadata, Publishers};
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamId, StreamRangeReply};
use uuid::Uuid;

fn url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

async fn conn() -> MultiplexedConnection {
    redis::Client::open(url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// A stream-key prefix no other test (or run) uses.
fn prefix() -> String {
    format!("outbox-test:{}", Uuid::new_v4().simple())
}

async fn xrange(conn: &mut MultiplexedConnection, key: &str) -> Vec<StreamId> {
    let reply: StreamRangeReply = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .unwrap();
    reply.ids
}

async fn del(conn: &mut MultiplexedConnection, keys: &[String]) {
    let _: i64 = redis::cmd("DEL").arg(keys).query_async(conn).await.unwrap();
}

fn field(entry: &StreamId, name: &str) -> Option<String> {
    entry.get::<String>(name)
}

/// Checks one stream entry against the event it should carry.
fn assert_carries(entry: &StreamId, want: &Expected) {
    assert_eq!(
        field(entry, "event_id").as_deref(),
        Some(want.event_id.hyphenated().to_string().as_str())
    );
    assert_eq!(field(entry, "name").as_deref(), Some(want.name.as_str()));
    assert_eq!(
        field(entry, "payload").as_deref(),
        Some(want.payload.as_str()),
        "the stored payload, byte for byte"
    );
    let headers: BTreeMap<String, String> =
        serde_json::from_str(&field(entry, "headers").unwrap()).unwrap();
    assert_eq!(headers, want.headers);
    assert_eq!(field(entry, "stream_key"), want.stream_key);
    assert_eq!(
        field(entry, "correlation_id"),
        want.correlation_id.map(|id| id.hyphenated().to_string())
    );
    assert!(!entry.contains_key("causation_id"));
}

/// 200 events of two types over several stream keys: a typed publisher for
/// one type and the catch-all for the other, one Redis stream per event
/// name; read back with XRANGE, every event once, in record order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_in_order_with_their_metadata() {
    let db = Lite::new().await;
    let outbox = db.outbox().await;
    let expected = db.record_mixed(&outbox, 200, 5).await;
    assert_eq!(expected.len(), 200);

    let prefix = prefix();
    let p = prefix.clone();
    let redis = RedisStreamPublisher::builder(url())
        .stream_fn(move |entry| format!("{p}:{}", entry.name()))
        .build()
        .unwrap();
    let publishers = Publishers::builder()
        .publisher::<InvoicePaid, _>(redis.clone())
        .fallback(redis)
        .build()
        .unwrap();
    let mut published = 0;
    loop {
        let report = outbox.run(&publishers, 64).await.unwrap();
        assert_eq!(
            report.published, report.claimed,
            "every claimed event is published: {report:?}"
        );
        if report.claimed == 0 {
            break;
        }
        published += report.published;
    }
    assert_eq!(published, 200);
    assert!(
        db.rows().await.is_empty(),
        "published entries leave the table"
    );

    let mut conn = conn().await;
    let mut keys = Vec::new();
    for name in ["billing.invoice_paid", "shipping.parcel_sent"] {
        let key = format!("{prefix}:{name}");
        let got = xrange(&mut conn, &key).await;
        let want: Vec<&Expected> = expected.iter().filter(|e| e.name == name).collect();
        assert_eq!(got.len(), want.len(), "{key}");
        for (entry, want) in got.iter().zip(want) {
            assert_carries(entry, want);
        }
        keys.push(key);
    }
    del(&mut conn, &keys).await;
    db.done().await;
}

/// `max_len` trims the stream (approximately: whole macro nodes), keeping
/// the newest entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_len_trims_the_stream() {
    let db = Lite::new().await;
    let outbox = db.outbox().await;
    let expected = db.record_mixed(&outbox, 600, 3).await;
    let key = format!("{}:capped", prefix());
    let redis = RedisStreamPublisher::builder(url())
        .stream(key.clone())
        .max_len(10)
        .build()
        .unwrap();
    let publishers = Publishers::builder().fallback(redis).build().unwrap();
    while outbox.run(&publishers, 100).await.unwrap().claimed > 0 {}

    let mut conn = conn().await;
    let got = xrange(&mut conn, &key).await;
    assert!(
        got.len() >= 10 && got.len() < 300,
        "600 XADDs with MAXLEN ~ 10 keep a few macro nodes, got {}",
        got.len()
    );
    let newest = &expected[expected.len() - got.len()..];
    for (entry, want) in got.iter().zip(newest) {
        assert_carries(entry, want);
    }
    // Without the cap the same stream grows.
    let uncapped = RedisStreamPublisher::builder(url())
        .stream(key.clone())
        .build()
        .unwrap();
    let publishers = Publishers::builder().fallback(uncapped).build().unwrap();
    db.record_mixed(&outbox, 400, 3).await;
    while outbox.run(&publishers, 100).await.unwrap().claimed > 0 {}
    assert_eq!(xrange(&mut conn, &key).await.len(), got.len() + 400);
    del(&mut conn, &[key]).await;
    db.done().await;
}

/// A key that holds a string makes XADD fail with WRONGTYPE: a rejection
/// with the server's message, per entry (the other entries of the same
/// pipelined batch are published), dead after the last attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrongtype_is_a_rejection_with_the_servers_message() {
    let db = Lite::new().await;
    let outbox = db.builder().max_attempts(2).build().await.unwrap();
    let prefix = prefix();
    let (good, bad) = (format!("{prefix}:good"), format!("{prefix}:bad"));
    let mut conn = conn().await;
    let _: () = redis::cmd("SET")
        .arg(&bad)
        .arg("not a stream")
        .query_async(&mut conn)
        .await
        .unwrap();

    let mut tx = db.pool.begin().await.unwrap();
    for (i, key) in ["ok", "bad", "ok"].into_iter().enumerate() {
        let event = InvoicePaid {
            invoice_id: i64::try_from(i).unwrap(),
            amount_cents: 1,
        };
        let recording = outbox
            .record_with(&mut *tx, &event, Metadata::new().stream_key(key))
            .await
            .unwrap();
        assert!(!recording.is_filtered());
    }
    tx.commit().await.unwrap();
    let expected = db.expected().await;

    let (g, b) = (good.clone(), bad.clone());
    let redis = RedisStreamPublisher::builder(url())
        .stream_fn(move |entry| {
            if entry.stream_key() == Some("bad") {
                b.clone()
            } else {
                g.clone()
            }
        })
        .build()
        .unwrap();
    let publishers = Publishers::builder()
        .publisher::<InvoicePaid, _>(redis)
        .build()
        .unwrap();

    let first = outbox.run(&publishers, 100).await.unwrap();
    assert_eq!((first.published, first.retried), (2, 1), "{first:?}");
    let rows = db.rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].event_id, rows[0].attempts),
        (expected[1].event_id, 1)
    );
    let second = outbox.run(&publishers, 100).await.unwrap();
    assert_eq!(second.dead, 1, "{second:?}");

    let dead = outbox.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event_id, expected[1].event_id);
    assert!(
        dead[0]
            .reason
            .contains("WRONGTYPE Operation against a key holding the wrong kind of value"),
        "{}",
        dead[0].reason
    );
    assert!(
        dead[0].reason.contains(&bad),
        "names the stream: {}",
        dead[0].reason
    );

    let got = xrange(&mut conn, &good).await;
    assert_eq!(got.len(), 2);
    assert_carries(&got[0], &expected[0]);
    assert_carries(&got[1], &expected[2]);
    del(&mut conn, &[good, bad]).await;
    db.done().await;
}

/// Nothing listens: unavailable, no attempt counted, nothing dead; and the
/// password in the URL never shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_costs_no_attempt() {
    let db = Lite::new().await;
    let outbox = db.builder().max_attempts(1).build().await.unwrap();
    db.record_mixed(&outbox, 5, 2).await;
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let redis = RedisStreamPublisher::builder(format!("redis://:hunter2@127.0.0.1:{port}/0"))
        .stream("never")
        .connection_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    assert!(!format!("{redis:?}").contains("hunter2"));
    let err = outbox::Publisher::<InvoicePaid>::publish_batch(&redis, &[])
        .await
        .into_iter()
        .next();
    assert!(err.is_none(), "an empty batch sends nothing");
    let publishers = Publishers::builder().fallback(redis).build().unwrap();
    for _ in 0..3 {
        let report = outbox.run(&publishers, 100).await.unwrap();
        assert_eq!(
            report.published + report.retried + report.dead,
            0,
            "{report:?}"
        );
        assert_eq!(report.unavailable, 5, "{report:?}");
    }
    let rows = db.rows().await;
    assert_eq!(rows.len(), 5);
    assert!(
        rows.iter()
            .all(|r| r.status == "pending" && r.attempts == 0),
        "{rows:?}"
    );
    assert!(outbox.dead_letters(10).await.unwrap().is_empty());
    db.done().await;
}

/// The error text of an outage names the server without its password.
#[tokio::test]
async fn outage_message_is_redacted() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let redis = RedisStreamPublisher::builder(format!("redis://user:hunter2@127.0.0.1:{port}"))
        .stream("never")
        .build()
        .unwrap();
    let db = Lite::new().await;
    let outbox = db.outbox().await;
    db.record_mixed(&outbox, 1, 1).await;
    let publishers = Publishers::builder()
        .fallback_fn(move |entry: outbox::Entry| {
            let redis = redis.clone();
            async move {
                let err = outbox::RawPublisher::publish_raw(&redis, &entry)
                    .await
                    .unwrap_err();
                assert!(err.is_unavailable(), "{err}");
                assert!(!err.message().contains("hunter2"), "{err}");
                assert!(err.message().contains("***@127.0.0.1"), "{err}");
                Err(err)
            }
        })
        .build()
        .unwrap();
    let report = outbox.run(&publishers, 10).await.unwrap();
    assert_eq!(report.unavailable, 1, "{report:?}");
    db.done().await;
}
