//! The webhook publisher against a small HTTP server started inside each
//! test (hyper on 127.0.0.1:0), with SQLite outboxes.
//!
//! The server answers by path: `/status/<code>` with that status and a short
//! body, `/sleep/<ms>` with 200 after that long, anything else with 200.
//! It keeps every request it received.

mod lite;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use lite::{Expected, InvoicePaid, Lite, ParcelSent};
use outbox::publisher::http::{WebhookPublisher, verify_signature, verify_timestamped_signature};
use outbox::{Metadata, Publishers};
use tokio::net::TcpListener;

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
    body: Bytes,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

struct Server {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(req, log.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            received,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    req: Request<Incoming>,
    log: Arc<Mutex<Vec<Received>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    log.lock().unwrap().push(Received {
        method: parts.method.to_string(),
        path: path.clone(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    });
    let mut status = StatusCode::OK;
    let mut text = String::new();
    if let Some(code) = path.strip_prefix("/status/") {
        let code: u16 = code.split('/').next().unwrap().parse().unwrap();
        status = StatusCode::from_u16(code).unwrap();
        if code >= 300 {
            text = format!(
                "{{\"error\": \"refused with {code}\",\n \"detail\": \"{}\"}}",
                "x".repeat(400)
            );
        }
    } else if let Some(ms) = path.strip_prefix("/sleep/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
    }
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    Ok(response)
}

/// Runs until nothing is claimed; returns the summed report.
async fn drain(outbox: &outbox::Outbox<sqlx::Sqlite>, publishers: &Publishers) -> outbox::Report {
    let mut total = outbox::Report::default();
    loop {
        let report = outbox.run(publishers, 50).await.unwrap();
        if report.claimed == 0 {
            return total;
        }
        assert_eq!(report.unavailable, 0, "{report:?}");
        total.claimed += report.claimed;
        total.published += report.published;
        total.retried += report.retried;
        total.dead += report.dead;
    }
}

/// Checks one received request against the event it should carry.
fn assert_carries(req: &Received, want: &Expected) {
    let id = want.event_id.hyphenated().to_string();
    assert_eq!(req.method, "POST");
    assert_eq!(
        req.body.as_ref(),
        want.payload.as_bytes(),
        "the stored payload, byte for byte"
    );
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(req.header("idempotency-key"), Some(id.as_str()));
    assert_eq!(req.header("x-event-id"), Some(id.as_str()));
    assert_eq!(req.header("x-event-name"), Some(want.name.as_str()));
    assert_eq!(
        req.header("x-outbox-stream-key"),
        want.stream_key.as_deref()
    );
    assert_eq!(
        req.header("x-outbox-correlation-id"),
        want.correlation_id
            .map(|id| id.hyphenated().to_string())
            .as_deref()
    );
    let headers: BTreeMap<String, String> =
        serde_json::from_str(req.header("x-outbox-headers").unwrap()).unwrap();
    assert_eq!(headers, want.headers);
    assert_eq!(req.header("authorization"), Some("Bearer static-token"));
}

/// 200 events of two types over several stream keys, a typed publisher for
/// one (its own route) and the catch-all for the other (the default URL):
/// every request arrives once, in record order, with the payload, the
/// idempotency key, the metadata headers and a signature that verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_in_order_signed_with_their_metadata() {
    let server = Server::start().await;
    let db = Lite::new().await;
    let outbox = db.outbox().await;
    let expected = db.record_mixed(&outbox, 200, 5).await;

    let webhook = WebhookPublisher::builder()
        .url(server.url("/hooks/all"))
        .route("billing.invoice_paid", server.url("/hooks/paid"))
        .header("Authorization", "Bearer static-token")
        .signing_secret("s3cret")
        .build()
        .unwrap();
    let publishers = Publishers::builder()
        .publisher::<InvoicePaid, _>(webhook.clone())
        .fallback(webhook)
        .build()
        .unwrap();
    let report = drain(&outbox, &publishers).await;
    assert_eq!(report.published, 200, "{report:?}");
    assert!(db.rows().await.is_empty());

    let received = server.received();
    assert_eq!(received.len(), 200);
    for (req, want) in received.iter().zip(&expected) {
        assert_carries(req, want);
        let path = if want.name == "billing.invoice_paid" {
            "/hooks/paid"
        } else {
            "/hooks/all"
        };
        assert_eq!(req.path, path);
        let signature = req.header("x-outbox-signature").unwrap();
        assert!(signature.starts_with("sha256="), "{signature}");
        assert!(verify_signature("s3cret", &req.body, signature));
        assert!(!verify_signature("wrong", &req.body, signature));
        let mut tampered = req.body.to_vec();
        tampered[1] ^= 1;
        assert!(!verify_signature("s3cret", &tampered, signature));
        assert!(req.header("x-outbox-timestamp").is_none());
    }
    db.done().await;
}

/// A timestamped signature covers `<timestamp>.<body>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamped_signature_verifies() {
    let server = Server::start().await;
    let db = Lite::new().await;
    let outbox = db.outbox().await;
    db.record_mixed(&outbox, 3, 1).await;
    let webhook = WebhookPublisher::builder()
        .url(server.url("/hooks"))
        .signing_secret(b"k3y".to_vec())
        .signature_timestamp(true)
        .build()
        .unwrap();
    let publishers = Publishers::builder().fallback(webhook).build().unwrap();
    assert_eq!(drain(&outbox, &publishers).await.published, 3);
    let minute = Duration::from_secs(60);
    for req in server.received() {
        let ts = req.header("x-outbox-timestamp").unwrap();
        let sig = req.header("x-outbox-signature").unwrap();
        assert!(verify_timestamped_signature(
            "k3y", ts, &req.body, sig, minute
        ));
        assert!(
            !verify_signature("k3y", &req.body, sig),
            "not over the body alone"
        );
        assert!(!verify_timestamped_signature(
            "k3y", "1", &req.body, sig, minute
        ));
        assert!(!verify_timestamped_signature("k3y", ts, b"{}", sig, minute));
        assert!(!verify_timestamped_signature(
            "other", ts, &req.body, sig, minute
        ));
    }
    db.done().await;
}

/// What two runs over one event end in when the endpoint is `url`.
struct Outcome {
    first: outbox::Report,
    second: outbox::Report,
    rows: Vec<lite::Row>,
    dead: Vec<outbox::DeadLetter>,
}

async fn outcome(url: String, timeout: Duration) -> Outcome {
    let db = Lite::new().await;
    let outbox = db.builder().max_attempts(2).build().await.unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    let recording = outbox
        .record_with(
            &mut *tx,
            &InvoicePaid {
                invoice_id: 1,
                amount_cents: 1,
            },
            Metadata::new().stream_key("s"),
        )
        .await
        .unwrap();
    assert!(!recording.is_filtered());
    tx.commit().await.unwrap();
    let webhook = WebhookPublisher::builder()
        .url(url)
        .timeout(timeout)
        .build()
        .unwrap();
    let publishers = Publishers::builder()
        .publisher::<InvoicePaid, _>(webhook)
        .build()
        .unwrap();
    let first = outbox.run(&publishers, 10).await.unwrap();
    let second = outbox.run(&publishers, 10).await.unwrap();
    let out = Outcome {
        first,
        second,
        rows: db.rows().await,
        dead: outbox.dead_letters(10).await.unwrap(),
    };
    db.done().await;
    out
}

/// 2xx is published; 4xx (but 408/429) and 3xx are rejections that cost an
/// attempt and end dead with the status and the body's start as reason;
/// 5xx, 408 and 429 are outages that cost nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_classes_map_to_outcomes() {
    let server = Server::start().await;
    let timeout = Duration::from_secs(5);
    for code in [200, 201, 202, 204] {
        let out = outcome(server.url(&format!("/status/{code}")), timeout).await;
        assert_eq!(out.first.published, 1, "{code}: {:?}", out.first);
        assert!(out.rows.is_empty(), "{code}");
    }
    for code in [400, 401, 404, 409, 422, 301] {
        let out = outcome(server.url(&format!("/status/{code}")), timeout).await;
        let requests = server
            .received()
            .iter()
            .filter(|r| r.path == format!("/status/{code}"))
            .count();
        assert_eq!(out.first.retried, 1, "{code}: {:?}", out.first);
        assert_eq!(out.second.dead, 1, "{code}: {:?}", out.second);
        assert_eq!(requests, 2, "{code}: one request per attempt");
        assert_eq!(out.dead.len(), 1, "{code}");
        let reason = &out.dead[0].reason;
        assert_eq!(out.dead[0].attempts, 2);
        assert!(reason.contains(&format!("answered {code} ")), "{reason}");
        assert!(
            reason.contains(&format!("refused with {code}")),
            "body excerpt: {reason}"
        );
        assert!(reason.len() < 400, "only an excerpt of the body: {reason}");
        assert!(!reason.contains('\n'), "{reason}");
    }
    for code in [500, 502, 503, 408, 429] {
        let out = outcome(server.url(&format!("/status/{code}")), timeout).await;
        for report in [&out.first, &out.second] {
            assert_eq!(
                (report.unavailable, report.retried, report.dead),
                (1, 0, 0),
                "{code}: {report:?}"
            );
        }
        assert_eq!(out.rows.len(), 1);
        assert_eq!(
            (out.rows[0].status.as_str(), out.rows[0].attempts),
            ("pending", 0),
            "{code}: no attempt counted"
        );
        assert!(out.dead.is_empty());
    }
}

/// Connection refused and a timeout are outages too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_and_slow_endpoints_cost_no_attempt() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let down = outcome(
        format!("http://127.0.0.1:{port}/hook"),
        Duration::from_secs(2),
    )
    .await;
    let server = Server::start().await;
    let slow = outcome(server.url("/sleep/3000"), Duration::from_millis(300)).await;
    for out in [down, slow] {
        assert_eq!(
            (out.first.unavailable, out.first.retried),
            (1, 0),
            "{:?}",
            out.first
        );
        assert_eq!(out.second.unavailable, 1, "{:?}", out.second);
        assert_eq!(
            (out.rows[0].status.as_str(), out.rows[0].attempts),
            ("pending", 0)
        );
        assert!(out.dead.is_empty());
    }
}

/// Errors name the endpoint without userinfo or path; the outage message
/// says what happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_never_show_credentials() {
    let server = Server::start().await;
    let secret_url = format!(
        "http://user:hunter2@{}/status/404/T0-topsecret?token=xyzzy",
        server.addr
    );
    let out = outcome(secret_url.clone(), Duration::from_secs(5)).await;
    let reason = &out.dead[0].reason;
    for secret in ["hunter2", "topsecret", "xyzzy"] {
        assert!(!reason.contains(secret), "{reason}");
    }
    assert!(
        reason.contains(&format!("http://***@{}/***", server.addr)),
        "{reason}"
    );
    let received = server.received();
    assert_eq!(
        received[0].header("authorization"),
        Some("Basic dXNlcjpodW50ZXIy"),
        "userinfo is sent as basic auth"
    );

    // The outage's message, seen through a wrapping publisher.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let webhook = WebhookPublisher::builder()
        .url(format!("http://user:hunter2@127.0.0.1:{port}/secret-path"))
        .build()
        .unwrap();
    let debug = format!("{webhook:?}");
    assert!(
        !debug.contains("hunter2") && !debug.contains("secret-path"),
        "{debug}"
    );
    let db = Lite::new().await;
    let outbox = db.outbox().await;
    db.record_mixed(&outbox, 1, 1).await;
    let seen = Arc::new(Mutex::new(String::new()));
    let s = seen.clone();
    let publishers = Publishers::builder()
        .fallback_fn(move |entry: outbox::Entry| {
            let (webhook, s) = (webhook.clone(), s.clone());
            async move {
                let result = outbox::RawPublisher::publish_raw(&webhook, &entry).await;
                if let Err(err) = &result {
                    *s.lock().unwrap() = format!("{}|{err}", err.is_unavailable());
                }
                result
            }
        })
        .build()
        .unwrap();
    outbox.run(&publishers, 10).await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.starts_with("true|webhook http://***@127.0.0.1:"),
        "{seen}"
    );
    assert!(seen.contains("unreachable"), "{seen}");
    assert!(
        !seen.contains("hunter2") && !seen.contains("secret-path"),
        "{seen}"
    );
    db.done().await;
}

/// A URL function routes per entry; with concurrency above 1 every event
/// still arrives exactly once (order within a batch is not promised).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_fn_and_concurrency() {
    let server = Server::start().await;
    let db = Lite::new().await;
    let outbox = db.outbox().await;
    let expected = db.record_paid(&outbox, 120, 4).await;
    let base = server.url("/by-stream/");
    let webhook = WebhookPublisher::builder()
        .url_fn(move |entry| format!("{base}{}", entry.stream_key().unwrap_or("none")))
        .concurrency(8)
        .build()
        .unwrap();
    let publishers = Publishers::builder()
        .publisher::<InvoicePaid, _>(webhook.clone())
        .publisher::<ParcelSent, _>(webhook)
        .build()
        .unwrap();
    assert_eq!(drain(&outbox, &publishers).await.published, 120);
    let received = server.received();
    assert_eq!(received.len(), 120);
    let mut by_id: BTreeMap<String, Received> = BTreeMap::new();
    for req in received {
        let id = req.header("idempotency-key").unwrap().to_owned();
        assert!(by_id.insert(id, req).is_none(), "each event once");
    }
    for want in &expected {
        let req = &by_id[&want.event_id.hyphenated().to_string()];
        assert_eq!(req.body.as_ref(), want.payload.as_bytes());
        assert_eq!(
            req.path,
            format!("/by-stream/{}", want.stream_key.as_deref().unwrap())
        );
    }
    db.done().await;
}

/// With concurrency, an outage in the middle of a batch starts no new
/// request, and the entries not sent cost nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_mid_batch_stops_sending() {
    let server = Server::start().await;
    let db = Lite::new().await;
    let outbox = db.outbox().await;
    let expected = db.record_paid(&outbox, 40, 1).await;
    let poisoned = expected[10].event_id;
    let (ok, down) = (server.url("/ok"), server.url("/status/503"));
    let webhook = WebhookPublisher::builder()
        .url_fn(move |entry| {
            if entry.event_id() == poisoned {
                down.clone()
            } else {
                ok.clone()
            }
        })
        .concurrency(4)
        .build()
        .unwrap();
    let publishers = Publishers::builder().fallback(webhook).build().unwrap();
    let report = outbox.run(&publishers, 100).await.unwrap();
    assert_eq!(report.retried + report.dead, 0, "{report:?}");
    assert!(report.unavailable >= 40 - 14, "{report:?}");
    let sent = server.received().len();
    assert!(
        sent <= 14,
        "at most 3 more in flight after the outage: {sent}"
    );
    assert_eq!(report.published + 1, sent, "{report:?}");
    let rows = db.rows().await;
    assert!(rows.iter().all(|r| r.attempts == 0), "{rows:?}");
    assert_eq!(rows.len(), 40 - report.published);
    db.done().await;
}
