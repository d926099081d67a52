//! The same flow against PostgreSQL:
//! `DATABASE_URL=postgres://root@127.0.0.1:5432/test cargo run --example postgres --features postgres`.

use std::time::Duration;

use outbox::{Backoff, Outbox, PublishError, Publishers, Recorded};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, outbox::Event)]
#[outbox(name = "billing.invoice_paid")]
struct InvoicePaid {
    invoice_id: i64,
    amount_cents: i64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_owned());
    let pool = sqlx::PgPool::connect(&url).await?;
    let table = format!("outbox_example_{}", std::process::id());
    sqlx::query("CREATE TABLE IF NOT EXISTS example_invoices (id BIGINT PRIMARY KEY)")
        .execute(&pool)
        .await?;
    let outbox = Outbox::builder(pool.clone())
        .table(table.clone())
        .backoff(Backoff::none())
        .build()
        .await?;

    let base = i64::from(std::process::id()) * 1000;
    for invoice_id in base + 1..=base + 3 {
        let mut tx = pool.begin().await?;
        sqlx::query("INSERT INTO example_invoices (id) VALUES ($1)")
            .bind(invoice_id)
            .execute(&mut *tx)
            .await?;
        let recording = outbox
            .record(
                &mut *tx,
                &InvoicePaid {
                    invoice_id,
                    amount_cents: 100,
                },
            )
            .await?;
        println!("recorded invoice {invoice_id}: {recording:?}");
        tx.commit().await?;
    }
    let mut tx = pool.begin().await?;
    let doomed = outbox
        .record(
            &mut *tx,
            &InvoicePaid {
                invoice_id: -1,
                amount_cents: 0,
            },
        )
        .await?;
    tx.rollback().await?;
    println!("rolled back {doomed:?}: never published");

    let publishers = Publishers::builder()
        .on(|paid: Recorded<InvoicePaid>| async move {
            if paid.event().invoice_id % 3 == 0 && paid.attempt() == 1 {
                return Err(PublishError::rejected("first try refused"));
            }
            println!(
                "published {} invoice {} (event {}, attempt {})",
                paid.name(),
                paid.event().invoice_id,
                paid.event_id(),
                paid.attempt()
            );
            Ok(())
        })
        .build()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(
        outbox
            .relay(publishers)
            .poll_interval(Duration::from_millis(50))
            .run(async {
                let _ = stop_rx.await;
            }),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop_tx.send(());
    let totals = relay.await?;
    println!("published {}, retried {}", totals.published, totals.retried);

    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP TABLE \"{table}\", \"{table}_schema\""
    )))
    .execute(&pool)
    .await?;
    sqlx::query("DELETE FROM example_invoices WHERE id > $1 AND id <= $2")
        .bind(base)
        .bind(base + 3)
        .execute(&pool)
        .await?;
    Ok(())
}
