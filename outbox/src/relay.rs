//! Relaying: [`Outbox::run`] processes one batch; [`Relay`] loops.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use tokio::time::Instant;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use sqlx::pool::PoolConnection;
use tracing::Instrument;
use uuid::Uuid;

use crate::entry::Entry;
use crate::error::{Error, Result};
use crate::handle::Outbox;
use crate::publisher::{Delivery, Judgement, PUBLISH_TIMEOUT, Publishers, Route};
use crate::store::{Backend, Claim, ClaimedRow, Settlement, Update};

/// The delay before a rejected entry is tried again, by attempts made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::exponential(Duration::from_secs(1), Duration::from_mins(5))
    }
}

impl Backoff {
    /// `base` after the first failure, doubling after each further one, never over `max`.
    #[must_use]
    pub fn exponential(base: Duration, max: Duration) -> Self {
        Self { base, max }
    }

    /// The same delay after every failure.
    #[must_use]
    pub fn fixed(delay: Duration) -> Self {
        Self {
            base: delay,
            max: delay,
        }
    }

    /// No delay: a failed entry is due again at once (useful in tests).
    #[must_use]
    pub fn none() -> Self {
        Self::fixed(Duration::ZERO)
    }

    /// The delay after `attempts` failed attempts (1 = the first failure).
    #[must_use]
    pub fn delay(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(31);
        self.base
            .checked_mul(1 << doublings)
            .map_or(self.max, |d| d.min(self.max))
    }
}

/// What one [`Outbox::run`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// Entries claimed.
    pub claimed: usize,
    /// Entries published and done with.
    pub published: usize,
    /// Entries that failed an attempt and will be tried again.
    pub retried: usize,
    /// Entries that became dead letters (last attempt failed, or undecodable).
    pub dead: usize,
    /// Entries whose name has no publisher: left pending, no attempt counted.
    pub unroutable: usize,
    /// Entries of a version newer than their publisher's type knows (a
    /// rolling deploy: a newer service recorded them): left pending, no
    /// attempt counted, for a relay that knows the version.
    pub newer_version: usize,
    /// Entries not published because their destination was unavailable or
    /// their publisher blocked (see "Failure scopes" in
    /// [`publisher`](crate::publisher)): no attempt counted.
    pub unavailable: usize,
    /// Entries whose claim was lost before their outcome was recorded
    /// (their lease expired and another relay claimed them): nothing was
    /// recorded for them (one the publisher delivered is not counted in
    /// `published`). Each is logged with its event id; a delivered one may
    /// be delivered again by the relay that holds it now.
    pub lost: usize,
}

impl std::ops::AddAssign for Report {
    fn add_assign(&mut self, other: Self) {
        self.claimed += other.claimed;
        self.published += other.published;
        self.retried += other.retried;
        self.dead += other.dead;
        self.unroutable += other.unroutable;
        self.newer_version += other.newer_version;
        self.unavailable += other.unavailable;
        self.lost += other.lost;
    }
}

fn to_entry(row: ClaimedRow) -> std::result::Result<Entry, (i64, String, String)> {
    let headers = match crate::store::decode_headers(&row.headers) {
        Ok(headers) => headers,
        Err(reason) => return Err((row.id, row.name, reason)),
    };
    let attempts = u32::try_from(row.attempts).unwrap_or(0);
    Ok(Entry {
        position: row.id,
        event_id: row.event_id,
        name: row.name,
        version: u32::try_from(row.version).unwrap_or(0),
        payload: row.payload,
        stream_key: row.stream_key,
        headers,
        correlation_id: row.correlation_id,
        causation_id: row.causation_id,
        created_at: row.created_at,
        attempt: attempts.saturating_add(1),
    })
}

/// One batch out with its publishers, as it comes back.
struct Landed {
    token: Uuid,
    /// Positions and event ids claimed, in position order.
    claimed: Vec<(i64, Uuid)>,
    settlement: Settlement,
    report: Report,
}

/// What one drain did.
struct Drained {
    report: Report,
    /// The highest position claimed by the last claim (the next claim
    /// starts past it; before the first claim, where the drain starts).
    last: i64,
    /// Whether the last claim came back full (a backlog may remain).
    full: bool,
    /// The first database error; the drain stopped claiming at it.
    error: Option<Error>,
}

/// Runs `work` while the batches in flight go on; those that come back
/// meanwhile wait in `landed`.
async fn while_flying<T, F: Future<Output = Landed>>(
    flights: &mut FuturesUnordered<F>,
    landed: &mut VecDeque<Landed>,
    work: impl Future<Output = T>,
) -> T {
    let mut work = pin!(work);
    loop {
        tokio::select! {
            biased;
            out = &mut work => return out,
            Some(back) = flights.next() => landed.push_back(back),
        }
    }
}

/// The run's connection, acquired from the pool if `slot` is empty.
async fn connection<'a, DB: Backend>(
    pool: &sqlx::Pool<DB>,
    slot: &'a mut Option<PoolConnection<DB>>,
) -> Result<&'a mut PoolConnection<DB>> {
    Ok(match slot {
        Some(conn) => conn,
        None => slot.insert(pool.acquire().await?),
    })
}

impl<DB: Backend> Outbox<DB> {
    /// Claims up to `limit` due entries in record order, publishes them with
    /// no transaction open, and records every outcome in one short
    /// transaction that checks this run's claim token.
    ///
    /// Returns what happened; an `Err` means the database failed (nothing
    /// is lost: claimed entries become due again when their lease expires).
    ///
    /// A run holds one connection of the pool from the claim to the
    /// recorded outcomes (publishers that use the same pool need it to have
    /// more than one connection).
    pub async fn run(&self, publishers: &Publishers, limit: usize) -> Result<Report> {
        let mut conn = None;
        let drained = self
            .drain(publishers, limit, 0, &mut conn, 1, || false)
            .await;
        match drained.error {
            Some(err) => Err(err),
            None => Ok(drained.report),
        }
    }

    /// Claims past position `after` (an earlier pending entry of a stream
    /// still holds back the later ones) and keeps claiming while the claims
    /// come back full and `go_on` agrees, with up to `depth` batches in
    /// flight: while one batch waits for its publisher, the next is
    /// claimed and dispatched. Each outcome is recorded as its batch comes
    /// back; on PostgreSQL together with the next claim, in one statement.
    /// While batches are out, their leases are renewed every third of the
    /// lease. Claims and outcomes go through `slot`, acquired from the pool
    /// if `None`.
    ///
    /// The relay loop claims past its last full batch to skip, while a
    /// backlog drains, the index entries of rows it already drained:
    /// PostgreSQL keeps those until VACUUM, and a claim that starts from
    /// the beginning walks them all. It keeps one connection through a
    /// drain (each acquire from a sqlx pool costs a round trip to check
    /// the connection).
    async fn drain(
        &self,
        publishers: &Publishers,
        limit: usize,
        after: i64,
        slot: &mut Option<PoolConnection<DB>>,
        depth: usize,
        mut go_on: impl FnMut() -> bool,
    ) -> Drained {
        let inner = &self.inner;
        let mut out = Drained {
            report: Report::default(),
            last: after,
            full: false,
            error: None,
        };
        let mut ready: Option<(Uuid, Vec<ClaimedRow>)> = None;
        let mut claims = 0_usize;
        let mut flights = FuturesUnordered::new();
        let mut landed: VecDeque<Landed> = VecDeque::new();
        // Claims out, for lease renewal: token and positions.
        let mut aloft: Vec<(Uuid, Vec<i64>)> = Vec::new();
        let every = inner.lease / 3;
        let mut renew_at = Instant::now() + every;
        let mut unavailable = false;
        loop {
            if let Some((token, rows)) = ready.take() {
                out.report.claimed += rows.len();
                out.full = rows.len() >= limit;
                if let Some(last) = rows.iter().map(|row| row.id).max() {
                    out.last = last;
                    aloft.push((token, rows.iter().map(|row| row.id).collect()));
                    flights.push(self.fly(publishers, token, rows));
                }
            }
            if Instant::now() >= renew_at {
                renew_at = Instant::now() + every;
                let renew = self.renew(slot, &aloft);
                while_flying(&mut flights, &mut landed, renew).await;
            }
            // Claim again while the claims come back full, within the bound.
            let more = landed.is_empty()
                && (claims == 0
                    || (out.full
                        && out.error.is_none()
                        && !unavailable
                        && flights.len() < depth
                        && go_on()));
            if more {
                claims += 1;
                let token = Uuid::new_v4();
                let claim = async {
                    let conn = connection(&inner.pool, slot).await?;
                    DB::claim(conn, &inner.sql, limit, inner.lease, token, out.last).await
                };
                match while_flying(&mut flights, &mut landed, claim).await {
                    Ok(rows) => ready = Some((token, rows)),
                    Err(err) => out.error = Some(err),
                }
                continue;
            }
            let back = match landed.pop_front() {
                Some(back) => back,
                None if flights.is_empty() => break,
                None => {
                    tokio::select! {
                        Some(back) = flights.next() => back,
                        () = tokio::time::sleep_until(renew_at) => continue,
                    }
                }
            };
            aloft.retain(|(token, _)| *token != back.token);
            out.report += back.report;
            unavailable |= back.report.unavailable > 0;
            let combine = DB::settles_and_claims(&inner.sql)
                && back.settlement.updates.is_empty()
                && !back.settlement.published.is_empty()
                && {
                    // The new batch takes the place of the one it settles.
                    flights.len() + landed.len() < depth
                        && out.full
                        && out.error.is_none()
                        && !unavailable
                        && go_on()
                };
            let next = combine.then(|| Claim {
                limit,
                lease: inner.lease,
                token: Uuid::new_v4(),
                after: out.last,
            });
            let recorded = self.record_outcomes(slot, &mut flights, &mut landed, &back, next);
            match recorded.await {
                Ok((settled, rows)) => {
                    ready = next.map(|next| next.token).zip(rows);
                    self.recorded(slot, publishers, &back, &settled, &mut out.report)
                        .await;
                }
                Err(err) => {
                    // Not recorded: the batch is due again after its lease.
                    tracing::warn!(error = %err, claimed = back.claimed.len(), "recording outcomes failed");
                    out.report.published -= back.settlement.published.len();
                    out.error.get_or_insert(err);
                }
            }
        }
        out
    }

    /// Records the outcomes of a batch that came back, with the next claim
    /// in the same statement when `next` is set (then `Some` rows). If the
    /// connection broke, the outcomes are recorded again on a fresh one.
    async fn record_outcomes<F: Future<Output = Landed>>(
        &self,
        slot: &mut Option<PoolConnection<DB>>,
        flights: &mut FuturesUnordered<F>,
        landed: &mut VecDeque<Landed>,
        back: &Landed,
        next: Option<Claim>,
    ) -> Result<(Vec<i64>, Option<Vec<ClaimedRow>>)> {
        let inner = &self.inner;
        let recorded = async {
            let conn = connection(&inner.pool, slot).await?;
            match next {
                Some(claim) => {
                    let published = &back.settlement.published;
                    DB::settle_and_claim(conn, &inner.sql, (back.token, published), claim)
                        .await
                        .map(|(settled, rows)| (settled, Some(rows)))
                }
                None => DB::settle(conn, &inner.sql, back.token, &back.settlement)
                    .await
                    .map(|settled| (settled, None)),
            }
        };
        match while_flying(flights, landed, recorded).await {
            // The connection broke while the batch was out (a killed
            // backend, a failover): while the lease holds, the outcomes can
            // still be recorded on a fresh one instead of the whole batch
            // going out again after the lease. The broken one is given back
            // first: never wait for a second connection while holding one
            // (a small pool, with LISTEN holding another, would wait out
            // its timeout).
            Err(Error::Database(err)) if is_connection_error(&err) => {
                tracing::warn!(error = %err, "recording outcomes failed on a broken connection; retrying on a new one");
                *slot = None;
                let settle = async {
                    let conn = connection(&inner.pool, slot).await?;
                    DB::settle(conn, &inner.sql, back.token, &back.settlement).await
                };
                Ok((while_flying(flights, landed, settle).await?, None))
            }
            other => other,
        }
    }

    /// Claims of one batch out with its publishers, then what came back.
    async fn fly(&self, publishers: &Publishers, token: Uuid, mut rows: Vec<ClaimedRow>) -> Landed {
        let span =
            tracing::debug_span!("outbox.run", table = %self.inner.table, claimed = rows.len());
        async move {
            rows.sort_unstable_by_key(|row| row.id);
            let claimed = rows.iter().map(|row| (row.id, row.event_id)).collect();
            let mut report = Report::default();
            let settlement = self.dispatch(publishers, rows, &mut report).await;
            Landed {
                token,
                claimed,
                settlement,
                report,
            }
        }
        .instrument(span)
        .await
    }

    /// After a batch's outcomes are recorded: reports lost claims, and
    /// records blocked publishers (best effort).
    async fn recorded(
        &self,
        slot: &mut Option<PoolConnection<DB>>,
        publishers: &Publishers,
        back: &Landed,
        settled: &[i64],
        report: &mut Report,
    ) {
        if settled.len() < back.claimed.len() {
            self.count_lost(&back.claimed, settled, &back.settlement, report);
        }
        let changes = publishers.take_changes();
        if changes.is_empty() {
            return;
        }
        let inner = &self.inner;
        let saved = async {
            let conn = connection(&inner.pool, slot).await?;
            DB::save_blocked(conn, &inner.sql, &changes).await
        };
        if let Err(err) = saved.await {
            // Reporting is best effort: the outcomes are recorded, and
            // the block is logged and in `Publishers::blocked` anyway.
            tracing::warn!(
                table = %inner.table,
                error = %err,
                "could not record blocked publishers in <table>_blocked \
                 (the relay's role needs SELECT, INSERT, UPDATE, DELETE on it)"
            );
        }
    }

    /// Extends the lease of every batch out, so a slow batch never outlives
    /// its claim.
    async fn renew(&self, slot: &mut Option<PoolConnection<DB>>, aloft: &[(Uuid, Vec<i64>)]) {
        let inner = &self.inner;
        for (token, ids) in aloft {
            let renewed = async {
                let conn = connection(&inner.pool, slot).await?;
                DB::renew(conn, &inner.sql, *token, ids, inner.lease).await
            };
            match renewed.await {
                Ok(held) if held < ids.len() as u64 => tracing::warn!(
                    claimed = ids.len(),
                    held,
                    "lease renewal: some claims were already lost"
                ),
                Ok(_) => tracing::trace!("lease renewed"),
                Err(err) => tracing::warn!(error = %err, "lease renewal failed"),
            }
        }
    }

    /// Reports the claimed entries whose outcome found their claim gone.
    fn count_lost(
        &self,
        claimed: &[(i64, Uuid)],
        settled: &[i64],
        settlement: &Settlement,
        report: &mut Report,
    ) {
        let settled: HashSet<i64> = settled.iter().copied().collect();
        let published: HashSet<i64> = settlement.published.iter().copied().collect();
        let mut lost = 0;
        for (id, event_id) in claimed {
            if settled.contains(id) {
                continue;
            }
            lost += 1;
            let was_published = published.contains(id);
            if was_published {
                // Counted as published by the dispatch; nothing was recorded.
                report.published -= 1;
            }
            tracing::warn!(
                table = %self.inner.table,
                position = id,
                %event_id,
                published = was_published,
                "claim lost before its outcome was recorded: the lease expired and another relay took the entry"
            );
        }
        report.lost += lost;
        metrics::counter!("outbox_lost_claims_total", "table" => self.inner.table.to_string())
            .increment(lost as u64);
    }

    /// Hands consecutive entries of one name to their publisher, in order,
    /// and turns the deliveries into a settlement.
    ///
    /// With per-stream order, a group holds at most one entry per stream (a
    /// publisher may pipeline a group, so two entries of one stream in it
    /// could be confirmed out of order), and once an entry of a stream is
    /// not published, the rest of that stream in this batch is given back.
    async fn dispatch(
        &self,
        publishers: &Publishers,
        rows: Vec<ClaimedRow>,
        report: &mut Report,
    ) -> Settlement {
        let inner = &self.inner;
        let ordered = inner.options.ordered;
        let mut settlement = Settlement {
            published: Vec::with_capacity(rows.len()),
            updates: Vec::new(),
        };
        // Streams with an entry not published in this batch (ordered mode).
        let mut held: HashSet<String> = HashSet::new();
        let mut in_group: HashSet<String> = HashSet::new();
        let mut rows = rows;
        bury_poison(&mut rows, ordered, &mut held, report, &mut settlement);
        let mut rows = rows.into_iter().peekable();
        while let Some(first) = rows.next() {
            let name = first.name.clone();
            let mut group = next_group(first, &mut rows, ordered, &mut in_group);
            if ordered && !held.is_empty() {
                group.retain(|row| match &row.stream_key {
                    Some(key) if held.contains(key) => {
                        settlement
                            .updates
                            .push(release(row.id, row.attempts, Duration::ZERO));
                        false
                    }
                    _ => true,
                });
            }
            let Some(route) = publishers.route(&name) else {
                tracing::debug!(name = %name, count = group.len(), "no publisher: unroutable");
                report.unroutable += group.len();
                metrics::counter!("outbox_unroutable_total", "event" => name.clone())
                    .increment(group.len() as u64);
                set_aside(
                    &group,
                    inner.unroutable_delay,
                    ordered,
                    &mut held,
                    &mut settlement,
                );
                continue;
            };
            if let Some(known) = route.dispatch.version() {
                group = self.set_aside_newer(group, known, report, &mut held, &mut settlement);
                if group.is_empty() {
                    continue;
                }
            }
            if route.health.paused_for(Instant::now()).is_some() {
                // Blocked and paused: not sent; the entries step out of the
                // head of the queue until the pause is surely over.
                report.unavailable += group.len();
                let delay = publishers.max_pause();
                set_aside(&group, delay, ordered, &mut held, &mut settlement);
                continue;
            }
            let (meta, entries) = to_entries(group, ordered, report, &mut held, &mut settlement);
            if entries.is_empty() {
                continue;
            }
            let before = *report;
            let (entries, spans) = crate::trace::PublishSpans::open(entries);
            let deliveries = match inner.publish_timeout {
                Some(limit) => {
                    PUBLISH_TIMEOUT
                        .scope(limit, route.dispatch.dispatch(entries, publishers.upcast()))
                        .await
                }
                None => route.dispatch.dispatch(entries, publishers.upcast()).await,
            };
            spans.close(&deliveries);
            let judgement = judge(route, &meta, &deliveries, publishers.max_pause());
            for ((id, event_id, attempts, stream), delivery) in meta.into_iter().zip(deliveries) {
                let _entry = tracing::debug_span!(
                    "outbox.entry",
                    name = %name,
                    %event_id,
                    position = id,
                    attempt = attempts.saturating_add(1)
                )
                .entered();
                if !matches!(delivery, Delivery::Published) {
                    held.extend(stream);
                }
                let outcome = Outcome {
                    id,
                    event_id,
                    name: &name,
                    attempts,
                };
                self.settle_one(&outcome, delivery, judgement, report, &mut settlement);
            }
            count_outcomes(&name, &before, report);
        }
        settlement
    }

    /// Sets aside the entries of `group` whose version is newer than
    /// `known`, the newest its publisher decodes (a rolling deploy): no
    /// attempt, due again after the unroutable delay. Returns the rest.
    fn set_aside_newer(
        &self,
        group: Vec<ClaimedRow>,
        known: u32,
        report: &mut Report,
        held: &mut HashSet<String>,
        settlement: &mut Settlement,
    ) -> Vec<ClaimedRow> {
        let is_newer = |row: &ClaimedRow| {
            row.poison.is_none() && u32::try_from(row.version).is_ok_and(|v| v > known)
        };
        // The common case (every entry known) keeps the group as it is.
        if !group.iter().any(is_newer) {
            return group;
        }
        let (newer, rest): (Vec<_>, Vec<_>) = group.into_iter().partition(is_newer);
        let name = &newer[0].name;
        tracing::debug!(name = %name, count = newer.len(), known, "newer version than the publisher knows: left pending");
        report.newer_version += newer.len();
        metrics::counter!("outbox_newer_version_total", "event" => name.clone())
            .increment(newer.len() as u64);
        let inner = &self.inner;
        set_aside(
            &newer,
            inner.unroutable_delay,
            inner.options.ordered,
            held,
            settlement,
        );
        rest
    }

    /// Turns one delivery into its outcome.
    fn settle_one(
        &self,
        entry: &Outcome<'_>,
        delivery: Delivery,
        judgement: Judgement,
        report: &mut Report,
        settlement: &mut Settlement,
    ) {
        let Outcome {
            id,
            event_id,
            name,
            attempts,
        } = *entry;
        match delivery {
            Delivery::Published => {
                tracing::trace!("published");
                report.published += 1;
                settlement.published.push(id);
            }
            Delivery::Undecodable(reason) => {
                tracing::warn!(position = id, %event_id, name, %reason, "dead letter: undecodable");
                report.dead += 1;
                settlement.updates.push(dead(id, attempts, reason));
            }
            Delivery::NotAttempted => {
                report.unavailable += 1;
                settlement
                    .updates
                    .push(release(id, attempts, judgement.pause));
            }
            Delivery::Failed(err)
                if err.is_unavailable() || (err.is_transient() && judgement.destination) =>
            {
                tracing::debug!(error = %err, "destination unavailable: no attempt counted");
                report.unavailable += 1;
                settlement
                    .updates
                    .push(release(id, attempts, judgement.pause));
            }
            Delivery::Failed(err) => {
                let made = attempts.saturating_add(1);
                let made_u32 = u32::try_from(made).unwrap_or(u32::MAX);
                let message = err.message().to_owned();
                if made_u32 >= self.inner.max_attempts {
                    tracing::warn!(position = id, %event_id, name, attempts = made, error = %message, "dead letter");
                    report.dead += 1;
                    settlement.updates.push(dead(id, made, message));
                } else {
                    tracing::debug!(attempts = made, error = %message, "publish failed; will retry");
                    report.retried += 1;
                    settlement.updates.push(Update {
                        id,
                        dead: false,
                        attempts: made,
                        error: Some(message),
                        delay: self.inner.backoff.delay(made_u32),
                    });
                }
            }
        }
    }

    /// A relay loop over these publishers; see [`Relay`].
    pub fn relay(&self, publishers: Publishers) -> Relay<DB> {
        Relay {
            outbox: self.clone(),
            publishers,
            poll_interval: Duration::from_secs(1),
            min_poll_interval: Duration::from_millis(10),
            max_backoff: Duration::from_secs(30),
            stats_interval: Some(Duration::from_secs(15)),
            cleanup_interval: Duration::from_mins(1),
            in_flight: 1,
        }
    }
}

/// What the relay keeps of each dispatched entry: position, event id,
/// attempts made, and (with per-stream order) its stream.
type Meta = (i64, Uuid, i32, Option<String>);

/// Turns claimed rows into entries; one whose headers do not decode is a
/// dead letter at once (and holds its stream in ordered mode).
fn to_entries(
    group: Vec<ClaimedRow>,
    ordered: bool,
    report: &mut Report,
    held: &mut HashSet<String>,
    settlement: &mut Settlement,
) -> (Vec<Meta>, Vec<Entry>) {
    let mut meta = Vec::with_capacity(group.len());
    let mut entries = Vec::with_capacity(group.len());
    for row in group {
        let (id, attempts, event_id) = (row.id, row.attempts, row.event_id);
        let stream = if ordered {
            row.stream_key.clone()
        } else {
            None
        };
        match to_entry(row) {
            Ok(entry) => {
                meta.push((id, event_id, attempts, stream));
                entries.push(entry);
            }
            Err((id, name, reason)) => {
                tracing::warn!(position = id, %event_id, name = %name, %reason, "dead letter: headers do not decode");
                report.dead += 1;
                held.extend(stream);
                settlement.updates.push(dead(id, attempts, reason));
            }
        }
    }
    (meta, entries)
}

/// Gives `group` back without an attempt, due again after `delay`; with
/// per-stream order, its streams are held for the rest of the batch.
fn set_aside(
    group: &[ClaimedRow],
    delay: Duration,
    ordered: bool,
    held: &mut HashSet<String>,
    settlement: &mut Settlement,
) {
    for row in group {
        if ordered {
            held.extend(row.stream_key.iter().cloned());
        }
        settlement
            .updates
            .push(release(row.id, row.attempts, delay));
    }
}

/// One claimed entry, as its outcome is logged.
#[derive(Clone, Copy)]
struct Outcome<'a> {
    id: i64,
    event_id: Uuid,
    name: &'a str,
    attempts: i32,
}

/// Asks the publisher's health which scope this dispatch's failures have.
fn judge(route: &Route, meta: &[Meta], deliveries: &[Delivery], max_pause: Duration) -> Judgement {
    let mut answered = 0;
    let mut transient = Vec::new();
    let mut unavailable = None;
    for ((id, ..), delivery) in meta.iter().zip(deliveries) {
        match delivery {
            Delivery::Failed(err) if err.is_transient() => transient.push((*id, err.message())),
            Delivery::Failed(err) if err.is_unavailable() => {
                unavailable.get_or_insert(err.message());
            }
            Delivery::Published | Delivery::Failed(_) => answered += 1,
            Delivery::Undecodable(_) | Delivery::NotAttempted => {}
        }
    }
    route
        .health
        .judge(answered, &transient, unavailable, max_pause)
}

/// Makes the claimed rows that do not decode dead letters at once; with
/// per-stream order their streams are held for the rest of the batch.
fn bury_poison(
    rows: &mut Vec<ClaimedRow>,
    ordered: bool,
    held: &mut HashSet<String>,
    report: &mut Report,
    settlement: &mut Settlement,
) {
    if rows.iter().all(|row| row.poison.is_none()) {
        return;
    }
    rows.retain_mut(|row| match row.poison.take() {
        Some(reason) => {
            tracing::warn!(position = row.id, %reason, "dead letter: stored row does not decode");
            report.dead += 1;
            if ordered {
                held.extend(row.stream_key.take());
            }
            settlement.updates.push(dead(row.id, row.attempts, reason));
            false
        }
        None => true,
    });
}

/// The entries dispatched together with `first`: the consecutive ones with
/// its name and, with per-stream order, no two of one stream.
fn next_group(
    first: ClaimedRow,
    rows: &mut std::iter::Peekable<std::vec::IntoIter<ClaimedRow>>,
    ordered: bool,
    in_group: &mut HashSet<String>,
) -> Vec<ClaimedRow> {
    in_group.clear();
    if ordered {
        in_group.extend(first.stream_key.iter().cloned());
    }
    let mut group = vec![first];
    while let Some(next) = rows.next_if(|row| {
        row.name == group[0].name
            && !(ordered
                && row
                    .stream_key
                    .as_ref()
                    .is_some_and(|k| in_group.contains(k)))
    }) {
        if ordered {
            in_group.extend(next.stream_key.iter().cloned());
        }
        group.push(next);
    }
    group
}

/// Adds one group's outcomes to the `metrics` counters, labelled by event name.
fn count_outcomes(name: &str, before: &Report, after: &Report) {
    let counters = [
        ("outbox_published_total", after.published - before.published),
        ("outbox_failed_total", after.retried - before.retried),
        ("outbox_dead_total", after.dead - before.dead),
    ];
    for (counter, n) in counters {
        if n > 0 {
            metrics::counter!(counter, "event" => name.to_owned()).increment(n as u64);
        }
    }
}

/// Gives a claimed entry back without counting an attempt.
fn release(id: i64, attempts: i32, delay: Duration) -> Update {
    Update {
        id,
        dead: false,
        attempts,
        error: None,
        delay,
    }
}

fn dead(id: i64, attempts: i32, reason: String) -> Update {
    Update {
        id,
        dead: true,
        attempts,
        error: Some(reason),
        delay: Duration::ZERO,
    }
}

/// A long-running relay: repeats [`Outbox::run`] with the outbox's batch
/// limit (with [`in_flight`](Relay::in_flight), several batches at once).
///
/// - After a full batch it runs again at once, claiming past the last entry
///   it claimed (so a large backlog drains in linear time); it looks again
///   from the first entry after a batch that was not full, after an
///   unavailable broker, and at least once per poll interval, so an entry
///   due for a retry waits at most that long behind a backlog.
/// - Otherwise it waits: 10 ms after activity, doubling while the outbox
///   stays empty, up to the poll interval, so an idle relay costs the
///   database one cheap query per poll interval. On PostgreSQL (with
///   [`notify`](crate::OutboxBuilder::notify) on) a commit that records an
///   event wakes it at once.
/// - While the database is unavailable it backs off (100 ms, doubling, up
///   to [`max_backoff`](Relay::max_backoff)). A publisher whose destination
///   is down is paused on its own (see "Failure scopes" in
///   [`publisher`](crate::publisher)) while the others go on.
/// - While a batch is in flight its lease is renewed every third of the
///   [`lease`](crate::OutboxBuilder::lease), so a slow batch keeps its
///   claim; an outcome that finds its claim gone anyway is reported
///   ([`Report::lost`]), never counted as done.
/// - It refreshes the `metrics` gauges ([`Outbox::gauges`]) every 15 s and,
///   with [`keep_published`](crate::OutboxBuilder::keep_published), deletes
///   expired published entries every minute.
/// - It keeps one connection of the pool from one batch to the next while
///   they come back full, and gives it back whenever it waits; on
///   PostgreSQL its LISTEN takes one more. Size the pool for that plus what
///   the application and any publisher that uses the same pool need.
/// - When the shutdown future completes it finishes the batch in flight,
///   commits its outcomes, and returns the totals.
#[must_use]
pub struct Relay<DB: Backend> {
    outbox: Outbox<DB>,
    publishers: Publishers,
    poll_interval: Duration,
    min_poll_interval: Duration,
    max_backoff: Duration,
    stats_interval: Option<Duration>,
    cleanup_interval: Duration,
    in_flight: usize,
}

impl<DB: Backend> std::fmt::Debug for Relay<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("outbox", &self.outbox)
            .field("poll_interval", &self.poll_interval)
            .field("publishers", &self.publishers)
            .finish_non_exhaustive()
    }
}

impl<DB: Backend> Relay<DB> {
    /// The longest sleep between polls of an idle outbox (default 1 s).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self.min_poll_interval = self.min_poll_interval.min(interval);
        self
    }

    /// The longest wait while the database or a broker is unavailable
    /// (default 30 s; the wait starts at 100 ms and doubles).
    pub fn max_backoff(mut self, max: Duration) -> Self {
        self.max_backoff = max;
        self
    }

    /// How often the loop refreshes the `metrics` gauges with
    /// [`Outbox::gauges`] (default every 15 s; `None` never).
    pub fn stats_interval(mut self, interval: Option<Duration>) -> Self {
        self.stats_interval = interval;
        self
    }

    /// How often the loop deletes expired published entries, with
    /// [`keep_published`](crate::OutboxBuilder::keep_published) (default 1 min).
    pub fn cleanup_interval(mut self, interval: Duration) -> Self {
        self.cleanup_interval = interval;
        self
    }

    /// How many batches may be out with their publishers at once
    /// (pipelined publishing; default 1, at least 1).
    ///
    /// With more than one, while a batch waits for its broker's confirms
    /// the next is claimed and published (`drain_amqp` and `drain_nats` in
    /// the README's "Performance" measure 4 in flight against a sequential
    /// raw loop). The price is order: batches in flight reach the broker
    /// interleaved, so entries no longer go out in record order, except
    /// within a stream with
    /// [`ordered_streams`](crate::OutboxBuilder::ordered_streams), whose
    /// claims never take an entry while an earlier entry of its stream is
    /// out. The bound caps the relay's memory and what a crash can publish
    /// twice: at most `in_flight` × the batch limit entries (see
    /// GUARANTEES.md).
    pub fn in_flight(mut self, batches: usize) -> Self {
        self.in_flight = batches.max(1);
        self
    }

    /// Runs until `shutdown` completes, then returns the totals. The
    /// batches in flight are finished and their outcomes committed before
    /// it returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Report {
        let mut shutdown = pin!(shutdown);
        let outbox = &self.outbox;
        let inner = &outbox.inner;
        let limit = outbox.batch_limit();
        let mut wakeup = match DB::listen(&inner.pool, &inner.sql).await {
            Ok(wakeup) => wakeup,
            Err(err) => {
                tracing::warn!(error = %err, "outbox LISTEN failed; polling only");
                None
            }
        };
        let mut totals = Report::default();
        let mut trouble = Duration::ZERO;
        let mut idle = self.min_poll_interval;
        let mut next_stats = Instant::now();
        let mut next_cleanup = Instant::now();
        // Claims start past `after` while a backlog drains; `rescan_at` bounds
        // how long entries behind it (retries, expired leases) can wait.
        let mut after = 0;
        let mut rescan_at = Instant::now() + self.poll_interval;
        // Held from one batch to the next while they come back full.
        let mut conn = None;
        loop {
            let now = Instant::now();
            if now >= rescan_at {
                after = 0;
            }
            if after == 0 {
                rescan_at = now + self.poll_interval;
            }
            if let Some(interval) = self.stats_interval.filter(|_| now >= next_stats) {
                next_stats = now + interval;
                // Never wait for a second connection while holding one.
                conn = None;
                if let Err(err) = outbox.gauges().await {
                    tracing::warn!(error = %err, "outbox gauges failed");
                }
            }
            if inner.retention.is_some() && now >= next_cleanup {
                next_cleanup = now + self.cleanup_interval;
                conn = None;
                if let Err(err) = outbox.cleanup(1000).await {
                    tracing::warn!(error = %err, "outbox cleanup failed");
                }
            }
            // The bound holds for one drain: only a full batch sets it again.
            let bound = std::mem::take(&mut after);
            // A drain stops claiming when housekeeping is due or at shutdown.
            let mut until = rescan_at;
            if self.stats_interval.is_some() {
                until = until.min(next_stats);
            }
            if inner.retention.is_some() {
                until = until.min(next_cleanup);
            }
            let mut stopping = false;
            let drained = outbox
                .drain(
                    &self.publishers,
                    limit,
                    bound,
                    &mut conn,
                    self.in_flight,
                    || {
                        stopping = stopping || shutdown.as_mut().now_or_never().is_some();
                        !stopping && Instant::now() < until
                    },
                )
                .await;
            totals += drained.report;
            let wait = self.pause_after(drained, &mut trouble, &mut idle, &mut after);
            if stopping {
                break;
            }
            if wait.is_zero() {
                if shutdown.as_mut().now_or_never().is_some() {
                    break;
                }
                continue;
            }
            // Idle or in trouble: give the connection back (a broken one is
            // not reused).
            conn = None;
            let woken = async {
                match wakeup.as_mut() {
                    Some(wakeup) if trouble.is_zero() => wakeup.wait().await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(wait) => {}
                () = woken => idle = self.min_poll_interval,
            }
        }
        totals
    }
}

impl<DB: Backend> Relay<DB> {
    /// How long the loop waits after a drain (zero: drain again at once),
    /// and where the next drain starts (`after`).
    fn pause_after(
        &self,
        drained: Drained,
        trouble: &mut Duration,
        idle: &mut Duration,
        after: &mut i64,
    ) -> Duration {
        if let Some(err) = drained.error {
            *trouble = next_backoff(*trouble, self.max_backoff);
            tracing::warn!(error = %err, retry_in = ?*trouble, "outbox run failed");
            return *trouble;
        }
        // A blocked publisher pauses itself (its entries step out of the
        // way); the loop goes on for the others.
        *trouble = Duration::ZERO;
        if drained.full {
            *idle = self.min_poll_interval;
            // Entries given back for a short pause sit behind the bound:
            // look from the start next time.
            if drained.report.unavailable == 0 {
                *after = drained.last;
            }
            Duration::ZERO
        } else if drained.report.claimed > 0 {
            *idle = self.min_poll_interval;
            *idle
        } else {
            let wait = *idle;
            *idle = idle.saturating_mul(2).min(self.poll_interval);
            wait
        }
    }
}

/// Whether `err` means the connection itself is gone (not the statement).
fn is_connection_error(err: &sqlx::Error) -> bool {
    matches!(
        err,
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::Tls(_)
    ) || matches!(err, sqlx::Error::Database(db) if db.code().as_deref().is_some_and(|c| c.starts_with("57P") || c.starts_with("08")))
}

fn next_backoff(current: Duration, max: Duration) -> Duration {
    if current.is_zero() {
        Duration::from_millis(100).min(max)
    } else {
        current.saturating_mul(2).min(max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_backoff_doubles_up_to_max() {
        let b = Backoff::exponential(Duration::from_secs(1), Duration::from_secs(10));
        let delays: Vec<_> = (1..=6).map(|a| b.delay(a).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn fixed_and_none() {
        assert_eq!(
            Backoff::fixed(Duration::from_millis(5)).delay(9),
            Duration::from_millis(5)
        );
        assert_eq!(Backoff::none().delay(1), Duration::ZERO);
    }

    #[test]
    fn relay_backoff_starts_small_and_caps() {
        let max = Duration::from_secs(1);
        let mut d = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..6 {
            d = next_backoff(d, max);
            seen.push(d.as_millis());
        }
        assert_eq!(seen, [100, 200, 400, 800, 1000, 1000]);
    }
}
