//! Schema coercion of any JSON value into every column of every table, and of any JSON object as
//! the payload of an event for every table. Properties:
//! - nothing panics;
//! - a TIMESTAMP that coerces prints as RFC 3339 and reads back to the same microsecond (what
//!   DuckDB and BigQuery are sent is what was read);
//! - an INT64 coerced from a JSON integer is that integer;
//! - a value coerced from its JSON text (the worker's way) gives what its parsed `Value` gives.

#![no_main]

use bqsync::envelope::{ChangeEvent, Op};
use bqsync::message::{Attributes, Message};
use bqsync::schema::{coerce_raw_value, coerce_value, parse_timestamp_micros, CellValue, ColumnType, WriteMode};
use bqsync::worker::classify::{Classified, Classifier};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

#[path = "shared.rs"]
#[allow(dead_code)] // each target uses part of it
mod shared;

fuzz_target!(|data: &[u8]| {
    let catalog = shared::catalog();
    let parsed = serde_json::from_slice::<Value>(data).ok();
    // The text path is compared only where the bytes are JSON (the fallback below is not their text).
    let raw = parsed.as_ref().and_then(|_| serde_json::from_slice::<&serde_json::value::RawValue>(data).ok());
    let value = parsed.unwrap_or_else(|| Value::String(String::from_utf8_lossy(data).into()));
    for table in catalog.tables() {
        for column in &table.columns {
            if let Some(raw) = raw {
                assert_eq!(
                    coerce_raw_value(column, Some(raw.get()), true),
                    coerce_value(column, Some(&value), true),
                    "{} into {}",
                    raw.get(),
                    column.name
                );
            }
            let Ok(cell) = coerce_value(column, Some(&value), true) else { continue };
            match (&cell, column.column_type) {
                (CellValue::Timestamp(micros), ColumnType::Timestamp) => {
                    let text = bqsync::warehouse::format_timestamp(*micros);
                    let back = parse_timestamp_micros(&Value::String(text.clone()));
                    assert_eq!(back, Some(*micros), "{value} → {micros} µs → {text} → {back:?}");
                }
                (CellValue::Int64(i), ColumnType::Int64) => {
                    if let Some(n) = value.as_i64() {
                        assert_eq!(*i, n);
                    }
                }
                _ => {}
            }
        }
    }
    let Value::Object(payload) = &value else { return };
    let text = serde_json::to_string(payload).unwrap();
    for table in catalog.tables() {
        let (op, key, version) = match table.write_mode {
            WriteMode::Append => (Op::Insert, None, None),
            WriteMode::Upsert => {
                let key = table
                    .primary_key
                    .iter()
                    .map(|k| (k.clone(), payload.get(k).cloned().unwrap_or(Value::Null)))
                    .collect();
                (Op::Upsert, Some(key), Some(1))
            }
        };
        let event = ChangeEvent {
            event_id: "fuzz".into(),
            table: &table.table,
            op,
            key,
            version,
            payload: &text,
            source: "fuzz",
            produced_at: "2026-12-06T00:00:00Z",
        };
        let bytes = event.to_bytes();
        let attributes = Attributes::new();
        let message = Message { data: &bytes, attributes: &attributes, delivery_attempt: 1, first_attempt_micros: 0 };
        if let Classified::Row { row, .. } = (Classifier { catalog, max_event_bytes: 1 << 20 }).classify(message) {
            assert_eq!(row.cells.len(), table.columns.len());
        }
    }
});
