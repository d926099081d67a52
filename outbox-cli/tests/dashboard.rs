//! `outbox dashboard` against the local PostgreSQL: its JSON API (numbers
//! equal to the database's, actions refused without the token or without
//! `--allow-actions`, logged when done), and the page in headless Chromium
//! through chromedriver (numbers shown, a dead letter requeued with the
//! confirm dialog accepted, a screenshot in target/dashboard.png).

use std::os::unix::process::CommandExt;
use std::time::Duration;

use fantoccini::{ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use sqlx::PgPool;

mod support;

use support::service::{Service, eventually, free_port, get, post, wait_ready};
use support::{command, exec, pg, pg_drop, pg_url, table};

const TOKEN: &str = "s3cret-token-for-tests";

/// A table with entries in every state: 3 pending `shop.order_placed`
/// (one of them 10 minutes old), 2 `billing.invoice_paid` retrying (an
/// attempt made, the next one in an hour), 2 dead `billing.invoice_paid`
/// and 1 dead `shop.order_placed` (reason, payload and headers). Returns
/// the dead letters' event ids, oldest first.
async fn fixture(pool: &PgPool, t: &str) -> Vec<String> {
    exec(&pg_url(), Some(t), &["migrate"]).ok();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {t} (event_id, name, payload, created_at) \
           SELECT gen_random_uuid(), 'shop.order_placed', json_build_object('order', g), \
                  now() - make_interval(mins => CASE WHEN g = 1 THEN 10 ELSE 0 END) \
           FROM generate_series(1, 3) g;\
         INSERT INTO {t} (event_id, name, payload, attempts, last_error, available_at) \
           SELECT gen_random_uuid(), 'billing.invoice_paid', json_build_object('invoice', g), 1, \
                  'timeout', now() + interval '1 hour' \
           FROM generate_series(1, 2) g;\
         INSERT INTO {t} (event_id, name, payload, headers, status, attempts, last_error) \
           SELECT gen_random_uuid(), n, json_build_object('amount_cents', 100 * g), \
                  json_build_object('tenant', 'acme'), 'dead', 3, 'broker said no: ' || n \
           FROM (VALUES (1, 'billing.invoice_paid'), (2, 'billing.invoice_paid'), \
                        (3, 'shop.order_placed')) AS v(g, n);"
    )))
    .execute(pool)
    .await
    .unwrap();
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT event_id::text FROM {t} WHERE status = 'dead' ORDER BY id"
    )))
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The database's own counts: pending, retrying, dead per event name and
/// in total, as the API shows them.
async fn counts(pool: &PgPool, t: &str) -> Value {
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT name, \
                count(*) FILTER (WHERE status = 'pending'), \
                count(*) FILTER (WHERE status = 'pending' AND attempts > 0), \
                count(*) FILTER (WHERE status = 'dead') \
         FROM {t} GROUP BY name ORDER BY name"
    )))
    .fetch_all(pool)
    .await
    .unwrap();
    let sum = |f: fn(&(String, i64, i64, i64)) -> i64| rows.iter().map(f).sum::<i64>();
    json!({
        "pending": sum(|r| r.1),
        "retrying": sum(|r| r.2),
        "dead": sum(|r| r.3),
        "by_name": rows
            .iter()
            .map(|r| json!({"name": r.0, "pending": r.1, "retrying": r.2, "dead": r.3}))
            .collect::<Vec<_>>(),
    })
}

/// The API's counts in the shape of [`counts`].
fn shown(table: &Value) -> Value {
    json!({
        "pending": table["pending"],
        "retrying": table["retrying"],
        "dead": table["dead"],
        "by_name": table["by_name"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| json!({"name": n["name"], "pending": n["pending"], "retrying": n["retrying"], "dead": n["dead"]}))
            .collect::<Vec<_>>(),
    })
}

async fn status_of(pool: &PgPool, t: &str, event_id: &str) -> Option<String> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT status FROM {t} WHERE event_id = $1::uuid"
    )))
    .bind(event_id)
    .fetch_optional(pool)
    .await
    .unwrap()
}

/// `outbox --table T... dashboard --listen 127.0.0.1:PORT ARGS...`, up.
async fn dashboard(tables: &[&str], args: &[&str]) -> (Service, String) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut all = vec![
        "dashboard",
        "--listen",
        &listen,
        "--sample-interval",
        "200ms",
    ];
    all.extend_from_slice(args);
    let mut cmd = command(&pg_url(), None, &all);
    for t in tables {
        cmd.arg("--table").arg(t);
    }
    let mut service = Service::start(cmd);
    let base = format!("http://{listen}");
    wait_ready(
        &mut service,
        &format!("{base}/api/overview"),
        Duration::from_secs(20),
    )
    .await;
    (service, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // Reason: one scenario, read top to bottom.
async fn the_json_api_shows_the_database_and_guards_its_actions_postgres() {
    let pool = pg().await;
    let (t, t2) = (table("dash"), table("dash2"));
    let dead = fixture(&pool, &t).await;
    exec(&pg_url(), Some(&t2), &["migrate"]).ok();
    // What a relay writes when its broker is down.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {t}_blocked (publisher, since, reason, seen_at) \
         VALUES ('*', now() - interval '1 minute', 'connection refused', now())"
    )))
    .execute(&pool)
    .await
    .unwrap();

    // Read-only (a token, but no --allow-actions).
    let (service, base) = dashboard(&[&t, &t2], &["--token", TOKEN]).await;
    let overview = get(&format!("{base}/api/overview")).await.json();
    assert_eq!(overview["actions_allowed"], false);
    assert_eq!(overview["published_source"], Value::Null);
    let tables = overview["tables"].as_array().unwrap();
    let mine = tables.iter().find(|x| x["table"] == t.as_str()).unwrap();
    let db = counts(&pool, &t).await;
    assert_eq!(shown(mine), db);
    assert_eq!(db["pending"], 5);
    assert_eq!(db["retrying"], 2);
    assert_eq!(db["dead"], 3);
    // Every row of the fixture is version 1 (the column's default).
    for n in mine["by_name"].as_array().unwrap() {
        assert_eq!(n["versions"], json!([{"version": 1, "entries": 4}]), "{n}");
    }
    let oldest = mine["oldest_pending_age_seconds"].as_f64().unwrap();
    assert!((590.0..700.0).contains(&oldest), "{oldest}");
    let blocked = mine["blocked"].as_array().unwrap();
    assert_eq!(blocked.len(), 1, "{mine}");
    assert_eq!(blocked[0]["publisher"], "*");
    assert_eq!(blocked[0]["reason"], "connection refused");
    let other = tables.iter().find(|x| x["table"] == t2.as_str()).unwrap();
    assert_eq!(
        (other["pending"].clone(), other["dead"].clone()),
        (json!(0), json!(0))
    );

    // The page and its assets come from the binary and name no other host
    // (page.js only the SVG namespace, which is not fetched).
    for (path, kind) in [
        ("/", "text/html"),
        ("/page.js", "text/javascript"),
        ("/page.css", "text/css"),
    ] {
        let asset = get(&format!("{base}{path}")).await;
        assert_eq!(asset.status, 200, "{path}");
        assert!(asset.content_type.starts_with(kind), "{path}: {asset:?}");
        let body = asset.body.replace("\"http://www.w3.org/2000/svg\"", "");
        assert!(
            !body.contains("http:") && !body.contains("https:"),
            "{path}"
        );
        assert!(
            !body.contains("src=\"//") && !body.contains("href=\"//"),
            "{path}"
        );
    }

    // Dead letters with reason, payload and headers.
    let letters = get(&format!("{base}/api/tables/{t}/dead")).await.json();
    let letters = letters.as_array().unwrap();
    assert_eq!(
        letters
            .iter()
            .map(|d| d["event_id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        dead
    );
    assert_eq!(letters[0]["reason"], "broker said no: billing.invoice_paid");
    assert_eq!(letters[0]["version"], 1);
    assert_eq!(letters[0]["payload"], json!({"amount_cents": 100}));
    assert_eq!(letters[0]["headers"], json!({"tenant": "acme"}));
    let named = get(&format!(
        "{base}/api/tables/{t}/dead?name=shop.order_placed"
    ))
    .await
    .json();
    assert_eq!(named.as_array().unwrap().len(), 1);
    assert_eq!(
        get(&format!("{base}/api/tables/nope/dead")).await.status,
        404
    );

    // The history: samples of the pending count, no published rate without a source.
    let history = eventually("two samples", Duration::from_secs(10), || async {
        let h = get(&format!("{base}/api/history")).await.json();
        (h["points"].as_array().unwrap().len() >= 2).then_some(h)
    })
    .await;
    let last = history["points"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["pending"][&t], 5);
    assert_eq!(last["published_per_second"], Value::Null);

    // Actions: without the token 401, with it but read-only 403; nothing changes.
    let requeue = format!("{base}/api/tables/{t}/dead/{}/requeue", dead[0]);
    assert_eq!(post(&requeue, None).await.status, 401);
    assert_eq!(post(&requeue, Some("wrong")).await.status, 401);
    let refused = post(&requeue, Some(TOKEN)).await;
    assert_eq!(refused.status, 403, "{refused:?}");
    assert!(
        refused.json()["error"]
            .as_str()
            .unwrap()
            .contains("--allow-actions")
    );
    assert_eq!(
        status_of(&pool, &t, &dead[0]).await.as_deref(),
        Some("dead")
    );
    let (code, _, stderr) = service.terminate(Duration::from_secs(10));
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("dashboard action"), "{stderr}");

    // --allow-actions needs a token.
    let run = exec(
        &pg_url(),
        Some(&t),
        &["dashboard", "--allow-actions", "--listen", "127.0.0.1:0"],
    );
    run.fails(1, "--allow-actions needs a token");

    // Actions allowed: still 401 without the token; with it they work and are logged.
    let (service, base) = dashboard(&[&t, &t2], &["--allow-actions", "--token", TOKEN]).await;
    assert_eq!(
        get(&format!("{base}/api/overview")).await.json()["actions_allowed"],
        true
    );
    let requeue = format!("{base}/api/tables/{t}/dead/{}/requeue", dead[0]);
    assert_eq!(post(&requeue, None).await.status, 401);
    let done = post(&requeue, Some(TOKEN)).await;
    assert_eq!(done.status, 200, "{done:?}");
    assert_eq!(done.json()["count"], 1);
    assert_eq!(
        status_of(&pool, &t, &dead[0]).await.as_deref(),
        Some("pending")
    );
    assert_eq!(post(&requeue, Some(TOKEN)).await.status, 404);

    let purge = format!("{base}/api/tables/{t}/dead/{}/purge", dead[1]);
    assert_eq!(post(&purge, Some(TOKEN)).await.json()["count"], 1);
    assert_eq!(status_of(&pool, &t, &dead[1]).await, None);
    // dead[2] died just now: not older than an hour.
    let purge_old = format!("{base}/api/tables/{t}/dead/purge?older_than_seconds=3600");
    assert_eq!(post(&purge_old, Some(TOKEN)).await.json()["count"], 0);
    assert_eq!(
        status_of(&pool, &t, &dead[2]).await.as_deref(),
        Some("dead")
    );

    let discard = format!("{base}/api/tables/{t}/pending/discard?name=billing.invoice_paid");
    // The requeued one and the two retrying ones.
    assert_eq!(post(&discard, Some(TOKEN)).await.json()["count"], 3);
    let pending: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT event_id::text FROM {t} WHERE status = 'pending' ORDER BY id LIMIT 1"
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    let discard_one = format!("{base}/api/tables/{t}/pending/{pending}/discard");
    assert_eq!(post(&discard_one, Some(TOKEN)).await.json()["count"], 1);
    assert_eq!(status_of(&pool, &t, &pending).await, None);
    assert_eq!(post(&discard_one, Some(TOKEN)).await.status, 404);
    let requeue_named = format!("{base}/api/tables/{t}/dead/requeue?name=billing.invoice_paid");
    assert_eq!(post(&requeue_named, Some(TOKEN)).await.json()["count"], 0);
    let requeue_all = format!("{base}/api/tables/{t}/dead/requeue");
    assert_eq!(post(&requeue_all, Some(TOKEN)).await.json()["count"], 1);
    let purge_all = format!("{base}/api/tables/{t}/dead/purge");
    assert_eq!(post(&purge_all, Some(TOKEN)).await.json()["count"], 0);

    let overview = get(&format!("{base}/api/overview")).await.json();
    let mine = overview["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["table"] == t.as_str())
        .unwrap()
        .clone();
    let db = counts(&pool, &t).await;
    assert_eq!(shown(&mine), db);
    assert_eq!(
        (db["pending"].clone(), db["dead"].clone()),
        (json!(3), json!(0))
    );

    let (code, _, stderr) = service.terminate(Duration::from_secs(10));
    assert_eq!(code, 0, "{stderr}");
    let logged: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("dashboard action"))
        .collect();
    // requeue, purge, purge (older), discard (name), discard (id), requeue
    // (name), requeue (all), purge (all); refusals and 404s are not actions.
    assert_eq!(logged.len(), 8, "{stderr}");
    assert!(
        logged[0].contains("action=\"requeue\"") && logged[0].contains("count=1"),
        "{stderr}"
    );
    assert!(
        logged[0].contains(&format!(
            "dashboard action table=\"{t}\" action=\"requeue\" which=\"{}\" count=1",
            dead[0]
        )),
        "{stderr}"
    );
    assert!(
        logged[3].contains("action=\"discard\"") && logged[3].contains("count=3"),
        "{stderr}"
    );
    assert!(!stderr.contains(TOKEN), "the token was logged: {stderr}");
    pg_drop(&pool, &t).await;
    pg_drop(&pool, &t2).await;
}

/// A `/metrics` page whose `outbox_published_total` the test sets, or that
/// answers 503 while `down`.
struct FakeRelay {
    url: String,
    published: std::sync::Arc<std::sync::atomic::AtomicU64>,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

async fn fake_relay() -> FakeRelay {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/metrics", listener.local_addr().unwrap());
    let published = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (p, d) = (published.clone(), down.clone());
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 2048];
            let _ = socket.read(&mut buf).await;
            let n = p.load(Ordering::SeqCst);
            let (status, body) = if d.load(Ordering::SeqCst) {
                ("503 Service Unavailable", String::new())
            } else {
                let half = n / 2;
                (
                    "200 OK",
                    format!(
                        "# TYPE outbox_published_total counter\n\
                         outbox_published_total{{event=\"a\"}} {half}\n\
                         outbox_published_total{{event=\"b\"}} {}\n\
                         outbox_dead_total{{event=\"a\"}} 99\n",
                        n - half
                    ),
                )
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(reply.as_bytes()).await;
        }
    });
    FakeRelay {
        url,
        published,
        down,
    }
}

/// The published rate comes from the relays' counters: their increase over
/// the time between two samples; a sample where a relay did not answer has
/// no rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_published_rate_comes_from_the_relays_counters_postgres() {
    use std::sync::atomic::Ordering;
    let pool = pg().await;
    let t = table("dashrate");
    exec(&pg_url(), Some(&t), &["migrate"]).ok();
    let relay = fake_relay().await;
    let (service, base) = dashboard(&[&t], &["--relay-metrics", &relay.url]).await;
    let overview = get(&format!("{base}/api/overview")).await.json();
    assert_eq!(
        overview["published_source"]["counter"],
        "outbox_published_total"
    );

    // 50 more published per 200 ms sample: about 250 per second.
    let rates = eventually("rates over 10 samples", Duration::from_secs(20), || async {
        relay.published.fetch_add(50, Ordering::SeqCst);
        let h = get(&format!("{base}/api/history")).await.json();
        let rates: Vec<f64> = h["points"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["published_per_second"].as_f64())
            .collect();
        (rates.len() >= 10).then_some(rates)
    })
    .await;
    assert!(rates.iter().all(|r| *r >= 0.0), "{rates:?}");
    let busy = rates.iter().filter(|r| **r > 50.0).count();
    assert!(busy >= 5, "{rates:?}");

    // Stopped relay and restarted counter: no rate while it is down, then
    // the increase counts from zero (never negative).
    relay.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let h = get(&format!("{base}/api/history")).await.json();
    let points = h["points"].as_array().unwrap();
    assert_eq!(points.last().unwrap()["published_per_second"], Value::Null);
    relay.published.store(0, Ordering::SeqCst);
    relay.down.store(false, Ordering::SeqCst);
    let after = eventually(
        "a rate after the restart",
        Duration::from_secs(10),
        || async {
            let h = get(&format!("{base}/api/history")).await.json();
            h["points"].as_array().unwrap().last().unwrap()["published_per_second"].as_f64()
        },
    )
    .await;
    assert!(after >= 0.0, "{after}");
    let (code, _, stderr) = service.terminate(Duration::from_secs(10));
    assert_eq!(code, 0, "{stderr}");
    pg_drop(&pool, &t).await;
}

/// chromedriver and the Chromium it starts, in a process group of their
/// own: dropped (the test ended or failed), the whole group is killed, so
/// no browser outlives the test.
struct Driver {
    service: Service,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.service.pid());
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &group])
            .status();
    }
}

/// chromedriver on a free port (it must be installed: Debian's
/// chromium-driver, which .ci/run installs).
fn chromedriver() -> Driver {
    let port = free_port();
    let driver = "/usr/bin/chromedriver";
    assert!(
        std::path::Path::new(driver).exists(),
        "{driver} is missing: apt-get install -y chromium chromium-driver (.ci/run does)"
    );
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: apt-get install -y chromium chromium-driver (.ci/run does)"
    );
    let mut cmd = std::process::Command::new(driver);
    cmd.arg(format!("--port={port}"))
        .stdin(std::process::Stdio::null())
        .process_group(0);
    Driver {
        service: Service::start(cmd),
        port,
    }
}

/// The text of the element `css` (waiting for it to show `want`).
async fn shows(client: &fantoccini::Client, css: &str, want: &str) {
    let mut last = String::new();
    for _ in 0..100 {
        if let Ok(el) = client.find(Locator::Css(css)).await {
            last = el.text().await.unwrap_or_default();
            if last.trim() == want {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{css} shows {last:?}, not {want:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // Reason: one scenario, read top to bottom.
async fn the_page_in_chromium_shows_the_database_and_requeues_a_dead_letter_postgres() {
    let pool = pg().await;
    let t = table("dashpage");
    let dead = fixture(&pool, &t).await;
    // A relay's counter moving, for the published-per-second chart.
    let relay = fake_relay().await;
    let counter = std::sync::Arc::clone(&relay.published);
    let publishing = tokio::spawn(async move {
        for i in 0u64.. {
            counter.fetch_add(20 + (i * 7) % 30, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let (service, base) = dashboard(
        &[&t],
        &[
            "--allow-actions",
            "--token",
            TOKEN,
            "--relay-metrics",
            &relay.url,
        ],
    )
    .await;
    let mut driver = chromedriver();
    let driver_port = driver.port;
    wait_ready(
        &mut driver.service,
        &format!("http://127.0.0.1:{driver_port}/status"),
        Duration::from_secs(20),
    )
    .await;
    let profile = std::env::temp_dir().join(format!("outbox-chromium-{}", uuid::Uuid::new_v4()));
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".to_owned(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1280,1100", format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let client = ClientBuilder::new(HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{driver_port}"))
        .await
        .expect("chromedriver starts a headless chromium session");
    client.goto(&format!("{base}/")).await.unwrap();

    // The numbers shown are the database's.
    let db = counts(&pool, &t).await;
    let section = format!("[data-table=\"{t}\"]");
    for key in ["pending", "retrying", "dead"] {
        shows(
            &client,
            &format!("{section} [data-total=\"{key}\"]"),
            &db[key].to_string(),
        )
        .await;
    }
    for n in db["by_name"].as_array().unwrap() {
        let row = format!(
            "{section} tr[data-name=\"{}\"]",
            n["name"].as_str().unwrap()
        );
        for key in ["pending", "retrying", "dead"] {
            shows(
                &client,
                &format!("{row} [data-k=\"{key}\"]"),
                &n[key].to_string(),
            )
            .await;
        }
    }
    shows(&client, "#mode", "actions allowed (token needed)").await;
    let reason = client
        .find(Locator::Css(&format!(
            "tr[data-event-id=\"{}\"] .reason",
            dead[2]
        )))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(reason, "broker said no: shop.order_placed");
    shows(
        &client,
        &format!("tr[data-event-id=\"{}\"] .version", dead[2]),
        "v1",
    )
    .await;
    shows(
        &client,
        &format!("{section} tr[data-name=\"shop.order_placed\"] [data-k=\"versions\"]"),
        "v1:4",
    )
    .await;
    shows(
        &client,
        "#published-source",
        "(from 1 relay's outbox_published_total)",
    )
    .await;
    // Let the chart collect a few samples for the screenshot.
    tokio::time::sleep(Duration::from_secs(4)).await;

    // Requeue one dead letter: the token, the button, the confirm dialog.
    client
        .find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    let button = format!("tr[data-event-id=\"{}\"] button.requeue", dead[0]);
    client
        .find(Locator::Css(&button))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let question = client.get_alert_text().await.unwrap();
    assert!(question.contains(&dead[0]), "{question}");
    client.accept_alert().await.unwrap();
    eventually(
        "the dead letter pending again",
        Duration::from_secs(10),
        || async {
            (status_of(&pool, &t, &dead[0]).await.as_deref() == Some("pending")).then_some(())
        },
    )
    .await;
    // And the page says so.
    shows(&client, &format!("{section} [data-total=\"dead\"]"), "2").await;
    shows(&client, &format!("{section} [data-total=\"pending\"]"), "6").await;
    shows(
        &client,
        "#message",
        &format!("requeue {} in {t}: 1 entry", dead[0]),
    )
    .await;
    // A change made elsewhere shows up without a reload.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {t} (event_id, name, payload) VALUES (gen_random_uuid(), 'shop.order_placed', '{{}}')"
    )))
    .execute(&pool)
    .await
    .unwrap();
    shows(&client, &format!("{section} [data-total=\"pending\"]"), "7").await;
    assert!(
        client
            .find(Locator::Css(&format!("tr[data-event-id=\"{}\"]", dead[0])))
            .await
            .is_err(),
        "the requeued dead letter is still listed"
    );

    let png = client.screenshot().await.unwrap();
    // target/dashboard.png (CARGO_TARGET_TMPDIR is target/tmp).
    let target = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("dashboard.png");
    std::fs::write(&target, &png).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    client.close().await.unwrap();
    drop(driver);
    publishing.abort();
    let _ = std::fs::remove_dir_all(&profile);

    let (code, _, stderr) = service.terminate(Duration::from_secs(10));
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("dashboard action"), "{stderr}");
    pg_drop(&pool, &t).await;
}
