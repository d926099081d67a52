//! Event versions on every database: upcasting, renames, rolling deploys.
//!
//! `PaymentV1` → `PaymentV2` (a JSON upcaster) → `Payment` (a typed
//! upcaster from `PaymentV2`) are three versions of one event, as a
//! service keeps them after two changes. Types that stand for *other*
//! deployments of a service (the code before a rename, the code before an
//! upcaster existed) are hand-written `impl Event`s: they are not
//! registered, so they can share names with the derived types here, as
//! they would in another binary.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox::{Entry, Event, Publishers, Recorded};
use serde::{Deserialize, Serialize};

use super::{Ctx, Harness};

/// Version 1: the amount in euros, as a float.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, outbox::Event)]
#[outbox(name = "suite.payment")]
pub struct PaymentV1 {
    pub invoice: i64,
    pub amount: f64,
}

/// Version 2: the amount in cents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, outbox::Event)]
#[outbox(name = "suite.payment", version = 2, upcast(1 => payment_v1_to_v2))]
pub struct PaymentV2 {
    pub invoice: i64,
    pub amount_cents: i64,
}

fn payment_v1_to_v2(mut v1: serde_json::Value) -> Result<serde_json::Value, String> {
    let euros = v1["amount"].as_f64().ok_or("no `amount`")?;
    #[allow(clippy::cast_possible_truncation)] // Reason: test amounts are small.
    let cents = (euros * 100.0).round() as i64;
    let object = v1.as_object_mut().ok_or("not an object")?;
    object.remove("amount");
    object.insert("amount_cents".into(), cents.into());
    Ok(v1)
}

/// Version 3, the current one: a currency, and a former name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, outbox::Event)]
#[outbox(
    name = "suite.payment",
    version = 3,
    upcast_from = PaymentV2,
    aliases = ["suite.payment_received"]
)]
pub struct Payment {
    pub invoice: i64,
    pub amount_cents: i64,
    pub currency: String,
}

impl From<PaymentV2> for Payment {
    fn from(v2: PaymentV2) -> Self {
        Self {
            invoice: v2.invoice,
            amount_cents: v2.amount_cents,
            currency: "EUR".into(),
        }
    }
}

/// The code before the rename: the same event under its old name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentReceived {
    pub invoice: i64,
    pub amount: f64,
}

impl Event for PaymentReceived {
    const NAME: &'static str = "suite.payment_received";
}

/// Version 2 as a deployment without the upcaster had it: it decodes
/// version 1 payloads as they are, which fails.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentV2NoUpcaster {
    pub invoice: i64,
    pub amount_cents: i64,
}

impl Event for PaymentV2NoUpcaster {
    const NAME: &'static str = "suite.payment";
    const VERSION: u32 = 2;
}

/// Keeps what a typed publisher receives.
fn keeping<E: Event + Clone>() -> (Publishers, Arc<Mutex<Vec<Recorded<E>>>>) {
    keeping_with(Publishers::builder())
}

fn keeping_with<E: Event + Clone>(
    builder: outbox::PublishersBuilder,
) -> (Publishers, Arc<Mutex<Vec<Recorded<E>>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&seen);
    let publishers = builder
        .on(move |event: Recorded<E>| {
            let kept = Arc::clone(&kept);
            async move {
                kept.lock().unwrap().push(event);
                Ok(())
            }
        })
        .build()
        .unwrap();
    (publishers, seen)
}

async fn record<H: Harness, E: Event>(ctx: &Ctx<H>, outbox: &outbox::Outbox<H::DB>, event: &E) {
    let mut tx = ctx.pool.begin().await.unwrap();
    outbox.record(&mut *tx, event).await.unwrap();
    tx.commit().await.unwrap();
}

pub async fn version_1_entry_reaches_the_version_3_publisher<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx.outbox().await;
    // Recorded by the code of version 1, left pending across two deploys.
    let v1 = PaymentV1 {
        invoice: 7,
        amount: 12.5,
    };
    record(&ctx, &outbox, &v1).await;
    let stats = outbox.stats().await.unwrap();
    assert_eq!(stats.by_name[0].versions, [(1, 1)]);

    let (publishers, seen) = keeping::<Payment>();
    let report = outbox.run(&publishers, 100).await.unwrap();
    assert_eq!((report.published, report.dead), (1, 0));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen[0].event(),
        &Payment {
            invoice: 7,
            amount_cents: 1250,
            currency: "EUR".into()
        },
        "two upcasts: JSON 1 → 2, then From<PaymentV2>"
    );
    // Published as stored: the entry keeps its version and its bytes.
    assert_eq!(seen[0].version(), 1);
    assert_eq!(seen[0].payload_json(), serde_json::to_string(&v1).unwrap());
    assert_eq!(seen[0].attempt(), 1);
    assert!(ctx.rows().await.is_empty());
    ctx.done().await;
}

pub async fn publish_upcast_hands_on_the_current_version<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx.outbox().await;
    record(
        &ctx,
        &outbox,
        &PaymentV2 {
            invoice: 8,
            amount_cents: 300,
        },
    )
    .await;
    record(
        &ctx,
        &outbox,
        &PaymentReceived {
            invoice: 9,
            amount: 1.0,
        },
    )
    .await;
    let (publishers, seen) = keeping_with::<Payment>(Publishers::builder().publish_upcast(true));
    let report = outbox.run(&publishers, 100).await.unwrap();
    assert_eq!(report.published, 2);
    let seen = seen.lock().unwrap().clone();
    for (record, invoice, cents) in [(&seen[0], 8, 300), (&seen[1], 9, 100)] {
        let current = Payment {
            invoice,
            amount_cents: cents,
            currency: "EUR".into(),
        };
        assert_eq!(record.event(), &current);
        assert_eq!((record.name(), record.version()), ("suite.payment", 3));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(record.payload_json()).unwrap(),
            serde_json::to_value(&current).unwrap()
        );
    }
    ctx.done().await;
}

pub async fn renamed_type_receives_entries_of_its_old_name<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx.outbox().await;
    // Recorded before the rename, under the old name (and version 1).
    record(
        &ctx,
        &outbox,
        &PaymentReceived {
            invoice: 3,
            amount: 2.0,
        },
    )
    .await;
    let (publishers, seen) = keeping::<Payment>();
    let report = outbox.run(&publishers, 100).await.unwrap();
    assert_eq!((report.published, report.unroutable), (1, 0));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[0].event().amount_cents, 200);
    assert_eq!(
        seen[0].name(),
        "suite.payment_received",
        "as stored by default"
    );
    ctx.done().await;
}

pub async fn newer_version_waits_without_attempts_for_newer_code<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx
        .builder()
        .unroutable_delay(Duration::ZERO)
        .max_attempts(1)
        .build()
        .await
        .unwrap();
    // A service already on version 3 records; a relay still on version 2 runs.
    let current = Payment {
        invoice: 5,
        amount_cents: 500,
        currency: "CHF".into(),
    };
    record(&ctx, &outbox, &current).await;
    let (old_relay, old_seen) = keeping::<PaymentV2>();
    for _ in 0..3 {
        let report = outbox.run(&old_relay, 100).await.unwrap();
        assert_eq!(
            (report.newer_version, report.published, report.dead),
            (1, 0, 0)
        );
    }
    assert!(old_seen.lock().unwrap().is_empty());
    let rows = ctx.rows().await;
    assert_eq!(
        (rows[0].status.as_str(), rows[0].attempts),
        ("pending", 0),
        "waiting costs no attempt, even with max_attempts(1)"
    );
    // The deploy reaches the relay: the newer code delivers it.
    let (new_relay, seen) = keeping::<Payment>();
    let report = outbox.run(&new_relay, 100).await.unwrap();
    assert_eq!((report.published, report.newer_version), (1, 0));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[0].event(), &current);
    assert_eq!((seen[0].version(), seen[0].attempt()), (3, 1));
    ctx.done().await;
}

pub async fn old_version_dead_letter_is_delivered_once_an_upcaster_exists<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx.outbox().await;
    let mut tx = ctx.pool.begin().await.unwrap();
    let id = outbox
        .record(
            &mut *tx,
            &PaymentV1 {
                invoice: 4,
                amount: 0.5,
            },
        )
        .await
        .unwrap()
        .event_id()
        .unwrap();
    tx.commit().await.unwrap();
    // A deployment that bumped the version without an upcaster.
    let (before, _) = keeping::<PaymentV2NoUpcaster>();
    let report = outbox.run(&before, 100).await.unwrap();
    assert_eq!(report.dead, 1);
    let dead = outbox.dead_letter(id).await.unwrap().unwrap();
    assert_eq!(dead.version, 1);
    assert!(
        dead.reason.contains("version 1") && dead.reason.contains("PaymentV2NoUpcaster"),
        "{}",
        dead.reason
    );
    // The fix ships with an upcaster; the dead letter is requeued.
    assert!(outbox.requeue(id).await.unwrap());
    let (after, seen) = keeping::<PaymentV2>();
    let report = outbox.run(&after, 100).await.unwrap();
    assert_eq!(report.published, 1);
    assert_eq!(seen.lock().unwrap()[0].event().amount_cents, 50);
    ctx.done().await;
}

pub async fn a_name_and_its_aliases_take_one_publisher<H: Harness>() {
    let twice = Publishers::builder()
        .on(|_: Recorded<Payment>| async { Ok(()) })
        .on(|_: Recorded<PaymentReceived>| async { Ok(()) })
        .build()
        .unwrap_err();
    assert_eq!(
        twice.to_string(),
        "a second publisher was registered for event `suite.payment_received`"
    );
}

pub async fn catch_all_publishes_every_version_as_stored<H: Harness>() {
    let ctx = Ctx::<H>::new().await;
    let outbox = ctx.outbox().await;
    let v1 = PaymentV1 {
        invoice: 1,
        amount: 1.0,
    };
    record(&ctx, &outbox, &v1).await;
    record(
        &ctx,
        &outbox,
        &Payment {
            invoice: 2,
            amount_cents: 2,
            currency: "EUR".into(),
        },
    )
    .await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&seen);
    let publishers = Publishers::builder()
        .publish_upcast(true)
        .fallback_fn(move |entry: Entry| {
            let kept = Arc::clone(&kept);
            async move {
                kept.lock().unwrap().push(entry);
                Ok(())
            }
        })
        .build()
        .unwrap();
    assert_eq!(outbox.run(&publishers, 100).await.unwrap().published, 2);
    let seen = seen.lock().unwrap().clone();
    let versions: Vec<_> = seen.iter().map(Entry::version).collect();
    assert_eq!(versions, [1, 3]);
    assert_eq!(seen[0].payload_json(), serde_json::to_string(&v1).unwrap());
    ctx.done().await;
}
