//! Dirty-row outbox (contacts): a table in a local SQLite or DuckDB file whose application sets a
//! dirty flag on every row it changes. The source publishes the dirty rows as upserts (tombstones
//! when a soft-delete column is set) and then clears the flag.
//!
//! Invariants:
//! - The flag is cleared only after the publish of the row resolved, and only if the row has not
//!   changed since it was read: compare-and-clear on (primary key, version column, still dirty) in one
//!   transaction. A row the application changed meanwhile carries a new version, keeps its flag and is
//!   published again on the next pass; an application that changes a row without bumping its version
//!   is told apart by nothing, but then the warehouse's version guard would ignore the change too.
//! - Pages go by rowid, so the next page is read and handed off while the previous one lands: at most
//!   two pages wait for their clear. A crash before a clear publishes those rows again on the next
//!   pass, and the warehouse's version guard keeps one row a key (tests/in_process_bus.rs kills the
//!   process with two pages landed and every flag set).
//! - The application is never blocked for long. SQLite: reads are pages in autocommit, the clear is
//!   one short write transaction per page, and both wait up to `busy_timeout_ms` for the application's
//!   own transactions. DuckDB allows one process per file: the source opens the file once a page,
//!   clears the flags of the pages that landed and reads the next page, and closes it right after
//!   (never across a publish), retrying while the application holds it; the application should
//!   likewise retry on a lock error (or keep its outbox in SQLite).
//! - In `bqsync run` a page whose rows all stage goes to the worker as rows ([`staged`]); its flags
//!   are cleared under the same rule, once its ticket resolved.
//! - Hard deletes leave no dirty row behind: use `deleted_column` (soft deletes), or a delete log fed
//!   by a trigger (`delete_log_table`, see [`deletes`]), for deletes to reach the warehouse.

mod deletes;
#[cfg_attr(feature = "embedded", path = "duckdb_engine.rs")]
#[cfg_attr(not(feature = "embedded"), path = "no_duckdb.rs")]
mod duckdb_engine;
mod staged;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use super::checkpoint::CheckpointStore;
use super::in_flight::InFlight;
use super::rows::{now_rfc3339, poison, row_payload_event, RowMapping, SqlValue};
use super::schedule::{last_full_resync, record_full_resync, PassClock, Schedule};
use super::sqlite::{quote, read_rows, ReadRows};
use super::{EmitOutcome, Source, SourceError};
use crate::batch::TableBatch;
use crate::bus::{OutboundMessage, Publisher, StagedRows, Ticket};
use crate::schema::Catalog;
use crate::shutdown::Shutdown;

pub use crate::config::sources::outbox::{OutboxEngine, OutboxSourceConfig};
use crate::config::sources::outbox::{DUCKDB_BATCH_ROWS, SQLITE_BATCH_ROWS};

/// What identifies a published row for its compare-and-clear.
struct ClearKey {
    key: Vec<SqlValue>,
    version: SqlValue,
}

/// Pages whose publish is durable and whose flags wait for their compare-and-clear.
#[derive(Default)]
struct Landed {
    events: u64,
    keys: Vec<ClearKey>,
}

/// The SQL of one outbox, for both engines (both understand it).
struct Statements {
    select_page: String,
    /// A full re-sync's page: every row, dirty or not.
    select_all_page: String,
    /// SQLite: one indexed UPDATE a row (the primary key is an index).
    clear_row: String,
    /// DuckDB (no index on the key): the page's keys go into a temporary table, then one UPDATE
    /// joins it; row by row would scan the table once a row.
    clear_staging: String,
    clear_joined: String,
}

impl Statements {
    fn new(config: &OutboxSourceConfig, mapping: &RowMapping, version: &str) -> Statements {
        let table = quote(&config.source_table);
        let dirty = quote(&config.dirty_column);
        let is_dirty = format!("COALESCE(CAST({dirty} AS INTEGER), 0) <> 0");
        let staged: Vec<&str> =
            mapping.key_columns.iter().map(String::as_str).chain(std::iter::once(version)).collect();
        let conditions = [key_conditions(&mapping.key_columns, version), is_dirty.clone()];
        Statements {
            select_page: format!(
                "SELECT rowid AS __bqsync_rowid, * FROM {table} WHERE {is_dirty} AND rowid > ?1 ORDER BY rowid LIMIT ?2"
            ),
            select_all_page: format!("SELECT rowid AS __bqsync_rowid, * FROM {table} WHERE rowid > ?1 ORDER BY rowid LIMIT ?2"),
            clear_row: format!("UPDATE {table} SET {dirty} = false WHERE {}", conditions.join(" AND ")),
            clear_staging: format!(
                "CREATE OR REPLACE TEMP TABLE __bqsync_clear AS SELECT {columns} FROM {table} LIMIT 0",
                columns = staged.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ")
            ),
            clear_joined: format!(
                "UPDATE {table} SET {dirty} = false FROM __bqsync_clear c WHERE {} AND COALESCE(CAST({table}.{dirty} AS INTEGER), 0) <> 0",
                staged
                    .iter()
                    .map(|c| format!("{table}.{q} IS NOT DISTINCT FROM c.{q}", q = quote(c)))
                    .collect::<Vec<_>>()
                    .join(" AND "),
            ),
        }
    }
}

/// `k1 IS NOT DISTINCT FROM ?1 AND … AND version IS NOT DISTINCT FROM ?n`: the compare of a
/// compare-and-clear, bound with [`clear_params`].
fn key_conditions(key_columns: &[String], version: &str) -> String {
    let mut conditions: Vec<String> =
        key_columns.iter().enumerate().map(|(i, c)| format!("{} IS NOT DISTINCT FROM ?{}", quote(c), i + 1)).collect();
    conditions.push(format!("{} IS NOT DISTINCT FROM ?{}", quote(version), key_columns.len() + 1));
    conditions.join(" AND ")
}

/// The parameters of [`key_conditions`] for one row (SQLite).
fn clear_params(key: &ClearKey) -> Vec<&dyn rusqlite::ToSql> {
    key.key.iter().chain([&key.version]).map(|v| v as &dyn rusqlite::ToSql).collect()
}

/// The outbox source.
pub struct OutboxSource {
    config: OutboxSourceConfig,
    engine: OutboxEngine,
    /// Rows per page: `batch_rows`, or the engine's default.
    batch_rows: usize,
    mapping: RowMapping,
    statements: Statements,
    /// Kept open between passes (SQLite only; DuckDB files are opened per operation).
    sqlite: Option<rusqlite::Connection>,
    wakeup: Arc<tokio::sync::Notify>,
    _watcher: Option<notify::RecommendedWatcher>,
    published: u64,
    cleared: u64,
    kept_dirty: u64,
    /// With a `schedule` or `full_schedule`: when the next pass is due (without a `schedule`, every
    /// change and poll is a pass too).
    clock: Option<PassClock>,
    /// The state file (the time of the last full re-sync).
    checkpoints: Arc<CheckpointStore>,
    /// A full re-sync was asked for (`POST /sync?full=true`).
    full_requested: bool,
    /// With a `delete_log_table`: its statements (see [`deletes`]).
    log_statements: Option<deletes::LogStatements>,
    /// `worker.max_event_bytes`: rows staged by the source stay well below it.
    max_event_bytes: usize,
    shutdown: Shutdown,
}

impl OutboxSource {
    pub fn new(
        config: OutboxSourceConfig,
        catalog: &Catalog,
        checkpoints: Arc<CheckpointStore>,
    ) -> Result<OutboxSource, SourceError> {
        let problem = |problem: String| SourceError::Config { source_name: config.name.clone(), problem };
        let destination = config.table.clone().unwrap_or_else(|| config.source_table.clone());
        let mapping = RowMapping::new(catalog, &destination, &config.columns).map_err(problem)?;
        let Some(version) = mapping.version_column.clone().filter(|_| mapping.is_upsert()) else {
            return Err(problem(format!(
                "table `{destination}` must be an upsert table (primary_key and version_column): the outbox publishes upserts"
            )));
        };
        let engine = config.engine.unwrap_or(if config.path.extension().is_some_and(|e| e == "duckdb") {
            OutboxEngine::Duckdb
        } else {
            OutboxEngine::Sqlite
        });
        let batch_rows = config.batch_rows.unwrap_or(match engine {
            OutboxEngine::Sqlite => SQLITE_BATCH_ROWS,
            OutboxEngine::Duckdb => DUCKDB_BATCH_ROWS,
        });
        if batch_rows == 0 {
            return Err(problem("batch_rows must be ≥ 1".into()));
        }
        #[cfg(not(feature = "embedded"))]
        if engine == OutboxEngine::Duckdb {
            return Err(problem(duckdb_engine::not_built()));
        }
        let statements = Statements::new(&config, &mapping, &version);
        let clock = if config.schedule.is_some() || config.full_schedule.is_some() {
            let schedule = Schedule::new(&config.schedule(), Duration::from_millis(config.poll_interval_ms))
                .map_err(|problem| SourceError::Config { source_name: config.name.clone(), problem })?;
            let mut last_full = last_full_resync(&checkpoints, &config.name)?;
            if config.full_schedule.is_some() && last_full.is_none() {
                record_full_resync(&checkpoints, &config.name)?;
                last_full = Some(chrono::Utc::now());
            }
            Some(PassClock::new(schedule, last_full))
        } else {
            None
        };
        let log_statements = config
            .delete_log_table
            .as_deref()
            .map(|log| deletes::LogStatements::new(log, &mapping.key_columns, &version));
        Ok(OutboxSource {
            clock,
            checkpoints,
            full_requested: false,
            log_statements,
            config,
            engine,
            batch_rows,
            mapping,
            statements,
            sqlite: None,
            wakeup: Arc::new(tokio::sync::Notify::new()),
            _watcher: None,
            published: 0,
            cleared: 0,
            kept_dirty: 0,
            max_event_bytes: crate::config::worker::WorkerConfig::default().max_event_bytes,
            shutdown: Shutdown::default(),
        })
    }

    /// The worker's `max_event_bytes` (rows staged by the source stay well below it).
    pub fn set_max_event_bytes(&mut self, max_event_bytes: usize) {
        self.max_event_bytes = max_event_bytes;
    }

    /// Starts a pass whenever the database file (or its journal) changes.
    pub fn watch(&mut self) -> Result<(), SourceError> {
        let (watcher, wakeup) = watch_file(&self.config.path)
            .map_err(|problem| SourceError::Config { source_name: self.config.name.clone(), problem })?;
        self._watcher = Some(watcher);
        self.wakeup = wakeup;
        Ok(())
    }

    fn db_error(&self, error: impl std::fmt::Display) -> SourceError {
        SourceError::Io {
            source_name: self.config.name.clone(),
            path: format!("{} (table `{}`)", self.config.path.display(), self.config.source_table),
            error: std::io::Error::other(error.to_string()),
        }
    }

    fn sqlite(&mut self) -> Result<&rusqlite::Connection, SourceError> {
        if self.sqlite.is_none() {
            if !self.config.path.exists() {
                return Err(self.db_error("database file not found"));
            }
            let connection = rusqlite::Connection::open(&self.config.path).map_err(|e| self.db_error(e))?;
            connection
                .busy_timeout(Duration::from_millis(self.config.busy_timeout_ms))
                .map_err(|e| self.db_error(e))?;
            self.sqlite = Some(connection);
        }
        Ok(self.sqlite.as_ref().expect("opened"))
    }

    /// The DuckDB file, for one page read or clear.
    fn duckdb(&self) -> duckdb_engine::DuckDbFile {
        duckdb_engine::DuckDbFile::new(&self.config.path, Duration::from_millis(self.config.busy_timeout_ms))
    }

    /// Clears the flags of the pages that `landed`, then reads the page after `after_rowid`. DuckDB
    /// does both in one open of the file; SQLite keeps its connection open anyway.
    async fn clear_and_read(
        &mut self,
        landed: Landed,
        after_rowid: i64,
        full: bool,
        outcome: &mut EmitOutcome,
    ) -> Result<ReadRows, SourceError> {
        let limit = self.batch_rows as i64;
        let sql = if full { &self.statements.select_all_page } else { &self.statements.select_page }.clone();
        match self.engine {
            OutboxEngine::Sqlite => {
                self.clear_landed(landed, outcome).await?;
                let result = read_rows(self.sqlite()?, &sql, &[&after_rowid, &limit], limit as usize);
                result.map_err(|e| {
                    self.sqlite = None; // reopen on the next pass (the file may have been replaced)
                    self.db_error(e)
                })
            }
            OutboxEngine::Duckdb => {
                let file = self.duckdb();
                let clear =
                    (self.statements.clear_staging.as_str(), self.statements.clear_joined.as_str(), &landed.keys[..]);
                let (cleared, page) = file.clear_then_read(clear, (&sql, after_rowid, limit)).await;
                self.account(&landed, cleared.map_err(|e| self.db_error(e))?, outcome);
                page.map_err(|e| self.db_error(e))
            }
        }
    }

    /// Compare-and-clear in one transaction; returns how many flags were cleared.
    async fn clear(&mut self, keys: &[ClearKey]) -> Result<u64, SourceError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let sql = self.statements.clear_row.clone();
        match self.engine {
            OutboxEngine::Sqlite => {
                let connection = self.sqlite()?;
                let result = (|| -> rusqlite::Result<u64> {
                    connection.execute_batch("BEGIN IMMEDIATE")?;
                    let mut cleared = 0;
                    let outcome = (|| -> rusqlite::Result<()> {
                        let mut statement = connection.prepare_cached(&sql)?;
                        for key in keys {
                            cleared += statement.execute(clear_params(key).as_slice())? as u64;
                        }
                        Ok(())
                    })();
                    match outcome {
                        Ok(()) => connection.execute_batch("COMMIT").map(|_| cleared),
                        Err(e) => {
                            let _ = connection.execute_batch("ROLLBACK");
                            Err(e)
                        }
                    }
                })();
                result.map_err(|e| self.db_error(e))
            }
            OutboxEngine::Duckdb => {
                let file = self.duckdb();
                let result = file.clear(&self.statements.clear_staging, &self.statements.clear_joined, keys).await;
                result.map_err(|e| self.db_error(e))
            }
        }
    }

    /// The pages whose publish is durable, oldest first, waiting for the oldest while more than
    /// `keep` events are in flight. A publish that failed fails the pass: its flags and those of the
    /// pages after it stay set, and the next pass publishes them again.
    async fn take_landed(
        &mut self,
        in_flight: &mut InFlight<Vec<ClearKey>>,
        keep: u64,
        landed: &mut Landed,
        outcome: &mut EmitOutcome,
    ) -> Result<(), SourceError> {
        while let Some(durable) = in_flight.next_durable(keep).await {
            match durable {
                Ok((count, keys)) => {
                    landed.events += count;
                    landed.keys.extend(keys);
                }
                Err(error) => {
                    // The pages before the failed one did land: their flags are cleared first.
                    self.clear_landed(std::mem::take(landed), outcome).await?;
                    return Err(SourceError::Publish { source_name: self.config.name.clone(), error });
                }
            }
        }
        Ok(())
    }

    /// Clears the flags of the pages that landed (only now, with their rows durable).
    async fn clear_landed(&mut self, landed: Landed, outcome: &mut EmitOutcome) -> Result<(), SourceError> {
        let cleared = self.clear(&landed.keys).await?;
        self.account(&landed, cleared, outcome);
        Ok(())
    }

    /// Counts pages that landed and had `cleared` of their flags cleared.
    fn account(&mut self, landed: &Landed, cleared: u64, outcome: &mut EmitOutcome) {
        let changed = landed.keys.len() as u64 - cleared;
        self.published += landed.events;
        self.cleared += cleared;
        self.kept_dirty += changed;
        if changed > 0 {
            tracing::debug!(source = %self.config.name, changed, "rows changed while published keep their dirty flag");
        }
        outcome.consumed += landed.events;
        outcome.published += landed.events;
    }

    /// Hands a page to the bus: as rows staged here when the bus takes them and every row stages,
    /// else as one event a row. Returns the ticket and the page's events. (`&mut`: the source holds
    /// a SQLite connection, which is not `Sync`, and the future must be `Send`.)
    async fn publish_page(&mut self, page: &ReadRows, publisher: &dyn Publisher) -> Result<(Ticket, u64), SourceError> {
        let source_label = format!("outbox:{}/{}", self.config.name, self.config.source_table);
        let deleted_position =
            self.config.deleted_column.as_deref().and_then(|name| page.names.iter().position(|n| n == name));
        let publish_error = |error| SourceError::Publish { source_name: self.config.name.clone(), error };
        if publisher.takes_staged_rows() {
            let shape = staged::PageShape {
                source_name: &self.config.name,
                source_label: &source_label,
                deleted_position,
                max_event_bytes: self.max_event_bytes,
            };
            if let Some(page) = staged::stage_page(&self.mapping, &shape, page) {
                let count = page.rows.len() as u64;
                let batch = TableBatch { table: self.mapping.table.clone(), rows: page.rows };
                let rows = StagedRows { batch, bytes: page.bytes };
                let ticket = publisher.publish_with_rows(rows, Vec::new()).await.map_err(publish_error)?;
                return Ok((ticket, count));
            }
        }
        let messages = self.page_events(page, &source_label, deleted_position);
        let count = messages.len() as u64;
        let ticket = publisher.publish_pipelined(messages).await.map_err(publish_error)?;
        Ok((ticket, count))
    }

    /// The events of a page, one a row.
    fn page_events(
        &self,
        page: &ReadRows,
        source_label: &str,
        deleted_position: Option<usize>,
    ) -> Vec<OutboundMessage> {
        let produced_at = now_rfc3339();
        let mut messages = Vec::with_capacity(page.rows.len());
        for row in &page.rows {
            let columns = page.names.iter().skip(1).map(String::as_str).zip(row.iter().skip(1));
            let payload = self.mapping.row_payload(columns);
            let deleted = deleted_position.is_some_and(|i| row[i].is_truthy());
            let rowid = staged::rowid_of(row);
            let fallback: [&[u8]; 2] = [self.config.name.as_bytes(), &rowid.to_le_bytes()];
            match row_payload_event(&self.mapping, &payload, deleted, &fallback, source_label, &produced_at) {
                Ok(event) => messages.push(event.message),
                Err((reason, detail)) => {
                    // Dead-lettered with the reason; its flag is cleared like any published row's.
                    let text = payload.text();
                    messages.push(poison(&self.mapping.table, text.as_bytes(), reason, detail, source_label));
                }
            }
        }
        messages
    }

    /// The (key, version) of a row read with `names`, for its compare-and-clear.
    fn clear_key(&self, names: &[String], row: &[SqlValue]) -> ClearKey {
        let position = |name: &str| names.iter().position(|n| n == name);
        let value = |p: Option<usize>| p.map_or(SqlValue::Null, |i| row[i].clone());
        ClearKey {
            key: self.mapping.key_columns.iter().map(|c| value(position(c))).collect(),
            version: value(self.mapping.version_column.as_deref().and_then(position)),
        }
    }
}

/// A watcher on a database file's directory that wakes on changes to the file or its journals.
pub(crate) fn watch_file(path: &Path) -> Result<(notify::RecommendedWatcher, Arc<tokio::sync::Notify>), String> {
    use notify::Watcher;
    let wakeup = Arc::new(tokio::sync::Notify::new());
    let directory = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let notify = wakeup.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Some(event) = event.ok().filter(super::is_change) {
            let ours = event
                .paths
                .iter()
                .any(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(file_name.as_str())));
            if ours {
                notify.notify_one();
            }
        }
    })
    .map_err(|e| format!("cannot watch: {e}"))?;
    watcher
        .watch(&directory, notify::RecursiveMode::NonRecursive)
        .map_err(|e| format!("cannot watch {}: {e}", directory.display()))?;
    Ok((watcher, wakeup))
}

#[async_trait]
impl Source for OutboxSource {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn set_shutdown(&mut self, shutdown: Shutdown) {
        self.shutdown = shutdown;
    }

    async fn emit(&mut self, publisher: &dyn Publisher) -> Result<EmitOutcome, SourceError> {
        let mut outcome = EmitOutcome::default();
        let scheduled = self.config.schedule.is_some();
        if scheduled && self.clock.as_ref().is_some_and(|c| !c.due()) {
            return Ok(EmitOutcome { skipped: true, ..outcome });
        }
        // A full re-sync publishes every row, dirty or not (it lands once), and clears the flags of
        // the dirty ones as any pass does.
        let full = std::mem::take(&mut self.full_requested) || self.clock.as_ref().is_some_and(PassClock::full_now);
        if full {
            tracing::info!(source = %self.config.name, "full re-sync: every row is published again");
        }
        let mut after = i64::MIN;
        // Pages go by rowid, so the next page is read (and its flags left alone) while the previous
        // one lands: at most one page waits beyond the one just handed off.
        let mut in_flight = InFlight::default();
        let keep = self.batch_rows as u64;
        // Pages that landed: their flags are cleared in the same open as the next page's read.
        let mut landed = Landed::default();
        while !self.shutdown.is_stopping() {
            let page = self.clear_and_read(std::mem::take(&mut landed), after, full, &mut outcome).await?;
            let Some(last) = page.rows.last() else { break };
            after = match last[0] {
                SqlValue::Integer(i) => i,
                _ => i64::MAX,
            };
            let (ticket, count) = self.publish_page(&page, publisher).await?;
            let keys = page.rows.iter().map(|row| self.clear_key(&page.names, row)).collect();
            in_flight.push(ticket, count, keys);
            self.take_landed(&mut in_flight, keep, &mut landed, &mut outcome).await?;
            if page.rows.len() < self.batch_rows {
                break;
            }
        }
        self.take_landed(&mut in_flight, 0, &mut landed, &mut outcome).await?;
        self.clear_landed(landed, &mut outcome).await?;
        if !self.shutdown.is_stopping() {
            let tombstones = self.publish_deletes(publisher).await?;
            self.published += tombstones;
            outcome.consumed += tombstones;
            outcome.published += tombstones;
        }
        let full = full && !self.shutdown.is_stopping();
        if full {
            record_full_resync(&self.checkpoints, &self.config.name)?;
        }
        if let Some(clock) = &mut self.clock {
            clock.finished(full);
        }
        outcome.full = full;
        Ok(outcome)
    }

    async fn wait_for_input(&mut self, max_wait: Duration) {
        match &self.clock {
            // On a schedule, changes to the file wait for the next tick.
            Some(clock) if self.config.schedule.is_some() => {
                tokio::time::sleep(max_wait.min(clock.until_due()).max(Duration::from_millis(10))).await;
            }
            clock => {
                let until_full = clock.as_ref().map_or(max_wait, PassClock::until_due);
                let wait = max_wait.min(Duration::from_millis(self.config.poll_interval_ms)).min(until_full);
                let _ = tokio::time::timeout(wait, self.wakeup.notified()).await;
            }
        }
    }

    fn trigger(&mut self) {
        if let Some(clock) = &mut self.clock {
            clock.trigger();
        }
    }

    fn trigger_full(&mut self) {
        self.full_requested = true;
        self.trigger();
    }

    fn tables(&self) -> Vec<String> {
        vec![self.mapping.table.clone()]
    }

    fn observable_state(&self) -> Value {
        serde_json::json!({
            "source": self.config.name,
            "published": self.published,
            "cleared": self.cleared,
            "kept_dirty": self.kept_dirty,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page is 20,000 rows on SQLite and 40,000 on DuckDB unless `batch_rows` says otherwise.
    #[test]
    fn the_page_size_defaults_by_engine_and_is_kept_when_set() {
        let catalog = Catalog::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")).unwrap();
        let state = tempfile::tempdir().unwrap();
        let checkpoints = Arc::new(CheckpointStore::open(&state.path().join("state.db")).unwrap());
        let page_rows = |extra: &str| {
            let config = format!("name = \"o\"\nsource_table = \"contacts\"\ntable = \"contacts_master\"\n{extra}");
            let config: OutboxSourceConfig = toml::from_str(&config).unwrap();
            OutboxSource::new(config, &catalog, checkpoints.clone()).map(|source| source.batch_rows)
        };
        assert_eq!(page_rows("path = \"app.db\"").unwrap(), SQLITE_BATCH_ROWS);
        assert_eq!(page_rows("path = \"app.db\"\nbatch_rows = 500").unwrap(), 500);
        assert!(page_rows("path = \"app.db\"\nbatch_rows = 0").is_err());
        if cfg!(feature = "embedded") {
            assert_eq!(page_rows("path = \"app.duckdb\"").unwrap(), DUCKDB_BATCH_ROWS);
            assert_eq!(page_rows("path = \"app.data\"\nengine = \"duckdb\"").unwrap(), DUCKDB_BATCH_ROWS);
            assert_eq!(page_rows("path = \"app.duckdb\"\nbatch_rows = 500").unwrap(), 500);
        } else {
            assert!(page_rows("path = \"app.duckdb\"").is_err(), "a DuckDB outbox needs the embedded feature");
        }
    }
}
