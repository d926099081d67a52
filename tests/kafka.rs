//! The Kafka publisher against the local Kafka-compatible broker
//! (`KAFKA_BROKERS`, default `127.0.0.1:19092`: tansu, which `.ci/run`
//! starts). Each test makes its own uniquely named topics with the admin
//! API. No broker is a failure that says how to start one.

mod broker_support;
mod kafka_support;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use broker_support::{OrderPlaced, Received, check_exactly, record, sqlite_outbox};
use kafka_support::{Got, brokers, consumer, read, topic};
use outbox::Publishers;
use outbox::publisher::kafka::{
    CORRELATION_ID_HEADER, EVENT_ID_HEADER, EVENT_NAME_HEADER, KafkaPublisher, STREAM_KEY_HEADER,
};

fn received(got: &[Got]) -> Vec<Received> {
    got.iter()
        .map(|g| Received {
            event_id: g.headers[EVENT_ID_HEADER].parse().unwrap(),
            name: g.headers[EVENT_NAME_HEADER].clone(),
            payload: g.payload.clone(),
            headers: g.headers.clone(),
        })
        .collect()
}

/// 200 events of two types (typed publisher and raw catch-all) over five
/// stream keys go through the relay into one topic of 3 partitions and
/// come back from a consumer unchanged: payload byte for byte, headers, key
/// = stream key, each stream in one partition and in record order (per-stream
/// order on, 4 batches in flight).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_delivers_every_event_in_stream_order_across_partitions() {
    let topic = topic(3).await;
    let kafka = KafkaPublisher::builder(brokers())
        .topic(topic.clone())
        .build()
        .unwrap();
    let (outbox, pool) = sqlite_outbox(|b| b.ordered_streams(true)).await;
    let expected = record(&outbox, &pool, 0, 200).await;
    let publishers = Publishers::builder()
        .publisher::<OrderPlaced, _>(kafka.clone())
        .fallback(kafka)
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(
        outbox
            .relay(publishers)
            .in_flight(4)
            .poll_interval(Duration::from_millis(20))
            .run(async {
                let _ = stopped.await;
            }),
    );
    let reader = consumer(&brokers(), &[&topic]);
    let got = read(&reader, expected.len(), Duration::from_secs(30)).await;
    stop.send(()).unwrap();
    let report = relay.await.unwrap();

    // Same ids, names, payloads, headers; each once; per stream in order.
    check_exactly(
        &expected,
        &received(&got),
        STREAM_KEY_HEADER,
        CORRELATION_ID_HEADER,
    );
    assert_eq!(report.published, 200, "{report:?}");
    assert_eq!(
        report.dead + report.retried + report.unavailable,
        0,
        "{report:?}"
    );
    // The key is the stream key, and a stream stays in one partition.
    let mut partition_of: HashMap<String, BTreeSet<i32>> = HashMap::new();
    for g in &got {
        assert_eq!(
            g.key.as_deref(),
            Some(g.headers[STREAM_KEY_HEADER].as_str())
        );
        partition_of
            .entry(g.key.clone().unwrap())
            .or_default()
            .insert(g.partition);
    }
    assert!(
        partition_of.values().all(|p| p.len() == 1),
        "{partition_of:?}"
    );
    let used: BTreeSet<i32> = partition_of.values().flatten().copied().collect();
    assert!(used.len() >= 2, "5 stream keys in one partition: {used:?}");
    // Offsets within a partition are consecutive: nothing written twice.
    let mut offsets: HashMap<i32, Vec<i64>> = HashMap::new();
    for g in &got {
        offsets.entry(g.partition).or_default().push(g.offset);
    }
    for (partition, offsets) in offsets {
        let first = offsets[0];
        let want: Vec<i64> = (first..first + i64::try_from(offsets.len()).unwrap()).collect();
        assert_eq!(offsets, want, "partition {partition}");
    }
}

/// The default topic is prefix + event name; with no stream key the key is
/// the event id; the timestamp is when the event was recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_prefix_and_event_id_key() {
    let prefix = format!("outbox-test-{}.", uuid::Uuid::new_v4().simple());
    let placed = format!("{prefix}shop.order_placed");
    kafka_support::require_broker(&brokers());
    kafka_support::create_topic_at(&brokers(), &placed, 1).await;
    let kafka = KafkaPublisher::builder(brokers())
        .topic_prefix(prefix.clone())
        .build()
        .unwrap();
    let (outbox, pool) = sqlite_outbox(|b| b).await;
    let mut tx = pool.begin().await.unwrap();
    let events: Vec<OrderPlaced> = (0..3)
        .map(|seq| OrderPlaced {
            order: 1,
            seq,
            amount_cents: 5,
            note: String::new(),
        })
        .collect();
    outbox.record_all(&mut tx, &events).await.unwrap();
    tx.commit().await.unwrap();
    let publishers = Publishers::builder().fallback(kafka).build().unwrap();
    let report = outbox.run(&publishers, 100).await.unwrap();
    assert_eq!(report.published, 3, "{report:?}");

    let reader = consumer(&brokers(), &[&placed]);
    let got = read(&reader, 3, Duration::from_secs(30)).await;
    for (g, event) in got.iter().zip(&events) {
        assert_eq!(g.topic, placed);
        assert_eq!(g.key.as_deref(), Some(g.headers[EVENT_ID_HEADER].as_str()));
        assert!(!g.headers.contains_key(STREAM_KEY_HEADER), "{g:?}");
        assert_eq!(g.payload, serde_json::to_string(event).unwrap());
    }
}

/// A message over the producer's `message.max.bytes` is rejected (an
/// attempt; the event's fault); a topic that does not exist is unavailable
/// (no attempt; the destination's fault).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_is_rejected_and_a_missing_topic_is_unavailable() {
    let topic = topic(1).await;
    let (outbox, pool) = sqlite_outbox(|b| b).await;
    let mut tx = pool.begin().await.unwrap();
    let big = OrderPlaced {
        order: 1,
        seq: 1,
        amount_cents: 1,
        note: "x".repeat(20_000),
    };
    outbox.record(&mut tx, &big).await.unwrap();
    tx.commit().await.unwrap();
    let kafka = KafkaPublisher::builder(brokers())
        .topic(topic.clone())
        .config("message.max.bytes", "10000")
        .build()
        .unwrap();
    let publishers = Publishers::builder().fallback(kafka).build().unwrap();
    let report = outbox.run(&publishers, 100).await.unwrap();
    assert_eq!(report.published, 0, "{report:?}");
    assert_eq!(report.retried + report.dead, 1, "{report:?}");
    assert_eq!(report.unavailable, 0, "{report:?}");

    // The same entry (due again later) to a topic that does not exist:
    // no attempt, the publisher is blocked.
    let (outbox, pool) = sqlite_outbox(|b| b).await;
    let mut tx = pool.begin().await.unwrap();
    outbox.record(&mut tx, &big).await.unwrap();
    tx.commit().await.unwrap();
    let missing = KafkaPublisher::builder(brokers())
        .topic(format!("outbox-missing-{}", uuid::Uuid::new_v4().simple()))
        .config("allow.auto.create.topics", "false")
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let publishers = Publishers::builder().fallback(missing).build().unwrap();
    let report = outbox.run(&publishers, 100).await.unwrap();
    assert_eq!(
        report.published + report.retried + report.dead,
        0,
        "{report:?}"
    );
    assert_eq!(report.unavailable, 1, "{report:?}");
}
