//! Table definitions, loaded from `schemas/*.json` (one file a table), and the validation and coercion
//! of event payloads against them.
//!
//! Invariant: every SQL identifier bqsync ever writes (table and column names) comes from these files,
//! checked by [`is_valid_identifier`] when they load — never from event data. A payload field that the
//! schema does not name is a schema violation (or ignored, if the table says so), never a new column.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod coerce;

pub mod infer;
pub mod transform;

#[cfg(feature = "gcp")]
pub(crate) use coerce::decode_base64;
pub(crate) use coerce::encode_base64;
pub use coerce::{
    coerce_raw_fields, coerce_raw_value, coerce_row, coerce_value, parse_timestamp_micros, parse_timestamp_text,
    plain_json_string, CellValue, SchemaViolation,
};

/// BigQuery column types that bqsync understands, in any case. BigQuery's legacy names (`INTEGER`,
/// `FLOAT`, `BOOLEAN`, `STRUCT`) are accepted, as `bq show --schema` prints them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE", try_from = "String")]
pub enum ColumnType {
    String,
    Int64,
    Float64,
    Bool,
    Timestamp,
    Date,
    Numeric,
    Json,
    Bytes,
    Record,
}

impl TryFrom<String> for ColumnType {
    type Error = String;
    fn try_from(name: String) -> Result<ColumnType, String> {
        Ok(match name.to_ascii_uppercase().as_str() {
            "STRING" => ColumnType::String,
            "INT64" | "INTEGER" => ColumnType::Int64,
            "FLOAT64" | "FLOAT" => ColumnType::Float64,
            "BOOL" | "BOOLEAN" => ColumnType::Bool,
            "TIMESTAMP" => ColumnType::Timestamp,
            "DATE" => ColumnType::Date,
            "NUMERIC" => ColumnType::Numeric,
            "JSON" => ColumnType::Json,
            "BYTES" => ColumnType::Bytes,
            "RECORD" | "STRUCT" => ColumnType::Record,
            _ => {
                return Err(format!(
                    "unsupported column type `{name}` (bqsync knows STRING, INT64, FLOAT64, BOOL, TIMESTAMP, DATE, NUMERIC, JSON, BYTES, RECORD)"
                ))
            }
        })
    }
}

/// BigQuery column modes, in any case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE", try_from = "String")]
pub enum ColumnMode {
    #[default]
    Nullable,
    Required,
    Repeated,
}

impl TryFrom<String> for ColumnMode {
    type Error = String;
    fn try_from(name: String) -> Result<ColumnMode, String> {
        match name.to_ascii_uppercase().as_str() {
            "NULLABLE" => Ok(ColumnMode::Nullable),
            "REQUIRED" => Ok(ColumnMode::Required),
            "REPEATED" => Ok(ColumnMode::Repeated),
            _ => Err(format!("unknown column mode `{name}` (NULLABLE, REQUIRED or REPEATED)")),
        }
    }
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

/// What an upsert does to the columns its record does not carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpsertMode {
    /// The record is the whole row: a column it does not carry becomes NULL.
    #[default]
    Replace,
    /// The record updates only the columns it carries (an explicit `null` sets NULL); the others keep
    /// their stored values. Records of one key that arrive together are folded in version order, column
    /// by column. A delete still clears the row, and a record older than the stored version is still
    /// ignored, even for columns newer records did not touch: the guard is one version per row.
    Patch,
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
    /// the delete may bring the row back (docs/google-cloud.md "CDC upserts").
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
    /// Upsert tables: `replace` (default: a record is the whole row, missing columns become NULL) or
    /// `patch` (a record updates only the columns it carries). See [`UpsertMode`].
    #[serde(default, skip_serializing_if = "is_default")]
    pub upsert: UpsertMode,
    /// What producers do to fields before publishing (`hash`, `redact`, `drop`, `rename`), so raw
    /// values never leave them. See [`transform`].
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub transforms: transform::Transforms,
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
    /// A table with `columns` and every option at its default (no key, version, partitioning,
    /// clustering or transforms): what a BigQuery schema file or a drafted schema starts from.
    pub fn plain(table: &str, write_mode: WriteMode, columns: Vec<Column>) -> TableSchema {
        TableSchema {
            table: table.to_string(),
            description: None,
            write_mode,
            event_id_field: None,
            primary_key: Vec::new(),
            version_column: None,
            partition: None,
            cluster: Vec::new(),
            unknown_fields: UnknownFields::default(),
            cdc: false,
            upsert: UpsertMode::default(),
            transforms: Default::default(),
            cdc_deletes: CdcDeletes::default(),
            columns,
        }
    }

    /// Whether an upsert updates only the columns its record carries (`"upsert": "patch"`).
    pub fn patches(&self) -> bool {
        self.write_mode == WriteMode::Upsert && self.upsert == UpsertMode::Patch
    }

    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// Semantic checks that serde cannot express; the error names the field.
    pub fn check(&self) -> Result<(), String> {
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
        transform::check(self)?;
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
                // A CDC `UPSERT` replaces the whole row with the same key (Google, "Stream table
                // updates with change data capture"): there is no write that keeps absent columns.
                if self.cdc && self.upsert == UpsertMode::Patch {
                    return Err("`\"upsert\": \"patch\"` cannot be combined with `cdc` (a CDC UPSERT replaces the whole row); drop one of them".into());
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
                if self.upsert != UpsertMode::default() {
                    return Err("`upsert` applies to write_mode `upsert` only".into());
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
            let schema = parse_table_file(&path, &text)?;
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

/// One schema file: bqsync's table definition, or BigQuery's own schema JSON (the array of fields
/// `bq show --schema --format=prettyjson` prints), which becomes an append table named after the
/// file, so a team can start from its existing tables.
fn parse_table_file(path: &Path, text: &str) -> Result<TableSchema, SchemaError> {
    let parse_error = |source| SchemaError::Parse { path: path.into(), source };
    if !text.trim_start().starts_with('[') {
        return serde_json::from_str(text).map_err(parse_error);
    }
    let fields: Vec<BigQueryField> = serde_json::from_str(text).map_err(parse_error)?;
    let table = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    Ok(TableSchema::plain(table, WriteMode::Append, fields.into_iter().map(Column::from).collect()))
}

/// A field of BigQuery's schema JSON; what bqsync does not use (policy tags, lengths, collation) is
/// ignored.
#[derive(Deserialize)]
struct BigQueryField {
    name: String,
    #[serde(rename = "type")]
    column_type: ColumnType,
    #[serde(default)]
    mode: ColumnMode,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    fields: Vec<BigQueryField>,
}

impl From<BigQueryField> for Column {
    fn from(field: BigQueryField) -> Column {
        Column {
            name: field.name,
            column_type: field.column_type,
            mode: field.mode,
            description: field.description,
            fields: field.fields.into_iter().map(Column::from).collect(),
        }
    }
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

    #[test]
    fn identifiers_reject_injection() {
        assert!(is_valid_identifier("contacts_master"));
        assert!(!is_valid_identifier("a; DROP TABLE x"));
        assert!(!is_valid_identifier("1abc"));
        assert!(!is_valid_identifier("a\"b"));
        assert!(!is_valid_identifier(""));
    }

    #[test]
    fn bigquery_schema_json_becomes_an_append_table_named_after_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let bq = r#"[
          {"name": "id", "type": "string", "mode": "REQUIRED", "maxLength": "64"},
          {"name": "n", "type": "INTEGER", "mode": "nullable", "description": "count"},
          {"name": "tags", "type": "STRING", "mode": "REPEATED", "policyTags": {"names": []}},
          {"name": "addr", "type": "RECORD", "fields": [{"name": "city", "type": "STRING"}]}
        ]"#;
        std::fs::write(dir.path().join("legacy.json"), bq).unwrap();
        let catalog = Catalog::load_dir(dir.path()).unwrap();
        let table = catalog.get("legacy").unwrap();
        assert_eq!(table.write_mode, WriteMode::Append);
        let shape: Vec<_> = table.columns.iter().map(|c| (c.name.as_str(), c.column_type, c.mode)).collect();
        assert_eq!(
            shape,
            vec![
                ("id", ColumnType::String, ColumnMode::Required),
                ("n", ColumnType::Int64, ColumnMode::Nullable),
                ("tags", ColumnType::String, ColumnMode::Repeated),
                ("addr", ColumnType::Record, ColumnMode::Nullable),
            ]
        );
        assert_eq!(table.columns[3].fields[0].name, "city");
        std::fs::write(dir.path().join("legacy.json"), r#"[{"name": "g", "type": "GEOGRAPHY"}]"#).unwrap();
        let err = Catalog::load_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("unsupported column type `GEOGRAPHY`"), "{err}");
    }

    #[test]
    fn patch_upserts_are_checked() {
        let mut contacts = project_catalog().get("contacts_master").unwrap().clone();
        assert!(!contacts.patches(), "replace is the default");
        contacts.upsert = UpsertMode::Patch;
        assert!(contacts.check().is_ok() && contacts.patches());
        contacts.cdc = true;
        assert!(contacts.check().unwrap_err().contains("cannot be combined with `cdc`"));
        let mut atoms = project_catalog().get("atoms").unwrap().clone();
        atoms.upsert = UpsertMode::Patch;
        assert_eq!(atoms.check().unwrap_err(), "`upsert` applies to write_mode `upsert` only");
        let parsed: TableSchema = serde_json::from_value(json!({
            "table": "t", "write_mode": "upsert", "upsert": "patch", "primary_key": ["k"], "version_column": "v",
            "columns": [{"name": "k", "type": "STRING"}, {"name": "v", "type": "INT64"}]
        }))
        .unwrap();
        assert_eq!(parsed.upsert, UpsertMode::Patch);
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

    #[test]
    fn an_unknown_field_is_named_whatever_else_the_record_holds() {
        let catalog = Catalog::load_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas").as_path()).unwrap();
        let atoms = catalog.get("atoms").unwrap();
        fn coerce_in(table: &TableSchema, line: &str) -> Result<Vec<CellValue>, SchemaViolation> {
            let payload: crate::envelope::RawPayload = serde_json::from_str(line).unwrap();
            coerce_raw_fields(table, payload.fields(), |name| payload.raw(name), false)
        }
        let coerce = |line: &str| coerce_in(atoms, line);
        let every_column = r#"{"event_id":"e1","entity_id":"x","kind":"k","text":"t","score":1.5,"tags":["a"],"created_at":"2024-01-01T00:00:00Z""#;
        assert_eq!(coerce(&format!("{every_column}}}")).unwrap().len(), atoms.columns.len());
        // Every column present and one field more: counted, then named.
        let error = coerce(&format!(r#"{every_column},"surprise":1}}"#)).unwrap_err().0;
        assert!(error.contains("field `surprise` is not a column of table `atoms`"), "{error}");
        // A field short and one unknown: the same count as the columns, still named.
        let error = coerce(r#"{"event_id":"e1","created_at":"2024-01-01T00:00:00Z","surprise":1}"#).unwrap_err().0;
        assert!(error.contains("`surprise`"), "{error}");
        // An unknown field comes before a value that does not coerce, on both paths.
        let both = r#"{"event_id":"e1","created_at":"not a time","surprise":1}"#;
        assert!(coerce(both).unwrap_err().0.contains("`surprise`"));
        let parsed: serde_json::Value = serde_json::from_str(both).unwrap();
        assert!(coerce_row(atoms, parsed.as_object().unwrap(), false).unwrap_err().0.contains("`surprise`"));
        // Without the unknown field, the value's own error.
        let error = coerce(r#"{"event_id":"e1","created_at":"not a time"}"#).unwrap_err().0;
        assert!(error.contains("created_at"), "{error}");
        // A table that ignores unknown fields takes the record.
        let mut lenient = atoms.clone();
        lenient.unknown_fields = UnknownFields::Ignore;
        assert!(coerce_in(&lenient, &format!(r#"{every_column},"surprise":1}}"#)).is_ok());
    }
}
