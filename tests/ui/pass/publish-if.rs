use outbox::Event;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(name = "billing.invoice_paid", publish_if = InvoicePaid::is_external)]
struct InvoicePaid {
    external: bool,
}

impl InvoicePaid {
    fn is_external(&self) -> bool {
        self.external
    }
}

// A free function in another module, a `Self::` path, and a generic function
// instantiated by the expected `fn(&Self) -> bool`.
mod rules {
    pub fn is_large(event: &super::Refund) -> bool {
        event.cents > 100
    }

    pub fn always<T>(_: &T) -> bool {
        true
    }
}

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(publish_if = rules::is_large)]
struct Refund {
    cents: u64,
}

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(publish_if = Self::is_due)]
struct InvoiceDue {
    days: u32,
}

impl InvoiceDue {
    fn is_due(&self) -> bool {
        self.days == 0
    }
}

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(publish_if = rules::always::<InvoiceSent>)]
struct InvoiceSent;

fn main() {
    assert!(InvoicePaid { external: true }.publish_if());
    assert!(!InvoicePaid { external: false }.publish_if());
    assert!(Refund { cents: 101 }.publish_if());
    assert!(!Refund { cents: 100 }.publish_if());
    assert!(InvoiceDue { days: 0 }.publish_if());
    assert!(!InvoiceDue { days: 1 }.publish_if());
    assert!(InvoiceSent.publish_if());
    assert!(!<InvoicePaid as Event>::SKIP);
}
