//! The relay's gauges against `stats()`, on any database: a table holding
//! pending, retrying, dead and kept published entries, filled and drained
//! through the library only.

use std::time::Duration;

use outbox::{Backend, Backoff, Outbox, PublishError, Publishers, Recorded};
use serde::{Deserialize, Serialize};

/// What the publisher does with a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Fate {
    Publish,
    Reject,
}

#[derive(Debug, Serialize, Deserialize, outbox::Event)]
#[outbox(name = "gauges.probe")]
pub(crate) struct Probe {
    pub(crate) fate: Fate,
}

/// Publishes `Fate::Publish` probes and rejects the others.
pub(crate) fn publishers() -> Publishers {
    Publishers::builder()
        .on(|probe: Recorded<Probe>| async move {
            match probe.event().fate {
                Fate::Publish => Ok(()),
                Fate::Reject => Err(PublishError::rejected("the probe says no")),
            }
        })
        .build()
        .unwrap()
}

/// Records `n` probes of `fate` in one statement.
pub(crate) async fn record<DB: Backend>(
    pool: &sqlx::Pool<DB>,
    outbox: &Outbox<DB>,
    n: usize,
    fate: Fate,
) {
    let mut conn = pool.acquire().await.unwrap();
    let mut batch = outbox.batch();
    for _ in 0..n {
        batch.push(&Probe { fate }).unwrap();
    }
    batch.record(&mut conn).await.unwrap();
}

/// An outbox on `table` keeping published entries, with `attempts` per
/// entry and an hour of backoff (a retried entry stays put).
pub(crate) async fn outbox<DB: Backend>(
    pool: &sqlx::Pool<DB>,
    table: &str,
    attempts: u32,
) -> Outbox<DB> {
    Outbox::builder(pool.clone())
        .table(table)
        .keep_published(Duration::from_hours(1))
        .max_attempts(attempts)
        .backoff(Backoff::fixed(Duration::from_hours(1)))
        .build()
        .await
        .unwrap()
}

/// Runs until nothing is claimed.
pub(crate) async fn drain<DB: Backend>(outbox: &Outbox<DB>, publishers: &Publishers) {
    while outbox.run(publishers, 1000).await.unwrap().claimed > 0 {}
}

/// 3 dead letters, 5 kept published entries, 4 retrying and 2 fresh
/// pending ones: the gauges equal the totals of `stats()`.
pub(crate) async fn gauges_equal_stats<DB: Backend>(pool: &sqlx::Pool<DB>, table: &str) {
    let publishers = publishers();
    let once = outbox(pool, table, 1).await;
    let gauges = once.gauges().await.unwrap();
    assert_eq!((gauges.pending, gauges.dead), (0, 0), "{gauges:?}");
    assert_eq!(gauges.oldest_pending_age, None);

    record(pool, &once, 3, Fate::Reject).await;
    drain(&once, &publishers).await;
    let patient = outbox(pool, table, 5).await;
    record(pool, &patient, 5, Fate::Publish).await;
    record(pool, &patient, 4, Fate::Reject).await;
    drain(&patient, &publishers).await;
    record(pool, &patient, 2, Fate::Publish).await;

    let stats = patient.stats().await.unwrap();
    let gauges = patient.gauges().await.unwrap();
    assert_eq!(
        (stats.pending, stats.retrying, stats.dead, stats.published),
        (6, 4, 3, 5),
        "{stats:?}"
    );
    assert_eq!(gauges.pending, stats.pending, "{gauges:?} {stats:?}");
    assert_eq!(gauges.dead, stats.dead, "{gauges:?} {stats:?}");
    let (a, b) = (
        stats.oldest_pending_age.expect("an oldest pending entry"),
        gauges.oldest_pending_age.expect("an oldest pending entry"),
    );
    assert!(
        a.abs_diff(b) < Duration::from_secs(2),
        "stats {a:?}, gauges {b:?}"
    );
}
