//! Arrow columns from coerced cells, for the DuckDB appender: the staging tables' and the direct
//! appends' (see [`super::duckdb_append`]).

use std::sync::Arc;

use duckdb::arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use duckdb::arrow::datatypes::{DataType, TimeUnit};

use super::sql::StagingType;
use crate::schema::CellValue;

/// One Arrow column. Cells were coerced to the column's type before, so a mismatch is a bug: it lands
/// as NULL rather than panicking the worker.
pub(super) fn column_array<'a>(
    staging: StagingType,
    cells: impl Iterator<Item = &'a CellValue>,
    n: usize,
) -> (DataType, ArrayRef) {
    match staging {
        StagingType::Varchar => {
            let mut b = StringBuilder::with_capacity(n, n * 32);
            for cell in cells {
                match cell {
                    CellValue::String(s) | CellValue::JsonText(s) => b.append_value(s),
                    _ => b.append_null(),
                }
            }
            (DataType::Utf8, Arc::new(b.finish()))
        }
        StagingType::Bigint => {
            let mut b = Int64Builder::with_capacity(n);
            cells.for_each(|c| b.append_option(if let CellValue::Int64(v) = c { Some(*v) } else { None }));
            (DataType::Int64, Arc::new(b.finish()))
        }
        StagingType::Double => {
            let mut b = Float64Builder::with_capacity(n);
            cells.for_each(|c| b.append_option(if let CellValue::Float64(v) = c { Some(*v) } else { None }));
            (DataType::Float64, Arc::new(b.finish()))
        }
        StagingType::Boolean => {
            let mut b = BooleanBuilder::with_capacity(n);
            cells.for_each(|c| b.append_option(if let CellValue::Bool(v) = c { Some(*v) } else { None }));
            (DataType::Boolean, Arc::new(b.finish()))
        }
        StagingType::Timestamp => {
            let mut b = TimestampMicrosecondBuilder::with_capacity(n);
            cells.for_each(|c| b.append_option(if let CellValue::Timestamp(v) = c { Some(*v) } else { None }));
            (DataType::Timestamp(TimeUnit::Microsecond, None), Arc::new(b.finish()))
        }
        StagingType::Date => {
            let mut b = Date32Builder::with_capacity(n);
            cells.for_each(|c| b.append_option(if let CellValue::Date(v) = c { Some(*v) } else { None }));
            (DataType::Date32, Arc::new(b.finish()))
        }
        StagingType::Blob => {
            let mut b = BinaryBuilder::with_capacity(n, n * 64);
            for cell in cells {
                match cell {
                    CellValue::Bytes(v) => b.append_value(v),
                    _ => b.append_null(),
                }
            }
            (DataType::Binary, Arc::new(b.finish()))
        }
    }
}
