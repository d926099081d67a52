//! A relay loop running in the background of a broker test (stopped on
//! demand, or when the test fails and drops it), and waiting for a
//! condition with a deadline.

#![allow(dead_code)] // Reason: each test binary uses a different subset of the helpers.
#![allow(unreachable_pub)] // Reason: shared by several test crates through `mod relay_support`.

use std::future::Future;
use std::time::{Duration, Instant};

use outbox::{Backend, Outbox, Publishers, Report};

/// A relay loop over `publishers` in the background, until
/// [`stop`](Self::stop), or until dropped (a failing test).
pub struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Report>,
}

impl Running {
    /// Polls every 50 ms at most; no stats refresh of its own.
    pub fn start<DB: Backend>(outbox: &Outbox<DB>, publishers: Publishers) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let relay = outbox
            .relay(publishers)
            .poll_interval(Duration::from_millis(50))
            .stats_interval(None);
        let task = tokio::spawn(relay.run(async {
            let _ = stopped.await;
        }));
        Self { stop, task }
    }

    /// Stops after the batch in flight; the loop's totals.
    pub async fn stop(self) -> Report {
        let _ = self.stop.send(());
        self.task.await.unwrap()
    }
}

/// Polls `check` every 20 ms until it holds; fails after `within`.
pub async fn until<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `outbox.run` by hand (batches of 100, 50 ms apart) for about
/// `time`; the summed report.
pub async fn run_for<DB: Backend>(
    outbox: &Outbox<DB>,
    publishers: &Publishers,
    time: Duration,
) -> Report {
    let started = Instant::now();
    let mut total = Report::default();
    while started.elapsed() < time {
        total += outbox.run(publishers, 100).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    total
}
