//! A nats-server of the test's own (JetStream, a store in a temp dir, a
//! free port), which the test kills and starts again: the shared NATS on
//! 4222 is never stopped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};

use super::service::free_port;

const NATS_SERVER: &str = "/usr/sbin/nats-server";

pub struct Nats {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Nats {
    /// Starts it and waits until it accepts connections. The free port may
    /// be taken by another test between choosing and binding it: then the
    /// server exits, and it starts again on another port.
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("outbox-cli-nats-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut nats = Self {
            port: free_port(),
            dir,
            child: None,
        };
        for _ in 0..5 {
            if nats.spawn() {
                return nats;
            }
            nats.port = free_port();
        }
        panic!("{NATS_SERVER} did not stay up on 5 free ports");
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server again (same port, same store).
    pub fn restart(&mut self) {
        assert!(self.spawn(), "{NATS_SERVER} exited on port {}", self.port);
    }

    /// Starts the server and waits until it accepts connections; false if
    /// it exited first (its port was taken).
    fn spawn(&mut self) -> bool {
        assert!(self.child.is_none(), "already running");
        let mut child = Command::new(NATS_SERVER)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("{NATS_SERVER} does not start: {err}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if child.try_wait().unwrap().is_some() {
                return false;
            }
            // Up, and ours: a NATS server greets on the port (not another
            // test's listener) while the child still runs.
            if nats_greets(self.port) {
                if child.try_wait().unwrap().is_none() {
                    self.child = Some(child);
                    return true;
                }
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server not up on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs the server.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// A file-backed stream capturing `<prefix>.>` (it survives restarts).
    pub async fn stream(&self, prefix: &str) -> jetstream::Context {
        let client = async_nats::connect(self.url()).await.unwrap();
        let js = jetstream::new(client);
        js.create_stream(stream::Config {
            name: prefix.replace(['.', '-'], "_"),
            subjects: vec![format!("{prefix}.>")],
            storage: stream::StorageType::File,
            ..stream::Config::default()
        })
        .await
        .unwrap();
        js
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether a NATS server answers on `port` (it sends `INFO {..}` first).
fn nats_greets(port: u16) -> bool {
    use std::io::Read;
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut greeting = [0_u8; 5];
    stream.read_exact(&mut greeting).is_ok() && &greeting == b"INFO "
}
