//! `[bus.embedded]`: the durable SQLite queue on this machine.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Settings of the embedded bus (`[bus.embedded]` in the config file).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedBusConfig {
    /// SQLite file of the queue. Default `.bqsync/bus.db`.
    #[serde(default = "default_path")]
    pub path: PathBuf,
    /// Lease of a delivery, in seconds: an unacked delivery comes back after it. Default 60.
    #[serde(default = "default_ack_deadline_secs")]
    pub ack_deadline_secs: u64,
    /// Deliveries before a message moves to the dead-letter queue. Default 5.
    #[serde(default = "default_max_delivery_attempts")]
    pub max_delivery_attempts: u32,
    /// `full` fsyncs every publish before it returns (published events survive power loss); `normal`
    /// survives a crash of the process but may lose the last publishes on power loss. Leases and acks
    /// are never fsynced on their own: losing one on power loss only causes a redelivery, which lands
    /// as a no-op. Default `full`.
    #[serde(default)]
    pub synchronous: Synchronous,
    /// `bqsync run` with the DuckDB warehouse hands events from its sources to its worker in memory
    /// (`src/bus/direct.rs`): a source's checkpoint moves only once the warehouse committed the
    /// events, so no queue file is needed between them in one process. The queue file stays for
    /// `produce`/`work`, and `run` still drains what is left in it. `false` keeps the queue file
    /// between sources and worker in `run` too. Default `true`.
    #[serde(default = "default_in_process")]
    pub in_process: bool,
    /// Events the in-process path holds published but not yet pulled by the worker; a source waits
    /// beyond it. Default 50000.
    #[serde(default = "default_in_process_capacity")]
    pub in_process_capacity: usize,
    /// On the in-process path, the JSONL and SQLite table sources coerce plain records (of tables
    /// without transforms) into rows themselves and hand them over as they are, instead of one event
    /// message each for the worker to parse again (`src/sources/staged.rs`). Every other record (bad
    /// JSON, a schema violation, a tombstone) still goes as its own event, and is dead-lettered with
    /// its reason. Default `true`.
    #[serde(default = "default_in_process")]
    pub in_process_rows: bool,
}

/// SQLite's `synchronous` for publish commits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// fsync before a publish returns.
    #[default]
    Full,
    /// No fsync: survives a process crash, not a power loss.
    Normal,
}

impl Synchronous {
    /// The pragma's value.
    pub fn pragma(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        }
    }
}

fn default_path() -> PathBuf {
    PathBuf::from(".bqsync/bus.db")
}

const fn default_in_process() -> bool {
    true
}

const fn default_in_process_capacity() -> usize {
    50_000
}

const fn default_ack_deadline_secs() -> u64 {
    60
}

const fn default_max_delivery_attempts() -> u32 {
    5
}

impl Default for EmbeddedBusConfig {
    fn default() -> Self {
        EmbeddedBusConfig {
            path: default_path(),
            ack_deadline_secs: default_ack_deadline_secs(),
            max_delivery_attempts: default_max_delivery_attempts(),
            synchronous: Synchronous::Full,
            in_process: default_in_process(),
            in_process_capacity: default_in_process_capacity(),
            in_process_rows: default_in_process(),
        }
    }
}
