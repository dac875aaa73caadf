//! The BigQuery warehouse: rows are **appended** to long-lived landing tables through the Storage
//! Write API, and an **applier** moves them into the tables, one transaction per table and interval.
//!
//! ```text
//! flush ──Storage Write (default stream)──▶ _bqsync_landing_T ──applier (transaction, watermark)──▶ T
//!                                                    └───────────── T_live, T_current (views) ◀───┘
//! ```
//!
//! Invariants (each module states its part):
//! - **Ack after durable append, apply idempotent.** A landing returns its commit proof once every
//!   row was appended and acknowledged by BigQuery, or rejected by it and dead-lettered in the same
//!   landing ([`writer`]). A row appended twice (a redelivery, a worker killed between append and
//!   ack) is applied once: the applier deduplicates on the event id, or the version guard, and
//!   applies each window exactly once ([`applier`]).
//! - **Nothing is created, dropped or queried per flush.** Tables, landing tables, state rows and
//!   views are made by set-up and a worker's start-up ([`schema`]); a flush is appends only, so the
//!   per-table DML quotas and the 10 MB minimum billed per query are paid per apply interval, not
//!   per flush (see docs/google-cloud.md "BigQuery cost model").
//! - Every query job goes through the [`CostGuard`]: `maximumBytesBilled`, budget, protected tables.

pub mod applier;
pub mod apply_sql;
pub mod cdc;
pub mod client;
pub mod cost;
pub mod dead_letters;
pub mod load;
pub mod proto;
pub mod schema;
pub mod sql;
pub mod writer;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

pub use self::client::EmulatorToken;
use self::client::{number, request_policy, Rest};
pub use self::dead_letters::{format_date, format_timestamp, payload_json};
use self::proto::RowCodec;
use self::sql as bsql;
use self::writer::{EncodedRow, LandingWriter};
use super::cost_guard::CostGuard;
use super::{seal, DeadLetterFilter, DeadLetterRecord, LandResult, LandStats, TableBatch, Warehouse, WarehouseError};
use crate::ack::Receipts;
use crate::dead_letter::DEAD_LETTER_TABLE;
use crate::schema::{Catalog, TableSchema};
use crate::shutdown::Shutdown;

pub use crate::config::warehouse::bigquery::{ApplierPlacement, BigQueryConfig};

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

    /// The Storage Write endpoint: configured, else an emulator's REST port + 10, else Google's.
    pub fn resolved_storage_endpoint(&self) -> String {
        if let Some(endpoint) = &self.storage_endpoint {
            return endpoint.clone();
        }
        match self.resolved_endpoint() {
            Some(rest) => emulator_grpc_endpoint(&rest),
            None => writer::GOOGLE_STORAGE_ENDPOINT.to_string(),
        }
    }

    fn check(&self) -> Result<(), WarehouseError> {
        bsql::check_path_part("warehouse.bigquery.dataset", &self.dataset).map_err(config_error)?;
        if self.request_attempts == 0 {
            return Err(config_error("warehouse.bigquery.request_attempts must be >= 1"));
        }
        if self.settle_margin_secs <= self.append_timeout_secs {
            return Err(config_error(format!(
                "warehouse.bigquery.settle_margin_secs ({}) must exceed append_timeout_secs ({}): an append still in flight must not fall behind the watermark",
                self.settle_margin_secs, self.append_timeout_secs
            )));
        }
        if self.landing_expiration_days == 0 {
            return Err(config_error("warehouse.bigquery.landing_expiration_days must be >= 1"));
        }
        if self.append_apply_interval_secs == 0 || self.upsert_apply_interval_secs == 0 {
            return Err(config_error("warehouse.bigquery apply intervals must be >= 1 s"));
        }
        Ok(())
    }
}

/// `http://HOST:PORT` → `http://HOST:PORT+10`, as `local-bigquery` serves gRPC.
fn emulator_grpc_endpoint(rest: &str) -> String {
    let trimmed = rest.trim_end_matches('/');
    match trimmed.rsplit_once(':').and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?))) {
        Some((host, port)) => format!("{host}:{}", port + 10),
        None => trimmed.to_string(),
    }
}

/// A dataset name as a part of a job id (letters, digits, `_`): job ids name their dataset and
/// table, so `jobs.list` tells each table's jobs apart.
fn job_id_part(dataset: &str) -> String {
    dataset.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

fn config_error(problem: impl Into<String>) -> WarehouseError {
    WarehouseError::Config(problem.into())
}

/// What a BigQuery warehouse has sent so far (for benchmarks, status and metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BigQueryCounters {
    /// Query jobs started (apply scripts; set-up DDL and reads are not counted).
    pub query_jobs: u64,
    /// Applies that committed.
    pub applies: u64,
    /// Storage Write `AppendRows` calls (one per table and flush).
    pub appends: u64,
    /// Rows appended to landing tables.
    pub rows_appended: u64,
    /// Rows BigQuery rejected (dead-lettered).
    pub rows_rejected: u64,
    /// Bytes billed by the jobs (0 on emulators).
    pub bytes_billed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    query_jobs: AtomicU64,
    applies: AtomicU64,
    appends: AtomicU64,
    rows_appended: AtomicU64,
    rows_rejected: AtomicU64,
    /// When this process last finished an append (µs): one-shot runs apply up to it.
    newest_append_micros: AtomicI64,
}

/// A landing table as this process writes it: its stream and row codec.
struct Landing {
    stream: String,
    codec: RowCodec,
}

/// The BigQuery warehouse.
pub struct BigQueryWarehouse {
    counters: Counters,
    rest: Rest,
    writer: LandingWriter,
    config: BigQueryConfig,
    catalog: Arc<Catalog>,
    guard: Arc<CostGuard>,
    /// Each table's landing (made by `ensure_tables`).
    landings: Mutex<HashMap<String, Arc<Landing>>>,
    /// Tables this process appended to (one-shot runs apply these before they return).
    landed_tables: Mutex<BTreeSet<String>>,
    /// Bytes the last apply of each table billed here (the forecast's measurement).
    billed_per_apply: Mutex<HashMap<String, u64>>,
    /// Apply intervals a daily byte budget stretched ([`cost`]); absent: as configured.
    intervals: Mutex<HashMap<String, Duration>>,
}

impl BigQueryWarehouse {
    /// The live view of the replay marks, when the catalog has their table (`bqsync setup` made it).
    fn replay_marks_view(&self) -> Option<String> {
        let replays = crate::dead_letter::REPLAY_TABLE;
        self.catalog.get(replays).map(|_| self.rest.path(&bsql::live_view(replays)))
    }

    /// Connects (nothing is sent until the first call).
    pub async fn connect(config: &BigQueryConfig, catalog: Arc<Catalog>) -> Result<BigQueryWarehouse, WarehouseError> {
        config.check()?;
        let project = config.resolved_project()?;
        let guard = Arc::new(CostGuard::new(config.cost.clone()).map_err(config_error)?);
        let endpoint = config.resolved_endpoint();
        let anonymous = crate::gcp::is_anonymous(config.credentials, endpoint.as_deref());
        if let Some(problem) = (!anonymous).then(crate::gcp::missing_application_default_credentials).flatten() {
            return Err(WarehouseError::Config(format!("BigQuery: {problem}")));
        }
        let rest = Rest::connect(config, project.clone(), anonymous, guard.clone()).await?;
        let storage = config.resolved_storage_endpoint();
        let writer = LandingWriter::new(
            storage.clone(),
            anonymous,
            Duration::from_secs(config.append_timeout_secs),
            request_policy(config),
        )?;
        tracing::info!(project, dataset = %config.dataset, endpoint = endpoint.as_deref().unwrap_or("google"), storage, "BigQuery warehouse");
        Ok(BigQueryWarehouse {
            counters: Counters::default(),
            rest,
            writer,
            config: config.clone(),
            catalog,
            guard,
            landings: Mutex::new(HashMap::new()),
            landed_tables: Mutex::new(BTreeSet::new()),
            billed_per_apply: Mutex::new(HashMap::new()),
            intervals: Mutex::new(HashMap::new()),
        })
    }

    /// What this warehouse has sent so far.
    pub fn counters(&self) -> BigQueryCounters {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BigQueryCounters {
            query_jobs: read(&self.counters.query_jobs),
            applies: read(&self.counters.applies),
            appends: read(&self.counters.appends),
            rows_appended: read(&self.counters.rows_appended),
            rows_rejected: read(&self.counters.rows_rejected),
            bytes_billed: self.guard.billed(),
        }
    }

    /// Where the applier runs.
    pub fn applier_placement(&self) -> ApplierPlacement {
        self.config.applier
    }

    /// Creates or evolves `T`, then its landing table; seeds its state row; replaces its views.
    async fn ensure_table(&self, schema: &TableSchema) -> Result<bool, WarehouseError> {
        self.guard.check_writable(&schema.table).map_err(|r| WarehouseError::CostGuard(r.to_string()))?;
        for view in [bsql::live_view(&schema.table), bsql::current_view(&schema.table)] {
            if self.catalog.get(&view).is_some() {
                return Err(config_error(format!(
                    "table `{view}` collides with the view bqsync makes for `{}`",
                    schema.table
                )));
            }
        }
        if schema.cdc {
            return self.ensure_cdc_table(schema).await;
        }
        let (live, mut created) = self.rest.get_or_create_table(schema::target_table(&self.rest, schema)).await?;
        let fields = schema::evolve(&self.rest, schema, live, &schema.table, &[]).await?;
        let user_fields = schema::user_fields(schema, &fields);
        let landing_name = bsql::landing_table(&schema.table);
        let landing = schema::landing_table(&self.rest, schema, &user_fields, self.config.landing_expiration_days);
        let (landing_live, landing_created) = self.rest.get_or_create_table(landing).await?;
        created |= landing_created;
        schema::evolve(&self.rest, schema, landing_live, &landing_name, &bsql::landing_only_fields(schema)).await?;
        let max = self.guard.config().maximum_bytes_billed;
        let state = self.rest.path(bsql::STATE_TABLE);
        self.rest.query_rows(&apply_sql::seed_state(&state, &schema.table), Vec::new(), max).await?;
        for statement in schema::view_statements(&self.rest, schema) {
            self.rest.query_rows(&statement, Vec::new(), max).await?;
        }
        let stream = format!(
            "projects/{}/datasets/{}/tables/{landing_name}/streams/_default",
            self.rest.project, self.rest.dataset
        );
        let mut codec = RowCodec::new(&user_fields);
        if schema.patches() {
            codec = codec.with_absent(schema.columns.iter().map(|c| c.name.clone()).collect());
        }
        let landing = Landing { stream, codec };
        self.landings.lock().unwrap_or_else(|p| p.into_inner()).insert(schema.table.clone(), Arc::new(landing));
        Ok(created)
    }

    /// A CDC table (see [`cdc`]): created by DDL with its primary key, evolved like any table, its
    /// `max_staleness` brought to the config; rows are written to `T`'s own default stream.
    async fn ensure_cdc_table(&self, schema: &TableSchema) -> Result<bool, WarehouseError> {
        let max = self.max_bytes();
        let target = self.rest.path(&schema.table);
        let minutes = self.config.cdc_max_staleness_minutes;
        let existed = self.rest.get_table(&schema.table).await?.is_some();
        if !existed {
            self.rest.query_rows(&cdc::create_table(&target, schema, minutes), Vec::new(), max).await?;
        }
        let (live, _) = self.rest.get_or_create_table(schema::target_table(&self.rest, schema)).await?;
        let fields = schema::evolve(&self.rest, schema, live, &schema.table, &[]).await?;
        if existed {
            self.rest.query_rows(&cdc::set_max_staleness(&target, minutes), Vec::new(), max).await?;
        }
        let (live_view, current_view) =
            (self.rest.path(&bsql::live_view(&schema.table)), self.rest.path(&bsql::current_view(&schema.table)));
        for statement in cdc::view_statements(schema, &target, &live_view, &current_view) {
            self.rest.query_rows(&statement, Vec::new(), max).await?;
        }
        let stream = format!(
            "projects/{}/datasets/{}/tables/{}/streams/_default",
            self.rest.project, self.rest.dataset, schema.table
        );
        let codec = RowCodec::new(&schema::user_fields(schema, &fields)).with_cdc(schema.cdc_deletes);
        self.landings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(schema.table.clone(), Arc::new(Landing { stream, codec }));
        Ok(!existed)
    }

    fn landing(&self, table: &str) -> Result<Arc<Landing>, WarehouseError> {
        self.landings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(table)
            .cloned()
            .ok_or_else(|| WarehouseError::Task(format!("table {table} was not ensured before landing")))
    }

    /// Appends one table's rows to its landing table; returns the rows rejected, with the reason
    /// (bqsync's, for a value that cannot be encoded, or BigQuery's).
    async fn append_table(&self, batch: &TableBatch) -> Result<Vec<(usize, String)>, WarehouseError> {
        self.guard.check_writable(&batch.table).map_err(|r| WarehouseError::CostGuard(r.to_string()))?;
        let landing = self.landing(&batch.table)?;
        let mut rejected = Vec::new();
        let mut rows = Vec::with_capacity(batch.rows.len());
        for (index, row) in batch.rows.iter().enumerate() {
            match landing.codec.encode(row) {
                Ok(bytes) => rows.push(EncodedRow { index, bytes }),
                Err(message) => rejected.push((index, message)),
            }
        }
        if !rows.is_empty() {
            self.counters.appends.fetch_add(1, Ordering::Relaxed);
            rejected.extend(self.writer.append(&landing.stream, &landing.codec, rows).await?);
        }
        self.counters.rows_appended.fetch_add((batch.rows.len() - rejected.len()) as u64, Ordering::Relaxed);
        self.counters.rows_rejected.fetch_add(rejected.len() as u64, Ordering::Relaxed);
        if !self.catalog.get(&batch.table).is_some_and(|t| t.cdc) {
            self.landed_tables.lock().unwrap_or_else(|p| p.into_inner()).insert(batch.table.clone());
        }
        Ok(rejected)
    }

    /// Appends every table's batch; the dead letters last, so rows rejected by the other tables
    /// join them. `rows_changed` counts rows appended: what they change is the applier's to know.
    async fn land_batches(&self, batches: &[TableBatch]) -> Result<Vec<(String, LandStats)>, WarehouseError> {
        let mut stats = Vec::with_capacity(batches.len());
        let mut dead_letters = Vec::new();
        let (dead, others): (Vec<&TableBatch>, Vec<&TableBatch>) =
            batches.iter().filter(|b| !b.rows.is_empty()).partition(|b| b.table == DEAD_LETTER_TABLE);
        for batch in others {
            let rejected = self.append_table(batch).await?;
            if !rejected.is_empty() {
                let schema = self.catalog.get(&batch.table).expect("landed tables have schemas");
                dead_letters.extend(dead_letters::rejected(&self.catalog, schema, batch, &rejected));
            }
            let offered = batch.rows.len() as u64;
            stats.push((
                batch.table.clone(),
                LandStats { rows_changed: offered - rejected.len() as u64, rows_offered: offered },
            ));
        }
        for batch in dead {
            dead_letters.extend(batch.rows.iter().cloned());
        }
        if !dead_letters.is_empty() {
            let batch = TableBatch { table: DEAD_LETTER_TABLE.into(), rows: dead_letters };
            let rejected = self.append_table(&batch).await?;
            if let Some((_, message)) = rejected.first() {
                // Nowhere left to put them: fail the landing so nothing is acked and lost.
                return Err(WarehouseError::BigQuery {
                    context: "landing dead letters".into(),
                    message: format!("BigQuery rejected {} dead-letter rows: {message}", rejected.len()),
                    transient: false,
                });
            }
            let offered = batch.rows.len() as u64;
            stats.push((DEAD_LETTER_TABLE.into(), LandStats { rows_changed: offered, rows_offered: offered }));
        }
        self.counters.newest_append_micros.store(chrono::Utc::now().timestamp_micros(), Ordering::Relaxed);
        Ok(stats)
    }

    /// Appends rows outside a worker's flush (the loader's dead letters); rows BigQuery rejects
    /// are dead-lettered as in a flush.
    pub async fn land_rows(&self, batches: &[TableBatch]) -> Result<(), WarehouseError> {
        self.land_batches(batches).await.map(|_| ())
    }

    fn max_bytes(&self) -> u64 {
        self.guard.config().maximum_bytes_billed
    }
}

#[async_trait]
impl Warehouse for BigQueryWarehouse {
    async fn ensure_tables(&self) -> Result<(), WarehouseError> {
        self.rest.ensure_dataset().await?;
        let state = schema::state_table(&self.rest);
        self.rest.get_or_create_table(state).await?;
        let mut created = false;
        for table in self.catalog.tables() {
            created |= self.ensure_table(table).await?;
        }
        if created {
            tracing::info!("tables created: appends retry NOT_FOUND while BigQuery's metadata catches up");
        }
        self.writer.tables_changed();
        Ok(())
    }

    async fn land(&self, batches: Arc<Vec<TableBatch>>, receipts: Receipts) -> LandResult {
        seal(self.land_batches(&batches).await, receipts)
    }

    async fn maintain(&self, shutdown: Shutdown) {
        if self.config.applier == ApplierPlacement::Worker {
            self.run_applier(shutdown).await;
        }
    }

    async fn settle(&self) -> Result<(), WarehouseError> {
        for report in self.apply_landed().await? {
            tracing::info!(table = %report.table, outcome = report.outcome.as_str(), rows = report.rows, "applied before exit");
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), WarehouseError> {
        self.rest.ping().await
    }

    async fn cost_forecast(&self) -> Result<Option<Value>, WarehouseError> {
        let forecast = self.forecast().await?;
        Ok(Some(serde_json::to_value(forecast).map_err(|e| WarehouseError::Task(e.to_string()))?))
    }

    /// Live rows per table, from the live views (fresh: landed rows count before they are applied).
    async fn row_counts(&self) -> Result<Vec<(String, u64)>, WarehouseError> {
        let mut counts = Vec::new();
        for table in self.catalog.tables() {
            let view = self.rest.path(&bsql::live_view(&table.table));
            let rows = match self.rest.query_rows(&bsql::count_live_rows(&view), Vec::new(), self.max_bytes()).await {
                Ok(rows) => rows,
                // A table that does not exist yet (status before the first run) counts 0.
                Err(WarehouseError::BigQuery { transient: false, .. }) => Vec::new(),
                Err(e) => return Err(e),
            };
            counts.push((table.table.clone(), number(rows.first().and_then(|r| r.first()))));
        }
        Ok(counts)
    }

    async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetterRecord>, WarehouseError> {
        let view = self.rest.path(&bsql::live_view(DEAD_LETTER_TABLE));
        let replays = self.replay_marks_view();
        let (sql, params) = bsql::select_dead_letters(&view, replays.as_deref(), filter);
        let rows = self.rest.query_rows(&sql, params, self.max_bytes()).await?;
        Ok(rows.iter().map(|r| dead_letters::record(r)).collect())
    }

    async fn dead_letter_counts(&self) -> Result<Vec<(String, String, u64)>, WarehouseError> {
        let view = self.rest.path(&bsql::live_view(DEAD_LETTER_TABLE));
        let sql = bsql::count_dead_letters(&view, self.replay_marks_view().as_deref());
        let rows = match self.rest.query_rows(&sql, Vec::new(), self.max_bytes()).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_storage_endpoint_of_an_emulator_is_its_rest_port_plus_ten() {
        assert_eq!(emulator_grpc_endpoint("http://127.0.0.1:9050"), "http://127.0.0.1:9060");
        assert_eq!(emulator_grpc_endpoint("http://127.0.0.1:9050/"), "http://127.0.0.1:9060");
        let config = BigQueryConfig { storage_endpoint: Some("http://h:1".into()), ..Default::default() };
        assert_eq!(config.resolved_storage_endpoint(), "http://h:1");
    }

    #[test]
    fn a_settle_margin_shorter_than_an_append_is_refused() {
        let config = BigQueryConfig { settle_margin_secs: 10, append_timeout_secs: 20, ..Default::default() };
        let error = config.check().unwrap_err().to_string();
        assert!(error.contains("settle_margin_secs (10) must exceed append_timeout_secs (20)"), "{error}");
    }
}
