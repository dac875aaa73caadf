//! The newest row per key of an upsert batch, chosen in Rust before the batch is staged, so the
//! `MERGE` reads its staging table as it is.
//!
//! Why: `sql::merge_versioned` picks each key's winner with `QUALIFY row_number() OVER (PARTITION
//! BY key ORDER BY …)`, a window that sorts the whole staging table. On the 200k-contacts benchmark
//! that window was a tenth of all the CPU, on the landing's thread. Here the same choice is a hash
//! lookup per row, and the losers are never staged.
//!
//! Invariant: [`newest_per_key`] picks what the SQL picks: per key, the highest version, then a
//! delete over an upsert, then the larger event id (both compare bytes, as DuckDB's default
//! collation does; a row without a version loses to one with, as `DESC` puts NULLs last). It gives
//! `None`, and the batch keeps the SQL window, whenever Rust's equality of two key cells might not be
//! SQL's: a NULL, FLOAT64 or NUMERIC/JSON key cell, or two different keys under one 64-bit hash.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use nohash_hasher::NoHashHasher;

use crate::batch::StagedRow;
use crate::envelope::Op;
use crate::schema::{CellValue, TableSchema};

/// The indexes of the rows to stage, in arrival order: each key's newest row. `None` when the batch
/// must keep the SQL window (see the module's invariant).
pub fn newest_per_key(table: &TableSchema, rows: &[StagedRow]) -> Option<Vec<usize>> {
    let key_columns: Vec<usize> = table.primary_key.iter().map(|k| table.column_index(k)).collect::<Option<_>>()?;
    let mut winners: HashMap<u64, usize, BuildHasherDefault<NoHashHasher<u64>>> =
        HashMap::with_capacity_and_hasher(rows.len(), Default::default());
    let mut key_bytes = Vec::new();
    for (index, row) in rows.iter().enumerate() {
        match winners.entry(key_hash(&key_columns, row, &mut key_bytes)?) {
            Entry::Vacant(slot) => {
                slot.insert(index);
            }
            Entry::Occupied(mut slot) => {
                let held = &rows[*slot.get()];
                if !key_columns.iter().all(|&c| row.cells.get(c) == held.cells.get(c)) {
                    return None; // two keys, one hash
                }
                if rank(row) > rank(held) {
                    slot.insert(index);
                }
            }
        }
    }
    let mut newest: Vec<usize> = winners.into_values().collect();
    newest.sort_unstable();
    Some(newest)
}

/// The order `sql::merge_versioned` ranks a key's rows by, highest first.
fn rank(row: &StagedRow) -> (Option<i64>, bool, &str) {
    (row.version, row.op == Op::Delete, &row.event_id)
}

/// A hash of the row's key cells, or `None` when a cell's equality in Rust might not be SQL's.
/// `bytes`: a buffer for the key's tagged bytes, reused from row to row.
fn key_hash(key_columns: &[usize], row: &StagedRow, bytes: &mut Vec<u8>) -> Option<u64> {
    bytes.clear();
    for &column in key_columns {
        match row.cells.get(column)? {
            CellValue::String(text) => tagged(bytes, 1, text.as_bytes()),
            CellValue::Bytes(value) => tagged(bytes, 2, value),
            CellValue::Int64(number) => tagged(bytes, 3, &number.to_le_bytes()),
            CellValue::Timestamp(micros) => tagged(bytes, 4, &micros.to_le_bytes()),
            CellValue::Date(days) => tagged(bytes, 5, &days.to_le_bytes()),
            CellValue::Bool(flag) => tagged(bytes, 6, &[*flag as u8]),
            // -0.0 = 0.0 and NaN in SQL; "1.0" = "1.00" as NUMERIC; NULL matches nothing.
            CellValue::Float64(_) | CellValue::JsonText(_) | CellValue::Null => return None,
        }
    }
    Some(xxhash_rust::xxh3::xxh3_64(bytes))
}

fn tagged(bytes: &mut Vec<u8>, tag: u8, value: &[u8]) {
    bytes.push(tag);
    bytes.extend_from_slice(&(value.len() as u64).to_le_bytes());
    bytes.extend_from_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(key_type: &str) -> TableSchema {
        serde_json::from_value(serde_json::json!({
            "table": "t", "write_mode": "upsert", "primary_key": ["id"], "version_column": "v",
            "columns": [{"name": "id", "type": key_type}, {"name": "v", "type": "INT64"}]
        }))
        .expect("a valid schema")
    }

    fn row(key: CellValue, version: i64, op: Op, event_id: &str) -> StagedRow {
        StagedRow::whole(event_id.into(), op, Some(version), vec![key, CellValue::Int64(version)])
    }

    fn text(key: &str) -> CellValue {
        CellValue::String(key.into())
    }

    #[test]
    fn each_key_keeps_its_highest_version_in_arrival_order() {
        let rows = [
            row(text("a"), 1, Op::Upsert, "e1"),
            row(text("b"), 5, Op::Upsert, "e2"),
            row(text("a"), 3, Op::Upsert, "e3"),
            row(text("a"), 2, Op::Upsert, "e4"),
            row(text("c"), 1, Op::Upsert, "e5"),
        ];
        assert_eq!(newest_per_key(&table("STRING"), &rows), Some(vec![1, 2, 4]));
    }

    #[test]
    fn on_equal_versions_a_delete_wins_then_the_larger_event_id() {
        let rows = [
            row(text("a"), 2, Op::Upsert, "e9"),
            row(text("a"), 2, Op::Delete, "e1"),
            row(text("b"), 2, Op::Upsert, "e1"),
            row(text("b"), 2, Op::Upsert, "e2"),
        ];
        assert_eq!(newest_per_key(&table("STRING"), &rows), Some(vec![1, 3]));
    }

    #[test]
    fn a_row_with_a_version_beats_one_without() {
        let mut unversioned = row(text("a"), 0, Op::Upsert, "e9");
        unversioned.version = None;
        let rows = [unversioned, row(text("a"), -5, Op::Upsert, "e1")];
        assert_eq!(newest_per_key(&table("STRING"), &rows), Some(vec![1]));
    }

    #[test]
    fn a_string_and_a_number_of_the_same_text_are_different_keys() {
        let rows = [row(text("1"), 1, Op::Upsert, "e1"), row(CellValue::Int64(1), 1, Op::Upsert, "e2")];
        assert_eq!(newest_per_key(&table("STRING"), &rows), Some(vec![0, 1]));
    }

    #[test]
    fn keys_without_an_exact_equality_keep_the_sql_window() {
        let float = [row(CellValue::Float64(0.0), 1, Op::Upsert, "e1")];
        assert_eq!(newest_per_key(&table("FLOAT64"), &float), None);
        let numeric = [row(CellValue::JsonText("1.0".into()), 1, Op::Upsert, "e1")];
        assert_eq!(newest_per_key(&table("NUMERIC"), &numeric), None);
        let null = [row(CellValue::Null, 1, Op::Upsert, "e1")];
        assert_eq!(newest_per_key(&table("STRING"), &null), None);
    }
}
