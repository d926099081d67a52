//! `outbox relay --to URL`: the library's relay loop with one ready
//! publisher as the catch-all, so every entry goes out as raw JSON whatever
//! wrote it.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::{Args, ValueEnum};
use outbox::publisher::amqp::{AmqpPublisher, ExchangeKind};
use outbox::publisher::http::WebhookPublisher;
use outbox::publisher::kafka::KafkaPublisher;
use outbox::publisher::nats::NatsPublisher;
use outbox::publisher::redis::RedisStreamPublisher;
use outbox::{Backoff, Entry, Gauges, PublishResult, Publishers, RawPublisher, Report};
use serde_json::json;
use tokio::time::Instant;

use crate::Ctx;
use crate::commands;
use crate::db::{Db, redact_url};
use crate::duration;
use crate::error::Failure;
use crate::logging::PROGRESS_SHOWN;
use crate::out;

/// Options of `outbox relay`.
#[derive(Debug, Args)]
pub(crate) struct RelayArgs {
    /// Where to: amqp://, nats://, redis:// (rediss:// for TLS), kafka://host:port[,host:port] or http(s):// (a webhook).
    #[arg(long, value_name = "URL", env = "OUTBOX_TO", hide_env_values = true)]
    to: String,

    /// Serve /metrics (Prometheus), /healthz and /readyz on this address (e.g. 127.0.0.1:9464; off by default).
    #[arg(long, value_name = "ADDR", env = "OUTBOX_LISTEN")]
    listen: Option<SocketAddr>,

    /// RabbitMQ: the exchange (default: the default exchange, routing to the queue named like the event).
    #[arg(
        long,
        value_name = "NAME",
        env = "OUTBOX_EXCHANGE",
        help_heading = "RabbitMQ (amqp://)"
    )]
    exchange: Option<String>,
    /// RabbitMQ: declare the exchange (durable) of this kind before publishing.
    #[arg(long, value_name = "KIND", help_heading = "RabbitMQ (amqp://)")]
    declare_exchange: Option<Kind>,
    /// RabbitMQ: count a message that no queue receives as published (default: a rejection).
    #[arg(long, help_heading = "RabbitMQ (amqp://)")]
    allow_unrouted: bool,

    /// NATS: subject = this prefix + event name (include the separator: "events.").
    #[arg(
        long,
        value_name = "PREFIX",
        env = "OUTBOX_SUBJECT_PREFIX",
        help_heading = "NATS JetStream (nats://)"
    )]
    subject_prefix: Option<String>,

    /// Kafka: every entry goes to this one topic (default: one topic per event name).
    #[arg(
        long,
        value_name = "TOPIC",
        help_heading = "Kafka (kafka://)",
        conflicts_with = "topic_prefix"
    )]
    topic: Option<String>,
    /// Kafka: topic = this prefix + event name (include the separator: "events.").
    #[arg(
        long,
        value_name = "PREFIX",
        env = "OUTBOX_TOPIC_PREFIX",
        help_heading = "Kafka (kafka://)"
    )]
    topic_prefix: Option<String>,
    /// Kafka: a librdkafka setting, KEY=VALUE (repeatable): security.protocol, sasl.mechanism,
    /// sasl.username, sasl.password, ... Values are never logged.
    #[arg(
        long = "kafka-config",
        value_name = "KEY=VALUE",
        help_heading = "Kafka (kafka://)"
    )]
    kafka_config: Vec<String>,

    /// TLS: also trust the CA certificate(s) in this PEM file (amqps://; nats:// or tls://, which it makes TLS-only;
    /// https://, which it makes TLS-only; rediss://, instead of the system roots).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,

    /// Redis: the stream every entry goes to (default "outbox").
    #[arg(
        long,
        value_name = "KEY",
        help_heading = "Redis Streams (redis://)",
        conflicts_with = "stream_prefix"
    )]
    stream: Option<String>,
    /// Redis: one stream per event name, this prefix + name ("events:").
    #[arg(long, value_name = "PREFIX", help_heading = "Redis Streams (redis://)")]
    stream_prefix: Option<String>,
    /// Redis: cap each stream at about this many entries (XADD MAXLEN ~).
    #[arg(long, value_name = "N", help_heading = "Redis Streams (redis://)")]
    max_len: Option<usize>,

    /// Webhook: a header sent with every request, "Name: value" (repeatable).
    #[arg(
        long = "header",
        value_name = "NAME: VALUE",
        help_heading = "Webhook (http://, https://)"
    )]
    headers: Vec<String>,
    /// Webhook: sign each body, X-Outbox-Signature: sha256=<hmac>.
    #[arg(
        long,
        env = "OUTBOX_SIGNING_SECRET",
        hide_env_values = true,
        value_name = "SECRET",
        help_heading = "Webhook (http://, https://)"
    )]
    signing_secret: Option<String>,
    /// Webhook: requests of one batch in flight at once (above 1, order within a batch is not kept).
    #[arg(long, value_name = "N", help_heading = "Webhook (http://, https://)")]
    concurrency: Option<usize>,

    /// Broker timeout: connecting, and waiting for confirms or responses.
    #[arg(long, value_name = "DURATION", env = "OUTBOX_TIMEOUT", value_parser = duration::parse)]
    timeout: Option<Duration>,
    /// Entries claimed per run.
    #[arg(long, value_name = "N", env = "OUTBOX_BATCH", default_value_t = 100)]
    batch: usize,
    /// Batches out with the broker at once (above 1, batches are published
    /// interleaved: record order holds only per stream, with --ordered-streams).
    #[arg(long, value_name = "N", env = "OUTBOX_IN_FLIGHT", default_value_t = 1)]
    in_flight: usize,
    /// The longest sleep while the table is idle.
    #[arg(long, value_name = "DURATION", env = "OUTBOX_POLL_INTERVAL", default_value = "1s", value_parser = duration::parse)]
    poll_interval: Duration,
    /// Attempts before an entry becomes a dead letter.
    #[arg(
        long,
        value_name = "N",
        env = "OUTBOX_MAX_ATTEMPTS",
        default_value_t = 3
    )]
    max_attempts: u32,
    /// The delay after a rejected attempt (doubling up to 5m; 0s: none).
    #[arg(long, value_name = "DURATION", env = "OUTBOX_BACKOFF", default_value = "1s", value_parser = duration::parse)]
    backoff: Duration,
    /// How long a claim lasts before another relay may take the entries.
    #[arg(long, value_name = "DURATION", env = "OUTBOX_LEASE", default_value = "30s", value_parser = duration::parse)]
    lease: Duration,
    /// Per-stream order: an entry waits while an earlier entry of its stream is pending.
    #[arg(long, env = "OUTBOX_ORDERED_STREAMS")]
    ordered_streams: bool,
    /// Keep published entries this long instead of deleting them.
    #[arg(long, value_name = "DURATION", env = "OUTBOX_KEEP_PUBLISHED", value_parser = duration::parse)]
    keep_published: Option<Duration>,
    /// PostgreSQL: do not LISTEN for new entries, only poll (behind PgBouncer in transaction mode).
    #[arg(long, env = "OUTBOX_NO_LISTEN")]
    no_listen: bool,
}

/// `--declare-exchange` kinds.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Kind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl From<Kind> for ExchangeKind {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::Direct => ExchangeKind::Direct,
            Kind::Fanout => ExchangeKind::Fanout,
            Kind::Topic => ExchangeKind::Topic,
            Kind::Headers => ExchangeKind::Headers,
        }
    }
}

/// A ready publisher that counts what it published, for the progress line.
struct Counting<P> {
    inner: P,
    published: Arc<AtomicU64>,
}

impl<P: RawPublisher> Counting<P> {
    fn new(inner: P, published: &Arc<AtomicU64>) -> Self {
        Self {
            inner,
            published: Arc::clone(published),
        }
    }

    fn count(&self, results: &[PublishResult]) {
        let ok = results.iter().filter(|r| r.is_ok()).count() as u64;
        self.published.fetch_add(ok, Ordering::Relaxed);
    }
}

impl<P: RawPublisher> RawPublisher for Counting<P> {
    async fn publish_raw(&self, entry: &Entry) -> PublishResult {
        let result = self.inner.publish_raw(entry).await;
        self.count(std::slice::from_ref(&result));
        result
    }

    async fn publish_raw_batch(&self, entries: &[Entry]) -> Vec<PublishResult> {
        let results = self.inner.publish_raw_batch(entries).await;
        self.count(&results);
        results
    }
}

/// The broker a `--to` URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Broker {
    Amqp,
    Nats,
    Redis,
    Kafka,
    Webhook,
}

impl Broker {
    fn of(url: &str) -> Result<Self, Failure> {
        let scheme = url
            .split_once("://")
            .map(|(scheme, _)| scheme.to_ascii_lowercase())
            .unwrap_or_default();
        match scheme.as_str() {
            "amqp" | "amqps" => Ok(Self::Amqp),
            "nats" | "tls" => Ok(Self::Nats),
            "redis" | "rediss" => Ok(Self::Redis),
            "http" | "https" => Ok(Self::Webhook),
            "kafka" => Ok(Self::Kafka),
            _ => Err(Failure::new(format!(
                "unsupported --to URL {} (use amqp://, nats://, redis://, rediss://, kafka://, http:// or https://)",
                redact_url(url, false)
            ))),
        }
    }
}

/// Options given for another broker than `--to`'s are a mistake worth naming
/// (a value from its environment variable is not: one environment may serve
/// several relays).
fn check_options(args: &RelayArgs, broker: Broker) -> Result<(), Failure> {
    let flag = |set: bool, var: &str| set && std::env::var_os(var).is_none();
    let given = [
        (
            "--exchange",
            flag(args.exchange.is_some(), "OUTBOX_EXCHANGE"),
            Broker::Amqp,
        ),
        (
            "--declare-exchange",
            args.declare_exchange.is_some(),
            Broker::Amqp,
        ),
        ("--allow-unrouted", args.allow_unrouted, Broker::Amqp),
        (
            "--subject-prefix",
            flag(args.subject_prefix.is_some(), "OUTBOX_SUBJECT_PREFIX"),
            Broker::Nats,
        ),
        ("--stream", args.stream.is_some(), Broker::Redis),
        (
            "--stream-prefix",
            args.stream_prefix.is_some(),
            Broker::Redis,
        ),
        ("--max-len", args.max_len.is_some(), Broker::Redis),
        ("--header", !args.headers.is_empty(), Broker::Webhook),
        (
            "--signing-secret",
            flag(args.signing_secret.is_some(), "OUTBOX_SIGNING_SECRET"),
            Broker::Webhook,
        ),
        ("--concurrency", args.concurrency.is_some(), Broker::Webhook),
        ("--topic", args.topic.is_some(), Broker::Kafka),
        (
            "--topic-prefix",
            flag(args.topic_prefix.is_some(), "OUTBOX_TOPIC_PREFIX"),
            Broker::Kafka,
        ),
        (
            "--kafka-config",
            !args.kafka_config.is_empty(),
            Broker::Kafka,
        ),
    ];
    for (flag, set, owner) in given {
        if set && owner != broker {
            let scheme = match owner {
                Broker::Amqp => "amqp://",
                Broker::Nats => "nats://",
                Broker::Redis => "redis://",
                Broker::Kafka => "kafka://",
                Broker::Webhook => "http(s)://",
            };
            return Err(Failure::new(format!(
                "{flag} applies only to {scheme} targets"
            )));
        }
    }
    Ok(())
}

/// The Kafka publisher of `--to kafka://host:port[,host:port]`.
fn kafka(args: &RelayArgs) -> Result<KafkaPublisher, Failure> {
    let brokers = args
        .to
        .split_once("://")
        .map_or("", |(_, rest)| rest)
        .trim_end_matches('/');
    if brokers.contains('@') {
        return Err(Failure::new(
            "kafka:// takes no credentials in the URL; pass them with --kafka-config \
             sasl.username=... --kafka-config sasl.password=...",
        ));
    }
    let mut b = KafkaPublisher::builder(brokers);
    if let Some(topic) = &args.topic {
        b = b.topic(topic);
    }
    if let Some(prefix) = &args.topic_prefix {
        b = b.topic_prefix(prefix);
    }
    if let Some(timeout) = args.timeout {
        b = b.timeout(timeout);
    }
    if args.tls_ca.is_some() {
        return Err(Failure::new(
            "--tls-ca: this build's librdkafka has no TLS (rdkafka without its `ssl` feature); \
             kafka:// takes plaintext and SASL PLAIN (--kafka-config)",
        ));
    }
    for setting in &args.kafka_config {
        let Some((key, value)) = setting.split_once('=') else {
            // Not shown: it may be a secret missing its `=`.
            return Err(Failure::new(
                "--kafka-config takes KEY=VALUE (one setting has no '=')",
            ));
        };
        b = b.config(key.trim(), value);
    }
    Ok(b.build()?)
}

/// The PEM text of `--tls-ca`, if given.
fn tls_ca(args: &RelayArgs) -> Result<Option<Vec<u8>>, Failure> {
    let Some(path) = &args.tls_ca else {
        return Ok(None);
    };
    std::fs::read(path)
        .map(Some)
        .map_err(|err| Failure::new(format!("--tls-ca {}: {err}", path.display())))
}

/// Builds the publishers: the chosen adapter, counting, as the catch-all.
async fn publishers(
    args: &RelayArgs,
    broker: Broker,
    counter: &Arc<AtomicU64>,
) -> Result<Publishers, Failure> {
    let shown = redact_url(&args.to, broker != Broker::Webhook);
    let builder = Publishers::builder();
    let builder = match broker {
        Broker::Amqp => {
            let mut b = AmqpPublisher::builder(&args.to).mandatory(!args.allow_unrouted);
            if let Some(exchange) = &args.exchange {
                b = b.exchange(exchange);
            }
            if let Some(kind) = args.declare_exchange {
                b = b.declare_exchange(kind.into());
            }
            if let Some(timeout) = args.timeout {
                b = b.timeout(timeout);
            }
            if let Some(pem) = tls_ca(args)? {
                b = b.tls_ca_pem(pem);
            }
            let publisher = b.build()?;
            if let Err(err) = publisher.connect().await {
                tracing::warn!(target: "outbox_cli", to = %shown, error = %err, "RabbitMQ not reachable yet; the relay keeps trying");
            }
            builder.fallback(Counting::new(publisher, counter))
        }
        Broker::Nats => {
            let mut b = NatsPublisher::builder(&args.to);
            if let Some(prefix) = &args.subject_prefix {
                b = b.subject_prefix(prefix);
            }
            if let Some(timeout) = args.timeout {
                b = b.timeout(timeout);
            }
            if let Some(pem) = tls_ca(args)? {
                b = b.tls_ca_pem(pem);
            }
            let publisher = b.build()?;
            if let Err(err) = publisher.connect().await {
                tracing::warn!(target: "outbox_cli", to = %shown, error = %err, "NATS not reachable yet; the relay keeps trying");
            }
            builder.fallback(Counting::new(publisher, counter))
        }
        Broker::Kafka => builder.fallback(Counting::new(kafka(args)?, counter)),
        Broker::Redis => {
            let mut b = RedisStreamPublisher::builder(&args.to);
            b = match &args.stream_prefix {
                Some(prefix) => {
                    let prefix = prefix.clone();
                    b.stream_fn(move |entry| format!("{prefix}{}", entry.name()))
                }
                None => b.stream(args.stream.as_deref().unwrap_or("outbox")),
            };
            if let Some(max_len) = args.max_len {
                b = b.max_len(max_len);
            }
            if let Some(timeout) = args.timeout {
                b = b.connection_timeout(timeout).response_timeout(timeout);
            }
            if let Some(pem) = tls_ca(args)? {
                b = b.tls_ca_pem(pem);
            }
            builder.fallback(Counting::new(b.build()?, counter))
        }
        Broker::Webhook => {
            let mut b = WebhookPublisher::builder().url(&args.to);
            for header in &args.headers {
                let Some((name, value)) = header.split_once(':') else {
                    return Err(Failure::new(
                        "--header takes \"Name: value\" (no ':' found)",
                    ));
                };
                b = b.header(name.trim(), value.trim());
            }
            if let Some(secret) = &args.signing_secret {
                b = b.signing_secret(secret.as_bytes());
            }
            if let Some(n) = args.concurrency {
                b = b.concurrency(n);
            }
            if let Some(timeout) = args.timeout {
                b = b.timeout(timeout);
            }
            if let Some(pem) = tls_ca(args)? {
                b = b.tls_ca_pem(pem);
            }
            builder.fallback(Counting::new(b.build()?, counter))
        }
    };
    Ok(builder.build()?)
}

/// `outbox relay --to URL ...`.
pub(crate) async fn relay<DB: Db>(ctx: &Ctx<DB>, args: &RelayArgs) -> Result<(), Failure> {
    let stop = crate::tail::stop_signal()?;
    let broker = Broker::of(&args.to)?;
    check_options(args, broker)?;
    commands::require(ctx).await?;
    let shown = redact_url(&args.to, broker != Broker::Webhook);
    tracing::info!(target: "outbox_cli", table = %ctx.table.name, database = %ctx.url.shown, to = %shown, "relay started");
    let published = Arc::new(AtomicU64::new(0));
    let publishers = publishers(args, broker, &published).await?;
    let endpoints = match args.listen {
        Some(addr) => Some(crate::serve::start(addr, ctx.pool.clone(), publishers.watch()).await?),
        None => None,
    };

    let backoff = if args.backoff.is_zero() {
        Backoff::none()
    } else {
        Backoff::exponential(args.backoff, Duration::from_mins(5).max(args.backoff))
    };
    let mut builder = outbox::Outbox::builder(ctx.pool.clone())
        .table(&ctx.table.name)
        .migrate(false)
        .notify(!args.no_listen)
        .batch_limit(args.batch)
        .max_attempts(args.max_attempts)
        .backoff(backoff)
        .lease(args.lease)
        .ordered_streams(args.ordered_streams);
    if let Some(retention) = args.keep_published {
        builder = builder.keep_published(retention);
    }
    let outbox = builder.build().await?;

    let mut progress = Progress::new(std::io::stderr().is_terminal(), shown.clone());
    let mut run = pin!(
        outbox
            .relay(publishers)
            .poll_interval(args.poll_interval)
            .in_flight(args.in_flight)
            .run(stop)
    );
    let mut ticks = tokio::time::interval(progress.every());
    ticks.tick().await;
    let totals = loop {
        tokio::select! {
            totals = &mut run => break totals,
            _ = ticks.tick() => {
                let gauges = tokio::time::timeout(Duration::from_secs(2), outbox.gauges()).await;
                progress.show(published.load(Ordering::Relaxed), gauges.ok().and_then(Result::ok));
            }
        }
    };
    progress.finish();
    if let Some(endpoints) = endpoints {
        endpoints.stop().await;
    }
    tracing::info!(
        target: "outbox_cli",
        published = totals.published,
        retried = totals.retried,
        dead = totals.dead,
        unroutable = totals.unroutable,
        newer_version = totals.newer_version,
        "relay stopped"
    );
    summary(ctx.json, &totals)
}

fn summary(json: bool, totals: &Report) -> Result<(), Failure> {
    if json {
        return out::json(
            &json!({
                "published": totals.published,
                "retried": totals.retried,
                "dead": totals.dead,
                "unroutable": totals.unroutable,
                "newer_version": totals.newer_version,
                "unavailable": totals.unavailable,
            }),
            true,
        );
    }
    out::line(format!(
        "relay stopped: published {}, retried {}, dead {}",
        totals.published, totals.retried, totals.dead
    ))
}

/// The progress line (terminal) or a periodic log line (anything else).
struct Progress {
    terminal: bool,
    to: String,
    last: (Instant, u64),
}

impl Progress {
    fn new(terminal: bool, to: String) -> Self {
        Self {
            terminal,
            to,
            last: (Instant::now(), 0),
        }
    }

    fn every(&self) -> Duration {
        if self.terminal {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(10)
        }
    }

    #[allow(clippy::cast_precision_loss)] // Reason: a rate for people; counts far below 2^52.
    fn show(&mut self, published: u64, gauges: Option<Gauges>) {
        let now = Instant::now();
        let (then, before) = self.last;
        let elapsed = now.duration_since(then).as_secs_f64().max(0.001);
        let rate = published.saturating_sub(before) as f64 / elapsed;
        self.last = (now, published);
        let (pending, dead) = gauges.map_or_else(
            || ("?".to_owned(), "?".to_owned()),
            |c| (c.pending.to_string(), c.dead.to_string()),
        );
        if self.terminal {
            let mut err = std::io::stderr().lock();
            let _ = write!(
                err,
                "\r\x1b[2K-> {}  published {published} ({rate:.1}/s)  pending {pending}  dead {dead}",
                self.to
            );
            let _ = err.flush();
            PROGRESS_SHOWN.store(true, Ordering::Relaxed);
        } else {
            tracing::info!(target: "outbox_cli", published, rate = format!("{rate:.1}/s"), pending, dead, "relay progress");
        }
    }

    fn finish(&self) {
        if self.terminal && PROGRESS_SHOWN.swap(false, Ordering::Relaxed) {
            let _ = writeln!(std::io::stderr());
        }
    }
}
