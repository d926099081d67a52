//! `outbox dashboard`: one web page, and the JSON API it polls, over one or
//! more outbox tables.
//!
//! The page, its script and its style are embedded in the binary
//! (`include_str!`); nothing is fetched from elsewhere. Everything the page
//! shows comes from the JSON API below, which scripts can use as well:
//!
//! | route | what |
//! | --- | --- |
//! | `GET /api/overview` | per table: totals, per event name, blocked publishers |
//! | `GET /api/history` | the sampled series of the last hour (pending; published per second) |
//! | `GET /api/tables/{table}/dead?limit=N&name=NAME` | dead letters with reason, payload and headers |
//! | `POST /api/tables/{table}/dead/{event_id}/requeue` | one dead letter pending again |
//! | `POST /api/tables/{table}/dead/requeue?name=NAME` | every dead letter (of that name) pending again |
//! | `POST /api/tables/{table}/dead/{event_id}/purge` | one dead letter deleted |
//! | `POST /api/tables/{table}/dead/purge?older_than_seconds=S` | dead letters deleted (all, or dead longer than S) |
//! | `POST /api/tables/{table}/pending/{event_id}/discard` | one pending entry deleted |
//! | `POST /api/tables/{table}/pending/discard?name=NAME` | the pending entries of that name deleted |
//!
//! Read-only by default: every `POST` needs `Authorization: Bearer TOKEN`
//! (401 without it) and a dashboard started with `--allow-actions` (403
//! without it). Every action is logged with its table, what it did and how
//! many entries it touched.

mod history;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Args;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Pool;
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::commands::{blocked_json, by_name_json, dead_json, secs};
use crate::db::{self, Db, Table};
use crate::duration;
use crate::error::Failure;

use self::history::History;

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("page.js");
const STYLE: &str = include_str!("page.css");

/// Options of `outbox dashboard`.
#[derive(Debug, Args)]
pub(crate) struct DashboardArgs {
    /// The address to serve the page and its JSON API on.
    #[arg(
        long,
        value_name = "ADDR",
        env = "OUTBOX_DASHBOARD_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    listen: SocketAddr,
    /// Allow the buttons (requeue, purge, discard) and their API routes; they also need --token.
    #[arg(long, env = "OUTBOX_DASHBOARD_ALLOW_ACTIONS")]
    allow_actions: bool,
    /// The bearer token that actions must carry (`Authorization: Bearer TOKEN`).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "OUTBOX_DASHBOARD_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// A relay's /metrics URL (repeatable, or comma-separated in the variable): the source of the
    /// published-per-second chart (the sum of their `outbox_published_total` counters).
    #[arg(
        long = "relay-metrics",
        value_name = "URL",
        env = "OUTBOX_DASHBOARD_RELAY_METRICS",
        value_delimiter = ','
    )]
    relay_metrics: Vec<String>,
    /// How often the chart's series are sampled (an hour of samples is kept in memory).
    #[arg(
        long,
        value_name = "DURATION",
        env = "OUTBOX_DASHBOARD_SAMPLE_INTERVAL",
        default_value = "5s",
        value_parser = duration::parse
    )]
    sample_interval: Duration,
}

/// What every request reads.
struct Dash<DB: Db> {
    tables: BTreeMap<String, outbox::Outbox<DB>>,
    allow_actions: bool,
    token: Option<String>,
    history: Arc<History>,
}

/// `outbox dashboard --listen ADDR [--table T]...`.
pub(crate) async fn run<DB: Db>(
    pool: &Pool<DB>,
    tables: &[Table],
    args: &DashboardArgs,
) -> Result<(), Failure> {
    if args.allow_actions && args.token.as_deref().is_none_or(str::is_empty) {
        return Err(Failure::new(
            "--allow-actions needs a token: pass --token TOKEN or set OUTBOX_DASHBOARD_TOKEN",
        ));
    }
    if args.sample_interval < Duration::from_millis(100) {
        return Err(Failure::new("--sample-interval must be at least 100ms"));
    }
    let stop = crate::tail::stop_signal()?;
    let mut handles = BTreeMap::new();
    for table in tables {
        db::require_table(pool, table).await?;
        let outbox = outbox::Outbox::builder(pool.clone())
            .table(&table.name)
            .migrate(false)
            .build()
            .await?;
        handles.insert(table.name.clone(), outbox);
    }
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|err| Failure::new(format!("--listen {}: {err}", args.listen)))?;
    let history = Arc::new(History::new(
        args.sample_interval,
        handles.keys().cloned().collect(),
        args.relay_metrics.clone(),
    )?);
    let sampler = tokio::spawn(history::sample(
        Arc::clone(&history),
        handles.values().cloned().collect(),
    ));
    let dash = Arc::new(Dash {
        tables: handles,
        allow_actions: args.allow_actions,
        token: args.token.clone().filter(|t| !t.is_empty()),
        history,
    });
    tracing::info!(
        target: "outbox_cli",
        addr = %args.listen,
        tables = ?dash.tables.keys().collect::<Vec<_>>(),
        actions = if dash.allow_actions { "allowed (with the token)" } else { "off (read-only)" },
        "dashboard serving on http://{}/",
        args.listen
    );
    let served = axum::serve(listener, router(dash))
        .with_graceful_shutdown(stop)
        .await;
    sampler.abort();
    tracing::info!(target: "outbox_cli", "dashboard stopped");
    served.map_err(|err| Failure::new(format!("the dashboard's server failed: {err}")))
}

fn router<DB: Db>(dash: Arc<Dash<DB>>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/page.js", get(script))
        .route("/page.css", get(style))
        .route("/api/overview", get(overview::<DB>))
        .route("/api/history", get(history_json::<DB>))
        .route("/api/tables/{table}/dead", get(dead_list::<DB>))
        .route("/api/tables/{table}/dead/requeue", post(requeue_many::<DB>))
        .route("/api/tables/{table}/dead/purge", post(purge_many::<DB>))
        .route(
            "/api/tables/{table}/dead/{event_id}/requeue",
            post(requeue_one::<DB>),
        )
        .route(
            "/api/tables/{table}/dead/{event_id}/purge",
            post(purge_one::<DB>),
        )
        .route(
            "/api/tables/{table}/pending/discard",
            post(discard_named::<DB>),
        )
        .route(
            "/api/tables/{table}/pending/{event_id}/discard",
            post(discard_one::<DB>),
        )
        .with_state(dash)
}

/// An API error: a status and `{"error": "..."}`.
struct ApiError(StatusCode, String);

impl ApiError {
    fn internal(err: &outbox::Error) -> Self {
        Self(
            StatusCode::INTERNAL_SERVER_ERROR,
            crate::error::one_line(&err.to_string()),
        )
    }
}

impl From<outbox::Error> for ApiError {
    fn from(err: outbox::Error) -> Self {
        Self::internal(&err)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({ "error": self.1 }))).into_response()
    }
}

type ApiResult = Result<axum::Json<Value>, ApiError>;

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
        .into_response()
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
        .into_response()
}

async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

impl<DB: Db> Dash<DB> {
    fn table(&self, name: &str) -> Result<&outbox::Outbox<DB>, ApiError> {
        self.tables.get(name).ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                format!("no table \"{name}\" on this dashboard"),
            )
        })
    }

    /// An action may run: the request carries the token (else 401) and
    /// the dashboard allows actions (else 403).
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let valid = match (&self.token, given) {
            (Some(token), Some(given)) => same(token.as_bytes(), given.as_bytes()),
            _ => false,
        };
        if !valid {
            return Err(ApiError(
                StatusCode::UNAUTHORIZED,
                "actions need the dashboard's token: Authorization: Bearer TOKEN".to_owned(),
            ));
        }
        if !self.allow_actions {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                "this dashboard is read-only: start it with --allow-actions".to_owned(),
            ));
        }
        Ok(())
    }
}

/// Compares two secrets in a time that depends on their lengths only.
fn same(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

async fn overview<DB: Db>(State(dash): State<Arc<Dash<DB>>>) -> ApiResult {
    let mut tables = Vec::new();
    for (name, outbox) in &dash.tables {
        let stats = outbox.stats().await?;
        tables.push(json!({
            "table": name,
            "pending": stats.pending,
            "retrying": stats.retrying,
            "dead": stats.dead,
            "published": stats.published,
            "oldest_pending_age_seconds": secs(stats.oldest_pending_age),
            "blocked": blocked_json(&stats),
            "by_name": by_name_json(&stats),
        }));
    }
    Ok(axum::Json(json!({
        "tables": tables,
        "actions_allowed": dash.allow_actions,
        "sample_interval_seconds": dash.history.interval().as_secs_f64(),
        "published_source": dash.history.published_source(),
    })))
}

async fn history_json<DB: Db>(State(dash): State<Arc<Dash<DB>>>) -> ApiResult {
    Ok(axum::Json(dash.history.to_json()))
}

#[derive(Debug, Deserialize)]
struct DeadQuery {
    name: Option<String>,
    limit: Option<usize>,
}

async fn dead_list<DB: Db>(
    State(dash): State<Arc<Dash<DB>>>,
    Path(table): Path<String>,
    Query(query): Query<DeadQuery>,
) -> ApiResult {
    let outbox = dash.table(&table)?;
    let limit = query.limit.unwrap_or(50).min(1000);
    let dead = match &query.name {
        Some(name) => outbox.dead_letters_named(name, limit).await?,
        None => outbox.dead_letters(limit).await?,
    };
    Ok(axum::Json(Value::Array(
        dead.iter().map(dead_json).collect(),
    )))
}

fn event_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id.trim()).map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("invalid event id {id:?}: not a UUID"),
        )
    })
}

/// Logs an action and answers with what it did.
fn acted(table: &str, action: &str, which: &str, count: u64) -> axum::Json<Value> {
    tracing::info!(target: "outbox_cli", table, action, which, count, "dashboard action");
    axum::Json(json!({
        "table": table,
        "action": action,
        "which": which,
        "count": count,
    }))
}

fn not_found(what: &str, id: Uuid, table: &str) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        format!("no {what} with event id {id} in \"{table}\""),
    )
}

async fn requeue_one<DB: Db>(
    State(dash): State<Arc<Dash<DB>>>,
    Path((table, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    dash.authorize(&headers)?;
    let outbox = dash.table(&table)?;
    let id = event_id(&id)?;
    if !outbox.requeue(id).await? {
        return Err(not_found("dead letter", id, &table));
    }
    Ok(acted(&table, "requeue", &id.to_string(), 1))
}

#[derive(Debug, Deserialize)]
struct NameQuery {
    name: Option<String>,
}

async fn requeue_many<DB: Db>(
    State(dash): State<Arc<Dash<DB>>>,
    Path(table): Path<String>,
    Query(query): Query<NameQuery>,
    headers: HeaderMap,
) -> ApiResult {
    dash.authorize(&headers)?;
    let outbox = dash.table(&table)?;
    let (n, which) = match &query.name {
        Some(name) => (outbox.requeue_named(name).await?, format!("name={name}")),
        None => (outbox.requeue_all().await?, "all".to_owned()),
    };
    Ok(acted(&table, "requeue", &which, n))
}

async fn purge_one<DB: Db>(
    State(dash): State<Arc<Dash<DB>>>,
    Path((table, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    dash.authorize(&headers)?;
    let outbox = dash.table(&table)?;
    let id = event_id(&id)?;
    if !outbox.purge(id).await? {
        return Err(not_found("dead letter", id, &table));
    }
    Ok(acted(&table, "purge", &id.to_string(), 1))
}

#[derive(Debug, Deserialize)]
struct PurgeQuery {
    older_than_seconds: Option<u64>,
}

async fn purge_many<DB: Db>(
    State(dash): State<Arc<Dash<DB>>>,
    Path(table): Path<String>,
    Query(query): Query<PurgeQuery>,
    headers: HeaderMap,
) -> ApiResult {
    dash.authorize(&headers)?;
    let outbox = dash.table(&table)?;
    let (n, which) = match query.older_than_seconds.filter(|s| *s > 0) {
        Some(s) => (
            outbox.purge_dead_for(Duration::from_secs(s)).await?,
            format!("dead for over {s}s"),
        ),
        None => (outbox.purge_all().await?, "all".to_owned()),
    };
    Ok(acted(&table, "purge", &which, n))
}

async fn discard_one<DB: Db>(
    State(dash): State<Arc<Dash<DB>>>,
    Path((table, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    dash.authorize(&headers)?;
    let outbox = dash.table(&table)?;
    let id = event_id(&id)?;
    if !outbox.discard(id).await? {
        return Err(not_found(
            "pending entry (or one a relay is publishing right now)",
            id,
            &table,
        ));
    }
    Ok(acted(&table, "discard", &id.to_string(), 1))
}

async fn discard_named<DB: Db>(
    State(dash): State<Arc<Dash<DB>>>,
    Path(table): Path<String>,
    Query(query): Query<NameQuery>,
    headers: HeaderMap,
) -> ApiResult {
    dash.authorize(&headers)?;
    let outbox = dash.table(&table)?;
    let Some(name) = query.name.filter(|n| !n.is_empty()) else {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "discard needs ?name=NAME (or an event id in the path)".to_owned(),
        ));
    };
    let n = outbox.discard_named(&name).await?;
    Ok(acted(&table, "discard", &format!("name={name}"), n))
}
