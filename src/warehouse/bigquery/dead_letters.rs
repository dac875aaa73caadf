//! Dead letters in BigQuery: rows the Storage Write API rejected become `warehouse_rejected` dead
//! letters (with BigQuery's message and an envelope rebuilt from the row, so they can be replayed),
//! and `bqsync dlq` reads them back from the live view of `dead_letters` (fresh, not only applied).

use serde_json::{Map, Value};

use super::sql as bsql;
use crate::batch::{StagedRow, TableBatch};
use crate::dead_letter::{DeadLetter, DeadLetterReason, DeadLetterRecord};
use crate::message::{Attributes, Message};
use crate::schema::{encode_base64, Catalog, CellValue, Column, ColumnMode, ColumnType, TableSchema};
pub use crate::warehouse::{format_date, format_timestamp};

/// Dead-letter rows for the rows of `batch` BigQuery rejected: (index in the batch, its message).
pub fn rejected(
    catalog: &Catalog,
    schema: &TableSchema,
    batch: &TableBatch,
    rejected: &[(usize, String)],
) -> Vec<StagedRow> {
    let no_attributes = Attributes::new();
    let now = chrono::Utc::now().timestamp_micros();
    rejected
        .iter()
        .filter_map(|(index, message)| {
            let row = batch.rows.get(*index)?;
            let data = rebuilt_envelope(schema, row);
            let rebuilt =
                Message { data: &data, attributes: &no_attributes, delivery_attempt: 1, first_attempt_micros: now };
            let dead = DeadLetter {
                reason: DeadLetterReason::WarehouseRejected,
                detail: format!("BigQuery rejected the row: {message}"),
                table: Some(schema.table.clone()),
                event_id: Some(row.event_id.clone()),
            };
            tracing::warn!(table = %schema.table, event_id = %row.event_id, detail = %dead.detail, "dead-lettered");
            Some(dead.row(catalog, rebuilt))
        })
        .collect()
}

/// A dead letter from a row of `select_dead_letters`.
pub fn record(r: &[Value]) -> DeadLetterRecord {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    let int = |v: Option<&Value>| text(v).and_then(|t| t.parse::<i64>().ok());
    let bytes = text(r.get(6)).and_then(|b| crate::schema::decode_base64(&b)).unwrap_or_default();
    DeadLetterRecord {
        dead_letter_id: text(r.first()).unwrap_or_default(),
        event_id: text(r.get(1)),
        table_name: text(r.get(2)),
        reason: text(r.get(3)).unwrap_or_default(),
        detail: text(r.get(4)),
        source: text(r.get(5)),
        message: String::from_utf8_lossy(&bytes).into_owned(),
        message_bytes: bytes,
        attributes: text(r.get(7)).and_then(|a| serde_json::from_str(&a).ok()).unwrap_or(Value::Null),
        delivery_attempts: int(r.get(8)),
        first_failed_micros: int(r.get(9)),
        last_failed_micros: int(r.get(10)).unwrap_or(0),
        bqsync_version: text(r.get(11)),
        replayed_micros: int(r.get(12)),
    }
}

/// The row's cells as JSON values BigQuery's JSON API reads: INT64 and NUMERIC as strings (no
/// precision loss), TIMESTAMP as RFC 3339 UTC, DATE as `YYYY-MM-DD`, BYTES as base64, RECORD and
/// REPEATED as JSON structures; a JSON column as its text when `json_as_text` (insertAll wants that).
pub fn payload_json(schema: &TableSchema, row: &StagedRow, json_as_text: bool) -> Map<String, Value> {
    let mut json = Map::with_capacity(schema.columns.len() + 4);
    for (column, cell) in schema.columns.iter().zip(&row.cells) {
        if let Some(value) = cell_json(column, cell, json_as_text) {
            json.insert(column.name.clone(), value);
        }
    }
    json
}

fn cell_json(column: &Column, cell: &CellValue, json_as_text: bool) -> Option<Value> {
    Some(match cell {
        CellValue::Null => return None,
        CellValue::String(s) => Value::String(s.clone()),
        CellValue::Int64(v) => Value::String(v.to_string()),
        CellValue::Float64(v) if v.is_finite() => serde_json::Number::from_f64(*v).map_or(Value::Null, Value::Number),
        CellValue::Float64(v) => Value::String(
            if v.is_nan() {
                "NaN"
            } else if *v > 0.0 {
                "Infinity"
            } else {
                "-Infinity"
            }
            .into(),
        ),
        CellValue::Bool(v) => Value::Bool(*v),
        CellValue::Timestamp(micros) => Value::String(format_timestamp(*micros)),
        CellValue::Date(days) => Value::String(format_date(*days)),
        CellValue::Bytes(bytes) => Value::String(encode_base64(bytes)),
        CellValue::JsonText(text) => {
            let structured = column.mode == ColumnMode::Repeated || bsql::field_type(column) == "RECORD";
            if column.column_type == ColumnType::Numeric || (!structured && json_as_text) {
                Value::String(text.clone())
            } else {
                serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone()))
            }
        }
    })
}

/// An envelope for a row BigQuery rejected, so the dead letter can be inspected and replayed.
fn rebuilt_envelope(schema: &TableSchema, row: &StagedRow) -> Vec<u8> {
    let payload = payload_json(schema, row, false);
    let key: Map<String, Value> =
        schema.primary_key.iter().filter_map(|k| payload.get(k).map(|v| (k.clone(), v.clone()))).collect();
    let payload_text = serde_json::to_string(&payload).expect("a JSON object serializes");
    // The original time is not carried this far; a fixed one keeps the bytes, and so the dead-letter
    // id, the same when the batch is landed again.
    let produced_at = format_timestamp(0);
    let event = crate::envelope::ChangeEvent {
        event_id: row.event_id.clone(),
        table: &schema.table,
        op: row.op,
        key: (!key.is_empty()).then_some(key),
        version: row.version,
        payload: &payload_text,
        source: "bigquery:rejected",
        produced_at: &produced_at,
    };
    event.to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Op;

    #[test]
    fn cells_encode_as_bigquery_json() {
        let catalog = crate::schema::project_catalog();
        let atoms = catalog.get("atoms").unwrap();
        let cells: Vec<CellValue> = atoms
            .columns
            .iter()
            .map(|c| match c.name.as_str() {
                "event_id" => CellValue::String("e".into()),
                "score" => CellValue::Float64(1.5),
                "tags" => CellValue::JsonText("[\"a\",\"b\"]".into()),
                "created_at" => CellValue::Timestamp(1_704_067_200_000_001),
                _ => CellValue::Null,
            })
            .collect();
        let json = payload_json(atoms, &StagedRow::whole("e".into(), Op::Insert, None, cells), true);
        assert_eq!(json["created_at"], "2024-01-01T00:00:00.000001Z");
        assert_eq!(json["tags"], serde_json::json!(["a", "b"]));
        assert_eq!(json["score"], 1.5);
        assert!(!json.contains_key("text"), "NULL cells are left out");
        assert_eq!(format_date(19723), "2024-01-01");
        assert_eq!(
            cell_json(&atoms.columns[0], &CellValue::Int64(i64::MAX), true),
            Some(Value::String(i64::MAX.to_string()))
        );
    }

    #[test]
    fn base64_encodes_with_padding() {
        assert_eq!(encode_base64(b""), "");
        assert_eq!(encode_base64(b"h"), "aA==");
        assert_eq!(encode_base64(b"hi"), "aGk=");
        assert_eq!(encode_base64(b"hi!"), "aGkh");
        assert_eq!(encode_base64(&[0xff, 0xfe, 0xfd, 0x00]), "//79AA==");
    }
}
