#[derive(outbox::Event)]
#[outbox(name = "billing.amount")]
union Amount {
    cents: u64,
    units: f64,
}

fn main() {}
