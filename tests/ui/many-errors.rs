// Independent mistakes are all reported in one compile, each at its token,
// including a wrong `publish_if` signature found only by type checking.
#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(nmae = "billing.invoice_paid", name = "", publish_if = InvoicePaid::priority, skip = 1)]
#[outbox(name = "billing.paid")]
struct InvoicePaid<T> {
    amount: T,
}

impl<T> InvoicePaid<T> {
    fn priority(&self) -> i32 {
        1
    }
}

fn main() {}
