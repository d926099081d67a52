//! The inbox end to end under crashes, through RabbitMQ (issue #11): service
//! A records 20,000 committed events (30% of its transactions roll back),
//! two relay processes publish them to a durable queue, two consumer
//! processes of service B consume them through B's inbox into B's business
//! table. Relay and consumer processes are killed with SIGKILL and started again in
//! a loop, the consumers' PostgreSQL connections are terminated, and
//! RabbitMQ is killed with SIGKILL and started again once. B's business table ends
//! with exactly one row per committed event: zero lost, zero doubled, zero
//! from rolled-back transactions; no dead letter; the outbox empty.
//!
//! Its own test binary with a single test: it kills RabbitMQ and processes
//! and should not share the machine's two cores with another suite.

mod fault_support;
mod inbox_fault_support;

use inbox_fault_support::{Broker, scenario};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_relays_consumers_and_broker_apply_each_event_exactly_once() {
    scenario(Broker::Amqp).await;
}
