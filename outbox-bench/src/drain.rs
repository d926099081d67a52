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
    Bench, Counted, Counter, Noop, OrderPlaced, RawSql, drain_library, drain_raw, lib, order,
};
use crate::report::{Throughput, print_ratio};
use crate::util::{Context, Res, count, median, ms, rate, thousands};

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
    let (library_label, raw_label) = match target {
        Target::Noop => (
            "library relay, typed no-op publisher",
            "raw loop (sqlx: claim, DELETE = ANY)",
        ),
        Target::Amqp { .. } => (
            "library relay + AmqpPublisher",
            "raw loop (sqlx + lapin, confirms)",
        ),
        Target::Nats { .. } => (
            "library relay + NatsPublisher",
            "raw loop (sqlx + async-nats, acks)",
        ),
        Target::Kafka { .. } => (
            "library relay + KafkaPublisher",
            "raw loop (sqlx + rdkafka, delivery reports)",
        ),
    };
    let mut library = Throughput::new(library_label);
    let mut raw = Throughput::new(raw_label);
    let mut library_cold = Throughput::new("library, from relay start");
    let mut raw_cold = Throughput::new("raw loop, from loop start");
    let mut startup = [Vec::new(), Vec::new()];
    for rep in 0..reps {
        for mode in order(2, rep) {
            b.refill(table, n).await?;
            target.reset().await?;
            let counter = Counter::new(n);
            let timing = if mode == 0 {
                let relays = target.publishers(&counter, relays)?;
                drain_library(&outbox, relays, &counter, n).await?
            } else {
                drain_raw(&pool, &sql, target.sinks(relays), &counter).await?
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
    print_ratio(
        name,
        library.median() / raw.median(),
        ">=",
        0.80,
        "library/raw",
    );
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
