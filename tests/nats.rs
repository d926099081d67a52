//! The NATS JetStream publisher against the local server (`NATS_URL`,
//! default `nats://127.0.0.1:4222`). Each test creates its own uniquely
//! named stream and deletes it at the end. The TLS test starts a second
//! `nats-server` of its own that speaks only TLS (a throwaway CA).

mod broker_support;
mod tls_support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use broker_support::blocked::{assert_blocked_at_no_cost, check_exactly_once, probe, relay_after};
use broker_support::{
    OrderPlaced, Received, check_contents, check_exactly, record, sqlite_outbox, unique,
};
use futures_util::StreamExt;
use outbox::publisher::nats::{
    CORRELATION_ID_HEADER, EVENT_NAME_HEADER, NatsPublisher, STREAM_KEY_HEADER,
};
use outbox::{
    Backoff, Entry, Metadata, PublishResult, Publisher, Publishers, RawPublisher, Recorded, Report,
};
use tls_support::{TestCa, free_port, wait_listening};

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A JetStream context of the test's own, and a fresh stream capturing
/// `<prefix>.>`.
async fn stream(prefix: &str) -> (jetstream::Context, String) {
    let js = context().await;
    let name = create_stream(&js, prefix, stream::Config::default()).await;
    (js, name)
}

/// A JetStream context of the test's own.
async fn context() -> jetstream::Context {
    let client = async_nats::connect(nats_url())
        .await
        .expect("NATS at NATS_URL");
    jetstream::new(client)
}

/// Creates a fresh in-memory stream capturing `<prefix>.>`, with the
/// limits of `config`; returns its name.
async fn create_stream(js: &jetstream::Context, prefix: &str, config: stream::Config) -> String {
    let name = unique("outbox-test").replace('-', "_");
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![format!("{prefix}.>")],
        storage: stream::StorageType::Memory,
        ..config
    })
    .await
    .unwrap();
    name
}

async fn stored(js: &jetstream::Context, name: &str) -> u64 {
    let mut stream = js.get_stream(name).await.unwrap();
    stream.info().await.unwrap().state.messages
}

/// Reads `n` messages from the stream with an ephemeral pull consumer.
async fn consume(js: &jetstream::Context, name: &str, n: usize) -> Vec<Received> {
    let stream = js.get_stream(name).await.unwrap();
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            ..consumer::pull::Config::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut received = Vec::with_capacity(n);
    while received.len() < n {
        let message = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} messages arrived", received.len()))
            .expect("consumer open")
            .unwrap();
        let headers: BTreeMap<String, String> = message
            .headers
            .as_ref()
            .map(|h| {
                h.iter()
                    .map(|(k, v)| (k.to_string(), v[0].as_str().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        received.push(Received {
            event_id: headers["Nats-Msg-Id"].parse().unwrap(),
            name: headers[EVENT_NAME_HEADER].clone(),
            payload: String::from_utf8(message.payload.to_vec()).unwrap(),
            headers,
        });
    }
    received
}

/// 200 events of two types (typed publisher and raw catch-all) over five
/// streams go through the relay loop into JetStream and come back from a
/// consumer unchanged and in stream order (per-stream order on, 4 batches
/// in flight), under the prefixed subjects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_delivers_every_event_to_jetstream() {
    let prefix = unique("outbox-test");
    let (js, name) = stream(&prefix).await;
    let nats = NatsPublisher::builder(nats_url())
        .subject_prefix(format!("{prefix}."))
        .build()
        .unwrap();
    nats.connect().await.unwrap();

    let (outbox, pool) = sqlite_outbox(|b| b.ordered_streams(true)).await;
    let expected = record(&outbox, &pool, 0, 200).await;
    let publishers = Publishers::builder()
        .publisher::<OrderPlaced, _>(nats.clone())
        .fallback(nats)
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(
        outbox
            .relay(publishers)
            .in_flight(4)
            .poll_interval(Duration::from_millis(20))
            .run(async {
                let _ = stopped.await;
            }),
    );
    let received = consume(&js, &name, expected.len()).await;
    stop.send(()).unwrap();
    let report = relay.await.unwrap();

    check_exactly(
        &expected,
        &received,
        STREAM_KEY_HEADER,
        CORRELATION_ID_HEADER,
    );
    assert_eq!(report.published, 200, "{report:?}");
    assert_eq!(
        report.dead + report.retried + report.unavailable,
        0,
        "{report:?}"
    );
    assert_eq!(stored(&js, &name).await, 200);

    // Subjects are prefix + event name.
    let stream = js.get_stream(&name).await.unwrap();
    let first = stream.get_raw_message(1).await.unwrap();
    assert_eq!(
        first.subject.as_str(),
        format!("{prefix}.{}", expected[0].name)
    );

    js.delete_stream(&name).await.unwrap();
}

/// Publishes through `inner`, then "crashes" before the relay records the
/// outcome: every entry stays pending and is published again next run.
struct CrashBeforeCommit(NatsPublisher);

impl Publisher<OrderPlaced> for CrashBeforeCommit {
    async fn publish(&self, event: &Recorded<OrderPlaced>) -> PublishResult {
        Publisher::<OrderPlaced>::publish(&self.0, event).await?;
        Err(outbox::PublishError::unavailable("simulated crash"))
    }

    async fn publish_batch(&self, events: &[Recorded<OrderPlaced>]) -> Vec<PublishResult> {
        let results = Publisher::<OrderPlaced>::publish_batch(&self.0, events).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        Vec::new() // nothing recorded: as if the process died here
    }
}

impl RawPublisher for CrashBeforeCommit {
    async fn publish_raw(&self, entry: &Entry) -> PublishResult {
        self.0.publish_raw(entry).await?;
        Err(outbox::PublishError::unavailable("simulated crash"))
    }

    async fn publish_raw_batch(&self, entries: &[Entry]) -> Vec<PublishResult> {
        let results = self.0.publish_raw_batch(entries).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        Vec::new()
    }
}

/// The same events published twice (a crash between publishing and
/// recording the outcome) are stored once: `Nats-Msg-Id` = event id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_published_twice_is_stored_once() {
    let prefix = unique("outbox-test");
    let (js, name) = stream(&prefix).await;
    let nats = NatsPublisher::builder(nats_url())
        .subject_prefix(format!("{prefix}."))
        .build()
        .unwrap();
    let (outbox, pool) = sqlite_outbox(|b| b).await;
    let expected = record(&outbox, &pool, 0, 40).await;

    // Run 1 publishes everything but records nothing.
    let crashing = Publishers::builder()
        .publisher::<OrderPlaced, _>(CrashBeforeCommit(nats.clone()))
        .fallback(CrashBeforeCommit(nats.clone()))
        .build()
        .unwrap();
    let first = outbox.run(&crashing, 100).await.unwrap();
    assert_eq!(first.unavailable, 40, "{first:?}");
    assert_eq!(first.published, 0, "{first:?}");
    assert_eq!(stored(&js, &name).await, 40);
    assert_eq!(broker_support::pending(&pool).await, 40);

    // Run 2 (the restarted relay) publishes all 40 again; JetStream keeps one of each.
    let publishers = Publishers::builder()
        .publisher::<OrderPlaced, _>(nats.clone())
        .fallback(nats.clone())
        .build()
        .unwrap();
    let mut total = Report::default();
    while broker_support::pending(&pool).await > 0 {
        total += outbox.run(&publishers, 100).await.unwrap();
    }
    assert_eq!(total.published, 40, "{total:?}");
    assert_eq!(stored(&js, &name).await, 40);

    // And calling the publisher directly with entries it already sent.
    let again: Vec<Entry> = {
        let captured = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = captured.clone();
        let (outbox2, pool2) = sqlite_outbox(|b| b).await;
        record(&outbox2, &pool2, 100, 7).await;
        let capture = Publishers::builder()
            .fallback_fn(move |entry: Entry| {
                let sink = sink.clone();
                async move {
                    sink.lock().unwrap().push(entry);
                    Ok(())
                }
            })
            .build()
            .unwrap();
        outbox2.run(&capture, 100).await.unwrap();
        captured.lock().unwrap().clone()
    };
    assert_eq!(again.len(), 7);
    for _ in 0..2 {
        let results = nats.publish_raw_batch(&again).await;
        assert_eq!(results.len(), 7);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    }
    assert_eq!(stored(&js, &name).await, 47);

    let received = consume(&js, &name, 47).await;
    check_exactly(
        &expected,
        &received[..40],
        STREAM_KEY_HEADER,
        CORRELATION_ID_HEADER,
    );
    js.delete_stream(&name).await.unwrap();
}

/// A publisher and its catch-all, both `nats`.
fn both(nats: &NatsPublisher) -> Publishers {
    Publishers::builder()
        .publisher::<OrderPlaced, _>(nats.clone())
        .fallback(nats.clone())
        .max_pause(Duration::from_millis(500))
        .build()
        .unwrap()
}

/// No stream captures the subject (the server answers "no responders"): a
/// setting to fix, not a bad event. No attempt, no dead letter (even with
/// `max_attempts(1)`); the publishers are blocked naming the subject; once
/// the stream exists the relay resumes by itself and every entry is stored
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_without_a_stream_blocks_until_the_stream_exists_then_delivers_everything() {
    let prefix = unique("outbox-nostream");
    let nats = NatsPublisher::builder(nats_url())
        .subject_prefix(format!("{prefix}."))
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let (outbox, pool) = sqlite_outbox(|b| b.max_attempts(1).backoff(Backoff::none())).await;
    let expected = record(&outbox, &pool, 0, 20).await;
    let publishers = both(&nats);

    let total = probe(&outbox, &publishers, Duration::from_millis(1500)).await;
    let missing = format!("no JetStream stream captures subject `{prefix}.shop.");
    assert_blocked_at_no_cost(
        &outbox,
        &pool,
        &publishers,
        &total,
        20,
        &[&missing, "create a stream"],
    )
    .await;

    let js = context().await;
    let mut name = String::new();
    let report = relay_after(&outbox, &pool, publishers, async {
        name = create_stream(&js, &prefix, stream::Config::default()).await;
    })
    .await;
    assert_eq!(report.published, 20, "{report:?}");
    assert_eq!(stored(&js, &name).await, 20);
    let received = consume(&js, &name, 20).await;
    check_exactly_once(
        &expected,
        &received,
        STREAM_KEY_HEADER,
        CORRELATION_ID_HEADER,
    );
    js.delete_stream(&name).await.unwrap();
}

/// A message over the stream's `max_msg_size` is refused by JetStream
/// (code 400, 10054): a rejection of that one entry, which becomes a dead
/// letter after its attempts, while the entries around it in the same
/// batches are stored, each once, and nothing blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_is_rejected_alone_while_the_rest_are_delivered() {
    let prefix = unique("outbox-test");
    let js = context().await;
    let name = create_stream(
        &js,
        &prefix,
        stream::Config {
            max_message_size: 4096,
            ..stream::Config::default()
        },
    )
    .await;
    let nats = NatsPublisher::builder(nats_url())
        .subject_prefix(format!("{prefix}."))
        .build()
        .unwrap();
    let (outbox, pool) = sqlite_outbox(|b| b.max_attempts(2).backoff(Backoff::none())).await;
    let mut expected = record(&outbox, &pool, 0, 10).await;
    let big = OrderPlaced {
        order: 0,
        seq: 1000,
        amount_cents: 1,
        note: "x".repeat(10_000),
    };
    let mut tx = pool.begin().await.unwrap();
    let oversized = outbox
        .record_with(&mut tx, &big, Metadata::new().stream_key("order-0"))
        .await
        .unwrap()
        .event_id()
        .expect("stored");
    tx.commit().await.unwrap();
    expected.extend(record(&outbox, &pool, 10, 10).await);

    let publishers = both(&nats);
    let mut total = Report::default();
    for _ in 0..10 {
        let report = outbox.run(&publishers, 100).await.unwrap();
        total += report;
        if report.claimed == 0 {
            break;
        }
    }
    assert_eq!(total.published, 20, "{total:?}");
    assert_eq!(total.retried, 1, "{total:?}");
    assert_eq!(total.dead, 1, "{total:?}");
    assert_eq!(total.unavailable, 0, "{total:?}");
    assert!(
        publishers.blocked().is_empty(),
        "{:?}",
        publishers.blocked()
    );
    let dead = outbox.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    eprintln!("dead letter reason: {}", dead[0].reason);
    assert_eq!(dead[0].event_id, oversized);
    assert_eq!(dead[0].attempts, 2);
    assert!(
        dead[0]
            .reason
            .contains("message size exceeds maximum allowed"),
        "{}",
        dead[0].reason
    );

    assert_eq!(stored(&js, &name).await, 20);
    let received = consume(&js, &name, 20).await;
    assert_eq!(
        check_contents(
            &expected,
            &received,
            STREAM_KEY_HEADER,
            CORRELATION_ID_HEADER
        ),
        0,
        "duplicates"
    );
    js.delete_stream(&name).await.unwrap();
}

/// No server at the address: unavailable, no attempt counted.
#[tokio::test]
async fn unreachable_server_is_unavailable_and_costs_nothing() {
    let nats = NatsPublisher::builder("nats://user:s3cret@127.0.0.1:1")
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let err = nats.connect().await.unwrap_err();
    eprintln!("connect error: {err}");
    assert!(err.is_unavailable(), "{err}");
    assert!(!err.to_string().contains("s3cret"), "{err}");

    let (outbox, pool) = sqlite_outbox(|b| b.max_attempts(1)).await;
    record(&outbox, &pool, 0, 5).await;
    let report = outbox
        .run(&Publishers::builder().fallback(nats).build().unwrap(), 100)
        .await
        .unwrap();
    assert_eq!(report.unavailable, 5, "{report:?}");
    assert!(outbox.dead_letters(10).await.unwrap().is_empty());
}

/// A second `nats-server` with JetStream that requires TLS (a certificate
/// of `ca` for 127.0.0.1), with its monitoring port; killed and its files
/// removed on drop, also when the test fails.
struct TlsNats {
    port: u16,
    monitor: u16,
    ca_file: PathBuf,
    child: Child,
    dir: PathBuf,
}

impl TlsNats {
    fn start(ca: &TestCa) -> Self {
        let binary =
            std::env::var("NATS_SERVER").unwrap_or_else(|_| "/usr/sbin/nats-server".to_owned());
        let dir = std::env::temp_dir().join(unique("outbox-nats-tls"));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key, ca_file) = (
            dir.join("server.pem"),
            dir.join("server.key"),
            dir.join("ca.pem"),
        );
        std::fs::write(&cert, &ca.cert_pem).unwrap();
        std::fs::write(&key, &ca.key_pem).unwrap();
        std::fs::write(&ca_file, &ca.ca_pem).unwrap();
        // A port taken between `free_port` and the server's bind makes it
        // exit: try a few.
        for _ in 0..5 {
            let (port, monitor) = (free_port(), free_port());
            let mut child = Command::new(&binary)
                .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
                .args(["-m", &monitor.to_string(), "--tls", "--tlscert"])
                .arg(&cert)
                .arg("--tlskey")
                .arg(&key)
                .arg("-sd")
                .arg(dir.join("jetstream"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nats-server at /usr/sbin/nats-server or NATS_SERVER");
            if wait_listening(
                SocketAddr::from(([127, 0, 0, 1], port)),
                Duration::from_secs(10),
            ) {
                return Self {
                    port,
                    monitor,
                    ca_file,
                    child,
                    dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&dir);
        panic!("nats-server did not start listening");
    }

    /// The server's open connections, from its monitoring endpoint.
    fn connections(&self) -> Vec<serde_json::Value> {
        let mut http = TcpStream::connect(("127.0.0.1", self.monitor)).unwrap();
        http.write_all(b"GET /connz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        http.read_to_string(&mut response).unwrap();
        let body = response.split_once("\r\n\r\n").expect("an HTTP response").1;
        let connz: serde_json::Value = serde_json::from_str(body).unwrap();
        connz["connections"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for TlsNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `tls://` with a custom CA: against a server that speaks only TLS the
/// publisher delivers every entry, and the server reports the publisher's
/// connection as TLS. Without the CA (whether the URL says `tls://` or
/// `nats://`) the handshake fails: unavailable, saying why, never plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_custom_ca_delivers_everything_over_tls() {
    let ca = TestCa::new();
    let server = TlsNats::start(&ca);
    let url = format!("tls://127.0.0.1:{}", server.port);
    let prefix = unique("outbox-test-tls");

    for unverified in [url.clone(), format!("nats://127.0.0.1:{}", server.port)] {
        let nats = NatsPublisher::builder(&unverified)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let err = nats.connect().await.unwrap_err();
        eprintln!("without the CA: {err}");
        assert!(err.is_unavailable(), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("UnknownIssuer") && text.contains("the TLS connection to NATS"),
            "{text}"
        );
    }

    let client = async_nats::ConnectOptions::new()
        .add_root_certificates(server.ca_file.clone())
        .require_tls(true)
        .connect(url.as_str())
        .await
        .expect("the test's own client, over TLS");
    let js = jetstream::new(client);
    let name = create_stream(&js, &prefix, stream::Config::default()).await;

    let nats = NatsPublisher::builder(&url)
        .subject_prefix(format!("{prefix}."))
        .tls_ca_pem(ca.ca_pem.clone())
        .build()
        .unwrap();
    let (outbox, pool) = sqlite_outbox(|b| b).await;
    let expected = record(&outbox, &pool, 0, 20).await;
    let publishers = both(&nats);
    let mut total = Report::default();
    for _ in 0..10 {
        let report = outbox.run(&publishers, 100).await.unwrap();
        total += report;
        if report.claimed == 0 {
            break;
        }
    }
    assert_eq!(total.published, 20, "{total:?}");
    assert_eq!(stored(&js, &name).await, 20);
    let received = consume(&js, &name, 20).await;
    check_exactly(
        &expected,
        &received,
        STREAM_KEY_HEADER,
        CORRELATION_ID_HEADER,
    );

    let connections = server.connections();
    let ours: Vec<_> = connections
        .iter()
        .filter(|c| c["name"] == "outbox")
        .collect();
    assert_eq!(ours.len(), 1, "{connections:#?}");
    let version = ours[0]["tls_version"].as_str().unwrap_or_default();
    eprintln!("the publisher's connection: TLS {version}");
    assert!(version.starts_with("1."), "{:#?}", ours[0]);
    drop(server);
}

/// `tls://` (or `require_tls`) to the plaintext local server fails the
/// handshake: the publishers are blocked at no cost with the reason, and
/// the stream receives nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_a_plaintext_server_fails_and_sends_nothing() {
    let prefix = unique("outbox-test-tls");
    let (js, name) = stream(&prefix).await;
    let plain = nats_url();
    let port = plain.rsplit(':').next().unwrap_or("4222");
    let required = NatsPublisher::builder(&plain)
        .require_tls(true)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let err = required.connect().await.unwrap_err();
    eprintln!("require_tls: {err}");
    assert!(
        err.is_unavailable() && err.to_string().contains("TLS"),
        "{err}"
    );

    let nats = NatsPublisher::builder(format!("tls://127.0.0.1:{port}"))
        .subject_prefix(format!("{prefix}."))
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let (outbox, pool) = sqlite_outbox(|b| b.max_attempts(1)).await;
    record(&outbox, &pool, 0, 20).await;
    let publishers = both(&nats);
    let total = probe(&outbox, &publishers, Duration::from_secs(1)).await;
    assert_blocked_at_no_cost(
        &outbox,
        &pool,
        &publishers,
        &total,
        20,
        &["the TLS connection to NATS", "does the server speak TLS"],
    )
    .await;
    assert_eq!(stored(&js, &name).await, 0, "sent in plaintext");
    js.delete_stream(&name).await.unwrap();
}
