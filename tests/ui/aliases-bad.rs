#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(aliases = [])]
struct InvoicePaid;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(aliases = ["billing paid", "", "billing.sent"suffix])]
struct InvoiceSent;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(name = "billing.invoice_voided", aliases = ["billing.voided", "billing.invoice_voided"])]
struct InvoiceVoided;

// Without `name`, the event's name is the type's name.
#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(aliases = ["InvoiceDue"])]
struct InvoiceDue;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(aliases = ["billing.refund", "billing.refunded", "billing.refund"])]
struct Refund;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(aliases = "billing.payout")]
struct Payout;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(aliases = [billing.chargeback])]
struct Chargeback;

fn main() {}
