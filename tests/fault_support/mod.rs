//! What the fault-injection suites (`fault_*`, `faults`, `security`) share:
//! a PostgreSQL outbox with a business table beside it (the business table
//! is the oracle of what was committed: its rows are written in the same
//! transactions as the events and never deleted), a durable RabbitMQ queue
//! with a real lapin consumer, a publisher wrapper that timestamps every
//! confirmed batch, guards that always bring a stopped (or killed) service
//! back and checks that a scenario starts with every service up, and a
//! small seeded random generator.

#![allow(dead_code)] // Reason: each test binary uses a different subset of the helpers.
#![allow(unreachable_pub)] // Reason: shared by several test crates through `mod fault_support`.
#![allow(unused_imports)] // Reason: each test binary uses a different subset of the re-exports.

mod broker_outage;
mod database;
mod database_outage;
mod rabbit;
mod relays;
mod rng;
mod services;

pub use broker_outage::{BrokerFault, broker_outage};
pub use database::*;
pub use database_outage::{DatabaseStop, database_outage};
pub use rabbit::*;
pub use relays::*;
pub use rng::Rng;
pub use services::*;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The event every scenario records: `n` is its number in the scenario,
/// also kept in the business table, so a delivered body can be checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, outbox::Event)]
#[outbox(name = "fault.tick")]
pub struct Tick {
    pub n: i64,
    pub note: String,
}

pub fn tick(n: i64) -> Tick {
    Tick {
        n,
        note: format!("tick {n}: naïve \"quoted\" ✓"),
    }
}

/// A lowercase name no other test uses, valid as a table and a queue name.
pub fn unique(prefix: &str) -> String {
    let rand = Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &rand[..12])
}
