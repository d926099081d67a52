// A typed chain that skips version 2: `InvoicePaid` (version 3) upcasts
// from `InvoicePaidV1` (version 1).
#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(name = "billing.invoice_paid")]
struct InvoicePaidV1;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(name = "billing.invoice_paid", version = 3, upcast_from = InvoicePaidV1)]
struct InvoicePaid;

impl From<InvoicePaidV1> for InvoicePaid {
    fn from(_: InvoicePaidV1) -> Self {
        InvoicePaid
    }
}

// An upcast from a later version.
#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(name = "billing.invoice_paid", version = 2, upcast_from = InvoicePaid)]
struct InvoicePaidV2;

impl From<InvoicePaid> for InvoicePaidV2 {
    fn from(_: InvoicePaid) -> Self {
        InvoicePaidV2
    }
}

// JSON chains with missing steps and steps past the current version.
#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(version = 3, upcast(1 => upcast_v1))]
struct Refund;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(version = 6, upcast(2 => upcast_v1, 6 => upcast_v1, 7 => upcast_v1))]
struct Payout;

// The same step twice, and steps from versions 0 and -1.
#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(version = 3, upcast(1 => upcast_v1, 2 => upcast_v1, 1 => upcast_v1))]
struct Chargeback;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(version = 2, upcast(0 => upcast_v1, 1 => upcast_v1, -1 => upcast_v1))]
struct Dispute;

fn upcast_v1(value: serde_json::Value) -> Result<serde_json::Value, String> {
    Ok(value)
}

fn main() {}
