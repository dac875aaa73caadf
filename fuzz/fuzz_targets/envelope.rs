//! Envelope decoding and classification of any message body. Properties:
//! - neither panics, whatever the bytes;
//! - an envelope that decodes, written again the one way producers write it, decodes to the same
//!   identity (event id, table, op, key, version);
//! - a row has one cell per column of its table; a dead letter says why.

#![no_main]

use bqsync::envelope::{decode, ChangeEvent};
use bqsync::message::{attr, Attributes, Message};
use bqsync::worker::classify::{Classified, Classifier};
use libfuzzer_sys::fuzz_target;

#[path = "shared.rs"]
#[allow(dead_code)] // each target uses part of it
mod shared;

fuzz_target!(|data: &[u8]| {
    let catalog = shared::catalog();
    if let Ok(event) = decode(data) {
        if let Some(payload) = event.payload.to_map() {
            let text = serde_json::to_string(&payload).unwrap();
            let again = ChangeEvent {
                event_id: event.event_id.clone(),
                table: &event.table,
                op: event.op,
                key: event.key.clone(),
                version: event.version,
                payload: &text,
                source: &event.source,
                produced_at: &event.produced_at,
            }
            .to_bytes();
            let back = decode(&again).unwrap_or_else(|e| panic!("a re-written envelope does not decode: {e}"));
            assert_eq!(back.event_id, event.event_id);
            assert_eq!(back.table, event.table);
            assert_eq!(back.op, event.op);
            assert_eq!(back.key, event.key);
            assert_eq!(back.version, event.version);
        }
    }
    let mut attributes = Attributes::new();
    if data.first() == Some(&b'{') {
        attributes.insert(attr::TABLE.into(), "atoms".into());
    }
    let message = Message { data, attributes: &attributes, delivery_attempt: 1, first_attempt_micros: 0 };
    match (Classifier { catalog, max_event_bytes: 1 << 20 }).classify(message) {
        Classified::Row { table, row, .. } => {
            let schema = catalog.get(&table).expect("a row's table is in the catalog");
            assert_eq!(row.cells.len(), schema.columns.len(), "one cell per column of {table}");
        }
        Classified::DeadLetter(dead) => assert!(!dead.detail.is_empty(), "a dead letter says why: {dead:?}"),
    }
});
