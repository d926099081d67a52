#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(name = "")]
struct InvoicePaid;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(name = "billing invoice_sent")]
struct InvoiceSent;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(name = " billing.invoice_voided\n")]
struct InvoiceVoided;

fn main() {}
