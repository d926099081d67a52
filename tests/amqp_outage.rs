//! RabbitMQ stopped and started again under a running relay: no event is
//! lost and none is dead-lettered because of the outage.
//!
//! This suite stops the shared local broker (`rabbitmqctl stop_app`), so it
//! is its own test binary with a single test: `cargo test` runs test
//! binaries one after another, so no other suite runs while the broker is
//! down (do not run the suite with a runner that runs binaries in parallel).
//! A guard runs `rabbitmqctl start_app` when the test ends, even if it panics.

mod broker_support;

use std::process::Command;
use std::time::{Duration, Instant};

use broker_support::{OrderPlaced, Received, check_contents, record, sqlite_outbox, unique};
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use outbox::publisher::amqp::{AmqpPublisher, CORRELATION_ID_HEADER, STREAM_KEY_HEADER};
use outbox::{Backoff, Publishers};

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn rabbitmqctl(arg: &str) {
    let started = Instant::now();
    let status = Command::new("rabbitmqctl")
        .arg(arg)
        .status()
        .expect("rabbitmqctl on PATH");
    eprintln!("rabbitmqctl {arg}: {status} in {:?}", started.elapsed());
    assert!(status.success(), "rabbitmqctl {arg} failed: {status}");
}

/// Starts the broker's application again when dropped, whatever happened.
struct RestartOnDrop;

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        let status = Command::new("rabbitmqctl").arg("start_app").status();
        eprintln!("guard: rabbitmqctl start_app: {status:?}");
    }
}

async fn connect_retrying(within: Duration) -> Connection {
    let deadline = Instant::now() + within;
    loop {
        match Connection::connect(&amqp_url(), ConnectionProperties::default()).await {
            Ok(connection) => return connection,
            Err(err) if Instant::now() < deadline => {
                eprintln!("waiting for RabbitMQ: {err}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(err) => panic!("RabbitMQ did not come back: {err}"),
        }
    }
}

fn text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => s.to_string(),
        AMQPValue::ShortString(s) => s.to_string(),
        other => panic!("header value is not a string: {other:?}"),
    }
}

/// 2,000 events recorded over ~8 s while a relay loop drains them; the
/// broker is stopped for ~5 s in the middle and started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_run_loses_nothing_and_kills_nothing() {
    const TOTAL: u32 = 2_000;
    const WAVES: u32 = 40; // 50 events every 200 ms: recording goes on for ~8 s

    let queue_name = unique("outbox-test-outage");
    durable_queue(&queue_name).await;

    let to_queue = queue_name.clone();
    let rabbit = AmqpPublisher::builder(amqp_url())
        .routing_key(move |_entry| to_queue.clone())
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let (outbox, pool) = sqlite_outbox(|b| {
        b.max_attempts(3)
            .backoff(Backoff::fixed(Duration::from_millis(200)))
            .lease(Duration::from_secs(10))
    })
    .await;
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
            .max_backoff(Duration::from_secs(1))
            .run(async {
                let _ = stopped.await;
            }),
    );

    // The application keeps recording while the broker goes away and back.
    let producer = {
        let (outbox, pool) = (outbox.clone(), pool.clone());
        tokio::spawn(async move {
            let mut expected = Vec::with_capacity(TOTAL as usize);
            let per_wave = TOTAL / WAVES;
            for wave in 0..WAVES {
                expected.extend(record(&outbox, &pool, wave * per_wave, per_wave).await);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            expected
        })
    };

    tokio::time::sleep(Duration::from_secs(2)).await;
    let pending_before = broker_support::pending(&pool).await;
    let guard = RestartOnDrop;
    tokio::task::spawn_blocking(|| rabbitmqctl("stop_app"))
        .await
        .unwrap();
    let stopped_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pending_during = broker_support::pending(&pool).await;
    tokio::task::spawn_blocking(|| rabbitmqctl("start_app"))
        .await
        .unwrap();
    std::mem::forget(guard); // started already
    eprintln!("broker was down {:?}", stopped_at.elapsed());

    let expected = producer.await.unwrap();
    // The relay resumes on its own: the outbox drains with nobody's help.
    let deadline = Instant::now() + Duration::from_secs(90);
    while broker_support::pending(&pool).await > 0 {
        assert!(
            Instant::now() < deadline,
            "relay did not drain: {} pending",
            broker_support::pending(&pool).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send(()).unwrap();
    let report = relay.await.unwrap();
    eprintln!(
        "report: {report:?}; pending when stopped {pending_before}, 5 s later {pending_during}"
    );

    assert!(pending_during > 0, "the outage was mid-run");
    assert!(
        report.unavailable > 0,
        "the relay saw the outage: {report:?}"
    );
    assert_eq!(report.dead, 0, "{report:?}");
    assert!(outbox.dead_letters(10).await.unwrap().is_empty());
    assert!(report.published >= TOTAL as usize, "{report:?}");

    // Every event is in the queue (at least once: a message whose confirm
    // was lost in the outage is published again).
    let received = drain(&queue_name).await;
    let duplicates = check_contents(
        &expected,
        &received,
        STREAM_KEY_HEADER,
        CORRELATION_ID_HEADER,
    );
    eprintln!(
        "{} events, {} messages consumed, {duplicates} duplicates",
        expected.len(),
        received.len()
    );
    assert_eq!(expected.len(), TOTAL as usize);
}

/// Consumes everything in `queue` (until it stays empty for 3 s), then
/// deletes the queue.
async fn drain(queue: &str) -> Vec<Received> {
    let connection = connect_retrying(Duration::from_secs(30)).await;
    let channel = connection.create_channel().await.unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "outbox-outage-test".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut received = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(3), consumer.next()).await;
        let Ok(Some(delivery)) = next else { break };
        let delivery = delivery.unwrap();
        let p = &delivery.properties;
        received.push(Received {
            event_id: p.message_id().as_ref().unwrap().as_str().parse().unwrap(),
            name: p.kind().as_ref().unwrap().to_string(),
            payload: String::from_utf8(delivery.data.clone()).unwrap(),
            headers: p
                .headers()
                .as_ref()
                .map(|h| {
                    h.inner()
                        .iter()
                        .map(|(k, v)| (k.to_string(), text(v)))
                        .collect()
                })
                .unwrap_or_default(),
        });
    }
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    received
}

/// A durable queue on the default exchange: it and its persistent,
/// confirmed messages survive `stop_app`/`start_app`.
async fn durable_queue(name: &str) {
    let connection = connect_retrying(Duration::from_secs(30)).await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
}
