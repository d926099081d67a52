#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(skip, publish_if = InvoicePaid::is_external)]
struct InvoicePaid;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(publish_if = InvoiceSent::is_external)]
#[outbox(skip)]
struct InvoiceSent;

impl InvoicePaid {
    fn is_external(&self) -> bool {
        true
    }
}

impl InvoiceSent {
    fn is_external(&self) -> bool {
        true
    }
}

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(skip = true)]
struct Audit;

fn main() {}
