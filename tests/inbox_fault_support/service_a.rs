//! Service A: writer tasks recording events in transactions of 1 to 10
//! events, 30% of which roll back, until a number of events committed.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox::Outbox;
use sqlx::Postgres;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::fault_support::{Rng, pool, record_ticks};

/// Writer tasks of service A.
const WRITERS: usize = 4;
/// Share of the transactions that roll back, in percent.
const ROLLBACK_PERCENT: u64 = 30;

pub struct Writers {
    committed: Arc<AtomicUsize>,
    rolled_back: Arc<Mutex<Vec<Uuid>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Writers {
    /// Starts the writers on the outbox `table` (and its `<table>_biz`);
    /// they stop once `events` events committed.
    pub async fn start(base: &str, table: &str, events: usize, rng: &mut Rng) -> Self {
        let pool = pool(&format!("{base}-a"), u32::try_from(WRITERS).unwrap()).await;
        let outbox: Outbox<Postgres> = Outbox::builder(pool.clone())
            .table(table.to_owned())
            .migrate(false)
            .build()
            .await
            .unwrap();
        let committed = Arc::new(AtomicUsize::new(0));
        let rolled_back = Arc::new(Mutex::new(Vec::new()));
        let next = Arc::new(AtomicI64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..WRITERS {
            let (outbox, pool, table) = (outbox.clone(), pool.clone(), table.to_owned());
            let (committed, rolled_back, next) =
                (committed.clone(), rolled_back.clone(), next.clone());
            let mut rng = rng.fork();
            tasks.push(tokio::spawn(async move {
                while committed.load(Ordering::Relaxed) < events {
                    let size = 1 + i64::try_from(rng.below(10)).unwrap();
                    let commit = !rng.percent(ROLLBACK_PERCENT);
                    let first = next.fetch_add(size, Ordering::Relaxed);
                    let ids = record_ticks(&outbox, &pool, &table, first, size, commit)
                        .await
                        .expect("service A's transactions go through");
                    if commit {
                        committed.fetch_add(ids.len(), Ordering::Relaxed);
                    } else {
                        rolled_back
                            .lock()
                            .unwrap()
                            .extend(ids.iter().map(|(id, _)| *id));
                    }
                    tokio::time::sleep(rng.millis(1, 12)).await;
                }
            }));
        }
        Self {
            committed,
            rolled_back,
            tasks,
        }
    }

    /// Events committed so far.
    pub fn committed(&self) -> usize {
        self.committed.load(Ordering::Relaxed)
    }

    /// Whether every writer has stopped.
    pub fn done(&self) -> bool {
        self.tasks.iter().all(JoinHandle::is_finished)
    }

    /// Waits for the writers; returns the events committed and the ids of
    /// the rolled-back ones.
    pub async fn finish(self) -> (usize, Vec<Uuid>) {
        for task in self.tasks {
            tokio::time::timeout(Duration::from_mins(1), task)
                .await
                .expect("the writers finish")
                .expect("no writer panicked");
        }
        let rolled_back = std::mem::take(&mut *self.rolled_back.lock().unwrap());
        (self.committed.load(Ordering::Relaxed), rolled_back)
    }
}
