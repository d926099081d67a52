//! The processes of a scenario: relay processes of service A and consumer
//! processes of service B, started, killed with SIGKILL and started again by slot;
//! every consumer process logs the messages it took from the broker to a
//! file of its own.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::broker::{BrokerSetup, nats_url};
use crate::fault_support::{amqp_url, database_url};

/// Entries per claim in the relay processes.
const BATCH: &str = "100";
/// The relays' lease: a killed relay's batch is published again once it expires.
const LEASE_MS: &str = "3000";
/// The pause between a broker's confirm and the outcome commit: the
/// window in which a relay kill makes a duplicate for the inbox to skip.
const SETTLE_DELAY_MS: &str = "20";

/// What a consumer process printed when it stopped gracefully.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    pub processed: u64,
    pub duplicates: u64,
    pub dead: u64,
}

pub struct Fleet {
    relays: Vec<Option<Child>>,
    consumers: Vec<Option<Child>>,
    relay_args: Vec<String>,
    consumer_args: Vec<String>,
    consumer_app: String,
    logs: PathBuf,
    /// Delivery logs of every consumer process started, by instance.
    log_files: Vec<PathBuf>,
    /// The instance running in each consumer slot.
    instance: Vec<usize>,
}

impl Fleet {
    pub fn new(
        base: &str,
        setup: &BrokerSetup,
        outbox_table: &str,
        inbox_table: &str,
        b_business: &str,
        consumer_app: &str,
    ) -> Self {
        let logs = std::env::temp_dir().join(base);
        std::fs::create_dir_all(&logs).unwrap();
        let mut relay_args = vec![outbox_table.to_owned()];
        relay_args.extend(setup.relay_args());
        let mut consumer_args = vec![inbox_table.to_owned(), b_business.to_owned()];
        consumer_args.extend(setup.consumer_args());
        Self {
            relays: Vec::new(),
            consumers: Vec::new(),
            relay_args,
            consumer_args,
            consumer_app: consumer_app.to_owned(),
            logs,
            log_files: Vec::new(),
            instance: Vec::new(),
        }
    }

    fn relay(&self) -> Child {
        Command::new(env!("CARGO_BIN_EXE_outbox-fault-relay"))
            .args(&self.relay_args)
            .env("DATABASE_URL", database_url())
            .env("AMQP_URL", amqp_url())
            .env("NATS_URL", nats_url())
            .env("FAULT_BATCH", BATCH)
            .env("FAULT_LEASE_MS", LEASE_MS)
            .env("FAULT_SETTLE_DELAY_MS", SETTLE_DELAY_MS)
            .env("FAULT_MAX_PAUSE_MS", "1000")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("outbox-fault-relay starts")
    }

    fn consumer(&mut self) -> (Child, usize) {
        let n = self.log_files.len();
        let log = self.logs.join(format!("consumer-{n}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_outbox-test-consumer"))
            .args(&self.consumer_args)
            .env("DATABASE_URL", database_url())
            .env("AMQP_URL", amqp_url())
            .env("NATS_URL", nats_url())
            .env("FAULT_APP_NAME", &self.consumer_app)
            .env("FAULT_DELIVERY_LOG", &log)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("outbox-test-consumer starts");
        self.log_files.push(log);
        (child, n)
    }

    pub fn spawn_relay(&mut self) {
        let child = self.relay();
        self.relays.push(Some(child));
    }

    pub fn spawn_relay_at(&mut self, slot: usize) {
        self.relays[slot] = Some(self.relay());
    }

    pub fn spawn_consumer(&mut self) {
        let (child, n) = self.consumer();
        self.consumers.push(Some(child));
        self.instance.push(n);
    }

    pub fn spawn_consumer_at(&mut self, slot: usize) {
        let (child, n) = self.consumer();
        self.consumers[slot] = Some(child);
        self.instance[slot] = n;
    }

    pub fn kill_relay(&mut self, slot: usize) {
        let mut child = self.relays[slot].take().expect("a relay runs in the slot");
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }

    /// SIGKILLs the consumer in `slot`; returns the ids of the messages it
    /// had taken from the broker.
    pub fn kill_consumer(&mut self, slot: usize) -> HashSet<Uuid> {
        let mut child = self.consumers[slot]
            .take()
            .expect("a consumer runs in the slot");
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        read_log(&self.log_files[self.instance[slot]])
            .into_iter()
            .collect()
    }

    /// Sends SIGINT to every consumer and waits for each to exit (0) with
    /// its report.
    pub async fn stop_consumers(&mut self) -> Vec<Report> {
        let mut reports = Vec::new();
        for slot in 0..self.consumers.len() {
            let mut child = self.consumers[slot]
                .take()
                .expect("a consumer runs in the slot");
            let pid = child.id().to_string();
            assert!(
                Command::new("kill")
                    .args(["-INT", &pid])
                    .status()
                    .unwrap()
                    .success(),
                "kill -INT {pid}"
            );
            let asked = Instant::now();
            let status = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break status;
                }
                assert!(
                    asked.elapsed() < Duration::from_secs(30),
                    "consumer {pid} still runs 30 s after SIGINT"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let mut out = String::new();
            child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut out)
                .unwrap();
            assert!(
                status.success(),
                "consumer {pid} exited with {status}: {out}"
            );
            reports.push(parse_report(&out));
        }
        reports
    }

    /// The ids of every message every consumer process took, in log order
    /// (an id twice: a redelivery).
    pub fn deliveries(&self) -> Vec<Uuid> {
        self.log_files
            .iter()
            .map(PathBuf::as_path)
            .flat_map(read_log)
            .collect()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in self.relays.iter_mut().chain(&mut self.consumers).flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.logs);
    }
}

fn read_log(path: &Path) -> Vec<Uuid> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        // The last line of a killed process may be cut short.
        .filter_map(|line| line.parse().ok())
        .collect()
}

fn parse_report(out: &str) -> Report {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("report: "))
        .unwrap_or_else(|| panic!("no report line in {out:?}"));
    let mut report = Report::default();
    for field in line.split_whitespace() {
        let (key, value) = field.split_once('=').unwrap();
        let value: u64 = value.parse().unwrap();
        match key {
            "processed" => report.processed = value,
            "duplicates" => report.duplicates = value,
            "dead" => report.dead = value,
            _ => {}
        }
    }
    report
}
