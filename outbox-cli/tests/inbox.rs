//! `outbox inbox ...` end to end, as a process, against the local
//! PostgreSQL (`DATABASE_URL`, default `postgres://root@127.0.0.1:5432/test`),
//! MariaDB (`MYSQL_URL`) and SQLite (a temp file per test). The inbox table
//! and its dead letters are made with the library (`Inbox::handle` with a
//! failing consumer); each test has its own table (or file) and drops it.

use outbox::Backend;
use outbox::inbox::{ConsumeError, Consumers, Inbox, Message, Outcome, Tx};
use serde_json::Value;
use sqlx::{MySqlPool, Pool, SqlitePool};
use uuid::Uuid;

mod support;

use support::{
    Run, exec, mysql_url, pg, pg_drop, pg_url, remove_sqlite, schema_version, sqlite_url, table,
};

/// `outbox --table TABLE inbox ARGS...`.
fn inbox(url: &str, table: &str, args: &[&str]) -> Run {
    let args: Vec<&str> = std::iter::once("inbox")
        .chain(args.iter().copied())
        .collect();
    exec(url, Some(table), &args)
}

// ---------------------------------------------------------------- fixture

/// What [`fixture`] put in the inbox table.
struct Fixture {
    /// Dead letters, oldest first: (event id, name, payload, attempts).
    dead: Vec<(Uuid, &'static str, String, u32)>,
    /// The correlation id every message carries.
    correlation: Uuid,
}

/// The consumer: `shop.order_placed` commits, `shop.poison` is rejected,
/// everything else fails (and is retried).
fn consumers<DB: Backend>() -> Consumers<DB> {
    Consumers::builder()
        .fallback_fn(|_tx: &mut Tx<DB>, entry: outbox::Entry| {
            Box::pin(async move {
                match entry.name() {
                    "shop.order_placed" => Ok(()),
                    "shop.poison" => Err(ConsumeError::reject("cannot ever be processed")),
                    name => Err(ConsumeError::retry(format!("refused: {name}"))),
                }
            })
        })
        .build()
        .unwrap()
}

fn message(id: Uuid, name: &str, n: u32, correlation: Uuid) -> Message {
    Message::new(format!(r#"{{"n":{n}}}"#))
        .event_id(id.to_string())
        .name(name)
        .stream_key(format!("stream-{n}"))
        .header("tenant", "acme")
        .correlation_id(correlation.to_string())
}

/// The version the `shop.poison` message says it is (the others say none:
/// version 1).
const POISON_VERSION: u32 = 3;

/// The version of the fixture's messages named `name`.
fn version_of(name: &str) -> u32 {
    if name == "shop.poison" {
        POISON_VERSION
    } else {
        1
    }
}

/// The inbox table `table` (created by the library, 2 attempts per message)
/// holding 3 processed messages, 1 retrying, and 3 dead letters: two
/// `billing.invoice_paid` after 2 attempts, one `shop.poison` (of version
/// [`POISON_VERSION`]) at once.
async fn fixture<DB: Backend>(pool: &Pool<DB>, table: &str) -> (Inbox<DB>, Fixture) {
    let inbox = Inbox::builder(pool.clone())
        .table(table)
        .max_attempts(2)
        .build()
        .await
        .unwrap();
    let consumers = consumers::<DB>();
    let correlation = Uuid::new_v4();
    let mut n = 0;
    let mut handle = |name: &'static str| {
        n += 1;
        (Uuid::new_v4(), name, n)
    };
    let mut dead = Vec::new();
    for _ in 0..2 {
        let (id, name, n) = handle("billing.invoice_paid");
        let first = inbox
            .handle(&consumers, message(id, name, n, correlation))
            .await;
        assert!(matches!(first, Outcome::Retry { .. }), "{first:?}");
        let second = inbox
            .handle(&consumers, message(id, name, n, correlation))
            .await;
        assert!(matches!(second, Outcome::Dead { .. }), "{second:?}");
        dead.push((id, name, format!(r#"{{"n":{n}}}"#), 2));
    }
    let (id, name, n) = handle("shop.poison");
    let poison = message(id, name, n, correlation).version(POISON_VERSION.to_string());
    let outcome = inbox.handle(&consumers, poison).await;
    assert!(matches!(outcome, Outcome::Dead { .. }), "{outcome:?}");
    dead.push((id, name, format!(r#"{{"n":{n}}}"#), 1));
    let (id, name, n) = handle("billing.invoice_paid");
    let outcome = inbox
        .handle(&consumers, message(id, name, n, correlation))
        .await;
    assert!(matches!(outcome, Outcome::Retry { .. }), "{outcome:?}");
    for _ in 0..3 {
        let (id, name, n) = handle("shop.order_placed");
        let outcome = inbox
            .handle(&consumers, message(id, name, n, correlation))
            .await;
        assert_eq!(outcome, Outcome::Processed);
    }
    (inbox, Fixture { dead, correlation })
}

/// The counts `outbox inbox --json status` prints.
fn counts(json: &Value) -> [u64; 4] {
    ["processed", "retrying", "dead", "requeued"].map(|k| json[k].as_u64().unwrap())
}

// ---------------------------------------------------------------- PostgreSQL

#[tokio::test]
async fn inbox_migrate_and_status_postgres() {
    let pool = pg().await;
    let t = table("inbox_status");
    let version = schema_version("postgres/inbox");
    assert!(version >= 2, "{version}");
    let run = inbox(&pg_url(), &t, &["migrate"]).ok();
    assert_eq!(
        run.stdout.trim(),
        format!(
            "inbox table \"{t}\" created (schema version {version}) in {}",
            pg_url()
        )
    );
    let again = inbox(&pg_url(), &t, &["migrate"]).ok();
    assert!(
        again
            .stdout
            .contains(&format!("already up to date (schema version {version})")),
        "{again:?}"
    );
    let json = inbox(&pg_url(), &t, &["--json", "migrate"]).ok().json();
    assert_eq!(json["created"], false);
    assert_eq!(json["schema_version"], version);

    // Empty.
    let json = inbox(&pg_url(), &t, &["--json", "status"]).ok().json();
    assert_eq!(counts(&json), [0, 0, 0, 0]);
    assert_eq!(json["by_name"], Value::Array(vec![]));

    let (lib, _) = fixture(&pool, &t).await;
    let run = inbox(&pg_url(), &t, &["status"]).ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines[0], format!("inbox \"{t}\" at {}", pg_url()));
    assert_eq!(
        lines[1..5],
        [
            "  processed  3 (ids kept for deduplication)",
            "  retrying   1",
            "  dead       3",
            "  requeued   0 (waiting for a consumer loop)",
        ]
    );
    assert_eq!(lines[5], "");
    assert_eq!(
        lines[6..],
        [
            "NAME                  PROCESSED  RETRYING  DEAD  REQUEUED",
            "billing.invoice_paid          0         1     2         0",
            "shop.order_placed             3         0     0         0",
            "shop.poison                   0         0     1         0",
        ]
    );

    let json = inbox(&pg_url(), &t, &["--json", "status"]).ok().json();
    assert_eq!(json["table"], t.as_str());
    assert_eq!(counts(&json), [3, 1, 3, 0]);
    let by_name = json["by_name"].as_array().unwrap();
    assert_eq!(by_name.len(), 3);
    assert_eq!(by_name[0]["name"], "billing.invoice_paid");
    assert_eq!(counts(&by_name[0]), [0, 1, 2, 0]);
    assert_eq!(counts(&by_name[2]), [0, 0, 1, 0]);
    // The same numbers as the library's.
    let stats = lib.stats().await.unwrap();
    assert_eq!(
        [stats.processed, stats.retrying, stats.dead, stats.requeued],
        [3, 1, 3, 0]
    );
    pg_drop(&pool, &t).await;
}

#[tokio::test]
async fn inbox_dead_list_and_show_postgres() {
    let pool = pg().await;
    let t = table("inbox_list");
    let (_, fx) = fixture(&pool, &t).await;

    let run = inbox(&pg_url(), &t, &["dead", "list"]).ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "POSITION", "EVENT", "ID", "NAME", "VERSION", "ATTEMPTS", "DEAD", "FOR", "REASON"
        ]
    );
    assert_eq!(lines.len(), 5, "{run:?}");
    for ((id, name, _, attempts), line) in fx.dead.iter().zip(&lines[1..4]) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            cells[1..5],
            [
                id.to_string().as_str(),
                name,
                version_of(name).to_string().as_str(),
                attempts.to_string().as_str()
            ]
        );
    }
    assert!(
        lines[1].ends_with("refused: billing.invoice_paid"),
        "{run:?}"
    );
    assert!(lines[3].ends_with("cannot ever be processed"), "{run:?}");
    assert_eq!(lines[4], "3 dead letters");

    let json = inbox(&pg_url(), &t, &["--json", "dead", "list"])
        .ok()
        .json();
    let list = json.as_array().unwrap();
    assert_eq!(list.len(), 3);
    for ((id, name, payload, attempts), item) in fx.dead.iter().zip(list) {
        assert_eq!(item["event_id"], id.to_string());
        assert_eq!(item["name"], *name);
        assert_eq!(item["version"], version_of(name));
        assert_eq!(item["attempts"], *attempts);
        assert_eq!(
            item["payload"],
            serde_json::from_str::<Value>(payload).unwrap()
        );
        assert!(item["received_at"].is_string(), "{item}");
        assert!(item.get("created_at").is_none(), "{item}");
    }
    let args = ["--json", "dead", "list", "--name", "shop.poison"];
    let poison = inbox(&pg_url(), &t, &args).ok().json();
    assert_eq!(poison.as_array().unwrap().len(), 1);
    assert_eq!(poison[0]["event_id"], fx.dead[2].0.to_string());
    let run = inbox(&pg_url(), &t, &["dead", "list", "--limit", "2"]).ok();
    assert!(
        run.stdout
            .ends_with("2 dead letters (the first 2: --limit N for more)\n"),
        "{run:?}"
    );
    let run = inbox(&pg_url(), &t, &["dead", "list", "--name", "nothing.here"]).ok();
    assert_eq!(
        run.stdout.trim(),
        format!("no dead letters named \"nothing.here\" in \"{t}\"")
    );

    let (id, _, _, _) = &fx.dead[0];
    let id = id.to_string();
    let run = inbox(&pg_url(), &t, &["dead", "show", &id]).ok();
    let text = &run.stdout;
    assert!(text.starts_with(&format!("event id    {id}\n")), "{run:?}");
    for want in [
        "name        billing.invoice_paid\nversion     1\n".to_owned(),
        "stream key  stream-1\n".to_owned(),
        format!("correlation {}\n", fx.correlation),
        "headers     tenant: acme\n".to_owned(),
        "attempts    2\n".to_owned(),
        "received at ".to_owned(),
        "reason      refused: billing.invoice_paid\n".to_owned(),
        "payload\n{\n  \"n\": 1\n}\n".to_owned(),
    ] {
        assert!(text.contains(&want), "{want:?} not in {run:?}");
    }
    let json = inbox(&pg_url(), &t, &["--json", "dead", "show", &id])
        .ok()
        .json();
    assert_eq!(json["event_id"], id.as_str());
    assert_eq!(json["payload"]["n"], 1);
    assert_eq!(json["stream_key"], "stream-1");
    assert_eq!(json["headers"]["tenant"], "acme");
    assert_eq!(json["correlation_id"], fx.correlation.to_string());
    assert_eq!(json["reason"], "refused: billing.invoice_paid");
    let other = Uuid::new_v4().to_string();
    inbox(&pg_url(), &t, &["dead", "show", &other]).fails_quietly(
        1,
        &format!("no dead letter with event id {other} in inbox \"{t}\""),
    );
    inbox(&pg_url(), &t, &["dead", "show", "not-a-uuid"]).fails_quietly(1, "not a UUID");
    pg_drop(&pool, &t).await;
}

#[tokio::test]
async fn inbox_dead_requeue_and_purge_postgres() {
    let pool = pg().await;
    let t = table("inbox_fix");
    let (lib, fx) = fixture(&pool, &t).await;
    let [(paid1, ..), (paid2, ..), (poison, ..)] = [&fx.dead[0], &fx.dead[1], &fx.dead[2]];
    let status = || counts(&inbox(&pg_url(), &t, &["--json", "status"]).ok().json());

    // One requeue: no question asked; the row is requeued, attempts reset.
    let run = inbox(&pg_url(), &t, &["dead", "requeue", &paid1.to_string()]).ok();
    assert_eq!(
        run.stdout.trim(),
        "requeued 1 dead letter (attempts reset; a running consumer loop processes them from the table)"
    );
    assert_eq!(status(), [3, 1, 2, 1]);
    assert!(lib.dead_letter(*paid1).await.unwrap().is_none());
    inbox(&pg_url(), &t, &["dead", "requeue", &paid1.to_string()])
        .fails_quietly(1, "no dead letter with event id");

    // Many, or a purge: refused without a terminal and without --yes; nothing changes.
    for args in [
        &["dead", "requeue", "--name", "shop.poison"][..],
        &["dead", "requeue", "--all"],
        &["dead", "purge", &paid2.to_string()],
        &["dead", "purge", "--older-than", "1d"],
    ] {
        inbox(&pg_url(), &t, args).fails_quietly(
            1,
            "without confirmation: stdin is not a terminal (pass --yes)",
        );
    }
    assert_eq!(status(), [3, 1, 2, 1]);

    // Purge one: gone from the dead list, its id kept as processed (a
    // redelivery is a duplicate).
    let run = inbox(
        &pg_url(),
        &t,
        &["dead", "purge", &paid2.to_string(), "--yes"],
    )
    .ok();
    assert_eq!(
        run.stdout.trim(),
        "purged 1 dead letter (ids kept as processed for the dedupe window)"
    );
    assert_eq!(status(), [4, 1, 1, 1]);
    let list = inbox(&pg_url(), &t, &["--json", "dead", "list"])
        .ok()
        .json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["event_id"], poison.to_string());
    let again = message(*paid2, "billing.invoice_paid", 2, fx.correlation);
    assert_eq!(lib.handle(&consumers(), again).await, Outcome::Duplicate);

    // By name, as JSON; then nothing left to requeue.
    let args = [
        "--json",
        "dead",
        "requeue",
        "--name",
        "shop.poison",
        "--yes",
    ];
    assert_eq!(inbox(&pg_url(), &t, &args).ok().json()["requeued"], 1);
    assert_eq!(status(), [4, 1, 0, 2]);
    let run = inbox(&pg_url(), &t, &["dead", "requeue", "--all", "--yes"]).ok();
    assert_eq!(
        run.stdout.trim(),
        format!("no dead letters in inbox \"{t}\"")
    );
    let run = inbox(&pg_url(), &t, &["dead", "list"]).ok();
    assert_eq!(run.stdout.trim(), format!("no dead letters in \"{t}\""));

    // A requeued message that fails its 2 attempts is dead again; purge by age.
    let poison_again = message(*poison, "shop.poison", 3, fx.correlation);
    assert!(matches!(
        lib.handle(&consumers(), poison_again).await,
        Outcome::Dead { .. }
    ));
    assert_eq!(status(), [4, 1, 1, 1]);
    let args = ["--json", "dead", "purge", "--older-than", "1d", "--yes"];
    assert_eq!(inbox(&pg_url(), &t, &args).ok().json()["purged"], 0);
    let args = ["--json", "dead", "purge", "--older-than", "0s", "--yes"];
    assert_eq!(inbox(&pg_url(), &t, &args).ok().json()["purged"], 1);
    assert_eq!(status(), [5, 1, 0, 1]);
    pg_drop(&pool, &t).await;
}

#[tokio::test]
async fn inbox_missing_table_is_an_error_postgres() {
    let t = table("inbox_missing");
    let id = Uuid::new_v4().to_string();
    for args in [
        &["status"][..],
        &["dead", "list"],
        &["dead", "show", &id],
        &["dead", "requeue", &id],
        &["dead", "requeue", "--all", "--yes"],
        &["dead", "purge", "--older-than", "0s", "--yes"],
    ] {
        inbox(&pg_url(), &t, args).fails_quietly(
            1,
            &format!("inbox table \"{t}\" does not exist (run \"outbox inbox migrate\")"),
        );
    }
    // Nothing was created by those commands.
    let pool = pg().await;
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&t)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(!exists);
}

// ---------------------------------------------------------------- SQLite, MariaDB

#[tokio::test]
async fn inbox_sqlite_default_table_status_and_dead_letters() {
    let (url, file) = sqlite_url();
    // Without --table the inbox commands use `inbox`; migrate creates the file.
    let run = exec(&url, None, &["inbox", "migrate"]).ok();
    let version = schema_version("sqlite/inbox");
    assert!(version >= 2, "{version}");
    assert_eq!(
        run.stdout.trim(),
        format!("inbox table \"inbox\" created (schema version {version}) in {url}")
    );
    let pool = SqlitePool::connect(&url).await.unwrap();
    let (lib, fx) = fixture(&pool, "inbox").await;
    let json = exec(&url, None, &["inbox", "--json", "status"]).ok().json();
    assert_eq!(json["table"], "inbox");
    assert_eq!(counts(&json), [3, 1, 3, 0]);
    // The outbox commands still default to `outbox`, which does not exist.
    exec(&url, None, &["status"]).fails_quietly(1, "table \"outbox\" does not exist");

    let run = inbox(&url, "inbox", &["dead", "list"]).ok();
    for (id, name, _, _) in &fx.dead {
        assert!(run.stdout.contains(&format!("{id}  {name}")), "{run:?}");
    }
    let (poison, ..) = fx.dead[2];
    let run = inbox(&url, "inbox", &["dead", "show", &poison.to_string()]).ok();
    assert!(
        run.stdout
            .contains("reason      cannot ever be processed\n"),
        "{run:?}"
    );
    let json = inbox(
        &url,
        "inbox",
        &["--json", "dead", "show", &poison.to_string()],
    )
    .ok()
    .json();
    assert_eq!(json["correlation_id"], fx.correlation.to_string());
    assert_eq!(json["attempts"], 1);

    inbox(&url, "inbox", &["dead", "requeue", "--all"]).fails_quietly(1, "pass --yes");
    let args = [
        "--json",
        "dead",
        "requeue",
        "--name",
        "billing.invoice_paid",
        "--yes",
    ];
    assert_eq!(inbox(&url, "inbox", &args).ok().json()["requeued"], 2);
    let args = ["--json", "dead", "purge", &poison.to_string(), "--yes"];
    assert_eq!(inbox(&url, "inbox", &args).ok().json()["purged"], 1);
    let stats = lib.stats().await.unwrap();
    assert_eq!(
        [stats.processed, stats.retrying, stats.dead, stats.requeued],
        [4, 1, 0, 2]
    );
    inbox(&url, "missing", &["status"]).fails_quietly(1, "inbox table \"missing\" does not exist");
    pool.close().await;
    remove_sqlite(&file);
}

#[tokio::test]
async fn inbox_mariadb_status_and_dead_letters() {
    let pool = MySqlPool::connect(&mysql_url())
        .await
        .expect("MariaDB at MYSQL_URL");
    let t = table("inbox_mysql");
    let run = inbox(&mysql_url(), &t, &["migrate"]).ok();
    let version = schema_version("mysql/inbox");
    assert!(version >= 2, "{version}");
    assert!(
        run.stdout.starts_with(&format!(
            "inbox table \"{t}\" created (schema version {version})"
        )),
        "{run:?}"
    );
    let (lib, fx) = fixture(&pool, &t).await;
    let json = inbox(&mysql_url(), &t, &["--json", "status"]).ok().json();
    assert_eq!(counts(&json), [3, 1, 3, 0]);
    let list = inbox(&mysql_url(), &t, &["--json", "dead", "list"])
        .ok()
        .json();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["event_id"].as_str().unwrap())
        .collect();
    let want: Vec<String> = fx.dead.iter().map(|d| d.0.to_string()).collect();
    assert_eq!(ids, want);
    let (paid1, ..) = fx.dead[0];
    inbox(&mysql_url(), &t, &["dead", "requeue", &paid1.to_string()]).ok();
    let args = ["--json", "dead", "purge", "--older-than", "0s", "--yes"];
    assert_eq!(inbox(&mysql_url(), &t, &args).ok().json()["purged"], 2);
    let stats = lib.stats().await.unwrap();
    assert_eq!(
        [stats.processed, stats.retrying, stats.dead, stats.requeued],
        [5, 1, 0, 1]
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP TABLE IF EXISTS {t}, {t}_schema"
    )))
    .execute(&pool)
    .await
    .unwrap();
}
