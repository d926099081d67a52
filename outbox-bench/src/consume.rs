//! `consume`: messages waiting in a RabbitMQ queue consumed into
//! PostgreSQL (one business row per message, exactly once), by the
//! library's inbox (`AmqpSource` + `Consume` loop) and by a hand-written
//! lapin loop, with the same prefetch and the same concurrency.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use outbox::Recorded;
use outbox::inbox::amqp::AmqpSource;
use outbox::inbox::{ConsumeError, Consumers, Inbox, Tx};
use sqlx::{PgPool, Postgres};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use uuid::Uuid;

use crate::broker::Rabbit;
use crate::common::{Bench, Counter, OrderPlaced, RawRow, lib, order};
use crate::report::{Throughput, print_ratio};
use crate::util::{Context, Res, bail, count, rate};

/// Messages worked on at once, and the broker's prefetch, for both modes.
const IN_FLIGHT: u16 = 32;
/// Database connections, for both modes (one per message in flight).
const POOL: u32 = 32;
/// Messages published per batch of confirms while filling the queue.
const FILL_BATCH: usize = 1_000;

/// The business table both modes write, the raw loop's dedupe table and
/// the library's inbox table.
struct Tables {
    business: String,
    dedupe: String,
    inbox: String,
}

/// The raw loop's statements: the dedupe id first (a duplicate skips the
/// business write), then the business row.
struct RawSql {
    dedupe: String,
    business: String,
}

pub(crate) async fn consume(b: &Bench) -> Res<()> {
    let n = b.plan.consume_n;
    let reps = b.plan.broker_reps;
    let tables = Tables {
        business: b.plain_table("consume_orders"),
        dedupe: b.plain_table("consume_dedupe"),
        inbox: b.plain_table("consume_inbox"),
    };
    let sql = format!(
        "CREATE TABLE \"{}\" (order_id bigint NOT NULL, customer text NOT NULL, \
         amount_cents bigint NOT NULL, seq bigint NOT NULL); \
         CREATE TABLE \"{}\" (event_id uuid PRIMARY KEY)",
        tables.business, tables.dedupe
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&b.admin)
        .await
        .context("creating the business and dedupe tables")?;
    let pool: PgPool = b.pool(POOL).await?;
    let inbox: Inbox<Postgres> = lib(
        Inbox::builder(pool.clone())
            .table(&tables.inbox)
            .build()
            .await,
        "building the inbox",
    )?;
    let queue = format!("bench_{}_consume", b.run);
    let rabbit = Rabbit::connect(&b.amqp_url, queue.clone()).await?;
    println!(
        "\n== consume: {} messages waiting in a durable RabbitMQ queue consumed into PostgreSQL \
         (one business row per message, its id deduplicated, ack after commit); prefetch and \
         in flight {IN_FLIGHT}, {POOL} connections, {reps} repetitions each, median",
        count(n)
    );
    let result = async {
        let raw_sql = RawSql {
            dedupe: format!(
                "INSERT INTO \"{}\" (event_id) VALUES ($1) ON CONFLICT DO NOTHING",
                tables.dedupe
            ),
            business: business_insert(&tables.business),
        };
        let mut library = Throughput::new("library inbox + AmqpSource");
        let mut raw = Throughput::new("raw loop (lapin + sqlx, same prefetch)");
        for rep in 0..reps {
            for mode in order(2, rep) {
                for table in [&tables.business, &tables.dedupe, &tables.inbox] {
                    b.truncate(table).await?;
                }
                fill_queue(&rabbit, n).await?;
                for table in [&tables.business, &tables.dedupe, &tables.inbox] {
                    b.settle_db(table).await?;
                }
                let elapsed = if mode == 0 {
                    library_consume(b, &inbox, &tables.business, &queue, n).await?
                } else {
                    raw_consume(b, &pool, &raw_sql, &queue, n).await?
                };
                check_rows(b, &tables.business, n).await?;
                let figure = if mode == 0 { &mut library } else { &mut raw };
                figure.push(rate(n, elapsed));
            }
        }
        library.print();
        raw.print();
        print_ratio(
            "consume",
            library.median() / raw.median(),
            ">=",
            0.80,
            "library/raw",
        );
        println!(
            "  (events/s from the subscription to the last message committed and acknowledged; \
             the library's inbox row is the raw loop's dedupe row plus the message's name and \
             state)"
        );
        Ok(())
    }
    .await;
    pool.close().await;
    let deleted = rabbit.delete().await;
    result.and(deleted)
}

fn business_insert(table: &str) -> String {
    format!(
        "INSERT INTO \"{table}\" (order_id, customer, amount_cents, seq) VALUES ($1, $2, $3, $4)"
    )
}

/// Publishes `n` messages as the library's AMQP publisher writes them
/// (message id, type, headers), persistent, with confirms.
async fn fill_queue(rabbit: &Rabbit, n: usize) -> Res<()> {
    rabbit.purge().await?;
    let mut sink = rabbit.sink();
    let now = chrono::Utc::now();
    let mut next = 1_usize;
    while next <= n {
        let end = (next + FILL_BATCH - 1).min(n);
        let rows: Vec<RawRow> = (next..=end)
            .map(|s| {
                let seq = u64::try_from(s).unwrap_or(u64::MAX);
                let payload =
                    serde_json::to_string(&OrderPlaced::new(seq)).context("encoding an event")?;
                Ok(RawRow {
                    id: i64::try_from(s).unwrap_or(i64::MAX),
                    event_id: Uuid::now_v7(),
                    name: <OrderPlaced as outbox::Event>::NAME.to_owned(),
                    payload,
                    stream_key: None,
                    headers: "{}".to_owned(),
                    correlation_id: None,
                    causation_id: None,
                    created_at: now,
                    attempts: 0,
                })
            })
            .collect::<Res<_>>()?;
        sink.publish(&rows).await?;
        next = end + 1;
    }
    Ok(())
}

/// Every message left exactly one business row.
async fn check_rows(b: &Bench, table: &str, n: usize) -> Res<()> {
    let (rows, distinct): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT count(*), count(DISTINCT seq) FROM \"{table}\""
    )))
    .fetch_one(&b.admin)
    .await
    .context("counting business rows")?;
    let want = i64::try_from(n).unwrap_or(i64::MAX);
    if rows != want || distinct != want {
        bail!("the business table holds {rows} rows ({distinct} distinct), not {n}");
    }
    Ok(())
}

/// The library: `Inbox::consume(..).max_in_flight(32).run(AmqpSource)`,
/// stopped once every message's consumer ran (the messages in flight then
/// commit and are acknowledged before `run` returns).
async fn library_consume(
    b: &Bench,
    inbox: &Inbox<Postgres>,
    business: &str,
    queue: &str,
    n: usize,
) -> Res<Duration> {
    let counter = Counter::new(n);
    let insert: Arc<str> = business_insert(business).into();
    let seen = counter.clone();
    let consumers = lib(
        Consumers::builder()
            .on(move |tx: &mut Tx<Postgres>, order: Recorded<OrderPlaced>| {
                let insert = Arc::clone(&insert);
                let seen = seen.clone();
                Box::pin(async move {
                    let e = order.event();
                    sqlx::query(sqlx::AssertSqlSafe(insert.to_string()))
                        .bind(e.order_id)
                        .bind(&e.customer)
                        .bind(e.amount_cents)
                        .bind(i64::try_from(e.seq).unwrap_or(i64::MAX))
                        .execute(&mut **tx)
                        .await
                        .map_err(ConsumeError::from)?;
                    seen.add(1);
                    Ok(())
                })
            })
            .build(),
        "building the consumers",
    )?;
    let source = lib(
        AmqpSource::builder(b.amqp_url.as_str(), queue)
            .prefetch(IN_FLIGHT)
            .build()
            .await,
        "building the AMQP source",
    )?;
    let start = Instant::now();
    let report = tokio::time::timeout(
        deadline(n),
        inbox
            .consume(consumers)
            .max_in_flight(usize::from(IN_FLIGHT))
            .run(source, counter.stopped()),
    )
    .await
    .context("the library's consumer loop did not finish in time")?;
    let elapsed = start.elapsed();
    counter.check("library consume")?;
    let processed = usize::try_from(report.processed).unwrap_or(usize::MAX);
    if processed != n || report.dead != 0 || report.released != 0 {
        bail!("library consume: {n} messages, but {report:?}");
    }
    Ok(elapsed)
}

/// Generous: a stuck run fails instead of hanging.
fn deadline(n: usize) -> Duration {
    Duration::from_secs(60 + u64::try_from(n / 200).unwrap_or(u64::MAX))
}

/// The raw loop: lapin `basic.consume` (prefetch 32, manual acks), each
/// delivery in its own task (at most 32): decode, BEGIN, dedupe id, business
/// row, COMMIT, `basic.ack`.
async fn raw_consume(
    b: &Bench,
    pool: &PgPool,
    sql: &RawSql,
    queue: &str,
    n: usize,
) -> Res<Duration> {
    let connection = Connection::connect(&b.amqp_url, ConnectionProperties::default())
        .await
        .context("raw loop: connecting to RabbitMQ")?;
    let channel = connection
        .create_channel()
        .await
        .context("raw loop: channel")?;
    channel
        .basic_qos(IN_FLIGHT, BasicQosOptions::default())
        .await
        .context("raw loop: basic.qos")?;
    let tag = format!("raw-{}", Uuid::new_v4().simple());
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("raw loop: basic.consume")?;
    let counter = Counter::new(n);
    let sql = Arc::new(RawSql {
        dedupe: sql.dedupe.clone(),
        business: sql.business.clone(),
    });
    let slots = Arc::new(Semaphore::new(usize::from(IN_FLIGHT)));
    let start = Instant::now();
    let run = async {
        let mut tasks: JoinSet<Res<()>> = JoinSet::new();
        let mut stopped = pin!(counter.stopped());
        loop {
            while let Some(done) = tasks.try_join_next() {
                done.context("raw loop task")??;
            }
            let permit = tokio::select! {
                biased;
                () = &mut stopped => break,
                permit = Arc::clone(&slots).acquire_owned() => permit.context("semaphore")?,
            };
            let delivery = tokio::select! {
                biased;
                () = &mut stopped => break,
                next = consumer.next() => next,
            };
            let Some(delivery) = delivery else {
                bail!("raw loop: the consumer ended");
            };
            let delivery = delivery.context("raw loop: delivery")?;
            let (pool, sql, counter) = (pool.clone(), Arc::clone(&sql), counter.clone());
            tasks.spawn(async move {
                let _permit = permit;
                raw_handle(delivery, &pool, &sql, &counter).await
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.context("raw loop task")??;
        }
        Ok::<_, crate::util::Error>(())
    };
    tokio::time::timeout(deadline(n), run)
        .await
        .context("the raw consumer loop did not finish in time")??;
    let elapsed = start.elapsed();
    counter.check("raw consume")?;
    let _ = channel
        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
        .await;
    let _ = connection.close(200, "bye".into()).await;
    Ok(elapsed)
}

/// One delivery of the raw loop: decode, BEGIN, dedupe id (a duplicate
/// skips the business row), business row, COMMIT, `basic.ack`.
async fn raw_handle(
    delivery: lapin::message::Delivery,
    pool: &PgPool,
    sql: &RawSql,
    counter: &Counter,
) -> Res<()> {
    let event: OrderPlaced =
        serde_json::from_slice(&delivery.data).context("decoding a message")?;
    let Some(id) = delivery
        .properties
        .message_id()
        .as_ref()
        .and_then(|id| Uuid::parse_str(id.as_str()).ok())
    else {
        bail!("a message without a UUID message id");
    };
    let mut tx = pool.begin().await.context("BEGIN")?;
    let new = sqlx::query(sqlx::AssertSqlSafe(sql.dedupe.clone()))
        .bind(id)
        .execute(&mut *tx)
        .await
        .context("dedupe INSERT")?
        .rows_affected()
        == 1;
    if new {
        sqlx::query(sqlx::AssertSqlSafe(sql.business.clone()))
            .bind(event.order_id)
            .bind(&event.customer)
            .bind(event.amount_cents)
            .bind(i64::try_from(event.seq).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await
            .context("business INSERT")?;
        counter.add(1);
    }
    tx.commit().await.context("COMMIT")?;
    delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .context("basic.ack")?;
    Ok(())
}
