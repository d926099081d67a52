//! `latency` (commit to publisher call, NOTIFY on and polling only) and
//! `poll_with_dead` (an empty poll with dead letters in the table).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use outbox::{Outbox, PublishResult, Publisher, Publishers, Recorded};
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgListener;
use sqlx::{PgPool, Postgres};
use tokio::time::{Instant, MissedTickBehavior};
use uuid::Uuid;

use crate::common::{
    BATCH, Bench, Counter, Noop, OrderPlaced, RawSql, drain_deadline, lib, order, raw_claim,
    raw_delete,
};
use crate::util::{Context, Res, Spread, at_most, float, ms};

/// Events recorded before the measured ones (LISTEN registered, idle
/// backoff reset, statements prepared).
const WARM_UP: usize = 20;
/// One event every 5 ms: 200 events/s.
const PERIOD: Duration = Duration::from_millis(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    LibNotify,
    RawNotify,
    LibPoll,
    RawPoll,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Self::LibNotify => "library, NOTIFY on (default)",
            Self::RawNotify => "raw loop, LISTEN/NOTIFY",
            Self::LibPoll => "library, polling only (notify off)",
            Self::RawPoll => "raw loop, polling every 10 ms",
        }
    }

    fn notify(self) -> bool {
        matches!(self, Self::LibNotify | Self::RawNotify)
    }
}

/// When each event was about to commit, and how long until its publisher call.
#[derive(Clone)]
struct Probe {
    base: Instant,
    /// Nanoseconds since `base` just before the writer's COMMIT.
    sent: Arc<Vec<AtomicU64>>,
    /// Nanoseconds from `sent` to the publisher call.
    latency: Arc<Vec<AtomicU64>>,
    /// Nanoseconds the writer's COMMIT itself took.
    commit: Arc<Vec<AtomicU64>>,
    counter: Counter,
}

impl Probe {
    fn new(n: usize) -> Self {
        Self {
            base: Instant::now(),
            sent: Arc::new((0..n).map(|_| AtomicU64::new(0)).collect()),
            latency: Arc::new((0..n).map(|_| AtomicU64::new(0)).collect()),
            commit: Arc::new((0..n).map(|_| AtomicU64::new(0)).collect()),
            counter: Counter::new(n),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn sent(&self, seq: usize) {
        self.sent[seq].store(self.now(), Ordering::SeqCst);
    }

    fn committed(&self, seq: usize) {
        let took = self
            .now()
            .saturating_sub(self.sent[seq].load(Ordering::SeqCst));
        self.commit[seq].store(took, Ordering::SeqCst);
    }

    fn hit(&self, seq: u64) {
        let now = self.now();
        if let Some(i) = usize::try_from(seq).ok().filter(|&i| i < self.sent.len()) {
            let sent = self.sent[i].load(Ordering::SeqCst);
            self.latency[i].store(now.saturating_sub(sent), Ordering::SeqCst);
            self.counter.add(1);
        }
    }

    /// Latencies (ms) of the measured events.
    fn samples(&self) -> Vec<f64> {
        Self::millis(&self.latency)
    }

    /// COMMIT durations (ms) of the measured events.
    fn commits(&self) -> Vec<f64> {
        Self::millis(&self.commit)
    }

    fn millis(values: &[AtomicU64]) -> Vec<f64> {
        values[WARM_UP..]
            .iter()
            .map(|ns| {
                let ns = ns.load(Ordering::SeqCst);
                // Below 2^53 ns (104 days): exact as f64.
                float(usize::try_from(ns).unwrap_or(usize::MAX)) / 1e6
            })
            .collect()
    }
}

impl Publisher<OrderPlaced> for Probe {
    async fn publish(&self, event: &Recorded<OrderPlaced>) -> PublishResult {
        self.hit(event.event().seq);
        Ok(())
    }
}

pub(crate) async fn latency(b: &Bench) -> Res<()> {
    let table = b.table("lat").await?;
    let pool = b.pool(6).await?;
    let build = |notify: bool| {
        Outbox::builder(pool.clone())
            .table(table.as_str())
            .notify(notify)
            .build()
    };
    let with_notify = lib(build(true).await, "building the outbox")?;
    let polling = lib(build(false).await, "building the outbox")?;
    let sql = RawSql::new(&table);
    let n = b.plan.latency_n;
    println!(
        "\n== latency: one event per transaction at 200/s, {n} events per mode (after {WARM_UP} warm-up), \
         from just before the writer's COMMIT to the publisher's call; relay idle-waiting, batches of {BATCH}"
    );
    let mut rows = Vec::new();
    for mode in [
        Mode::LibNotify,
        Mode::RawNotify,
        Mode::LibPoll,
        Mode::RawPoll,
    ] {
        b.truncate(&table).await?;
        b.settle_db(&table).await?;
        let outbox = if mode.notify() {
            &with_notify
        } else {
            &polling
        };
        let (samples, commits) = run(&pool, outbox, &sql, mode, n).await?;
        let spread = Spread::of(&samples);
        println!("  {:<40} {spread}", mode.label());
        println!(
            "  {:<40} {}",
            "  of which the writer's COMMIT",
            Spread::of(&commits)
        );
        rows.push((mode, spread));
    }
    for (mode, spread) in &rows {
        let raw = rows
            .iter()
            .find(|(m, _)| {
                *m == if mode.notify() {
                    Mode::RawNotify
                } else {
                    Mode::RawPoll
                }
            })
            .map(|(_, s)| *s);
        if let (Mode::LibNotify | Mode::LibPoll, Some(raw)) = (mode, raw) {
            let how = if mode.notify() { "NOTIFY" } else { "polling" };
            let targets = if mode.notify() {
                format!(
                    "   (targets p50 <= 1 ms: {}, p99 <= 3 ms: {})",
                    at_most(spread.p50, 1.0),
                    at_most(spread.p99, 3.0)
                )
            } else {
                "   (no target)".to_owned()
            };
            println!(
                "  latency ratio library/raw ({how}): p50 {:.3}, p99 {:.3}; library p50 {:.3} ms, p99 {:.3} ms, \
                 max {:.3} ms{targets}",
                spread.p50 / raw.p50,
                spread.p99 / raw.p99,
                spread.p50,
                spread.p99,
                spread.max,
            );
        }
    }
    pool.close().await;
    Ok(())
}

/// One mode: start the relay, let it go idle, record `WARM_UP + n` events
/// at 200/s, collect the latencies.
async fn run(
    pool: &PgPool,
    outbox: &Outbox<Postgres>,
    sql: &RawSql,
    mode: Mode,
    n: usize,
) -> Res<(Vec<f64>, Vec<f64>)> {
    let total = WARM_UP + n;
    let probe = Probe::new(total);
    let relay = match mode {
        Mode::LibNotify | Mode::LibPoll => {
            let publishers = lib(
                Publishers::builder()
                    .publisher::<OrderPlaced, _>(probe.clone())
                    .build(),
                "building publishers",
            )?;
            let relay = outbox.relay(publishers);
            let stop = probe.counter.stopped();
            tokio::spawn(async move {
                relay.run(stop).await;
                Ok(())
            })
        }
        Mode::RawNotify | Mode::RawPoll => {
            let conn = pool.acquire().await.context("raw relay connection")?;
            let listener = if mode.notify() {
                let mut listener = PgListener::connect_with(pool)
                    .await
                    .context("LISTEN connection")?;
                listener.listen(&sql.channel).await.context("LISTEN")?;
                Some(listener)
            } else {
                None
            };
            tokio::spawn(raw_relay(conn, sql.clone(), listener, probe.clone()))
        }
    };
    // The relay finds nothing and goes idle (its poll backoff grows).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let writer = write(pool, outbox, sql, mode, &probe, total);
    let written = tokio::time::timeout(drain_deadline(total), writer).await;
    let finished = tokio::time::timeout(Duration::from_secs(30), probe.counter.stopped()).await;
    if written.is_err() || finished.is_err() {
        probe.counter.fail("timed out");
    }
    relay.await.context("the relay task")??;
    if let Ok(result) = written {
        result?;
    }
    probe.counter.check(mode.label())?;
    Ok((probe.samples(), probe.commits()))
}

/// The writer: one event per transaction, every 5 ms.
async fn write(
    pool: &PgPool,
    outbox: &Outbox<Postgres>,
    sql: &RawSql,
    mode: Mode,
    probe: &Probe,
    total: usize,
) -> Res<()> {
    let mut ticks = tokio::time::interval(PERIOD);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    for seq in 0..total {
        ticks.tick().await;
        let event = OrderPlaced::new(u64::try_from(seq).unwrap_or(u64::MAX));
        let mut tx = pool.begin().await.context("BEGIN")?;
        match mode {
            Mode::LibNotify | Mode::LibPoll => {
                let _recording = lib(outbox.record(&mut *tx, &event).await, "record")?;
            }
            Mode::RawNotify | Mode::RawPoll => {
                let payload = serde_json::to_string(&event).context("encoding")?;
                let text = if mode.notify() {
                    &sql.insert_one_notify
                } else {
                    &sql.insert_one
                };
                let mut query = sqlx::query(sqlx::AssertSqlSafe(text.clone()))
                    .bind(Uuid::now_v7())
                    .bind(<OrderPlaced as outbox::Event>::NAME)
                    .bind(payload);
                if mode.notify() {
                    query = query.bind(&*sql.channel);
                }
                query.execute(&mut *tx).await.context("raw INSERT")?;
            }
        }
        probe.sent(seq);
        tx.commit().await.context("COMMIT")?;
        probe.committed(seq);
    }
    Ok(())
}

/// The raw relay: claim, call the publisher, delete; when the batch was not
/// full, wait for a notification (or poll again after 10 ms).
async fn raw_relay(
    mut conn: PoolConnection<Postgres>,
    sql: RawSql,
    mut listener: Option<PgListener>,
    probe: Probe,
) -> Res<()> {
    let counter = probe.counter.clone();
    while !counter.is_stopped() {
        let token = Uuid::new_v4();
        let rows = raw_claim(&mut conn, &sql, token, 0).await?;
        for row in &rows {
            let event: OrderPlaced = serde_json::from_str(&row.payload).context("decoding")?;
            probe.hit(event.seq);
        }
        if !rows.is_empty() {
            let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
            raw_delete(&mut conn, &sql, &ids, token).await?;
        }
        if rows.len() >= BATCH {
            continue;
        }
        if let Some(listener) = listener.as_mut() {
            tokio::select! {
                received = listener.recv() => {
                    received.context("LISTEN")?;
                    while listener.next_buffered().is_some() {}
                }
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = counter.stopped() => break,
            }
        } else {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(10)) => {}
                () = counter.stopped() => break,
            }
        }
    }
    Ok(())
}

pub(crate) async fn poll_with_dead(b: &Bench) -> Res<()> {
    let table = b.table("dead").await?;
    let dead = b.plan.dead_n;
    let pool = b.pool(4).await?;
    let outbox = lib(
        Outbox::builder(pool.clone())
            .table(table.as_str())
            .build()
            .await,
        "building the outbox",
    )?;
    let publishers = lib(
        Publishers::builder()
            .publisher::<OrderPlaced, _>(Noop(Counter::new(usize::MAX)))
            .build(),
        "building publishers",
    )?;
    let sql = RawSql::new(&table);
    let mut conn = pool.acquire().await.context("raw connection")?;
    let polls = b.plan.polls;
    println!(
        "\n== poll_with_dead: an empty poll (outbox.run finding nothing) with {} dead letters in the table; \
         {polls} polls per mode, alternating in rounds",
        crate::util::count(dead)
    );
    // 1. Just made: pending entries that became dead letters, no VACUUM
    //    since (their old versions are still in the pending index).
    b.fill(&table, dead, "pending").await?;
    b.settle_db(&table).await?;
    let kill = format!(
        "UPDATE \"{table}\" SET status = 'dead', attempts = 3, last_error = 'rejected by the benchmark'"
    );
    sqlx::query(sqlx::AssertSqlSafe(kill.clone()))
        .execute(&b.admin)
        .await
        .context("turning entries into dead letters")?;
    sqlx::query(sqlx::AssertSqlSafe(format!("ANALYZE \"{table}\"")))
        .execute(&b.admin)
        .await
        .context("ANALYZE")?;
    let fresh = empty_polls(&outbox, &publishers, &mut conn, &sql, polls).await?;
    // 2. At rest: after a VACUUM (what autovacuum leaves behind).
    b.settle_db(&table).await?;
    let rest = empty_polls(&outbox, &publishers, &mut conn, &sql, polls).await?;
    for (case, (library, raw)) in [
        ("just made (no VACUUM since they died)", fresh),
        ("at rest (after VACUUM)", rest),
    ] {
        println!("  dead letters {case}:");
        println!("    {:<38} {library}", "library outbox.run");
        println!("    {:<38} {raw}", "raw claim statement");
        println!(
            "  poll_with_dead ratio library/raw (p50) = {:.3}, dead letters {case}: library empty poll \
             p50 {:.3} ms, p99 {:.3} ms   (target <= 1 ms: {})",
            library.p50 / raw.p50,
            library.p50,
            library.p99,
            at_most(library.p50, 1.0)
        );
    }
    drop(conn);
    pool.close().await;
    Ok(())
}

/// `polls` empty polls by the library and by the raw claim, alternating in rounds.
async fn empty_polls(
    outbox: &Outbox<Postgres>,
    publishers: &Publishers,
    conn: &mut PoolConnection<Postgres>,
    sql: &RawSql,
    polls: usize,
) -> Res<(Spread, Spread)> {
    let chunks = 10;
    let mut library = Vec::with_capacity(polls);
    let mut raw = Vec::with_capacity(polls);
    for round in 0..=chunks {
        // Round 0 is the warm-up.
        let per_round = if round == 0 { 20 } else { polls / chunks };
        for mode in order(2, round) {
            for _ in 0..per_round {
                let start = Instant::now();
                let claimed = if mode == 0 {
                    lib(outbox.run(publishers, BATCH).await, "outbox.run")?.claimed
                } else {
                    raw_claim(conn, sql, Uuid::new_v4(), 0).await?.len()
                };
                let took = ms(start.elapsed());
                if claimed != 0 {
                    crate::util::bail!("poll_with_dead: a poll claimed {claimed} entries");
                }
                if round > 0 {
                    if mode == 0 { &mut library } else { &mut raw }.push(took);
                }
            }
        }
    }
    Ok((Spread::of(&library), Spread::of(&raw)))
}
