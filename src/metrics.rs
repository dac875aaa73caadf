//! Process metrics, kept in one `prometheus-client` registry and rendered as OpenMetrics text on the
//! admin server's `/metrics` (and exported over OTLP when configured).
//!
//! One global registry, like the Prometheus client libraries' default one: the worker, sources and
//! warehouses record into it from wherever they are, without threading a handle through every
//! constructor. Counters only go up; gauges are set by their owner.
//!
//! `prometheus-client` offers no way to list a family's label sets, which `/status` (per table) and
//! the OTLP export need; the label sets seen are therefore kept beside the families.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, OnceLock};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Buckets of the batch-size histogram (rows).
const ROW_BUCKETS: [f64; 8] = [1.0, 10.0, 100.0, 500.0, 1_000.0, 5_000.0, 10_000.0, 50_000.0];
/// Buckets of the latency histograms (seconds).
const SECOND_BUCKETS: [f64; 10] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0];

/// A series' labels, in order.
type Labels = Vec<(&'static str, String)>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// One counter or gauge value: (name, labels, value).
pub type Sample = (&'static str, Vec<(&'static str, String)>, f64);

fn row_histogram() -> Histogram {
    Histogram::new(ROW_BUCKETS)
}

fn second_histogram() -> Histogram {
    Histogram::new(SECOND_BUCKETS)
}

/// A labelled counter and the label values it has seen.
#[derive(Default)]
struct Counted {
    family: Family<Labels, Counter>,
    seen: Mutex<BTreeSet<Vec<String>>>,
    names: &'static [&'static str],
}

impl Counted {
    fn new(names: &'static [&'static str]) -> Counted {
        Counted { names, ..Counted::default() }
    }

    fn labels(&self, values: &[&str]) -> Labels {
        self.names.iter().copied().zip(values.iter().map(|v| v.to_string())).collect()
    }

    fn add(&self, values: &[&str], by: u64) {
        self.family.get_or_create(&self.labels(values)).inc_by(by);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if !seen.iter().any(|s| s.iter().map(String::as_str).eq(values.iter().copied())) {
            seen.insert(values.iter().map(|v| v.to_string()).collect());
        }
    }

    fn get(&self, values: &[&str]) -> u64 {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if !seen.iter().any(|s| s.iter().map(String::as_str).eq(values.iter().copied())) {
            return 0;
        }
        drop(seen);
        self.family.get_or_create(&self.labels(values)).get()
    }

    fn seen(&self) -> Vec<Vec<String>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }
}

/// Totals of a process so far (see [`Metrics::totals`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub published: u64,
    pub offered: u64,
    pub landed_new: u64,
    pub dead_lettered: u64,
}

/// The registry.
pub struct Metrics {
    registry: Registry,
    events_in: Counted,
    rows_landed: Counted,
    rows_offered: Counted,
    dead_letters: Counted,
    events_published: Counted,
    batch_rows: Histograms,
    flush_seconds: Histogram,
    lag_seconds: Histograms,
    checkpoint_lag_bytes: Family<Labels, Gauge>,
    redeliveries: Counter,
    flushes: Counter,
    failed_flushes: Counter,
    outstanding: Gauge,
    bytes_billed: Counter,
    circuit_open: Gauge,
    apply_jobs: Counted,
    rows_applied: Counted,
    apply_seconds: Histograms,
    apply_lag_seconds: Family<Labels, Gauge>,
    apply_interval_seconds: Family<Labels, Gauge>,
    cost_forecast_bytes: Gauge,
    cost_over_budget: Gauge,
    /// When each table last landed (µs), for `/status`; not a metric.
    last_landed_micros: Mutex<BTreeMap<String, i64>>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut m = Metrics {
            registry: Registry::default(),
            events_in: Counted::new(&["table"]),
            rows_landed: Counted::new(&["table"]),
            rows_offered: Counted::new(&["table"]),
            dead_letters: Counted::new(&["table", "reason"]),
            events_published: Counted::new(&["source"]),
            batch_rows: Histograms::new_with_constructor(row_histogram),
            flush_seconds: second_histogram(),
            lag_seconds: Histograms::new_with_constructor(second_histogram),
            checkpoint_lag_bytes: Family::default(),
            redeliveries: Counter::default(),
            flushes: Counter::default(),
            failed_flushes: Counter::default(),
            outstanding: Gauge::default(),
            bytes_billed: Counter::default(),
            circuit_open: Gauge::default(),
            apply_jobs: Counted::new(&["table", "outcome"]),
            rows_applied: Counted::new(&["table"]),
            apply_seconds: Histograms::new_with_constructor(second_histogram),
            apply_lag_seconds: Family::default(),
            apply_interval_seconds: Family::default(),
            cost_forecast_bytes: Gauge::default(),
            cost_over_budget: Gauge::default(),
            last_landed_micros: Mutex::new(BTreeMap::new()),
        };
        m.register_all();
        m
    }
}

/// The process's registry.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

impl Metrics {
    /// Names and helps; counters get their `_total` suffix from the encoder.
    fn register_all(&mut self) {
        let r = &mut self.registry;
        r.register("bqsync_events_in", "Deliveries accepted by the worker", self.events_in.family.clone());
        r.register("bqsync_rows_landed", "Rows inserted or updated in the warehouse", self.rows_landed.family.clone());
        r.register(
            "bqsync_rows_offered",
            "Rows offered to the warehouse (committed flushes)",
            self.rows_offered.family.clone(),
        );
        r.register("bqsync_dead_letters", "Events dead-lettered by the worker", self.dead_letters.family.clone());
        r.register("bqsync_events_published", "Events published by sources", self.events_published.family.clone());
        r.register("bqsync_redeliveries", "Deliveries seen again (attempt > 1)", self.redeliveries.clone());
        r.register("bqsync_flushes", "Flushes committed", self.flushes.clone());
        r.register("bqsync_failed_flushes", "Flush attempts that failed (retried)", self.failed_flushes.clone());
        r.register("bqsync_outstanding_messages", "Deliveries held unacked by the worker", self.outstanding.clone());
        r.register(
            "bqsync_bigquery_bytes_billed",
            "Bytes billed by BigQuery jobs of this process",
            self.bytes_billed.clone(),
        );
        r.register(
            "bqsync_circuit_open",
            "1 while the warehouse is failing and pulling is paused",
            self.circuit_open.clone(),
        );
        r.register(
            "bqsync_checkpoint_lag_bytes",
            "Bytes written to a source's files but not yet published",
            self.checkpoint_lag_bytes.clone(),
        );
        r.register(
            "bqsync_apply_jobs",
            "BigQuery apply jobs by outcome (applied, skipped, lost_race)",
            self.apply_jobs.family.clone(),
        );
        r.register(
            "bqsync_rows_applied",
            "Rows the BigQuery applier inserted or changed",
            self.rows_applied.family.clone(),
        );
        r.register("bqsync_apply_seconds", "Duration of a BigQuery apply job", self.apply_seconds.clone());
        r.register(
            "bqsync_apply_lag_seconds",
            "Now minus the table's apply watermark, at the last apply",
            self.apply_lag_seconds.clone(),
        );
        r.register(
            "bqsync_apply_interval_seconds",
            "The apply interval in force per table (stretched by a daily byte budget)",
            self.apply_interval_seconds.clone(),
        );
        r.register(
            "bqsync_cost_forecast_bytes_per_day",
            "Bytes the applies are forecast to bill a day at the intervals in force",
            self.cost_forecast_bytes.clone(),
        );
        r.register(
            "bqsync_cost_over_budget",
            "1 while even the longest apply intervals would bill more than the daily byte budget",
            self.cost_over_budget.clone(),
        );
        r.register("bqsync_batch_rows", "Rows per committed table batch", self.batch_rows.clone());
        r.register("bqsync_flush_seconds", "Time to commit a flush", self.flush_seconds.clone());
        r.register("bqsync_end_to_end_lag_seconds", "From produced_at to landed, per event", self.lag_seconds.clone());
    }

    /// `events` deliveries for `table` were accepted by the worker, `redelivered` of them seen again
    /// (attempt > 1). Counted per table and pull, not per event: each call takes the family's lock.
    pub fn events_in(&self, table: &str, events: u64, redelivered: u64) {
        self.events_in.add(&[table], events);
        self.redeliveries.inc_by(redelivered);
    }

    pub fn dead_letter(&self, table: &str, reason: &str) {
        self.dead_letters.add(&[table, reason], 1);
    }

    /// A table's batch committed: rows offered, rows changed.
    pub fn landed(&self, table: &str, offered: u64, changed: u64) {
        self.rows_offered.add(&[table], offered);
        self.rows_landed.add(&[table], changed);
        self.batch_rows.get_or_create(&vec![("table", table.to_string())]).observe(offered as f64);
        let mut last = self.last_landed_micros.lock().unwrap_or_else(|p| p.into_inner());
        last.insert(table.to_string(), chrono::Utc::now().timestamp_micros());
    }

    /// Per table: events in, rows landed, dead letters, last landing (for `/status`).
    pub fn table_status(&self) -> BTreeMap<String, serde_json::Value> {
        let dead = self.dead_letters.seen();
        let last = self.last_landed_micros.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let names: BTreeSet<String> = [self.events_in.seen(), self.rows_landed.seen(), dead.clone()]
            .into_iter()
            .flatten()
            .map(|values| values[0].clone())
            .collect();
        let mut tables = BTreeMap::new();
        for table in names {
            let dead_letters: u64 = dead
                .iter()
                .filter(|values| values[0] == table)
                .map(|values| self.dead_letters.get(&[&values[0], &values[1]]))
                .sum();
            let last_landed =
                last.get(&table).and_then(|m| chrono::DateTime::from_timestamp_micros(*m)).map(|t| t.to_rfc3339());
            let status = serde_json::json!({
                "events_in": self.events_in.get(&[&table]),
                "rows_offered": self.rows_offered.get(&[&table]),
                "rows_landed": self.rows_landed.get(&[&table]),
                "dead_letters": dead_letters,
                "last_landed_at": last_landed,
            });
            tables.insert(table, status);
        }
        tables
    }

    /// A flush (all its tables) took `seconds` to commit, or failed.
    pub fn flush(&self, seconds: f64, ok: bool) {
        if ok {
            self.flushes.inc();
            self.flush_seconds.observe(seconds);
        } else {
            self.failed_flushes.inc();
        }
    }

    /// End-to-end lag of a table's events, produced → landed: one series lookup for them all.
    pub fn lag(&self, table: &str, seconds: impl IntoIterator<Item = f64>) {
        let histogram = self.lag_seconds.get_or_create(&vec![("table", table.to_string())]);
        for value in seconds {
            histogram.observe(value.max(0.0));
        }
    }

    pub fn set_outstanding(&self, messages: i64) {
        self.outstanding.set(messages);
    }

    /// The BigQuery bytes billed so far by this process (a running total).
    pub fn set_bytes_billed(&self, bytes: u64) {
        let counted = self.bytes_billed.get();
        if bytes > counted {
            self.bytes_billed.inc_by(bytes - counted);
        }
    }

    /// One BigQuery apply job of `table`: its outcome, rows, duration and the watermark's lag.
    pub fn applied(&self, table: &str, outcome: &str, rows: u64, seconds: f64, lag_seconds: i64) {
        self.apply_jobs.add(&[table, outcome], 1);
        self.rows_applied.add(&[table], rows);
        self.apply_seconds.get_or_create(&vec![("table", table.to_string())]).observe(seconds);
        self.apply_lag_seconds.get_or_create(&vec![("table", table.to_string())]).set(lag_seconds);
    }

    /// The apply cadence the cost forecast chose: each table's interval, the day's forecast bytes,
    /// and whether it is over the daily budget.
    pub fn apply_cadence(&self, intervals: &[(String, u64)], forecast_bytes: u64, over_budget: bool) {
        for (table, secs) in intervals {
            self.apply_interval_seconds.get_or_create(&vec![("table", table.clone())]).set(*secs as i64);
        }
        self.cost_forecast_bytes.set(forecast_bytes.min(i64::MAX as u64) as i64);
        self.cost_over_budget.set(i64::from(over_budget));
    }

    pub fn set_circuit_open(&self, open: bool) {
        self.circuit_open.set(i64::from(open));
    }

    pub fn published(&self, source: &str, events: u64) {
        self.events_published.add(&[source], events);
    }

    pub fn set_checkpoint_lag(&self, source: &str, bytes: i64) {
        self.checkpoint_lag_bytes.get_or_create(&vec![("source", source.to_string())]).set(bytes);
    }

    /// Totals over every table and source so far, for a one-shot run's progress line (dead letters
    /// are not rows offered).
    pub fn totals(&self) -> Totals {
        let sum = |counted: &Counted| -> u64 {
            counted
                .seen()
                .iter()
                .map(|values| counted.get(&values.iter().map(String::as_str).collect::<Vec<_>>()))
                .sum()
        };
        let dead_letter_rows = |counted: &Counted| counted.get(&[crate::dead_letter::DEAD_LETTER_TABLE]);
        Totals {
            published: sum(&self.events_published),
            offered: sum(&self.rows_offered) - dead_letter_rows(&self.rows_offered),
            landed_new: sum(&self.rows_landed) - dead_letter_rows(&self.rows_landed),
            dead_lettered: sum(&self.dead_letters),
        }
    }

    /// Rows landed per table so far (for tests and status).
    pub fn rows_landed(&self, table: &str) -> u64 {
        self.rows_landed.get(&[table])
    }

    /// Counter and gauge values with their labels, for the OTLP exporter: (name, labels, value).
    pub fn samples(&self) -> Vec<Sample> {
        let mut out = Vec::new();
        let labelled: [(&'static str, &Counted); 5] = [
            ("bqsync.events_in", &self.events_in),
            ("bqsync.rows_landed", &self.rows_landed),
            ("bqsync.rows_offered", &self.rows_offered),
            ("bqsync.dead_letters", &self.dead_letters),
            ("bqsync.events_published", &self.events_published),
        ];
        for (name, counted) in labelled {
            for values in counted.seen() {
                let refs: Vec<&str> = values.iter().map(String::as_str).collect();
                out.push((name, counted.labels(&refs), counted.get(&refs) as f64));
            }
        }
        out.push(("bqsync.redeliveries", Vec::new(), self.redeliveries.get() as f64));
        out.push(("bqsync.flushes", Vec::new(), self.flushes.get() as f64));
        out.push(("bqsync.outstanding_messages", Vec::new(), self.outstanding.get() as f64));
        out.push(("bqsync.bigquery_bytes_billed", Vec::new(), self.bytes_billed.get() as f64));
        out
    }

    /// The registry in the OpenMetrics text format (which Prometheus scrapes).
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms_in_prometheus_text() {
        let m = Metrics::default();
        m.events_in("atoms", 2, 1);
        m.landed("atoms", 2, 2);
        m.dead_letter("atoms", "schema");
        m.lag("atoms", [0.3]);
        let text = m.render();
        assert!(text.contains("bqsync_events_in_total{table=\"atoms\"} 2"), "{text}");
        assert!(text.contains("bqsync_redeliveries_total 1"), "{text}");
        assert!(text.contains("bqsync_rows_landed_total{table=\"atoms\"} 2"), "{text}");
        assert!(text.contains("bqsync_dead_letters_total{table=\"atoms\",reason=\"schema\"} 1"), "{text}");
        // prometheus-client writes `le` first; Prometheus reads labels in any order.
        assert!(text.contains("bqsync_end_to_end_lag_seconds_bucket{le=\"0.25\",table=\"atoms\"} 0"), "{text}");
        assert!(text.contains("bqsync_end_to_end_lag_seconds_bucket{le=\"0.5\",table=\"atoms\"} 1"), "{text}");
        assert!(text.contains("bqsync_batch_rows_count{table=\"atoms\"} 1"), "{text}");
        assert_eq!(m.rows_landed("atoms"), 2);
    }
}
