// Generated code must not pick up user items named like std items, like the
// crates it uses, or like its own `_outbox` alias.
#![allow(non_camel_case_types, dead_code, unused_macros)]

struct Option;
struct Result;
struct Some;
struct None;
struct Ok;
struct Err;
struct Box;
struct bool;
trait Send {}
trait Sync {}
trait Serialize {}
trait DeserializeOwned {}
mod core {}
mod std {}
mod inventory {}
mod serde_json {}
mod _outbox {}
macro_rules! concat {
    ($($t:tt)*) => {
        compile_error!("user concat! used")
    };
}
macro_rules! module_path {
    () => {
        compile_error!("user module_path! used")
    };
}

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(name = "billing.invoice_paid", publish_if = InvoicePaid::is_external)]
struct InvoicePaid {
    external: u8,
}

impl InvoicePaid {
    fn is_external(&self) -> ::core::primitive::bool {
        self.external == 1
    }
}

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(skip)]
enum Audit {
    Read,
}

// serde's own expansion uses a bare `str` for field and variant names, so
// `str` is shadowed only around types whose serde impls do not mention it.
mod strings {
    struct str;

    #[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
    #[outbox(name = "billing.invoice_sent")]
    pub(crate) struct InvoiceSent(pub(crate) u64);
}

fn main() {
    assert_eq!(<InvoicePaid as outbox::Event>::NAME, "billing.invoice_paid");
    assert!(outbox::Event::publish_if(&InvoicePaid { external: 1 }));
    assert!(!outbox::Event::publish_if(&InvoicePaid { external: 0 }));
    assert!(<Audit as outbox::Event>::SKIP);
    assert_eq!(
        <strings::InvoiceSent as outbox::Event>::NAME,
        "billing.invoice_sent"
    );
    assert!(outbox::Event::publish_if(&strings::InvoiceSent(1)));
}
