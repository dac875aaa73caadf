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

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::checkpoint::{CheckpointStore, FileCheckpoint};
use super::{EmitOutcome, Source, SourceError};
use crate::bus::{attr, Attributes, OutboundMessage, Publisher};
use crate::envelope::{derive_event_id, identify, ordering_key, ChangeEvent, Op};
use crate::schema::Catalog;

/// Bytes at the start of a file hashed to recognise it.
pub const FINGERPRINT_BYTES: u64 = 256;
/// A payload field that, when `true`, makes the line a delete (tombstone) of its key.
pub const DELETE_FIELD: &str = "_deleted";
/// How much of an over-long line is kept in its dead letter.
const OVERSIZE_SAMPLE_BYTES: usize = 4096;

pub use crate::config::sources::jsonl::{JsonlSourceConfig, Route};

/// A file being tailed.
struct TrackedFile {
    path: PathBuf,
    relative: String,
    table: String,
    file: File,
    device: u64,
    inode: u64,
    fingerprint: u64,
    fingerprint_len: u64,
    offset: u64,
    /// Seen at its path in the latest scan; otherwise it is drained and then forgotten.
    present: bool,
}

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
    stop: Arc<std::sync::atomic::AtomicBool>,
}

fn glob(pattern: &str, source_name: &str) -> Result<globset::Glob, SourceError> {
    globset::GlobBuilder::new(pattern).literal_separator(true).build().map_err(|e| SourceError::Config {
        source_name: source_name.into(),
        problem: format!("bad glob `{pattern}`: {e}"),
    })
}

/// Hash of the first `len` bytes of the file.
fn fingerprint(file: &mut File, len: u64) -> std::io::Result<u64> {
    let mut buffer = vec![0u8; len as usize];
    file.seek(SeekFrom::Start(0))?;
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    buffer.truncate(filled);
    Ok(xxhash_rust::xxh3::xxh3_64(&buffer))
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
            stop: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        })
    }

    fn stopping(&self) -> bool {
        self.stop.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Starts the file-system watcher (creating the root directory if needed).
    pub fn watch(&mut self) -> Result<(), SourceError> {
        use notify::Watcher;
        std::fs::create_dir_all(&self.config.root).map_err(|error| self.io_error(&self.config.root, error))?;
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

    /// The table a relative path routes to, or None when no route matches.
    fn route(&self, relative: &str) -> Option<String> {
        let file_name = relative.rsplit('/').next().unwrap_or(relative);
        if self.ignore.is_match(file_name) {
            return None;
        }
        self.routes.iter().find(|(matcher, _)| matcher.is_match(relative)).and_then(|(_, table)| match table {
            Some(t) => Some(t.clone()),
            None => relative.split_once('/').map(|(dir, _)| dir.to_string()),
        })
    }

    /// Lists routed files under the root.
    fn scan(&self) -> Vec<(PathBuf, String, String)> {
        let mut found = Vec::new();
        let mut stack = vec![self.config.root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(file_type) = entry.file_type() else {
                    continue;
                };
                if file_type.is_dir() {
                    stack.push(path);
                } else if file_type.is_file() {
                    let Ok(relative) = path.strip_prefix(&self.config.root) else {
                        continue;
                    };
                    let relative = relative.to_string_lossy().replace('\\', "/");
                    if let Some(table) = self.route(&relative) {
                        found.push((path, relative, table));
                    }
                }
            }
        }
        found.sort();
        found
    }

    /// Updates the set of tracked files from a scan: new files are opened at their checkpoint.
    fn refresh_files(&mut self) -> Result<(), SourceError> {
        for tracked in self.files.values_mut() {
            tracked.present = false;
        }
        let mut renamed = Vec::new();
        for (path, relative, table) in self.scan() {
            let Ok(metadata) = std::fs::metadata(&path) else {
                continue;
            };
            let id = (metadata.dev(), metadata.ino());
            if let Some(tracked) = self.files.get_mut(&id) {
                tracked.present = true;
                if tracked.path != path {
                    tracing::info!(from = %tracked.path.display(), to = %path.display(), "file renamed; continuing at its offset");
                    tracked.path = path;
                    tracked.relative = relative;
                    renamed.push(id);
                }
                continue;
            }
            let mut file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.io_error(&path, e)),
            };
            let saved = self
                .checkpoints
                .file(&self.config.name, id.0, id.1)
                .map_err(|error| SourceError::Checkpoint { source_name: self.config.name.clone(), error })?;
            let (offset, fingerprint_len, file_fingerprint) = match saved {
                Some(c)
                    if c.fingerprint_len > 0
                        && fingerprint(&mut file, c.fingerprint_len).ok() == Some(c.fingerprint)
                        && metadata.len() >= c.offset =>
                {
                    (c.offset, c.fingerprint_len, c.fingerprint)
                }
                Some(c) => {
                    tracing::warn!(path = %path.display(), offset = c.offset, "file replaced or truncated since its checkpoint; reading it from the start");
                    (0, 0, 0)
                }
                None => (0, 0, 0),
            };
            self.files.insert(
                id,
                TrackedFile {
                    path,
                    relative,
                    table,
                    file,
                    device: id.0,
                    inode: id.1,
                    fingerprint: file_fingerprint,
                    fingerprint_len,
                    offset,
                    present: true,
                },
            );
        }
        // A renamed file's checkpoint follows it, so status never compares it with its successor.
        for id in renamed {
            let tracked = &self.files[&id];
            if tracked.fingerprint_len > 0 {
                self.save_checkpoint(tracked, tracked.file.metadata().map(|m| m.len()).unwrap_or(0))?;
            }
        }
        Ok(())
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
        let size = tracked.file.metadata().map_err(|e| self.io_error(&tracked.path, e))?.len();
        if size < tracked.offset {
            tracing::warn!(path = %tracked.path.display(), size, offset = tracked.offset, "file truncated; reading it from the start");
            tracked.offset = 0;
            tracked.fingerprint_len = 0;
        } else if tracked.fingerprint_len > 0
            && fingerprint(&mut tracked.file, tracked.fingerprint_len).map_err(|e| self.io_error(&tracked.path, e))?
                != tracked.fingerprint
        {
            tracing::warn!(path = %tracked.path.display(), "file content replaced in place; reading it from the start");
            tracked.offset = 0;
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
        tracked.file.seek(SeekFrom::Start(tracked.offset)).map_err(|e| self.io_error(&tracked.path, e))?;
        let read_start = tracked.offset;
        let mut reader = LineReader::new(self.config.max_line_bytes);
        let mut batch = Vec::with_capacity(self.config.publish_batch);
        let produced_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let source_label = format!("jsonl:{}/{}", self.config.name, tracked.relative);
        loop {
            let line = reader.next_line(&mut tracked.file).map_err(|e| self.io_error(&tracked.path, e))?;
            let Some(line) = line else { break };
            let line_offset = read_start + line.start_offset;
            outcome.consumed += 1;
            let message = match line.content {
                LineContent::Complete(bytes) => self.line_to_message(
                    &tracked.table,
                    tracked.fingerprint,
                    line_offset,
                    bytes,
                    &source_label,
                    &produced_at,
                ),
                LineContent::Oversize { sample, total_len } => Some(poison(
                    &tracked.table,
                    sample,
                    "oversize",
                    format!(
                        "line of {total_len} bytes exceeds max_line_bytes = {} ({source_label} at byte {line_offset})",
                        self.config.max_line_bytes
                    ),
                    &source_label,
                )),
            };
            if let Some(message) = message {
                batch.push(message);
            }
            if batch.len() >= self.config.publish_batch {
                let end = read_start + line.end_offset;
                self.publish_and_checkpoint(tracked, &mut batch, end, size, publisher, outcome).await?;
                if self.stopping() {
                    return Ok(());
                }
            }
        }
        let end = read_start + reader.consumed();
        self.publish_and_checkpoint(tracked, &mut batch, end, size, publisher, outcome).await
    }

    async fn publish_and_checkpoint(
        &mut self,
        tracked: &mut TrackedFile,
        batch: &mut Vec<OutboundMessage>,
        new_offset: u64,
        size: u64,
        publisher: &dyn Publisher,
        outcome: &mut EmitOutcome,
    ) -> Result<(), SourceError> {
        if new_offset == tracked.offset {
            return Ok(());
        }
        let count = batch.len() as u64;
        let poison = batch.iter().filter(|m| m.attributes.contains_key(attr::POISON_REASON)).count() as u64;
        publisher
            .publish(std::mem::take(batch))
            .await
            .map_err(|error| SourceError::Publish { source_name: self.config.name.clone(), error })?;
        // Only now, with the events durable on the bus, may the checkpoint move past them.
        tracked.offset = new_offset;
        self.save_checkpoint(tracked, size)?;
        outcome.published += count;
        self.lines_published += count - poison;
        self.poison_published += poison;
        Ok(())
    }

    /// Builds the message for one complete line; None for a blank line.
    fn line_to_message(
        &self,
        table: &str,
        file_fingerprint: u64,
        offset: u64,
        bytes: &[u8],
        source_label: &str,
        produced_at: &str,
    ) -> Option<OutboundMessage> {
        let text = match std::str::from_utf8(bytes) {
            Ok(text) => text.trim(),
            Err(e) => {
                let detail =
                    format!("invalid UTF-8 at byte {} of the line ({source_label} at byte {offset})", e.valid_up_to());
                return Some(poison(table, bytes, "decode", detail, source_label));
            }
        };
        if text.is_empty() {
            return None;
        }
        match record_to_message(&self.catalog, table, file_fingerprint, offset, text, source_label, produced_at) {
            Ok(message) => Some(message),
            Err((reason, detail)) => Some(poison(
                table,
                text.as_bytes(),
                reason,
                format!("{detail} ({source_label} at byte {offset})"),
                source_label,
            )),
        }
    }
}

/// Builds the change event for one JSONL record (a JSON object as text) of `table`. Replay uses it
/// for records that were dead-lettered before they became events.
pub fn record_to_message(
    catalog: &Catalog,
    table: &str,
    file_fingerprint: u64,
    offset: u64,
    text: &str,
    source: &str,
    produced_at: &str,
) -> Result<OutboundMessage, (&'static str, String)> {
    // Top-level fields borrowed as raw JSON: validates the line and allocates only the index;
    // the few fields identity needs are parsed on demand. Keys with escapes take the slow path.
    let fields = match serde_json::from_str::<HashMap<&str, &RawValue>>(text) {
        Ok(fields) => LineFields::Borrowed(fields),
        Err(_) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => LineFields::Owned(map),
            _ => return Err(("decode", describe_invalid_line(text))),
        },
    };
    let field = |name: &str| fields.get(name);
    let deleted = fields.get(DELETE_FIELD) == Some(Value::Bool(true));
    let (op, event_id, key, version) = match catalog.get(table) {
        // Unknown table: publish anyway; the worker dead-letters it as `unknown_table`, and a
        // replay lands it once its schema file exists.
        None => (Op::Insert, None, None, None),
        Some(schema) => {
            let identity = identify(schema, field, deleted).map_err(|detail| ("schema", detail))?;
            (identity.op, identity.event_id, identity.key, identity.version)
        }
    };
    // `identify` gives a key and a version only for upsert tables: there, the record is key@version.
    let event_id = event_id.unwrap_or_else(|| match (&key, version) {
        (Some(key), Some(version)) => {
            let key_text = serde_json::to_string(key).expect("map serializes");
            derive_event_id(&[table.as_bytes(), key_text.as_bytes(), &version.to_le_bytes()])
        }
        _ => derive_event_id(&[
            table.as_bytes(),
            &file_fingerprint.to_le_bytes(),
            &offset.to_le_bytes(),
            text.as_bytes(),
        ]),
    });
    let payload_text;
    let payload: &str = if fields.get(DELETE_FIELD).is_some() {
        let mut without: Map<String, Value> = serde_json::from_str(text).expect("validated above");
        without.remove(DELETE_FIELD);
        payload_text = serde_json::to_string(&without).expect("map serializes");
        &payload_text
    } else {
        text
    };
    let ordering_key = key.as_ref().map(|key| ordering_key(table, key));
    let event = ChangeEvent { event_id, table, op, key, version, payload, source, produced_at };
    let mut attributes = Attributes::new();
    attributes.insert(attr::TABLE.into(), table.into());
    attributes.insert(attr::EVENT_ID.into(), event.event_id.clone());
    Ok(OutboundMessage { data: event.to_bytes(), attributes, ordering_key })
}

/// A line's top-level fields.
enum LineFields<'a> {
    /// Borrowed as raw JSON: validates the line and allocates only the index; the few fields that
    /// identity needs are parsed on demand.
    Borrowed(HashMap<&'a str, &'a RawValue>),
    /// Fully parsed: the slow path, for keys with escape sequences.
    Owned(Map<String, Value>),
}

impl LineFields<'_> {
    fn get(&self, name: &str) -> Option<Value> {
        match self {
            LineFields::Borrowed(fields) => fields.get(name).and_then(|raw| serde_json::from_str(raw.get()).ok()),
            LineFields::Owned(map) => map.get(name).cloned(),
        }
    }
}

/// Why a line is not a JSON object, as precisely as serde_json says.
fn describe_invalid_line(text: &str) -> String {
    match serde_json::from_str::<Value>(text) {
        Ok(other) => format!(
            "line is JSON but not an object (starts with {})",
            other.to_string().chars().take(20).collect::<String>()
        ),
        Err(e) => format!("invalid JSON: {e}"),
    }
}

/// A message carrying bytes that could not become an event, and why.
fn poison(table: &str, bytes: &[u8], reason: &str, detail: String, source_label: &str) -> OutboundMessage {
    let mut attributes = Attributes::new();
    attributes.insert(attr::TABLE.into(), table.into());
    attributes.insert(attr::POISON_REASON.into(), reason.into());
    attributes.insert(attr::POISON_DETAIL.into(), detail);
    attributes.insert(attr::SOURCE.into(), source_label.into());
    OutboundMessage::new(bytes.to_vec(), attributes)
}

#[async_trait]
impl Source for JsonlSource {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn set_stop_flag(&mut self, stop: Arc<std::sync::atomic::AtomicBool>) {
        self.stop = stop;
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

    fn observable_state(&self) -> serde_json::Value {
        serde_json::json!({
            "source": self.config.name,
            "files": self.files.values().map(|f| serde_json::json!({"path": f.path, "table": f.table, "offset": f.offset})).collect::<Vec<_>>(),
            "lines_published": self.lines_published,
            "poison_published": self.poison_published,
        })
    }
}

/// A line found by [`LineReader`]; offsets are relative to where reading started.
struct Line<'a> {
    start_offset: u64,
    end_offset: u64,
    content: LineContent<'a>,
}

enum LineContent<'a> {
    /// The line without its `\n`, `\r\n` or a leading BOM.
    Complete(&'a [u8]),
    Oversize {
        sample: &'a [u8],
        total_len: u64,
    },
}

/// Splits a byte stream into complete lines with bounded memory: a line longer than `max_line` is
/// skipped to its newline and reported as oversize with a sample.
struct LineReader {
    buffer: Vec<u8>,
    /// Valid bytes in `buffer`.
    filled: usize,
    /// Start of the unconsumed part of `buffer`.
    position: usize,
    /// Stream offset (relative to the start) of `buffer[0]`.
    buffer_offset: u64,
    max_line: usize,
    oversize_sample: Vec<u8>,
    at_eof: bool,
}

const READ_CHUNK: usize = 1 << 20;

impl LineReader {
    fn new(max_line: usize) -> LineReader {
        LineReader {
            buffer: Vec::new(),
            filled: 0,
            position: 0,
            buffer_offset: 0,
            max_line,
            oversize_sample: Vec::new(),
            at_eof: false,
        }
    }

    /// Bytes consumed as complete lines so far (relative to the start of reading).
    fn consumed(&self) -> u64 {
        self.buffer_offset + self.position as u64
    }

    /// Reads more input; false at end of file.
    fn fill(&mut self, file: &mut File) -> std::io::Result<bool> {
        if self.at_eof {
            return Ok(false);
        }
        if self.position > 0 {
            self.buffer.copy_within(self.position..self.filled, 0);
            self.buffer_offset += self.position as u64;
            self.filled -= self.position;
            self.position = 0;
        }
        if self.buffer.len() < self.filled + READ_CHUNK {
            self.buffer.resize(self.filled + READ_CHUNK, 0);
        }
        let n = file.read(&mut self.buffer[self.filled..])?;
        self.filled += n;
        if n == 0 {
            self.at_eof = true;
        }
        Ok(n > 0)
    }

    fn next_line(&mut self, file: &mut File) -> std::io::Result<Option<Line<'_>>> {
        let mut searched = self.position;
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buffer[searched..self.filled]) {
                let newline = searched + i;
                let start = self.position;
                self.position = newline + 1;
                let start_offset = self.buffer_offset + start as u64;
                let end_offset = self.buffer_offset + self.position as u64;
                let mut content = &self.buffer[start..newline];
                if content.last() == Some(&b'\r') {
                    content = &content[..content.len() - 1];
                }
                if start_offset == 0 && content.starts_with(&[0xEF, 0xBB, 0xBF]) {
                    content = &content[3..];
                }
                if content.len() > self.max_line {
                    self.oversize_sample.clear();
                    self.oversize_sample.extend_from_slice(&content[..OVERSIZE_SAMPLE_BYTES.min(content.len())]);
                    return Ok(Some(Line {
                        start_offset,
                        end_offset,
                        content: LineContent::Oversize {
                            sample: &self.oversize_sample,
                            total_len: content.len() as u64,
                        },
                    }));
                }
                return Ok(Some(Line { start_offset, end_offset, content: LineContent::Complete(content) }));
            }
            searched = self.filled;
            let pending = self.filled - self.position;
            if pending > self.max_line + 2 {
                return self.skip_oversize(file);
            }
            let before = self.position;
            if !self.fill(file)? {
                return Ok(None); // A half-written last line waits for its newline.
            }
            searched -= before;
        }
    }

    /// Skips an over-long line without holding it in memory; None when its newline has not come yet.
    fn skip_oversize(&mut self, file: &mut File) -> std::io::Result<Option<Line<'_>>> {
        let start_offset = self.buffer_offset + self.position as u64;
        self.oversize_sample.clear();
        self.oversize_sample
            .extend_from_slice(&self.buffer[self.position..self.filled.min(self.position + OVERSIZE_SAMPLE_BYTES)]);
        let mut scan_from = self.position;
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buffer[scan_from..self.filled]) {
                let newline = scan_from + i;
                self.position = newline + 1;
                let end_offset = self.buffer_offset + self.position as u64;
                return Ok(Some(Line {
                    start_offset,
                    end_offset,
                    content: LineContent::Oversize {
                        sample: &self.oversize_sample,
                        total_len: end_offset - start_offset - 1,
                    },
                }));
            }
            // Drop what was scanned and read on.
            self.buffer_offset += self.filled as u64;
            self.filled = 0;
            self.position = 0;
            if !self.fill(file)? {
                // The long line is not complete yet: report nothing; consumed() stays at its start.
                self.buffer_offset = start_offset;
                return Ok(None);
            }
            scan_from = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(bytes: &[u8]) -> File {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        file.seek(SeekFrom::Start(0)).unwrap();
        file
    }

    /// (start, end, content or oversize length) of one line.
    type FoundLine = (u64, u64, Result<Vec<u8>, u64>);

    /// Every line the reader finds, and the bytes it consumed.
    fn lines(bytes: &[u8], max_line: usize) -> (Vec<FoundLine>, u64) {
        let mut file = file_with(bytes);
        let mut reader = LineReader::new(max_line);
        let mut found = Vec::new();
        while let Some(line) = reader.next_line(&mut file).unwrap() {
            let content = match line.content {
                LineContent::Complete(c) => Ok(c.to_vec()),
                LineContent::Oversize { total_len, sample } => {
                    assert!(sample.len() <= OVERSIZE_SAMPLE_BYTES);
                    Err(total_len)
                }
            };
            found.push((line.start_offset, line.end_offset, content));
        }
        (found, reader.consumed())
    }

    #[test]
    fn complete_lines_only_with_crlf_and_bom() {
        let (found, consumed) = lines(b"\xEF\xBB\xBFa\r\nbb\n\nhalf", 100);
        let contents: Vec<_> = found.iter().map(|(_, _, c)| c.clone().unwrap()).collect();
        assert_eq!(contents, vec![b"a".to_vec(), b"bb".to_vec(), b"".to_vec()]);
        assert_eq!(consumed, 10, "the half-written last line is not consumed");
    }

    #[test]
    fn a_line_longer_than_the_read_buffer_is_skipped_with_its_length() {
        let long = vec![b'x'; READ_CHUNK * 2 + 17];
        let mut bytes = b"ok\n".to_vec();
        bytes.extend_from_slice(&long);
        bytes.extend_from_slice(b"\nnext\n");
        let (found, consumed) = lines(&bytes, 1000);
        assert_eq!(found.len(), 3);
        assert_eq!(found[1].2, Err(long.len() as u64));
        assert_eq!((found[1].0, found[1].1), (3, 3 + long.len() as u64 + 1));
        assert_eq!(found[2].2, Ok(b"next".to_vec()));
        assert_eq!(consumed, bytes.len() as u64);
    }

    #[test]
    fn an_unfinished_long_line_waits_at_its_start() {
        let mut bytes = b"ok\n".to_vec();
        bytes.extend_from_slice(&vec![b'y'; READ_CHUNK + 5]);
        let (found, consumed) = lines(&bytes, 1000);
        assert_eq!(found.len(), 1);
        assert_eq!(consumed, 3, "nothing past the start of the unfinished line is consumed");
    }
}
