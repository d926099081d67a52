#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(publish_if = InvoicePaid::priority)]
struct InvoicePaid;

impl InvoicePaid {
    fn priority(&self) -> i32 {
        1
    }
}

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(publish_if = InvoiceSent::is_external)]
struct InvoiceSent;

impl InvoiceSent {
    fn is_external(self) -> bool {
        true
    }
}

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(publish_if = checks::is_large)]
struct InvoiceVoided;

mod checks {
    pub fn is_large(_event: &super::InvoicePaid) -> bool {
        true
    }
}

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(publish_if = InvoiceDue::no_such_fn)]
struct InvoiceDue;

fn main() {}
