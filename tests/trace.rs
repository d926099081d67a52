//! Trace context end to end (feature `opentelemetry`): a trace that starts
//! at the HTTP request that recorded an event continues through the relay
//! to the message the publisher sends.
//!
//! Each test installs, for its own thread, a `tracing` subscriber with a
//! tracing-opentelemetry layer that exports to the OpenTelemetry SDK's
//! in-memory span exporter, and reads the finished spans from it. The
//! outboxes are SQLite. A closure publisher shows what a publisher is
//! handed; with the `broker-*` features each ready publisher also sends one
//! traced event (the webhook to a server inside the test, the others to the
//! local Redis, RabbitMQ and NATS) and the test reads the context back from
//! the message.

mod lite;
#[cfg(feature = "broker-http")]
mod webhook_support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use lite::{InvoicePaid, Lite};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    TracerProvider as _,
};
use opentelemetry::{Context, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use outbox::{Metadata, PublishError, Publishers, Recorded};
use tracing::Instrument;
use tracing::subscriber::DefaultGuard;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use uuid::Uuid;

/// `tracing` bridged to an OpenTelemetry SDK for this thread.
struct Otel {
    exporter: InMemorySpanExporter,
    _provider: SdkTracerProvider,
    _guard: DefaultGuard,
}

impl Otel {
    fn install() -> Self {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let layer =
            tracing_opentelemetry::layer().with_tracer(provider.tracer("outbox-trace-test"));
        let guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));
        Self {
            exporter,
            _provider: provider,
            _guard: guard,
        }
    }

    /// The finished spans named `name`, in the order they ended.
    fn spans(&self, name: &str) -> Vec<SpanData> {
        self.exporter
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .filter(|span| span.name == name)
            .collect()
    }

    /// The one finished span named `name`.
    fn span(&self, name: &str) -> SpanData {
        let mut spans = self.spans(name);
        assert_eq!(spans.len(), 1, "one `{name}` span: {spans:#?}");
        spans.pop().unwrap()
    }
}

/// The span context of a live `tracing` span.
fn context_of(span: &tracing::Span) -> SpanContext {
    span.context().span().span_context().clone()
}

/// The W3C `traceparent` naming `span` (sampled).
fn traceparent(trace_id: TraceId, span_id: SpanId) -> String {
    format!("00-{trace_id}-{span_id}-01")
}

fn attribute(span: &SpanData, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.clone())
}

fn text(span: &SpanData, key: &str) -> Option<String> {
    attribute(span, key).map(|value| value.as_str().into_owned())
}

/// What a publisher saw of one delivery: event id, attempt, the headers.
type Seen = Arc<Mutex<Vec<(Uuid, u32, BTreeMap<String, String>)>>>;

/// The request records two events (one alone, one through a batch); the
/// relay, inside a span of its own, publishes them, the first only at its
/// second attempt. Every `outbox.publish` span is a child of the request
/// span in the request's trace (not of the relay's span), carries the
/// outcome, and is the span the `traceparent` the publisher saw names.
#[tokio::test]
async fn the_request_trace_continues_through_the_relay_to_the_publisher() {
    let otel = Otel::install();
    let db = Lite::new().await;
    let outbox = db.outbox().await;

    let request = tracing::info_span!("http.request");
    let recorded_in = context_of(&request);
    let (first, second) = async {
        let mut tx = db.pool.begin().await.unwrap();
        let first = outbox
            .record(
                &mut *tx,
                &InvoicePaid {
                    invoice_id: 1,
                    amount_cents: 100,
                },
            )
            .await
            .unwrap()
            .event_id()
            .unwrap();
        let mut batch = outbox.batch();
        let second = batch
            .push_with(
                &InvoicePaid {
                    invoice_id: 2,
                    amount_cents: 200,
                },
                Metadata::new().header("tenant", "acme"),
            )
            .unwrap()
            .event_id()
            .unwrap();
        batch.record(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
        (first, second)
    }
    .instrument(request.clone())
    .await;
    drop(request);

    // Stored: the request span's context, and the caller's own header.
    let recorded = traceparent(recorded_in.trace_id(), recorded_in.span_id());
    let stored = db.expected().await;
    assert_eq!(stored.len(), 2);
    assert_eq!(
        stored[0].headers,
        BTreeMap::from([("traceparent".to_owned(), recorded.clone())])
    );
    assert_eq!(
        stored[1].headers,
        BTreeMap::from([
            ("tenant".to_owned(), "acme".to_owned()),
            ("traceparent".to_owned(), recorded.clone()),
        ])
    );

    let seen: Seen = Arc::default();
    let log = seen.clone();
    let publishers = Publishers::builder()
        .on(move |paid: Recorded<InvoicePaid>| {
            log.lock()
                .unwrap()
                .push((paid.event_id(), paid.attempt(), paid.headers().clone()));
            let refuse = paid.event().invoice_id == 1 && paid.attempt() == 1;
            async move {
                if refuse {
                    Err(PublishError::rejected("broker said no"))
                } else {
                    Ok(())
                }
            }
        })
        .build()
        .unwrap();
    let relay = tracing::info_span!("relay");
    let relay_context = context_of(&relay);
    async {
        let report = outbox.run(&publishers, 10).await.unwrap();
        assert_eq!((report.published, report.retried), (1, 1), "{report:?}");
        let report = outbox.run(&publishers, 10).await.unwrap();
        assert_eq!((report.published, report.retried), (1, 0), "{report:?}");
    }
    .instrument(relay.clone())
    .await;
    drop(relay);

    let request = otel.span("http.request");
    assert_eq!(request.span_context.span_id(), recorded_in.span_id());
    let publish_spans = otel.spans("outbox.publish");
    assert_eq!(
        publish_spans.len(),
        3,
        "one per delivery: {publish_spans:#?}"
    );
    for publish in &publish_spans {
        assert_eq!(
            publish.span_context.trace_id(),
            request.span_context.trace_id(),
            "one trace"
        );
        assert_eq!(
            publish.parent_span_id,
            request.span_context.span_id(),
            "the recording span is the parent"
        );
        assert_ne!(publish.parent_span_id, relay_context.span_id());
        assert_eq!(publish.span_kind, SpanKind::Producer);
        assert_eq!(
            text(publish, "name").as_deref(),
            Some("billing.invoice_paid")
        );
    }

    // Each delivery carried the traceparent of its own `outbox.publish` span.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter()
            .map(|(id, attempt, _)| (*id, *attempt))
            .collect::<Vec<_>>(),
        [(first, 1), (second, 1), (first, 2)]
    );
    for (event_id, attempt, headers) in &seen {
        let sent = &headers["traceparent"];
        let publish = publish_spans
            .iter()
            .find(|span| {
                &traceparent(span.span_context.trace_id(), span.span_context.span_id()) == sent
            })
            .unwrap_or_else(|| panic!("{sent} names no outbox.publish span"));
        assert_eq!(text(publish, "event_id"), Some(event_id.to_string()));
        assert!(!headers.contains_key("tracestate"));
        if (*event_id, *attempt) == (first, 1) {
            assert_eq!(text(publish, "outcome").as_deref(), Some("failed"));
            assert_eq!(text(publish, "error_kind").as_deref(), Some("rejected"));
            assert_eq!(text(publish, "error").as_deref(), Some("broker said no"));
            assert_eq!(publish.status, Status::error("broker said no"));
        } else {
            assert_eq!(text(publish, "outcome").as_deref(), Some("published"));
            assert_eq!(publish.status, Status::Unset);
        }
        if *event_id == second {
            assert_eq!(headers["tenant"], "acme", "other headers untouched");
        }
    }
    let positions: Vec<_> = publish_spans
        .iter()
        .map(|span| attribute(span, "position").unwrap())
        .collect();
    assert!(
        positions.iter().all(|p| matches!(p, Value::I64(1 | 2))),
        "{positions:?}"
    );
    db.done().await;
}

/// No OpenTelemetry context, no header: recorded outside any span, or in a
/// span of a subscriber without the OpenTelemetry layer. A `traceparent` the
/// caller set is kept as given, and the relay continues from it.
#[tokio::test]
async fn without_a_current_context_nothing_is_added_and_a_callers_header_is_kept() {
    let db = Lite::new().await;
    let outbox = db.outbox().await;
    let paid = |invoice_id| InvoicePaid {
        invoice_id,
        amount_cents: 1,
    };
    // A span, but no OpenTelemetry layer.
    {
        let _plain = tracing::subscriber::set_default(tracing_subscriber::registry());
        let span = tracing::info_span!("http.request");
        let mut tx = db.pool.begin().await.unwrap();
        outbox
            .record(&mut *tx, &paid(1))
            .instrument(span)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let otel = Otel::install();
    // The layer, but no current span.
    let mut tx = db.pool.begin().await.unwrap();
    outbox.record(&mut *tx, &paid(2)).await.unwrap();
    // A span, and the caller's own trace context, which wins.
    let theirs = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    async {
        outbox
            .record_with(
                &mut *tx,
                &paid(3),
                Metadata::new().header("traceparent", theirs),
            )
            .await
            .unwrap();
    }
    .instrument(tracing::info_span!("http.request"))
    .await;
    tx.commit().await.unwrap();

    let stored = db.expected().await;
    assert!(stored[0].headers.is_empty(), "{:?}", stored[0].headers);
    assert!(stored[1].headers.is_empty(), "{:?}", stored[1].headers);
    assert_eq!(
        stored[2].headers,
        BTreeMap::from([("traceparent".to_owned(), theirs.to_owned())])
    );

    let seen: Seen = Arc::default();
    let log = seen.clone();
    let publishers = Publishers::builder()
        .on(move |paid: Recorded<InvoicePaid>| {
            log.lock()
                .unwrap()
                .push((paid.event_id(), paid.attempt(), paid.headers().clone()));
            async { Ok(()) }
        })
        .build()
        .unwrap();
    assert_eq!(outbox.run(&publishers, 10).await.unwrap().published, 3);

    let seen = seen.lock().unwrap().clone();
    assert!(seen[0].2.is_empty(), "{:?}", seen[0].2);
    assert!(seen[1].2.is_empty(), "{:?}", seen[1].2);
    // Only the entry with a traceparent got a span: a child of the caller's
    // (remote) span, in the caller's trace.
    let publish = otel.span("outbox.publish");
    assert_eq!(
        text(&publish, "event_id"),
        Some(stored[2].event_id.to_string())
    );
    assert_eq!(
        publish.span_context.trace_id(),
        TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap()
    );
    assert_eq!(
        publish.parent_span_id,
        SpanId::from_hex("b7ad6b7169203331").unwrap()
    );
    assert!(publish.parent_span_is_remote);
    assert_eq!(
        seen[2].2["traceparent"],
        traceparent(
            publish.span_context.trace_id(),
            publish.span_context.span_id()
        )
    );
    db.done().await;
}

/// The `tracestate` of the caller's trace in [`relay_one`].
const STATE: &str = "vendor=opaque";

/// Records one event in an `http.request` span that continues a caller's
/// trace (with a `tracestate`, as an incoming request would bring it),
/// relays it with `publishers`, and checks the spans: caller ->
/// `http.request` -> `outbox.publish`, published. Returns the event id and
/// the `traceparent` naming the `outbox.publish` span: what the message
/// must carry.
async fn relay_one(publishers: Publishers) -> (Uuid, String) {
    let otel = Otel::install();
    let db = Lite::new().await;
    let outbox = db.outbox().await;
    let caller = SpanContext::new(
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
        SpanId::from_hex("00f067aa0ba902b7").unwrap(),
        TraceFlags::SAMPLED,
        true,
        STATE.parse::<TraceState>().unwrap(),
    );
    let request = tracing::info_span!("http.request");
    request
        .set_parent(Context::new().with_remote_span_context(caller.clone()))
        .unwrap();
    let event_id = async {
        let mut tx = db.pool.begin().await.unwrap();
        let recording = outbox
            .record(
                &mut *tx,
                &InvoicePaid {
                    invoice_id: 7,
                    amount_cents: 1250,
                },
            )
            .await
            .unwrap();
        tx.commit().await.unwrap();
        recording.event_id().unwrap()
    }
    .instrument(request.clone())
    .await;
    drop(request);
    let stored = db.expected().await;
    assert_eq!(stored[0].headers["tracestate"], STATE);

    let report = outbox.run(&publishers, 10).await.unwrap();
    assert_eq!(report.published, 1, "{report:?}");

    let request = otel.span("http.request");
    let publish = otel.span("outbox.publish");
    assert_eq!(request.span_context.trace_id(), caller.trace_id());
    assert_eq!(request.parent_span_id, caller.span_id());
    assert_eq!(publish.span_context.trace_id(), caller.trace_id());
    assert_eq!(publish.parent_span_id, request.span_context.span_id());
    assert_eq!(text(&publish, "outcome").as_deref(), Some("published"));
    db.done().await;
    let sent = traceparent(
        publish.span_context.trace_id(),
        publish.span_context.span_id(),
    );
    (event_id, sent)
}

/// The webhook request carries `traceparent` (the relay's `outbox.publish`
/// span) and `tracestate` as standard HTTP headers, and in the entry's
/// headers (`X-Outbox-Headers`).
#[cfg(feature = "broker-http")]
#[tokio::test]
async fn the_webhook_request_carries_the_publish_span() {
    use outbox::publisher::http::WebhookPublisher;
    use webhook_support::Server;

    let server = Server::start().await;
    let webhook = WebhookPublisher::builder()
        .url(server.url("/hooks"))
        .build()
        .unwrap();
    let publishers = Publishers::builder()
        .publisher::<InvoicePaid, _>(webhook)
        .build()
        .unwrap();
    let (event_id, sent) = relay_one(publishers).await;

    let received = server.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].event_id(), event_id.to_string());
    assert_eq!(received[0].header("traceparent"), Some(sent.as_str()));
    assert_eq!(received[0].header("tracestate"), Some(STATE));
    let headers: BTreeMap<String, String> =
        serde_json::from_str(received[0].header("x-outbox-headers").unwrap()).unwrap();
    assert_eq!(headers["traceparent"], sent);
    assert_eq!(headers["tracestate"], STATE);
}

/// The Redis stream entry (local Redis, `REDIS_URL`) has `traceparent` and
/// `tracestate` fields.
#[cfg(feature = "broker-redis")]
#[tokio::test]
async fn the_redis_stream_entry_carries_the_publish_span() {
    use outbox::publisher::redis::RedisStreamPublisher;
    use redis::streams::StreamRangeReply;

    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let key = format!("outbox-test:trace:{}", Uuid::new_v4().simple());
    let redis = RedisStreamPublisher::builder(url.clone())
        .stream(key.clone())
        .build()
        .unwrap();
    let publishers = Publishers::builder()
        .publisher::<InvoicePaid, _>(redis)
        .build()
        .unwrap();
    let (event_id, sent) = relay_one(publishers).await;

    let mut conn = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let reply: StreamRangeReply = redis::cmd("XRANGE")
        .arg(&key)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(reply.ids.len(), 1);
    let entry = &reply.ids[0];
    assert_eq!(
        entry.get::<String>("event_id"),
        Some(event_id.hyphenated().to_string())
    );
    assert_eq!(entry.get::<String>("traceparent"), Some(sent));
    assert_eq!(entry.get::<String>("tracestate").as_deref(), Some(STATE));
}

/// The RabbitMQ message (local broker, `AMQP_URL`) has `traceparent` and
/// `tracestate` headers.
#[cfg(feature = "broker-amqp")]
#[tokio::test]
async fn the_amqp_message_carries_the_publish_span() {
    use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
    use lapin::types::{AMQPValue, FieldTable};
    use lapin::{Connection, ConnectionProperties};
    use outbox::publisher::amqp::AmqpPublisher;

    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let connection = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect("RabbitMQ at AMQP_URL");
    let channel = connection.create_channel().await.unwrap();
    let queue = format!("outbox-test-trace-{}", Uuid::new_v4().simple());
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let to_queue = queue.clone();
    let rabbit = AmqpPublisher::builder(url)
        .routing_key(move |_entry| to_queue.clone())
        .build()
        .unwrap();
    let publishers = Publishers::builder()
        .publisher::<InvoicePaid, _>(rabbit)
        .build()
        .unwrap();
    let (event_id, sent) = relay_one(publishers).await;

    let message = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the published message");
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let properties = &message.delivery.properties;
    assert_eq!(
        properties.message_id().as_ref().map(ToString::to_string),
        Some(event_id.hyphenated().to_string())
    );
    let headers: BTreeMap<String, String> = properties
        .headers()
        .as_ref()
        .unwrap()
        .inner()
        .iter()
        .filter_map(|(name, value)| match value {
            AMQPValue::LongString(text) => Some((name.to_string(), text.to_string())),
            _ => None,
        })
        .collect();
    assert_eq!(headers.get("traceparent"), Some(&sent));
    assert_eq!(headers.get("tracestate").map(String::as_str), Some(STATE));
}

/// The NATS JetStream message (local server, `NATS_URL`) has `traceparent`
/// and `tracestate` headers.
#[cfg(feature = "broker-nats")]
#[tokio::test]
async fn the_nats_message_carries_the_publish_span() {
    use async_nats::jetstream::{self, stream};
    use outbox::publisher::nats::NatsPublisher;

    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let js = jetstream::new(async_nats::connect(&url).await.expect("NATS at NATS_URL"));
    let prefix = format!("outbox-test-trace-{}", Uuid::new_v4().simple());
    let name = prefix.replace('-', "_");
    let stream = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{prefix}.>")],
            storage: stream::StorageType::Memory,
            ..stream::Config::default()
        })
        .await
        .unwrap();
    let nats = NatsPublisher::builder(url)
        .subject_prefix(format!("{prefix}."))
        .build()
        .unwrap();
    let publishers = Publishers::builder()
        .publisher::<InvoicePaid, _>(nats)
        .build()
        .unwrap();
    let (event_id, sent) = relay_one(publishers).await;

    let message = stream.get_raw_message(1).await.unwrap();
    js.delete_stream(&name).await.unwrap();
    let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(
        header("Nats-Msg-Id"),
        Some(event_id.hyphenated().to_string())
    );
    assert_eq!(header("traceparent"), Some(sent));
    assert_eq!(header("tracestate").as_deref(), Some(STATE));
}
