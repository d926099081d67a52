//! The HTTP inbox endpoint end to end: a PostgreSQL outbox (service A), the
//! real relay with `publisher::http` (signed, timestamped), a hyper server
//! on 127.0.0.1 whose handler is `WebhookReceiver::receive`, and service B's
//! PostgreSQL inbox feeding a business table. Every test makes its own
//! tables (a uuid suffix). Requests the publisher could not send (replays,
//! forgeries, poison) are written by hand over TCP and signed here with the
//! `hmac` crate.

mod relay_support;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Request};
use hyper_util::rt::TokioIo;
use outbox::inbox::http::WebhookReceiver;
use outbox::inbox::{ConsumeError, Consumers, Inbox, InboxStats, Tx};
use outbox::publisher::http::WebhookPublisher;
use outbox::{Backoff, Metadata, Outbox, Publishers, Recorded, Report};
use relay_support::{Running, until};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool, Postgres, Row};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

/// Version 2 on both sides: the version travels as `X-Outbox-Event-Version`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: i64,
    cents: i64,
}

impl outbox::Event for OrderPlaced {
    const NAME: &'static str = NAME;
    const VERSION: u32 = 2;
}

const SECRET: &str = "inbox-http-secret";
const NAME: &str = "inbox_http.order_placed";

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_owned())
}

async fn connect(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .expect("PostgreSQL must be reachable at DATABASE_URL (default postgres://root@127.0.0.1:5432/test)")
}

/// One test's tables: A's outbox, B's inbox and B's business table.
struct Names {
    outbox: String,
    inbox: String,
    orders: String,
}

impl Names {
    fn new() -> Self {
        let suffix = &Uuid::new_v4().simple().to_string()[..12];
        Self {
            outbox: format!("outbox_ih_{suffix}"),
            inbox: format!("inbox_ih_{suffix}"),
            orders: format!("orders_ih_{suffix}"),
        }
    }
}

async fn execute(pool: &PgPool, sql: String) {
    sqlx::query(AssertSqlSafe(sql)).execute(pool).await.unwrap();
}

/// One business row: what one consumer run wrote.
#[derive(Debug, Clone, PartialEq)]
struct Effect {
    event_id: Uuid,
    order_id: i64,
    cents: i64,
    stream_key: Option<String>,
    headers: BTreeMap<String, String>,
    correlation_id: Option<Uuid>,
    causation_id: Option<Uuid>,
    attempt: i32,
    /// The event version the consumer received.
    version: i64,
}

/// Failures still to come, by order id: the consumer returns a retryable
/// error while its count is above zero.
type Flaky = Arc<Mutex<HashMap<i64, u32>>>;

/// Service B: an inbox, its consumers, and the business table they write.
struct ServiceB {
    pool: PgPool,
    orders: String,
    inbox: Inbox<Postgres>,
    consumers: Consumers<Postgres>,
    flaky: Flaky,
}

impl ServiceB {
    /// The inbox on `inbox_pool` (which may run through a [`Proxy`]); the
    /// test reads the tables through `pool`.
    async fn start(pool: &PgPool, inbox_pool: PgPool, names: &Names) -> Self {
        execute(
            pool,
            format!(
                "CREATE TABLE {} (id BIGSERIAL PRIMARY KEY, event_id UUID NOT NULL, order_id BIGINT NOT NULL,
                 cents BIGINT NOT NULL, stream_key TEXT, headers TEXT NOT NULL, correlation_id UUID,
                 causation_id UUID, attempt INT NOT NULL, version BIGINT NOT NULL)",
                names.orders
            ),
        )
        .await;
        let inbox = Inbox::builder(inbox_pool)
            .table(&names.inbox)
            .backoff(Backoff::fixed(Duration::from_millis(200)))
            .build()
            .await
            .unwrap();
        let flaky = Flaky::default();
        let (sql, fails) = (
            format!(
                "INSERT INTO {} (event_id, order_id, cents, stream_key, headers, correlation_id, causation_id, attempt, version)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                names.orders
            ),
            flaky.clone(),
        );
        let consumers = Consumers::builder()
            .on(move |tx: &mut Tx<Postgres>, order: Recorded<OrderPlaced>| {
                let (sql, fails) = (sql.clone(), fails.clone());
                Box::pin(async move {
                    let entry = order.entry();
                    sqlx::query(AssertSqlSafe(sql))
                        .bind(entry.event_id())
                        .bind(order.event().order_id)
                        .bind(order.event().cents)
                        .bind(entry.stream_key())
                        .bind(serde_json::to_string(entry.headers()).unwrap())
                        .bind(entry.correlation_id())
                        .bind(entry.causation_id())
                        .bind(i32::try_from(entry.attempt()).unwrap())
                        .bind(i64::from(entry.version()))
                        .execute(&mut **tx)
                        .await?;
                    // After the write: a failure must roll it back.
                    let mut fails = fails.lock().unwrap();
                    if let Some(left) = fails.get_mut(&order.event().order_id)
                        && *left > 0
                    {
                        *left -= 1;
                        return Err(ConsumeError::retry("the warehouse said no (on purpose)"));
                    }
                    Ok(())
                })
            })
            .build()
            .unwrap();
        Self {
            pool: pool.clone(),
            orders: names.orders.clone(),
            inbox,
            consumers,
            flaky,
        }
    }

    fn receiver(&self) -> WebhookReceiver<Postgres> {
        WebhookReceiver::new(self.inbox.clone(), self.consumers.clone())
            .signing_secret(SECRET)
            .require_timestamp(true)
    }

    async fn orders(&self) -> Vec<Effect> {
        let sql = format!(
            "SELECT event_id, order_id, cents, stream_key, headers, correlation_id, causation_id, attempt, version
             FROM {} ORDER BY id",
            self.orders
        );
        sqlx::query(AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await
            .unwrap()
            .iter()
            .map(|row| Effect {
                event_id: row.get(0),
                order_id: row.get(1),
                cents: row.get(2),
                stream_key: row.get(3),
                headers: serde_json::from_str(row.get::<&str, _>(4)).unwrap(),
                correlation_id: row.get(5),
                causation_id: row.get(6),
                attempt: row.get(7),
                version: row.get(8),
            })
            .collect()
    }

    async fn stats(&self) -> InboxStats {
        // Through the test's own pool: the inbox's may be cut off.
        Inbox::builder(self.pool.clone())
            .table(self.inbox.table().to_string())
            .migrate(false)
            .build()
            .await
            .unwrap()
            .stats()
            .await
            .unwrap()
    }
}

async fn outbox(pool: &PgPool, names: &Names) -> Outbox<Postgres> {
    Outbox::builder(pool.clone())
        .table(&names.outbox)
        .max_attempts(3)
        .backoff(Backoff::fixed(Duration::from_millis(100)))
        .build()
        .await
        .unwrap()
}

fn publishers(url: &str, secret: &str) -> Publishers {
    let webhook = WebhookPublisher::builder()
        .url(url)
        .signing_secret(secret)
        .signature_timestamp(true)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    Publishers::builder()
        .publisher::<OrderPlaced, _>(webhook)
        .max_pause(Duration::from_millis(300))
        .build()
        .unwrap()
}

/// Runs `outbox.run` until nothing is claimed; the summed report.
async fn drain(outbox: &Outbox<Postgres>, publishers: &Publishers) -> Report {
    let mut total = Report::default();
    loop {
        let report = outbox.run(publishers, 50).await.unwrap();
        if report.claimed == 0 {
            return total;
        }
        total += report;
    }
}

async fn drop_tables(pool: &PgPool, names: &Names) {
    for table in [
        names.outbox.clone(),
        format!("{}_schema", names.outbox),
        format!("{}_blocked", names.outbox),
        names.inbox.clone(),
        format!("{}_schema", names.inbox),
        names.orders.clone(),
    ] {
        execute(pool, format!("DROP TABLE IF EXISTS \"{table}\"")).await;
    }
}

// --- the endpoint -----------------------------------------------------------

/// One request the endpoint received and what it answered.
#[derive(Debug, Clone)]
struct Exchange {
    headers: HeaderMap,
    body: Bytes,
    status: u16,
    outcome: String,
    retry_after: Option<String>,
}

impl Exchange {
    fn event_id(&self) -> &str {
        self.headers["x-event-id"].to_str().unwrap()
    }
}

/// A hyper server on 127.0.0.1:0 whose only handler is `receiver.receive`.
struct Endpoint {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Exchange>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Endpoint {
    async fn start(receiver: WebhookReceiver<Postgres>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let shared = log.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (receiver, log) = (receiver.clone(), shared.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (receiver, log) = (receiver.clone(), log.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await?.to_bytes();
                            let answer = receiver.receive(&parts.headers, &body).await;
                            let text = |name: &str| {
                                let value = answer.headers().get(name)?;
                                Some(value.to_str().unwrap().to_owned())
                            };
                            log.lock().unwrap().push(Exchange {
                                headers: parts.headers,
                                body,
                                status: answer.status().as_u16(),
                                outcome: text("x-outbox-outcome").unwrap_or_default(),
                                retry_after: text("retry-after"),
                            });
                            Ok::<_, hyper::Error>(answer.map(|b| Full::new(Bytes::from(b))))
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, log, task }
    }

    fn url(&self) -> String {
        format!("http://{}/hooks/orders", self.addr)
    }

    fn log(&self) -> Vec<Exchange> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a hand-written request got back.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

impl Answer {
    fn outcome(&self) -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(&self.body).unwrap()["outcome"].clone()
    }
}

/// POSTs `body` with `headers` over a fresh connection, by hand (HTTP/1.1,
/// `Connection: close`).
async fn post(addr: SocketAddr, headers: &[(String, String)], body: &[u8]) -> Answer {
    let mut request = format!(
        "POST /hooks/orders HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        let _ = write!(request, "{name}: {value}\r\n");
    }
    request.push_str("\r\n");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Answer {
        status: status.parse().unwrap(),
        headers,
        body: body.to_owned(),
    }
}

/// The headers of a logged request, to send them again.
fn replay_headers(exchange: &Exchange) -> Vec<(String, String)> {
    exchange
        .headers
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "host" | "content-length" | "connection"))
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
        .collect()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `sha256=<hex>` of `<timestamp>.<body>` (computed here, independently).
fn sign(secret: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    let mut signature = "sha256=".to_owned();
    for byte in mac.finalize().into_bytes() {
        let _ = write!(signature, "{byte:02x}");
    }
    signature
}

/// A request as the publisher writes one, signed with `secret` at `timestamp`.
fn signed(event_id: Uuid, body: &[u8], secret: &str, timestamp: u64) -> Vec<(String, String)> {
    vec![
        ("content-type".into(), "application/json".into()),
        ("x-event-id".into(), event_id.to_string()),
        ("x-event-name".into(), NAME.into()),
        ("x-outbox-timestamp".into(), timestamp.to_string()),
        ("x-outbox-signature".into(), sign(secret, timestamp, body)),
    ]
}

// --- tests ------------------------------------------------------------------

/// 12 events, half with every kind of metadata (a stream key and headers
/// HTTP headers cannot carry as they are, correlation and causation ids):
/// each takes effect exactly once, with the metadata it was recorded with,
/// and every request is answered 200 `processed`. Then one request is sent
/// again twice at once and once more: 200 `duplicate` each time, still one
/// row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_take_effect_exactly_once_with_their_metadata_and_a_duplicate_is_200() {
    let names = Names::new();
    let pool = connect(&database_url()).await;
    let b = ServiceB::start(&pool, pool.clone(), &names).await;
    let endpoint = Endpoint::start(b.receiver()).await;
    let a = outbox(&pool, &names).await;

    let mut expected = Vec::new();
    let mut tx = pool.begin().await.unwrap();
    for n in 0..12_i64 {
        let event = OrderPlaced {
            order_id: n,
            cents: 100 * n,
        };
        let (correlation, causation) = (Uuid::now_v7(), Uuid::now_v7());
        let meta = if n % 2 == 0 {
            Metadata::new()
                .stream_key(format!("order {n}/ä%"))
                .header("Tenant", "äcme 😀")
                .header("x\"quote", "line\nbreak")
                .correlation_id(correlation)
                .causation_id(causation)
        } else {
            Metadata::new()
        };
        let recording = a.record_with(&mut *tx, &event, meta).await.unwrap();
        let outbox::Recording::Stored { event_id } = recording else {
            panic!("{recording:?}");
        };
        let full = n % 2 == 0;
        expected.push(Effect {
            event_id,
            order_id: n,
            cents: 100 * n,
            stream_key: full.then(|| format!("order {n}/ä%")),
            headers: if full {
                BTreeMap::from([
                    ("Tenant".to_owned(), "äcme 😀".to_owned()),
                    ("x\"quote".to_owned(), "line\nbreak".to_owned()),
                ])
            } else {
                BTreeMap::new()
            },
            correlation_id: full.then_some(correlation),
            causation_id: full.then_some(causation),
            attempt: 1,
            version: 2,
        });
    }
    tx.commit().await.unwrap();

    let report = drain(&a, &publishers(&endpoint.url(), SECRET)).await;
    assert_eq!(
        (
            report.published,
            report.retried,
            report.dead,
            report.unavailable
        ),
        (12, 0, 0, 0),
        "{report:?}"
    );
    assert_eq!(b.orders().await, expected);
    let log = endpoint.log();
    assert_eq!(log.len(), 12);
    for exchange in &log {
        assert_eq!(
            (exchange.status, exchange.outcome.as_str()),
            (200, "processed")
        );
        assert!(exchange.headers.contains_key("x-outbox-timestamp"));
    }
    let stats = b.stats().await;
    assert_eq!((stats.processed, stats.retrying, stats.dead), (12, 0, 0));

    // The same signed request again: twice at once, then once more.
    let first = &log[0];
    let headers = replay_headers(first);
    let (one, two) = tokio::join!(
        post(endpoint.addr, &headers, &first.body),
        post(endpoint.addr, &headers, &first.body)
    );
    let three = post(endpoint.addr, &headers, &first.body).await;
    for answer in [&one, &two, &three] {
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.outcome(), "duplicate", "{answer:?}");
        assert_eq!(answer.headers["x-outbox-outcome"], "duplicate");
    }
    let orders = b.orders().await;
    assert_eq!(orders.len(), 12);
    let id = Uuid::parse_str(first.event_id()).unwrap();
    assert_eq!(orders.iter().filter(|o| o.event_id == id).count(), 1);
    assert_eq!(b.stats().await.processed, 12);

    drop_tables(&pool, &names).await;
}

/// Forged, tampered, stale and unsigned requests are answered 401 and write
/// nothing; the same request signed correctly is then processed. Through
/// the relay, a publisher with the wrong secret gets 401 too: its publisher
/// pauses with no attempt counted, and the event waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signatures_and_stale_timestamps_are_401_and_write_nothing() {
    let names = Names::new();
    let pool = connect(&database_url()).await;
    let b = ServiceB::start(&pool, pool.clone(), &names).await;
    let endpoint = Endpoint::start(b.receiver()).await;

    let id = Uuid::now_v7();
    let body = br#"{"order_id":7,"cents":700}"#;
    let good = signed(id, body, SECRET, now());
    let without = |name: &str| -> Vec<(String, String)> {
        good.iter().filter(|(n, _)| n != name).cloned().collect()
    };
    let with = |name: &str, value: String| -> Vec<(String, String)> {
        let mut headers = without(name);
        headers.push((name.to_owned(), value));
        headers
    };
    let stale = now() - 3600;
    let cases: Vec<(&str, Vec<(String, String)>, &[u8])> = vec![
        ("no signature", without("x-outbox-signature"), body),
        (
            "the wrong secret",
            with("x-outbox-signature", sign("not-the-secret", now(), body)),
            body,
        ),
        (
            "a tampered body",
            good.clone(),
            br#"{"order_id":7,"cents":1}"#,
        ),
        (
            "a signature of another timestamp",
            with("x-outbox-timestamp", (now() - 1).to_string()),
            body,
        ),
        (
            "a stale timestamp",
            with("x-outbox-signature", sign(SECRET, stale, body))
                .into_iter()
                .filter(|(n, _)| n != "x-outbox-timestamp")
                .chain([("x-outbox-timestamp".to_owned(), stale.to_string())])
                .collect(),
            body,
        ),
        (
            "no timestamp (required)",
            without("x-outbox-timestamp"),
            body,
        ),
        (
            "garbage",
            with("x-outbox-signature", "sha256=zz".into()),
            body,
        ),
    ];
    for (what, headers, body) in &cases {
        let answer = post(endpoint.addr, headers, body).await;
        assert_eq!(answer.status, 401, "{what}: {answer:?}");
        assert_eq!(answer.outcome(), "unauthorized", "{what}: {answer:?}");
    }
    let stale_answer = post(endpoint.addr, &cases[4].1, body).await;
    assert!(stale_answer.body.contains("timestamp"), "{stale_answer:?}");

    // A receiver with no secret (and no `allow_unsigned`) takes nothing.
    let open = WebhookReceiver::new(b.inbox.clone(), b.consumers.clone());
    let mut map = HeaderMap::new();
    for (name, value) in &good {
        map.insert(
            hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    assert_eq!(open.receive(&map, body).await.status(), 401);

    assert!(b.orders().await.is_empty());
    assert_eq!(b.stats().await, InboxStats::default());

    // Through the relay, with the wrong secret.
    let a = outbox(&pool, &names).await;
    let mut tx = pool.begin().await.unwrap();
    a.record(
        &mut *tx,
        &OrderPlaced {
            order_id: 8,
            cents: 800,
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let wrong = publishers(&endpoint.url(), "not-the-secret");
    let report = a.run(&wrong, 10).await.unwrap();
    assert_eq!((report.published, report.unavailable), (0, 1), "{report:?}");
    let stats = a.stats().await.unwrap();
    assert_eq!((stats.pending, stats.retrying, stats.dead), (1, 0, 0));
    assert_eq!(wrong.blocked().len(), 1);
    assert!(b.orders().await.is_empty());
    assert_eq!(b.stats().await, InboxStats::default());

    // The first request, signed correctly: processed.
    let answer = post(endpoint.addr, &signed(id, body, SECRET, now()), body).await;
    assert_eq!((answer.status, answer.outcome()), (200, "processed".into()));
    let orders = b.orders().await;
    assert_eq!(orders.len(), 1);
    assert_eq!((orders[0].event_id, orders[0].order_id), (id, 7));

    drop_tables(&pool, &names).await;
}

/// One event's consumer fails twice, then succeeds: the receiver answers
/// 503 `retry` (with `Retry-After`) twice and 200 the third time; the
/// publisher retries it on its own backoff while the events around it flow
/// and never blocks; every event takes effect exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_failing_twice_is_retried_by_the_publisher_and_takes_effect_once() {
    let names = Names::new();
    let pool = connect(&database_url()).await;
    let b = ServiceB::start(&pool, pool.clone(), &names).await;
    b.flaky.lock().unwrap().insert(3, 2);
    let endpoint = Endpoint::start(b.receiver()).await;
    let a = outbox(&pool, &names).await;
    let mut tx = pool.begin().await.unwrap();
    let events: Vec<_> = (0..6)
        .map(|n| OrderPlaced {
            order_id: n,
            cents: n,
        })
        .collect();
    a.record_all(&mut *tx, &events).await.unwrap();
    tx.commit().await.unwrap();

    let running = Running::start(&a, publishers(&endpoint.url(), SECRET));
    until(
        "6 orders and nothing pending",
        Duration::from_secs(30),
        || async { b.orders().await.len() == 6 && a.stats().await.unwrap().pending == 0 },
    )
    .await;
    let report = running.stop().await;
    assert_eq!(
        (
            report.published,
            report.retried,
            report.dead,
            report.unavailable
        ),
        (6, 2, 0, 0),
        "{report:?}"
    );

    let orders = b.orders().await;
    let mut ids: Vec<_> = orders.iter().map(|o| o.order_id).collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..6).collect::<Vec<_>>(), "each order exactly once");
    let flaky = orders.iter().find(|o| o.order_id == 3).unwrap();
    assert_eq!(
        flaky.attempt, 3,
        "the inbox counted the two failed attempts"
    );

    let log = endpoint.log();
    let flaky_id = flaky.event_id.to_string();
    let tries: Vec<_> = log
        .iter()
        .filter(|e| e.event_id() == flaky_id)
        .map(|e| (e.status, e.outcome.as_str(), e.retry_after.as_deref()))
        .collect();
    assert_eq!(
        tries,
        [
            (503, "retry", Some("1")),
            (503, "retry", Some("1")),
            (200, "processed", None)
        ]
    );
    assert_eq!(log.len(), 8, "5 events once, one three times");
    let stats = a.stats().await.unwrap();
    assert_eq!((stats.pending, stats.dead), (0, 0));
    assert!(stats.blocked.is_empty(), "{:?}", stats.blocked);
    let inbox = b.stats().await;
    assert_eq!((inbox.processed, inbox.retrying, inbox.dead), (6, 0, 0));

    drop_tables(&pool, &names).await;
}

/// A payload that does not decode as the named event is a dead letter in
/// the inbox at once, answered 200 `dead`; a redelivery is 200 `duplicate`;
/// the business table never sees it. So is a message of a version newer
/// than the consumer knows, while one without a version header reaches it
/// as version 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_payload_is_a_dead_letter_in_the_inbox_and_200() {
    let names = Names::new();
    let pool = connect(&database_url()).await;
    let b = ServiceB::start(&pool, pool.clone(), &names).await;
    let endpoint = Endpoint::start(b.receiver()).await;

    let id = Uuid::now_v7();
    let body = br#"{"order_id":"seven","cents":700}"#;
    let answer = post(endpoint.addr, &signed(id, body, SECRET, now()), body).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.outcome(), "dead");
    let again = post(endpoint.addr, &signed(id, body, SECRET, now()), body).await;
    assert_eq!((again.status, again.outcome()), (200, "duplicate".into()));

    let dead = b.inbox.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].event_id, id);
    assert_eq!(dead[0].name, NAME);
    assert_eq!(dead[0].payload.as_bytes(), body);
    assert!(
        dead[0].reason.contains("does not decode"),
        "{}",
        dead[0].reason
    );
    assert!(b.orders().await.is_empty());
    let stats = b.stats().await;
    assert_eq!((stats.processed, stats.retrying, stats.dead), (0, 0, 1));

    // No version header (a sender from before versions) is version 1, 2 is
    // the consumer's, 3 is newer than it knows: a dead letter.
    let body = br#"{"order_id":8,"cents":800}"#;
    let mut sent = Vec::new();
    for version in [None, Some("2"), Some("3")] {
        let id = Uuid::now_v7();
        let mut headers = signed(id, body, SECRET, now());
        if let Some(version) = version {
            headers.push(("x-outbox-event-version".into(), version.into()));
        }
        let answer = post(endpoint.addr, &headers, body).await;
        sent.push((id, answer.outcome().as_str().unwrap().to_owned()));
    }
    let outcomes: Vec<&str> = sent.iter().map(|(_, outcome)| outcome.as_str()).collect();
    assert_eq!(outcomes, ["processed", "processed", "dead"]);
    let seen: Vec<(Uuid, i64)> = b
        .orders()
        .await
        .iter()
        .map(|o| (o.event_id, o.version))
        .collect();
    assert_eq!(seen, [(sent[0].0, 1), (sent[1].0, 2)]);
    let newer = b.inbox.dead_letter(sent[2].0).await.unwrap().unwrap();
    assert!(newer.reason.contains("newer"), "{}", newer.reason);
    assert_eq!(newer.version, 3, "{newer:?}");

    drop_tables(&pool, &names).await;
}

/// A TCP proxy in front of PostgreSQL that the test can cut (every
/// connection dropped, new ones closed at once) and restore.
struct Proxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let links = Arc::new(Mutex::new(Vec::new()));
        let (is_cut, all) = (cut.clone(), links.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if is_cut.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                all.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                }));
            }
        });
        Self {
            addr,
            cut,
            links,
            task,
        }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

/// B's database goes away: the receiver answers 503 `unavailable` and
/// writes nothing; the publisher takes it as an outage of the endpoint (no
/// attempt counted, however many tries, and no dead letter on either
/// side) and pauses; once the database is back the event takes effect
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_unavailable_is_503_and_costs_no_attempt() {
    let names = Names::new();
    let pool = connect(&database_url()).await;
    let (upstream, _) = via(&database_url(), "127.0.0.1:0".parse().unwrap());
    let upstream = tokio::net::lookup_host(upstream)
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = Proxy::start(upstream).await;
    let (_, mut url) = via(&database_url(), proxy.addr);
    url.push_str(if url.contains('?') { "&" } else { "?" });
    url.push_str("sslmode=disable");
    let b = ServiceB::start(&pool, connect(&url).await, &names).await;
    let endpoint = Endpoint::start(b.receiver()).await;
    let a = outbox(&pool, &names).await;

    proxy.cut();
    let id = Uuid::now_v7();
    let body = br#"{"order_id":1,"cents":100}"#;
    let answer = post(endpoint.addr, &signed(id, body, SECRET, now()), body).await;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(answer.outcome(), "unavailable");
    assert!(!answer.headers.contains_key("retry-after"));

    let mut tx = pool.begin().await.unwrap();
    a.record(
        &mut *tx,
        &OrderPlaced {
            order_id: 2,
            cents: 200,
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let running = Running::start(&a, publishers(&endpoint.url(), SECRET));
    // More tries than the outbox's 3 attempts: none of them is counted.
    until(
        "5 answers while the database is down",
        Duration::from_secs(30),
        || async { endpoint.log().len() >= 6 },
    )
    .await;
    let stats = a.stats().await.unwrap();
    assert_eq!(
        (stats.pending, stats.retrying, stats.dead),
        (1, 0, 0),
        "{stats:?}"
    );
    assert_eq!(stats.blocked.len(), 1, "{stats:?}");
    assert!(
        stats.blocked[0].reason.contains("503"),
        "{:?}",
        stats.blocked
    );
    assert!(
        endpoint
            .log()
            .iter()
            .all(|e| (e.status, e.outcome.as_str()) == (503, "unavailable"))
    );
    assert!(b.orders().await.is_empty());
    assert_eq!(b.stats().await, InboxStats::default());

    proxy.restore();
    until(
        "the order once the database is back",
        Duration::from_secs(30),
        || async { a.stats().await.unwrap().pending == 0 },
    )
    .await;
    let report = running.stop().await;
    assert_eq!(
        (report.published, report.retried, report.dead),
        (1, 0, 0),
        "{report:?}"
    );
    let orders = b.orders().await;
    assert_eq!(orders.len(), 1);
    assert_eq!((orders[0].order_id, orders[0].attempt), (2, 1));
    let last = endpoint.log().pop().unwrap();
    assert_eq!((last.status, last.outcome.as_str()), (200, "processed"));
    let stats = a.stats().await.unwrap();
    assert_eq!(stats.dead, 0);

    drop_tables(&pool, &names).await;
}

/// The `host:port` of a database `url`, and the URL with them replaced
/// by `addr`.
fn via(url: &str, addr: SocketAddr) -> (String, String) {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, host) = match authority.rsplit_once('@') {
        Some((user, host)) => (format!("{user}@"), host),
        None => (String::new(), authority),
    };
    let host = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5432")
    };
    (host, format!("{scheme}://{userinfo}{addr}/{path}"))
}
