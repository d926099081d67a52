#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(name = billing.invoice_paid)]
struct InvoicePaid;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(name = 42)]
struct InvoiceSent;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(name = concat!("billing.", "invoice_voided"))]
struct InvoiceVoided;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(name)]
struct InvoiceDue;

fn main() {}
