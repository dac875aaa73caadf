//! `[warehouse.bigquery.cost]`: the guard on BigQuery's bill.

use serde::{Deserialize, Serialize};

/// `[warehouse.bigquery.cost]`: limits on what bqsync's queries may cost and touch.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    /// Bytes bqsync's applies may bill a day, all tables together. When the forecast (`bqsync cost`)
    /// is over it, the applier stretches the apply intervals, all by the same factor and each at most
    /// to `max_apply_interval_secs`, until the day's forecast fits; landing and the live views go on
    /// as before, so readers still see fresh rows. When even the longest intervals do not fit, it
    /// warns (log and `bqsync_cost_over_budget`) and still applies at them: ingestion never stops
    /// for cost. 0 (default) = no daily budget.
    #[serde(default)]
    pub daily_byte_budget: u64,
    /// The longest interval a daily budget may stretch an apply to. Keep it well under
    /// `landing_expiration_days`: landed rows expire unapplied after that. Default 21600 (6 h).
    #[serde(default = "default_max_apply_interval_secs")]
    pub max_apply_interval_secs: u64,
    /// Dollars per TiB billed, for `bqsync cost` and the warnings. Default 6.25 (on-demand, US).
    #[serde(default = "default_price_per_tib")]
    pub price_per_tib: f64,
    /// Query jobs this process may start in all (applies, `dlq` and `status` reads, replay); the
    /// next one is refused with an error. 0 (default) = no limit.
    #[serde(default)]
    pub max_queries: u64,
    /// Warn (once, then at each further multiple) when this process has billed this many bytes.
    /// 0 (default) = no warning.
    #[serde(default)]
    pub warn_bytes: u64,
    /// Warn likewise when this process has billed this many dollars at `price_per_tib`. 0 (default)
    /// = no warning.
    #[serde(default)]
    pub warn_dollars: f64,
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

const fn default_max_apply_interval_secs() -> u64 {
    6 * 3600
}

const fn default_price_per_tib() -> f64 {
    6.25
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
            daily_byte_budget: 0,
            max_apply_interval_secs: default_max_apply_interval_secs(),
            price_per_tib: default_price_per_tib(),
            max_queries: 0,
            warn_bytes: 0,
            warn_dollars: 0.0,
            writable_tables: Vec::new(),
            protected_tables: Vec::new(),
        }
    }
}
