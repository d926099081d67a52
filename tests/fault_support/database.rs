//! The PostgreSQL side of a scenario: its pools, its world (the outbox
//! table, the business table that is the oracle of what committed, and the
//! durable queue), and the application's transactions.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

use outbox::publisher::amqp::AmqpPublisher;
use outbox::{Metadata, Outbox};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};
use uuid::Uuid;

use super::rabbit::{declare_queue, delete_queue, publisher_to};
use super::{tick, unique};

pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_owned())
}

/// A pool whose connections carry `application_name`, so a test can find
/// (and kill) them in `pg_stat_activity`.
pub async fn pool(application_name: &str, max_connections: u32) -> PgPool {
    let options = PgConnectOptions::from_str(&database_url())
        .expect("DATABASE_URL parses")
        .application_name(application_name);
    PgPoolOptions::new()
        .max_connections(max_connections)
        .connect_with(options)
        .await
        .expect("PostgreSQL must be reachable at DATABASE_URL (default postgres://root@127.0.0.1:5432/test)")
}

/// One scenario's world: the outbox table `table`, the business table
/// `{table}_biz (event_id, n)`, and the durable queue `queue` that the
/// relays publish to through the default exchange.
pub struct World {
    pub admin: PgPool,
    pub table: String,
    pub queue: String,
}

impl World {
    pub async fn new(prefix: &str) -> Self {
        let admin = pool(&format!("{prefix}-admin"), 4).await;
        let table = unique(prefix);
        outbox::migrate(&admin, &table).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE \"{table}_biz\" (event_id UUID PRIMARY KEY, n BIGINT NOT NULL)"
        )))
        .execute(&admin)
        .await
        .unwrap();
        let queue = table.clone();
        declare_queue(&queue).await;
        Self {
            admin,
            table,
            queue,
        }
    }

    /// An outbox handle on `pool` for this table (no migration: the table exists).
    pub fn builder(&self, pool: PgPool) -> outbox::OutboxBuilder<Postgres> {
        Outbox::builder(pool)
            .table(self.table.clone())
            .migrate(false)
    }

    /// The RabbitMQ publisher every relay of the scenario uses: the default
    /// exchange, routed to the scenario's queue, mandatory, confirmed.
    pub fn rabbit(&self) -> AmqpPublisher {
        publisher_to(&self.queue)
    }

    /// What was committed: the business table, `event_id -> n`.
    pub async fn committed(&self) -> HashMap<Uuid, i64> {
        let rows: Vec<(Uuid, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT event_id, n FROM \"{}_biz\"",
            self.table
        )))
        .fetch_all(&self.admin)
        .await
        .unwrap();
        rows.into_iter().collect()
    }

    /// Entries not yet published (pending, claimed or not); `None` while
    /// the database cannot be asked.
    pub async fn pending(&self) -> Option<i64> {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM \"{}\" WHERE status = 'pending'",
            self.table
        )))
        .fetch_one(&self.admin)
        .await
        .ok()
    }

    /// Dead letters.
    pub async fn dead(&self) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM \"{}\" WHERE status = 'dead'",
            self.table
        )))
        .fetch_one(&self.admin)
        .await
        .unwrap()
    }

    /// Waits until no entry is pending; returns how long that took.
    pub async fn wait_drained(&self, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            if self.pending().await == Some(0) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "the outbox did not drain within {within:?}: {:?} pending",
                self.pending().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Drops the tables and the queue.
    pub async fn drop_all(self) {
        let t = &self.table;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP TABLE IF EXISTS \"{t}\", \"{t}_schema\", \"{t}_blocked\", \"{t}_biz\""
        )))
        .execute(&self.admin)
        .await
        .unwrap();
        self.admin.close().await;
        delete_queue(&self.queue).await;
    }
}

/// Records ticks `first..first + n` and their business rows in one
/// transaction on `pool`, then commits (or rolls back). Returns the event
/// ids with their numbers; an `Err` is whatever failed (the outcome of a
/// commit that failed is unknown: the business table tells).
pub async fn record_ticks(
    outbox: &Outbox<Postgres>,
    pool: &PgPool,
    table: &str,
    first: i64,
    n: i64,
    commit: bool,
) -> Result<Vec<(Uuid, i64)>, String> {
    let mut tx = pool.begin().await.map_err(|e| e.to_string())?;
    let mut batch = outbox.batch();
    let mut ids = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    let mut numbers = Vec::with_capacity(ids.capacity());
    for k in first..first + n {
        let meta = Metadata::new().stream_key(format!("s-{}", k % 16));
        let id = batch
            .push_with(&tick(k), meta)
            .map_err(|e| e.to_string())?
            .event_id()
            .expect("stored");
        ids.push(id);
        numbers.push(k);
    }
    batch.record(&mut tx).await.map_err(|e| e.to_string())?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO \"{table}_biz\" (event_id, n) SELECT * FROM UNNEST($1::uuid[], $2::bigint[])"
    )))
    .bind(&ids)
    .bind(&numbers)
    .execute(&mut *tx)
    .await
    .map_err(|e| e.to_string())?;
    if commit {
        tx.commit().await.map_err(|e| e.to_string())?;
    } else {
        tx.rollback().await.map_err(|e| e.to_string())?;
    }
    Ok(ids.into_iter().zip(numbers).collect())
}

/// Records `n` ticks in transactions of 1,000; returns when committed.
pub async fn backlog(world: &World, outbox: &Outbox<Postgres>, first: i64, n: i64) {
    let mut k = first;
    while k < first + n {
        let size = 1_000.min(first + n - k);
        record_ticks(outbox, &world.admin, &world.table, k, size, true)
            .await
            .unwrap();
        k += size;
    }
}
