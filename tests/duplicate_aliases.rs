//! An alias that is another type's name: building any outbox (or any
//! inbox consumers) in this binary fails, naming both types, as duplicate
//! names do. (Its own test binary, because the registry is per binary.)

use outbox::{Error, Outbox};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, outbox::Event)]
#[outbox(name = "invoice.voided")]
struct InvoiceVoided {
    id: i64,
}

/// Renamed from "invoice.voided", while that name still belongs to a type.
#[derive(Serialize, Deserialize, outbox::Event)]
#[outbox(name = "invoice.cancelled", aliases = ["invoice.voided"])]
struct InvoiceCancelled {
    id: i64,
}

#[tokio::test]
async fn an_alias_that_is_another_types_name_fails_the_build() {
    let _ = (InvoiceVoided { id: 1 }.id, InvoiceCancelled { id: 1 }.id);
    let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
    let err = Outbox::builder(pool).build().await.unwrap_err();
    assert!(
        matches!(&err, Error::DuplicateEventName { name, .. } if name == "invoice.voided"),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "event name `invoice.voided` is used by two types: \
         `duplicate_aliases::InvoiceCancelled` and `duplicate_aliases::InvoiceVoided`"
    );
    let consumers = outbox::inbox::Consumers::<sqlx::Sqlite>::builder().build();
    assert!(matches!(consumers, Err(Error::DuplicateEventName { .. })));
}
