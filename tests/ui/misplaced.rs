#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
struct InvoicePaid {
    #[outbox(skip)]
    internal_note: String,
}

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
enum InvoiceChanged {
    #[outbox(name = "billing.invoice_voided")]
    Voided,
    Amended(#[outbox(skip)] String),
}

fn main() {}
