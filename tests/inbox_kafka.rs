//! The Kafka inbox source end to end: service A's outbox on PostgreSQL →
//! the relay with `publisher::kafka` → the local Kafka-compatible broker
//! (`KAFKA_BROKERS`, default 127.0.0.1:19092: tansu) → `KafkaSource` →
//! service B's inbox → its business table. Each test makes its own topic
//! (3 partitions) and consumer group (uuid names).

mod inbox_broker_support;
mod kafka_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use inbox_broker_support::{
    Running, Services, UNDECODABLE, Versions, WITHOUT_ID, consumers, until,
};
use kafka_support::{brokers, topic};
use outbox::Publishers;
use outbox::inbox::kafka::KafkaSource;
use outbox::publisher::kafka::{
    EVENT_ID_HEADER, EVENT_NAME_HEADER, KafkaPublisher, VERSION_HEADER,
};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use uuid::Uuid;

const PARTITIONS: i32 = 3;

/// One message per record batch: tansu 0.6 answers a fetch from an offset
/// inside a batch with the batches *after* it (its object store lists
/// batches by base offset), so a consumer resuming from a committed offset
/// in the middle of a batch would skip the rest of that batch. A real Kafka
/// returns the batch that holds the offset. One record per batch puts
/// every committed offset on a batch boundary.
fn publishers(topic: &str) -> Publishers {
    let kafka = KafkaPublisher::builder(brokers())
        .topic(topic)
        .config("batch.num.messages", "1")
        .build()
        .unwrap();
    Publishers::builder().fallback(kafka).build().unwrap()
}

fn source(topic: &str, group: &str) -> KafkaSource {
    KafkaSource::builder(brokers(), group)
        .topic(topic)
        .config("session.timeout.ms", "6000")
        .build()
        .unwrap()
}

/// The committed offset of each partition of `topic` for `group` (0 when
/// none). The topics are fresh, so their offsets start at 0 and the sum is
/// the number of messages settled in order. (tansu 0.6 reports no usable
/// high watermark, so the tests count messages instead.)
fn committed(topic: &str, group: &str) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        tpl.add_partition(topic, partition);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    (0..PARTITIONS)
        .map(|partition| {
            match committed
                .find_partition(topic, partition)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(offset)) => offset,
                _ => 0,
            }
        })
        .collect()
}

/// Events recorded in A arrive in B's business table exactly once, with
/// the event id, stream key, headers, correlation and causation ids and
/// version (2) that were recorded; every partition's offset is committed
/// past its last message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_to_inbox_exactly_once_with_metadata() {
    let services = Services::new().await;
    let topic = topic(PARTITIONS).await;
    let group = format!("inbox-test-{}", Uuid::new_v4().simple());
    let expected = services.record(30).await;
    let relay = services.relay(publishers(&topic));
    let running = Running::start(
        &services.inbox,
        services.consumers(),
        source(&topic, &group),
    );

    services.wait_for_rows(30).await;
    relay.stop().await;
    let report = running.stop().await;
    services.check_exactly_once(&expected).await;
    assert_eq!(report.processed, 30, "{report:?}");
    assert_eq!(report.duplicates, 0, "{report:?}");
    assert_eq!(report.dead, 0, "{report:?}");
    assert_eq!(report.ack_failures, 0, "{report:?}");
    let committed = committed(&topic, &group);
    assert_eq!(
        committed.iter().sum::<i64>(),
        30,
        "every settled message is committed: {committed:?}"
    );
    services.cleanup().await;
}

/// A consumer that hangs with messages unsettled and is then killed (its
/// loop aborted, its client dropped): a new member of the same group reads
/// from the last committed offsets, and every effect happens exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_consumer_loses_nothing_and_doubles_nothing() {
    let services = Services::new().await;
    let topic = topic(PARTITIONS).await;
    let group = format!("inbox-test-{}", Uuid::new_v4().simple());
    let expected = services.record(20).await;
    let relay = services.relay(publishers(&topic));

    // The first consumer processes 5 messages, then hangs on the next 4
    // (max_in_flight) with more fetched in its client.
    let calls = Arc::new(AtomicUsize::new(0));
    let hanging = consumers(services.business.clone(), Some((5, Arc::clone(&calls))));
    let first = Running::start(&services.inbox, hanging, source(&topic, &group));
    until("4 hanging consumers", || async {
        calls.load(Ordering::SeqCst) == 9
    })
    .await;
    assert_eq!(services.count().await, 5);
    first.task.abort();
    assert!(first.task.await.unwrap_err().is_cancelled());
    let settled: i64 = committed(&topic, &group).iter().sum();
    assert!(
        settled <= 5,
        "{settled} offsets committed for 5 settled messages"
    );

    // A new process in the same group.
    let second = Running::start(
        &services.inbox,
        services.consumers(),
        source(&topic, &group),
    );
    services.wait_for_rows(20).await;
    relay.stop().await;
    until("every offset committed", || async {
        committed(&topic, &group).iter().sum::<i64>() == 20
    })
    .await;
    let report = second.stop().await;
    services.check_exactly_once(&expected).await;
    assert_eq!(report.processed, 15, "{report:?}");
    assert_eq!(report.dead, 0, "{report:?}");
    // Redelivered but already processed: at most the first consumer's 5.
    assert!(report.duplicates <= 5, "{report:?}");
    services.cleanup().await;
}

/// Poison messages produced by hand (a payload that does not decode; no
/// event id header) become dead letters in the inbox. Of the version
/// messages, the one without a version header reaches the consumer as
/// version 1, the one of version 2 as 2, and the one of version 3 (newer
/// than the consumer knows) is a dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_and_newer_messages_are_dead_letters() {
    let services = Services::new().await;
    let topic = topic(1).await;
    let group = format!("inbox-test-{}", Uuid::new_v4().simple());
    let bad_id = Uuid::now_v7();
    let versions = Versions::fresh();
    let mut messages = vec![(Some(bad_id), None, UNDECODABLE), (None, None, WITHOUT_ID)];
    messages.extend(
        versions
            .messages()
            .map(|(id, version)| (Some(id), version, WITHOUT_ID)),
    );
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    for (id, version, payload) in messages {
        let id = id.map(|id| id.to_string());
        let mut headers = OwnedHeaders::new().insert(Header {
            key: EVENT_NAME_HEADER,
            value: Some("inbox_test.invoice_paid"),
        });
        if let Some(id) = &id {
            headers = headers.insert(Header {
                key: EVENT_ID_HEADER,
                value: Some(id.as_str()),
            });
        }
        if let Some(version) = version {
            headers = headers.insert(Header {
                key: VERSION_HEADER,
                value: Some(version),
            });
        }
        let record = FutureRecord::<(), str>::to(&topic)
            .payload(payload)
            .headers(headers);
        producer
            .send(record, Duration::from_secs(10))
            .await
            .unwrap();
    }

    let running = Running::start(
        &services.inbox,
        services.consumers(),
        source(&topic, &group),
    );
    until("5 messages settled", || async {
        let stats = services.inbox.stats().await.unwrap();
        stats.processed + stats.dead == 5
    })
    .await;
    let report = running.stop().await;
    services.check_poison(&report, bad_id, &versions).await;
    services.cleanup().await;
}
