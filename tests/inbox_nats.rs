//! The NATS JetStream inbox source end to end: service A's outbox on
//! PostgreSQL → the relay with `publisher::nats` → JetStream (the local
//! server, `NATS_URL`) → `NatsSource` → service B's inbox → its business
//! table. Each test creates its own stream (uuid name) and deletes it.

mod inbox_broker_support;

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use inbox_broker_support::{Running, Services, UNDECODABLE, Versions, WITHOUT_ID, until};
use outbox::Publishers;
use outbox::inbox::nats::NatsSource;
use outbox::publisher::nats::{EVENT_NAME_HEADER, NatsPublisher, VERSION_HEADER};
use uuid::Uuid;

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A JetStream stream of the test's own, capturing `<prefix>.>`.
struct TestStream {
    js: jetstream::Context,
    name: String,
    prefix: String,
}

impl TestStream {
    async fn new() -> Self {
        Self::with(stream::Config::default()).await
    }

    async fn with(config: stream::Config) -> Self {
        let client = async_nats::connect(nats_url())
            .await
            .expect("NATS at NATS_URL");
        let js = jetstream::new(client);
        let id = Uuid::new_v4().simple().to_string();
        let name = format!("inbox_test_{id}");
        let prefix = format!("inbox-test-{id}");
        js.create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{prefix}.>")],
            storage: stream::StorageType::Memory,
            ..config
        })
        .await
        .unwrap();
        Self { js, name, prefix }
    }

    fn publishers(&self) -> Publishers {
        let nats = NatsPublisher::builder(nats_url())
            .subject_prefix(format!("{}.", self.prefix))
            .build()
            .unwrap();
        Publishers::builder().fallback(nats).build().unwrap()
    }

    async fn source(&self, durable: &str, ack_wait: Duration) -> NatsSource {
        NatsSource::builder(nats_url(), &self.name, durable)
            .batch(4)
            .ack_wait(ack_wait)
            .build()
            .await
            .unwrap()
    }

    /// (messages not yet delivered, delivered and not acknowledged) of the durable.
    async fn unsettled(&self, durable: &str) -> (u64, usize) {
        let mut consumer: jetstream::consumer::PullConsumer = self
            .js
            .get_stream(&self.name)
            .await
            .unwrap()
            .get_consumer(durable)
            .await
            .unwrap();
        let info = consumer.info().await.unwrap();
        (info.num_pending, info.num_ack_pending)
    }

    async fn delete(self) {
        self.js.delete_stream(&self.name).await.unwrap();
    }
}

/// Events recorded in A arrive in B's business table exactly once, with
/// the event id, stream key, headers, correlation and causation ids and
/// version (2) that were recorded; every message is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_to_inbox_exactly_once_with_metadata() {
    let services = Services::new().await;
    let stream = TestStream::new().await;
    let expected = services.record(30).await;
    let relay = services.relay(stream.publishers());
    let source = stream.source("b", Duration::from_secs(30)).await;
    let running = Running::start(&services.inbox, services.consumers(), source);

    services.wait_for_rows(30).await;
    relay.stop().await;
    let report = running.stop().await;
    services.check_clean_run(&report, &expected).await;
    assert_eq!(stream.unsettled("b").await, (0, 0));

    stream.delete().await;
    services.cleanup().await;
}

/// A consumer that hangs with messages unacknowledged and is then killed
/// (its loop aborted, its client dropped): after `ack_wait` JetStream
/// delivers them to a new source on the same durable, and every effect
/// happens exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_consumer_loses_nothing_and_doubles_nothing() {
    let services = Services::new().await;
    let stream = TestStream::new().await;
    let expected = services.record(20).await;
    let relay = services.relay(stream.publishers());

    // The first consumer processes 5 messages, then hangs on the next 4
    // (max_in_flight) with more waiting in its client.
    let source = stream.source("b", Duration::from_secs(2)).await;
    services.hang_and_kill(source).await;
    let (_, unacked) = stream.unsettled("b").await;
    assert!(
        unacked >= 4,
        "{unacked} messages delivered and unacknowledged"
    );

    // A new process on the same durable.
    let second = Running::start(
        &services.inbox,
        services.consumers(),
        stream.source("b", Duration::from_secs(2)).await,
    );
    services.wait_for_rows(20).await;
    relay.stop().await;
    let report = second.stop().await;
    services.check_exactly_once(&expected).await;
    assert_eq!(report.processed, 15);
    assert_eq!(report.dead, 0);
    assert_eq!(stream.unsettled("b").await, (0, 0));

    stream.delete().await;
    services.cleanup().await;
}

/// The same event published twice (the second copy under the same
/// `Nats-Msg-Id`, past the stream's duplicate window) takes effect once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_twice_takes_effect_once() {
    let services = Services::new().await;
    let stream = TestStream::with(stream::Config {
        duplicate_window: Duration::from_millis(100),
        ..stream::Config::default()
    })
    .await;
    let expected = services.record(5).await;
    let relay = services.relay(stream.publishers());
    until("5 messages stored", || async { stored(&stream).await == 5 }).await;
    relay.stop().await;

    // Publish every stored message again, as it is (same headers).
    let js_stream = stream.js.get_stream(&stream.name).await.unwrap();
    for seq in 1..=5 {
        let copy = js_stream.get_raw_message(seq).await.unwrap();
        loop {
            let ack = stream
                .js
                .publish_with_headers(
                    copy.subject.clone(),
                    copy.headers.clone(),
                    copy.payload.clone(),
                )
                .await
                .unwrap()
                .await
                .unwrap();
            if !ack.duplicate {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert_eq!(stored(&stream).await, 10);

    let running = Running::start(
        &services.inbox,
        services.consumers(),
        stream.source("b", Duration::from_secs(30)).await,
    );
    until("10 messages settled", || async {
        stream.unsettled("b").await == (0, 0)
    })
    .await;
    let report = running.stop().await;
    services.check_exactly_once(&expected).await;
    assert_eq!(report.processed, 5);
    assert_eq!(report.duplicates, 5);

    stream.delete().await;
    services.cleanup().await;
}

async fn stored(stream: &TestStream) -> u64 {
    let mut s = stream.js.get_stream(&stream.name).await.unwrap();
    s.info().await.unwrap().state.messages
}

/// Poison messages (a payload that does not decode; no `Nats-Msg-Id`)
/// become dead letters in the inbox and are acknowledged. Of the version
/// messages, the one without a version header reaches the consumer as
/// version 1, the one of version 2 as 2, and the one of version 3 (newer
/// than the consumer knows) is a dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_letters_and_acknowledged() {
    let services = Services::new().await;
    let stream = TestStream::new().await;
    let subject = format!("{}.inbox_test.invoice_paid", stream.prefix);
    let bad_id = Uuid::now_v7();
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", bad_id.to_string().as_str());
    headers.insert(EVENT_NAME_HEADER, "inbox_test.invoice_paid");
    stream
        .js
        .publish_with_headers(subject.clone(), headers, UNDECODABLE.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(EVENT_NAME_HEADER, "inbox_test.invoice_paid");
    stream
        .js
        .publish_with_headers(subject.clone(), headers, WITHOUT_ID.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let versions = Versions::fresh();
    for (id, version) in versions.messages() {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.to_string().as_str());
        headers.insert(EVENT_NAME_HEADER, "inbox_test.invoice_paid");
        if let Some(version) = version {
            headers.insert(VERSION_HEADER, version);
        }
        stream
            .js
            .publish_with_headers(subject.clone(), headers, WITHOUT_ID.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    let running = Running::start(
        &services.inbox,
        services.consumers(),
        stream.source("b", Duration::from_secs(30)).await,
    );
    until("5 messages settled", || async {
        stream.unsettled("b").await == (0, 0)
    })
    .await;
    let report = running.stop().await;
    services.check_poison(&report, bad_id, &versions).await;

    stream.delete().await;
    services.cleanup().await;
}
