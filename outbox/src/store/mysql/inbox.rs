//! MySQL/MariaDB inbox tables: the states and semantics of the PostgreSQL
//! store, without `RETURNING` on upserts.
//!
//! - Taking an id in the handler's transaction starts with a plain read of
//!   its row: a processed or dead id (a duplicate) is skipped without a
//!   lock; a failed or requeued one is locked (`FOR UPDATE`), checked again
//!   and marked processed; a new one is inserted as processed. `InnoDB`
//!   makes that `INSERT` wait while another transaction holds the same key,
//!   so two deliveries of one message never both run; the one that waited
//!   meets a duplicate key and reads the row again (a current read, under
//!   the shared lock its `INSERT` took). Inserting first and locking after a
//!   duplicate key would have two deliveries of a failed message each hold
//!   the shared lock and ask for the exclusive one: a deadlock.
//! - A failure is counted in one short `READ COMMITTED` transaction: the
//!   row locked (`FOR UPDATE`, no gap lock on a missing id), then updated,
//!   or inserted (a concurrent insert of the same id is met as a duplicate
//!   key and the row locked again).
//! - Times come from the database clock (`UTC_TIMESTAMP(6)`).

use std::time::Duration;

use sqlx::mysql::MySqlDatabaseError;
use sqlx::types::uuid::fmt::Hyphenated;
use sqlx::{Acquire, Executor, MySql, MySqlConnection, MySqlPool, Row, SqlStr};
use uuid::Uuid;

use super::super::inbox::{Failed, InboxRow, InboxStore, Take};
use super::super::{DeadLetter, TableName, Which, dead_headers, safe};
use super::{limit_param, micros, migrate_with, uuid_opt};
use crate::error::Result;
use crate::inbox::{InboxNameStats, InboxStats};

const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        include_str!("../../../migrations/mysql/inbox/0001_create_inbox.up.sql"),
    ),
    (
        2,
        include_str!("../../../migrations/mysql/inbox/0002_version.up.sql"),
    ),
];

/// MySQL's error number for a duplicate key.
const ER_DUP_ENTRY: u16 = 1062;

/// The SQL for one inbox table.
pub struct InboxSql {
    /// A new id, processed.
    insert_done: SqlStr,
    /// The state of an id, read without a lock.
    peek: SqlStr,
    /// The state of an id, share-locked (a current read).
    shared: SqlStr,
    /// The state of an id, locked.
    lock: SqlStr,
    /// A failed or requeued row (by position) becomes processed.
    mark_done: SqlStr,
    /// A new id with its message, failed (or dead).
    insert_failed: SqlStr,
    /// One more failed attempt on a row (by position).
    update_failed: SqlStr,
    dead_letters: String,
    requeue: String,
    purge: String,
    requeued: SqlStr,
    stats: SqlStr,
    cleanup: SqlStr,
}

/// The message columns, in the order [`InboxRow`] binds them.
const MESSAGE: &str =
    "event_id, name, version, payload, stream_key, headers, correlation_id, causation_id";

/// The state of one inbox row: position, status, attempts.
type State = (i64, String, i32);

fn is_duplicate_key(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db)
        if db.try_downcast_ref::<MySqlDatabaseError>().is_some_and(|e| e.number() == ER_DUP_ENTRY))
}

impl InboxStore for MySql {
    type InboxSql = InboxSql;

    fn inbox_sql(table: &TableName) -> InboxSql {
        let t = table.quoted('`', "");
        let state = format!("SELECT id, status, attempts FROM {t} WHERE event_id = ?");
        InboxSql {
            insert_done: safe(format!(
                "INSERT INTO {t} (event_id, name, version, status, received_at, updated_at) \
                 VALUES (?, ?, ?, 'done', UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))"
            )),
            peek: safe(state.clone()),
            shared: safe(format!("{state} LOCK IN SHARE MODE")),
            lock: safe(format!("{state} FOR UPDATE")),
            mark_done: safe(format!(
                "UPDATE {t} SET status = 'done', version = ?, payload = NULL, headers = NULL, \
                 last_error = NULL, updated_at = UTC_TIMESTAMP(6) WHERE id = ?"
            )),
            insert_failed: safe(format!(
                "INSERT INTO {t} ({MESSAGE}, status, attempts, last_error, received_at, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))"
            )),
            update_failed: safe(format!(
                "UPDATE {t} SET name = ?, version = ?, payload = ?, stream_key = ?, headers = ?, \
                 correlation_id = ?, causation_id = ?, status = ?, attempts = ?, last_error = ?, \
                 updated_at = UTC_TIMESTAMP(6) WHERE id = ?"
            )),
            dead_letters: format!(
                "SELECT id, {MESSAGE}, attempts, last_error, received_at, updated_at \
                 FROM {t} WHERE status = 'dead'"
            ),
            requeue: format!(
                "UPDATE {t} SET status = 'requeued', attempts = 0, updated_at = UTC_TIMESTAMP(6) \
                 WHERE status = 'dead'"
            ),
            purge: format!(
                "UPDATE {t} SET status = 'done', payload = NULL, headers = NULL, \
                 last_error = 'purged', updated_at = UTC_TIMESTAMP(6) WHERE status = 'dead'"
            ),
            requeued: safe(format!(
                "SELECT {MESSAGE} FROM {t} WHERE status = 'requeued' ORDER BY id LIMIT ?"
            )),
            stats: safe(format!(
                "SELECT name, \
                 COUNT(CASE WHEN status = 'done' THEN 1 END) AS processed, \
                 COUNT(CASE WHEN status = 'failed' THEN 1 END) AS retrying, \
                 COUNT(CASE WHEN status = 'dead' THEN 1 END) AS dead, \
                 COUNT(CASE WHEN status = 'requeued' THEN 1 END) AS requeued \
                 FROM {t} GROUP BY name ORDER BY name"
            )),
            cleanup: safe(format!(
                "DELETE FROM {t} WHERE status = 'done' \
                 AND updated_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND LIMIT ?"
            )),
        }
    }

    async fn inbox_migrate(pool: &MySqlPool, table: &TableName) -> Result<()> {
        migrate_with(pool, table, MIGRATIONS).await
    }

    async fn inbox_take(
        conn: &mut MySqlConnection,
        sql: &InboxSql,
        row: &InboxRow,
    ) -> Result<Take> {
        let seen: Option<State> = sqlx::query_as(sql.peek.clone())
            .bind(row.event_id.hyphenated())
            .fetch_optional(&mut *conn)
            .await?;
        match seen {
            None => {}
            Some((_, status, _)) if !is_open(&status) => return Ok(Take::Seen),
            Some(_) => return take_open(conn, sql, row).await,
        }
        let inserted = sqlx::query(sql.insert_done.clone())
            .bind(row.event_id.hyphenated())
            .bind(&row.name)
            .bind(row.version)
            .execute(&mut *conn)
            .await;
        match inserted {
            Ok(done) => Ok(Take::Taken {
                position: i64::try_from(done.last_insert_id()).unwrap_or(i64::MAX),
                attempts: 0,
            }),
            Err(err) if is_duplicate_key(&err) => {
                // Inserted by a transaction that committed while this
                // INSERT waited: newer than this transaction's snapshot,
                // so read with the shared lock the INSERT holds already.
                // (Only the statement failed; the transaction goes on.)
                let current: Option<State> = sqlx::query_as(sql.shared.clone())
                    .bind(row.event_id.hyphenated())
                    .fetch_optional(&mut *conn)
                    .await?;
                if current.is_some_and(|(_, status, _)| is_open(&status)) {
                    take_open(conn, sql, row).await
                } else {
                    Ok(Take::Seen)
                }
            }
            Err(err) => Err(err.into()),
        }
    }

    async fn inbox_fail(
        pool: &MySqlPool,
        sql: &InboxSql,
        row: &InboxRow,
        reason: &str,
        dead_at: u32,
    ) -> Result<Failed> {
        let mut conn = pool.acquire().await?;
        // No gap lock on a missing id: two first failures of one message
        // meet at the key instead of deadlocking.
        (&mut *conn)
            .execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            .await?;
        let mut tx = conn.begin().await?;
        let mut locked: Option<State> = sqlx::query_as(sql.lock.clone())
            .bind(row.event_id.hyphenated())
            .fetch_optional(&mut *tx)
            .await?;
        if locked.is_none() {
            let dead = dead_at <= 1;
            let inserted = sqlx::query(sql.insert_failed.clone())
                .bind(row.event_id.hyphenated())
                .bind(&row.name)
                .bind(row.version)
                .bind(&row.payload)
                .bind(&row.stream_key)
                .bind(&row.headers)
                .bind(row.correlation_id.map(Uuid::hyphenated))
                .bind(row.causation_id.map(Uuid::hyphenated))
                .bind(if dead { "dead" } else { "failed" })
                .bind(reason)
                .execute(&mut *tx)
                .await;
            match inserted {
                Ok(_) => {
                    tx.commit().await?;
                    return Ok(Some((1, dead)));
                }
                Err(err) if is_duplicate_key(&err) => {}
                Err(err) => return Err(err.into()),
            }
            locked = sqlx::query_as(sql.lock.clone())
                .bind(row.event_id.hyphenated())
                .fetch_optional(&mut *tx)
                .await?;
        }
        let Some((position, status, attempts)) = locked else {
            return Ok(None);
        };
        if !is_open(&status) {
            // Processed or dead already: another consumer got there first.
            tx.commit().await?;
            return Ok(None);
        }
        let attempts = u32::try_from(attempts).unwrap_or(0).saturating_add(1);
        let dead = attempts >= dead_at;
        let status = if dead {
            "dead"
        } else if status == "requeued" {
            "requeued"
        } else {
            "failed"
        };
        sqlx::query(sql.update_failed.clone())
            .bind(&row.name)
            .bind(row.version)
            .bind(&row.payload)
            .bind(&row.stream_key)
            .bind(&row.headers)
            .bind(row.correlation_id.map(Uuid::hyphenated))
            .bind(row.causation_id.map(Uuid::hyphenated))
            .bind(status)
            .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
            .bind(reason)
            .bind(position)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some((attempts, dead)))
    }

    async fn inbox_dead_letters(
        pool: &MySqlPool,
        sql: &InboxSql,
        which: Which,
        limit: usize,
    ) -> Result<Vec<DeadLetter>> {
        let text = format!(
            "{} AND {} ORDER BY id LIMIT ?",
            sql.dead_letters,
            super::filter(&which, "updated_at")
        );
        let rows = super::bind(sqlx::query(sqlx::AssertSqlSafe(text)), &which)
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
                    payload: row
                        .try_get::<Option<String>, _>("payload")?
                        .unwrap_or_default(),
                    attempts: u32::try_from(row.try_get::<i32, _>("attempts")?).unwrap_or(0),
                    reason: row
                        .try_get::<Option<String>, _>("last_error")?
                        .unwrap_or_default(),
                    stream_key: row.try_get("stream_key")?,
                    headers,
                    headers_error,
                    correlation_id: uuid_opt(row.try_get("correlation_id")?),
                    causation_id: uuid_opt(row.try_get("causation_id")?),
                    created_at: row.try_get("received_at")?,
                    dead_since: row.try_get("updated_at")?,
                })
            })
            .collect()
    }

    async fn inbox_requeue(pool: &MySqlPool, sql: &InboxSql, which: Which) -> Result<u64> {
        let text = format!(
            "{} AND {}",
            sql.requeue,
            super::filter(&which, "updated_at")
        );
        let done = super::bind(sqlx::query(sqlx::AssertSqlSafe(text)), &which)
            .execute(pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn inbox_purge(pool: &MySqlPool, sql: &InboxSql, which: Which) -> Result<u64> {
        let text = format!("{} AND {}", sql.purge, super::filter(&which, "updated_at"));
        let done = super::bind(sqlx::query(sqlx::AssertSqlSafe(text)), &which)
            .execute(pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn inbox_requeued(
        pool: &MySqlPool,
        sql: &InboxSql,
        limit: usize,
    ) -> Result<Vec<InboxRow>> {
        let rows = sqlx::query(sql.requeued.clone())
            .bind(limit_param(limit))
            .fetch_all(pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(InboxRow {
                    event_id: row.try_get::<Hyphenated, _>("event_id")?.into(),
                    name: row.try_get("name")?,
                    version: row.try_get("version")?,
                    payload: row
                        .try_get::<Option<String>, _>("payload")?
                        .unwrap_or_default(),
                    stream_key: row.try_get("stream_key")?,
                    headers: row
                        .try_get::<Option<String>, _>("headers")?
                        .unwrap_or_else(|| "{}".to_owned()),
                    correlation_id: uuid_opt(row.try_get("correlation_id")?),
                    causation_id: uuid_opt(row.try_get("causation_id")?),
                })
            })
            .collect()
    }

    async fn inbox_stats(pool: &MySqlPool, sql: &InboxSql) -> Result<InboxStats> {
        let rows = sqlx::query(sql.stats.clone()).fetch_all(pool).await?;
        let by_name = rows
            .iter()
            .map(|row| {
                let n = |column: &str| row.try_get::<i64, _>(column).map(super::super::count);
                Ok(InboxNameStats {
                    name: row.try_get("name")?,
                    processed: n("processed")?,
                    retrying: n("retrying")?,
                    dead: n("dead")?,
                    requeued: n("requeued")?,
                })
            })
            .collect::<std::result::Result<Vec<_>, sqlx::Error>>()?;
        Ok(InboxStats::from_names(by_name))
    }

    async fn inbox_cleanup(
        pool: &MySqlPool,
        sql: &InboxSql,
        older_than: Duration,
        limit: usize,
    ) -> Result<u64> {
        let mut conn = pool.acquire().await?;
        // No gap locks: under REPEATABLE READ the scan of the processed
        // range would hold back the inserts of new ids.
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
}

/// Takes a failed or requeued id: locks its row, checks again (another
/// delivery may have taken it meanwhile) and marks it processed.
async fn take_open(conn: &mut MySqlConnection, sql: &InboxSql, row: &InboxRow) -> Result<Take> {
    let locked: Option<State> = sqlx::query_as(sql.lock.clone())
        .bind(row.event_id.hyphenated())
        .fetch_optional(&mut *conn)
        .await?;
    let Some((position, _, attempts)) = locked.filter(|(_, status, _)| is_open(status)) else {
        return Ok(Take::Seen);
    };
    sqlx::query(sql.mark_done.clone())
        .bind(row.version)
        .bind(position)
        .execute(&mut *conn)
        .await?;
    Ok(Take::Taken {
        position,
        attempts: u32::try_from(attempts).unwrap_or(0),
    })
}

/// Failed or requeued: the message is kept and may be processed.
fn is_open(status: &str) -> bool {
    matches!(status, "failed" | "requeued")
}
