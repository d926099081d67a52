//! The webhook endpoint the webhook suites post to: a small hyper server
//! started inside the test on a free port of 127.0.0.1, over plain HTTP or
//! TLS (tokio-rustls on ring, with a certificate from `tls_support`). It keeps every request it received, with the status it
//! answered.
//!
//! By default it answers by path: `/status/<code>` with that status and a
//! short body, `/sleep/<ms>` with 200 after that long, anything else with
//! 200. A test can replace that with its own [`Responder`] (which may also
//! hang up without answering), also while the
//! server runs ([`Server::respond_with`]: "the endpoint was fixed").

#![allow(dead_code)] // Reason: each test binary uses a different subset of the helpers.
#![allow(unreachable_pub)] // Reason: shared by several test crates through `mod webhook_support`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// One request as the server saw it, and what it answers.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Lower-cased names.
    pub headers: BTreeMap<String, String>,
    pub body: Bytes,
    /// The status it is answered with (after the reply's delay; logged on
    /// arrival, so a client that timed out never saw it).
    pub status: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// The event id the request carries (`Idempotency-Key`).
    pub fn event_id(&self) -> String {
        self.header("idempotency-key")
            .expect("every webhook request carries an Idempotency-Key")
            .to_owned()
    }
}

/// What to answer one request with.
#[derive(Debug, Clone, Copy)]
pub struct Reply {
    pub status: u16,
    /// Waited before answering.
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            delay: Duration::ZERO,
        }
    }

    pub fn after(self, delay: Duration) -> Self {
        Self { delay, ..self }
    }

    /// Closes the connection without answering (logged as status 0).
    pub fn hang_up() -> Self {
        Self::status(0)
    }
}

/// The error that makes hyper close a connection without a response.
#[derive(Debug)]
struct HangUp;

impl std::fmt::Display for HangUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("hung up on purpose")
    }
}

impl std::error::Error for HangUp {}

/// Decides the reply to a request (its body and headers are complete).
pub type Responder = Arc<dyn Fn(&Received) -> Reply + Send + Sync>;

pub struct Server {
    pub addr: SocketAddr,
    scheme: &'static str,
    received: Arc<Mutex<Vec<Received>>>,
    responder: Arc<RwLock<Responder>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Plain HTTP, answering by path.
    pub async fn start() -> Self {
        Self::start_with(by_path).await
    }

    /// Plain HTTP, answering with `respond`.
    pub async fn start_with(respond: impl Fn(&Received) -> Reply + Send + Sync + 'static) -> Self {
        Self::spawn(None, Arc::new(respond)).await
    }

    /// HTTPS with `cert_pem`/`key_pem`, answering by path.
    pub async fn start_tls(cert_pem: &str, key_pem: &str) -> Self {
        let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        Self::spawn(Some(TlsAcceptor::from(Arc::new(config))), Arc::new(by_path)).await
    }

    async fn spawn(tls: Option<TlsAcceptor>, responder: Responder) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let received = Arc::new(Mutex::new(Vec::new()));
        let responder = Arc::new(RwLock::new(responder));
        let (log, respond) = (received.clone(), responder.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (log, respond, tls) = (log.clone(), respond.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            // A client that does not finish the handshake
                            // (plaintext, an untrusted CA) is never served.
                            if let Ok(stream) = acceptor.accept(stream).await {
                                serve(stream, log, respond).await;
                            }
                        }
                        None => serve(stream, log, respond).await,
                    }
                });
            }
        });
        Self {
            addr,
            scheme,
            received,
            responder,
            task,
        }
    }

    /// Answers from now on with `respond`.
    pub fn respond_with(&self, respond: impl Fn(&Received) -> Reply + Send + Sync + 'static) {
        *self.responder.write().unwrap() = Arc::new(respond);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// How many requests answered 2xx carried each event id.
    pub fn delivered(&self) -> BTreeMap<String, usize> {
        let mut count = BTreeMap::new();
        for req in self.received.lock().unwrap().iter() {
            if (200..300).contains(&req.status) {
                *count.entry(req.event_id()).or_insert(0) += 1;
            }
        }
        count
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve<S>(stream: S, log: Arc<Mutex<Vec<Received>>>, respond: Arc<RwLock<Responder>>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| handle(req, log.clone(), respond.clone()));
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn handle(
    req: Request<Incoming>,
    log: Arc<Mutex<Vec<Received>>>,
    respond: Arc<RwLock<Responder>>,
) -> Result<Response<Full<Bytes>>, HangUp> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .unwrap_or_default();
    let mut received = Received {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
        status: 0,
    };
    let responder = respond.read().unwrap().clone();
    let reply = responder(&received);
    received.status = reply.status;
    // Logged on arrival: a client that gives up waiting still sent it.
    log.lock().unwrap().push(received);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    if reply.status == 0 {
        return Err(HangUp);
    }
    let text = if reply.status >= 300 {
        format!(
            "{{\"error\": \"refused with {}\",\n \"detail\": \"{}\"}}",
            reply.status,
            "x".repeat(400)
        )
    } else {
        String::new()
    };
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = StatusCode::from_u16(reply.status).unwrap();
    if matches!(reply.status, 429 | 503) {
        response
            .headers_mut()
            .insert("retry-after", hyper::header::HeaderValue::from_static("1"));
    }
    Ok(response)
}

/// The default: `/status/<code>`, `/sleep/<ms>`, else 200.
pub fn by_path(req: &Received) -> Reply {
    if let Some(code) = req.path.strip_prefix("/status/") {
        return Reply::status(code.split('/').next().unwrap().parse().unwrap());
    }
    if let Some(ms) = req.path.strip_prefix("/sleep/") {
        return Reply::status(200).after(Duration::from_millis(ms.parse().unwrap()));
    }
    Reply::status(200)
}
