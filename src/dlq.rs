//! Dead letters as a data set: `bqsync dlq list | show | stats` and `bqsync replay`.
//!
//! Every dead letter ends in the warehouse's `dead_letters` table: poison rows straight from the
//! worker, and whatever reaches the bus's dead-letter queue (embedded) or dead-letter subscription
//! (Pub/Sub), which the worker lands there too. That table is what these commands read.
//!
//! Replay invariants:
//! - A replayed event keeps its event id, so replaying twice lands once; landing goes through the
//!   same classification and idempotent landing as the worker, in bqsync's own path (no topic that
//!   other subscribers read).
//! - `--dry-run` opens the warehouse read-only and changes nothing; it validates each event against
//!   today's schemas and says why what still fails fails.
//! - Each chunk of events commits in one transaction with the dead letters of what failed again,
//!   so a replay killed midway is resumed by running it again, without duplicates.
//! - An event that fails again becomes a new dead letter that carries its lineage: the attribute
//!   `bqsync_replay_of` (the first dead letter of its chain) and `bqsync_replay_history` (earlier
//!   failures, `reason@micros`). The same failure replayed again is the same dead letter.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::ack::Receipts;
use crate::batch::{StagedRow, TableBatch};
use crate::dead_letter::{
    replay_mark, DeadLetter, DeadLetterFilter, DeadLetterReason, DeadLetterRecord, DEAD_LETTER_TABLE, REPLAY_TABLE,
};
use crate::message::{attr, Attributes, Message};
use crate::schema::Catalog;
use crate::sources::jsonl::record_to_message;
use crate::warehouse::Warehouse;
use crate::worker::classify::{Classified, Classifier};

/// Events per replay transaction.
const REPLAY_CHUNK: usize = 1000;

/// Edits applied to each event's payload (or raw record) before it is replayed, in this order:
/// renames, drops, sets.
#[derive(Debug, Clone, Default)]
pub struct Edits {
    pub rename: Vec<(String, String)>,
    pub drop: Vec<String>,
    pub set: Vec<(String, Value)>,
}

impl Edits {
    /// Parses `--set FIELD=VALUE` (VALUE as JSON when it parses, else as a string), `--drop FIELD`
    /// and `--rename OLD=NEW`.
    pub fn parse(set: &[String], drop: &[String], rename: &[String]) -> anyhow::Result<Edits> {
        let pair = |text: &str, flag: &str| -> anyhow::Result<(String, String)> {
            let (left, right) =
                text.split_once('=').with_context(|| format!("{flag} {text:?}: expected NAME=VALUE"))?;
            anyhow::ensure!(!left.is_empty(), "{flag} {text:?}: empty field name");
            Ok((left.to_string(), right.to_string()))
        };
        let mut edits = Edits { drop: drop.to_vec(), ..Edits::default() };
        for text in rename {
            edits.rename.push(pair(text, "--rename")?);
        }
        for text in set {
            let (field, raw) = pair(text, "--set")?;
            let value = serde_json::from_str(&raw).unwrap_or(Value::String(raw));
            edits.set.push((field, value));
        }
        Ok(edits)
    }

    pub fn is_empty(&self) -> bool {
        self.rename.is_empty() && self.drop.is_empty() && self.set.is_empty()
    }

    fn apply(&self, object: &mut Map<String, Value>) {
        for (old, new) in &self.rename {
            if let Some(value) = object.remove(old) {
                object.insert(new.clone(), value);
            }
        }
        for field in &self.drop {
            object.remove(field);
        }
        for (field, value) in &self.set {
            object.insert(field.clone(), value.clone());
        }
    }
}

/// Reads a time for `--since`/`--until`: RFC 3339 (`2026-11-22T10:00:00Z`), a date (`2026-11-22`),
/// or an age (`30m`, `2h`, `7d`) before now. Returns microseconds since the epoch.
pub fn parse_time(text: &str) -> anyhow::Result<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp_micros());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc().timestamp_micros());
    }
    // Ages in the units the docs name (`humantime` also takes weeks, months and years, whose length
    // a reader may guess differently).
    if !text.ends_with(['s', 'm', 'h', 'd']) {
        anyhow::bail!("time {text:?}: an age ends in s, m, h or d");
    }
    let age = humantime::parse_duration(text).with_context(|| {
        format!("time {text:?}: expected RFC 3339 (2026-11-22T10:00:00Z), a date (2026-11-22) or an age (30m, 2h, 7d)")
    })?;
    Ok(chrono::Utc::now().timestamp_micros() - age.as_micros() as i64)
}

fn format_micros(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map_or_else(|| micros.to_string(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}

fn shorten(text: &str, max: usize) -> String {
    let one_line = text.replace(['\n', '\r'], " ");
    if one_line.chars().count() <= max {
        one_line
    } else {
        one_line.chars().take(max.saturating_sub(1)).collect::<String>() + "…"
    }
}

/// The last `max` characters of `text` (a path's file name and line number matter most).
fn keep_end(text: &str, max: usize) -> String {
    let count = text.chars().count();
    if count <= max {
        return text.to_string();
    }
    "…".to_string() + &text.chars().skip(count - max + 1).collect::<String>()
}

/// `replayed: ` before the detail of a dead letter a replay landed.
fn replayed_prefix(r: &DeadLetterRecord) -> String {
    r.replayed_micros.map_or_else(String::new, |micros| format!("replayed {}: ", format_micros(micros)))
}

/// `dlq list`: one line a dead letter.
pub fn render_list(records: &[DeadLetterRecord]) -> String {
    let mut out = format!(
        "{:<14} {:<19} {:<16} {:<14} {:>8}  {:<32} {}\n",
        "ID", "LAST FAILED (UTC)", "TABLE", "REASON", "ATTEMPTS", "SOURCE (FILE:LINE)", "DETAIL"
    );
    for r in records {
        out.push_str(&format!(
            "{:<14} {:<19} {:<16} {:<14} {:>8}  {:<32} {}\n",
            &r.dead_letter_id[..r.dead_letter_id.len().min(12)],
            format_micros(r.last_failed_micros),
            shorten(r.table_name.as_deref().unwrap_or("?"), 16),
            r.reason,
            r.delivery_attempts.map_or("-".into(), |a| a.to_string()),
            keep_end(r.source.as_deref().unwrap_or("-"), 32),
            shorten(&(replayed_prefix(r) + r.detail.as_deref().unwrap_or("")), 80),
        ));
    }
    out.push_str(&format!("{} dead letter(s)\n", records.len()));
    out
}

/// `dlq show`: every field of one dead letter.
pub fn render_show(r: &DeadLetterRecord) -> String {
    let mut out = String::new();
    let mut line = |name: &str, value: String| out.push_str(&format!("{name:<18} {value}\n"));
    line("dead_letter_id", r.dead_letter_id.clone());
    line("event_id", r.event_id.clone().unwrap_or_else(|| "-".into()));
    line("table", r.table_name.clone().unwrap_or_else(|| "-".into()));
    line("reason", r.reason.clone());
    line("detail", r.detail.clone().unwrap_or_default());
    line("source", r.source.clone().unwrap_or_else(|| "-".into()));
    line("delivery_attempts", r.delivery_attempts.map_or("-".into(), |a| a.to_string()));
    line("first_failed_at", r.first_failed_micros.map_or("-".into(), format_micros));
    line("last_failed_at", format_micros(r.last_failed_micros));
    line("bqsync_version", r.bqsync_version.clone().unwrap_or_else(|| "-".into()));
    line("replayed_at", r.replayed_micros.map_or("- (open)".into(), format_micros));
    line("attributes", r.attributes.to_string());
    line("message bytes", r.message_bytes.len().to_string());
    out.push_str("message:\n");
    out.push_str(&r.message);
    out.push('\n');
    out
}

/// Counts of dead letters by table and reason, with their time span.
#[derive(Debug, Serialize, PartialEq)]
pub struct DeadLetterStat {
    pub table: String,
    pub reason: String,
    pub count: u64,
    pub first_failed_at: String,
    pub last_failed_at: String,
}

pub fn stats(records: &[DeadLetterRecord]) -> Vec<DeadLetterStat> {
    let mut groups: BTreeMap<(String, String), (u64, i64, i64)> = BTreeMap::new();
    for r in records {
        let key = (r.table_name.clone().unwrap_or_else(|| "?".into()), r.reason.clone());
        let first = r.first_failed_micros.unwrap_or(r.last_failed_micros);
        let entry = groups.entry(key).or_insert((0, i64::MAX, i64::MIN));
        entry.0 += 1;
        entry.1 = entry.1.min(first);
        entry.2 = entry.2.max(r.last_failed_micros);
    }
    groups
        .into_iter()
        .map(|((table, reason), (count, first, last))| DeadLetterStat {
            table,
            reason,
            count,
            first_failed_at: format_micros(first),
            last_failed_at: format_micros(last),
        })
        .collect()
}

pub fn render_stats(stats: &[DeadLetterStat]) -> String {
    let mut out = format!("{:<20} {:<16} {:>8}  {:<19}  {:<19}\n", "TABLE", "REASON", "COUNT", "FIRST", "LAST");
    for s in stats {
        out.push_str(&format!(
            "{:<20} {:<16} {:>8}  {:<19}  {:<19}\n",
            shorten(&s.table, 20),
            s.reason,
            s.count,
            s.first_failed_at,
            s.last_failed_at
        ));
    }
    out.push_str(&format!("{} dead letter(s)\n", stats.iter().map(|s| s.count).sum::<u64>()));
    out
}

/// Counts in Prometheus text format, for alerting until the metrics endpoint exists: write it to
/// node_exporter's textfile directory from cron (`bqsync dlq stats --prometheus > dir/bqsync.prom`).
pub fn render_prometheus(stats: &[DeadLetterStat]) -> String {
    let label = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    let mut out = String::from(
        "# HELP bqsync_dead_letters Dead letters in the warehouse's dead_letters table.\n# TYPE bqsync_dead_letters gauge\n",
    );
    for s in stats {
        out.push_str(&format!(
            "bqsync_dead_letters{{table=\"{}\",reason=\"{}\"}} {}\n",
            label(&s.table),
            label(&s.reason),
            s.count
        ));
    }
    out
}

/// What a replay did (or, with `--dry-run`, would do).
#[derive(Debug, Default, Serialize)]
pub struct ReplaySummary {
    pub dry_run: bool,
    /// Dead letters selected by the filters.
    pub selected: u64,
    /// Events that are valid today (landed, or would land).
    pub valid: u64,
    /// Of the valid ones: rows the warehouse did not have yet (0 on a dry run).
    pub landed_new: u64,
    /// Of the valid ones: already in the warehouse (an earlier replay, or a duplicate).
    pub already_present: u64,
    /// Events that fail again; on a real replay each is a new dead letter with its lineage.
    pub still_failing: u64,
    /// Per event (dry run, or `--verbose`): dead-letter id, event id, table, outcome, detail.
    pub events: Vec<ReplayedEvent>,
}

#[derive(Debug, Serialize)]
pub struct ReplayedEvent {
    pub dead_letter_id: String,
    pub event_id: Option<String>,
    pub table: Option<String>,
    /// `valid` or the reason it still fails.
    pub outcome: String,
    pub detail: String,
}

/// Replays the dead letters `records` through today's schemas into `warehouse` (nothing is written
/// when `dry_run`).
pub async fn replay(
    records: Vec<DeadLetterRecord>,
    edits: &Edits,
    catalog: Arc<Catalog>,
    warehouse: Arc<dyn Warehouse>,
    dry_run: bool,
    keep_events: bool,
) -> anyhow::Result<ReplaySummary> {
    let mut summary = ReplaySummary { dry_run, selected: records.len() as u64, ..ReplaySummary::default() };
    let progress = Progress::new(records.len());
    let classifier = Classifier { catalog: &catalog, max_event_bytes: usize::MAX };
    for (done, chunk) in records.chunks(REPLAY_CHUNK).enumerate() {
        let mut tables: BTreeMap<String, Vec<StagedRow>> = BTreeMap::new();
        for record in chunk {
            let (data, attributes) = rebuild(record, edits, &catalog);
            // A replay is a first delivery of the edited message; it has no bus handle to ack.
            let now = chrono::Utc::now().timestamp_micros();
            let message =
                Message { data: &data, attributes: &attributes, delivery_attempt: 1, first_attempt_micros: now };
            let (outcome, detail, table, event_id, row) = match classifier.classify(message) {
                Classified::Row { table, row, .. } => {
                    summary.valid += 1;
                    // Marked replayed in the same landing (one transaction on DuckDB): a replay
                    // that dies before it commits leaves the dead letter open, and lands it again.
                    if let Some(mark) = replay_mark(&catalog, record, &table) {
                        tables.entry(REPLAY_TABLE.to_string()).or_default().push(mark);
                    }
                    let id = row.event_id.clone();
                    ("valid".to_string(), String::new(), table, Some(id), row)
                }
                Classified::DeadLetter(dead) => {
                    summary.still_failing += 1;
                    let row = dead.row(&catalog, message);
                    let DeadLetter { reason, detail, event_id, .. } = dead;
                    (reason.as_str().to_string(), detail, DEAD_LETTER_TABLE.to_string(), event_id, row)
                }
            };
            if dry_run || keep_events {
                summary.events.push(ReplayedEvent {
                    dead_letter_id: record.dead_letter_id.clone(),
                    event_id: event_id.clone(),
                    table: if table == DEAD_LETTER_TABLE { record.table_name.clone() } else { Some(table.clone()) },
                    outcome,
                    detail,
                });
            }
            tables.entry(table).or_default().push(row);
        }
        if !dry_run {
            let batches: Vec<TableBatch> = tables.into_iter().map(|(table, rows)| TableBatch { table, rows }).collect();
            let landed = warehouse.land(Arc::new(batches), Receipts::default()).await;
            let (_nothing_to_ack, stats) = landed.map_err(|f| *f.error).context("landing replayed events")?;
            for (table, stat) in stats {
                if table != DEAD_LETTER_TABLE && table != REPLAY_TABLE {
                    summary.landed_new += stat.rows_changed;
                    summary.already_present += stat.rows_offered - stat.rows_changed;
                }
            }
            tracing::debug!(replayed = done * REPLAY_CHUNK + chunk.len(), "replay chunk committed");
        }
        progress.update((done * REPLAY_CHUNK + chunk.len()) as u64);
    }
    progress.finish();
    if !dry_run {
        // BigQuery: the replayed rows were appended to landing tables; apply them before returning.
        warehouse.settle().await.context("applying the replayed events")?;
    }
    Ok(summary)
}

/// The dead letter as a message again (bytes and attributes): edits applied, the failure attributes
/// replaced by lineage. Its bytes come from wherever the dead letter came from: whatever they hold,
/// the result is a message that lands or fails again with its reason (fuzzed:
/// fuzz/fuzz_targets/replay_edits.rs).
pub fn rebuild(record: &DeadLetterRecord, edits: &Edits, catalog: &Catalog) -> (Vec<u8>, Attributes) {
    let original: Attributes = match &record.attributes {
        Value::Object(map) => {
            map.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect()
        }
        _ => Attributes::new(),
    };
    let mut attributes: Attributes = original
        .iter()
        .filter(|(name, _)| {
            !name.starts_with("bqsync_dead_letter_")
                && !name.starts_with("bqsync_poison_")
                && !name.starts_with("CloudPubSubDeadLetter")
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut history: Vec<String> =
        original.get(attr::REPLAY_HISTORY).map(|h| h.split(';').map(str::to_string).collect()).unwrap_or_default();
    history.push(format!("{}@{}", record.reason, record.last_failed_micros));
    // The first dead letter of the chain: replaying a replay's dead letter again keeps pointing at it,
    // so the same failure does not make a new dead letter on every replay.
    let root = original.get(attr::REPLAY_OF).cloned().unwrap_or_else(|| record.dead_letter_id.clone());
    attributes.insert(attr::REPLAY_OF.into(), root);
    attributes.insert(attr::REPLAY_HISTORY.into(), history.join(";"));

    let data = if original.contains_key(attr::POISON_REASON) {
        rebuild_record(record, edits, catalog, &mut attributes)
    } else {
        rebuild_envelope(record, edits)
    };
    (data, attributes)
}

/// A raw record the producer could not make into an event (a JSONL line): edited, then made into an
/// event the way the JSONL source does. What still cannot be an event keeps its bytes and gets the
/// reason as poison attributes, so classification dead-letters it again with the right reason.
fn rebuild_record(record: &DeadLetterRecord, edits: &Edits, catalog: &Catalog, attributes: &mut Attributes) -> Vec<u8> {
    let table = record.table_name.clone().unwrap_or_default();
    let mut poison = |reason: &str, detail: String, bytes: Vec<u8>| {
        attributes.insert(attr::POISON_REASON.into(), reason.into());
        attributes.insert(attr::POISON_DETAIL.into(), detail);
        bytes
    };
    let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(&record.message_bytes) else {
        return poison(&record.reason, record.detail.clone().unwrap_or_default(), record.message_bytes.clone());
    };
    edits.apply(&mut object);
    let text = Value::Object(object).to_string();
    let source = format!("replay:{}", record.dead_letter_id);
    let produced_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    // A record a producer transformed already is not transformed again (a hash of a hash).
    let transformed = record.attributes.get(attr::TRANSFORMED).and_then(Value::as_str) == Some("1");
    let origin =
        crate::sources::jsonl::Origin { file_fingerprint: 0, offset: 0, source: &source, produced_at: &produced_at };
    match record_to_message(catalog, &table, origin, &text, !transformed) {
        Ok(message) => {
            attributes.extend(message.attributes);
            message.data
        }
        Err((reason, detail)) => poison(reason.as_str(), detail, text.into_bytes()),
    }
}

/// An envelope that failed in the worker: the payload edited, everything else (the event id above
/// all) kept.
fn rebuild_envelope(record: &DeadLetterRecord, edits: &Edits) -> Vec<u8> {
    if edits.is_empty() {
        return record.message_bytes.clone();
    }
    // A valid envelope is written again the one way producers write it; one that does not decode
    // is replayed as it was and fails with its reason again.
    let Ok(event) = crate::envelope::decode(&record.message_bytes) else {
        return record.message_bytes.clone();
    };
    let Some(mut payload) = event.payload.to_map() else {
        return record.message_bytes.clone();
    };
    edits.apply(&mut payload);
    let payload_text = serde_json::to_string(&payload).expect("a JSON object serializes");
    let rebuilt = crate::envelope::ChangeEvent {
        event_id: event.event_id,
        table: &event.table,
        op: event.op,
        key: event.key,
        version: event.version,
        payload: &payload_text,
        source: &event.source,
        produced_at: &event.produced_at,
    };
    rebuilt.to_bytes()
}

/// A progress line on a terminal (stderr), nothing otherwise.
struct Progress {
    bar: indicatif::ProgressBar,
}

impl Progress {
    /// A bar on stderr, drawn only when stderr is a terminal (indicatif hides it otherwise).
    fn new(total: usize) -> Progress {
        Progress { bar: crate::progress::bar(total as u64, "replay [{bar:30}] {pos}/{len}") }
    }

    fn update(&self, done: u64) {
        self.bar.set_position(done);
    }

    fn finish(&self) {
        self.bar.finish();
    }
}

/// The filter of `dlq list`/`replay` flags.
pub fn filter(
    table: Option<String>,
    reason: Option<String>,
    since: Option<&str>,
    until: Option<&str>,
    ids: Vec<String>,
    limit: Option<usize>,
) -> anyhow::Result<DeadLetterFilter> {
    let reason = match reason {
        Some(text) => Some(DeadLetterReason::parse(&text).ok_or_else(|| {
            anyhow::anyhow!(
                "unknown reason {text:?}: expected decode, schema, unknown_table, oversize, warehouse_rejected or max_attempts"
            )
        })?),
        None => None,
    };
    Ok(DeadLetterFilter {
        table,
        reason,
        since_micros: since.map(parse_time).transpose()?,
        until_micros: until.map(parse_time).transpose()?,
        ids,
        limit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    /// Fuzz finding: `--set score=99990000001279143091` (above u64, so a float) came back one ulp off
    /// from the rebuilt envelope, since serde_json's default float parsing is not exact; with
    /// `float_roundtrip` the value read back is the value set.
    fn a_set_value_reads_back_exactly_from_the_rebuilt_envelope() {
        let edits =
            Edits::parse(&["score=99990000001279143091".into(), "ratio=0.30000000000000004".into()], &[], &[]).unwrap();
        let envelope = br#"{"event_id":"e-1","table":"atoms","op":"insert","payload":{"score":"abc"},"source":"s","produced_at":"2024-01-01T00:00:00Z"}"#;
        let record = DeadLetterRecord {
            dead_letter_id: "0123456789abcdef".into(),
            event_id: Some("e-1".into()),
            table_name: Some("atoms".into()),
            reason: "schema".into(),
            detail: None,
            source: None,
            message_bytes: envelope.to_vec(),
            message: String::new(),
            attributes: serde_json::json!({}),
            delivery_attempts: None,
            first_failed_micros: None,
            last_failed_micros: 0,
            bqsync_version: None,
            replayed_micros: None,
        };
        let (bytes, _) = rebuild(&record, &edits, &Catalog::default());
        let payload = crate::envelope::decode(&bytes).unwrap().payload.to_map().unwrap();
        for (field, value) in &edits.set {
            assert_eq!(payload.get(field), Some(value), "{field}");
        }
    }

    #[test]
    fn edits_parse_json_values_and_apply_in_order() {
        let edits = Edits::parse(
            &["score=2.5".into(), "note=hello".into(), "tags=[\"a\"]".into()],
            &["junk".into()],
            &["colour=color".into()],
        )
        .unwrap();
        let mut object: Map<String, Value> =
            serde_json::from_str(r#"{"score":"abc","junk":1,"colour":"red"}"#).unwrap();
        edits.apply(&mut object);
        assert_eq!(
            Value::Object(object),
            serde_json::json!({"score": 2.5, "note": "hello", "tags": ["a"], "color": "red"})
        );
        assert!(Edits::parse(&["novalue".into()], &[], &[]).unwrap_err().to_string().contains("NAME=VALUE"));
    }

    #[test]
    fn prometheus_lines_escape_label_values() {
        let stats = vec![DeadLetterStat {
            table: "a\"b".into(),
            reason: "schema".into(),
            count: 3,
            first_failed_at: String::new(),
            last_failed_at: String::new(),
        }];
        let text = render_prometheus(&stats);
        assert!(text.contains("# TYPE bqsync_dead_letters gauge"), "{text}");
        assert!(text.ends_with("bqsync_dead_letters{table=\"a\\\"b\",reason=\"schema\"} 3\n"), "{text}");
    }

    #[test]
    fn times_are_rfc3339_dates_or_ages() {
        assert_eq!(parse_time("2026-11-22T00:00:00Z").unwrap(), parse_time("2026-11-22").unwrap());
        let hour_ago = parse_time("1h").unwrap();
        let now = chrono::Utc::now().timestamp_micros();
        assert!((now - hour_ago - 3_600_000_000).abs() < 5_000_000);
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("5w").unwrap_err().to_string().contains("s, m, h or d"));
    }
}
