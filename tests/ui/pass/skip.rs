#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(skip)]
struct AuditTrail;

#[derive(serde::Serialize, serde::Deserialize, outbox::Event)]
#[outbox(name = "billing.internal", skip)]
struct Internal;

fn main() {
    assert!(<AuditTrail as outbox::Event>::SKIP);
    assert_eq!(<AuditTrail as outbox::Event>::NAME, "AuditTrail");
    assert!(<Internal as outbox::Event>::SKIP);
    assert_eq!(<Internal as outbox::Event>::NAME, "billing.internal");
}
