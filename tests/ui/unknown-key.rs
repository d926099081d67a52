#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(nmae = "billing.invoice_paid")]
struct InvoicePaid;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(publish(InvoiceSent::is_external))]
struct InvoiceSent;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(outbox::name = "billing.invoice_voided")]
struct InvoiceVoided;

fn assert_event<E: outbox::Event>() {}

fn main() {
    // No second error here: the derive still emits a (never registered) impl.
    assert_event::<InvoicePaid>();
    assert_event::<InvoiceSent>();
}
