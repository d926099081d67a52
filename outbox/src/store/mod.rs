//! Database stores: one module per backend, behind a sealed trait.

// Reason: with no backend feature the crate still builds (traits and
// derive only), and the shared helpers below have no caller.
#![cfg_attr(
    not(any(feature = "postgres", feature = "sqlite", feature = "mysql")),
    allow(dead_code)
)]

pub(crate) mod inbox;
#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::entry::Headers;
use crate::error::{Error, Result};
use crate::publisher::Blocked;

pub(crate) use private::{
    Claim, ClaimedRow, FollowCursor, NewRow, Settlement, SqlOptions, Update, Which,
};

/// A database the outbox can live in: implemented for `sqlx::Postgres`
/// (feature `postgres`), `sqlx::Sqlite` (feature `sqlite`) and `sqlx::MySql`
/// (feature `mysql`, MySQL 8.0.16+ or MariaDB 10.6+). Sealed.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an outbox backend: enable its feature of `outbox`",
    label = "needs a feature of `outbox` for this database",
    note = "`outbox = {{ version = \"0.1\", features = [\"postgres\"] }}` for `sqlx::Postgres`, \
            `\"mysql\"` for `sqlx::MySql`, `\"sqlite\"` for `sqlx::Sqlite`",
    note = "and the same sqlx as `outbox` uses (`outbox::sqlx`, sqlx 0.9)"
)]
pub trait Backend: sqlx::Database + private::Store {}

impl<DB: sqlx::Database + private::Store> Backend for DB {}

/// Longest table name accepted (leaves room for the derived index and
/// schema-table names within PostgreSQL's 63-byte identifiers).
const MAX_TABLE_LEN: usize = 48;

/// A validated table name, `table` or `schema.table`: ASCII letters, digits
/// and `_`, not starting with a digit. Never pasted into SQL unchecked.
#[derive(Clone, PartialEq, Eq)]
pub struct TableName {
    schema: Option<String>,
    table: String,
}

impl fmt::Debug for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TableName({self})")
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.table),
            None => f.write_str(&self.table),
        }
    }
}

impl TableName {
    /// Validates `name` (`table` or `schema.table`).
    pub fn new(name: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidTableName {
            name: name.to_owned(),
            reason: reason.to_owned(),
        };
        let mut parts = name.split('.');
        let first = parts.next().unwrap_or_default();
        let (schema, table) = match (parts.next(), parts.next()) {
            (None, _) => (None, first),
            (Some(table), None) => (Some(first), table),
            (Some(_), Some(_)) => return Err(invalid("at most one `.` (schema.table)")),
        };
        for part in schema.iter().chain(std::iter::once(&table)) {
            check_identifier(part).map_err(invalid)?;
        }
        Ok(Self {
            schema: schema.map(str::to_owned),
            table: table.to_owned(),
        })
    }

    pub(crate) fn has_schema(&self) -> bool {
        self.schema.is_some()
    }

    /// The table part without schema, used to name the index and the schema-version table.
    pub(crate) fn bare(&self) -> &str {
        &self.table
    }

    /// The full name quoted with `quote` (`"` for PostgreSQL and SQLite, `` ` `` for MySQL).
    pub(crate) fn quoted(&self, quote: char, suffix: &str) -> String {
        match &self.schema {
            Some(schema) => format!(
                "{quote}{schema}{quote}.{quote}{}{suffix}{quote}",
                self.table
            ),
            None => format!("{quote}{}{suffix}{quote}", self.table),
        }
    }
}

fn check_identifier(part: &str) -> std::result::Result<(), &'static str> {
    let mut chars = part.chars();
    match chars.next() {
        None => return Err("empty identifier"),
        Some(c) if !(c.is_ascii_alphabetic() || c == '_') => {
            return Err("must start with an ASCII letter or `_`");
        }
        Some(_) => {}
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err("only ASCII letters, digits and `_` are allowed");
    }
    if part.len() > MAX_TABLE_LEN {
        return Err("longer than 48 bytes");
    }
    Ok(())
}

/// Marks SQL text this module built as safe to prepare. Every piece of
/// it is a constant of the store modules except the table name, which
/// [`TableName::new`] validated as an identifier (and the stores quote):
/// nothing from outside reaches the text unchecked. Built once per outbox;
/// each query clones it (a reference count).
pub(crate) fn safe(text: String) -> sqlx::SqlStr {
    use sqlx::SqlSafeStr as _;
    sqlx::AssertSqlSafe(text).into_sql_str()
}

/// Fills a migration template: `__TABLE__` is the quoted table, `__NAME__`
/// the bare table name (for index names).
pub(crate) fn render(template: &str, table: &TableName, quote: char) -> String {
    template
        .replace("__TABLE__", &table.quoted(quote, ""))
        .replace("__SCHEMA_TABLE__", &table.quoted(quote, "_schema"))
        .replace("__BLOCKED_TABLE__", &table.quoted(quote, "_blocked"))
        .replace("__NAME__", table.bare())
}

/// One dead letter, for listing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The entry's position (record order).
    pub position: i64,
    /// The event id.
    pub event_id: Uuid,
    /// The event name.
    pub name: String,
    /// The version of the event type that recorded it (see
    /// [`Event::VERSION`](crate::Event::VERSION)).
    pub version: u32,
    /// The payload as stored.
    pub payload: String,
    /// Attempts made.
    pub attempts: u32,
    /// Why it is dead: the last publisher error or the decode error.
    pub reason: String,
    /// The stream key, if any.
    pub stream_key: Option<String>,
    /// The headers given at record time. Empty when the stored value does
    /// not decode as a string map; [`headers_error`](Self::headers_error)
    /// then says why (the listing never fails on it).
    pub headers: Headers,
    /// Why the stored headers do not decode as a string map, if they do not.
    pub headers_error: Option<String>,
    /// The correlation id given at record time, if any.
    pub correlation_id: Option<Uuid>,
    /// The causation id given at record time, if any.
    pub causation_id: Option<Uuid>,
    /// When it was recorded.
    pub created_at: DateTime<Utc>,
    /// When it became a dead letter.
    pub dead_since: DateTime<Utc>,
}

/// Decodes stored headers (a JSON object of strings); the error is the
/// reason a claimed entry becomes a dead letter.
pub(crate) fn decode_headers(text: &str) -> std::result::Result<Headers, String> {
    if text == "{}" {
        return Ok(Headers::new());
    }
    serde_json::from_str(text)
        .map_err(|err| format!("headers do not decode as a string map: {err}"))
}

/// Decodes the stored headers of a dead letter: the map, or an empty one
/// and why (a value written by hand, a column of another type).
pub(crate) fn dead_headers(
    stored: std::result::Result<Option<String>, sqlx::Error>,
) -> (Headers, Option<String>) {
    let text = match stored {
        Ok(Some(text)) => text,
        Ok(None) => return (Headers::new(), None),
        Err(err) => {
            return (
                Headers::new(),
                Some(format!("headers do not read as text: {err}")),
            );
        }
    };
    match decode_headers(&text) {
        Ok(headers) => (headers, None),
        Err(reason) => (Headers::new(), Some(reason)),
    }
}

/// Counts for a health check: see [`Outbox::stats`](crate::Outbox::stats).
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    /// Entries waiting to be published (due or not, claimed or not).
    pub pending: u64,
    /// Pending entries that failed at least once.
    pub retrying: u64,
    /// Dead letters.
    pub dead: u64,
    /// Published entries still kept (only with `keep_published`).
    pub published: u64,
    /// Age of the oldest pending entry, if any.
    pub oldest_pending_age: Option<Duration>,
    /// The same numbers per event name, sorted by name.
    pub by_name: Vec<NameStats>,
    /// Publishers a relay reported blocked (destination down or
    /// misconfigured), by publisher. A row whose `seen_at` is more than a
    /// minute old comes from a relay that stopped (or resumed without being
    /// able to say so) and may be stale.
    pub blocked: Vec<Blocked>,
}

/// [`Stats`] for one event name.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct NameStats {
    /// The event name.
    pub name: String,
    /// Pending entries of this name.
    pub pending: u64,
    /// Pending entries of this name that failed at least once.
    pub retrying: u64,
    /// Dead letters of this name.
    pub dead: u64,
    /// Published entries of this name still kept.
    pub published: u64,
    /// Age of this name's oldest pending entry.
    pub oldest_pending_age: Option<Duration>,
    /// The versions of this name's entries in the table (pending, dead and
    /// kept), ascending, each with its number of entries.
    pub versions: Vec<(u32, u64)>,
}

impl Stats {
    /// Sums per-name rows into the totals. The rows are sorted by name (and
    /// version): consecutive rows of one name, one per version (as
    /// [`name_stats`] decodes them), fold into one [`NameStats`].
    pub(crate) fn from_names(rows: Vec<NameStats>, blocked: Vec<Blocked>) -> Self {
        let mut stats = Stats::default();
        for n in rows {
            stats.pending += n.pending;
            stats.retrying += n.retrying;
            stats.dead += n.dead;
            stats.published += n.published;
            stats.oldest_pending_age = stats.oldest_pending_age.max(n.oldest_pending_age);
            match stats.by_name.last_mut() {
                Some(last) if last.name == n.name => last.absorb(n),
                _ => stats.by_name.push(n),
            }
        }
        stats.blocked = blocked;
        stats
    }
}

impl NameStats {
    /// Adds the figures of another row of the same name (another version).
    fn absorb(&mut self, other: NameStats) {
        self.pending += other.pending;
        self.retrying += other.retrying;
        self.dead += other.dead;
        self.published += other.published;
        self.oldest_pending_age = self.oldest_pending_age.max(other.oldest_pending_age);
        for (version, n) in other.versions {
            match self.versions.binary_search_by_key(&version, |&(v, _)| v) {
                Ok(i) => self.versions[i].1 += n,
                Err(i) => self.versions.insert(i, (version, n)),
            }
        }
    }
}

/// The three numbers the relay loop keeps in its `metrics` gauges: see
/// [`Outbox::gauges`](crate::Outbox::gauges). The same totals as
/// [`Stats`], read from the pending and dead entries only.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct Gauges {
    /// Entries waiting to be published, as [`Stats::pending`].
    pub pending: u64,
    /// Dead letters, as [`Stats::dead`].
    pub dead: u64,
    /// Age of the oldest pending entry, as [`Stats::oldest_pending_age`].
    pub oldest_pending_age: Option<Duration>,
}

/// One entry a [`Follow`](crate::Follow) cursor saw arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Followed {
    /// The entry's position (record order).
    pub position: i64,
    /// The event id as stored (the library writes a UUID).
    pub event_id: String,
    /// The event name.
    pub name: String,
    /// The stream key, if any.
    pub stream_key: Option<String>,
}

/// Decodes one row of a backend's stats query, grouped by name and version
/// (columns `name`, `version`, `pending`, `retrying`, `dead`, `published`,
/// `oldest` in seconds): the figures of one version of one name, which
/// [`Stats::from_names`] folds per name. A stored version that is not a
/// positive integer (written by hand) counts as 0.
pub(crate) fn name_stats<'r, R>(row: &'r R) -> std::result::Result<NameStats, sqlx::Error>
where
    R: sqlx::Row,
    &'static str: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    f64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    // SQLite keeps whatever a writer puts in the column: the stats never
    // fail on it.
    let version = row
        .try_get::<i32, _>("version")
        .ok()
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(0);
    let mut stats = NameStats {
        name: row.try_get("name")?,
        pending: count(row.try_get("pending")?),
        retrying: count(row.try_get("retrying")?),
        dead: count(row.try_get("dead")?),
        published: count(row.try_get("published")?),
        oldest_pending_age: age(row.try_get("oldest")?),
        versions: Vec::new(),
    };
    // Every entry is pending, dead or published (the table's CHECK).
    stats.versions = vec![(version, stats.pending + stats.dead + stats.published)];
    Ok(stats)
}

/// Seconds (possibly fractional, possibly slightly negative from clock
/// jitter) as a duration.
pub(crate) fn age(seconds: Option<f64>) -> Option<Duration> {
    seconds.map(|s| Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX))
}

pub(crate) fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Rows per page of a follow read.
const FOLLOW_PAGE: i64 = 1_000;

/// A follow read by position (MySQL, SQLite), on the caller's read
/// transaction so that every page and the pending count come from one
/// snapshot: the entries past `after` in pages of `page` (parameters: last
/// position, page size; columns: position, event id, name, stream key),
/// then the pending count with `pending`. Returns the new last position
/// and the count.
#[cfg_attr(not(any(feature = "mysql", feature = "sqlite")), allow(dead_code))] // Reason: PostgreSQL follows commits instead.
pub(crate) async fn follow_by_position<DB, F>(
    conn: &mut DB::Connection,
    page: &str,
    pending: &str,
    after: i64,
    mut each: F,
) -> std::result::Result<(i64, u64), sqlx::Error>
where
    DB: sqlx::Database,
    F: FnMut(Followed) + Send,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    i64: for<'q> sqlx::Encode<'q, DB> + for<'r> sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    (i64, String, String, Option<String>): for<'r> sqlx::FromRow<'r, DB::Row>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let mut last = after;
    loop {
        let rows: Vec<(i64, String, String, Option<String>)> =
            sqlx::query_as(sqlx::AssertSqlSafe(page))
                .bind(last)
                .bind(FOLLOW_PAGE)
                .fetch_all(&mut *conn)
                .await?;
        let full = rows.len() >= usize::try_from(FOLLOW_PAGE).unwrap_or(usize::MAX);
        for (position, event_id, name, stream_key) in rows {
            last = position;
            each(Followed {
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
    let pending: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(pending))
        .fetch_one(&mut *conn)
        .await?;
    Ok((last, count(pending)))
}

/// Decodes one claimed row with `decode`; a row that does not decode (or
/// whose decoding panics, as a date out of chrono's range does inside sqlx)
/// becomes a poison row instead of failing the whole claim. A poison row
/// keeps its stream key where that column still reads, so it holds back
/// its stream in per-stream order.
pub(crate) fn decode_claimed<R: sqlx::Row>(
    id: i64,
    row: &R,
    decode: impl FnOnce(&R) -> std::result::Result<ClaimedRow, sqlx::Error>,
) -> ClaimedRow
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let reason = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode(row))) {
        Ok(Ok(claimed)) => return claimed,
        Ok(Err(err)) => format!("stored row does not decode: {err}"),
        Err(_) => "stored row does not decode: a value is out of range".to_owned(),
    };
    let mut poison = ClaimedRow::poison(id, reason);
    poison.stream_key = row.try_get(STREAM_KEY_COLUMN).ok().flatten();
    poison
}

/// The position of `stream_key` in every backend's claim result.
const STREAM_KEY_COLUMN: usize = 4;

#[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))] // Reason: MySQL binds microseconds.
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The columns every outbox table has at the current schema version.
pub(crate) const COLUMNS: &str = "id, event_id, name, payload, stream_key, headers, correlation_id, \
     causation_id, created_at, status, attempts, last_error, available_at, claim_token, published_at, \
     version";

/// Probes `table` (quoted with `quote`) for [`COLUMNS`] and its newest
/// recorded schema version, and judges with [`verdict`].
pub(crate) async fn check_table<DB>(
    pool: &sqlx::Pool<DB>,
    table: &TableName,
    quote: char,
    latest: i32,
) -> Result<()>
where
    DB: sqlx::Database,
    for<'c> &'c sqlx::Pool<DB>: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    (Option<i32>,): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    let probe = format!(
        "SELECT {COLUMNS} FROM {} WHERE 1 = 0",
        table.quoted(quote, "")
    );
    let probe = sqlx::query(sqlx::AssertSqlSafe(probe))
        .execute(pool)
        .await
        .map(drop);
    let version = format!(
        "SELECT MAX(version) FROM {}",
        table.quoted(quote, "_schema")
    );
    let version = sqlx::query_scalar(sqlx::AssertSqlSafe(version))
        .fetch_one(pool)
        .await;
    verdict(table, probe, version, latest)
}

/// Whether a database error says a table or column does not exist
/// (PostgreSQL 42P01/42703, MySQL 42S02/42S22, SQLite's messages).
fn is_missing(err: &dyn sqlx::error::DatabaseError) -> bool {
    matches!(
        err.code().as_deref(),
        Some("42P01" | "42703" | "42S02" | "42S22" | "1146" | "1054")
    ) || err.message().starts_with("no such table")
        || err.message().starts_with("no such column")
}

/// Whether a database error is a refused privilege.
pub(crate) fn is_denied(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db)
        if db.code().as_deref() == Some("42501") || db.message().contains("denied"))
}

/// Decodes one row of `<table>_blocked` where the times are timestamps
/// (PostgreSQL, MySQL; SQLite keeps Unix milliseconds and decodes its own).
pub(crate) fn blocked_row<'r, R>(row: &'r R) -> std::result::Result<Blocked, sqlx::Error>
where
    R: sqlx::Row,
    &'static str: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    DateTime<Utc>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(Blocked {
        publisher: row.try_get("publisher")?,
        since: row.try_get("since")?,
        reason: row.try_get("reason")?,
        seen_at: row.try_get("seen_at")?,
    })
}

/// Rows of `<table>_blocked`, or none when this role may not read it (a
/// least-privilege relay or reader): the rest of the stats still count.
pub(crate) fn blocked_or_none(
    rows: std::result::Result<Vec<Blocked>, sqlx::Error>,
) -> Result<Vec<Blocked>> {
    match rows {
        Ok(rows) => Ok(rows),
        Err(err) if is_denied(&err) => {
            tracing::debug!(error = %err, "blocked publishers not readable by this role");
            Ok(Vec::new())
        }
        Err(err) => Err(err.into()),
    }
}

/// Turns the outcome of probing `table` into the check's verdict: `probe`
/// is the result of selecting [`COLUMNS`] from it, `version` the newest
/// schema version recorded, `latest` the newest this build knows.
pub(crate) fn verdict(
    table: &TableName,
    probe: std::result::Result<(), sqlx::Error>,
    version: std::result::Result<Option<i32>, sqlx::Error>,
    latest: i32,
) -> Result<()> {
    let not = |reason: String| Error::NotAnOutboxTable {
        table: table.to_string(),
        reason,
    };
    // Only a definite answer about the table counts: a missing table or
    // column. Anything else (the database unreachable now, a role that may
    // not read the table or its migration record) cannot be checked here:
    // the build goes on, and the relay reports what it meets at run time.
    match probe {
        // A column added by a later migration is missing from an outbox
        // table at an older schema: the version says why.
        Err(sqlx::Error::Database(_)) if matches!(version, Ok(Some(found)) if found < latest) => {}
        Err(sqlx::Error::Database(err)) if is_missing(&*err) => {
            return Err(not(err.message().to_owned()));
        }
        Err(_) | Ok(()) => {}
    }
    match version {
        Err(sqlx::Error::Database(err)) if is_missing(&*err) => Err(not(format!(
            "its migration record `{table}_schema` is missing"
        ))),
        Ok(None) => Err(not(format!(
            "its migration record `{table}_schema` is empty"
        ))),
        Ok(Some(found)) if found < latest => Err(not(format!(
            "its schema is at version {found}, this build needs {latest}"
        ))),
        Err(_) | Ok(Some(_)) => Ok(()),
    }
}

pub(crate) mod private {
    #![allow(unreachable_pub)] // Reason: sealed-trait pattern; nameable only inside the crate.

    use super::{DeadLetter, Followed, Gauges, Result, Stats, TableName};
    use crate::publisher::Blocked;
    use chrono::{DateTime, Utc};
    use std::future::Future;
    use std::time::Duration;
    use uuid::Uuid;

    /// One row to insert.
    #[derive(Debug)]
    pub struct NewRow {
        pub event_id: Uuid,
        pub name: &'static str,
        /// `Event::VERSION` of the recording type.
        pub version: i32,
        pub payload: String,
        pub stream_key: Option<String>,
        pub headers: String,
        pub correlation_id: Option<Uuid>,
        pub causation_id: Option<Uuid>,
    }

    impl NewRow {
        /// No stream key, headers or ids besides its own, and version 1:
        /// the table's defaults (NULL, `{}`, 1) fill the other columns.
        pub fn is_plain(&self) -> bool {
            self.version == 1
                && self.stream_key.is_none()
                && self.headers == "{}"
                && self.correlation_id.is_none()
                && self.causation_id.is_none()
        }
    }

    /// One claimed row, as read back.
    #[derive(Debug)]
    pub struct ClaimedRow {
        pub id: i64,
        pub event_id: Uuid,
        pub name: String,
        /// The stored version (a poison row says 1).
        pub version: i32,
        pub payload: String,
        pub stream_key: Option<String>,
        pub headers: String,
        pub correlation_id: Option<Uuid>,
        pub causation_id: Option<Uuid>,
        pub created_at: DateTime<Utc>,
        pub attempts: i32,
        /// Why the stored row could not be read (written by hand against
        /// the table contract, say): it becomes a dead letter at once.
        pub poison: Option<String>,
    }

    impl ClaimedRow {
        /// A claimed row whose columns do not decode.
        pub fn poison(id: i64, reason: String) -> Self {
            Self {
                id,
                event_id: Uuid::nil(),
                name: String::new(),
                version: 1,
                payload: String::new(),
                stream_key: None,
                headers: String::new(),
                correlation_id: None,
                causation_id: None,
                created_at: DateTime::<Utc>::UNIX_EPOCH,
                attempts: 0,
                poison: Some(reason),
            }
        }
    }

    /// The outcomes of one batch, written in one short transaction.
    #[derive(Debug, Default)]
    pub struct Settlement {
        /// Published: deleted.
        pub published: Vec<i64>,
        /// Everything else: new state per row.
        pub updates: Vec<Update>,
    }

    /// What [`Store::settle_and_claim`] claims.
    #[derive(Debug, Clone, Copy)]
    pub struct Claim {
        pub limit: usize,
        pub lease: Duration,
        pub token: Uuid,
        pub after: i64,
    }

    /// New state for one claimed row that was not published.
    #[derive(Debug)]
    pub struct Update {
        pub id: i64,
        pub dead: bool,
        pub attempts: i32,
        /// `None` keeps the stored error.
        pub error: Option<String>,
        /// When it is due again (ignored for dead rows).
        pub delay: Duration,
    }

    /// Where a follow cursor is. MySQL and SQLite follow positions
    /// (`after`); PostgreSQL follows commits: an entry is new when its
    /// transaction is visible now and was not in `snapshot`.
    #[derive(Debug, Clone, Default)]
    pub struct FollowCursor {
        /// The highest position seen (PostgreSQL: at the start only).
        pub after: i64,
        /// PostgreSQL: the previous read's snapshot (`pg_snapshot` text).
        pub snapshot: String,
        /// PostgreSQL: when that read began (its `now()`); entries
        /// published after it was taken were published after this.
        pub taken_at: Option<DateTime<Utc>>,
    }

    /// Which entries an administrative call acts on: dead letters for
    /// listing, requeues and purges; pending entries for discards (`One`
    /// or `Name` only).
    #[derive(Debug, Clone)]
    pub enum Which {
        One(Uuid),
        All,
        Name(String),
        /// Dead for longer than this.
        DeadFor(Duration),
    }

    /// The SQL of one backend. Methods are crate-internal.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` is not an outbox backend: enable its feature of `outbox`",
        label = "needs a feature of `outbox` for this database",
        note = "`outbox = {{ version = \"0.1\", features = [\"postgres\"] }}` for `sqlx::Postgres`, \
                `\"mysql\"` for `sqlx::MySql`, `\"sqlite\"` for `sqlx::Sqlite`"
    )]
    pub trait Store: sqlx::Database + super::inbox::InboxStore {
        /// Prepared SQL text for one table, built once per outbox.
        type Sql: Send + Sync + 'static;

        /// Whether `schema.table` names are supported.
        const SCHEMAS: bool;

        fn sql(table: &TableName, options: SqlOptions) -> Self::Sql;

        fn migrate(
            pool: &sqlx::Pool<Self>,
            table: &TableName,
        ) -> impl Future<Output = Result<()>> + Send;

        /// Checks that `table` is an outbox table at the current schema
        /// version; [`Error::NotAnOutboxTable`] says what to run otherwise.
        fn check(
            pool: &sqlx::Pool<Self>,
            table: &TableName,
        ) -> impl Future<Output = Result<()>> + Send;

        fn insert(
            conn: &mut Self::Connection,
            sql: &Self::Sql,
            rows: &[NewRow],
        ) -> impl Future<Output = Result<()>> + Send;

        /// Claims up to `limit` due entries past position `after`, in
        /// position order. A pending entry at or before `after` still holds
        /// back the later entries of its stream (per-stream order).
        fn claim(
            conn: &mut Self::Connection,
            sql: &Self::Sql,
            limit: usize,
            lease: Duration,
            token: Uuid,
            after: i64,
        ) -> impl Future<Output = Result<Vec<ClaimedRow>>> + Send;

        /// Writes the outcomes of the rows still claimed with `token`;
        /// returns their positions (a row missing from it lost its claim).
        fn settle(
            conn: &mut Self::Connection,
            sql: &Self::Sql,
            token: Uuid,
            settlement: &Settlement,
        ) -> impl Future<Output = Result<Vec<i64>>> + Send;

        /// Whether [`settle_and_claim`](Self::settle_and_claim) saves a
        /// round trip for this table (otherwise the relay settles and claims
        /// in turn).
        fn settles_and_claims(_sql: &Self::Sql) -> bool {
            false
        }

        /// Records the batch `settled.0` published (positions `settled.1`,
        /// still claimed with that token) and claims the next batch, in one
        /// round trip and one transaction where the backend can. Returns
        /// the positions settled and the rows claimed.
        fn settle_and_claim(
            conn: &mut Self::Connection,
            sql: &Self::Sql,
            settled: (Uuid, &[i64]),
            claim: Claim,
        ) -> impl Future<Output = Result<(Vec<i64>, Vec<ClaimedRow>)>> + Send {
            async move {
                let settlement = Settlement {
                    published: settled.1.to_vec(),
                    updates: Vec::new(),
                };
                let positions = Self::settle(conn, sql, settled.0, &settlement).await?;
                let rows = Self::claim(
                    conn,
                    sql,
                    claim.limit,
                    claim.lease,
                    claim.token,
                    claim.after,
                )
                .await?;
                Ok((positions, rows))
            }
        }

        /// Extends the lease of the rows `ids` still claimed with `token`;
        /// returns how many still were.
        fn renew(
            conn: &mut Self::Connection,
            sql: &Self::Sql,
            token: Uuid,
            ids: &[i64],
            lease: Duration,
        ) -> impl Future<Output = Result<u64>> + Send;

        /// Writes blocked publishers (`Ok`) and deletes unblocked ones (`Err(label)`).
        fn save_blocked(
            conn: &mut Self::Connection,
            sql: &Self::Sql,
            changes: &[std::result::Result<Blocked, String>],
        ) -> impl Future<Output = Result<()>> + Send;

        fn dead_letters(
            pool: &sqlx::Pool<Self>,
            sql: &Self::Sql,
            which: Which,
            limit: usize,
        ) -> impl Future<Output = Result<Vec<DeadLetter>>> + Send;

        fn requeue(
            pool: &sqlx::Pool<Self>,
            sql: &Self::Sql,
            which: Which,
        ) -> impl Future<Output = Result<u64>> + Send;

        fn purge(
            pool: &sqlx::Pool<Self>,
            sql: &Self::Sql,
            which: Which,
        ) -> impl Future<Output = Result<u64>> + Send;

        /// Deletes the pending entries `which` (`One` or `Name`) that no
        /// relay holds a live claim on; returns how many.
        fn discard(
            pool: &sqlx::Pool<Self>,
            sql: &Self::Sql,
            which: Which,
        ) -> impl Future<Output = Result<u64>> + Send;

        fn stats(
            pool: &sqlx::Pool<Self>,
            sql: &Self::Sql,
        ) -> impl Future<Output = Result<Stats>> + Send;

        /// Deletes up to `limit` published entries older than `older_than`.
        fn cleanup(
            pool: &sqlx::Pool<Self>,
            sql: &Self::Sql,
            older_than: Duration,
            limit: usize,
        ) -> impl Future<Output = Result<u64>> + Send;

        /// Pending count, dead count and the oldest pending age, reading
        /// only pending and dead entries (through their indexes).
        fn gauges(
            pool: &sqlx::Pool<Self>,
            sql: &Self::Sql,
        ) -> impl Future<Output = Result<Gauges>> + Send;

        /// Where a follow cursor starts: everything committed now counts as
        /// seen. Also returns the pending count at that point.
        fn follow_start(
            pool: &sqlx::Pool<Self>,
            sql: &Self::Sql,
        ) -> impl Future<Output = Result<(FollowCursor, u64)>> + Send;

        /// Hands `each` the entries that arrived since `cursor`, in position
        /// order, from one snapshot, and returns the pending count in that
        /// snapshot. `cursor` moves only when the read succeeded.
        fn follow_next<F: FnMut(Followed) + Send>(
            pool: &sqlx::Pool<Self>,
            sql: &Self::Sql,
            cursor: &mut FollowCursor,
            each: F,
        ) -> impl Future<Output = Result<u64>> + Send;

        /// A wake-up source for idle relays (PostgreSQL LISTEN); `None` where
        /// the database has none.
        fn listen(
            _pool: &sqlx::Pool<Self>,
            _sql: &Self::Sql,
        ) -> impl Future<Output = Result<Option<Box<dyn Wakeup>>>> + Send {
            async { Ok(None) }
        }
    }

    /// Wakes an idle relay when entries may have arrived.
    #[async_trait::async_trait]
    pub trait Wakeup: Send {
        /// Returns when woken (or after a connection problem, so the caller
        /// polls instead).
        async fn wait(&mut self);
    }

    /// What the SQL of one outbox depends on besides the table.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct SqlOptions {
        /// Per-stream order: an entry waits while an earlier entry of its
        /// stream is pending-not-due, claimed, or dead.
        pub ordered: bool,
        /// Wake relays on insert (PostgreSQL NOTIFY).
        pub notify: bool,
        /// Keep published entries (status `published`) instead of deleting them.
        pub keep_published: bool,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_and_schema_names() {
        assert_eq!(TableName::new("outbox").unwrap().to_string(), "outbox");
        let t = TableName::new("app.outbox_2").unwrap();
        assert_eq!(t.quoted('"', ""), "\"app\".\"outbox_2\"");
        assert_eq!(t.bare(), "outbox_2");
    }

    /// One row of a stats query: a version of a name.
    fn row(name: &str, version: u32, pending: u64, dead: u64, oldest: Option<u64>) -> NameStats {
        NameStats {
            name: name.to_owned(),
            pending,
            retrying: pending / 2,
            dead,
            published: 1,
            oldest_pending_age: oldest.map(Duration::from_secs),
            versions: vec![(version, pending + dead + 1)],
        }
    }

    #[test]
    fn stats_fold_the_versions_of_a_name() {
        let stats = Stats::from_names(
            vec![
                row("a", 1, 2, 0, Some(5)),
                row("a", 3, 4, 1, Some(9)),
                row("b", 2, 0, 1, None),
            ],
            Vec::new(),
        );
        assert_eq!(
            (stats.pending, stats.retrying, stats.dead, stats.published),
            (6, 3, 2, 3)
        );
        assert_eq!(stats.oldest_pending_age, Some(Duration::from_secs(9)));
        let a = &stats.by_name[0];
        assert_eq!(stats.by_name.len(), 2);
        assert_eq!(
            (a.name.as_str(), a.pending, a.retrying, a.dead, a.published),
            ("a", 6, 3, 1, 2)
        );
        assert_eq!(a.oldest_pending_age, Some(Duration::from_secs(9)));
        assert_eq!(a.versions, [(1, 3), (3, 6)]);
        assert_eq!(stats.by_name[1].versions, [(2, 2)]);
    }

    #[test]
    fn rejects_injection_and_odd_names() {
        for bad in [
            "",
            "outbox; DROP TABLE users",
            "out\"box",
            "1outbox",
            "a.b.c",
            ".outbox",
            "outbox.",
            "out box",
            "outbox`",
            "ünïcode",
            &"x".repeat(49),
        ] {
            assert!(
                matches!(TableName::new(bad), Err(Error::InvalidTableName { .. })),
                "{bad:?} was accepted"
            );
        }
    }
}
