//! The RabbitMQ publisher against the local broker (`AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`). Each test declares its own
//! uniquely named exchange and queue and deletes them at the end.

mod broker_support;

use std::collections::BTreeMap;
use std::time::Duration;

use broker_support::{OrderPlaced, Received, check_exactly, record, sqlite_outbox, unique};
use futures_util::StreamExt;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind as LapinKind};
use outbox::publisher::amqp::{
    AmqpPublisher, CORRELATION_ID_HEADER, ExchangeKind, STREAM_KEY_HEADER,
};
use outbox::{Backoff, Publishers};

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A plain lapin connection for the test's own declarations and consuming.
async fn client() -> (Connection, Channel) {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ at AMQP_URL");
    let channel = connection.create_channel().await.unwrap();
    (connection, channel)
}

/// Declares a queue bound to `exchange` with `binding` (or, for the default
/// exchange, nothing to bind).
async fn queue(channel: &Channel, name: &str, exchange: &str, binding: &str) {
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: false,
                auto_delete: false,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    if !exchange.is_empty() {
        channel
            .queue_bind(
                name.into(),
                exchange.into(),
                binding.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }
}

fn text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => s.to_string(),
        AMQPValue::ShortString(s) => s.to_string(),
        other => panic!("header value is not a string: {other:?}"),
    }
}

/// Consumes `n` messages from `queue` (waiting at most `within`).
async fn consume(channel: &Channel, queue: &str, n: usize, within: Duration) -> Vec<Received> {
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "outbox-test".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut received = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + within;
    while received.len() < n {
        let delivery = tokio::time::timeout_at(deadline, consumer.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} messages arrived", received.len()))
            .expect("consumer open")
            .unwrap();
        let p = &delivery.properties;
        assert_eq!(
            p.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(*p.delivery_mode(), Some(2), "persistent");
        assert!(p.timestamp().is_some_and(|t| t > 1_600_000_000));
        let headers: BTreeMap<String, String> = p
            .headers()
            .as_ref()
            .map(|h| {
                h.inner()
                    .iter()
                    .map(|(k, v)| (k.to_string(), text(v)))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(correlation) = headers.get(CORRELATION_ID_HEADER) {
            assert_eq!(
                p.correlation_id()
                    .as_ref()
                    .map(ToString::to_string)
                    .as_ref(),
                Some(correlation)
            );
        }
        received.push(Received {
            event_id: p.message_id().as_ref().unwrap().as_str().parse().unwrap(),
            name: p.kind().as_ref().unwrap().to_string(),
            payload: String::from_utf8(delivery.data.clone()).unwrap(),
            headers,
        });
    }
    // Cancel now rather than on drop (lapin cancels a dropped consumer in
    // the background), so the next consumer on this channel may reuse the tag
    // and no later message goes to a consumer nobody reads.
    channel
        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await
        .unwrap();
    received
}

/// 200 events of two types (typed publisher and raw catch-all) over five
/// streams go through the relay loop into a topic exchange the publisher
/// declares, and come back from a bound queue unchanged and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_delivers_every_event_through_a_declared_topic_exchange() {
    let (_conn, channel) = client().await;
    let exchange = unique("outbox-test-x");
    let queue_name = unique("outbox-test-q");

    let rabbit = AmqpPublisher::builder(amqp_url())
        .exchange(&exchange)
        .declare_exchange(ExchangeKind::Topic)
        .build()
        .unwrap();
    rabbit.connect().await.expect("connects and declares");
    queue(&channel, &queue_name, &exchange, "shop.#").await;

    let (outbox, pool) = sqlite_outbox(|b| b).await;
    let expected = record(&outbox, &pool, 0, 200).await;

    let publishers = Publishers::builder()
        .publisher::<OrderPlaced, _>(rabbit.clone())
        .fallback(rabbit)
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(
        outbox
            .relay(publishers)
            .poll_interval(Duration::from_millis(20))
            .run(async {
                let _ = stopped.await;
            }),
    );

    let received = consume(
        &channel,
        &queue_name,
        expected.len(),
        Duration::from_secs(60),
    )
    .await;
    stop.send(()).unwrap();
    let report = relay.await.unwrap();

    check_exactly(
        &expected,
        &received,
        STREAM_KEY_HEADER,
        CORRELATION_ID_HEADER,
    );
    assert_eq!(report.published, 200, "{report:?}");
    assert_eq!(
        report.dead + report.retried + report.unavailable,
        0,
        "{report:?}"
    );
    assert_eq!(broker_support::pending(&pool).await, 0);

    channel
        .queue_delete(queue_name.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    channel
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
}

/// The default exchange with a routing-key mapping: every event goes to the
/// test's queue by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_exchange_with_a_routing_key_mapping() {
    let (_conn, channel) = client().await;
    let queue_name = unique("outbox-test-q");
    queue(&channel, &queue_name, "", "").await;

    let to_queue = queue_name.clone();
    let rabbit = AmqpPublisher::builder(amqp_url())
        .routing_key(move |_entry| to_queue.clone())
        .build()
        .unwrap();
    let (outbox, pool) = sqlite_outbox(|b| b).await;
    let expected = record(&outbox, &pool, 0, 60).await;
    let publishers = Publishers::builder().fallback(rabbit).build().unwrap();
    let report = outbox.run(&publishers, 100).await.unwrap();
    assert_eq!(report.published, 60, "{report:?}");

    let received = consume(&channel, &queue_name, 60, Duration::from_secs(30)).await;
    check_exactly(
        &expected,
        &received,
        STREAM_KEY_HEADER,
        CORRELATION_ID_HEADER,
    );

    channel
        .queue_delete(queue_name.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
}

/// RabbitMQ closes the channel with `404 NOT_FOUND` when the exchange does not
/// exist: that is a rejection carrying the broker's reason (not an outage),
/// the entries end as dead letters with that reason, and the publisher opens
/// a new channel on its next call: once the exchange exists, requeued
/// entries go out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_exchange_is_a_rejection_with_the_brokers_reason() {
    let exchange = unique("outbox-test-missing");
    let rabbit = AmqpPublisher::builder(amqp_url())
        .exchange(&exchange)
        .build()
        .unwrap();
    let (outbox, pool) = sqlite_outbox(|b| b.max_attempts(2).backoff(Backoff::none())).await;
    let expected = record(&outbox, &pool, 0, 10).await;
    let publishers = Publishers::builder()
        .publisher::<OrderPlaced, _>(rabbit.clone())
        .fallback(rabbit)
        .build()
        .unwrap();

    let mut total = outbox::Report::default();
    for _ in 0..10 {
        let report = outbox.run(&publishers, 100).await.unwrap();
        assert_eq!(report.unavailable, 0, "a refusal is no outage: {report:?}");
        total += report;
        if report.claimed == 0 {
            break;
        }
    }
    assert_eq!(total.published, 0, "{total:?}");
    assert_eq!(total.dead, 10, "{total:?}");
    let dead = outbox.dead_letters(100).await.unwrap();
    assert_eq!(dead.len(), 10);
    eprintln!("dead letter reason: {}", dead[0].reason);
    for letter in &dead {
        assert_eq!(letter.attempts, 2);
        assert!(
            letter.reason.contains("NOT_FOUND") && letter.reason.contains("no exchange"),
            "{}",
            letter.reason
        );
        assert!(!letter.reason.contains("guest:guest"), "{}", letter.reason);
    }

    // Create the exchange and a queue; requeue: the same publisher recovers.
    let (_conn, channel) = client().await;
    channel
        .exchange_declare(
            exchange.as_str().into(),
            LapinKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let queue_name = unique("outbox-test-q");
    queue(&channel, &queue_name, &exchange, "").await;
    assert_eq!(outbox.requeue_all().await.unwrap(), 10);
    let report = outbox.run(&publishers, 100).await.unwrap();
    assert_eq!(report.published, 10, "{report:?}");
    let received = consume(&channel, &queue_name, 10, Duration::from_secs(30)).await;
    check_exactly(
        &expected,
        &received,
        STREAM_KEY_HEADER,
        CORRELATION_ID_HEADER,
    );

    channel
        .queue_delete(queue_name.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    channel
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
}

/// A mandatory message no queue receives is returned by the broker: a
/// rejection (`312 NO_ROUTE`), not a silent loss. With `mandatory(false)`
/// the same message counts as published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_messages_are_rejected_unless_not_mandatory() {
    let exchange = unique("outbox-test-x");
    let (_conn, channel) = client().await;
    channel
        .exchange_declare(
            exchange.as_str().into(),
            LapinKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    let (outbox, pool) = sqlite_outbox(|b| b.max_attempts(1)).await;
    record(&outbox, &pool, 0, 3).await;
    let strict = AmqpPublisher::builder(amqp_url())
        .exchange(&exchange)
        .build()
        .unwrap();
    let report = outbox
        .run(
            &Publishers::builder().fallback(strict).build().unwrap(),
            100,
        )
        .await
        .unwrap();
    assert_eq!(report.dead, 3, "{report:?}");
    let dead = outbox.dead_letters(10).await.unwrap();
    eprintln!("dead letter reason: {}", dead[0].reason);
    assert!(dead[0].reason.contains("NO_ROUTE"), "{}", dead[0].reason);

    let (outbox, pool) = sqlite_outbox(|b| b).await;
    record(&outbox, &pool, 0, 3).await;
    let lenient = AmqpPublisher::builder(amqp_url())
        .exchange(&exchange)
        .mandatory(false)
        .build()
        .unwrap();
    let report = outbox
        .run(
            &Publishers::builder().fallback(lenient).build().unwrap(),
            100,
        )
        .await
        .unwrap();
    assert_eq!(report.published, 3, "{report:?}");

    channel
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
}

/// No broker at the address: unavailable, no attempt counted, the error
/// names the endpoint without its password.
#[tokio::test]
async fn unreachable_broker_is_unavailable_and_costs_nothing() {
    let rabbit = AmqpPublisher::builder("amqp://guest:s3cret@127.0.0.1:1/%2f")
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let err = rabbit.connect().await.unwrap_err();
    eprintln!("connect error: {err}");
    assert!(err.is_unavailable(), "{err}");
    assert!(!err.to_string().contains("s3cret"), "{err}");

    let (outbox, pool) = sqlite_outbox(|b| b.max_attempts(1)).await;
    record(&outbox, &pool, 0, 5).await;
    let report = outbox
        .run(
            &Publishers::builder().fallback(rabbit).build().unwrap(),
            100,
        )
        .await
        .unwrap();
    assert_eq!(report.unavailable, 5, "{report:?}");
    assert_eq!(
        report.dead + report.retried + report.published,
        0,
        "{report:?}"
    );
    assert!(outbox.dead_letters(10).await.unwrap().is_empty());
    assert_eq!(broker_support::pending(&pool).await, 5);
}
