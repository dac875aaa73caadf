//! Warehouses: where batches land.
//!
//! Invariants every backend keeps:
//! - [`Warehouse::land`] applies all the batches it is given in one transaction: all rows or none.
//! - Landing is idempotent: append tables insert only event ids not yet present; upsert tables change
//!   a row only when the incoming version is higher than the stored one (deletes are versioned
//!   tombstones), so re-delivered and out-of-order events leave the same final state.
//! - (BigQuery) landing appends to landing tables, and [`Warehouse::settle`] or the background
//!   [`Warehouse::maintain`] applies them; the idempotence above holds for that apply.
//! - A landing takes the batch's [`Receipts`] and returns them inside the [`Committed`] proof once
//!   its transaction committed, and only then (see the invariant in [`crate::worker`]).

#[cfg(feature = "gcp")]
pub mod archive;
#[cfg(feature = "gcp")]
pub mod bigquery;
#[cfg(feature = "gcp")]
pub mod cost_guard;
#[cfg(feature = "embedded")]
pub mod duckdb;
#[cfg(feature = "embedded")]
mod duckdb_append;
#[cfg(feature = "embedded")]
mod duckdb_arrow;
#[cfg(feature = "embedded")]
mod duckdb_newest;
#[cfg(feature = "embedded")]
pub mod duckdb_query;
#[cfg(feature = "embedded")]
mod duckdb_vacuum;
pub mod remote;
pub mod sql;

use async_trait::async_trait;

use crate::ack::{Committed, Receipts};
pub use crate::batch::{StagedRow, TableBatch};
use crate::config::warehouse::{WarehouseConfig, WarehouseKind};
use crate::config::GcsConfig;
pub use crate::dead_letter::{DeadLetterFilter, DeadLetterRecord};
use crate::envelope::Op;

/// A landing that failed: why, and the receipts it was given back, to nack or retry with.
#[derive(Debug)]
pub struct LandFailure {
    /// Boxed: a failure is the cold path, and the result of every landing stays small.
    pub error: Box<WarehouseError>,
    pub receipts: Receipts,
}

impl LandFailure {
    pub fn new(error: WarehouseError, receipts: Receipts) -> LandFailure {
        LandFailure { error: Box::new(error), receipts }
    }
}

/// What [`Warehouse::land`] returns: the commit proof carrying the receipts, and what changed per
/// table; or the failure with the receipts.
pub type LandResult = Result<(Committed<Receipts>, Vec<(String, LandStats)>), LandFailure>;

/// Seals a backend's landing: a commit wraps the receipts in the proof, a failure hands them back.
fn seal(result: Result<Vec<(String, LandStats)>, WarehouseError>, receipts: Receipts) -> LandResult {
    match result {
        Ok(stats) => Ok((Committed::new(receipts), stats)),
        Err(error) => Err(LandFailure::new(error, receipts)),
    }
}

/// The answer to [`Warehouse::query_read_only`]: column names, then rows of JSON values.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<serde_json::Value>>,
}

/// What one landing changed, per table.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LandStats {
    /// Rows inserted or updated (append: new event ids; upsert: keys whose version advanced).
    pub rows_changed: u64,
    /// Rows offered.
    pub rows_offered: u64,
}

/// How to change a column's type or mode, which no warehouse does in place: said by every refusal.
pub const MIGRATION_HINT: &str = "to change it, add a new NULLABLE column (e.g. `score_v2`) and backfill it with \
    `bqsync sync --full` or a replay, or land into a new table and switch readers over";

/// Errors of warehouse backends.
#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    #[cfg(feature = "embedded")]
    #[error("duckdb warehouse {path}: {context}: {source}")]
    DuckDb { path: String, context: String, source: ::duckdb::Error },
    /// A backend or command this binary was built without (see [`crate::features`]).
    #[error("{0}")]
    NotBuilt(String),
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
    /// A batch breaks an invariant the worker keeps: a bug, never retried.
    #[error("refused batch (a bqsync bug): {0}")]
    Invariant(String),
}

impl WarehouseError {
    /// True when retrying the same batch can succeed (I/O, locks, a restarting service).
    pub fn is_transient(&self) -> bool {
        match self {
            WarehouseError::UnknownTable(_)
            | WarehouseError::SchemaChange { .. }
            | WarehouseError::CostGuard(_)
            | WarehouseError::Config(_)
            | WarehouseError::NotBuilt(_)
            | WarehouseError::Invariant(_) => false,
            WarehouseError::BigQuery { transient, .. } => *transient,
            #[cfg(feature = "embedded")]
            WarehouseError::DuckDb { .. } => true,
            WarehouseError::Task(_) | WarehouseError::Archive(_) => true,
        }
    }
}

impl crate::retry::Transient for WarehouseError {
    fn is_transient(&self) -> bool {
        WarehouseError::is_transient(self)
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
// With neither feature (the fuzz targets' build) no warehouse exists: every arm returns early.
#[cfg_attr(not(any(feature = "embedded", feature = "gcp")), allow(unused_variables, unreachable_code))]
pub async fn open(
    config: &WarehouseConfig,
    gcs: &GcsConfig,
    catalog: std::sync::Arc<crate::schema::Catalog>,
) -> Result<std::sync::Arc<dyn Warehouse>, WarehouseError> {
    let warehouse: std::sync::Arc<dyn Warehouse> = match config.kind {
        #[cfg(feature = "embedded")]
        WarehouseKind::Duckdb => std::sync::Arc::new(open_duckdb_waiting(&config.duckdb, &catalog).await?),
        #[cfg(not(feature = "embedded"))]
        WarehouseKind::Duckdb => {
            return Err(WarehouseError::NotBuilt(crate::features::missing("the DuckDB warehouse", "embedded")))
        }
        #[cfg(feature = "gcp")]
        WarehouseKind::Bigquery => {
            std::sync::Arc::new(bigquery::BigQueryWarehouse::connect(&config.bigquery, catalog.clone()).await?)
        }
        #[cfg(not(feature = "gcp"))]
        WarehouseKind::Bigquery => {
            return Err(WarehouseError::NotBuilt(crate::features::missing("the BigQuery warehouse", "gcp")))
        }
    };
    with_archive(warehouse, gcs, catalog).await
}

/// Wraps `warehouse` in the GCS archive when `[gcs]` has a bucket and `archive` on.
#[cfg(feature = "gcp")]
async fn with_archive(
    warehouse: std::sync::Arc<dyn Warehouse>,
    gcs: &GcsConfig,
    catalog: std::sync::Arc<crate::schema::Catalog>,
) -> Result<std::sync::Arc<dyn Warehouse>, WarehouseError> {
    if !gcs.archive {
        return Ok(warehouse);
    }
    match crate::gcs::Gcs::connect(gcs).await.map_err(|e| WarehouseError::Archive(e.to_string()))? {
        Some(gcs) => Ok(std::sync::Arc::new(archive::ArchivingWarehouse::new(warehouse, gcs, catalog))),
        None => Ok(warehouse),
    }
}

#[cfg(not(feature = "gcp"))]
async fn with_archive(
    warehouse: std::sync::Arc<dyn Warehouse>,
    gcs: &GcsConfig,
    _: std::sync::Arc<crate::schema::Catalog>,
) -> Result<std::sync::Arc<dyn Warehouse>, WarehouseError> {
    match gcs.archive && gcs.bucket.is_some() {
        true => Err(WarehouseError::NotBuilt(crate::features::missing("the GCS archive (`[gcs] archive`)", "gcp"))),
        false => Ok(warehouse),
    }
}

#[cfg(feature = "embedded")]
/// Opens the DuckDB warehouse, waiting as long as another process (a notebook, a DuckDB shell) holds
/// the file: bqsync pauses rather than exits, and says every 30 s which process holds it. Nothing is
/// consumed meanwhile (the warehouse is opened before the worker starts), so nothing can be lost.
async fn open_duckdb_waiting(
    config: &duckdb::DuckDbConfig,
    catalog: &std::sync::Arc<crate::schema::Catalog>,
) -> Result<duckdb::DuckDbWarehouse, WarehouseError> {
    const RETRY: std::time::Duration = std::time::Duration::from_secs(1);
    const SAY_EVERY: u32 = 30;
    let mut attempts = 0u32;
    loop {
        let error = match duckdb::DuckDbWarehouse::open(config, catalog.clone()) {
            Ok(warehouse) => return Ok(warehouse),
            Err(error) => error,
        };
        let holder = match &error {
            WarehouseError::DuckDb { source, .. } => lock_holder(&source.to_string()),
            _ => None,
        };
        let Some(holder) = holder else { return Err(error) };
        if attempts.is_multiple_of(SAY_EVERY) {
            tracing::warn!(
                path = %config.path.display(), %holder,
                "the warehouse file is held by another process; waiting for it to let go (close its connection)"
            );
        }
        attempts += 1;
        tokio::time::sleep(RETRY).await;
    }
}

/// The process DuckDB names as holding a file's lock ("Conflicting lock is held in PROGRAM (PID N)
/// by user U"), from its error message; None when the error is not a lock conflict.
pub fn lock_holder(message: &str) -> Option<String> {
    let (_, holder) = message.split_once("Conflicting lock is held in ")?;
    Some(holder.split(". See also").next().unwrap_or(holder).trim().to_string())
}

/// One line naming the configured warehouse, for people.
pub fn describe(config: &WarehouseConfig) -> String {
    match config.kind {
        WarehouseKind::Duckdb => format!("duckdb {}", config.duckdb.path.display()),
        WarehouseKind::Bigquery => format!(
            "bigquery {}.{}",
            crate::gcp::project(config.bigquery.project.as_deref(), &["BIGQUERY_PROJECT", "GOOGLE_CLOUD_PROJECT"])
                .unwrap_or_else(|| "?".into()),
            config.bigquery.dataset
        ),
    }
}

/// A TIMESTAMP as RFC 3339 UTC with microseconds, as BigQuery's JSON and the query answers show it.
pub fn format_timestamp(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
        .unwrap_or_else(|| micros.to_string())
}

/// A DATE (days since 1970-01-01) as `YYYY-MM-DD`.
pub fn format_date(days: i32) -> String {
    chrono::NaiveDate::from_num_days_from_ce_opt(days + 719_163)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| days.to_string())
}

/// A warehouse backend.
#[async_trait]
pub trait Warehouse: Send + Sync {
    /// Creates missing tables from the catalog and adds new NULLABLE columns; refuses breaking changes.
    async fn ensure_tables(&self) -> Result<(), WarehouseError>;
    /// Lands all batches in one transaction; the proof it returns carries `receipts`.
    async fn land(&self, batches: std::sync::Arc<Vec<TableBatch>>, receipts: Receipts) -> LandResult;
    /// Live rows per table (tombstones excluded), for status and tests.
    async fn row_counts(&self) -> Result<Vec<(String, u64)>, WarehouseError>;
    /// Dead letters by (table, reason), for status.
    async fn dead_letter_counts(&self) -> Result<Vec<(String, String, u64)>, WarehouseError>;
    /// Background upkeep until `shutdown` stops (BigQuery: the applier); spawned beside the worker.
    async fn maintain(&self, shutdown: crate::shutdown::Shutdown) {
        let _ = shutdown;
    }
    /// Makes what this process landed visible in the tables themselves before a one-shot run
    /// returns (BigQuery: applies the landed rows now). Nothing to do where landing is applying.
    async fn settle(&self) -> Result<(), WarehouseError> {
        Ok(())
    }
    /// The cost forecast (`bqsync cost`, `GET /cost`); None where queries cost nothing (DuckDB).
    async fn cost_forecast(&self) -> Result<Option<serde_json::Value>, WarehouseError> {
        Ok(None)
    }
    /// Readiness: the warehouse answers now.
    async fn ping(&self) -> Result<(), WarehouseError> {
        Ok(())
    }
    /// Dead letters matching `filter`, newest first (for `bqsync dlq` and `bqsync replay`).
    async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetterRecord>, WarehouseError> {
        let _ = filter;
        Err(WarehouseError::Task("this warehouse cannot list dead letters".into()))
    }
    /// One read-only SQL query (`bqsync sql`): nothing it does is kept.
    async fn query_read_only(&self, sql: &str) -> Result<QueryResult, WarehouseError> {
        let _ = sql;
        Err(WarehouseError::Task(
            "`bqsync sql` reads the embedded DuckDB warehouse; query BigQuery with `bq query` or the console".into(),
        ))
    }
}
