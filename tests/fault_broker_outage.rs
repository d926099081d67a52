//! Broker outage: RabbitMQ's application is stopped (`rabbitmqctl
//! stop_app`, which closes every connection with `320 CONNECTION_FORCED`)
//! for 10 s while two relays drain a PostgreSQL outbox into a durable queue
//! and the application keeps recording, then started again. Nothing is
//! lost, no attempt is spent, the relays' publishers are blocked while the
//! broker is down and resume by themselves (see
//! `fault_support::broker_outage` for everything asserted).
//!
//! This suite stops the shared local broker, so it is its own test binary
//! with a single test (cargo runs test binaries one after another). A guard
//! runs `rabbitmqctl start_app` when the outage ends, even if the test panics.

mod fault_support;

use std::time::Duration;

use fault_support::{BrokerFault, broker_outage};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stopped_mid_drain_loses_nothing_and_kills_nothing() {
    broker_outage(BrokerFault::StopApp(Duration::from_secs(10))).await;
}
