//! The `outbox` binary end to end, as a process, against the local
//! PostgreSQL (`DATABASE_URL`, default `postgres://root@127.0.0.1:5432/test`),
//! MariaDB (`MYSQL_URL`), SQLite (a temp file per test), RabbitMQ
//! (`AMQP_URL`) and Redis (`REDIS_URL`). Each test has its own table (or
//! file), queue and stream, and drops them at the end. Rows are written
//! with plain SQL (the statements of the README's table contract), but for
//! the entries of a version other than 1, which the library records
//! ([`InvoicePaidV3`]).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use serde_json::Value;
use sqlx::{MySqlPool, PgPool, SqlitePool};
use uuid::Uuid;

mod support;

use support::{
    BIN, Run, command, exec, mysql_url, one_error_line, pg, pg_drop, pg_url, remove_sqlite,
    schema_version, sqlite_url, table,
};

const README: &str = include_str!("../../README.md");

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Runs `outbox --database-url URL --table TABLE ARGS...` with no terminal.
fn outbox(url: &str, table: &str, args: &[&str]) -> Run {
    exec(url, Some(table), args)
}

/// A child process whose stdout lines arrive on a channel.
struct Spawned {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Spawned {
    fn start(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    fn next_line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(15))
            .expect("a line within 15 s")
    }

    /// Sends SIGTERM and waits (at most 20 s) for the exit; returns the
    /// exit code, the rest of stdout, and stderr.
    fn terminate(mut self) -> (i32, String, String) {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(killed.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "no exit within 20 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        };
        let rest: Vec<String> = self.lines.try_iter().collect();
        let mut stderr = String::new();
        std::io::Read::read_to_string(self.child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        (status.code().unwrap_or(-1), rest.join("\n"), stderr)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The README's table-contract block for one database (its first line is
/// `-- <marker>`), for `table`.
fn readme_sql(marker: &str, table: &str) -> String {
    let start = README
        .find(&format!("```sql\n-- {marker}\n"))
        .unwrap_or_else(|| panic!("README has no ```sql block for {marker}"));
    let block = &README[start + "```sql\n".len()..];
    let block = &block[..block.find("```").unwrap()];
    assert!(block.contains("INSERT INTO outbox ("), "{block}");
    block
        .replace("INSERT INTO outbox (", &format!("INSERT INTO {table} ("))
        .replace("'outbox_outbox'", &format!("'outbox_{table}'"))
}

async fn pg_count(pool: &PgPool, table: &str, filter: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {table} WHERE {filter}"
    )))
    .fetch_one(pool)
    .await
    .unwrap()
}

/// `billing.invoice_paid` at version 3, recorded with the library: the
/// rows written with SQL are version 1.
#[derive(serde::Serialize, serde::Deserialize)]
struct InvoicePaidV3 {
    n: i32,
}

impl outbox::Event for InvoicePaidV3 {
    const NAME: &'static str = "billing.invoice_paid";
    const VERSION: u32 = 3;
}

/// Records `n` [`InvoicePaidV3`] in `table` (PostgreSQL) with the library;
/// returns their event ids.
async fn pg_record_v3(pool: &PgPool, table: &str, n: i32) -> Vec<Uuid> {
    let outbox = outbox::Outbox::builder(pool.clone())
        .table(table)
        .build()
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    let mut ids = Vec::new();
    for n in 1..=n {
        let recording = outbox.record(&mut *tx, &InvoicePaidV3 { n }).await.unwrap();
        ids.push(recording.event_id().unwrap());
    }
    tx.commit().await.unwrap();
    ids
}

/// Inserts `n` events named `name` with plain SQL.
async fn pg_insert(pool: &PgPool, table: &str, name: &str, n: i32) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} (event_id, name, payload, stream_key) \
         SELECT gen_random_uuid(), $1, json_build_object('n', g)::text::json, 'stream-' || (g % 3) \
         FROM generate_series(1, $2) g"
    )))
    .bind(name)
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
}

// ---------------------------------------------------------------- migrate

#[tokio::test]
async fn migrate_creates_the_table_once_postgres() {
    let pool = pg().await;
    let t = table("migrate");
    let version = schema_version("postgres");
    assert!(version >= 4, "{version}");
    let run = outbox(&pg_url(), &t, &["migrate"]).ok();
    assert_eq!(
        run.stdout.trim(),
        format!(
            "table \"{t}\" created (schema version {version}) in {}",
            pg_url()
        )
    );
    assert_eq!(pg_count(&pool, &t, "true").await, 0);
    let again = outbox(&pg_url(), &t, &["migrate"]).ok();
    assert!(
        again
            .stdout
            .contains(&format!("already up to date (schema version {version})")),
        "{again:?}"
    );
    let json = outbox(&pg_url(), &t, &["--json", "migrate"]).ok().json();
    assert_eq!(json["created"], false);
    assert_eq!(json["schema_version"], version);
    assert_eq!(json["table"], t.as_str());
    pg_drop(&pool, &t).await;
}

// ---------------------------------------------------------------- status

#[tokio::test]
async fn status_counts_per_name_and_is_a_health_check_postgres() {
    let pool = pg().await;
    let t = table("status");
    outbox(&pg_url(), &t, &["migrate"]).ok();

    // Empty: healthy whatever the max age.
    let run = outbox(&pg_url(), &t, &["status", "--max-age", "1s"]).ok();
    assert!(run.stdout.contains("pending    0 (0 retrying)"), "{run:?}");
    assert!(
        run.stdout.contains("health     ok: nothing pending"),
        "{run:?}"
    );

    pg_insert(&pool, &t, "billing.invoice_paid", 3).await;
    pg_insert(&pool, &t, "shop.order_placed", 2).await;
    // One failed once, one is dead, and the oldest pending one is 10 minutes old.
    let id = |n: i32| format!("(SELECT id FROM {t} ORDER BY id OFFSET {n} LIMIT 1)");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "UPDATE {t} SET attempts = 1, last_error = 'boom' WHERE id = {};\
         UPDATE {t} SET status = 'dead', attempts = 3, last_error = 'refused' WHERE id = {};\
         UPDATE {t} SET created_at = now() - interval '10 minutes' WHERE id = {};",
        id(1),
        id(3),
        id(0)
    )))
    .execute(&pool)
    .await
    .unwrap();

    let run = outbox(&pg_url(), &t, &["status"]).ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines[0], format!("outbox \"{t}\" at {}", pg_url()));
    assert!(
        lines[1].starts_with("  pending    4 (1 retrying), oldest 10m"),
        "{run:?}"
    );
    assert_eq!(lines[2], "  dead       1");
    assert!(
        run.stdout
            .contains("NAME                  PENDING  RETRYING  DEAD  OLDEST PENDING"),
        "{run:?}"
    );
    let paid = lines
        .iter()
        .find(|l| l.starts_with("billing.invoice_paid"))
        .unwrap();
    assert_eq!(
        paid.split_whitespace().take(4).collect::<Vec<_>>(),
        ["billing.invoice_paid", "3", "1", "0"]
    );
    let placed = lines
        .iter()
        .find(|l| l.starts_with("shop.order_placed"))
        .unwrap();
    assert_eq!(
        placed.split_whitespace().take(4).collect::<Vec<_>>(),
        ["shop.order_placed", "1", "0", "1"]
    );

    let json = outbox(&pg_url(), &t, &["--json", "status"]).ok().json();
    assert_eq!(json["pending"], 4);
    assert_eq!(json["retrying"], 1);
    assert_eq!(json["dead"], 1);
    assert_eq!(json["healthy"], true);
    let oldest = json["oldest_pending_age_seconds"].as_f64().unwrap();
    assert!((600.0..700.0).contains(&oldest), "{oldest}");
    let by_name = json["by_name"].as_array().unwrap();
    assert_eq!(by_name.len(), 2);
    assert_eq!(by_name[0]["name"], "billing.invoice_paid");
    assert_eq!(by_name[0]["pending"], 3);
    assert_eq!(by_name[1]["dead"], 1);

    // The health check: 10 minutes old is fine under 1h, failing over 5m.
    let run = outbox(&pg_url(), &t, &["status", "--max-age", "1h"]).ok();
    assert!(
        run.stdout.contains("health     ok: oldest pending 10m"),
        "{run:?}"
    );
    let run = outbox(&pg_url(), &t, &["status", "--max-age", "5m"]).fails(2, "unhealthy");
    assert!(
        run.stdout
            .contains("health     FAILING: oldest pending 10m"),
        "{run:?}"
    );
    assert!(run.stderr.contains("over --max-age 5m"), "{run:?}");
    let run = outbox(&pg_url(), &t, &["--json", "status", "--max-age", "5m"]).fails(2, "unhealthy");
    assert_eq!(run.json()["healthy"], false);
    assert_eq!(run.json()["max_age_seconds"], 300.0);

    pg_drop(&pool, &t).await;
}

// ---------------------------------------------------------------- dead

/// A table with five dead letters (two died 3 days ago, three an hour ago)
/// and one pending entry; returns the dead ones' (event id, name, payload).
async fn dead_fixture(pool: &PgPool, t: &str) -> Vec<(String, String, String)> {
    outbox(&pg_url(), t, &["migrate"]).ok();
    pg_insert(pool, t, "billing.invoice_paid", 3).await;
    pg_insert(pool, t, "shop.order_placed", 2).await;
    pg_insert(pool, t, "still.pending", 1).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "UPDATE {t} SET status = 'dead', attempts = 3, last_error = 'broker said no: ' || name, \
         available_at = now() - interval '1 hour' WHERE name <> 'still.pending';\
         UPDATE {t} SET available_at = now() - interval '3 days' \
         WHERE id IN (SELECT id FROM {t} WHERE name = 'billing.invoice_paid' ORDER BY id LIMIT 2);"
    )))
    .execute(pool)
    .await
    .unwrap();
    let dead: Vec<(String, String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT event_id::text, name, payload::text FROM {t} WHERE status = 'dead' ORDER BY id"
    )))
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(dead.len(), 5);
    dead
}

#[tokio::test]
async fn dead_list_and_show_postgres() {
    let pool = pg().await;
    let t = table("deadlist");
    let dead = dead_fixture(&pool, &t).await;

    let run = outbox(&pg_url(), &t, &["dead", "list"]).ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "POSITION", "EVENT", "ID", "NAME", "VERSION", "ATTEMPTS", "DEAD", "FOR", "REASON"
        ]
    );
    assert_eq!(lines.len(), 7, "{run:?}");
    for ((id, name, _), line) in dead.iter().zip(&lines[1..6]) {
        assert!(
            line.contains(id.as_str()) && line.contains(name.as_str()),
            "{line}"
        );
        assert!(line.contains("broker said no"), "{line}");
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells[3..5], ["1", "3"], "version, attempts: {line}");
    }
    assert_eq!(lines[6], "5 dead letters");

    let json = outbox(&pg_url(), &t, &["--json", "dead", "list"])
        .ok()
        .json();
    let list = json.as_array().unwrap();
    assert_eq!(list.len(), 5);
    for ((id, name, payload), item) in dead.iter().zip(list) {
        assert_eq!(item["event_id"], id.as_str());
        assert_eq!(item["name"], name.as_str());
        assert_eq!(item["version"], 1);
        assert_eq!(item["attempts"], 3);
        assert_eq!(
            item["payload"],
            serde_json::from_str::<Value>(payload).unwrap()
        );
    }
    let args = ["--json", "dead", "list", "--name", "shop.order_placed"];
    assert_eq!(
        outbox(&pg_url(), &t, &args)
            .ok()
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let run = outbox(&pg_url(), &t, &["dead", "list", "--limit", "2"]).ok();
    assert!(
        run.stdout
            .ends_with("2 dead letters (the first 2: --limit N for more)\n"),
        "{run:?}"
    );

    let (id, name, payload) = &dead[0];
    let run = outbox(&pg_url(), &t, &["dead", "show", id]).ok();
    assert!(
        run.stdout.starts_with(&format!("event id    {id}\n")),
        "{run:?}"
    );
    assert!(
        run.stdout.contains(&format!("name        {name}\n")),
        "{run:?}"
    );
    assert!(
        run.stdout
            .contains("reason      broker said no: billing.invoice_paid\n"),
        "{run:?}"
    );
    assert!(run.stdout.contains("\"n\": 1"), "{run:?}");
    let json = outbox(&pg_url(), &t, &["--json", "dead", "show", id])
        .ok()
        .json();
    assert_eq!(
        json["payload"],
        serde_json::from_str::<Value>(payload).unwrap()
    );
    assert_eq!(json["stream_key"], "stream-1");
    outbox(
        &pg_url(),
        &t,
        &["dead", "show", &Uuid::new_v4().to_string()],
    )
    .fails(1, "no dead letter with event id");
    pg_drop(&pool, &t).await;
}

/// `status` counts each name's entries per version, and `dead list`/`show`
/// say a dead letter's version: rows written with SQL are version 1, the
/// library records [`InvoicePaidV3`] as 3.
#[tokio::test]
async fn status_and_dead_letters_show_event_versions_postgres() {
    let pool = pg().await;
    let t = table("versions");
    outbox(&pg_url(), &t, &["migrate"]).ok();
    pg_insert(&pool, &t, "billing.invoice_paid", 3).await;
    pg_insert(&pool, &t, "shop.order_placed", 2).await;
    let v3 = pg_record_v3(&pool, &t, 2).await;

    let run = outbox(&pg_url(), &t, &["status"]).ok();
    assert!(
        run.stdout
            .contains("NAME                  PENDING  RETRYING  DEAD  OLDEST PENDING  VERSIONS"),
        "{run:?}"
    );
    let row = |name: &str| run.stdout.lines().find(|l| l.starts_with(name)).unwrap();
    assert!(
        row("billing.invoice_paid").ends_with("  v1:3 v3:2"),
        "{run:?}"
    );
    assert!(row("shop.order_placed").ends_with("  v1:2"), "{run:?}");
    let json = outbox(&pg_url(), &t, &["--json", "status"]).ok().json();
    assert_eq!(
        json["by_name"][0]["versions"],
        serde_json::json!([{"version": 1, "entries": 3}, {"version": 3, "entries": 2}])
    );
    assert_eq!(
        json["by_name"][1]["versions"],
        serde_json::json!([{"version": 1, "entries": 2}])
    );

    // One of version 3 dies.
    let id = v3[0].to_string();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {t} SET status = 'dead', attempts = 3, last_error = 'too new' WHERE event_id = '{id}'"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let run = outbox(&pg_url(), &t, &["dead", "list"]).ok();
    let line = run.stdout.lines().find(|l| l.contains(&id)).unwrap();
    assert_eq!(line.split_whitespace().nth(3), Some("3"), "{line}");
    let run = outbox(&pg_url(), &t, &["dead", "show", &id]).ok();
    assert!(run.stdout.contains("\nversion     3\n"), "{run:?}");
    let json = outbox(&pg_url(), &t, &["--json", "dead", "show", &id])
        .ok()
        .json();
    assert_eq!(json["version"], 3);
    pg_drop(&pool, &t).await;
}

#[tokio::test]
async fn dead_requeue_and_purge_ask_first_postgres() {
    let pool = pg().await;
    let t = table("deadfix");
    let dead = dead_fixture(&pool, &t).await;
    let (id, one) = (&dead[0].0, &dead[1].0);

    // One requeue: no question asked.
    let run = outbox(&pg_url(), &t, &["dead", "requeue", id]).ok();
    assert_eq!(
        run.stdout.trim(),
        "requeued 1 dead letter (pending again, attempts reset)"
    );
    let requeued = format!("event_id = '{id}' AND status = 'pending' AND attempts = 0");
    assert_eq!(pg_count(&pool, &t, &requeued).await, 1);
    outbox(&pg_url(), &t, &["dead", "requeue", id]).fails(1, "no dead letter with event id");

    // Many, or a purge: refused without a terminal and without --yes; nothing changes.
    for args in [
        &["dead", "requeue", "--name", "shop.order_placed"][..],
        &["dead", "requeue", "--all"],
        &["dead", "purge", one],
        &["dead", "purge", "--older-than", "1d"],
    ] {
        outbox(&pg_url(), &t, args).fails(
            1,
            "without confirmation: stdin is not a terminal (pass --yes)",
        );
    }
    assert_eq!(pg_count(&pool, &t, "status = 'dead'").await, 4);

    let args = [
        "--json",
        "dead",
        "requeue",
        "--name",
        "shop.order_placed",
        "--yes",
    ];
    assert_eq!(outbox(&pg_url(), &t, &args).ok().json()["requeued"], 2);
    let placed = "name = 'shop.order_placed' AND status = 'pending'";
    assert_eq!(pg_count(&pool, &t, placed).await, 2);

    // Purge one, then those dead for more than a day.
    let run = outbox(&pg_url(), &t, &["dead", "purge", one, "--yes"]).ok();
    assert_eq!(run.stdout.trim(), "purged 1 dead letter");
    assert_eq!(pg_count(&pool, &t, &format!("event_id = '{one}'")).await, 0);
    let run = outbox(
        &pg_url(),
        &t,
        &["dead", "purge", "--older-than", "1d", "--yes"],
    )
    .ok();
    assert_eq!(
        run.stdout.trim(),
        "purged 0 dead letters",
        "the old ones were requeued or purged"
    );
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {t} SET status = 'dead', available_at = now() - interval '2 days' WHERE event_id = $1::uuid"
    )))
    .bind(id)
    .execute(&pool)
    .await
    .unwrap();
    let args = ["--json", "dead", "purge", "--older-than", "1d", "--yes"];
    assert_eq!(outbox(&pg_url(), &t, &args).ok().json()["purged"], 1);
    assert_eq!(
        pg_count(&pool, &t, "status = 'dead'").await,
        1,
        "the one dead for an hour stays"
    );

    let run = outbox(&pg_url(), &t, &["dead", "requeue", "--all", "--yes"]).ok();
    assert_eq!(
        run.stdout.trim(),
        "requeued 1 dead letter (pending again, attempts reset)"
    );
    let run = outbox(&pg_url(), &t, &["dead", "list"]).ok();
    assert_eq!(run.stdout.trim(), format!("no dead letters in \"{t}\""));
    assert_eq!(
        outbox(&pg_url(), &t, &["--json", "dead", "list"])
            .ok()
            .json(),
        Value::Array(vec![])
    );
    assert_eq!(
        pg_count(&pool, &t, "status = 'pending' AND attempts = 0").await,
        4
    );
    pg_drop(&pool, &t).await;
}

// ---------------------------------------------------------------- discard

#[tokio::test]
async fn discard_pending_entries_by_name_and_id_postgres() {
    let pool = pg().await;
    let t = table("discard");
    outbox(&pg_url(), &t, &["migrate"]).ok();
    pg_insert(&pool, &t, "mistake.recorded", 3).await;
    pg_insert(&pool, &t, "shop.order_placed", 2).await;
    pg_insert(&pool, &t, "mistake.recorded", 1).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "UPDATE {t} SET status = 'dead', last_error = 'no' \
         WHERE id = (SELECT max(id) FROM {t})"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let mistakes = "name = 'mistake.recorded' AND status = 'pending'";

    // Deleting asks first: refused without a terminal and without --yes.
    outbox(&pg_url(), &t, &["discard", "--name", "mistake.recorded"]).fails(
        1,
        "without confirmation: stdin is not a terminal (pass --yes)",
    );
    assert_eq!(pg_count(&pool, &t, mistakes).await, 3);

    let args = ["--json", "discard", "--name", "mistake.recorded", "--yes"];
    assert_eq!(outbox(&pg_url(), &t, &args).ok().json()["discarded"], 3);
    assert_eq!(pg_count(&pool, &t, mistakes).await, 0);
    assert_eq!(
        pg_count(
            &pool,
            &t,
            "name = 'shop.order_placed' AND status = 'pending'"
        )
        .await,
        2,
        "other names stay"
    );
    assert_eq!(
        pg_count(&pool, &t, "status = 'dead'").await,
        1,
        "dead letters stay"
    );
    let run = outbox(
        &pg_url(),
        &t,
        &["discard", "--name", "mistake.recorded", "--yes"],
    )
    .ok();
    assert_eq!(
        run.stdout.trim(),
        format!("no pending entries named \"mistake.recorded\" in \"{t}\"")
    );

    // One by id.
    let id: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT event_id::text FROM {t} WHERE status = 'pending' ORDER BY id LIMIT 1"
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    outbox(&pg_url(), &t, &["discard", &id]).fails(1, "pass --yes");
    let run = outbox(&pg_url(), &t, &["discard", &id, "--yes"]).ok();
    assert_eq!(run.stdout.trim(), "discarded 1 pending entry");
    assert_eq!(pg_count(&pool, &t, &format!("event_id = '{id}'")).await, 0);
    outbox(&pg_url(), &t, &["discard", &id, "--yes"]).fails(1, "no pending entry with event id");
    outbox(&pg_url(), &t, &["discard", "--yes"]).fails(1, "required");
    assert_eq!(pg_count(&pool, &t, "status = 'pending'").await, 1);
    pg_drop(&pool, &t).await;
}

#[tokio::test]
async fn dead_show_prints_headers_postgres() {
    let pool = pg().await;
    let t = table("deadheaders");
    outbox(&pg_url(), &t, &["migrate"]).ok();
    pg_insert(&pool, &t, "billing.invoice_paid", 2).await;
    let correlation = Uuid::new_v4();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "UPDATE {t} SET status = 'dead', last_error = 'no', \
         headers = '{{\"tenant\": \"acme\", \"x-trace\": \"abc\"}}', \
         correlation_id = '{correlation}' WHERE id = (SELECT min(id) FROM {t});\
         UPDATE {t} SET status = 'dead', last_error = 'no', headers = '{{\"n\": 1}}' \
         WHERE id = (SELECT max(id) FROM {t});"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let ids: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT event_id::text FROM {t} ORDER BY id"
    )))
    .fetch_all(&pool)
    .await
    .unwrap();

    let run = outbox(&pg_url(), &t, &["dead", "show", &ids[0]]).ok();
    assert!(
        run.stdout
            .contains("\nheaders     tenant: acme\n            x-trace: abc\n"),
        "{run:?}"
    );
    assert!(
        run.stdout
            .contains(&format!("\ncorrelation {correlation}\n")),
        "{run:?}"
    );
    let json = outbox(&pg_url(), &t, &["--json", "dead", "show", &ids[0]])
        .ok()
        .json();
    assert_eq!(json["headers"]["tenant"], "acme");
    assert_eq!(json["headers"]["x-trace"], "abc");
    assert_eq!(json["headers_error"], Value::Null);
    assert_eq!(json["correlation_id"], correlation.to_string());

    // Headers that are not a string map: shown empty, with a note.
    let run = outbox(&pg_url(), &t, &["dead", "show", &ids[1]]).ok();
    assert!(
        run.stdout
            .contains("\nheaders     - (the stored headers are shown empty: headers do not decode"),
        "{run:?}"
    );
    let json = outbox(&pg_url(), &t, &["--json", "dead", "show", &ids[1]])
        .ok()
        .json();
    assert_eq!(json["headers"], serde_json::json!({}));
    assert!(
        json["headers_error"]
            .as_str()
            .unwrap()
            .contains("string map")
    );
    assert_eq!(
        outbox(&pg_url(), &t, &["--json", "dead", "list"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    pg_drop(&pool, &t).await;
}

// ---------------------------------------------------------------- tail

#[tokio::test]
async fn tail_follows_inserts_and_publications_postgres() {
    let pool = pg().await;
    let t = table("tail");
    outbox(&pg_url(), &t, &["migrate"]).ok();
    pg_insert(&pool, &t, "before.start", 2).await;

    let tail = Spawned::start(command(
        &pg_url(),
        Some(&t),
        &["--json", "tail", "--interval", "100ms"],
    ));
    let start: Value = serde_json::from_str(&tail.next_line()).unwrap();
    assert_eq!(start["type"], "start");
    assert_eq!(start["pending"], 2);
    let after = start["after"].as_i64().unwrap();

    // The README's PostgreSQL statements: two entries, and a NOTIFY.
    sqlx::raw_sql(sqlx::AssertSqlSafe(readme_sql("PostgreSQL", &t).clone()))
        .execute(&pool)
        .await
        .unwrap();
    let rows: Vec<(i64, String, String, Option<String>)> = sqlx::query_as(sqlx::AssertSqlSafe(
        format!("SELECT id, event_id::text, name, stream_key FROM {t} WHERE id > $1 ORDER BY id"),
    ))
    .bind(after)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2);
    for (position, event_id, name, stream_key) in &rows {
        let line: Value = serde_json::from_str(&tail.next_line()).unwrap();
        assert_eq!(line["type"], "entry");
        assert_eq!(line["position"], *position);
        assert_eq!(line["event_id"], event_id.as_str());
        assert_eq!(line["name"], name.as_str());
        assert_eq!(
            line["stream_key"],
            stream_key.as_deref().map_or(Value::Null, Value::from)
        );
    }
    assert_eq!(rows[0].1, "0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d");

    // Three entries leave the pending set (a relay deletes what it published).
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} ORDER BY id LIMIT 3)"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let line: Value = serde_json::from_str(&tail.next_line()).unwrap();
    assert_eq!(
        line,
        serde_json::json!({ "type": "done", "count": 3, "pending": 1 })
    );
    drop(tail);
    pg_drop(&pool, &t).await;
}

#[tokio::test]
async fn tail_prints_lines_for_people_sqlite() {
    let (url, file) = sqlite_url();
    outbox(&url, "outbox", &["migrate"]).ok();
    let tail = Spawned::start(command(&url, Some("outbox"), &["tail"]));
    assert_eq!(
        tail.next_line(),
        "following \"outbox\" after position 0 (0 pending); Ctrl-C to stop"
    );
    let pool = SqlitePool::connect(&url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(readme_sql("SQLite", "outbox").clone()))
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        tail.next_line(),
        "new   #1  billing.invoice_paid  0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d  stream=invoice-7"
    );
    assert_eq!(
        tail.next_line(),
        "new   #2  billing.invoice_voided  0192d3c5-0b1e-7c2d-8e3f-4a5b6c7d8e9f"
    );
    sqlx::query("UPDATE outbox SET status = 'published' WHERE id = 1")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        tail.next_line(),
        "done  1 left the pending set (published or dead); 1 pending"
    );
    sqlx::query("UPDATE outbox SET status = 'dead' WHERE id = 2")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        tail.next_line(),
        "done  1 left the pending set (published or dead); 0 pending"
    );
    sqlx::query("UPDATE outbox SET status = 'pending' WHERE id = 2")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        tail.next_line(),
        "back  1 returned to the pending set (requeued); 1 pending"
    );
    let (code, _, stderr) = tail.terminate();
    assert_eq!(code, 0, "{stderr}");
    pool.close().await;
    remove_sqlite(&file);
}

// ---------------------------------------------------------------- relay

/// Declares a topic exchange and a queue bound to it with `#`.
async fn rabbit(exchange: &str, queue: &str) -> (Connection, lapin::Channel) {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ at AMQP_URL");
    let channel = connection.create_channel().await.unwrap();
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    (connection, channel)
}

/// A message as consumed: message id, type (the event name), body, headers.
#[derive(Debug, PartialEq)]
struct Message {
    event_id: String,
    name: String,
    payload: String,
    tenant: Option<String>,
}

async fn consume(channel: &lapin::Channel, queue: &str, n: usize) -> Vec<Message> {
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "outbox-cli-test".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while received.len() < n {
        let delivery = tokio::time::timeout_at(deadline, consumer.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} messages arrived", received.len()))
            .unwrap()
            .unwrap();
        let p = &delivery.properties;
        let tenant = p.headers().as_ref().and_then(|h| {
            h.inner()
                .iter()
                .find(|(k, _)| k.as_str() == "tenant")
                .map(|(_, v)| match v {
                    AMQPValue::LongString(s) => s.to_string(),
                    other => format!("{other:?}"),
                })
        });
        received.push(Message {
            event_id: p.message_id().as_ref().unwrap().to_string(),
            name: p.kind().as_ref().unwrap().to_string(),
            payload: String::from_utf8(delivery.data.clone()).unwrap(),
            tenant,
        });
    }
    // Cancel now rather than on drop (lapin cancels a dropped consumer in
    // the background), so the next consumer on this channel may reuse the tag
    // and no later message goes to a consumer nobody reads.
    channel
        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await
        .unwrap();
    received
}

/// Rows written by plain SQL (the README's statements and a bulk insert),
/// no Rust types involved, reach RabbitMQ through `outbox relay`, which
/// then stops gracefully on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_delivers_plain_sql_rows_to_rabbitmq_and_stops_on_sigterm_postgres() {
    let pool = pg().await;
    let t = table("relay");
    let exchange = format!("outbox-cli-x-{}", Uuid::new_v4().simple());
    let queue = format!("outbox-cli-q-{}", Uuid::new_v4().simple());
    let (_connection, channel) = rabbit(&exchange, &queue).await;
    outbox(&pg_url(), &t, &["migrate"]).ok();

    sqlx::raw_sql(sqlx::AssertSqlSafe(readme_sql("PostgreSQL", &t).clone()))
        .execute(&pool)
        .await
        .unwrap();
    pg_insert(&pool, &t, "bulk.loaded", 50).await;
    let rows: Vec<(String, String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT event_id::text, name, payload::text FROM {t} ORDER BY id"
    )))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 52);

    let relay = Spawned::start(command(
        &pg_url(),
        Some(&t),
        &[
            "relay",
            "--to",
            &amqp_url(),
            "--exchange",
            &exchange,
            "--batch",
            "20",
        ],
    ));
    let mut received = consume(&channel, &queue, rows.len()).await;
    // One stream of messages in record order.
    let expected: Vec<Message> = rows
        .iter()
        .enumerate()
        .map(|(i, (event_id, name, payload))| Message {
            event_id: event_id.clone(),
            name: name.clone(),
            payload: payload.clone(),
            tenant: (i == 0).then(|| "acme".to_owned()),
        })
        .collect();
    assert_eq!(received, expected);

    // Published entries are deleted; then more arrive while it runs.
    let deadline = Instant::now() + Duration::from_secs(10);
    while pg_count(&pool, &t, "true").await > 0 {
        assert!(Instant::now() < deadline, "published entries not deleted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {t} (event_id, name, payload) VALUES ('0192d3c4-aaaa-7bbb-8ccc-000000000001', 'late.one', '[1, 2]')"
    )))
    .execute(&pool)
    .await
    .unwrap();
    received = consume(&channel, &queue, 1).await;
    assert_eq!(received[0].event_id, "0192d3c4-aaaa-7bbb-8ccc-000000000001");
    assert_eq!(received[0].payload, "[1, 2]");

    let (code, stdout, stderr) = relay.terminate();
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(
        stdout.trim(),
        "relay stopped: published 53, retried 0, dead 0",
        "{stderr}"
    );
    assert!(stderr.contains("relay started"), "{stderr}");
    assert!(stderr.contains("relay stopped"), "{stderr}");
    assert!(
        !stderr.contains("guest:guest"),
        "the broker password was printed: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(pg_count(&pool, &t, "true").await, 0);

    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    channel
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    pg_drop(&pool, &t).await;
}

/// The README's SQLite statements reach a Redis stream through `outbox relay`.
#[tokio::test]
async fn relay_delivers_plain_sql_rows_to_redis_streams_sqlite() {
    let (url, file) = sqlite_url();
    outbox(&url, "outbox", &["migrate"]).ok();
    let pool = SqlitePool::connect(&url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(readme_sql("SQLite", "outbox").clone()))
        .execute(&pool)
        .await
        .unwrap();
    let stream = format!("outbox-cli-test:{}", Uuid::new_v4().simple());

    let relay = Spawned::start(command(
        &url,
        Some("outbox"),
        &["--json", "relay", "--to", &redis_url(), "--stream", &stream],
    ));
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_connection().expect("Redis at REDIS_URL");
    let deadline = Instant::now() + Duration::from_secs(20);
    let entries = loop {
        let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
            .arg(&stream)
            .arg("-")
            .arg("+")
            .query(&mut conn)
            .unwrap();
        if entries.len() >= 2 {
            break entries;
        }
        assert!(
            Instant::now() < deadline,
            "{} of 2 stream entries",
            entries.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let fields: Vec<std::collections::HashMap<String, String>> = entries
        .into_iter()
        .map(|(_, flat)| {
            flat.chunks(2)
                .map(|kv| (kv[0].clone(), kv[1].clone()))
                .collect()
        })
        .collect();
    assert_eq!(
        fields[0]["event_id"],
        "0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d"
    );
    assert_eq!(fields[0]["name"], "billing.invoice_paid");
    assert_eq!(
        fields[0]["payload"],
        r#"{"invoice_id": 7, "amount_cents": 1250}"#
    );
    assert_eq!(fields[0]["headers"], r#"{"tenant":"acme"}"#);
    assert_eq!(fields[0]["stream_key"], "invoice-7");
    assert_eq!(
        fields[1]["event_id"],
        "0192d3c5-0b1e-7c2d-8e3f-4a5b6c7d8e9f"
    );
    assert_eq!(fields[1]["name"], "billing.invoice_voided");
    assert_eq!(fields[1]["payload"], r#"{"invoice_id": 8}"#);

    let (code, stdout, stderr) = relay.terminate();
    assert_eq!(code, 0, "{stderr}");
    let totals: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(totals["published"], 2);
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    let _: i64 = redis::cmd("DEL").arg(&stream).query(&mut conn).unwrap();
    pool.close().await;
    remove_sqlite(&file);
}

/// The README's SQLite statements reach a Kafka topic through `outbox relay
/// --to kafka://` (the local broker, `KAFKA_BROKERS`, default tansu on
/// 127.0.0.1:19092): payload byte for byte, key = stream key, headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_delivers_plain_sql_rows_to_kafka_sqlite() {
    use rdkafka::ClientConfig;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Headers, Message};

    let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".into());
    let topic = format!("outbox-cli-test-{}", Uuid::new_v4().simple());
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin
        .create_topics(
            &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
            &options,
        )
        .await
        .unwrap_or_else(|err| {
            panic!("no Kafka broker at {brokers} (start tansu, see README): {err}")
        })
    {
        result.unwrap();
    }
    let (url, file) = sqlite_url();
    outbox(&url, "outbox", &["migrate"]).ok();
    let pool = SqlitePool::connect(&url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(readme_sql("SQLite", "outbox").clone()))
        .execute(&pool)
        .await
        .unwrap();

    let to = format!("kafka://{brokers}");
    let relay = Spawned::start(command(
        &url,
        Some("outbox"),
        &["--json", "relay", "--to", &to, "--topic", &topic],
    ));
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("{topic}-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("2 messages within 30 s")
            .unwrap();
        let headers: std::collections::HashMap<String, String> = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        got.push((
            String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
            String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned(),
            headers,
        ));
    }
    let (key, payload, headers) = &got[0];
    assert_eq!(key, "invoice-7");
    assert_eq!(payload, r#"{"invoice_id": 7, "amount_cents": 1250}"#);
    assert_eq!(
        headers["outbox-event-id"],
        "0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d"
    );
    assert_eq!(headers["outbox-event-name"], "billing.invoice_paid");
    assert_eq!(headers["outbox-stream-key"], "invoice-7");
    assert_eq!(headers["tenant"], "acme");
    assert_eq!(got[1].1, r#"{"invoice_id": 8}"#);
    assert_eq!(got[1].2["outbox-event-name"], "billing.invoice_voided");

    let (code, stdout, stderr) = relay.terminate();
    assert_eq!(code, 0, "{stderr}");
    let totals: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(totals["published"], 2);
    // The topic is left on the broker (its name is the test's own): deleting
    // it while librdkafka clients are alive crashed the test process
    // (SIGSEGV in librdkafka's metadata cache, rd_kafka_metadata_cache_find,
    // against tansu).
    drop((consumer, admin));
    pool.close().await;
    remove_sqlite(&file);
}

/// One request a webhook received: lower-cased header names, and the body.
type Request = (std::collections::HashMap<String, String>, String);

/// A minimal HTTP/1.1 server on 127.0.0.1 that answers 200 to every POST
/// and sends each request on the channel.
fn webhook_server() -> (String, mpsc::Receiver<Request>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/hooks/s3cret-path",
        listener.local_addr().unwrap()
    );
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let tx = tx.clone();
            std::thread::spawn(move || serve(stream, &tx));
        }
    });
    (url, rx)
}

fn serve(stream: std::net::TcpStream, tx: &mpsc::Sender<Request>) {
    use std::io::{Read, Write};
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = std::collections::HashMap::new();
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).unwrap();
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap();
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
        let length: usize = headers
            .get("content-length")
            .map_or(0, |n| n.parse().unwrap());
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        // Recorded before the answer, so requests arrive in the order sent
        // even when the client opens a second connection.
        if tx
            .send((headers, String::from_utf8(body).unwrap()))
            .is_err()
        {
            return;
        }
        writer
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .unwrap();
    }
}

/// The README's SQLite statements reach a webhook through `outbox relay`,
/// with a static header; the URL's secret path is never printed.
#[tokio::test]
async fn relay_posts_plain_sql_rows_to_a_webhook_sqlite() {
    let (url, file) = sqlite_url();
    outbox(&url, "outbox", &["migrate"]).ok();
    let pool = SqlitePool::connect(&url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(readme_sql("SQLite", "outbox").clone()))
        .execute(&pool)
        .await
        .unwrap();
    let (hook, requests) = webhook_server();

    let args = [
        "relay",
        "--to",
        &hook,
        "--header",
        "Authorization: Bearer t0ken",
    ];
    let relay = Spawned::start(command(&url, Some("outbox"), &args));
    let receive = || {
        requests
            .recv_timeout(Duration::from_secs(20))
            .expect("a request")
    };
    let (headers, body) = receive();
    assert_eq!(body, r#"{"invoice_id": 7, "amount_cents": 1250}"#);
    assert_eq!(
        headers["idempotency-key"],
        "0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d"
    );
    assert_eq!(headers["x-event-name"], "billing.invoice_paid");
    assert_eq!(headers["authorization"], "Bearer t0ken");
    assert_eq!(headers["x-outbox-headers"], r#"{"tenant":"acme"}"#);
    let (headers, body) = receive();
    assert_eq!(body, r#"{"invoice_id": 8}"#);
    assert_eq!(
        headers["x-event-id"],
        "0192d3c5-0b1e-7c2d-8e3f-4a5b6c7d8e9f"
    );

    let (code, stdout, stderr) = relay.terminate();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout.trim(),
        "relay stopped: published 2, retried 0, dead 0"
    );
    assert!(stderr.contains("/***"), "{stderr}");
    for secret in ["s3cret-path", "t0ken"] {
        assert!(!stderr.contains(secret), "{secret} printed: {stderr}");
    }
    pool.close().await;
    remove_sqlite(&file);
}

// ---------------------------------------------------------------- SQLite, MariaDB

#[tokio::test]
async fn sqlite_migrate_contract_status_and_dead_letters() {
    let (url, file) = sqlite_url();
    // Commands other than migrate never create the file.
    outbox(&url, "outbox", &["status"]).fails(1, "created by \"outbox migrate\"");
    assert!(!file.exists());
    let run = outbox(&url, "outbox", &["migrate"]).ok();
    let version = schema_version("sqlite");
    assert!(version >= 3, "{version}");
    assert_eq!(
        run.stdout.trim(),
        format!("table \"outbox\" created (schema version {version}) in {url}")
    );
    let pool = SqlitePool::connect(&url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(readme_sql("SQLite", "outbox").clone()))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE outbox SET status = 'dead', attempts = 3, last_error = 'nope' WHERE id = 2",
    )
    .execute(&pool)
    .await
    .unwrap();

    let json = outbox(&url, "outbox", &["--json", "status", "--max-age", "1h"])
        .ok()
        .json();
    assert_eq!(
        (json["pending"].as_u64(), json["dead"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(json["healthy"], true);
    let run = outbox(&url, "outbox", &["dead", "list"]).ok();
    assert!(
        run.stdout
            .contains("0192d3c5-0b1e-7c2d-8e3f-4a5b6c7d8e9f  billing.invoice_voided"),
        "{run:?}"
    );
    let run = outbox(
        &url,
        "outbox",
        &["dead", "show", "0192d3c5-0b1e-7c2d-8e3f-4a5b6c7d8e9f"],
    )
    .ok();
    assert!(run.stdout.contains("reason      nope\n"), "{run:?}");
    outbox(&url, "outbox", &["dead", "requeue", "--all"]).fails(1, "pass --yes");
    outbox(&url, "outbox", &["dead", "requeue", "--all", "--yes"]).ok();
    let pending: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE status = 'pending' AND attempts = 0")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(pending, 2);
    pool.close().await;
    remove_sqlite(&file);
}

#[tokio::test]
async fn mariadb_migrate_contract_and_status() {
    let pool = MySqlPool::connect(&mysql_url())
        .await
        .expect("MariaDB at MYSQL_URL");
    let t = table("mysql");
    // The mariadb:// scheme works as well as mysql://.
    let mariadb = mysql_url().replacen("mysql://", "mariadb://", 1);
    let run = outbox(&mariadb, &t, &["migrate"]).ok();
    let version = schema_version("mysql");
    assert!(version >= 3, "{version}");
    assert!(
        run.stdout
            .starts_with(&format!("table \"{t}\" created (schema version {version})")),
        "{run:?}"
    );
    outbox(&mysql_url(), &t, &["migrate"]).ok();
    sqlx::raw_sql(sqlx::AssertSqlSafe(
        readme_sql("MySQL / MariaDB", &t).clone(),
    ))
    .execute(&pool)
    .await
    .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "UPDATE {t} SET created_at = UTC_TIMESTAMP(6) - INTERVAL 2 HOUR WHERE name = 'billing.invoice_paid'"
    )))
    .execute(&pool)
    .await
    .unwrap();

    let json = outbox(&mysql_url(), &t, &["--json", "status"]).ok().json();
    assert_eq!(json["pending"], 2);
    assert_eq!(json["dead"], 0);
    let oldest = json["oldest_pending_age_seconds"].as_f64().unwrap();
    assert!((7_190.0..7_300.0).contains(&oldest), "{oldest}");
    let run = outbox(&mysql_url(), &t, &["status"]).ok();
    assert!(
        run.stdout.contains("pending    2 (0 retrying), oldest 2h"),
        "{run:?}"
    );
    assert!(run.stdout.contains("billing.invoice_voided"), "{run:?}");
    outbox(&mysql_url(), &t, &["status", "--max-age", "3h"]).ok();
    outbox(&mysql_url(), &t, &["status", "--max-age", "1h"]).fails(2, "unhealthy");
    let run = outbox(&mysql_url(), &t, &["dead", "list"]).ok();
    assert_eq!(run.stdout.trim(), format!("no dead letters in \"{t}\""));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP TABLE IF EXISTS {t}, {t}_schema, {t}_blocked"
    )))
    .execute(&pool)
    .await
    .unwrap();
}

// ---------------------------------------------------------------- bad input

#[tokio::test]
#[allow(clippy::too_many_lines)] // Reason: one table of cases, each one line.
async fn bad_input_is_one_error_line_and_a_non_zero_exit() {
    let url = pg_url();
    let missing = table("missing");
    let some_id = "0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d";
    let cases: Vec<(String, String, Vec<&str>, &str)> = vec![
        // A wrong URL scheme, and no URL at all.
        (
            "http://127.0.0.1/test".into(),
            "outbox".into(),
            vec!["status"],
            "unsupported database URL scheme \"http:\"",
        ),
        (
            "127.0.0.1:5432".into(),
            "outbox".into(),
            vec!["status"],
            "unsupported database URL scheme",
        ),
        // An unreachable database, with a password that must not be printed.
        (
            "postgres://root:hunter2@127.0.0.1:1/test".into(),
            "outbox".into(),
            vec!["status"],
            "cannot connect to postgres://root:***@127.0.0.1:1/test",
        ),
        (
            "mysql://root:hunter2@127.0.0.1:1/test".into(),
            "outbox".into(),
            vec!["migrate"],
            "cannot connect to",
        ),
        // A table that does not exist.
        (
            url.clone(),
            missing.clone(),
            vec!["status"],
            "does not exist (run \"outbox migrate\")",
        ),
        (
            url.clone(),
            missing.clone(),
            vec!["dead", "list"],
            "does not exist",
        ),
        (
            url.clone(),
            missing.clone(),
            vec!["dead", "show", some_id],
            "does not exist",
        ),
        (
            url.clone(),
            missing.clone(),
            vec!["dead", "requeue", "--all", "--yes"],
            "does not exist",
        ),
        (url.clone(), missing.clone(), vec!["tail"], "does not exist"),
        (
            url.clone(),
            missing.clone(),
            vec!["relay", "--to", "amqp://127.0.0.1:5672/%2f"],
            "does not exist",
        ),
        // Invalid ids.
        (
            url.clone(),
            missing.clone(),
            vec!["dead", "show", "not-a-uuid"],
            "invalid event id \"not-a-uuid\": not a UUID",
        ),
        (
            url.clone(),
            missing.clone(),
            vec!["dead", "requeue", "42"],
            "not a UUID",
        ),
        (
            url.clone(),
            missing.clone(),
            vec!["dead", "purge", "x", "--yes"],
            "not a UUID",
        ),
        // Invalid table names.
        (
            url.clone(),
            "outbox; DROP TABLE users".into(),
            vec!["status"],
            "invalid outbox table name",
        ),
        (
            url.clone(),
            "a.b.c".into(),
            vec!["migrate"],
            "invalid outbox table name",
        ),
        (
            "sqlite::memory:".into(),
            "app.outbox".into(),
            vec!["migrate"],
            "takes no schema-qualified table names",
        ),
        // Bad arguments.
        (
            url.clone(),
            "outbox".into(),
            vec!["status", "--max-age", "5x"],
            "unknown unit",
        ),
        (
            url.clone(),
            "outbox".into(),
            vec!["status", "--max-age", "30"],
            "needs a unit",
        ),
        (
            url.clone(),
            "outbox".into(),
            vec!["dead", "purge"],
            "required",
        ),
        (
            url.clone(),
            "outbox".into(),
            vec!["dead", "requeue", "--all", "--name", "x"],
            "cannot be used with",
        ),
        (
            url.clone(),
            "outbox".into(),
            vec!["nonsense"],
            "unrecognized subcommand",
        ),
        (
            url.clone(),
            "outbox".into(),
            vec!["relay", "--to", "ftp://x"],
            "unsupported --to URL",
        ),
        (
            url.clone(),
            "outbox".into(),
            vec!["relay", "--to", "nats://127.0.0.1:4222", "--exchange", "x"],
            "--exchange applies only to amqp://",
        ),
        (
            url.clone(),
            "outbox".into(),
            vec!["relay", "--to", "nats://127.0.0.1:4222", "--topic", "t"],
            "--topic applies only to kafka://",
        ),
    ];
    for (db, table, args, needle) in cases {
        let run = outbox(&db, &table, &args);
        assert_eq!(run.code, 1, "{db} {table} {args:?}: {run:?}");
        assert!(run.stdout.is_empty(), "{args:?}: {run:?}");
        one_error_line(&run.stderr, needle);
        assert!(!run.stderr.contains("hunter2"), "{run:?}");
    }
    // No database at all.
    let output = Command::new(BIN)
        .arg("status")
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    one_error_line(&String::from_utf8_lossy(&output.stderr), "no database");
    // Help is not an error.
    let help = Command::new(BIN).arg("--help").output().unwrap();
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    for command in ["migrate", "status", "dead", "tail", "relay"] {
        assert!(help.contains(command), "{help}");
    }
}

// ---------------------------------------------------------------- blocked

/// A relay to a RabbitMQ exchange that does not exist blocks its publisher
/// (no attempts spent); `outbox status` shows it, one line, and exits 2
/// while the row is fresh. A row no relay has confirmed for over a minute
/// is marked stale and no longer fails the check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_a_blocked_publisher_and_fails_while_it_is_fresh_postgres() {
    let pool = pg().await;
    let t = table("blocked");
    let missing = format!("outbox-cli-missing-{}", Uuid::new_v4().simple());
    outbox(&pg_url(), &t, &["migrate"]).ok();
    pg_insert(&pool, &t, "shop.order_placed", 3).await;
    outbox(&pg_url(), &t, &["status"]).ok();

    let relay = Spawned::start(command(
        &pg_url(),
        Some(&t),
        &["relay", "--to", &amqp_url(), "--exchange", &missing],
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    let run = loop {
        let run = outbox(&pg_url(), &t, &["status"]);
        if run.code != 0 {
            break run;
        }
        assert!(
            Instant::now() < deadline,
            "no blocked publisher within 20 s: {run:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let run = run.fails(2, "unhealthy: publisher \"*\"");
    assert!(run.stderr.contains("is blocked"), "{run:?}");
    assert!(run.stderr.contains(&missing), "{run:?}");
    let line = run
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("blocked"))
        .unwrap_or_else(|| panic!("no blocked line: {run:?}"));
    assert!(line.contains("*: blocked since "), "{line}");
    assert!(line.contains(" ago): "), "{line}");
    assert!(line.contains(&missing), "{line}");
    assert!(line.contains("404"), "{line}");
    assert!(!line.contains("stale"), "{line}");
    assert_eq!(
        run.stdout
            .lines()
            .filter(|l| l.trim_start().starts_with("blocked"))
            .count(),
        1,
        "{run:?}"
    );

    let run = outbox(&pg_url(), &t, &["--json", "status"]);
    assert_eq!(run.code, 2, "{run:?}");
    let json = run.json();
    assert_eq!(json["healthy"], false);
    let blocked = json["blocked"].as_array().unwrap();
    assert_eq!(blocked.len(), 1, "{json}");
    assert_eq!(blocked[0]["publisher"], "*");
    assert_eq!(blocked[0]["stale"], false);
    assert!(
        blocked[0]["reason"].as_str().unwrap().contains(&missing),
        "{json}"
    );
    // No attempt was spent on the entries.
    assert_eq!(
        pg_count(&pool, &t, "attempts = 0 AND status = 'pending'").await,
        3
    );

    let (code, _, stderr) = relay.terminate();
    assert_eq!(code, 0, "{stderr}");
    // A relay that stopped leaves its row behind; once nobody has
    // confirmed it for a minute it is stale: shown, but healthy.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {t}_blocked SET seen_at = now() - interval '5 minutes'"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let run = outbox(&pg_url(), &t, &["status"]).ok();
    let line = run
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("blocked"))
        .unwrap_or_else(|| panic!("no blocked line: {run:?}"));
    assert!(
        line.contains("[stale: no relay has confirmed it for 5m"),
        "{line}"
    );
    let json = outbox(&pg_url(), &t, &["--json", "status"]).ok().json();
    assert_eq!(json["healthy"], true);
    assert_eq!(json["blocked"][0]["stale"], true);
    pg_drop(&pool, &t).await;
}
