#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(crate = wrong::path)]
struct InvoicePaid;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(crate = "outbox")]
struct InvoiceSent;

fn main() {}
