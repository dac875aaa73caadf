//! `bqsync schema infer`: a draft `schemas/TABLE.json` from a SQLite or DuckDB table, a JSONL sample,
//! or the records dead-lettered as `unknown_table`, so 22 tables need not mean 22 hand-written files.
//!
//! Rules (seed 002's): INTEGER → INT64, REAL/DOUBLE → FLOAT64, BOOLEAN → BOOL, BLOB → BYTES, text →
//! STRING; a name ending `_timestamp`, `_at`, `_start` or `_end` → TIMESTAMP. From a database table,
//! NOT NULL makes a column REQUIRED and the PRIMARY KEY makes an upsert table, versioned by
//! `updated_at` or `version` when it has one (else it stays an append table and the draft says why).
//! From records: JSON types decide (an array is REPEATED, an object JSON), every column NULLABLE, and
//! `event_id` or `id`, when every record has it, is the event id. It is a draft: review it.

use serde_json::Value;

use super::{Column, ColumnMode, ColumnType, TableSchema, WriteMode};

/// One column as a database describes it.
#[derive(Debug, Clone)]
pub struct DbColumn {
    pub name: String,
    /// The declared type, e.g. `INTEGER`, `VARCHAR(20)`, `TIMESTAMP`.
    pub declared: String,
    pub not_null: bool,
    /// Position in the primary key (1-based), 0 when not part of it.
    pub key_position: usize,
}

fn is_time_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["_timestamp", "_at", "_start", "_end"].iter().any(|suffix| name.ends_with(suffix))
}

/// The column type of a declared database type (SQLite affinity rules, DuckDB names).
fn db_type(name: &str, declared: &str) -> ColumnType {
    let declared = declared.to_ascii_uppercase();
    if is_time_name(name) || declared.contains("TIMESTAMP") || declared.contains("DATETIME") {
        return ColumnType::Timestamp;
    }
    if declared == "DATE" {
        ColumnType::Date
    } else if declared.contains("BOOL") {
        ColumnType::Bool
    } else if declared.contains("INT") {
        ColumnType::Int64
    } else if ["REAL", "FLOA", "DOUB"].iter().any(|t| declared.contains(t)) {
        ColumnType::Float64
    } else if declared.contains("DECIMAL") || declared.contains("NUMERIC") {
        ColumnType::Numeric
    } else if declared.contains("BLOB") || declared.contains("BYTEA") {
        ColumnType::Bytes
    } else if declared == "JSON" {
        ColumnType::Json
    } else {
        ColumnType::String
    }
}

fn column(name: &str, column_type: ColumnType, mode: ColumnMode) -> Column {
    Column { name: name.to_string(), column_type, mode, description: None, fields: Vec::new() }
}

/// A draft from a database table's columns. The note says what could not be decided.
pub fn from_table(table: &str, columns: &[DbColumn]) -> (TableSchema, Option<String>) {
    let mut keys: Vec<&DbColumn> = columns.iter().filter(|c| c.key_position > 0).collect();
    keys.sort_by_key(|c| c.key_position);
    let version = ["updated_at", "version"].into_iter().find(|v| columns.iter().any(|c| c.name == *v));
    let upsert = !keys.is_empty() && version.is_some();
    let drafted = columns
        .iter()
        .map(|c| {
            let required = c.not_null || c.key_position > 0 || (upsert && Some(c.name.as_str()) == version);
            let mut column_type = db_type(&c.name, &c.declared);
            if Some(c.name.as_str()) == version && !matches!(column_type, ColumnType::Int64 | ColumnType::Timestamp) {
                column_type = ColumnType::Timestamp;
            }
            column(&c.name, column_type, if required { ColumnMode::Required } else { ColumnMode::Nullable })
        })
        .collect();
    let mut schema = TableSchema::plain(table, if upsert { WriteMode::Upsert } else { WriteMode::Append }, drafted);
    let note = match (keys.is_empty(), version) {
        (false, Some(version)) => {
            schema.primary_key = keys.iter().map(|c| c.name.clone()).collect();
            schema.version_column = Some(version.to_string());
            None
        }
        (false, None) => Some(format!(
            "`{table}` has a primary key but no `updated_at` or `version` column: drafted as an append table; \
             to keep one row per key, add a version column and make it an upsert table"
        )),
        (true, _) => None,
    };
    (schema, note)
}

/// The column type of a JSON value (None for null: decided by another record).
fn json_type(name: &str, value: &Value) -> Option<(ColumnType, ColumnMode)> {
    let scalar = |v: &Value| -> Option<ColumnType> {
        Some(match v {
            Value::Null => return None,
            Value::Bool(_) => ColumnType::Bool,
            Value::Number(n) if n.is_i64() || n.is_u64() => ColumnType::Int64,
            Value::Number(_) => ColumnType::Float64,
            Value::String(_) if is_time_name(name) => ColumnType::Timestamp,
            Value::String(s) if chrono::DateTime::parse_from_rfc3339(s).is_ok() => ColumnType::Timestamp,
            Value::String(_) => ColumnType::String,
            Value::Array(_) | Value::Object(_) => ColumnType::Json,
        })
    };
    match value {
        Value::Array(items) => {
            let element = items.iter().find_map(scalar).unwrap_or(ColumnType::String);
            Some((if element == ColumnType::Json { ColumnType::Json } else { element }, ColumnMode::Repeated))
        }
        other => scalar(other).map(|t| (t, ColumnMode::Nullable)),
    }
}

/// Two types seen for one field: the wider one (INT64 and FLOAT64 → FLOAT64; else STRING).
fn widen(a: ColumnType, b: ColumnType) -> ColumnType {
    match (a, b) {
        (a, b) if a == b => a,
        (ColumnType::Int64, ColumnType::Float64) | (ColumnType::Float64, ColumnType::Int64) => ColumnType::Float64,
        _ => ColumnType::String,
    }
}

/// A draft from JSON records (objects; anything else is skipped): the first record's fields in name
/// order, then the fields later records add.
pub fn from_records<'a>(table: &str, records: impl IntoIterator<Item = &'a Value>) -> TableSchema {
    // Field name, its type once a record had a non-null value, and how many records had it.
    type Seen = (String, Option<(ColumnType, ColumnMode)>, usize);
    let mut fields: Vec<Seen> = Vec::new();
    let mut total = 0;
    for record in records {
        let Value::Object(object) = record else { continue };
        total += 1;
        for (name, value) in object {
            if name.starts_with("_bqsync") || name == "_deleted" {
                continue;
            }
            let seen = json_type(name, value);
            match fields.iter_mut().find(|(n, _, _)| n == name) {
                Some((_, kind, count)) => {
                    *count += 1;
                    *kind = match (*kind, seen) {
                        (Some((a, mode)), Some((b, _))) => Some((widen(a, b), mode)),
                        (known, None) => known,
                        (None, seen) => seen,
                    };
                }
                None => fields.push((name.clone(), seen, 1)),
            }
        }
    }
    let columns = fields
        .iter()
        .map(|(name, kind, _)| {
            let (column_type, mode) = kind.unwrap_or((ColumnType::String, ColumnMode::Nullable));
            column(name, column_type, mode)
        })
        .collect();
    let mut schema = TableSchema::plain(table, WriteMode::Append, columns);
    schema.event_id_field = ["event_id", "id"]
        .into_iter()
        .find(|id| fields.iter().any(|(name, kind, count)| name == id && *count == total && kind.is_some()))
        .map(str::to_string);
    schema
}

/// The record a dead letter holds: the payload of an envelope, or the record itself (a line that
/// never became an event).
pub fn dead_letter_record(message: &[u8]) -> Option<Value> {
    let value: Value = serde_json::from_slice(message).ok()?;
    match value.get("payload") {
        Some(payload @ Value::Object(_)) if value.get("event_id").is_some() => Some(payload.clone()),
        _ => Some(value),
    }
}

/// Lines only in `old` (`-`) and only in `new` (`+`), in order: enough to review a draft against the
/// file it would replace.
pub fn diff(old: &str, new: &str) -> String {
    let old_lines: Vec<&str> = old.lines().collect();
    let new_lines: Vec<&str> = new.lines().collect();
    let mut out = String::new();
    for line in &old_lines {
        if !new_lines.contains(line) {
            out.push_str(&format!("-{line}\n"));
        }
    }
    for line in &new_lines {
        if !old_lines.contains(line) {
            out.push_str(&format!("+{line}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn db(name: &str, declared: &str, not_null: bool, key_position: usize) -> DbColumn {
        DbColumn { name: name.into(), declared: declared.into(), not_null, key_position }
    }

    #[test]
    fn database_tables_follow_the_seed_rules() {
        let (schema, note) = from_table(
            "users",
            &[
                db("id", "TEXT", false, 1),
                db("score", "REAL", false, 0),
                db("logins", "INTEGER", true, 0),
                db("last_login_at", "TEXT", false, 0),
                db("updated_at", "TEXT", true, 0),
            ],
        );
        assert!(note.is_none());
        assert_eq!(schema.write_mode, WriteMode::Upsert);
        assert_eq!(
            (schema.primary_key.clone(), schema.version_column.clone()),
            (vec!["id".to_string()], Some("updated_at".into()))
        );
        let shape: Vec<_> = schema.columns.iter().map(|c| (c.name.as_str(), c.column_type, c.mode)).collect();
        assert_eq!(
            shape,
            [
                ("id", ColumnType::String, ColumnMode::Required),
                ("score", ColumnType::Float64, ColumnMode::Nullable),
                ("logins", ColumnType::Int64, ColumnMode::Required),
                ("last_login_at", ColumnType::Timestamp, ColumnMode::Nullable),
                ("updated_at", ColumnType::Timestamp, ColumnMode::Required),
            ]
        );
        schema.check().unwrap();
        let (append, note) = from_table("t", &[db("id", "INTEGER", true, 1)]);
        assert_eq!(append.write_mode, WriteMode::Append);
        assert!(note.unwrap().contains("no `updated_at` or `version`"));
        append.check().unwrap();
    }

    #[test]
    fn records_widen_and_find_their_id() {
        let records = [
            json!({"event_id": "a", "n": 1, "tags": ["x"], "meta": {"k": 1}, "when": "2024-01-01T00:00:00Z"}),
            json!({"event_id": "b", "n": 2.5, "tags": [], "note": null, "ok": true}),
        ];
        let schema = from_records("orders", records.iter());
        schema.check().unwrap();
        assert_eq!(schema.event_id_field.as_deref(), Some("event_id"));
        let shape: Vec<_> = schema.columns.iter().map(|c| (c.name.as_str(), c.column_type, c.mode)).collect();
        assert_eq!(
            shape,
            [
                ("event_id", ColumnType::String, ColumnMode::Nullable),
                ("meta", ColumnType::Json, ColumnMode::Nullable),
                ("n", ColumnType::Float64, ColumnMode::Nullable),
                ("tags", ColumnType::String, ColumnMode::Repeated),
                ("when", ColumnType::Timestamp, ColumnMode::Nullable),
                ("note", ColumnType::String, ColumnMode::Nullable),
                ("ok", ColumnType::Bool, ColumnMode::Nullable),
            ]
        );
        assert_eq!(diff("a\nb\nc\n", "a\nc\nd\n"), "-b\n+d\n");
    }
}
