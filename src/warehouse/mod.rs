//! Warehouses: where batches land.
//!
//! Invariants every backend keeps:
//! - [`Warehouse::land`] applies all the batches it is given in one transaction: all rows or none.
//! - Landing is idempotent: append tables insert only event ids not yet present; upsert tables change
//!   a row only when the incoming version is higher than the stored one (deletes are versioned
//!   tombstones), so re-delivered and out-of-order events leave the same final state.
//! - The [`Committed`] proof it returns is the only way for the worker to ack the batch's deliveries.

pub mod archive;
pub mod bigquery;
pub mod bigquery_sql;
pub mod cost_guard;
pub mod duckdb;
pub mod sql;

use async_trait::async_trait;

use crate::envelope::Op;
use crate::schema::CellValue;

/// One event, validated and coerced to its table's columns.
#[derive(Debug, Clone, PartialEq)]
pub struct StagedRow {
    pub event_id: String,
    pub op: Op,
    /// Version of the key (upsert tables).
    pub version: Option<i64>,
    /// One cell per schema column, in column order.
    pub cells: Vec<CellValue>,
}

/// Rows for one table.
#[derive(Debug, Clone, PartialEq)]
pub struct TableBatch {
    pub table: String,
    pub rows: Vec<StagedRow>,
}

/// Proof that a landing committed. Only warehouse backends can make one.
#[derive(Debug)]
#[must_use = "a commit proof exists to ack the deliveries it covers"]
pub struct Committed {
    _private: (),
}

impl Committed {
    pub(in crate::warehouse) fn new() -> Committed {
        Committed { _private: () }
    }
}

/// What one landing changed, per table.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LandStats {
    /// Rows inserted or updated (append: new event ids; upsert: keys whose version advanced).
    pub rows_changed: u64,
    /// Rows offered.
    pub rows_offered: u64,
}

/// Errors of warehouse backends.
#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    #[error("duckdb warehouse {path}: {context}: {source}")]
    DuckDb { path: String, context: String, source: ::duckdb::Error },
    #[error("table `{0}` has no schema file (schemas/{0}.json)")]
    UnknownTable(String),
    #[error("schema change refused for table `{table}`: {problem}")]
    SchemaChange { table: String, problem: String },
    #[error("warehouse task failed: {0}")]
    Task(String),
    #[error("bigquery: {context}: {message}")]
    BigQuery { context: String, message: String, transient: bool },
    #[error("bigquery cost guard: {0}")]
    CostGuard(String),
    #[error("warehouse config: {0}")]
    Config(String),
    #[error("archive: {0}")]
    Archive(String),
}

impl WarehouseError {
    /// True when retrying the same batch can succeed (I/O, locks, a restarting service).
    pub fn is_transient(&self) -> bool {
        match self {
            WarehouseError::UnknownTable(_)
            | WarehouseError::SchemaChange { .. }
            | WarehouseError::CostGuard(_)
            | WarehouseError::Config(_) => false,
            WarehouseError::BigQuery { transient, .. } => *transient,
            WarehouseError::DuckDb { .. } | WarehouseError::Task(_) | WarehouseError::Archive(_) => true,
        }
    }
}

/// A deterministic id for a table's batch within `scope` (a BigQuery dataset, an archive): the same
/// rows give the same id. Names derived from it (BigQuery jobs and staging tables, archive objects)
/// are therefore the same when a batch is landed again.
pub fn batch_id(scope: &str, batch: &TableBatch) -> String {
    let mut parts: Vec<Vec<u8>> = vec![scope.as_bytes().to_vec(), batch.table.as_bytes().to_vec()];
    for row in &batch.rows {
        let op = match row.op {
            Op::Insert => 0u8,
            Op::Upsert => 1,
            Op::Delete => 2,
        };
        let mut part = row.event_id.as_bytes().to_vec();
        part.push(op);
        part.extend_from_slice(&row.version.unwrap_or(i64::MIN).to_le_bytes());
        parts.push(part);
    }
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    crate::envelope::derive_event_id(&refs).chars().filter(char::is_ascii_alphanumeric).take(24).collect()
}

/// Opens the configured warehouse (tables are not touched: call [`Warehouse::ensure_tables`]),
/// wrapped in the GCS archive when `[gcs]` has a bucket and `archive` on.
pub async fn open(
    config: &crate::config::Config,
    catalog: std::sync::Arc<crate::schema::Catalog>,
) -> Result<std::sync::Arc<dyn Warehouse>, WarehouseError> {
    let warehouse: std::sync::Arc<dyn Warehouse> = match config.warehouse.kind {
        crate::config::WarehouseKind::Duckdb => {
            std::sync::Arc::new(duckdb::DuckDbWarehouse::open(&config.warehouse.duckdb, catalog.clone())?)
        }
        crate::config::WarehouseKind::Bigquery => std::sync::Arc::new(
            bigquery::BigQueryWarehouse::connect(&config.warehouse.bigquery, catalog.clone()).await?,
        ),
    };
    if !config.gcs.archive {
        return Ok(warehouse);
    }
    match crate::gcs::Gcs::connect(&config.gcs).await.map_err(|e| WarehouseError::Archive(e.to_string()))? {
        Some(gcs) => Ok(std::sync::Arc::new(archive::ArchivingWarehouse::new(warehouse, gcs, catalog))),
        None => Ok(warehouse),
    }
}

/// One line naming the configured warehouse, for people.
pub fn describe(config: &crate::config::WarehouseConfig) -> String {
    match config.kind {
        crate::config::WarehouseKind::Duckdb => format!("duckdb {}", config.duckdb.path.display()),
        crate::config::WarehouseKind::Bigquery => format!(
            "bigquery {}.{}",
            config.bigquery.resolved_project().unwrap_or_else(|_| "?".into()),
            config.bigquery.dataset
        ),
    }
}

/// A warehouse backend.
#[async_trait]
pub trait Warehouse: Send + Sync {
    /// Creates missing tables from the catalog and adds new NULLABLE columns; refuses breaking changes.
    async fn ensure_tables(&self) -> Result<(), WarehouseError>;
    /// Lands all batches in one transaction.
    async fn land(
        &self,
        batches: std::sync::Arc<Vec<TableBatch>>,
    ) -> Result<(Committed, Vec<(String, LandStats)>), WarehouseError>;
    /// Live rows per table (tombstones excluded), for status and tests.
    async fn row_counts(&self) -> Result<Vec<(String, u64)>, WarehouseError>;
    /// Dead letters by (table, reason), for status.
    async fn dead_letter_counts(&self) -> Result<Vec<(String, String, u64)>, WarehouseError>;
    /// Readiness: the warehouse answers now.
    async fn ping(&self) -> Result<(), WarehouseError> {
        Ok(())
    }
    /// Dead letters matching `filter`, newest first (for `bqsync dlq` and `bqsync replay`).
    async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetterRecord>, WarehouseError> {
        let _ = filter;
        Err(WarehouseError::Task("this warehouse cannot list dead letters".into()))
    }
}

/// Which dead letters to read. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    pub table: Option<String>,
    pub reason: Option<String>,
    /// Last failure at or after, microseconds since the epoch.
    pub since_micros: Option<i64>,
    /// Last failure before, microseconds since the epoch.
    pub until_micros: Option<i64>,
    /// Dead-letter ids or event ids (a dead-letter id may be given by a prefix of 8+ characters).
    pub ids: Vec<String>,
    pub limit: Option<usize>,
}

/// One row of `dead_letters`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetterRecord {
    pub dead_letter_id: String,
    pub event_id: Option<String>,
    pub table_name: Option<String>,
    pub reason: String,
    pub detail: Option<String>,
    pub source: Option<String>,
    /// The original message bytes, exactly.
    #[serde(skip)]
    pub message_bytes: Vec<u8>,
    /// The message as text (invalid UTF-8 replaced), for people and JSON output.
    pub message: String,
    pub attributes: serde_json::Value,
    pub delivery_attempts: Option<i64>,
    pub first_failed_micros: Option<i64>,
    pub last_failed_micros: i64,
    pub bqsync_version: Option<String>,
}
