//! Database crash: the PostgreSQL server is stopped with `pg_ctlcluster ..
//! stop -m immediate` (every server process quits at once, as in a crash or
//! a power loss) while two relays drain the outbox into RabbitMQ and the
//! application keeps recording, and started again 4 s later (the start
//! replays the WAL, which takes several seconds more). The relays reconnect by themselves; nothing is lost; the
//! duplicates stay within the batches in flight per relay (see
//! `fault_support::database_outage` for everything asserted).
//!
//! This suite stops the shared local database server, so it is its own
//! test binary with a single test (cargo runs test binaries one after
//! another). A guard starts the cluster again, even if the test panics, and
//! the scenario first checks that PostgreSQL and RabbitMQ are up.

mod fault_support;

use fault_support::{DatabaseStop, database_outage};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_crashed_mid_drain_loses_nothing() {
    database_outage(DatabaseStop::Immediate).await;
}
