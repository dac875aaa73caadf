//! Validated rows on their way to the warehouse: what the worker batches and a warehouse lands.

use std::borrow::Cow;

use crate::envelope::Op;
use crate::schema::{CellValue, TableSchema, WriteMode};

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
