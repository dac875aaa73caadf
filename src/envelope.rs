//! The change-event envelope: the body of every bus message (see `schemas/envelope.schema.json`).
//!
//! Invariant: `event_id` is deterministic — the same source record always yields the same id — so a
//! record published twice (a producer crashed after publishing but before its checkpoint advanced)
//! lands once: warehouses deduplicate on it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::schema::{parse_timestamp_micros, ColumnType, TableSchema, WriteMode};

/// What a change event does to its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Insert,
    Upsert,
    Delete,
}

/// A change event as producers build it.
#[derive(Debug, Clone)]
pub struct ChangeEvent<'a> {
    pub event_id: String,
    pub table: &'a str,
    pub op: Op,
    pub key: Option<Map<String, Value>>,
    pub version: Option<i64>,
    /// The row as JSON text. Must be a valid JSON object (producers parsed it already), so it is
    /// copied into the envelope as it is instead of being parsed and encoded again.
    pub payload: &'a str,
    pub source: &'a str,
    pub produced_at: &'a str,
}

impl ChangeEvent<'_> {
    /// The message body: the envelope as JSON, with the payload text embedded verbatim.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.envelope_len());
        let string = |out: &mut Vec<u8>, s: &str| serde_json::to_writer(&mut *out, s).expect("writing to a Vec");
        out.extend_from_slice(b"{\"event_id\":");
        string(&mut out, &self.event_id);
        out.extend_from_slice(b",\"table\":");
        string(&mut out, self.table);
        out.extend_from_slice(match self.op {
            Op::Insert => b",\"op\":\"insert\"",
            Op::Upsert => b",\"op\":\"upsert\"",
            Op::Delete => b",\"op\":\"delete\"",
        });
        if let Some(key) = &self.key {
            out.extend_from_slice(b",\"key\":");
            serde_json::to_writer(&mut out, key).expect("writing to a Vec");
        }
        if let Some(version) = self.version {
            write!(out, ",\"version\":{version}").expect("writing to a Vec");
        }
        out.extend_from_slice(b",\"payload\":");
        out.extend_from_slice(self.payload.as_bytes());
        out.extend_from_slice(b",\"source\":");
        string(&mut out, self.source);
        out.extend_from_slice(b",\"produced_at\":");
        string(&mut out, self.produced_at);
        out.push(b'}');
        out
    }

    /// About the bytes [`Self::to_bytes`] writes, so that its buffer is allocated once: a message
    /// lives until it landed, and a buffer grown by doubling held up to twice its bytes (a heap
    /// profile of the 200k contacts: 36 MB at the peak, one reallocation per event). The fixed text
    /// is under 128 bytes; escapes in the strings, which are rare, may still grow it.
    fn envelope_len(&self) -> usize {
        let key = self.key.as_ref().map_or(0, |key| {
            let value = |v: &Value| match v {
                Value::String(s) => s.len() + 2,
                _ => 24,
            };
            2 + key.iter().map(|(name, v)| name.len() + 4 + value(v)).sum::<usize>()
        });
        128 + self.event_id.len()
            + self.table.len()
            + key
            + self.payload.len()
            + self.source.len()
            + self.produced_at.len()
    }
}

/// A change event as workers decode it; borrows from the message bytes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodedEvent<'a> {
    pub event_id: String,
    #[serde(borrow)]
    pub table: std::borrow::Cow<'a, str>,
    pub op: Op,
    #[serde(default)]
    pub key: Option<Map<String, Value>>,
    #[serde(default)]
    pub version: Option<i64>,
    #[serde(borrow)]
    pub payload: RawPayload<'a>,
    #[serde(borrow)]
    pub source: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub produced_at: std::borrow::Cow<'a, str>,
    /// `produced_at` as µs since the epoch (set by [`decode`], which checks it anyway).
    #[serde(skip)]
    pub produced_micros: i64,
}

/// An event's payload, borrowed from the message: each field's JSON text, parsed only when a column
/// asks for it. A `serde_json::Map` would allocate every key and every string value of every event
/// (a third of the worker's classification time on the 1M-atoms benchmark).
#[derive(Debug, Default)]
pub struct RawPayload<'a>(HashMap<FieldName<'a>, &'a RawValue, foldhash::fast::RandomState>);

/// Fields a payload's map is sized for before it is read: serde_json gives no size hint, and
/// growing from empty rehashed twice per record of seven fields.
const PAYLOAD_FIELDS_PRESIZED: usize = 14;

impl<'de: 'a, 'a> Deserialize<'de> for RawPayload<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawPayload<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, mut access: M) -> Result<Self::Value, M::Error> {
                let capacity = access.size_hint().unwrap_or(PAYLOAD_FIELDS_PRESIZED);
                let mut fields = HashMap::with_capacity_and_hasher(capacity, Default::default());
                // A repeated field keeps its last value, as a map deserialized by serde does.
                while let Some((name, value)) = access.next_entry::<FieldName<'de>, &'de RawValue>()? {
                    fields.insert(name, value);
                }
                Ok(RawPayload(fields))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// A payload field name: borrowed from the message unless it holds JSON escapes.
#[derive(Debug, PartialEq, Eq, Hash)]
struct FieldName<'a>(Cow<'a, str>);

impl std::borrow::Borrow<str> for FieldName<'_> {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for FieldName<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // serde borrows a `Cow<str>` only as a field of its own, never as a map key: this visitor
        // takes the borrowed text when the parser offers it.
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = FieldName<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(FieldName(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(FieldName(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

impl<'a> RawPayload<'a> {
    /// Whether the payload carries `field` (null included).
    pub fn contains(&self, field: &str) -> bool {
        self.0.contains_key(field)
    }

    /// The value of `field`, parsed; `None` when absent. The text is valid JSON (checked when the
    /// message was decoded), but a number beyond f64's range has no `Value`: that is the error.
    pub fn value(&self, field: &str) -> Result<Option<Value>, String> {
        let Some(raw) = self.0.get(field) else {
            return Ok(None);
        };
        serde_json::from_str(raw.get()).map(Some).map_err(|e| format!("field `{field}`: {e}"))
    }

    /// The JSON text of `field`; `None` when absent.
    pub fn raw(&self, field: &str) -> Option<&'a str> {
        self.0.get(field).map(|raw| raw.get())
    }

    /// [`RawPayload::value`], with an unreadable value as absent (for display and key checks,
    /// after [`RawPayload::value`] accepted the columns).
    pub fn get(&self, field: &str) -> Option<Value> {
        self.value(field).ok().flatten()
    }

    /// The payload's field names.
    pub fn fields(&self) -> impl ExactSizeIterator<Item = &str> {
        self.0.keys().map(|k| k.0.as_ref())
    }

    /// The whole payload as a JSON object (for edits and display); `None` when a value has no
    /// `Value` (a number beyond f64's range), rather than a payload with that value changed.
    pub fn to_map(&self) -> Option<Map<String, Value>> {
        self.fields().map(|f| Some((f.to_string(), self.value(f).ok()??))).collect()
    }
}

/// Why a message is not a valid change event.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("message is not UTF-8: invalid byte at offset {0}")]
    NotUtf8(usize),
    #[error("message is not a valid change event: {0}")]
    Json(String),
    #[error("field `{field}`: {problem}")]
    Field { field: &'static str, problem: String },
}

/// Decodes and checks a message body. Errors say which field is wrong and why.
pub fn decode(bytes: &[u8]) -> Result<DecodedEvent<'_>, DecodeError> {
    let text = std::str::from_utf8(bytes).map_err(|e| DecodeError::NotUtf8(e.valid_up_to()))?;
    let mut event: DecodedEvent = serde_json::from_str(text).map_err(|e| DecodeError::Json(e.to_string()))?;
    let field = |field, problem: &str| Err(DecodeError::Field { field, problem: problem.to_string() });
    if event.event_id.is_empty() || event.event_id.len() > 256 {
        return field("event_id", "must be 1 to 256 characters");
    }
    if !crate::schema::is_valid_identifier(&event.table) {
        return field("table", "must be a table name (letters, digits and _)");
    }
    if matches!(event.op, Op::Upsert | Op::Delete) {
        if event.key.as_ref().is_none_or(|k| k.is_empty()) {
            return field("key", "is required for upsert and delete");
        }
        if event.version.is_none() {
            return field("version", "is required for upsert and delete");
        }
    }
    match chrono::DateTime::parse_from_rfc3339(&event.produced_at) {
        Ok(time) => event.produced_micros = time.timestamp_micros(),
        Err(_) => return field("produced_at", "must be an RFC 3339 timestamp"),
    }
    Ok(event)
}

/// A 128-bit deterministic id, as 32 hex digits, from the parts that identify a source record.
pub fn derive_event_id(parts: &[&[u8]]) -> String {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for part in parts {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    // The digest's 32 lowercase hex digits, most significant first (`{:032x}`, which took a tenth of
    // the source's time on upsert records).
    let mut text = [0u8; 32];
    hex::encode_to_slice(hasher.digest128().to_be_bytes(), &mut text).expect("32 digits for 16 bytes");
    String::from_utf8(text.to_vec()).expect("hex digits are ASCII")
}

/// The event id producers give a record: its id field's value; else, for an upsert record, a hash of
/// table, key (as JSON text) and version, so whichever source or pass publishes it gives the same
/// id. `None` when the record has neither: the producer derives one from where the record is.
pub fn record_event_id(
    table: &str,
    event_id: Option<String>,
    key_text: Option<&str>,
    version: Option<i64>,
) -> Option<String> {
    event_id.or_else(|| match (key_text, version) {
        (Some(key_text), Some(version)) => {
            Some(derive_event_id(&[table.as_bytes(), key_text.as_bytes(), &version.to_le_bytes()]))
        }
        _ => None,
    })
}

/// Identity of a payload within its table, read from the table schema: event id (when the schema names
/// an id field), primary key and version.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordIdentity {
    pub op: Op,
    pub event_id: Option<String>,
    pub key: Option<Map<String, Value>>,
    pub version: Option<i64>,
}

/// Reads op, id, key and version from a payload according to the table's schema.
/// Upsert tables: `key` from the primary key columns and `version` from the version column (TIMESTAMP
/// versions become microseconds). A payload with `"_deleted": true` (removed from the payload by the
/// caller) is a delete.
/// `field` looks a payload field up (so callers may parse lazily).
pub fn identify(
    table: &TableSchema,
    field: impl Fn(&str) -> Option<Value>,
    deleted: bool,
) -> Result<RecordIdentity, String> {
    let event_id = match &table.event_id_field {
        Some(name) => match field(name).as_ref() {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            other => {
                return Err(format!(
                    "id field `{name}` must be a non-empty string, got {}",
                    other.map_or("nothing".into(), |v| v.to_string())
                ))
            }
        },
        None => None,
    };
    if table.write_mode == WriteMode::Append {
        return Ok(RecordIdentity { op: Op::Insert, event_id, key: None, version: None });
    }
    let mut key = Map::new();
    for column in &table.primary_key {
        match field(column) {
            Some(v) if !v.is_null() => key.insert(column.clone(), v),
            _ => return Err(format!("primary key column `{column}` is missing")),
        };
    }
    let version_column = table.version_column.as_deref().expect("upsert tables have a version column");
    let raw = field(version_column).ok_or_else(|| format!("version column `{version_column}` is missing"))?;
    let version = match table.column(version_column).map(|c| c.column_type) {
        Some(ColumnType::Timestamp) => parse_timestamp_micros(&raw),
        _ => raw.as_i64().or_else(|| raw.as_str().and_then(|s| s.parse().ok())),
    }
    .ok_or_else(|| format!("version column `{version_column}`: cannot read a version from {raw}"))?;
    let op = if deleted { Op::Delete } else { Op::Upsert };
    Ok(RecordIdentity { op, event_id, key: Some(key), version: Some(version) })
}

/// The ordering key of an upsert record: table and primary key, hashed when longer than Pub/Sub's
/// limit of 1024 bytes (then two keys could share a key; that only orders them together).
/// `key_text`: the key map as `serde_json::to_string` writes it.
pub fn ordering_key(table: &str, key_text: &str) -> String {
    let text = format!("{table}:{key_text}");
    if text.len() <= 1024 {
        text
    } else {
        format!("{table}:#{}", derive_event_id(&[text.as_bytes()]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_rejects_with_precise_reasons() {
        let ok = br#"{"event_id":"e","table":"t","op":"insert","payload":{},"source":"s","produced_at":"2024-01-01T00:00:00Z"}"#;
        assert!(decode(ok).is_ok());
        assert_eq!(decode(b"\xff{}").unwrap_err(), DecodeError::NotUtf8(0));
        let extra = br#"{"event_id":"e","table":"t","op":"insert","payload":{},"source":"s","produced_at":"2024-01-01T00:00:00Z","x":1}"#;
        assert!(decode(extra).unwrap_err().to_string().contains("unknown field `x`"));
        let bad_op = br#"{"event_id":"e","table":"t","op":"merge","payload":{},"source":"s","produced_at":"2024-01-01T00:00:00Z"}"#;
        assert!(decode(bad_op).unwrap_err().to_string().contains("unknown variant `merge`"));
        let no_key = br#"{"event_id":"e","table":"t","op":"upsert","version":1,"payload":{},"source":"s","produced_at":"2024-01-01T00:00:00Z"}"#;
        assert_eq!(decode(no_key).unwrap_err().to_string(), "field `key`: is required for upsert and delete");
        let bad_table = br#"{"event_id":"e","table":"t;drop","op":"insert","payload":{},"source":"s","produced_at":"2024-01-01T00:00:00Z"}"#;
        assert!(decode(bad_table).unwrap_err().to_string().starts_with("field `table`"));
        let payload_not_object = br#"{"event_id":"e","table":"t","op":"insert","payload":[1],"source":"s","produced_at":"2024-01-01T00:00:00Z"}"#;
        assert!(matches!(decode(payload_not_object).unwrap_err(), DecodeError::Json(_)));
    }

    #[test]
    fn encoded_events_decode_to_the_same_fields() {
        let key: Map<String, Value> = serde_json::from_str(r#"{"id":"a\"b"}"#).unwrap();
        let event = ChangeEvent {
            event_id: "e\u{1}".into(),
            table: "t",
            op: Op::Delete,
            key: Some(key.clone()),
            version: Some(-3),
            payload: r#"{"id":"a\"b","n":1}"#,
            source: "jsonl:x",
            produced_at: "2024-01-01T00:00:00Z",
        };
        let bytes = event.to_bytes();
        let decoded = decode(&bytes).unwrap();
        assert_eq!(decoded.event_id, "e\u{1}");
        assert_eq!((decoded.op, decoded.version, decoded.key), (Op::Delete, Some(-3), Some(key)));
        assert_eq!(decoded.payload.get("n"), Some(Value::from(1)));
        assert_eq!(decoded.payload.get("id"), Some(Value::from("a\"b")));
        assert_eq!(decoded.payload.to_map(), serde_json::from_str::<Map<String, Value>>(event.payload).ok());
        assert_eq!(decoded.source, "jsonl:x");
    }

    #[test]
    fn an_envelope_is_written_into_one_allocation() {
        // A contact as the JSONL source makes it: a composite key, a long source label.
        let key: Map<String, Value> = serde_json::from_str(r#"{"contact_id":"c-030562","region":7}"#).unwrap();
        let payload = r#"{"contact_id":"c-030562","region":7,"name":"Ada","email":"ada@example.com","version":2}"#;
        let source = "jsonl:inbox/contacts_master/contacts-with-a-rather-long-file-name.jsonl";
        let event = ChangeEvent {
            event_id: derive_event_id(&[b"contacts_master", b"c-030562", &2i64.to_le_bytes()]),
            table: "contacts_master",
            op: Op::Upsert,
            key: Some(key),
            version: Some(1_700_000_000_000_000),
            payload,
            source,
            produced_at: "2026-12-07T04:01:28.123456Z",
        };
        let bytes = event.to_bytes();
        // Sized from the payload alone, this buffer grew once, to 112 bytes more than it holds.
        assert!(bytes.capacity() - bytes.len() <= 64, "{} bytes in a buffer of {}", bytes.len(), bytes.capacity());
        assert_eq!(decode(&bytes).unwrap().version, Some(1_700_000_000_000_000));
    }

    #[test]
    fn a_payload_value_beyond_f64_is_an_error_never_a_changed_value() {
        let bytes = br#"{"event_id":"e","table":"t","op":"insert","payload":{"n":1e400,"s":"x"},"source":"s","produced_at":"2024-01-01T00:00:00Z"}"#;
        let decoded = decode(bytes).unwrap();
        assert!(decoded.payload.value("n").unwrap_err().contains("`n`"));
        assert_eq!(decoded.payload.value("s"), Ok(Some(Value::from("x"))));
        assert_eq!(decoded.payload.to_map(), None);
    }

    #[test]
    fn derived_ids_are_stable_and_unambiguous() {
        let a = derive_event_id(&[b"atoms", b"ab", b"c"]);
        assert_eq!(a, derive_event_id(&[b"atoms", b"ab", b"c"]));
        assert_ne!(a, derive_event_id(&[b"atoms", b"a", b"bc"]));
        assert_eq!(a.len(), 32);
    }

    #[test]
    fn a_payload_keeps_every_field_and_a_repeated_field_its_last_value() {
        let fields: Vec<String> = (0..40).map(|i| format!("\"f{i}\":{i}")).collect();
        let text = format!("{{{},\"f3\":\"again\"}}", fields.join(","));
        let payload: RawPayload = serde_json::from_str(&text).unwrap();
        assert_eq!(payload.fields().count(), 40);
        assert_eq!(payload.raw("f39"), Some("39"));
        assert_eq!(payload.raw("f3"), Some("\"again\""));
        assert!(serde_json::from_str::<RawPayload>("[1]").is_err(), "a payload is an object");
    }

    #[test]
    fn derived_ids_are_the_digest_in_hex_as_stored_before() {
        // Stored rows carry these ids: the text must never change.
        for parts in
            [&[&b"atoms"[..], b"ab", b"c"][..], &[b""], &[b"contacts_master", b"{\"id\":1}", &7i64.to_le_bytes()]]
        {
            let mut hasher = xxhash_rust::xxh3::Xxh3::new();
            for part in parts {
                hasher.update(&(part.len() as u64).to_le_bytes());
                hasher.update(part);
            }
            assert_eq!(derive_event_id(parts), format!("{:032x}", hasher.digest128()));
        }
    }
}
