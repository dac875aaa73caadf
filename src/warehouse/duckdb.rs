//! The embedded warehouse: one DuckDB file.
//!
//! A landing stages each table's rows through DuckDB's Arrow appender into a staging table, then
//! applies them with one set-based statement per table (anti-join insert for append tables,
//! version-guarded MERGE for upsert tables), all in one transaction with the dead letters of the
//! same flush. See [`super::sql`] for the statements.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use duckdb::arrow::array::{ArrayRef, BooleanBuilder, Int64Builder, StringBuilder};
use duckdb::arrow::datatypes::{DataType, Field, Schema};
use duckdb::arrow::record_batch::RecordBatch;
use duckdb::Connection;

use super::duckdb_append::{self, Landed, Novelty, SeenEvents};
use super::duckdb_arrow::column_array;
use super::duckdb_newest;
use super::duckdb_vacuum::{self, VacuumPolicy};
use super::sql;
use super::{
    seal, DeadLetterFilter, DeadLetterRecord, LandResult, LandStats, StagedRow, TableBatch, Warehouse, WarehouseError,
};
use crate::ack::Receipts;
use crate::envelope::Op;
use crate::schema::{Catalog, CellValue, TableSchema, WriteMode};

pub use crate::config::warehouse::duckdb::DuckDbConfig;

/// The DuckDB warehouse.
#[derive(Clone)]
pub struct DuckDbWarehouse {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    connection: Mutex<Connection>,
    catalog: Arc<Catalog>,
    /// Event-id hashes of the append tables (see [`super::duckdb_append`]); used under the
    /// connection's lock.
    seen: Mutex<SeenEvents>,
    event_index_max_rows: u64,
    /// Per table: whether the live table stores `_bqsync_event_id` (see [`sql::event_id_column`]),
    /// read from the file once; used under the connection's lock.
    stored_ids: Mutex<HashMap<String, bool>>,
    /// Whether DuckDB's checkpoints vacuum (see [`super::duckdb_vacuum`]); used under the
    /// connection's lock.
    vacuum: Mutex<VacuumPolicy>,
}

impl Drop for Inner {
    /// The last checkpoint, on close, vacuums when the policy says so.
    fn drop(&mut self) {
        let policy = self.vacuum.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(statement) = policy.before_close() {
            let connection = self.connection.get_mut().unwrap_or_else(|p| p.into_inner());
            if let Err(error) = connection.execute_batch(statement) {
                tracing::warn!(%error, "could not turn DuckDB's vacuuming back on before closing");
            }
        }
    }
}

impl DuckDbWarehouse {
    /// Opens (creating if needed) the database file.
    pub fn open(config: &DuckDbConfig, catalog: Arc<Catalog>) -> Result<DuckDbWarehouse, WarehouseError> {
        let path = config.path.clone();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(parent);
        }
        let err = |context: &str| {
            let path = path.display().to_string();
            let context = context.to_string();
            move |source| WarehouseError::DuckDb { path, context, source }
        };
        let connection = Connection::open(&path).map_err(err("open (is another bqsync process using this file?)"))?;
        // Values come from the config file, not from events; validated by DuckDB itself.
        connection
            .execute_batch(&format!(
                "SET threads = {}; SET memory_limit = '{}'; SET checkpoint_threshold = '{}';",
                config.threads.max(1),
                config.memory_limit.replace('\'', ""),
                config.checkpoint_threshold.replace('\'', "")
            ))
            .map_err(err("settings"))?;
        Ok(DuckDbWarehouse {
            inner: Arc::new(Inner {
                path,
                connection: Mutex::new(connection),
                catalog,
                seen: Mutex::default(),
                event_index_max_rows: config.event_index_max_rows,
                stored_ids: Mutex::default(),
                vacuum: Mutex::default(),
            }),
        })
    }

    /// Opens an existing file read-only (for `bqsync status`).
    pub fn open_read_only(path: &Path, catalog: Arc<Catalog>) -> Result<DuckDbWarehouse, WarehouseError> {
        let config = duckdb::Config::default().access_mode(duckdb::AccessMode::ReadOnly).map_err(|source| {
            WarehouseError::DuckDb { path: path.display().to_string(), context: "config".into(), source }
        })?;
        let connection = Connection::open_with_flags(path, config).map_err(|source| WarehouseError::DuckDb {
            path: path.display().to_string(),
            context: "open read-only".into(),
            source,
        })?;
        Ok(DuckDbWarehouse {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                connection: Mutex::new(connection),
                catalog,
                seen: Mutex::default(),
                event_index_max_rows: 0,
                stored_ids: Mutex::default(),
                vacuum: Mutex::default(),
            }),
        })
    }

    fn error(&self, context: impl Into<String>) -> impl FnOnce(duckdb::Error) -> WarehouseError {
        let path = self.inner.path.display().to_string();
        let context = context.into();
        move |source| WarehouseError::DuckDb { path, context, source }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&DuckDbWarehouse, &mut Connection) -> Result<T, WarehouseError> + Send + 'static,
    ) -> Result<T, WarehouseError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut connection = this.inner.connection.lock().unwrap_or_else(|p| p.into_inner());
            f(&this, &mut connection)
        })
        .await
        .map_err(|e| WarehouseError::Task(e.to_string()))?
    }

    fn ensure_table(&self, connection: &Connection, table: &TableSchema) -> Result<(), WarehouseError> {
        connection
            .execute_batch(&sql::create_table(table))
            .map_err(self.error(format!("create table {}", table.table)))?;
        let mut statement = connection
            .prepare("SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'main' AND table_name = ?")
            .map_err(self.error("read columns"))?;
        let existing: Vec<(String, String)> = statement
            .query_map([&table.table], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect())
            .map_err(self.error("read columns"))?;
        for column in &table.columns {
            match existing.iter().find(|(name, _)| name == &column.name) {
                None if column.mode == crate::schema::ColumnMode::Required => {
                    return Err(WarehouseError::SchemaChange {
                        table: table.table.clone(),
                        problem: format!(
                            "new column `{}` is REQUIRED; existing rows have no value for it. Add it as NULLABLE.",
                            column.name
                        ),
                    })
                }
                None => {
                    tracing::info!(table = %table.table, column = %column.name, "adding new column");
                    connection
                        .execute_batch(&sql::add_column(table, column))
                        .map_err(self.error(format!("add column {}.{}", table.table, column.name)))?;
                }
                Some((_, live_type)) => {
                    let wanted = sql::column_type(column);
                    if !same_type(live_type, &wanted) {
                        return Err(WarehouseError::SchemaChange {
                            table: table.table.clone(),
                            problem: format!("column `{}` is {live_type} in {} but {wanted} in schemas/{}.json; type changes need a migration: {}", column.name, self.inner.path.display(), table.table, super::MIGRATION_HINT),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Lands one table's batch in the caller's transaction; for append tables, also the event-id
    /// hashes to add to the index once it committed.
    fn land_table(
        &self,
        tx: &duckdb::Transaction,
        batch: &TableBatch,
        seen: &mut SeenEvents,
    ) -> Result<(LandStats, Option<Landed>), WarehouseError> {
        let table =
            self.inner.catalog.get(&batch.table).ok_or_else(|| WarehouseError::UnknownTable(batch.table.clone()))?;
        let stored_id = table.write_mode != WriteMode::Append || self.stores_event_id(tx, table)?;
        if !stored_id {
            ids_match_their_column(table, batch)?;
        }
        if !duckdb_append::appendable(table) {
            return Ok((self.stage_and_apply(tx, table, batch, stored_id)?, None));
        }
        let error = || self.error(format!("append to {}", table.table));
        let max_rows = self.inner.event_index_max_rows;
        let (stats, hashes) = match duckdb_append::novelty(seen, tx, table, &batch.rows, max_rows).map_err(error())? {
            Novelty::New(hashes) => {
                let appended = duckdb_append::append(tx, table, &batch.rows, stored_id).map_err(error())?;
                (LandStats { rows_changed: appended as u64, rows_offered: batch.rows.len() as u64 }, Some(hashes))
            }
            // The exact path; then every id of the batch is stored.
            Novelty::MaybeStored(hashes) => (self.stage_and_apply(tx, table, batch, stored_id)?, Some(hashes)),
            Novelty::Unindexed => (self.stage_and_apply(tx, table, batch, stored_id)?, None),
        };
        Ok((stats, hashes.map(|hashes| Landed { table: table.table.clone(), hashes })))
    }

    /// The SQL path: stage the batch, then one set-based statement (see [`super::sql`]).
    /// `stored_id`: whether an append table stores `_bqsync_event_id` ([`Self::stores_event_id`]).
    fn stage_and_apply(
        &self,
        tx: &duckdb::Transaction,
        table: &TableSchema,
        batch: &TableBatch,
        stored_id: bool,
    ) -> Result<LandStats, WarehouseError> {
        // Whole-row upserts stage only each key's newest row, when Rust can tell keys apart exactly.
        let newest = match table.write_mode {
            WriteMode::Upsert if !table.patches() => duckdb_newest::newest_per_key(table, &batch.rows),
            _ => None,
        };
        let rows: Vec<&StagedRow> = match &newest {
            Some(indexes) => indexes.iter().map(|&index| &batch.rows[index]).collect(),
            None => batch.rows.iter().collect(),
        };
        let record_batch = to_record_batch(table, &rows);
        // A fresh staging table per landing, dropped after: rows deleted from a TEMP table are never
        // vacuumed, so reusing one kept every staged row in memory (RSS grew with the data landed).
        tx.execute_batch(&sql::create_staging(table))
            .map_err(self.error(format!("create staging for {}", table.table)))?;
        {
            let mut appender = tx
                .appender_to_catalog_and_db(&sql::staging_table(table), "temp", "main")
                .map_err(self.error(format!("stage {}", table.table)))?;
            appender.append_record_batch(record_batch).map_err(self.error(format!("stage {}", table.table)))?;
            appender.flush().map_err(self.error(format!("stage {}", table.table)))?;
        }
        let apply = match table.write_mode {
            WriteMode::Append => sql::insert_new_events(table, stored_id),
            WriteMode::Upsert if table.patches() => sql::merge_patch(table),
            WriteMode::Upsert => sql::merge_versioned(table, newest.is_some()),
        };
        let changed = tx.execute(&apply, []).map_err(self.error(format!("apply batch to {}", table.table)))?;
        tx.execute_batch(&sql::drop_staging(table)).map_err(self.error(format!("drop staging of {}", table.table)))?;
        Ok(LandStats { rows_changed: changed as u64, rows_offered: batch.rows.len() as u64 })
    }
}

impl DuckDbWarehouse {
    /// Rows of these batches bound for append tables, and whether any is bound for another table
    /// (an upsert, whose `MERGE` may delete rows; or a table not in the catalog).
    fn append_rows_and_upserts(&self, batches: &[TableBatch]) -> (u64, bool) {
        let landing = batches.iter().filter(|batch| !batch.rows.is_empty());
        landing.fold((0, false), |(rows, upserts), batch| match self.inner.catalog.get(&batch.table) {
            Some(table) if table.write_mode == WriteMode::Append => (rows + batch.rows.len() as u64, upserts),
            _ => (rows, true),
        })
    }

    /// Whether the live table stores `_bqsync_event_id`, rather than computing it from the event-id
    /// column (a table created before that column was virtual stores it); asked of the file once.
    fn stores_event_id(&self, connection: &Connection, table: &TableSchema) -> Result<bool, WarehouseError> {
        let mut known = self.inner.stored_ids.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(stored) = known.get(&table.table) {
            return Ok(*stored);
        }
        // A generated column is the only one of ours with an expression as its default.
        let computed: bool = connection
            .query_row(
                "SELECT count(*) > 0 FROM duckdb_columns() WHERE schema_name = 'main' AND table_name = ? \
                 AND column_name = ? AND column_default IS NOT NULL",
                [&table.table, sql::EVENT_ID],
                |r| r.get(0),
            )
            .map_err(self.error(format!("read the columns of {}", table.table)))?;
        known.insert(table.table.clone(), !computed);
        Ok(!computed)
    }
}

/// A table that computes its event id from a column needs every row's id to be that column's text.
/// The worker gives each row its id field's value as its id, so this failing is a bug; it fails the
/// landing rather than storing a row under an id that is not its own.
fn ids_match_their_column(table: &TableSchema, batch: &TableBatch) -> Result<(), WarehouseError> {
    let Some(index) = sql::event_id_column(table).and_then(|name| table.column_index(name)) else {
        return Ok(());
    };
    let differs = batch
        .rows
        .iter()
        .find(|row| !matches!(row.cells.get(index), Some(CellValue::String(id)) if *id == row.event_id));
    match differs {
        None => Ok(()),
        Some(row) => Err(WarehouseError::Invariant(format!(
            "event {} of {} differs from its id column `{}`: the worker should have given it that id",
            row.event_id, table.table, table.columns[index].name
        ))),
    }
}

/// DuckDB spells some types differently in information_schema (`VARCHAR[]`, `DECIMAL(38,9)`).
fn same_type(live: &str, wanted: &str) -> bool {
    let normalize = |t: &str| t.replace(' ', "").to_ascii_uppercase();
    normalize(live) == normalize(wanted)
}

/// Builds the Arrow batch for the staging table: metadata columns, then one column per schema column.
fn to_record_batch(table: &TableSchema, rows: &[&StagedRow]) -> RecordBatch {
    let n = rows.len();
    let mut fields = vec![
        Field::new(sql::STAGE_EVENT_ID, DataType::Utf8, false),
        Field::new(sql::STAGE_VERSION, DataType::Int64, true),
        Field::new(sql::STAGE_DELETED, DataType::Boolean, false),
        Field::new(sql::STAGE_SEQUENCE, DataType::Int64, false),
    ];
    let mut event_ids = StringBuilder::with_capacity(n, n * 36);
    let mut versions = Int64Builder::with_capacity(n);
    let mut deleted = BooleanBuilder::with_capacity(n);
    let mut sequence = Int64Builder::with_capacity(n);
    for (i, row) in rows.iter().enumerate() {
        event_ids.append_value(&row.event_id);
        versions.append_option(row.version);
        deleted.append_value(row.op == Op::Delete);
        sequence.append_value(i as i64);
    }
    let mut arrays: Vec<ArrayRef> = vec![
        Arc::new(event_ids.finish()),
        Arc::new(versions.finish()),
        Arc::new(deleted.finish()),
        Arc::new(sequence.finish()),
    ];
    for (index, column) in table.columns.iter().enumerate() {
        let staging = sql::staging_type(column);
        let cells = rows.iter().map(|row| row.cells.get(index).unwrap_or(&CellValue::Null));
        let (data_type, array) = column_array(staging, cells, n);
        fields.push(Field::new(&column.name, data_type, true));
        arrays.push(array);
    }
    if table.patches() {
        for index in 0..table.columns.len() {
            let mut carries = BooleanBuilder::with_capacity(n);
            rows.iter().for_each(|row| carries.append_value(row.carries(index)));
            fields.push(Field::new(sql::stage_carries(index), DataType::Boolean, false));
            arrays.push(Arc::new(carries.finish()));
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).expect("arrays match the staging schema")
}

#[async_trait]
impl Warehouse for DuckDbWarehouse {
    async fn ensure_tables(&self) -> Result<(), WarehouseError> {
        self.blocking(|this, connection| {
            for table in this.inner.catalog.tables() {
                this.ensure_table(connection, table)?;
            }
            Ok(())
        })
        .await
    }

    async fn land(&self, batches: Arc<Vec<TableBatch>>, receipts: Receipts) -> LandResult {
        let landed = self
            .blocking(move |this, connection| {
                let (appended_rows, upserts) = this.append_rows_and_upserts(&batches);
                let mut vacuum = this.inner.vacuum.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(statement) = vacuum.before_commit(upserts) {
                    connection.execute_batch(statement).map_err(this.error("set max_vacuum_tasks"))?;
                }
                let wal_before = duckdb_vacuum::wal_bytes(&this.inner.path);
                let mut seen = this.inner.seen.lock().unwrap_or_else(|p| p.into_inner());
                let tx = connection.transaction().map_err(this.error("begin"))?;
                let mut stats = Vec::with_capacity(batches.len());
                let mut landed = Vec::new();
                for batch in batches.iter().filter(|b| !b.rows.is_empty()) {
                    let (table_stats, hashes) = this.land_table(&tx, batch, &mut seen)?;
                    stats.push((batch.table.clone(), table_stats));
                    landed.extend(hashes);
                }
                tx.commit().map_err(this.error("commit"))?;
                // Only now are these events stored (see the invariant in `duckdb_append`).
                seen.commit(landed);
                let checkpointed = duckdb_vacuum::checkpointed(wal_before, duckdb_vacuum::wal_bytes(&this.inner.path));
                vacuum.after_commit(upserts, appended_rows, checkpointed);
                if tracing::enabled!(tracing::Level::TRACE) {
                    let used: Result<i64, _> =
                        connection
                            .query_row("SELECT sum(memory_usage_bytes)::BIGINT FROM duckdb_memory()", [], |r| r.get(0));
                    tracing::trace!(duckdb_memory_bytes = used.ok(), "landed");
                }
                Ok(stats)
            })
            .await;
        seal(landed, receipts)
    }

    async fn query_read_only(&self, sql: &str) -> Result<super::QueryResult, WarehouseError> {
        let sql = sql.to_string();
        self.blocking(move |this, connection| {
            super::duckdb_query::run(connection, &sql, &this.inner.path.display().to_string())
        })
        .await
    }

    async fn ping(&self) -> Result<(), WarehouseError> {
        self.blocking(|this, connection| {
            connection.execute_batch("SELECT 1").map_err(this.error("ping"))?;
            Ok(())
        })
        .await
    }

    async fn row_counts(&self) -> Result<Vec<(String, u64)>, WarehouseError> {
        self.blocking(|this, connection| {
            let mut counts = Vec::new();
            for table in this.inner.catalog.tables() {
                let count: Result<i64, _> = connection.query_row(&sql::count_live_rows(table), [], |r| r.get(0));
                // A table that does not exist yet (status before the first run) counts 0.
                counts.push((table.table.clone(), count.unwrap_or(0) as u64));
            }
            Ok(counts)
        })
        .await
    }

    async fn dead_letter_counts(&self) -> Result<Vec<(String, String, u64)>, WarehouseError> {
        self.blocking(|this, connection| {
            let Ok(mut statement) = connection.prepare(&sql::count_open_dead_letters(has_replay_marks(connection)))
            else {
                return Ok(Vec::new());
            };
            let rows = statement
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)? as u64)))
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(this.error("count dead letters"))?;
            Ok(rows)
        })
        .await
    }

    async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetterRecord>, WarehouseError> {
        let filter = filter.clone();
        self.blocking(move |this, connection| {
            let (sql, params) = sql::select_dead_letters(&filter, has_replay_marks(connection));
            let mut statement = connection.prepare(&sql).map_err(this.error("list dead letters"))?;
            let rows = statement
                .query_map(duckdb::params_from_iter(params.iter()), |r| {
                    let bytes: Vec<u8> = r.get(6)?;
                    let attributes: Option<String> = r.get(7)?;
                    Ok(DeadLetterRecord {
                        dead_letter_id: r.get(0)?,
                        event_id: r.get(1)?,
                        table_name: r.get(2)?,
                        reason: r.get(3)?,
                        detail: r.get(4)?,
                        source: r.get(5)?,
                        message: String::from_utf8_lossy(&bytes).into_owned(),
                        message_bytes: bytes,
                        attributes: attributes
                            .and_then(|a| serde_json::from_str(&a).ok())
                            .unwrap_or(serde_json::Value::Null),
                        delivery_attempts: r.get(8)?,
                        first_failed_micros: r.get(9)?,
                        last_failed_micros: r.get(10)?,
                        bqsync_version: r.get(11)?,
                        replayed_micros: r.get(12)?,
                    })
                })
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(this.error("list dead letters"))?;
            Ok(rows)
        })
        .await
    }
}

/// Whether the file holds the replay marks' table (created from `schemas/dead_letter_replays.json`;
/// a file opened read-only may predate it).
fn has_replay_marks(connection: &duckdb::Connection) -> bool {
    connection
        .query_row(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ?",
            [crate::dead_letter::REPLAY_TABLE],
            |r| r.get::<_, i64>(0),
        )
        .is_ok_and(|n| n > 0)
}
