//! Dead letters: the reason classes, what is known of a failed message, the `dead_letters` row built
//! from it, the filter `bqsync dlq` and `bqsync replay` select with, and that filter's SQL for both
//! warehouse dialects.
//!
//! Invariants:
//! - A dead letter keeps the original message bytes and attributes exactly, so it can be replayed.
//! - Its id derives from the bytes and the reason (and, for a replay, the dead letter replayed), so a
//!   redelivered poison message lands as one dead letter.
//! - Filter values never enter SQL text: they are bound as parameters.

use crate::batch::StagedRow;
use crate::envelope::{derive_event_id, Op};
use crate::message::{attr, Attributes, Message};
use crate::schema::{Catalog, CellValue};

/// Table name of the dead-letter table.
pub const DEAD_LETTER_TABLE: &str = "dead_letters";
/// The table of replay marks: one row per dead letter a replay landed (`schemas/dead_letter_replays.json`;
/// optional: without it, replays are not marked and every dead letter counts as open).
pub const REPLAY_TABLE: &str = "dead_letter_replays";

/// `FROM` clause of a dead-letters query: `dead_letters` (or its view, `target`) with each one's
/// replay mark, if any, as `replayed_at` (from `replays`, the marks' table or view; None when there
/// is none, and every dead letter is open). The same text in both dialects.
pub fn with_replay_marks(target: &str, replays: Option<&str>) -> String {
    match replays {
        Some(replays) => format!(
            "{target} LEFT JOIN (SELECT dead_letter_id AS replayed_id, MIN(replayed_at) AS replayed_at \
             FROM {replays} GROUP BY dead_letter_id) marks ON marks.replayed_id = dead_letter_id"
        ),
        None => format!(
            "{target} LEFT JOIN (SELECT '' AS replayed_id, CAST(NULL AS TIMESTAMP) AS replayed_at) marks ON FALSE"
        ),
    }
}

/// The mark that `record` was replayed into `table` now, in the catalog's column order; None when
/// the catalog has no replay table. Its id is the dead letter's own, so marking twice lands once and
/// the first replay's time stays.
pub fn replay_mark(catalog: &Catalog, record: &DeadLetterRecord, table: &str) -> Option<StagedRow> {
    let schema = catalog.get(REPLAY_TABLE)?;
    let now = chrono::Utc::now().timestamp_micros();
    let cell = |column: &str| match column {
        "dead_letter_id" => CellValue::String(record.dead_letter_id.clone()),
        "event_id" => record.event_id.clone().map_or(CellValue::Null, CellValue::String),
        "table_name" => CellValue::String(table.to_string()),
        "replayed_at" => CellValue::Timestamp(now),
        _ => CellValue::Null,
    };
    let cells = schema.columns.iter().map(|c| cell(&c.name)).collect();
    let event_id = derive_event_id(&[b"replayed", record.dead_letter_id.as_bytes()]);
    Some(StagedRow::whole(event_id, Op::Insert, None, cells))
}

/// Reason classes of dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeadLetterReason {
    /// The bytes are not a change event (invalid UTF-8, invalid JSON, missing or unknown fields).
    Decode,
    /// The payload does not fit the table schema.
    Schema,
    /// No schema file for the event's table.
    UnknownTable,
    /// The message is larger than the configured maximum.
    Oversize,
    /// The warehouse refused the row (per-row errors, as BigQuery reports them; the DuckDB path
    /// validates rows before landing and does not produce it).
    WarehouseRejected,
    /// Delivered the maximum number of times without being acked.
    MaxAttempts,
}

impl DeadLetterReason {
    pub const ALL: [DeadLetterReason; 6] = [
        DeadLetterReason::Decode,
        DeadLetterReason::Schema,
        DeadLetterReason::UnknownTable,
        DeadLetterReason::Oversize,
        DeadLetterReason::WarehouseRejected,
        DeadLetterReason::MaxAttempts,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Decode => "decode",
            DeadLetterReason::Schema => "schema",
            DeadLetterReason::UnknownTable => "unknown_table",
            DeadLetterReason::Oversize => "oversize",
            DeadLetterReason::WarehouseRejected => "warehouse_rejected",
            DeadLetterReason::MaxAttempts => "max_attempts",
        }
    }

    pub fn parse(text: &str) -> Option<DeadLetterReason> {
        DeadLetterReason::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

impl std::fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a message cannot land, and what is known of it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub reason: DeadLetterReason,
    pub detail: String,
    pub table: Option<String>,
    pub event_id: Option<String>,
}

/// Pub/Sub's limit on an attribute value, in bytes.
const MAX_ATTRIBUTE_BYTES: usize = 1024;

impl DeadLetter {
    /// What a message from a dead-letter queue is: a poison event a worker put there (its reason is
    /// in the attributes) or a message moved there after the maximum delivery attempts.
    pub fn of_exhausted(message: Message<'_>) -> DeadLetter {
        let attributes = message.attributes;
        let reason = attributes
            .get(attr::DEAD_LETTER_REASON)
            .and_then(|r| DeadLetterReason::parse(r))
            .unwrap_or(DeadLetterReason::MaxAttempts);
        let detail = match attributes.get(attr::DEAD_LETTER_DETAIL) {
            Some(detail) if reason != DeadLetterReason::MaxAttempts => detail.clone(),
            _ => format!(
                "not acked after {} delivery attempts (worker crash, warehouse outage or a failing batch)",
                attempts_of(message)
            ),
        };
        let (salvaged_table, salvaged_id) = salvage_identity(message.data);
        DeadLetter {
            reason,
            detail,
            table: attributes.get(attr::TABLE).cloned().or(salvaged_table),
            event_id: attributes.get(attr::EVENT_ID).cloned().or(salvaged_id),
        }
    }

    /// The attributes of this dead letter published to a bus's dead-letter topic: the message's own
    /// plus reason, detail (cut to Pub/Sub's limit), attempts, and table and event id when known.
    pub fn attributes_for(&self, message: Message<'_>) -> Attributes {
        let mut attributes = message.attributes.clone();
        let mut set = |name: &str, value: String| {
            attributes.insert(name.to_string(), value);
        };
        set(attr::DEAD_LETTER_REASON, self.reason.as_str().to_string());
        set(attr::DEAD_LETTER_DETAIL, truncate_utf8(&self.detail, MAX_ATTRIBUTE_BYTES).to_string());
        set(attr::DEAD_LETTER_ATTEMPTS, attempts_of(message).to_string());
        set(attr::DEAD_LETTER_FIRST_ATTEMPT_MICROS, first_failed_micros(message).to_string());
        if let Some(table) = &self.table {
            set(attr::TABLE, table.clone());
        }
        if let Some(event_id) = &self.event_id {
            set(attr::EVENT_ID, truncate_utf8(event_id, MAX_ATTRIBUTE_BYTES).to_string());
        }
        attributes
    }

    /// The `dead_letters` row for `message`, in the catalog's column order.
    pub fn row(&self, catalog: &Catalog, message: Message<'_>) -> StagedRow {
        let (reason, detail) = (self.reason, self.detail.as_str());
        let (table, event_id) = (self.table.as_deref(), self.event_id.as_deref());
        // A replayed dead letter that fails again is a new dead letter (its lineage differs), but
        // the same replay failing twice is one.
        let dead_letter_id = match message.attributes.get(attr::REPLAY_OF) {
            Some(original) => derive_event_id(&[message.data, reason.as_str().as_bytes(), original.as_bytes()]),
            None => derive_event_id(&[message.data, reason.as_str().as_bytes()]),
        };
        let now = chrono::Utc::now().timestamp_micros();
        // Poison carries its source as an attribute; an event that failed in the worker, in its envelope.
        let source = message.attributes.get(attr::SOURCE).cloned().or_else(|| envelope_source(message.data));
        let text = |s: Option<&str>| s.map_or(CellValue::Null, |s| CellValue::String(s.to_string()));
        let value_of = |column: &str| -> CellValue {
            match column {
                "dead_letter_id" => CellValue::String(dead_letter_id.clone()),
                "event_id" => text(event_id),
                "table_name" => text(table),
                "reason" => CellValue::String(reason.as_str().into()),
                "detail" => CellValue::String(detail.into()),
                "source" => text(source.as_deref()),
                "message" => CellValue::String(String::from_utf8_lossy(message.data).into_owned()),
                "message_bytes" => CellValue::Bytes(message.data.to_vec()),
                "attributes" => {
                    CellValue::JsonText(serde_json::to_string(message.attributes).unwrap_or_else(|_| "{}".into()))
                }
                "delivery_attempts" => CellValue::Int64(attempts_of(message)),
                "first_failed_at" => CellValue::Timestamp(first_failed_micros(message)),
                "last_failed_at" => CellValue::Timestamp(now),
                "bqsync_version" => CellValue::String(env!("CARGO_PKG_VERSION").into()),
                _ => CellValue::Null,
            }
        };
        let cells = match catalog.get(DEAD_LETTER_TABLE) {
            Some(schema) => schema.columns.iter().map(|c| value_of(&c.name)).collect(),
            None => Vec::new(),
        };
        StagedRow::whole(dead_letter_id, Op::Insert, None, cells)
    }
}

/// Deliveries a message had: as recorded on a dead letter (by bqsync or by Pub/Sub's policy), else
/// this delivery's attempt.
fn attempts_of(message: Message<'_>) -> i64 {
    [attr::DEAD_LETTER_ATTEMPTS, attr::PUBSUB_DELIVERY_COUNT]
        .iter()
        .find_map(|name| message.attributes.get(*name).and_then(|v| v.parse().ok()))
        .unwrap_or(message.delivery_attempt as i64)
}

fn first_failed_micros(message: Message<'_>) -> i64 {
    message
        .attributes
        .get(attr::DEAD_LETTER_FIRST_ATTEMPT_MICROS)
        .and_then(|v| v.parse().ok())
        .unwrap_or(message.first_attempt_micros)
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn truncate_utf8(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Table and event id of a body that is JSON but not a valid envelope, so its dead letter is filed
/// under the right table. The table name is kept only if it is a valid identifier.
pub fn salvage_identity(data: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(serde_json::Value::Object(body)) = serde_json::from_slice::<serde_json::Value>(data) else {
        return (None, None);
    };
    let text = |name: &str| body.get(name).and_then(|v| v.as_str()).map(str::to_string);
    (text("table").filter(|t| crate::schema::is_valid_identifier(t)), text("event_id"))
}

/// The `source` field of an envelope, if the body is one.
fn envelope_source(data: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Source {
        source: Option<String>,
    }
    serde_json::from_slice::<Source>(data).ok().and_then(|s| s.source).filter(|s| !s.is_empty())
}

/// Why a table is unknown. A name that cannot be a table name at all almost always comes from a
/// JSONL folder (`inbox/my-data/…`): say that the folder is the problem and how to map it.
pub fn unknown_table_detail(table: &str) -> String {
    if crate::schema::is_valid_identifier(table) {
        return format!("table `{table}` has no schema file (schemas/{table}.json)");
    }
    format!(
        "`{table}` is not a valid table name (letters, digits and underscores, not starting with a digit); \
         with the default routes a JSONL file's first folder under the root names its table, so rename \
         the folder, or add a `routes` entry that maps it to a table"
    )
}

/// One row of `dead_letters`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DeadLetterRecord {
    pub dead_letter_id: String,
    pub event_id: Option<String>,
    pub table_name: Option<String>,
    /// The reason class as stored (a newer bqsync may have written one this one does not know).
    pub reason: String,
    pub detail: Option<String>,
    pub source: Option<String>,
    /// The original message bytes, exactly (not in JSON output; see `message`).
    #[serde(skip)]
    pub message_bytes: Vec<u8>,
    /// The message as text (invalid UTF-8 replaced), for people and JSON output.
    pub message: String,
    pub attributes: serde_json::Value,
    pub delivery_attempts: Option<i64>,
    pub first_failed_micros: Option<i64>,
    pub last_failed_micros: i64,
    pub bqsync_version: Option<String>,
    /// When `bqsync replay` landed it (µs): it is no longer open. None while open, or where the
    /// `dead_letter_replays` table does not exist.
    pub replayed_micros: Option<i64>,
}

/// Which dead letters to read. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    pub table: Option<String>,
    pub reason: Option<DeadLetterReason>,
    /// Last failure at or after, microseconds since the epoch.
    pub since_micros: Option<i64>,
    /// Last failure before, microseconds since the epoch.
    pub until_micros: Option<i64>,
    /// Dead-letter ids or event ids (a dead-letter id may be given by any prefix of it).
    pub ids: Vec<String>,
    pub limit: Option<usize>,
}

/// The SQL dialect a filter is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Positional `?` parameters, bound in order.
    DuckDb,
    /// Named `@name` parameters.
    BigQuery,
}

/// Type of a bound filter parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    String,
    Int64,
}

impl ParamType {
    /// BigQuery's name of the type.
    pub fn bigquery_name(self) -> &'static str {
        match self {
            ParamType::String => "STRING",
            ParamType::Int64 => "INT64",
        }
    }
}

/// A bound parameter: its name (BigQuery) and value as text. For DuckDB the order is the binding order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    pub kind: ParamType,
    pub value: String,
}

/// The tail of a `SELECT … FROM dead_letters` for `filter` in `dialect`: ` WHERE …` (if any
/// condition), the newest-first order and the limit, with the parameters to bind.
pub fn filter_sql(filter: &DeadLetterFilter, dialect: Dialect) -> (String, Vec<Param>) {
    let mut params: Vec<Param> = Vec::new();
    let mut bind = |name: &str, kind: ParamType, value: String| -> String {
        match dialect {
            Dialect::DuckDb => {
                params.push(Param { name: name.into(), kind, value });
                "?".into()
            }
            Dialect::BigQuery => {
                if !params.iter().any(|p| p.name == name) {
                    params.push(Param { name: name.into(), kind, value });
                }
                format!("@{name}")
            }
        }
    };
    let timestamp = |p: String| match dialect {
        Dialect::DuckDb => format!("make_timestamp(CAST({p} AS BIGINT))"),
        Dialect::BigQuery => format!("TIMESTAMP_MICROS({p})"),
    };
    let starts_with = match dialect {
        Dialect::DuckDb => "starts_with",
        Dialect::BigQuery => "STARTS_WITH",
    };
    let mut conditions = Vec::new();
    if let Some(table) = &filter.table {
        conditions.push(format!("table_name = {}", bind("table", ParamType::String, table.clone())));
    }
    if let Some(reason) = filter.reason {
        conditions.push(format!("reason = {}", bind("reason", ParamType::String, reason.as_str().into())));
    }
    if let Some(since) = filter.since_micros {
        conditions.push(format!("last_failed_at >= {}", timestamp(bind("since", ParamType::Int64, since.to_string()))));
    }
    if let Some(until) = filter.until_micros {
        conditions.push(format!("last_failed_at < {}", timestamp(bind("until", ParamType::Int64, until.to_string()))));
    }
    if !filter.ids.is_empty() {
        let mut alternatives = Vec::new();
        for (i, id) in filter.ids.iter().enumerate() {
            let name = format!("id{i}");
            let prefix = bind(&name, ParamType::String, id.clone());
            let exact = bind(&name, ParamType::String, id.clone());
            alternatives.push(format!("({starts_with}(dead_letter_id, {prefix}) OR event_id = {exact})"));
        }
        conditions.push(format!("({})", alternatives.join(" OR ")));
    }
    let mut sql = String::new();
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    sql.push_str(" ORDER BY last_failed_at DESC, dead_letter_id");
    if let Some(limit) = filter.limit {
        sql.push_str(&format!(" LIMIT {limit}"));
    }
    (sql, params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_through_their_names() {
        for reason in DeadLetterReason::ALL {
            assert_eq!(DeadLetterReason::parse(reason.as_str()), Some(reason));
        }
        assert_eq!(DeadLetterReason::parse("nope"), None);
    }

    #[test]
    fn one_filter_builder_serves_both_dialects() {
        let filter = DeadLetterFilter {
            reason: Some(DeadLetterReason::Schema),
            ids: vec!["abc".into()],
            ..DeadLetterFilter::default()
        };
        let (duck, duck_params) = filter_sql(&filter, Dialect::DuckDb);
        assert_eq!(
            duck,
            " WHERE reason = ? AND ((starts_with(dead_letter_id, ?) OR event_id = ?)) ORDER BY last_failed_at DESC, dead_letter_id"
        );
        assert_eq!(duck_params.iter().map(|p| p.value.as_str()).collect::<Vec<_>>(), ["schema", "abc", "abc"]);
        let (bq, bq_params) = filter_sql(&filter, Dialect::BigQuery);
        assert!(bq.contains("reason = @reason AND ((STARTS_WITH(dead_letter_id, @id0) OR event_id = @id0))"), "{bq}");
        assert_eq!(bq_params.len(), 2, "a named parameter is bound once");
    }
}
