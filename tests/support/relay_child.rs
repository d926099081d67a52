//! A relay process for the crash tests: `outbox-test-relay TABLE LOG_FILE`.
//!
//! Relays the PostgreSQL outbox `TABLE` (at `DATABASE_URL`) with a lease of
//! 2 s, appending each published event id to `LOG_FILE` before the outcome
//! is committed, slowly (2 ms an event) so a kill lands mid-batch. Runs
//! until killed.

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use outbox::{Entry, Outbox, PublishError, Publishers};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(table), Some(log)) = (args.next(), args.next()) else {
        return Err("usage: outbox-test-relay TABLE LOG_FILE".into());
    };
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_owned());
    let pool = sqlx::PgPool::connect(&url).await?;
    let outbox = Outbox::builder(pool)
        .table(table)
        .lease(Duration::from_secs(2))
        .batch_limit(100)
        .build()
        .await?;
    let log = std::sync::Arc::new(Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?,
    ));
    let publishers = Publishers::builder()
        .fallback_fn(move |entry: Entry| {
            let log = log.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                let mut file = log
                    .lock()
                    .map_err(|_| PublishError::unavailable("log lock poisoned"))?;
                writeln!(file, "{}", entry.event_id()).map_err(PublishError::unavailable)?;
                Ok(())
            }
        })
        .build()?;
    outbox
        .relay(publishers)
        .poll_interval(Duration::from_millis(50))
        .run(std::future::pending())
        .await;
    Ok(())
}
