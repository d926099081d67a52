#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
struct Created<T> {
    entity: T,
}

#[derive(serde::Serialize, outbox::Event)]
struct Renamed<'a> {
    name: &'a str,
}

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(name = "billing.paid")]
enum Paid<const N: usize> {
    Paid,
}

fn assert_event<E: outbox::Event>() {}

fn main() {
    // No second error here: the derive still emits a (never registered) impl.
    assert_event::<Created<u64>>();
}
