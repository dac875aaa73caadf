//! Validated rows on their way to the warehouse: what the worker batches and a warehouse lands.

use crate::envelope::Op;
use crate::schema::CellValue;

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
