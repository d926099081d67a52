//! The tour on embedded SQLite, no server needed:
//! `cargo run --example quickstart`.
//!
//! Records events in the same transaction as a business row, rolls one
//! transaction back, relays with a typed publisher that prints each event,
//! and shows a filtered event, a retry and a dead letter.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use outbox::{Backoff, Outbox, PublishError, Publisher, Publishers, Recorded};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

#[derive(Debug, Serialize, Deserialize, outbox::Event)]
#[outbox(name = "billing.invoice_paid")]
struct InvoicePaid {
    invoice_id: i64,
    amount_cents: i64,
}

#[derive(Debug, Serialize, Deserialize, outbox::Event)]
#[outbox(name = "billing.invoice_voided", publish_if = InvoiceVoided::is_external)]
struct InvoiceVoided {
    invoice_id: i64,
    internal: bool,
}

impl InvoiceVoided {
    fn is_external(&self) -> bool {
        !self.internal
    }
}

/// Prints what it publishes; the broker "refuses" invoice 3 twice, then takes
/// it, and always refuses invoice 4.
struct Printer {
    tries_of_3: AtomicU32,
}

impl Publisher<InvoicePaid> for Printer {
    async fn publish(&self, paid: &Recorded<InvoicePaid>) -> Result<(), PublishError> {
        let invoice = paid.event().invoice_id;
        let refuse = match invoice {
            3 => self.tries_of_3.fetch_add(1, Ordering::SeqCst) < 2,
            4 => true,
            _ => false,
        };
        if refuse {
            println!("  refused   invoice {invoice} (attempt {})", paid.attempt());
            return Err(PublishError::rejected(format!(
                "broker refused invoice {invoice}"
            )));
        }
        println!(
            "  published {} #{} {} id={} attempt={} stream={:?} payload={}",
            paid.name(),
            paid.position(),
            paid.created_at().format("%H:%M:%S%.3f"),
            paid.event_id(),
            paid.attempt(),
            paid.stream_key(),
            paid.payload_json(),
        );
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("outbox-quickstart-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("app.db");
    let pool = SqlitePoolOptions::new()
        .connect_with(
            SqliteConnectOptions::new()
                .filename(&file)
                .create_if_missing(true),
        )
        .await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS invoices (id INTEGER PRIMARY KEY, paid INTEGER NOT NULL)",
    )
    .execute(&pool)
    .await?;

    let outbox = Outbox::builder(pool.clone())
        .filter(|name| name.starts_with("billing."))
        .max_attempts(3)
        .backoff(Backoff::none())
        .build()
        .await?;
    println!("outbox ready in {}", file.display());

    // 1. Business change and event in one transaction: both commit.
    for invoice_id in 1..=4 {
        let mut tx = pool.begin().await?;
        sqlx::query("INSERT INTO invoices (id, paid) VALUES (?, 1)")
            .bind(invoice_id)
            .execute(&mut *tx)
            .await?;
        let meta = outbox::Metadata::new()
            .stream_key(format!("invoice-{invoice_id}"))
            .header("tenant", "acme");
        let recording = outbox
            .record_with(
                &mut *tx,
                &InvoicePaid {
                    invoice_id,
                    amount_cents: 1250 * invoice_id,
                },
                meta,
            )
            .await?;
        tx.commit().await?;
        println!("recorded invoice {invoice_id}: {recording:?}");
    }

    // 2. A rolled-back transaction leaves neither the row nor the event.
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO invoices (id, paid) VALUES (99, 1)")
        .execute(&mut *tx)
        .await?;
    let doomed = outbox
        .record(
            &mut *tx,
            &InvoicePaid {
                invoice_id: 99,
                amount_cents: 1,
            },
        )
        .await?;
    tx.rollback().await?;
    println!("invoice 99 ({doomed:?}) rolled back: it will never be published");

    // 3. Filtered: `publish_if` says no for internal voids; nothing is written.
    let mut tx = pool.begin().await?;
    let internal = outbox
        .record(
            &mut *tx,
            &InvoiceVoided {
                invoice_id: 2,
                internal: true,
            },
        )
        .await?;
    tx.commit().await?;
    println!("internal void: {internal:?}");

    // 4. Relay: typed publisher, a few runs (in production: `outbox.relay(..).run(shutdown)`).
    let publishers = Publishers::builder()
        .publisher(Printer {
            tries_of_3: AtomicU32::new(0),
        })
        .build()?;
    for run in 1..=4 {
        println!("run {run}:");
        let report = outbox.run(&publishers, 100).await?;
        println!(
            "  -> claimed {} published {} retried {} dead {}",
            report.claimed, report.published, report.retried, report.dead
        );
    }

    // 5. The dead letter is kept with its reason, and can be requeued.
    for dead in outbox.dead_letters(10).await? {
        println!(
            "dead letter {} {} after {} attempts: {}",
            dead.event_id, dead.name, dead.attempts, dead.reason
        );
    }

    // 6. The relay loop, stopped by a shutdown signal after its batch.
    let stop = Arc::new(tokio::sync::Notify::new());
    let relay = outbox
        .relay(
            Publishers::builder()
                .on(|r: Recorded<InvoicePaid>| async move {
                    println!("  loop published invoice {}", r.event().invoice_id);
                    Ok(())
                })
                .build()?,
        )
        .poll_interval(Duration::from_millis(50));
    let signal = stop.clone();
    let handle = tokio::spawn(relay.run(async move { signal.notified().await }));
    let mut tx = pool.begin().await?;
    let late = outbox
        .record(
            &mut *tx,
            &InvoicePaid {
                invoice_id: 5,
                amount_cents: 500,
            },
        )
        .await?;
    tx.commit().await?;
    println!("recorded invoice 5 while the relay loop runs: {late:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.notify_one();
    let totals = handle.await?;
    println!("relay loop stopped after publishing {}", totals.published);

    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
