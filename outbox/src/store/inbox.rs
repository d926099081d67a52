//! What the inbox asks of a database: the sealed [`InboxStore`] trait each
//! backend implements next to its outbox SQL (`store/<db>/inbox.rs`).

#![allow(unreachable_pub)] // Reason: sealed-trait pattern; nameable only inside the crate.

use std::future::Future;
use std::time::Duration;

use uuid::Uuid;

use super::{DeadLetter, TableName, Which};
use crate::error::Result;
use crate::inbox::InboxStats;

/// One received message, as the inbox stores it.
#[derive(Debug, Clone)]
pub struct InboxRow {
    pub event_id: Uuid,
    pub name: String,
    /// The sender's event version (1 when the message does not say).
    pub version: i32,
    pub payload: String,
    pub stream_key: Option<String>,
    /// The headers as a JSON object of strings.
    pub headers: String,
    pub correlation_id: Option<Uuid>,
    pub causation_id: Option<Uuid>,
}

/// What taking a message's id in the handler's transaction found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// New (or failed before, or requeued): the id is now marked processed in
    /// this transaction. `position` is the inbox row's id, `attempts` the
    /// failed attempts made before this one.
    Taken { position: i64, attempts: u32 },
    /// Processed already, or a dead letter: the handler must not run.
    Seen,
}

/// A failure written down: the attempts made so far and whether the
/// message is now a dead letter. `None` when the id is processed (or dead)
/// already: another consumer got there first.
pub type Failed = Option<(u32, bool)>;

/// The SQL of one backend for inbox tables. Row states: `done` (processed;
/// payload dropped; kept for the dedupe window), `failed` (attempts made,
/// message kept), `dead` (a dead letter), `requeued` (a dead letter given
/// back; processed from the table by a running consumer loop).
pub trait InboxStore: sqlx::Database {
    /// Prepared SQL text for one inbox table.
    type InboxSql: Send + Sync + 'static;

    fn inbox_sql(table: &TableName) -> Self::InboxSql;

    /// Creates or upgrades the inbox table (and `<table>_schema`).
    fn inbox_migrate(
        pool: &sqlx::Pool<Self>,
        table: &TableName,
    ) -> impl Future<Output = Result<()>> + Send;

    /// In the handler's transaction: marks `row.event_id` processed unless
    /// it is processed or dead already. Blocks while another transaction
    /// holds the same id, so two deliveries of one message never both run.
    fn inbox_take(
        conn: &mut Self::Connection,
        sql: &Self::InboxSql,
        row: &InboxRow,
    ) -> impl Future<Output = Result<Take>> + Send;

    /// In its own short transaction: counts one failed attempt with
    /// `reason` and keeps the message; at `dead_at` attempts (1: at once)
    /// the row becomes a dead letter.
    fn inbox_fail(
        pool: &sqlx::Pool<Self>,
        sql: &Self::InboxSql,
        row: &InboxRow,
        reason: &str,
        dead_at: u32,
    ) -> impl Future<Output = Result<Failed>> + Send;

    /// Dead letters, oldest first (`Which::One`, `All`, `Name`, `DeadFor`).
    fn inbox_dead_letters(
        pool: &sqlx::Pool<Self>,
        sql: &Self::InboxSql,
        which: Which,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DeadLetter>>> + Send;

    /// Dead letters back to `requeued`, attempts reset; returns how many.
    fn inbox_requeue(
        pool: &sqlx::Pool<Self>,
        sql: &Self::InboxSql,
        which: Which,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// Dead letters dropped: the row becomes `done` without its payload
    /// (its id still deduplicates for the window); returns how many.
    fn inbox_purge(
        pool: &sqlx::Pool<Self>,
        sql: &Self::InboxSql,
        which: Which,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// Up to `limit` requeued rows, oldest first, to process from the table.
    fn inbox_requeued(
        pool: &sqlx::Pool<Self>,
        sql: &Self::InboxSql,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<InboxRow>>> + Send;

    fn inbox_stats(
        pool: &sqlx::Pool<Self>,
        sql: &Self::InboxSql,
    ) -> impl Future<Output = Result<InboxStats>> + Send;

    /// Deletes up to `limit` processed ids older than `older_than`.
    fn inbox_cleanup(
        pool: &sqlx::Pool<Self>,
        sql: &Self::InboxSql,
        older_than: Duration,
        limit: usize,
    ) -> impl Future<Output = Result<u64>> + Send;
}
