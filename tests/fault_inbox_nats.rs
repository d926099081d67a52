//! The inbox end to end under crashes, through NATS JetStream (issue #11):
//! service A records 20,000 committed events (30% of its transactions roll
//! back), two relay processes publish them to a stream, two consumer
//! processes of service B share a durable pull consumer and consume them
//! through B's inbox into B's business table. Relay and consumer processes
//! are killed with SIGKILL and started again in a loop and the consumers' PostgreSQL
//! connections are terminated. B's business table ends with exactly one
//! row per committed event: zero lost, zero doubled, zero from rolled-back
//! transactions; no dead letter; the outbox empty.
//!
//! Its own test binary with a single test: it kills processes and should
//! not share the machine's two cores with another suite.

mod fault_support;
mod inbox_fault_support;

use inbox_fault_support::{Broker, scenario};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_relays_and_consumers_apply_each_event_exactly_once() {
    scenario(Broker::Nats).await;
}
