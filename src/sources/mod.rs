//! Sources: producers that watch where data appears and publish change events to the bus.
//!
//! Lifecycle: the driver calls [`Source::emit`] (read what is there now, publish it, then advance the
//! checkpoint) and, between passes, [`Source::wait_for_input`] (a file-system event or a poll interval).
//! Invariant: a checkpoint advances only after [`crate::bus::Publisher::publish`] returned for every
//! event before it.

pub mod checkpoint;
pub mod history;
pub mod http;
pub mod in_flight;
pub mod jsonl;
pub mod outbox;
pub mod reset;
pub mod rows;
pub mod schedule;
#[cfg_attr(not(feature = "gcp"), path = "no_secret.rs")]
pub mod secret;
pub mod sessions;
pub mod sqlite;
pub mod staged;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::bus::Publisher;
use crate::shutdown::Shutdown;

/// What one pass of a source did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmitOutcome {
    /// Input records consumed (events, poison records and skipped blank lines).
    pub consumed: u64,
    /// Events published (including poison records published for dead-lettering).
    pub published: u64,
    /// Input seen but not publishable yet (a session still being written): a one-shot run waits
    /// for it instead of ending.
    pub pending: u64,
    /// No pass ran: a scheduled source was not due yet.
    pub skipped: bool,
    /// The pass was a full re-sync.
    pub full: bool,
}

/// Input a source saw and did not publish: reported at the end of a one-shot run (log and JSON
/// report), so what will never land without a change is never silent.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UnreadInput {
    pub source: String,
    pub path: String,
    #[serde(flatten)]
    pub reason: UnreadReason,
}

/// Why input was not read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum UnreadReason {
    /// The file's last line has no newline yet: it waits for one (or for `final_line_after_ms`).
    PartialLastLine { bytes_waiting: u64 },
    /// No route of the source matches the file.
    NoRoute,
}

impl std::fmt::Display for UnreadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.reason {
            UnreadReason::PartialLastLine { bytes_waiting } => write!(
                f,
                "{}: last line has no newline, {bytes_waiting} B waiting (end it with a newline, or set `final_line_after_ms`)",
                self.path
            ),
            UnreadReason::NoRoute => write!(
                f,
                "{}: no route of source `{}` matches it, not read (files go in ROOT/TABLE/, or add a `routes` entry)",
                self.path, self.source
            ),
        }
    }
}

/// Errors that stop a source pass. Bad input never does: it is published as poison and dead-lettered.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source `{source_name}`: cannot read {path}: {error}")]
    Io { source_name: String, path: String, error: std::io::Error },
    #[error("source `{source_name}`: publish failed: {error}")]
    Publish { source_name: String, error: crate::bus::BusError },
    #[error("source `{source_name}`: {error}")]
    Checkpoint { source_name: String, error: checkpoint::CheckpointError },
    #[error("source `{source_name}`: {problem}")]
    Config { source_name: String, problem: String },
}

/// Checks that a watched folder exists before a source starts. A missing root is a typo far more
/// often than a folder still to come, and a run that quietly creates `/data/inboxx` and publishes
/// nothing looks like success; `create_root = true` opts into creating it.
pub(crate) fn ensure_root(source_name: &str, root: &std::path::Path, create: bool) -> Result<(), SourceError> {
    if root.is_dir() {
        return Ok(());
    }
    let config_error = |problem: String| SourceError::Config { source_name: source_name.to_string(), problem };
    if root.exists() {
        return Err(config_error(format!("root {} is not a folder", root.display())));
    }
    if !create {
        return Err(config_error(format!(
            "root {} does not exist; create it, correct `root`, or set `create_root = true` to have bqsync create it",
            root.display()
        )));
    }
    std::fs::create_dir_all(root).map_err(|error| SourceError::Io {
        source_name: source_name.to_string(),
        path: root.display().to_string(),
        error,
    })
}

/// A producer of change events.
#[async_trait]
pub trait Source: Send {
    fn name(&self) -> &str;
    /// Reads what is available now, publishes it and advances checkpoints after publish returned.
    async fn emit(&mut self, publisher: &dyn Publisher) -> Result<EmitOutcome, SourceError>;
    /// Returns when there may be new input, or after `max_wait`.
    async fn wait_for_input(&mut self, max_wait: Duration);
    /// State for status output and tests.
    fn observable_state(&self) -> serde_json::Value;
    /// Gives the source the shutdown signal: once it says stop, a pass ends at its next publish
    /// boundary.
    fn set_shutdown(&mut self, shutdown: Shutdown);
    /// A pass was requested (CLI, admin API): a scheduled source runs its next pass now.
    fn trigger(&mut self) {}
    /// A full re-sync was requested (`POST /sync?full=true`): sources that have one run it next;
    /// the others run a regular pass.
    fn trigger_full(&mut self) {
        tracing::info!(source = self.name(), "this kind of source has no full re-sync: running a regular pass");
        self.trigger();
    }
    /// Input seen and not published (a partial last line, a file no route matches).
    fn unread(&self) -> Vec<UnreadInput> {
        Vec::new()
    }
    /// Whether a pass that found nothing is worth a line in the history: scheduled polling passes
    /// are; a watcher's or an outbox's many empty passes are not.
    fn records_empty_passes(&self) -> bool {
        false
    }
    /// The tables this source feeds; empty when files route to any table (JSONL).
    fn tables(&self) -> Vec<String> {
        Vec::new()
    }
}

/// "Sync now" triggers, one per source (CLI, admin API), with the tables each source feeds.
#[derive(Default, Clone)]
pub struct Triggers {
    sources: Vec<(String, Vec<String>, Arc<SyncRequest>)>,
}

/// A source's "sync now": wakes its driver; `full` asks for a full re-sync.
#[derive(Default)]
pub struct SyncRequest {
    pub notify: tokio::sync::Notify,
    pub full: std::sync::atomic::AtomicBool,
}

impl SyncRequest {
    /// Takes the request's kind: whether a full re-sync was asked for since the last take.
    pub fn take_full(&self) -> bool {
        self.full.swap(false, std::sync::atomic::Ordering::SeqCst)
    }
}

impl Triggers {
    /// Registers a source; the returned request wakes its driver.
    pub fn add(&mut self, name: &str, tables: Vec<String>) -> Arc<SyncRequest> {
        let request = Arc::new(SyncRequest::default());
        self.sources.push((name.to_string(), tables, request.clone()));
        request
    }

    pub fn names(&self) -> Vec<String> {
        self.sources.iter().map(|(name, _, _)| name.clone()).collect()
    }

    /// Triggers the named sources (all when `names` is empty). Unknown names are an error, and
    /// then nothing is triggered.
    pub fn trigger(&self, names: &[String], full: bool) -> Result<Vec<String>, String> {
        let unknown: Vec<&String> = names.iter().filter(|n| !self.sources.iter().any(|(s, _, _)| s == *n)).collect();
        if !unknown.is_empty() {
            return Err(format!("no source named {unknown:?}; sources: {:?}", self.names()));
        }
        Ok(self.fire(|name, _| names.is_empty() || names.iter().any(|n| n == name), full))
    }

    /// Triggers the sources that feed any of `tables` (and those that route files to any table).
    pub fn trigger_tables(&self, tables: &[String], full: bool) -> Vec<String> {
        self.fire(|_, feeds| feeds.is_empty() || feeds.iter().any(|t| tables.contains(t)), full)
    }

    fn fire(&self, select: impl Fn(&str, &[String]) -> bool, full: bool) -> Vec<String> {
        let mut fired = Vec::new();
        for (name, tables, request) in &self.sources {
            if select(name, tables) {
                if full {
                    request.full.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                // A stored permit: a source busy with a pass runs one more right after it.
                request.notify.notify_one();
                fired.push(name.clone());
            }
        }
        fired
    }
}

/// Whether a file-system event can mean new data for a watching source. Opening, reading and closing
/// a file unwritten are events too (inotify's IN_OPEN, IN_ACCESS, IN_CLOSE_NOWRITE), and the source
/// causes them itself with every pass: waking on them kept an idle source re-reading its files in a
/// loop, at a CPU core and more.
pub(crate) fn is_change(event: &notify::Event) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_a_file_is_not_a_change_and_writing_one_is() {
        use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, EventKind, ModifyKind};
        let event = |kind| notify::Event::new(kind);
        assert!(!is_change(&event(EventKind::Access(AccessKind::Open(AccessMode::Any)))));
        assert!(!is_change(&event(EventKind::Access(AccessKind::Read))));
        assert!(!is_change(&event(EventKind::Access(AccessKind::Close(AccessMode::Read)))));
        assert!(is_change(&event(EventKind::Access(AccessKind::Close(AccessMode::Write)))));
        assert!(is_change(&event(EventKind::Modify(ModifyKind::Data(DataChange::Any)))));
        assert!(is_change(&event(EventKind::Create(CreateKind::File))));
    }

    #[tokio::test]
    async fn triggers_fire_by_name_or_table_and_refuse_unknown_names() {
        let mut triggers = Triggers::default();
        let inbox = triggers.add("inbox", vec![]);
        let crm = triggers.add("crm", vec!["contacts_master".into()]);
        triggers.add("idp", vec!["idp_users".into()]);
        assert!(triggers.trigger(&["nope".into()], false).unwrap_err().contains("nope"));
        assert_eq!(triggers.trigger(&["crm".into()], true).unwrap(), vec!["crm".to_string()]);
        // The permit is stored: a source busy with a pass runs again right after it.
        tokio::time::timeout(Duration::from_millis(100), crm.notify.notified()).await.unwrap();
        assert!(crm.take_full() && !crm.take_full(), "a full request is taken once");
        assert_eq!(triggers.trigger_tables(&["idp_users".into()], false), vec!["inbox".to_string(), "idp".to_string()]);
        tokio::time::timeout(Duration::from_millis(100), inbox.notify.notified()).await.unwrap();
        assert!(!inbox.take_full());
        assert_eq!(triggers.trigger(&[], false).unwrap().len(), 3);
    }
}
