//! The brokers: the run's durable RabbitMQ queue, file-backed JetStream
//! stream and Kafka topic, and what the raw loop does with a claimed batch (nothing, or
//! publish everything and then await every confirm / ack).

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::common::{OrderPlaced, RawRow};
use crate::util::{Context, Res, bail, redact};

/// The library's NATS publisher sends the event name in this header; the
/// raw loop sends it too (consumers need it).
const EVENT_NAME_HEADER: &str = "outbox-event-name";

/// What the raw loop does with a claimed batch.
pub(crate) enum Sink {
    /// Hands each entry, decoded, to a handler that does nothing (the
    /// library's typed no-op publisher decodes too).
    Noop,
    /// Publishes to the default exchange with the queue as routing key
    /// (persistent, mandatory), then awaits every confirm.
    Amqp {
        channel: Channel,
        queue: ShortString,
    },
    /// Publishes to `<prefix><event name>` with `Nats-Msg-Id`, then awaits
    /// every ack.
    Nats {
        js: jetstream::Context,
        prefix: String,
    },
    /// Produces to the topic (key = stream key or event id, the library's
    /// headers) with the library's producer settings, then awaits every
    /// delivery report.
    Kafka {
        producer: FutureProducer,
        topic: String,
    },
}

impl Sink {
    pub(crate) async fn publish(&mut self, rows: &[RawRow]) -> Res<()> {
        match self {
            Self::Noop => {
                for row in rows {
                    let event: OrderPlaced =
                        serde_json::from_str(&row.payload).context("decoding a payload")?;
                    std::hint::black_box((event, row));
                }
                Ok(())
            }
            Self::Amqp { channel, queue } => amqp_publish(channel, queue, rows).await,
            Self::Nats { js, prefix } => nats_publish(js, prefix, rows).await,
            Self::Kafka { producer, topic } => kafka_publish(producer, topic, rows).await,
        }
    }
}

async fn amqp_publish(channel: &Channel, queue: &ShortString, rows: &[RawRow]) -> Res<()> {
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let mut confirms = Vec::with_capacity(rows.len());
    for row in rows {
        let mut headers = FieldTable::default();
        for (name, value) in metadata(row)? {
            headers.insert(name.into(), AMQPValue::LongString(value.into()));
        }
        let mut properties = BasicProperties::default()
            .with_message_id(row.event_id.to_string().into())
            .with_type(row.name.as_str().into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_timestamp(u64::try_from(row.created_at.timestamp()).unwrap_or(0))
            .with_headers(headers);
        if let Some(id) = row.correlation_id {
            properties = properties.with_correlation_id(id.to_string().into());
        }
        let confirm = channel
            .basic_publish(
                ShortString::default(),
                queue.clone(),
                options,
                row.payload.as_bytes(),
                properties,
            )
            .await
            .context("raw basic.publish")?;
        confirms.push(confirm);
    }
    for confirm in confirms {
        match confirm.await.context("raw publisher confirm")? {
            Confirmation::Ack(None) => {}
            other => bail!("RabbitMQ did not take a raw message: {other:?}"),
        }
    }
    Ok(())
}

/// The entry's headers and metadata as message headers (none in this
/// benchmark, but a real loop has to look).
fn metadata(row: &RawRow) -> Res<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = if row.headers == "{}" {
        Vec::new()
    } else {
        serde_json::from_str::<std::collections::BTreeMap<String, String>>(&row.headers)
            .context("decoding headers")?
            .into_iter()
            .collect()
    };
    if let Some(key) = &row.stream_key {
        out.push(("outbox-stream-key".to_owned(), key.clone()));
    }
    if let Some(id) = row.correlation_id {
        out.push(("outbox-correlation-id".to_owned(), id.to_string()));
    }
    if let Some(id) = row.causation_id {
        out.push(("outbox-causation-id".to_owned(), id.to_string()));
    }
    Ok(out)
}

async fn nats_publish(js: &jetstream::Context, prefix: &str, rows: &[RawRow]) -> Res<()> {
    let mut acks = Vec::with_capacity(rows.len());
    let mut subject = String::new();
    let mut subject_of = "";
    for row in rows {
        if subject.is_empty() || subject_of != row.name {
            subject = format!("{prefix}{}", row.name);
            subject_of = &row.name;
        }
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, row.event_id.to_string());
        headers.insert(EVENT_NAME_HEADER, row.name.as_str());
        for (name, value) in metadata(row)? {
            headers.insert(name, value);
        }
        let ack = js
            .publish_with_headers(
                subject.clone(),
                headers,
                Bytes::copy_from_slice(row.payload.as_bytes()),
            )
            .await
            .context("raw JetStream publish")?;
        acks.push(ack);
    }
    for ack in acks {
        ack.await.context("raw JetStream ack")?;
    }
    Ok(())
}

/// The run's RabbitMQ connection and durable queue.
pub(crate) struct Rabbit {
    pub(crate) connection: Connection,
    /// In confirm mode: the raw loop publishes on it.
    pub(crate) channel: Channel,
    pub(crate) queue: String,
}

impl Rabbit {
    pub(crate) async fn connect(url: &str, queue: String) -> Res<Self> {
        let unreachable = format!("cannot connect to RabbitMQ at {}", redact(url));
        let connection = tokio::time::timeout(
            Duration::from_secs(10),
            Connection::connect(url, ConnectionProperties::default()),
        )
        .await
        .context(&unreachable)?
        .context(&unreachable)?;
        let channel = connection
            .create_channel()
            .await
            .context("opening a RabbitMQ channel")?;
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .context(format!("declaring the durable queue {queue}"))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("confirm.select")?;
        Ok(Self {
            connection,
            channel,
            queue,
        })
    }

    pub(crate) async fn purge(&self) -> Res<()> {
        self.channel
            .queue_purge(self.queue.as_str().into(), QueuePurgeOptions::default())
            .await
            .context("purging the queue")?;
        Ok(())
    }

    pub(crate) fn sink(&self) -> Sink {
        Sink::Amqp {
            channel: self.channel.clone(),
            queue: self.queue.as_str().into(),
        }
    }

    pub(crate) async fn delete(self) -> Res<()> {
        self.channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .context(format!("deleting the queue {}", self.queue))?;
        let _ = self.connection.close(200, "bye".into()).await;
        Ok(())
    }
}

/// The run's NATS connection and file-backed JetStream stream.
pub(crate) struct Nats {
    pub(crate) js: jetstream::Context,
    pub(crate) stream: String,
    /// Subjects of the stream: `<prefix><event name>`.
    pub(crate) prefix: String,
    pub(crate) version: String,
}

impl Nats {
    pub(crate) async fn connect(url: &str, name: String) -> Res<Self> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .context(format!("cannot connect to NATS at {}", redact(url)))?;
        let version = client.server_info().version;
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(10))
            .build(client);
        let prefix = format!("{name}.");
        js.create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{prefix}>")],
            storage: stream::StorageType::File,
            ..stream::Config::default()
        })
        .await
        .context(format!("creating the JetStream stream {name}"))?;
        Ok(Self {
            js,
            stream: name,
            prefix,
            version,
        })
    }

    pub(crate) async fn purge(&self) -> Res<()> {
        let stream = self
            .js
            .get_stream(&self.stream)
            .await
            .context("looking up the stream")?;
        stream.purge().await.context("purging the stream")?;
        Ok(())
    }

    pub(crate) fn sink(&self) -> Sink {
        Sink::Nats {
            js: self.js.clone(),
            prefix: self.prefix.clone(),
        }
    }

    pub(crate) async fn delete(self) -> Res<()> {
        self.js
            .delete_stream(&self.stream)
            .await
            .context(format!("deleting the stream {}", self.stream))?;
        Ok(())
    }
}

/// Partitions of the run's Kafka topic.
pub(crate) const KAFKA_PARTITIONS: i32 = 3;

async fn kafka_publish(producer: &FutureProducer, topic: &str, rows: &[RawRow]) -> Res<()> {
    let mut reports = Vec::with_capacity(rows.len());
    for row in rows {
        let event_id = row.event_id.to_string();
        let mut headers = OwnedHeaders::new();
        for (name, value) in metadata(row)? {
            headers = headers.insert(Header {
                key: &name,
                value: Some(value.as_bytes()),
            });
        }
        headers = headers
            .insert(Header {
                key: "outbox-event-id",
                value: Some(event_id.as_bytes()),
            })
            .insert(Header {
                key: EVENT_NAME_HEADER,
                value: Some(row.name.as_bytes()),
            });
        let key = row.stream_key.as_deref().unwrap_or(&event_id);
        let record = FutureRecord::to(topic)
            .key(key)
            .payload(row.payload.as_str())
            .timestamp(row.created_at.timestamp_millis())
            .headers(headers);
        match producer.send_result(record) {
            Ok(report) => reports.push(report),
            Err((err, _)) => bail!("raw Kafka produce: {err}"),
        }
    }
    for report in reports {
        match report.await {
            Ok(Ok(_)) => {}
            Ok(Err((err, _))) => bail!("raw Kafka delivery: {err}"),
            Err(_) => bail!("raw Kafka producer closed"),
        }
    }
    Ok(())
}

/// Fails in one line when no Kafka broker answers at `brokers`.
pub(crate) fn preflight_kafka(brokers: &str) -> Res<()> {
    let admin = kafka_admin(brokers)?;
    admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))
        .context(format!(
            "no Kafka broker answers at {brokers} (start tansu: see README, Kafka)"
        ))?;
    Ok(())
}

fn kafka_admin(brokers: &str) -> Res<AdminClient<DefaultClientContext>> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("creating a Kafka admin client")
}

/// The run's Kafka topic.
pub(crate) struct Kafka {
    brokers: String,
    pub(crate) topic: String,
    producer: FutureProducer,
}

impl Kafka {
    pub(crate) async fn connect(brokers: &str, topic: String) -> Res<Self> {
        let admin = kafka_admin(brokers)?;
        for result in admin
            .create_topics(
                &[NewTopic::new(
                    &topic,
                    KAFKA_PARTITIONS,
                    TopicReplication::Fixed(1),
                )],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .context(format!("creating the Kafka topic {topic}"))?
        {
            result
                .map_err(|(_, code)| code)
                .context(format!("creating the Kafka topic {topic}"))?;
        }
        // The library's producer settings.
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "10000")
            .create()
            .context("creating the raw Kafka producer")?;
        // Connected before the first measurement, as the library's publisher.
        let warm = producer.clone();
        tokio::task::spawn_blocking(move || {
            warm.client()
                .fetch_metadata(None, Duration::from_secs(10))
                .map(drop)
        })
        .await
        .context("connecting the raw Kafka producer")?
        .context("connecting the raw Kafka producer")?;
        Ok(Self {
            brokers: brokers.to_owned(),
            topic,
            producer,
        })
    }

    pub(crate) fn sink(&self) -> Sink {
        Sink::Kafka {
            producer: self.producer.clone(),
            topic: self.topic.clone(),
        }
    }

    pub(crate) async fn delete(self) -> Res<()> {
        // No client of the topic may be alive while it is deleted (librdkafka
        // crashed in its metadata cache when one was, against tansu).
        let Self {
            brokers,
            topic,
            producer,
        } = self;
        drop(producer);
        kafka_admin(&brokers)?
            .delete_topics(&[&topic], &AdminOptions::new())
            .await
            .context(format!("deleting the Kafka topic {topic}"))?;
        Ok(())
    }
}
