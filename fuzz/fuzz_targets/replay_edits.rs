//! `bqsync replay --set/--drop/--rename` on any dead letter: the edits, parsed from any text, applied
//! to any stored message. Properties:
//! - nothing panics;
//! - a dead letter whose bytes are an envelope comes back as an envelope with the same identity
//!   (event id, table, op, key, version), its payload edited: each `--set` field holds its value (the
//!   last one, when a field is set twice);
//! - the rebuilt message classifies (as a row or a dead letter with its reason).

#![no_main]

use bqsync::dead_letter::DeadLetterRecord;
use bqsync::dlq::{rebuild, Edits};
use bqsync::envelope::decode;
use bqsync::message::{attr, Message};
use bqsync::worker::classify::{Classified, Classifier};
use libfuzzer_sys::fuzz_target;
use serde_json::json;

#[path = "shared.rs"]
#[allow(dead_code)] // each target uses part of it
mod shared;

fuzz_target!(|input: &[u8]| {
    let (flags, message) = shared::split(input);
    // A raw record a producer could not make into an event (poison) when the flags start with `!`;
    // else an envelope that failed in the worker.
    let (poison, flags) = match flags.strip_prefix(b"!") {
        Some(rest) => (true, rest),
        None => (false, flags),
    };
    let flags = String::from_utf8_lossy(flags);
    let (mut set, mut drop, mut rename) = (Vec::new(), Vec::new(), Vec::new());
    for (i, flag) in flags.split('\n').enumerate() {
        match i % 3 {
            0 => set.push(flag.to_string()),
            1 => rename.push(flag.to_string()),
            _ => drop.push(flag.to_string()),
        }
    }
    let Ok(edits) = Edits::parse(&set, &drop, &rename) else { return };
    let attributes = if poison { json!({ attr::POISON_REASON: "schema" }) } else { json!({}) };
    let record = DeadLetterRecord {
        dead_letter_id: "0123456789abcdef0123".into(),
        event_id: None,
        table_name: Some("atoms".into()),
        reason: "schema".into(),
        detail: Some("fuzz".into()),
        source: None,
        message_bytes: message.to_vec(),
        message: String::from_utf8_lossy(message).into(),
        attributes,
        delivery_attempts: Some(1),
        first_failed_micros: None,
        last_failed_micros: 0,
        bqsync_version: None,
        replayed_micros: None,
    };
    let catalog = shared::catalog();
    let (bytes, attributes) = rebuild(&record, &edits, catalog);
    if !poison && !edits.is_empty() {
        if let (Ok(before), Ok(after)) = (decode(message), decode(&bytes)) {
            assert_eq!(after.event_id, before.event_id);
            assert_eq!(after.table, before.table);
            assert_eq!(after.op, before.op);
            assert_eq!(after.key, before.key);
            assert_eq!(after.version, before.version);
            if let Some(payload) = after.payload.to_map() {
                // Sets apply in order: a field set twice holds its last value.
                let last: std::collections::HashMap<&String, &serde_json::Value> =
                    edits.set.iter().map(|(field, value)| (field, value)).collect();
                for (field, value) in last {
                    assert_eq!(payload.get(field), Some(value), "--set {field} holds its (last) value");
                }
            }
        } else if let Ok(before) = decode(message) {
            // An envelope whose payload reads is always written back readable.
            assert!(before.payload.to_map().is_none(), "the rebuilt envelope does not decode");
        }
    }
    let message = Message { data: &bytes, attributes: &attributes, delivery_attempt: 1, first_attempt_micros: 0 };
    match (Classifier { catalog, max_event_bytes: 1 << 20 }).classify(message) {
        Classified::Row { .. } => {}
        Classified::DeadLetter(dead) => assert!(!dead.detail.is_empty(), "a dead letter says why: {dead:?}"),
    }
});
