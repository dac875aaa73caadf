//! The applier: moves landed rows into their tables, one BigQuery transaction per table and apply
//! (the script is in [`super::apply_sql`]).
//!
//! Invariants:
//! - **Exactly once.** A window `(lo, hi]` is applied by exactly one committed transaction: the
//!   watermark's compare-and-set rolls back any other, and BigQuery cancels concurrent conflicting
//!   transactions. An applier killed anywhere leaves either the whole transaction or nothing.
//! - **Nothing skipped.** The window ends `settle_margin` before BigQuery's now, which exceeds the
//!   longest append attempt: a row is visible before the watermark passes its landing time. (A late
//!   copy of an attempt that timed out may land behind the watermark; its retry, stamped anew, is
//!   applied instead.)
//! - **Bounded jobs.** Each worker applies each table at its interval with ±10 % jitter, and the
//!   script skips, before any transaction, when another applier committed within the interval: per
//!   table at most one committed apply per interval, however many workers run (the others' checks
//!   read only the small state table). DML quotas are per table: 25 statements per 10 s, 2 mutating
//!   statements running and 20 queued (Google, "Quotas and limits: DML statements").
//!
//! Where it runs: inside every worker by default (`applier = "worker"`), or only where `bqsync
//! apply` runs (`applier = "external"`). One-shot runs apply what they landed before they return.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::apply_sql::{apply_script, watermark_moved, ApplyWindow};
use super::client::{billed_bytes, is_retryable_message, is_retryable_reason, job_error, number, request_policy};
use super::sql as bsql;
use super::BigQueryWarehouse;
use crate::schema::{TableSchema, WriteMode};
use crate::shutdown::Shutdown;
use crate::warehouse::WarehouseError;

/// How one apply ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplyOutcome {
    /// The transaction committed.
    Applied,
    /// Applied recently elsewhere, or nothing to apply: no transaction ran.
    Skipped,
    /// Another applier committed the window first: rolled back.
    LostRace,
}

impl ApplyOutcome {
    /// Its name in logs, metrics and `bqsync apply`.
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyOutcome::Applied => "applied",
            ApplyOutcome::Skipped => "skipped",
            ApplyOutcome::LostRace => "lost_race",
        }
    }
}

/// What one apply of a table did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ApplyReport {
    pub table: String,
    pub outcome: ApplyOutcome,
    /// Rows inserted (append) or changed (upsert).
    pub rows: u64,
    /// The watermark after the apply, in microseconds (0 when unknown).
    pub watermark_micros: i64,
    pub job_id: String,
    pub bytes_billed: u64,
    pub millis: u64,
}

impl BigQueryWarehouse {
    /// The apply interval of a table in force: as a daily byte budget stretched it, else configured.
    pub fn apply_interval(&self, schema: &TableSchema) -> Duration {
        if let Some(stretched) = self.intervals.lock().unwrap_or_else(|p| p.into_inner()).get(&schema.table) {
            return *stretched;
        }
        Duration::from_secs(self.configured_interval(schema.write_mode))
    }

    /// The configured apply interval of a write mode, in seconds.
    pub(super) fn configured_interval(&self, mode: WriteMode) -> u64 {
        match mode {
            WriteMode::Append => self.config.append_apply_interval_secs,
            WriteMode::Upsert => self.config.upsert_apply_interval_secs,
        }
    }

    /// Sleeps until the settle margin has passed since an append at `newest_micros`: the apply
    /// window then covers it.
    async fn wait_out_settle_margin(&self, newest_micros: i64) {
        let ready_at = newest_micros + (self.config.settle_margin_secs as i64 + 1) * 1_000_000;
        let wait = ready_at - chrono::Utc::now().timestamp_micros();
        if wait > 0 {
            tracing::info!(wait_ms = wait / 1000, "waiting out the settle margin before applying");
            tokio::time::sleep(Duration::from_micros(wait as u64)).await;
        }
    }

    /// Applies one table once; skips when another apply committed less than `min_gap` ago.
    pub async fn apply_table(&self, schema: &TableSchema, min_gap: Duration) -> Result<ApplyReport, WarehouseError> {
        self.guard.check_writable(&schema.table).map_err(|r| WarehouseError::CostGuard(r.to_string()))?;
        // The budget, against what was billed so far (an apply script has no dry-run estimate).
        self.guard.check_estimate(0).map_err(|r| WarehouseError::CostGuard(r.to_string()))?;
        self.guard.start_query().map_err(|r| WarehouseError::CostGuard(r.to_string()))?;
        let started = Instant::now();
        let dataset = super::job_id_part(&self.rest.dataset);
        let job_id = format!(
            "bqsync_apply_{dataset}_{}_{}_{:04x}",
            schema.table,
            chrono::Utc::now().timestamp_micros(),
            fastrand::u16(..)
        );
        let (target, landing, state) = (
            self.rest.path(&schema.table),
            self.rest.path(&bsql::landing_table(&schema.table)),
            self.rest.path(bsql::STATE_TABLE),
        );
        let staging = self.staging_tables(&schema.table).await?;
        let staged: Vec<String> = staging.iter().map(|t| self.rest.path(t)).collect();
        let window = ApplyWindow {
            target: &target,
            landing: &landing,
            state: &state,
            settle_margin_secs: self.config.settle_margin_secs,
            min_gap_ms: min_gap.as_millis() as u64,
            dedup_window_days: self.config.append_dedup_window_days,
            job_id: &job_id,
            staged: &staged,
        };
        let job = self.guard.query_job(
            &self.rest.project,
            Some(&self.rest.location),
            Some(&job_id),
            &apply_script(schema, &window),
        );
        self.counters.query_jobs.fetch_add(1, Ordering::Relaxed);
        let job = self.rest.run_job(&job_id, job).await?;
        let billed = billed_bytes(&job);
        self.guard.record_billed(billed);
        self.billed_per_apply.lock().unwrap_or_else(|p| p.into_inner()).insert(schema.table.clone(), billed);
        crate::metrics::global().set_bytes_billed(self.guard.billed());
        let mut report = ApplyReport {
            table: schema.table.clone(),
            outcome: ApplyOutcome::Applied,
            rows: 0,
            watermark_micros: 0,
            job_id: job_id.clone(),
            bytes_billed: billed,
            millis: started.elapsed().as_millis() as u64,
        };
        if let Some((reason, message)) = job_error(&job) {
            if message.contains(&watermark_moved(&schema.table)) {
                report.outcome = ApplyOutcome::LostRace;
            } else {
                let transient = is_retryable_reason(&reason) || is_retryable_message(&message);
                return Err(WarehouseError::BigQuery { context: format!("apply job {job_id}"), message, transient });
            }
        } else {
            let rows = self.rest.job_rows(&job_id).await?;
            let last = rows.last().cloned().unwrap_or_default();
            // The script's last row names the outcome as `ApplyOutcome::as_str` does.
            let applied = last.first().and_then(|v| v.as_str()) == Some(ApplyOutcome::Applied.as_str());
            report.outcome = if applied { ApplyOutcome::Applied } else { ApplyOutcome::Skipped };
            report.rows = number(last.get(1));
            report.watermark_micros = number(last.get(2)) as i64;
            if applied {
                self.drop_staging(&staging).await;
            }
        }
        self.record(&report, schema);
        Ok(report)
    }

    fn record(&self, report: &ApplyReport, schema: &TableSchema) {
        let lag = if report.watermark_micros > 0 {
            (chrono::Utc::now().timestamp_micros() - report.watermark_micros) / 1_000_000
        } else {
            0
        };
        crate::metrics::global().applied(
            &report.table,
            report.outcome.as_str(),
            report.rows,
            report.millis as f64 / 1000.0,
            lag,
        );
        if report.outcome == ApplyOutcome::Applied {
            self.counters.applies.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                table = %report.table, rows = report.rows, job_id = %report.job_id, bytes_billed = report.bytes_billed,
                millis = report.millis, apply_lag_s = lag, "applied"
            );
        } else {
            tracing::debug!(table = %report.table, outcome = report.outcome.as_str(), job_id = %report.job_id, "apply not needed");
        }
        let expiry_secs = i64::from(self.config.landing_expiration_days) * 86_400;
        if lag > expiry_secs / 2 && report.watermark_micros > 0 {
            tracing::error!(
                table = %schema.table, apply_lag_s = lag, landing_expiration_days = self.config.landing_expiration_days,
                "the apply is far behind: landed rows expire before they are applied"
            );
        }
    }

    /// Runs the applier until `shutdown` stops: each table at its interval, ±10 % jitter. A failed
    /// apply is logged and tried again at the next interval (nothing is lost: rows wait landed).
    pub async fn run_applier(&self, shutdown: Shutdown) {
        // CDC tables are applied by BigQuery itself (see `cdc`).
        let tables: Vec<TableSchema> = self.catalog.tables().filter(|t| !t.cdc).cloned().collect();
        let budgeted = self.guard.config().daily_byte_budget > 0;
        if budgeted {
            self.steer_cadence().await;
        }
        let mut next_forecast = Instant::now() + super::cost::FORECAST_EVERY;
        let jittered = |interval: Duration| interval.mul_f64(0.9 + fastrand::f64() * 0.2);
        let mut due: Vec<Instant> = tables.iter().map(|t| Instant::now() + jittered(self.apply_interval(t))).collect();
        loop {
            if budgeted && Instant::now() >= next_forecast {
                self.steer_cadence().await;
                next_forecast = Instant::now() + super::cost::FORECAST_EVERY;
            }
            let next = due.iter().min().copied().unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
            let next = if budgeted { next.min(next_forecast) } else { next };
            tokio::select! {
                _ = shutdown.stopped() => return,
                _ = tokio::time::sleep_until(next.into()) => {}
            }
            for (table, due) in tables.iter().zip(due.iter_mut()) {
                if *due > Instant::now() {
                    continue;
                }
                let interval = self.apply_interval(table);
                if let Err(error) = self.apply_table(table, interval).await {
                    tracing::warn!(table = %table.table, %error, "apply failed; trying again next interval");
                }
                *due = Instant::now() + jittered(interval);
            }
        }
    }

    /// Applies every table this process landed rows to, up to its newest append: waits until the
    /// settle margin has passed since then, and applies again while another applier's commit left
    /// the watermark short of it.
    pub async fn apply_landed(&self) -> Result<Vec<ApplyReport>, WarehouseError> {
        let landed: Vec<String> =
            self.landed_tables.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect();
        let newest = self.counters.newest_append_micros.load(Ordering::Relaxed);
        if landed.is_empty() {
            return Ok(Vec::new());
        }
        self.wait_out_settle_margin(newest).await;
        let mut reports = Vec::new();
        for table in &landed {
            let schema = self.catalog.get(table).ok_or_else(|| WarehouseError::UnknownTable(table.clone()))?;
            let mut report = self.apply_retrying(schema).await?;
            for _ in 0..5 {
                if report.watermark_micros >= newest || report.outcome == ApplyOutcome::Applied {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                report = self.apply_retrying(schema).await?;
            }
            reports.push(report);
        }
        Ok(reports)
    }

    /// Applies one table now, waiting out the settle margin for what this process appended
    /// (`bqsync backfill`, `bqsync load --once`).
    pub async fn apply_now(&self, table: &str) -> Result<ApplyReport, WarehouseError> {
        let schema = self.catalog.get(table).ok_or_else(|| WarehouseError::UnknownTable(table.to_string()))?;
        let newest = self.counters.newest_append_micros.load(Ordering::Relaxed);
        if newest > 0 {
            self.wait_out_settle_margin(newest).await;
        }
        let report = self.apply_retrying(schema).await?;
        tracing::info!(table, outcome = report.outcome.as_str(), rows = report.rows, "applied");
        Ok(report)
    }

    /// Applies every table now, whatever it landed (`bqsync apply`).
    pub async fn apply_all(&self) -> Result<Vec<ApplyReport>, WarehouseError> {
        let mut reports = Vec::new();
        for table in self.catalog.tables().filter(|t| !t.cdc) {
            reports.push(self.apply_retrying(table).await?);
        }
        Ok(reports)
    }

    /// [`Self::apply_table`] now, retried on transient failures (a transaction BigQuery cancelled
    /// for a concurrent one, a restarting service) by the request policy.
    async fn apply_retrying(&self, schema: &TableSchema) -> Result<ApplyReport, WarehouseError> {
        let on_retry = |error: &WarehouseError, wait: Duration| {
            tracing::warn!(table = %schema.table, %error, retry_in_ms = wait.as_millis() as u64, "apply failed; retrying");
        };
        crate::retry::retry(request_policy(&self.config), on_retry, || self.apply_table(schema, Duration::ZERO)).await
    }
}
