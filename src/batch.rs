//! Validated rows on their way to the warehouse: what the worker batches and a warehouse lands.

use crate::envelope::Op;
use crate::schema::CellValue;

/// One event, validated and coerced to its table's columns.
#[derive(Debug, Clone, PartialEq)]
pub struct StagedRow {
    pub event_id: String,
    pub op: Op,
    /// Version of the key (upsert tables).
    pub version: Option<i64>,
    /// One cell per schema column, in column order.
    pub cells: Vec<CellValue>,
}

/// Rows for one table.
#[derive(Debug, Clone, PartialEq)]
pub struct TableBatch {
    pub table: String,
    pub rows: Vec<StagedRow>,
}
