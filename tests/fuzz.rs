//! Property tests, thousands of cases each, on everything that parses
//! outside input: table names, header maps and stream keys through record
//! -> relay -> `Recorded`, rows written by other programs (arbitrary
//! `headers` and `payload` text) read back by the relay, and the redaction
//! of credentials in broker and webhook URLs. No server needed: the
//! outbox is SQLite. `FUZZ_CASES` scales the case counts.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox::{Backoff, Entry, Error, Metadata, Outbox, Publishers, Recorded, TableName};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, outbox::Event)]
#[outbox(name = "fuzz.typed")]
struct Typed {
    n: i64,
    s: String,
}

/// `default` cases, times `FUZZ_CASES / 1000` when set (e.g. 10000 for ten times more).
fn cases(default: u32) -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(default, |scale| {
            u32::try_from(u64::from(default) * scale / 1_000)
                .unwrap_or(u32::MAX)
                .max(1)
        })
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A SQLite outbox in a fresh file (table `outbox`).
async fn sqlite() -> (Outbox<Sqlite>, SqlitePool, std::path::PathBuf) {
    sqlite_with_lease(Duration::from_secs(30)).await
}

async fn sqlite_with_lease(lease: Duration) -> (Outbox<Sqlite>, SqlitePool, std::path::PathBuf) {
    let dir = std::env::temp_dir().join("outbox-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("fuzz-{}.db", Uuid::new_v4()));
    // Durability is not under test here: no fsync per transaction.
    let options = SqliteConnectOptions::new()
        .filename(&file)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Off);
    let pool = SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .unwrap();
    let outbox = Outbox::builder(pool.clone())
        .max_attempts(1)
        .backoff(Backoff::none())
        .lease(lease)
        .build()
        .await
        .unwrap();
    (outbox, pool, file)
}

async fn done(pool: SqlitePool, file: std::path::PathBuf) {
    pool.close().await;
    for suffix in ["", "-wal", "-shm"] {
        let mut path = file.clone().into_os_string();
        path.push(suffix);
        let _ = std::fs::remove_file(path);
    }
}

/// What the documentation promises: an identifier of ASCII letters, digits
/// and `_`, not starting with a digit, at most 48 bytes, optionally
/// `schema.table`.
fn documented_valid(name: &str) -> bool {
    let ident = |part: &str| {
        let mut chars = part.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && part.len() <= 48
    };
    match name.split_once('.') {
        None => ident(name),
        Some((schema, table)) => ident(schema) && ident(table),
    }
}

fn table_name_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[A-Za-z0-9_.\"'`;\\-/* \u{0}é]{0,60}",
        "[A-Za-z_][A-Za-z0-9_]{0,55}(\\.[A-Za-z_][A-Za-z0-9_]{0,55})?",
        "[a-z_]{1,10}(; DROP TABLE [a-z]{1,8}|\"|'|--|/\\*|\\.[a-z]{1,5}\\.[a-z]{1,5})",
    ]
}

/// `TableName::new` never panics; it accepts exactly the documented names,
/// and an accepted name displays as given and parses back to itself.
#[test]
fn table_names_accept_exactly_the_documented_identifiers() {
    let n = cases(10_000);
    let (accepted, refused) = (Cell::new(0_u32), Cell::new(0_u32));
    runner(n)
        .run(&table_name_strategy(), |name| {
            match TableName::new(&name) {
                Ok(parsed) => {
                    accepted.set(accepted.get() + 1);
                    prop_assert!(documented_valid(&name), "accepted {name:?}");
                    prop_assert!(
                        name.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
                    );
                    prop_assert_eq!(parsed.to_string(), name.clone());
                    prop_assert_eq!(TableName::new(&parsed.to_string()).ok(), Some(parsed));
                }
                Err(Error::InvalidTableName {
                    name: given,
                    reason,
                }) => {
                    refused.set(refused.get() + 1);
                    prop_assert!(!documented_valid(&name), "refused {name:?}: {reason}");
                    prop_assert_eq!(given, name);
                    prop_assert!(!reason.is_empty());
                }
                Err(other) => prop_assert!(false, "{name:?}: unexpected error {other}"),
            }
            Ok(())
        })
        .unwrap();
    let (accepted, refused) = (accepted.get(), refused.get());
    eprintln!("table names: {n} cases, {accepted} accepted, {refused} refused");
    assert!(
        accepted > n / 10 && refused > n / 10,
        "both sides were explored"
    );
}

fn text_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z\u{0}-\u{1f}\"\\\\ é🔑\u{feff}\u{ffff}]{0,20}",
        Just(String::new()),
        "[a-z]{200,300}",
    ]
}

/// Header maps and stream keys of arbitrary strings (NUL, control
/// characters, astral and non-characters, empty, long) go through record ->
/// relay -> `Recorded` unchanged.
#[test]
fn header_maps_and_stream_keys_round_trip_exactly() {
    let n = cases(2_000);
    let rt = runtime();
    let (outbox, pool, file) = rt.block_on(sqlite());
    let seen: Arc<Mutex<Vec<Recorded<Typed>>>> = Arc::default();
    let publishers = {
        let seen = seen.clone();
        Publishers::builder()
            .on(move |r: Recorded<Typed>| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push(r);
                    Ok(())
                }
            })
            .build()
            .unwrap()
    };
    let strategy = (
        proptest::collection::btree_map(text_strategy(), text_strategy(), 0..8),
        proptest::option::of(text_strategy()),
        text_strategy(),
    );
    runner(n)
        .run(&strategy, |(headers, stream_key, s)| {
            rt.block_on(async {
                let mut meta = Metadata::new();
                for (k, v) in &headers {
                    meta = meta.header(k.clone(), v.clone());
                }
                if let Some(key) = &stream_key {
                    meta = meta.stream_key(key.clone());
                }
                let event = Typed { n: 7, s };
                let mut tx = pool.begin().await.unwrap();
                let id = outbox
                    .record_with(&mut *tx, &event, meta)
                    .await
                    .unwrap()
                    .event_id()
                    .unwrap();
                tx.commit().await.unwrap();
                let report = outbox.run(&publishers, 10).await.unwrap();
                prop_assert_eq!(report.published, 1, "{:?}", report);
                let got = seen.lock().unwrap().pop().expect("published");
                prop_assert_eq!(got.event_id(), id);
                prop_assert_eq!(got.event(), &event);
                prop_assert_eq!(got.headers(), &headers);
                prop_assert_eq!(got.stream_key(), stream_key.as_deref());
                Ok(())
            })
        })
        .unwrap();
    eprintln!("header maps and stream keys: {n} cases round-tripped");
    rt.block_on(done(pool, file));
}

/// Arbitrary JSON values, as text.
fn json_strategy() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        text_strategy().prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(text_strategy(), inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Text another program might store: JSON of any shape, JSON that nearly
/// matches (a typed event, a string map), broken JSON, anything.
fn stored_text_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => json_strategy().prop_map(|v| v.to_string()),
        2 => (any::<i64>(), text_strategy())
            .prop_map(|(n, s)| serde_json::json!({ "n": n, "s": s }).to_string()),
        2 => proptest::collection::btree_map(text_strategy(), text_strategy(), 0..4)
            .prop_map(|m| serde_json::to_string(&m).unwrap()),
        1 => (json_strategy(), any::<prop::sample::Index>()).prop_map(|(v, cut)| {
            let text = v.to_string();
            let at = cut.index(text.len() + 1);
            text.char_indices()
                .map(|(i, _)| i)
                .take_while(|&i| i <= at)
                .last()
                .map_or_else(String::new, |i| text[..i].to_owned())
        }),
        1 => any::<String>(),
        1 => Just("{}".to_owned()),
        1 => Just(r#"{"n": 1, "s": "\ud800"}"#.to_owned()),
    ]
}

/// Rows written with plain SQL, with arbitrary `headers` and `payload`
/// text, for a typed publisher or the catch-all: the relay never panics
/// and never stops; each entry is published exactly as the documentation
/// predicts or dead-lettered with a reason.
#[test]
fn stored_rows_are_published_or_dead_lettered_with_a_reason() {
    let n = cases(2_000);
    let rt = runtime();
    let (outbox, pool, file) = rt.block_on(sqlite());
    let typed: Arc<Mutex<Vec<Recorded<Typed>>>> = Arc::default();
    let raw: Arc<Mutex<Vec<Entry>>> = Arc::default();
    let publishers = {
        let (typed, raw) = (typed.clone(), raw.clone());
        Publishers::builder()
            .on(move |r: Recorded<Typed>| {
                let typed = typed.clone();
                async move {
                    typed.lock().unwrap().push(r);
                    Ok(())
                }
            })
            .fallback_fn(move |e: Entry| {
                let raw = raw.clone();
                async move {
                    raw.lock().unwrap().push(e);
                    Ok(())
                }
            })
            .build()
            .unwrap()
    };
    let (published, dead) = (Cell::new(0_u32), Cell::new(0_u32));
    let headers = prop_oneof![
        3 => proptest::collection::btree_map(text_strategy(), text_strategy(), 0..4)
            .prop_map(|m| serde_json::to_string(&m).unwrap()),
        1 => Just("{}".to_owned()),
        2 => stored_text_strategy(),
    ];
    let strategy = (any::<bool>(), stored_text_strategy(), headers);
    runner(n)
        .run(&strategy, |(is_typed, payload, headers)| {
            rt.block_on(async {
                let name = if is_typed { "fuzz.typed" } else { "fuzz.other" };
                let id = Uuid::now_v7();
                sqlx::query(
                    "INSERT INTO outbox (event_id, name, payload, headers) VALUES (?, ?, ?, ?)",
                )
                .bind(id.to_string())
                .bind(name)
                .bind(&payload)
                .bind(&headers)
                .execute(&pool)
                .await
                .unwrap();
                let report = outbox.run(&publishers, 10).await.map_err(|err| {
                    TestCaseError::fail(format!("the relay failed on the row: {err}"))
                })?;
                prop_assert_eq!(report.claimed, 1);
                let header_map: Option<BTreeMap<String, String>> = if headers == "{}" {
                    Some(BTreeMap::new())
                } else {
                    serde_json::from_str(&headers).ok()
                };
                let decoded: Option<Typed> = serde_json::from_str(&payload).ok();
                let dead_letter = outbox.dead_letter(id).await.unwrap();
                match (&header_map, is_typed, &decoded) {
                    (None, _, _) => {
                        let reason = dead_letter.expect("dead").reason;
                        prop_assert!(reason.contains("headers do not decode"), "{}", reason);
                        dead.set(dead.get() + 1);
                    }
                    (Some(_), true, None) => {
                        let reason = dead_letter.expect("dead").reason;
                        prop_assert!(reason.contains("payload does not decode"), "{}", reason);
                        dead.set(dead.get() + 1);
                    }
                    (Some(map), true, Some(event)) => {
                        prop_assert!(dead_letter.is_none());
                        let got = typed.lock().unwrap().pop().expect("typed publish");
                        prop_assert_eq!(got.event(), event);
                        prop_assert_eq!(got.headers(), map);
                        prop_assert_eq!(got.payload_json(), payload.as_str());
                        published.set(published.get() + 1);
                    }
                    (Some(map), false, _) => {
                        prop_assert!(dead_letter.is_none());
                        let got = raw.lock().unwrap().pop().expect("raw publish");
                        prop_assert_eq!(got.event_id(), id);
                        prop_assert_eq!(got.headers(), map);
                        prop_assert_eq!(got.payload_json(), payload.as_str());
                        published.set(published.get() + 1);
                    }
                }
                prop_assert!(typed.lock().unwrap().is_empty() && raw.lock().unwrap().is_empty());
                outbox.purge_all().await.unwrap();
                let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                prop_assert_eq!(left, 0, "the entry reached an end");
                Ok(())
            })
        })
        .unwrap();
    let (published, dead) = (published.get(), dead.get());
    eprintln!("stored rows: {n} cases, {published} published, {dead} dead letters");
    assert!(published > 0 && dead > 0, "both outcomes were explored");
    rt.block_on(done(pool, file));
}

/// A row another program wrote wrong, in one column (SQLite stores
/// whatever it is given: bytes that are not UTF-8 in a TEXT column, text
/// that is not a UUID, a BLOB, text in an INTEGER column), and a good row
/// after it: the bad row must be dead-lettered (or refused), and the good
/// row still delivered: the queue is never blocked. The lease is short
/// (100 ms) and the relay runs for a second, so waiting out leases cannot
/// explain a miss.
#[test]
fn rows_written_wrong_do_not_block_the_queue() {
    // `{"<FF>"<C0><AF>}`: a stray byte and an overlong encoding.
    const NOT_UTF8: &str = "CAST(X'7B22FF22C0AF7D' AS TEXT)";
    let cases = [
        ("payload", "payload is not UTF-8", NOT_UTF8),
        ("headers", "headers are not UTF-8", NOT_UTF8),
        ("name", "name is not UTF-8", NOT_UTF8),
        ("stream_key", "stream_key is not UTF-8", NOT_UTF8),
        ("event_id", "event_id is not UTF-8", NOT_UTF8),
        ("event_id", "event_id is not a UUID", "'not-a-uuid'"),
        ("correlation_id", "correlation_id is not a UUID", "'nope'"),
        ("payload", "payload is a BLOB", "X'7B7D'"),
        ("created_at", "created_at is text", "'yesterday'"),
    ];
    let rt = runtime();
    let mut blocked = Vec::new();
    rt.block_on(async {
        for (column, what, value) in cases {
            let (outbox, pool, file) = sqlite_with_lease(Duration::from_millis(100)).await;
            let mut row: BTreeMap<&str, String> = [
                ("event_id", format!("'{}'", Uuid::now_v7())),
                ("name", "'fuzz.other'".to_owned()),
                ("payload", "'{}'".to_owned()),
                ("headers", "'{}'".to_owned()),
            ]
            .into();
            row.insert(column, value.to_owned());
            let sql = format!(
                "INSERT INTO outbox ({}) VALUES ({})",
                row.keys().copied().collect::<Vec<_>>().join(", "),
                row.values().cloned().collect::<Vec<_>>().join(", ")
            );
            sqlx::query(sqlx::AssertSqlSafe(sql.clone())).execute(&pool).await.unwrap();
            let good = Uuid::now_v7();
            sqlx::query(
                "INSERT INTO outbox (event_id, name, payload) VALUES (?, 'fuzz.other', '{}')",
            )
            .bind(good.to_string())
            .execute(&pool)
            .await
            .unwrap();

            let delivered: Arc<Mutex<Vec<Uuid>>> = Arc::default();
            let publishers = {
                let delivered = delivered.clone();
                Publishers::builder()
                    .fallback_fn(move |e: Entry| {
                        let delivered = delivered.clone();
                        async move {
                            delivered.lock().unwrap().push(e.event_id());
                            Ok(())
                        }
                    })
                    .build()
                    .unwrap()
            };
            let mut errors = Vec::new();
            for _ in 0..10 {
                if let Err(err) = outbox.run(&publishers, 10).await {
                    errors.push(err.to_string());
                }
                tokio::time::sleep(Duration::from_millis(110)).await;
            }
            let delivered = delivered.lock().unwrap().clone();
            let dead = outbox.dead_letters(10).await.map(|d| d.len());
            eprintln!(
                "written wrong, {what}: {} of 10 runs failed ({:?}), delivered {}, dead letters {dead:?}",
                errors.len(),
                errors.first(),
                delivered.len(),
            );
            if !delivered.contains(&good) {
                blocked.push(format!(
                    "{what}: the good row after it was never delivered; {} of 10 runs failed: {:?}",
                    errors.len(),
                    errors.first()
                ));
            }
            done(pool, file).await;
        }
    });
    assert!(
        blocked.is_empty(),
        "a SQLite row written wrong blocks the queue:\n{}",
        blocked.join("\n")
    );
}
