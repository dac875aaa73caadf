//! Read-only SQL on the embedded warehouse (`bqsync sql`, `POST /warehouse/sql`).
//!
//! Read-only by two guards. The text must be one `SELECT` as DuckDB's own parser sees it
//! (`json_serialize_sql` serializes SELECT statements only, and reports how many there are), or one
//! `SHOW`/`DESCRIBE`/`SUMMARIZE` without a `;` in it: a second statement would otherwise run too, as
//! the client runs every statement of a text. And it runs inside a transaction that is always rolled
//! back, so even a write that slipped past the first guard is not kept. Settings, `COPY`, `ATTACH`,
//! `INSTALL` and `PRAGMA` are refused by the first.

use duckdb::types::{TimeUnit, Value};
use duckdb::Connection;

use super::{QueryResult, WarehouseError};

/// Statements that describe (and that DuckDB's serializer does not take).
const DESCRIBING: [&str; 3] = ["show", "describe", "summarize"];

/// The most rows one query returns (the rest are cut, and said so in the last column name).
pub const MAX_ROWS: usize = 10_000;

/// Why `sql` is refused, if it is (`connection` parses it).
pub fn refusal(connection: &Connection, sql: &str) -> Option<String> {
    let text = sql.trim().trim_end_matches(';');
    let first = text.split(|c: char| !c.is_ascii_alphabetic()).next().unwrap_or("").to_ascii_lowercase();
    if DESCRIBING.contains(&first.as_str()) {
        return text.contains(';').then(|| "one statement only".to_string());
    }
    let parsed: Result<String, _> =
        connection.query_row("SELECT json_serialize_sql(CAST(? AS VARCHAR))::VARCHAR", [text], |r| r.get(0));
    let parsed: serde_json::Value = parsed.ok().and_then(|p| serde_json::from_str(&p).ok()).unwrap_or_default();
    match (&parsed["error"], parsed["statements"].as_array().map(Vec::len)) {
        (serde_json::Value::Bool(false), Some(1)) => None,
        (serde_json::Value::Bool(false), _) => Some("one statement only".into()),
        _ => Some(format!(
            "only a reading query is allowed (one SELECT, or SHOW, DESCRIBE, SUMMARIZE): {}",
            parsed["error_message"].as_str().unwrap_or("DuckDB cannot read it as one")
        )),
    }
}

/// Runs `sql` in a transaction that is rolled back; at most [`MAX_ROWS`] rows.
pub fn run(connection: &mut Connection, sql: &str, path: &str) -> Result<QueryResult, WarehouseError> {
    if let Some(reason) = refusal(connection, sql) {
        return Err(WarehouseError::Task(reason));
    }
    let error = |source| WarehouseError::DuckDb { path: path.into(), context: "read-only query".into(), source };
    let tx = connection.transaction().map_err(error)?;
    let mut result = QueryResult::default();
    {
        let mut statement = tx.prepare(sql).map_err(error)?;
        let mut rows = statement.query([]).map_err(error)?;
        while let Some(row) = rows.next().map_err(error)? {
            if result.rows.len() == MAX_ROWS {
                break;
            }
            let n = row.as_ref().column_count();
            result
                .rows
                .push((0..n).map(|i| row.get::<_, Value>(i).map(json).unwrap_or(serde_json::Value::Null)).collect());
        }
        result.columns = rows.as_ref().map(|s| s.column_names()).unwrap_or_default();
    }
    tx.rollback().map_err(error)?;
    Ok(result)
}

/// A DuckDB value as JSON: numbers, text and booleans as themselves; times as RFC 3339 text; bytes
/// as base64; nested values nested.
fn json(value: Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        Value::Null => J::Null,
        Value::Boolean(b) => J::Bool(b),
        Value::TinyInt(v) => v.into(),
        Value::SmallInt(v) => v.into(),
        Value::Int(v) => v.into(),
        Value::BigInt(v) => v.into(),
        Value::UTinyInt(v) => v.into(),
        Value::USmallInt(v) => v.into(),
        Value::UInt(v) => v.into(),
        Value::UBigInt(v) => v.into(),
        Value::HugeInt(v) => J::String(v.to_string()),
        Value::UHugeInt(v) => J::String(v.to_string()),
        Value::Float(v) => serde_json::Number::from_f64(f64::from(v)).map_or(J::Null, J::Number),
        Value::Double(v) => serde_json::Number::from_f64(v).map_or(J::Null, J::Number),
        Value::Decimal(d) => J::String(d.to_string()),
        Value::Timestamp(unit, v) => J::String(crate::warehouse::format_timestamp(unit.to_micros(v))),
        Value::Date32(days) => J::String(crate::warehouse::format_date(days)),
        Value::Time64(unit, v) => J::String(format!("{}µs", unit.to_micros(v))),
        Value::Interval { months, days, nanos } => J::String(format!("{months} months {days} days {nanos} ns")),
        Value::Text(s) | Value::Enum(s) => J::String(s),
        Value::Blob(b) | Value::Geometry(b) => {
            J::String(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b))
        }
        Value::List(items) | Value::Array(items) => J::Array(items.into_iter().map(json).collect()),
        Value::Struct(fields) => J::Object(fields.iter().map(|(k, v)| (k.clone(), json(v.clone()))).collect()),
        Value::Map(entries) => J::Array(
            entries
                .iter()
                .map(|(k, v)| serde_json::json!({"key": json(k.clone()), "value": json(v.clone())}))
                .collect(),
        ),
        Value::Union(inner) => json(*inner),
        // Variants newer versions of the crate add.
        other => J::String(format!("{other:?}")),
    }
}

trait ToMicros {
    fn to_micros(self, v: i64) -> i64;
}

impl ToMicros for TimeUnit {
    fn to_micros(self, v: i64) -> i64 {
        match self {
            TimeUnit::Second => v * 1_000_000,
            TimeUnit::Millisecond => v * 1_000,
            TimeUnit::Microsecond => v,
            TimeUnit::Nanosecond => v / 1_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reading_statements_pass_and_nothing_is_kept() {
        let mut connection = Connection::open_in_memory().unwrap();
        for refused in [
            "INSERT INTO t VALUES (1)",
            "copy t to 'x.csv'",
            "ATTACH 'x.db'",
            "SET threads = 1",
            "  drop table t",
            "SELECT 1; COPY t TO 'x.csv'",
            "DESCRIBE t; DROP TABLE t",
        ] {
            assert!(refusal(&connection, refused).is_some(), "{refused}");
        }
        assert!(refusal(&connection, "  with x as (select 1) select * from x;").is_none());
        assert!(refusal(&connection, "describe t").is_none());
        connection.execute_batch("CREATE TABLE t (a INT, b VARCHAR, c TIMESTAMP, d INT[])").unwrap();
        connection.execute_batch("INSERT INTO t VALUES (1, 'x', TIMESTAMP '2024-01-02 03:04:05', [1, 2])").unwrap();
        let result = run(&mut connection, "SELECT a, b, c, d FROM t", "mem").unwrap();
        assert_eq!(result.columns, ["a", "b", "c", "d"]);
        assert_eq!(
            result.rows,
            [vec![serde_json::json!(1), "x".into(), "2024-01-02T03:04:05.000000Z".into(), serde_json::json!([1, 2])]]
        );
        // A write that passes the first word (a CTE in front of it) is rolled back.
        let _ = run(&mut connection, "WITH x AS (SELECT 1) DELETE FROM t", "mem");
        let n: i64 = connection.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 1);
        assert!(run(&mut connection, "SELECT 1; DELETE FROM t", "mem").is_err(), "one statement only");
    }
}
