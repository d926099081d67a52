//! Two services through RabbitMQ, exactly-once effects at the receiving end:
//! `cargo run --example inbox --features postgres,broker-amqp`
//! (`DATABASE_URL`, default `postgres://root@127.0.0.1:5432/test`;
//! `AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`).
//!
//! Service A (billing) records `InvoicePaid` events in the transactions that
//! mark its invoices paid, and a relay publishes them to an exchange.
//! Service B (shipping) consumes a queue bound to that exchange with an
//! inbox: each event's shipment row commits together with its event id, and
//! the message is acknowledged only after that commit. Both services use the
//! same PostgreSQL database here, in tables of their own.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::options::{
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use outbox::inbox::amqp::AmqpSource;
use outbox::inbox::{Consumers, Inbox, Tx};
use outbox::publisher::amqp::{AmqpPublisher, ExchangeKind};
use outbox::{Metadata, Outbox, Publishers, Recorded};
use serde::{Deserialize, Serialize};
use sqlx::{AssertSqlSafe, PgPool, Postgres};

#[derive(Debug, Serialize, Deserialize, outbox::Event)]
#[outbox(name = "billing.invoice_paid")]
struct InvoicePaid {
    invoice_id: i64,
    amount_cents: i64,
}

const INVOICES: usize = 4;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let database_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_owned());
    let amqp_url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let pool = PgPool::connect(&database_url).await?;
    let run = std::process::id();
    let names = Names {
        invoices: format!("example_invoices_{run}"),
        outbox: format!("example_outbox_{run}"),
        inbox: format!("example_inbox_{run}"),
        shipments: format!("example_shipments_{run}"),
        exchange: format!("outbox-example-billing-{run}"),
        queue: format!("outbox-example-shipping-{run}"),
    };

    // The deployment: each service's tables, and the queue shipping reads,
    // bound to the exchange billing publishes to.
    let (invoices, shipments) = (&names.invoices, &names.shipments);
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE \"{invoices}\" (id BIGINT PRIMARY KEY, paid BOOLEAN NOT NULL)"
    )))
    .execute(&pool)
    .await?;
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE \"{shipments}\" (invoice_id BIGINT PRIMARY KEY, event_id UUID NOT NULL)"
    )))
    .execute(&pool)
    .await?;
    let rabbit = AmqpPublisher::builder(amqp_url.as_str())
        .exchange(names.exchange.as_str())
        .declare_exchange(ExchangeKind::Topic)
        .build()?;
    rabbit.connect().await?;
    let admin = Connection::connect(&amqp_url, ConnectionProperties::default()).await?;
    let channel = admin.create_channel().await?;
    channel
        .queue_declare(
            names.queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            names.queue.as_str().into(),
            names.exchange.as_str().into(),
            "billing.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let outcome = run_services(&pool, &amqp_url, rabbit, &names).await;

    // Clean up whatever happened, so the example runs again.
    channel
        .queue_delete(names.queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    channel
        .exchange_delete(
            names.exchange.as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await?;
    let Names {
        invoices,
        outbox,
        inbox,
        shipments,
        ..
    } = &names;
    sqlx::query(AssertSqlSafe(format!(
        "DROP TABLE IF EXISTS \"{invoices}\", \"{outbox}\", \"{outbox}_schema\", \
         \"{outbox}_blocked\", \"{inbox}\", \"{inbox}_schema\", \"{shipments}\""
    )))
    .execute(&pool)
    .await?;
    outcome
}

struct Names {
    invoices: String,
    outbox: String,
    inbox: String,
    shipments: String,
    exchange: String,
    queue: String,
}

async fn run_services(
    pool: &PgPool,
    amqp_url: &str,
    rabbit: AmqpPublisher,
    names: &Names,
) -> Result<(), Box<dyn std::error::Error>> {
    // Service A: business change and event in one transaction.
    let outbox = Outbox::builder(pool.clone())
        .table(names.outbox.as_str())
        .build()
        .await?;
    for invoice_id in 1..=i64::try_from(INVOICES)? {
        let mut tx = pool.begin().await?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO \"{}\" (id, paid) VALUES ($1, true)",
            names.invoices
        )))
        .bind(invoice_id)
        .execute(&mut *tx)
        .await?;
        let paid = InvoicePaid {
            invoice_id,
            amount_cents: invoice_id * 1250,
        };
        let meta = Metadata::new().stream_key(format!("invoice-{invoice_id}"));
        let recording = outbox.record_with(&mut *tx, &paid, meta).await?;
        tx.commit().await?;
        println!("billing: invoice {invoice_id} paid, recorded {recording:?}");
    }
    let publishers = Publishers::builder().fallback(rabbit).build()?;
    let (stop_relay, relay_stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(
        outbox
            .relay(publishers)
            .poll_interval(Duration::from_millis(100))
            .run(async {
                let _ = relay_stopped.await;
            }),
    );

    // Service B: an inbox next to its shipments table.
    let inbox = Inbox::builder(pool.clone())
        .table(names.inbox.as_str())
        .build()
        .await?;
    let shipped = Arc::new(AtomicUsize::new(0));
    let consumers = {
        let shipments: Arc<str> = Arc::from(names.shipments.as_str());
        let shipped = Arc::clone(&shipped);
        Consumers::builder()
            .on(move |tx: &mut Tx<Postgres>, paid: Recorded<InvoicePaid>| {
                let shipments = Arc::clone(&shipments);
                let shipped = Arc::clone(&shipped);
                Box::pin(async move {
                    // Commits with the event id, or not at all.
                    sqlx::query(AssertSqlSafe(format!(
                        "INSERT INTO \"{shipments}\" (invoice_id, event_id) VALUES ($1, $2)"
                    )))
                    .bind(paid.event().invoice_id)
                    .bind(paid.event_id())
                    .execute(&mut **tx)
                    .await?;
                    println!(
                        "shipping: invoice {} ({} cents) ships; event {} attempt {}",
                        paid.event().invoice_id,
                        paid.event().amount_cents,
                        paid.event_id(),
                        paid.attempt()
                    );
                    shipped.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                })
            })
            .build()?
    };
    let source = AmqpSource::builder(amqp_url, names.queue.as_str())
        .prefetch(8)
        .build()
        .await?;
    println!("shipping: {source:?}");
    let (stop_consumer, consumer_stopped) = tokio::sync::oneshot::channel::<()>();
    let consumer = tokio::spawn(
        inbox
            .consume(consumers)
            .max_in_flight(8)
            .run(source, async {
                let _ = consumer_stopped.await;
            }),
    );

    // Ends by itself once every invoice shipped; fails loudly if that takes too long.
    let all_shipped = async {
        while shipped.load(Ordering::SeqCst) < INVOICES {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let arrived = tokio::time::timeout(Duration::from_secs(30), all_shipped).await;
    let _ = stop_relay.send(());
    let _ = stop_consumer.send(());
    let relayed = relay.await?;
    let inbox_report = consumer.await?;
    println!("billing relay: {relayed:?}");
    println!("shipping inbox: {inbox_report:?}");
    if arrived.is_err() {
        return Err(format!(
            "only {} of {INVOICES} invoices shipped within 30 s",
            shipped.load(Ordering::SeqCst)
        )
        .into());
    }
    let stats = inbox.stats().await?;
    println!(
        "shipping inbox table: {} processed ids kept for deduplication, {} dead letters",
        stats.processed, stats.dead
    );
    Ok(())
}
