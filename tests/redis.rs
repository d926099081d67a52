//! The Redis Streams publisher against the local Redis (`REDIS_URL`,
//! default `redis://127.0.0.1:6379`), with SQLite outboxes: what a stream
//! entry carries, trimming, what each failure costs (a wrong setting pauses
//! the publisher and loses nothing), and `rediss://` through `stunnel4`
//! with a throwaway CA. Every test uses its own stream keys (and ACL user)
//! and deletes them at the end.

mod lite;
mod relay_support;
mod tls_support;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use lite::{Expected, InvoicePaid, Lite};
use outbox::publisher::redis::RedisStreamPublisher;
use outbox::{Metadata, Outbox, Publishers};
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamId, StreamRangeReply};
use relay_support::{Running, run_for, until};
use serde::{Deserialize, Serialize};
use sqlx::Sqlite;
use tls_support::{Stunnel, TestCa};
use uuid::Uuid;

/// An event of version 2 (the `lite` events are version 1).
#[derive(Debug, Serialize, Deserialize)]
struct RefundIssued {
    refund_id: i64,
}

impl outbox::Event for RefundIssued {
    const NAME: &'static str = "billing.refund_issued";
    const VERSION: u32 = 2;
}

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
        field(entry, "version").as_deref(),
        Some("1"),
        "the `lite` events are version 1"
    );
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
/// name; read back with XRANGE, every event once, in record order. Each
/// carries its version in the `version` field (1, and 2 for one more
/// event of a version-2 type).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_in_order_with_their_metadata() {
    let db = Lite::new().await;
    let outbox = db.outbox().await;
    let expected = db.record_mixed(&outbox, 200, 5).await;
    assert_eq!(expected.len(), 200);
    let mut tx = db.pool.begin().await.unwrap();
    let refund = outbox
        .record(&mut *tx, &RefundIssued { refund_id: 7 })
        .await
        .unwrap()
        .event_id()
        .unwrap();
    tx.commit().await.unwrap();

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
    assert_eq!(published, 201);
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
    let key = format!("{prefix}:billing.refund_issued");
    let got = xrange(&mut conn, &key).await;
    assert_eq!(got.len(), 1, "{key}");
    assert_eq!(
        field(&got[0], "event_id"),
        Some(refund.hyphenated().to_string())
    );
    assert_eq!(field(&got[0], "version").as_deref(), Some("2"));
    keys.push(key);
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

/// A key that holds a string makes XADD fail with WRONGTYPE: a setting,
/// not the event. In a pipelined batch the entries for other keys are
/// published; the one for the bad key stays pending with no attempt, the
/// publisher is blocked with the server's message, and once the key is
/// freed the entry goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrongtype_blocks_the_publisher_and_the_rest_of_the_batch_goes_out() {
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
        .max_pause(Duration::from_millis(200))
        .build()
        .unwrap();

    let first = outbox.run(&publishers, 100).await.unwrap();
    assert_eq!(
        (
            first.published,
            first.unavailable,
            first.retried,
            first.dead
        ),
        (2, 1, 0, 0),
        "{first:?}"
    );
    let rows = db.rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].event_id, rows[0].attempts),
        (expected[1].event_id, 0)
    );
    let blocked = publishers.blocked();
    assert_eq!(blocked.len(), 1);
    assert_eq!(blocked[0].publisher, "billing.invoice_paid");
    let reason = &blocked[0].reason;
    assert!(
        reason.contains("WRONGTYPE Operation against a key holding the wrong kind of value"),
        "{reason}"
    );
    assert!(reason.contains(&bad), "names the stream: {reason}");
    // Blocked, however long: no attempt, no dead letter.
    run_for(&outbox, &publishers, Duration::from_millis(600)).await;
    assert_eq!(db.rows().await[0].attempts, 0);
    assert!(outbox.dead_letters(10).await.unwrap().is_empty());

    // The key is freed: the entry goes out, the block is lifted.
    del(&mut conn, std::slice::from_ref(&bad)).await;
    let report = run_for(&outbox, &publishers, Duration::from_millis(600)).await;
    assert_eq!(report.published, 1, "{report:?}");
    assert!(db.rows().await.is_empty());
    assert!(publishers.blocked().is_empty());

    let got = xrange(&mut conn, &good).await;
    assert_eq!(got.len(), 2);
    assert_carries(&got[0], &expected[0]);
    assert_carries(&got[1], &expected[2]);
    let got = xrange(&mut conn, &bad).await;
    assert_eq!(got.len(), 1);
    assert_carries(&got[0], &expected[1]);
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
    let port = tls_support::free_port();
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
    let report = outbox.run(&publishers, 100).await.unwrap();
    assert_eq!(report.unavailable, 5, "{report:?}");
    let report = run_for(&outbox, &publishers, Duration::from_millis(500)).await;
    assert_eq!(
        report.published + report.retried + report.dead,
        0,
        "{report:?}"
    );
    let blocked = publishers.blocked();
    assert_eq!(blocked.len(), 1);
    assert!(blocked[0].reason.contains("cannot connect"), "{blocked:?}");
    assert!(!blocked[0].reason.contains("hunter2"), "{blocked:?}");
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
    let port = tls_support::free_port();
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

// ------------------------------------------- wrong settings lose nothing

/// The local Redis's host and port (from `REDIS_URL`).
fn host_port() -> (String, u16) {
    let info = redis::IntoConnectionInfo::into_connection_info(url().as_str()).unwrap();
    match info.addr() {
        redis::ConnectionAddr::Tcp(host, port) => (host.clone(), *port),
        other => panic!("REDIS_URL must be a redis:// TCP URL, not {other:?}"),
    }
}

/// The event ids of a stream's entries, checking that none is there twice.
async fn ids_once(conn: &mut MultiplexedConnection, key: &str) -> BTreeSet<String> {
    let entries = xrange(conn, key).await;
    let ids: BTreeSet<String> = entries
        .iter()
        .map(|e| field(e, "event_id").unwrap())
        .collect();
    assert_eq!(ids.len(), entries.len(), "an event is in {key} twice");
    ids
}

fn id_set(expected: &[Expected]) -> BTreeSet<String> {
    expected
        .iter()
        .map(|e| e.event_id.hyphenated().to_string())
        .collect()
}

/// 500 events blocked behind a wrong setting: by hand for a second, then
/// with the relay loop, nothing is published, charged or dead, and
/// `Publishers::blocked()` and `stats().blocked` name the publisher and a
/// reason containing `reason`. Then `fix` runs; the relay loop resumes by
/// itself and the stream `key` gets every event exactly once.
async fn blocked_until_fixed<F, Fut>(redis: RedisStreamPublisher, key: &str, reason: &str, fix: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let db = Lite::new().await;
    let outbox = db.builder().max_attempts(3).build().await.unwrap();
    let expected = db.record_paid(&outbox, 500, 10).await;
    let publishers = Publishers::builder()
        .publisher::<InvoicePaid, _>(redis)
        .max_pause(Duration::from_millis(500))
        .build()
        .unwrap();

    let report = run_for(&outbox, &publishers, Duration::from_secs(1)).await;
    assert_eq!(
        (report.published, report.retried, report.dead),
        (0, 0, 0),
        "{report:?}"
    );
    assert!(report.unavailable >= 500, "{report:?}");
    assert_all_pending_uncharged(&db, &outbox, 500).await;
    let blocked = publishers.blocked();
    assert_eq!(blocked.len(), 1, "{blocked:?}");
    assert_eq!(blocked[0].publisher, "billing.invoice_paid");
    assert!(blocked[0].reason.contains(reason), "{blocked:?}");
    assert!(!blocked[0].reason.contains("hunter2"), "{blocked:?}");
    let stats = outbox.stats().await.unwrap();
    assert_eq!((stats.pending, stats.dead), (500, 0), "{stats:?}");
    assert_eq!(stats.blocked.len(), 1, "{stats:?}");
    assert_eq!(stats.blocked[0].publisher, "billing.invoice_paid");
    assert_eq!(stats.blocked[0].reason, blocked[0].reason);

    let relay = Running::start(&outbox, publishers);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_all_pending_uncharged(&db, &outbox, 500).await;
    assert_eq!(outbox.stats().await.unwrap().blocked.len(), 1);

    fix().await;
    let mut conn = conn().await;
    until("all 500 in the stream", Duration::from_secs(30), || async {
        db.rows().await.is_empty()
    })
    .await;
    until("the block is lifted", Duration::from_secs(10), || async {
        outbox.stats().await.unwrap().blocked.is_empty()
    })
    .await;
    let report = relay.stop().await;
    assert_eq!(
        (report.retried, report.dead, report.lost),
        (0, 0, 0),
        "{report:?}"
    );
    assert_eq!(ids_once(&mut conn, key).await, id_set(&expected));
    del(&mut conn, &[key.to_owned()]).await;
    db.done().await;
}

/// Asserts `n` entries pending, none charged, none dead.
async fn assert_all_pending_uncharged(db: &Lite, outbox: &Outbox<Sqlite>, n: usize) {
    let rows = db.rows().await;
    assert_eq!(rows.len(), n);
    assert!(
        rows.iter()
            .all(|r| r.status == "pending" && r.attempts == 0),
        "{:?}",
        rows.iter()
            .find(|r| r.status != "pending" || r.attempts != 0)
    );
    assert!(outbox.dead_letters(10).await.unwrap().is_empty());
}

/// "One wrong setting kills the backlog", with a stream key that holds a
/// string: WRONGTYPE for every event until the key is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrongtype_key_blocks_and_loses_nothing_until_freed() {
    let key = format!("{}:events", prefix());
    let mut conn = conn().await;
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("not a stream")
        .query_async(&mut conn)
        .await
        .unwrap();
    let redis = RedisStreamPublisher::builder(url())
        .stream(key.clone())
        .build()
        .unwrap();
    let bad = key.clone();
    blocked_until_fixed(redis, &key, "WRONGTYPE", || async move {
        del(&mut conn, &[bad]).await;
    })
    .await;
}

/// An ACL user made for one test, deleted on drop (also when it fails).
struct AclUser(String);

impl Drop for AclUser {
    fn drop(&mut self) {
        let mut conn = redis::Client::open(url())
            .unwrap()
            .get_connection()
            .unwrap();
        let _: i64 = redis::cmd("ACL")
            .arg("DELUSER")
            .arg(&self.0)
            .query(&mut conn)
            .unwrap();
    }
}

/// "One wrong setting kills the backlog", with a wrong password: every
/// connection is refused (WRONGPASS) until the user gets that password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_blocks_and_loses_nothing_until_fixed() {
    let prefix = prefix();
    let key = format!("{prefix}:events");
    let user = AclUser(format!("outbox-test-{}", Uuid::new_v4().simple()));
    let mut conn = conn().await;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user.0)
        .arg("reset")
        .arg("on")
        .arg(">right-password")
        .arg(format!("~{prefix}:*"))
        .arg("+@all")
        .query_async(&mut conn)
        .await
        .unwrap();
    let (host, port) = host_port();
    let redis = RedisStreamPublisher::builder(format!("redis://{}:hunter2@{host}:{port}", user.0))
        .stream(key.clone())
        .connection_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let name = user.0.clone();
    blocked_until_fixed(redis, &key, "cannot connect", || async move {
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(&name)
            .arg(">hunter2")
            .query_async(&mut conn)
            .await
            .unwrap();
    })
    .await;
    drop(user);
}

// ------------------------------------------------------------------- TLS

/// `rediss://` through stunnel4 (TLS in front of the local Redis) with a
/// throwaway CA trusted: every event arrives once, with its fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_through_stunnel_with_a_trusted_test_ca_delivers() {
    let ca = TestCa::new();
    let tunnel = Stunnel::start(&ca, host_port().1);
    let db = Lite::new().await;
    let outbox = db.outbox().await;
    let expected = db.record_mixed(&outbox, 50, 3).await;
    let key = format!("{}:tls", prefix());
    let redis = RedisStreamPublisher::builder(format!("rediss://127.0.0.1:{}", tunnel.port))
        .stream(key.clone())
        .tls_ca_pem(ca.ca_pem.clone())
        .build()
        .unwrap();
    let publishers = Publishers::builder().fallback(redis).build().unwrap();
    let mut published = 0;
    loop {
        let report = outbox.run(&publishers, 20).await.unwrap();
        assert_eq!(report.published, report.claimed, "{report:?}");
        if report.claimed == 0 {
            break;
        }
        published += report.published;
    }
    assert_eq!(published, 50);
    let mut conn = conn().await;
    let got = xrange(&mut conn, &key).await;
    assert_eq!(got.len(), 50);
    for (entry, want) in got.iter().zip(&expected) {
        assert_carries(entry, want);
    }
    del(&mut conn, &[key]).await;
    db.done().await;
}

/// TLS or nothing: `rediss://` to the plaintext Redis port, and to stunnel
/// without its CA trusted (the system roots do not know it), are
/// unavailable: no attempt, the publisher blocked, nothing written. A TLS
/// option with a `redis://` URL does not build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_never_falls_back_to_plaintext() {
    let ca = TestCa::new();
    let (host, port) = host_port();
    let tunnel = Stunnel::start(&ca, port);
    let key = format!("{}:never", prefix());
    let cases = [
        (
            "rediss to the plaintext port",
            RedisStreamPublisher::builder(format!("rediss://127.0.0.1:{port}"))
                .tls_ca_pem(ca.ca_pem.clone()),
        ),
        (
            "rediss to an untrusted certificate",
            RedisStreamPublisher::builder(format!("rediss://127.0.0.1:{}", tunnel.port)),
        ),
    ];
    for (case, builder) in cases {
        let redis = builder
            .stream(key.clone())
            .connection_timeout(Duration::from_millis(500))
            .build()
            .unwrap();
        let db = Lite::new().await;
        let outbox = db.outbox().await;
        db.record_mixed(&outbox, 5, 2).await;
        let publishers = Publishers::builder().fallback(redis).build().unwrap();
        let report = outbox.run(&publishers, 100).await.unwrap();
        assert_eq!(
            (
                report.published,
                report.retried,
                report.dead,
                report.unavailable
            ),
            (0, 0, 0, 5),
            "{case}: {report:?}"
        );
        assert!(db.rows().await.iter().all(|r| r.attempts == 0), "{case}");
        let blocked = publishers.blocked();
        assert_eq!(blocked.len(), 1, "{case}");
        assert!(
            blocked[0].reason.contains("cannot connect"),
            "{case}: {blocked:?}"
        );
        db.done().await;
    }
    let mut conn = conn().await;
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 0, "nothing was written");

    let err = RedisStreamPublisher::builder(format!("redis://{host}:{port}"))
        .stream(key)
        .tls_ca_pem(ca.ca_pem)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("not a rediss:// URL"), "{err}");
}
