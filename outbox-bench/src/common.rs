//! What every PostgreSQL figure shares: the event, the run's tables, filling
//! them, the raw loop's SQL, and running a drain by the library or by the
//! raw loop.

use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use outbox::{Entry, Event, Outbox, PublishResult, Publisher, Publishers, RawPublisher, Recorded};
use serde::{Deserialize, Serialize};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{Connection, Executor, PgConnection, PgPool, Postgres, Row};
use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

use crate::broker::Sink;
use crate::util::{Context, Error, Res, bail};

/// The one event type of the benchmark (about 90 bytes of JSON).
#[derive(Debug, Clone, Serialize, Deserialize, outbox::Event)]
#[outbox(name = "bench.order_placed")]
pub(crate) struct OrderPlaced {
    pub(crate) order_id: i64,
    pub(crate) customer: String,
    pub(crate) amount_cents: i64,
    pub(crate) seq: u64,
}

impl OrderPlaced {
    pub(crate) fn new(seq: u64) -> Self {
        let id = i64::try_from(seq).unwrap_or(i64::MAX);
        Self {
            order_id: id,
            customer: format!("customer-{seq}"),
            amount_cents: id.wrapping_mul(7),
            seq,
        }
    }
}

/// Entries per claim, for the library (its default) and the raw loop.
pub(crate) const BATCH: usize = 100;
/// The claim lease, for the library (its default) and the raw loop.
pub(crate) const LEASE_MS: i64 = 30_000;

/// Sizes and durations of one run (`--quick` or full).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub(crate) quick: bool,
    /// Repetitions of each drain, per mode.
    pub(crate) drain_reps: usize,
    /// Repetitions of each broker drain, per mode.
    pub(crate) broker_reps: usize,
    /// Time slices per record mode (the modes take turns, slice by slice).
    pub(crate) record_slices: usize,
    /// How long one record slice lasts.
    pub(crate) record_slice: Duration,
    /// Entries drained by the PostgreSQL no-op drains.
    pub(crate) drain_n: usize,
    /// Entries drained into each broker.
    pub(crate) broker_n: usize,
    /// Messages consumed from RabbitMQ into PostgreSQL (`consume`).
    pub(crate) consume_n: usize,
    /// Entries drained on SQLite.
    pub(crate) sqlite_n: usize,
    /// Events measured per latency mode (after the warm-up).
    pub(crate) latency_n: usize,
    /// Dead letters in the table for `poll_with_dead`.
    pub(crate) dead_n: usize,
    /// Empty polls timed for `poll_with_dead`.
    pub(crate) polls: usize,
    /// Sizes for `memory` and `scale`.
    pub(crate) scale_sizes: &'static [usize],
}

impl Plan {
    pub(crate) fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                drain_reps: 3,
                broker_reps: 2,
                record_slices: 4,
                record_slice: Duration::from_millis(100),
                drain_n: 3_000,
                broker_n: 2_000,
                consume_n: 10_000,
                sqlite_n: 3_000,
                latency_n: 100,
                dead_n: 100_000,
                polls: 100,
                scale_sizes: &[10_000, 50_000],
            }
        } else {
            Self {
                quick,
                drain_reps: 5,
                broker_reps: 3,
                record_slices: 24,
                record_slice: Duration::from_millis(250),
                drain_n: 100_000,
                broker_n: 50_000,
                consume_n: 50_000,
                sqlite_n: 100_000,
                latency_n: 2_000,
                dead_n: 100_000,
                polls: 1_000,
                scale_sizes: &[10_000, 100_000, 1_000_000],
            }
        }
    }
}

/// The run: its services, its unique name, the tables it created.
pub(crate) struct Bench {
    pub(crate) plan: Plan,
    pub(crate) database_url: String,
    pub(crate) amqp_url: String,
    pub(crate) nats_url: String,
    /// The Kafka bootstrap servers (`KAFKA_BROKERS`).
    pub(crate) kafka_brokers: String,
    /// A short unique id naming this run's tables, queue and stream.
    pub(crate) run: String,
    /// For setup statements (fills, VACUUM, TRUNCATE, DROP).
    pub(crate) admin: PgPool,
    tables: Mutex<Vec<String>>,
}

impl Bench {
    pub(crate) async fn connect(
        plan: Plan,
        database_url: String,
        amqp_url: String,
        nats_url: String,
    ) -> Res<Self> {
        let admin = connect_pg(&database_url, 2).await?;
        let run = Uuid::new_v4().simple().to_string()[..8].to_owned();
        Ok(Self {
            plan,
            database_url,
            amqp_url,
            nats_url,
            kafka_brokers: String::new(),
            run,
            admin,
            tables: Mutex::new(Vec::new()),
        })
    }

    /// A pool of up to `max` connections, all opened now.
    pub(crate) async fn pool(&self, max: u32) -> Res<PgPool> {
        let pool = connect_pg(&self.database_url, max).await?;
        let mut held = Vec::new();
        for _ in 0..max {
            held.push(
                pool.acquire()
                    .await
                    .context("opening a PostgreSQL connection")?,
            );
        }
        drop(held);
        Ok(pool)
    }

    /// Creates `bench_<run>_<figure>` with the library's migration and
    /// remembers it for [`drop_tables`](Self::drop_tables).
    pub(crate) async fn table(&self, figure: &str) -> Res<String> {
        let name = format!("bench_{}_{figure}", self.run);
        if let Ok(mut tables) = self.tables.lock() {
            tables.push(name.clone());
        }
        outbox::migrate(&self.admin, &name)
            .await
            .context(format!("creating table {name}"))?;
        // Measurements start from a VACUUMed table (see `settle_db`); an
        // autovacuum landing inside one of them would make modes incomparable.
        let sql = format!("ALTER TABLE \"{name}\" SET (autovacuum_enabled = off)");
        self.admin
            .execute(sqlx::AssertSqlSafe(sql))
            .await
            .context(format!("configuring table {name}"))?;
        Ok(name)
    }

    /// Names `bench_<run>_<figure>` and remembers it for
    /// [`drop_tables`](Self::drop_tables), without creating it.
    pub(crate) fn plain_table(&self, figure: &str) -> String {
        let name = format!("bench_{}_{figure}", self.run);
        if let Ok(mut tables) = self.tables.lock() {
            tables.push(name.clone());
        }
        name
    }

    /// Drops every table this run created (and the migration's version tables).
    pub(crate) async fn drop_tables(&self) -> Res<()> {
        let tables = self.tables.lock().map(|t| t.clone()).unwrap_or_default();
        let mut failed = Vec::new();
        for table in tables {
            let sql = format!(
                "DROP TABLE IF EXISTS \"{table}\", \"{table}_schema\", \"{table}_blocked\""
            );
            // A connection killed under us is replaced by the pool: try again.
            let mut last = String::new();
            let mut dropped = false;
            for _ in 0..3 {
                match tokio::time::timeout(
                    Duration::from_secs(30),
                    self.admin.execute(sqlx::AssertSqlSafe(sql.as_str())),
                )
                .await
                {
                    Ok(Ok(_)) => {
                        dropped = true;
                        break;
                    }
                    Ok(Err(err)) => last = err.to_string(),
                    Err(_) => "no answer within 30 s".clone_into(&mut last),
                }
            }
            if !dropped {
                failed.push(format!("{table} ({last})"));
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            bail!("could not drop table(s) {}", failed.join(", "))
        }
    }

    pub(crate) async fn truncate(&self, table: &str) -> Res<()> {
        let sql = format!("TRUNCATE \"{table}\"");
        self.admin
            .execute(sqlx::AssertSqlSafe(sql))
            .await
            .context("TRUNCATE")?;
        Ok(())
    }

    /// Same starting line for every measurement: statistics and hint bits
    /// set, dead tuples gone, and no checkpoint due in the middle of it.
    pub(crate) async fn settle_db(&self, table: &str) -> Res<()> {
        let sql = format!("VACUUM ANALYZE \"{table}\"");
        self.admin
            .execute(sqlx::AssertSqlSafe(sql))
            .await
            .context("VACUUM")?;
        self.checkpoint().await
    }

    pub(crate) async fn checkpoint(&self) -> Res<()> {
        // Needs superuser or pg_checkpoint; without it, measurements are noisier.
        let _ = self.admin.execute("CHECKPOINT").await;
        Ok(())
    }

    /// Inserts `n` pending entries of [`OrderPlaced`] (UUID v7 event ids,
    /// the same JSON serde writes), server side. `status` is `pending` or `dead`.
    pub(crate) async fn fill(&self, table: &str, n: usize, status: &str) -> Res<()> {
        fill_pg(&self.admin, table, n, status).await
    }

    /// Empties `table` and fills it with `n` pending entries, ready to drain.
    pub(crate) async fn refill(&self, table: &str, n: usize) -> Res<()> {
        self.truncate(table).await?;
        self.fill(table, n, "pending").await?;
        self.settle_db(table).await
    }
}

/// A PostgreSQL pool with sqlx's defaults (as a user would have it), failing
/// fast with one line when the server is unreachable.
pub(crate) async fn connect_pg(url: &str, max: u32) -> Res<PgPool> {
    let unreachable = format!(
        "cannot connect to PostgreSQL at {}",
        crate::util::redact(url)
    );
    let options = PgConnectOptions::from_str(url)
        .context(&unreachable)?
        .application_name("outbox-bench");
    // One direct attempt first: its error says why (refused, auth, no
    // such database), where the pool would only time out.
    let probe = tokio::time::timeout(
        Duration::from_secs(10),
        PgConnection::connect_with(&options),
    )
    .await
    .context(&unreachable)?
    .context(&unreachable)?;
    let _ = probe.close().await;
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .context(&unreachable)
}

pub(crate) async fn fill_pg(pool: &PgPool, table: &str, n: usize, status: &str) -> Res<()> {
    // UUID v7: 48 bits of milliseconds (one per row from now on, so ids
    // follow record order), version 7, then random bits with the variant.
    let sql = format!(
        "INSERT INTO \"{table}\" (event_id, name, payload, status, attempts, last_error) \
         SELECT (substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-7' || substr(r, 16, 3) || '-' \
                 || substr(r, 20, 17))::uuid, \
                $3, \
                ('{{\"order_id\":' || g || ',\"customer\":\"customer-' || g || '\",\"amount_cents\":' \
                 || (g * 7) || ',\"seq\":' || g || '}}')::json, \
                $4, $5, $6 \
         FROM (SELECT g, lpad(to_hex($2::bigint + g), 12, '0') AS h, gen_random_uuid()::text AS r \
               FROM generate_series(1, $1::bigint) AS g) AS s"
    );
    let dead = status == "dead";
    sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
        .bind(i64::try_from(n).unwrap_or(i64::MAX))
        .bind(Utc::now().timestamp_millis())
        .bind(OrderPlaced::NAME)
        .bind(status)
        .bind(if dead { 3_i32 } else { 0 })
        .bind(dead.then_some("rejected by the benchmark"))
        .execute(pool)
        .await
        .context(format!("filling {table} with {n} entries"))?;
    Ok(())
}

/// The raw loop's SQL: the same statements a careful hand-written relay
/// would use (and the library uses). The claim takes entries past `$4` only,
/// so a loop draining a backlog can skip the index entries of the rows it
/// already drained.
#[derive(Debug, Clone)]
pub(crate) struct RawSql {
    pub(crate) claim: Arc<str>,
    pub(crate) delete: Arc<str>,
    /// The single-transaction design: lock due rows, then delete them.
    pub(crate) take: Arc<str>,
    pub(crate) delete_taken: Arc<str>,
    pub(crate) insert_one: Arc<str>,
    pub(crate) insert_one_notify: Arc<str>,
    pub(crate) insert_many: Arc<str>,
    pub(crate) insert_many_notify: Arc<str>,
    pub(crate) channel: Arc<str>,
}

impl RawSql {
    pub(crate) fn new(table: &str) -> Self {
        let t = format!("\"{table}\"");
        let one = format!("INSERT INTO {t} (event_id, name, payload) VALUES ($1, $2, $3::json)");
        let many = format!(
            "INSERT INTO {t} (event_id, name, payload) \
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[]::json[])"
        );
        Self {
            // The lease is not worth a disk flush: commit it asynchronously.
            claim: format!(
                "WITH cfg AS (SELECT set_config('synchronous_commit', 'off', true)), \
                 due AS (SELECT c.id FROM {t} c WHERE c.status = 'pending' AND c.id > $4 \
                 AND c.available_at <= now() ORDER BY c.id LIMIT $1 FOR UPDATE SKIP LOCKED) \
                 UPDATE {t} AS o SET claim_token = $2, available_at = now() + $3 * interval '1 millisecond' \
                 FROM due, cfg WHERE o.id = due.id \
                 RETURNING o.id, o.event_id, o.name, o.payload::text, o.stream_key, o.headers::text, \
                 o.correlation_id, o.causation_id, o.created_at, o.attempts"
            )
            .into(),
            delete: format!("DELETE FROM {t} WHERE id = ANY($1) AND claim_token = $2").into(),
            take: format!(
                "SELECT id, event_id, name, payload::text, stream_key, headers::text, \
                 correlation_id, causation_id, created_at, attempts FROM {t} \
                 WHERE status = 'pending' AND id > $2 AND available_at <= now() \
                 ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"
            )
            .into(),
            delete_taken: format!("DELETE FROM {t} WHERE id = ANY($1)").into(),
            insert_one_notify: format!(
                "WITH ins AS ({one} RETURNING 1) SELECT pg_notify($4, '') WHERE EXISTS (SELECT 1 FROM ins)"
            )
            .into(),
            insert_many_notify: format!(
                "WITH ins AS ({many} RETURNING 1) SELECT pg_notify($4, '') WHERE EXISTS (SELECT 1 FROM ins)"
            )
            .into(),
            insert_one: one.into(),
            insert_many: many.into(),
            channel: format!("outbox_{table}").into(),
        }
    }
}

/// One claimed row, as the raw loop reads it (by column index).
#[derive(Debug)]
pub(crate) struct RawRow {
    pub(crate) id: i64,
    pub(crate) event_id: Uuid,
    pub(crate) name: String,
    pub(crate) payload: String,
    pub(crate) stream_key: Option<String>,
    pub(crate) headers: String,
    pub(crate) correlation_id: Option<Uuid>,
    pub(crate) causation_id: Option<Uuid>,
    pub(crate) created_at: DateTime<Utc>,
    #[allow(dead_code)]
    // Reason: read as the library reads it (a handler's attempt number); no sink here needs it.
    pub(crate) attempts: i32,
}

pub(crate) fn decode_row(row: &PgRow) -> Res<RawRow> {
    let read = || -> Result<RawRow, sqlx::Error> {
        Ok(RawRow {
            id: row.try_get(0)?,
            event_id: row.try_get(1)?,
            name: row.try_get(2)?,
            payload: row.try_get(3)?,
            stream_key: row.try_get(4)?,
            headers: row.try_get(5)?,
            correlation_id: row.try_get(6)?,
            causation_id: row.try_get(7)?,
            created_at: row.try_get(8)?,
            attempts: row.try_get(9)?,
        })
    };
    read().context("decoding a claimed row")
}

/// One claim of the raw loop on its own connection.
pub(crate) async fn raw_claim(
    conn: &mut PoolConnection<Postgres>,
    sql: &RawSql,
    token: Uuid,
    after: i64,
) -> Res<Vec<RawRow>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql.claim.to_string()))
        .bind(i64::try_from(BATCH).unwrap_or(i64::MAX))
        .bind(token)
        .bind(LEASE_MS)
        .bind(after)
        .fetch_all(&mut **conn)
        .await
        .context("raw claim")?;
    let mut rows = rows.iter().map(decode_row).collect::<Res<Vec<_>>>()?;
    rows.sort_unstable_by_key(|row| row.id);
    Ok(rows)
}

pub(crate) async fn raw_delete(
    conn: &mut PoolConnection<Postgres>,
    sql: &RawSql,
    ids: &[i64],
    token: Uuid,
) -> Res<()> {
    sqlx::query(sqlx::AssertSqlSafe(sql.delete.to_string()))
        .bind(ids)
        .bind(token)
        .execute(&mut **conn)
        .await
        .context("raw delete")?;
    Ok(())
}

/// Counts published events; says when all are done, or why it stopped early.
#[derive(Clone)]
pub(crate) struct Counter {
    inner: Arc<CounterInner>,
}

struct CounterInner {
    published: AtomicUsize,
    target: usize,
    stopped: AtomicBool,
    done: watch::Sender<bool>,
    failure: Mutex<Option<String>>,
    /// When a publisher was first called.
    first: OnceLock<Instant>,
}

impl Counter {
    pub(crate) fn new(target: usize) -> Self {
        Self {
            inner: Arc::new(CounterInner {
                published: AtomicUsize::new(0),
                target,
                stopped: AtomicBool::new(false),
                done: watch::channel(false).0,
                failure: Mutex::new(None),
                first: OnceLock::new(),
            }),
        }
    }

    pub(crate) fn add(&self, n: usize) {
        let inner = &*self.inner;
        if inner.published.fetch_add(n, Ordering::Relaxed) + n >= inner.target {
            self.stop();
        }
    }

    /// Marks a publisher call (the first one starts the steady-state clock).
    pub(crate) fn begin(&self) {
        if self.inner.first.get().is_none() {
            let _ = self.inner.first.set(Instant::now());
        }
    }

    /// The drain's timing, given when it started and ended.
    pub(crate) fn timing(&self, start: Instant, end: Instant) -> Timing {
        let first = self.inner.first.get().copied().unwrap_or(start);
        Timing {
            total: end - start,
            steady: end - first,
        }
    }

    pub(crate) fn published(&self) -> usize {
        self.inner.published.load(Ordering::Relaxed)
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::Relaxed)
    }

    fn stop(&self) {
        self.inner.stopped.store(true, Ordering::Relaxed);
        self.inner.done.send_replace(true);
    }

    /// Stops everything with an error (kept: the first one).
    pub(crate) fn fail(&self, why: impl Into<String>) {
        if let Ok(mut failure) = self.inner.failure.lock() {
            failure.get_or_insert_with(|| why.into());
        }
        self.stop();
    }

    /// Completes when the target is reached or the run failed.
    pub(crate) fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.inner.done.subscribe();
        async move {
            let _ = rx.wait_for(|done| *done).await;
        }
    }

    /// `Ok` if every event was published.
    pub(crate) fn check(&self, what: &str) -> Res<()> {
        if let Some(why) = self.inner.failure.lock().ok().and_then(|f| f.clone()) {
            bail!("{what}: {why}");
        }
        let published = self.published();
        if published < self.inner.target {
            bail!(
                "{what}: only {published} of {} events were published",
                self.inner.target
            );
        }
        Ok(())
    }
}

/// How long a drain took.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// From the start of the relay (or raw loop) to its end.
    pub(crate) total: Duration,
    /// From the first publisher call to the end: the drain of a relay that
    /// is already running, without its start-up (LISTEN connection, first
    /// stats query, first claim).
    pub(crate) steady: Duration,
}

impl Timing {
    pub(crate) fn startup(&self) -> Duration {
        self.total.saturating_sub(self.steady)
    }
}

/// The library's no-op publisher: a typed publisher that counts.
pub(crate) struct Noop(pub(crate) Counter);

impl Publisher<OrderPlaced> for Noop {
    async fn publish(&self, event: &Recorded<OrderPlaced>) -> PublishResult {
        self.0.begin();
        std::hint::black_box(event.event());
        self.0.add(1);
        Ok(())
    }

    async fn publish_batch(&self, events: &[Recorded<OrderPlaced>]) -> Vec<PublishResult> {
        self.0.begin();
        std::hint::black_box(events);
        self.0.add(events.len());
        vec![Ok(()); events.len()]
    }
}

/// A library publisher that counts what the publisher it wraps published.
pub(crate) struct Counted<P>(pub(crate) P, pub(crate) Counter);

impl<P: RawPublisher> RawPublisher for Counted<P> {
    async fn publish_raw(&self, entry: &Entry) -> PublishResult {
        self.1.begin();
        let result = self.0.publish_raw(entry).await;
        self.tally(std::slice::from_ref(&result));
        result
    }

    async fn publish_raw_batch(&self, entries: &[Entry]) -> Vec<PublishResult> {
        self.1.begin();
        let results = self.0.publish_raw_batch(entries).await;
        self.tally(&results);
        results
    }
}

impl<P> Counted<P> {
    fn tally(&self, results: &[PublishResult]) {
        let ok = results.iter().filter(|r| r.is_ok()).count();
        self.1.add(ok);
        if let Some(Err(err)) = results.iter().find(|r| r.is_err()) {
            self.1
                .fail(format!("the library's publisher failed: {err}"));
        }
    }
}

/// How long a drain of `n` may take before the run gives up on it.
pub(crate) fn drain_deadline(n: usize) -> Duration {
    Duration::from_mins(1) + Duration::from_millis(u64::try_from(n).unwrap_or(u64::MAX))
}

/// Drains with one library relay per `Publishers` (run as users run it:
/// `outbox.relay(publishers).in_flight(in_flight).run(shutdown)`), until
/// `counter` is done.
pub(crate) async fn drain_library(
    outbox: &Outbox<Postgres>,
    relays: Vec<Publishers>,
    in_flight: usize,
    counter: &Counter,
    n: usize,
) -> Res<Timing> {
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(relays.len());
    for publishers in relays {
        let relay = outbox.relay(publishers).in_flight(in_flight);
        tasks.push(tokio::spawn(relay.run(counter.stopped())));
    }
    if tokio::time::timeout(drain_deadline(n), counter.stopped())
        .await
        .is_err()
    {
        counter.fail(format!("timed out after {:?}", drain_deadline(n)));
    }
    for task in tasks {
        task.await.context("a relay task")?;
    }
    let timing = counter.timing(start, Instant::now());
    counter.check("library drain")?;
    Ok(timing)
}

/// Where a raw loop's next claim starts: past a full batch, else from the
/// first entry (as the library's relay loop does).
fn next_after(rows: &[RawRow]) -> i64 {
    if rows.len() >= BATCH {
        rows.last().map_or(0, |row| row.id)
    } else {
        0
    }
}

/// How a raw loop drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Design {
    /// The library's design by hand: claim with a lease (no flush), publish
    /// with no transaction open, delete checking the claim token.
    Lease,
    /// The simpler design the library must come close to: one transaction
    /// per batch that locks the due rows (`FOR UPDATE SKIP LOCKED`),
    /// "publishes" with the transaction open, deletes them and commits. No
    /// lease, no token: the ceiling, not a design to copy.
    OneTransaction,
}

/// Drains with `sinks.len()` raw loops of `design`, each on its own connection.
pub(crate) async fn drain_raw(
    pool: &PgPool,
    sql: &RawSql,
    design: Design,
    sinks: Vec<Sink>,
    counter: &Counter,
) -> Res<Timing> {
    let mut conns = Vec::with_capacity(sinks.len());
    for _ in 0..sinks.len() {
        conns.push(pool.acquire().await.context("raw loop connection")?);
    }
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(sinks.len());
    for (conn, sink) in conns.into_iter().zip(sinks) {
        let (sql, counter) = (sql.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            match design {
                Design::Lease => raw_worker(conn, sql, sink, counter).await,
                Design::OneTransaction => one_transaction_worker(conn, sql, sink, counter).await,
            }
        }));
    }
    for task in tasks {
        if let Err(err) = task.await.context("a raw loop task")? {
            counter.fail(err.to_string());
        }
    }
    let timing = counter.timing(start, Instant::now());
    counter.check("raw drain")?;
    Ok(timing)
}

/// [`Design::OneTransaction`]: `BEGIN; SELECT .. FOR UPDATE SKIP LOCKED;`
/// publish; `DELETE .. = ANY; COMMIT`, past the last full batch as the other
/// loops (so it never walks the index entries of rows it drained).
pub(crate) async fn one_transaction_worker(
    mut conn: PoolConnection<Postgres>,
    sql: RawSql,
    mut sink: Sink,
    counter: Counter,
) -> Res<()> {
    let mut after = 0;
    while !counter.is_stopped() {
        let mut tx = conn.begin().await.context("BEGIN")?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql.take.to_string()))
            .bind(i64::try_from(BATCH).unwrap_or(i64::MAX))
            .bind(after)
            .fetch_all(&mut *tx)
            .await
            .context("locking a batch")?;
        let rows = rows.iter().map(decode_row).collect::<Res<Vec<_>>>()?;
        if rows.is_empty() {
            tx.commit().await.context("COMMIT")?;
            if after == 0 {
                break;
            }
            after = 0;
            continue;
        }
        after = next_after(&rows);
        counter.begin();
        sink.publish(&rows).await?;
        let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
        sqlx::query(sqlx::AssertSqlSafe(sql.delete_taken.to_string()))
            .bind(&ids)
            .execute(&mut *tx)
            .await
            .context("deleting a batch")?;
        tx.commit().await.context("COMMIT")?;
        counter.add(rows.len());
    }
    Ok(())
}

/// The raw relay: claim a batch (lease, no flush), publish it, delete it.
/// After a full batch the next claim starts past it, as the library's relay
/// loop does; an empty bounded claim looks once more from the start.
pub(crate) async fn raw_worker(
    mut conn: PoolConnection<Postgres>,
    sql: RawSql,
    mut sink: Sink,
    counter: Counter,
) -> Res<()> {
    let mut after = 0;
    while !counter.is_stopped() {
        let token = Uuid::new_v4();
        let rows = raw_claim(&mut conn, &sql, token, after).await?;
        if rows.is_empty() {
            if after == 0 {
                break;
            }
            after = 0;
            continue;
        }
        after = next_after(&rows);
        counter.begin();
        sink.publish(&rows).await?;
        let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
        raw_delete(&mut conn, &sql, &ids, token).await?;
        counter.add(rows.len());
    }
    Ok(())
}

/// The order of the modes in repetition `rep`: rotated each time, so no
/// mode always runs first (drift, caches, autovacuum) .
pub(crate) fn order(modes: usize, rep: usize) -> impl Iterator<Item = usize> {
    (0..modes).map(move |i| (i + rep) % modes)
}

/// Turns an error from a library call into ours.
pub(crate) fn lib<T>(result: outbox::Result<T>, what: &str) -> Res<T> {
    result.map_err(|err| Error::new(format!("{what}: {err}")))
}
