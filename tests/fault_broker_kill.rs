//! Broker killed: the RabbitMQ node (its `beam.smp`) is killed with SIGKILL
//! while two relays drain a PostgreSQL outbox into a durable queue and the
//! application keeps recording, left dead for 1 s, and started again with
//! `rabbitmq-server -detached`. No connection is closed and nothing is
//! flushed: the durable queue and the messages the broker confirmed must
//! survive, the relays' publishers are blocked while it is down and resume
//! by themselves, nothing is lost and no attempt is spent (see
//! `fault_support::broker_outage` for everything asserted).
//!
//! This suite kills the shared local broker, so it is its own test binary
//! with a single test (cargo runs test binaries one after another). A guard
//! starts the node again, even if the test panics, and the scenario first
//! checks that RabbitMQ and PostgreSQL are up.

mod fault_support;

use std::time::Duration;

use fault_support::{BrokerFault, broker_outage};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_mid_drain_loses_nothing() {
    broker_outage(BrokerFault::Kill(Duration::from_secs(1))).await;
}
