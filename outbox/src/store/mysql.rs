//! MySQL/MariaDB: claims with `FOR UPDATE SKIP LOCKED` and a lease, outcomes
//! in one short transaction per batch, batch inserts as multi-row `INSERT`s.
//!
//! Needs MariaDB 10.6+ or MySQL 8.0.16+ (`SKIP LOCKED`, `JSON_TABLE`,
//! enforced `CHECK`s, expression defaults).
//!
//! - There is no `UPDATE .. RETURNING`, so a claim is three statements in
//!   one short `READ COMMITTED` transaction:
//!   1. a plain (non-locking) read of the ids of the first due entries, in
//!      id order, through the `(status, id)` index;
//!   2. `SELECT .. FOR UPDATE SKIP LOCKED` of those ids by primary key,
//!      re-checking that they are still due: this locks the rows this relay
//!      takes and skips the ones another relay holds;
//!   3. one `UPDATE` setting the claim token and the lease on exactly the
//!      locked rows (which cannot change in between), by primary key.
//!
//!   Locking only by primary key matters on MariaDB: a locking scan of the
//!   secondary index keeps the locks of rows it examined but did not take
//!   (entries leased to other relays), and it waits on, instead of
//!   skipping, index entries that a concurrent settlement is deleting; the
//!   two together deadlock with settlements. `READ COMMITTED` keeps `InnoDB`
//!   from taking gap locks, which would make the application's inserts of
//!   new entries wait for the claim. (Under `READ COMMITTED` `InnoDB` needs
//!   `binlog_format` `ROW` or `MIXED`, the defaults, if the binary log is on.)
//! - Lists of ids and per-row outcomes travel as one JSON parameter unpacked
//!   with `JSON_TABLE` (as `UNNEST` does on PostgreSQL), so claims and
//!   settlements have a fixed text, one prepared statement each, whatever
//!   the batch size. The list drives the join (`STRAIGHT_JOIN`, `FORCE INDEX
//!   (PRIMARY)`): left to itself the optimizer scans a small table instead.
//! - Outcomes of a batch are one `DELETE` (or, keeping published entries, an
//!   `UPDATE`) and one `UPDATE` carrying every row's new state, both checking
//!   the claim token, in one transaction.
//! - Times are `DATETIME(6)` in UTC, always written from the database clock
//!   with `UTC_TIMESTAMP(6)`, so neither the session `time_zone` nor the
//!   relay hosts' clocks matter.
//! - DDL is not transactional on MySQL: migrations are serialized with
//!   `GET_LOCK` on a dedicated connection and recorded in `<table>_schema`.
//! - With per-stream order, claims of one table take turns: each claim
//!   first locks the first row of `<table>_schema` (`FOR UPDATE`, released
//!   at commit), so the stream gate never sees an entry another relay is
//!   claiming as due. A transactional lock, unlike `GET_LOCK`, cannot
//!   outlive a claim that is cancelled half-way.

use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::types::uuid::fmt::Hyphenated;
use sqlx::{Acquire, Executor, MySql, MySqlConnection, MySqlPool, Row};
use uuid::Uuid;

use super::private::Store;
use sqlx::SqlStr;

use super::{
    ClaimedRow, DeadLetter, NewRow, Settlement, SqlOptions, Stats, TableName, Which, dead_headers,
    decode_claimed, name_stats, render, safe,
};
use crate::error::Result;
use crate::publisher::Blocked;

mod inbox;

const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        include_str!("../../migrations/mysql/0001_create_outbox.up.sql"),
    ),
    (
        2,
        include_str!("../../migrations/mysql/0002_blocked.up.sql"),
    ),
    (
        3,
        include_str!("../../migrations/mysql/0003_version.up.sql"),
    ),
];

/// Rows per INSERT statement (8 parameters each, far below MySQL's 65,535).
const INSERT_CHUNK_ROWS: usize = 500;

/// Bytes of payload and headers per INSERT statement, well under the
/// default `max_allowed_packet` (16 MiB on MariaDB, 64 MiB on MySQL).
const INSERT_CHUNK_BYTES: usize = 4 << 20;

/// Longest delay or lease written (100 years), so the date arithmetic can
/// never leave `DATETIME`'s range.
const MAX_DELAY_MICROS: i64 = 100 * 365 * 24 * 3600 * 1_000_000;

/// Seconds one `GET_LOCK` call waits before it is retried.
const LOCK_WAIT_SECS: i64 = 10;

/// What a claim reads (`stream_key` fifth: a poison row keeps it by position).
const COLUMNS: &str = "o.id, o.event_id, o.name, o.payload, o.stream_key, o.headers, o.correlation_id, \
     o.causation_id, o.created_at, o.attempts, o.version";

/// What a dead-letter listing reads.
const DEAD_COLUMNS: &str = "id, event_id, name, version, payload, attempts, \
     COALESCE(last_error, '') AS last_error, stream_key, headers, correlation_id, causation_id, \
     created_at, available_at";

/// The SQL for one table.
pub struct Sql {
    table: TableName,
    insert_prefix: SqlStr,
    /// Per-stream order: claims lock `serialize` first.
    ordered: bool,
    serialize: SqlStr,
    candidates: SqlStr,
    lock: SqlStr,
    lease: SqlStr,
    /// Deletes published entries, or with `keep_published` marks them.
    publish: SqlStr,
    update: SqlStr,
    /// The claimed rows among a list that still carry a token, locked.
    still_claimed: SqlStr,
    renew: SqlStr,
    blocked: SqlStr,
    save_blocked: SqlStr,
    unblock: SqlStr,
    stats: SqlStr,
    cleanup: SqlStr,
    /// The next three end in `WHERE status = 'dead'`; `filter` adds the rest.
    dead_letters: SqlStr,
    requeue: SqlStr,
    purge: SqlStr,
    discard: DiscardSql,
}

/// The statements of a discard, which works as a claim does: a plain read
/// of the ids of pending entries under no live claim (never claimed,
/// settled, or the lease ran out), then a delete of those by primary key
/// that checks again (an entry claimed in between is left to its relay).
/// No secondary-index range is locked.
struct DiscardSql {
    /// `filter` and the paging follow.
    candidates: SqlStr,
    /// Takes the list of ids.
    delete: SqlStr,
}

impl DiscardSql {
    fn new(t: &str, by_ids: &str) -> Self {
        let unclaimed =
            |o: &str| format!("({o}claim_token IS NULL OR {o}available_at <= UTC_TIMESTAMP(6))");
        Self {
            candidates: safe(format!(
                "SELECT id FROM {t} WHERE status = 'pending' AND {}",
                unclaimed("")
            )),
            delete: safe(format!(
                "DELETE o FROM {by_ids} WHERE o.status = 'pending' AND {}",
                unclaimed("o.")
            )),
        }
    }
}

/// Entries one discard transaction deletes at most.
const DISCARD_BATCH: usize = 1_000;

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros())
        .unwrap_or(i64::MAX)
        .min(MAX_DELAY_MICROS)
}

fn limit_param(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// A JSON array of ids, for `JSON_TABLE(?, '$[*]' COLUMNS (id BIGINT PATH '$'))`.
fn id_list(ids: impl IntoIterator<Item = i64>) -> String {
    serde_json::Value::from_iter(ids).to_string()
}

fn uuid_opt(value: Option<Hyphenated>) -> Option<Uuid> {
    value.map(Uuid::from)
}

/// Bytes a row adds to an INSERT packet, roughly.
fn row_bytes(row: &NewRow) -> usize {
    row.payload.len()
        + row.headers.len()
        + row.name.len()
        + row.stream_key.as_ref().map_or(0, String::len)
        + 3 * 36
}

impl Store for MySql {
    type Sql = Sql;
    const SCHEMAS: bool = true;

    fn sql(table: &TableName, options: SqlOptions) -> Sql {
        let t = table.quoted('`', "");
        let versions = table.quoted('`', "_schema");
        // An entry of a stream waits while an earlier one of that stream is
        // claimed, backing off, or dead. Checked when choosing candidates,
        // which ordered claims do one at a time (`serialize`).
        let stream_gate = if options.ordered {
            format!(
                " AND (c.stream_key IS NULL OR NOT EXISTS (SELECT 1 FROM {t} e \
                 WHERE e.stream_key = c.stream_key AND e.id < c.id \
                 AND (e.status = 'dead' OR (e.status = 'pending' \
                 AND (e.available_at > UTC_TIMESTAMP(6) OR e.id <= ?)))))"
            )
        } else {
            String::new()
        };
        // The list drives the join and each id is a primary-key lookup. Left
        // to itself the optimizer scans a small outbox table instead, and the
        // scan waits for rows that other relays hold locked.
        let by_ids = format!(
            "JSON_TABLE(?, '$[*]' COLUMNS (id BIGINT PATH '$')) AS p \
             STRAIGHT_JOIN {t} AS o FORCE INDEX (PRIMARY) ON o.id = p.id"
        );
        let publish = if options.keep_published {
            format!(
                "UPDATE {by_ids} SET o.status = 'published', \
                 o.published_at = UTC_TIMESTAMP(6), o.claim_token = NULL WHERE o.claim_token = ?"
            )
        } else {
            format!("DELETE o FROM {by_ids} WHERE o.claim_token = ?")
        };
        let blocked_table = table.quoted('`', "_blocked");
        Sql {
            table: table.clone(),
            ordered: options.ordered,
            serialize: safe(format!(
                "SELECT version FROM {versions} ORDER BY version LIMIT 1 FOR UPDATE"
            )),
            insert_prefix: safe(format!(
                "INSERT INTO {t} (event_id, name, payload, stream_key, headers, correlation_id, causation_id, \
                 version, created_at, available_at) VALUES "
            )),
            candidates: safe(format!(
                "SELECT c.id FROM {t} AS c WHERE c.status = 'pending' AND c.id > ? \
                 AND c.available_at <= UTC_TIMESTAMP(6){stream_gate} ORDER BY c.id LIMIT ?"
            )),
            // No ORDER BY: the join reads the candidates in list (= id) order
            // and stops at the limit, so it locks no row it does not return
            // (a sort would lock every candidate first).
            lock: safe(format!(
                "SELECT {COLUMNS} FROM {by_ids} \
                 WHERE o.status = 'pending' AND o.available_at <= UTC_TIMESTAMP(6) \
                 LIMIT ? FOR UPDATE SKIP LOCKED"
            )),
            lease: safe(format!(
                "UPDATE {by_ids} \
                 SET o.claim_token = ?, o.available_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND"
            )),
            publish: safe(publish),
            update: safe(format!(
                "UPDATE JSON_TABLE(?, '$[*]' COLUMNS (\
                 id BIGINT PATH '$.id', status VARCHAR(16) PATH '$.status', attempts INT PATH '$.attempts', \
                 error LONGTEXT CHARACTER SET utf8mb4 PATH '$.error', delay BIGINT PATH '$.delay')) AS u \
                 STRAIGHT_JOIN {t} AS o FORCE INDEX (PRIMARY) ON o.id = u.id \
                 SET o.status = u.status, o.attempts = u.attempts, o.last_error = COALESCE(u.error, o.last_error), \
                 o.available_at = IF(u.status = 'dead', UTC_TIMESTAMP(6), \
                 UTC_TIMESTAMP(6) + INTERVAL u.delay MICROSECOND), o.claim_token = NULL \
                 WHERE o.claim_token = ?"
            )),
            still_claimed: safe(format!(
                "SELECT o.id FROM {by_ids} WHERE o.claim_token = ? FOR UPDATE"
            )),
            renew: safe(format!(
                "UPDATE {by_ids} SET o.available_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND \
                 WHERE o.claim_token = ?"
            )),
            blocked: safe(format!(
                "SELECT publisher, since, reason, seen_at FROM {blocked_table} ORDER BY publisher"
            )),
            save_blocked: safe(format!(
                "INSERT INTO {blocked_table} (publisher, since, reason, seen_at) VALUES (?, ?, ?, ?) \
                 ON DUPLICATE KEY UPDATE since = VALUES(since), reason = VALUES(reason), \
                 seen_at = VALUES(seen_at)"
            )),
            unblock: safe(format!("DELETE FROM {blocked_table} WHERE publisher = ?")),
            stats: safe(format!(
                "SELECT name, version, \
                 COUNT(CASE WHEN status = 'pending' THEN 1 END) AS pending, \
                 COUNT(CASE WHEN status = 'pending' AND attempts > 0 THEN 1 END) AS retrying, \
                 COUNT(CASE WHEN status = 'dead' THEN 1 END) AS dead, \
                 COUNT(CASE WHEN status = 'published' THEN 1 END) AS published, \
                 TIMESTAMPDIFF(MICROSECOND, MIN(CASE WHEN status = 'pending' THEN created_at END), \
                 UTC_TIMESTAMP(6)) / 1e6 AS oldest \
                 FROM {t} GROUP BY name, version ORDER BY name, version"
            )),
            cleanup: safe(format!(
                "DELETE FROM {t} WHERE status = 'published' \
                 AND published_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND LIMIT ?"
            )),
            dead_letters: safe(format!(
                "SELECT {DEAD_COLUMNS} FROM {t} WHERE status = 'dead'"
            )),
            // A dead entry is never claimed, so `available_at` keeps the time it died.
            requeue: safe(format!(
                "UPDATE {t} SET status = 'pending', attempts = 0, available_at = UTC_TIMESTAMP(6), \
                 claim_token = NULL WHERE status = 'dead'"
            )),
            purge: safe(format!("DELETE FROM {t} WHERE status = 'dead'")),
            discard: DiscardSql::new(&t, &by_ids),
        }
    }

    async fn check(pool: &MySqlPool, table: &TableName) -> Result<()> {
        let latest = MIGRATIONS.last().map_or(0, |(v, _)| *v);
        super::check_table(pool, table, '`', latest).await
    }

    async fn migrate(pool: &MySqlPool, table: &TableName) -> Result<()> {
        migrate_with(pool, table, MIGRATIONS).await
    }

    async fn insert(conn: &mut MySqlConnection, sql: &Sql, rows: &[NewRow]) -> Result<()> {
        let mut start = 0;
        while start < rows.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < rows.len() && end - start < INSERT_CHUNK_ROWS {
                let size = row_bytes(&rows[end]);
                if end > start && bytes + size > INSERT_CHUNK_BYTES {
                    break;
                }
                bytes += size;
                end += 1;
            }
            insert_chunk(conn, sql, &rows[start..end]).await?;
            start = end;
        }
        Ok(())
    }

    async fn claim(
        conn: &mut MySqlConnection,
        sql: &Sql,
        limit: usize,
        lease: Duration,
        token: Uuid,
        after: i64,
    ) -> Result<Vec<ClaimedRow>> {
        // For the next transaction only: no gap locks while scanning for due rows.
        (&mut *conn)
            .execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            .await?;
        let mut tx = conn.begin().await?;
        if sql.ordered {
            sqlx::query(sql.serialize.clone()).execute(&mut *tx).await?;
        }
        // Twice as many candidates as wanted, so a relay that races another
        // one for the same first entries still fills its batch.
        let mut candidates = sqlx::query_scalar(sql.candidates.clone()).bind(after);
        if sql.ordered {
            // The stream gate's own `e.id <= ?`.
            candidates = candidates.bind(after);
        }
        let candidates: Vec<i64> = candidates
            .bind(limit_param(limit.saturating_mul(2)))
            .fetch_all(&mut *tx)
            .await?;
        if candidates.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let rows = sqlx::query(sql.lock.clone())
            .bind(id_list(candidates))
            .bind(limit_param(limit))
            .fetch_all(&mut *tx)
            .await?;
        let mut claimed = rows
            .iter()
            .map(|row| {
                let id = row.try_get("id")?;
                Ok(decode_claimed(id, row, |row| {
                    Ok(ClaimedRow {
                        id,
                        event_id: row.try_get::<Hyphenated, _>("event_id")?.into(),
                        name: row.try_get("name")?,
                        version: row.try_get("version")?,
                        payload: row.try_get("payload")?,
                        stream_key: row.try_get("stream_key")?,
                        headers: row.try_get("headers")?,
                        correlation_id: uuid_opt(row.try_get("correlation_id")?),
                        causation_id: uuid_opt(row.try_get("causation_id")?),
                        created_at: row.try_get("created_at")?,
                        attempts: row.try_get("attempts")?,
                        poison: None,
                    })
                }))
            })
            .collect::<Result<Vec<_>>>()?;
        claimed.sort_unstable_by_key(|row| row.id);
        if !claimed.is_empty() {
            let ids = id_list(claimed.iter().map(|row| row.id));
            sqlx::query(sql.lease.clone())
                .bind(ids)
                .bind(token.hyphenated())
                .bind(micros(lease))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(claimed)
    }

    async fn settle(
        conn: &mut MySqlConnection,
        sql: &Sql,
        token: Uuid,
        settlement: &Settlement,
    ) -> Result<Vec<i64>> {
        if settlement.published.is_empty() && settlement.updates.is_empty() {
            return Ok(Vec::new());
        }
        // No RETURNING for UPDATE here: the rows still claimed are read (and
        // locked) first, in the same transaction.
        let mut tx = conn.begin().await?;
        let ids = settlement
            .published
            .iter()
            .copied()
            .chain(settlement.updates.iter().map(|u| u.id));
        let settled: Vec<i64> = sqlx::query_scalar(sql.still_claimed.clone())
            .bind(id_list(ids))
            .bind(token.hyphenated())
            .fetch_all(&mut *tx)
            .await?;
        if !settlement.published.is_empty() {
            sqlx::query(sql.publish.clone())
                .bind(id_list(settlement.published.iter().copied()))
                .bind(token.hyphenated())
                .execute(&mut *tx)
                .await?;
        }
        if !settlement.updates.is_empty() {
            let updates: serde_json::Value = settlement
                .updates
                .iter()
                .map(|u| {
                    let mut entry = serde_json::json!({
                        "id": u.id,
                        "status": if u.dead { "dead" } else { "pending" },
                        "attempts": u.attempts,
                        "delay": micros(u.delay),
                    });
                    // A missing key reads as NULL, which keeps the stored error.
                    if let Some(error) = &u.error {
                        entry["error"] = serde_json::Value::from(error.as_str());
                    }
                    entry
                })
                .collect();
            sqlx::query(sql.update.clone())
                .bind(updates.to_string())
                .bind(token.hyphenated())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(settled)
    }

    async fn renew(
        conn: &mut MySqlConnection,
        sql: &Sql,
        token: Uuid,
        ids: &[i64],
        lease: Duration,
    ) -> Result<u64> {
        let done = sqlx::query(sql.renew.clone())
            .bind(id_list(ids.iter().copied()))
            .bind(micros(lease))
            .bind(token.hyphenated())
            .execute(conn)
            .await?;
        Ok(done.rows_affected())
    }

    async fn save_blocked(
        conn: &mut MySqlConnection,
        sql: &Sql,
        changes: &[std::result::Result<Blocked, String>],
    ) -> Result<()> {
        for change in changes {
            match change {
                Ok(b) => {
                    sqlx::query(sql.save_blocked.clone())
                        .bind(&b.publisher)
                        .bind(b.since)
                        .bind(&b.reason)
                        .bind(b.seen_at)
                        .execute(&mut *conn)
                        .await?;
                }
                Err(label) => {
                    sqlx::query(sql.unblock.clone())
                        .bind(label)
                        .execute(&mut *conn)
                        .await?;
                }
            }
        }
        Ok(())
    }

    async fn dead_letters(
        pool: &MySqlPool,
        sql: &Sql,
        which: Which,
        limit: usize,
    ) -> Result<Vec<DeadLetter>> {
        let text = format!(
            "{} AND {} ORDER BY id LIMIT ?",
            sql.dead_letters.as_str(),
            filter(&which, "available_at")
        );
        let rows = bind(sqlx::query(sqlx::AssertSqlSafe(text)), &which)
            .bind(limit_param(limit))
            .fetch_all(pool)
            .await?;
        rows.iter()
            .map(|row| {
                let (headers, headers_error) = dead_headers(row.try_get("headers"));
                Ok(DeadLetter {
                    position: row.try_get("id")?,
                    event_id: row.try_get::<Hyphenated, _>("event_id")?.into(),
                    name: row.try_get("name")?,
                    version: u32::try_from(row.try_get::<i32, _>("version")?).unwrap_or(0),
                    payload: row.try_get("payload")?,
                    attempts: u32::try_from(row.try_get::<i32, _>("attempts")?).unwrap_or(0),
                    reason: row.try_get("last_error")?,
                    stream_key: row.try_get("stream_key")?,
                    headers,
                    headers_error,
                    correlation_id: uuid_opt(row.try_get("correlation_id")?),
                    causation_id: uuid_opt(row.try_get("causation_id")?),
                    created_at: row.try_get("created_at")?,
                    dead_since: row.try_get("available_at")?,
                })
            })
            .collect()
    }

    async fn requeue(pool: &MySqlPool, sql: &Sql, which: Which) -> Result<u64> {
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

    async fn stats(pool: &MySqlPool, sql: &Sql) -> Result<Stats> {
        let rows = sqlx::query(sql.stats.clone()).fetch_all(pool).await?;
        let by_name = rows
            .iter()
            .map(name_stats)
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let blocked = sqlx::query(sql.blocked.clone())
            .fetch_all(pool)
            .await
            .and_then(|rows| rows.iter().map(super::blocked_row).collect());
        let blocked = super::blocked_or_none(blocked)?;
        Ok(Stats::from_names(by_name, blocked))
    }

    async fn cleanup(
        pool: &MySqlPool,
        sql: &Sql,
        older_than: Duration,
        limit: usize,
    ) -> Result<u64> {
        let mut conn = pool.acquire().await?;
        // No gap locks: under REPEATABLE READ the scan of the published range
        // would lock the gap where new pending entries are inserted.
        (&mut *conn)
            .execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            .await?;
        let mut tx = conn.begin().await?;
        let done = sqlx::query(sql.cleanup.clone())
            .bind(micros(older_than))
            .bind(limit_param(limit))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    async fn purge(pool: &MySqlPool, sql: &Sql, which: Which) -> Result<u64> {
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

    async fn discard(pool: &MySqlPool, sql: &Sql, which: Which) -> Result<u64> {
        let text = format!(
            "{} AND {} AND id > ? ORDER BY id LIMIT ?",
            sql.discard.candidates.as_str(),
            filter(&which, "available_at")
        );
        let (mut after, mut total) = (0_i64, 0_u64);
        loop {
            let mut conn = pool.acquire().await?;
            // No gap locks, as in a claim.
            (&mut *conn)
                .execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
                .await?;
            let mut tx = conn.begin().await?;
            let ids = bind(sqlx::query(sqlx::AssertSqlSafe(text.as_str())), &which)
                .bind(after)
                .bind(limit_param(DISCARD_BATCH))
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|row| row.try_get::<i64, _>(0))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let Some(&last) = ids.last() else {
                tx.commit().await?;
                break;
            };
            let full = ids.len() >= DISCARD_BATCH;
            let done = sqlx::query(sql.discard.delete.clone())
                .bind(id_list(ids))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            total += done.rows_affected();
            after = last;
            if !full {
                break;
            }
        }
        tracing::info!(table = %sql.table, discarded = total, "pending entries discarded");
        Ok(total)
    }

    async fn gauges(pool: &MySqlPool, sql: &Sql) -> Result<super::Gauges> {
        let t = sql.table.quoted('`', "");
        // Two ranges of the (status, id) index; published rows are not read.
        let gauges = format!(
            "SELECT p.pending, d.dead, p.oldest FROM \
             (SELECT COUNT(*) AS pending, TIMESTAMPDIFF(MICROSECOND, MIN(created_at), \
             UTC_TIMESTAMP(6)) / 1e6 AS oldest FROM {t} WHERE status = 'pending') AS p \
             CROSS JOIN (SELECT COUNT(*) AS dead FROM {t} WHERE status = 'dead') AS d"
        );
        let (pending, dead, oldest): (i64, i64, Option<f64>) =
            sqlx::query_as(sqlx::AssertSqlSafe(gauges))
                .fetch_one(pool)
                .await?;
        Ok(super::Gauges {
            pending: super::count(pending),
            dead: super::count(dead),
            oldest_pending_age: super::age(oldest),
        })
    }

    async fn follow_start(pool: &MySqlPool, sql: &Sql) -> Result<(super::FollowCursor, u64)> {
        let t = sql.table.quoted('`', "");
        let start = format!(
            "SELECT CAST(COALESCE(MAX(id), 0) AS SIGNED), \
             (SELECT COUNT(*) FROM {t} WHERE status = 'pending') FROM {t}"
        );
        let (after, pending): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(start))
            .fetch_one(pool)
            .await?;
        let cursor = super::FollowCursor {
            after,
            ..super::FollowCursor::default()
        };
        Ok((cursor, super::count(pending)))
    }

    async fn follow_next<F: FnMut(super::Followed) + Send>(
        pool: &MySqlPool,
        sql: &Sql,
        cursor: &mut super::FollowCursor,
        each: F,
    ) -> Result<u64> {
        let t = sql.table.quoted('`', "");
        let mut conn = pool.acquire().await?;
        // Every read of a REPEATABLE READ transaction comes from the
        // snapshot its first read took.
        (&mut *conn)
            .execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .await?;
        let mut tx = conn.begin().await?;
        let page = format!(
            "SELECT id, event_id, name, stream_key FROM {t} WHERE id > ? ORDER BY id LIMIT ?"
        );
        let pending = format!("SELECT COUNT(*) FROM {t} WHERE status = 'pending'");
        let (last, pending) =
            super::follow_by_position::<MySql, F>(&mut tx, &page, &pending, cursor.after, each)
                .await?;
        tx.commit().await?;
        cursor.after = last;
        Ok(pending)
    }
}

/// The condition selecting `which` entries, with at most one parameter.
fn filter(which: &Which, since: &str) -> String {
    match which {
        Which::One(_) => "event_id = ?".to_owned(),
        Which::All => "TRUE".to_owned(),
        Which::Name(_) => "name = ?".to_owned(),
        Which::DeadFor(_) => format!("{since} < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND"),
    }
}

/// Binds the parameter of [`filter`], if any.
fn bind<'q>(
    query: sqlx::query::Query<'q, MySql, sqlx::mysql::MySqlArguments>,
    which: &'q Which,
) -> sqlx::query::Query<'q, MySql, sqlx::mysql::MySqlArguments> {
    match which {
        Which::One(id) => query.bind(id.hyphenated()),
        Which::All => query,
        Which::Name(name) => query.bind(name.as_str()),
        Which::DeadFor(age) => query.bind(micros(*age)),
    }
}

/// Applies the `migrations` that `<table>_schema` does not list yet (outbox
/// and inbox tables alike), serialized with `GET_LOCK`: DDL is not
/// transactional here.
async fn migrate_with(
    pool: &MySqlPool,
    table: &TableName,
    migrations: &[(i32, &str)],
) -> Result<()> {
    let mut conn = pool.acquire().await?;
    // `GET_LOCK` belongs to the session: should this future be dropped
    // half-way, closing the connection is what releases the lock.
    conn.close_on_drop();
    // Lock names are server-wide (and at most 64 characters on MySQL):
    // hash the database-qualified table name.
    let display = table.to_string();
    let lock: String =
        sqlx::query_scalar("SELECT CONCAT('outbox:', SHA1(IF(?, ?, CONCAT(DATABASE(), '.', ?))))")
            .bind(table.has_schema())
            .bind(display.as_str())
            .bind(display.as_str())
            .fetch_one(&mut *conn)
            .await?;
    loop {
        let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, ?)")
            .bind(lock.as_str())
            .bind(LOCK_WAIT_SECS)
            .fetch_one(&mut *conn)
            .await?;
        match got {
            Some(1) => break,
            Some(_) => {
                tracing::debug!(table = %table, "waiting for another migration of the table");
            }
            None => {
                return Err(sqlx::Error::Protocol(format!(
                    "GET_LOCK for migrating table {table} returned NULL"
                ))
                .into());
            }
        }
    }
    let outcome = apply(&mut conn, table, migrations).await;
    // The connection is closed on drop anyway; releasing first lets a
    // waiting migration go on at once.
    let _ = sqlx::query("SELECT RELEASE_LOCK(?)")
        .bind(lock.as_str())
        .execute(&mut *conn)
        .await;
    outcome
}

/// Applies the migrations not yet recorded in `<table>_schema`; the caller
/// holds the migration lock.
async fn apply(
    conn: &mut PoolConnection<MySql>,
    table: &TableName,
    migrations: &[(i32, &str)],
) -> Result<()> {
    let versions = table.quoted('`', "_schema");
    let create = format!(
        "CREATE TABLE IF NOT EXISTS {versions} (version INT NOT NULL PRIMARY KEY, \
         applied_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6))) ENGINE = InnoDB"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(create))
        .execute(&mut **conn)
        .await?;
    let select = format!("SELECT version FROM {versions}");
    let applied: Vec<i32> = sqlx::query_scalar(sqlx::AssertSqlSafe(select))
        .fetch_all(&mut **conn)
        .await?;
    for (version, up) in migrations {
        if applied.contains(version) {
            continue;
        }
        let up = render(up, table, '`');
        sqlx::raw_sql(sqlx::AssertSqlSafe(up))
            .execute(&mut **conn)
            .await?;
        let insert =
            format!("INSERT INTO {versions} (version, applied_at) VALUES (?, UTC_TIMESTAMP(6))");
        sqlx::query(sqlx::AssertSqlSafe(insert))
            .bind(version)
            .execute(&mut **conn)
            .await?;
        tracing::info!(table = %table, version, "outbox migration applied");
    }
    Ok(())
}

/// One multi-row INSERT.
async fn insert_chunk(conn: &mut MySqlConnection, sql: &Sql, chunk: &[NewRow]) -> Result<()> {
    const ROW: &str = "(?,?,?,?,?,?,?,?,UTC_TIMESTAMP(6),UTC_TIMESTAMP(6))";
    let mut text =
        String::with_capacity(sql.insert_prefix.as_str().len() + chunk.len() * (ROW.len() + 1));
    text.push_str(sql.insert_prefix.as_str());
    for i in 0..chunk.len() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(ROW);
    }
    let mut query = sqlx::query(sqlx::AssertSqlSafe(text));
    for row in chunk {
        query = query
            .bind(row.event_id.hyphenated())
            .bind(row.name)
            .bind(row.payload.as_str())
            .bind(row.stream_key.as_deref())
            .bind(row.headers.as_str())
            .bind(row.correlation_id.map(Uuid::hyphenated))
            .bind(row.causation_id.map(Uuid::hyphenated))
            .bind(row.version);
    }
    query.execute(&mut *conn).await?;
    Ok(())
}
