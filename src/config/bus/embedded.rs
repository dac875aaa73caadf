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
        }
    }
}
