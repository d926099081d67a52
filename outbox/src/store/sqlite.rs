//! SQLite: one writer at a time, so claims are a single `UPDATE .. RETURNING`
//! (the write lock is held for that statement only, never while publishing).
//! Times are stored as Unix milliseconds.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::types::uuid::fmt::Hyphenated;
use sqlx::{Acquire, Row, Sqlite, SqliteConnection, SqlitePool};
use uuid::Uuid;

use super::private::Store;
use sqlx::SqlStr;

use super::{
    ClaimedRow, DeadLetter, NewRow, Settlement, SqlOptions, Stats, TableName, Which, dead_headers,
    decode_claimed, millis, name_stats, render, safe,
};
use crate::error::Result;
use crate::publisher::Blocked;

mod inbox;

const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        include_str!("../../migrations/sqlite/0001_create_outbox.up.sql"),
    ),
    (
        2,
        include_str!("../../migrations/sqlite/0002_blocked.up.sql"),
    ),
    (
        3,
        include_str!("../../migrations/sqlite/0003_version.up.sql"),
    ),
];

/// Rows per INSERT statement (10 parameters each, well under SQLite's 32,766).
const INSERT_CHUNK: usize = 500;

/// The SQL for one table.
pub struct Sql {
    table: TableName,
    insert_prefix: SqlStr,
    claim: SqlStr,
    /// Published entries are kept (`delete` is then an UPDATE taking the time).
    keep_published: bool,
    delete: SqlStr,
    stats: SqlStr,
    cleanup: SqlStr,
    update: SqlStr,
    renew: SqlStr,
    blocked: SqlStr,
    save_blocked: SqlStr,
    unblock: SqlStr,
    dead_letters: SqlStr,
    requeue: SqlStr,
    purge: SqlStr,
    discard: SqlStr,
}

fn now_millis() -> i64 {
    Utc::now().timestamp_millis()
}

fn time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn uuid_opt(value: Option<Hyphenated>) -> Option<Uuid> {
    value.map(Uuid::from)
}

impl Store for Sqlite {
    type Sql = Sql;
    const SCHEMAS: bool = false;

    fn sql(table: &TableName, options: SqlOptions) -> Sql {
        let t = table.quoted('"', "");
        // One writer at a time: the claim statement itself is serialized, so
        // the stream gate needs no extra lock here.
        let stream_gate = if options.ordered {
            format!(
                " AND (c.stream_key IS NULL OR NOT EXISTS (SELECT 1 FROM {t} e \
                 WHERE e.stream_key = c.stream_key AND e.id < c.id \
                 AND (e.status = 'dead' OR (e.status = 'pending' AND (e.available_at > ?2 OR e.id <= ?5)))))"
            )
        } else {
            String::new()
        };
        let delete = if options.keep_published {
            format!(
                "UPDATE {t} SET status = 'published', published_at = ?3, claim_token = NULL \
                 WHERE claim_token = ?1 AND id IN (SELECT value FROM json_each(?2)) RETURNING id"
            )
        } else {
            format!(
                "DELETE FROM {t} WHERE claim_token = ?1 AND id IN (SELECT value FROM json_each(?2)) \
                 RETURNING id"
            )
        };
        let blocked_table = table.quoted('"', "_blocked");
        Sql {
            table: table.clone(),
            insert_prefix: safe(format!(
                "INSERT INTO {t} (event_id, name, payload, stream_key, headers, correlation_id, causation_id, \
                 version, created_at, available_at) VALUES "
            )),
            claim: safe(format!(
                "UPDATE {t} SET claim_token = ?1, available_at = ?2 + ?3 WHERE id IN \
                 (SELECT c.id FROM {t} c WHERE c.status = 'pending' AND c.id > ?5 AND c.available_at <= ?2{stream_gate} \
                 ORDER BY c.id LIMIT ?4) \
                 RETURNING id, event_id, name, payload, stream_key, headers, correlation_id, causation_id, \
                 created_at, attempts, version"
            )),
            keep_published: options.keep_published,
            delete: safe(delete),
            stats: safe(format!(
                "SELECT name, version, \
                 SUM(status = 'pending') AS pending, \
                 SUM(status = 'pending' AND attempts > 0) AS retrying, \
                 SUM(status = 'dead') AS dead, \
                 SUM(status = 'published') AS published, \
                 (?1 - MIN(CASE WHEN status = 'pending' THEN created_at END)) / 1000.0 AS oldest \
                 FROM {t} GROUP BY name, version ORDER BY name, version"
            )),
            cleanup: safe(format!(
                "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} WHERE status = 'published' \
                 AND published_at < ?1 LIMIT ?2)"
            )),
            update: safe(format!(
                "UPDATE {t} SET status = CASE WHEN ?2 THEN 'dead' ELSE 'pending' END, attempts = ?3, \
                 last_error = COALESCE(?4, last_error), available_at = ?5, claim_token = NULL \
                 WHERE id = ?1 AND claim_token = ?6 RETURNING id"
            )),
            renew: safe(format!(
                "UPDATE {t} SET available_at = ?3 WHERE claim_token = ?1 \
                 AND id IN (SELECT value FROM json_each(?2))"
            )),
            blocked: safe(format!(
                "SELECT publisher, since, reason, seen_at FROM {blocked_table} ORDER BY publisher"
            )),
            save_blocked: safe(format!(
                "INSERT INTO {blocked_table} (publisher, since, reason, seen_at) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (publisher) DO UPDATE SET since = excluded.since, \
                 reason = excluded.reason, seen_at = excluded.seen_at"
            )),
            unblock: safe(format!("DELETE FROM {blocked_table} WHERE publisher = ?1")),
            dead_letters: safe(format!(
                "SELECT id, event_id, name, version, payload, attempts, \
                 COALESCE(last_error, '') AS last_error, \
                 stream_key, headers, correlation_id, causation_id, \
                 CAST(created_at AS INTEGER) AS created_at, available_at FROM {t} WHERE status = 'dead'"
            )),
            // A dead entry is never claimed, so `available_at` keeps the time it died.
            requeue: safe(format!(
                "UPDATE {t} SET status = 'pending', attempts = 0, available_at = ?2, claim_token = NULL \
                 WHERE status = 'dead'"
            )),
            purge: safe(format!("DELETE FROM {t} WHERE status = 'dead'")),
            // Pending and not under a live claim (`?2` is now): an entry a
            // relay is publishing right now is left to the relay's outcome.
            discard: safe(format!(
                "DELETE FROM {t} WHERE status = 'pending' \
                 AND (claim_token IS NULL OR available_at <= ?2)"
            )),
        }
    }

    async fn check(pool: &SqlitePool, table: &TableName) -> Result<()> {
        let latest = MIGRATIONS.last().map_or(0, |(v, _)| *v);
        super::check_table(pool, table, '"', latest).await
    }

    async fn migrate(pool: &SqlitePool, table: &TableName) -> Result<()> {
        migrate_with(pool, table, MIGRATIONS).await
    }

    async fn insert(conn: &mut SqliteConnection, sql: &Sql, rows: &[NewRow]) -> Result<()> {
        let now = now_millis();
        for chunk in rows.chunks(INSERT_CHUNK) {
            let mut text =
                String::with_capacity(sql.insert_prefix.as_str().len() + chunk.len() * 24);
            text.push_str(sql.insert_prefix.as_str());
            for i in 0..chunk.len() {
                if i > 0 {
                    text.push(',');
                }
                text.push_str("(?,?,?,?,?,?,?,?,?,?)");
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
                    .bind(row.version)
                    .bind(now)
                    .bind(now);
            }
            query.execute(&mut *conn).await?;
        }
        Ok(())
    }

    async fn claim(
        conn: &mut SqliteConnection,
        sql: &Sql,
        limit: usize,
        lease: Duration,
        token: Uuid,
        after: i64,
    ) -> Result<Vec<ClaimedRow>> {
        let rows = sqlx::query(sql.claim.clone())
            .bind(token.hyphenated())
            .bind(now_millis())
            .bind(millis(lease))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(after)
            .fetch_all(&mut *conn)
            .await?;
        // By position, in RETURNING order: no column-name lookups on the hot path.
        rows.iter()
            .map(|row| {
                let id = row.try_get(0)?;
                Ok(decode_claimed(id, row, |row| {
                    Ok(ClaimedRow {
                        id,
                        event_id: row.try_get::<Hyphenated, _>(1)?.into(),
                        name: row.try_get(2)?,
                        version: row.try_get(10)?,
                        payload: row.try_get(3)?,
                        stream_key: row.try_get(4)?,
                        headers: row.try_get(5)?,
                        correlation_id: uuid_opt(row.try_get(6)?),
                        causation_id: uuid_opt(row.try_get(7)?),
                        created_at: time(row.try_get(8)?),
                        attempts: row.try_get(9)?,
                        poison: None,
                    })
                }))
            })
            .collect()
    }

    async fn settle(
        conn: &mut SqliteConnection,
        sql: &Sql,
        token: Uuid,
        settlement: &Settlement,
    ) -> Result<Vec<i64>> {
        let now = now_millis();
        let published = (!settlement.published.is_empty()).then(|| {
            let ids =
                serde_json::to_string(&settlement.published).unwrap_or_else(|_| "[]".to_owned());
            let query = sqlx::query_scalar::<_, i64>(sql.delete.clone())
                .bind(token.hyphenated())
                .bind(ids);
            if sql.keep_published {
                query.bind(now)
            } else {
                query
            }
        });
        if settlement.updates.is_empty() {
            // A single statement is its own short transaction.
            return Ok(match published {
                Some(published) => published.fetch_all(&mut *conn).await?,
                None => Vec::new(),
            });
        }
        let mut tx = conn.begin().await?;
        let mut settled = match published {
            Some(published) => published.fetch_all(&mut *tx).await?,
            None => Vec::with_capacity(settlement.updates.len()),
        };
        for u in &settlement.updates {
            let id = sqlx::query_scalar::<_, i64>(sql.update.clone())
                .bind(u.id)
                .bind(u.dead)
                .bind(u.attempts)
                .bind(u.error.as_deref())
                .bind(now.saturating_add(millis(u.delay)))
                .bind(token.hyphenated())
                .fetch_optional(&mut *tx)
                .await?;
            settled.extend(id);
        }
        tx.commit().await?;
        Ok(settled)
    }

    async fn renew(
        conn: &mut SqliteConnection,
        sql: &Sql,
        token: Uuid,
        ids: &[i64],
        lease: Duration,
    ) -> Result<u64> {
        let ids = serde_json::to_string(ids).unwrap_or_else(|_| "[]".to_owned());
        let done = sqlx::query(sql.renew.clone())
            .bind(token.hyphenated())
            .bind(ids)
            .bind(now_millis().saturating_add(millis(lease)))
            .execute(conn)
            .await?;
        Ok(done.rows_affected())
    }

    async fn save_blocked(
        conn: &mut SqliteConnection,
        sql: &Sql,
        changes: &[std::result::Result<Blocked, String>],
    ) -> Result<()> {
        for change in changes {
            match change {
                Ok(b) => {
                    sqlx::query(sql.save_blocked.clone())
                        .bind(&b.publisher)
                        .bind(b.since.timestamp_millis())
                        .bind(&b.reason)
                        .bind(b.seen_at.timestamp_millis())
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
        pool: &SqlitePool,
        sql: &Sql,
        which: Which,
        limit: usize,
    ) -> Result<Vec<DeadLetter>> {
        let text = format!(
            "{} AND {} ORDER BY id LIMIT ?2",
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
                    event_id: row.try_get::<Hyphenated, _>("event_id")?.into(),
                    name: row.try_get("name")?,
                    // Whatever a writer put in the column: the listing
                    // never fails on it (0 is not a version).
                    version: row
                        .try_get::<i64, _>("version")
                        .ok()
                        .and_then(|v| u32::try_from(v).ok())
                        .unwrap_or(0),
                    payload: row.try_get("payload")?,
                    attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(0),
                    reason: row.try_get("last_error")?,
                    stream_key: row.try_get("stream_key")?,
                    headers,
                    headers_error,
                    correlation_id: uuid_opt(row.try_get("correlation_id")?),
                    causation_id: uuid_opt(row.try_get("causation_id")?),
                    created_at: time(row.try_get("created_at")?),
                    dead_since: time(row.try_get("available_at")?),
                })
            })
            .collect()
    }

    async fn requeue(pool: &SqlitePool, sql: &Sql, which: Which) -> Result<u64> {
        let text = format!(
            "{} AND {}",
            sql.requeue.as_str(),
            filter(&which, "available_at")
        );
        let done = bind(sqlx::query(sqlx::AssertSqlSafe(text)), &which)
            .bind(now_millis())
            .execute(pool)
            .await?;
        tracing::info!(table = %sql.table, requeued = done.rows_affected(), "dead letters requeued");
        Ok(done.rows_affected())
    }

    async fn stats(pool: &SqlitePool, sql: &Sql) -> Result<Stats> {
        let rows = sqlx::query(sql.stats.clone())
            .bind(now_millis())
            .fetch_all(pool)
            .await?;
        let by_name = rows
            .iter()
            .map(name_stats)
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let blocked = sqlx::query(sql.blocked.clone())
            .fetch_all(pool)
            .await
            .and_then(|rows| {
                rows.iter()
                    .map(|row| {
                        Ok::<_, sqlx::Error>(Blocked {
                            publisher: row.try_get("publisher")?,
                            since: time(row.try_get("since")?),
                            reason: row.try_get("reason")?,
                            seen_at: time(row.try_get("seen_at")?),
                        })
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()
            });
        let blocked = super::blocked_or_none(blocked)?;
        Ok(Stats::from_names(by_name, blocked))
    }

    async fn cleanup(
        pool: &SqlitePool,
        sql: &Sql,
        older_than: Duration,
        limit: usize,
    ) -> Result<u64> {
        let done = sqlx::query(sql.cleanup.clone())
            .bind(now_millis().saturating_sub(millis(older_than)))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .execute(pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn purge(pool: &SqlitePool, sql: &Sql, which: Which) -> Result<u64> {
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

    async fn discard(pool: &SqlitePool, sql: &Sql, which: Which) -> Result<u64> {
        let text = format!(
            "{} AND {}",
            sql.discard.as_str(),
            filter(&which, "available_at")
        );
        let done = bind(sqlx::query(sqlx::AssertSqlSafe(text)), &which)
            .bind(now_millis())
            .execute(pool)
            .await?;
        tracing::info!(table = %sql.table, discarded = done.rows_affected(), "pending entries discarded");
        Ok(done.rows_affected())
    }

    async fn gauges(pool: &SqlitePool, sql: &Sql) -> Result<super::Gauges> {
        let t = sql.table.quoted('"', "");
        // Each subquery matches a partial index; published rows are not read.
        let gauges = format!(
            "SELECT p.pending, d.dead, p.oldest FROM \
             (SELECT COUNT(*) AS pending, (?1 - MIN(created_at)) / 1000.0 AS oldest \
             FROM {t} WHERE status = 'pending') AS p, \
             (SELECT COUNT(*) AS dead FROM {t} WHERE status = 'dead') AS d"
        );
        let (pending, dead, oldest): (i64, i64, Option<f64>) =
            sqlx::query_as(sqlx::AssertSqlSafe(gauges))
                .bind(now_millis())
                .fetch_one(pool)
                .await?;
        Ok(super::Gauges {
            pending: super::count(pending),
            dead: super::count(dead),
            oldest_pending_age: super::age(oldest),
        })
    }

    async fn follow_start(pool: &SqlitePool, sql: &Sql) -> Result<(super::FollowCursor, u64)> {
        let t = sql.table.quoted('"', "");
        let start = format!(
            "SELECT (SELECT COALESCE(MAX(id), 0) FROM {t}), \
             (SELECT COUNT(*) FROM {t} WHERE status = 'pending')"
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
        pool: &SqlitePool,
        sql: &Sql,
        cursor: &mut super::FollowCursor,
        each: F,
    ) -> Result<u64> {
        let t = sql.table.quoted('"', "");
        // A read transaction sees one snapshot of the database.
        let mut tx = pool.begin().await?;
        let page = format!(
            "SELECT id, event_id, name, stream_key FROM {t} WHERE id > ?1 ORDER BY id LIMIT ?2"
        );
        let pending = format!("SELECT COUNT(*) FROM {t} WHERE status = 'pending'");
        let (last, pending) =
            super::follow_by_position::<Sqlite, F>(&mut tx, &page, &pending, cursor.after, each)
                .await?;
        tx.commit().await?;
        cursor.after = last;
        Ok(pending)
    }
}

/// The condition selecting `which` entries; its parameter, if any, is `?1`.
fn filter(which: &Which, since: &str) -> String {
    match which {
        Which::One(_) => "event_id = ?1".to_owned(),
        Which::All => "?1 IS NULL".to_owned(),
        Which::Name(_) => "name = ?1".to_owned(),
        Which::DeadFor(_) => format!("{since} < ?1"),
    }
}

fn bind<'q>(
    query: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments>,
    which: &'q Which,
) -> sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments> {
    match which {
        Which::One(id) => query.bind(id.hyphenated()),
        Which::All => query.bind(None::<i64>),
        Which::Name(name) => query.bind(name.as_str()),
        Which::DeadFor(age) => query.bind(now_millis().saturating_sub(millis(*age))),
    }
}

/// Applies the `migrations` that `<table>_schema` does not list yet, in one
/// transaction (outbox and inbox tables alike; SQLite has one writer).
async fn migrate_with(
    pool: &SqlitePool,
    table: &TableName,
    migrations: &[(i32, &str)],
) -> Result<()> {
    let mut tx = pool.begin().await?;
    let versions = table.quoted('"', "_schema");
    let create = format!(
        "CREATE TABLE IF NOT EXISTS {versions} (version INTEGER PRIMARY KEY, \
         applied_at INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)))"
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
        let insert = format!("INSERT OR IGNORE INTO {versions} (version) VALUES (?1)");
        sqlx::query(sqlx::AssertSqlSafe(insert))
            .bind(version)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}
