//! Changing an event without losing the entries already written: the
//! worked example of README's "Changing events", run for real on SQLite.
//!
//! `InvoicePaid` had two changes: version 2 counts cents instead of a
//! float amount (a JSON upcaster), version 3 adds the currency (a typed
//! upcaster from the kept `InvoicePaidV2`), and the event was renamed from
//! `billing.paid`. An entry written by version 1 under the old name, and
//! one written by a newer deployment (version 4), meet the current code.
//!
//! ```sh
//! cargo run --example changing_events
//! ```

use std::sync::{Arc, Mutex};

use outbox::{Event, Outbox, Publishers, Recorded};
use serde::{Deserialize, Serialize};

/// Version 1, kept in the code only as the start of the chain.
#[derive(Debug, Serialize, Deserialize, outbox::Event)]
#[outbox(name = "billing.invoice_paid")]
struct InvoicePaidV1 {
    invoice_id: i64,
    amount: f64,
}

/// Version 2: cents. Version 1 payloads are rewritten as JSON.
#[derive(Debug, Serialize, Deserialize, outbox::Event)]
#[outbox(name = "billing.invoice_paid", version = 2, upcast(1 => cents_from_amount))]
struct InvoicePaidV2 {
    invoice_id: i64,
    amount_cents: i64,
}

fn cents_from_amount(mut v1: serde_json::Value) -> Result<serde_json::Value, String> {
    let amount = v1["amount"].as_f64().ok_or("no numeric `amount`")?;
    #[allow(clippy::cast_possible_truncation)] // Reason: amounts are far below 2^53 cents.
    let cents = (amount * 100.0).round() as i64;
    let fields = v1.as_object_mut().ok_or("not a JSON object")?;
    fields.remove("amount");
    fields.insert("amount_cents".into(), cents.into());
    Ok(v1)
}

/// Version 3, the current type: a currency, and the name it had before.
#[derive(Debug, PartialEq, Serialize, Deserialize, outbox::Event)]
#[outbox(
    name = "billing.invoice_paid",
    version = 3,
    upcast_from = InvoicePaidV2,
    aliases = ["billing.paid"]
)]
struct InvoicePaid {
    invoice_id: i64,
    amount_cents: i64,
    currency: String,
}

impl From<InvoicePaidV2> for InvoicePaid {
    fn from(v2: InvoicePaidV2) -> Self {
        Self {
            invoice_id: v2.invoice_id,
            amount_cents: v2.amount_cents,
            currency: "EUR".into(), // all invoices were in euros before version 3
        }
    }
}

/// What a deployment older than the rename recorded (stands in for the old
/// binary: written by hand, so it is not registered next to the alias).
#[derive(Serialize, Deserialize)]
struct OldBinaryPaid {
    invoice_id: i64,
    amount: f64,
}

impl Event for OldBinaryPaid {
    const NAME: &'static str = "billing.paid";
}

/// What a newer deployment (version 4) records while this relay still runs
/// version 3: a rolling deploy.
#[derive(Serialize, Deserialize)]
struct NewerBinaryPaid {
    invoice_id: i64,
    amount_cents: i64,
    currency: String,
    method: String,
}

impl Event for NewerBinaryPaid {
    const NAME: &'static str = "billing.invoice_paid";
    const VERSION: u32 = 4;
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
    let outbox = Outbox::builder(pool.clone()).build().await?;

    let mut tx = pool.begin().await?;
    outbox
        .record(
            &mut *tx,
            &InvoicePaidV1 {
                invoice_id: 1,
                amount: 12.5,
            },
        )
        .await?;
    outbox
        .record(
            &mut *tx,
            &OldBinaryPaid {
                invoice_id: 2,
                amount: 3.0,
            },
        )
        .await?;
    outbox
        .record(
            &mut *tx,
            &NewerBinaryPaid {
                invoice_id: 3,
                amount_cents: 700,
                currency: "CHF".into(),
                method: "card".into(),
            },
        )
        .await?;
    tx.commit().await?;

    let received = Arc::new(Mutex::new(Vec::new()));
    let publishers = Publishers::builder()
        .on({
            let received = Arc::clone(&received);
            move |paid: Recorded<InvoicePaid>| {
                let received = Arc::clone(&received);
                async move {
                    println!("{} v{} -> {:?}", paid.name(), paid.version(), paid.event());
                    received.lock().unwrap().push(paid.into_parts().0);
                    Ok(())
                }
            }
        })
        .build()?;
    let report = outbox.run(&publishers, 100).await?;
    println!(
        "published {}, waiting for newer code {}, dead {}",
        report.published, report.newer_version, report.dead
    );

    assert_eq!(
        *received.lock().unwrap(),
        [
            InvoicePaid {
                invoice_id: 1,
                amount_cents: 1250,
                currency: "EUR".into()
            },
            InvoicePaid {
                invoice_id: 2,
                amount_cents: 300,
                currency: "EUR".into()
            },
        ]
    );
    assert_eq!(
        (report.published, report.newer_version, report.dead),
        (2, 1, 0)
    );
    let stats = outbox.stats().await?;
    assert_eq!(
        stats.pending, 1,
        "the version 4 entry waits, no attempt made"
    );
    assert_eq!(stats.retrying, 0);
    println!("versions pending: {:?}", stats.by_name[0].versions);
    Ok(())
}
