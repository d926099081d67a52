//! Outbox to RabbitMQ: `cargo run --example rabbitmq --features broker-amqp`
//! (local broker at `AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`).
//!
//! Records events in the same transaction as a business row (SQLite in a
//! temp dir), relays them into a topic exchange with publisher confirms,
//! consumes them back from a queue bound to it and prints them.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use outbox::publisher::amqp::{AmqpPublisher, ExchangeKind};
use outbox::{Metadata, Outbox, Publishers};
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

const EXCHANGE: &str = "outbox-example";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());

    // The service's database, with the outbox table next to its own.
    let dir = std::env::temp_dir().join(format!("outbox-rabbitmq-{}", std::process::id()));
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

    // The publisher declares its (durable, topic) exchange; this example
    // binds a queue of its own to read the events back.
    let rabbit = AmqpPublisher::builder(url.as_str())
        .exchange(EXCHANGE)
        .declare_exchange(ExchangeKind::Topic)
        .build()?;
    rabbit.connect().await?;
    println!("publisher: {rabbit:?}");
    let consumer_conn = Connection::connect(&url, ConnectionProperties::default()).await?;
    let channel = consumer_conn.create_channel().await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            EXCHANGE.into(),
            "billing.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    record_invoices(&outbox, &pool).await?;

    // The relay loop: typed publisher for InvoicePaid, the same publisher as
    // catch-all for everything else.
    let publishers = Publishers::builder()
        .publisher::<InvoicePaid, _>(rabbit.clone())
        .fallback(rabbit)
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

    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            "outbox-example".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    for _ in 0..5 {
        let Some(delivery) = tokio::time::timeout(Duration::from_secs(10), consumer.next()).await?
        else {
            break;
        };
        let delivery = delivery?;
        print_delivery(&delivery);
    }

    stop.send(()).ok();
    let report = relay.await?;
    println!("relay: {report:?}");
    channel
        .exchange_delete(EXCHANGE.into(), ExchangeDeleteOptions::default())
        .await?;
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

/// Prints what a consumer sees of one message.
fn print_delivery(delivery: &Delivery) {
    let p = &delivery.properties;
    let headers: Vec<String> = p
        .headers()
        .as_ref()
        .map(|h| {
            h.inner()
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{k}={}",
                        v.as_long_string()
                            .map(ToString::to_string)
                            .unwrap_or_default()
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    println!(
        "consumed routing_key={} type={} message_id={} headers=[{}] body={}",
        delivery.routing_key,
        p.kind()
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        p.message_id()
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        headers.join(", "),
        String::from_utf8_lossy(&delivery.data),
    );
}
