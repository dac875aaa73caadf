//! JSONL source: tails growing files under a directory and publishes one change event per line.
//!
//! - Files are found by a scan at every pass (so files written while bqsync was down are caught) and
//!   passes are triggered by `notify` file-system events, with a poll interval as a fallback.
//! - A file is tracked by (device, inode) and kept open, like `tail -F`: after a rename rotation the
//!   old file is read to its end through the open handle, and the new file is read from 0.
//! - Only complete lines are published: a half-written last line waits for its newline.
//! - Checkpoint per file: (device, inode, fingerprint of the first bytes, offset), written after the
//!   bus accepted the events. A file that shrank below its offset (truncation) or whose first bytes
//!   changed (replaced in place) is read again from 0.
//! - Bad lines never stop the flow: invalid UTF-8, invalid JSON, non-object JSON and over-long lines are
//!   published as poison messages (raw bytes plus the reason) that the worker dead-letters. A UTF-8 BOM,
//!   CRLF endings and blank lines are accepted.

mod files;
mod framing;
mod record;
mod staged;

use std::collections::HashMap;
use std::io::{Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::checkpoint::{CheckpointStore, FileCheckpoint};
use super::in_flight::{InFlight, IN_FLIGHT_EVENTS};
use super::rows::poison;
use super::{EmitOutcome, Source, SourceError, UnreadInput, UnreadReason};
use crate::batch::{StagedRow, TableBatch};
use crate::bus::{attr, OutboundMessage, Publisher, StagedRows};
use crate::dead_letter::DeadLetterReason;
use crate::schema::Catalog;
use crate::shutdown::Shutdown;
use files::{fingerprint, TrackedFile};
use framing::{count_lines, LineContent, LineReader};
pub use framing::{frame_stream, Framed, FramedContent};
pub use record::{record_to_message, Origin};

/// Bytes at the start of a file hashed to recognise it.
pub const FINGERPRINT_BYTES: u64 = 256;
/// A payload field that, when `true`, makes the line a delete (tombstone) of its key.
pub const DELETE_FIELD: &str = "_deleted";
/// How much of an over-long line is kept in its dead letter.
const OVERSIZE_SAMPLE_BYTES: usize = 4096;

pub use crate::config::sources::jsonl::{JsonlSourceConfig, Route};

/// The JSONL source.
pub struct JsonlSource {
    config: JsonlSourceConfig,
    routes: Vec<(globset::GlobMatcher, Option<String>)>,
    ignore: globset::GlobSet,
    catalog: Arc<Catalog>,
    checkpoints: Arc<CheckpointStore>,
    files: HashMap<(u64, u64), TrackedFile>,
    wakeup: Arc<tokio::sync::Notify>,
    _watcher: Option<notify::RecommendedWatcher>,
    lines_published: u64,
    poison_published: u64,
    /// Files under the root that no route matches (relative paths), as of the latest scan.
    unrouted: Vec<String>,
    shutdown: Shutdown,
    /// `worker.max_event_bytes`: lines staged as rows stay well below it (see [`staged`]).
    max_event_bytes: usize,
}

/// What a pass hands to the bus at its next boundary: event messages and rows staged here.
#[derive(Default)]
struct Outgoing {
    messages: Vec<OutboundMessage>,
    rows: Vec<StagedRow>,
    /// The staged lines' bytes.
    row_bytes: usize,
}

impl Outgoing {
    fn len(&self) -> usize {
        self.messages.len() + self.rows.len()
    }
}

fn glob(pattern: &str, source_name: &str) -> Result<globset::Glob, SourceError> {
    globset::GlobBuilder::new(pattern).literal_separator(true).build().map_err(|e| SourceError::Config {
        source_name: source_name.into(),
        problem: format!("bad glob `{pattern}`: {e}"),
    })
}

/// Replaces the line number at the end of a `jsonl:path:line` label (the path ends at `path_len`).
fn set_line_number(label: &mut String, path_len: usize, line_number: u64) {
    use std::fmt::Write;
    label.truncate(path_len);
    let _ = write!(label, "{line_number}");
}

impl JsonlSource {
    pub fn new(
        config: JsonlSourceConfig,
        catalog: Arc<Catalog>,
        checkpoints: Arc<CheckpointStore>,
    ) -> Result<JsonlSource, SourceError> {
        let name = config.name.clone();
        let routes = config
            .routes
            .iter()
            .map(|r| Ok((glob(&r.glob, &name)?.compile_matcher(), r.table.clone())))
            .collect::<Result<Vec<_>, SourceError>>()?;
        let mut ignore = globset::GlobSetBuilder::new();
        for pattern in &config.ignore {
            ignore.add(glob(pattern, &name)?);
        }
        let ignore =
            ignore.build().map_err(|e| SourceError::Config { source_name: name.clone(), problem: e.to_string() })?;
        super::ensure_root(&name, &config.root, config.create_root)?;
        // A route to a table without a schema would dead-letter every line it reads: refuse it now.
        if let Some(route) = config.routes.iter().find(|r| r.table.as_ref().is_some_and(|t| catalog.get(t).is_none())) {
            return Err(SourceError::Config {
                source_name: name,
                problem: format!(
                    "route `{}` goes to table `{}`, which has no schema (add {}.json to schemas_dir, or correct the route)",
                    route.glob,
                    route.table.as_deref().unwrap_or_default(),
                    route.table.as_deref().unwrap_or_default()
                ),
            });
        }
        if config.publish_batch == 0 || config.max_line_bytes < 16 {
            return Err(SourceError::Config {
                source_name: name,
                problem: "publish_batch must be ≥ 1 and max_line_bytes ≥ 16".into(),
            });
        }
        Ok(JsonlSource {
            config,
            routes,
            ignore,
            catalog,
            checkpoints,
            files: HashMap::new(),
            wakeup: Arc::new(tokio::sync::Notify::new()),
            _watcher: None,
            lines_published: 0,
            poison_published: 0,
            unrouted: Vec::new(),
            shutdown: Shutdown::default(),
            max_event_bytes: crate::config::worker::WorkerConfig::default().max_event_bytes,
        })
    }

    /// The worker's `max_event_bytes` (lines staged as rows stay well below it).
    pub fn set_max_event_bytes(&mut self, max_event_bytes: usize) {
        self.max_event_bytes = max_event_bytes;
    }

    fn stopping(&self) -> bool {
        self.shutdown.is_stopping()
    }

    /// Starts the file-system watcher on the root (which [`JsonlSource::new`] checked).
    pub fn watch(&mut self) -> Result<(), SourceError> {
        use notify::Watcher;
        let wakeup = self.wakeup.clone();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok_and(|e| super::is_change(&e)) {
                wakeup.notify_one();
            }
        })
        .map_err(|e| SourceError::Config {
            source_name: self.config.name.clone(),
            problem: format!("cannot watch: {e}"),
        })?;
        watcher.watch(&self.config.root, notify::RecursiveMode::Recursive).map_err(|e| SourceError::Config {
            source_name: self.config.name.clone(),
            problem: format!("cannot watch {}: {e}", self.config.root.display()),
        })?;
        self._watcher = Some(watcher);
        Ok(())
    }

    fn io_error(&self, path: &Path, error: std::io::Error) -> SourceError {
        SourceError::Io { source_name: self.config.name.clone(), path: path.display().to_string(), error }
    }

    fn save_checkpoint(&self, tracked: &TrackedFile, size: u64) -> Result<(), SourceError> {
        let checkpoint = FileCheckpoint {
            device: tracked.device,
            inode: tracked.inode,
            fingerprint: tracked.fingerprint,
            fingerprint_len: tracked.fingerprint_len,
            offset: tracked.offset,
            path: tracked.path.display().to_string(),
            size_seen: size,
        };
        self.checkpoints
            .save_file(&self.config.name, &checkpoint)
            .map_err(|error| SourceError::Checkpoint { source_name: self.config.name.clone(), error })
    }

    /// Reads the complete lines of one file past its offset, publishes them and checkpoints.
    async fn drain_file(&mut self, id: (u64, u64), publisher: &dyn Publisher) -> Result<EmitOutcome, SourceError> {
        let mut outcome = EmitOutcome::default();
        let mut tracked = self.files.remove(&id).expect("tracked file");
        let result = self.drain_tracked(&mut tracked, publisher, &mut outcome).await;
        self.files.insert(id, tracked);
        result.map(|_| outcome)
    }

    async fn drain_tracked(
        &mut self,
        tracked: &mut TrackedFile,
        publisher: &dyn Publisher,
        outcome: &mut EmitOutcome,
    ) -> Result<(), SourceError> {
        let mut in_flight = InFlight::default();
        let read = self.read_and_publish(tracked, publisher, outcome, &mut in_flight).await;
        // What was handed to the bus is checkpointed once durable, even when reading stopped early
        // or failed after it.
        let settled = self.settle(tracked, &mut in_flight, 0, outcome).await;
        read.and(settled)
    }

    async fn read_and_publish(
        &mut self,
        tracked: &mut TrackedFile,
        publisher: &dyn Publisher,
        outcome: &mut EmitOutcome,
        in_flight: &mut InFlight<FilePosition>,
    ) -> Result<(), SourceError> {
        let size = tracked.file.metadata().map_err(|e| self.io_error(&tracked.path, e))?.len();
        if size < tracked.offset {
            tracing::warn!(path = %tracked.path.display(), size, offset = tracked.offset, "file truncated; reading it from the start");
            tracked.offset = 0;
            tracked.lines = Some(0);
            tracked.fingerprint_len = 0;
        } else if tracked.fingerprint_len > 0
            && fingerprint(&mut tracked.file, tracked.fingerprint_len).map_err(|e| self.io_error(&tracked.path, e))?
                != tracked.fingerprint
        {
            tracing::warn!(path = %tracked.path.display(), "file content replaced in place; reading it from the start");
            tracked.offset = 0;
            tracked.lines = Some(0);
            tracked.fingerprint_len = 0;
        }
        if size == tracked.offset {
            return Ok(());
        }
        if tracked.fingerprint_len < FINGERPRINT_BYTES && size > tracked.fingerprint_len {
            // Widen the fingerprint while the file is young: more bytes recognise it better.
            tracked.fingerprint_len = size.min(FINGERPRINT_BYTES);
            tracked.fingerprint =
                fingerprint(&mut tracked.file, tracked.fingerprint_len).map_err(|e| self.io_error(&tracked.path, e))?;
        }
        let mut line_number = match tracked.lines {
            Some(lines) => lines,
            None => count_lines(&mut tracked.file, tracked.offset).map_err(|e| self.io_error(&tracked.path, e))?,
        };
        tracked.file.seek(SeekFrom::Start(tracked.offset)).map_err(|e| self.io_error(&tracked.path, e))?;
        let read_start = tracked.offset;
        let mut reader = LineReader::new(self.config.max_line_bytes);
        let mut batch = Outgoing::default();
        // Lines of a stageable table are coerced into rows here when the bus takes rows.
        let catalog = self.catalog.clone();
        let staging = catalog.get(&tracked.table).filter(|t| publisher.takes_staged_rows() && staged::stageable(t));
        let produced_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        // Each line's source is `jsonl:path:line`, as compilers print it (`dlq show` points at the
        // input line), written into one buffer for every line of the pass.
        let mut source_label = format!("jsonl:{}:", tracked.path.display());
        let file_label_len = source_label.len();
        loop {
            let line = reader.next_line(&mut tracked.file).map_err(|e| self.io_error(&tracked.path, e))?;
            let Some(line) = line else { break };
            let line_offset = read_start + line.start_offset;
            outcome.consumed += 1;
            line_number += 1;
            set_line_number(&mut source_label, file_label_len, line_number);
            let message = match line.content {
                LineContent::Complete(bytes) => {
                    let label_bytes = source_label.len();
                    match staging.and_then(|table| staged::stage_line(table, bytes, label_bytes, self.max_event_bytes))
                    {
                        Some(row) => {
                            batch.rows.push(row);
                            batch.row_bytes += bytes.len();
                            None
                        }
                        None => {
                            let origin = Origin {
                                file_fingerprint: tracked.fingerprint,
                                offset: line_offset,
                                source: &source_label,
                                produced_at: &produced_at,
                            };
                            record::line_to_message(&self.catalog, &tracked.table, origin, bytes)
                        }
                    }
                }
                LineContent::Oversize { sample, total_len } => Some(poison(
                    &tracked.table,
                    &record::shielded(&self.catalog, &tracked.table, sample),
                    DeadLetterReason::Oversize,
                    format!(
                        "line of {total_len} bytes exceeds max_line_bytes = {} ({source_label}, byte {line_offset})",
                        self.config.max_line_bytes
                    ),
                    &source_label,
                )),
            };
            if let Some(message) = message {
                if !batch.rows.is_empty() {
                    // Rows staged before this event go first: a publish queues its messages before
                    // its rows, and a key's upserts must keep the file's order.
                    let previous = (line_offset, line_number - 1);
                    self.hand_off(tracked, &mut batch, previous, size, publisher, outcome, in_flight).await?;
                }
                batch.messages.push(message);
            }
            if batch.len() >= self.config.publish_batch {
                let end = read_start + line.end_offset;
                self.hand_off(tracked, &mut batch, (end, line_number), size, publisher, outcome, in_flight).await?;
                if self.stopping() {
                    return Ok(());
                }
            }
        }
        if let Some(settled) = self.final_line_settled(tracked, &reader) {
            if !settled {
                outcome.pending += 1; // a one-shot run waits for it to settle
            } else if let Some((start, bytes)) = reader.take_unterminated() {
                outcome.consumed += 1;
                line_number += 1;
                set_line_number(&mut source_label, file_label_len, line_number);
                let offset = read_start + start;
                let origin = Origin {
                    file_fingerprint: tracked.fingerprint,
                    offset,
                    source: &source_label,
                    produced_at: &produced_at,
                };
                if let Some(message) = record::line_to_message(&self.catalog, &tracked.table, origin, bytes) {
                    if !batch.rows.is_empty() {
                        let previous = (offset, line_number - 1);
                        self.hand_off(tracked, &mut batch, previous, size, publisher, outcome, in_flight).await?;
                    }
                    batch.messages.push(message);
                }
            }
        }
        let end = read_start + reader.consumed();
        let eof = tracked.file.metadata().map_err(|e| self.io_error(&tracked.path, e))?.len();
        tracked.waiting = eof.saturating_sub(end);
        self.hand_off(tracked, &mut batch, (end, line_number), size, publisher, outcome, in_flight).await
    }

    /// With `final_line_after_ms`, whether the file's unterminated last line has settled (its file
    /// unchanged for that long); None when the option is off or there is no such line.
    fn final_line_settled(&self, tracked: &TrackedFile, reader: &LineReader) -> Option<bool> {
        let after = Duration::from_millis(self.config.final_line_after_ms?);
        if !reader.has_unterminated() {
            return None;
        }
        let modified = tracked.file.metadata().and_then(|m| m.modified()).ok()?;
        Some(modified.elapsed().unwrap_or_default() >= after)
    }

    /// Hands a batch to the bus; checkpoints the publishes whose events are durable, keeping at
    /// most [`IN_FLIGHT_EVENTS`] handed off and not yet durable (the in-process bus lands them
    /// while the next lines are read).
    #[allow(clippy::too_many_arguments)]
    async fn hand_off(
        &mut self,
        tracked: &mut TrackedFile,
        batch: &mut Outgoing,
        (offset, lines): (u64, u64),
        size: u64,
        publisher: &dyn Publisher,
        outcome: &mut EmitOutcome,
        in_flight: &mut InFlight<FilePosition>,
    ) -> Result<(), SourceError> {
        if offset == in_flight.last().map_or(tracked.offset, |p| p.offset) {
            return Ok(());
        }
        let poison = batch.messages.iter().filter(|m| m.attributes.contains_key(attr::POISON_REASON)).count() as u64;
        let count = batch.len() as u64;
        let Outgoing { messages, rows, row_bytes } = std::mem::take(batch);
        let published = if rows.is_empty() {
            publisher.publish_pipelined(messages).await
        } else {
            let rows = StagedRows { batch: TableBatch { table: tracked.table.clone(), rows }, bytes: row_bytes };
            publisher.publish_with_rows(rows, messages).await
        };
        let ticket =
            published.map_err(|error| SourceError::Publish { source_name: self.config.name.clone(), error })?;
        in_flight.push(ticket, count, FilePosition { offset, lines, size, poison });
        self.settle(tracked, in_flight, IN_FLIGHT_EVENTS, outcome).await
    }

    /// Checkpoints the handed-off publishes that are durable, in order, waiting for the oldest ones
    /// until at most `keep` events are left waiting.
    async fn settle(
        &mut self,
        tracked: &mut TrackedFile,
        in_flight: &mut InFlight<FilePosition>,
        keep: u64,
        outcome: &mut EmitOutcome,
    ) -> Result<(), SourceError> {
        while let Some(durable) = in_flight.next_durable(keep).await {
            let (count, position) =
                durable.map_err(|error| SourceError::Publish { source_name: self.config.name.clone(), error })?;
            // Only now, with the events durable, may the checkpoint move past them.
            tracked.offset = position.offset;
            tracked.lines = Some(position.lines);
            self.save_checkpoint(tracked, position.size)?;
            outcome.published += count;
            self.lines_published += count - position.poison;
            self.poison_published += position.poison;
        }
        Ok(())
    }
}

/// Where a file's checkpoint goes once a publish is durable: past its last line.
struct FilePosition {
    offset: u64,
    lines: u64,
    size: u64,
    poison: u64,
}

#[async_trait]
impl Source for JsonlSource {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn set_shutdown(&mut self, shutdown: Shutdown) {
        self.shutdown = shutdown;
    }

    async fn emit(&mut self, publisher: &dyn Publisher) -> Result<EmitOutcome, SourceError> {
        self.refresh_files()?;
        let mut total = EmitOutcome::default();
        let mut ids: Vec<(u64, u64)> = self.files.keys().copied().collect();
        ids.sort_by(|a, b| self.files[a].path.cmp(&self.files[b].path));
        for id in ids {
            if self.stopping() {
                break;
            }
            let outcome = self.drain_file(id, publisher).await?;
            total.consumed += outcome.consumed;
            total.published += outcome.published;
            total.pending += outcome.pending;
            // A file gone from its path (deleted, or rotated out of the routes) was just drained
            // through its open handle; forget it.
            if !self.files[&id].present {
                let gone = self.files.remove(&id).expect("tracked");
                tracing::info!(path = %gone.path.display(), offset = gone.offset, "file no longer at its path; drained and released");
            }
        }
        Ok(total)
    }

    async fn wait_for_input(&mut self, max_wait: Duration) {
        let wait = max_wait.min(Duration::from_millis(self.config.poll_interval_ms));
        let _ = tokio::time::timeout(wait, self.wakeup.notified()).await;
    }

    fn unread(&self) -> Vec<UnreadInput> {
        let mut files: Vec<&TrackedFile> = self.files.values().filter(|f| f.waiting > 0).collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let partial = files.into_iter().map(|f| UnreadInput {
            source: self.config.name.clone(),
            path: f.path.display().to_string(),
            reason: UnreadReason::PartialLastLine { bytes_waiting: f.waiting },
        });
        let unrouted = self.unrouted.iter().map(|relative| UnreadInput {
            source: self.config.name.clone(),
            path: self.config.root.join(relative).display().to_string(),
            reason: UnreadReason::NoRoute,
        });
        partial.chain(unrouted).collect()
    }

    fn observable_state(&self) -> serde_json::Value {
        serde_json::json!({
            "source": self.config.name,
            "files": self.files.values().map(|f| serde_json::json!({"path": f.path, "table": f.table, "offset": f.offset})).collect::<Vec<_>>(),
            "lines_published": self.lines_published,
            "poison_published": self.poison_published,
        })
    }
}
