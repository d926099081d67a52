//! Two types deriving `Event` with one name: building any outbox in this
//! binary fails, naming both types. (Its own test binary, because the
//! registry is per binary.)

use outbox::{Error, Outbox};
use serde::{Deserialize, Serialize};

mod billing {
    #[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
    #[outbox(name = "invoice.paid")]
    pub(crate) struct InvoicePaid {
        pub(crate) id: i64,
    }
}

#[derive(Serialize, Deserialize, outbox::Event)]
#[outbox(name = "invoice.paid")]
struct LegacyInvoicePaid {
    id: i64,
}

#[tokio::test]
async fn duplicate_event_names_fail_the_build() {
    let _ = (
        billing::InvoicePaid { id: 1 }.id,
        LegacyInvoicePaid { id: 1 }.id,
    );
    let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
    let err = Outbox::builder(pool).build().await.unwrap_err();
    let Error::DuplicateEventName {
        name,
        first,
        second,
    } = &err
    else {
        panic!("expected DuplicateEventName, got {err}");
    };
    assert_eq!(name, "invoice.paid");
    assert_eq!(first, "duplicate_names::LegacyInvoicePaid");
    assert_eq!(second, "duplicate_names::billing::InvoicePaid");
    assert_eq!(
        err.to_string(),
        "event name `invoice.paid` is used by two types: \
         `duplicate_names::LegacyInvoicePaid` and `duplicate_names::billing::InvoicePaid`"
    );
}
