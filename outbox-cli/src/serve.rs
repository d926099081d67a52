//! `outbox relay --listen ADDR`: the relay as a service that process
//! managers, orchestrators and Prometheus can watch.
//!
//! - `GET /metrics`: every counter and gauge the library records (through
//!   the `metrics` facade), in the Prometheus text format, rendered by
//!   `metrics-exporter-prometheus` (its recorder is installed here; its own
//!   HTTP listener is not built).
//! - `GET /healthz`: 200 while the process serves requests (liveness).
//! - `GET /readyz`: 200 when the database answers and no publisher is
//!   blocked; 503 with the reasons, one per line, otherwise (readiness).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use outbox::publisher::BlockedWatch;
use sqlx::{Connection, Pool};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::db::Db;
use crate::error::Failure;

/// How long `/readyz` waits for the database before calling it unready.
const DB_TIMEOUT: Duration = Duration::from_secs(2);

/// The content type of the Prometheus text format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the endpoints read.
struct Probe<DB: Db> {
    metrics: PrometheusHandle,
    pool: Pool<DB>,
    publishers: BlockedWatch,
}

/// The running endpoints: stop them with [`Endpoints::stop`].
pub(crate) struct Endpoints {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Binds `addr` (before anything else starts, so a taken port fails the
/// command at once), installs the Prometheus recorder, and serves the
/// endpoints until [`Endpoints::stop`].
pub(crate) async fn start<DB: Db>(
    addr: SocketAddr,
    pool: Pool<DB>,
    publishers: BlockedWatch,
) -> Result<Endpoints, Failure> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|err| Failure::new(format!("--listen {addr}: {err}")))?;
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|err| Failure::new(format!("cannot install the metrics recorder: {err}")))?;
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_secs(5));
        loop {
            ticks.tick().await;
            upkeep.run_upkeep();
        }
    });
    let probe = Arc::new(Probe {
        metrics,
        pool,
        publishers,
    });
    let app = Router::new()
        .route("/metrics", get(metrics_text::<DB>))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<DB>))
        .with_state(probe);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await;
        if let Err(err) = served {
            tracing::error!(target: "outbox_cli", error = %err, "the /metrics endpoint stopped");
        }
    });
    tracing::info!(target: "outbox_cli", %addr, "serving /metrics, /healthz and /readyz");
    Ok(Endpoints { stop, task })
}

impl Endpoints {
    /// Stops serving (requests in progress get up to 5 s to finish).
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

async fn metrics_text<DB: Db>(State(probe): State<Arc<Probe<DB>>>) -> Response {
    (
        [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
        probe.metrics.render(),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz<DB: Db>(State(probe): State<Arc<Probe<DB>>>) -> Response {
    let mut problems = Vec::new();
    if let Err(reason) = ping(&probe.pool).await {
        problems.push(format!("database: {reason}"));
    }
    for blocked in probe.publishers.blocked() {
        problems.push(format!(
            "publisher \"{}\" blocked since {}: {}",
            blocked.publisher,
            crate::commands::time(blocked.since),
            crate::error::one_line(&blocked.reason)
        ));
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready\n".to_owned()).into_response()
    } else {
        let body = format!("not ready\n{}\n", problems.join("\n"));
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

/// One round trip to the database (no SQL: the driver's ping).
async fn ping<DB: Db>(pool: &Pool<DB>) -> Result<(), String> {
    let round_trip = async {
        let mut conn = pool.acquire().await?;
        conn.ping().await
    };
    match tokio::time::timeout(DB_TIMEOUT, round_trip).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(crate::error::one_line(&err.to_string())),
        Err(_) => Err(format!("no answer within {}s", DB_TIMEOUT.as_secs())),
    }
}
