//! TLS for the broker suites: a throwaway CA with a server certificate for
//! `127.0.0.1` and `localhost` (made with rcgen in each test, never written
//! anywhere but a temporary directory), and `stunnel4` in front of a local
//! plaintext service (Redis, RabbitMQ), stopped by a drop guard.

#![allow(dead_code)] // Reason: each test binary uses a different subset of the helpers.
#![allow(unreachable_pub)] // Reason: shared by several test crates through `mod tls_support`.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use uuid::Uuid;

/// A CA and one server certificate it signed, all as PEM text.
#[allow(clippy::struct_field_names)] // Reason: each field is PEM text; the suffix says so at call sites.
pub struct TestCa {
    /// The CA certificate: what clients are told to trust.
    pub ca_pem: String,
    /// The server's certificate (names: `127.0.0.1`, `localhost`).
    pub cert_pem: String,
    /// The server's private key.
    pub key_pem: String,
}

impl TestCa {
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "outbox throwaway test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "outbox test server");
        let cert = params.signed_by(&key, &ca).unwrap();
        Self {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on `addr`.
pub fn wait_listening(addr: SocketAddr, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// `stunnel4` accepting TLS on a free port of 127.0.0.1 and forwarding in
/// plaintext to `127.0.0.1:<to>`; killed (and its files removed) on drop,
/// also when the test fails.
pub struct Stunnel {
    pub port: u16,
    child: Child,
    dir: PathBuf,
}

impl Stunnel {
    pub fn start(ca: &TestCa, to: u16) -> Self {
        let dir = std::env::temp_dir().join(format!("outbox-stunnel-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
        std::fs::write(&cert, &ca.cert_pem).unwrap();
        std::fs::write(&key, &ca.key_pem).unwrap();
        // A port taken between `free_port` and stunnel's bind makes it exit:
        // try a few ports.
        for _ in 0..5 {
            let port = free_port();
            let config = dir.join("stunnel.conf");
            std::fs::write(
                &config,
                format!(
                    "foreground = yes\npid =\ndebug = 4\n\n[tunnel]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{to}\ncert = {}\nkey = {}\n",
                    cert.display(),
                    key.display()
                ),
            )
            .unwrap();
            let mut child = Command::new(stunnel_binary())
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("stunnel4 must be installed (apt-get install stunnel4)");
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let guard_dir = dir.clone();
            if wait_listening(addr, Duration::from_secs(10)) {
                return Self {
                    port,
                    child,
                    dir: guard_dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&dir);
        panic!("stunnel4 did not start listening");
    }
}

fn stunnel_binary() -> &'static str {
    let found = |name: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
    };
    if found("stunnel4") {
        "stunnel4"
    } else {
        "stunnel"
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
