//! Runtime behaviour of `#[derive(Event)]` impls: the name, the publish
//! predicate, `skip`, and the registration each derive submits.

use std::sync::atomic::{AtomicUsize, Ordering};

use outbox::Event;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, Event)]
struct InvoiceCreated {
    invoice_id: u64,
}

#[derive(Debug, Serialize, Deserialize, Event)]
#[outbox(name = "billing.invoice_paid", publish_if = InvoicePaid::is_external)]
struct InvoicePaid {
    invoice_id: u64,
    external: bool,
}

static PUBLISH_IF_CALLS: AtomicUsize = AtomicUsize::new(0);

impl InvoicePaid {
    fn is_external(&self) -> bool {
        PUBLISH_IF_CALLS.fetch_add(1, Ordering::SeqCst);
        self.external
    }
}

#[derive(Debug, Serialize, Deserialize, Event)]
#[outbox(name = "billing.invoice_changed")]
#[outbox(publish_if = rules::is_significant)]
enum InvoiceChanged {
    Amount { cents: i64 },
    Note(String),
}

mod rules {
    pub(crate) fn is_significant(event: &super::InvoiceChanged) -> bool {
        matches!(event, super::InvoiceChanged::Amount { .. })
    }
}

#[derive(Debug, Serialize, Deserialize, Event)]
#[outbox(skip)]
struct AuditRead {
    user: String,
}

#[derive(Debug, Serialize, Deserialize, Event)]
#[outbox(skip, name = "audit.written")]
struct AuditWritten;

#[test]
fn name_defaults_to_the_type_name() {
    assert_eq!(InvoiceCreated::NAME, "InvoiceCreated");
}

#[test]
fn explicit_name() {
    assert_eq!(InvoicePaid::NAME, "billing.invoice_paid");
    assert_eq!(InvoiceChanged::NAME, "billing.invoice_changed");
    assert_eq!(AuditWritten::NAME, "audit.written");
}

#[test]
fn publish_if_defaults_to_true() {
    assert!(InvoiceCreated { invoice_id: 1 }.publish_if());
}

#[test]
fn publish_if_calls_the_named_function() {
    let before = PUBLISH_IF_CALLS.load(Ordering::SeqCst);
    let external = InvoicePaid {
        invoice_id: 1,
        external: true,
    };
    let internal = InvoicePaid {
        invoice_id: 2,
        external: false,
    };
    assert!(external.publish_if());
    assert!(!internal.publish_if());
    assert_eq!(PUBLISH_IF_CALLS.load(Ordering::SeqCst) - before, 2);
}

#[test]
fn publish_if_through_a_module_path_on_an_enum() {
    assert!(InvoiceChanged::Amount { cents: 10 }.publish_if());
    assert!(!InvoiceChanged::Note("late".into()).publish_if());
}

/// Reads `SKIP` the way the runtime does, through a generic `E: Event`.
fn is_skip<E: Event>() -> bool {
    E::SKIP
}

#[test]
fn skip() {
    assert!(is_skip::<AuditRead>());
    assert!(is_skip::<AuditWritten>());
    assert!(!is_skip::<InvoiceCreated>());
    assert!(!is_skip::<InvoicePaid>());
    assert!(!is_skip::<InvoiceChanged>());
    // `skip` keeps the default predicate.
    assert!(AuditRead { user: "ann".into() }.publish_if());
}

#[test]
fn derived_events_round_trip_through_serde_json() {
    let event = InvoicePaid {
        invoice_id: 7,
        external: true,
    };
    let json = serde_json::to_string(&event).unwrap();
    let back: InvoicePaid = serde_json::from_str(&json).unwrap();
    assert_eq!(back.invoice_id, 7);
    assert!(back.external);
}

/// Every non-`skip` derive submits one registration, with its event name
/// and its full Rust type path; `skip` types submit none. `Registration` is
/// not public API, so this reads its `Debug` output.
#[test]
fn registrations() {
    let registrations: Vec<String> =
        outbox::__private::inventory::iter::<outbox::__private::Registration>
            .into_iter()
            .map(|registration| format!("{registration:?}"))
            .collect();
    let registered = |name: &str, rust_type: &str| {
        let name = format!("{name:?}");
        let rust_type = format!("{rust_type:?}");
        registrations
            .iter()
            .filter(|r| r.contains(&name) && r.contains(&rust_type))
            .count()
    };
    assert_eq!(registered("InvoiceCreated", "derive::InvoiceCreated"), 1);
    assert_eq!(registered("billing.invoice_paid", "derive::InvoicePaid"), 1);
    assert_eq!(
        registered("billing.invoice_changed", "derive::InvoiceChanged"),
        1
    );
    assert_eq!(registrations.len(), 3, "{registrations:#?}");
    assert!(
        !registrations
            .iter()
            .any(|r| r.contains("Audit") || r.contains("audit.")),
        "{registrations:#?}"
    );
}
