//! `[worker]`: batching, limits and the landing's retries.

use serde::{Deserialize, Serialize};

/// Settings of the worker (`[worker]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// A table's batch is flushed when it holds this many rows. Default 20000.
    #[serde(default = "default_max_batch_rows")]
    pub max_batch_rows: usize,
    /// … or this many message bytes. Default 32 MiB.
    #[serde(default = "default_max_batch_bytes")]
    pub max_batch_bytes: usize,
    /// … or when its oldest row has waited this long, in milliseconds. Default 1000.
    #[serde(default = "default_max_batch_age_ms")]
    pub max_batch_age_ms: u64,
    /// Messages larger than this are dead-lettered as `oversize`. Default 8 MiB.
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: usize,
    /// Messages asked for per pull. Default 5000.
    #[serde(default = "default_pull_max_messages")]
    pub pull_max_messages: usize,
    /// First retry delay of a failing landing, in milliseconds (doubles, ±25 % jitter). Default 200.
    #[serde(default = "default_retry_initial_ms")]
    pub retry_initial_ms: u64,
    /// Longest retry delay, in milliseconds. Default 10000.
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
    /// How long one batch is retried before its deliveries are nacked, in seconds. Keep it below the
    /// bus's ack deadline. Default 30.
    #[serde(default = "default_retry_budget_secs")]
    pub retry_budget_secs: u64,
}

const fn default_max_batch_rows() -> usize {
    20_000
}

const fn default_max_batch_bytes() -> usize {
    32 << 20
}

const fn default_max_batch_age_ms() -> u64 {
    1000
}

const fn default_max_event_bytes() -> usize {
    8 << 20
}

const fn default_pull_max_messages() -> usize {
    5000
}

const fn default_retry_initial_ms() -> u64 {
    200
}

const fn default_retry_max_ms() -> u64 {
    10_000
}

const fn default_retry_budget_secs() -> u64 {
    30
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            max_batch_rows: default_max_batch_rows(),
            max_batch_bytes: default_max_batch_bytes(),
            max_batch_age_ms: default_max_batch_age_ms(),
            max_event_bytes: default_max_event_bytes(),
            pull_max_messages: default_pull_max_messages(),
            retry_initial_ms: default_retry_initial_ms(),
            retry_max_ms: default_retry_max_ms(),
            retry_budget_secs: default_retry_budget_secs(),
        }
    }
}
