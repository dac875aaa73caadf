//! The BigQuery cost guard: what bqsync may write, and how many bytes its queries may bill.
//!
//! Invariants:
//! - Every query job bqsync sends is built by [`CostGuard::query_job`], which always sets
//!   `maximumBytesBilled`: BigQuery itself fails a job that would bill more, before it runs.
//! - A job is refused before it is sent when its dry-run estimate exceeds the per-job limit or what
//!   is left of the per-process budget, or when it writes a table that is protected or not allowed.
//!
//! The emulators ignore `maximumBytesBilled` and estimate 0 bytes on dry runs, so on them only the
//! request shape and the refusals are testable (see the unit tests here and tests/bigquery.rs).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use gcp_bigquery_client::model::job::Job;
use gcp_bigquery_client::model::job_configuration::JobConfiguration;
use gcp_bigquery_client::model::job_configuration_query::JobConfigurationQuery;
use gcp_bigquery_client::model::job_reference::JobReference;

pub use crate::config::warehouse::cost::CostConfig;

/// Why the cost guard refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CostRefusal {
    #[error("table `{0}` is protected ([warehouse.bigquery.cost] protected_tables): bqsync will not write it")]
    Protected(String),
    #[error("table `{0}` is not in [warehouse.bigquery.cost] writable_tables")]
    NotWritable(String),
    #[error("the dry run estimates {estimate} bytes, over maximum_bytes_billed = {limit}")]
    OverJobLimit { estimate: u64, limit: u64 },
    #[error("query limit reached: this process started {limit} query jobs ([warehouse.bigquery.cost] max_queries); raise it or restart")]
    QueryLimit { limit: u64 },
    #[error("byte budget spent: {spent} of {budget} bytes billed by this process, the next job estimates {estimate}; raise [warehouse.bigquery.cost] byte_budget or restart")]
    BudgetSpent { spent: u64, budget: u64, estimate: u64 },
}

/// The guard of one process.
#[derive(Debug)]
pub struct CostGuard {
    config: CostConfig,
    billed: AtomicU64,
    queries: AtomicU64,
    /// The highest multiple of `warn_bytes` / `warn_dollars` already warned about.
    warned_bytes: AtomicU64,
    warned_dollars: AtomicU64,
}

impl CostGuard {
    pub fn new(config: CostConfig) -> Result<CostGuard, String> {
        if config.maximum_bytes_billed == 0 {
            return Err("[warehouse.bigquery.cost] maximum_bytes_billed must be > 0".into());
        }
        Ok(CostGuard {
            config,
            billed: AtomicU64::new(0),
            queries: AtomicU64::new(0),
            warned_bytes: AtomicU64::new(0),
            warned_dollars: AtomicU64::new(0),
        })
    }

    pub fn config(&self) -> &CostConfig {
        &self.config
    }

    /// May bqsync write `table`?
    pub fn check_writable(&self, table: &str) -> Result<(), CostRefusal> {
        if self.config.protected_tables.iter().any(|t| t == table) {
            return Err(CostRefusal::Protected(table.into()));
        }
        if !self.config.writable_tables.is_empty() && !self.config.writable_tables.iter().any(|t| t == table) {
            return Err(CostRefusal::NotWritable(table.into()));
        }
        Ok(())
    }

    /// May a job estimated at `estimate` bytes run?
    pub fn check_estimate(&self, estimate: u64) -> Result<(), CostRefusal> {
        let limit = self.config.maximum_bytes_billed;
        if estimate > limit {
            return Err(CostRefusal::OverJobLimit { estimate, limit });
        }
        let (spent, budget) = (self.billed(), self.config.byte_budget);
        if budget > 0 && spent.saturating_add(estimate) > budget {
            return Err(CostRefusal::BudgetSpent { spent, budget, estimate });
        }
        Ok(())
    }

    /// Counts a query job about to start; refuses it past `max_queries` (seed 001's per-process
    /// query limit: a loop gone wrong stops at the limit, not at the bill).
    pub fn start_query(&self) -> Result<(), CostRefusal> {
        let started = self.queries.fetch_add(1, Ordering::Relaxed) + 1;
        let limit = self.config.max_queries;
        if limit > 0 && started > limit {
            self.queries.fetch_sub(1, Ordering::Relaxed);
            return Err(CostRefusal::QueryLimit { limit });
        }
        Ok(())
    }

    /// Query jobs started so far by this process.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    /// Counts bytes a finished job billed, and warns each time the total passes a further multiple
    /// of `warn_bytes` or `warn_dollars`.
    pub fn record_billed(&self, bytes: u64) {
        let total = self.billed.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let dollars = dollars(total, self.config.price_per_tib);
        let bytes_multiple = total.checked_div(self.config.warn_bytes).unwrap_or(0);
        let dollars_multiple =
            if self.config.warn_dollars > 0.0 { (dollars / self.config.warn_dollars) as u64 } else { 0 };
        for (multiple, warned, what) in
            [(bytes_multiple, &self.warned_bytes, "bytes"), (dollars_multiple, &self.warned_dollars, "dollars")]
        {
            if multiple > 0 && warned.fetch_max(multiple, Ordering::Relaxed) < multiple {
                tracing::warn!(
                    billed_bytes = total,
                    dollars = format!("{dollars:.2}"),
                    warn_bytes = self.config.warn_bytes,
                    warn_dollars = self.config.warn_dollars,
                    "BigQuery {what} billed by this process passed a warning threshold"
                );
            }
        }
    }

    /// Bytes billed so far by this process.
    pub fn billed(&self) -> u64 {
        self.billed.load(Ordering::Relaxed)
    }

    /// A query job (GoogleSQL) with `maximumBytesBilled` set. `job_id` None: a dry run.
    pub fn query_job(&self, project: &str, location: Option<&str>, job_id: Option<&str>, sql: &str) -> Job {
        let query = JobConfigurationQuery {
            query: sql.to_string(),
            use_legacy_sql: Some(false),
            maximum_bytes_billed: Some(self.config.maximum_bytes_billed.to_string()),
            ..Default::default()
        };
        let configuration = JobConfiguration {
            query: Some(query),
            dry_run: Some(job_id.is_none()),
            labels: Some(HashMap::from([("bqsync".to_string(), "landing".to_string())])),
            ..Default::default()
        };
        Job {
            configuration: Some(configuration),
            job_reference: job_id.map(|id| JobReference {
                job_id: Some(id.to_string()),
                project_id: Some(project.to_string()),
                location: location.map(str::to_string),
            }),
            ..Default::default()
        }
    }
}

/// Dollars for `bytes` billed at `price_per_tib`.
pub fn dollars(bytes: u64, price_per_tib: f64) -> f64 {
    bytes as f64 / (1u64 << 40) as f64 * price_per_tib
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(config: CostConfig) -> CostGuard {
        CostGuard::new(config).unwrap()
    }

    #[test]
    fn every_query_job_carries_maximum_bytes_billed() {
        let g = guard(CostConfig { maximum_bytes_billed: 12345, ..Default::default() });
        for job_id in [Some("bqsync_x_1"), None] {
            let job = serde_json::to_value(g.query_job("p", Some("EU"), job_id, "SELECT 1")).unwrap();
            assert_eq!(job["configuration"]["query"]["maximumBytesBilled"], "12345", "{job}");
            assert_eq!(job["configuration"]["query"]["useLegacySql"], false);
            assert_eq!(job["configuration"]["dryRun"], job_id.is_none());
        }
        let job = serde_json::to_value(g.query_job("p", None, Some("j1"), "SELECT 1")).unwrap();
        assert_eq!(job["jobReference"]["jobId"], "j1");
    }

    #[test]
    fn protected_and_unlisted_tables_are_refused() {
        let g = guard(CostConfig {
            writable_tables: vec!["atoms".into(), "ledger".into()],
            protected_tables: vec!["ledger".into()],
            ..Default::default()
        });
        assert_eq!(g.check_writable("atoms"), Ok(()));
        assert_eq!(g.check_writable("ledger"), Err(CostRefusal::Protected("ledger".into())));
        assert_eq!(g.check_writable("contacts"), Err(CostRefusal::NotWritable("contacts".into())));
        assert_eq!(guard(CostConfig::default()).check_writable("anything"), Ok(()));
    }

    #[test]
    fn estimates_are_checked_against_the_job_limit_and_the_budget() {
        let g = guard(CostConfig { maximum_bytes_billed: 1000, byte_budget: 2500, ..Default::default() });
        assert_eq!(g.check_estimate(1001), Err(CostRefusal::OverJobLimit { estimate: 1001, limit: 1000 }));
        assert_eq!(g.check_estimate(1000), Ok(()));
        g.record_billed(1000);
        g.record_billed(1000);
        assert_eq!(g.check_estimate(500), Ok(()));
        assert_eq!(g.check_estimate(501), Err(CostRefusal::BudgetSpent { spent: 2000, budget: 2500, estimate: 501 }));
        let unlimited = guard(CostConfig { maximum_bytes_billed: 1000, ..Default::default() });
        unlimited.record_billed(u64::MAX / 2);
        assert_eq!(unlimited.check_estimate(10), Ok(()), "budget 0 = no budget");
    }

    #[test]
    fn queries_past_the_limit_are_refused() {
        let g = guard(CostConfig { max_queries: 2, ..Default::default() });
        assert_eq!(g.start_query(), Ok(()));
        assert_eq!(g.start_query(), Ok(()));
        assert_eq!(g.start_query(), Err(CostRefusal::QueryLimit { limit: 2 }));
        assert_eq!(g.queries(), 2, "a refused query is not counted");
        let unlimited = guard(CostConfig::default());
        for _ in 0..1000 {
            assert_eq!(unlimited.start_query(), Ok(()));
        }
    }

    #[test]
    fn dollars_follow_the_price_per_tib() {
        assert_eq!(dollars(1 << 40, 6.25), 6.25);
        assert_eq!(dollars(1 << 39, 6.25), 3.125);
        assert_eq!(dollars(0, 6.25), 0.0);
        let g = guard(CostConfig { warn_bytes: 100, warn_dollars: 1.0, ..Default::default() });
        g.record_billed(150);
        assert_eq!(g.warned_bytes.load(Ordering::Relaxed), 1);
        g.record_billed(100);
        assert_eq!(g.warned_bytes.load(Ordering::Relaxed), 2, "passed 200: warned again");
        assert_eq!(g.warned_dollars.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_zero_job_limit_is_a_config_error() {
        assert!(CostGuard::new(CostConfig { maximum_bytes_billed: 0, ..Default::default() }).is_err());
    }
}
