//! The outbox benchmarks: each figure measured for the library and for a
//! hand-written raw loop doing the same work (sqlx, lapin, async-nats), in
//! the same run, with the two taking turns; prints events/s and the ratio
//! library/raw.
//!
//! ```text
//! cargo run --release -p outbox-bench -- [--quick] [--only FIGURE,..] [--database-url URL]
//!                                        [--amqp-url URL] [--nats-url URL]
//! ```
//!
//! Services: PostgreSQL (`DATABASE_URL`, default
//! `postgres://root@127.0.0.1:5432/test`), RabbitMQ (`AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`), NATS with JetStream (`NATS_URL`,
//! default `nats://127.0.0.1:4222`). Every run creates its own tables
//! (`bench_<run>_*`, with the library's migration), queue and stream, and
//! removes them at the end. No timing is asserted: the program fails only
//! when something does not work. `--quick` runs every figure with small
//! sizes (CI keeps the program working with it).
//!
//! How the figures are taken:
//!
//! - record: writers commit for a fixed time; the four modes (library with
//!   and without NOTIFY, raw INSERT with and without `pg_notify`) take turns
//!   in short slices, and each mode's figure is the median slice.
//! - drains: the table is refilled, then `VACUUM ANALYZE` and `CHECKPOINT`
//!   run before each repetition; library and raw loop alternate; events/s count from the
//!   first publisher call (a relay already running when the backlog
//!   arrives), the start-up before it is printed beside.
//! - consume: before each repetition the queue is refilled (persistent
//!   messages, as the library's AMQP publisher writes them) and the tables
//!   are emptied and vacuumed; library and raw loop alternate, with the same
//!   prefetch, concurrency and pool; events/s count from the subscription to
//!   the last message committed and acknowledged.
//! - memory and scale: each drain runs in a child process (this binary,
//!   re-executed with a hidden subcommand) whose `VmHWM` the parent reads.
//!
//! `--diagnose` (not a figure) runs the attribution measurements behind
//! the profiling notes: one batch or one transaction at a time, the library
//! against variants of the raw loop (connection held or taken from the
//! pool per statement, the library's statements), taking turns.

mod broker;
mod child;
mod common;
mod consume;
mod diagnose;
mod drain;
mod gauges;
mod latency;
mod lite;
mod record;
mod report;
mod util;

use std::process::ExitCode;
use std::time::Instant;

use sqlx::Executor;

use crate::common::{Bench, Plan};
use crate::util::{Context, Res, bail, redact};

/// Every figure, in the order they run.
const FIGURES: &[(&str, &str)] = &[
    (
        "record_1_per_tx",
        "one event per transaction, 1 and 8 writers",
    ),
    (
        "record_100_per_tx",
        "100 events per transaction in one call",
    ),
    (
        "drain_noop_1",
        "pending entries drained by one relay, no-op publisher",
    ),
    ("drain_noop_4", "the same with 4 relays"),
    ("drain_amqp", "drained into RabbitMQ with confirms"),
    ("drain_nats", "drained into NATS JetStream with acks"),
    (
        "drain_kafka",
        "drained into Kafka (idempotent producer, acks=all)",
    ),
    (
        "consume",
        "RabbitMQ queue consumed into PostgreSQL by the inbox, exactly once",
    ),
    (
        "latency",
        "commit to publisher call at 200 events/s, NOTIFY and polling",
    ),
    ("poll_with_dead", "an empty poll with 100,000 dead letters"),
    (
        "gauges",
        "the relay's gauge refresh vs stats() with 1,000,000 kept published entries",
    ),
    ("drain_sqlite", "the no-op drain on SQLite"),
    (
        "memory",
        "peak RSS of a relay draining 1,000,000 entries vs 100,000",
    ),
    ("scale", "drain time at 10k, 100k, 1M entries"),
];

const USAGE: &str = "usage: outbox-bench [--quick] [--only FIGURE,..] [--database-url URL] \
                     [--amqp-url URL] [--nats-url URL] [--kafka-brokers HOST:PORT] [--diagnose]";

struct Options {
    quick: bool,
    /// Hidden: the interleaved attribution runs of `diagnose.rs` instead of the figures.
    diagnose: bool,
    only: Vec<&'static str>,
    database_url: String,
    amqp_url: String,
    nats_url: String,
    kafka_brokers: String,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn parse(args: &[String]) -> Res<Option<Options>> {
    let mut options = Options {
        quick: false,
        diagnose: false,
        only: FIGURES.iter().map(|(name, _)| *name).collect(),
        database_url: env_or("DATABASE_URL", "postgres://root@127.0.0.1:5432/test"),
        amqp_url: env_or("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
        nats_url: env_or("NATS_URL", "nats://127.0.0.1:4222"),
        kafka_brokers: env_or("KAFKA_BROKERS", "127.0.0.1:19092"),
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_owned())),
            _ => (arg.as_str(), None),
        };
        let mut value = || -> Res<String> {
            match inline.clone().or_else(|| args.next().cloned()) {
                Some(value) => Ok(value),
                None => bail!("{flag} needs a value; {USAGE}"),
            }
        };
        match flag {
            "--quick" => options.quick = true,
            "--diagnose" => options.diagnose = true,
            "--only" => {
                let list = value()?;
                options.only = Vec::new();
                for wanted in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let Some((name, _)) = FIGURES.iter().find(|(name, _)| *name == wanted) else {
                        let names: Vec<&str> = FIGURES.iter().map(|(name, _)| *name).collect();
                        bail!("unknown figure {wanted:?}; figures: {}", names.join(", "));
                    };
                    options.only.push(name);
                }
            }
            "--database-url" => options.database_url = value()?,
            "--amqp-url" => options.amqp_url = value()?,
            "--nats-url" => options.nats_url = value()?,
            "--kafka-brokers" => options.kafka_brokers = value()?,
            "-h" | "--help" => {
                println!("{USAGE}\n\nfigures:");
                for (name, what) in FIGURES {
                    println!("  {name:<18} {what}");
                }
                return Ok(None);
            }
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    Ok(Some(options))
}

/// The hidden first argument a re-executed drain child receives. A binary
/// that embeds the benchmarks hands its arguments to [`main_with`] whenever
/// the first one is this.
pub const CHILD_SUBCOMMAND: &str = child::SUBCOMMAND;

/// Runs the benchmark program with `args` (without the program name) and
/// returns its exit code. Call it outside any tokio runtime: it starts its
/// own. Used by `outbox-bench`'s `main`.
#[must_use]
pub fn main_with(args: &[String]) -> ExitCode {
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
        .and_then(|runtime| {
            runtime.block_on(async {
                match args.split_first() {
                    Some((first, rest)) if first == child::SUBCOMMAND => child::child(rest).await,
                    _ => run(args).await,
                }
            })
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("outbox-bench: error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &[String]) -> Res<()> {
    let Some(options) = parse(args)? else {
        return Ok(());
    };
    let started = Instant::now();
    let wants = |name: &str| options.only.contains(&name);
    let plan = Plan::new(options.quick);
    let mut bench = Bench::connect(
        plan,
        options.database_url.clone(),
        options.amqp_url.clone(),
        options.nats_url.clone(),
    )
    .await?;
    // Fail at once, in one line, if a broker the figures need is down.
    if (wants("drain_amqp") || wants("consume")) && !options.diagnose {
        preflight_amqp(&options.amqp_url).await?;
    }
    bench.kafka_brokers.clone_from(&options.kafka_brokers);
    if wants("drain_nats") && !options.diagnose {
        preflight_nats(&options.nats_url).await?;
    }
    if wants("drain_kafka") && !options.diagnose {
        broker::preflight_kafka(&options.kafka_brokers)?;
    }
    machine(&bench, &options).await?;

    let result = if options.diagnose {
        diagnose::diagnose(&bench).await
    } else {
        figures(&bench, &wants).await
    };
    let dropped = bench.drop_tables().await;
    bench.admin.close().await;
    if let (Err(_), Err(err)) = (&result, &dropped) {
        eprintln!("outbox-bench: warning: {err}");
    }
    result?;
    dropped?;
    println!(
        "\ntotal wall time {:.1} s ({} mode)",
        started.elapsed().as_secs_f64(),
        if plan.quick { "quick" } else { "full" }
    );
    Ok(())
}

async fn figures(b: &Bench, wants: &dyn Fn(&str) -> bool) -> Res<()> {
    if wants("record_1_per_tx") {
        record::record(b, 1, 1).await?;
        record::record(b, 8, 1).await?;
    }
    if wants("record_100_per_tx") {
        record::record(b, 1, 100).await?;
    }
    if wants("drain_noop_1") {
        drain::drain_noop(b, 1).await?;
    }
    if wants("drain_noop_4") {
        drain::drain_noop(b, 4).await?;
    }
    if wants("drain_amqp") {
        drain::drain_amqp(b).await?;
    }
    if wants("drain_nats") {
        drain::drain_nats(b).await?;
    }
    if wants("drain_kafka") {
        drain::drain_kafka(b).await?;
    }
    if wants("consume") {
        consume::consume(b).await?;
    }
    if wants("latency") {
        latency::latency(b).await?;
    }
    if wants("poll_with_dead") {
        latency::poll_with_dead(b).await?;
    }
    if wants("gauges") {
        gauges::gauges(b).await?;
    }
    if wants("drain_sqlite") {
        lite::drain_sqlite(b).await?;
    }
    if wants("memory") || wants("scale") {
        child::memory_and_scale(b, wants("memory"), wants("scale")).await?;
    }
    Ok(())
}

async fn preflight_amqp(url: &str) -> Res<()> {
    let unreachable = format!("cannot connect to RabbitMQ at {}", redact(url));
    let connection = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        lapin::Connection::connect(url, lapin::ConnectionProperties::default()),
    )
    .await
    .context(&unreachable)?
    .context(&unreachable)?;
    let _ = connection.close(200, "preflight".into()).await;
    Ok(())
}

async fn preflight_nats(url: &str) -> Res<()> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(std::time::Duration::from_secs(10))
        .connect(url)
        .await
        .context(format!("cannot connect to NATS at {}", redact(url)))?;
    if !client.server_info().jetstream {
        bail!(
            "NATS at {} has JetStream disabled (start it with -js)",
            redact(url)
        );
    }
    Ok(())
}

/// The machine and settings the numbers belong to.
async fn machine(b: &Bench, options: &Options) -> Res<()> {
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let setting = |name: &'static str| async move {
        let row: (String,) = sqlx::query_as(sqlx::AssertSqlSafe(format!("SHOW {name}")))
            .fetch_one(&b.admin)
            .await
            .context(format!("SHOW {name}"))?;
        Ok::<_, util::Error>(row.0)
    };
    let version = setting("server_version").await?;
    let sync = setting("synchronous_commit").await?;
    let fsync = setting("fsync").await?;
    let buffers = setting("shared_buffers").await?;
    let superuser: bool =
        sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            .fetch_optional(&b.admin)
            .await
            .context("checking the role")?
            .unwrap_or(false);
    b.admin.execute("SELECT 1").await.context("PostgreSQL")?;
    println!("outbox-bench: the library against hand-written loops, same run, ratio = library/raw");
    println!(
        "date {}  mode {}  run id {}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        if b.plan.quick { "quick" } else { "full" },
        b.run
    );
    println!("machine: {cores} cores (available_parallelism), {cpu}");
    println!(
        "PostgreSQL {version} at {}: synchronous_commit={sync}, fsync={fsync}, shared_buffers={buffers}{}",
        redact(&options.database_url),
        if superuser {
            ""
        } else {
            " (not superuser: no CHECKPOINT between measurements)"
        }
    );
    println!(
        "benchmark tables: created by outbox::migrate, autovacuum off, VACUUM ANALYZE + CHECKPOINT before \
         each drain; pools: sqlx defaults"
    );
    println!(
        "brokers: RabbitMQ at {}, NATS at {}, Kafka at {}",
        redact(&options.amqp_url),
        redact(&options.nats_url),
        options.kafka_brokers
    );
    Ok(())
}
