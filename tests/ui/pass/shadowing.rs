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
macro_rules! panic {
    ($($t:tt)*) => {
        compile_error!("user panic! used")
    };
}
struct From;
struct u32;
struct Value;
// Named like the parameters of the generated `fn decode`: a const in scope
// would turn a parameter of that name into a pattern.
#[allow(non_upper_case_globals)]
const version: u8 = 0;
#[allow(non_upper_case_globals)]
const payload: u8 = 0;

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

// Versions, aliases and both kinds of upcaster.
#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(name = "billing.refund")]
struct RefundV1;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(name = "billing.refund", version = 2, upcast(1 => refund_v1))]
struct RefundV2;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(name = "billing.refund", version = 3, upcast_from = RefundV2)]
#[outbox(aliases = ["billing.refunded"])]
struct Refund;

fn refund_v1(
    value: ::serde_json::Value,
) -> ::core::result::Result<::serde_json::Value, ::std::string::String> {
    ::core::result::Result::Ok(value)
}

impl ::core::convert::From<RefundV2> for Refund {
    fn from(_: RefundV2) -> Self {
        Refund
    }
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
    assert_eq!(<Refund as outbox::Event>::VERSION, 3);
    assert_eq!(<Refund as outbox::Event>::ALIASES, ["billing.refunded"]);
    assert!(<Refund as outbox::Event>::decode(1, "null").is_ok());
}
