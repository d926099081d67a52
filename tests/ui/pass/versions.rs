#![deny(unused_qualifications)] // the derive's code, spanned at user paths, must not trip it
// One event in three versions: V2 upcasts V1's JSON with `upcast(1 => f)`,
// V3 converts from V2 with `upcast_from` and keeps two former names.
use outbox::Event;

#[derive(serde::Serialize, serde::Deserialize, Event)]
#[outbox(name = "billing.invoice_paid")]
struct InvoicePaidV1 {
    amount: f64,
}

#[derive(serde::Serialize, serde::Deserialize, Event)]
#[outbox(name = "billing.invoice_paid", version = 2, upcast(1 => upcasters::v1_to_v2))]
struct InvoicePaidV2 {
    amount_cents: i64,
}

mod upcasters {
    pub fn v1_to_v2(mut v1: serde_json::Value) -> Result<serde_json::Value, String> {
        let amount = v1["amount"].as_f64().ok_or("no `amount`")?;
        #[allow(clippy::cast_possible_truncation)] // cents of a test amount
        let cents = (amount * 100.0).round() as i64;
        v1["amount_cents"] = serde_json::json!(cents);
        Ok(v1)
    }
}

#[derive(serde::Serialize, serde::Deserialize, Event)]
#[outbox(name = "billing.invoice_paid", version = 3, upcast_from = InvoicePaidV2)]
#[outbox(aliases = ["billing.paid", "invoice_paid"])]
struct InvoicePaid {
    cents: i64,
    currency: String,
}

impl From<InvoicePaidV2> for InvoicePaid {
    fn from(v2: InvoicePaidV2) -> Self {
        InvoicePaid {
            cents: v2.amount_cents,
            currency: String::from("EUR"),
        }
    }
}

// A JSON chain over several versions, written out of order, with a
// `u32` suffix and a path through `Self`.
#[derive(serde::Serialize, serde::Deserialize, Event)]
#[outbox(version = 4u32, upcast(3 => Self::v3, 1 => Self::v1, 2 => upcasters_v2,))]
struct Refund {
    steps: Vec<u32>,
}

fn upcasters_v2(mut value: serde_json::Value) -> Result<serde_json::Value, String> {
    value["steps"]
        .as_array_mut()
        .ok_or("no steps")?
        .push(2.into());
    Ok(value)
}

impl Refund {
    fn v1(_: serde_json::Value) -> Result<serde_json::Value, String> {
        Ok(serde_json::json!({ "steps": [1] }))
    }

    fn v3(mut value: serde_json::Value) -> Result<serde_json::Value, String> {
        value["steps"]
            .as_array_mut()
            .ok_or("no steps")?
            .push(3.into());
        Ok(value)
    }
}

// A version without upcasters: old payloads decode as the current type.
#[derive(serde::Serialize, serde::Deserialize, Event)]
#[outbox(version = 2)]
struct InvoiceSent {
    #[serde(default)]
    reminder: bool,
}

fn main() {
    assert_eq!(<InvoicePaidV1 as Event>::VERSION, 1);
    assert_eq!(<InvoicePaidV2 as Event>::VERSION, 2);
    assert_eq!(<InvoicePaid as Event>::VERSION, 3);
    assert_eq!(<InvoicePaid as Event>::NAME, "billing.invoice_paid");
    assert_eq!(
        <InvoicePaid as Event>::ALIASES,
        ["billing.paid", "invoice_paid"]
    );
    assert!(<InvoicePaidV2 as Event>::ALIASES.is_empty());

    let v1 = InvoicePaid::decode(1, r#"{"amount":12.5}"#).unwrap();
    assert_eq!((v1.cents, v1.currency.as_str()), (1250, "EUR"));
    let v2 = InvoicePaid::decode(2, r#"{"amount_cents":7}"#).unwrap();
    assert_eq!(v2.cents, 7);
    let v3 = InvoicePaid::decode(3, r#"{"cents":9,"currency":"USD"}"#).unwrap();
    assert_eq!((v3.cents, v3.currency.as_str()), (9, "USD"));
    assert!(InvoicePaid::decode(1, r#"{"cents":1}"#).is_err());

    assert_eq!(Refund::decode(1, "{}").unwrap().steps, [1, 2, 3]);
    assert_eq!(Refund::decode(2, r#"{"steps":[]}"#).unwrap().steps, [2, 3]);
    assert_eq!(Refund::decode(3, r#"{"steps":[]}"#).unwrap().steps, [3]);
    assert!(
        Refund::decode(4, r#"{"steps":[]}"#)
            .unwrap()
            .steps
            .is_empty()
    );

    assert!(!InvoiceSent::decode(1, "{}").unwrap().reminder);
}
