//! Records made into rows by their source, for the in-process bus of `bqsync run`
//! ([`crate::bus::Publisher::publish_with_rows`]).
//!
//! Why: in one process, writing each record into an envelope for the worker to parse and coerce
//! again was half of the 1M-atoms run's CPU. A plain record is coerced by its source, once, into
//! the row the worker would have made of its envelope.
//!
//! Invariant: [`stage_record`] gives a row only when it is certain to be that same row. The
//! record's identity comes from [`identify`] over the same fields the source's per-event path
//! reads, its event id is derived as that path derives it, and the row is made by the worker's own
//! [`event_row`] over the payload text the envelope would carry, read with the worker's own
//! [`RawPayload`]. A record it refuses takes the per-event path unchanged, so dead letters keep
//! their reasons. Tombstones and tables with transforms always take the per-event path.

use serde_json::Value;

use crate::batch::{event_row, StagedRow};
use crate::envelope::{derive_event_id, identify, record_event_id, RawPayload};
use crate::schema::TableSchema;
use crate::sources::rows::RowPayload;

/// Bytes an envelope adds to its payload, besides the source label: event id (at most 256 bytes),
/// table name, op, key, version, produce time and the JSON around them. Generous: a record this
/// close to `worker.max_event_bytes` takes the per-event path, which decides exactly.
pub const ENVELOPE_OVERHEAD_BYTES: usize = 1024;

/// Whether a payload of `payload_bytes` with a source label of `label_bytes` stays clear of
/// `max_event_bytes` once in its envelope.
pub fn fits(payload_bytes: usize, label_bytes: usize, max_event_bytes: usize) -> bool {
    payload_bytes + label_bytes + ENVELOPE_OVERHEAD_BYTES <= max_event_bytes
}

/// The row of a record of `table` (a table without transforms) with its key as the per-event path
/// writes it (upsert tables), or `None`: the record goes as an event. `field`: the record's fields as the source's per-event path reads them for its identity;
/// `fallback_id`: what that path derives an append record's id from when the table has no id field
/// (`None`: such records go as events).
pub fn stage_record(
    table: &TableSchema,
    payload: &RawPayload<'_>,
    field: impl Fn(&str) -> Option<Value>,
    fallback_id: Option<&[&[u8]]>,
) -> Option<(StagedRow, Option<String>)> {
    if !table.transforms.is_empty() {
        return None;
    }
    let identity = identify(table, field, false).ok()?;
    let key_text = identity.key.as_ref().map(|key| serde_json::to_string(key).expect("map serializes"));
    let event_id = match record_event_id(&table.table, identity.event_id, key_text.as_deref(), identity.version) {
        Some(event_id) => event_id,
        None => derive_event_id(fallback_id?),
    };
    let row = event_row(table, identity.op, identity.key.as_ref(), identity.version, event_id, payload).ok()?;
    Some((row, key_text))
}

/// A staged row of a table source (SQLite, outbox): `payload`, a row's payload as the per-event path
/// writes it, staged as the worker would read that text; with its key (upsert tables) and the
/// payload's bytes. `None`: the row goes as an event.
pub fn stage_row_payload(
    table: &TableSchema,
    payload: &RowPayload<'_>,
    fallback_id: &[&[u8]],
    label_bytes: usize,
    max_event_bytes: usize,
) -> Option<(StagedRow, Option<String>, usize)> {
    let text = payload.text();
    if !fits(text.len(), label_bytes, max_event_bytes) {
        return None;
    }
    let raw: RawPayload<'_> = serde_json::from_str(&text).ok()?;
    let (row, key_text) = stage_record(table, &raw, |name| payload.field(name), Some(fallback_id))?;
    Some((row, key_text, text.len()))
}
