//! Meeting sessions (Zoom captures): a watched folder where each session arrives as `STEM.json`,
//! with optional files beside it that share its stem (`STEM.transcript.txt`, `STEM.vtt`,
//! attachments), possibly written slowly or in parts.
//!
//! - A session is complete when its marker file exists (`marker_suffix`, e.g. `STEM.done`), or, without
//!   a marker, when none of its files changed for `settle_ms`. Until then it is pending (a one-shot run
//!   waits for it).
//! - One upsert event per session, keyed by the table's primary key (`session_id`) with the version from
//!   `captured_at` (the newest file time when the JSON has none): a re-capture replaces the row.
//! - The transcript file's text goes into the `transcript` column unless the JSON has one.
//! - Sessions larger than `max_event_bytes` go through the GCS claim check when `[gcs]` has one;
//!   without it they are dead-lettered as `oversize`, with the size and the limit in the reason.
//! - Invariant: a session's content hash is saved after its publish resolved; a session whose files
//!   did not change is never published again, and one published twice lands once (same event id).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde_json::{Map, Value};

use super::checkpoint::CheckpointStore;
use super::rows::{micros_to_rfc3339, now_rfc3339, poison, row_event, RowMapping};
use super::{EmitOutcome, Source, SourceError};
use crate::bus::Publisher;
use crate::dead_letter::DeadLetterReason;
use crate::schema::Catalog;
use crate::shutdown::Shutdown;

/// How much of an oversize session its dead letter keeps.
const OVERSIZE_SAMPLE_BYTES: usize = 4096;

pub use crate::config::sources::sessions::SessionsSourceConfig;

/// A session's files, found by a scan.
struct Capture {
    json: PathBuf,
    /// Every file sharing the stem (the JSON included), sorted.
    files: Vec<PathBuf>,
    newest: SystemTime,
}

/// The sessions source.
pub struct SessionsSource {
    config: SessionsSourceConfig,
    mapping: RowMapping,
    checkpoints: Arc<CheckpointStore>,
    /// The bus carries large sessions through GCS.
    claim_checks: bool,
    wakeup: Arc<tokio::sync::Notify>,
    _watcher: Option<notify::RecommendedWatcher>,
    published: u64,
    /// Newest file time of each session already published by this process: skipped without reading.
    published_at: std::collections::HashMap<PathBuf, SystemTime>,
    shutdown: Shutdown,
}

impl SessionsSource {
    pub fn new(
        config: SessionsSourceConfig,
        catalog: &Catalog,
        checkpoints: Arc<CheckpointStore>,
        claim_checks: bool,
    ) -> Result<SessionsSource, SourceError> {
        let mapping = RowMapping::new(catalog, &config.table, &config.columns)
            .map_err(|problem| SourceError::Config { source_name: config.name.clone(), problem })?;
        super::ensure_root(&config.name, &config.root, config.create_root)?;
        Ok(SessionsSource {
            config,
            mapping,
            checkpoints,
            claim_checks,
            wakeup: Arc::new(tokio::sync::Notify::new()),
            _watcher: None,
            published: 0,
            published_at: std::collections::HashMap::new(),
            shutdown: Shutdown::default(),
        })
    }

    /// Starts the file-system watcher on the folder (which [`SessionsSource::new`] checked).
    pub fn watch(&mut self) -> Result<(), SourceError> {
        use notify::Watcher;
        let config_error = |problem: String| SourceError::Config { source_name: self.config.name.clone(), problem };
        let wakeup = self.wakeup.clone();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok_and(|e| super::is_change(&e)) {
                wakeup.notify_one();
            }
        })
        .map_err(|e| config_error(format!("cannot watch: {e}")))?;
        watcher
            .watch(&self.config.root, notify::RecursiveMode::Recursive)
            .map_err(|e| config_error(format!("cannot watch {}: {e}", self.config.root.display())))?;
        self._watcher = Some(watcher);
        Ok(())
    }

    fn io_error(&self, path: &Path, error: std::io::Error) -> SourceError {
        SourceError::Io { source_name: self.config.name.clone(), path: path.display().to_string(), error }
    }

    /// Every `*.json` capture under the root with the files beside it that share its stem.
    fn scan(&self) -> Vec<Capture> {
        let mut captures = Vec::new();
        let mut directories = vec![self.config.root.clone()];
        while let Some(directory) = directories.pop() {
            let Ok(entries) = std::fs::read_dir(&directory) else { continue };
            let mut files = Vec::new();
            for entry in entries.flatten() {
                let path = entry.path();
                match entry.file_type() {
                    Ok(t) if t.is_dir() => directories.push(path),
                    Ok(t) if t.is_file() => {
                        let name = entry.file_name().to_string_lossy().into_owned();
                        if !name.starts_with('.') && !name.ends_with(".tmp") && !name.ends_with(".partial") {
                            let modified =
                                entry.metadata().and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
                            files.push((name, path, modified));
                        }
                    }
                    _ => {}
                }
            }
            files.sort();
            for (name, path, _) in files.iter().filter(|(name, _, _)| name.ends_with(".json")) {
                let stem = &name[..name.len() - ".json".len()];
                let prefix = format!("{stem}.");
                let group: Vec<&(String, PathBuf, SystemTime)> =
                    files.iter().filter(|(other, _, _)| other.starts_with(&prefix)).collect();
                captures.push(Capture {
                    json: path.clone(),
                    files: group.iter().map(|(_, p, _)| p.clone()).collect(),
                    newest: group.iter().map(|(_, _, m)| *m).max().unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
        }
        captures.sort_by(|a, b| a.json.cmp(&b.json));
        captures
    }

    fn is_complete(&self, capture: &Capture) -> bool {
        match &self.config.marker_suffix {
            Some(suffix) => {
                let name = capture.json.file_name().expect("a file").to_string_lossy();
                let marker = capture.json.with_file_name(format!("{}{suffix}", &name[..name.len() - ".json".len()]));
                marker.exists()
            }
            None => capture.newest.elapsed().unwrap_or_default() >= Duration::from_millis(self.config.settle_ms),
        }
    }

    fn transcript_path(&self, capture: &Capture) -> Option<PathBuf> {
        let name = capture.json.file_name()?.to_string_lossy().into_owned();
        let stem = &name[..name.len() - ".json".len()];
        self.config
            .transcript_suffixes
            .iter()
            .map(|suffix| capture.json.with_file_name(format!("{stem}{suffix}")))
            .find(|path| capture.files.contains(path))
    }

    /// The message for a complete session, and the hash of its content.
    fn session_message(&self, capture: &Capture) -> Result<(crate::bus::OutboundMessage, u64), SourceError> {
        let relative = capture.json.strip_prefix(&self.config.root).unwrap_or(&capture.json).display().to_string();
        let source_label = format!("sessions:{}/{relative}", self.config.name);
        let bytes = std::fs::read(&capture.json).map_err(|e| self.io_error(&capture.json, e))?;
        let transcript = match self.transcript_path(capture) {
            Some(path) => Some(std::fs::read(&path).map_err(|e| self.io_error(&path, e))?),
            None => None,
        };
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        hasher.update(&bytes);
        hasher.update(transcript.as_deref().unwrap_or_default());
        let content_hash = hasher.digest();
        let table = &self.mapping.table;
        let fields: Map<String, Value> = match serde_json::from_slice(&bytes) {
            Ok(Value::Object(fields)) => fields,
            Ok(_) => {
                let detail = format!("session file is JSON but not an object ({source_label})");
                return Ok((poison(table, &bytes, DeadLetterReason::Decode, detail, &source_label), content_hash));
            }
            Err(e) => {
                let detail = format!("session file is not valid JSON: {e} ({source_label})");
                return Ok((poison(table, &bytes, DeadLetterReason::Decode, detail, &source_label), content_hash));
            }
        };
        let mut payload = Map::new();
        for (name, value) in fields {
            payload.insert(self.config.columns.get(&name).cloned().unwrap_or(name), value);
        }
        if let Some(text) = transcript {
            payload.entry("transcript").or_insert_with(|| Value::String(String::from_utf8_lossy(&text).into_owned()));
        }
        if let Some(version) = self.mapping.version_column.as_deref() {
            let newest = capture.newest.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
            payload.entry(version).or_insert_with(|| Value::String(micros_to_rfc3339(newest.as_micros() as i64)));
        }
        let produced_at = now_rfc3339();
        let fallback: [&[u8]; 2] = [self.config.name.as_bytes(), relative.as_bytes()];
        self.mapping.transform(&mut payload);
        let message = match row_event(&self.mapping, &payload, false, &fallback, &source_label, &produced_at) {
            Ok(event) => event.message,
            Err((reason, detail)) => poison(table, &bytes, reason, detail, &source_label),
        };
        if message.data.len() > self.config.max_event_bytes && !self.claim_checks {
            let detail = format!(
                "session event of {} bytes exceeds max_event_bytes = {} ({source_label}); configure a [gcs] bucket with claim_check_bytes to carry large sessions",
                message.data.len(),
                self.config.max_event_bytes
            );
            let sample = &message.data[..message.data.len().min(OVERSIZE_SAMPLE_BYTES)];
            return Ok((poison(table, sample, DeadLetterReason::Oversize, detail, &source_label), content_hash));
        }
        Ok((message, content_hash))
    }
}

#[async_trait]
impl Source for SessionsSource {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn set_shutdown(&mut self, shutdown: Shutdown) {
        self.shutdown = shutdown;
    }

    async fn emit(&mut self, publisher: &dyn Publisher) -> Result<EmitOutcome, SourceError> {
        let mut outcome = EmitOutcome::default();
        let mut messages = Vec::new();
        let mut saved = Vec::new();
        let mut seen = Vec::new();
        for capture in self.scan() {
            if self.shutdown.is_stopping() {
                break;
            }
            let state_key = format!("session:{}", capture.json.display());
            if self.published_at.get(&capture.json) == Some(&capture.newest) {
                continue;
            }
            if !self.is_complete(&capture) {
                outcome.pending += 1;
                continue;
            }
            let (message, hash) = self.session_message(&capture)?;
            let stored = self
                .checkpoints
                .state(&self.config.name, &state_key)
                .map_err(|error| SourceError::Checkpoint { source_name: self.config.name.clone(), error })?;
            if stored.as_deref() == Some(hash.to_string().as_str()) {
                self.published_at.insert(capture.json.clone(), capture.newest);
                continue;
            }
            messages.push(message);
            saved.push((state_key, Some(hash.to_string())));
            seen.push((capture.json.clone(), capture.newest));
        }
        if messages.is_empty() {
            return Ok(outcome);
        }
        let count = messages.len() as u64;
        publisher
            .publish(messages)
            .await
            .map_err(|error| SourceError::Publish { source_name: self.config.name.clone(), error })?;
        // Only now, with the sessions durable on the bus, are they remembered as published.
        self.checkpoints
            .save_progress(&self.config.name, &saved, &self.mapping.table, &[])
            .map_err(|error| SourceError::Checkpoint { source_name: self.config.name.clone(), error })?;
        self.published_at.extend(seen);
        self.published += count;
        outcome.consumed = count;
        outcome.published = count;
        Ok(outcome)
    }

    async fn wait_for_input(&mut self, max_wait: Duration) {
        let wait = max_wait.min(Duration::from_millis(self.config.poll_interval_ms));
        let _ = tokio::time::timeout(wait, self.wakeup.notified()).await;
    }

    fn tables(&self) -> Vec<String> {
        vec![self.mapping.table.clone()]
    }

    fn observable_state(&self) -> Value {
        serde_json::json!({ "source": self.config.name, "published": self.published })
    }
}
