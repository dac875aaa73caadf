//! `bqsync status`: queue depth, dead letters by reason, rows per table and checkpoint lag.
//!
//! It reads the bus and checkpoint files (SQLite allows readers beside a running bqsync), and takes the
//! queue figures from the running bqsync's admin API when one runs (`run` holds events in memory
//! between its sources and its worker, which the bus file does not show). The DuckDB
//! warehouse it reads through the running bqsync's admin API when one runs (DuckDB lets one process
//! hold the file), else opens the file read-only; when neither works, status says so instead of
//! failing.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::bus::QueueStats;
use crate::config::bus::EmbeddedBusConfig;
use crate::config::warehouse::{WarehouseConfig, WarehouseKind};
use crate::config::GcsConfig;
use crate::schema::Catalog;
use crate::sources::checkpoint::CheckpointStore;
use crate::warehouse::remote::{self, RemoteWarehouse};
use crate::warehouse::{Warehouse, WarehouseError};

/// Everything `bqsync status` shows.
#[derive(Debug, Default, Serialize)]
pub struct Status {
    pub queue: Option<QueueStats>,
    /// Where the queue figures come from, when not from the bus file alone.
    pub queue_note: Option<String>,
    pub rows_per_table: Vec<(String, u64)>,
    pub dead_letters: Vec<(String, String, u64)>,
    pub warehouse_note: Option<String>,
    pub checkpoints: Vec<CheckpointLag>,
    /// Per source (`*`) and per table of a SQLite source: the last pass, failures, position, next run.
    pub sources: Vec<crate::sources::history::SyncState>,
}

/// How far a file's checkpoint trails the file.
#[derive(Debug, Serialize)]
pub struct CheckpointLag {
    pub source: String,
    pub path: String,
    pub offset: u64,
    pub size: Option<u64>,
    pub lag_bytes: Option<u64>,
    /// The bytes behind are one last line without a newline: they wait for it and will not land
    /// until it comes (or `final_line_after_ms` takes them).
    pub partial_last_line: bool,
}

/// What `bqsync status` reads: the embedded bus file, the warehouse, and the checkpoint file.
pub struct StatusInputs<'a> {
    pub bus: &'a EmbeddedBusConfig,
    pub warehouse: &'a WarehouseConfig,
    pub gcs: &'a GcsConfig,
    pub state_path: &'a Path,
    /// The admin token, for a running process's admin API.
    pub admin_token: Option<String>,
}

pub async fn collect(inputs: StatusInputs<'_>, catalog: Arc<Catalog>) -> anyhow::Result<Status> {
    let mut status = Status::default();
    // One request to the running process, when one runs, serves the queue and its dead letters.
    let running = running_process_status(&inputs).await;
    // A running process knows its queue best: `run` holds events in memory that no file shows.
    match running.as_ref().and_then(|(_, document)| document.as_ref().ok()).and_then(remote::queue_in) {
        Some(queue) => {
            status.queue = Some(queue);
            status.queue_note =
                Some("from the running bqsync: its worker's queue, events held in memory included".into());
        }
        None => status.queue = embedded_queue(inputs.bus).await?,
    }
    let path = &inputs.warehouse.duckdb.path;
    if inputs.warehouse.kind == WarehouseKind::Bigquery {
        let warehouse = crate::warehouse::open(inputs.warehouse, inputs.gcs, catalog).await?;
        status.rows_per_table = warehouse.row_counts().await?;
        status.dead_letters = warehouse.dead_letter_counts().await?;
    } else if let Some((process, document)) = running {
        match (process.row_counts().await, document) {
            (Ok(rows), Ok(document)) => {
                (status.rows_per_table, status.dead_letters) = (rows, remote::dead_letter_counts_in(&document))
            }
            (Err(e), _) | (_, Err(e)) => status.warehouse_note = Some(format!("warehouse not readable now: {e}")),
        }
    } else if path.exists() {
        match read_duckdb_counts(path, catalog).await? {
            Ok((rows, dead_letters)) => (status.rows_per_table, status.dead_letters) = (rows, dead_letters),
            Err(note) => status.warehouse_note = Some(note),
        }
    } else {
        status.warehouse_note = Some(format!("no warehouse file yet at {}", path.display()));
    }
    status.checkpoints = checkpoint_lags(inputs.state_path)?;
    status.sources = sync_states(inputs.state_path)?;
    Ok(status)
}

/// The bqsync running in this project, when one runs, and its `/status` document (or why it gave
/// none within [`RUNNING_STATUS_TIMEOUT`]).
async fn running_process_status(
    inputs: &StatusInputs<'_>,
) -> Option<(RemoteWarehouse, Result<serde_json::Value, WarehouseError>)> {
    let address = remote::running_process(inputs.state_path)?;
    tracing::info!(address = %address.address, pid = address.pid, "a running bqsync serves this project: asking it first");
    let process = RemoteWarehouse::new(&address, inputs.admin_token.clone());
    let document = tokio::time::timeout(RUNNING_STATUS_TIMEOUT, process.status_document())
        .await
        .unwrap_or_else(|_| Err(WarehouseError::Task(format!("pid {} gave no /status in time", address.pid))));
    Some((process, document))
}

/// How long `bqsync status` waits for the running process's `/status` (it answers from memory).
const RUNNING_STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The embedded bus file's depth, when there is one.
#[cfg(feature = "embedded")]
async fn embedded_queue(bus: &EmbeddedBusConfig) -> anyhow::Result<Option<QueueStats>> {
    use crate::bus::Subscription;
    match crate::bus::embedded::open_existing(&bus.path)? {
        Some(bus) => Ok(Some(bus.subscription().stats().await?)),
        None => Ok(None),
    }
}

/// Without the `embedded` feature there is no bus file to read.
#[cfg(not(feature = "embedded"))]
async fn embedded_queue(_: &EmbeddedBusConfig) -> anyhow::Result<Option<QueueStats>> {
    Ok(None)
}

/// Rows per table and dead letters of the DuckDB file, opened read-only; `Err(note)` when it cannot
/// be opened now.
#[cfg(feature = "embedded")]
async fn read_duckdb_counts(path: &Path, catalog: Arc<Catalog>) -> anyhow::Result<Result<DuckDbCounts, String>> {
    use crate::warehouse::duckdb::DuckDbWarehouse;
    match DuckDbWarehouse::open_read_only(path, catalog) {
        Ok(warehouse) => Ok(Ok((warehouse.row_counts().await?, warehouse.dead_letter_counts().await?))),
        Err(e) => Ok(Err(format!("warehouse not readable now (a running bqsync holds it?): {e}"))),
    }
}

#[cfg(not(feature = "embedded"))]
async fn read_duckdb_counts(_: &Path, _: Arc<Catalog>) -> anyhow::Result<Result<DuckDbCounts, String>> {
    Ok(Err(crate::features::missing("reading the DuckDB warehouse", "embedded")))
}

/// Rows per table, and dead letters by (table, reason).
type DuckDbCounts = (Vec<(String, u64)>, Vec<(String, String, u64)>);

/// Renders a query's answer as a plain-text table (`bqsync sql`): a header, then one line a row,
/// columns padded to their widest value (cut at 60 characters).
pub fn render_query(result: &crate::warehouse::QueryResult) -> String {
    let cell = |v: &serde_json::Value| -> String {
        let text = match v {
            serde_json::Value::Null => "NULL".to_string(),
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if text.chars().count() > 60 {
            format!("{}…", text.chars().take(59).collect::<String>())
        } else {
            text
        }
    };
    let rows: Vec<Vec<String>> = result.rows.iter().map(|r| r.iter().map(cell).collect()).collect();
    let widths: Vec<usize> = result
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| rows.iter().map(|r| r.get(i).map_or(0, |v| v.chars().count())).max().unwrap_or(0).max(c.len()))
        .collect();
    let line = |values: &[String]| {
        let padded: Vec<String> = values.iter().zip(&widths).map(|(v, w)| format!("{v:<w$}")).collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(&result.columns);
    rows.iter().for_each(|r| out.push_str(&line(r)));
    out.push_str(&format!("({} row{})\n", rows.len(), if rows.len() == 1 { "" } else { "s" }));
    out
}

/// Renders the status as plain-text tables.
pub fn render(status: &Status) -> String {
    let mut out = String::new();
    out.push_str("QUEUE\n");
    match &status.queue {
        Some(q) => out.push_str(&format!(
            "  pending {:>10}   leased {:>10}   dead-letter queue {:>8}   oldest {}\n",
            q.pending,
            q.leased,
            q.dead_lettered,
            q.oldest_publish_micros
                .and_then(chrono::DateTime::from_timestamp_micros)
                .map_or("-".into(), |t| t.to_rfc3339())
        )),
        None => out.push_str("  no bus file yet\n"),
    }
    if let Some(note) = &status.queue_note {
        out.push_str(&format!("  ({note})\n"));
    }
    out.push_str("\nROWS PER TABLE\n");
    for (table, rows) in &status.rows_per_table {
        out.push_str(&format!("  {table:<24} {rows:>12}\n"));
    }
    out.push_str("\nDEAD LETTERS (open: not replayed)\n");
    if status.dead_letters.is_empty() {
        out.push_str("  none\n");
    }
    for (table, reason, count) in &status.dead_letters {
        out.push_str(&format!("  {table:<24} {reason:<20} {count:>8}\n"));
    }
    if let Some(note) = &status.warehouse_note {
        out.push_str(&format!("  ({note})\n"));
    }
    out.push_str("\nSOURCES (last pass; `bqsync history` lists them)\n");
    if status.sources.is_empty() {
        out.push_str("  no pass recorded yet\n");
    }
    for s in &status.sources {
        let what = if s.table == crate::sources::history::WHOLE_SOURCE {
            s.source.clone()
        } else {
            format!("{}:{}", s.source, s.table)
        };
        let outcome = match (&s.last_error, s.consecutive_failures) {
            (_, 0) => "ok".to_string(),
            (Some(e), n) => {
                format!("failing ({n} in a row; last at {}): {e}", s.last_error_at.as_deref().unwrap_or("?"))
            }
            (None, n) => format!("failing ({n} in a row)"),
        };
        out.push_str(&format!(
            "  {what:<28} {} published {:>8}  {outcome}\n",
            s.last_finished.as_deref().unwrap_or("-"),
            s.last_published.unwrap_or(0)
        ));
        if let Some(position) = &s.position {
            out.push_str(&format!("  {:<28} at {position}\n", ""));
        }
        if let Some(next) = &s.next_pass {
            out.push_str(&format!("  {:<28} next pass {next}\n", ""));
        }
    }
    out.push_str("\nCHECKPOINTS\n");
    if status.checkpoints.is_empty() {
        out.push_str("  none\n");
    }
    for c in &status.checkpoints {
        let lag = match (c.lag_bytes, c.partial_last_line) {
            (None, _) => "file gone or rotated away".to_string(),
            (Some(l), true) => format!("{l} B waiting: last line has no newline"),
            (Some(l), false) => format!("{l} B behind"),
        };
        out.push_str(&format!("  {:<10} {:<48} offset {:>12}  {}\n", c.source, c.path, c.offset, lag));
    }
    out
}

/// How far each source's files are ahead of their checkpoints.
pub fn checkpoint_lags(state_path: &Path) -> anyhow::Result<Vec<CheckpointLag>> {
    let mut lags = Vec::new();
    if state_path.exists() {
        let store = CheckpointStore::open(state_path)?;
        for (source, checkpoint) in store.all_files()? {
            // Only the same file counts: a rotated or replaced path holds another file now.
            let size = std::fs::metadata(Path::new(&checkpoint.path))
                .ok()
                .filter(|m| (m.dev(), m.ino()) == (checkpoint.device, checkpoint.inode))
                .map(|m| m.len());
            let lag_bytes = size.map(|s| s.saturating_sub(checkpoint.offset));
            lags.push(CheckpointLag {
                source,
                partial_last_line: lag_bytes
                    .is_some_and(|lag| lag > 0 && !has_newline_past(Path::new(&checkpoint.path), checkpoint.offset)),
                lag_bytes,
                path: checkpoint.path,
                offset: checkpoint.offset,
                size,
            });
        }
    }
    Ok(lags)
}

/// The sync state of every source and table with recorded passes (none before the first run).
pub fn sync_states(state_path: &Path) -> anyhow::Result<Vec<crate::sources::history::SyncState>> {
    if !state_path.exists() {
        return Ok(Vec::new());
    }
    Ok(crate::sources::history::states(&CheckpointStore::open(state_path)?)?)
}

/// Whether the file holds a newline past `offset` (read up to 1 MiB: a longer tail is lag anyway).
fn has_newline_past(path: &Path, offset: u64) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let mut tail = Vec::new();
    let read = std::fs::File::open(path).and_then(|mut file| {
        file.seek(SeekFrom::Start(offset))?;
        file.take(1 << 20).read_to_end(&mut tail)
    });
    read.is_err() || tail.len() == 1 << 20 || memchr::memchr(b'\n', &tail).is_some()
}
