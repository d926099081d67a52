//! The RabbitMQ publisher against the local broker (`AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`). Each test declares its own
//! uniquely named exchange and queue and deletes them at the end. The TLS
//! tests put `stunnel4` (with a throwaway CA) in front of the broker's
//! plaintext port 5672.

mod broker_support;
mod tls_support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use broker_support::blocked::{assert_blocked_at_no_cost, check_exactly_once, probe, relay_after};
use broker_support::{
    Expected, OrderPlaced, Received, check_contents, check_exactly, record, sqlite_outbox, unique,
};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind as LapinKind};
use outbox::publisher::amqp::{
    AmqpPublisher, CORRELATION_ID_HEADER, ExchangeKind, STREAM_KEY_HEADER,
};
use outbox::{Backoff, Outbox, Publishers, Report};
use sqlx::Sqlite;
use tls_support::{Stunnel, TestCa};

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

/// What the broker delivered, checked for the properties every message has.
fn to_received(delivery: &Delivery) -> Received {
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
    Received {
        event_id: p.message_id().as_ref().unwrap().as_str().parse().unwrap(),
        name: p.kind().as_ref().unwrap().to_string(),
        payload: String::from_utf8(delivery.data.clone()).unwrap(),
        headers,
    }
}

/// Takes every message in `queue` now (`basic.get` until it is empty).
async fn drain(channel: &Channel, queue: &str) -> Vec<Received> {
    let mut received = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        received.push(to_received(&message.delivery));
    }
    received
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
        received.push(to_received(&delivery));
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
/// declares, and come back from a bound queue unchanged and in stream order
/// (per-stream order on, 4 batches in flight).
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

    let (outbox, pool) = sqlite_outbox(|b| b.ordered_streams(true)).await;
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
            .in_flight(4)
            .poll_interval(Duration::from_millis(20))
            .run(async {
                let _ = stopped.await;
            }),
    );

    let received = consume(
        &channel,
        &queue_name,
        expected.len(),
        Duration::from_mins(1),
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

/// A publisher and its catch-all, both `rabbit`.
fn both(rabbit: &AmqpPublisher) -> Publishers {
    Publishers::builder()
        .publisher::<OrderPlaced, _>(rabbit.clone())
        .fallback(rabbit.clone())
        .max_pause(Duration::from_millis(500))
        .build()
        .unwrap()
}

async fn declare_exchange(channel: &Channel, name: &str, kind: LapinKind) {
    channel
        .exchange_declare(
            name.into(),
            kind,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
}

async fn delete(channel: &Channel, exchange: &str, queue: &str) {
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    channel
        .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
}

/// A missing exchange (`404 NOT_FOUND`) is a deploy mistake, not a bad
/// event: it costs no attempt and makes no dead letter (even with
/// `max_attempts(1)`); the publishers are blocked with a reason that says
/// what to fix, and once the exchange exists the relay resumes by itself
/// and delivers every entry exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_exchange_blocks_until_it_is_declared_then_delivers_everything() {
    let exchange = unique("outbox-test-missing");
    let queue_name = unique("outbox-test-q");
    let rabbit = AmqpPublisher::builder(amqp_url())
        .exchange(&exchange)
        .build()
        .unwrap();
    let (outbox, pool) = sqlite_outbox(|b| b.max_attempts(1).backoff(Backoff::none())).await;
    let expected = record(&outbox, &pool, 0, 20).await;
    let publishers = both(&rabbit);

    let total = probe(&outbox, &publishers, Duration::from_millis(1500)).await;
    let missing = format!("exchange `{exchange}` does not exist");
    assert_blocked_at_no_cost(
        &outbox,
        &pool,
        &publishers,
        &total,
        20,
        &[&missing, "404 NOT_FOUND", "declare it"],
    )
    .await;

    let (_conn, channel) = client().await;
    let report = relay_after(&outbox, &pool, publishers, async {
        declare_exchange(&channel, &exchange, LapinKind::Fanout).await;
        queue(&channel, &queue_name, &exchange, "").await;
    })
    .await;
    assert_eq!(report.published, 20, "{report:?}");
    let received = drain(&channel, &queue_name).await;
    check_exactly_once(
        &expected,
        &received,
        STREAM_KEY_HEADER,
        CORRELATION_ID_HEADER,
    );
    delete(&channel, &exchange, &queue_name).await;
}

/// A mandatory message that no queue receives is returned (`312
/// NO_ROUTE`): the publishers are blocked (no attempt, no dead letter)
/// until a queue is bound; then the relay resumes by itself and every
/// entry arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbound_routing_key_blocks_until_a_queue_is_bound_then_delivers_everything() {
    let exchange = unique("outbox-test-x");
    let queue_name = unique("outbox-test-q");
    let (_conn, channel) = client().await;
    declare_exchange(&channel, &exchange, LapinKind::Topic).await;
    let rabbit = AmqpPublisher::builder(amqp_url())
        .exchange(&exchange)
        .build()
        .unwrap();
    let (outbox, pool) = sqlite_outbox(|b| b.max_attempts(1).backoff(Backoff::none())).await;
    let expected = record(&outbox, &pool, 0, 20).await;
    let publishers = both(&rabbit);

    let total = probe(&outbox, &publishers, Duration::from_millis(1500)).await;
    let unbound = format!("no queue is bound to exchange `{exchange}` for routing key `shop.");
    assert_blocked_at_no_cost(
        &outbox,
        &pool,
        &publishers,
        &total,
        20,
        &[&unbound, "312 NO_ROUTE", "the message was returned"],
    )
    .await;

    let report = relay_after(&outbox, &pool, publishers, async {
        queue(&channel, &queue_name, &exchange, "shop.#").await;
    })
    .await;
    assert_eq!(report.published, 20, "{report:?}");
    let received = drain(&channel, &queue_name).await;
    check_exactly_once(
        &expected,
        &received,
        STREAM_KEY_HEADER,
        CORRELATION_ID_HEADER,
    );
    delete(&channel, &exchange, &queue_name).await;
}

/// With `mandatory(false)` a message no queue receives counts as published
/// (RabbitMQ drops it): for exchanges where nothing bound is normal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_messages_count_as_published_when_not_mandatory() {
    let exchange = unique("outbox-test-x");
    let (_conn, channel) = client().await;
    declare_exchange(&channel, &exchange, LapinKind::Topic).await;
    let (outbox, pool) = sqlite_outbox(|b| b).await;
    record(&outbox, &pool, 0, 3).await;
    let lenient = AmqpPublisher::builder(amqp_url())
        .exchange(&exchange)
        .mandatory(false)
        .build()
        .unwrap();
    let publishers = Publishers::builder().fallback(lenient).build().unwrap();
    let report = outbox.run(&publishers, 100).await.unwrap();
    assert_eq!(report.published, 3, "{report:?}");
    assert!(publishers.blocked().is_empty());
    channel
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
}

/// `rabbitmqctl`, as the local broker's administrator.
fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs (as root, next to the local broker)");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A RabbitMQ user of the test's own, deleted on drop (also when the test
/// fails).
struct User(String);

impl User {
    fn add(password: &str) -> Self {
        let name = unique("outbox-test-user");
        rabbitmqctl(&["add_user", &name, password]);
        Self(name)
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_user", &self.0])
            .output();
    }
}

/// Runs the outbox while its publishers are blocked until their reason
/// contains `part` (their pause has to run out first).
async fn probe_until_reason(
    outbox: &Outbox<Sqlite>,
    publishers: &Publishers,
    part: &str,
) -> Report {
    let mut total = Report::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        total += outbox.run(publishers, 100).await.unwrap();
        let blocked = publishers.blocked();
        if blocked.len() == 2 && blocked.iter().all(|b| b.reason.contains(part)) {
            return total;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "reason never became {part:?}: {blocked:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Refused credentials (`403 ACCESS_REFUSED` at login) and a user who may
/// not write to the exchange (`403 ACCESS_REFUSED` on the channel) block
/// the publishers at no cost, each with its own reason; once an
/// administrator fixes the password and then the permission, the relay
/// resumes by itself and delivers every entry exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_login_and_refused_write_block_until_fixed_then_deliver_everything() {
    let user = User::add("first-s3cret");
    // Reads and nothing else: may log in, may not publish.
    rabbitmqctl(&["set_permissions", "-p", "/", &user.0, "^$", "^$", ".*"]);
    let exchange = unique("outbox-test-x");
    let queue_name = unique("outbox-test-q");
    let (_conn, channel) = client().await;
    declare_exchange(&channel, &exchange, LapinKind::Fanout).await;
    queue(&channel, &queue_name, &exchange, "").await;

    let rabbit = AmqpPublisher::builder(format!(
        "amqp://{}:second-s3cret@127.0.0.1:5672/%2f",
        user.0
    ))
    .exchange(&exchange)
    .build()
    .unwrap();
    let (outbox, pool) = sqlite_outbox(|b| b.max_attempts(1).backoff(Backoff::none())).await;
    let expected = record(&outbox, &pool, 0, 20).await;
    let publishers = both(&rabbit);

    let total = probe(&outbox, &publishers, Duration::from_secs(1)).await;
    assert_blocked_at_no_cost(
        &outbox,
        &pool,
        &publishers,
        &total,
        20,
        &[
            "refused the login",
            "403 ACCESS_REFUSED",
            "user and password",
        ],
    )
    .await;
    for b in publishers.blocked() {
        assert!(!b.reason.contains("s3cret"), "{}", b.reason);
    }

    // The password is fixed: now the login works and the write is refused.
    rabbitmqctl(&["change_password", &user.0, "second-s3cret"]);
    let total = probe_until_reason(&outbox, &publishers, "may not publish").await;
    let refused = format!("may not publish to exchange `{exchange}`");
    assert_blocked_at_no_cost(
        &outbox,
        &pool,
        &publishers,
        &total,
        20,
        &[&refused, "403 ACCESS_REFUSED", "write permission"],
    )
    .await;

    let report = relay_after(&outbox, &pool, publishers, async {
        rabbitmqctl(&["set_permissions", "-p", "/", &user.0, "^$", ".*", ".*"]);
    })
    .await;
    assert_eq!(report.published, 20, "{report:?}");
    let received = drain(&channel, &queue_name).await;
    check_exactly_once(
        &expected,
        &received,
        STREAM_KEY_HEADER,
        CORRELATION_ID_HEADER,
    );
    delete(&channel, &exchange, &queue_name).await;
}

/// A virtual host that does not exist (`530 NOT_ALLOWED`) is unavailable,
/// and the reason names the vhost to check.
#[tokio::test]
async fn missing_vhost_is_unavailable_with_the_reason() {
    let vhost = unique("outbox-test-vhost");
    let rabbit = AmqpPublisher::builder(format!("amqp://guest:guest@127.0.0.1:5672/{vhost}"))
        .build()
        .unwrap();
    let err = rabbit.connect().await.unwrap_err();
    eprintln!("connect error: {err}");
    assert!(err.is_unavailable(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("530 NOT_ALLOWED") && text.contains(&format!("virtual host `{vhost}`")),
        "{text}"
    );
}

/// `declare_exchange` that contradicts the existing exchange (`406
/// PRECONDITION_FAILED`) is a setting to fix: unavailable, with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_declaration_is_unavailable_with_the_reason() {
    let exchange = unique("outbox-test-x");
    let (_conn, channel) = client().await;
    declare_exchange(&channel, &exchange, LapinKind::Fanout).await;
    let rabbit = AmqpPublisher::builder(amqp_url())
        .exchange(&exchange)
        .declare_exchange(ExchangeKind::Topic)
        .build()
        .unwrap();
    let err = rabbit.connect().await.unwrap_err();
    eprintln!("connect error: {err}");
    assert!(err.is_unavailable(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("406 PRECONDITION_FAILED") && text.contains(".declare_exchange(..)"),
        "{text}"
    );
    channel
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
}

/// A message RabbitMQ nacks (here: routed to a queue whose `reject-publish`
/// overflow refuses it) is a rejection of that one entry: it costs the entry
/// its attempts and ends as a dead letter with the reason, while the other
/// entries of the same batches are delivered, each once, and nothing blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacked_message_is_rejected_alone_while_the_rest_are_delivered() {
    let exchange = unique("outbox-test-x");
    let good = unique("outbox-test-q");
    let full = unique("outbox-test-full");
    let (_conn, channel) = client().await;
    declare_exchange(&channel, &exchange, LapinKind::Topic).await;
    queue(&channel, &good, &exchange, "shop.#").await;
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    channel
        .queue_declare(full.as_str().into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    channel
        .queue_bind(
            full.as_str().into(),
            exchange.as_str().into(),
            "poison.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    // Entry 3 (an OrderPlaced, in a batch with others) goes to the full queue.
    let rabbit = AmqpPublisher::builder(amqp_url())
        .exchange(&exchange)
        .routing_key(|entry| {
            if entry.headers().get("seq").map(String::as_str) == Some("3") {
                "poison.order".to_owned()
            } else {
                entry.name().to_owned()
            }
        })
        .build()
        .unwrap();
    let (outbox, pool) = sqlite_outbox(|b| b.max_attempts(2).backoff(Backoff::none())).await;
    let expected = record(&outbox, &pool, 0, 20).await;
    let publishers = both(&rabbit);
    let mut total = Report::default();
    for _ in 0..10 {
        let report = outbox.run(&publishers, 100).await.unwrap();
        total += report;
        if report.claimed == 0 {
            break;
        }
    }
    assert_eq!(total.published, 19, "{total:?}");
    assert_eq!(total.retried, 1, "{total:?}");
    assert_eq!(total.dead, 1, "{total:?}");
    assert_eq!(total.unavailable, 0, "{total:?}");
    assert!(
        publishers.blocked().is_empty(),
        "{:?}",
        publishers.blocked()
    );
    let dead = outbox.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    eprintln!("dead letter reason: {}", dead[0].reason);
    assert_eq!(dead[0].attempts, 2);
    assert!(dead[0].reason.contains("nacked"), "{}", dead[0].reason);
    let poison = &expected[3];
    assert_eq!(dead[0].event_id, poison.event_id);

    let received = drain(&channel, &good).await;
    let delivered: Vec<Expected> = expected
        .iter()
        .filter(|e| e.event_id != poison.event_id)
        .cloned()
        .collect();
    assert_eq!(received.len(), 19);
    assert_eq!(
        check_contents(
            &delivered,
            &received,
            STREAM_KEY_HEADER,
            CORRELATION_ID_HEADER
        ),
        0,
        "duplicates"
    );
    channel
        .queue_delete(full.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    delete(&channel, &exchange, &good).await;
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

/// The plaintext port of the local broker, which stunnel fronts with TLS.
const AMQP_PORT: u16 = 5672;

/// `amqps://` is TLS: through stunnel (in front of RabbitMQ, with a server
/// certificate of a throwaway CA) the publisher that trusts the CA delivers
/// every entry, while one that knows only the system roots fails the
/// handshake (unavailable, saying why) and never falls back to plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_with_a_custom_ca_delivers_everything_over_tls() {
    let ca = TestCa::new();
    let tunnel = Stunnel::start(&ca, AMQP_PORT);
    let url = format!("amqps://guest:guest@127.0.0.1:{}/%2f", tunnel.port);
    let queue_name = unique("outbox-test-tls-q");
    let (_conn, channel) = client().await;
    queue(&channel, &queue_name, "", "").await;
    let to_queue = queue_name.clone();
    let route = move |_entry: &outbox::Entry| to_queue.clone();

    let untrusted = AmqpPublisher::builder(&url)
        .routing_key(route.clone())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let err = untrusted.connect().await.unwrap_err();
    eprintln!("without the CA: {err}");
    assert!(err.is_unavailable(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("TLS handshake") && text.contains("certificate"),
        "{text}"
    );
    assert!(!text.contains("guest:guest"), "{text}");

    let rabbit = AmqpPublisher::builder(&url)
        .routing_key(route)
        .tls_ca_pem(ca.ca_pem.clone())
        .build()
        .unwrap();
    rabbit.connect().await.expect("TLS with the test CA");
    let (outbox, pool) = sqlite_outbox(|b| b).await;
    let expected = record(&outbox, &pool, 0, 20).await;
    let publishers = Publishers::builder().fallback(rabbit).build().unwrap();
    let mut total = Report::default();
    for _ in 0..10 {
        let report = outbox.run(&publishers, 100).await.unwrap();
        total += report;
        if report.claimed == 0 {
            break;
        }
    }
    assert_eq!(total.published, 20, "{total:?}");
    let received = drain(&channel, &queue_name).await;
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
    drop(tunnel);
}

/// `amqps://` to the broker's plaintext port fails the TLS handshake: the
/// publishers are blocked at no cost with the reason, and nothing reaches
/// the queue (before, lapin without a TLS feature connected in plaintext).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_to_a_plaintext_port_fails_and_sends_nothing() {
    let queue_name = unique("outbox-test-tls-q");
    let (_conn, channel) = client().await;
    queue(&channel, &queue_name, "", "").await;
    let to_queue = queue_name.clone();
    let rabbit = AmqpPublisher::builder(format!("amqps://guest:guest@127.0.0.1:{AMQP_PORT}/%2f"))
        .routing_key(move |_entry| to_queue.clone())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let (outbox, pool) = sqlite_outbox(|b| b.max_attempts(1)).await;
    record(&outbox, &pool, 0, 20).await;
    let publishers = both(&rabbit);
    let total = probe(&outbox, &publishers, Duration::from_secs(1)).await;
    assert_blocked_at_no_cost(
        &outbox,
        &pool,
        &publishers,
        &total,
        20,
        &["TLS handshake", "is the port a TLS port"],
    )
    .await;
    assert!(
        drain(&channel, &queue_name).await.is_empty(),
        "sent in plaintext"
    );
    channel
        .queue_delete(queue_name.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
}
