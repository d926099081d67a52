use serde_json::Value;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(version = 4, upcast(1 => upcasters::v1, 2 => upcasters::v2, 3 => upcasters::v3))]
struct InvoicePaid;

mod upcasters {
    use serde_json::Value;

    // Takes the value by reference.
    pub fn v1(value: &Value) -> Result<Value, String> {
        Ok(value.clone())
    }

    // Returns no `Result`.
    pub fn v2(value: Value) -> Value {
        value
    }

    // The right signature.
    pub fn v3(value: Value) -> Result<Value, String> {
        Ok(value)
    }
}

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(version = 2, upcast(1 => upcasters::no_such_fn))]
struct InvoiceSent;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(version = 2, upcast(1 => Refund::from_v1))]
struct Refund;

impl Refund {
    // An error type other than `String`.
    fn from_v1(value: Value) -> Result<Value, serde_json::Error> {
        Ok(value)
    }
}

fn main() {}
