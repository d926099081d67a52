//! A consumer process for the inbox crash suites (service B):
//! `outbox-test-consumer INBOX_TABLE BUSINESS_TABLE amqp QUEUE` or
//! `outbox-test-consumer INBOX_TABLE BUSINESS_TABLE nats STREAM DURABLE`.
//!
//! Consumes the RabbitMQ queue `QUEUE` (at `AMQP_URL`) or the JetStream
//! durable pull consumer `DURABLE` of `STREAM` (at `NATS_URL`) through the
//! PostgreSQL inbox `INBOX_TABLE` (at `DATABASE_URL`, created beforehand),
//! 32 messages in flight. Its typed consumer inserts one row
//! `(event_id, n)` per `fault.tick` event into `BUSINESS_TABLE`, which has
//! no unique key: an effect applied twice would show as two rows.
//!
//! Its database connections carry the `application_name` given in
//! `FAULT_APP_NAME` (default `outbox-test-consumer`), so a test can
//! terminate them. With `FAULT_DELIVERY_LOG` set it appends the event id
//! of every message it takes from the broker to that file (one `write` a
//! line: what a SIGKILL interrupts is only the line not yet written).
//! Runs until SIGINT, then stops taking messages, lets those in flight
//! settle and prints its report on stdout (`report: ...`).

use std::future::Future;
use std::io::Write;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use outbox::inbox::{ConsumeError, Consumer, Consumers, Delivery, Inbox, Source, SourceError, Tx};
use outbox::{Recorded, sqlx};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

const USAGE: &str =
    "usage: outbox-test-consumer INBOX_TABLE BUSINESS_TABLE (amqp QUEUE | nats STREAM DURABLE)";
/// Messages worked on at once, and the broker's prefetch (or pull batch).
const IN_FLIGHT: usize = 32;
const PREFETCH: u16 = 32;
/// NATS redelivers a message not acknowledged within this (a killed
/// process's messages come back after it).
const ACK_WAIT: Duration = Duration::from_secs(5);

/// The event service A records (the fault suites' `fault.tick`).
#[derive(Debug, Serialize, Deserialize, outbox::Event)]
#[outbox(name = "fault.tick")]
struct Tick {
    n: i64,
    note: String,
}

/// Inserts one business row per event, in the inbox's transaction.
struct Apply {
    insert: String,
}

impl Consumer<sqlx::Postgres, Tick> for Apply {
    async fn consume(
        &self,
        tx: &mut Tx<sqlx::Postgres>,
        tick: Recorded<Tick>,
    ) -> Result<(), ConsumeError> {
        sqlx::query(sqlx::AssertSqlSafe(self.insert.clone()))
            .bind(tick.event_id())
            .bind(tick.event().n)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

/// A source that appends the event id of every message it hands out to a
/// file, so the test can count redeliveries and what a killed process had
/// in flight.
struct Logged<S> {
    inner: S,
    log: Option<std::fs::File>,
}

#[async_trait]
impl<S: Source> Source for Logged<S> {
    async fn next(&mut self) -> Result<Option<Delivery>, SourceError> {
        let next = self.inner.next().await?;
        if let (Some(delivery), Some(log)) = (&next, &mut self.log) {
            let line = format!("{}\n", delivery.message().id().unwrap_or("-"));
            log.write_all(line.as_bytes())?;
        }
        Ok(next)
    }
}

/// Builds a source, again every 500 ms while the broker is down (a
/// process restarted during a broker outage waits for it).
async fn retry<S, F, Fut>(broker: &str, build: F) -> S
where
    F: Fn() -> Fut,
    Fut: Future<Output = outbox::Result<S>>,
{
    loop {
        match build().await {
            Ok(source) => return source,
            Err(err) => {
                eprintln!("outbox-test-consumer: {broker} not ready ({err}); trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

fn url(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [inbox_table, business, broker @ ..] = args.as_slice() else {
        return Err(USAGE.into());
    };
    let log = match std::env::var_os("FAULT_DELIVERY_LOG") {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        ),
        None => None,
    };
    let options =
        PgConnectOptions::from_str(&url("DATABASE_URL", "postgres://root@127.0.0.1:5432/test"))?
            .application_name(&url("FAULT_APP_NAME", "outbox-test-consumer"));
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await?;
    let inbox = Inbox::builder(pool)
        .table(inbox_table.clone())
        .migrate(false)
        .build()
        .await?;
    let consumers = Consumers::builder()
        .consumer::<Tick, _>(Apply {
            insert: format!("INSERT INTO \"{business}\" (event_id, n) VALUES ($1, $2)"),
        })
        .build()?;
    let consume = inbox.consume(consumers).max_in_flight(IN_FLIGHT);
    let shutdown = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let report = match broker {
        [kind, queue] if kind == "amqp" => {
            let amqp_url = url("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
            let source = retry("RabbitMQ", || {
                outbox::inbox::amqp::AmqpSource::builder(amqp_url.clone(), queue.clone())
                    .prefetch(PREFETCH)
                    .build()
            })
            .await;
            consume.run(Logged { inner: source, log }, shutdown).await
        }
        [kind, stream, durable] if kind == "nats" => {
            let nats_url = url("NATS_URL", "nats://127.0.0.1:4222");
            let source = retry("NATS", || {
                outbox::inbox::nats::NatsSource::builder(nats_url.clone(), stream, durable)
                    .batch(IN_FLIGHT)
                    .ack_wait(ACK_WAIT)
                    .build()
            })
            .await;
            consume.run(Logged { inner: source, log }, shutdown).await
        }
        _ => return Err(USAGE.into()),
    };
    println!(
        "report: processed={} duplicates={} dead={} retries={} unavailable={} released={} ack_failures={}",
        report.processed,
        report.duplicates,
        report.dead,
        report.retries,
        report.unavailable,
        report.released,
        report.ack_failures,
    );
    Ok(())
}
