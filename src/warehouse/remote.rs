//! The warehouse of a running bqsync, reached through its admin API.
//!
//! DuckDB lets one process hold a database file. While `bqsync run` or `work` holds the embedded
//! warehouse, the commands that read or land into it (`status`, `dlq`, `replay`, `sql`) use this
//! backend instead: each call is one request to the running process, which does it on its own
//! connection, between (never inside) its landings. Why through the process rather than releasing the
//! file between flushes: reopening a DuckDB file replays its WAL and drops its caches on every flush,
//! and another process could take the file in between and stall the pipeline.
//!
//! Invariants:
//! - what lands here lands in one transaction of the running process's warehouse, as a landing of its
//!   own would: a replay marks its dead letters replayed in the same transaction;
//! - every endpoint that returns user data or writes (`/warehouse/*`) needs the admin token; the
//!   process is found through the address file it writes next to its checkpoints
//!   ([`ADDRESS_FILE`]), which names its pid, so a stale file is recognised.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::{
    seal, DeadLetterFilter, DeadLetterRecord, LandResult, LandStats, QueryResult, TableBatch, Warehouse, WarehouseError,
};
use crate::ack::Receipts;
use crate::dead_letter::DeadLetterReason;

/// The file (in the state folder) where a running process says where its admin API listens.
pub const ADDRESS_FILE: &str = "admin.json";

/// What the address file holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminAddress {
    pub address: String,
    pub pid: u32,
}

/// The address file for the checkpoint file at `state_path`.
pub fn address_file(state_path: &Path) -> PathBuf {
    state_path.parent().unwrap_or(Path::new(".")).join(ADDRESS_FILE)
}

/// Writes the address file (the process's admin API is listening at `address`).
pub fn write_address(state_path: &Path, address: std::net::SocketAddr) -> std::io::Result<()> {
    let file = address_file(state_path);
    let body = serde_json::to_vec(&AdminAddress { address: address.to_string(), pid: std::process::id() })?;
    let temporary = file.with_extension("json.tmp");
    std::fs::write(&temporary, body)?;
    std::fs::rename(temporary, file)
}

/// The admin address of the process running in this project, if one is (its pid is alive).
pub fn running_process(state_path: &Path) -> Option<AdminAddress> {
    let text = std::fs::read(address_file(state_path)).ok()?;
    let address: AdminAddress = serde_json::from_slice(&text).ok()?;
    // Signal 0 checks that the process exists without touching it.
    let alive = unsafe { libc::kill(address.pid as libc::pid_t, 0) } == 0;
    (alive && address.pid != std::process::id()).then_some(address)
}

/// The warehouse of the bqsync process running in this project, when one runs with the embedded
/// warehouse (it holds the DuckDB file, so a command beside it goes through it); None otherwise.
/// `token`: the admin token from this command's config (the same variable or file as the service's).
pub fn running_warehouse(
    config: &crate::config::WarehouseConfig,
    state_path: &Path,
    token: Option<String>,
) -> Option<Arc<dyn Warehouse>> {
    if config.kind != crate::config::WarehouseKind::Duckdb {
        return None;
    }
    let address = running_process(state_path)?;
    tracing::info!(address = %address.address, pid = address.pid, "a running bqsync holds the warehouse: going through it");
    Some(Arc::new(RemoteWarehouse::new(&address, token)))
}

/// The queue figures in a running process's `/status` document: its worker's subscription, with
/// `run`'s in-process bus the events it holds in memory too.
pub fn queue_in(status: &serde_json::Value) -> Option<crate::bus::QueueStats> {
    serde_json::from_value(status.get("queue")?.clone()).ok()
}

/// Dead letters by table and reason in a running process's `/status` document.
pub fn dead_letter_counts_in(status: &serde_json::Value) -> Vec<(String, String, u64)> {
    let counts = status["dead_letters"].as_array().map(Vec::as_slice).unwrap_or_default();
    counts
        .iter()
        .filter_map(|c| {
            Some((c["table"].as_str()?.to_string(), c["reason"].as_str()?.to_string(), c["count"].as_u64()?))
        })
        .collect()
}

/// A dead-letter filter on the wire.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WireFilter {
    pub table: Option<String>,
    pub reason: Option<String>,
    pub since_micros: Option<i64>,
    pub until_micros: Option<i64>,
    pub ids: Vec<String>,
    pub limit: Option<usize>,
}

impl From<&DeadLetterFilter> for WireFilter {
    fn from(f: &DeadLetterFilter) -> WireFilter {
        WireFilter {
            table: f.table.clone(),
            reason: f.reason.map(|r| r.as_str().to_string()),
            since_micros: f.since_micros,
            until_micros: f.until_micros,
            ids: f.ids.clone(),
            limit: f.limit,
        }
    }
}

impl WireFilter {
    pub fn into_filter(self) -> Result<DeadLetterFilter, String> {
        let reason = match self.reason {
            Some(r) => Some(DeadLetterReason::parse(&r).ok_or_else(|| format!("unknown reason `{r}`"))?),
            None => None,
        };
        Ok(DeadLetterFilter {
            table: self.table,
            reason,
            since_micros: self.since_micros,
            until_micros: self.until_micros,
            ids: self.ids,
            limit: self.limit,
        })
    }
}

/// A dead letter on the wire: the record, and its exact bytes (the record's JSON form has only text).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireDeadLetter {
    #[serde(flatten)]
    pub record: DeadLetterRecord,
    pub message_base64: String,
}

impl From<DeadLetterRecord> for WireDeadLetter {
    fn from(record: DeadLetterRecord) -> WireDeadLetter {
        let message_base64 = base64::engine::general_purpose::STANDARD.encode(&record.message_bytes);
        WireDeadLetter { record, message_base64 }
    }
}

impl WireDeadLetter {
    fn into_record(self) -> DeadLetterRecord {
        let mut record = self.record;
        record.message_bytes = base64::engine::general_purpose::STANDARD
            .decode(&self.message_base64)
            .unwrap_or_else(|_| record.message.clone().into_bytes());
        record
    }
}

/// The body of `POST /warehouse/sql`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SqlRequest {
    pub sql: String,
}

/// The warehouse of the process at `base` (`http://host:port`).
pub struct RemoteWarehouse {
    base: String,
    token: Option<String>,
    client: reqwest::Client,
}

impl RemoteWarehouse {
    pub fn new(address: &AdminAddress, token: Option<String>) -> RemoteWarehouse {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(600)).build().expect("an HTTP client");
        RemoteWarehouse { base: format!("http://{}", address.address), token, client }
    }

    fn error(&self, what: &str, detail: impl std::fmt::Display) -> WarehouseError {
        WarehouseError::Task(format!("the running bqsync ({}) {what}: {detail}", self.base))
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, WarehouseError> {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body);
        }
        let response = request.send().await.map_err(|e| self.error("does not answer", e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| self.error("answered badly", e))?;
        if status == reqwest::StatusCode::UNAUTHORIZED
            || status == reqwest::StatusCode::NOT_FOUND && path.starts_with("/warehouse")
        {
            return Err(self.error(
                "holds the warehouse, and reading it through that process needs the admin token",
                "set the variable named by `admin.token_env` (default BQSYNC_ADMIN_TOKEN), or `admin.token_file`, for both",
            ));
        }
        if !status.is_success() {
            return Err(self.error(&format!("refused {path} ({status})"), String::from_utf8_lossy(&bytes).trim()));
        }
        serde_json::from_slice(&bytes).map_err(|e| self.error(&format!("answered {path} with something else"), e))
    }

    /// The process's `/status` document: its queue, dead letters by reason, checkpoints and health.
    pub async fn status_document(&self) -> Result<serde_json::Value, WarehouseError> {
        self.call(reqwest::Method::GET, "/status", None).await
    }

    fn json(value: &impl Serialize) -> Option<Vec<u8>> {
        Some(serde_json::to_vec(value).expect("serializes"))
    }
}

#[async_trait]
impl Warehouse for RemoteWarehouse {
    /// The running process ensured them when it started.
    async fn ensure_tables(&self) -> Result<(), WarehouseError> {
        Ok(())
    }

    async fn land(&self, batches: Arc<Vec<TableBatch>>, receipts: Receipts) -> LandResult {
        let stats = self
            .call::<Vec<(String, LandStats)>>(reqwest::Method::POST, "/warehouse/land", Self::json(&*batches))
            .await;
        seal(stats, receipts)
    }

    async fn row_counts(&self) -> Result<Vec<(String, u64)>, WarehouseError> {
        let tables: Vec<serde_json::Value> = self.call(reqwest::Method::GET, "/tables", None).await?;
        Ok(tables
            .iter()
            .filter_map(|t| Some((t["table"].as_str()?.to_string(), t["live_rows"].as_u64().unwrap_or(0))))
            .collect())
    }

    async fn dead_letter_counts(&self) -> Result<Vec<(String, String, u64)>, WarehouseError> {
        Ok(dead_letter_counts_in(&self.status_document().await?))
    }

    /// The process answers (`/healthz`: no table is counted for it, unlike `/tables`).
    async fn ping(&self) -> Result<(), WarehouseError> {
        let response = self
            .client
            .get(format!("{}/healthz", self.base))
            .send()
            .await
            .map_err(|e| self.error("does not answer", e))?;
        response.error_for_status().map(|_| ()).map_err(|e| self.error("is not healthy", e))
    }

    async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetterRecord>, WarehouseError> {
        let wire: Vec<WireDeadLetter> =
            self.call(reqwest::Method::POST, "/warehouse/dead-letters", Self::json(&WireFilter::from(filter))).await?;
        Ok(wire.into_iter().map(WireDeadLetter::into_record).collect())
    }

    async fn query_read_only(&self, sql: &str) -> Result<QueryResult, WarehouseError> {
        self.call(reqwest::Method::POST, "/warehouse/sql", Self::json(&SqlRequest { sql: sql.into() })).await
    }
}
