//! Database outage: the PostgreSQL server is stopped (`pg_ctlcluster ..
//! stop`, a fast shutdown) for 6 s and started again while two relays drain
//! the outbox into RabbitMQ and the application keeps recording. The relays
//! reconnect by themselves; nothing is lost (see
//! `fault_support::database_outage` for everything asserted).
//!
//! This suite stops the shared local database server, so it is its own
//! test binary with a single test (cargo runs test binaries one after
//! another). A guard starts the cluster again when the outage ends, even if
//! the test panics.

mod fault_support;

use fault_support::{DatabaseStop, database_outage};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_restarted_mid_drain_loses_nothing() {
    database_outage(DatabaseStop::Fast).await;
}
