//! Validated rows on their way to the warehouse: what the worker batches and a warehouse lands.

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::envelope::{Op, RawPayload};
use crate::schema::{coerce_raw_fields, coerce_value, CellValue, TableSchema, WriteMode};

/// One event, validated and coerced to its table's columns.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StagedRow {
    pub event_id: String,
    pub op: Op,
    /// Version of the key (upsert tables).
    pub version: Option<i64>,
    /// One cell per schema column, in column order.
    pub cells: Vec<CellValue>,
    /// Indexes of the schema columns the record did not carry, for `"upsert": "patch"` tables only
    /// (their stored values stay). Empty everywhere else: there a missing column is NULL.
    pub absent: Vec<usize>,
}

impl StagedRow {
    /// A row that carries every column (its missing values are NULL).
    pub fn whole(event_id: String, op: Op, version: Option<i64>, cells: Vec<CellValue>) -> StagedRow {
        StagedRow { event_id, op, version, cells, absent: Vec::new() }
    }

    /// Whether the record carried column `index` (always, outside patch tables).
    pub fn carries(&self, index: usize) -> bool {
        !self.absent.contains(&index)
    }
}

/// Rows for one table.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TableBatch {
    pub table: String,
    pub rows: Vec<StagedRow>,
}

/// The row the worker lands for an event of `schema`, or why the event does not fit it (the detail of a
/// `schema` dead letter). The worker makes every row of an event message with it, and a producer that
/// stages rows itself (see [`crate::bus::StagedRows`]) makes them with it too, so both give one row.
pub fn event_row(
    schema: &TableSchema,
    op: Op,
    key: Option<&Map<String, Value>>,
    version: Option<i64>,
    event_id: String,
    payload: &RawPayload<'_>,
) -> Result<StagedRow, String> {
    match (schema.write_mode, op) {
        (WriteMode::Append, Op::Insert) | (WriteMode::Upsert, Op::Upsert | Op::Delete) => {}
        (mode, op) => {
            return Err(
                format!("op `{op:?}` does not apply to table `{}` (write_mode {mode:?})", schema.table).to_lowercase()
            )
        }
    }
    let mut cells =
        coerce_raw_fields(schema, payload.fields(), |name| payload.raw(name), op == Op::Delete).map_err(|e| e.0)?;
    if let Some(values) = key {
        for (column, value) in values {
            if !schema.primary_key.contains(column) {
                continue;
            }
            if let Some(said) = payload.get(column).filter(|p| p != value) {
                return Err(format!("key `{column}` is {value} but the payload says {said}"));
            }
        }
    }
    if op == Op::Delete {
        // A tombstone keeps only its key and version; the other columns are cleared.
        for (cell, column) in cells.iter_mut().zip(&schema.columns) {
            if !schema.primary_key.contains(&column.name) && schema.version_column.as_deref() != Some(&column.name) {
                *cell = CellValue::Null;
            }
        }
        for column in &schema.primary_key {
            let index = schema.column_index(column).expect("checked key");
            if cells[index] == CellValue::Null {
                let from_key = key.and_then(|k| k.get(column));
                cells[index] = coerce_value(&schema.columns[index], from_key, false).map_err(|e| e.0)?;
            }
        }
    }
    // A patch carries only some columns; a tombstone clears them all, so it carries every one.
    let absent = if schema.patches() && op == Op::Upsert {
        (0..schema.columns.len()).filter(|&i| !payload.contains(&schema.columns[i].name)).collect()
    } else {
        Vec::new()
    };
    let event_id = match id_from_field(schema, &cells) {
        Some(id) if id != event_id.as_str() => id.into_owned(),
        _ => event_id,
    };
    Ok(StagedRow { event_id, op, version, cells, absent })
}

/// An append table's `event_id_field` is its rows' event id: the row takes the field's value when
/// the envelope says otherwise. Producers set both alike; they differ when an event was published
/// before its table had a schema (its id was then derived from its content, and it was
/// dead-lettered) and is replayed after `schema infer` named the field. The DuckDB warehouse relies
/// on it to compute `_bqsync_event_id` from the field ([`crate::warehouse::sql::event_id_column`]).
pub fn id_from_field<'a>(schema: &TableSchema, cells: &'a [CellValue]) -> Option<Cow<'a, str>> {
    if schema.write_mode != WriteMode::Append {
        return None;
    }
    match cells.get(schema.column_index(schema.event_id_field.as_deref()?)?)? {
        CellValue::String(text) => Some(Cow::Borrowed(text)),
        CellValue::Int64(number) => Some(Cow::Owned(number.to_string())),
        _ => None,
    }
}
