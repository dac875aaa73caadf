//! The BigQuery warehouse, on `gcp-bigquery-client`.
//!
//! One landing of a table is a fixed sequence of requests, never one per row:
//! 1. create a staging table named after the batch (`_bqsync_stage_TABLE_BATCHID`, expiring on its
//!    own) with the live table's columns;
//! 2. stream the rows into it with `tabledata.insertAll` (`insertId` = event id, `skipInvalidRows`), in
//!    chunks; rows BigQuery rejects are reported per row and dead-lettered with BigQuery's message
//!    while the others go on;
//! 3. one query job applies the staged rows: insert-if-absent on the event id (append tables, reading
//!    only the partitions the batch touches) or a version-guarded MERGE (upsert tables);
//! 4. the staging table is dropped.
//!
//! Invariants:
//! - **Idempotent.** The job id is derived from the batch (`bqsync_TABLE_BATCHID`): a batch landed
//!   again (redelivery, a worker killed after the job but before the ack) meets `409 Already Exists`,
//!   finds the finished job and is recognised instead of applied twice. And the SQL itself only adds
//!   unseen event ids / newer versions, so even a new job id changes nothing twice.
//! - **Ack only after the job is DONE** without error: the landing's proof is made only then.
//! - Tables of one landing are applied one after another (BigQuery has no cross-table transaction
//!   for jobs); a failure part-way is retried as a whole and the tables already applied are no-ops.
//! - Every query job goes through the [`CostGuard`]: `maximumBytesBilled`, dry-run estimate, budget,
//!   protected tables.
//! - Retryable errors (5xx, 429, rate limits, "concurrent update", connection errors) are retried
//!   with exponential backoff and jitter; what still fails is a transient [`WarehouseError`], and the
//!   worker's circuit breaker stops pulling until BigQuery answers again.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use gcp_bigquery_client::error::BQError;
use gcp_bigquery_client::model::clustering::Clustering;
use gcp_bigquery_client::model::dataset::Dataset;
use gcp_bigquery_client::model::job::Job;
use gcp_bigquery_client::model::query_request::QueryRequest;
use gcp_bigquery_client::model::table::Table;
use gcp_bigquery_client::model::table_data_insert_all_request::TableDataInsertAllRequest;
use gcp_bigquery_client::model::table_data_insert_all_request_rows::TableDataInsertAllRequestRows;
use gcp_bigquery_client::model::table_field_schema::TableFieldSchema;
use gcp_bigquery_client::model::table_schema::TableSchema as BqTableSchema;
use gcp_bigquery_client::model::time_partitioning::TimePartitioning;
use gcp_bigquery_client::Client;
use serde_json::{Map, Value};

pub use super::batch_id;
use super::bigquery_sql::{self as bsql, PartitionRange};
use super::cost_guard::CostGuard;
use super::sql::{DELETED, EVENT_ID, LANDED_AT, VERSION};
use super::{
    seal, DeadLetterFilter, DeadLetterRecord, LandResult, LandStats, StagedRow, TableBatch, Warehouse, WarehouseError,
};
use crate::ack::Receipts;
use crate::dead_letter::{DeadLetter, DeadLetterReason, DEAD_LETTER_TABLE};
use crate::envelope::Op;
use crate::message::{Attributes, Message};
use crate::retry::{retry, Policy};
use crate::schema::encode_base64;
use crate::schema::{Catalog, CellValue, Column, ColumnMode, ColumnType, TableSchema, WriteMode};

pub use crate::config::warehouse::bigquery::BigQueryConfig;

impl BigQueryConfig {
    /// The project, from the config or the environment.
    pub fn resolved_project(&self) -> Result<String, WarehouseError> {
        let project = crate::gcp::project(self.project.as_deref(), &["BIGQUERY_PROJECT", "GOOGLE_CLOUD_PROJECT"])
            .ok_or_else(|| {
                config_error("no project: set [warehouse.bigquery] project, $BIGQUERY_PROJECT or $GOOGLE_CLOUD_PROJECT")
            })?;
        bsql::check_path_part("warehouse.bigquery.project", &project).map_err(config_error)?;
        Ok(project)
    }

    /// The REST endpoint (without `/bigquery/v2`), or None for Google's.
    pub fn resolved_endpoint(&self) -> Option<String> {
        crate::gcp::endpoint(self.endpoint.as_deref(), "BIGQUERY_EMULATOR_HOST")
    }

    fn check(&self) -> Result<(), WarehouseError> {
        bsql::check_path_part("warehouse.bigquery.dataset", &self.dataset).map_err(config_error)?;
        if !(1..=10_000).contains(&self.insert_chunk_rows) {
            return Err(config_error("warehouse.bigquery.insert_chunk_rows must be 1..=10000"));
        }
        if self.request_attempts == 0 {
            return Err(config_error("warehouse.bigquery.request_attempts must be >= 1"));
        }
        Ok(())
    }
}

fn config_error(problem: impl Into<String>) -> WarehouseError {
    WarehouseError::Config(problem.into())
}

/// A token for emulators, which accept any (tests and benchmarks use it for their own clients too).
#[derive(Clone)]
pub struct EmulatorToken;

#[async_trait]
impl gcp_bigquery_client::auth::Authenticator for EmulatorToken {
    async fn access_token(&self) -> Result<String, BQError> {
        Ok("emulator".into())
    }
}

/// A failed request, after its retries.
#[derive(Debug)]
struct Failure {
    code: Option<i64>,
    message: String,
    transient: bool,
}

impl crate::retry::Transient for Failure {
    fn is_transient(&self) -> bool {
        self.transient
    }
}

impl Failure {
    fn from_error(error: &BQError) -> Failure {
        match error {
            BQError::ResponseError { error } => {
                let nested = &error.error;
                let reasons: Vec<&str> =
                    nested.errors.iter().filter_map(|e| e.get("reason").map(String::as_str)).collect();
                let transient = nested.code >= 500
                    || nested.code == 429
                    || reasons.iter().any(|r| is_retryable_reason(r))
                    || is_retryable_message(&nested.message);
                Failure { code: Some(nested.code), message: nested.message.clone(), transient }
            }
            // Connection refused or reset, timeouts, a body that is not the API's JSON (a proxy).
            BQError::RequestError(e) => Failure { code: None, message: e.to_string(), transient: true },
            other => Failure { code: None, message: other.to_string(), transient: false },
        }
    }

    fn into_error(self, context: impl Into<String>) -> WarehouseError {
        WarehouseError::BigQuery { context: context.into(), message: self.message, transient: self.transient }
    }
}

fn is_retryable_reason(reason: &str) -> bool {
    matches!(reason, "rateLimitExceeded" | "backendError" | "internalError" | "jobRateLimitExceeded" | "quotaExceeded")
}

/// "Could not serialize access to table … due to concurrent update": two MERGE jobs on one table.
fn is_retryable_message(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("concurrent update") || m.contains("could not serialize access") || m.contains("retry")
}

/// What a BigQuery warehouse has sent so far (for benchmarks, status and metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BigQueryCounters {
    /// Query jobs started (landing jobs; a retried job counts again).
    pub query_jobs: u64,
    /// Landing jobs found already done under their id (recognised, not run again).
    pub jobs_recognised: u64,
    /// Dry runs (no job is created).
    pub dry_runs: u64,
    /// `tabledata.insertAll` requests.
    pub insert_all_requests: u64,
    /// Rows BigQuery rejected (dead-lettered).
    pub rows_rejected: u64,
    /// Bytes billed by the jobs (0 on emulators).
    pub bytes_billed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    query_jobs: std::sync::atomic::AtomicU64,
    jobs_recognised: std::sync::atomic::AtomicU64,
    dry_runs: std::sync::atomic::AtomicU64,
    insert_all_requests: std::sync::atomic::AtomicU64,
    rows_rejected: std::sync::atomic::AtomicU64,
}

fn bump(counter: &std::sync::atomic::AtomicU64, by: u64) {
    counter.fetch_add(by, std::sync::atomic::Ordering::Relaxed);
}

/// The BigQuery warehouse.
pub struct BigQueryWarehouse {
    counters: Counters,
    client: Client,
    config: BigQueryConfig,
    project: String,
    catalog: Arc<Catalog>,
    guard: CostGuard,
    /// User columns of each live table as BigQuery has them (read or made by `ensure_tables`).
    live: Mutex<HashMap<String, Vec<TableFieldSchema>>>,
}

impl BigQueryWarehouse {
    /// Connects (nothing is sent until the first call).
    pub async fn connect(config: &BigQueryConfig, catalog: Arc<Catalog>) -> Result<BigQueryWarehouse, WarehouseError> {
        config.check()?;
        let project = config.resolved_project()?;
        let guard = CostGuard::new(config.cost.clone()).map_err(config_error)?;
        let endpoint = config.resolved_endpoint();
        let timeout = Duration::from_secs(config.request_timeout_secs.max(1));
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| config_error(format!("building the HTTP client: {e}")))?;
        let mut builder = gcp_bigquery_client::client_builder::ClientBuilder::new();
        builder.with_client(http);
        if let Some(endpoint) = &endpoint {
            builder.with_v2_base_url(format!("{endpoint}/bigquery/v2"));
        }
        let anonymous = crate::gcp::is_anonymous(config.credentials, endpoint.as_deref());
        let client = if anonymous {
            builder.build_from_authenticator(Arc::new(EmulatorToken)).await
        } else {
            builder.build_from_application_default_credentials().await
        }
        .map_err(|e| WarehouseError::BigQuery {
            context: "connecting".into(),
            message: e.to_string(),
            transient: false,
        })?;
        tracing::info!(project, dataset = %config.dataset, endpoint = endpoint.as_deref().unwrap_or("google"), "BigQuery warehouse");
        Ok(BigQueryWarehouse {
            client,
            config: config.clone(),
            project,
            catalog,
            guard,
            live: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        })
    }

    /// What this warehouse has sent so far.
    pub fn counters(&self) -> BigQueryCounters {
        let read = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        BigQueryCounters {
            query_jobs: read(&self.counters.query_jobs),
            jobs_recognised: read(&self.counters.jobs_recognised),
            dry_runs: read(&self.counters.dry_runs),
            insert_all_requests: read(&self.counters.insert_all_requests),
            rows_rejected: read(&self.counters.rows_rejected),
            bytes_billed: self.guard.billed(),
        }
    }

    fn path(&self, table: &str) -> String {
        bsql::table_path(&self.project, &self.config.dataset, table)
    }

    /// The request retry policy: `request_attempts` tries, from `retry_initial_ms`, up to 10 s.
    fn request_policy(&self) -> Policy {
        Policy::exponential(Duration::from_millis(self.config.retry_initial_ms), Duration::from_secs(10))
            .with_max_attempts(self.config.request_attempts as usize)
    }

    /// Runs `call` until it succeeds, fails permanently, or runs out of attempts (see
    /// [`crate::retry`]).
    async fn retrying<T, F, Fut>(&self, what: &str, mut call: F) -> Result<T, Failure>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, BQError>>,
    {
        let on_retry = |failure: &Failure, wait: Duration| {
            tracing::warn!(what, retry_in_ms = wait.as_millis() as u64, error = %failure.message, "BigQuery request failed; retrying");
        };
        retry(self.request_policy(), on_retry, || {
            let call = call();
            async move { call.await.map_err(|e| Failure::from_error(&e)) }
        })
        .await
    }

    async fn ensure_dataset(&self) -> Result<(), WarehouseError> {
        let (project, dataset) = (&self.project, &self.config.dataset);
        match self.retrying("get dataset", || self.client.dataset().get(project, dataset)).await {
            Ok(_) => return Ok(()),
            Err(f) if f.code == Some(404) => {}
            Err(f) => return Err(f.into_error(format!("reading dataset {project}.{dataset}"))),
        }
        let request = Dataset::new(project, dataset).location(&self.config.location);
        match self.retrying("create dataset", || self.client.dataset().create(request.clone())).await {
            Ok(_) => {
                tracing::info!(dataset = %dataset, "created dataset");
                Ok(())
            }
            Err(f) if f.code == Some(409) => Ok(()),
            Err(f) => Err(f.into_error(format!("creating dataset {project}.{dataset}"))),
        }
    }

    async fn get_table(&self, table: &str) -> Result<Option<Table>, WarehouseError> {
        let (project, dataset) = (&self.project, &self.config.dataset);
        match self.retrying("get table", || self.client.table().get(project, dataset, table, None)).await {
            Ok(t) => Ok(Some(t)),
            Err(f) if f.code == Some(404) => Ok(None),
            Err(f) => Err(f.into_error(format!("reading table {table}"))),
        }
    }

    fn new_table(&self, schema: &TableSchema) -> Table {
        let fields = bsql::table_fields(schema);
        let mut table = Table::new(&self.project, &self.config.dataset, &schema.table, BqTableSchema::new(fields));
        table.description = schema.description.clone();
        if let Some(partition) = &schema.partition {
            table.time_partitioning = Some(TimePartitioning {
                r#type: partition.granularity.as_str().to_string(),
                field: Some(partition.column.clone()),
                ..Default::default()
            });
        }
        if !schema.cluster.is_empty() {
            table.clustering = Some(Clustering { fields: Some(schema.cluster.clone()) });
        }
        table
    }

    /// Creates the table if absent, else adds new NULLABLE columns and refuses breaking changes.
    async fn ensure_table(&self, schema: &TableSchema) -> Result<(), WarehouseError> {
        self.guard.check_writable(&schema.table).map_err(|r| WarehouseError::CostGuard(r.to_string()))?;
        let live = match self.get_table(&schema.table).await? {
            Some(live) => live,
            None => {
                let request = self.new_table(schema);
                match self.retrying("create table", || self.client.table().create(request.clone())).await {
                    Ok(created) => {
                        tracing::info!(table = %schema.table, "created table");
                        created
                    }
                    Err(f) if f.code == Some(409) => self
                        .get_table(&schema.table)
                        .await?
                        .ok_or_else(|| WarehouseError::Task(format!("table {} vanished", schema.table)))?,
                    Err(f) => return Err(f.into_error(format!("creating table {}", schema.table))),
                }
            }
        };
        let live_fields = live.schema.fields.clone().unwrap_or_default();
        let evolution = plan_evolution(schema, &live_fields, &self.config.dataset)?;
        let fields = if evolution.added.is_empty() {
            live_fields
        } else {
            let mut fields = live_fields;
            fields.extend(evolution.added.iter().cloned());
            let mut patch = live.clone();
            patch.schema = BqTableSchema::new(fields.clone());
            let (project, dataset) = (&self.project, &self.config.dataset);
            self.retrying("patch table", || self.client.table().patch(project, dataset, &schema.table, patch.clone()))
                .await
                .map_err(|f| f.into_error(format!("adding columns to {}", schema.table)))?;
            for added in &evolution.added {
                tracing::info!(table = %schema.table, column = %added.name, "added column");
            }
            fields
        };
        let user_fields =
            schema.columns.iter().filter_map(|c| fields.iter().find(|f| f.name == c.name).cloned()).collect();
        self.live.lock().unwrap_or_else(|p| p.into_inner()).insert(schema.table.clone(), user_fields);
        Ok(())
    }

    fn live_fields(&self, table: &str) -> Result<Vec<TableFieldSchema>, WarehouseError> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(table)
            .cloned()
            .ok_or_else(|| WarehouseError::Task(format!("table {table} was not ensured before landing")))
    }

    /// Lands one table's rows; returns its stats and the rows BigQuery rejected, with its message.
    async fn land_table(&self, batch: &TableBatch) -> Result<(LandStats, Vec<(usize, String)>), WarehouseError> {
        let schema = self.catalog.get(&batch.table).ok_or_else(|| WarehouseError::UnknownTable(batch.table.clone()))?;
        self.guard.check_writable(&schema.table).map_err(|r| WarehouseError::CostGuard(r.to_string()))?;
        let batch_id = batch_id(&self.config.dataset, batch);
        let stage_name = bsql::staging_table(&schema.table, &batch_id);
        self.create_staging(&stage_name, &self.live_fields(&schema.table)?).await?;
        let rejected = self.stage_rows(&stage_name, schema, &batch.rows).await?;
        let mut stats = LandStats { rows_changed: 0, rows_offered: batch.rows.len() as u64 };
        if rejected.len() < batch.rows.len() {
            let (target, stage) = (self.path(&schema.table), self.path(&stage_name));
            let sql = match schema.write_mode {
                WriteMode::Append => {
                    bsql::insert_new_events(&target, &stage, schema, self.partition_range(schema, batch))
                }
                WriteMode::Upsert => bsql::merge_versioned(&target, &stage, schema),
            };
            stats.rows_changed =
                self.apply(&schema.table, &format!("bqsync_{}_{batch_id}", schema.table), &sql).await?;
        }
        let (project, dataset) = (&self.project, &self.config.dataset);
        if !self.client.table().delete_if_exists(project, dataset, &stage_name).await {
            tracing::debug!(table = %stage_name, "staging table not dropped; it expires on its own");
        }
        Ok((stats, rejected))
    }

    async fn create_staging(&self, name: &str, user_fields: &[TableFieldSchema]) -> Result<(), WarehouseError> {
        let mut table = Table::new(
            &self.project,
            &self.config.dataset,
            name,
            BqTableSchema::new(bsql::staging_fields(user_fields)),
        );
        let expires = chrono::Utc::now().timestamp_millis() + (self.config.staging_expiration_secs as i64) * 1000;
        table.expiration_time = Some(expires.to_string());
        match self.retrying("create staging table", || self.client.table().create(table.clone())).await {
            // 409: a retry of the same batch; its rows are staged again below and deduplicated.
            Ok(_) => Ok(()),
            Err(f) if f.code == Some(409) => Ok(()),
            Err(f) => Err(f.into_error(format!("creating staging table {name}"))),
        }
    }

    /// Streams rows into the staging table; returns (index in `rows`, BigQuery's message) of each row
    /// it rejected.
    async fn stage_rows(
        &self,
        stage: &str,
        schema: &TableSchema,
        rows: &[StagedRow],
    ) -> Result<Vec<(usize, String)>, WarehouseError> {
        let mut rejected = Vec::new();
        let (project, dataset) = (&self.project, &self.config.dataset);
        for (chunk_index, chunk) in rows.chunks(self.config.insert_chunk_rows).enumerate() {
            let offset = chunk_index * self.config.insert_chunk_rows;
            let mut request = TableDataInsertAllRequest::new();
            request.skip_invalid_rows();
            let encoded = chunk
                .iter()
                .enumerate()
                .map(|(i, row)| TableDataInsertAllRequestRows {
                    insert_id: Some(row.event_id.clone()),
                    json: Value::Object(staging_row(schema, row, offset + i)),
                })
                .collect();
            request.add_rows(encoded).map_err(|e| WarehouseError::Task(e.to_string()))?;
            bump(&self.counters.insert_all_requests, 1);
            let response = self
                .retrying("insertAll", || self.client.tabledata().insert_all(project, dataset, stage, request.clone()))
                .await
                .map_err(|f| f.into_error(format!("staging rows of {}", schema.table)))?;
            for error in response.insert_errors.unwrap_or_default() {
                let Some(index) = error.index else { continue };
                let messages: Vec<String> = error
                    .errors
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|e| e.reason.as_deref() != Some("stopped"))
                    .map(|e| match e.location.as_deref() {
                        Some(location) if !location.is_empty() => {
                            format!("{}: {}", location, e.message.unwrap_or_default())
                        }
                        _ => e.message.unwrap_or_default(),
                    })
                    .collect();
                if messages.is_empty() {
                    // "stopped" only: with skipInvalidRows it should not happen; retry the landing.
                    return Err(WarehouseError::BigQuery {
                        context: format!("staging rows of {}", schema.table),
                        message: "insertAll stopped a valid row".into(),
                        transient: true,
                    });
                }
                rejected.push((offset + index as usize, messages.join("; ")));
                bump(&self.counters.rows_rejected, 1);
            }
        }
        Ok(rejected)
    }

    /// The partitions an append batch touches, for the event-id check.
    fn partition_range(&self, schema: &TableSchema, batch: &TableBatch) -> Option<PartitionRange> {
        let partition = schema.partition.as_ref()?;
        let index = schema.column_index(&partition.column)?;
        let is_date = schema.columns[index].column_type == ColumnType::Date;
        let values = batch.rows.iter().map(|row| match row.cells.get(index) {
            Some(CellValue::Timestamp(micros)) => Some(*micros),
            Some(CellValue::Date(days)) => Some(i64::from(*days)),
            _ => None,
        });
        let range = PartitionRange::covering(values, is_date)?;
        Some(match self.config.append_dedup_window_days {
            0 => range,
            days => range.clamp_to_window(chrono::Utc::now().timestamp_micros(), days),
        })
    }

    /// Runs the landing query under a job id derived from the batch; returns the rows it changed (0
    /// when the job had already run: recognised, not applied again).
    async fn apply(&self, table: &str, job_id: &str, sql: &str) -> Result<u64, WarehouseError> {
        let span = tracing::info_span!("bigquery_job", table, job_id);
        tracing::Instrument::instrument(self.apply_in_span(table, job_id, sql), span).await
    }

    async fn apply_in_span(&self, table: &str, job_id: &str, sql: &str) -> Result<u64, WarehouseError> {
        if self.guard.config().dry_run {
            let estimate = self.dry_run(sql).await?;
            tracing::info!(table, estimate_bytes = estimate, "dry run");
            self.guard.check_estimate(estimate).map_err(|r| WarehouseError::CostGuard(r.to_string()))?;
        }
        let mut pacer = self.request_policy().pacer();
        for attempt in 0..self.config.request_attempts {
            // A failed job keeps its id: a new attempt needs a new one (still derived from the batch).
            let id = if attempt == 0 { job_id.to_string() } else { format!("{job_id}_r{attempt}") };
            let job = self.guard.query_job(&self.project, Some(&self.config.location), Some(&id), sql);
            bump(&self.counters.query_jobs, 1);
            let (job, recognised) =
                match self.retrying("insert job", || self.client.job().insert(&self.project, job.clone())).await {
                    Ok(job) => (job, false),
                    Err(f) if f.code == Some(409) => {
                        bump(&self.counters.jobs_recognised, 1);
                        let existing = self
                            .retrying("get job", || {
                                self.client.job().get_job(&self.project, &id, Some(&self.config.location))
                            })
                            .await
                            .map_err(|f| f.into_error(format!("reading job {id}")))?;
                        (existing, true)
                    }
                    Err(f) => return Err(f.into_error(format!("starting job {id} on {table}"))),
                };
            let job = self.wait_done(&id, job).await?;
            let status = job.status.as_ref();
            match status.and_then(|s| s.error_result.as_ref()) {
                None => {
                    let billed = billed_bytes(&job);
                    if !recognised {
                        self.guard.record_billed(billed);
                        crate::metrics::global().set_bytes_billed(self.guard.billed());
                    }
                    let changed = if recognised { 0 } else { affected_rows(&job) };
                    if recognised {
                        tracing::info!(table, job_id = %id, "job already ran: recognised, not applied twice");
                    }
                    tracing::debug!(table, job_id = %id, changed, billed, "job done");
                    return Ok(changed);
                }
                Some(error) => {
                    let message = error.message.clone().unwrap_or_default();
                    let reason = error.reason.clone().unwrap_or_default();
                    if !(is_retryable_reason(&reason) || is_retryable_message(&message)) {
                        return Err(WarehouseError::BigQuery {
                            context: format!("job {id} on {table}"),
                            message,
                            transient: false,
                        });
                    }
                    tracing::warn!(table, job_id = %id, error = %message, "job failed; retrying under a new id");
                    if attempt + 1 < self.config.request_attempts {
                        pacer.pause().await;
                    }
                }
            }
        }
        Err(WarehouseError::BigQuery {
            context: format!("landing {table}"),
            message: format!("{} job attempts failed", self.config.request_attempts),
            transient: true,
        })
    }

    async fn dry_run(&self, sql: &str) -> Result<u64, WarehouseError> {
        let job = self.guard.query_job(&self.project, Some(&self.config.location), None, sql);
        bump(&self.counters.dry_runs, 1);
        let done = self
            .retrying("dry run", || self.client.job().insert(&self.project, job.clone()))
            .await
            .map_err(|f| f.into_error("dry run"))?;
        Ok(done
            .statistics
            .as_ref()
            .and_then(|s| s.total_bytes_processed.as_deref())
            .and_then(|b| b.parse().ok())
            .unwrap_or(0))
    }

    /// Polls a job until DONE (the emulator answers DONE at once; BigQuery may take seconds).
    async fn wait_done(&self, id: &str, mut job: Job) -> Result<Job, WarehouseError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(self.config.job_timeout_secs);
        // Polling, not retrying: a growing pause from 100 ms to 2 s, no jitter, until DONE.
        let mut poll = Policy::exponential(Duration::from_millis(100), Duration::from_secs(2)).without_jitter().pacer();
        while job.status.as_ref().and_then(|s| s.state.as_deref()) != Some("DONE") {
            if tokio::time::Instant::now() >= deadline {
                // Transient: the next attempt finds the job by its id and waits again.
                return Err(WarehouseError::BigQuery {
                    context: format!("job {id}"),
                    message: format!("not done after {} s", self.config.job_timeout_secs),
                    transient: true,
                });
            }
            poll.pause().await;
            job = self
                .retrying("get job", || self.client.job().get_job(&self.project, id, Some(&self.config.location)))
                .await
                .map_err(|f| f.into_error(format!("reading job {id}")))?;
        }
        Ok(job)
    }

    /// A query whose result is small (counts), read in one response.
    async fn query_rows(&self, sql: &str) -> Result<Vec<Vec<Value>>, WarehouseError> {
        self.query_rows_with(sql, Vec::new()).await
    }

    /// A small query with named parameters (name, type, value).
    async fn query_rows_with(
        &self,
        sql: &str,
        params: Vec<(String, &'static str, String)>,
    ) -> Result<Vec<Vec<Value>>, WarehouseError> {
        use gcp_bigquery_client::model::query_parameter::QueryParameter;
        use gcp_bigquery_client::model::query_parameter_type::QueryParameterType;
        use gcp_bigquery_client::model::query_parameter_value::QueryParameterValue;
        let mut request = QueryRequest::new(sql);
        if !params.is_empty() {
            request.parameter_mode = Some("NAMED".into());
            request.query_parameters = Some(
                params
                    .into_iter()
                    .map(|(name, kind, value)| QueryParameter {
                        name: Some(name),
                        parameter_type: Some(QueryParameterType {
                            array_type: None,
                            struct_types: None,
                            r#type: kind.into(),
                        }),
                        parameter_value: Some(QueryParameterValue {
                            array_values: None,
                            struct_values: None,
                            value: Some(value),
                        }),
                    })
                    .collect(),
            );
        }
        request.max_results = Some(100_000);
        request.maximum_bytes_billed = Some(self.guard.config().maximum_bytes_billed.to_string());
        request.location = Some(self.config.location.clone());
        let response = self
            .retrying("query", || self.client.job().query(&self.project, request.clone()))
            .await
            .map_err(|f| f.into_error("query"))?;
        let rows = response
            .rows
            .unwrap_or_default()
            .into_iter()
            .map(|row| row.columns.unwrap_or_default().into_iter().map(|c| c.value.unwrap_or(Value::Null)).collect())
            .collect();
        Ok(rows)
    }

    /// Lands every table's batch; the dead letters last, so rows rejected by the other tables join
    /// them.
    async fn land_batches(&self, batches: &[TableBatch]) -> Result<Vec<(String, LandStats)>, WarehouseError> {
        let mut stats = Vec::with_capacity(batches.len());
        let mut dead_letters: Vec<StagedRow> = Vec::new();
        // Dead letters last, so rows rejected by the other tables join them.
        let (dead, others): (Vec<&TableBatch>, Vec<&TableBatch>) =
            batches.iter().filter(|b| !b.rows.is_empty()).partition(|b| b.table == DEAD_LETTER_TABLE);
        for batch in others {
            let (table_stats, rejected) = self.land_table(batch).await?;
            if !rejected.is_empty() {
                let schema = self.catalog.get(&batch.table).expect("landed tables have schemas");
                dead_letters.extend(self.rejected_dead_letters(schema, batch, &rejected));
            }
            stats.push((batch.table.clone(), table_stats));
        }
        for batch in dead {
            dead_letters.extend(batch.rows.iter().cloned());
        }
        if !dead_letters.is_empty() {
            let batch = TableBatch { table: DEAD_LETTER_TABLE.into(), rows: dead_letters };
            let (table_stats, rejected) = self.land_table(&batch).await?;
            if let Some((_, message)) = rejected.first() {
                // Nowhere left to put them: fail the landing so nothing is acked and lost.
                return Err(WarehouseError::BigQuery {
                    context: "landing dead letters".into(),
                    message: format!("BigQuery rejected {} dead-letter rows: {message}", rejected.len()),
                    transient: false,
                });
            }
            stats.push((DEAD_LETTER_TABLE.into(), table_stats));
        }
        Ok(stats)
    }

    /// Dead-letter rows for rows BigQuery rejected.
    fn rejected_dead_letters(
        &self,
        schema: &TableSchema,
        batch: &TableBatch,
        rejected: &[(usize, String)],
    ) -> Vec<StagedRow> {
        let no_attributes = Attributes::new();
        let now = chrono::Utc::now().timestamp_micros();
        rejected
            .iter()
            .filter_map(|(index, message)| {
                let row = batch.rows.get(*index)?;
                let data = rebuilt_envelope(schema, row);
                let rebuilt =
                    Message { data: &data, attributes: &no_attributes, delivery_attempt: 1, first_attempt_micros: now };
                let dead = DeadLetter {
                    reason: DeadLetterReason::WarehouseRejected,
                    detail: format!("BigQuery rejected the row: {message}"),
                    table: Some(schema.table.clone()),
                    event_id: Some(row.event_id.clone()),
                };
                tracing::warn!(table = %schema.table, event_id = %row.event_id, detail = %dead.detail, "dead-lettered");
                Some(dead.row(&self.catalog, rebuilt))
            })
            .collect()
    }
}

/// What `schemas/` asks of a live table: columns to add, or why not.
#[derive(Debug)]
struct Evolution {
    added: Vec<TableFieldSchema>,
}

/// Compares a schema file with the live table: new NULLABLE columns are added; a type change, a
/// dropped column or a new REQUIRED column is refused, naming the column and where.
fn plan_evolution(schema: &TableSchema, live: &[TableFieldSchema], dataset: &str) -> Result<Evolution, WarehouseError> {
    let refuse = |problem: String| Err(WarehouseError::SchemaChange { table: schema.table.clone(), problem });
    let where_ = format!("{dataset}.{} in BigQuery", schema.table);
    let type_of = |f: &TableFieldSchema| {
        serde_json::to_value(&f.r#type).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
    };
    let mut added = Vec::new();
    for column in &schema.columns {
        let wanted = bsql::column_field(schema, column);
        match live.iter().find(|f| f.name == column.name) {
            None if column.mode == ColumnMode::Required || bsql::warehouse_mode(schema, column) == "REQUIRED" => {
                return refuse(format!(
                    "new column `{}` is REQUIRED in schemas/{}.json; rows already in {where_} have no value for it. Add it as NULLABLE.",
                    column.name, schema.table
                ));
            }
            None => added.push(wanted),
            Some(existing) => {
                let (live_type, wanted_type) = (type_of(existing), type_of(&wanted));
                if bsql::canonical_type(&live_type) != bsql::canonical_type(&wanted_type) {
                    return refuse(format!(
                        "column `{}` is {live_type} in {where_} but {wanted_type} in schemas/{}.json; type changes need a migration",
                        column.name, schema.table
                    ));
                }
                let live_mode = existing.mode.as_deref().unwrap_or("NULLABLE");
                let wanted_mode = wanted.mode.as_deref().unwrap_or("NULLABLE");
                match (live_mode, wanted_mode) {
                    (a, b) if a == b => {}
                    ("REQUIRED", "NULLABLE") => tracing::warn!(
                        table = %schema.table, column = %column.name,
                        "column is REQUIRED in BigQuery but not in schemas/: rows without it will be dead-lettered"
                    ),
                    (a, b) => {
                        return refuse(format!(
                            "column `{}` is {a} in {where_} but would be {b} per schemas/{}.json; mode changes need a migration",
                            column.name, schema.table
                        ))
                    }
                }
            }
        }
    }
    let system = [EVENT_ID, VERSION, DELETED, LANDED_AT];
    for field in live {
        let known = schema.columns.iter().any(|c| c.name == field.name) || system.contains(&field.name.as_str());
        if !known {
            return refuse(format!(
                "column `{}` is in {where_} but not in schemas/{}.json; dropping columns needs a migration (or add it back as NULLABLE)",
                field.name, schema.table
            ));
        }
    }
    if let Some(missing) = system.iter().find(|s| !live.iter().any(|f| f.name == **s)) {
        return refuse(format!("{where_} lacks bqsync's column `{missing}`: was it created by something else?"));
    }
    Ok(Evolution { added })
}

fn affected_rows(job: &Job) -> u64 {
    job.statistics
        .as_ref()
        .and_then(|s| s.query.as_ref())
        .and_then(|q| q.num_dml_affected_rows.as_deref())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn billed_bytes(job: &Job) -> u64 {
    job.statistics
        .as_ref()
        .and_then(|s| s.query.as_ref())
        .and_then(|q| q.total_bytes_billed.as_deref())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A staged row as `insertAll` JSON: metadata, then the payload columns.
fn staging_row(schema: &TableSchema, row: &StagedRow, sequence: usize) -> Map<String, Value> {
    let mut json = payload_json(schema, row, true);
    json.insert(super::sql::STAGE_EVENT_ID.into(), Value::String(row.event_id.clone()));
    if let Some(version) = row.version {
        json.insert(super::sql::STAGE_VERSION.into(), Value::String(version.to_string()));
    }
    json.insert(super::sql::STAGE_DELETED.into(), Value::Bool(row.op == Op::Delete));
    json.insert(super::sql::STAGE_SEQUENCE.into(), Value::String(sequence.to_string()));
    json
}

/// The row's cells as JSON values BigQuery's JSON API reads: INT64 and NUMERIC as strings (no
/// precision loss), TIMESTAMP as RFC 3339 UTC, DATE as `YYYY-MM-DD`, BYTES as base64, RECORD and
/// REPEATED as JSON structures; a JSON column as its text when `json_as_text` (insertAll wants that).
pub(crate) fn payload_json(schema: &TableSchema, row: &StagedRow, json_as_text: bool) -> Map<String, Value> {
    let mut json = Map::with_capacity(schema.columns.len() + 4);
    for (column, cell) in schema.columns.iter().zip(&row.cells) {
        if let Some(value) = cell_json(column, cell, json_as_text) {
            json.insert(column.name.clone(), value);
        }
    }
    json
}

fn cell_json(column: &Column, cell: &CellValue, json_as_text: bool) -> Option<Value> {
    Some(match cell {
        CellValue::Null => return None,
        CellValue::String(s) => Value::String(s.clone()),
        CellValue::Int64(v) => Value::String(v.to_string()),
        CellValue::Float64(v) if v.is_finite() => serde_json::Number::from_f64(*v).map_or(Value::Null, Value::Number),
        CellValue::Float64(v) => Value::String(
            if v.is_nan() {
                "NaN"
            } else if *v > 0.0 {
                "Infinity"
            } else {
                "-Infinity"
            }
            .into(),
        ),
        CellValue::Bool(v) => Value::Bool(*v),
        CellValue::Timestamp(micros) => Value::String(format_timestamp(*micros)),
        CellValue::Date(days) => Value::String(format_date(*days)),
        CellValue::Bytes(bytes) => Value::String(encode_base64(bytes)),
        CellValue::JsonText(text) => {
            let structured = column.mode == ColumnMode::Repeated || bsql::field_type(column) == "RECORD";
            if column.column_type == ColumnType::Numeric || (!structured && json_as_text) {
                Value::String(text.clone())
            } else {
                serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone()))
            }
        }
    })
}

pub(crate) fn format_timestamp(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
        .unwrap_or_else(|| micros.to_string())
}

fn format_date(days: i32) -> String {
    chrono::NaiveDate::from_num_days_from_ce_opt(days + 719_163)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| days.to_string())
}

/// An envelope for a row BigQuery rejected, so the dead letter can be inspected and replayed.
fn rebuilt_envelope(schema: &TableSchema, row: &StagedRow) -> Vec<u8> {
    let payload = payload_json(schema, row, false);
    let key: Map<String, Value> =
        schema.primary_key.iter().filter_map(|k| payload.get(k).map(|v| (k.clone(), v.clone()))).collect();
    let payload_text = serde_json::to_string(&payload).expect("a JSON object serializes");
    // The original time is not carried this far; a fixed one keeps the bytes, and so the dead-letter
    // id, the same when the batch is landed again.
    let produced_at = format_timestamp(0);
    let event = crate::envelope::ChangeEvent {
        event_id: row.event_id.clone(),
        table: &schema.table,
        op: row.op,
        key: (!key.is_empty()).then_some(key),
        version: row.version,
        payload: &payload_text,
        source: "bigquery:rejected",
        produced_at: &produced_at,
    };
    event.to_bytes()
}

#[async_trait]
impl Warehouse for BigQueryWarehouse {
    async fn ensure_tables(&self) -> Result<(), WarehouseError> {
        self.ensure_dataset().await?;
        for table in self.catalog.tables() {
            self.ensure_table(table).await?;
        }
        Ok(())
    }

    async fn land(&self, batches: Arc<Vec<TableBatch>>, receipts: Receipts) -> LandResult {
        seal(self.land_batches(&batches).await, receipts)
    }

    /// One request, no retries, within 5 s: readiness must answer fast.
    async fn ping(&self) -> Result<(), WarehouseError> {
        let call = self.client.dataset().get(&self.project, &self.config.dataset);
        match tokio::time::timeout(Duration::from_secs(5), call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Failure::from_error(&e).into_error("ping")),
            Err(_) => Err(WarehouseError::BigQuery {
                context: "ping".into(),
                message: "no answer within 5 s".into(),
                transient: true,
            }),
        }
    }

    async fn row_counts(&self) -> Result<Vec<(String, u64)>, WarehouseError> {
        let mut counts = Vec::new();
        for table in self.catalog.tables() {
            let rows = match self.query_rows(&bsql::count_live_rows(&self.path(&table.table))).await {
                Ok(rows) => rows,
                // A table that does not exist yet (status before the first run) counts 0.
                Err(WarehouseError::BigQuery { transient: false, .. }) => Vec::new(),
                Err(e) => return Err(e),
            };
            counts.push((table.table.clone(), first_number(&rows, 0)));
        }
        Ok(counts)
    }

    async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetterRecord>, WarehouseError> {
        let (sql, params) = bsql::select_dead_letters(&self.path(DEAD_LETTER_TABLE), filter);
        let rows = self.query_rows_with(&sql, params).await?;
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
        let int = |v: Option<&Value>| text(v).and_then(|t| t.parse::<i64>().ok());
        Ok(rows
            .iter()
            .map(|r| {
                let bytes = text(r.get(6)).and_then(|b| crate::schema::decode_base64(&b)).unwrap_or_default();
                DeadLetterRecord {
                    dead_letter_id: text(r.first()).unwrap_or_default(),
                    event_id: text(r.get(1)),
                    table_name: text(r.get(2)),
                    reason: text(r.get(3)).unwrap_or_default(),
                    detail: text(r.get(4)),
                    source: text(r.get(5)),
                    message: String::from_utf8_lossy(&bytes).into_owned(),
                    message_bytes: bytes,
                    attributes: text(r.get(7)).and_then(|a| serde_json::from_str(&a).ok()).unwrap_or(Value::Null),
                    delivery_attempts: int(r.get(8)),
                    first_failed_micros: int(r.get(9)),
                    last_failed_micros: int(r.get(10)).unwrap_or(0),
                    bqsync_version: text(r.get(11)),
                }
            })
            .collect())
    }

    async fn dead_letter_counts(&self) -> Result<Vec<(String, String, u64)>, WarehouseError> {
        let rows = match self.query_rows(&bsql::count_dead_letters(&self.path(DEAD_LETTER_TABLE))).await {
            Ok(rows) => rows,
            Err(WarehouseError::BigQuery { transient: false, .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        Ok(rows
            .iter()
            .map(|r| {
                let text = |i: usize| r.get(i).and_then(Value::as_str).unwrap_or("?").to_string();
                (text(0), text(1), number(r.get(2)))
            })
            .collect())
    }
}

fn number(value: Option<&Value>) -> u64 {
    match value {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

fn first_number(rows: &[Vec<Value>], column: usize) -> u64 {
    number(rows.first().and_then(|r| r.get(column)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        crate::schema::project_catalog()
    }

    fn row(event_id: &str, version: Option<i64>) -> StagedRow {
        StagedRow { event_id: event_id.into(), op: Op::Upsert, version, cells: Vec::new() }
    }

    #[test]
    fn batch_ids_are_deterministic_and_name_safe() {
        let batch = |rows| TableBatch { table: "contacts_master".into(), rows };
        let a = batch_id("d", &batch(vec![row("e1", Some(1)), row("e2", Some(2))]));
        assert_eq!(a, batch_id("d", &batch(vec![row("e1", Some(1)), row("e2", Some(2))])));
        assert_ne!(a, batch_id("d", &batch(vec![row("e1", Some(1)), row("e2", Some(3))])));
        assert_ne!(a, batch_id("d", &batch(vec![row("e1", Some(1))])));
        assert_ne!(
            a,
            batch_id("other", &batch(vec![row("e1", Some(1)), row("e2", Some(2))])),
            "job ids are per project"
        );
        assert!(!a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric()), "{a}");
    }

    #[test]
    fn cells_encode_as_bigquery_json() {
        let catalog = catalog();
        let atoms = catalog.get("atoms").unwrap();
        let cells: Vec<CellValue> = atoms
            .columns
            .iter()
            .map(|c| match c.name.as_str() {
                "event_id" => CellValue::String("e".into()),
                "score" => CellValue::Float64(1.5),
                "tags" => CellValue::JsonText("[\"a\",\"b\"]".into()),
                "created_at" => CellValue::Timestamp(1_704_067_200_000_001),
                _ => CellValue::Null,
            })
            .collect();
        let json = payload_json(atoms, &StagedRow { event_id: "e".into(), op: Op::Insert, version: None, cells }, true);
        assert_eq!(json["created_at"], "2024-01-01T00:00:00.000001Z");
        assert_eq!(json["tags"], serde_json::json!(["a", "b"]));
        assert_eq!(json["score"], 1.5);
        assert!(!json.contains_key("text"), "NULL cells are left out");
        assert_eq!(format_date(19723), "2024-01-01");
        assert_eq!(
            cell_json(&atoms.columns[0], &CellValue::Int64(i64::MAX), true),
            Some(Value::String(i64::MAX.to_string()))
        );
    }

    #[test]
    fn base64_encodes_with_padding() {
        assert_eq!(encode_base64(b""), "");
        assert_eq!(encode_base64(b"h"), "aA==");
        assert_eq!(encode_base64(b"hi"), "aGk=");
        assert_eq!(encode_base64(b"hi!"), "aGkh");
        assert_eq!(encode_base64(&[0xff, 0xfe, 0xfd, 0x00]), "//79AA==");
    }

    fn live_fields(schema: &TableSchema) -> Vec<TableFieldSchema> {
        bsql::table_fields(schema)
    }

    #[test]
    fn evolution_adds_nullable_columns_and_refuses_breaking_changes() {
        let catalog = catalog();
        let atoms = catalog.get("atoms").unwrap().clone();
        let live = live_fields(&atoms);
        assert!(plan_evolution(&atoms, &live, "d").unwrap().added.is_empty());

        let mut grown = atoms.clone();
        let mut extra = grown.columns[3].clone();
        extra.name = "language".into();
        grown.columns.push(extra.clone());
        let plan = plan_evolution(&grown, &live, "d").unwrap();
        assert_eq!(plan.added.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), ["language"]);

        let mut required = grown.clone();
        required.columns.last_mut().unwrap().mode = ColumnMode::Required;
        let err = plan_evolution(&required, &live, "d").unwrap_err().to_string();
        assert!(err.contains("new column `language` is REQUIRED"), "{err}");

        let mut retyped = atoms.clone();
        retyped.columns.iter_mut().find(|c| c.name == "score").unwrap().column_type = ColumnType::String;
        let err = plan_evolution(&retyped, &live, "d").unwrap_err().to_string();
        assert!(err.contains("column `score` is FLOAT in d.atoms in BigQuery but STRING"), "{err}");

        let mut dropped = atoms.clone();
        dropped.columns.retain(|c| c.name != "text");
        let err = plan_evolution(&dropped, &live, "d").unwrap_err().to_string();
        assert!(err.contains("column `text` is in d.atoms in BigQuery but not in schemas/atoms.json"), "{err}");
    }

    #[test]
    fn retryable_errors_are_recognised() {
        assert!(is_retryable_message("Could not serialize access to table p:d.t due to concurrent update"));
        assert!(is_retryable_reason("rateLimitExceeded"));
        assert!(!is_retryable_reason("invalidQuery"));
    }
}
