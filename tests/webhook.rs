//! The webhook publisher against a small HTTP(S) server started inside
//! each test (`webhook_support`), with SQLite outboxes: what a request
//! carries, what each kind of answer costs (the event, this event this
//! time, or the endpoint), relays that go on past one bad event and pause
//! (losing nothing) behind a wrong setting, and TLS.

mod lite;
mod relay_support;
mod tls_support;
mod webhook_support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lite::{Expected, InvoicePaid, Lite, ParcelSent};
use outbox::publisher::http::{WebhookPublisher, verify_signature, verify_timestamped_signature};
use outbox::{Backoff, Metadata, Outbox, Publishers, Report};
use relay_support::{Running, run_for, until};
use serde::{Deserialize, Serialize};
use sqlx::Sqlite;
use tls_support::TestCa;
use webhook_support::{Received, Reply, Server};

/// An event of version 2 (the `lite` events are version 1).
#[derive(Debug, Serialize, Deserialize)]
struct RefundIssued {
    refund_id: i64,
}

impl outbox::Event for RefundIssued {
    const NAME: &'static str = "billing.refund_issued";
    const VERSION: u32 = 2;
}

/// Runs until nothing is claimed; returns the summed report.
async fn drain(outbox: &Outbox<Sqlite>, publishers: &Publishers) -> Report {
    let mut total = Report::default();
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
        req.header("x-outbox-event-version"),
        Some("1"),
        "the `lite` events are version 1"
    );
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
/// idempotency key, the metadata headers, the event version (1, and 2 for
/// one more event of a version-2 type, last) and a signature that verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_in_order_signed_with_their_metadata() {
    let server = Server::start().await;
    let db = Lite::new().await;
    let outbox = db.outbox().await;
    let expected = db.record_mixed(&outbox, 200, 5).await;
    let mut tx = db.pool.begin().await.unwrap();
    let refund = outbox
        .record(&mut *tx, &RefundIssued { refund_id: 7 })
        .await
        .unwrap()
        .event_id()
        .unwrap();
    tx.commit().await.unwrap();

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
    assert_eq!(report.published, 201, "{report:?}");
    assert!(db.rows().await.is_empty());

    let mut received = server.received();
    assert_eq!(received.len(), 201);
    let last = received.pop().unwrap();
    assert_eq!(last.event_id(), refund.hyphenated().to_string());
    assert_eq!(last.header("x-event-name"), Some("billing.refund_issued"));
    assert_eq!(last.header("x-outbox-event-version"), Some("2"));
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
    let minute = Duration::from_mins(1);
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
    first: Report,
    second: Report,
    rows: Vec<lite::Row>,
    dead: Vec<outbox::DeadLetter>,
    /// `Publishers::blocked()` after the second run.
    blocked: Vec<outbox::publisher::Blocked>,
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
        blocked: publishers.blocked(),
    };
    db.done().await;
    out
}

/// 2xx is published. Other 4xx are rejections; 5xx, 408 and 429 are
/// transient, and one event failing alone is the event's: both cost an
/// attempt and end dead with the status and the body's start as reason.
/// A refusal that is a setting (credentials, URL, a redirect) costs
/// nothing: the publisher is blocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_classes_map_to_outcomes() {
    let server = Server::start().await;
    let timeout = Duration::from_secs(5);
    for code in [200, 201, 202, 204] {
        let out = outcome(server.url(&format!("/status/{code}")), timeout).await;
        assert_eq!(out.first.published, 1, "{code}: {:?}", out.first);
        assert!(out.rows.is_empty(), "{code}");
    }
    for code in [400, 409, 413, 415, 422, 500, 502, 503, 408, 429] {
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
        assert!(out.blocked.is_empty(), "{code}: {:?}", out.blocked);
    }
    for code in [401, 403, 404, 405, 407, 410, 421, 301, 308] {
        let out = outcome(server.url(&format!("/status/{code}")), timeout).await;
        assert_eq!(
            (out.first.unavailable, out.first.retried, out.first.dead),
            (1, 0, 0),
            "{code}: {:?}",
            out.first
        );
        // The entry waits out the publisher's pause: not claimed at once.
        assert_eq!(
            (out.second.published, out.second.retried, out.second.dead),
            (0, 0, 0),
            "{code}: {:?}",
            out.second
        );
        assert_eq!(out.rows.len(), 1);
        assert_eq!(
            (out.rows[0].status.as_str(), out.rows[0].attempts),
            ("pending", 0),
            "{code}: no attempt counted"
        );
        assert!(out.dead.is_empty());
        assert_eq!(out.blocked.len(), 1, "{code}");
        assert_eq!(out.blocked[0].publisher, "billing.invoice_paid");
        let reason = &out.blocked[0].reason;
        assert!(reason.contains(&format!("answered {code} ")), "{reason}");
        if code < 400 {
            assert!(reason.contains("not followed"), "{reason}");
        }
    }
}

/// Connection refused costs nothing (the endpoint is down); a request that
/// times out, or whose connection is closed before the answer, is this
/// event's, this time: it costs an attempt when it fails alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_is_the_endpoints_and_a_timeout_is_the_events() {
    let down = outcome(
        format!("http://127.0.0.1:{}/hook", tls_support::free_port()),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(
        (down.first.unavailable, down.first.retried),
        (1, 0),
        "{:?}",
        down.first
    );
    assert_eq!(
        (down.second.published, down.second.retried, down.second.dead),
        (0, 0, 0),
        "{:?}",
        down.second
    );
    assert_eq!(
        (down.rows[0].status.as_str(), down.rows[0].attempts),
        ("pending", 0)
    );
    assert!(down.dead.is_empty());
    assert!(
        down.blocked[0].reason.contains("unreachable"),
        "{:?}",
        down.blocked
    );

    let server = Server::start().await;
    let slow = outcome(server.url("/sleep/3000"), Duration::from_millis(300)).await;
    assert_eq!(slow.first.retried, 1, "{:?}", slow.first);
    assert_eq!(slow.second.dead, 1, "{:?}", slow.second);
    assert!(
        slow.dead[0].reason.contains("timed out after 300ms"),
        "{}",
        slow.dead[0].reason
    );
    assert!(slow.blocked.is_empty(), "{:?}", slow.blocked);

    let hang_up = Server::start_with(|_| Reply::hang_up()).await;
    let cut = outcome(hang_up.url("/hooks"), Duration::from_secs(5)).await;
    assert_eq!(cut.first.retried, 1, "{:?}", cut.first);
    assert_eq!(cut.second.dead, 1, "{:?}", cut.second);
    assert!(
        cut.dead[0].reason.contains("failed before answering"),
        "{}",
        cut.dead[0].reason
    );
    assert_eq!(hang_up.received().len(), 2, "one request per attempt");
}

/// Errors name the endpoint without userinfo or path; the outage message
/// says what happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_never_show_credentials() {
    let server = Server::start().await;
    let secret_url = format!(
        "http://user:hunter2@{}/status/422/T0-topsecret?token=xyzzy",
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
    let port = tls_support::free_port();
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

/// With concurrency, a refusal that is the endpoint's (401) in the middle
/// of a batch starts no new request, and the entries not sent cost nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_refusal_mid_batch_stops_sending() {
    let server = Server::start().await;
    let db = Lite::new().await;
    let outbox = db.outbox().await;
    let expected = db.record_paid(&outbox, 40, 1).await;
    let poisoned = expected[10].event_id;
    let (ok, down) = (server.url("/ok"), server.url("/status/401"));
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

// ------------------------------------------------ relay loops and scopes

/// How a webhook fails the one bad event.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Status(u16),
    /// Answers only after the publisher's timeout.
    Slow,
}

/// One event that the endpoint answers with `fault` while it takes every
/// other, the bad one first in record order, the relay loop running: the
/// other 59 are delivered once each, all before the bad one's second try
/// (it does not hold the head of the queue), the publisher is never
/// blocked, and the bad one is a dead letter with its reason after its 3
/// attempts (one request each).
async fn one_bad_event_among_good_ones(fault: Fault) {
    let server = Server::start().await;
    let db = Lite::new().await;
    let outbox = db
        .builder()
        .max_attempts(3)
        .backoff(Backoff::fixed(Duration::from_millis(200)))
        .build()
        .await
        .unwrap();
    let expected = db.record_paid(&outbox, 60, 6).await;
    let bad = expected[0].event_id.hyphenated().to_string();
    let b = bad.clone();
    server.respond_with(move |req| {
        if req.event_id() != b {
            return Reply::status(200);
        }
        match fault {
            Fault::Status(code) => Reply::status(code),
            Fault::Slow => Reply::status(200).after(Duration::from_secs(3)),
        }
    });
    let webhook = WebhookPublisher::builder()
        .url(server.url("/hooks/paid"))
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let publishers = Publishers::builder()
        .publisher::<InvoicePaid, _>(webhook)
        .max_pause(Duration::from_millis(500))
        .build()
        .unwrap();
    let relay = Running::start(&outbox, publishers);
    until(
        "the bad event is a dead letter",
        Duration::from_secs(30),
        || async { !outbox.dead_letters(10).await.unwrap().is_empty() },
    )
    .await;
    let report = relay.stop().await;

    let delivered = server.delivered();
    for want in &expected[1..] {
        let id = want.event_id.hyphenated().to_string();
        assert_eq!(delivered.get(&id), Some(&1), "{fault:?}: {id} once");
    }
    let received = server.received();
    let tries: Vec<usize> = (0..received.len())
        .filter(|&i| received[i].event_id() == bad)
        .collect();
    assert_eq!(tries.len(), 3, "{fault:?}: one request per attempt");
    let last_good = received.iter().rposition(|r| r.event_id() != bad).unwrap();
    assert!(
        last_good < tries[1],
        "{fault:?}: every other event went out before the bad one's second try (requests {tries:?}, last other {last_good})"
    );
    assert_eq!(
        (
            report.published,
            report.dead,
            report.retried,
            report.unavailable
        ),
        (59, 1, 2, 0),
        "{fault:?}: never blocked: {report:?}"
    );
    let dead = outbox.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event_id, expected[0].event_id);
    assert_eq!(dead[0].attempts, 3);
    let reason = &dead[0].reason;
    match fault {
        Fault::Status(code) => assert!(reason.contains(&format!("answered {code} ")), "{reason}"),
        Fault::Slow => assert!(reason.contains("timed out after 300ms"), "{reason}"),
    }
    if matches!(fault, Fault::Status(429)) {
        assert!(reason.contains("Retry-After: 1"), "{reason}");
    }
    let rows = db.rows().await;
    assert_eq!(rows.len(), 1, "only the dead letter is left: {rows:?}");
    assert!(outbox.stats().await.unwrap().blocked.is_empty());
    db.done().await;
}

/// "One event stalls everything", with a 500 for that event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_answered_500_never_stalls_the_others() {
    one_bad_event_among_good_ones(Fault::Status(500)).await;
}

/// "One event stalls everything", with a 429 for that event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_answered_429_never_stalls_the_others() {
    one_bad_event_among_good_ones(Fault::Status(429)).await;
}

/// "One event stalls everything", with a timeout for that event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_timing_out_never_stalls_the_others() {
    one_bad_event_among_good_ones(Fault::Slow).await;
}

/// Asserts `n` entries pending, none charged, none dead.
async fn assert_all_pending_uncharged(db: &Lite, outbox: &Outbox<Sqlite>, n: usize) {
    let rows = db.rows().await;
    assert_eq!(rows.len(), n);
    assert!(
        rows.iter()
            .all(|r| r.status == "pending" && r.attempts == 0),
        "{:?}",
        rows.iter()
            .find(|r| r.status != "pending" || r.attempts != 0)
    );
    assert!(outbox.dead_letters(10).await.unwrap().is_empty());
}

/// Asserts every expected event was delivered exactly once, and nothing else.
fn assert_each_delivered_once(server: &Server, expected: &[Expected]) {
    let delivered = server.delivered();
    let want: BTreeSet<String> = expected
        .iter()
        .map(|e| e.event_id.hyphenated().to_string())
        .collect();
    let got: BTreeSet<String> = delivered.keys().cloned().collect();
    assert_eq!(got, want, "every event, and only those");
    let twice: Vec<_> = delivered.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
}

/// "One wrong setting kills the backlog": an endpoint that answers `code`
/// to every request. 500 events stay pending with no attempt and no dead
/// letter; `Publishers::blocked()` and `stats().blocked` name the publisher
/// and the reason. Once the endpoint answers 200 the relay loop resumes by
/// itself and delivers each event exactly once.
async fn refusing_endpoint_blocks_and_loses_nothing(code: u16) {
    let server = Server::start_with(move |_| Reply::status(code)).await;
    let db = Lite::new().await;
    let outbox = db.builder().max_attempts(3).build().await.unwrap();
    let expected = db.record_paid(&outbox, 500, 10).await;
    let webhook = WebhookPublisher::builder()
        .url(server.url("/hooks/paid"))
        .build()
        .unwrap();
    let publishers = Publishers::builder()
        .publisher::<InvoicePaid, _>(webhook)
        .max_pause(Duration::from_millis(500))
        .build()
        .unwrap();

    let report = run_for(&outbox, &publishers, Duration::from_secs(1)).await;
    assert_eq!(
        (report.published, report.retried, report.dead),
        (0, 0, 0),
        "{code}: {report:?}"
    );
    assert!(report.unavailable >= 500, "{code}: {report:?}");
    assert_all_pending_uncharged(&db, &outbox, 500).await;
    let blocked = publishers.blocked();
    assert_eq!(blocked.len(), 1, "{code}: {blocked:?}");
    assert_eq!(blocked[0].publisher, "billing.invoice_paid");
    assert!(
        blocked[0].reason.contains(&format!("answered {code} ")),
        "{blocked:?}"
    );
    let stats = outbox.stats().await.unwrap();
    assert_eq!((stats.pending, stats.dead), (500, 0), "{stats:?}");
    assert_eq!(stats.blocked.len(), 1, "{stats:?}");
    assert_eq!(stats.blocked[0].publisher, "billing.invoice_paid");
    assert_eq!(stats.blocked[0].reason, blocked[0].reason);
    let probes = server.received().len();
    assert!(
        probes < 50,
        "{code}: a blocked publisher only probes, one request at a time: {probes}"
    );

    // The relay loop takes over, still refused: nothing moves.
    let relay = Running::start(&outbox, publishers);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(server.delivered().is_empty());
    assert_all_pending_uncharged(&db, &outbox, 500).await;
    assert_eq!(outbox.stats().await.unwrap().blocked.len(), 1);

    // The endpoint is fixed; the relay resumes by itself.
    server.respond_with(|_| Reply::status(200));
    until("all 500 delivered", Duration::from_secs(30), || async {
        server.delivered().len() == 500
    })
    .await;
    until("the block is lifted", Duration::from_secs(10), || async {
        outbox.stats().await.unwrap().blocked.is_empty()
    })
    .await;
    let report = relay.stop().await;
    assert_eq!(
        (report.retried, report.dead, report.lost),
        (0, 0, 0),
        "{report:?}"
    );
    assert_each_delivered_once(&server, &expected);
    assert!(db.rows().await.is_empty());
    db.done().await;
}

/// A webhook answering 401 to everything (wrong credentials).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_answering_401_blocks_and_loses_nothing() {
    refusing_endpoint_blocks_and_loses_nothing(401).await;
}

/// A webhook answering 404 to everything (a wrong URL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_answering_404_blocks_and_loses_nothing() {
    refusing_endpoint_blocks_and_loses_nothing(404).await;
}

/// 503 for everything: transient failures with no answer in between block
/// the publisher, so at most 2 entries are charged one attempt and none is
/// dead; once the endpoint answers again the relay resumes by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_answering_503_to_everything_costs_at_most_two_attempts() {
    for concurrency in [1, 4] {
        let server = Server::start_with(|_| Reply::status(503)).await;
        let db = Lite::new().await;
        let outbox = db.builder().max_attempts(3).build().await.unwrap();
        let expected = db.record_paid(&outbox, 50, 5).await;
        let webhook = WebhookPublisher::builder()
            .url(server.url("/hooks/paid"))
            .concurrency(concurrency)
            .build()
            .unwrap();
        let publishers = Publishers::builder()
            .publisher::<InvoicePaid, _>(webhook)
            .max_pause(Duration::from_millis(500))
            .build()
            .unwrap();
        let relay = Running::start(&outbox, publishers);
        until(
            "the publisher is blocked",
            Duration::from_secs(10),
            || async { !outbox.stats().await.unwrap().blocked.is_empty() },
        )
        .await;
        // A few pauses and probes later, still at most 2 charged.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let rows = db.rows().await;
        let charged: Vec<_> = rows.iter().filter(|r| r.attempts > 0).collect();
        assert!(charged.len() <= 2, "{concurrency}: {charged:?}");
        assert!(charged.iter().all(|r| r.attempts == 1), "{charged:?}");
        assert!(rows.iter().all(|r| r.status == "pending"), "{rows:?}");
        let blocked = outbox.stats().await.unwrap().blocked;
        assert!(blocked[0].reason.contains("answered 503 "), "{blocked:?}");

        server.respond_with(|_| Reply::status(200));
        until("all 50 delivered", Duration::from_secs(30), || async {
            server.delivered().len() == 50
        })
        .await;
        let report = relay.stop().await;
        assert_eq!((report.dead, report.lost), (0, 0), "{report:?}");
        assert_each_delivered_once(&server, &expected);
        assert!(outbox.dead_letters(10).await.unwrap().is_empty());
        db.done().await;
    }
}

// ------------------------------------------------------------------- TLS

/// `https://` to an in-test TLS endpoint whose certificate a throwaway CA
/// signed: with that CA trusted every event arrives once, over TLS; an
/// `http://` URL next to the TLS option is a build error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_trusted_test_ca_delivers() {
    let ca = TestCa::new();
    let server = Server::start_tls(&ca.cert_pem, &ca.key_pem).await;
    assert!(server.url("/").starts_with("https://"));
    let db = Lite::new().await;
    let outbox = db.outbox().await;
    let expected = db.record_mixed(&outbox, 20, 3).await;
    let webhook = WebhookPublisher::builder()
        .url(server.url("/hooks/all"))
        .header("Authorization", "Bearer static-token")
        .tls_ca_pem(ca.ca_pem.clone())
        .build()
        .unwrap();
    let publishers = Publishers::builder().fallback(webhook).build().unwrap();
    assert_eq!(drain(&outbox, &publishers).await.published, 20);
    for (req, want) in server.received().iter().zip(&expected) {
        assert_carries(req, want);
    }
    assert_each_delivered_once(&server, &expected);

    let err = WebhookPublisher::builder()
        .url(format!("http://{}/hooks/all", server.addr))
        .tls_ca_pem(ca.ca_pem.clone())
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("not an https:// URL"), "{err}");
    db.done().await;
}

/// What one run over 5 events does with `webhook` as the catch-all.
async fn run_once(
    webhook: WebhookPublisher,
) -> (Report, Vec<lite::Row>, Vec<outbox::publisher::Blocked>) {
    let db = Lite::new().await;
    let outbox = db.outbox().await;
    db.record_mixed(&outbox, 5, 2).await;
    let publishers = Publishers::builder().fallback(webhook).build().unwrap();
    let report = outbox.run(&publishers, 100).await.unwrap();
    let rows = db.rows().await;
    db.done().await;
    (report, rows, publishers.blocked())
}

/// TLS or nothing: `https://` to a plaintext port, to a certificate no
/// trusted CA signed, and an `http://` URL from a `url_fn` while a TLS
/// option is set are all unavailable (no attempt, the publisher blocked),
/// and no request ever reaches the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_never_falls_back_to_plaintext() {
    let ca = TestCa::new();
    let plain = Server::start().await;
    let untrusted = Server::start_tls(&ca.cert_pem, &ca.key_pem).await;
    let plain_url = format!("http://{}/hooks", plain.addr);
    let cases = [
        (
            "https to a plaintext port",
            WebhookPublisher::builder()
                .url(format!("https://{}/hooks", plain.addr))
                .tls_ca_pem(ca.ca_pem.clone())
                .build()
                .unwrap(),
        ),
        (
            "https to an untrusted certificate",
            WebhookPublisher::builder()
                .url(untrusted.url("/hooks"))
                .build()
                .unwrap(),
        ),
        (
            "http from a url_fn with a TLS option",
            WebhookPublisher::builder()
                .url_fn(move |_| plain_url.clone())
                .tls_ca_pem(ca.ca_pem.clone())
                .build()
                .unwrap(),
        ),
    ];
    for (case, webhook) in cases {
        let (report, rows, blocked) = run_once(webhook).await;
        assert_eq!(
            (
                report.published,
                report.retried,
                report.dead,
                report.unavailable
            ),
            (0, 0, 0, 5),
            "{case}: {report:?}"
        );
        assert!(rows.iter().all(|r| r.attempts == 0), "{case}: {rows:?}");
        assert_eq!(blocked.len(), 1, "{case}");
        let reason = &blocked[0].reason;
        if case.starts_with("http from") {
            assert!(reason.contains("TLS is required"), "{case}: {reason}");
        } else {
            assert!(reason.contains("unreachable"), "{case}: {reason}");
        }
    }
    assert!(plain.received().is_empty(), "{:?}", plain.received());
    assert!(untrusted.received().is_empty());
}
