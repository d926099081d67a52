//! The Redis Streams inbox source end to end: service A's outbox on
//! PostgreSQL → the relay with `publisher::redis` → a Redis stream (the
//! local server, `REDIS_URL`) → `RedisSource` (a consumer group) → service
//! B's inbox → its business table. Each test uses its own stream key and
//! group (uuid names) and deletes the key.

mod inbox_broker_support;

use std::time::Duration;

use inbox_broker_support::{Running, Services, UNDECODABLE, Versions, WITHOUT_ID, until};
use outbox::Publishers;
use outbox::inbox::redis::RedisSource;
use outbox::publisher::redis::RedisStreamPublisher;
use redis::Value;
use redis::aio::MultiplexedConnection;
use uuid::Uuid;

fn url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A stream key and group of the test's own.
struct TestStream {
    conn: MultiplexedConnection,
    key: String,
    group: String,
}

impl TestStream {
    async fn new() -> Self {
        let conn = redis::Client::open(url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("Redis at REDIS_URL");
        let id = Uuid::new_v4().simple();
        Self {
            conn,
            key: format!("inbox-test:{id}"),
            group: format!("group-{id}"),
        }
    }

    fn publishers(&self) -> Publishers {
        let redis = RedisStreamPublisher::builder(url())
            .stream(self.key.clone())
            .build()
            .unwrap();
        Publishers::builder().fallback(redis).build().unwrap()
    }

    async fn source(&self, consumer: &str, claim_idle: Duration) -> RedisSource {
        RedisSource::builder(url(), &self.key, &self.group, consumer)
            .count(4)
            .block(Duration::from_millis(500))
            .claim_idle(claim_idle)
            .build()
            .await
            .unwrap()
    }

    /// Entries of the group delivered and not acknowledged (`XPENDING`).
    async fn pending(&self) -> i64 {
        let reply: Value = redis::cmd("XPENDING")
            .arg(&self.key)
            .arg(&self.group)
            .query_async(&mut self.conn.clone())
            .await
            .unwrap();
        match reply {
            Value::Array(parts) => match parts.first() {
                Some(Value::Int(n)) => *n,
                other => panic!("XPENDING: {other:?}"),
            },
            other => panic!("XPENDING: {other:?}"),
        }
    }

    /// Entries in the stream (`XLEN`).
    async fn len(&self) -> i64 {
        redis::cmd("XLEN")
            .arg(&self.key)
            .query_async(&mut self.conn.clone())
            .await
            .unwrap()
    }

    /// Entries the group has not read yet (`lag` of `XINFO GROUPS`, Redis 7).
    async fn unread(&self) -> i64 {
        let groups: Vec<Value> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.key)
            .query_async(&mut self.conn.clone())
            .await
            .unwrap();
        let Some(Value::Array(fields) | Value::Set(fields)) = groups.into_iter().next() else {
            panic!("no group");
        };
        let mut fields = fields.into_iter();
        while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
            if matches!(&k, Value::BulkString(b) if b == b"lag") {
                return match v {
                    Value::Int(n) => n,
                    other => panic!("lag: {other:?}"),
                };
            }
        }
        panic!("XINFO GROUPS has no lag");
    }

    async fn delete(mut self) {
        let _: i64 = redis::cmd("DEL")
            .arg(&self.key)
            .query_async(&mut self.conn)
            .await
            .unwrap();
    }
}

/// Events recorded in A arrive in B's business table exactly once, with
/// the event id, stream key, headers, correlation and causation ids and
/// version (2) that were recorded; every entry is acknowledged. The group is created after
/// the first events were published and still reads them (it starts at 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_to_inbox_exactly_once_with_metadata() {
    let services = Services::new().await;
    let stream = TestStream::new().await;
    let expected = services.record(30).await;
    let relay = services.relay(stream.publishers());
    until("a first entry in the stream", || async {
        stream.len().await > 0
    })
    .await;
    let source = stream.source("b-1", Duration::from_mins(1)).await;
    let running = Running::start(&services.inbox, services.consumers(), source);

    services.wait_for_rows(30).await;
    relay.stop().await;
    let report = running.stop().await;
    services.check_clean_run(&report, &expected).await;
    assert_eq!(stream.pending().await, 0);
    assert_eq!(stream.len().await, 30);

    stream.delete().await;
    services.cleanup().await;
}

/// A consumer that hangs with entries unacknowledged and is then killed
/// (its loop aborted, its connections dropped): another consumer of the
/// group claims them with `XAUTOCLAIM` once they are idle longer than its
/// `claim_idle`, and every effect happens exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_consumer_is_reclaimed_and_nothing_doubles() {
    let services = Services::new().await;
    let stream = TestStream::new().await;
    let expected = services.record(20).await;
    let relay = services.relay(stream.publishers());

    // The first consumer processes 5 entries, then hangs on the next 4
    // (max_in_flight) with more read into its buffer.
    let source = stream.source("b-1", Duration::from_mins(1)).await;
    services.hang_and_kill(source).await;
    let pending = stream.pending().await;
    assert!(
        pending >= 4,
        "{pending} entries delivered and unacknowledged"
    );

    // Another consumer name (the first is gone for good).
    let second = Running::start(
        &services.inbox,
        services.consumers(),
        stream.source("b-2", Duration::from_secs(1)).await,
    );
    services.wait_for_rows(20).await;
    until("every entry acknowledged", || async {
        stream.pending().await == 0
    })
    .await;
    relay.stop().await;
    let report = second.stop().await;
    services.check_exactly_once(&expected).await;
    assert_eq!(report.processed, 15);
    assert_eq!(report.dead, 0);
    assert_eq!(stream.unread().await, 0);

    stream.delete().await;
    services.cleanup().await;
}

/// The same event published twice (a copy of its stream entry, as a relay
/// that published again after a crash writes it) takes effect once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_twice_takes_effect_once() {
    let services = Services::new().await;
    let stream = TestStream::new().await;
    let expected = services.record(5).await;
    let relay = services.relay(stream.publishers());
    until("5 entries", || async { stream.len().await == 5 }).await;
    relay.stop().await;

    // XADD every entry again with the same fields.
    let entries: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
        .arg(&stream.key)
        .arg("-")
        .arg("+")
        .query_async(&mut stream.conn.clone())
        .await
        .unwrap();
    for (_, fields) in entries {
        let _: String = redis::cmd("XADD")
            .arg(&stream.key)
            .arg("*")
            .arg(fields)
            .query_async(&mut stream.conn.clone())
            .await
            .unwrap();
    }
    assert_eq!(stream.len().await, 10);

    let running = Running::start(
        &services.inbox,
        services.consumers(),
        stream.source("b-1", Duration::from_mins(1)).await,
    );
    until("10 entries read and acknowledged", || async {
        stream.unread().await == 0 && stream.pending().await == 0
    })
    .await;
    let report = running.stop().await;
    services.check_exactly_once(&expected).await;
    assert_eq!(report.processed, 5);
    assert_eq!(report.duplicates, 5);

    stream.delete().await;
    services.cleanup().await;
}

/// Poison entries (a payload that does not decode; no `event_id`) become
/// dead letters in the inbox and are acknowledged. Of the version entries,
/// the one without a `version` field reaches the consumer as version 1,
/// the one of version 2 as 2, and the one of version 3 (newer than the
/// consumer knows) is a dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_entries_are_dead_letters_and_acknowledged() {
    let services = Services::new().await;
    let stream = TestStream::new().await;
    let bad_id = Uuid::now_v7();
    let _: String = redis::cmd("XADD")
        .arg(&stream.key)
        .arg("*")
        .arg("event_id")
        .arg(bad_id.to_string())
        .arg("name")
        .arg("inbox_test.invoice_paid")
        .arg("payload")
        .arg(UNDECODABLE)
        .arg("headers")
        .arg("{}")
        .query_async(&mut stream.conn.clone())
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(&stream.key)
        .arg("*")
        .arg("name")
        .arg("inbox_test.invoice_paid")
        .arg("payload")
        .arg(WITHOUT_ID)
        .query_async(&mut stream.conn.clone())
        .await
        .unwrap();
    let versions = Versions::fresh();
    for (id, version) in versions.messages() {
        let mut xadd = redis::cmd("XADD");
        xadd.arg(&stream.key)
            .arg("*")
            .arg("event_id")
            .arg(id.to_string())
            .arg("name")
            .arg("inbox_test.invoice_paid")
            .arg("payload")
            .arg(WITHOUT_ID);
        if let Some(version) = version {
            xadd.arg("version").arg(version);
        }
        let _: String = xadd.query_async(&mut stream.conn.clone()).await.unwrap();
    }

    let running = Running::start(
        &services.inbox,
        services.consumers(),
        stream.source("b-1", Duration::from_mins(1)).await,
    );
    until("5 entries read and acknowledged", || async {
        stream.unread().await == 0 && stream.pending().await == 0
    })
    .await;
    let report = running.stop().await;
    services.check_poison(&report, bad_id, &versions).await;

    stream.delete().await;
    services.cleanup().await;
}
