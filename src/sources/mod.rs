//! Sources: producers that watch where data appears and publish change events to the bus.
//!
//! Lifecycle: the driver calls [`Source::emit`] (read what is there now, publish it, then advance the
//! checkpoint) and, between passes, [`Source::wait_for_input`] (a file-system event or a poll interval).
//! Invariant: a checkpoint advances only after [`crate::bus::Publisher::publish`] returned for every
//! event before it.

pub mod checkpoint;
pub mod jsonl;

use std::time::Duration;

use async_trait::async_trait;

use crate::bus::Publisher;

/// What one pass of a source did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmitOutcome {
    /// Input records consumed (events, poison records and skipped blank lines).
    pub consumed: u64,
    /// Events published (including poison records published for dead-lettering).
    pub published: u64,
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
}
