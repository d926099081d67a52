//! The shared local services a scenario stops, kills and starts again:
//! RabbitMQ and PostgreSQL, on their standard ports of 127.0.0.1.
//!
//! Every way down has a guard that brings the service back when it is
//! dropped, even if the test panics, and every scenario that takes a
//! service down first checks that both are up ([`ensure_rabbit`],
//! [`ensure_postgres`]), starting one that an earlier run left down. These
//! functions block: call them from `spawn_blocking`.

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use super::database_url;

/// RabbitMQ's AMQP port.
pub const AMQP_PORT: u16 = 5672;
/// PostgreSQL's port.
pub const POSTGRES_PORT: u16 = 5432;
/// The longest a service may take to come back (a RabbitMQ boot after a
/// SIGKILL recovers its queues first).
const COME_BACK_WITHIN: Duration = Duration::from_mins(1);

fn run(program: &str, args: &[&str]) -> bool {
    let started = Instant::now();
    let status = Command::new(program).args(args).status();
    eprintln!(
        "{program} {}: {status:?} in {:?}",
        args.join(" "),
        started.elapsed()
    );
    status.is_ok_and(|s| s.success())
}

pub fn rabbitmqctl(arg: &str) -> bool {
    run("rabbitmqctl", &[arg])
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .is_ok()
}

// ------------------------------------------------------------- RabbitMQ

/// The OS pid of the local RabbitMQ node: its `beam.smp` process, the one
/// booted with `-s rabbit boot` (`rabbitmqctl` runs on a `beam.smp` too).
pub fn rabbit_pid() -> Option<u32> {
    let out = Command::new("pgrep")
        .args(["-f", "beam.smp.*-s rabbit boot"])
        .output()
        .expect("pgrep runs");
    let pids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect();
    match pids.as_slice() {
        [] => None,
        [pid] => Some(*pid),
        more => panic!("more than one RabbitMQ node runs: {more:?}"),
    }
}

/// Waits until 127.0.0.1:`port` accepts connections (checking every 20
/// ms); returns when it first did, or `None` if not within `within`.
pub fn wait_port(port: u16, within: Duration) -> Option<Instant> {
    let started = Instant::now();
    while !port_open(port) {
        if started.elapsed() > within {
            eprintln!("nothing accepted connections on port {port} within {within:?}");
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(Instant::now())
}

/// Waits until RabbitMQ accepts connections and `rabbitmqctl await_startup`
/// succeeds; returns when the port first accepted, or `None` if that did
/// not happen within `within`.
fn wait_rabbit(within: Duration) -> Option<Instant> {
    let started = Instant::now();
    let accepting = wait_port(AMQP_PORT, within)?;
    while !rabbitmqctl("await_startup") {
        if started.elapsed() > within {
            eprintln!("rabbitmqctl await_startup did not succeed within {within:?}");
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Some(accepting)
}

/// Starts the local RabbitMQ: its application if the node runs (after
/// `stop_app`), the node otherwise (after a kill).
fn start_rabbit() -> bool {
    if rabbit_pid().is_some() {
        rabbitmqctl("start_app")
    } else {
        run("rabbitmq-server", &["-detached"])
    }
}

/// Checks, before a scenario, that RabbitMQ is up; brings it back first if
/// an earlier run left it down.
pub fn ensure_rabbit() {
    if port_open(AMQP_PORT) {
        return;
    }
    eprintln!("RabbitMQ is down before the scenario: starting it");
    start_rabbit();
    assert!(
        wait_rabbit(COME_BACK_WITHIN).is_some(),
        "RabbitMQ is down and did not start"
    );
}

/// RabbitMQ's application stopped with `rabbitmqctl stop_app` (the node
/// keeps running); started again with `start_app` when dropped, whatever
/// happened.
pub struct RabbitGuard;

impl RabbitGuard {
    pub fn stop_app() -> Self {
        let guard = Self;
        assert!(rabbitmqctl("stop_app"), "rabbitmqctl stop_app failed");
        guard
    }
}

impl Drop for RabbitGuard {
    fn drop(&mut self) {
        if !rabbitmqctl("start_app") {
            eprintln!("guard: rabbitmqctl start_app failed");
        }
    }
}

/// The RabbitMQ node killed with SIGKILL, as a crash, an OOM kill or a lost
/// host would: no connection is closed, nothing is flushed. The node is
/// started again (`rabbitmq-server -detached`) when this is dropped unless
/// [`restart`](Self::restart) already did, whatever happened.
pub struct RabbitKill {
    down: bool,
}

impl RabbitKill {
    /// SIGKILLs the node's `beam.smp`; returns once it is gone and nothing
    /// accepts connections on the AMQP port.
    pub fn kill() -> Self {
        let pid = rabbit_pid().expect("the local RabbitMQ node (beam.smp) runs");
        let guard = Self { down: true };
        assert!(
            run("kill", &["-9", &pid.to_string()]),
            "kill -9 {pid} failed"
        );
        let started = Instant::now();
        while rabbit_pid().is_some() || port_open(AMQP_PORT) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "RabbitMQ ({pid}) still runs 10 s after SIGKILL"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        guard
    }

    /// Starts the node again and waits until it accepts connections and
    /// `rabbitmqctl await_startup` succeeds; returns when the port first
    /// accepted.
    pub fn restart(mut self) -> Instant {
        assert!(
            run("rabbitmq-server", &["-detached"]),
            "rabbitmq-server -detached failed"
        );
        let accepting = wait_rabbit(COME_BACK_WITHIN).expect("RabbitMQ came back");
        self.down = false;
        accepting
    }
}

impl Drop for RabbitKill {
    fn drop(&mut self) {
        if !self.down || port_open(AMQP_PORT) {
            return;
        }
        eprintln!("guard: starting the killed RabbitMQ again");
        if rabbit_pid().is_none() {
            run("rabbitmq-server", &["-detached"]);
        }
        if wait_rabbit(COME_BACK_WITHIN).is_none() {
            eprintln!("guard: RabbitMQ did not come back");
        }
    }
}

// ----------------------------------------------------------- PostgreSQL

/// The local cluster's version directory (`ls /etc/postgresql`).
pub fn pg_version() -> String {
    let mut versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .expect("/etc/postgresql")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    versions.sort();
    versions.pop().expect("a PostgreSQL cluster")
}

/// `pg_ctlcluster --skip-systemctl-redirect <version> main <action...>`.
pub fn pg_ctlcluster(action: &[&str]) -> bool {
    let version = pg_version();
    let mut args = vec!["--skip-systemctl-redirect", &version, "main"];
    args.extend_from_slice(action);
    run("pg_ctlcluster", &args)
}

/// Checks, before a scenario, that PostgreSQL is up; starts the cluster
/// first if an earlier run left it down.
pub fn ensure_postgres() {
    if port_open(POSTGRES_PORT) {
        return;
    }
    eprintln!("PostgreSQL is down before the scenario: starting it");
    pg_ctlcluster(&["start"]);
    assert!(
        wait_port(POSTGRES_PORT, COME_BACK_WITHIN).is_some(),
        "PostgreSQL is down and did not start"
    );
}

/// The PostgreSQL cluster stopped; started again when dropped, whatever
/// happened (starting a running cluster only prints that it runs).
pub struct PostgresGuard;

impl PostgresGuard {
    /// `stop -m fast`: clients are disconnected, running transactions roll
    /// back, a checkpoint is written.
    pub fn stop() -> Self {
        let guard = Self;
        assert!(
            pg_ctlcluster(&["stop", "-m", "fast"]),
            "pg_ctlcluster stop failed"
        );
        guard
    }

    /// `stop -m immediate`: every server process quits at once, as in a
    /// crash or a power loss; no checkpoint, and the next start replays the
    /// WAL (crash recovery).
    pub fn stop_immediate() -> Self {
        let guard = Self;
        assert!(
            pg_ctlcluster(&["stop", "-m", "immediate"]),
            "pg_ctlcluster stop -m immediate failed"
        );
        guard
    }
}

impl Drop for PostgresGuard {
    fn drop(&mut self) {
        if !pg_ctlcluster(&["start"]) {
            // Already running, or it failed: `status` says which.
            pg_ctlcluster(&["status"]);
        }
    }
}

/// Waits until PostgreSQL accepts a query again.
pub async fn wait_postgres(within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if let Ok(mut conn) =
            <sqlx::PgConnection as sqlx::Connection>::connect(&database_url()).await
            && sqlx::query("SELECT 1").execute(&mut conn).await.is_ok()
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "PostgreSQL did not come back within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
