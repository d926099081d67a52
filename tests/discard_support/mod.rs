//! Discarding pending entries and the headers of dead letters, on any
//! database, through the library only (one statement of plain SQL fakes a
//! corrupt headers value).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox::{Backend, Backoff, Headers, Metadata, Outbox, PublishError, Publishers, Recorded};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use uuid::Uuid;

/// An event type recorded by mistake: nobody wants these published.
#[derive(Debug, Serialize, Deserialize, outbox::Event)]
#[outbox(name = "discard.mistake")]
pub(crate) struct Mistake {
    pub(crate) n: i64,
}

/// An event type that must go out as usual.
#[derive(Debug, Serialize, Deserialize, outbox::Event)]
#[outbox(name = "discard.kept")]
pub(crate) struct Kept {
    pub(crate) n: i64,
}

/// What the publishers saw, by name and number, and a gate that holds the
/// publish of `Mistake { n: HOLD }` until released.
#[derive(Clone, Default)]
pub(crate) struct Seen {
    pub(crate) published: Arc<Mutex<Vec<(&'static str, i64)>>>,
    pub(crate) started: Arc<Notify>,
    pub(crate) release: Arc<Notify>,
}

/// The `Mistake` whose publish waits for [`Seen::release`].
const HOLD: i64 = 100;

impl Seen {
    fn saw(&self, name: &'static str) -> Vec<i64> {
        let seen = self.published.lock().unwrap();
        seen.iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .collect()
    }

    /// A negative `Mistake` is rejected (it dies after one attempt).
    fn publishers(&self) -> Publishers {
        let (mistakes, kept) = (self.clone(), self.clone());
        Publishers::builder()
            .on(move |m: Recorded<Mistake>| {
                let seen = mistakes.clone();
                async move {
                    let n = m.event().n;
                    if n == HOLD {
                        seen.started.notify_one();
                        seen.release.notified().await;
                    }
                    seen.published.lock().unwrap().push(("mistake", n));
                    if n < 0 {
                        Err(PublishError::rejected("no such mistake"))
                    } else {
                        Ok(())
                    }
                }
            })
            .on(move |k: Recorded<Kept>| {
                let seen = kept.clone();
                async move {
                    seen.published.lock().unwrap().push(("kept", k.event().n));
                    Ok(())
                }
            })
            .build()
            .unwrap()
    }
}

async fn record<DB: Backend, E: outbox::Event>(
    pool: &sqlx::Pool<DB>,
    outbox: &Outbox<DB>,
    event: &E,
    meta: Metadata,
) -> Uuid {
    let mut conn = pool.acquire().await.unwrap();
    outbox
        .record_with(&mut conn, event, meta)
        .await
        .unwrap()
        .event_id()
        .unwrap()
}

/// Discard by id and by name: only pending entries of that id or name go,
/// other names and dead letters stay, a discarded entry is never published,
/// and an entry a relay is publishing right now is left to the relay until
/// its lease runs out. Dead letters carry their headers and ids, and a
/// stored headers value that is not a string map reads as empty with a
/// note. `quote` quotes the table name in this database's SQL.
pub(crate) async fn discard_and_dead_letter_headers<DB: Backend>(
    pool: &sqlx::Pool<DB>,
    table: &str,
    quote: char,
) where
    for<'c> &'c sqlx::Pool<DB>: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    let outbox = Outbox::builder(pool.clone())
        .table(table)
        .max_attempts(1)
        .backoff(Backoff::none())
        .build()
        .await
        .unwrap();
    let seen = Seen::default();
    let publishers = Arc::new(seen.publishers());

    // A dead letter named like the mistakes, with headers and ids.
    let (correlation, causation) = (Uuid::now_v7(), Uuid::now_v7());
    let meta = Metadata::new()
        .header("tenant", "acme")
        .header("x-reason", "a test")
        .correlation_id(correlation)
        .causation_id(causation);
    let dead_id = record(pool, &outbox, &Mistake { n: -1 }, meta).await;
    assert_eq!(outbox.run(&publishers, 10).await.unwrap().dead, 1);
    let dead = outbox.dead_letter(dead_id).await.unwrap().unwrap();
    let expected: Headers = [("tenant", "acme"), ("x-reason", "a test")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(dead.headers, expected, "{dead:?}");
    assert_eq!(dead.headers_error, None);
    assert_eq!(dead.correlation_id, Some(correlation));
    assert_eq!(dead.causation_id, Some(causation));
    assert_eq!(
        outbox.dead_letters(10).await.unwrap(),
        std::slice::from_ref(&dead)
    );

    // Pending: three mistakes and two kept entries.
    let mut mistakes = Vec::new();
    for n in 1..=3 {
        mistakes.push(record(pool, &outbox, &Mistake { n }, Metadata::new()).await);
    }
    for n in 1..=2 {
        record(pool, &outbox, &Kept { n }, Metadata::new().header("k", "v")).await;
    }

    assert!(outbox.discard(mistakes[0]).await.unwrap());
    assert!(!outbox.discard(mistakes[0]).await.unwrap(), "already gone");
    assert!(!outbox.discard(Uuid::now_v7()).await.unwrap(), "no such id");
    assert!(!outbox.discard(dead_id).await.unwrap(), "a dead letter");
    assert_eq!(outbox.discard_named("discard.mistake").await.unwrap(), 2);
    assert_eq!(outbox.discard_named("discard.mistake").await.unwrap(), 0);
    assert_eq!(outbox.discard_named("discard.nothing").await.unwrap(), 0);
    let stats = outbox.stats().await.unwrap();
    assert_eq!((stats.pending, stats.dead), (2, 1), "{stats:?}");
    assert_eq!(
        outbox.dead_letters(10).await.unwrap(),
        std::slice::from_ref(&dead)
    );

    // The discarded ones are never published; the others are, once.
    let report = outbox.run(&publishers, 10).await.unwrap();
    assert_eq!((report.claimed, report.published), (2, 2), "{report:?}");
    assert_eq!(outbox.run(&publishers, 10).await.unwrap().claimed, 0);
    assert_eq!(seen.saw("mistake"), [-1], "only the dead letter's attempt");
    assert_eq!(seen.saw("kept"), [1, 2]);
    assert_eq!(outbox.stats().await.unwrap().pending, 0);

    // An entry a relay is publishing: left alone while the claim is live.
    let held = record(pool, &outbox, &Mistake { n: HOLD }, Metadata::new()).await;
    let run = tokio::spawn({
        let (outbox, publishers) = (outbox.clone(), Arc::clone(&publishers));
        async move { outbox.run(&publishers, 10).await.unwrap() }
    });
    seen.started.notified().await;
    assert!(!outbox.discard(held).await.unwrap(), "claimed right now");
    assert_eq!(outbox.discard_named("discard.mistake").await.unwrap(), 0);
    seen.release.notify_one();
    let report = run.await.unwrap();
    assert_eq!((report.published, report.lost), (1, 0), "{report:?}");
    assert_eq!(seen.saw("mistake"), [-1, HOLD]);

    // A relay that dies holding a claim: discarded once its lease ran out.
    let lease = Duration::from_millis(1500);
    let short = Outbox::builder(pool.clone())
        .table(table)
        .lease(lease)
        .build()
        .await
        .unwrap();
    let orphan = record(pool, &short, &Mistake { n: HOLD }, Metadata::new()).await;
    let claimed_before = tokio::time::Instant::now();
    let run = tokio::spawn({
        let (short, publishers) = (short.clone(), Arc::clone(&publishers));
        async move { short.run(&publishers, 10).await }
    });
    seen.started.notified().await;
    run.abort();
    assert!(run.await.unwrap_err().is_cancelled());
    assert!(!short.discard(orphan).await.unwrap(), "the lease is live");
    tokio::time::sleep_until(claimed_before + lease + Duration::from_millis(300)).await;
    assert!(short.discard(orphan).await.unwrap(), "the lease ran out");
    assert_eq!(short.run(&publishers, 10).await.unwrap().claimed, 0);
    assert_eq!(seen.saw("mistake"), [-1, HOLD], "the orphan never went out");

    // Headers that are not a string map: empty, with a note; the listing works.
    let q = quote;
    let corrupt =
        format!("UPDATE {q}{table}{q} SET headers = '{{\"n\": [1]}}' WHERE status = 'dead'");
    sqlx::query::<DB>(sqlx::AssertSqlSafe(corrupt))
        .execute(pool)
        .await
        .unwrap();
    let listed = outbox.dead_letters(10).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(listed[0].headers.is_empty(), "{listed:?}");
    let note = listed[0].headers_error.as_deref().unwrap();
    assert!(note.contains("not decode as a string map"), "{note}");
    assert_eq!(listed[0].correlation_id, Some(correlation));
}
