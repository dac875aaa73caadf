//! Table definitions, loaded from `schemas/*.json` (one file a table), and the validation and coercion
//! of event payloads against them.
//!
//! Invariant: every SQL identifier bqsync ever writes (table and column names) comes from these files,
//! checked by [`is_valid_identifier`] when they load — never from event data. A payload field that the
//! schema does not name is a schema violation (or ignored, if the table says so), never a new column.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// BigQuery column types that bqsync understands. Aliases (`INTEGER`, `FLOAT`, `BOOLEAN`) are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ColumnType {
    #[serde(alias = "STRING")]
    String,
    #[serde(alias = "INTEGER")]
    Int64,
    #[serde(alias = "FLOAT")]
    Float64,
    #[serde(alias = "BOOLEAN")]
    Bool,
    Timestamp,
    Date,
    Numeric,
    Json,
    Bytes,
    #[serde(alias = "STRUCT")]
    Record,
}

/// BigQuery column modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ColumnMode {
    #[default]
    Nullable,
    Required,
    Repeated,
}

/// How events land in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteMode {
    /// Insert-if-absent on the event id: a re-delivered event lands once.
    Append,
    /// Version-guarded merge on the primary key; deletes are versioned tombstones.
    Upsert,
}

/// How a CDC table (`"cdc": true`) writes deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CdcDeletes {
    /// An `UPSERT` of the tombstone (key, version, `_bqsync_deleted = true`), as the MERGE path keeps
    /// it: the version guard outlives the delete, so an older upsert arriving late never revives the
    /// row. Readers filter tombstones (`T_current`).
    #[default]
    Tombstone,
    /// A `DELETE` change: the row leaves the table. An older upsert arriving after BigQuery applied
    /// the delete may bring the row back (README "CDC upserts").
    Delete,
}

/// What to do with payload fields the schema does not name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownFields {
    /// Dead-letter the event with reason `schema` (default: nothing is silently dropped).
    #[default]
    Reject,
    /// Drop the unknown fields and land the rest.
    Ignore,
}

/// One column of a table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub column_type: ColumnType,
    #[serde(default)]
    pub mode: ColumnMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Sub-fields of a RECORD column (kept as JSON in DuckDB).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<Column>,
}

/// Partitioning hint, applied by warehouses that partition (BigQuery).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partitioning {
    pub column: String,
    /// HOUR, DAY (default), MONTH or YEAR (any case).
    #[serde(default)]
    pub granularity: Granularity,
}

/// Time-partitioning granularity (BigQuery's `timePartitioning.type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Granularity {
    #[serde(alias = "hour")]
    Hour,
    #[default]
    #[serde(alias = "day")]
    Day,
    #[serde(alias = "month")]
    Month,
    #[serde(alias = "year")]
    Year,
}

impl Granularity {
    /// BigQuery's name of it.
    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Hour => "HOUR",
            Granularity::Day => "DAY",
            Granularity::Month => "MONTH",
            Granularity::Year => "YEAR",
        }
    }
}

/// A table definition: the content of one `schemas/TABLE.json` file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSchema {
    /// Table name in the warehouse; must equal the file stem.
    pub table: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub write_mode: WriteMode,
    /// Payload field whose value is the event id (append tables). When absent, producers derive a
    /// deterministic id from the record's position and content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id_field: Option<String>,
    /// Primary key columns (upsert tables).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub primary_key: Vec<String>,
    /// Column holding the version (upsert tables): INT64, or TIMESTAMP (compared as microseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_column: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<Partitioning>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster: Vec<String>,
    #[serde(default)]
    pub unknown_fields: UnknownFields,
    /// Upsert tables on BigQuery: write each event straight into the table through BigQuery's change
    /// data capture (`_CHANGE_TYPE`, `_CHANGE_SEQUENCE_NUMBER` from the version), with no landing
    /// table and no applier. Untested against the real service (the emulator has no CDC); see README
    /// "CDC upserts" for the limits. Default false. The embedded warehouse ignores it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cdc: bool,
    /// How a CDC table writes deletes: `tombstone` (default) or `delete`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub cdc_deletes: CdcDeletes,
    pub columns: Vec<Column>,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// Errors loading schema files.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot read schema directory {path}: {source}")]
    ReadDir { path: PathBuf, source: std::io::Error },
    #[error("cannot read schema file {path}: {source}")]
    ReadFile { path: PathBuf, source: std::io::Error },
    #[error("schema file {path} is not a valid table definition: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("schema file {path}: {problem}")]
    Invalid { path: PathBuf, problem: String },
}

/// True for names usable as SQL identifiers in every warehouse bqsync supports.
pub fn is_valid_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128
}

impl TableSchema {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// Semantic checks that serde cannot express; the error names the field.
    fn check(&self) -> Result<(), String> {
        if !is_valid_identifier(&self.table) {
            return Err(format!("table name `{}` is not a valid identifier", self.table));
        }
        if self.columns.is_empty() {
            return Err("`columns` is empty".into());
        }
        let mut seen = std::collections::HashSet::new();
        for column in &self.columns {
            if !is_valid_identifier(&column.name) || column.name.starts_with("_bqsync") {
                return Err(format!(
                    "column name `{}` is not a valid identifier (letters, digits, _; not starting with _bqsync)",
                    column.name
                ));
            }
            if !seen.insert(column.name.to_ascii_lowercase()) {
                return Err(format!("column `{}` is defined twice", column.name));
            }
        }
        let require_column = |field: &str, name: &str| -> Result<&Column, String> {
            self.column(name).ok_or_else(|| format!("`{field}` names `{name}`, which is not a column"))
        };
        if let Some(id) = &self.event_id_field {
            require_column("event_id_field", id)?;
        }
        for key in &self.primary_key {
            let column = require_column("primary_key", key)?;
            if column.mode == ColumnMode::Repeated
                || matches!(column.column_type, ColumnType::Record | ColumnType::Json)
            {
                return Err(format!("primary key column `{key}` must be a scalar"));
            }
        }
        if let Some(p) = &self.partition {
            require_column("partition.column", &p.column)?;
        }
        for c in &self.cluster {
            require_column("cluster", c)?;
        }
        match self.write_mode {
            WriteMode::Upsert => {
                if self.primary_key.is_empty() {
                    return Err("write_mode `upsert` needs a `primary_key`".into());
                }
                let Some(version) = &self.version_column else {
                    return Err("write_mode `upsert` needs a `version_column`".into());
                };
                let column = require_column("version_column", version)?;
                if !matches!(column.column_type, ColumnType::Int64 | ColumnType::Timestamp) {
                    return Err(format!("version column `{version}` must be INT64 or TIMESTAMP"));
                }
                // Google, "Stream table updates with change data capture": a composite primary
                // key of at most 16 columns.
                if self.cdc && self.primary_key.len() > 16 {
                    return Err(format!(
                        "`cdc` needs a primary key of at most 16 columns, not {}",
                        self.primary_key.len()
                    ));
                }
            }
            WriteMode::Append => {
                if self.cdc {
                    return Err("`cdc` applies to write_mode `upsert` only".into());
                }
                if !self.primary_key.is_empty() || self.version_column.is_some() {
                    return Err("`primary_key` and `version_column` apply to write_mode `upsert` only".into());
                }
            }
        }
        Ok(())
    }
}

/// All table definitions, by table name.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    tables: BTreeMap<String, TableSchema>,
}

impl Catalog {
    /// Loads every `*.json` in `dir` except `envelope.schema.json`.
    pub fn load_dir(dir: &Path) -> Result<Catalog, SchemaError> {
        let entries = std::fs::read_dir(dir).map_err(|source| SchemaError::ReadDir { path: dir.into(), source })?;
        let mut catalog = Catalog::default();
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if !name.ends_with(".json") || name.ends_with(".schema.json") {
                continue;
            }
            let text = std::fs::read_to_string(&path)
                .map_err(|source| SchemaError::ReadFile { path: path.clone(), source })?;
            let schema: TableSchema =
                serde_json::from_str(&text).map_err(|source| SchemaError::Parse { path: path.clone(), source })?;
            schema.check().map_err(|problem| SchemaError::Invalid { path: path.clone(), problem })?;
            if path.file_stem().and_then(|s| s.to_str()) != Some(schema.table.as_str()) {
                return Err(SchemaError::Invalid {
                    path,
                    problem: format!("table `{}` must be defined in a file named {}.json", schema.table, schema.table),
                });
            }
            catalog.tables.insert(schema.table.clone(), schema);
        }
        Ok(catalog)
    }

    pub fn from_tables(tables: impl IntoIterator<Item = TableSchema>) -> Catalog {
        Catalog { tables: tables.into_iter().map(|t| (t.table.clone(), t)).collect() }
    }

    pub fn get(&self, table: &str) -> Option<&TableSchema> {
        self.tables.get(table)
    }

    pub fn tables(&self) -> impl Iterator<Item = &TableSchema> {
        self.tables.values()
    }
}

/// A payload value after coercion to its column's type.
#[derive(Debug, Clone, PartialEq)]
pub enum CellValue {
    Null,
    String(String),
    Int64(i64),
    Float64(f64),
    Bool(bool),
    /// Microseconds since the Unix epoch, UTC.
    Timestamp(i64),
    /// Days since the Unix epoch.
    Date(i32),
    /// JSON text: JSON, RECORD and REPEATED columns, and NUMERIC as its decimal text.
    JsonText(String),
    /// Raw bytes (BYTES columns arrive base64-encoded).
    Bytes(Vec<u8>),
}

/// Why a payload does not fit its table: names the column, what was expected and what came.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct SchemaViolation(pub String);

fn describe(value: &Value) -> String {
    let text = value.to_string();
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    if text.len() > 80 {
        format!("{kind} {}…", &text[..text.char_indices().nth(77).map(|(i, _)| i).unwrap_or(text.len())])
    } else {
        format!("{kind} {text}")
    }
}

/// Parses RFC 3339 (`2024-01-01T00:00:00.123456Z`, offsets allowed), `YYYY-MM-DD HH:MM:SS[.ffffff]` (UTC)
/// or epoch seconds into microseconds since the epoch.
pub fn parse_timestamp_micros(value: &Value) -> Option<i64> {
    match value {
        Value::String(s) => {
            if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
                return Some(t.timestamp_micros());
            }
            let trimmed = s.trim_end_matches(" UTC");
            for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
                if let Ok(t) = chrono::NaiveDateTime::parse_from_str(trimmed, format) {
                    return Some(t.and_utc().timestamp_micros());
                }
            }
            None
        }
        Value::Number(n) => n.as_f64().filter(|f| f.is_finite()).map(|secs| (secs * 1_000_000.0).round() as i64),
        _ => None,
    }
}

fn coerce_scalar(column: &Column, value: &Value) -> Result<CellValue, String> {
    let mismatch = || format!("column `{}`: expected {:?}, got {}", column.name, column.column_type, describe(value));
    Ok(match column.column_type {
        ColumnType::String => match value {
            Value::String(s) => CellValue::String(s.clone()),
            Value::Number(n) => CellValue::String(n.to_string()),
            Value::Bool(b) => CellValue::String(b.to_string()),
            _ => return Err(mismatch()),
        },
        ColumnType::Int64 => match value {
            Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => CellValue::Int64(i),
                (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.2e18 => CellValue::Int64(f as i64),
                _ => return Err(mismatch()),
            },
            Value::String(s) => CellValue::Int64(s.trim().parse().map_err(|_| mismatch())?),
            _ => return Err(mismatch()),
        },
        ColumnType::Float64 => match value {
            Value::Number(n) => CellValue::Float64(n.as_f64().ok_or_else(mismatch)?),
            Value::String(s) => CellValue::Float64(s.trim().parse().map_err(|_| mismatch())?),
            _ => return Err(mismatch()),
        },
        ColumnType::Bool => match value {
            Value::Bool(b) => CellValue::Bool(*b),
            Value::String(s) if s.eq_ignore_ascii_case("true") => CellValue::Bool(true),
            Value::String(s) if s.eq_ignore_ascii_case("false") => CellValue::Bool(false),
            _ => return Err(mismatch()),
        },
        ColumnType::Timestamp => CellValue::Timestamp(parse_timestamp_micros(value).ok_or_else(mismatch)?),
        ColumnType::Date => match value {
            Value::String(s) => {
                let date = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| mismatch())?;
                let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");
                CellValue::Date((date - epoch).num_days() as i32)
            }
            _ => return Err(mismatch()),
        },
        ColumnType::Numeric => {
            let text = match value {
                Value::Number(n) => n.to_string(),
                Value::String(s) => s.trim().to_string(),
                _ => return Err(mismatch()),
            };
            if !is_numeric_38_9(&text) {
                return Err(format!(
                    "column `{}`: expected NUMERIC (at most 29 integer and 9 fractional digits), got {}",
                    column.name,
                    describe(value)
                ));
            }
            CellValue::JsonText(text)
        }
        ColumnType::Json => CellValue::JsonText(value.to_string()),
        ColumnType::Bytes => match value {
            Value::String(s) => CellValue::Bytes(decode_base64(s).ok_or_else(mismatch)?),
            _ => return Err(mismatch()),
        },
        ColumnType::Record => match value {
            Value::Object(_) => CellValue::JsonText(value.to_string()),
            _ => return Err(mismatch()),
        },
    })
}

/// True for a plain decimal that fits BigQuery's NUMERIC (precision 38, scale 9): checked here so
/// the warehouse never rejects a whole batch over one value.
fn is_numeric_38_9(text: &str) -> bool {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (integer, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    !(integer.is_empty() && fraction.is_empty())
        && all_digits(integer)
        && all_digits(fraction)
        && integer.trim_start_matches('0').len() <= 29
        && fraction.len() <= 9
}

/// Standard base64 with padding (the `base64` crate), as BigQuery's JSON carries BYTES.
pub(crate) fn encode_base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Standard or URL-safe base64, with or without padding; `None` for anything else.
pub(crate) fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    use base64::{alphabet, Engine as _};
    const LENIENT: GeneralPurposeConfig =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
    const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);
    STANDARD.decode(text).or_else(|_| URL_SAFE.decode(text)).ok()
}

/// Coerces one payload value to its column. `Null` for absent NULLABLE values; REQUIRED columns must
/// be present unless `allow_missing` (tombstones carry only their key and version).
pub fn coerce_value(column: &Column, value: Option<&Value>, allow_missing: bool) -> Result<CellValue, SchemaViolation> {
    let value = match value {
        None | Some(Value::Null) => {
            if column.mode == ColumnMode::Required && !allow_missing {
                return Err(SchemaViolation(format!(
                    "column `{}` is REQUIRED but {}",
                    column.name,
                    if value.is_none() { "absent" } else { "null" }
                )));
            }
            return Ok(if column.mode == ColumnMode::Repeated {
                CellValue::JsonText("[]".into())
            } else {
                CellValue::Null
            });
        }
        Some(v) => v,
    };
    if column.mode == ColumnMode::Repeated {
        let Value::Array(items) = value else {
            return Err(SchemaViolation(format!(
                "column `{}`: expected REPEATED {:?} (a JSON array), got {}",
                column.name,
                column.column_type,
                describe(value)
            )));
        };
        let mut normalized = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let cell = coerce_scalar(column, item).map_err(|e| SchemaViolation(format!("{e} (element {i})")))?;
            normalized.push(cell_to_json(cell, item));
        }
        return Ok(CellValue::JsonText(Value::Array(normalized).to_string()));
    }
    coerce_scalar(column, value).map_err(SchemaViolation)
}

/// The JSON form of a coerced array element (so `["1", 2]` in an INT64 list becomes `[1,2]`).
fn cell_to_json(cell: CellValue, original: &Value) -> Value {
    match cell {
        CellValue::String(s) => Value::String(s),
        CellValue::Int64(i) => Value::from(i),
        CellValue::Float64(f) => Value::from(f),
        CellValue::Bool(b) => Value::Bool(b),
        _ => original.clone(),
    }
}

/// Validates a payload object against the table and returns one cell per column, in column order.
pub fn coerce_row(
    table: &TableSchema,
    payload: &serde_json::Map<String, Value>,
    tombstone: bool,
) -> Result<Vec<CellValue>, SchemaViolation> {
    if table.unknown_fields == UnknownFields::Reject {
        if let Some(unknown) = payload.keys().find(|k| table.column(k).is_none()) {
            return Err(SchemaViolation(format!(
                "field `{unknown}` is not a column of table `{}` (add it to schemas/{}.json, or set \"unknown_fields\": \"ignore\")",
                table.table, table.table
            )));
        }
    }
    let mut cells = Vec::with_capacity(table.columns.len());
    for column in &table.columns {
        let is_key = table.primary_key.contains(&column.name) || table.version_column.as_deref() == Some(&column.name);
        cells.push(coerce_value(column, payload.get(&column.name), tombstone && !is_key)?);
    }
    Ok(cells)
}

/// The project's `schemas/` folder as a catalog, for unit tests.
#[cfg(test)]
pub(crate) fn project_catalog() -> Catalog {
    Catalog::load_dir(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/schemas"))).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn column(name: &str, column_type: ColumnType, mode: ColumnMode) -> Column {
        Column { name: name.into(), column_type, mode, description: None, fields: vec![] }
    }

    #[test]
    fn identifiers_reject_injection() {
        assert!(is_valid_identifier("contacts_master"));
        assert!(!is_valid_identifier("a; DROP TABLE x"));
        assert!(!is_valid_identifier("1abc"));
        assert!(!is_valid_identifier("a\"b"));
        assert!(!is_valid_identifier(""));
    }

    #[test]
    fn coercion_names_the_column_and_the_value() {
        let c = column("score", ColumnType::Float64, ColumnMode::Nullable);
        assert_eq!(coerce_value(&c, Some(&json!("1.5")), false).unwrap(), CellValue::Float64(1.5));
        let err = coerce_value(&c, Some(&json!("abc")), false).unwrap_err();
        assert_eq!(err.0, "column `score`: expected Float64, got string \"abc\"");
        let required = column("id", ColumnType::String, ColumnMode::Required);
        assert!(coerce_value(&required, None, false).unwrap_err().0.contains("REQUIRED but absent"));
        assert_eq!(coerce_value(&required, None, true).unwrap(), CellValue::Null);
    }

    #[test]
    fn timestamps_and_lists() {
        let ts = column("t", ColumnType::Timestamp, ColumnMode::Nullable);
        assert_eq!(
            coerce_value(&ts, Some(&json!("1970-01-01T00:00:01.5Z")), false).unwrap(),
            CellValue::Timestamp(1_500_000)
        );
        assert_eq!(
            coerce_value(&ts, Some(&json!("1970-01-01 00:00:02")), false).unwrap(),
            CellValue::Timestamp(2_000_000)
        );
        let tags = column("tags", ColumnType::Int64, ColumnMode::Repeated);
        assert_eq!(coerce_value(&tags, Some(&json!(["1", 2])), false).unwrap(), CellValue::JsonText("[1,2]".into()));
        assert!(coerce_value(&tags, Some(&json!(["x"])), false).unwrap_err().0.contains("element 0"));
        assert_eq!(coerce_value(&tags, None, false).unwrap(), CellValue::JsonText("[]".into()));
    }

    #[test]
    fn numeric_values_must_fit_precision_38_scale_9() {
        let c = column("amount", ColumnType::Numeric, ColumnMode::Nullable);
        assert_eq!(coerce_value(&c, Some(&json!("-12.5")), false).unwrap(), CellValue::JsonText("-12.5".into()));
        assert_eq!(coerce_value(&c, Some(&json!(7)), false).unwrap(), CellValue::JsonText("7".into()));
        for bad in [json!(1e40), json!("1.0000000001"), json!("12a"), json!("."), json!(true)] {
            assert!(coerce_value(&c, Some(&bad), false).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn base64_decodes() {
        assert_eq!(decode_base64("aGVsbG8=").unwrap(), b"hello");
        assert!(decode_base64("a*b").is_none());
    }

    #[test]
    fn the_shipped_schemas_load_and_check() {
        let catalog = Catalog::load_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas").as_path()).unwrap();
        for name in ["atoms", "id_registry", "contacts_master", "zoom_sessions", "dead_letters"] {
            assert!(catalog.get(name).is_some(), "schemas/{name}.json missing");
        }
        let atoms = catalog.get("atoms").unwrap();
        let line = json!({"event_id":"e1","entity_id":"ent-0000001","kind":"click","text":"lorem","score":1.5,"tags":["red"],"created_at":"2024-01-01T00:00:00.123456Z"});
        coerce_row(atoms, line.as_object().unwrap(), false).unwrap();
        let extra = json!({"event_id":"e1","created_at":"2024-01-01T00:00:00Z","surprise":1});
        assert!(coerce_row(atoms, extra.as_object().unwrap(), false).unwrap_err().0.contains("`surprise`"));
    }
}
