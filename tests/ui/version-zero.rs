#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(version = 0)]
struct InvoicePaid;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(version = "2")]
struct InvoiceSent;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(version = -1)]
struct InvoiceVoided;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(version = 2147483648)]
struct InvoiceDue;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(version = 2u8)]
struct Refund;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(version)]
struct Chargeback;

// A rejected version is reported once, not again by the upcaster that
// needs it.
#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(version = 0, upcast_from = InvoicePaid)]
struct Payout;

impl From<InvoicePaid> for Payout {
    fn from(_: InvoicePaid) -> Self {
        Payout
    }
}

fn main() {}
