#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(name = "billing.invoice_paid", name = "billing.paid")]
struct InvoicePaid;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(name = "billing.invoice_sent")]
#[outbox(name = "billing.sent")]
struct InvoiceSent;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(skip, skip)]
struct Audit;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(publish_if = Refund::is_external)]
#[outbox(publish_if = Refund::is_large)]
struct Refund;

impl Refund {
    fn is_external(&self) -> bool {
        true
    }

    fn is_large(&self) -> bool {
        true
    }
}

fn main() {}
