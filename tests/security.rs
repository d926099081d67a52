//! Security: table and schema names cannot inject SQL, credentials never
//! reach logs, errors or `Debug` output, webhook signatures verify (with a
//! constant-time comparison) and refuse, and a relay runs end to end under
//! a PostgreSQL role that may only SELECT, UPDATE and DELETE the outbox
//! table. The grants are documented in GUARANTEES.md.

mod fault_support;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use fault_support::{
    Tap, Tick, World, amqp_url, assert_delivered, consume, database_url, pool, stop_signal, tally,
    tap_publishers, tick, unique,
};
use hmac::{Hmac, Mac};
use outbox::publisher::amqp::AmqpPublisher;
use outbox::publisher::http::{WebhookPublisher, verify_signature, verify_timestamped_signature};
use outbox::{Error, Metadata, Outbox, Publishers};
use sha2::Sha256;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use uuid::Uuid;

// ---------------------------------------------------------- table names

/// Injection attempts through `.table(..)` and `outbox::migrate(pool,
/// name)` are `Error::InvalidTableName` and create nothing: no table,
/// index or schema whose name carries the attempt's marker appears in the
/// catalog. A valid name with the same marker does appear (the check can
/// see a creation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injection_through_table_names_is_refused_and_creates_nothing() {
    let _serial = serial().await;
    let admin = pool("outbox-security-admin", 2).await;
    let m = unique("inj");
    let attempts = [
        format!("{m}; CREATE TABLE {m}_pwned (x int)"),
        format!("{m}\"; CREATE TABLE {m}_pwned (x int); --"),
        format!("{m}'; DROP TABLE users; --"),
        format!("{m}' OR '1'='1"),
        format!("public.{m}; CREATE SCHEMA {m}_pwned"),
        format!("{m}_pwned.{m}.x"),
        format!("\"{m}\""),
        format!("{m}--"),
        format!("{m}/*"),
        format!("{m} "),
        format!(" {m}"),
        format!("{m}\0"),
        format!("{m}\n"),
        format!("{m}ｓ"),
        format!("{m}\u{202e}"),
        format!("{m}`"),
        format!("{m}$1"),
        format!(".{m}"),
        format!("{m}."),
        format!("{m}{}", "x".repeat(48)),
        format!("1{m}"),
    ];
    let exists = |admin: PgPool, m: String| async move {
        sqlx::query_scalar::<_, i64>(
            "SELECT (SELECT COUNT(*) FROM pg_class WHERE relname LIKE '%' || $1 || '%') \
                  + (SELECT COUNT(*) FROM pg_namespace WHERE nspname LIKE '%' || $1 || '%')",
        )
        .bind(m)
        .fetch_one(&admin)
        .await
        .unwrap()
    };
    for name in &attempts {
        let err = Outbox::builder(admin.clone())
            .table(name.clone())
            .build()
            .await
            .expect_err(name);
        match &err {
            Error::InvalidTableName {
                name: given,
                reason,
            } => {
                assert_eq!(given, name);
                assert!(!reason.is_empty());
            }
            other => panic!("{name:?}: {other}"),
        }
        assert!(err.to_string().starts_with("invalid outbox table name"));
        let err = outbox::migrate(&admin, name).await.expect_err(name);
        assert!(
            matches!(err, Error::InvalidTableName { .. }),
            "{name:?}: {err}"
        );
    }
    assert_eq!(
        exists(admin.clone(), m.clone()).await,
        0,
        "an injection attempt created something"
    );
    eprintln!(
        "table names: {} injection attempts refused, nothing created",
        attempts.len()
    );

    // Control: a valid name with the marker is created and seen.
    outbox::migrate(&admin, &format!("{m}_ok")).await.unwrap();
    assert!(exists(admin.clone(), m.clone()).await > 0);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP TABLE \"{m}_ok\", \"{m}_ok_schema\""
    )))
    .execute(&admin)
    .await
    .unwrap();
    admin.close().await;
}

// ----------------------------------------------------------- credentials

/// Everything `tracing` emits in this test binary, at every level.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;

    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

/// Whether the capture records: only while the credentials test runs.
static CAPTURING: AtomicBool = AtomicBool::new(false);

/// Installs the binary's one subscriber: every event of every crate at
/// every level, written to the capture while [`CAPTURING`] is on.
fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture = Capture::default();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(capture.clone())
            .with_ansi(false)
            .with_filter(filter_fn(|_| CAPTURING.load(Ordering::SeqCst)));
        tracing_subscriber::registry()
            .with(layer)
            .try_init()
            .expect("the only subscriber of this binary");
        capture
    })
}

/// One database test of this binary at a time, so the capture holds only
/// the credentials test's events.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Turns the capture on; off again when dropped (even on a panic).
struct Capturing;

impl Capturing {
    fn on() -> Self {
        CAPTURING.store(true, Ordering::SeqCst);
        Self
    }
}

impl Drop for Capturing {
    fn drop(&mut self) {
        CAPTURING.store(false, Ordering::SeqCst);
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn pg_options() -> PgConnectOptions {
    database_url().parse().expect("DATABASE_URL parses")
}

/// A URL like `DATABASE_URL` with a user, password, port and database of our choosing.
fn pg_url(user: &str, password: &str, port: u16, database: &str) -> String {
    format!(
        "postgres://{user}:{password}@{}:{port}/{database}",
        pg_options().get_host()
    )
}

/// Credentials in database and broker URLs never appear in what the
/// library logs (every `tracing` event at every level, of every crate,
/// captured), in its errors (`Display` and `Debug`), or in the `Debug`
/// output of its handles: while an outbox is built and relayed on a pool
/// logged in with a password, while the database is unreachable or refuses
/// the login, and while RabbitMQ refuses a wrong password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_reach_logs_errors_or_debug_output() {
    let _serial = serial().await;
    let capture = capture();
    // The test's own CREATE ROLE .. PASSWORD must not be logged by sqlx.
    let admin = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(pg_options().disable_statement_logging())
        .await
        .unwrap();
    let role = unique("outbox_sec");
    let db_secret = format!("Pg-{}", Uuid::new_v4().simple());
    let amqp_secret = format!("Mq-{}", Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {role} LOGIN PASSWORD '{db_secret}'"
    )))
    .execute(&admin)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA {role} AUTHORIZATION {role}"
    )))
    .execute(&admin)
    .await
    .unwrap();
    let port = pg_options().get_port();
    let database = pg_options().get_database().unwrap_or("test").to_owned();
    let mut shown = Vec::<String>::new();
    let capturing = Capturing::on();

    // 1. An outbox built, recorded into and relayed on a pool logged in
    //    with a password, publishing to RabbitMQ with a wrong password.
    let url = pg_url(&role, &db_secret, port, &database);
    let pool = PgPoolOptions::new()
        .max_connections(3)
        .connect(&url)
        .await
        .unwrap();
    let outbox = Outbox::builder(pool.clone())
        .table(format!("{role}.outbox"))
        .build()
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    for n in 0..5 {
        outbox
            .record_with(&mut *tx, &tick(n), Metadata::new().header("h", "v"))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let amqp = amqp_url();
    let wrong = match amqp
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
    {
        Some((_, host)) => format!("amqp://guest:{amqp_secret}@{host}"),
        None => format!("amqp://guest:{amqp_secret}@127.0.0.1:5672/%2f"),
    };
    let rabbit_builder = AmqpPublisher::builder(wrong.clone()).timeout(Duration::from_secs(2));
    shown.push(format!("{rabbit_builder:?}"));
    let rabbit = rabbit_builder.build().unwrap();
    shown.push(format!("{rabbit:?}"));
    let refused = rabbit.connect().await.expect_err("a wrong password");
    shown.push(format!("{refused} {refused:?}"));
    let publishers = Publishers::builder()
        .publisher::<Tick, _>(rabbit.clone())
        .fallback(rabbit)
        .build()
        .unwrap();
    shown.push(format!("{publishers:?} {outbox:?}"));
    let report = outbox.run(&publishers, 10).await.unwrap();
    assert_eq!(
        report.unavailable, 5,
        "RabbitMQ refused the login: {report:?}"
    );
    let relay = outbox
        .relay(publishers)
        .poll_interval(Duration::from_millis(50))
        .max_backoff(Duration::from_millis(200));
    shown.push(format!("{relay:?}"));
    let report = relay
        .run(tokio::time::sleep(Duration::from_millis(1_500)))
        .await;
    assert!(report.unavailable > 0, "{report:?}");
    pool.close().await;

    // 2. The database unreachable (nothing listens on port 1), refusing an
    //    unknown database, refusing an unknown role.
    for (what, url) in [
        ("unreachable", pg_url(&role, &db_secret, 1, &database)),
        (
            "unknown database",
            pg_url(&role, &db_secret, port, &unique("nodb")),
        ),
        (
            "unknown role",
            pg_url(&unique("norole"), &db_secret, port, &database),
        ),
    ] {
        let pool = PgPoolOptions::new()
            .acquire_timeout(Duration::from_secs(1))
            .connect_lazy(&url)
            .unwrap();
        let err = Outbox::builder(pool.clone())
            .table("outbox")
            .build()
            .await
            .expect_err(what);
        assert!(matches!(err, Error::Database(_)), "{what}: {err}");
        shown.push(format!("{what}: {err} {err:?}"));
        let outbox = Outbox::builder(pool.clone())
            .table("outbox")
            .migrate(false)
            .build()
            .await
            .unwrap();
        let err = outbox
            .run(&Publishers::builder().build().unwrap(), 10)
            .await
            .expect_err(what);
        shown.push(format!("{what}: {err} {err:?}"));
        let report = outbox
            .relay(Publishers::builder().build().unwrap())
            .poll_interval(Duration::from_millis(50))
            .max_backoff(Duration::from_millis(200))
            .run(tokio::time::sleep(Duration::from_millis(800)))
            .await;
        assert_eq!(report.claimed, 0);
        shown.push(format!("{outbox:?}"));
    }

    drop(capturing);

    // Cleanup, then the verdict.
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {role} CASCADE")))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP ROLE {role}")))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;

    let logs = capture.text();
    let shown = shown.join("\n");
    for secret in [&db_secret, &amqp_secret] {
        let leaks: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains(secret.as_str()))
            .collect();
        assert!(
            leaks.is_empty(),
            "a password was logged, {} times, first:\n{}",
            leaks.len(),
            leaks
                .iter()
                .take(3)
                .map(|l| format!("{l:.600}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert!(
            !shown.contains(secret.as_str()),
            "a password was shown:\n{shown}"
        );
    }
    // The capture did see the failures it was meant to check.
    for expected in [
        "publisher blocked",
        "outbox run failed",
        "ACCESS_REFUSED",
        "does not exist",
    ] {
        assert!(
            logs.contains(expected) || shown.contains(expected),
            "{expected:?} was neither logged nor shown"
        );
    }
    eprintln!(
        "credentials: {} bytes of logs at TRACE and {} bytes of errors and Debug output \
         checked; neither password appears",
        logs.len(),
        shown.len()
    );
}

/// Passwords with any printable ASCII character (raw, as users paste
/// them, or percent-encoded) between two random halves, in broker and
/// webhook URLs: neither half ever shows in `Debug` output or in a
/// configuration error, not even in part.
#[test]
fn url_passwords_never_show_even_in_part() {
    let mut leaks = Vec::new();
    let specials = (b' '..=b'~').filter(|c| !c.is_ascii_alphanumeric());
    for special in specials.map(char::from) {
        let (a, b) = (
            format!("A{}", Uuid::new_v4().simple()),
            format!("B{}", Uuid::new_v4().simple()),
        );
        let password = format!("{a}{special}{b}");
        let encoded = format!("{a}%{:02X}{b}", u32::from(special));
        for (form, pw) in [("raw", &password), ("percent-encoded", &encoded)] {
            let url = format!("amqp://user:{pw}@127.0.0.1:5672/%2f");
            let builder = AmqpPublisher::builder(url);
            let mut shown = vec![format!("{builder:?}")];
            shown.push(match builder.build() {
                Ok(publisher) => format!("{publisher:?}"),
                Err(err) => format!("{err} {err:?}"),
            });
            let hook = format!("https://user:{pw}@hooks.example/{pw}?token={pw}");
            let builder = WebhookPublisher::builder().url(hook);
            shown.push(format!("{builder:?}"));
            shown.push(match builder.build() {
                Ok(publisher) => format!("{publisher:?}"),
                Err(err) => format!("{err} {err:?}"),
            });
            let shown = shown.join(" ");
            if shown.contains(&a) || shown.contains(&b) {
                leaks.push(format!("{special:?} ({form}): {shown}"));
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "part of a URL password shows in Debug output or errors for {} of 64 passwords:\n{}",
        leaks.len(),
        leaks.join("\n")
    );
}

// -------------------------------------------------------------- webhooks

fn sign(secret: &[u8], message: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(message);
    let hex = mac
        .finalize()
        .into_bytes()
        .iter()
        .fold(String::new(), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        });
    format!("sha256={hex}")
}

/// `verify_signature` accepts the HMAC-SHA256 of the body under the secret
/// (computed here independently with the `hmac` crate) and refuses any
/// change to the body, the secret or the signature. The comparison is
/// `Mac::verify_slice`, which is constant-time (see GUARANTEES.md).
#[test]
fn webhook_signatures_verify_and_refuse() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let mut runner = TestRunner::new(Config {
        cases: 1_000,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        proptest::collection::vec(any::<u8>(), 1..64),
        proptest::collection::vec(any::<u8>(), 0..512),
        any::<prop::sample::Index>(),
        1..=255_u8,
    );
    runner
        .run(&strategy, |(secret, body, at, flip)| {
            let signature = sign(&secret, &body);
            prop_assert!(verify_signature(&secret, &body, &signature));
            let padded = format!(" {signature} ");
            prop_assert!(verify_signature(&secret, &body, &padded));
            if !body.is_empty() {
                let mut tampered = body.clone();
                tampered[at.index(body.len())] ^= flip;
                prop_assert!(!verify_signature(&secret, &tampered, &signature));
            }
            let mut other = secret.clone();
            other[at.index(secret.len())] ^= flip;
            prop_assert!(!verify_signature(&other, &body, &signature));
            let hex = &signature["sha256=".len()..];
            let i = at.index(hex.len());
            let swapped = if &hex[i..=i] == "0" { "1" } else { "0" };
            let bad = format!("sha256={}{swapped}{}", &hex[..i], &hex[i + 1..]);
            prop_assert!(!verify_signature(&secret, &body, &bad));
            prop_assert!(!verify_signature(&secret, &body, hex), "no prefix");
            prop_assert!(!verify_signature(
                &secret,
                &body,
                &signature[..signature.len() - 2]
            ));
            let longer = format!("{signature}00");
            prop_assert!(!verify_signature(&secret, &body, &longer));
            prop_assert!(!verify_signature(&secret, &body, "sha256="));
            prop_assert!(!verify_signature(&secret, &body, ""));
            Ok(())
        })
        .unwrap();

    // The timestamped form signs `<timestamp>.<body>` and refuses old ones.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let minute = Duration::from_mins(1);
    let signature = sign(b"k", format!("{now}.{{}}").as_bytes());
    assert!(verify_timestamped_signature(
        "k", &now, b"{}", &signature, minute
    ));
    assert!(!verify_signature("k", b"{}", &signature));
    let old = "1000000000";
    let signature = sign(b"k", format!("{old}.{{}}").as_bytes());
    assert!(!verify_timestamped_signature(
        "k", old, b"{}", &signature, minute
    ));
}

// ------------------------------------------------------ least privilege

/// A relay whose PostgreSQL role has only SELECT, UPDATE and DELETE on the
/// outbox table (built with `.migrate(false)`) relays 10,000 events written
/// by a role with only INSERT on it (and on its business table) to
/// RabbitMQ, end to end; LISTEN wakes it, per-stream order (an advisory
/// lock) works, dead letters can be listed, requeued and purged. Neither
/// role can do more: the relay cannot insert or migrate, the writer cannot
/// read or delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_runs_with_select_update_delete_only() {
    const N: i64 = 10_000;
    let _serial = serial().await;
    let world = World::new("least_priv").await;
    let relay_role = unique("outbox_relay");
    let writer_role = unique("outbox_writer");
    let t = &world.table;
    for sql in [
        format!("CREATE ROLE {relay_role} LOGIN PASSWORD 'pw-{relay_role}'"),
        format!("CREATE ROLE {writer_role} LOGIN PASSWORD 'pw-{writer_role}'"),
        // The grants documented in GUARANTEES.md, and nothing else.
        format!("GRANT SELECT, UPDATE, DELETE ON \"{t}\" TO {relay_role}"),
        format!("GRANT INSERT ON \"{t}\" TO {writer_role}"),
        format!("GRANT INSERT ON \"{t}_biz\" TO {writer_role}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .execute(&world.admin)
            .await
            .unwrap();
    }
    let login = |role: &str| {
        pg_options()
            .username(role)
            .password(&format!("pw-{role}"))
            .application_name(role)
    };
    let relay_pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(login(&relay_role))
        .await
        .unwrap();
    let writer_pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(login(&writer_role))
        .await
        .unwrap();

    // Neither role can do more than its part.
    let denied = |r: Result<sqlx::postgres::PgQueryResult, sqlx::Error>| {
        let err = r.expect_err("permission denied").to_string();
        assert!(err.contains("permission denied"), "{err}");
    };
    denied(
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO \"{t}\" (event_id, name, payload) VALUES (gen_random_uuid(), 'x', '{{}}')"
        )))
        .execute(&relay_pool)
        .await,
    );
    denied(
        sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM \"{t}\"")))
            .execute(&writer_pool)
            .await,
    );
    denied(
        sqlx::query(sqlx::AssertSqlSafe(format!("SELECT * FROM \"{t}\"")))
            .execute(&writer_pool)
            .await,
    );
    let err = world
        .builder(relay_pool.clone())
        .migrate(true)
        .build()
        .await
        .expect_err("the relay role cannot migrate");
    assert!(err.to_string().contains("permission denied"), "{err}");

    let relay_outbox = world
        .builder(relay_pool.clone())
        .ordered_streams(true)
        .build()
        .await
        .unwrap();
    let writer_outbox = world.builder(writer_pool.clone()).build().await.unwrap();

    // LISTEN works for the relay role: an idle relay with a 10 s poll
    // interval publishes a commit at once.
    let tap = Tap::new(world.rabbit());
    let (stop, signal) = stop_signal();
    let relay = tokio::spawn(
        relay_outbox
            .relay(tap_publishers(&tap))
            .poll_interval(Duration::from_secs(10))
            .run(signal()),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let committed_at = Instant::now();
    fault_support::record_ticks(&writer_outbox, &writer_pool, t, 0, 1, true)
        .await
        .unwrap();
    while tap.first_ok_after(committed_at).is_none() {
        assert!(
            committed_at.elapsed() < Duration::from_secs(5),
            "LISTEN did not wake the relay"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let woken_after = tap.first_ok_after(committed_at).unwrap() - committed_at;

    // The bulk, written by the writer role, relayed by the relay role.
    let mut k = 1;
    while k < N {
        let n = 500.min(N - k);
        fault_support::record_ticks(&writer_outbox, &writer_pool, t, k, n, true)
            .await
            .unwrap();
        k += n;
    }
    let drained = world.wait_drained(Duration::from_mins(2)).await;
    stop.send(true).unwrap();
    let report = relay.await.unwrap();

    // Dead letters, stats and requeue/purge under the relay role.
    let dead_id = Uuid::now_v7();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO \"{t}\" (event_id, name, payload, status, last_error) \
         VALUES ($1, 'fault.tick', '{{}}', 'dead', 'test')"
    )))
    .bind(dead_id)
    .execute(&world.admin)
    .await
    .unwrap();
    assert_eq!(relay_outbox.dead_letters(10).await.unwrap().len(), 1);
    assert_eq!(relay_outbox.stats().await.unwrap().dead, 1);
    assert!(relay_outbox.requeue(dead_id).await.unwrap());
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE \"{t}\" SET status = 'dead' WHERE event_id = $1"
    )))
    .bind(dead_id)
    .execute(&world.admin)
    .await
    .unwrap();
    assert!(relay_outbox.purge(dead_id).await.unwrap());

    let committed = world.committed().await;
    let want: HashSet<Uuid> = committed.keys().copied().collect();
    let received = consume(
        &world.queue,
        &want,
        Duration::from_secs(2),
        Duration::from_mins(2),
    )
    .await;
    let tally = tally(&committed, &received);
    eprintln!(
        "least privilege: {} events written by a role with INSERT only, relayed by a role with \
         SELECT, UPDATE, DELETE only (ordered streams), woken by LISTEN {woken_after:?} after a \
         commit, drained in {drained:?}; {} messages consumed, {} duplicates, {} lost; {report:?}",
        tally.events,
        tally.received,
        tally.duplicates,
        tally.lost.len()
    );
    assert_delivered(&tally);
    assert_eq!(tally.events, usize::try_from(N).unwrap());
    assert_eq!(tally.duplicates, 0);
    assert!(woken_after < Duration::from_secs(2), "{woken_after:?}");

    relay_pool.close().await;
    writer_pool.close().await;
    for role in [&relay_role, &writer_role] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP OWNED BY {role}")))
            .execute(&world.admin)
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP ROLE {role}")))
            .execute(&world.admin)
            .await
            .unwrap();
    }
    world.drop_all().await;
}
