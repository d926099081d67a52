//! The relays of a scenario: a publisher wrapper that timestamps every
//! confirmed batch (so a test can tell when a relay resumed), the
//! publishers every relay uses, a relay driven by `Outbox::run` whose
//! publishers the test can watch, and stop switches.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outbox::publisher::Blocked;
use outbox::publisher::amqp::AmqpPublisher;
use outbox::{
    Entry, Event, Outbox, PublishResult, Publisher, Publishers, RawPublisher, Recorded, Report,
};
use sqlx::Postgres;

use super::Tick;

/// Wraps the RabbitMQ publisher and timestamps every batch that was
/// confirmed, so a test can tell when a relay resumed after a fault.
#[derive(Clone)]
pub struct Tap {
    rabbit: AmqpPublisher,
    log: Arc<Mutex<Vec<(Instant, usize)>>>,
}

impl Tap {
    pub fn new(rabbit: AmqpPublisher) -> Self {
        Self {
            rabbit,
            log: Arc::default(),
        }
    }

    fn note(&self, results: &[PublishResult]) {
        let ok = results.iter().filter(|r| r.is_ok()).count();
        if ok > 0 {
            self.log.lock().unwrap().push((Instant::now(), ok));
        }
    }

    /// When the first publish confirmed after `t` happened.
    pub fn first_ok_after(&self, t: Instant) -> Option<Instant> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|(at, _)| *at)
            .find(|at| *at > t)
    }

    /// Messages confirmed so far.
    pub fn confirmed(&self) -> usize {
        self.log.lock().unwrap().iter().map(|(_, n)| n).sum()
    }

    /// Messages confirmed between `from` and `to`.
    pub fn confirmed_between(&self, from: Instant, to: Instant) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| *at > from && *at <= to)
            .map(|(_, n)| n)
            .sum()
    }
}

impl<E: Event> Publisher<E> for Tap {
    async fn publish(&self, event: &Recorded<E>) -> PublishResult {
        let results = self.publish_batch(std::slice::from_ref(event)).await;
        results.into_iter().next().unwrap_or(Ok(()))
    }

    async fn publish_batch(&self, events: &[Recorded<E>]) -> Vec<PublishResult> {
        let results = Publisher::<E>::publish_batch(&self.rabbit, events).await;
        self.note(&results);
        results
    }
}

impl RawPublisher for Tap {
    async fn publish_raw(&self, entry: &Entry) -> PublishResult {
        let results = self.publish_raw_batch(std::slice::from_ref(entry)).await;
        results.into_iter().next().unwrap_or(Ok(()))
    }

    async fn publish_raw_batch(&self, entries: &[Entry]) -> Vec<PublishResult> {
        let results = self.rabbit.publish_raw_batch(entries).await;
        self.note(&results);
        results
    }
}

/// The longest pause of a blocked publisher in every scenario (the
/// library's default is 30 s): while RabbitMQ is down the relay probes it at
/// least this often, so it resumes within about this long of its return.
pub const MAX_PAUSE: Duration = Duration::from_secs(2);

/// The publishers of an in-process relay: ticks typed, anything else raw;
/// a blocked one pauses for at most [`MAX_PAUSE`].
pub fn tap_publishers(tap: &Tap) -> Publishers {
    Publishers::builder()
        .max_pause(MAX_PAUSE)
        .publisher::<Tick, _>(tap.clone())
        .fallback(tap.clone())
        .build()
        .unwrap()
}

/// A future that completes when a relay loop should stop.
pub type Signal = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// A stop switch for relay loops: `signal()` makes a future for each loop,
/// `stop.send(true)` completes them all.
pub fn stop_signal() -> (tokio::sync::watch::Sender<bool>, impl Fn() -> Signal) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let make = move || {
        let mut rx = rx.clone();
        Box::pin(async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }) as Signal
    };
    (tx, make)
}

/// A relay that calls [`Outbox::run`] in a loop of its own (as a user's
/// scheduled job would) instead of `Outbox::relay`: the relay loop keeps
/// its `Publishers` to itself, this one lets the test ask them which are
/// blocked ([`Publishers::blocked`]) while it runs.
pub struct RunLoop {
    publishers: Arc<Publishers>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Report>,
}

impl RunLoop {
    /// Runs batches of `limit` until stopped: at once after a full batch,
    /// 50 ms after one that was not, 200 ms after a database error.
    pub fn spawn(outbox: Outbox<Postgres>, publishers: Publishers, limit: usize) -> Self {
        let publishers = Arc::new(publishers);
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (publishers, stop) = (publishers.clone(), stop.clone());
            async move {
                let mut totals = Report::default();
                while !stop.load(Ordering::Relaxed) {
                    match outbox.run(&publishers, limit).await {
                        Ok(report) => {
                            totals += report;
                            if report.claimed < limit {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                        Err(err) => {
                            eprintln!("run loop: {err}");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
                totals
            }
        });
        Self {
            publishers,
            stop,
            task,
        }
    }

    /// Its publishers that are blocked now.
    pub fn blocked(&self) -> Vec<Blocked> {
        self.publishers.blocked()
    }

    /// Its publishers, to watch from another task.
    pub fn publishers(&self) -> Arc<Publishers> {
        self.publishers.clone()
    }

    /// Stops after the batch in flight; returns the totals.
    pub async fn stop(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the run loop never panics")
    }
}
