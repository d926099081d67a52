#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(name = "billing.paid")]
struct InvoicePaidV1;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(name = "billing.invoice_paid", version = 2, upcast_from = InvoicePaidV1)]
struct InvoicePaid;

impl From<InvoicePaidV1> for InvoicePaid {
    fn from(_: InvoicePaidV1) -> Self {
        InvoicePaid
    }
}

// Without `name`, each event is named after its type: `v1::Refund` is
// event `Refund`, not `RefundV2`.
mod v1 {
    #[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
    pub struct Refund;
}

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(version = 2, upcast_from = v1::Refund)]
struct RefundV2;

impl From<v1::Refund> for RefundV2 {
    fn from(_: v1::Refund) -> Self {
        RefundV2
    }
}

fn main() {}
