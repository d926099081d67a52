//! Outbox to NATS JetStream: `cargo run --example nats --features broker-nats`
//! (local server at `NATS_URL`, default `nats://127.0.0.1:4222`).
//!
//! Records events in the same transaction as a business row (SQLite in a
//! temp dir), relays them into a JetStream stream with `Nats-Msg-Id` = event
//! id, consumes them back and prints them.

use std::time::Duration;

use async_nats::HeaderValue;
use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use outbox::publisher::nats::NatsPublisher;
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

const STREAM: &str = "OUTBOX_EXAMPLE";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());

    // The service's database, with the outbox table next to its own.
    let dir = std::env::temp_dir().join(format!("outbox-nats-{}", std::process::id()));
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

    // A stream capturing `example.>`; the publisher sends `billing.invoice_paid`
    // to `example.billing.invoice_paid`.
    let js = jetstream::new(async_nats::connect(url.as_str()).await?);
    let _ = js.delete_stream(STREAM).await; // left over from an interrupted run
    js.create_stream(stream::Config {
        name: STREAM.to_owned(),
        subjects: vec!["example.>".to_owned()],
        ..stream::Config::default()
    })
    .await?;
    let nats = NatsPublisher::builder(url.as_str())
        .subject_prefix("example.")
        .build()?;
    println!("publisher: {nats:?}");

    record_invoices(&outbox, &pool).await?;

    // The relay loop: typed publisher for InvoicePaid, the same publisher as
    // catch-all for everything else.
    let publishers = Publishers::builder()
        .publisher::<InvoicePaid, _>(nats.clone())
        .fallback(nats)
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

    let consumer = js
        .get_stream(STREAM)
        .await?
        .create_consumer(consumer::pull::Config::default())
        .await?;
    let mut messages = consumer.messages().await?;
    for _ in 0..5 {
        let Some(message) = tokio::time::timeout(Duration::from_secs(10), messages.next()).await?
        else {
            break;
        };
        let message = message?;
        let mut headers: Vec<String> = message
            .headers
            .iter()
            .flat_map(|h| h.iter())
            .map(|(k, v)| {
                format!(
                    "{k}={}",
                    v.first().map(HeaderValue::as_str).unwrap_or_default()
                )
            })
            .collect();
        headers.sort();
        println!(
            "consumed subject={} headers=[{}] payload={}",
            message.subject,
            headers.join(", "),
            String::from_utf8_lossy(&message.payload),
        );
        message.ack().await.map_err(|err| err.to_string())?;
    }

    stop.send(()).ok();
    let report = relay.await?;
    println!("relay: {report:?}");
    js.delete_stream(STREAM).await?;
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
