//! `[[sources.outbox]]`: dirty-row outboxes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One `[[sources.outbox]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxSourceConfig {
    /// Name of the source (`bqsync sync NAME`).
    pub name: String,
    /// `sqlite` or `duckdb`. Default: `duckdb` for a path ending in `.duckdb`, else `sqlite`.
    #[serde(default)]
    pub engine: Option<OutboxEngine>,
    /// The database file the application writes.
    pub path: PathBuf,
    /// The table with the dirty flag.
    pub source_table: String,
    /// Destination table, an upsert table in `schemas/`. Default: `source_table`. Its primary key and
    /// version column name the source columns (after `columns` renames).
    #[serde(default)]
    pub table: Option<String>,
    /// The dirty flag (BOOLEAN or INTEGER; non-zero means changed since published). Default `dirty`.
    #[serde(default = "default_dirty_column")]
    pub dirty_column: String,
    /// A column that, when true, makes the row a delete (tombstone). Default: none.
    #[serde(default)]
    pub deleted_column: Option<String>,
    /// Hard deletes: a table of the same file that an `AFTER DELETE` trigger fills with the deleted
    /// row's key and a version above its last one (`old.version + 1`); each pass publishes its rows
    /// as tombstones and removes them. Default: none (hard deletes do not reach the warehouse).
    #[serde(default)]
    pub delete_log_table: Option<String>,
    /// Source column → destination column, for names that differ.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    /// Milliseconds between passes; a change to the file also starts one. Default 1000. Ignored
    /// when `schedule` is set.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Run passes only on this cron (as for `[[sources.sqlite]]`), not on every change.
    #[serde(default)]
    pub schedule: Option<String>,
    /// A full re-sync on this cron: one pass publishes every row, dirty or not (it lands once). One
    /// missed while bqsync was down runs once at start-up.
    #[serde(default)]
    pub full_schedule: Option<String>,
    /// IANA time zone of `schedule` and `full_schedule`. Default UTC.
    #[serde(default)]
    pub timezone: Option<String>,
    /// Rows per page (one publish and one clear transaction a page). A DuckDB file is opened once a
    /// page, briefly (the compare-and-clear of the pages that landed, then the next page's read),
    /// never across the publish; larger pages open it less often but hold more rows in memory (two
    /// pages wait for their clear) and hold the file a little longer each time. Default 20000 for
    /// SQLite (whose clear holds the application's write lock) and 40000 for DuckDB (each open, and
    /// the checkpoint on close, cost DuckDB tens of milliseconds: 200k rows took about 2.0 s in
    /// 20,000-row pages and 1.7 s in 40,000-row ones, see docs/benchmarks.md).
    #[serde(default)]
    pub batch_rows: Option<usize>,
    /// How long to wait for the application's locks (SQLite busy timeout; DuckDB: retrying the
    /// open) before the pass fails and is retried. Default 10000.
    #[serde(default = "default_busy_timeout_ms")]
    pub busy_timeout_ms: u64,
}

/// The database engine of an outbox file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutboxEngine {
    Sqlite,
    Duckdb,
}

impl OutboxSourceConfig {
    /// The schedule fields.
    pub fn schedule(&self) -> super::ScheduleConfig {
        super::ScheduleConfig {
            schedule: self.schedule.clone(),
            full_schedule: self.full_schedule.clone(),
            timezone: self.timezone.clone(),
        }
    }
}

fn default_dirty_column() -> String {
    "dirty".into()
}

const fn default_poll_interval_ms() -> u64 {
    1000
}

/// The default `batch_rows` of a SQLite outbox.
pub const SQLITE_BATCH_ROWS: usize = 20_000;
/// The default `batch_rows` of a DuckDB outbox.
pub const DUCKDB_BATCH_ROWS: usize = 40_000;

const fn default_busy_timeout_ms() -> u64 {
    10_000
}
