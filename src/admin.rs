//! The admin HTTP API (axum): health, readiness, metrics, status, and triggers.
//!
//! | endpoint | |
//! |---|---|
//! | `GET /healthz` | the process is up (liveness) |
//! | `GET /readyz` | 200 only when the bus and the warehouse answer now, else 503 with what failed |
//! | `GET /metrics` | OpenMetrics text ([`crate::metrics`]) |
//! | `GET /status` | per table and source: counts, last landing, checkpoint lag, dead letters |
//! | `GET /cost` | BigQuery: the cost forecast per table and the apply intervals in force (`bqsync cost --json`) |
//! | `GET /tables` | the tables of `schemas/` with their write mode and live rows |
//! | `POST /sync`, `POST /sync/tables` | run sources now: all, those named in `{"sources": [...]}`, or those feeding `{"tables": [...]}` (bearer token) |
//! | `POST /warehouse/dead-letters` | dead letters matching a filter, with their bytes (bearer token) |
//! | `POST /warehouse/land` | lands table batches in one transaction, as `bqsync replay` does (bearer token) |
//! | `POST /warehouse/sql` | one read-only query, `{"sql": "SELECT …"}` (bearer token) |
//!
//! The `/warehouse` endpoints let `bqsync status`, `dlq`, `replay` and `sql` work while this process
//! holds the embedded warehouse (see [`crate::warehouse::remote`]); the process writes its address to
//! the state folder for them.
//!
//! Invariants: mutating endpoints need `Authorization: Bearer TOKEN`, the token read from an
//! environment variable or a secret file, never the config file; without a token configured they
//! answer 404 (off). The server listens on loopback unless configured otherwise.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::future::BoxFuture;
use serde::Deserialize;

use crate::schema::Catalog;
use crate::warehouse::remote::{SqlRequest, WireDeadLetter, WireFilter};
use crate::warehouse::Warehouse;

pub use crate::config::admin::{AdminConfig, Listen};

impl AdminConfig {
    /// The token, from the environment variable or the secret file; None: mutating endpoints off.
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        if let Some(token) = std::env::var(&self.token_env).ok().filter(|t| !t.trim().is_empty()) {
            return Ok(Some(token.trim().to_string()));
        }
        match &self.token_file {
            Some(path) => {
                let token = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("admin.token_file {}: {e}", path.display()))?;
                Ok(Some(token.trim().to_string()).filter(|t| !t.is_empty()))
            }
            None => Ok(None),
        }
    }
}

/// A readiness check: a name and a probe.
pub type Probe = Box<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// What the admin server reads and triggers.
pub struct AdminState {
    /// Where the server listens (`admin.listen`).
    pub listen: Listen,
    /// The checkpoint file, for checkpoint lag.
    pub state_path: std::path::PathBuf,
    pub catalog: Arc<Catalog>,
    pub warehouse: Option<Arc<dyn Warehouse>>,
    pub probes: Vec<(&'static str, Probe)>,
    /// Wakes sources for a pass now.
    pub triggers: crate::sources::Triggers,
    pub token: Option<String>,
    /// The subscription this process's worker pulls from, for `/status`'s queue figures: with `run`'s
    /// in-process bus they include the events held in memory, which no file shows.
    pub queue: Option<Arc<dyn crate::bus::Subscription>>,
}

/// Starts the server (unless `listen = "off"`); returns the address it is bound to.
pub async fn serve(state: AdminState) -> anyhow::Result<Option<SocketAddr>> {
    let Listen::Address(listen) = state.listen.clone() else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "admin server: cannot listen on {listen}: {e} (set `admin.listen` in the config, or BQSYNC__ADMIN__LISTEN, to another address or to \"off\")"
            )
        })?;
    let address = listener.local_addr()?;
    if let Err(e) = crate::warehouse::remote::write_address(&state.state_path, address) {
        tracing::warn!(error = %e, "cannot write the admin address file: other bqsync commands will not find this process");
    }
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/tables", get(tables))
        .route("/cost", get(cost))
        .route("/sync", post(sync))
        .route("/sync/tables", post(sync_tables))
        .route("/warehouse/dead-letters", post(warehouse_dead_letters))
        .route("/warehouse/land", post(warehouse_land))
        .route("/warehouse/sql", post(warehouse_sql))
        .with_state(Arc::new(state));
    tracing::info!(%address, "admin server listening");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "admin server stopped");
        }
    });
    Ok(Some(address))
}

async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    let mut failing = BTreeMap::new();
    for (name, probe) in &state.probes {
        if let Err(e) = probe().await {
            failing.insert(*name, e);
        }
    }
    if failing.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "ready": false, "failing": failing })))
            .into_response()
    }
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    let metrics = crate::metrics::global();
    if let Ok(lags) = crate::status::checkpoint_lags(&state.state_path) {
        let mut per_source: BTreeMap<String, i64> = BTreeMap::new();
        for lag in lags {
            *per_source.entry(lag.source).or_default() += lag.lag_bytes.unwrap_or(0) as i64;
        }
        for (source, bytes) in per_source {
            metrics.set_checkpoint_lag(&source, bytes);
        }
    }
    ([("content-type", crate::metrics::CONTENT_TYPE)], metrics.render()).into_response()
}

async fn status(State(state): State<Arc<AdminState>>) -> Response {
    let checkpoints = crate::status::checkpoint_lags(&state.state_path).unwrap_or_default();
    let sync = crate::status::sync_states(&state.state_path).unwrap_or_default();
    let dead_letters = match &state.warehouse {
        Some(w) => w.dead_letter_counts().await.map_err(|e| e.to_string()),
        None => Ok(Vec::new()),
    };
    let queue = match &state.queue {
        Some(subscription) => subscription.stats().await.map(Some).map_err(|e| e.to_string()),
        None => Ok(None),
    };
    let body = serde_json::json!({
        "queue": queue.as_ref().ok(),
        "queue_error": queue.as_ref().err(),
        "tables": crate::metrics::global().table_status(),
        "sources": state.triggers.names(),
        "checkpoints": checkpoints,
        "sync": sync,
        "dead_letters": dead_letters.as_ref().map(|d| d.iter().map(|(t, r, n)| serde_json::json!({"table": t, "reason": r, "count": n})).collect::<Vec<_>>()).ok(),
        "errors": dead_letters.err(),
    });
    Json(body).into_response()
}

async fn tables(State(state): State<Arc<AdminState>>) -> Response {
    let rows = match &state.warehouse {
        Some(w) => w.row_counts().await.map(|r| r.into_iter().collect::<BTreeMap<_, _>>()).ok(),
        None => None,
    };
    let list: Vec<serde_json::Value> = state
        .catalog
        .tables()
        .map(|t| {
            serde_json::json!({
                "table": t.table,
                "write_mode": format!("{:?}", t.write_mode).to_ascii_lowercase(),
                "primary_key": t.primary_key,
                "partition": t.partition.as_ref().map(|p| &p.column),
                "cluster": t.cluster,
                "live_rows": rows.as_ref().and_then(|r| r.get(&t.table)),
            })
        })
        .collect();
    Json(list).into_response()
}

async fn cost(State(state): State<Arc<AdminState>>) -> Response {
    let Some(warehouse) = &state.warehouse else {
        return (StatusCode::NOT_FOUND, "no warehouse in this process\n").into_response();
    };
    match warehouse.cost_forecast().await {
        Ok(Some(forecast)) => Json(forecast).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, "this warehouse bills nothing: no cost forecast\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("cost forecast failed: {e}\n")).into_response(),
    }
}

/// Checks the bearer token; Err is the status and message to answer with.
fn authorize(state: &AdminState, headers: &HeaderMap) -> Result<(), (StatusCode, &'static str)> {
    let Some(token) = &state.token else {
        return Err((
            StatusCode::NOT_FOUND,
            "mutating endpoints are off: set the admin token ([admin] token_env or token_file)\n",
        ));
    };
    let given = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(given) if constant_time_eq(given.trim().as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err((StatusCode::FORBIDDEN, "wrong token\n")),
        None => Err((StatusCode::UNAUTHORIZED, "missing `Authorization: Bearer TOKEN`\n")),
    }
}

/// Compares without an early exit, so the time taken does not tell how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SyncSources {
    #[serde(default)]
    sources: Vec<String>,
}

/// `POST /sync`: every source, or those named in `{"sources": [...]}`.
async fn sync(
    State(state): State<Arc<AdminState>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    if let Err(refused) = authorize(&state, &headers) {
        return refused.into_response();
    }
    let request: SyncSources = if body.trim().is_empty() {
        SyncSources::default()
    } else {
        match serde_json::from_str(&body) {
            Ok(r) => r,
            Err(e) => {
                return (StatusCode::BAD_REQUEST, format!("expected no body or {{\"sources\": [...]}}: {e}\n"))
                    .into_response()
            }
        }
    };
    let full = match full_requested(&uri) {
        Ok(full) => full,
        Err(refused) => return (StatusCode::BAD_REQUEST, refused).into_response(),
    };
    match state.triggers.trigger(&request.sources, full) {
        Ok(triggered) => {
            tracing::info!(?triggered, full, "sync triggered through the admin API");
            (StatusCode::ACCEPTED, Json(serde_json::json!({ "triggered": triggered, "full": full }))).into_response()
        }
        Err(unknown) => (StatusCode::NOT_FOUND, format!("{unknown}\n")).into_response(),
    }
}

/// `?full=true` (or `1`): a full re-sync rather than a regular pass. Other query parameters are
/// refused, so a typo is not a silent regular pass.
fn full_requested(uri: &axum::http::Uri) -> Result<bool, String> {
    let mut full = false;
    for pair in uri.query().unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=').unwrap_or((pair, "true")) {
            ("full", "true" | "1") => full = true,
            ("full", "false" | "0") => full = false,
            _ => return Err(format!("unknown query `{pair}`: only `full=true` or `full=false`\n")),
        }
    }
    Ok(full)
}

#[derive(Deserialize)]
struct SyncTables {
    tables: Vec<String>,
}

/// `POST /sync/tables`: the sources that feed the tables in `{"tables": [...]}`.
async fn sync_tables(
    State(state): State<Arc<AdminState>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    if let Err(refused) = authorize(&state, &headers) {
        return refused.into_response();
    }
    let request: SyncTables = match serde_json::from_str(&body) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("expected {{\"tables\": [...]}}: {e}\n")).into_response(),
    };
    let unknown: Vec<&String> = request.tables.iter().filter(|t| state.catalog.get(t).is_none()).collect();
    if !unknown.is_empty() {
        return (StatusCode::BAD_REQUEST, format!("no schema for {unknown:?}\n")).into_response();
    }
    let full = match full_requested(&uri) {
        Ok(full) => full,
        Err(refused) => return (StatusCode::BAD_REQUEST, refused).into_response(),
    };
    let triggered = state.triggers.trigger_tables(&request.tables, full);
    (StatusCode::ACCEPTED, Json(serde_json::json!({ "triggered": triggered, "tables": request.tables, "full": full })))
        .into_response()
}

/// The warehouse behind a `/warehouse` endpoint, once the token is checked.
fn warehouse_for(state: &AdminState, headers: &HeaderMap) -> Result<Arc<dyn Warehouse>, (StatusCode, &'static str)> {
    authorize(state, headers)?;
    state.warehouse.clone().ok_or((StatusCode::NOT_FOUND, "no warehouse in this process\n"))
}

fn bad_request(expected: &str, e: impl std::fmt::Display) -> Response {
    (StatusCode::BAD_REQUEST, format!("expected {expected}: {e}\n")).into_response()
}

fn failed(e: impl std::fmt::Display) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
}

/// `POST /warehouse/dead-letters`: a filter in, the matching dead letters out.
async fn warehouse_dead_letters(State(state): State<Arc<AdminState>>, headers: HeaderMap, body: String) -> Response {
    let warehouse = match warehouse_for(&state, &headers) {
        Ok(w) => w,
        Err(refused) => return refused.into_response(),
    };
    let filter =
        match serde_json::from_str::<WireFilter>(&body).map_err(|e| e.to_string()).and_then(WireFilter::into_filter) {
            Ok(f) => f,
            Err(e) => return bad_request("a dead-letter filter", e),
        };
    match warehouse.dead_letters(&filter).await {
        Ok(records) => Json(records.into_iter().map(WireDeadLetter::from).collect::<Vec<_>>()).into_response(),
        Err(e) => failed(e),
    }
}

/// `POST /warehouse/land`: table batches, landed in one transaction like any landing of this process.
async fn warehouse_land(State(state): State<Arc<AdminState>>, headers: HeaderMap, body: String) -> Response {
    let warehouse = match warehouse_for(&state, &headers) {
        Ok(w) => w,
        Err(refused) => return refused.into_response(),
    };
    let batches: Vec<crate::warehouse::TableBatch> = match serde_json::from_str(&body) {
        Ok(b) => b,
        Err(e) => return bad_request("a list of table batches", e),
    };
    if let Some(unknown) = batches.iter().find(|b| state.catalog.get(&b.table).is_none()) {
        return (StatusCode::BAD_REQUEST, format!("no schema for `{}`\n", unknown.table)).into_response();
    }
    let rows: usize = batches.iter().map(|b| b.rows.len()).sum();
    // No bus deliveries ride on it: the caller holds what it landed and acks nothing.
    match warehouse.land(Arc::new(batches), crate::ack::Receipts::default()).await {
        Ok((_nothing_to_ack, stats)) => {
            tracing::info!(rows, "landed rows sent through the admin API");
            Json(stats).into_response()
        }
        Err(failure) => failed(failure.error),
    }
}

/// `POST /warehouse/sql`: one read-only query (see `crate::warehouse::duckdb_query`).
async fn warehouse_sql(State(state): State<Arc<AdminState>>, headers: HeaderMap, body: String) -> Response {
    let warehouse = match warehouse_for(&state, &headers) {
        Ok(w) => w,
        Err(refused) => return refused.into_response(),
    };
    let request: SqlRequest = match serde_json::from_str(&body) {
        Ok(r) => r,
        Err(e) => return bad_request("{\"sql\": \"SELECT …\"}", e),
    };
    match warehouse.query_read_only(&request.sql).await {
        Ok(result) => Json(result).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
