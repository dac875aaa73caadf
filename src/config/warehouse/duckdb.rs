//! `[warehouse.duckdb]`: the embedded DuckDB file.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Settings of the DuckDB warehouse (`[warehouse.duckdb]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DuckDbConfig {
    /// Database file. Default `./bqsync.duckdb`.
    #[serde(default = "default_path")]
    pub path: PathBuf,
    /// DuckDB worker threads. Default 2.
    #[serde(default = "default_threads")]
    pub threads: u32,
    /// DuckDB memory limit (its buffer pool), e.g. `1GB`. Default `128MB`. Joins, sorts and
    /// aggregations beyond it spill to `<path>.tmp`, so it bounds the RSS without bounding what runs:
    /// tests/embedded_pipeline.rs lands, merges 50,000-row upsert batches and queries whole tables at
    /// 32MB; a 50,000-row `MERGE` into a 5M-row table also ran at 32MB. On the 1M-atoms benchmark
    /// 128MB held the peak RSS about 150 MiB below 512MB at the same speed (docs/benchmarks.md).
    #[serde(default = "default_memory_limit")]
    pub memory_limit: String,
    /// WAL size that triggers a checkpoint (DuckDB `checkpoint_threshold`). Data not yet checkpointed
    /// stays in memory, so this bounds DuckDB's share of the RSS; larger means fewer re-compressions
    /// of the same row groups and a longer WAL replay after a crash. Default `64MB` (measured on the
    /// 1M-atoms benchmark: 16MB spent a fifth of the CPU in checkpoints; 256MB saved no time and
    /// held ~250 MB more).
    #[serde(default = "default_checkpoint_threshold")]
    pub checkpoint_threshold: String,
    /// Append tables up to this many rows keep an in-memory index of their event ids (about 20 bytes
    /// a row), so a flush of new events is appended without reading the table; larger tables
    /// deduplicate with an anti-join over the stored event ids on each flush. Default 50000000.
    #[serde(default = "default_event_index_max_rows")]
    pub event_index_max_rows: u64,
}

fn default_path() -> PathBuf {
    PathBuf::from("bqsync.duckdb")
}

const fn default_threads() -> u32 {
    2
}

fn default_memory_limit() -> String {
    "128MB".into()
}

fn default_checkpoint_threshold() -> String {
    "64MB".into()
}

const fn default_event_index_max_rows() -> u64 {
    50_000_000
}

impl Default for DuckDbConfig {
    fn default() -> Self {
        DuckDbConfig {
            path: default_path(),
            threads: default_threads(),
            memory_limit: default_memory_limit(),
            checkpoint_threshold: default_checkpoint_threshold(),
            event_index_max_rows: default_event_index_max_rows(),
        }
    }
}
