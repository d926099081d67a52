//! A relay process for the relay-crash fault suite:
//! `outbox-fault-relay TABLE QUEUE`.
//!
//! Relays the PostgreSQL outbox `TABLE` (at `DATABASE_URL`) to the RabbitMQ
//! queue `QUEUE` (at `AMQP_URL`, through the default exchange) with the
//! library's `AmqpPublisher`, in batches of `FAULT_BATCH` (default 100),
//! with a lease of `FAULT_LEASE_MS` (default 2000) and a blocked publisher
//! paused for at most `FAULT_MAX_PAUSE_MS` (default 2000). After each confirmed
//! batch it waits `FAULT_SETTLE_DELAY_MS` (default 20) before the relay
//! records the outcomes, which widens the window in which a SIGKILL leaves
//! published-but-unrecorded entries behind (the duplicates the suite
//! counts). Runs until killed.

use std::time::Duration;

use outbox::publisher::amqp::AmqpPublisher;
use outbox::{Entry, Outbox, PublishResult, Publishers, RawPublisher};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The RabbitMQ publisher, then a pause before the outcomes are recorded.
struct SlowSettle {
    rabbit: AmqpPublisher,
    delay: Duration,
}

impl RawPublisher for SlowSettle {
    async fn publish_raw(&self, entry: &Entry) -> PublishResult {
        let results = self.publish_raw_batch(std::slice::from_ref(entry)).await;
        results.into_iter().next().unwrap_or(Ok(()))
    }

    async fn publish_raw_batch(&self, entries: &[Entry]) -> Vec<PublishResult> {
        let results = self.rabbit.publish_raw_batch(entries).await;
        tokio::time::sleep(self.delay).await;
        results
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(table), Some(queue)) = (args.next(), args.next()) else {
        return Err("usage: outbox-fault-relay TABLE QUEUE".into());
    };
    let database_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_owned());
    let amqp_url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let batch = usize::try_from(env_u64("FAULT_BATCH", 100))?;
    let lease = Duration::from_millis(env_u64("FAULT_LEASE_MS", 2_000));
    let delay = Duration::from_millis(env_u64("FAULT_SETTLE_DELAY_MS", 20));
    let max_pause = Duration::from_millis(env_u64("FAULT_MAX_PAUSE_MS", 2_000));

    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(3)
        .connect(&database_url)
        .await?;
    let outbox = Outbox::builder(pool)
        .table(table)
        .migrate(false)
        .lease(lease)
        .batch_limit(batch)
        .build()
        .await?;
    let rabbit = AmqpPublisher::builder(amqp_url)
        .routing_key(move |_entry| queue.clone())
        .timeout(Duration::from_secs(5))
        .build()?;
    let publishers = Publishers::builder()
        .max_pause(max_pause)
        .fallback(SlowSettle { rabbit, delay })
        .build()?;
    outbox
        .relay(publishers)
        .poll_interval(Duration::from_millis(50))
        .run(std::future::pending())
        .await;
    Ok(())
}
