//! Outbox to Kafka: `cargo run --example kafka --features broker-kafka`
//! (a local Kafka-compatible broker at `KAFKA_BROKERS`, default
//! `127.0.0.1:19092`; `.ci/run` starts tansu there).
//!
//! Records events in the same transaction as a business row (SQLite in a
//! temp dir), relays them into a topic of 3 partitions (key = the stream
//! key, so an invoice's events stay in order), consumes them back and
//! prints them.

use std::time::Duration;

use outbox::publisher::kafka::KafkaPublisher;
use outbox::{Metadata, Outbox, Publishers};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{Sqlite, SqlitePool};

#[derive(Debug, Serialize, Deserialize, outbox::Event)]
#[outbox(name = "billing.invoice_paid")]
struct InvoicePaid {
    invoice_id: i64,
    amount_cents: i64,
}

#[derive(Debug, Serialize, Deserialize, outbox::Event)]
#[outbox(name = "billing.invoice_voided")]
struct InvoiceVoided {
    invoice_id: i64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".to_owned());

    // The service's database, with the outbox table next to its own.
    let dir = std::env::temp_dir().join(format!("outbox-kafka-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let pool = SqlitePoolOptions::new()
        .connect_with(
            SqliteConnectOptions::new()
                .filename(dir.join("app.db"))
                .create_if_missing(true),
        )
        .await?;
    sqlx::query("CREATE TABLE invoices (id INTEGER PRIMARY KEY, state TEXT NOT NULL)")
        .execute(&pool)
        .await?;
    let outbox = Outbox::builder(pool.clone()).build().await?;

    // A topic of this run's own, 3 partitions.
    let topic = format!("outbox-example-{}", std::process::id());
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin
        .create_topics(
            &[NewTopic::new(&topic, 3, TopicReplication::Fixed(1))],
            &options,
        )
        .await
        .map_err(|err| format!("no Kafka broker at {brokers}? {err}"))?
    {
        result.map_err(|(topic, err)| format!("creating topic {topic}: {err}"))?;
    }
    let kafka = KafkaPublisher::builder(&brokers).topic(&topic).build()?;
    println!("publisher: {kafka:?}");

    record_invoices(&outbox, &pool).await?;

    // The relay loop: typed publisher for InvoicePaid, the same publisher as
    // catch-all for everything else.
    let publishers = Publishers::builder()
        .publisher::<InvoicePaid, _>(kafka.clone())
        .fallback(kafka)
        .build()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(
        outbox
            .relay(publishers)
            .poll_interval(Duration::from_millis(100))
            .run(async {
                let _ = stopped.await;
            }),
    );

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("{topic}-reader"))
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[&topic])?;
    for _ in 0..5 {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await??;
        let mut headers: Vec<String> = message
            .headers()
            .iter()
            .flat_map(|h| h.iter())
            .map(|h| {
                format!(
                    "{}={}",
                    h.key,
                    String::from_utf8_lossy(h.value.unwrap_or_default())
                )
            })
            .collect();
        headers.sort();
        println!(
            "consumed partition={} offset={} key={} headers=[{}] payload={}",
            message.partition(),
            message.offset(),
            String::from_utf8_lossy(message.key().unwrap_or_default()),
            headers.join(", "),
            String::from_utf8_lossy(message.payload().unwrap_or_default()),
        );
    }
    drop(consumer);

    stop.send(()).ok();
    let report = relay.await?;
    println!("relay: {report:?}");
    admin.delete_topics(&[&topic], &options).await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// Pays four invoices, voids the last: each business change commits with its events.
async fn record_invoices(
    outbox: &Outbox<Sqlite>,
    pool: &SqlitePool,
) -> Result<(), Box<dyn std::error::Error>> {
    for invoice_id in 1..=4 {
        let mut tx = pool.begin().await?;
        sqlx::query("INSERT INTO invoices (id, state) VALUES (?, 'paid')")
            .bind(invoice_id)
            .execute(&mut *tx)
            .await?;
        let meta = Metadata::new()
            .stream_key(format!("invoice-{invoice_id}"))
            .header("tenant", "acme");
        let paid = outbox
            .record_with(
                &mut *tx,
                &InvoicePaid {
                    invoice_id,
                    amount_cents: invoice_id * 1250,
                },
                meta.clone(),
            )
            .await?;
        println!("recorded invoice {invoice_id} paid: {:?}", paid.event_id());
        if invoice_id == 4 {
            let voided = outbox
                .record_with(&mut *tx, &InvoiceVoided { invoice_id }, meta)
                .await?;
            println!(
                "recorded invoice {invoice_id} voided: {:?}",
                voided.event_id()
            );
        }
        tx.commit().await?;
    }
    Ok(())
}
