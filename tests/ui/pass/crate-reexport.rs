// A crate that re-exports `outbox` tells the derive where the runtime is, so
// its users need no direct dependency on `outbox`.
mod reexport {
    pub use ::outbox as inner;
}

mod events {
    use crate::reexport::inner::Event;

    #[derive(serde::Serialize, serde::Deserialize, Event)]
    #[outbox(crate = crate::reexport::inner, name = "billing.invoice_paid")]
    pub struct InvoicePaid;

    // A relative path works too.
    use crate::reexport;

    #[derive(serde::Serialize, serde::Deserialize, Event)]
    #[outbox(crate = reexport::inner, publish_if = InvoiceSent::never)]
    pub struct InvoiceSent;

    impl InvoiceSent {
        fn never(&self) -> bool {
            false
        }
    }
}

fn main() {
    use reexport::inner::Event;

    assert_eq!(<events::InvoicePaid as Event>::NAME, "billing.invoice_paid");
    assert_eq!(<events::InvoiceSent as Event>::NAME, "InvoiceSent");
    assert!(!events::InvoiceSent.publish_if());
}
