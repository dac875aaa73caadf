//! The worker's progress line: what landed per table, at INFO, at most once per interval (so a
//! service landing rows says so, and a busy one does not flood its log), in words rather than
//! debug structs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::warehouse::LandStats;

/// Sums landings per table and logs them when `every` has passed since the last line.
pub(super) struct ProgressLog {
    every: Duration,
    last: Option<Instant>,
    tables: BTreeMap<String, TableProgress>,
}

#[derive(Default)]
struct TableProgress {
    offered: u64,
    new: u64,
    flushes: u64,
    /// Largest end-to-end lag (produced → landed) seen, in seconds.
    max_lag_secs: f64,
}

impl ProgressLog {
    pub(super) fn new(every: Duration) -> ProgressLog {
        ProgressLog { every, last: None, tables: BTreeMap::new() }
    }

    /// Counts one table's landing of a committed flush.
    pub(super) fn record(&mut self, table: &str, stats: &LandStats, max_lag_secs: Option<f64>) {
        let progress = self.tables.entry(table.to_string()).or_default();
        progress.offered += stats.rows_offered;
        progress.new += stats.rows_changed;
        progress.flushes += 1;
        progress.max_lag_secs = progress.max_lag_secs.max(max_lag_secs.unwrap_or(0.0));
    }

    /// Logs what landed since the last line, if the interval passed (the first landing at once).
    pub(super) fn log_if_due(&mut self) {
        if self.last.is_none_or(|last| last.elapsed() >= self.every) {
            self.log_now();
        }
    }

    /// Logs what landed since the last line, if anything did.
    pub(super) fn log_now(&mut self) {
        if self.tables.is_empty() {
            return;
        }
        for (table, p) in std::mem::take(&mut self.tables) {
            tracing::info!(table = %table, "{}", describe(&table, &p));
        }
        self.last = Some(Instant::now());
    }
}

fn describe(table: &str, p: &TableProgress) -> String {
    let flushes = if p.flushes == 1 { "1 flush".to_string() } else { format!("{} flushes", p.flushes) };
    format!(
        "landed {table}: {} rows in {flushes}, {} new, {} already present; lag up to {:.1} s",
        p.offered,
        p.new,
        p.offered - p.new,
        p.max_lag_secs
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_says_rows_new_already_present_and_lag_in_words() {
        let mut log = ProgressLog::new(Duration::from_secs(60));
        log.record("atoms", &LandStats { rows_offered: 300, rows_changed: 250 }, Some(1.25));
        log.record("atoms", &LandStats { rows_offered: 5, rows_changed: 1 }, Some(0.5));
        let text = describe("atoms", &log.tables["atoms"]);
        assert_eq!(text, "landed atoms: 305 rows in 2 flushes, 251 new, 54 already present; lag up to 1.2 s");
        log.log_if_due();
        assert!(log.tables.is_empty(), "the first landing is logged at once");
        log.record("atoms", &LandStats { rows_offered: 1, rows_changed: 1 }, None);
        log.log_if_due();
        assert_eq!(log.tables["atoms"].offered, 1, "held until the interval passed");
    }
}
