//! The [`Outbox`] handle: building it, recording events, dead letters,
//! discarding pending entries.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use crate::entry::Metadata;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::registry;
use crate::relay::Backoff;
use crate::store::{Backend, DeadLetter, Gauges, NewRow, SqlOptions, Stats, TableName, Which};

type NameFilter = dyn Fn(&str) -> bool + Send + Sync;

/// The outbox of one table in one database: records events inside the
/// caller's transactions and relays them to [`Publishers`](crate::Publishers).
///
/// Cheap to clone (an `Arc` inside). Build it with [`Outbox::builder`].
pub struct Outbox<DB: Backend> {
    pub(crate) inner: Arc<Inner<DB>>,
}

pub(crate) struct Inner<DB: Backend> {
    pub(crate) pool: sqlx::Pool<DB>,
    pub(crate) table: TableName,
    pub(crate) sql: DB::Sql,
    filter: Option<Box<NameFilter>>,
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Backoff,
    pub(crate) batch_limit: usize,
    pub(crate) lease: Duration,
    pub(crate) unroutable_delay: Duration,
    max_payload: Option<usize>,
    pub(crate) options: SqlOptions,
    pub(crate) retention: Option<Duration>,
    pub(crate) publish_timeout: Option<Duration>,
}

impl<DB: Backend> Clone for Outbox<DB> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<DB: Backend> fmt::Debug for Outbox<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox")
            .field("table", &self.inner.table)
            .field("max_attempts", &self.inner.max_attempts)
            .field("backoff", &self.inner.backoff)
            .field("batch_limit", &self.inner.batch_limit)
            .field("lease", &self.inner.lease)
            .finish_non_exhaustive()
    }
}

/// What [`Outbox::record`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recording {
    /// A row was written in the caller's transaction, with this event id.
    Stored {
        /// The id that travels with the event to the broker.
        event_id: Uuid,
    },
    /// No row was written.
    Filtered(FilterReason),
}

impl Recording {
    /// The event id, if a row was written.
    #[must_use]
    pub fn event_id(self) -> Option<Uuid> {
        match self {
            Self::Stored { event_id } => Some(event_id),
            Self::Filtered(_) => None,
        }
    }

    /// `true` if no row was written.
    #[must_use]
    pub fn is_filtered(self) -> bool {
        matches!(self, Self::Filtered(_))
    }
}

/// Why an event was not written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FilterReason {
    /// The type is `#[outbox(skip)]`.
    Skipped,
    /// The outbox's name filter said no.
    NameFilter,
    /// The type's `publish_if` said no for this value.
    PublishIf,
}

/// Configures an [`Outbox`]; see each method for its default.
#[must_use]
pub struct OutboxBuilder<DB: Backend> {
    pool: sqlx::Pool<DB>,
    table: String,
    filter: Option<Box<NameFilter>>,
    max_attempts: u32,
    backoff: Backoff,
    batch_limit: usize,
    lease: Duration,
    unroutable_delay: Duration,
    max_payload: Option<usize>,
    migrate: bool,
    options: SqlOptions,
    retention: Option<Duration>,
    publish_timeout: Option<Duration>,
}

impl<DB: Backend> fmt::Debug for OutboxBuilder<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxBuilder")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl<DB: Backend> Outbox<DB> {
    /// Starts configuring the outbox that lives in `pool`'s database.
    pub fn builder(pool: sqlx::Pool<DB>) -> OutboxBuilder<DB> {
        OutboxBuilder {
            pool,
            table: "outbox".to_owned(),
            filter: None,
            max_attempts: 3,
            backoff: Backoff::default(),
            batch_limit: 100,
            lease: Duration::from_secs(30),
            unroutable_delay: Duration::from_secs(30),
            max_payload: None,
            migrate: true,
            options: SqlOptions {
                ordered: false,
                notify: true,
                keep_published: false,
            },
            retention: None,
            publish_timeout: Some(Duration::from_secs(10)),
        }
    }
}

impl<DB: Backend> OutboxBuilder<DB> {
    /// The table name (default `outbox`): an identifier, or `schema.table`
    /// on PostgreSQL. Anything else fails the build with
    /// [`Error::InvalidTableName`].
    pub fn table(mut self, name: impl Into<String>) -> Self {
        self.table = name.into();
        self
    }

    /// A filter on event names, applied when an event is recorded (the
    /// reference's filterer): an event whose name it rejects writes no row.
    pub fn filter(mut self, filter: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        self.filter = Some(Box::new(filter));
        self
    }

    /// Attempts per entry before it becomes a dead letter (default 3, at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The delay before a rejected entry is tried again (default:
    /// exponential from 1 s, doubling, at most 5 min).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Entries claimed per run by the relay loop (default 100).
    pub fn batch_limit(mut self, limit: usize) -> Self {
        self.batch_limit = limit.max(1);
        self
    }

    /// How long a claim lasts (default 30 s). A relay renews the claims of a
    /// batch in flight every third of it, so a slow publisher keeps its
    /// entries; a relay that dies holding a claim delays its entries by at
    /// most this.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How long an entry no publisher claims waits before it is offered
    /// again (default 30 s). It costs no attempt.
    pub fn unroutable_delay(mut self, delay: Duration) -> Self {
        self.unroutable_delay = delay;
        self
    }

    /// The largest payload, in bytes of JSON, that [`Outbox::record`]
    /// accepts (default: no limit); larger ones fail with [`Error::PayloadTooLarge`].
    pub fn max_payload_bytes(mut self, max: usize) -> Self {
        self.max_payload = Some(max);
        self
    }

    /// Whether [`build`](Self::build) creates or upgrades the table (default
    /// `true`). Turn it off when the relay's database role may not run DDL,
    /// and call [`crate::migrate`] from a deploy step instead.
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }

    /// Per-stream order (default off): an entry with a stream key is not
    /// dispatched while an earlier entry of the same stream is claimed,
    /// waiting for its next attempt, or dead. Other streams go on. A dead
    /// letter therefore holds back the rest of its stream until it is
    /// requeued or purged, so a stream is never silently reordered.
    pub fn ordered_streams(mut self, ordered: bool) -> Self {
        self.options.ordered = ordered;
        self
    }

    /// PostgreSQL only (default on): `record` notifies on the outbox's
    /// channel (`outbox_<table>`, delivered at commit) and idle relays LISTEN
    /// on it, so a committed event is published within milliseconds instead
    /// of at the next poll. Turn it off behind PgBouncer in transaction
    /// mode, where LISTEN does not work; polling then does it all.
    pub fn notify(mut self, notify: bool) -> Self {
        self.options.notify = notify;
        self
    }

    /// Keep published entries (status `published`, with `published_at`) for
    /// `retention` instead of deleting them at once (the default). The relay
    /// loop deletes expired ones in small batches; [`Outbox::cleanup`] does
    /// it on demand.
    pub fn keep_published(mut self, retention: Duration) -> Self {
        self.options.keep_published = true;
        self.retention = Some(retention);
        self
    }

    /// The longest one publish may take (default 10 s; `None`: no limit). A
    /// publish that takes longer is abandoned and counts as
    /// [`transient`](crate::PublishError::transient): an attempt if the
    /// destination answers other entries, none if it answers nothing (after
    /// 3 timeouts in a row with no answer the publisher is blocked). It
    /// bounds each closure call and each `publish` made by the default
    /// `publish_batch`; a publisher that overrides `publish_batch` (the
    /// ready broker adapters) bounds its own calls.
    pub fn publish_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// Validates the configuration, checks that no two event types share a
    /// name ([`Error::DuplicateEventName`]), runs the migrations, and checks
    /// that the table is an outbox table at the current schema version
    /// ([`Error::NotAnOutboxTable`] says what to run otherwise).
    pub async fn build(self) -> Result<Outbox<DB>> {
        registry::check()?;
        let table = TableName::new(&self.table)?;
        if table.has_schema() && !DB::SCHEMAS {
            return Err(Error::InvalidTableName {
                name: self.table,
                reason: "this database takes no schema-qualified table names".to_owned(),
            });
        }
        if self.migrate
            && let Err(err) = DB::migrate(&self.pool, &table).await
        {
            // A table of the same name that is not ours makes the migration
            // fail on a missing column: say so rather than that.
            return Err(match DB::check(&self.pool, &table).await {
                Err(Error::NotAnOutboxTable { table, reason }) => Error::NotAnOutboxTable {
                    table,
                    reason: format!("{reason} (migrating it failed: {err})"),
                },
                _ => err,
            });
        }
        DB::check(&self.pool, &table).await?;
        Ok(Outbox {
            inner: Arc::new(Inner {
                sql: DB::sql(&table, self.options),
                pool: self.pool,
                table,
                filter: self.filter,
                max_attempts: self.max_attempts,
                backoff: self.backoff,
                batch_limit: self.batch_limit,
                lease: self.lease,
                unroutable_delay: self.unroutable_delay,
                max_payload: self.max_payload,
                options: self.options,
                retention: self.retention,
                publish_timeout: self.publish_timeout,
            }),
        })
    }
}

/// Creates or upgrades the outbox table `table` in `pool`'s database. Safe
/// to call concurrently and repeatedly.
pub async fn migrate<DB: Backend>(pool: &sqlx::Pool<DB>, table: &str) -> Result<()> {
    let name = TableName::new(table)?;
    DB::migrate(pool, &name).await
}

/// Events gathered for one multi-row insert: see [`Outbox::batch`].
#[must_use]
pub struct Batch<'o, DB: Backend> {
    outbox: &'o Outbox<DB>,
    rows: Vec<NewRow>,
}

impl<DB: Backend> fmt::Debug for Batch<'_, DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("rows", &self.rows.len())
            .finish()
    }
}

impl<DB: Backend> Batch<'_, DB> {
    /// Adds an event (filters apply now). Events of different types mix freely.
    pub fn push<E: Event>(&mut self, event: &E) -> Result<Recording> {
        self.push_with(event, Metadata::default())
    }

    /// Adds an event with metadata.
    pub fn push_with<E: Event>(&mut self, event: &E, meta: Metadata) -> Result<Recording> {
        match self.outbox.prepare(event, meta)? {
            Ok(row) => {
                let event_id = row.event_id;
                self.rows.push(row);
                Ok(Recording::Stored { event_id })
            }
            Err(reason) => Ok(Recording::Filtered(reason)),
        }
    }

    /// How many rows the batch will write.
    #[must_use]
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// `true` if the batch will write nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Writes every row in as few statements as the database allows,
    /// inside the caller's transaction (`&mut *tx`) or connection.
    pub async fn record(self, conn: &mut DB::Connection) -> Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        DB::insert(conn, &self.outbox.inner.sql, &self.rows).await
    }
}

impl<DB: Backend> Outbox<DB> {
    /// Records `event` inside the caller's transaction: pass `&mut *tx` for
    /// a `sqlx::Transaction` (or any connection of this database). The row
    /// commits if and only if the transaction commits.
    ///
    /// Returns [`Recording::Filtered`] without writing when the type is
    /// `skip`, the name filter rejects it, or `publish_if` says no.
    pub async fn record<E: Event>(
        &self,
        conn: &mut DB::Connection,
        event: &E,
    ) -> Result<Recording> {
        self.record_with(conn, event, Metadata::default()).await
    }

    /// [`record`](Self::record) with metadata: stream key, headers,
    /// correlation and causation ids.
    pub async fn record_with<E: Event>(
        &self,
        conn: &mut DB::Connection,
        event: &E,
        meta: Metadata,
    ) -> Result<Recording> {
        match self.prepare(event, meta)? {
            Ok(row) => {
                let event_id = row.event_id;
                DB::insert(conn, &self.inner.sql, std::slice::from_ref(&row)).await?;
                Ok(Recording::Stored { event_id })
            }
            Err(reason) => Ok(Recording::Filtered(reason)),
        }
    }

    /// Records many events of one type in one multi-row insert.
    pub async fn record_all<'e, E: Event>(
        &self,
        conn: &mut DB::Connection,
        events: impl IntoIterator<Item = &'e E>,
    ) -> Result<Vec<Recording>> {
        let mut batch = self.batch();
        let recordings = events
            .into_iter()
            .map(|event| batch.push(event))
            .collect::<Result<Vec<_>>>()?;
        batch.record(conn).await?;
        Ok(recordings)
    }

    /// Starts a batch of events (of any types) to write in one multi-row insert.
    pub fn batch(&self) -> Batch<'_, DB> {
        Batch {
            outbox: self,
            rows: Vec::new(),
        }
    }

    /// Applies the filters and serializes; `Ok(Err(reason))` means filtered.
    fn prepare<E: Event>(
        &self,
        event: &E,
        mut meta: Metadata,
    ) -> Result<Result<NewRow, FilterReason>> {
        if E::SKIP {
            return Ok(Err(FilterReason::Skipped));
        }
        if let Some(filter) = &self.inner.filter
            && !filter(E::NAME)
        {
            return Ok(Err(FilterReason::NameFilter));
        }
        if !event.publish_if() {
            return Ok(Err(FilterReason::PublishIf));
        }
        let payload = serde_json::to_string(event).map_err(|source| Error::Encode {
            name: E::NAME,
            source,
        })?;
        if let Some(max) = self.inner.max_payload
            && payload.len() > max
        {
            return Err(Error::PayloadTooLarge {
                name: E::NAME,
                size: payload.len(),
                max,
            });
        }
        // Feature `opentelemetry`: the current span's `traceparent`/`tracestate`.
        crate::trace::record_context(&mut meta.headers);
        let headers = if meta.headers.is_empty() {
            "{}".to_owned()
        } else {
            serde_json::to_string(&meta.headers).map_err(|source| Error::Encode {
                name: E::NAME,
                source,
            })?
        };
        Ok(Ok(NewRow {
            event_id: Uuid::now_v7(),
            name: E::NAME,
            version: i32::try_from(E::VERSION).unwrap_or(i32::MAX),
            payload,
            stream_key: meta.stream_key,
            headers,
            correlation_id: meta.correlation_id,
            causation_id: meta.causation_id,
        }))
    }

    /// The configured batch limit (entries per run of the relay loop).
    #[must_use]
    pub fn batch_limit(&self) -> usize {
        self.inner.batch_limit
    }

    /// The table, as validated.
    #[must_use]
    pub fn table(&self) -> &TableName {
        &self.inner.table
    }

    /// Pending, retrying, dead and kept-published counts and the age of the
    /// oldest pending entry, in total and per event name; also sets the
    /// `outbox_pending`, `outbox_dead` and `outbox_oldest_pending_age_seconds`
    /// gauges (labelled `table`) of the `metrics` facade.
    pub async fn stats(&self) -> Result<Stats> {
        let stats = DB::stats(&self.inner.pool, &self.inner.sql).await?;
        self.set_gauges(stats.pending, stats.dead, stats.oldest_pending_age);
        Ok(stats)
    }

    /// The pending count, the dead count and the age of the oldest pending
    /// entry (the totals of [`stats`](Self::stats)), read from the pending
    /// and dead entries alone, through their indexes: kept published
    /// entries ([`OutboxBuilder::keep_published`]) cost nothing here. Sets
    /// the same `metrics` gauges as `stats`; the relay loop calls it every
    /// [`stats_interval`](crate::Relay::stats_interval).
    pub async fn gauges(&self) -> Result<Gauges> {
        let gauges = DB::gauges(&self.inner.pool, &self.inner.sql).await?;
        self.set_gauges(gauges.pending, gauges.dead, gauges.oldest_pending_age);
        Ok(gauges)
    }

    /// Sets the `outbox_pending`, `outbox_dead` and
    /// `outbox_oldest_pending_age_seconds` gauges of this table.
    fn set_gauges(&self, pending: u64, dead: u64, oldest: Option<Duration>) {
        let table = self.inner.table.to_string();
        #[allow(clippy::cast_precision_loss)] // Reason: gauges are f64; counts far below 2^52.
        {
            metrics::gauge!("outbox_pending", "table" => table.clone()).set(pending as f64);
            metrics::gauge!("outbox_dead", "table" => table.clone()).set(dead as f64);
        }
        metrics::gauge!("outbox_oldest_pending_age_seconds", "table" => table)
            .set(oldest.unwrap_or_default().as_secs_f64());
    }

    /// Deletes published entries older than the retention period (see
    /// [`OutboxBuilder::keep_published`]) in batches of `batch`, pausing
    /// between batches so a large backlog never holds locks for long.
    /// Returns how many were deleted; does nothing without retention.
    pub async fn cleanup(&self, batch: usize) -> Result<u64> {
        let Some(retention) = self.inner.retention else {
            return Ok(0);
        };
        let batch = batch.max(1);
        let mut total = 0;
        loop {
            let n = DB::cleanup(&self.inner.pool, &self.inner.sql, retention, batch).await?;
            total += n;
            if n < batch as u64 {
                break;
            }
            tokio::task::yield_now().await;
        }
        if total > 0 {
            tracing::debug!(table = %self.inner.table, deleted = total, "published entries cleaned up");
        }
        Ok(total)
    }

    /// Up to `limit` dead letters, oldest first.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        DB::dead_letters(&self.inner.pool, &self.inner.sql, Which::All, limit).await
    }

    /// Up to `limit` dead letters named `name`, oldest first.
    pub async fn dead_letters_named(&self, name: &str, limit: usize) -> Result<Vec<DeadLetter>> {
        DB::dead_letters(
            &self.inner.pool,
            &self.inner.sql,
            Which::Name(name.to_owned()),
            limit,
        )
        .await
    }

    /// The dead letter `event_id`, if there is one.
    pub async fn dead_letter(&self, event_id: Uuid) -> Result<Option<DeadLetter>> {
        let mut found =
            DB::dead_letters(&self.inner.pool, &self.inner.sql, Which::One(event_id), 1).await?;
        Ok(found.pop())
    }

    /// Makes the dead letter `event_id` pending again with zero attempts (its
    /// last error is kept for the record); `false` if there is no such dead letter.
    pub async fn requeue(&self, event_id: Uuid) -> Result<bool> {
        Ok(DB::requeue(&self.inner.pool, &self.inner.sql, Which::One(event_id)).await? > 0)
    }

    /// Makes every dead letter pending again; returns how many.
    pub async fn requeue_all(&self) -> Result<u64> {
        DB::requeue(&self.inner.pool, &self.inner.sql, Which::All).await
    }

    /// Makes every dead letter named `name` pending again; returns how many.
    pub async fn requeue_named(&self, name: &str) -> Result<u64> {
        DB::requeue(
            &self.inner.pool,
            &self.inner.sql,
            Which::Name(name.to_owned()),
        )
        .await
    }

    /// Deletes the dead letter `event_id` for good; `false` if there is none.
    pub async fn purge(&self, event_id: Uuid) -> Result<bool> {
        Ok(DB::purge(&self.inner.pool, &self.inner.sql, Which::One(event_id)).await? > 0)
    }

    /// Deletes every dead letter for good; returns how many.
    pub async fn purge_all(&self) -> Result<u64> {
        DB::purge(&self.inner.pool, &self.inner.sql, Which::All).await
    }

    /// Deletes the dead letters that died more than `age` ago; returns how many.
    pub async fn purge_dead_for(&self, age: Duration) -> Result<u64> {
        DB::purge(&self.inner.pool, &self.inner.sql, Which::DeadFor(age)).await
    }

    /// Deletes the pending entry `event_id` for good, so it is never
    /// published: for an event recorded by mistake, or one no publisher
    /// will ever take (unroutable). `false` if there is no such pending
    /// entry, or if a relay holds a live claim on it right now.
    ///
    /// An entry a relay has claimed and not yet settled (its lease has not
    /// run out) is left alone: it may be on its way to the broker, and the
    /// relay's outcome decides what becomes of it (published and gone, or
    /// pending again after a failure, when a second `discard` takes it).
    /// An entry whose lease expired (its relay died) is discarded. Dead
    /// letters and kept published entries are never touched (see
    /// [`purge`](Self::purge) for dead letters). Logged at `info` with the
    /// count.
    pub async fn discard(&self, event_id: Uuid) -> Result<bool> {
        Ok(DB::discard(&self.inner.pool, &self.inner.sql, Which::One(event_id)).await? > 0)
    }

    /// Deletes every pending entry named `name` for good; returns how
    /// many. Entries under a live claim are left to their relay, as in
    /// [`discard`](Self::discard); dead letters of that name stay (see
    /// [`purge`](Self::purge)). Events of that name recorded afterwards are
    /// recorded as usual: filter the name when building the outbox to stop
    /// them (see [`OutboxBuilder::filter`]).
    pub async fn discard_named(&self, name: &str) -> Result<u64> {
        DB::discard(
            &self.inner.pool,
            &self.inner.sql,
            Which::Name(name.to_owned()),
        )
        .await
    }
}
