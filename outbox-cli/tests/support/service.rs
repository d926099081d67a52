//! Long-running `outbox` processes (`relay --listen`, `dashboard`) and the
//! HTTP requests the tests make to them.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound and released; the test binds it
/// next, so a clash is very unlikely).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process with its stdout and stderr collected as they come.
pub struct Service {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

fn collect(mut from: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&text);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

impl Service {
    pub fn start(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the process starts");
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        Self {
            child,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Its exit code if it has exited.
    pub fn exited(&mut self) -> Option<i32> {
        self.child
            .try_wait()
            .unwrap()
            .map(|s| s.code().unwrap_or(-1))
    }

    /// Sends SIGTERM and waits at most `within` for the exit; returns the
    /// exit code, stdout and stderr.
    pub fn terminate(mut self, within: Duration) -> (i32, String, String) {
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let deadline = Instant::now() + within;
        let code = loop {
            if let Some(code) = self.exited() {
                break code;
            }
            assert!(
                Instant::now() < deadline,
                "no exit within {within:?} of SIGTERM: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        // The reader threads finish with the pipes.
        std::thread::sleep(Duration::from_millis(100));
        let stdout = self.stdout.lock().unwrap().clone();
        (code, stdout, self.stderr())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP answer: status and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|err| panic!("not JSON ({err}): {self:?}"))
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn answer(res: reqwest::Response) -> Answer {
    let status = res.status().as_u16();
    let content_type = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    Answer {
        status,
        content_type,
        body: res.text().await.unwrap(),
    }
}

/// `GET url`; `None` if nothing answers.
pub async fn try_get(url: &str) -> Option<Answer> {
    match client().get(url).send().await {
        Ok(res) => Some(answer(res).await),
        Err(_) => None,
    }
}

/// `GET url` (something must answer).
pub async fn get(url: &str) -> Answer {
    try_get(url)
        .await
        .unwrap_or_else(|| panic!("nothing answers at {url}"))
}

/// `POST url`, with `Authorization: Bearer TOKEN` if a token is given.
pub async fn post(url: &str, token: Option<&str>) -> Answer {
    let mut req = client().post(url);
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    answer(req.send().await.unwrap()).await
}

/// Waits (at most `within`) until `url` answers 200; panics with the
/// service's stderr otherwise.
pub async fn wait_ready(service: &mut Service, url: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if let Some(a) = try_get(url).await
            && a.status == 200
        {
            return;
        }
        if let Some(code) = service.exited() {
            panic!(
                "exited with {code} before {url} answered: {}",
                service.stderr()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{url} not 200 within {within:?}: {}",
            service.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `check` every 100 ms until it returns `Some`, for at most `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
