//! SQLite tables synced by watermark (the seeds' 15-minute syncer, made incremental and idempotent).
//!
//! Per table, one of two modes:
//! - `rowid` (insert-only tables): rows past the last published row id (or another increasing integer
//!   column), in order. Exact: nothing is read twice.
//! - `updated_at` (updatable tables): rows whose change column is at or after the watermark minus
//!   `overlap_secs`, in (column, rowid) order. The overlap catches rows committed late or stamped by
//!   a clock behind ours; rows re-read in it are skipped when their key was already published at the
//!   same version (the synced keys in the state file), and would be deduplicated by event id anyway.
//!   Equal timestamps are safe: pages continue from (value, rowid), never from the value alone.
//!   Hard deletes are found by comparing the table's keys with the synced keys (`detect_deletes`) and
//!   published as tombstones; soft deletes through `deleted_column`.
//!
//! Invariant: the watermark and the synced keys are written in one state transaction, after the
//! publish of the page they cover resolved. `bqsync sync --full SOURCE` forgets them: everything is
//! published again, and lands once (event ids are table + key + version).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags};
use serde_json::Value;

/// The open database; locked only while a query runs, never across a publish.
type Db = std::sync::Mutex<Connection>;

use super::checkpoint::{republish_key, CheckpointStore, REPUBLISH_ALL};
use super::in_flight::{InFlight, IN_FLIGHT_EVENTS};
use super::rows::{now_rfc3339, poison, row_payload_event, tombstone_event, RowMapping, SqlValue};
use super::schedule::{last_full_resync, record_full_resync, PassClock, Schedule};
use super::{history, EmitOutcome, Source, SourceError};
use crate::batch::TableBatch;
use crate::bus::{OutboundMessage, Publisher, StagedRows};
use crate::schema::Catalog;
use crate::shutdown::Shutdown;

pub use crate::config::sources::sqlite::{SqliteSourceConfig, SqliteTableConfig, WatermarkMode};
use values::{decode_watermark, encode_watermark, overlap_bound};
pub(crate) use values::{quote, read_rows, ReadRows};

mod staged;
mod values;

/// A table being synced.
struct SyncedTable {
    config: SqliteTableConfig,
    mapping: RowMapping,
    mode: WatermarkMode,
    /// SQL expression of the watermark column.
    watermark: String,
    /// Synced key → version (updated_at mode), loaded from the state file on the first pass.
    synced: Option<HashMap<String, i64>>,
    warned_ignored: bool,
    /// The pass under way publishes every row again (a full re-sync, or a reset).
    republish: bool,
}

impl SyncedTable {
    /// What the id of an append row is derived from when the table has no id field: the table, the
    /// source, the source table and the rowid ([`rowid_bytes`]).
    fn fallback_id<'a>(&'a self, source: &'a str, rowid: &'a [u8; 8]) -> [&'a [u8]; 4] {
        [self.mapping.table.as_bytes(), source.as_bytes(), self.config.source_table.as_bytes(), rowid]
    }

    fn state_key(&self) -> String {
        format!("wm:{}", self.config.source_table)
    }
}

/// The SQLite watermark source.
pub struct SqliteSource {
    config: SqliteSourceConfig,
    tables: Vec<SyncedTable>,
    checkpoints: Arc<CheckpointStore>,
    published: u64,
    /// When the next pass is due, and whether it is a full re-sync.
    clock: PassClock,
    /// The pass under way is a full re-sync: watermarks ignored, unchanged rows published again.
    full_pass: bool,
    shutdown: Shutdown,
    /// `worker.max_event_bytes`: rows staged by the source stay well below it.
    max_event_bytes: usize,
}

impl SqliteSource {
    pub fn new(
        config: SqliteSourceConfig,
        catalog: &Catalog,
        checkpoints: Arc<CheckpointStore>,
    ) -> Result<SqliteSource, SourceError> {
        let problem = |problem: String| SourceError::Config { source_name: config.name.clone(), problem };
        if config.batch_rows == 0 || config.tables.is_empty() {
            return Err(problem("needs batch_rows ≥ 1 and at least one [[sources.sqlite.tables]] entry".into()));
        }
        let mut tables = Vec::new();
        for table in &config.tables {
            let destination = table.table.clone().unwrap_or_else(|| table.source_table.clone());
            let mapping = RowMapping::new(catalog, &destination, &table.columns)
                .map_err(|e| problem(format!("table `{}`: {e}", table.source_table)))?;
            let mode =
                table.mode.unwrap_or(if mapping.is_upsert() { WatermarkMode::UpdatedAt } else { WatermarkMode::Rowid });
            let watermark = match (&table.watermark_column, mode) {
                (Some(column), _) => quote(column),
                (None, WatermarkMode::Rowid) => "rowid".to_string(),
                (None, WatermarkMode::UpdatedAt) => quote("updated_at"),
            };
            tables.push(SyncedTable {
                config: table.clone(),
                mapping,
                mode,
                watermark,
                synced: None,
                warned_ignored: false,
                republish: false,
            });
        }
        let schedule =
            Schedule::new(&config.schedule(), Duration::from_secs(config.poll_interval_secs)).map_err(problem)?;
        let mut last_full = last_full_resync(&checkpoints, &config.name)?;
        if config.full_schedule.is_some() && last_full.is_none() {
            // The first start with a full schedule: re-syncs missed from now on are owed.
            record_full_resync(&checkpoints, &config.name)?;
            last_full = Some(chrono::Utc::now());
        }
        Ok(SqliteSource {
            clock: PassClock::new(schedule, last_full),
            full_pass: false,
            config,
            tables,
            checkpoints,
            published: 0,
            shutdown: Shutdown::default(),
            max_event_bytes: crate::config::worker::WorkerConfig::default().max_event_bytes,
        })
    }

    /// The worker's `max_event_bytes` (rows staged by the source stay well below it).
    pub fn set_max_event_bytes(&mut self, max_event_bytes: usize) {
        self.max_event_bytes = max_event_bytes;
    }

    /// Records one table's part of a pass in the history (never fatal).
    fn record_table_pass(&self, index: usize, started: i64, result: &Result<u64, SourceError>) {
        let pass = history::Pass {
            source: self.config.name.clone(),
            table: self.tables[index].config.source_table.clone(),
            started_micros: started,
            finished_micros: chrono::Utc::now().timestamp_micros(),
            published: *result.as_ref().unwrap_or(&0),
            error: result.as_ref().err().map(ToString::to_string),
            full: self.tables[index].republish || self.full_pass,
        };
        if let Err(e) = history::record(&self.checkpoints, &pass) {
            tracing::warn!(source = %self.config.name, error = %e, "cannot record the pass in the history");
        }
    }

    fn open(&self) -> Result<Connection, SourceError> {
        let io = |e: rusqlite::Error| SourceError::Io {
            source_name: self.config.name.clone(),
            path: self.config.path.display().to_string(),
            error: std::io::Error::other(e.to_string()),
        };
        if !self.config.path.exists() {
            return Err(SourceError::Io {
                source_name: self.config.name.clone(),
                path: self.config.path.display().to_string(),
                error: std::io::Error::new(std::io::ErrorKind::NotFound, "database file not found"),
            });
        }
        let connection = Connection::open_with_flags(
            &self.config.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(io)?;
        connection.busy_timeout(Duration::from_secs(5)).map_err(io)?;
        Ok(connection)
    }

    fn query_error(&self, table: &str, e: rusqlite::Error) -> SourceError {
        SourceError::Io {
            source_name: self.config.name.clone(),
            path: format!("{} (table `{table}`)", self.config.path.display()),
            error: std::io::Error::other(e.to_string()),
        }
    }

    fn checkpoint_error(&self, error: super::checkpoint::CheckpointError) -> SourceError {
        SourceError::Checkpoint { source_name: self.config.name.clone(), error }
    }

    async fn sync_table(
        &mut self,
        index: usize,
        connection: &Db,
        publisher: &dyn Publisher,
    ) -> Result<u64, SourceError> {
        let name = self.config.name.clone();
        let state_key = self.tables[index].state_key();
        let saved = self.checkpoints.state(&name, &state_key).map_err(|e| self.checkpoint_error(e))?;
        // A full re-sync, or a reset of the source or this table, publishes every row again.
        let republish = self.full_pass
            || [REPUBLISH_ALL.to_string(), republish_key(&self.tables[index].config.source_table)]
                .iter()
                .map(|key| self.checkpoints.state(&name, key))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| self.checkpoint_error(e))?
                .iter()
                .any(Option::is_some);
        self.tables[index].republish = republish;
        let saved: Option<SqlValue> = saved.as_deref().and_then(decode_watermark).filter(|_| !republish);
        if self.tables[index].mode == WatermarkMode::UpdatedAt && self.tables[index].synced.is_none() {
            let keys = self
                .checkpoints
                .synced_keys(&name, &self.tables[index].mapping.table)
                .map_err(|e| self.checkpoint_error(e))?;
            self.tables[index].synced = Some(keys.into_iter().collect());
        }
        let table = &self.tables[index];
        let mode = table.mode;
        let lower = match (&saved, mode) {
            (Some(value), WatermarkMode::UpdatedAt) => Some(overlap_bound(value, table.config.overlap_secs)),
            (value, _) => value.clone(),
        };
        let mut in_flight = InFlight::default();
        let paged = self.publish_pages(index, connection, publisher, lower, &mut in_flight).await;
        // What was handed to the bus is checkpointed once durable, even when a later page failed.
        let settled = self.settle(index, &mut in_flight, 0).await;
        let mut published = paged? + settled?;
        if republish && !self.shutdown.is_stopping() {
            let mark = republish_key(&self.tables[index].config.source_table);
            self.checkpoints.save_progress(&name, &[(mark, None)], "", &[]).map_err(|e| self.checkpoint_error(e))?;
            self.tables[index].republish = false;
        }
        if mode == WatermarkMode::UpdatedAt
            && self.tables[index].config.detect_deletes
            && self.tables[index].mapping.is_upsert()
            && !self.shutdown.is_stopping()
        {
            published += self.publish_deletes(index, connection, publisher).await?;
        }
        Ok(published)
    }

    /// Reads the table page by page from `lower` and hands each page to the bus. Returns the events
    /// of the pages checkpointed meanwhile.
    async fn publish_pages(
        &mut self,
        index: usize,
        connection: &Db,
        publisher: &dyn Publisher,
        mut lower: Option<SqlValue>,
        in_flight: &mut InFlight<PageProgress>,
    ) -> Result<u64, SourceError> {
        let table = &self.tables[index];
        let (mode, watermark) = (table.mode, table.watermark.clone());
        let from = quote(&table.config.source_table);
        let mut last_rowid = i64::MIN;
        let batch = self.config.batch_rows as i64;
        let mut published = 0;
        loop {
            if self.shutdown.is_stopping() {
                break;
            }
            let sql = match (mode, &lower) {
                (_, None) => format!(
                    "SELECT {watermark} AS __bqsync_wm, rowid AS __bqsync_rowid, * FROM {from} WHERE {watermark} IS NOT NULL ORDER BY {watermark}, rowid LIMIT ?1"
                ),
                (WatermarkMode::Rowid, Some(_)) => format!(
                    "SELECT {watermark} AS __bqsync_wm, rowid AS __bqsync_rowid, * FROM {from} WHERE {watermark} > ?2 ORDER BY {watermark} LIMIT ?1"
                ),
                (WatermarkMode::UpdatedAt, Some(_)) => format!(
                    "SELECT {watermark} AS __bqsync_wm, rowid AS __bqsync_rowid, * FROM {from} WHERE {watermark} > ?2 OR ({watermark} = ?2 AND rowid > ?3) ORDER BY {watermark}, rowid LIMIT ?1"
                ),
            };
            let page = {
                let connection = connection.lock().unwrap_or_else(|p| p.into_inner());
                let page_rows = batch as usize;
                match &lower {
                    None => read_rows(&connection, &sql, &[&batch], page_rows),
                    Some(value) if mode == WatermarkMode::Rowid => {
                        read_rows(&connection, &sql, &[&batch, value], page_rows)
                    }
                    Some(value) => read_rows(&connection, &sql, &[&batch, value, &last_rowid], page_rows),
                }
            }
            .map_err(|e| self.query_error(&self.tables[index].config.source_table, e))?;
            let Some(last) = page.rows.last() else { break };
            let next_lower = last[0].clone();
            last_rowid = match last[1] {
                SqlValue::Integer(i) => i,
                _ => i64::MIN,
            };
            let full_page = page.rows.len() as i64 == batch;
            published += self.publish_page(index, &page, publisher, in_flight).await?;
            lower = Some(next_lower);
            if !full_page {
                break;
            }
        }
        Ok(published)
    }

    /// Hands one page to the bus; its watermark and keys are recorded once it is durable (see
    /// [`Self::settle`]). Returns the events of the pages checkpointed meanwhile.
    async fn publish_page(
        &mut self,
        index: usize,
        page: &ReadRows,
        publisher: &dyn Publisher,
        in_flight: &mut InFlight<PageProgress>,
    ) -> Result<u64, SourceError> {
        let produced_at = now_rfc3339();
        let table = &mut self.tables[index];
        let source_label = format!("sqlite:{}/{}", self.config.name, table.config.source_table);
        if publisher.takes_staged_rows() {
            if let Some(staged) =
                staged::stage_page(table, &self.config.name, &source_label, page, self.max_event_bytes)
            {
                let count = staged.rows.len() as u64;
                let batch = TableBatch { table: table.mapping.table.clone(), rows: staged.rows };
                let ticket = publisher
                    .publish_with_rows(StagedRows { batch, bytes: staged.bytes }, Vec::new())
                    .await
                    .map_err(|error| SourceError::Publish { source_name: self.config.name.clone(), error })?;
                let watermark = encode_watermark(&page.rows.last().expect("non-empty page")[0]);
                in_flight.push(ticket, count, PageProgress { watermark, keys: staged.keys });
                return self.settle(index, in_flight, IN_FLIGHT_EVENTS).await;
            }
        }
        let deleted_index = table.config.deleted_column.as_ref().and_then(|c| page.names.iter().position(|n| n == c));
        // Sized once: a page is thousands of rows, and growing the vector by doubling copied it and
        // faulted fresh pages in (about 2 % of a 1M-row sync's CPU, by `perf`).
        let mut messages: Vec<OutboundMessage> = Vec::with_capacity(page.rows.len());
        let mut keys = Vec::new();
        for row in &page.rows {
            let columns = page.names.iter().skip(2).map(String::as_str).zip(row.iter().skip(2));
            let payload = table.mapping.row_payload(columns);
            warn_ignored(&mut table.warned_ignored, &self.config.name, &table.config, &payload.ignored);
            let deleted = deleted_index.is_some_and(|i| row[i].is_truthy());
            let rowid = rowid_bytes(row);
            let fallback = table.fallback_id(&self.config.name, &rowid);
            match row_payload_event(&table.mapping, &payload, deleted, &fallback, &source_label, &produced_at) {
                Ok(event) => {
                    if let (Some(key), Some(version), Some(synced)) = (&event.key_text, event.version, &table.synced) {
                        if synced.get(key) == Some(&version) && !table.republish {
                            continue; // re-read in the overlap window, already published
                        }
                        keys.push((key.clone(), Some(version)));
                    }
                    messages.push(event.message);
                }
                Err((reason, detail)) => {
                    let text = payload.text();
                    messages.push(poison(&table.mapping.table, text.as_bytes(), reason, detail, &source_label));
                }
            }
        }
        let count = messages.len() as u64;
        let ticket = publisher
            .publish_pipelined(messages)
            .await
            .map_err(|error| SourceError::Publish { source_name: self.config.name.clone(), error })?;
        let watermark = encode_watermark(&page.rows.last().expect("non-empty page")[0]);
        in_flight.push(ticket, count, PageProgress { watermark, keys });
        self.settle(index, in_flight, IN_FLIGHT_EVENTS).await
    }

    /// Records the watermark and keys of the handed-off pages that are durable, in order, waiting
    /// for the oldest ones until at most `keep` events are left waiting. Returns their events.
    async fn settle(
        &mut self,
        index: usize,
        in_flight: &mut InFlight<PageProgress>,
        keep: u64,
    ) -> Result<u64, SourceError> {
        let mut settled = 0;
        while let Some(durable) = in_flight.next_durable(keep).await {
            let (count, PageProgress { watermark, keys }) =
                durable.map_err(|error| SourceError::Publish { source_name: self.config.name.clone(), error })?;
            // Only now, with the page durable on the bus, may the watermark move past it.
            let table = &mut self.tables[index];
            let states = [(table.state_key(), Some(watermark))];
            self.checkpoints
                .save_progress(&self.config.name, &states, &table.mapping.table, &keys)
                .map_err(|error| SourceError::Checkpoint { source_name: self.config.name.clone(), error })?;
            if let Some(synced) = &mut table.synced {
                for (key, version) in keys {
                    synced.insert(key, version.expect("set when pushed"));
                }
            }
            self.published += count;
            settled += count;
        }
        Ok(settled)
    }

    /// Tombstones for synced keys no longer in the source table.
    async fn publish_deletes(
        &mut self,
        index: usize,
        connection: &Db,
        publisher: &dyn Publisher,
    ) -> Result<u64, SourceError> {
        let table = &self.tables[index];
        let columns: Vec<String> = table.mapping.key_columns.iter().map(|c| quote(c)).collect();
        let sql = format!("SELECT {} FROM {}", columns.join(", "), quote(&table.config.source_table));
        let rows = read_rows(&connection.lock().unwrap_or_else(|p| p.into_inner()), &sql, &[], 0)
            .map_err(|e| self.query_error(&table.config.source_table, e))?;
        let present: HashSet<String> = rows
            .rows
            .iter()
            .map(|row| {
                let (payload, _) = table.mapping.payload(rows.names.iter().map(String::as_str).zip(row.iter()));
                table.mapping.key_text(&payload)
            })
            .collect();
        let synced = table.synced.as_ref().expect("loaded in updated_at mode");
        let gone: Vec<(String, i64)> =
            synced.iter().filter(|(key, _)| !present.contains(*key)).map(|(k, v)| (k.clone(), *v)).collect();
        if gone.is_empty() {
            return Ok(0);
        }
        let produced_at = now_rfc3339();
        let source_label = format!("sqlite:{}/{}", self.config.name, table.config.source_table);
        let mut messages = Vec::with_capacity(gone.len());
        for (key, version) in &gone {
            match tombstone_event(&table.mapping, key, *version, &source_label, &produced_at) {
                Ok(message) => messages.push(message),
                Err(e) => tracing::warn!(source = %self.config.name, error = %e, "skipping an unreadable saved key"),
            }
        }
        let count = messages.len() as u64;
        publisher
            .publish(messages)
            .await
            .map_err(|error| SourceError::Publish { source_name: self.config.name.clone(), error })?;
        let keys: Vec<(String, Option<i64>)> = gone.iter().map(|(k, _)| (k.clone(), None)).collect();
        let destination = table.mapping.table.clone();
        self.checkpoints
            .save_progress(&self.config.name, &[], &destination, &keys)
            .map_err(|error| SourceError::Checkpoint { source_name: self.config.name.clone(), error })?;
        let synced = self.tables[index].synced.as_mut().expect("loaded");
        for (key, _) in &gone {
            synced.remove(key);
        }
        tracing::info!(source = %self.config.name, table = %destination, deleted = count, "rows deleted at the source: tombstones published");
        self.published += count;
        Ok(count)
    }
}

/// A row's rowid (its second column) as the bytes of its fallback id.
fn rowid_bytes(row: &[SqlValue]) -> [u8; 8] {
    match row[1] {
        SqlValue::Integer(i) => i,
        _ => 0,
    }
    .to_le_bytes()
}

/// Warns once per table of the source columns its destination does not have (not synced).
fn warn_ignored(warned: &mut bool, source: &str, table: &SqliteTableConfig, ignored: &[String]) {
    if *warned {
        return;
    }
    let ignored: Vec<&String> = ignored.iter().filter(|c| Some(*c) != table.deleted_column.as_ref()).collect();
    if !ignored.is_empty() {
        tracing::warn!(source, table = %table.source_table, ?ignored, "columns not in the destination schema are not synced");
        *warned = true;
    }
}

/// What a page allows once durable: its last watermark (encoded) and the keys it published.
struct PageProgress {
    watermark: String,
    keys: Vec<(String, Option<i64>)>,
}

#[async_trait]
impl Source for SqliteSource {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn set_shutdown(&mut self, shutdown: Shutdown) {
        self.shutdown = shutdown;
    }

    async fn emit(&mut self, publisher: &dyn Publisher) -> Result<EmitOutcome, SourceError> {
        if !self.clock.due() {
            return Ok(EmitOutcome { skipped: true, ..EmitOutcome::default() });
        }
        self.full_pass = self.clock.full_now();
        if self.full_pass {
            tracing::info!(source = %self.config.name, "full re-sync: every row is published again");
        }
        let connection = std::sync::Mutex::new(self.open()?);
        let mut outcome = EmitOutcome::default();
        // A table that fails does not stop the others: each is tried, and the pass fails after them
        // (the driver retries it with backoff; the tables that went through resume from their
        // watermarks, so the retry costs them one empty query).
        let mut failed = None;
        for index in 0..self.tables.len() {
            let started = chrono::Utc::now().timestamp_micros();
            let result = self.sync_table(index, &connection, publisher).await;
            self.record_table_pass(index, started, &result);
            match result {
                Ok(published) => {
                    outcome.consumed += published;
                    outcome.published += published;
                }
                Err(e) => {
                    tracing::error!(source = %self.config.name, table = %self.tables[index].config.source_table, error = %e, "table sync failed; the other tables go on");
                    failed.get_or_insert(e);
                }
            }
        }
        if let Some(error) = failed {
            // The driver counts only a pass that succeeded: count what the others published here.
            crate::metrics::global().published(&self.config.name, outcome.published);
            return Err(error);
        }
        if !self.shutdown.is_stopping() {
            // Every table went through: a reset of the whole source is done.
            self.checkpoints
                .save_progress(&self.config.name, &[(REPUBLISH_ALL.to_string(), None)], "", &[])
                .map_err(|e| self.checkpoint_error(e))?;
        }
        if self.full_pass && !self.shutdown.is_stopping() {
            record_full_resync(&self.checkpoints, &self.config.name)?;
        }
        // A failed pass returned above and is retried by the driver; a finished one waits its turn.
        self.clock.finished(self.full_pass && !self.shutdown.is_stopping());
        if let Err(e) = history::record_next_pass(&self.checkpoints, &self.config.name, self.clock.next_due_micros()) {
            tracing::warn!(source = %self.config.name, error = %e, "cannot record the next pass");
        }
        outcome.full = self.full_pass;
        Ok(outcome)
    }

    async fn wait_for_input(&mut self, max_wait: Duration) {
        tokio::time::sleep(max_wait.min(self.clock.until_due()).max(Duration::from_millis(10))).await;
    }

    fn trigger(&mut self) {
        self.clock.trigger();
    }

    fn trigger_full(&mut self) {
        self.clock.trigger_full();
    }

    fn records_empty_passes(&self) -> bool {
        true
    }

    fn tables(&self) -> Vec<String> {
        self.tables.iter().map(|t| t.mapping.table.clone()).collect()
    }

    fn observable_state(&self) -> Value {
        serde_json::json!({ "source": self.config.name, "published": self.published, "schedule": self.clock.observable() })
    }
}
