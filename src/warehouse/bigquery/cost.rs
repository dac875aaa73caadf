//! The cost forecast (`bqsync cost`, `GET /cost`) and the apply cadence a daily byte budget steers.
//!
//! Per table: its apply interval, table and landing sizes (`tables.get`, free), the bytes one apply
//! bills, applies and bytes a day, and dollars at `price_per_tib`. The bytes per apply are
//! **measured** when a real apply billed some (this process's last apply of the table, else the job
//! the state table names), else **estimated**: BigQuery bills at least 10 MB per table a statement
//! references (Google, "On-demand compute pricing": "minimum 10 MB data processed per table
//! referenced by the query"), an apply script has [`BILLED_STATEMENTS_PER_APPLY`] such statements,
//! it reads one interval's landed rows, and an upsert's DELETE bills all of `T` (docs/google-cloud.md "BigQuery
//! cost model").
//!
//! Invariant: **a budget steers the apply, never the landing.** With `daily_byte_budget` set, the
//! intervals stretch by one factor, each capped at `max_apply_interval_secs`, until the day's
//! forecast fits ([`stretch_intervals`]). If even the caps do not fit, the applier warns and still
//! applies at the caps; landing and the live views never wait for cost.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::client::{billed_bytes, number};
use super::sql as bsql;
use super::BigQueryWarehouse;
use crate::schema::WriteMode;
use crate::warehouse::cost_guard::dollars;
use crate::warehouse::WarehouseError;

/// BigQuery's minimum billed per table a query references: 10 MB.
pub const MIN_BILLED_BYTES: u64 = 10 * 1024 * 1024;
/// Statements of an apply script that reference a table (state reads and update, landing reads,
/// the DML's reads of `T`): each is billed at least [`MIN_BILLED_BYTES`].
pub const BILLED_STATEMENTS_PER_APPLY: u64 = 6;
const DAY_SECS: u64 = 86_400;

/// One table's line of the forecast.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TableForecast {
    pub table: String,
    pub write_mode: WriteMode,
    /// The interval of the config.
    pub configured_interval_secs: u64,
    /// The interval in force (stretched by the budget, or as configured).
    pub interval_secs: u64,
    pub table_bytes: u64,
    pub table_rows: u64,
    pub landing_bytes: u64,
    pub bytes_per_apply: u64,
    /// True when `bytes_per_apply` is a billed job's, false when estimated.
    pub measured: bool,
    pub applies_per_day: f64,
    pub bytes_per_day: u64,
    pub dollars_per_day: f64,
}

/// The forecast of all tables.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Forecast {
    pub tables: Vec<TableForecast>,
    pub bytes_per_day: u64,
    pub dollars_per_day: f64,
    /// 0 = none.
    pub daily_byte_budget: u64,
    pub price_per_tib: f64,
    /// Even the longest intervals bill more than the budget.
    pub over_budget: bool,
}

/// Bytes one apply bills, estimated: the per-statement minimum, one interval's landed rows, and for
/// an upsert table all of `T` (its DELETE).
pub fn estimated_bytes_per_apply(mode: WriteMode, table_bytes: u64, landed_bytes_per_apply: u64) -> u64 {
    let floor = BILLED_STATEMENTS_PER_APPLY * MIN_BILLED_BYTES;
    match mode {
        WriteMode::Append => floor + landed_bytes_per_apply,
        WriteMode::Upsert => floor + landed_bytes_per_apply + table_bytes,
    }
}

/// Bytes a day of an apply billing `bytes_per_apply` every `interval_secs`.
pub fn bytes_per_day(bytes_per_apply: u64, interval_secs: u64) -> u64 {
    (u128::from(bytes_per_apply) * u128::from(DAY_SECS) / u128::from(interval_secs.max(1))).min(u128::from(u64::MAX))
        as u64
}

/// The intervals chosen for a budget, and what they bill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cadence {
    pub intervals: Vec<u64>,
    pub bytes_per_day: u64,
    pub over_budget: bool,
}

/// Stretches `(bytes_per_apply, configured_interval)` per table so the day's bytes fit `budget`:
/// every interval by the same factor, none past `max_interval` (nor below its configured value).
/// Tables that hit the cap leave the rest of the budget to the others, so the factor is solved
/// again for them. `budget` 0: the configured intervals.
pub fn stretch_intervals(tables: &[(u64, u64)], budget: u64, max_interval: u64) -> Cadence {
    let mut intervals: Vec<u64> = tables.iter().map(|&(_, configured)| configured.max(1)).collect();
    if budget > 0 {
        let mut capped = vec![false; tables.len()];
        for _ in 0..=tables.len() {
            let fixed: u64 = tables
                .iter()
                .zip(&intervals)
                .zip(&capped)
                .filter(|(_, c)| **c)
                .map(|((t, i), _)| bytes_per_day(t.0, *i))
                .sum();
            let free: u64 = tables
                .iter()
                .zip(&capped)
                .filter(|(_, c)| !**c)
                .map(|(&(bytes, configured), _)| bytes_per_day(bytes, configured.max(1)))
                .sum();
            let left = budget.saturating_sub(fixed);
            let factor = if left == 0 { f64::INFINITY } else { (free as f64 / left as f64).max(1.0) };
            let mut newly_capped = false;
            for (index, &(_, configured)) in tables.iter().enumerate() {
                if capped[index] {
                    continue;
                }
                let configured = configured.max(1);
                let stretched = (configured as f64 * factor).ceil();
                let cap = max_interval.max(configured);
                if stretched >= cap as f64 {
                    intervals[index] = cap;
                    capped[index] = true;
                    newly_capped = true;
                } else {
                    intervals[index] = stretched as u64;
                }
            }
            if !newly_capped {
                break;
            }
        }
    }
    let total = tables.iter().zip(&intervals).map(|(t, i)| bytes_per_day(t.0, *i)).sum::<u64>();
    Cadence { intervals, bytes_per_day: total, over_budget: budget > 0 && total > budget }
}

impl BigQueryWarehouse {
    /// Bytes the last applies billed, per table, as the state table names their jobs (one small
    /// query; the jobs are read with `jobs.get`, which is free).
    async fn last_apply_billed(&self) -> HashMap<String, u64> {
        let state = self.rest.path(bsql::STATE_TABLE);
        let sql = format!("SELECT table_name, job_id FROM {state} WHERE job_id IS NOT NULL");
        let Ok(rows) = self.rest.query_rows(&sql, Vec::new(), self.max_bytes()).await else {
            return HashMap::new();
        };
        let mut billed = HashMap::new();
        for row in rows {
            let (Some(table), Some(job_id)) = (row.first().and_then(Value::as_str), row.get(1).and_then(Value::as_str))
            else {
                continue;
            };
            if let Ok(job) = self.rest.get_job(job_id).await {
                billed.insert(table.to_string(), billed_bytes(&job));
            }
        }
        billed
    }

    /// The forecast at the intervals the budget allows (see the module doc).
    pub async fn forecast(&self) -> Result<Forecast, WarehouseError> {
        let cost = self.guard.config();
        let from_state = self.last_apply_billed().await;
        let measured_here = self.billed_per_apply.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let expiry_secs = u64::from(self.config.landing_expiration_days) * DAY_SECS;
        let mut lines = Vec::new();
        for schema in self.catalog.tables().filter(|t| !t.cdc) {
            let configured = self.configured_interval(schema.write_mode);
            let target = self.rest.get_table(&schema.table).await?;
            let landing = self.rest.get_table(&bsql::landing_table(&schema.table)).await?;
            let size = |t: &Option<gcp_bigquery_client::model::table::Table>| {
                let t = t.as_ref();
                let read = |v: Option<&String>| number(v.map(|s| Value::String(s.clone())).as_ref());
                (read(t.and_then(|t| t.num_bytes.as_ref())), read(t.and_then(|t| t.num_rows.as_ref())))
            };
            let ((table_bytes, table_rows), (landing_bytes, _)) = (size(&target), size(&landing));
            // The landing table holds up to `landing_expiration_days` of rows: its share of one interval.
            let landed_per_apply = bytes_per_day(landing_bytes, expiry_secs.max(1)) / DAY_SECS * configured;
            let measured =
                measured_here.get(&schema.table).or(from_state.get(&schema.table)).copied().filter(|b| *b > 0);
            let bytes_per_apply =
                measured.unwrap_or_else(|| estimated_bytes_per_apply(schema.write_mode, table_bytes, landed_per_apply));
            lines.push(TableForecast {
                table: schema.table.clone(),
                write_mode: schema.write_mode,
                configured_interval_secs: configured,
                interval_secs: configured,
                table_bytes,
                table_rows,
                landing_bytes,
                bytes_per_apply,
                measured: measured.is_some(),
                applies_per_day: 0.0,
                bytes_per_day: 0,
                dollars_per_day: 0.0,
            });
        }
        let plan: Vec<(u64, u64)> = lines.iter().map(|l| (l.bytes_per_apply, l.configured_interval_secs)).collect();
        let cadence = stretch_intervals(&plan, cost.daily_byte_budget, cost.max_apply_interval_secs);
        for (line, interval) in lines.iter_mut().zip(&cadence.intervals) {
            line.interval_secs = *interval;
            line.applies_per_day = DAY_SECS as f64 / *interval as f64;
            line.bytes_per_day = bytes_per_day(line.bytes_per_apply, *interval);
            line.dollars_per_day = dollars(line.bytes_per_day, cost.price_per_tib);
        }
        Ok(Forecast {
            tables: lines,
            bytes_per_day: cadence.bytes_per_day,
            dollars_per_day: dollars(cadence.bytes_per_day, cost.price_per_tib),
            daily_byte_budget: cost.daily_byte_budget,
            price_per_tib: cost.price_per_tib,
            over_budget: cadence.over_budget,
        })
    }

    /// Computes the forecast and puts its intervals in force (the applier calls it at start and then
    /// every `FORECAST_EVERY`); exports and logs them. A failed forecast keeps the intervals as they are.
    pub async fn steer_cadence(&self) {
        let forecast = match self.forecast().await {
            Ok(forecast) => forecast,
            Err(error) => {
                tracing::warn!(%error, "cost forecast failed; apply intervals unchanged");
                return;
            }
        };
        let intervals: Vec<(String, u64)> =
            forecast.tables.iter().map(|t| (t.table.clone(), t.interval_secs)).collect();
        crate::metrics::global().apply_cadence(&intervals, forecast.bytes_per_day, forecast.over_budget);
        for line in forecast.tables.iter().filter(|l| l.interval_secs != l.configured_interval_secs) {
            tracing::info!(
                table = %line.table, interval_s = line.interval_secs, configured_s = line.configured_interval_secs,
                bytes_per_apply = line.bytes_per_apply, budget = forecast.daily_byte_budget,
                "apply interval stretched to fit the daily byte budget (landing and live views unaffected)"
            );
        }
        if forecast.over_budget {
            tracing::warn!(
                forecast_bytes_per_day = forecast.bytes_per_day, daily_byte_budget = forecast.daily_byte_budget,
                max_apply_interval_secs = self.guard.config().max_apply_interval_secs,
                "even the longest apply intervals bill more than the daily byte budget: applying at them anyway (ingestion never stops for cost); raise the budget or max_apply_interval_secs"
            );
        }
        let mut map = self.intervals.lock().unwrap_or_else(|p| p.into_inner());
        for (table, secs) in intervals {
            map.insert(table, Duration::from_secs(secs));
        }
    }
}

/// How often a running applier recomputes the forecast.
pub const FORECAST_EVERY: Duration = Duration::from_secs(15 * 60);

#[cfg(test)]
mod tests {
    use super::*;

    const MB10: u64 = MIN_BILLED_BYTES;

    #[test]
    fn the_estimate_is_the_minimum_billed_plus_what_the_apply_reads() {
        assert_eq!(estimated_bytes_per_apply(WriteMode::Append, 5 << 30, 1000), 6 * MB10 + 1000);
        assert_eq!(estimated_bytes_per_apply(WriteMode::Upsert, 5 << 30, 1000), 6 * MB10 + 1000 + (5 << 30));
    }

    #[test]
    fn bytes_per_day_is_applies_a_day_times_bytes() {
        assert_eq!(bytes_per_day(60 * MB10, 60), 1440 * 60 * MB10);
        assert_eq!(bytes_per_day(100, 86_400), 100);
        assert_eq!(bytes_per_day(u64::MAX, 1), u64::MAX, "saturates");
    }

    #[test]
    fn no_budget_keeps_the_configured_intervals() {
        let c = stretch_intervals(&[(MB10, 60), (MB10, 300)], 0, 3600);
        assert_eq!(c.intervals, [60, 300]);
        assert_eq!(c.bytes_per_day, MB10 * 1440 + MB10 * 288);
        assert!(!c.over_budget);
    }

    #[test]
    fn a_budget_within_the_forecast_changes_nothing() {
        let c = stretch_intervals(&[(MB10, 60)], MB10 * 1440, 3600);
        assert_eq!(c.intervals, [60]);
        assert!(!c.over_budget);
    }

    /// 60 s and 300 s applies of 10 MB bill 1,728 × 10 MB a day; a budget of 432 × 10 MB is a
    /// quarter of it, so both intervals stretch by 4.
    #[test]
    fn a_tight_budget_stretches_every_interval_by_one_factor() {
        let c = stretch_intervals(&[(MB10, 60), (MB10, 300)], 432 * MB10, 3600);
        assert_eq!(c.intervals, [240, 1200]);
        assert_eq!(c.bytes_per_day, 432 * MB10);
        assert!(!c.over_budget);
    }

    /// Table A (1 GB a 60 s apply) would need 14,400 s for a 6 GB budget; capped at 3600 s it bills
    /// 24 GB, over the budget alone, so B goes to the cap as well and the result is over budget.
    #[test]
    fn caps_pass_the_rest_of_the_budget_on_and_report_when_nothing_fits() {
        let gb = 1u64 << 30;
        let c = stretch_intervals(&[(gb, 60), (MB10, 60)], 6 * gb, 3600);
        assert_eq!(c.intervals, [3600, 3600]);
        assert!(c.over_budget);
        assert_eq!(c.bytes_per_day, 24 * gb + 24 * MB10);
        // B (1 GB every 600 s) reaches the cap at a factor of 6.3 and then bills 2,400 × 10 MB;
        // A (10 MB every 60 s) gets the 100 × 10 MB left: 864 s, more than the common factor gave it.
        let c = stretch_intervals(&[(MB10, 60), (100 * MB10, 600)], 2_500 * MB10, 3600);
        assert_eq!(c.intervals, [864, 3600]);
        assert_eq!(c.bytes_per_day, 2_500 * MB10);
        assert!(!c.over_budget);
    }

    #[test]
    fn a_configured_interval_longer_than_the_cap_is_never_shortened() {
        let c = stretch_intervals(&[(MB10, 7200)], 1, 3600);
        assert_eq!(c.intervals, [7200]);
        assert!(c.over_budget);
    }
}
