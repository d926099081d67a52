//! What the Kafka suites share: the broker address (`KAFKA_BROKERS`,
//! default `127.0.0.1:19092`, a tansu broker that `.ci/run` starts), topics
//! of the test's own made with the admin API, a consumer that reads
//! messages back, and starting a tansu broker of a test's own.

#![allow(dead_code)] // Reason: each test binary uses a different subset of the helpers.
#![allow(unreachable_pub)] // Reason: shared by several test crates through `mod kafka_support`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use uuid::Uuid;

/// How to get a broker when none answers.
const HOW: &str = "start a Kafka-compatible broker first, e.g. tansu (`cargo install tansu@0.6.0 \
     --locked --features dynostore`, then `tansu broker --listener-url tcp://127.0.0.1:19092 \
     --advertised-listener-url tcp://127.0.0.1:19092 --storage-engine memory://tansu/ --silent &`), \
     or set KAFKA_BROKERS; `.ci/run` does this";

/// The brokers the tests use.
pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

fn admin(brokers: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client")
}

/// Fails the test, saying how to start a broker, when none answers at
/// `brokers` within 10 s.
pub fn require_broker(brokers: &str) {
    let admin = admin(brokers);
    if let Err(err) = admin.inner().fetch_metadata(None, Duration::from_secs(10)) {
        panic!("no Kafka broker answers at {brokers} ({err}): {HOW}");
    }
}

/// Creates `name` with `partitions` partitions at `brokers`.
pub async fn create_topic_at(brokers: &str, name: &str, partitions: i32) {
    let admin = admin(brokers);
    let results = admin
        .create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap_or_else(|err| panic!("creating topic {name} at {brokers}: {err}: {HOW}"));
    for result in results {
        result.unwrap_or_else(|(topic, err)| panic!("creating topic {topic}: {err}"));
    }
}

/// A fresh topic of the test's own on the shared broker. Tests leave their
/// topics there (unique names): deleting one while another test's librdkafka
/// clients are alive in the same process crashed it (SIGSEGV in librdkafka's
/// metadata cache, `rd_kafka_metadata_cache_find`, against tansu).
pub async fn topic(partitions: i32) -> String {
    let brokers = brokers();
    require_broker(&brokers);
    let name = format!("outbox-test-{}", Uuid::new_v4().simple());
    create_topic_at(&brokers, &name, partitions).await;
    name
}

/// One message as a consumer saw it.
#[derive(Debug, Clone)]
pub struct Got {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub payload: String,
    pub headers: BTreeMap<String, String>,
}

/// A consumer in a group of its own, reading `topics` from the start.
pub fn consumer(brokers: &str, topics: &[&str]) -> StreamConsumer {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("outbox-test-{}", Uuid::new_v4().simple()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(topics).expect("subscribe");
    consumer
}

/// Reads `n` messages, failing after `patience` without a new one.
pub async fn read(consumer: &StreamConsumer, n: usize, patience: Duration) -> Vec<Got> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let message = tokio::time::timeout(patience, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} messages arrived", got.len()))
            .expect("consume");
        got.push(got_of(&message));
    }
    got
}

/// Reads until nothing new arrives for `quiet`.
pub async fn read_all(consumer: &StreamConsumer, quiet: Duration) -> Vec<Got> {
    let mut got = Vec::new();
    while let Ok(message) = tokio::time::timeout(quiet, consumer.recv()).await {
        got.push(got_of(&message.expect("consume")));
    }
    got
}

pub fn got_of(message: &impl Message) -> Got {
    let text = |bytes: Option<&[u8]>| bytes.map(|b| String::from_utf8(b.to_vec()).unwrap());
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| (h.key.to_owned(), text(h.value).unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    Got {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
        key: text(message.key()),
        payload: text(message.payload()).unwrap_or_default(),
        headers,
    }
}

/// The tansu binary: on PATH, or where `cargo install` puts it.
pub fn tansu_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("tansu"))
            .find(|p| p.is_file())
    });
    on_path
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|home| PathBuf::from(home).join(".cargo/bin/tansu"))
                .filter(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("no `tansu` binary on PATH or in ~/.cargo/bin: {HOW}"))
}

/// A tansu broker of the test's own (in-memory storage), killed on drop.
pub struct Tansu {
    pub port: u16,
    child: Option<Child>,
}

impl Tansu {
    /// Starts a broker on `port` and waits until it answers.
    pub fn start(port: u16) -> Self {
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu_binary())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
                "--silent",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let tansu = Self {
            port,
            child: Some(child),
        };
        require_broker(&tansu.brokers());
        tansu
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILLs the broker and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
