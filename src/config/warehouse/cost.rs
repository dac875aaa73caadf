//! `[warehouse.bigquery.cost]`: the guard on BigQuery's bill.

use serde::Deserialize;

/// `[warehouse.bigquery.cost]`: limits on what bqsync's queries may cost and touch.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostConfig {
    /// `maximumBytesBilled` of every query job: BigQuery fails a job that would bill more. Default
    /// 10 GiB (10737418240). Must be > 0.
    #[serde(default = "default_maximum_bytes_billed")]
    pub maximum_bytes_billed: u64,
    /// Bytes this process may bill in all (dry-run estimates are checked against what is left; billed
    /// bytes are counted after each job). 0 = no budget. Default 0.
    #[serde(default)]
    pub byte_budget: u64,
    /// No longer used: landing runs no query job per flush, and the apply is a script, which a dry
    /// run cannot estimate; the budget is checked against the bytes billed so far before each
    /// apply. Kept so existing configs load.
    #[serde(default = "default_true")]
    pub dry_run: bool,
    /// Tables bqsync may write. Empty (default) = every table in `schemas/`.
    #[serde(default)]
    pub writable_tables: Vec<String>,
    /// Tables bqsync must never write, even when they have a schema file (e.g. tables other jobs
    /// own). Start-up fails when one is in `schemas/`.
    #[serde(default)]
    pub protected_tables: Vec<String>,
}

const fn default_maximum_bytes_billed() -> u64 {
    10 * 1024 * 1024 * 1024
}

const fn default_true() -> bool {
    true
}

impl Default for CostConfig {
    fn default() -> Self {
        CostConfig {
            maximum_bytes_billed: default_maximum_bytes_billed(),
            byte_budget: 0,
            dry_run: true,
            writable_tables: Vec::new(),
            protected_tables: Vec::new(),
        }
    }
}
