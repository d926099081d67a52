#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(name = "billing.invoice_paid")]
struct InvoicePaidV1;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(name = "billing.invoice_paid", upcast_from = InvoicePaidV1)]
struct InvoicePaid;

impl From<InvoicePaidV1> for InvoicePaid {
    fn from(_: InvoicePaidV1) -> Self {
        InvoicePaid
    }
}

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(version = 1, upcast(1 => upcast_v1))]
struct Refund;

fn upcast_v1(value: serde_json::Value) -> Result<serde_json::Value, String> {
    Ok(value)
}

// A skipped type is never stored: it has no version, aliases or upcasters.
#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(skip, version = 2, aliases = ["audit"], upcast(1 => upcast_v1))]
struct Audit;

fn main() {}
