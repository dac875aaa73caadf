//! `[[sources.sqlite]]`: SQLite tables synced by watermark.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One `[[sources.sqlite]]` entry: a SQLite file and the tables synced from it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteSourceConfig {
    /// Name of the source (keys its watermarks; `bqsync sync NAME`).
    pub name: String,
    /// The SQLite database file. Opened read-only; writers are never blocked for longer than one page
    /// read.
    pub path: PathBuf,
    /// Seconds between passes. Default 60. Ignored when `schedule` is set.
    #[serde(default = "default_poll_interval_secs")]
    pub poll_interval_secs: u64,
    /// Run passes on this cron instead of every `poll_interval_secs`: `MIN HOUR DOM MON DOW` (or
    /// with seconds first), e.g. `"*/15 * * * *"`. A source always runs one pass when it starts.
    #[serde(default)]
    pub schedule: Option<String>,
    /// A full re-sync on this cron, e.g. `"0 2 * * *"`: the watermarks are ignored for one pass,
    /// every row is published again (it lands once) and deleted rows are found. One missed while
    /// bqsync was down runs once at start-up.
    #[serde(default)]
    pub full_schedule: Option<String>,
    /// IANA time zone of `schedule` and `full_schedule`, e.g. `"Asia/Kolkata"`. Default UTC.
    #[serde(default)]
    pub timezone: Option<String>,
    /// Rows per page (one publish and one state write per page). Default 5000.
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
    /// `[[sources.sqlite.tables]]`: the tables to sync.
    pub tables: Vec<SqliteTableConfig>,
}

impl SqliteSourceConfig {
    /// The schedule fields.
    pub fn schedule(&self) -> super::ScheduleConfig {
        super::ScheduleConfig {
            schedule: self.schedule.clone(),
            full_schedule: self.full_schedule.clone(),
            timezone: self.timezone.clone(),
        }
    }
}

/// One table of a SQLite source.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteTableConfig {
    /// Table (or view) name in the SQLite file.
    pub source_table: String,
    /// Destination table (a file in `schemas/`). Default: `source_table`.
    #[serde(default)]
    pub table: Option<String>,
    /// `rowid` (insert-only) or `updated_at` (rows change). Default: `updated_at` for upsert tables,
    /// `rowid` for append tables.
    #[serde(default)]
    pub mode: Option<WatermarkMode>,
    /// The increasing column. Default `rowid` in `rowid` mode, `updated_at` in `updated_at` mode.
    /// TEXT timestamps must use one ISO-8601 format per table (as SQLite's `datetime()` writes them);
    /// INTEGER ones are epoch seconds, milliseconds or microseconds (told apart by magnitude).
    #[serde(default)]
    pub watermark_column: Option<String>,
    /// `updated_at` mode: how far behind the watermark each pass starts again. Default 300.
    #[serde(default = "default_overlap_secs")]
    pub overlap_secs: u64,
    /// A column that, when true (non-zero), makes the row a delete (tombstone).
    #[serde(default)]
    pub deleted_column: Option<String>,
    /// `updated_at` mode: find rows deleted from the source by comparing keys each pass and publish
    /// tombstones. Costs one key scan a pass. Default true.
    #[serde(default = "default_true")]
    pub detect_deletes: bool,
    /// Source column → destination column, for names that differ.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
}

/// How a table's new rows are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WatermarkMode {
    Rowid,
    UpdatedAt,
}

const fn default_poll_interval_secs() -> u64 {
    60
}

const fn default_batch_rows() -> usize {
    5000
}

const fn default_overlap_secs() -> u64 {
    300
}

const fn default_true() -> bool {
    true
}
