//! Process metrics, kept in one registry and rendered as Prometheus text on the admin server's
//! `/metrics` (and exported over OTLP when configured).
//!
//! One global registry, like the Prometheus client libraries' default one: the worker, sources and
//! warehouses record into it from wherever they are, without threading a handle through every
//! constructor. Counters only go up; gauges are set by their owner.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// Buckets of the batch-size histogram (rows).
const ROW_BUCKETS: [f64; 8] = [1.0, 10.0, 100.0, 500.0, 1_000.0, 5_000.0, 10_000.0, 50_000.0];
/// Buckets of the latency histograms (seconds).
const SECOND_BUCKETS: [f64; 10] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0];

/// A histogram with fixed buckets.
#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Cumulative counts per bucket bound, then +Inf.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], value: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; bounds.len() + 1];
        }
        for (i, bound) in bounds.iter().enumerate() {
            if value <= *bound {
                self.counts[i] += 1;
            }
        }
        self.counts[bounds.len()] += 1;
        self.sum += value;
        self.count += 1;
    }
}

/// Labelled series: label values → value.
type Series<T> = Mutex<BTreeMap<Vec<String>, T>>;

/// One counter or gauge value: (name, labels, value).
pub type Sample = (&'static str, Vec<(&'static str, String)>, f64);

/// The registry.
#[derive(Debug, Default)]
pub struct Metrics {
    events_in: Series<u64>,
    rows_landed: Series<u64>,
    rows_offered: Series<u64>,
    dead_letters: Series<u64>,
    batch_rows: Series<Histogram>,
    flush_seconds: Series<Histogram>,
    lag_seconds: Series<Histogram>,
    checkpoint_lag_bytes: Series<i64>,
    last_landed_micros: Series<i64>,
    events_published: Series<u64>,
    redeliveries: AtomicU64,
    flushes: AtomicU64,
    failed_flushes: AtomicU64,
    outstanding: AtomicI64,
    bytes_billed: AtomicU64,
    circuit_open: AtomicI64,
}

/// The process's registry.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

fn add(series: &Series<u64>, labels: &[&str], by: u64) {
    let mut map = series.lock().unwrap_or_else(|p| p.into_inner());
    *map.entry(labels.iter().map(|l| l.to_string()).collect()).or_default() += by;
}

fn observe(series: &Series<Histogram>, labels: &[&str], bounds: &[f64], value: f64) {
    let mut map = series.lock().unwrap_or_else(|p| p.into_inner());
    map.entry(labels.iter().map(|l| l.to_string()).collect()).or_default().observe(bounds, value);
}

impl Metrics {
    /// A delivery for `table` was accepted by the worker (`redelivered` when its attempt > 1).
    pub fn event_in(&self, table: &str, redelivered: bool) {
        add(&self.events_in, &[table], 1);
        if redelivered {
            self.redeliveries.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn dead_letter(&self, table: &str, reason: &str) {
        add(&self.dead_letters, &[table, reason], 1);
    }

    /// A table's batch committed: rows offered, rows changed.
    pub fn landed(&self, table: &str, offered: u64, changed: u64) {
        add(&self.rows_offered, &[table], offered);
        add(&self.rows_landed, &[table], changed);
        observe(&self.batch_rows, &[table], &ROW_BUCKETS, offered as f64);
        let mut last = self.last_landed_micros.lock().unwrap_or_else(|p| p.into_inner());
        last.insert(vec![table.to_string()], chrono::Utc::now().timestamp_micros());
    }

    /// Per table: events in, rows landed, dead letters, last landing (for `/status`).
    pub fn table_status(&self) -> BTreeMap<String, serde_json::Value> {
        let read = |series: &Series<u64>| series.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (events, landed, offered) = (read(&self.events_in), read(&self.rows_landed), read(&self.rows_offered));
        let dead = read(&self.dead_letters);
        let last = self.last_landed_micros.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut tables: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        let names: std::collections::BTreeSet<String> =
            events.keys().chain(landed.keys()).chain(dead.keys()).map(|k| k[0].clone()).collect();
        for table in names {
            let key = vec![table.clone()];
            let dead_letters: u64 = dead.iter().filter(|(k, _)| k[0] == table).map(|(_, n)| n).sum();
            let last_landed =
                last.get(&key).and_then(|m| chrono::DateTime::from_timestamp_micros(*m)).map(|t| t.to_rfc3339());
            tables.insert(
                table,
                serde_json::json!({
                    "events_in": events.get(&key).copied().unwrap_or(0),
                    "rows_offered": offered.get(&key).copied().unwrap_or(0),
                    "rows_landed": landed.get(&key).copied().unwrap_or(0),
                    "dead_letters": dead_letters,
                    "last_landed_at": last_landed,
                }),
            );
        }
        tables
    }

    /// A flush (all its tables) took `seconds` to commit, or failed.
    pub fn flush(&self, seconds: f64, ok: bool) {
        if ok {
            self.flushes.fetch_add(1, Ordering::Relaxed);
            observe(&self.flush_seconds, &[], &SECOND_BUCKETS, seconds);
        } else {
            self.failed_flushes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// End-to-end lag of one event: produced → landed.
    pub fn lag(&self, table: &str, seconds: f64) {
        observe(&self.lag_seconds, &[table], &SECOND_BUCKETS, seconds.max(0.0));
    }

    pub fn set_outstanding(&self, messages: i64) {
        self.outstanding.store(messages, Ordering::Relaxed);
    }

    pub fn set_bytes_billed(&self, bytes: u64) {
        self.bytes_billed.store(bytes, Ordering::Relaxed);
    }

    pub fn set_circuit_open(&self, open: bool) {
        self.circuit_open.store(i64::from(open), Ordering::Relaxed);
    }

    pub fn published(&self, source: &str, events: u64) {
        add(&self.events_published, &[source], events);
    }

    pub fn set_checkpoint_lag(&self, source: &str, bytes: i64) {
        let mut map = self.checkpoint_lag_bytes.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(vec![source.to_string()], bytes);
    }

    /// Rows landed per table so far (for tests and status).
    pub fn rows_landed(&self, table: &str) -> u64 {
        let map = self.rows_landed.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&vec![table.to_string()]).copied().unwrap_or(0)
    }

    /// Counter and gauge values with their labels, for the OTLP exporter: (name, labels, value).
    pub fn samples(&self) -> Vec<Sample> {
        let mut out = Vec::new();
        let labelled: [(&'static str, &[&'static str], &Series<u64>); 5] = [
            ("bqsync.events_in", &["table"], &self.events_in),
            ("bqsync.rows_landed", &["table"], &self.rows_landed),
            ("bqsync.rows_offered", &["table"], &self.rows_offered),
            ("bqsync.dead_letters", &["table", "reason"], &self.dead_letters),
            ("bqsync.events_published", &["source"], &self.events_published),
        ];
        for (name, names, series) in labelled {
            for (values, value) in series.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                let labels = names.iter().copied().zip(values.iter().cloned()).collect();
                out.push((name, labels, *value as f64));
            }
        }
        out.push(("bqsync.redeliveries", Vec::new(), self.redeliveries.load(Ordering::Relaxed) as f64));
        out.push(("bqsync.flushes", Vec::new(), self.flushes.load(Ordering::Relaxed) as f64));
        out.push(("bqsync.outstanding_messages", Vec::new(), self.outstanding.load(Ordering::Relaxed) as f64));
        out.push(("bqsync.bigquery_bytes_billed", Vec::new(), self.bytes_billed.load(Ordering::Relaxed) as f64));
        out
    }

    /// The registry in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        counter(&mut out, "bqsync_events_in_total", "Deliveries accepted by the worker.", &["table"], &self.events_in);
        counter(
            &mut out,
            "bqsync_rows_landed_total",
            "Rows inserted or updated in the warehouse.",
            &["table"],
            &self.rows_landed,
        );
        counter(
            &mut out,
            "bqsync_rows_offered_total",
            "Rows offered to the warehouse (committed flushes).",
            &["table"],
            &self.rows_offered,
        );
        counter(
            &mut out,
            "bqsync_dead_letters_total",
            "Events dead-lettered by the worker.",
            &["table", "reason"],
            &self.dead_letters,
        );
        counter(
            &mut out,
            "bqsync_events_published_total",
            "Events published by sources.",
            &["source"],
            &self.events_published,
        );
        scalar(
            &mut out,
            "bqsync_redeliveries_total",
            "counter",
            "Deliveries seen again (attempt > 1).",
            self.redeliveries.load(Ordering::Relaxed) as f64,
        );
        scalar(
            &mut out,
            "bqsync_flushes_total",
            "counter",
            "Flushes committed.",
            self.flushes.load(Ordering::Relaxed) as f64,
        );
        scalar(
            &mut out,
            "bqsync_failed_flushes_total",
            "counter",
            "Flush attempts that failed (retried).",
            self.failed_flushes.load(Ordering::Relaxed) as f64,
        );
        scalar(
            &mut out,
            "bqsync_outstanding_messages",
            "gauge",
            "Deliveries held unacked by the worker.",
            self.outstanding.load(Ordering::Relaxed) as f64,
        );
        scalar(
            &mut out,
            "bqsync_bigquery_bytes_billed_total",
            "counter",
            "Bytes billed by BigQuery jobs of this process.",
            self.bytes_billed.load(Ordering::Relaxed) as f64,
        );
        scalar(
            &mut out,
            "bqsync_circuit_open",
            "gauge",
            "1 while the warehouse is failing and pulling is paused.",
            self.circuit_open.load(Ordering::Relaxed) as f64,
        );
        gauge(
            &mut out,
            "bqsync_checkpoint_lag_bytes",
            "Bytes written to a source's files but not yet published.",
            &["source"],
            &self.checkpoint_lag_bytes,
        );
        histogram(
            &mut out,
            "bqsync_batch_rows",
            "Rows per committed table batch.",
            &["table"],
            &ROW_BUCKETS,
            &self.batch_rows,
        );
        histogram(
            &mut out,
            "bqsync_flush_seconds",
            "Time to commit a flush.",
            &[],
            &SECOND_BUCKETS,
            &self.flush_seconds,
        );
        histogram(
            &mut out,
            "bqsync_end_to_end_lag_seconds",
            "From produced_at to landed, per event.",
            &["table"],
            &SECOND_BUCKETS,
            &self.lag_seconds,
        );
        out
    }
}

fn labels(names: &[&str], values: &[String], extra: Option<(&str, String)>) -> String {
    let mut parts: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    if let Some((n, v)) = extra {
        parts.push(format!("{n}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn counter(out: &mut String, name: &str, help: &str, names: &[&str], series: &Series<u64>) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (values, value) in series.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        let _ = writeln!(out, "{name}{} {value}", labels(names, values, None));
    }
}

fn gauge(out: &mut String, name: &str, help: &str, names: &[&str], series: &Series<i64>) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    for (values, value) in series.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        let _ = writeln!(out, "{name}{} {value}", labels(names, values, None));
    }
}

fn scalar(out: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
}

fn histogram(out: &mut String, name: &str, help: &str, names: &[&str], bounds: &[f64], series: &Series<Histogram>) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (values, h) in series.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        for (i, bound) in bounds.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{} {}",
                labels(names, values, Some(("le", bound.to_string()))),
                h.counts[i]
            );
        }
        let _ = writeln!(out, "{name}_bucket{} {}", labels(names, values, Some(("le", "+Inf".into()))), h.count);
        let _ = writeln!(out, "{name}_sum{} {}", labels(names, values, None), h.sum);
        let _ = writeln!(out, "{name}_count{} {}", labels(names, values, None), h.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms_in_prometheus_text() {
        let m = Metrics::default();
        m.event_in("atoms", false);
        m.event_in("atoms", true);
        m.landed("atoms", 2, 2);
        m.dead_letter("atoms", "schema");
        m.lag("atoms", 0.3);
        let text = m.render();
        assert!(text.contains("bqsync_events_in_total{table=\"atoms\"} 2"), "{text}");
        assert!(text.contains("bqsync_redeliveries_total 1"), "{text}");
        assert!(text.contains("bqsync_rows_landed_total{table=\"atoms\"} 2"), "{text}");
        assert!(text.contains("bqsync_dead_letters_total{table=\"atoms\",reason=\"schema\"} 1"), "{text}");
        assert!(text.contains("bqsync_end_to_end_lag_seconds_bucket{table=\"atoms\",le=\"0.25\"} 0"), "{text}");
        assert!(text.contains("bqsync_end_to_end_lag_seconds_bucket{table=\"atoms\",le=\"0.5\"} 1"), "{text}");
        assert!(text.contains("bqsync_batch_rows_count{table=\"atoms\"} 1"), "{text}");
        assert_eq!(m.rows_landed("atoms"), 2);
    }
}
