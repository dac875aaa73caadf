//! Shared by the table sources (outbox, SQLite watermark, HTTP API): database values mapped to a
//! table's column types, and rows turned into change events.
//!
//! Invariant: the event id of a row of an upsert table is a hash of (table, key, version), whatever
//! source or pass published it, so a row published twice (a crash before the checkpoint, an overlap
//! window, a full resync) lands once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::bus::{attr, Attributes, OutboundMessage};
use crate::dead_letter::DeadLetterReason;
use crate::envelope::{derive_event_id, identify, ordering_key, record_event_id, ChangeEvent, Op};
use crate::schema::{Catalog, ColumnMode, ColumnType, TableSchema, WriteMode};

/// A value read from SQLite or DuckDB.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
    /// Microseconds since the epoch (DuckDB TIMESTAMP columns).
    Timestamp(i64),
}

impl SqlValue {
    /// The JSON value for a column of `column_type` (and `mode`): what the worker will coerce.
    /// Integers in TIMESTAMP columns are epoch seconds; TEXT in JSON, RECORD and REPEATED columns is
    /// parsed as JSON (left as text if it does not parse, so the worker dead-letters it with a reason).
    pub fn to_json(&self, column_type: ColumnType, mode: ColumnMode) -> Value {
        let structured = mode == ColumnMode::Repeated || matches!(column_type, ColumnType::Json | ColumnType::Record);
        match self {
            SqlValue::Null => Value::Null,
            SqlValue::Integer(i) => match column_type {
                ColumnType::Bool => Value::Bool(*i != 0),
                ColumnType::String => Value::String(i.to_string()),
                _ => Value::from(*i),
            },
            SqlValue::Real(f) => match column_type {
                ColumnType::String => Value::String(f.to_string()),
                _ => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            },
            SqlValue::Text(s) if structured => serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone())),
            SqlValue::Text(s) if column_type == ColumnType::Bool => match s.as_str() {
                "1" => Value::Bool(true),
                "0" => Value::Bool(false),
                _ => Value::String(s.clone()),
            },
            SqlValue::Text(s) => Value::String(s.clone()),
            SqlValue::Blob(bytes) => match column_type {
                ColumnType::String => Value::String(String::from_utf8_lossy(bytes).into_owned()),
                _ => Value::String(crate::schema::encode_base64(bytes)),
            },
            SqlValue::Timestamp(micros) => Value::String(micros_to_rfc3339(*micros)),
        }
    }

    /// True for the values a dirty or soft-delete flag column holds when set.
    pub fn is_truthy(&self) -> bool {
        match self {
            SqlValue::Null => false,
            SqlValue::Integer(i) => *i != 0,
            SqlValue::Real(f) => *f != 0.0,
            SqlValue::Text(s) => !matches!(s.trim().to_ascii_lowercase().as_str(), "" | "0" | "false" | "f" | "no"),
            SqlValue::Blob(b) => !b.is_empty(),
            SqlValue::Timestamp(_) => true,
        }
    }
}

/// `2024-01-01T00:00:00.000000Z`.
pub fn micros_to_rfc3339(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_else(|| micros.to_string())
}

/// Now, as `produced_at` is written.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// How the rows of one source table map to a destination table.
#[derive(Debug, Clone)]
pub struct RowMapping {
    pub table: String,
    schema: Arc<TableSchema>,
    /// Source column name → destination column name, for the columns that differ.
    rename: HashMap<String, String>,
    /// Source column names of the destination's primary key, in key order.
    pub key_columns: Vec<String>,
    /// Source column name of the destination's version column (upsert tables).
    pub version_column: Option<String>,
}

impl RowMapping {
    /// Checks that `table` exists and builds the mapping. `rename` maps source names to column names.
    pub fn new(catalog: &Catalog, table: &str, rename: &BTreeMap<String, String>) -> Result<RowMapping, String> {
        let schema = catalog
            .get(table)
            .ok_or_else(|| format!("table `{table}` has no schema file in schemas/ (expected schemas/{table}.json)"))?;
        for column in rename.values() {
            if schema.column(column).is_none() {
                return Err(format!("`columns` maps to `{column}`, which table `{table}` does not have"));
            }
        }
        let source_name = |column: &str| {
            rename.iter().find(|(_, to)| to.as_str() == column).map_or(column.to_string(), |(from, _)| from.clone())
        };
        Ok(RowMapping {
            table: table.to_string(),
            key_columns: schema.primary_key.iter().map(|c| source_name(c)).collect(),
            version_column: schema.version_column.as_deref().map(source_name),
            rename: rename.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            schema: Arc::new(schema.clone()),
        })
    }

    /// The destination table.
    pub fn schema(&self) -> &TableSchema {
        &self.schema
    }

    pub fn is_upsert(&self) -> bool {
        self.schema.write_mode == WriteMode::Upsert
    }

    /// The key text [`row_event`] gives a payload (destination names), in primary-key order.
    pub fn key_text(&self, payload: &Map<String, Value>) -> String {
        let key: Map<String, Value> = self
            .schema
            .primary_key
            .iter()
            .map(|column| (column.clone(), payload.get(column).cloned().unwrap_or(Value::Null)))
            .collect();
        serde_json::to_string(&key).expect("map serializes")
    }

    /// The destination payload of a row: columns the table has, typed for it. Returns the names of
    /// source columns the table does not have (ignored).
    pub fn payload<'a>(
        &self,
        columns: impl IntoIterator<Item = (&'a str, &'a SqlValue)>,
    ) -> (Map<String, Value>, Vec<String>) {
        let mut payload = Map::new();
        let mut ignored = Vec::new();
        for (name, value) in columns {
            let destination = self.rename.get(name).map_or(name, String::as_str);
            // A `rename` transform names the destination too (the field itself is not a column).
            let destination = match self.schema.transforms.get(destination) {
                Some(crate::schema::transform::Transform::Rename(to)) => to.as_str(),
                _ => destination,
            };
            match self.schema.column(destination) {
                Some(column) => {
                    payload.insert(destination.to_string(), value.to_json(column.column_type, column.mode));
                }
                None => ignored.push(name.to_string()),
            }
        }
        self.transform(&mut payload);
        (payload, ignored)
    }

    /// The destination payload of a row as [`Self::payload`] builds it, but written as JSON text
    /// straight from the values when the table has no transforms (they work on maps): no map and no
    /// `Value` per field. Its fields read as the map's would (see [`RowPayload::field`]).
    pub fn row_payload<'a>(&'a self, columns: impl IntoIterator<Item = (&'a str, &'a SqlValue)>) -> RowPayload<'a> {
        if self.has_transforms() {
            let (map, ignored) = self.payload(columns);
            return RowPayload { text: String::new(), values: Vec::new(), map: Some(map), ignored };
        }
        let mut payload = RowPayload { text: String::new(), values: Vec::new(), map: None, ignored: Vec::new() };
        for (name, value) in columns {
            let destination = self.rename.get(name).map_or(name, String::as_str);
            let Some(column) = self.schema.column(destination) else {
                payload.ignored.push(name.to_string());
                continue;
            };
            if payload.values.iter().any(|(seen, _, _)| *seen == destination) {
                // The map keeps the last of two columns with one destination; so does the text.
                payload.values.retain(|(seen, _, _)| *seen != destination);
            }
            payload.values.push((destination, value, column));
        }
        let mut text = Vec::with_capacity(256);
        text.push(b'{');
        for (i, (name, value, column)) in payload.values.iter().enumerate() {
            if i > 0 {
                text.push(b',');
            }
            serde_json::to_writer(&mut text, name).expect("a string serializes");
            text.push(b':');
            value.write_json(&mut text, column.column_type, column.mode);
        }
        text.push(b'}');
        payload.text = String::from_utf8(text).expect("serde_json writes UTF-8");
        payload
    }

    /// Applies the table's transforms to a payload (see [`crate::schema::transform`]); the
    /// sources that build payloads themselves call it before anything is published.
    pub fn transform(&self, payload: &mut Map<String, Value>) {
        if !self.schema.transforms.is_empty() {
            crate::schema::transform::apply(&self.schema.transforms, payload);
        }
    }

    /// Whether the table has transforms.
    pub fn has_transforms(&self) -> bool {
        !self.schema.transforms.is_empty()
    }

    /// The bytes a poison message of this table may carry for a record that is not a JSON object.
    pub fn shielded(&self, bytes: &[u8]) -> Vec<u8> {
        if self.schema.transforms.is_empty() {
            bytes.to_vec()
        } else {
            crate::schema::transform::withheld(bytes)
        }
    }
}

/// A row's destination payload, from [`RowMapping::row_payload`]: JSON text written from the values
/// (kept for the fields an event's identity reads), or a map when the table has transforms.
pub struct RowPayload<'a> {
    text: String,
    values: Vec<(&'a str, &'a SqlValue, &'a crate::schema::Column)>,
    map: Option<Map<String, Value>>,
    /// Source columns the table does not have (not synced).
    pub ignored: Vec<String>,
}

impl RowPayload<'_> {
    /// A field's JSON value, as the map would hold it.
    pub fn field(&self, name: &str) -> Option<Value> {
        match &self.map {
            Some(map) => map.get(name).cloned(),
            None => self.values.iter().find(|(n, _, _)| *n == name).map(|(_, v, c)| v.to_json(c.column_type, c.mode)),
        }
    }

    /// The payload as JSON text.
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        match &self.map {
            Some(map) => serde_json::to_string(map).expect("map serializes").into(),
            None => self.text.as_str().into(),
        }
    }
}

impl SqlValue {
    /// Appends [`Self::to_json`]'s value as JSON text, without building it for the common cases
    /// (plain text, numbers, NULL); the others go through the `Value`, so both write the same text.
    fn write_json(&self, out: &mut Vec<u8>, column_type: ColumnType, mode: ColumnMode) {
        use std::io::Write;
        let structured = mode == ColumnMode::Repeated || matches!(column_type, ColumnType::Json | ColumnType::Record);
        match self {
            SqlValue::Null => out.extend_from_slice(b"null"),
            SqlValue::Integer(i) if !matches!(column_type, ColumnType::Bool | ColumnType::String) => {
                write!(out, "{i}").expect("a Vec takes any bytes")
            }
            SqlValue::Text(s) if !structured && column_type != ColumnType::Bool => {
                serde_json::to_writer(out, s).expect("a string serializes")
            }
            other => serde_json::to_writer(out, &other.to_json(column_type, mode)).expect("a value serializes"),
        }
    }
}

/// A row made into an event, with what a source needs to remember about it.
#[derive(Debug)]
pub struct RowEvent {
    pub message: OutboundMessage,
    /// Primary key as JSON text (upsert tables).
    pub key_text: Option<String>,
    pub version: Option<i64>,
}

/// Builds the change event for a row payload. `fallback_id` identifies the record when the table has
/// neither an id field nor a primary key (append tables): e.g. source, table and row id.
/// Errors are (reason, detail) for a poison message.
pub fn row_event(
    mapping: &RowMapping,
    payload: &Map<String, Value>,
    deleted: bool,
    fallback_id: &[&[u8]],
    source_label: &str,
    produced_at: &str,
) -> Result<RowEvent, (DeadLetterReason, String)> {
    let fields = |name: &str| payload.get(name).cloned();
    let text = || serde_json::to_string(payload).expect("map serializes").into();
    event_of(mapping, fields, text, deleted, fallback_id, source_label, produced_at)
}

/// [`row_event`] of a [`RowPayload`].
pub fn row_payload_event(
    mapping: &RowMapping,
    payload: &RowPayload<'_>,
    deleted: bool,
    fallback_id: &[&[u8]],
    source_label: &str,
    produced_at: &str,
) -> Result<RowEvent, (DeadLetterReason, String)> {
    event_of(mapping, |name| payload.field(name), || payload.text(), deleted, fallback_id, source_label, produced_at)
}

fn event_of<'t>(
    mapping: &RowMapping,
    fields: impl Fn(&str) -> Option<Value>,
    text: impl FnOnce() -> std::borrow::Cow<'t, str>,
    deleted: bool,
    fallback_id: &[&[u8]],
    source_label: &str,
    produced_at: &str,
) -> Result<RowEvent, (DeadLetterReason, String)> {
    let table = mapping.table.as_str();
    let identity = identify(&mapping.schema, fields, deleted)
        .map_err(|detail| (DeadLetterReason::Schema, format!("{detail} ({source_label})")))?;
    let key_text = identity.key.as_ref().map(|k| serde_json::to_string(k).expect("map serializes"));
    let event_id = record_event_id(table, identity.event_id, key_text.as_deref(), identity.version)
        .unwrap_or_else(|| derive_event_id(fallback_id));
    let payload_text = text();
    let ordering = key_text.as_deref().map(|key_text| ordering_key(table, key_text));
    let event = ChangeEvent {
        event_id,
        table,
        op: identity.op,
        key: identity.key,
        version: identity.version,
        payload: &payload_text,
        source: source_label,
        produced_at,
    };
    let mut attributes = Attributes::new();
    attributes.insert(attr::TABLE.into(), table.into());
    attributes.insert(attr::EVENT_ID.into(), event.event_id.clone());
    Ok(RowEvent {
        message: OutboundMessage { data: event.to_bytes(), attributes, ordering_key: ordering },
        key_text,
        version: identity.version,
    })
}

/// A tombstone for a key that disappeared from the source (a hard delete), one version above the
/// last one published so it wins over it and loses to a later re-insert.
pub fn tombstone_event(
    mapping: &RowMapping,
    key_text: &str,
    last_version: i64,
    source_label: &str,
    produced_at: &str,
) -> Result<OutboundMessage, String> {
    let key: Map<String, Value> = serde_json::from_str(key_text).map_err(|e| format!("saved key {key_text}: {e}"))?;
    let version = last_version.saturating_add(1);
    let table = mapping.table.as_str();
    // The version column is REQUIRED on upsert tables, tombstones included.
    let mut payload = key.clone();
    if let Some(column) = mapping.schema.version_column.as_deref() {
        let value = match mapping.schema.column(column).map(|c| c.column_type) {
            Some(ColumnType::Timestamp) => Value::String(micros_to_rfc3339(version)),
            _ => Value::from(version),
        };
        payload.insert(column.to_string(), value);
    }
    let payload_text = serde_json::to_string(&payload).expect("map serializes");
    let event = ChangeEvent {
        event_id: derive_event_id(&[table.as_bytes(), key_text.as_bytes(), &version.to_le_bytes(), b"deleted"]),
        table,
        op: Op::Delete,
        version: Some(version),
        payload: &payload_text,
        source: source_label,
        produced_at,
        key: Some(key.clone()),
    };
    let mut attributes = Attributes::new();
    attributes.insert(attr::TABLE.into(), table.into());
    attributes.insert(attr::EVENT_ID.into(), event.event_id.clone());
    // From the map, as for the upserts of the key, whatever the saved text's spelling.
    let ordering = ordering_key(table, &serde_json::to_string(&key).expect("map serializes"));
    Ok(OutboundMessage { data: event.to_bytes(), attributes, ordering_key: Some(ordering) })
}

/// A message carrying a record that could not become an event, and why; the worker dead-letters it.
pub fn poison(
    table: &str,
    bytes: &[u8],
    reason: DeadLetterReason,
    detail: String,
    source_label: &str,
) -> OutboundMessage {
    let mut attributes = Attributes::new();
    attributes.insert(attr::TABLE.into(), table.into());
    attributes.insert(attr::POISON_REASON.into(), reason.as_str().into());
    attributes.insert(attr::POISON_DETAIL.into(), detail);
    attributes.insert(attr::SOURCE.into(), source_label.into());
    OutboundMessage::new(bytes.to_vec(), attributes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        crate::schema::project_catalog()
    }

    #[test]
    fn values_map_to_column_types() {
        use ColumnMode::Nullable;
        assert_eq!(SqlValue::Integer(1).to_json(ColumnType::Bool, Nullable), Value::Bool(true));
        assert_eq!(SqlValue::Integer(7).to_json(ColumnType::String, Nullable), Value::String("7".into()));
        assert_eq!(
            SqlValue::Text("[1,2]".into()).to_json(ColumnType::Int64, ColumnMode::Repeated),
            serde_json::json!([1, 2])
        );
        assert_eq!(SqlValue::Text("{\"a\":1}".into()).to_json(ColumnType::Json, Nullable), serde_json::json!({"a": 1}));
        assert_eq!(SqlValue::Blob(b"hi".to_vec()).to_json(ColumnType::Bytes, Nullable), Value::String("aGk=".into()));
        assert_eq!(
            SqlValue::Timestamp(0).to_json(ColumnType::Timestamp, Nullable),
            Value::String("1970-01-01T00:00:00.000000Z".into())
        );
        assert_eq!(SqlValue::Real(f64::NAN).to_json(ColumnType::Float64, Nullable), Value::Null);
        assert!(SqlValue::Text("yes".into()).is_truthy() && !SqlValue::Text("0".into()).is_truthy());
    }

    /// The text written straight from the values is the map's payload, field for field.
    #[test]
    fn written_payloads_hold_what_the_map_holds() {
        use crate::schema::{Column, TableSchema};
        let column = |name: &str, column_type, mode| Column {
            name: name.into(),
            column_type,
            mode,
            description: None,
            fields: Vec::new(),
        };
        let (nullable, repeated) = (ColumnMode::Nullable, ColumnMode::Repeated);
        let columns = vec![
            column("s", ColumnType::String, nullable),
            column("i", ColumnType::Int64, nullable),
            column("f", ColumnType::Float64, nullable),
            column("b", ColumnType::Bool, nullable),
            column("t", ColumnType::Timestamp, nullable),
            column("j", ColumnType::Json, nullable),
            column("l", ColumnType::String, repeated),
            column("x", ColumnType::Bytes, nullable),
        ];
        let catalog = Catalog::from_tables([TableSchema::plain("t", WriteMode::Append, columns)]);
        let rename = BTreeMap::from([("src".to_string(), "s".to_string())]);
        let mapping = RowMapping::new(&catalog, "t", &rename).unwrap();
        let rows: Vec<Vec<(&str, SqlValue)>> = vec![
            vec![
                ("src", SqlValue::Text("say \"hi\"\n é".into())),
                ("i", SqlValue::Integer(-7)),
                ("f", SqlValue::Real(2.5)),
                ("b", SqlValue::Integer(1)),
                ("t", SqlValue::Timestamp(1_500_000)),
                ("j", SqlValue::Text("{\"a\": [1, 2]}".into())),
                ("l", SqlValue::Text("[\"x\",\"y\"]".into())),
                ("x", SqlValue::Blob(vec![0, 255])),
                ("extra", SqlValue::Integer(1)),
            ],
            vec![
                ("s", SqlValue::Integer(42)),
                ("i", SqlValue::Text("12".into())),
                ("f", SqlValue::Real(f64::NAN)),
                ("b", SqlValue::Text("0".into())),
                ("t", SqlValue::Text("2024-01-01 00:00:00".into())),
                ("j", SqlValue::Text("not json".into())),
                ("l", SqlValue::Null),
                ("x", SqlValue::Null),
            ],
            vec![
                ("s", SqlValue::Text("first".into())),
                ("src", SqlValue::Text("last".into())),
                ("f", SqlValue::Integer(3)),
            ],
        ];
        for row in &rows {
            let values = || row.iter().map(|(n, v)| (*n, v));
            let (map, ignored) = mapping.payload(values());
            let written = mapping.row_payload(values());
            let parsed: Map<String, Value> = serde_json::from_str(&written.text()).unwrap();
            assert_eq!(parsed, map, "{}", written.text());
            assert_eq!(written.ignored, ignored);
            for name in ["s", "i", "f", "b", "t", "j", "l", "x", "nope"] {
                assert_eq!(written.field(name), map.get(name).cloned(), "{name}");
            }
        }
    }

    #[test]
    fn same_key_and_version_give_the_same_event_id_and_renames_apply() {
        let rename = BTreeMap::from([("id".to_string(), "contact_id".to_string())]);
        let mapping = RowMapping::new(&catalog(), "contacts_master", &rename).unwrap();
        assert_eq!(mapping.key_columns, vec!["id".to_string()]);
        let row =
            [("id", SqlValue::Text("c1".into())), ("version", SqlValue::Integer(3)), ("extra", SqlValue::Integer(1))];
        let (payload, ignored) = mapping.payload(row.iter().map(|(n, v)| (*n, v)));
        assert_eq!(ignored, vec!["extra".to_string()]);
        let a = row_event(&mapping, &payload, false, &[], "s", "2024-01-01T00:00:00Z").unwrap();
        let b = row_event(&mapping, &payload, false, &[], "other", "2025-01-01T00:00:00Z").unwrap();
        assert_eq!(a.message.attributes[attr::EVENT_ID], b.message.attributes[attr::EVENT_ID]);
        assert_eq!((a.key_text.as_deref(), a.version), (Some("{\"contact_id\":\"c1\"}"), Some(3)));
        let tombstone =
            tombstone_event(&mapping, a.key_text.as_deref().unwrap(), 3, "s", "2024-01-01T00:00:00Z").unwrap();
        let decoded = crate::envelope::decode(&tombstone.data).unwrap();
        assert_eq!((decoded.op, decoded.version), (Op::Delete, Some(4)));
        assert!(RowMapping::new(&catalog(), "nope", &BTreeMap::new()).unwrap_err().contains("schemas/nope.json"));
    }
}
