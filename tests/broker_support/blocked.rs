//! A publisher whose destination is misconfigured: probing it while it is
//! blocked, checking that nothing was charged, and letting the relay loop
//! resume once the test fixes the broker's side.

use std::time::Duration;

use outbox::{Outbox, Publishers, Report};
use sqlx::{Sqlite, SqlitePool};

use super::{Expected, Received, check_contents};

/// Runs the outbox again and again for `within` while its publishers are
/// blocked, and returns the totals.
pub async fn probe(outbox: &Outbox<Sqlite>, publishers: &Publishers, within: Duration) -> Report {
    let mut total = Report::default();
    let end = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < end {
        total += outbox.run(publishers, 100).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    total
}

/// Nothing was charged: no delivery, no attempt, no dead letter; every
/// entry is still pending with 0 attempts, and every publisher is blocked
/// with a reason that contains each of `reason`.
pub async fn assert_blocked_at_no_cost(
    outbox: &Outbox<Sqlite>,
    pool: &SqlitePool,
    publishers: &Publishers,
    total: &Report,
    n: i64,
    reason: &[&str],
) {
    assert!(total.unavailable >= 1, "never tried: {total:?}");
    assert_eq!(total.published + total.retried + total.dead, 0, "{total:?}");
    assert!(outbox.dead_letters(100).await.unwrap().is_empty());
    assert_eq!(super::pending(pool).await, n);
    let attempts: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(attempts), 0) FROM outbox")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(attempts, 0, "an attempt was counted");

    let blocked = publishers.blocked();
    eprintln!("blocked: {blocked:#?}");
    let labels: Vec<&str> = blocked.iter().map(|b| b.publisher.as_str()).collect();
    assert_eq!(labels, ["*", "shop.order_placed"], "{blocked:?}");
    for b in &blocked {
        for part in reason {
            assert!(b.reason.contains(part), "{part:?} not in {:?}", b.reason);
        }
        assert!(!b.reason.contains("guest:guest"), "{}", b.reason);
    }
    // The relay wrote it where `outbox status` and other processes see it.
    let stats = outbox.stats().await.unwrap();
    assert_eq!(stats.blocked.len(), 2, "{:?}", stats.blocked);
}

/// Hands `publishers` to the relay loop, lets `fix` repair the broker's
/// side, waits until the outbox is empty, and returns the relay's totals.
pub async fn relay_after(
    outbox: &Outbox<Sqlite>,
    pool: &SqlitePool,
    publishers: Publishers,
    fix: impl Future<Output = ()>,
) -> Report {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(
        outbox
            .relay(publishers)
            .poll_interval(Duration::from_millis(20))
            .run(async {
                let _ = stopped.await;
            }),
    );
    fix.await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while super::pending(pool).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay did not resume within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(()).unwrap();
    let report = relay.await.unwrap();
    assert_eq!(report.dead + report.retried, 0, "{report:?}");
    assert!(outbox.dead_letters(100).await.unwrap().is_empty());
    assert!(outbox.stats().await.unwrap().blocked.is_empty());
    report
}

/// Every recorded event arrived exactly once, in any order: entries that a
/// blocked publisher gave back go out again in the order they fall due,
/// which without `ordered_streams` need not be the order they were
/// recorded in.
pub fn check_exactly_once(
    expected: &[Expected],
    received: &[Received],
    stream_key_header: &str,
    correlation_header: &str,
) {
    assert_eq!(received.len(), expected.len(), "message count");
    let duplicates = check_contents(expected, received, stream_key_header, correlation_header);
    assert_eq!(duplicates, 0, "duplicates");
}
