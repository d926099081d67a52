#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
struct InvoicePaid {
    invoice_id: u64,
}

// A raw identifier names the event without `r#`.
#[allow(non_camel_case_types)]
#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
struct r#match(u8);

// Several attributes, none of them naming the event.
#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox()]
#[outbox(crate = ::outbox,)]
struct InvoiceSent;

fn main() {
    assert_eq!(<InvoicePaid as outbox::Event>::NAME, "InvoicePaid");
    assert_eq!(<r#match as outbox::Event>::NAME, "match");
    assert_eq!(<InvoiceSent as outbox::Event>::NAME, "InvoiceSent");
}
