//! PostgreSQL inbox tables: the id is taken with one upsert in the
//! consumer's transaction (the primary key serializes two deliveries of
//! one message), failures are counted with another.

use std::time::Duration;

use sqlx::{PgConnection, PgPool, Postgres, Row, SqlStr};

use super::super::inbox::{Failed, InboxRow, InboxStore, Take};
use super::super::{DeadLetter, TableName, Which, dead_headers, millis, safe};
use super::migrate_with;
use crate::error::Result;
use crate::inbox::{InboxNameStats, InboxStats};

const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        include_str!("../../../migrations/postgres/inbox/0001_create_inbox.up.sql"),
    ),
    (
        2,
        include_str!("../../../migrations/postgres/inbox/0002_version.up.sql"),
    ),
];

/// The SQL for one inbox table.
pub struct InboxSql {
    take: SqlStr,
    fail: SqlStr,
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

impl InboxStore for Postgres {
    type InboxSql = InboxSql;

    fn inbox_sql(table: &TableName) -> InboxSql {
        let t = table.quoted('"', "");
        InboxSql {
            // A new id is inserted as processed; a failed or requeued one
            // becomes processed; a processed or dead one returns no row.
            // The primary key makes a second delivery of the same message
            // wait here until the first transaction ends.
            take: safe(format!(
                "INSERT INTO {t} AS i (event_id, name, version, status) VALUES ($1, $2, $3, 'done') \
                 ON CONFLICT (event_id) DO UPDATE SET status = 'done', version = excluded.version, \
                 payload = NULL, headers = NULL, last_error = NULL, updated_at = now() \
                 WHERE i.status IN ('failed', 'requeued') \
                 RETURNING i.id, i.attempts"
            )),
            fail: safe(format!(
                "INSERT INTO {t} AS i ({MESSAGE}, status, attempts, last_error) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
                 CASE WHEN $10 <= 1 THEN 'dead' ELSE 'failed' END, 1, $9) \
                 ON CONFLICT (event_id) DO UPDATE SET attempts = i.attempts + 1, \
                 last_error = excluded.last_error, version = excluded.version, payload = excluded.payload, \
                 headers = excluded.headers, stream_key = excluded.stream_key, \
                 correlation_id = excluded.correlation_id, causation_id = excluded.causation_id, \
                 status = CASE WHEN i.attempts + 1 >= $10 THEN 'dead' \
                 WHEN i.status = 'requeued' THEN 'requeued' ELSE 'failed' END, updated_at = now() \
                 WHERE i.status IN ('failed', 'requeued') \
                 RETURNING i.attempts, i.status = 'dead'"
            )),
            dead_letters: format!(
                "SELECT id, {MESSAGE}, attempts, last_error, received_at, updated_at \
                 FROM {t} WHERE status = 'dead'"
            ),
            requeue: format!(
                "UPDATE {t} SET status = 'requeued', attempts = 0, updated_at = now() \
                 WHERE status = 'dead'"
            ),
            purge: format!(
                "UPDATE {t} SET status = 'done', payload = NULL, headers = NULL, \
                 last_error = 'purged', updated_at = now() WHERE status = 'dead'"
            ),
            requeued: safe(format!(
                "SELECT {MESSAGE} FROM {t} WHERE status = 'requeued' ORDER BY id LIMIT $1"
            )),
            stats: safe(format!(
                "SELECT name, \
                 count(*) FILTER (WHERE status = 'done') AS processed, \
                 count(*) FILTER (WHERE status = 'failed') AS retrying, \
                 count(*) FILTER (WHERE status = 'dead') AS dead, \
                 count(*) FILTER (WHERE status = 'requeued') AS requeued \
                 FROM {t} GROUP BY name ORDER BY name"
            )),
            cleanup: safe(format!(
                "DELETE FROM {t} WHERE event_id IN (SELECT event_id FROM {t} WHERE status = 'done' \
                 AND updated_at < now() - $1 * interval '1 millisecond' LIMIT $2)"
            )),
        }
    }

    async fn inbox_migrate(pool: &PgPool, table: &TableName) -> Result<()> {
        migrate_with(pool, table, MIGRATIONS).await
    }

    async fn inbox_take(conn: &mut PgConnection, sql: &InboxSql, row: &InboxRow) -> Result<Take> {
        let taken: Option<(i64, i32)> = sqlx::query_as(sql.take.clone())
            .bind(row.event_id)
            .bind(&row.name)
            .bind(row.version)
            .fetch_optional(conn)
            .await?;
        Ok(match taken {
            Some((position, attempts)) => Take::Taken {
                position,
                attempts: u32::try_from(attempts).unwrap_or(0),
            },
            None => Take::Seen,
        })
    }

    async fn inbox_fail(
        pool: &PgPool,
        sql: &InboxSql,
        row: &InboxRow,
        reason: &str,
        dead_at: u32,
    ) -> Result<Failed> {
        let failed: Option<(i32, bool)> = sqlx::query_as(sql.fail.clone())
            .bind(row.event_id)
            .bind(&row.name)
            .bind(row.version)
            .bind(&row.payload)
            .bind(&row.stream_key)
            .bind(&row.headers)
            .bind(row.correlation_id)
            .bind(row.causation_id)
            .bind(reason)
            .bind(i32::try_from(dead_at).unwrap_or(i32::MAX))
            .fetch_optional(pool)
            .await?;
        Ok(failed.map(|(attempts, dead)| (u32::try_from(attempts).unwrap_or(0), dead)))
    }

    async fn inbox_dead_letters(
        pool: &PgPool,
        sql: &InboxSql,
        which: Which,
        limit: usize,
    ) -> Result<Vec<DeadLetter>> {
        let text = format!(
            "{} AND {} ORDER BY id LIMIT $2",
            sql.dead_letters,
            super::filter(&which, "updated_at")
        );
        let rows = super::bind(sqlx::query(sqlx::AssertSqlSafe(text)), &which)
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
                    correlation_id: row.try_get("correlation_id")?,
                    causation_id: row.try_get("causation_id")?,
                    created_at: row.try_get("received_at")?,
                    dead_since: row.try_get("updated_at")?,
                })
            })
            .collect()
    }

    async fn inbox_requeue(pool: &PgPool, sql: &InboxSql, which: Which) -> Result<u64> {
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

    async fn inbox_purge(pool: &PgPool, sql: &InboxSql, which: Which) -> Result<u64> {
        let text = format!("{} AND {}", sql.purge, super::filter(&which, "updated_at"));
        let done = super::bind(sqlx::query(sqlx::AssertSqlSafe(text)), &which)
            .execute(pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn inbox_requeued(pool: &PgPool, sql: &InboxSql, limit: usize) -> Result<Vec<InboxRow>> {
        let rows = sqlx::query(sql.requeued.clone())
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(InboxRow {
                    event_id: row.try_get("event_id")?,
                    name: row.try_get("name")?,
                    version: row.try_get("version")?,
                    payload: row
                        .try_get::<Option<String>, _>("payload")?
                        .unwrap_or_default(),
                    stream_key: row.try_get("stream_key")?,
                    headers: row
                        .try_get::<Option<String>, _>("headers")?
                        .unwrap_or_else(|| "{}".to_owned()),
                    correlation_id: row.try_get("correlation_id")?,
                    causation_id: row.try_get("causation_id")?,
                })
            })
            .collect()
    }

    async fn inbox_stats(pool: &PgPool, sql: &InboxSql) -> Result<InboxStats> {
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
        pool: &PgPool,
        sql: &InboxSql,
        older_than: Duration,
        limit: usize,
    ) -> Result<u64> {
        let done = sqlx::query(sql.cleanup.clone())
            .bind(millis(older_than))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .execute(pool)
            .await?;
        Ok(done.rows_affected())
    }
}
