//! `drain_noop_1`, `drain_noop_4`, `drain_amqp`, `drain_nats`, `drain_kafka`: a table of
//! pending entries drained by library relays and by the raw loop.

use std::time::Duration;

use outbox::publisher::amqp::AmqpPublisher;
use outbox::publisher::kafka::KafkaPublisher;
use outbox::publisher::nats::NatsPublisher;
use outbox::{Outbox, Publishers};
use sqlx::{PgPool, Postgres};

use crate::broker::{Kafka, Nats, Rabbit, Sink};
use crate::common::{
    Bench, Counted, Counter, Design, Noop, OrderPlaced, RawRow, RawSql, Timing, drain_library,
    drain_raw, lib, order,
};
use crate::report::{Throughput, print_ratio};
use crate::util::{Context, Res, count, median, ms, rate, thousands};

/// Batches in flight per library relay in the broker figures.
const BROKER_IN_FLIGHT: usize = 4;

/// Where the drained entries go.
enum Target<'a> {
    Noop,
    Amqp {
        rabbit: &'a Rabbit,
        publisher: AmqpPublisher,
    },
    Nats {
        nats: &'a Nats,
        publisher: NatsPublisher,
    },
    Kafka {
        kafka: &'a Kafka,
        publisher: KafkaPublisher,
    },
}

impl Target<'_> {
    /// One `Publishers` per library relay.
    fn publishers(&self, counter: &Counter, relays: usize) -> Res<Vec<Publishers>> {
        (0..relays)
            .map(|_| {
                let builder = Publishers::builder();
                let builder = match self {
                    // Typed, like most handlers: the entry is decoded first.
                    Self::Noop => builder.publisher::<OrderPlaced, _>(Noop(counter.clone())),
                    // Raw: the payload goes out as stored, as in the raw loop.
                    Self::Amqp { publisher, .. } => {
                        builder.fallback(Counted(publisher.clone(), counter.clone()))
                    }
                    Self::Nats { publisher, .. } => {
                        builder.fallback(Counted(publisher.clone(), counter.clone()))
                    }
                    Self::Kafka { publisher, .. } => {
                        builder.fallback(Counted(publisher.clone(), counter.clone()))
                    }
                };
                lib(builder.build(), "building publishers")
            })
            .collect()
    }

    fn sinks(&self, relays: usize) -> Vec<Sink> {
        (0..relays)
            .map(|_| match self {
                Self::Noop => Sink::Noop,
                Self::Amqp { rabbit, .. } => rabbit.sink(),
                Self::Nats { nats, .. } => nats.sink(),
                Self::Kafka { kafka, .. } => kafka.sink(),
            })
            .collect()
    }

    /// Batches in flight per library relay: pipelined for brokers (the
    /// relay's `in_flight`), one for the no-op publisher (nothing to wait
    /// for).
    fn in_flight(&self) -> usize {
        match self {
            Self::Noop => 1,
            _ => BROKER_IN_FLIGHT,
        }
    }

    /// The labels of the library, the raw loop and the third reference.
    fn labels(&self) -> (&'static str, &'static str, &'static str) {
        match self {
            Target::Noop => (
                "library relay, typed no-op publisher",
                "raw loop (sqlx: claim, DELETE = ANY)",
                "raw one-transaction loop (lock, DELETE, COMMIT)",
            ),
            Target::Amqp { .. } => (
                "library relay + AmqpPublisher, 4 in flight",
                "raw loop (sqlx + lapin, confirms)",
                "RabbitMQ alone: batches of 100, all confirmed",
            ),
            Target::Nats { .. } => (
                "library relay + NatsPublisher, 4 in flight",
                "raw loop (sqlx + async-nats, acks)",
                "NATS alone: batches of 100, all acked",
            ),
            Target::Kafka { .. } => (
                "library relay + KafkaPublisher, 4 in flight",
                "raw loop (sqlx + rdkafka, delivery reports)",
                "Kafka alone: batches of 100, all reported",
            ),
        }
    }

    /// Empties the broker between measurements.
    async fn reset(&self) -> Res<()> {
        match self {
            // A Kafka topic cannot be purged; it grows by `n` per measurement.
            Self::Noop | Self::Kafka { .. } => Ok(()),
            Self::Amqp { rabbit, .. } => rabbit.purge().await,
            Self::Nats { nats, .. } => nats.purge().await,
        }
    }
}

/// One drain figure: `reps` times, in alternating order, refill the table
/// with `n` entries and drain it with the library, then with the raw loop.
async fn figure(
    b: &Bench,
    name: &str,
    what: &str,
    table: &str,
    relays: usize,
    n: usize,
    target: &Target<'_>,
) -> Res<()> {
    let pool: PgPool = b.pool(8).await?;
    let outbox: Outbox<Postgres> = lib(
        Outbox::builder(pool.clone()).table(table).build().await,
        "building the outbox",
    )?;
    let sql = RawSql::new(table);
    let reps = if matches!(target, Target::Noop) {
        b.plan.drain_reps
    } else {
        b.plan.broker_reps
    };
    println!(
        "\n== {name}: {} pending entries drained by {relays} relay{} ({what}); batches of {}, \
         {reps} repetitions each, median",
        count(n),
        if relays == 1 { "" } else { "s" },
        crate::common::BATCH,
    );
    let (library_label, raw_label, third_label) = target.labels();
    let mut library = Throughput::new(library_label);
    let mut raw = Throughput::new(raw_label);
    let mut third = Throughput::new(third_label);
    let mut library_cold = Throughput::new("library, from relay start");
    let mut raw_cold = Throughput::new("raw loop, from loop start");
    let mut startup = [Vec::new(), Vec::new()];
    for rep in 0..reps {
        for mode in order(3, rep) {
            target.reset().await?;
            let counter = Counter::new(n);
            if mode == 2 {
                let timing = match target {
                    Target::Noop => {
                        b.refill(table, n).await?;
                        let sinks = target.sinks(relays);
                        drain_raw(&pool, &sql, Design::OneTransaction, sinks, &counter).await?
                    }
                    _ => ceiling(target, n, &counter).await?,
                };
                third.push(rate(n, timing.steady));
                continue;
            }
            b.refill(table, n).await?;
            let timing = if mode == 0 {
                let relays = target.publishers(&counter, relays)?;
                drain_library(&outbox, relays, target.in_flight(), &counter, n).await?
            } else {
                drain_raw(&pool, &sql, Design::Lease, target.sinks(relays), &counter).await?
            };
            let (steady, cold) = if mode == 0 {
                (&mut library, &mut library_cold)
            } else {
                (&mut raw, &mut raw_cold)
            };
            steady.push(rate(n, timing.steady));
            cold.push(rate(n, timing.total));
            startup[mode].push(ms(timing.startup()));
        }
    }
    library.print();
    raw.print();
    third.print();
    let (min_raw, min_third, third_what) = match target {
        // The one-transaction loop is the ceiling the issue sets: 0.9 of it.
        Target::Noop => (0.80, Some(0.90), "library/one-transaction"),
        // Pipelined batches against today's sequential raw loop; the
        // broker alone is reported, with no target.
        _ => (1.30, None, "library/broker alone"),
    };
    print_ratio(
        name,
        library.median() / raw.median(),
        ">=",
        min_raw,
        "library/raw",
    );
    match min_third {
        Some(min) => print_ratio(
            name,
            library.median() / third.median(),
            ">=",
            min,
            third_what,
        ),
        None => println!(
            "  {name} ratio {third_what} = {:.3}",
            library.median() / third.median()
        ),
    }
    println!(
        "  (events/s from the first publisher call to the last outcome committed: a running relay \
         meeting a backlog. Start-up before the first publisher call, median: library {:.1} ms, \
         raw {:.1} ms; counted from the start instead: library {} events/s, raw {} events/s, \
         library/raw {:.3})",
        median(&startup[0]),
        median(&startup[1]),
        thousands(library_cold.median()),
        thousands(raw_cold.median()),
        library_cold.median() / raw_cold.median(),
    );
    pool.close().await;
    Ok(())
}

/// The broker's own ceiling: `n` events published in batches of
/// [`BATCH`](crate::common::BATCH), each batch's confirms awaited before
/// the next, with no database.
async fn ceiling(target: &Target<'_>, n: usize, counter: &Counter) -> Res<Timing> {
    let mut sink = target.sinks(1).remove(0);
    let rows: Vec<RawRow> = (0..n)
        .map(|seq| {
            let event = OrderPlaced::new(seq as u64);
            RawRow {
                id: i64::try_from(seq).unwrap_or(i64::MAX) + 1,
                event_id: uuid::Uuid::new_v4(),
                name: <OrderPlaced as outbox::Event>::NAME.to_owned(),
                payload: serde_json::to_string(&event).unwrap_or_default(),
                stream_key: None,
                headers: "{}".to_owned(),
                correlation_id: None,
                causation_id: None,
                created_at: chrono::Utc::now(),
                attempts: 0,
            }
        })
        .collect();
    let start = tokio::time::Instant::now();
    for batch in rows.chunks(crate::common::BATCH) {
        counter.begin();
        sink.publish(batch).await?;
        counter.add(batch.len());
    }
    let timing = counter.timing(start, tokio::time::Instant::now());
    counter.check("broker alone")?;
    Ok(timing)
}

pub(crate) async fn drain_noop(b: &Bench, relays: usize) -> Res<()> {
    let name = format!("drain_noop_{relays}");
    let table = b.table(&format!("noop{relays}")).await?;
    figure(
        b,
        &name,
        "publisher that does nothing",
        &table,
        relays,
        b.plan.drain_n,
        &Target::Noop,
    )
    .await
}

pub(crate) async fn drain_amqp(b: &Bench) -> Res<()> {
    let table = b.table("amqp").await?;
    let queue = format!("bench_{}", b.run);
    let rabbit = Rabbit::connect(&b.amqp_url, queue.clone()).await?;
    let result = async {
        let key = queue.clone();
        let publisher = lib(
            AmqpPublisher::builder(b.amqp_url.clone())
                .routing_key(move |_| key.clone())
                .timeout(Duration::from_secs(10))
                .build(),
            "building the AMQP publisher",
        )?;
        publisher
            .connect()
            .await
            .context("the library's AMQP publisher")?;
        let target = Target::Amqp {
            rabbit: &rabbit,
            publisher,
        };
        figure(
            b,
            "drain_amqp",
            "RabbitMQ: durable queue, persistent messages, publisher confirms",
            &table,
            1,
            b.plan.broker_n,
            &target,
        )
        .await
    }
    .await;
    let deleted = rabbit.delete().await;
    result.and(deleted)
}

pub(crate) async fn drain_nats(b: &Bench) -> Res<()> {
    let table = b.table("nats").await?;
    let nats = Nats::connect(&b.nats_url, format!("bench_{}", b.run)).await?;
    let result = async {
        let publisher = lib(
            NatsPublisher::builder(b.nats_url.clone())
                .subject_prefix(nats.prefix.clone())
                .timeout(Duration::from_secs(10))
                .build(),
            "building the NATS publisher",
        )?;
        publisher
            .connect()
            .await
            .context("the library's NATS publisher")?;
        let target = Target::Nats {
            nats: &nats,
            publisher,
        };
        let what = format!(
            "NATS {} JetStream: file storage, every publish ack awaited",
            nats.version
        );
        figure(b, "drain_nats", &what, &table, 1, b.plan.broker_n, &target).await
    }
    .await;
    let deleted = nats.delete().await;
    result.and(deleted)
}

pub(crate) async fn drain_kafka(b: &Bench) -> Res<()> {
    let table = b.table("kafka").await?;
    let kafka = Kafka::connect(&b.kafka_brokers, format!("bench_{}", b.run)).await?;
    let result = async {
        let publisher = lib(
            KafkaPublisher::builder(b.kafka_brokers.clone())
                .topic(kafka.topic.clone())
                .timeout(Duration::from_secs(10))
                .build(),
            "building the Kafka publisher",
        )?;
        publisher
            .connect()
            .await
            .context("the library's Kafka publisher")?;
        let target = Target::Kafka {
            kafka: &kafka,
            publisher,
        };
        let what = format!(
            "Kafka at {}: one topic of {} partitions, idempotent producer, acks=all, every \
             delivery report awaited",
            b.kafka_brokers,
            crate::broker::KAFKA_PARTITIONS
        );
        figure(b, "drain_kafka", &what, &table, 1, b.plan.broker_n, &target).await
    }
    .await;
    let deleted = kafka.delete().await;
    result.and(deleted)
}
