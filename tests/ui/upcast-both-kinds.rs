#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(name = "billing.invoice_paid")]
struct InvoicePaidV1;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(name = "billing.invoice_paid", version = 2)]
#[outbox(upcast_from = InvoicePaidV1, upcast(1 => upcast_v1))]
struct InvoicePaid;

impl From<InvoicePaidV1> for InvoicePaid {
    fn from(_: InvoicePaidV1) -> Self {
        InvoicePaid
    }
}

fn upcast_v1(value: serde_json::Value) -> Result<serde_json::Value, String> {
    Ok(value)
}

// Malformed upcasters: each bad step is reported.
#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(version = 3, upcast(1 => "upcast_v1", two => upcast_v1, 2 => |v| Ok(v)))]
struct Refund;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(version = 2, upcast = upcast_v1)]
struct Payout;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(version = 2, upcast())]
struct Chargeback;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(version = 2, upcast(1 => upcast_v1), upcast(1 => upcast_v1))]
struct Dispute;

// A string instead of a type.
#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(version = 2, upcast_from = "InvoicePaidV1")]
struct InvoiceSent;

fn main() {}
