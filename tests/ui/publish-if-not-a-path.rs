#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(publish_if = "InvoicePaid::is_external")]
struct InvoicePaid;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(publish_if = |_event: &InvoiceSent| true)]
struct InvoiceSent;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(publish_if = is_external())]
struct InvoiceVoided;

fn is_external() -> fn(&InvoiceVoided) -> bool {
    |_| true
}

fn main() {}
