//! PostgreSQL: claims with `FOR UPDATE SKIP LOCKED` and a lease, outcomes in
//! one short transaction per batch, batch inserts through `UNNEST`.

use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::{Acquire, Executor, PgConnection, PgPool, Postgres, Row};
use uuid::Uuid;

use super::private::{Store, Wakeup};
use sqlx::SqlStr;

use super::{
    Claim, ClaimedRow, DeadLetter, NewRow, Settlement, SqlOptions, Stats, TableName, Which,
    dead_headers, decode_claimed, millis, name_stats, render, safe,
};
use crate::error::Result;
use crate::publisher::Blocked;

mod inbox;

const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        include_str!("../../migrations/postgres/0001_create_outbox.up.sql"),
    ),
    (
        2,
        include_str!("../../migrations/postgres/0002_commit_order_and_blocked.up.sql"),
    ),
    (
        3,
        include_str!("../../migrations/postgres/0003_fillfactor.up.sql"),
    ),
    (
        4,
        include_str!("../../migrations/postgres/0004_version.up.sql"),
    ),
];

/// The SQL for one table.
pub struct Sql {
    table: TableName,
    /// The LISTEN/NOTIFY channel, when notifications are on.
    channel: Option<String>,
    /// Per-stream order: claims take a table-wide advisory lock first.
    ordered: bool,
    insert: SqlStr,
    /// For rows with no metadata at version 1: three columns, the rest
    /// from defaults.
    insert_plain: SqlStr,
    claim: SqlStr,
    delete: SqlStr,
    /// `delete` and the next `claim` in one statement (unordered tables).
    settle_and_claim: SqlStr,
    stats: SqlStr,
    cleanup: SqlStr,
    update: SqlStr,
    renew: SqlStr,
    blocked: BlockedSql,
    dead_letters: SqlStr,
    requeue: SqlStr,
    purge: SqlStr,
    discard: SqlStr,
}

/// The claim: up to `$1` due entries past position `$4`, in order, stamped
/// with token `$2` and a lease of `$3` ms. `settle` (a data-modifying
/// statement on `$5`, `$6`) runs in the same statement, first in its `WITH`;
/// without it the claim commits without waiting for a flush.
fn claim_sql(t: &str, options: SqlOptions, settle: Option<&str>) -> String {
    // Commit order: every row keeps the id of the transaction that wrote it
    // (`xid`). `horizon` is the oldest transaction still running that holds
    // a write lock on this table (it has written, or will write, outbox
    // rows); an entry of a later transaction is not claimable until that one
    // ends, so a claim never passes an entry whose transaction may still
    // commit. Only writers of this table count: a long transaction elsewhere
    // holds nothing back. `pg_locks` is read only while some transaction is
    // running at all. Rows written before migration 2 have no xid.
    let horizon = format!(
        "horizon AS MATERIALIZED (SELECT min(x) AS h FROM pg_snapshot_xip(pg_current_snapshot()) AS x \
         WHERE xid(x) IN (SELECT w.transactionid FROM pg_locks r JOIN pg_locks w \
         ON w.pid = r.pid AND w.locktype = 'transactionid' \
         WHERE r.locktype = 'relation' AND r.relation = '{t}'::regclass \
         AND r.mode = 'RowExclusiveLock' AND r.pid <> pg_backend_pid())), "
    );
    let settled = |alias: &str| {
        format!("({alias}.xid IS NULL OR horizon.h IS NULL OR {alias}.xid < horizon.h)")
    };
    let committed = settled("c");
    // An entry of a stream waits while an earlier one of that stream is
    // claimed, backing off, dead, or not claimable yet.
    let stream_gate = if options.ordered {
        format!(
            " AND (c.stream_key IS NULL OR NOT EXISTS (SELECT 1 FROM {t} e \
             WHERE e.stream_key = c.stream_key AND e.id < c.id \
             AND (e.status = 'dead' OR (e.status = 'pending' AND (e.available_at > now() OR e.id <= $4 \
             OR NOT {})))))",
            settled("e")
        )
    } else {
        String::new()
    };
    let claim = format!(
        "due AS (SELECT c.id FROM {t} c, horizon WHERE c.status = 'pending' \
         AND c.id > $4 AND c.available_at <= now() AND {committed}{stream_gate} \
         ORDER BY c.id LIMIT $1 FOR UPDATE OF c SKIP LOCKED)"
    );
    let lease = "claim_token = $2, available_at = now() + $3 * interval '1 millisecond'";
    match settle {
        // The outcomes in the same transaction must be durable (no `cfg`).
        // The claimed rows come first, then one row whose last column lists
        // the settled positions. The rows settled are all claimed (leased),
        // so the claim cannot take them.
        Some(settle) => format!(
            "WITH settled AS ({settle}), {horizon}{claim}, \
             claimed AS (UPDATE {t} AS o SET {lease} FROM due WHERE o.id = due.id RETURNING {RETURNING}) \
             SELECT *, NULL::bigint[] FROM claimed UNION ALL \
             SELECT NULL::bigint, NULL::uuid, NULL::text, NULL::text, NULL::text, NULL::text, \
             NULL::uuid, NULL::uuid, NULL::timestamptz, NULL::int, NULL::int, \
             ARRAY(SELECT id FROM settled)"
        ),
        // Claims of ordered tables run under a lock, in their own transaction.
        None if options.ordered => format!(
            "WITH {horizon}{claim} UPDATE {t} AS o SET {lease} FROM due \
             WHERE o.id = due.id RETURNING {RETURNING}"
        ),
        // The claim need not be durable (a lost claim only lets another
        // relay take the entries sooner): it commits without waiting for a
        // flush.
        None => format!(
            "WITH cfg AS (SELECT set_config('synchronous_commit', 'off', true)), {horizon}{claim} \
             UPDATE {t} AS o SET {lease} FROM due, cfg WHERE o.id = due.id RETURNING {RETURNING}"
        ),
    }
}

/// The statements on `<table>_blocked`.
struct BlockedSql {
    select: SqlStr,
    save: SqlStr,
    delete: SqlStr,
}

impl BlockedSql {
    fn new(table: &TableName) -> Self {
        let t = table.quoted('"', "_blocked");
        Self {
            select: safe(format!(
                "SELECT publisher, since, reason, seen_at FROM {t} ORDER BY publisher"
            )),
            save: safe(format!(
                "INSERT INTO {t} (publisher, since, reason, seen_at) \
                 SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::text[], $4::timestamptz[]) \
                 ON CONFLICT (publisher) DO UPDATE SET since = excluded.since, \
                 reason = excluded.reason, seen_at = excluded.seen_at"
            )),
            delete: safe(format!("DELETE FROM {t} WHERE publisher = ANY($1)")),
        }
    }
}

/// Returned by claims, decoded by position in [`claimed_row`]. A
/// `created_at` chrono cannot hold (`infinity`, year 294276) comes back
/// NULL: the entry is then a dead letter, not a crash.
const RETURNING: &str = "o.id, o.event_id, o.name, o.payload::text AS payload, o.stream_key, \
     o.headers::text AS headers, o.correlation_id, o.causation_id, \
     CASE WHEN o.created_at BETWEEN '0001-01-01' AND '9999-12-31' THEN o.created_at END AS created_at, \
     o.attempts, o.version";

impl Store for Postgres {
    type Sql = Sql;
    const SCHEMAS: bool = true;

    fn sql(table: &TableName, options: SqlOptions) -> Sql {
        let t = table.quoted('"', "");
        let channel = options.notify.then(|| format!("outbox_{}", table.bare()));
        let rows = "SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[]::json[], $4::text[], \
                    $5::text[]::json[], $6::uuid[], $7::uuid[], $8::int4[])";
        let columns =
            "event_id, name, payload, stream_key, headers, correlation_id, causation_id, version";
        let plain_rows = "SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[]::json[])";
        let insert = |columns: &str, rows: &str, channel_param: u8| {
            if channel.is_some() {
                // One round trip: the notification is queued with the insert and
                // delivered when (and only if) the caller's transaction commits.
                format!(
                    "WITH ins AS (INSERT INTO {t} ({columns}) {rows} RETURNING 1) \
                     SELECT pg_notify(${channel_param}, '') WHERE EXISTS (SELECT 1 FROM ins)"
                )
            } else {
                format!("INSERT INTO {t} ({columns}) {rows}")
            }
        };
        let (insert, insert_plain) = (
            insert(columns, rows, 9),
            insert("event_id, name, payload", plain_rows, 4),
        );
        // Published rows still claimed with token `$p+1`, among ids `$p`.
        let delete = |p: u8| {
            let q = p + 1;
            if options.keep_published {
                format!(
                    "UPDATE {t} SET status = 'published', published_at = now(), claim_token = NULL \
                     WHERE id = ANY(${p}) AND claim_token = ${q} RETURNING id"
                )
            } else {
                format!("DELETE FROM {t} WHERE id = ANY(${p}) AND claim_token = ${q} RETURNING id")
            }
        };
        Sql {
            table: table.clone(),
            channel,
            ordered: options.ordered,
            insert: safe(insert),
            insert_plain: safe(insert_plain),
            claim: safe(claim_sql(&t, options, None)),
            delete: safe(delete(1)),
            settle_and_claim: safe(claim_sql(&t, options, Some(&delete(5)))),
            stats: safe(format!(
                "SELECT name, version, \
                 count(*) FILTER (WHERE status = 'pending') AS pending, \
                 count(*) FILTER (WHERE status = 'pending' AND attempts > 0) AS retrying, \
                 count(*) FILTER (WHERE status = 'dead') AS dead, \
                 count(*) FILTER (WHERE status = 'published') AS published, \
                 EXTRACT(EPOCH FROM now() - min(created_at) FILTER (WHERE status = 'pending'))::float8 AS oldest \
                 FROM {t} GROUP BY name, version ORDER BY name, version"
            )),
            cleanup: safe(format!(
                "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} WHERE status = 'published' \
                 AND published_at < now() - $1 * interval '1 millisecond' LIMIT $2)"
            )),
            update: safe(format!(
                "UPDATE {t} AS o SET status = CASE WHEN u.dead THEN 'dead' ELSE 'pending' END, \
                 attempts = u.attempts, last_error = COALESCE(u.error, o.last_error), \
                 available_at = now() + u.delay * interval '1 millisecond', claim_token = NULL \
                 FROM UNNEST($1::bigint[], $2::bool[], $3::int[], $4::text[], $5::bigint[]) \
                 AS u(id, dead, attempts, error, delay) WHERE o.id = u.id AND o.claim_token = $6 \
                 RETURNING o.id"
            )),
            renew: safe(format!(
                "UPDATE {t} SET available_at = now() + $3 * interval '1 millisecond' \
                 WHERE id = ANY($1) AND claim_token = $2"
            )),
            blocked: BlockedSql::new(table),
            dead_letters: safe(format!(
                "SELECT id, event_id, name, version, payload::text AS payload, attempts, \
                 COALESCE(last_error, '') AS last_error, stream_key, \
                 headers::text AS headers, correlation_id, causation_id, \
                 COALESCE(CASE WHEN created_at BETWEEN '0001-01-01' AND '9999-12-31' THEN created_at END, \
                 'epoch') AS created_at, available_at \
                 FROM {t} WHERE status = 'dead'"
            )),
            // A dead entry is never claimed, so `available_at` keeps the time it died.
            requeue: safe(format!(
                "UPDATE {t} SET status = 'pending', attempts = 0, available_at = now(), claim_token = NULL \
                 WHERE status = 'dead'"
            )),
            purge: safe(format!("DELETE FROM {t} WHERE status = 'dead'")),
            // Pending and not under a live claim: an entry a relay is
            // publishing right now is left to the relay's outcome. A claim
            // in progress holds the row lock, and the condition is checked
            // again on the row it leaves.
            discard: safe(format!(
                "DELETE FROM {t} WHERE status = 'pending' \
                 AND (claim_token IS NULL OR available_at <= now())"
            )),
        }
    }

    async fn check(pool: &PgPool, table: &TableName) -> Result<()> {
        let latest = MIGRATIONS.last().map_or(0, |(v, _)| *v);
        super::check_table(pool, table, '"', latest).await
    }

    async fn migrate(pool: &PgPool, table: &TableName) -> Result<()> {
        migrate_with(pool, table, MIGRATIONS).await
    }

    async fn insert(conn: &mut PgConnection, sql: &Sql, rows: &[NewRow]) -> Result<()> {
        if rows.iter().all(NewRow::is_plain) {
            let mut query = sqlx::query(sql.insert_plain.clone())
                .bind(rows.iter().map(|row| row.event_id).collect::<Vec<_>>())
                .bind(rows.iter().map(|row| row.name).collect::<Vec<_>>())
                .bind(
                    rows.iter()
                        .map(|row| row.payload.as_str())
                        .collect::<Vec<_>>(),
                );
            if let Some(channel) = &sql.channel {
                query = query.bind(channel);
            }
            query.execute(conn).await?;
            return Ok(());
        }
        let mut ids = Vec::with_capacity(rows.len());
        let mut names = Vec::with_capacity(rows.len());
        let mut payloads = Vec::with_capacity(rows.len());
        let mut streams = Vec::with_capacity(rows.len());
        let mut headers = Vec::with_capacity(rows.len());
        let mut correlations = Vec::with_capacity(rows.len());
        let mut causations = Vec::with_capacity(rows.len());
        let mut versions = Vec::with_capacity(rows.len());
        for row in rows {
            ids.push(row.event_id);
            names.push(row.name);
            payloads.push(row.payload.as_str());
            streams.push(row.stream_key.as_deref());
            headers.push(row.headers.as_str());
            correlations.push(row.correlation_id);
            causations.push(row.causation_id);
            versions.push(row.version);
        }
        let mut query = sqlx::query(sql.insert.clone())
            .bind(ids)
            .bind(names)
            .bind(payloads)
            .bind(streams)
            .bind(headers)
            .bind(correlations)
            .bind(causations)
            .bind(versions);
        if let Some(channel) = &sql.channel {
            query = query.bind(channel);
        }
        query.execute(conn).await?;
        Ok(())
    }

    async fn claim(
        conn: &mut PgConnection,
        sql: &Sql,
        limit: usize,
        lease: Duration,
        token: Uuid,
        after: i64,
    ) -> Result<Vec<ClaimedRow>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let claim = sqlx::query(sql.claim.clone())
            .bind(limit)
            .bind(token)
            .bind(millis(lease))
            .bind(after);
        let rows = if sql.ordered {
            // Claims of one table run one at a time, so a relay never sees an
            // earlier entry of a stream as due while another relay is
            // claiming it.
            let mut tx = conn.begin().await?;
            sqlx::query(
                "SELECT set_config('synchronous_commit', 'off', true), pg_advisory_xact_lock(hashtext($1))",
            )
            .bind(format!("outbox claim {}", sql.table))
            .execute(&mut *tx)
            .await?;
            let rows = claim.fetch_all(&mut *tx).await?;
            tx.commit().await?;
            rows
        } else {
            claim.fetch_all(&mut *conn).await?
        };
        Ok(rows
            .iter()
            .map(claimed_row)
            .collect::<std::result::Result<_, _>>()?)
    }

    fn settles_and_claims(sql: &Sql) -> bool {
        // An ordered claim takes its lock in a transaction of its own first.
        !sql.ordered
    }

    async fn settle_and_claim(
        conn: &mut PgConnection,
        sql: &Sql,
        settled: (Uuid, &[i64]),
        claim: Claim,
    ) -> Result<(Vec<i64>, Vec<ClaimedRow>)> {
        let rows = sqlx::query(sql.settle_and_claim.clone())
            .bind(i64::try_from(claim.limit).unwrap_or(i64::MAX))
            .bind(claim.token)
            .bind(millis(claim.lease))
            .bind(claim.after)
            .bind(settled.1)
            .bind(settled.0)
            .fetch_all(conn)
            .await?;
        let mut positions = Vec::new();
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            match row.try_get::<Option<Vec<i64>>, _>(SETTLED_COLUMN)? {
                Some(ids) => positions = ids,
                None => claimed.push(claimed_row(row)?),
            }
        }
        Ok((positions, claimed))
    }

    async fn settle(
        conn: &mut PgConnection,
        sql: &Sql,
        token: Uuid,
        settlement: &Settlement,
    ) -> Result<Vec<i64>> {
        let published = (!settlement.published.is_empty()).then(|| {
            sqlx::query_scalar::<_, i64>(sql.delete.clone())
                .bind(&settlement.published)
                .bind(token)
        });
        let updated = (!settlement.updates.is_empty()).then(|| {
            let n = settlement.updates.len();
            let (mut ids, mut dead, mut attempts, mut errors, mut delays) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            for u in &settlement.updates {
                ids.push(u.id);
                dead.push(u.dead);
                attempts.push(u.attempts);
                errors.push(u.error.as_deref());
                delays.push(millis(u.delay));
            }
            sqlx::query_scalar::<_, i64>(sql.update.clone())
                .bind(ids)
                .bind(dead)
                .bind(attempts)
                .bind(errors)
                .bind(delays)
                .bind(token)
        });
        let settled = match (published, updated) {
            (Some(published), Some(updated)) => {
                let mut tx = conn.begin().await?;
                let mut settled = published.fetch_all(&mut *tx).await?;
                settled.extend(updated.fetch_all(&mut *tx).await?);
                tx.commit().await?;
                settled
            }
            // A single statement is its own short transaction.
            (Some(only), None) | (None, Some(only)) => only.fetch_all(&mut *conn).await?,
            (None, None) => Vec::new(),
        };
        Ok(settled)
    }

    async fn renew(
        conn: &mut PgConnection,
        sql: &Sql,
        token: Uuid,
        ids: &[i64],
        lease: Duration,
    ) -> Result<u64> {
        let done = sqlx::query(sql.renew.clone())
            .bind(ids)
            .bind(token)
            .bind(millis(lease))
            .execute(conn)
            .await?;
        Ok(done.rows_affected())
    }

    async fn save_blocked(
        conn: &mut PgConnection,
        sql: &Sql,
        changes: &[std::result::Result<Blocked, String>],
    ) -> Result<()> {
        let (mut names, mut since, mut reasons, mut seen) = (vec![], vec![], vec![], vec![]);
        let mut gone = vec![];
        for change in changes {
            match change {
                Ok(b) => {
                    names.push(b.publisher.as_str());
                    since.push(b.since);
                    reasons.push(b.reason.as_str());
                    seen.push(b.seen_at);
                }
                Err(label) => gone.push(label.as_str()),
            }
        }
        if !names.is_empty() {
            sqlx::query(sql.blocked.save.clone())
                .bind(names)
                .bind(since)
                .bind(reasons)
                .bind(seen)
                .execute(&mut *conn)
                .await?;
        }
        if !gone.is_empty() {
            sqlx::query(sql.blocked.delete.clone())
                .bind(gone)
                .execute(conn)
                .await?;
        }
        Ok(())
    }

    async fn dead_letters(
        pool: &PgPool,
        sql: &Sql,
        which: Which,
        limit: usize,
    ) -> Result<Vec<DeadLetter>> {
        let text = format!(
            "{} AND {} ORDER BY id LIMIT $2",
            sql.dead_letters.as_str(),
            filter(&which, "available_at")
        );
        let rows = bind(sqlx::query(sqlx::AssertSqlSafe(text)), &which)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(pool)
            .await?;
        rows.iter()
            .map(|row| {
                let (headers, headers_error) = dead_headers(row.try_get("headers"));
                Ok(DeadLetter {
                    position: row.try_get("id")?,
                    event_id: row.try_get("event_id")?,
                    name: row.try_get("name")?,
                    version: u32::try_from(row.try_get::<i32, _>("version")?).unwrap_or(0),
                    payload: row.try_get("payload")?,
                    attempts: u32::try_from(row.try_get::<i32, _>("attempts")?).unwrap_or(0),
                    reason: row.try_get("last_error")?,
                    stream_key: row.try_get("stream_key")?,
                    headers,
                    headers_error,
                    correlation_id: row.try_get("correlation_id")?,
                    causation_id: row.try_get("causation_id")?,
                    created_at: row.try_get("created_at")?,
                    dead_since: row.try_get("available_at")?,
                })
            })
            .collect()
    }

    async fn requeue(pool: &PgPool, sql: &Sql, which: Which) -> Result<u64> {
        let text = format!(
            "{} AND {}",
            sql.requeue.as_str(),
            filter(&which, "available_at")
        );
        let done = bind(sqlx::query(sqlx::AssertSqlSafe(text)), &which)
            .execute(pool)
            .await?;
        tracing::info!(table = %sql.table, requeued = done.rows_affected(), "dead letters requeued");
        Ok(done.rows_affected())
    }

    async fn stats(pool: &PgPool, sql: &Sql) -> Result<Stats> {
        let rows = sqlx::query(sql.stats.clone()).fetch_all(pool).await?;
        let by_name = rows
            .iter()
            .map(name_stats)
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let blocked = sqlx::query(sql.blocked.select.clone())
            .fetch_all(pool)
            .await
            .and_then(|rows| rows.iter().map(super::blocked_row).collect());
        let blocked = super::blocked_or_none(blocked)?;
        Ok(Stats::from_names(by_name, blocked))
    }

    async fn cleanup(pool: &PgPool, sql: &Sql, older_than: Duration, limit: usize) -> Result<u64> {
        let done = sqlx::query(sql.cleanup.clone())
            .bind(millis(older_than))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .execute(pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn listen(pool: &PgPool, sql: &Sql) -> Result<Option<Box<dyn Wakeup>>> {
        let Some(channel) = &sql.channel else {
            return Ok(None);
        };
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(channel).await?;
        Ok(Some(Box::new(Listener(listener))))
    }

    async fn purge(pool: &PgPool, sql: &Sql, which: Which) -> Result<u64> {
        let text = format!(
            "{} AND {}",
            sql.purge.as_str(),
            filter(&which, "available_at")
        );
        let done = bind(sqlx::query(sqlx::AssertSqlSafe(text)), &which)
            .execute(pool)
            .await?;
        tracing::info!(table = %sql.table, purged = done.rows_affected(), "dead letters purged");
        Ok(done.rows_affected())
    }

    async fn discard(pool: &PgPool, sql: &Sql, which: Which) -> Result<u64> {
        let text = format!(
            "{} AND {}",
            sql.discard.as_str(),
            filter(&which, "available_at")
        );
        let done = bind(sqlx::query(sqlx::AssertSqlSafe(text)), &which)
            .execute(pool)
            .await?;
        tracing::info!(table = %sql.table, discarded = done.rows_affected(), "pending entries discarded");
        Ok(done.rows_affected())
    }

    async fn gauges(pool: &PgPool, sql: &Sql) -> Result<super::Gauges> {
        let (pending, dead, oldest): (i64, i64, Option<f64>) =
            sqlx::query_as(sqlx::AssertSqlSafe(gauges_sql(&sql.table).clone()))
                .fetch_one(pool)
                .await?;
        Ok(super::Gauges {
            pending: super::count(pending),
            dead: super::count(dead),
            oldest_pending_age: super::age(oldest),
        })
    }

    async fn follow_start(pool: &PgPool, sql: &Sql) -> Result<(super::FollowCursor, u64)> {
        let t = sql.table.quoted('"', "");
        // One statement, one snapshot: what it sees counts as seen.
        let start = format!(
            "SELECT pg_current_snapshot()::text, now(), \
             (SELECT COALESCE(max(id), 0)::int8 FROM {t}), \
             (SELECT count(*) FROM {t} WHERE status = 'pending')"
        );
        let (snapshot, taken_at, after, pending): (String, _, i64, i64) =
            sqlx::query_as(sqlx::AssertSqlSafe(start))
                .fetch_one(pool)
                .await?;
        let cursor = super::FollowCursor {
            after,
            snapshot,
            taken_at: Some(taken_at),
        };
        Ok((cursor, super::count(pending)))
    }

    async fn follow_next<F: FnMut(super::Followed) + Send>(
        pool: &PgPool,
        sql: &Sql,
        cursor: &mut super::FollowCursor,
        mut each: F,
    ) -> Result<u64> {
        let t = sql.table.quoted('"', "");
        let mut tx = pool.begin().await?;
        tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await?;
        // The transaction's snapshot (taken by its first query).
        let (snapshot, taken_at): (String, chrono::DateTime<chrono::Utc>) =
            sqlx::query_as("SELECT pg_current_snapshot()::text, now()")
                .fetch_one(&mut *tx)
                .await?;
        // An entry new since the previous snapshot committed after it, so
        // any claim that saw it, and the outcome that published it, came
        // later: `published_at` is after the previous read's `now()`. A few
        // seconds of slack cover a clock step.
        let published_since = cursor
            .taken_at
            .map(|at| at - chrono::Duration::seconds(FOLLOW_CLOCK_SLACK_SECS));
        let page = follow_page_sql(&t);
        let mut last = 0_i64;
        loop {
            let rows: Vec<(i64, String, String, Option<String>)> =
                sqlx::query_as(sqlx::AssertSqlSafe(page.as_str()))
                    .bind(&cursor.snapshot)
                    .bind(published_since)
                    .bind(last)
                    .bind(FOLLOW_PAGE)
                    .fetch_all(&mut *tx)
                    .await?;
            let full = rows.len() >= usize::try_from(FOLLOW_PAGE).unwrap_or(usize::MAX);
            for (position, event_id, name, stream_key) in rows {
                last = position;
                each(super::Followed {
                    position,
                    event_id,
                    name,
                    stream_key,
                });
            }
            if !full {
                break;
            }
        }
        let pending: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {t} WHERE status = 'pending'"
        )))
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        cursor.snapshot = snapshot;
        cursor.taken_at = Some(taken_at);
        Ok(super::count(pending))
    }
}

/// Rows per page of a follow read.
const FOLLOW_PAGE: i64 = 1_000;

/// How far back a follow read looks for published entries beyond the
/// previous snapshot's time.
const FOLLOW_CLOCK_SLACK_SECS: i64 = 5;

/// The gauges: the pending entries (count, oldest) through the pending
/// partial index and the dead count through the dead one; kept published
/// entries are never read.
fn gauges_sql(table: &TableName) -> String {
    let t = table.quoted('"', "");
    format!(
        "SELECT p.pending, d.dead, p.oldest FROM \
         (SELECT count(*) AS pending, \
         EXTRACT(EPOCH FROM now() - min(created_at))::float8 AS oldest \
         FROM {t} WHERE status = 'pending') AS p CROSS JOIN \
         (SELECT count(*) AS dead FROM {t} WHERE status = 'dead') AS d"
    )
}

/// One page of a follow read: entries whose transaction is visible in the
/// reading snapshot but was not in the previous one (`$1`), past position
/// `$3`, at most `$4`, in position order. An entry's transaction id (the
/// `xid` column) only says whether it had committed; a commit in between
/// is seen at the next read, whatever its position. Such an entry is
/// pending, dead, or published since `$2` (kept), so each branch reads
/// through a partial index; rows without an xid (written before migration
/// 2) are never new.
fn follow_page_sql(t: &str) -> String {
    let new = "AND xid >= pg_snapshot_xmin($1::text::pg_snapshot) \
               AND NOT pg_visible_in_snapshot(xid, $1::text::pg_snapshot) AND id > $3";
    let columns = "id, event_id::text, name, stream_key";
    format!(
        "SELECT {columns} FROM {t} WHERE status = 'pending' {new} \
         UNION ALL SELECT {columns} FROM {t} WHERE status = 'dead' {new} \
         UNION ALL SELECT {columns} FROM {t} WHERE status = 'published' \
         AND published_at >= $2 {new} \
         ORDER BY id LIMIT $4"
    )
}

/// The condition selecting `which` entries; its parameter, if any, is `$1`.
fn filter(which: &Which, since: &str) -> String {
    match which {
        Which::One(_) => "event_id = $1".to_owned(),
        Which::All => "$1::bigint IS NULL".to_owned(),
        Which::Name(_) => "name = $1".to_owned(),
        Which::DeadFor(_) => format!("{since} < now() - $1 * interval '1 millisecond'"),
    }
}

fn bind<'q>(
    query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    which: &'q Which,
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    match which {
        Which::One(id) => query.bind(id),
        Which::All => query.bind(None::<i64>),
        Which::Name(name) => query.bind(name),
        Which::DeadFor(age) => query.bind(millis(*age)),
    }
}

/// Applies the `migrations` that `<table>_schema` does not list yet, in one
/// transaction under an advisory lock (outbox and inbox tables alike).
async fn migrate_with(pool: &PgPool, table: &TableName, migrations: &[(i32, &str)]) -> Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(format!("outbox migrate {table}"))
        .execute(&mut *tx)
        .await?;
    let versions = table.quoted('"', "_schema");
    let create = format!(
        "CREATE TABLE IF NOT EXISTS {versions} (version INTEGER PRIMARY KEY, \
         applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(create))
        .execute(&mut *tx)
        .await?;
    let select = format!("SELECT version FROM {versions}");
    let applied: Vec<i32> = sqlx::query_scalar(sqlx::AssertSqlSafe(select))
        .fetch_all(&mut *tx)
        .await?;
    for (version, up) in migrations {
        if applied.contains(version) {
            continue;
        }
        let up = render(up, table, '"');
        sqlx::raw_sql(sqlx::AssertSqlSafe(up))
            .execute(&mut *tx)
            .await?;
        let insert = format!("INSERT INTO {versions} (version) VALUES ($1)");
        sqlx::query(sqlx::AssertSqlSafe(insert))
            .bind(version)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// LISTEN on the outbox's channel; reconnects by itself (sqlx's `PgListener`).
struct Listener(PgListener);

#[async_trait::async_trait]
impl Wakeup for Listener {
    async fn wait(&mut self) {
        match self.0.recv().await {
            // Several commits may have notified: one run serves them all.
            Ok(_) => while self.0.next_buffered().is_some() {},
            Err(err) => {
                tracing::warn!(error = %err, "outbox LISTEN connection failed; polling until it is back");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Where the combined settle-and-claim lists the settled positions (after
/// the [`RETURNING`] columns).
const SETTLED_COLUMN: usize = 11;

/// One claimed row, by position in RETURNING order (no column-name lookups
/// on the hot path).
fn claimed_row(row: &sqlx::postgres::PgRow) -> std::result::Result<ClaimedRow, sqlx::Error> {
    let id = row.try_get(0)?;
    Ok(decode_claimed(id, row, |row| {
        Ok(ClaimedRow {
            id,
            event_id: row.try_get(1)?,
            name: row.try_get(2)?,
            version: row.try_get(10)?,
            payload: row.try_get(3)?,
            stream_key: row.try_get(4)?,
            headers: row.try_get(5)?,
            correlation_id: row.try_get(6)?,
            causation_id: row.try_get(7)?,
            created_at: row
                .try_get::<Option<_>, _>(8)?
                .ok_or_else(|| decode_error("created_at is out of range"))?,
            attempts: row.try_get(9)?,
            poison: None,
        })
    }))
}

fn decode_error(what: &str) -> sqlx::Error {
    sqlx::Error::Decode(what.into())
}
