//! Leases under a slow webhook: two relay loops on one PostgreSQL outbox
//! table (`DATABASE_URL`, default the local server's `test` database), a
//! webhook (`webhook_support`) that takes 400 ms per request, and batches
//! that take longer to publish than the lease lasts. The lease is renewed
//! while a batch is in flight, so the other relay never takes a batch that
//! is still being published: zero duplicates at the receiver.

mod webhook_support;

use std::time::{Duration, Instant};

use outbox::publisher::http::WebhookPublisher;
use outbox::{Outbox, Publishers, Report};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres};
use uuid::Uuid;
use webhook_support::{Reply, Server};

#[derive(Debug, Serialize, Deserialize, outbox::Event)]
#[outbox(name = "lease.tick")]
struct Tick {
    n: i64,
}

fn url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_owned())
}

async fn pool() -> PgPool {
    PgPoolOptions::new()
        .max_connections(4)
        .connect(&url())
        .await
        .expect("PostgreSQL must be reachable at DATABASE_URL (default postgres://root@127.0.0.1:5432/test)")
}

const EVENTS: usize = 2000;
const BATCH: usize = 100;
const LEASE: Duration = Duration::from_secs(5);
const PER_REQUEST: Duration = Duration::from_millis(400);
/// 100 entries, 8 at a time, 400 ms each: 13 rounds, about 5.2 s per batch.
const CONCURRENCY: usize = 8;

async fn outbox(pool: PgPool, table: &str) -> Outbox<Postgres> {
    Outbox::builder(pool)
        .table(table)
        .batch_limit(BATCH)
        .lease(LEASE)
        .max_attempts(3)
        .build()
        .await
        .unwrap()
}

/// Two relays, each with its own pool and publisher, one table; a batch
/// takes longer than the lease. Every event arrives, none twice, and no
/// outcome finds its claim lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_slower_than_the_lease_is_never_delivered_twice() {
    let server = Server::start_with(|_| Reply::status(200).after(PER_REQUEST)).await;
    let table = format!(
        "outbox_lease_{}",
        &Uuid::new_v4().simple().to_string()[..12]
    );
    let pool = pool().await;
    let first = outbox(pool.clone(), &table).await;
    let second = outbox(self::pool().await, &table).await;

    let mut tx = pool.begin().await.unwrap();
    let mut batch = first.batch();
    for n in 0..EVENTS {
        let n = i64::try_from(n).unwrap();
        assert!(!batch.push(&Tick { n }).unwrap().is_filtered());
    }
    batch.record(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();

    let mut relays = Vec::new();
    for outbox in [&first, &second] {
        let webhook = WebhookPublisher::builder()
            .url(server.url("/hooks/tick"))
            .concurrency(CONCURRENCY)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let publishers = Publishers::builder()
            .publisher::<Tick, _>(webhook)
            .build()
            .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let relay = outbox
            .relay(publishers)
            .poll_interval(Duration::from_millis(100))
            .stats_interval(None);
        let task = tokio::spawn(relay.run(async {
            let _ = stopped.await;
        }));
        relays.push((stop, task));
    }

    let deadline = Instant::now() + Duration::from_secs(85);
    let mut pending = u64::MAX;
    while pending > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        pending = first.stats().await.unwrap().pending;
    }
    let mut total = Report::default();
    for (stop, task) in relays {
        let _ = stop.send(());
        total += task.await.unwrap();
    }

    let delivered = server.delivered();
    let twice: Vec<_> = delivered.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{} events delivered more than once (a lease ran out mid-batch), e.g. {:?}",
        twice.len(),
        twice.iter().take(3).collect::<Vec<_>>()
    );
    assert_eq!(pending, 0, "drained in time");
    assert_eq!(delivered.len(), EVENTS, "every event received");
    assert_eq!(total.lost, 0, "{total:?}");
    assert_eq!(
        (total.published, total.retried, total.dead),
        (EVENTS, 0, 0),
        "{total:?}"
    );

    for suffix in ["", "_schema", "_blocked"] {
        let sql = format!("DROP TABLE IF EXISTS \"{table}{suffix}\"");
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .execute(&pool)
            .await
            .unwrap();
    }
    drop((first, second));
    pool.close().await;
}
