//! Append tables land straight into their DuckDB table through the Arrow appender, deduplicated by
//! event id without reading the table on each flush.
//!
//! The SQL path (`sql::insert_new_events`) stages a batch, then inserts the rows whose event id the
//! table lacks: an anti-join that scans every stored event id on every flush, so its cost grows with
//! the table, and every row is written twice (staging, then the table).
//!
//! Invariant: [`SeenEvents`] holds, per append table, the 64-bit xxh3 of every event id committed in
//! the table by this process or present when the index was loaded (the warehouse file is held by one
//! process, so nothing else adds rows meanwhile). It may hold more (rows archived since): a false
//! "seen" only sends a batch down the exact SQL path. It never holds less: hashes are added only after
//! the transaction that stored them committed. So a batch none of whose hashes is in the index, and
//! none repeated within the batch, holds only new events, and is appended as it is. Any other batch
//! (a redelivery, a replay, a reset source, a 1-in-2^64 collision) takes the SQL path, which compares
//! the event ids themselves.
//!
//! Memory: about 20 bytes per stored event (1M events, ~19 MiB). Tables with more rows than
//! `[warehouse.duckdb] event_index_max_rows` keep the SQL path.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use duckdb::arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, ListBuilder, StringBuilder, TimestampMicrosecondBuilder,
};
use duckdb::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use duckdb::arrow::record_batch::RecordBatch;
use nohash_hasher::NoHashHasher;
use serde_json::value::RawValue;
use serde_json::Value;

use super::sql::{self, StagingType};
use crate::batch::StagedRow;
use crate::schema::{CellValue, Column, ColumnMode, ColumnType, TableSchema, WriteMode};

/// Hashes are already uniform: the set uses them as they are.
type HashSet64 = HashSet<u64, BuildHasherDefault<NoHashHasher<u64>>>;

/// The hash of an event id in the index.
pub fn event_hash(event_id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(event_id.as_bytes())
}

/// Per append table: the hashes of its stored event ids, or `None` when the table is too large to
/// index (it keeps the SQL path).
#[derive(Default)]
pub struct SeenEvents {
    tables: HashMap<String, Option<HashSet64>>,
}

/// What one append batch needs after it landed: the hashes to add once the transaction committed.
pub struct Landed {
    pub table: String,
    pub hashes: Vec<u64>,
}

impl SeenEvents {
    /// Adds the hashes of a committed landing.
    pub fn commit(&mut self, landed: Vec<Landed>) {
        for Landed { table, hashes } in landed {
            if let Some(Some(index)) = self.tables.get_mut(&table) {
                index.extend(hashes);
            }
        }
    }

    /// The table's index, loaded from the table the first time (one scan of its event ids per
    /// process), or `None` when the table holds more than `max_rows` rows.
    fn index(
        &mut self,
        connection: &duckdb::Connection,
        table: &TableSchema,
        max_rows: u64,
    ) -> duckdb::Result<Option<&HashSet64>> {
        if !self.tables.contains_key(&table.table) {
            let target = sql::quote_ident(&table.table);
            let rows: i64 = connection.query_row(&format!("SELECT count(*) FROM {target}"), [], |r| r.get(0))?;
            let index = if rows as u64 > max_rows {
                tracing::info!(table = %table.table, rows, max_rows, "table larger than event_index_max_rows: appends deduplicate in SQL");
                None
            } else {
                let mut index = HashSet64::with_capacity_and_hasher(rows as usize, Default::default());
                let mut statement =
                    connection.prepare(&format!("SELECT {} FROM {target}", sql::quote_ident(sql::EVENT_ID)))?;
                let mut cursor = statement.query([])?;
                while let Some(row) = cursor.next()? {
                    index.insert(event_hash(row.get_ref(0)?.as_str().unwrap_or_default()));
                }
                Some(index)
            };
            self.tables.insert(table.table.clone(), index);
        }
        Ok(self.tables.get(&table.table).and_then(Option::as_ref))
    }
}

/// Whether `table` can take the direct append: an append table whose every column has an Arrow type
/// the appender converts to the table's own type (NUMERIC, JSON and RECORD are cast in SQL).
pub fn appendable(table: &TableSchema) -> bool {
    table.write_mode == WriteMode::Append
        && table.columns.iter().all(|c| match c.mode {
            ColumnMode::Repeated => list_element(c).is_some(),
            _ => !matches!(c.column_type, ColumnType::Numeric | ColumnType::Json | ColumnType::Record),
        })
}

fn list_element(column: &Column) -> Option<StagingType> {
    match column.column_type {
        ColumnType::String => Some(StagingType::Varchar),
        ColumnType::Int64 => Some(StagingType::Bigint),
        ColumnType::Float64 => Some(StagingType::Double),
        ColumnType::Bool => Some(StagingType::Boolean),
        _ => None,
    }
}

/// What the index says of a batch, with the hashes of its event ids (to add once it committed).
pub enum Novelty {
    /// None of its events is in the index, and none is twice in the batch: it can be appended.
    New(Vec<u64>),
    /// Some event may be stored already (a redelivery, a replay, a reset source): the exact path.
    MaybeStored(Vec<u64>),
    /// The table is too large to index (`event_index_max_rows`): the exact path, nothing to add.
    Unindexed,
}

/// Whether every row of a batch is certainly new, by the table's index.
pub fn novelty(
    seen: &mut SeenEvents,
    connection: &duckdb::Connection,
    table: &TableSchema,
    rows: &[StagedRow],
    max_rows: u64,
) -> duckdb::Result<Novelty> {
    let Some(index) = seen.index(connection, table, max_rows)? else {
        return Ok(Novelty::Unindexed);
    };
    let hashes: Vec<u64> = rows.iter().map(|row| event_hash(&row.event_id)).collect();
    let mut in_batch = HashSet64::with_capacity_and_hasher(rows.len(), Default::default());
    let new = hashes.iter().all(|hash| !index.contains(hash) && in_batch.insert(*hash));
    Ok(if new { Novelty::New(hashes) } else { Novelty::MaybeStored(hashes) })
}

/// Appends rows known to be new straight into the table, in the caller's transaction. `stored_id`:
/// whether the table stores `_bqsync_event_id` (see [`sql::event_id_column`]).
pub fn append(
    tx: &duckdb::Transaction,
    table: &TableSchema,
    rows: &[StagedRow],
    stored_id: bool,
) -> duckdb::Result<usize> {
    // The same landing time the SQL path writes (`now()::TIMESTAMP`, in DuckDB's time zone setting).
    let landed_at: i64 = tx.query_row("SELECT epoch_us(now()::TIMESTAMP)", [], |r| r.get(0))?;
    let mut chunks = rows.chunks(APPEND_CHUNK_ROWS).map(|chunk| record_batch(table, chunk, landed_at, stored_id));
    let Some(first) = chunks.next() else {
        return Ok(0);
    };
    let names: Vec<String> = first.schema().fields().iter().map(|f| f.name().clone()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut appender = tx.appender_with_columns(&table.table, &names)?;
    appender.append_record_batch(first)?;
    for batch in chunks {
        appender.append_record_batch(batch)?;
    }
    appender.flush()?;
    Ok(rows.len())
}

/// Rows per record batch handed to the appender: DuckDB's vector size. duckdb-rs appends a record
/// batch in slices of that size, and for a list column it writes the slice's whole child array,
/// which for a slice of a larger batch holds the elements of every row of the batch (arrow's
/// `ListArray::slice` slices the offsets, not the values): a 20,000-row batch of atoms had its
/// `tags` written ten times over, and the work grew with the square of the batch. A record batch of
/// one vector's rows owns exactly its elements.
const APPEND_CHUNK_ROWS: usize = 2048;

/// The rows as the table's own columns (named), plus the event id (when stored) and landing time;
/// the version column stays NULL and the deleted flag takes its default (false), as the SQL path
/// writes them.
fn record_batch(table: &TableSchema, rows: &[StagedRow], landed_at: i64, stored_id: bool) -> RecordBatch {
    let n = rows.len();
    let mut fields = Vec::with_capacity(table.columns.len() + 2);
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(table.columns.len() + 2);
    for (index, column) in table.columns.iter().enumerate() {
        let cells = rows.iter().map(|row| row.cells.get(index).unwrap_or(&CellValue::Null));
        let (data_type, array) = match column.mode {
            ColumnMode::Repeated => list_array(column, cells, n),
            _ => super::duckdb_arrow::column_array(sql::staging_type(column), cells, n),
        };
        fields.push(Field::new(&column.name, data_type, true));
        arrays.push(array);
    }
    if stored_id {
        let mut event_ids = StringBuilder::with_capacity(n, n * 36);
        rows.iter().for_each(|row| event_ids.append_value(&row.event_id));
        fields.push(Field::new(sql::EVENT_ID, DataType::Utf8, false));
        arrays.push(Arc::new(event_ids.finish()));
    }
    let mut landed = TimestampMicrosecondBuilder::with_capacity(n);
    (0..n).for_each(|_| landed.append_value(landed_at));
    fields.push(Field::new(sql::LANDED_AT, DataType::Timestamp(TimeUnit::Microsecond, None), false));
    arrays.push(Arc::new(landed.finish()));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).expect("arrays match their fields")
}

/// A REPEATED scalar column as an Arrow list. Coercion normalized each cell to a JSON array of the
/// element type (`[1,2]`), so the elements parse as they are; anything else is a bug and lands empty.
fn list_array<'a>(column: &Column, cells: impl Iterator<Item = &'a CellValue>, n: usize) -> (DataType, ArrayRef) {
    let items = |cell: &CellValue| match cell {
        CellValue::JsonText(text) => serde_json::from_str::<Vec<Value>>(text).unwrap_or_default(),
        _ => Vec::new(),
    };
    macro_rules! list {
        ($builder:expr, $data_type:expr, $append:expr) => {{
            let mut list = ListBuilder::with_capacity($builder, n);
            for cell in cells {
                for item in items(cell) {
                    $append(list.values(), item);
                }
                list.append(true);
            }
            let field = Field::new("item", $data_type, true);
            (DataType::List(Arc::new(field)), Arc::new(list.finish()) as ArrayRef)
        }};
    }
    match list_element(column) {
        Some(StagingType::Bigint) => {
            list!(Int64Builder::new(), DataType::Int64, |b: &mut Int64Builder, v: Value| b.append_option(v.as_i64()))
        }
        Some(StagingType::Double) => {
            list!(Float64Builder::new(), DataType::Float64, |b: &mut Float64Builder, v: Value| b
                .append_option(v.as_f64()))
        }
        Some(StagingType::Boolean) => {
            list!(BooleanBuilder::new(), DataType::Boolean, |b: &mut BooleanBuilder, v: Value| b
                .append_option(v.as_bool()))
        }
        _ => string_list_array(cells, n),
    }
}

/// [`list_array`] of strings: each element is appended from its JSON text, unescaped only when it
/// holds an escape (a `Value` per element was a tenth of the 1M-atoms run's allocations).
fn string_list_array<'a>(cells: impl Iterator<Item = &'a CellValue>, n: usize) -> (DataType, ArrayRef) {
    let mut list = ListBuilder::with_capacity(StringBuilder::new(), n);
    for cell in cells {
        let items = match cell {
            CellValue::JsonText(text) => serde_json::from_str::<Vec<&RawValue>>(text).unwrap_or_default(),
            _ => Vec::new(),
        };
        for item in items {
            match crate::schema::plain_json_string(item.get()) {
                Some(text) => list.values().append_value(text),
                None => match serde_json::from_str::<String>(item.get()) {
                    Ok(text) => list.values().append_value(text),
                    Err(_) => list.values().append_null(),
                },
            }
        }
        list.append(true);
    }
    let field = Field::new("item", DataType::Utf8, true);
    (DataType::List(Arc::new(field)), Arc::new(list.finish()) as ArrayRef)
}

#[cfg(test)]
mod tests {
    use duckdb::arrow::array::{Array, ListArray, StringArray};

    use super::*;

    /// Elements are taken from their JSON text: plain ones as they are, escaped ones unescaped.
    #[test]
    fn string_lists_keep_every_element_and_unescape_only_escapes() {
        let cells = [
            CellValue::JsonText(r#"["web","eu"]"#.into()),
            CellValue::JsonText(r#"["say \"hi\"","a\\b","\u00e9"]"#.into()),
            CellValue::JsonText("[]".into()),
            CellValue::Null,
        ];
        let (_, array) = string_list_array(cells.iter(), cells.len());
        let lists = array.as_any().downcast_ref::<ListArray>().expect("a list array");
        let row = |i: usize| {
            let values = lists.value(i);
            let strings = values.as_any().downcast_ref::<StringArray>().expect("strings");
            (0..strings.len()).map(|j| strings.value(j).to_string()).collect::<Vec<_>>()
        };
        assert_eq!(row(0), ["web", "eu"]);
        assert_eq!(row(1), ["say \"hi\"", "a\\b", "é"]);
        assert!(row(2).is_empty() && row(3).is_empty());
    }
}
