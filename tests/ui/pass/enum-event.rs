#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(name = "billing.invoice_changed")]
enum InvoiceChanged {
    Paid { invoice_id: u64 },
    Voided(u64),
    Forgotten,
}

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
enum Never {}

fn main() {
    assert_eq!(
        <InvoiceChanged as outbox::Event>::NAME,
        "billing.invoice_changed"
    );
    assert!(!<InvoiceChanged as outbox::Event>::SKIP);
    assert!(outbox::Event::publish_if(&InvoiceChanged::Forgotten));
    assert_eq!(<Never as outbox::Event>::NAME, "Never");
}
