//! One JSONL record made into a change event (shared with replay).

use std::collections::HashMap;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::framing::utf16_encoding;
use super::DELETE_FIELD;
use crate::bus::{attr, Attributes, OutboundMessage};
use crate::dead_letter::DeadLetterReason;
use crate::envelope::{derive_event_id, identify, ordering_key, record_event_id, ChangeEvent, Op};
use crate::schema::Catalog;
use crate::sources::rows::poison;

/// Where a record comes from: its file (fingerprint and byte offset, which identify a record without
/// an id), the source label and the produce time.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub file_fingerprint: u64,
    pub offset: u64,
    pub source: &'a str,
    pub produced_at: &'a str,
}

/// Builds the change event for one JSONL record (a JSON object as text) of `table`. Replay uses it
/// for records that were dead-lettered before they became events. `transform`: apply the table's
/// transforms (false for a record that went through them already).
pub fn record_to_message(
    catalog: &Catalog,
    table: &str,
    origin: Origin<'_>,
    text: &str,
    transform: bool,
) -> Result<OutboundMessage, (DeadLetterReason, String)> {
    let Origin { file_fingerprint, offset, source, produced_at } = origin;
    // Tables with transforms: the record is transformed first, and only its transformed text goes on.
    let transformed;
    let text = match catalog.get(table).filter(|s| transform && !s.transforms.is_empty()) {
        Some(schema) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(mut record)) => {
                crate::schema::transform::apply(&schema.transforms, &mut record);
                transformed = Value::Object(record).to_string();
                transformed.as_str()
            }
            // No part of the line in the detail: it may hold the raw value.
            _ => return Err((DeadLetterReason::Decode, "line is not a JSON object".into())),
        },
        None => text,
    };
    // Top-level fields borrowed as raw JSON: validates the line and allocates only the index;
    // the few fields identity needs are parsed on demand. Keys with escapes take the slow path.
    let fields = match serde_json::from_str::<HashMap<&str, &RawValue, foldhash::fast::RandomState>>(text) {
        Ok(fields) => LineFields::Borrowed(fields),
        Err(_) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => LineFields::Owned(map),
            _ => return Err((DeadLetterReason::Decode, describe_invalid_line(text))),
        },
    };
    let field = |name: &str| fields.get(name);
    let deleted = fields.get(DELETE_FIELD) == Some(Value::Bool(true));
    let (op, event_id, key, version) = match catalog.get(table) {
        // Unknown table: publish anyway; the worker dead-letters it as `unknown_table`, and a
        // replay lands it once its schema file exists.
        None => (Op::Insert, None, None, None),
        Some(schema) => {
            let identity = identify(schema, field, deleted).map_err(|detail| (DeadLetterReason::Schema, detail))?;
            (identity.op, identity.event_id, identity.key, identity.version)
        }
    };
    // `identify` gives a key and a version only for upsert tables: there, the record is key@version.
    let key_text = key.as_ref().map(|key| serde_json::to_string(key).expect("map serializes"));
    let event_id = record_event_id(table, event_id, key_text.as_deref(), version).unwrap_or_else(|| {
        derive_event_id(&[table.as_bytes(), &file_fingerprint.to_le_bytes(), &offset.to_le_bytes(), text.as_bytes()])
    });
    let payload_text;
    let payload: &str = if fields.get(DELETE_FIELD).is_some() {
        let mut without: Map<String, Value> = serde_json::from_str(text).expect("validated above");
        without.remove(DELETE_FIELD);
        payload_text = serde_json::to_string(&without).expect("map serializes");
        &payload_text
    } else {
        text
    };
    let ordering_key = key_text.as_deref().map(|key_text| ordering_key(table, key_text));
    let event = ChangeEvent { event_id, table, op, key, version, payload, source, produced_at };
    let mut attributes = Attributes::new();
    attributes.insert(attr::TABLE.into(), table.into());
    attributes.insert(attr::EVENT_ID.into(), event.event_id.clone());
    Ok(OutboundMessage { data: event.to_bytes(), attributes, ordering_key })
}

/// The bytes a poison message of `table` may carry: the record itself, or, for a table with
/// transforms, the record transformed (or withheld when it cannot be).
pub(super) fn shielded<'b>(catalog: &Catalog, table: &str, bytes: &'b [u8]) -> std::borrow::Cow<'b, [u8]> {
    match catalog.get(table).filter(|s| !s.transforms.is_empty()) {
        Some(schema) => std::borrow::Cow::Owned(crate::schema::transform::shield(&schema.transforms, bytes)),
        None => std::borrow::Cow::Borrowed(bytes),
    }
}

/// Builds the message for one complete line; None for a blank line.
pub(super) fn line_to_message(
    catalog: &Catalog,
    table: &str,
    origin: Origin<'_>,
    bytes: &[u8],
) -> Option<OutboundMessage> {
    let (source_label, offset) = (origin.source, origin.offset);
    if !crate::schema::is_valid_identifier(table) {
        let detail = format!("{} ({source_label})", crate::dead_letter::unknown_table_detail(table));
        return Some(poison(table, bytes, DeadLetterReason::UnknownTable, detail, source_label));
    }
    if let Some(encoding) = utf16_encoding(bytes) {
        let detail = format!(
            "the file is {encoding} text, not UTF-8 ({source_label}, byte {offset}); convert it, e.g. with `iconv -f {encoding} -t UTF-8`"
        );
        return Some(poison(table, &shielded(catalog, table, bytes), DeadLetterReason::Decode, detail, source_label));
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text.trim(),
        Err(e) => {
            let detail =
                format!("invalid UTF-8 at byte {} of the line ({source_label}, byte {offset})", e.valid_up_to());
            return Some(poison(
                table,
                &shielded(catalog, table, bytes),
                DeadLetterReason::Decode,
                detail,
                source_label,
            ));
        }
    };
    if text.is_empty() {
        return None;
    }
    match record_to_message(catalog, table, origin, text, true) {
        Ok(message) => Some(message),
        Err((reason, detail)) => {
            let mut message = poison(
                table,
                &shielded(catalog, table, text.as_bytes()),
                reason,
                format!("{detail} ({source_label}, byte {offset})"),
                source_label,
            );
            if catalog.get(table).is_some_and(|s| !s.transforms.is_empty()) {
                message.attributes.insert(attr::TRANSFORMED.into(), "1".into());
            }
            Some(message)
        }
    }
}

/// A line's top-level fields.
pub(super) enum LineFields<'a> {
    /// Borrowed as raw JSON: validates the line and allocates only the index; the few fields that
    /// identity needs are parsed on demand.
    Borrowed(HashMap<&'a str, &'a RawValue, foldhash::fast::RandomState>),
    /// Fully parsed: the slow path, for keys with escape sequences.
    Owned(Map<String, Value>),
}

impl LineFields<'_> {
    pub(super) fn get(&self, name: &str) -> Option<Value> {
        match self {
            LineFields::Borrowed(fields) => fields.get(name).and_then(|raw| serde_json::from_str(raw.get()).ok()),
            LineFields::Owned(map) => map.get(name).cloned(),
        }
    }
}

/// Why a line is not a JSON object, as precisely as serde_json says.
pub(super) fn describe_invalid_line(text: &str) -> String {
    match serde_json::from_str::<Value>(text) {
        Ok(other) => format!(
            "line is JSON but not an object (starts with {})",
            other.to_string().chars().take(20).collect::<String>()
        ),
        Err(e) => format!("invalid JSON: {e}"),
    }
}
