// `InvoicePaidV1` does not derive `Event`.
#[derive(serde::Serialize, serde::Deserialize)]
struct InvoicePaidV1;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(version = 2, upcast_from = InvoicePaidV1)]
struct InvoicePaid;

impl From<InvoicePaidV1> for InvoicePaid {
    fn from(_: InvoicePaidV1) -> Self {
        InvoicePaid
    }
}

// `InvoiceSentV1` is an event, but there is no `From<InvoiceSentV1>`.
#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(name = "InvoiceSent")]
struct InvoiceSentV1;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(version = 2, upcast_from = InvoiceSentV1)]
struct InvoiceSent;

// A type that does not exist.
#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(version = 2, upcast_from = RefundV1)]
struct Payout;

fn main() {}
