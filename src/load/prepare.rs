//! One whole file made ready for a load job: each record validated exactly as the streaming path
//! validates it (the JSONL source's event, then the worker's classifier), good rows written as
//! landing-shaped NDJSON, bad ones as dead letters with their reason.
//!
//! Why validate first rather than let the load job skip bad lines (`maxBadRecords`): a load job
//! reports a limited number of errors by byte position, and a skipped line would land nowhere; here
//! every bad line becomes a dead letter with the same reason and detail as when streamed, and the
//! load job then takes no bad record (`maxBadRecords = 0`).

use serde_json::value::RawValue;
use serde_json::Value;

use crate::batch::StagedRow;
use crate::bus::attr;
use crate::dead_letter::{DeadLetter, DeadLetterReason};
use crate::message::Message;
use crate::schema::Catalog;
use crate::sources::jsonl::record_to_message;
use crate::warehouse::bigquery::sql::ABSENT;
use crate::warehouse::bigquery::{format_timestamp, payload_json};
use crate::warehouse::sql::{DELETED, EVENT_ID, LANDED_AT, VERSION};
use crate::worker::classify::{Classified, Classifier};

/// A file ready to load.
#[derive(Debug)]
pub struct Prepared {
    /// xxh3-128 of the file's bytes, 32 hex digits: the file's identity.
    pub fingerprint: String,
    /// Records read (lines or array elements; blank lines are not records).
    pub records: u64,
    /// Rows in `ndjson`.
    pub rows: u64,
    /// The good rows as the landing table's columns, one JSON object a line.
    pub ndjson: Vec<u8>,
    /// The bad records, as rows of `dead_letters`.
    pub dead_letters: Vec<StagedRow>,
}

/// The fingerprint of a file's bytes.
pub fn fingerprint(bytes: &[u8]) -> String {
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(bytes))
}

/// The records of a file: the elements of a JSON array, else its lines (a UTF-8 BOM, CR before LF
/// and blank lines are skipped; a last line without a newline counts, the file being complete).
/// Each with its position (byte offset of the line, or element index), which derives event ids.
fn records(bytes: &[u8]) -> Result<Vec<(u64, &str)>, String> {
    let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let skipped = (bytes.len() - body.len()) as u64;
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        let text = std::str::from_utf8(body).map_err(|e| format!("a JSON array file must be UTF-8: {e}"))?;
        let items: Vec<&RawValue> = serde_json::from_str(text).map_err(|e| format!("not a JSON array: {e}"))?;
        return Ok(items.into_iter().enumerate().map(|(i, raw)| (i as u64, raw.get())).collect());
    }
    let mut out = Vec::new();
    let mut start = 0;
    while start < body.len() {
        let end = memchr::memchr(b'\n', &body[start..]).map_or(body.len(), |i| start + i);
        let line = &body[start..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if !line.iter().all(u8::is_ascii_whitespace) {
            // Invalid UTF-8 is kept lossily: the record is then a decode dead letter, not a lost line.
            let text = std::str::from_utf8(line).unwrap_or("\u{FFFD}");
            out.push((skipped + start as u64, text));
        }
        start = end + 1;
    }
    Ok(out)
}

/// Prepares `bytes` for `table`. A file that cannot be read as records at all (an unparsable JSON
/// array) is one dead letter.
pub fn prepare(catalog: &Catalog, table: &str, source: &str, bytes: &[u8], max_event_bytes: usize) -> Prepared {
    let fingerprint = fingerprint(bytes);
    let fp64 = u64::from_str_radix(&fingerprint[..16], 16).expect("hex");
    let now = chrono::Utc::now();
    let (produced_at, landed_at) = (now.to_rfc3339(), format_timestamp(now.timestamp_micros()));
    let mut prepared = Prepared { fingerprint, records: 0, rows: 0, ndjson: Vec::new(), dead_letters: Vec::new() };
    let classifier = Classifier { catalog, max_event_bytes };
    let schema = catalog.get(table);
    let mut attributes = crate::bus::Attributes::new();
    attributes.insert(attr::TABLE.into(), table.into());
    let records = match records(bytes) {
        Ok(records) => records,
        Err(detail) => {
            let head = &bytes[..bytes.len().min(4096)];
            prepared.dead_letters.push(dead_letter(
                catalog,
                table,
                DeadLetterReason::Decode,
                detail,
                head,
                &attributes,
            ));
            return prepared;
        }
    };
    for (offset, text) in records {
        prepared.records += 1;
        let message = match record_to_message(
            catalog,
            table,
            crate::sources::jsonl::Origin { file_fingerprint: fp64, offset, source, produced_at: &produced_at },
            text,
            true,
        ) {
            Ok(message) => message,
            Err((reason, detail)) => {
                prepared.dead_letters.push(dead_letter(catalog, table, reason, detail, text.as_bytes(), &attributes));
                continue;
            }
        };
        let delivery = Message {
            data: &message.data,
            attributes: &message.attributes,
            delivery_attempt: 1,
            first_attempt_micros: now.timestamp_micros(),
        };
        match (classifier.classify(delivery), schema) {
            (Classified::Row { row, .. }, Some(schema)) => {
                let mut line = payload_json(schema, &row, false);
                line.insert(EVENT_ID.into(), row.event_id.clone().into());
                line.insert(VERSION.into(), row.version.map_or(Value::Null, |v| v.to_string().into()));
                line.insert(DELETED.into(), (row.op == crate::envelope::Op::Delete).into());
                line.insert(LANDED_AT.into(), landed_at.clone().into());
                if schema.patches() {
                    let absent = row.absent.iter().map(|&i| Value::from(schema.columns[i].name.as_str()));
                    line.insert(ABSENT.into(), Value::Array(absent.collect()));
                }
                serde_json::to_writer(&mut prepared.ndjson, &line).expect("a map serializes");
                prepared.ndjson.push(b'\n');
                prepared.rows += 1;
            }
            // Kept as the record's own text, as the JSONL source's poison is: its id then depends on
            // the line and the reason only, so loading the file again makes the same dead letter.
            (Classified::DeadLetter(dead), _) => {
                let message = Message { data: text.as_bytes(), ..delivery };
                prepared.dead_letters.push(dead.row(catalog, message));
            }
            (Classified::Row { .. }, None) => unreachable!("the classifier dead-letters unknown tables"),
        }
    }
    prepared
}

fn dead_letter(
    catalog: &Catalog,
    table: &str,
    reason: DeadLetterReason,
    detail: String,
    data: &[u8],
    attributes: &crate::bus::Attributes,
) -> StagedRow {
    let dead = DeadLetter { reason, detail, table: Some(table.to_string()), event_id: None };
    let message =
        Message { data, attributes, delivery_attempt: 1, first_attempt_micros: chrono::Utc::now().timestamp_micros() };
    dead.row(catalog, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_lines_or_array_elements() {
        let lines = records(b"\xEF\xBB\xBF{\"a\":1}\r\n\n  \n{\"a\":2}").unwrap();
        assert_eq!(lines, [(3, "{\"a\":1}"), (16, "{\"a\":2}")]);
        let array = records(b" [ {\"a\":1}, {\"a\":[2]} ]").unwrap();
        assert_eq!(array, [(0, "{\"a\":1}"), (1, "{\"a\":[2]}")]);
        assert!(records(b"[{\"a\":1},").is_err());
    }

    #[test]
    fn patch_lines_name_the_columns_they_do_not_carry() {
        let tables = crate::schema::project_catalog().tables().cloned().collect::<Vec<_>>();
        let catalog = Catalog::from_tables(tables.into_iter().map(|mut t| {
            if t.table == "contacts_master" {
                t.upsert = crate::schema::UpsertMode::Patch;
            }
            t
        }));
        let file = "{\"contact_id\":\"k\",\"email\":null,\"version\":2}\n";
        let prepared = prepare(&catalog, "contacts_master", "test", file.as_bytes(), 1 << 20);
        let line: serde_json::Map<String, Value> =
            serde_json::from_slice(prepared.ndjson.split(|b| *b == b'\n').next().unwrap()).unwrap();
        assert_eq!(line[ABSENT], serde_json::json!(["name", "phone", "updated_at"]), "{line:?}");
        let whole = prepare(&crate::schema::project_catalog(), "contacts_master", "test", file.as_bytes(), 1 << 20);
        assert!(!String::from_utf8_lossy(&whole.ndjson).contains(ABSENT), "replace tables have no such column");
    }

    #[test]
    fn good_lines_become_landing_rows_and_bad_ones_dead_letters() {
        let catalog = crate::schema::project_catalog();
        let good = r#"{"event_id":"a1","kind":"note","created_at":"2026-01-01T00:00:00Z"}"#;
        let file = format!("{good}\nnot json\n{{\"kind\":5}}\n");
        let prepared = prepare(&catalog, "atoms", "test", file.as_bytes(), 1 << 20);
        assert_eq!(prepared.records, 3);
        assert_eq!(prepared.dead_letters.len() as u64 + prepared.rows, 3);
        assert_eq!(prepared.dead_letters.len(), 2, "{:?}", String::from_utf8_lossy(&prepared.ndjson));
        let line: serde_json::Map<String, Value> =
            serde_json::from_slice(prepared.ndjson.split(|b| *b == b'\n').next().unwrap()).unwrap();
        assert_eq!(line["event_id"], "a1");
        assert_eq!(line[DELETED], false);
        assert_eq!(line[EVENT_ID], "a1");
        assert_eq!(line["created_at"], "2026-01-01T00:00:00.000000Z");
        // The same bytes prepare to the same rows and event ids: a file loaded twice lands once.
        let again = prepare(&catalog, "atoms", "test", file.as_bytes(), 1 << 20);
        assert_eq!(again.fingerprint, prepared.fingerprint);
        let ids = |p: &Prepared| p.dead_letters.iter().map(|r| format!("{:?}", r.cells.first())).collect::<Vec<_>>();
        assert_eq!(ids(&again), ids(&prepared), "dead letters keep their ids");
    }
}
