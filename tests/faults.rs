//! Faults that do not stop a shared service: writers rolling back under
//! load, the relays' database connections killed with
//! `pg_terminate_backend`, and poison and bad input. Each checks what a
//! real RabbitMQ consumer received against what was committed.
//!
//! The tests of this binary run one at a time (a lock), so each one's
//! figures are its own.

mod fault_support;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fault_support::{
    MAX_PAUSE, Message, Rng, Tap, Tick, World, assert_delivered, backlog, consume, pool,
    record_ticks, stop_signal, tally, tap_publishers, unique,
};
use outbox::publisher::amqp::{AmqpPublisher, STREAM_KEY_HEADER};
use outbox::{Backoff, Entry, Event, Metadata, Outbox, Publishers};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Postgres};
use uuid::Uuid;

/// One test of this binary at a time (tokio's lock works across the
/// tests' runtimes and is not poisoned by a failed test).
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// 8 writer tasks record events in transactions of 1 to 5 events, 30% of
/// which roll back, while 2 relays drain into RabbitMQ: exactly the
/// committed events are delivered, each once, and none of the rolled-back
/// ones; each relay publishes between a quarter and three quarters of them,
/// and the outbox is empty within 5 s of the last commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_rolling_back_under_load_deliver_exactly_the_committed_events() {
    const WRITERS: i64 = 8;
    const COMMITTED: usize = 10_000;
    const DRAIN_BOUND: Duration = Duration::from_secs(5);
    let _serial = serial().await;
    let world = World::new("fault_writers").await;
    let tap = Tap::new(world.rabbit());
    let (stop, signal) = stop_signal();
    let mut relays = Vec::new();
    for i in 0..2 {
        let relay_pool = pool(&unique(&format!("fault-writers-relay{i}")), 4).await;
        let outbox = world.builder(relay_pool).build().await.unwrap();
        relays.push(tokio::spawn(
            outbox
                .relay(tap_publishers(&tap))
                .poll_interval(Duration::from_millis(100))
                .run(signal()),
        ));
    }

    let writer_pool = pool(&unique("fault-writers-app"), 10).await;
    let started = Instant::now();
    let mut rng = Rng::seeded("writers under load");
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let outbox = world.builder(writer_pool.clone()).build().await.unwrap();
        let (pool, table) = (writer_pool.clone(), world.table.clone());
        let mut rng = rng.fork();
        writers.push(tokio::spawn(async move {
            let (mut committed, mut rolled_back) = (Vec::new(), Vec::new());
            let mut k = w * 1_000_000;
            while committed.len() < COMMITTED / 8 {
                let size = 1 + i64::try_from(rng.below(5)).unwrap();
                let commit = !rng.percent(30);
                let ids = record_ticks(&outbox, &pool, &table, k, size, commit)
                    .await
                    .unwrap();
                k += size;
                if commit {
                    committed.extend(ids);
                } else {
                    rolled_back.extend(ids);
                }
            }
            (committed, rolled_back)
        }));
    }
    let (mut committed, mut rolled_back) = (HashMap::new(), HashSet::new());
    for writer in writers {
        let (c, r) = writer.await.unwrap();
        committed.extend(c);
        rolled_back.extend(r.into_iter().map(|(id, _)| id));
    }
    let written_in = started.elapsed();
    let drained_after = world.wait_drained(DRAIN_BOUND).await;
    stop.send(true).unwrap();
    let mut reports = Vec::new();
    for relay in relays {
        reports.push(relay.await.unwrap());
    }

    // The business table agrees with what the writers saw commit.
    let in_biz = world.committed().await;
    assert_eq!(
        in_biz, committed,
        "the business table holds the committed events"
    );
    let want = committed.keys().copied().collect();
    let received = consume(
        &world.queue,
        &want,
        Duration::from_secs(2),
        Duration::from_mins(2),
    )
    .await;
    let t = tally(&committed, &received);
    let leaked = received
        .iter()
        .filter(|m| rolled_back.contains(&m.event_id))
        .count();
    eprintln!(
        "writers under load: {WRITERS} writers, {} events committed and {} rolled back in {written_in:?}, \
         2 relays published {:?}, drained {drained_after:?} after the last commit; \
         {} messages consumed, {} duplicates, {} lost, {leaked} rolled-back events delivered",
        t.events,
        rolled_back.len(),
        reports.iter().map(|r| r.published).collect::<Vec<_>>(),
        t.received,
        t.duplicates,
        t.lost.len(),
    );
    assert_delivered(&t);
    assert!(t.events >= COMMITTED);
    assert!(
        rolled_back.len() * 100 / (t.events + rolled_back.len()) >= 20,
        "about 30% rolled back"
    );
    assert_eq!(leaked, 0, "a rolled-back event was delivered");
    assert_eq!(t.duplicates, 0, "no fault, no duplicate");
    assert!(
        reports.iter().all(|r| r.dead == 0 && r.retried == 0),
        "{reports:?}"
    );
    assert_eq!(
        reports.iter().map(|r| r.published).sum::<usize>(),
        t.events,
        "each committed event published once"
    );
    for report in &reports {
        let share = report.published * 100 / t.events;
        assert!(
            (25..=75).contains(&share),
            "each relay published between 25% and 75%: {share}% ({reports:?})"
        );
    }
    world.drop_all().await;
}

/// The relays' connections (their pool's and their LISTEN connection,
/// found by `application_name`) are killed with `pg_terminate_backend`
/// again and again while they drain: they reconnect by themselves, a batch
/// is confirmed again within 0.5 s of a kill (median; 3 s at most), nothing
/// is lost, and the duplicates stay within the batches in flight per relay
/// per round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_relay_connections_reconnect_and_lose_nothing() {
    const N: i64 = 10_000;
    const ROUNDS: usize = 30;
    const RELAYS: usize = 2;
    const BATCH: usize = 100;
    const IN_FLIGHT: usize = 4;
    const MEDIAN_BOUND: Duration = Duration::from_millis(500);
    const MAX_BOUND: Duration = Duration::from_secs(3);
    let _serial = serial().await;
    let world = World::new("fault_term").await;
    let writer = world.builder(world.admin.clone()).build().await.unwrap();
    let application_name = unique("fault-term-relay");
    let relay_pool = pool(&application_name, 4).await;
    let tap = Tap::new(world.rabbit());
    let (stop, signal) = stop_signal();
    let mut relays = Vec::new();
    for _ in 0..RELAYS {
        let outbox = world
            .builder(relay_pool.clone())
            .lease(Duration::from_secs(3))
            .batch_limit(BATCH)
            .build()
            .await
            .unwrap();
        relays.push(tokio::spawn(
            outbox
                .relay(tap_publishers(&tap))
                .in_flight(IN_FLIGHT)
                .poll_interval(Duration::from_millis(100))
                .max_backoff(Duration::from_secs(1))
                .run(signal()),
        ));
    }

    // The application records in waves while the killing goes on, and a
    // little longer, so that every kill is followed by work.
    let (stop_producing, mut producing_stopped) = tokio::sync::watch::channel(false);
    let producer = {
        let (outbox, pool, table) = (writer.clone(), world.admin.clone(), world.table.clone());
        tokio::spawn(async move {
            let mut k = 0;
            while k < N || !*producing_stopped.borrow() {
                record_ticks(&outbox, &pool, &table, k, 200, true)
                    .await
                    .unwrap();
                k += 200;
                let _ =
                    tokio::time::timeout(Duration::from_millis(100), producing_stopped.changed())
                        .await;
            }
            k
        })
    };
    let mut rng = Rng::seeded("terminated connections");
    let (mut terminated, mut pending_seen) = (0, 0);
    let mut kills = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        tokio::time::sleep(rng.millis(50, 400)).await;
        kills.push(Instant::now());
        let killed: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = $1",
        )
        .bind(&application_name)
        .fetch_one(&world.admin)
        .await
        .unwrap();
        terminated += killed;
        pending_seen = pending_seen.max(world.pending().await.unwrap());
    }
    let last_kill = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_producing.send(true).unwrap();
    let recorded = producer.await.unwrap();
    let drained_after = world.wait_drained(Duration::from_mins(2)).await;
    let recovered_in = last_kill.elapsed();
    stop.send(true).unwrap();
    let mut reports = Vec::new();
    for relay in relays {
        reports.push(relay.await.unwrap());
    }
    let committed = world.committed().await;
    let want = committed.keys().copied().collect();
    let received = consume(
        &world.queue,
        &want,
        Duration::from_secs(2),
        Duration::from_mins(2),
    )
    .await;
    let t = tally(&committed, &received);
    // After each kill: how long until a relay had a batch confirmed again
    // (on a new connection: all of them were killed).
    let mut gaps: Vec<Duration> = kills
        .iter()
        .map(|&at| tap.first_ok_after(at).map_or(Duration::MAX, |ok| ok - at))
        .collect();
    gaps.sort();
    eprintln!(
        "terminated connections: {} events, {terminated} relay connections killed in {ROUNDS} rounds \
         (up to {pending_seen} pending); next confirmed batch after a kill: median {:?}, max {:?} \
         (bounds {MEDIAN_BOUND:?}, {MAX_BOUND:?}); \
         drained {drained_after:?} after the producer finished ({recovered_in:?} after the last kill); \
         {} messages consumed, {} duplicates (bound {}), {} lost; relays published {:?}",
        t.events,
        gaps[gaps.len() / 2],
        gaps[gaps.len() - 1],
        t.received,
        t.duplicates,
        BATCH * IN_FLIGHT * RELAYS * ROUNDS,
        t.lost.len(),
        reports.iter().map(|r| r.published).collect::<Vec<_>>(),
    );
    assert_delivered(&t);
    assert_eq!(t.events, usize::try_from(recorded).unwrap());
    assert!(recorded >= N);
    assert!(
        terminated >= i64::try_from(ROUNDS).unwrap(),
        "{terminated} connections killed in {ROUNDS} rounds"
    );
    assert!(
        gaps[gaps.len() / 2] < MEDIAN_BOUND && gaps[gaps.len() - 1] < MAX_BOUND,
        "the relays published again soon after every kill: {gaps:?}"
    );
    assert!(
        t.duplicates <= BATCH * IN_FLIGHT * RELAYS * ROUNDS,
        "{} duplicates: more than the batches in flight per relay per round",
        t.duplicates
    );
    assert_eq!(world.dead().await, 0);
    relay_pool.close().await;
    drop(writer);
    world.drop_all().await;
}

/// A broker that accepts connections and never answers (a hung RabbitMQ,
/// or a black-holed network path): the publisher's timeout makes it
/// *unavailable*, no entry spends an attempt or becomes a dead letter, and
/// a relay to the real broker afterwards delivers every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_broker_is_unavailable_and_loses_nothing() {
    const N: i64 = 10_000;
    let _serial = serial().await;
    let world = World::new("fault_hang").await;
    let outbox = world.builder(world.admin.clone()).build().await.unwrap();
    backlog(&world, &outbox, 0, N).await;

    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = silent.local_addr().unwrap();
    let black_hole = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let timeout = Duration::from_secs(1);
    let hung = AmqpPublisher::builder(format!("amqp://guest:guest@{address}/%2f"))
        .timeout(timeout)
        .build()
        .unwrap();
    let publishers = Publishers::builder()
        .max_pause(MAX_PAUSE)
        .publisher::<Tick, _>(hung.clone())
        .fallback(hung)
        .build()
        .unwrap();
    let started = Instant::now();
    let report = outbox.run(&publishers, 100).await.unwrap();
    let one_run = started.elapsed();
    let hung_report = outbox
        .relay(publishers)
        .run(tokio::time::sleep(Duration::from_secs(3)))
        .await;
    black_hole.abort();
    assert_eq!(
        (report.published, report.unavailable),
        (0, 100),
        "{report:?}"
    );
    assert!(
        one_run < timeout * 3,
        "a run against a hung broker took {one_run:?}"
    );
    assert!(
        hung_report.unavailable > 0 && hung_report.published == 0,
        "{hung_report:?}"
    );
    assert_eq!(hung_report.dead + hung_report.retried, 0, "{hung_report:?}");
    let attempted: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM \"{}\" WHERE attempts > 0 OR status <> 'pending'",
        world.table
    )))
    .fetch_one(&world.admin)
    .await
    .unwrap();
    assert_eq!(attempted, 0, "a hung broker costs no attempt");

    let tap = Tap::new(world.rabbit());
    let (stop, signal) = stop_signal();
    let relay = tokio::spawn(outbox.relay(tap_publishers(&tap)).run(signal()));
    let drained = world.wait_drained(Duration::from_mins(2)).await;
    stop.send(true).unwrap();
    relay.await.unwrap();
    let committed = world.committed().await;
    let want = committed.keys().copied().collect();
    let received = consume(
        &world.queue,
        &want,
        Duration::from_secs(2),
        Duration::from_mins(2),
    )
    .await;
    let t = tally(&committed, &received);
    eprintln!(
        "hanging broker: {} events; one run against a broker that never answers returned in \
         {one_run:?} (publisher timeout {timeout:?}); 3 s of relaying to it: {hung_report:?}, \
         no attempt spent; the real broker then got everything in {drained:?}: \
         {} messages consumed, {} duplicates, {} lost",
        t.events,
        t.received,
        t.duplicates,
        t.lost.len(),
    );
    assert_delivered(&t);
    assert_eq!(t.duplicates, 0);
    world.drop_all().await;
}

/// Published through a typed publisher; used for the 10 MiB payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, outbox::Event)]
#[outbox(name = "fault.blob")]
struct Blob {
    data: String,
}

/// What must become of one bad input.
enum Expect {
    /// Published: the consumer's message must pass this check.
    Published(Box<dyn Fn(&Message) + Send>),
    /// Dead letter whose reason contains this.
    Dead(&'static str),
}

struct Bad {
    what: String,
    event_id: Uuid,
    expect: Expect,
}

/// A row written with plain SQL, as another program (or a bug) would.
async fn insert_row(world: &World, name: &str, payload: &str, headers: &str) -> Uuid {
    let event_id = Uuid::now_v7();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO \"{}\" (event_id, name, payload, headers) VALUES ($1, $2, $3::json, $4::json)",
        world.table
    )))
    .bind(event_id)
    .bind(name)
    .bind(payload)
    .bind(headers)
    .execute(&world.admin)
    .await
    .unwrap();
    event_id
}

/// Records one event through the API in its own transaction.
async fn record_one<E: Event>(
    outbox: &Outbox<Postgres>,
    pool: &PgPool,
    event: &E,
    meta: Metadata,
) -> Result<Uuid, outbox::Error> {
    let mut tx = pool.begin().await?;
    let recording = outbox.record_with(&mut *tx, event, meta).await?;
    tx.commit().await?;
    Ok(recording.event_id().expect("stored"))
}

fn header<'m>(m: &'m Message, name: &str) -> &'m [u8] {
    m.headers
        .get(name)
        .unwrap_or_else(|| panic!("header {name:.40?} missing"))
}

/// An incompressible string of `len` ASCII characters.
fn noise(len: usize) -> String {
    let mut s = String::with_capacity(len + 32);
    while s.len() < len {
        s.push_str(&Uuid::new_v4().simple().to_string());
    }
    s.truncate(len);
    s
}

/// Poison and bad input among 10,000 good events: each bad entry is
/// published, dead-lettered with a reason, or refused at `record` with a
/// clear error; the relay never stops, and every good event recorded after
/// a bad one is still delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_and_bad_input_never_block_the_queue() {
    const GOOD: i64 = 10_000;
    let _serial = serial().await;
    let world = World::new("fault_poison").await;
    let app = world.builder(world.admin.clone()).build().await.unwrap();
    let relay_pool = pool(&unique("fault-poison-relay"), 4).await;
    let outbox = world
        .builder(relay_pool)
        .max_attempts(2)
        .backoff(Backoff::fixed(Duration::from_millis(100)))
        .build()
        .await
        .unwrap();
    let tap = Tap::new(world.rabbit());
    let publishers = Publishers::builder()
        .max_pause(MAX_PAUSE)
        .publisher::<Tick, _>(tap.clone())
        .publisher::<Blob, _>(tap.clone())
        .fallback(tap.clone())
        .build()
        .unwrap();
    let (stop, signal) = stop_signal();
    let relay = tokio::spawn(
        outbox
            .relay(publishers)
            .poll_interval(Duration::from_millis(100))
            .run(signal()),
    );

    let mut bad: Vec<Bad> = Vec::new();
    let mut refused: Vec<(String, String)> = Vec::new();
    let mut k = 0;
    // Good events, then the next bad input, over and over.
    let good = |k: &mut i64| {
        let (app, pool, table) = (app.clone(), world.admin.clone(), world.table.clone());
        let first = *k;
        *k += 500;
        async move {
            record_ticks(&app, &pool, &table, first, 500, true)
                .await
                .unwrap();
        }
    };
    let (admin, started) = (world.admin.clone(), Instant::now());

    // 1. Payloads that do not decode as the registered type: dead at once.
    for (what, payload) in [
        ("a payload of the wrong shape", r#"{"wrong": true}"#),
        ("a JSON string with a lone surrogate", r#""\ud800""#),
        (
            "a field with a lone surrogate",
            r#"{"n": 1, "note": "\udc00 alone"}"#,
        ),
        ("null", "null"),
        (
            "a 1,000-deep array",
            &format!("{}{}", "[".repeat(1_000), "]".repeat(1_000)),
        ),
    ] {
        good(&mut k).await;
        let event_id = insert_row(&world, "fault.tick", payload, "{}").await;
        bad.push(Bad {
            what: format!("fault.tick with {what}"),
            event_id,
            expect: Expect::Dead("payload does not decode"),
        });
    }

    // 2. Headers that are not a map of strings: dead at once.
    for headers in [r#"{"a": 1}"#, "[]", r#"{"a": {"b": "c"}}"#, "null"] {
        good(&mut k).await;
        let event_id = insert_row(&world, "fault.tick", r#"{"n": 1, "note": "x"}"#, headers).await;
        bad.push(Bad {
            what: format!("headers {headers}"),
            event_id,
            expect: Expect::Dead("headers do not decode"),
        });
    }

    // 3. Unknown event names go to the catch-all, published as stored.
    let deep = format!("{}{}", "[".repeat(1_000), "]".repeat(1_000));
    for (name, payload) in [
        (
            "fault.never_heard_of",
            r#"{"anything": [1, 2.5, {"x": null}], "s": "\u0000"}"#,
        ),
        ("fault.ünïcødé.✓.🎉", r#""just a string""#),
        ("fault.deep", deep.as_str()),
    ] {
        good(&mut k).await;
        let event_id = insert_row(&world, name, payload, "{}").await;
        let (name, payload) = (name.to_owned(), payload.to_owned());
        bad.push(Bad {
            what: format!("unknown name {name:?}"),
            event_id,
            expect: Expect::Published(Box::new(move |m| {
                assert_eq!(m.kind.as_deref(), Some(name.as_str()));
                assert_eq!(m.body, payload.as_bytes(), "published byte for byte");
            })),
        });
    }

    // 4. A name AMQP cannot carry (over 255 bytes): rejected, then dead.
    good(&mut k).await;
    let event_id = insert_row(&world, &format!("fault.{}", "x".repeat(294)), "{}", "{}").await;
    bad.push(Bad {
        what: "a 300-byte event name".to_owned(),
        event_id,
        expect: Expect::Dead("the event name is 300 bytes"),
    });

    // 5. NUL and other control characters, noncharacters and astral
    //    characters in a string field: JSON escapes them, the `json`
    //    column keeps the escapes, the consumer gets the same event back.
    good(&mut k).await;
    let odd = Tick {
        n: -1,
        note: "nul \0 bell \u{7} esc \u{1b} del \u{7f} bom \u{feff} nonchar \u{ffff} max \u{10ffff} 🎉 \" \\ \n"
            .to_owned(),
    };
    let event_id = record_one(&app, &admin, &odd, Metadata::new())
        .await
        .unwrap();
    bad.push(Bad {
        what: "NUL and control characters in a string field".to_owned(),
        event_id,
        expect: Expect::Published(Box::new(move |m| {
            let got: Tick = serde_json::from_slice(&m.body).unwrap();
            assert_eq!(got, odd);
        })),
    });

    // 6. Odd header names and values: carried exactly.
    good(&mut k).await;
    let long_name = "h".repeat(255);
    let long_value = noise(100_000);
    let meta = Metadata::new()
        .header("", "empty name")
        .header("ключ🔑", "unicode name")
        .header(long_name.clone(), "a 255-byte name")
        .header("nul\0name", "nul\0value")
        .header("long", long_value.clone());
    let event_id = record_one(&app, &admin, &fault_support::tick(-2), meta)
        .await
        .unwrap();
    bad.push(Bad {
        what: "odd header names and values".to_owned(),
        event_id,
        expect: Expect::Published(Box::new(move |m| {
            assert_eq!(header(m, ""), b"empty name");
            assert_eq!(header(m, "ключ🔑"), "unicode name".as_bytes());
            assert_eq!(header(m, &long_name), b"a 255-byte name");
            assert_eq!(header(m, "nul\0name"), b"nul\0value");
            assert_eq!(header(m, "long"), long_value.as_bytes());
        })),
    });

    // 7. Header names AMQP cannot carry: rejected, then dead.
    for len in [256, 10_000] {
        good(&mut k).await;
        let meta = Metadata::new().header("n".repeat(len), "v");
        let event_id = record_one(&app, &admin, &fault_support::tick(-3), meta)
            .await
            .unwrap();
        bad.push(Bad {
            what: format!("a {len}-byte header name"),
            event_id,
            expect: Expect::Dead("header name"),
        });
    }

    // 8. A 10 MiB payload: published whole.
    good(&mut k).await;
    let blob = Blob {
        data: noise(10 << 20),
    };
    let event_id = record_one(&app, &admin, &blob, Metadata::new())
        .await
        .unwrap();
    let expected_body = serde_json::to_vec(&blob).unwrap();
    bad.push(Bad {
        what: "a 10 MiB payload".to_owned(),
        event_id,
        expect: Expect::Published(Box::new(move |m| {
            assert_eq!(m.body.len(), expected_body.len());
            assert!(m.body == expected_body, "the 10 MiB body arrived intact");
        })),
    });

    // 9. The configured maximum payload size: refused at `record`, and the
    //    caller's transaction goes on.
    good(&mut k).await;
    let capped = world
        .builder(world.admin.clone())
        .max_payload_bytes(1 << 20)
        .build()
        .await
        .unwrap();
    let mut tx = admin.begin().await.unwrap();
    let err = capped
        .record(&mut *tx, &blob)
        .await
        .expect_err("over max_payload_bytes");
    assert!(
        matches!(err, outbox::Error::PayloadTooLarge { max, .. } if max == 1 << 20),
        "{err}"
    );
    refused.push((
        "a 10 MiB payload over max_payload_bytes(1 MiB)".to_owned(),
        err.to_string(),
    ));
    let after = capped
        .record(&mut *tx, &fault_support::tick(-4))
        .await
        .unwrap()
        .event_id()
        .unwrap();
    tx.commit().await.unwrap();
    bad.push(Bad {
        what: "the event recorded after a refused one, same transaction".to_owned(),
        event_id: after,
        expect: Expect::Published(Box::new(|m| {
            let got: Tick = serde_json::from_slice(&m.body).unwrap();
            assert_eq!(got, fault_support::tick(-4));
        })),
    });

    // 10. Absurd stream keys: 100 KB that compresses well is stored and
    //     carried; 100 KB of noise does not fit PostgreSQL's btree index on
    //     (stream_key, id) and is refused at `record` by the database; a
    //     NUL cannot be stored in a PostgreSQL text column and is refused.
    good(&mut k).await;
    let key = "k".repeat(100_000);
    let event_id = record_one(
        &app,
        &admin,
        &fault_support::tick(-5),
        Metadata::new().stream_key(key.clone()),
    )
    .await
    .unwrap();
    bad.push(Bad {
        what: "a 100 KB repetitive stream key".to_owned(),
        event_id,
        expect: Expect::Published(Box::new(move |m| {
            assert_eq!(header(m, STREAM_KEY_HEADER), key.as_bytes());
        })),
    });
    for (what, key, says) in [
        ("a 100 KB stream key of noise", noise(100_000), "index row"),
        ("a stream key with a NUL", "a\0b".to_owned(), "0x00"),
    ] {
        good(&mut k).await;
        let err = record_one(
            &app,
            &admin,
            &fault_support::tick(-6),
            Metadata::new().stream_key(key),
        )
        .await
        .expect_err(what);
        assert!(matches!(err, outbox::Error::Database(_)), "{what}: {err}");
        assert!(err.to_string().contains(says), "{what}: {err}");
        refused.push((what.to_owned(), err.to_string()));
    }
    while k < GOOD {
        good(&mut k).await;
    }
    let recorded_in = started.elapsed();

    // Every entry reaches an end: nothing stays pending (a rejected entry
    // is dead after its second attempt, 100 ms after the first).
    let drained_after = world.wait_drained(Duration::from_secs(10)).await;
    assert!(!relay.is_finished(), "the relay loop is still running");
    stop.send(true).unwrap();
    let report = relay.await.expect("the relay never panicked");

    let dead: HashMap<Uuid, String> = outbox
        .dead_letters(1_000)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.event_id, d.reason))
        .collect();
    let committed = world.committed().await;
    let mut want: HashSet<Uuid> = committed.keys().copied().collect();
    want.extend(
        bad.iter()
            .filter(|b| matches!(b.expect, Expect::Published(_)))
            .map(|b| b.event_id),
    );
    let received = consume(
        &world.queue,
        &want,
        Duration::from_secs(2),
        Duration::from_mins(2),
    )
    .await;
    let (ticks, others): (Vec<Message>, Vec<Message>) = received
        .into_iter()
        .partition(|m| committed.contains_key(&m.event_id));
    let t = tally(&committed, &ticks);
    assert_delivered(&t);
    assert_eq!(t.events, usize::try_from(k).unwrap());
    assert_eq!(t.duplicates, 0);

    let mut published = 0;
    for b in &bad {
        let got: Vec<&Message> = others.iter().filter(|m| m.event_id == b.event_id).collect();
        match &b.expect {
            Expect::Published(check) => {
                assert_eq!(got.len(), 1, "{} was published once", b.what);
                check(got[0]);
                assert!(!dead.contains_key(&b.event_id), "{}", b.what);
                published += 1;
            }
            Expect::Dead(says) => {
                assert!(got.is_empty(), "{} was not published", b.what);
                let reason = dead
                    .get(&b.event_id)
                    .unwrap_or_else(|| panic!("{} is a dead letter", b.what));
                assert!(reason.contains(says), "{}: reason {reason:?}", b.what);
                eprintln!("poison: {} -> dead: {reason:.160}", b.what);
            }
        }
    }
    let dead_expected = bad.len() - published;
    assert_eq!(
        (published, dead_expected, refused.len()),
        (8, 12, 3),
        "bad entries published, dead, refused at record"
    );
    assert_eq!(dead.len(), dead_expected, "no other dead letters");
    assert_eq!(others.len(), published, "nothing else was published");
    for (what, err) in &refused {
        eprintln!("poison: {what} -> refused at record: {err:.200}");
    }
    eprintln!(
        "poison and bad input: {} good events and {} bad entries recorded in {recorded_in:?} \
         ({published} published, {dead_expected} dead letters, {} refused at record); \
         drained {drained_after:?} later; {} good messages consumed, {} duplicates, {} lost; \
         relay report {report:?}",
        t.events,
        bad.len(),
        refused.len(),
        t.received,
        t.duplicates,
        t.lost.len(),
    );
    world.drop_all().await;
}

/// Rows another program wrote against the table contract (which says to
/// leave `created_at` to its default), here a `created_at` PostgreSQL
/// accepts but chrono cannot represent: the relay must not crash, and the
/// good row recorded after it must still be delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_written_wrong_never_crash_the_relay() {
    let _serial = serial().await;
    let mut crashed = Vec::new();
    for created_at in ["infinity", "-infinity", "294276-12-31 00:00:00+00"] {
        let world = World::new("fault_wrong").await;
        let outbox = world
            .builder(world.admin.clone())
            .lease(Duration::from_millis(200))
            .build()
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO \"{}\" (event_id, name, payload, created_at) \
             VALUES ($1, 'fault.other', '{{}}', $2::timestamptz)",
            world.table
        )))
        .bind(Uuid::now_v7())
        .bind(created_at)
        .execute(&world.admin)
        .await
        .unwrap();
        let good = record_one(
            &outbox,
            &world.admin,
            &fault_support::tick(1),
            Metadata::new(),
        )
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
        let (stop, signal) = stop_signal();
        let relay = tokio::spawn(
            outbox
                .relay(publishers)
                .poll_interval(Duration::from_millis(50))
                .run(signal()),
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let _ = stop.send(true);
        let outcome = tokio::time::timeout(Duration::from_secs(5), relay)
            .await
            .expect("the relay stops when asked");
        let delivered = delivered.lock().unwrap().contains(&good);
        eprintln!(
            "created_at {created_at}: relay {}, good row delivered: {delivered}",
            match &outcome {
                Ok(report) => format!("ran: {report:?}"),
                Err(err) => format!("CRASHED: {err}"),
            }
        );
        if outcome.is_err() || !delivered {
            crashed.push(format!(
                "created_at = {created_at}: relay {}, good row delivered: {delivered}",
                outcome.map_or_else(|e| format!("crashed ({e})"), |_| "ran".to_owned())
            ));
        }
        world.drop_all().await;
    }
    assert!(
        crashed.is_empty(),
        "a row with an out-of-range created_at crashes the relay or blocks the queue:\n{}",
        crashed.join("\n")
    );
}
