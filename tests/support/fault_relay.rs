//! A relay process for the fault suites: `outbox-fault-relay TABLE QUEUE`
//! (RabbitMQ) or `outbox-fault-relay TABLE --nats SUBJECT_PREFIX` (NATS
//! JetStream; built with the `broker-nats` feature).
//!
//! Relays the PostgreSQL outbox `TABLE` (at `DATABASE_URL`) with the
//! library's publishers: to the RabbitMQ queue `QUEUE` (at `AMQP_URL`,
//! through the default exchange) with `AmqpPublisher`, or with
//! `NatsPublisher` (at `NATS_URL`) to the subject `SUBJECT_PREFIX` + event
//! name, which a JetStream stream must capture. Up to `FAULT_IN_FLIGHT`
//! (default 4) batches in flight. Batches of `FAULT_BATCH`
//! (default 100), a lease of `FAULT_LEASE_MS` (default 2000), a blocked
//! publisher paused for at most `FAULT_MAX_PAUSE_MS` (default 2000). After
//! each confirmed batch it waits `FAULT_SETTLE_DELAY_MS` (default 20) before
//! the relay records the outcomes, which widens the window in which a
//! SIGKILL leaves published-but-unrecorded entries behind (the duplicates
//! the suites count). Runs until killed.

use std::time::Duration;

use outbox::publisher::amqp::AmqpPublisher;
use outbox::{Entry, Outbox, PublishResult, Publishers, RawPublisher};

const USAGE: &str =
    "usage: outbox-fault-relay TABLE QUEUE | outbox-fault-relay TABLE --nats SUBJECT_PREFIX";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A broker publisher, then a pause before the outcomes are recorded.
struct SlowSettle<P> {
    broker: P,
    delay: Duration,
}

impl<P: RawPublisher> RawPublisher for SlowSettle<P> {
    async fn publish_raw(&self, entry: &Entry) -> PublishResult {
        let results = self.publish_raw_batch(std::slice::from_ref(entry)).await;
        results.into_iter().next().unwrap_or(Ok(()))
    }

    async fn publish_raw_batch(&self, entries: &[Entry]) -> Vec<PublishResult> {
        let results = self.broker.publish_raw_batch(entries).await;
        tokio::time::sleep(self.delay).await;
        results
    }
}

fn url(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let batch = usize::try_from(env_u64("FAULT_BATCH", 100))?;
    let lease = Duration::from_millis(env_u64("FAULT_LEASE_MS", 2_000));
    let delay = Duration::from_millis(env_u64("FAULT_SETTLE_DELAY_MS", 20));
    let in_flight = usize::try_from(env_u64("FAULT_IN_FLIGHT", 4))?;
    let max_pause = Duration::from_millis(env_u64("FAULT_MAX_PAUSE_MS", 2_000));
    let publishers = Publishers::builder().max_pause(max_pause);
    let (table, publishers) = match args.as_slice() {
        [table, queue] => {
            let queue = queue.clone();
            let rabbit =
                AmqpPublisher::builder(url("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"))
                    .routing_key(move |_entry| queue.clone())
                    .timeout(Duration::from_secs(5))
                    .build()?;
            let slow = SlowSettle {
                broker: rabbit,
                delay,
            };
            (table, publishers.fallback(slow).build()?)
        }
        #[cfg(feature = "broker-nats")]
        [table, flag, prefix] if flag == "--nats" => {
            let nats = outbox::publisher::nats::NatsPublisher::builder(url(
                "NATS_URL",
                "nats://127.0.0.1:4222",
            ))
            .subject_prefix(prefix.clone())
            .timeout(Duration::from_secs(5))
            .build()?;
            let slow = SlowSettle {
                broker: nats,
                delay,
            };
            (table, publishers.fallback(slow).build()?)
        }
        _ => return Err(USAGE.into()),
    };

    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(3)
        .connect(&url("DATABASE_URL", "postgres://root@127.0.0.1:5432/test"))
        .await?;
    let outbox = Outbox::builder(pool)
        .table(table.clone())
        .migrate(false)
        .lease(lease)
        .batch_limit(batch)
        .build()
        .await?;
    outbox
        .relay(publishers)
        .in_flight(in_flight)
        .poll_interval(Duration::from_millis(50))
        .run(std::future::pending())
        .await;
    Ok(())
}
