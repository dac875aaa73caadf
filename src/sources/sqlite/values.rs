//! SQLite values and watermarks: reading rows as [`SqlValue`]s, and saving a watermark in the
//! state file in a form that reads back as the same value.

use rusqlite::types::ValueRef;
use rusqlite::Connection;
use serde_json::Value;

use crate::sources::rows::SqlValue;

/// A SQLite identifier, quoted.
pub(crate) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn sqlite_value(value: ValueRef<'_>) -> SqlValue {
    match value {
        ValueRef::Null => SqlValue::Null,
        ValueRef::Integer(i) => SqlValue::Integer(i),
        ValueRef::Real(f) => SqlValue::Real(f),
        ValueRef::Text(t) => SqlValue::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => SqlValue::Blob(b.to_vec()),
    }
}

impl rusqlite::ToSql for SqlValue {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, Value as V};
        Ok(ToSqlOutput::Owned(match self {
            SqlValue::Null => V::Null,
            SqlValue::Integer(i) | SqlValue::Timestamp(i) => V::Integer(*i),
            SqlValue::Real(f) => V::Real(*f),
            SqlValue::Text(s) => V::Text(s.clone()),
            SqlValue::Blob(b) => V::Blob(b.clone()),
        }))
    }
}

/// Rows of a query: column names once, then values. The first `hidden` columns are bqsync's own
/// (watermark, rowid) and are returned apart.
pub(crate) struct ReadRows {
    pub names: Vec<String>,
    pub rows: Vec<Vec<SqlValue>>,
}

/// `expected_rows`: the capacity to reserve (a page's LIMIT), so a page is not grown by doubling.
pub(crate) fn read_rows(
    connection: &Connection,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
    expected_rows: usize,
) -> rusqlite::Result<ReadRows> {
    let mut statement = connection.prepare_cached(sql)?;
    let names: Vec<String> = statement.column_names().into_iter().map(String::from).collect();
    let width = names.len();
    let mut rows = Vec::with_capacity(expected_rows);
    let mut cursor = statement.query(params)?;
    while let Some(row) = cursor.next()? {
        rows.push((0..width).map(|i| row.get_ref(i).map(sqlite_value)).collect::<rusqlite::Result<Vec<_>>>()?);
    }
    Ok(ReadRows { names, rows })
}

/// Watermarks are saved as JSON `[type, value]`.
pub(super) fn encode_watermark(value: &SqlValue) -> String {
    match value {
        SqlValue::Integer(i) => serde_json::json!(["i", i]),
        SqlValue::Real(f) => serde_json::json!(["r", f]),
        SqlValue::Text(s) => serde_json::json!(["t", s]),
        SqlValue::Timestamp(t) => serde_json::json!(["ts", t]),
        SqlValue::Null | SqlValue::Blob(_) => serde_json::json!(["null"]),
    }
    .to_string()
}

pub(super) fn decode_watermark(text: &str) -> Option<SqlValue> {
    let value: Value = serde_json::from_str(text).ok()?;
    match (value.get(0)?.as_str()?, value.get(1)) {
        ("i", Some(v)) => v.as_i64().map(SqlValue::Integer),
        ("r", Some(v)) => v.as_f64().map(SqlValue::Real),
        ("t", Some(v)) => v.as_str().map(|s| SqlValue::Text(s.to_string())),
        ("ts", Some(v)) => v.as_i64().map(SqlValue::Timestamp),
        _ => None,
    }
}

/// The watermark minus the overlap, in the watermark's own representation (so the comparison in
/// SQL stays a plain, indexable one).
pub(super) fn overlap_bound(watermark: &SqlValue, overlap_secs: u64) -> SqlValue {
    let overlap = overlap_secs as i64;
    match watermark {
        SqlValue::Integer(i) => {
            let unit = match i.unsigned_abs() {
                n if n > 100_000_000_000_000 => 1_000_000, // microseconds
                n if n > 100_000_000_000 => 1_000,         // milliseconds
                _ => 1,
            };
            SqlValue::Integer(i.saturating_sub(overlap.saturating_mul(unit)))
        }
        SqlValue::Real(f) => SqlValue::Real(f - overlap as f64),
        SqlValue::Timestamp(t) => SqlValue::Timestamp(t.saturating_sub(overlap.saturating_mul(1_000_000))),
        SqlValue::Text(s) => {
            let Some(micros) = crate::schema::parse_timestamp_text(s) else {
                return watermark.clone();
            };
            let separator = if s.as_bytes().get(10) == Some(&b' ') { ' ' } else { 'T' };
            let bound = chrono::DateTime::from_timestamp_micros(micros - overlap * 1_000_000)
                .expect("in range")
                .format(&format!("%Y-%m-%d{separator}%H:%M:%S"))
                .to_string();
            SqlValue::Text(bound)
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn overlap_bounds_keep_the_watermark_format() {
        assert_eq!(
            overlap_bound(&SqlValue::Text("2024-01-01 10:00:00.5".into()), 60),
            SqlValue::Text("2024-01-01 09:59:00".into())
        );
        assert_eq!(
            overlap_bound(&SqlValue::Text("2024-01-01T10:00:00Z".into()), 60),
            SqlValue::Text("2024-01-01T09:59:00".into())
        );
        assert_eq!(overlap_bound(&SqlValue::Integer(1_700_000_000), 60), SqlValue::Integer(1_699_999_940));
        assert_eq!(overlap_bound(&SqlValue::Integer(1_700_000_000_000), 1), SqlValue::Integer(1_699_999_999_000));
        for value in [SqlValue::Integer(-3), SqlValue::Text("x".into()), SqlValue::Real(1.5), SqlValue::Timestamp(9)] {
            assert_eq!(decode_watermark(&encode_watermark(&value)), Some(value));
        }
    }
}
