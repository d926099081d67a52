//! The database side of event versions, on every backend the build has a
//! feature for (PostgreSQL at `DATABASE_URL`, MariaDB/MySQL at `MYSQL_URL`,
//! a SQLite file per test): the `version` migration upgrades a table of the
//! previous schema (its rows become version 1 and are delivered); every
//! insert path writes the recording type's version; claims (and PostgreSQL's
//! settle-and-claim) read it back; dead letters and the per-name stats show
//! it; the inbox keeps a message's version through failure, dead letter and
//! requeue. Every test has tables (or a file) of its own.

#![cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox::inbox::{ConsumeError, Consumers, Inbox, Message, Outcome, Tx};
use outbox::{Backend, Entry, Event, Metadata, Outbox, PublishError, Publishers, Stats};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

// ------------------------------------------------------------------ events

// Hand-written (not derived): unregistered types, so two versions of one
// name live in one test binary without meeting the registry's checks.

/// Version 1 of `sv.paid`.
#[derive(Serialize, Deserialize)]
struct PaidV1 {
    n: i64,
}

impl Event for PaidV1 {
    const NAME: &'static str = "sv.paid";
}

/// Version 3 of `sv.paid`.
#[derive(Serialize, Deserialize)]
struct PaidV3 {
    n: i64,
}

impl Event for PaidV3 {
    const NAME: &'static str = "sv.paid";
    const VERSION: u32 = 3;
}

/// Another name, at version 2.
#[derive(Serialize, Deserialize)]
struct ShippedV2 {
    n: i64,
}

impl Event for ShippedV2 {
    const NAME: &'static str = "sv.shipped";
    const VERSION: u32 = 2;
}

// --------------------------------------------------------------- databases

/// What the tests need of one database besides the library.
trait Db {
    type DB: Backend;
    /// The backend's folder under `outbox/migrations`.
    const DIR: &'static str;
    const QUOTE: char;
    /// The type of `<table>_schema.applied_at`.
    const TIME: &'static str;
    /// The type an integer column is cast to for reading as `i64`.
    const INT: &'static str;

    /// A pool, and the SQLite file it opened (if any).
    async fn connect() -> (sqlx::Pool<Self::DB>, Option<PathBuf>);

    async fn try_execute(pool: &sqlx::Pool<Self::DB>, sql: &str) -> Result<(), sqlx::Error>;

    async fn ints(pool: &sqlx::Pool<Self::DB>, sql: &str) -> Vec<i64>;
}

#[cfg(feature = "postgres")]
struct Pg;

#[cfg(feature = "postgres")]
impl Db for Pg {
    type DB = sqlx::Postgres;
    const DIR: &'static str = "postgres";
    const QUOTE: char = '"';
    const TIME: &'static str = "TIMESTAMPTZ";
    const INT: &'static str = "BIGINT";

    async fn connect() -> (sqlx::PgPool, Option<PathBuf>) {
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_owned());
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(5)
            .connect(&url)
            .await
            .expect("PostgreSQL at DATABASE_URL (default postgres://root@127.0.0.1:5432/test)");
        (pool, None)
    }

    async fn try_execute(pool: &sqlx::PgPool, sql: &str) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(pool)
            .await
            .map(drop)
    }

    async fn ints(pool: &sqlx::PgPool, sql: &str) -> Vec<i64> {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_all(pool)
            .await
            .unwrap()
    }
}

#[cfg(feature = "mysql")]
struct My;

#[cfg(feature = "mysql")]
impl Db for My {
    type DB = sqlx::MySql;
    const DIR: &'static str = "mysql";
    const QUOTE: char = '`';
    const TIME: &'static str = "DATETIME(6)";
    const INT: &'static str = "SIGNED";

    async fn connect() -> (sqlx::MySqlPool, Option<PathBuf>) {
        let url = std::env::var("MYSQL_URL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned());
        let pool = sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(5)
            .connect(&url)
            .await
            .expect("MariaDB/MySQL at MYSQL_URL (default mysql://root@127.0.0.1:3306/test)");
        (pool, None)
    }

    async fn try_execute(pool: &sqlx::MySqlPool, sql: &str) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(pool)
            .await
            .map(drop)
    }

    async fn ints(pool: &sqlx::MySqlPool, sql: &str) -> Vec<i64> {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_all(pool)
            .await
            .unwrap()
    }
}

#[cfg(feature = "sqlite")]
struct Lite;

#[cfg(feature = "sqlite")]
impl Db for Lite {
    type DB = sqlx::Sqlite;
    const DIR: &'static str = "sqlite";
    const QUOTE: char = '"';
    const TIME: &'static str = "INTEGER";
    const INT: &'static str = "INTEGER";

    async fn connect() -> (sqlx::SqlitePool, Option<PathBuf>) {
        let dir = std::env::temp_dir().join("outbox-tests");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("{}.db", Uuid::new_v4()));
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&file)
            .create_if_missing(true);
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .unwrap();
        (pool, Some(file))
    }

    async fn try_execute(pool: &sqlx::SqlitePool, sql: &str) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(pool)
            .await
            .map(drop)
    }

    async fn ints(pool: &sqlx::SqlitePool, sql: &str) -> Vec<i64> {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_all(pool)
            .await
            .unwrap()
    }
}

/// One test's pool and table (the SQLite file is the test's own as well).
struct Ctx<D: Db> {
    pool: sqlx::Pool<D::DB>,
    table: String,
    file: Option<PathBuf>,
}

impl<D: Db> Ctx<D> {
    async fn new(prefix: &str) -> Self {
        let (pool, file) = D::connect().await;
        let table = format!("sv_{prefix}_{}", &Uuid::new_v4().simple().to_string()[..12]);
        Self { pool, table, file }
    }

    /// `name` quoted.
    fn q(name: &str) -> String {
        let q = D::QUOTE;
        format!("{q}{name}{q}")
    }

    /// The table quoted.
    fn t(&self) -> String {
        Self::q(&self.table)
    }

    async fn execute(&self, sql: &str) {
        D::try_execute(&self.pool, sql)
            .await
            .unwrap_or_else(|err| panic!("{sql}: {err}"));
    }

    /// The `version` of the rows of the table matching `filter`, by position.
    async fn versions(&self, filter: &str) -> Vec<i64> {
        let sql = format!(
            "SELECT CAST(version AS {}) FROM {} WHERE {filter} ORDER BY id",
            D::INT,
            self.t()
        );
        D::ints(&self.pool, &sql).await
    }

    /// Creates the table as the releases before event versions did: the
    /// migrations in `outbox/migrations/<dir>` before `NNNN_version`,
    /// recorded in `<table>_schema`. Returns the schema version it is at.
    async fn create_before_versions(&self, dir: &str) -> i32 {
        let path = format!("{}/outbox/migrations/{dir}", env!("CARGO_MANIFEST_DIR"));
        let mut ups: Vec<_> = std::fs::read_dir(&path)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.ends_with(".up.sql"))
            .collect();
        ups.sort();
        let at = ups
            .iter()
            .position(|name| name.ends_with("_version.up.sql"))
            .unwrap_or_else(|| panic!("no NNNN_version migration in {path}: {ups:?}"));
        let schema = Self::q(&format!("{}_schema", self.table));
        self.execute(&format!(
            "CREATE TABLE {schema} (version INTEGER PRIMARY KEY, applied_at {} NULL)",
            D::TIME
        ))
        .await;
        let mut version = 0;
        for name in &ups[..at] {
            let template = std::fs::read_to_string(format!("{path}/{name}")).unwrap();
            let sql = template
                .replace("__TABLE__", &self.t())
                .replace("__SCHEMA_TABLE__", &schema)
                .replace(
                    "__BLOCKED_TABLE__",
                    &Self::q(&format!("{}_blocked", self.table)),
                )
                .replace("__NAME__", &self.table);
            self.execute(&sql).await;
            version = name[..4].parse().unwrap();
            self.execute(&format!(
                "INSERT INTO {schema} (version) VALUES ({version})"
            ))
            .await;
        }
        let missing =
            D::try_execute(&self.pool, &format!("SELECT version FROM {}", self.t())).await;
        assert!(
            missing.is_err(),
            "the previous schema has no version column"
        );
        version
    }

    async fn done(self) {
        for suffix in ["", "_schema", "_blocked"] {
            let sql = format!(
                "DROP TABLE IF EXISTS {}",
                Self::q(&format!("{}{suffix}", self.table))
            );
            self.execute(&sql).await;
        }
        self.pool.close().await;
        if let Some(file) = self.file {
            for suffix in ["", "-wal", "-shm"] {
                let mut name = file.clone().into_os_string();
                name.push(suffix);
                let _ = std::fs::remove_file(name);
            }
        }
    }
}

// ----------------------------------------------------------------- helpers

/// What a publisher or consumer saw: `n` from the payload, and the version.
type Seen = Arc<Mutex<Vec<(i64, u32)>>>;

fn n_of(payload: &str) -> i64 {
    serde_json::from_str::<serde_json::Value>(payload).unwrap()["n"]
        .as_i64()
        .unwrap()
}

/// A catch-all publisher that notes every entry and rejects the one whose
/// `n` is `reject`.
fn publishers(seen: &Seen, reject: Option<i64>) -> Publishers {
    let seen = Arc::clone(seen);
    Publishers::builder()
        .fallback_fn(move |entry: Entry| {
            let seen = Arc::clone(&seen);
            async move {
                let n = n_of(entry.payload_json());
                seen.lock().unwrap().push((n, entry.version()));
                if Some(n) == reject {
                    Err(PublishError::rejected("rejected by the test"))
                } else {
                    Ok(())
                }
            }
        })
        .build()
        .unwrap()
}

/// Per name: pending, dead, published, versions.
type NameFigures = (String, u64, u64, u64, Vec<(u32, u64)>);

fn by_name(stats: &Stats) -> Vec<NameFigures> {
    stats
        .by_name
        .iter()
        .map(|n| {
            (
                n.name.clone(),
                n.pending,
                n.dead,
                n.published,
                n.versions.clone(),
            )
        })
        .collect()
}

fn figures(name: &str, pending: u64, dead: u64, published: u64, v: &[(u32, u64)]) -> NameFigures {
    (name.to_owned(), pending, dead, published, v.to_vec())
}

fn sorted(seen: &Seen) -> Vec<(i64, u32)> {
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_unstable();
    seen
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..600 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

// ------------------------------------------------------------------- tests

/// An outbox table of the previous schema is refused (its schema version
/// says why), then migrated: its pending and dead entries become version 1
/// and are delivered as version 1.
async fn upgrade_keeps_old_entries_at_version_1<D: Db>() {
    let ctx = Ctx::<D>::new("up").await;
    let at = ctx.create_before_versions(D::DIR).await;
    // Written by the previous release's writers (the table contract's SQL).
    let t = ctx.t();
    let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    for (n, id) in (1..).zip(&ids) {
        ctx.execute(&format!(
            "INSERT INTO {t} (event_id, name, payload) \
             VALUES ('{id}', 'sv.paid', '{{\"n\": {n}}}')"
        ))
        .await;
    }
    ctx.execute(&format!(
        "UPDATE {t} SET status = 'dead', attempts = 1, last_error = 'old' \
         WHERE event_id = '{}'",
        ids[2]
    ))
    .await;

    let err = Outbox::builder(ctx.pool.clone())
        .table(&ctx.table)
        .migrate(false)
        .build()
        .await
        .unwrap_err();
    let expected = format!("its schema is at version {at}, this build needs {}", at + 1);
    assert!(err.to_string().contains(&expected), "{err}");

    let outbox = Outbox::builder(ctx.pool.clone())
        .table(&ctx.table)
        .build()
        .await
        .unwrap();
    assert_eq!(ctx.versions("1 = 1").await, [1, 1, 1]);
    let dead = outbox.dead_letters(10).await.unwrap();
    assert_eq!(
        dead.iter()
            .map(|d| (n_of(&d.payload), d.version))
            .collect::<Vec<_>>(),
        [(3, 1)]
    );
    let stats = outbox.stats().await.unwrap();
    assert_eq!(by_name(&stats), [figures("sv.paid", 2, 1, 0, &[(1, 3)])]);

    assert_eq!(outbox.requeue_all().await.unwrap(), 1);
    let seen = Seen::default();
    let report = outbox.run(&publishers(&seen, None), 10).await.unwrap();
    assert_eq!(report.published, 3, "{report:?}");
    assert_eq!(sorted(&seen), [(1, 1), (2, 1), (3, 1)]);
    // Migrating again changes nothing.
    outbox::migrate(&ctx.pool, &ctx.table).await.unwrap();
    ctx.done().await;
}

/// Every insert path writes the recording type's version (on PostgreSQL:
/// the plain statement for version 1 without metadata, the full one
/// otherwise, and batches mixing both); claims read it back (the relay
/// loop, on PostgreSQL settling and claiming in one statement), and dead
/// letters and the per-name stats show it, kept published entries
/// included.
async fn recorded_versions_are_stored_claimed_and_counted<D: Db>() {
    let ctx = Ctx::<D>::new("rec").await;
    let outbox = Outbox::builder(ctx.pool.clone())
        .table(&ctx.table)
        .max_attempts(1)
        .batch_limit(2)
        .keep_published(Duration::from_hours(1))
        .build()
        .await
        .unwrap();
    let mut conn = ctx.pool.acquire().await.unwrap();
    outbox.record(&mut conn, &PaidV1 { n: 1 }).await.unwrap();
    outbox.record(&mut conn, &PaidV3 { n: 2 }).await.unwrap();
    let meta = Metadata::new().stream_key("invoice-3").header("k", "v");
    outbox
        .record_with(&mut conn, &PaidV3 { n: 3 }, meta)
        .await
        .unwrap();
    let mut batch = outbox.batch();
    batch.push(&PaidV1 { n: 4 }).unwrap();
    batch.push(&PaidV3 { n: 5 }).unwrap();
    batch.push(&ShippedV2 { n: 6 }).unwrap();
    batch.record(&mut conn).await.unwrap();
    outbox
        .record_all(&mut conn, &[PaidV1 { n: 7 }, PaidV1 { n: 8 }])
        .await
        .unwrap();
    outbox.record(&mut conn, &ShippedV2 { n: 9 }).await.unwrap();
    drop(conn);
    assert_eq!(ctx.versions("1 = 1").await, [1, 3, 3, 1, 3, 2, 1, 1, 2]);
    let stats = outbox.stats().await.unwrap();
    assert_eq!(
        by_name(&stats),
        [
            figures("sv.paid", 7, 0, 0, &[(1, 4), (3, 3)]),
            figures("sv.shipped", 2, 0, 0, &[(2, 2)]),
        ]
    );
    assert_eq!(stats.pending, 9);

    // The relay loop, batches of 2: after a batch published in full the
    // next claim comes with its settlement (PostgreSQL).
    let seen = Seen::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = outbox
        .relay(publishers(&seen, Some(3)))
        .poll_interval(Duration::from_millis(20))
        .run(async {
            let _ = stopped.await;
        });
    let watch = async {
        wait_for("9 entries published", || seen.lock().unwrap().len() >= 9).await;
        stop.send(()).unwrap();
    };
    let (report, ()) = tokio::join!(relay, watch);
    assert_eq!((report.published, report.dead), (8, 1), "{report:?}");
    assert_eq!(
        sorted(&seen),
        [
            (1, 1),
            (2, 3),
            (3, 3),
            (4, 1),
            (5, 3),
            (6, 2),
            (7, 1),
            (8, 1),
            (9, 2)
        ]
    );

    let dead = outbox.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        (
            dead[0].name.as_str(),
            dead[0].version,
            dead[0].stream_key.as_deref()
        ),
        ("sv.paid", 3, Some("invoice-3"))
    );
    let stats = outbox.stats().await.unwrap();
    assert_eq!(
        by_name(&stats),
        [
            figures("sv.paid", 0, 1, 6, &[(1, 4), (3, 3)]),
            figures("sv.shipped", 0, 0, 2, &[(2, 2)]),
        ]
    );
    assert_eq!((stats.pending, stats.dead, stats.published), (0, 1, 8));

    // Requeued, the dead letter is claimed again with its version.
    assert!(outbox.requeue(dead[0].event_id).await.unwrap());
    let again = Seen::default();
    let report = outbox.run(&publishers(&again, None), 10).await.unwrap();
    assert_eq!(report.published, 1, "{report:?}");
    assert_eq!(sorted(&again), [(3, 3)]);
    ctx.done().await;
}

/// A consumer that notes `(n, version)` of every message and fails while
/// `fail` is set.
fn consumers<D: Db>(seen: &Seen, fail: &Arc<AtomicBool>) -> Consumers<D::DB> {
    let (seen, fail) = (Arc::clone(seen), Arc::clone(fail));
    Consumers::builder()
        .fallback_fn(move |_tx: &mut Tx<D::DB>, entry: Entry| {
            let (seen, fail) = (Arc::clone(&seen), Arc::clone(&fail));
            Box::pin(async move {
                seen.lock()
                    .unwrap()
                    .push((n_of(entry.payload_json()), entry.version()));
                if fail.load(Ordering::SeqCst) {
                    Err(ConsumeError::retry("failing on purpose"))
                } else {
                    Ok(())
                }
            })
        })
        .build()
        .unwrap()
}

fn message(id: Uuid, n: i64, version: Option<&str>) -> Message {
    let message = Message::new(format!("{{\"n\": {n}}}"))
        .event_id(id.to_string())
        .name("sv.inbox");
    match version {
        Some(version) => message.version(version),
        None => message,
    }
}

/// The inbox writes a message's version when it takes or fails it, keeps
/// it through dead letter and requeue, and hands it to the consumer of a
/// requeued message processed from the table.
async fn inbox_keeps_versions_through_fail_dead_and_requeue<D: Db>() {
    let ctx = Ctx::<D>::new("inbox").await;
    let inbox = Inbox::builder(ctx.pool.clone())
        .table(&ctx.table)
        .max_attempts(2)
        .build()
        .await
        .unwrap();
    let (seen, fail) = (Seen::default(), Arc::new(AtomicBool::new(true)));
    let consumers = consumers::<D>(&seen, &fail);
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let row = |id: Uuid| format!("event_id = '{id}'");

    // Version 3: fails twice, a dead letter of version 3.
    let outcome = inbox.handle(&consumers, message(a, 1, Some("3"))).await;
    assert!(matches!(outcome, Outcome::Retry { .. }), "{outcome:?}");
    assert_eq!(ctx.versions(&row(a)).await, [3]);
    let outcome = inbox.handle(&consumers, message(a, 1, Some("3"))).await;
    assert!(matches!(outcome, Outcome::Dead { .. }), "{outcome:?}");
    let dead = inbox.dead_letters(10).await.unwrap();
    assert_eq!(
        dead.iter()
            .map(|d| (d.event_id, d.version, d.attempts))
            .collect::<Vec<_>>(),
        [(a, 3, 2)]
    );

    // Requeued and failing again from the table: still version 3.
    assert_eq!(inbox.requeue_all().await.unwrap(), 1);
    inbox.process_requeued(&consumers, 10).await.unwrap();
    inbox.process_requeued(&consumers, 10).await.unwrap();
    let dead = inbox.dead_letters(10).await.unwrap();
    assert_eq!(
        dead.iter()
            .map(|d| (d.event_id, d.version))
            .collect::<Vec<_>>(),
        [(a, 3)]
    );
    // Requeued once more, and processed.
    assert_eq!(inbox.requeue_all().await.unwrap(), 1);
    fail.store(false, Ordering::SeqCst);
    assert_eq!(inbox.process_requeued(&consumers, 10).await.unwrap(), 1);
    assert_eq!(ctx.versions(&row(a)).await, [3]);
    assert_eq!(seen.lock().unwrap().as_slice(), [(1, 3); 5]);

    // Version 2: fails once, then a redelivery is processed.
    seen.lock().unwrap().clear();
    fail.store(true, Ordering::SeqCst);
    let outcome = inbox.handle(&consumers, message(b, 2, Some("2"))).await;
    assert!(matches!(outcome, Outcome::Retry { .. }), "{outcome:?}");
    fail.store(false, Ordering::SeqCst);
    let outcome = inbox.handle(&consumers, message(b, 2, Some("2"))).await;
    assert_eq!(outcome, Outcome::Processed);
    assert_eq!(ctx.versions(&row(b)).await, [2]);
    // No version said: 1, processed at once.
    let outcome = inbox.handle(&consumers, message(c, 3, None)).await;
    assert_eq!(outcome, Outcome::Processed);
    assert_eq!(ctx.versions(&row(c)).await, [1]);
    assert_eq!(seen.lock().unwrap().as_slice(), [(2, 2), (2, 2), (3, 1)]);
    ctx.done().await;
}

/// An inbox table of the previous schema is migrated: a dead letter it
/// held becomes version 1 and is processed as version 1 once requeued.
async fn inbox_upgrade_keeps_old_messages_at_version_1<D: Db>() {
    let ctx = Ctx::<D>::new("inup").await;
    ctx.create_before_versions(&format!("{}/inbox", D::DIR))
        .await;
    let id = Uuid::new_v4();
    ctx.execute(&format!(
        "INSERT INTO {} (event_id, name, status, attempts, payload, headers, last_error) \
         VALUES ('{id}', 'sv.inbox', 'dead', 3, '{{\"n\": 1}}', '{{}}', 'old')",
        ctx.t()
    ))
    .await;
    let inbox = Inbox::builder(ctx.pool.clone())
        .table(&ctx.table)
        .build()
        .await
        .unwrap();
    let dead = inbox.dead_letters(10).await.unwrap();
    assert_eq!(
        dead.iter()
            .map(|d| (d.event_id, d.version))
            .collect::<Vec<_>>(),
        [(id, 1)]
    );
    let (seen, fail) = (Seen::default(), Arc::new(AtomicBool::new(false)));
    assert_eq!(inbox.requeue_all().await.unwrap(), 1);
    let consumers = consumers::<D>(&seen, &fail);
    assert_eq!(inbox.process_requeued(&consumers, 10).await.unwrap(), 1);
    assert_eq!(seen.lock().unwrap().as_slice(), [(1, 1)]);
    ctx.done().await;
}

/// Migrating a table of another program that has the outbox's (or the
/// inbox's) name fails without adding the column to it (MySQL's DDL is not
/// transactional: its migration probes the table first).
async fn a_foreign_table_is_not_altered<D: Db>() {
    let (outbox_ctx, inbox_ctx) = (
        Ctx::<D>::new("foreign").await,
        Ctx::<D>::new("foreign").await,
    );
    for ctx in [&outbox_ctx, &inbox_ctx] {
        ctx.execute(&format!(
            "CREATE TABLE {} (id INTEGER PRIMARY KEY, name TEXT)",
            ctx.t()
        ))
        .await;
    }
    let err = Outbox::builder(outbox_ctx.pool.clone())
        .table(&outbox_ctx.table)
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(err, outbox::Error::NotAnOutboxTable { .. }),
        "{err}"
    );
    let inbox = Inbox::builder(inbox_ctx.pool.clone())
        .table(&inbox_ctx.table)
        .build()
        .await;
    assert!(inbox.is_err(), "an inbox on a foreign table was built");
    for ctx in [outbox_ctx, inbox_ctx] {
        let probe = D::try_execute(&ctx.pool, &format!("SELECT version FROM {}", ctx.t())).await;
        assert!(probe.is_err(), "the foreign table got a version column");
        ctx.done().await;
    }
}

macro_rules! on {
    ($db:ident, $feature:literal, $module:ident) => {
        #[cfg(feature = $feature)]
        mod $module {
            use super::*;

            #[tokio::test]
            async fn upgrade_keeps_old_entries_at_version_1() {
                super::upgrade_keeps_old_entries_at_version_1::<$db>().await;
            }

            #[tokio::test]
            async fn recorded_versions_are_stored_claimed_and_counted() {
                super::recorded_versions_are_stored_claimed_and_counted::<$db>().await;
            }

            #[tokio::test]
            async fn inbox_keeps_versions_through_fail_dead_and_requeue() {
                super::inbox_keeps_versions_through_fail_dead_and_requeue::<$db>().await;
            }

            #[tokio::test]
            async fn inbox_upgrade_keeps_old_messages_at_version_1() {
                super::inbox_upgrade_keeps_old_messages_at_version_1::<$db>().await;
            }

            #[tokio::test]
            async fn a_foreign_table_is_not_altered() {
                super::a_foreign_table_is_not_altered::<$db>().await;
            }
        }
    };
}

on!(Pg, "postgres", postgres);
on!(My, "mysql", mysql);
on!(Lite, "sqlite", sqlite);

/// SQLite keeps whatever a writer puts in the column: a version written as
/// text makes its entry a dead letter at its claim (listed as version 0),
/// and the stats count it as version 0 instead of failing.
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_a_version_written_as_text_is_a_dead_letter() {
    let ctx = Ctx::<Lite>::new("text").await;
    let outbox = Outbox::builder(ctx.pool.clone())
        .table(&ctx.table)
        .build()
        .await
        .unwrap();
    let t = ctx.t();
    ctx.execute(&format!(
        "INSERT INTO {t} (event_id, name, payload, version) \
         VALUES ('{}', 'sv.paid', '{{\"n\": 1}}', 'x')",
        Uuid::new_v4()
    ))
    .await;
    ctx.execute(&format!(
        "INSERT INTO {t} (event_id, name, payload) VALUES ('{}', 'sv.paid', '{{\"n\": 2}}')",
        Uuid::new_v4()
    ))
    .await;
    let stats = outbox.stats().await.unwrap();
    assert_eq!(
        by_name(&stats),
        [figures("sv.paid", 2, 0, 0, &[(0, 1), (1, 1)])]
    );
    let seen = Seen::default();
    let report = outbox.run(&publishers(&seen, None), 10).await.unwrap();
    assert_eq!((report.published, report.dead), (1, 1), "{report:?}");
    assert_eq!(sorted(&seen), [(2, 1)]);
    let dead = outbox.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].version, 0);
    assert!(dead[0].reason.contains("does not decode"), "{dead:?}");
    ctx.done().await;
}
