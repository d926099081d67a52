//! `outbox relay --listen`: /metrics scraped and parsed while events are
//! published, /readyz following the broker and the database, and the
//! systemd unit in deploy/ run the way systemd would run it. The broker is
//! a nats-server of each test's own and the database is reached through a
//! proxy the test controls: the shared services are never stopped.

use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::PgPool;

mod support;

use support::nats::Nats;
use support::proxy::Proxy;
use support::service::{Service, eventually, free_port, get, wait_ready};
use support::{BIN, command, exec, pg, pg_drop, pg_url, table};

const UNIT: &str = include_str!("../../deploy/outbox-relay.service");

/// The samples of a Prometheus text page: `name{labels}` -> value.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample line: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number: {line:?}"));
        samples.insert(series.to_owned(), value);
    }
    samples
}

/// The sample `series` is the count `want`.
fn assert_count(samples: &BTreeMap<String, f64>, series: &str, want: u32) {
    let got = samples.get(series).copied();
    assert!(
        got.is_some_and(|v| (v - f64::from(want)).abs() < 1e-9),
        "{series} = {got:?}, not {want}: {samples:?}"
    );
}

/// The sum of every sample of the metric `name` (all label sets).
fn total(samples: &BTreeMap<String, f64>, name: &str) -> f64 {
    samples
        .iter()
        .filter(|(series, _)| series.as_str() == name || series.starts_with(&format!("{name}{{")))
        .map(|(_, v)| v)
        .sum()
}

async fn scrape(port: u16) -> BTreeMap<String, f64> {
    let answer = get(&format!("http://127.0.0.1:{port}/metrics")).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(answer.content_type.starts_with("text/plain"), "{answer:?}");
    parse_metrics(&answer.body)
}

async fn insert(pool: &PgPool, t: &str, name: &str, n: i32) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {t} (event_id, name, payload) \
         SELECT gen_random_uuid(), $1, json_build_object('n', g)::text::json \
         FROM generate_series(1, $2) g"
    )))
    .bind(name)
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
}

async fn rows(pool: &PgPool, t: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {t}")))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Waits until the published counter reaches `want`, and returns the page.
async fn published(port: u16, want: f64) -> BTreeMap<String, f64> {
    eventually(
        &format!("outbox_published_total reaches {want}"),
        Duration::from_secs(20),
        || async {
            let samples = scrape(port).await;
            (total(&samples, "outbox_published_total") >= want).then_some(samples)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_listen_serves_metrics_whose_counters_move_with_publications_postgres() {
    let pool = pg().await;
    let t = table("metrics");
    exec(&pg_url(), Some(&t), &["migrate"]).ok();
    let nats = Nats::start();
    let prefix = format!("m{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let _js = nats.stream(&prefix).await;
    let port = free_port();

    let mut relay = Service::start(command(
        &pg_url(),
        Some(&t),
        &[
            "relay",
            "--to",
            &nats.url(),
            "--subject-prefix",
            &format!("{prefix}."),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ],
    ));
    wait_ready(
        &mut relay,
        &format!("http://127.0.0.1:{port}/healthz"),
        Duration::from_secs(20),
    )
    .await;

    // Before any event: no published counter yet; the table's gauges are there.
    let before = scrape(port).await;
    assert!(
        !before
            .keys()
            .any(|k| k.starts_with("outbox_published_total")),
        "{before:?}"
    );
    let alive = get(&format!("http://127.0.0.1:{port}/healthz")).await;
    assert_eq!((alive.status, alive.body.as_str()), (200, "ok\n"));
    let pending = format!("outbox_pending{{table=\"{t}\"}}");
    eventually("the pending gauge", Duration::from_secs(10), || async {
        scrape(port).await.contains_key(&pending).then_some(())
    })
    .await;

    insert(&pool, &t, "shop.order_placed", 5).await;
    insert(&pool, &t, "billing.invoice_paid", 3).await;
    let samples = published(port, 8.0).await;
    assert_count(
        &samples,
        "outbox_published_total{event=\"shop.order_placed\"}",
        5,
    );
    assert_count(
        &samples,
        "outbox_published_total{event=\"billing.invoice_paid\"}",
        3,
    );
    assert!((total(&samples, "outbox_published_total") - 8.0).abs() < f64::EPSILON);
    assert!(total(&samples, "outbox_dead_total").abs() < f64::EPSILON);

    // More events: the counter moves on.
    insert(&pool, &t, "shop.order_placed", 4).await;
    let samples = published(port, 12.0).await;
    assert_count(
        &samples,
        "outbox_published_total{event=\"shop.order_placed\"}",
        9,
    );
    // Published entries are deleted (the counter may move before the
    // outcomes commit).
    eventually(
        "published entries deleted",
        Duration::from_secs(10),
        || async { (rows(&pool, &t).await == 0).then_some(()) },
    )
    .await;

    // SIGTERM: the batch in flight is finished and the exit is 0.
    let (code, stdout, stderr) = relay.terminate(Duration::from_secs(20));
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(
        stdout.trim(),
        "relay stopped: published 12, retried 0, dead 0",
        "{stderr}"
    );
    assert!(
        stderr.contains("serving /metrics, /healthz and /readyz"),
        "{stderr}"
    );
    pg_drop(&pool, &t).await;
}

/// `GET /readyz` until it says `ready` (or not); returns the body.
async fn readyz(port: u16, ready: bool) -> String {
    eventually(
        &format!("/readyz ready={ready}"),
        Duration::from_secs(30),
        || async {
            let answer = get(&format!("http://127.0.0.1:{port}/readyz")).await;
            ((answer.status == 200) == ready).then_some(answer.body)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_unready_while_the_broker_or_the_database_is_away_postgres() {
    let pool = pg().await;
    let t = table("readyz");
    exec(&pg_url(), Some(&t), &["migrate"]).ok();
    let mut nats = Nats::start();
    let prefix = format!("r{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let _js = nats.stream(&prefix).await;
    let mut db = Proxy::start("127.0.0.1:5432").await;
    let proxied = pg_url().replacen("127.0.0.1:5432", &format!("127.0.0.1:{}", db.port), 1);
    assert_ne!(
        proxied,
        pg_url(),
        "DATABASE_URL must point at 127.0.0.1:5432"
    );
    let port = free_port();

    let mut relay = Service::start(command(
        &proxied,
        Some(&t),
        &[
            "relay",
            "--to",
            &nats.url(),
            "--subject-prefix",
            &format!("{prefix}."),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--timeout",
            "2s",
        ],
    ));
    wait_ready(
        &mut relay,
        &format!("http://127.0.0.1:{port}/readyz"),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(readyz(port, true).await, "ready\n");

    // The broker goes away; entries arrive: the publisher blocks.
    nats.kill();
    insert(&pool, &t, "shop.order_placed", 3).await;
    let body = readyz(port, false).await;
    assert!(body.starts_with("not ready\n"), "{body}");
    assert!(body.contains("publisher \"*\" blocked since"), "{body}");
    // Liveness is not readiness.
    assert_eq!(
        get(&format!("http://127.0.0.1:{port}/healthz"))
            .await
            .status,
        200
    );

    // It comes back: ready again, and the entries go out.
    nats.restart();
    readyz(port, true).await;
    eventually("the backlog published", Duration::from_secs(30), || async {
        (rows(&pool, &t).await == 0).then_some(())
    })
    .await;

    // The database goes away (the relay's connections are cut).
    db.close().await;
    let body = readyz(port, false).await;
    assert!(body.contains("database: "), "{body}");
    db.open().await;
    assert_eq!(readyz(port, true).await, "ready\n");

    let (code, stdout, stderr) = relay.terminate(Duration::from_secs(20));
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("published 3"), "{stdout}\n{stderr}");
    pg_drop(&pool, &t).await;
}

/// The unit's `Key=value` lines (continuations are not used in it).
fn unit_values(key: &str) -> Vec<String> {
    UNIT.lines()
        .filter_map(|line| line.strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
        .collect()
}

/// `deploy/outbox-relay.service`, run as systemd would run it without
/// systemd: its `ExecStart` with its `Environment=` and an `EnvironmentFile`
/// written like `deploy/relay.env.example`, stopped with its `KillSignal`
/// within its `TimeoutStopSec`. `systemd-analyze verify` checks its syntax.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_systemd_unit_runs_the_relay_from_its_environment_postgres() {
    for (key, want) in [
        ("Type", "exec"),
        ("User", "outbox"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
        ("NoNewPrivileges", "yes"),
    ] {
        assert_eq!(unit_values(key), [want], "{key}= in the unit");
    }
    let exec_start = unit_values("ExecStart");
    let argv: Vec<&str> = exec_start[0].split_whitespace().collect();
    assert_eq!(argv[0], "/usr/local/bin/outbox");
    let stop_within: u64 = unit_values("TimeoutStopSec")[0].parse().unwrap();

    // The site's settings and secrets, as deploy/relay.env.example names them.
    let example = include_str!("../../deploy/relay.env.example");
    for key in ["DATABASE_URL=", "OUTBOX_TO="] {
        assert!(
            example.lines().any(|l| l.starts_with(key)),
            "{key} in relay.env.example"
        );
    }
    let pool = pg().await;
    let t = table("unit");
    exec(&pg_url(), Some(&t), &["migrate"]).ok();
    let nats = Nats::start();
    let prefix = format!("u{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let js = nats.stream(&prefix).await;

    let mut cmd = std::process::Command::new(BIN);
    cmd.args(&argv[1..]).env_clear();
    for assignment in unit_values("Environment") {
        let (key, value) = assignment.split_once('=').unwrap();
        cmd.env(key, value);
    }
    let port = free_port();
    // The EnvironmentFile, then this machine's free port instead of 9464.
    cmd.env("DATABASE_URL", pg_url())
        .env("OUTBOX_TO", nats.url())
        .env("OUTBOX_TABLE", &t)
        .env("OUTBOX_SUBJECT_PREFIX", format!("{prefix}."))
        .env("OUTBOX_LISTEN", format!("127.0.0.1:{port}"))
        .stdin(std::process::Stdio::null());
    let mut relay = Service::start(cmd);
    wait_ready(
        &mut relay,
        &format!("http://127.0.0.1:{port}/readyz"),
        Duration::from_secs(20),
    )
    .await;
    insert(&pool, &t, "shop.order_placed", 2).await;
    published(port, 2.0).await;
    let mut stream = js.get_stream(prefix.clone()).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 2);
    let (code, stdout, stderr) = relay.terminate(Duration::from_secs(stop_within));
    assert_eq!(code, 0, "{stdout}\n{stderr}");

    // The unit file itself, as systemd reads it (the binary path need not exist here).
    let dir = std::env::temp_dir().join(format!("outbox-unit-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let unit = dir.join("outbox-relay.service");
    std::fs::write(&unit, UNIT.replace("/usr/local/bin/outbox", BIN)).unwrap();
    let verify = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian's systemd package) is installed");
    let said = String::from_utf8_lossy(&verify.stderr).into_owned();
    // Without systemd running it may only complain about the user or the environment file.
    let problems: Vec<&str> = said
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !l.contains("/etc/outbox/relay.env") && !l.contains("User"))
        .collect();
    assert!(problems.is_empty(), "systemd-analyze verify: {said}");
    assert!(verify.status.success(), "systemd-analyze verify: {said}");
    std::fs::remove_dir_all(&dir).unwrap();
    pg_drop(&pool, &t).await;
}

/// Every variable of the README's table is the environment variable of the
/// flag it names (as `--help` shows it), and a broker option from the
/// environment does not stop a relay of another broker.
#[test]
fn the_readme_names_each_flags_environment_variable() {
    let readme = include_str!("../../README.md");
    let rows: Vec<(&str, &str)> = readme
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("| `")?;
            let (var, rest) = rest.split_once("` | `")?;
            let flag = rest.split('`').next()?;
            (var.starts_with("OUTBOX_") || var == "DATABASE_URL").then_some((var, flag))
        })
        .collect();
    assert!(rows.len() >= 20, "{rows:?}");
    for (var, flag) in rows {
        let (command, flag) = match flag.split_once(' ') {
            Some((command, flag)) => (Some(command), flag),
            None => (None, flag),
        };
        let mut cmd = std::process::Command::new(BIN);
        cmd.args(command).arg("--help").env_clear();
        let help = String::from_utf8(cmd.output().unwrap().stdout).unwrap();
        // The flag's paragraph in --help: its line and those up to the next option.
        let lines: Vec<&str> = help.lines().collect();
        let at = lines
            .iter()
            .position(|l| {
                // `      --flag <VALUE>  ...` or `  -f, --flag  ...`.
                let l = l.trim_start();
                let l = match l.split_once(", ") {
                    Some((short, long)) if short.len() == 2 => long,
                    _ => l,
                };
                l == flag || l.starts_with(&format!("{flag} "))
            })
            .unwrap_or_else(|| panic!("{flag} not in {command:?} --help:\n{help}"));
        let paragraph: String = lines[at..]
            .iter()
            .enumerate()
            .take_while(|(i, l)| *i == 0 || !l.trim_start().starts_with('-'))
            .map(|(_, l)| *l)
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            paragraph.contains(&format!("[env: {var}")),
            "{flag} of {command:?} is not read from {var}: {paragraph}"
        );
    }

    // OUTBOX_EXCHANGE (RabbitMQ) set for a NATS relay: it goes on (and
    // stops at the missing table), as it does with the switches set to
    // `true`/`false`; on the command line it is an error.
    let t = table("envopt");
    let out = command(
        &pg_url(),
        Some(&t),
        &["relay", "--to", "nats://127.0.0.1:1"],
    )
    .env("OUTBOX_EXCHANGE", "events")
    .env("OUTBOX_ORDERED_STREAMS", "true")
    .env("OUTBOX_NO_LISTEN", "false")
    .output()
    .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!stderr.contains("--exchange"), "{stderr}");
    assert!(stderr.contains(&t), "{stderr}");
    exec(
        &pg_url(),
        Some(&t),
        &[
            "relay",
            "--to",
            "nats://127.0.0.1:1",
            "--exchange",
            "events",
        ],
    )
    .fails(1, "--exchange applies only to amqp://");
}

/// `deploy/Containerfile` as the README describes it (the image itself is
/// built by .ci/run where a container engine answers): two stages, the
/// release binary of this crate, run as user 10001 with the endpoints on.
#[test]
fn the_containerfile_is_two_stages_and_runs_the_relay_as_non_root() {
    let file = include_str!("../../deploy/Containerfile");
    let lines: Vec<&str> = file
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .collect();
    let stages: Vec<usize> = (0..lines.len())
        .filter(|i| lines[*i].starts_with("FROM "))
        .collect();
    assert_eq!(stages.len(), 2, "{file}");
    assert!(lines[stages[0]].ends_with(" AS build"), "{file}");
    let build = lines[stages[0]..stages[1]].join("\n");
    assert!(
        build.contains("cargo build --release --locked -p outbox-cli"),
        "{build}"
    );
    let run = &lines[stages[1]..];
    assert!(lines[stages[1]].contains("debian:bookworm-slim"), "{file}");
    for want in [
        "COPY --from=build /src/target/release/outbox /usr/local/bin/outbox",
        "USER 10001:10001",
        "ENV OUTBOX_LISTEN=0.0.0.0:9464 \\",
        "STOPSIGNAL SIGTERM",
        "ENTRYPOINT [\"/usr/local/bin/outbox\"]",
        "CMD [\"relay\"]",
    ] {
        assert!(
            run.contains(&want),
            "{want:?} not in the run stage:\n{file}"
        );
    }
    assert!(
        run.iter()
            .any(|l| l.contains("useradd --system --uid 10001"))
    );
    let ignored = include_str!("../../deploy/Containerfile.dockerignore");
    assert!(ignored.lines().any(|l| l == "target"), "{ignored}");
}
