//! The broker between the two services: a durable RabbitMQ queue, or a
//! JetStream stream with the durable consumer service B shares.

use std::process::Command;

use async_nats::jetstream::{self, stream};

use crate::fault_support::{declare_queue, delete_queue};

/// Which broker a scenario runs through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    Amqp,
    Nats,
}

impl Broker {
    pub fn label(self) -> &'static str {
        match self {
            Self::Amqp => "RabbitMQ",
            Self::Nats => "NATS",
        }
    }
}

pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// One scenario's queue, or stream and durable consumer.
pub struct BrokerSetup {
    pub broker: Broker,
    /// The queue, or the stream (also the subjects' prefix).
    pub name: String,
    /// The durable pull consumer service B shares (NATS).
    pub durable: String,
}

impl BrokerSetup {
    pub async fn create(broker: Broker, base: &str) -> Self {
        let setup = Self {
            broker,
            name: base.to_owned(),
            durable: format!("{base}_b"),
        };
        match broker {
            Broker::Amqp => declare_queue(&setup.name).await,
            Broker::Nats => {
                context()
                    .await
                    .create_stream(stream::Config {
                        name: setup.name.clone(),
                        subjects: vec![format!("{}.>", setup.name)],
                        storage: stream::StorageType::File,
                        ..stream::Config::default()
                    })
                    .await
                    .unwrap();
            }
        }
        setup
    }

    /// The relay's arguments after its outbox table.
    pub fn relay_args(&self) -> Vec<String> {
        match self.broker {
            Broker::Amqp => vec![self.name.clone()],
            Broker::Nats => vec!["--nats".into(), format!("{}.", self.name)],
        }
    }

    /// The consumer's arguments after its two tables.
    pub fn consumer_args(&self) -> Vec<String> {
        match self.broker {
            Broker::Amqp => vec!["amqp".into(), self.name.clone()],
            Broker::Nats => vec!["nats".into(), self.name.clone(), self.durable.clone()],
        }
    }

    /// Messages the broker still holds for service B, delivered or not
    /// (RabbitMQ: ready and unacknowledged; NATS: pending and awaiting an
    /// ack); `None` while it cannot be asked.
    pub async fn unsettled(&self) -> Option<u64> {
        match self.broker {
            Broker::Amqp => {
                let queue = self.name.clone();
                tokio::task::spawn_blocking(move || rabbit_messages(&queue))
                    .await
                    .unwrap()
            }
            Broker::Nats => {
                let stream = context().await.get_stream(&self.name).await.ok()?;
                match stream.consumer_info(&self.durable).await {
                    Ok(info) => Some(info.num_pending + u64::try_from(info.num_ack_pending).ok()?),
                    Err(err) => {
                        eprintln!("consumer info of {}: {err}", self.durable);
                        None
                    }
                }
            }
        }
    }

    pub async fn delete(self) {
        match self.broker {
            Broker::Amqp => delete_queue(&self.name).await,
            Broker::Nats => {
                context().await.delete_stream(&self.name).await.unwrap();
            }
        }
    }
}

async fn context() -> jetstream::Context {
    jetstream::new(
        async_nats::connect(nats_url())
            .await
            .expect("NATS at NATS_URL (default nats://127.0.0.1:4222)"),
    )
}

/// `rabbitmqctl list_queues name messages`: ready plus unacknowledged.
fn rabbit_messages(queue: &str) -> Option<u64> {
    let out = Command::new("rabbitmqctl")
        .args([
            "--quiet",
            "list_queues",
            "--no-table-headers",
            "name",
            "messages",
        ])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| {
            let mut cols = line.split_whitespace();
            (cols.next() == Some(queue)).then(|| cols.next()?.parse().ok())?
        })
}
