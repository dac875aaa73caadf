//! JSONL lines staged as rows by the source itself (see [`crate::sources::staged`]): a line is
//! staged when it is a UTF-8 JSON object with no `_deleted` field whose record stages; blank lines,
//! bad lines and tombstones take the per-event path.

use crate::batch::StagedRow;
use crate::envelope::RawPayload;
use crate::schema::{TableSchema, WriteMode};
use crate::sources::staged::{fits, stage_record};

/// Whether lines of `table` may be staged at all: no transforms, and an id the line itself gives (an
/// append table's id field, an upsert table's key and version). An append table without an id field
/// derives each line's id from its file and offset, which stay on the per-event path.
pub(super) fn stageable(table: &TableSchema) -> bool {
    table.transforms.is_empty()
        && match table.write_mode {
            WriteMode::Append => table.event_id_field.is_some(),
            WriteMode::Upsert => true,
        }
}

/// The row the worker would have made of one complete line of `table` (a [`stageable`] table), or
/// `None`: the line takes the per-event path (which also skips blank lines). `label_bytes`: the
/// length of the line's source label, which its envelope carries.
pub(super) fn stage_line(
    table: &TableSchema,
    bytes: &[u8],
    label_bytes: usize,
    max_event_bytes: usize,
) -> Option<StagedRow> {
    if !fits(bytes.len(), label_bytes, max_event_bytes) {
        return None;
    }
    // The per-event path reads a line the same way: UTF-8, trimmed, a JSON object.
    let text = std::str::from_utf8(bytes).ok()?;
    let payload = serde_json::from_str::<RawPayload<'_>>(text.trim()).ok()?;
    // A `_deleted` field (a tombstone, or its payload rewritten without the field): per event.
    if payload.contains(crate::sources::jsonl::DELETE_FIELD) {
        return None;
    }
    stage_record(table, &payload, |name| payload.get(name), None).map(|(row, _)| row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Message;
    use crate::schema::Catalog;
    use crate::worker::classify::{Classified, Classifier};

    fn catalog() -> Catalog {
        Catalog::load_dir(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")).unwrap()
    }

    /// What the worker makes of the line's envelope, as the per-event path builds it.
    fn through_the_worker(catalog: &Catalog, table: &str, line: &str) -> Option<StagedRow> {
        let origin =
            super::super::Origin { file_fingerprint: 7, offset: 0, source: "t", produced_at: "2024-01-01T00:00:00Z" };
        let message = super::super::record::line_to_message(catalog, table, origin, line.as_bytes())?;
        let classifier = Classifier { catalog, max_event_bytes: 1 << 20 };
        let attributes = message.attributes.clone();
        let delivered =
            Message { data: &message.data, attributes: &attributes, delivery_attempt: 1, first_attempt_micros: 0 };
        match classifier.classify(delivered) {
            Classified::Row { row, .. } => Some(row),
            Classified::DeadLetter(_) => None,
        }
    }

    /// Stages each line of `table`, checks every staged row against the worker's, and counts them. A
    /// line not staged is left to the per-event path: a dead letter, a blank line skipped, or a
    /// tombstone.
    fn staged_as_the_worker(catalog: &Catalog, table: &str, lines: &[&str]) -> usize {
        let schema = catalog.get(table).unwrap();
        assert!(stageable(schema));
        let mut staged = 0;
        for line in lines {
            if let Some(row) = stage_line(schema, line.as_bytes(), 1, 1 << 20) {
                staged += 1;
                assert_eq!(Some(row), through_the_worker(catalog, table, line), "{line}");
            }
        }
        staged
    }

    /// A staged line is exactly the row the worker makes of its envelope; a line the worker would
    /// dead-letter or skip is never staged.
    #[test]
    fn a_staged_row_is_the_workers_row_and_anything_else_goes_per_event() {
        let catalog = catalog();
        let lines = [
            r#"{"event_id":"a1","entity_id":"e","kind":"k","text":"t","score":1.5,"tags":["x","y"],"created_at":"2024-01-01T00:00:00.5Z"}"#,
            r#"  {"event_id":7,"kind":"k \"q\"","score":"2","tags":[],"created_at":"2024-01-01 00:00:00"}  "#,
            r#"{"event_id":"a9","created_at":"2024-01-01T00:00:00Z","extra":{"a":1}}"#,
            r#"{"event_id":"a2","ki\u006ed":"escaped key","created_at":1700000000}"#,
            r#"{"event_id":"a3","score":1e400,"created_at":"2024-01-01T00:00:00Z"}"#,
            r#"{"event_id":"","created_at":"2024-01-01T00:00:00Z"}"#,
            r#"{"event_id":"a4","created_at":"not a time"}"#,
            r#"{"event_id":"a5","created_at":"2024-01-01T00:00:00Z","_deleted":true}"#,
            r#"{"event_id":"a6","score":"many","created_at":"2024-01-01T00:00:00Z"}"#,
            r#"["not","an","object"]"#,
            r#"{"event_id":"a7","#,
            "",
            "   ",
        ];
        assert_eq!(staged_as_the_worker(&catalog, "atoms", &lines), 3, "the first three lines are plain records");
        let atoms = catalog.get("atoms").unwrap();
        let long = format!(r#"{{"event_id":"a8","text":"{}","created_at":"2024-01-01T00:00:00Z"}}"#, "x".repeat(2000));
        assert!(stage_line(atoms, long.as_bytes(), 1, 2500).is_none(), "near max_event_bytes");
        assert!(stage_line(atoms, long.as_bytes(), 1, 1 << 20).is_some());
    }

    /// The same for an upsert table: key, version and derived id as the worker has them; tombstones
    /// and records without a key or version go per event.
    #[test]
    fn upsert_lines_stage_as_the_workers_rows() {
        let lines = [
            r#"{"contact_id":"c-1","name":"A","email":"a@x","updated_at":"2024-01-01T12:29:22.411948Z","version":4}"#,
            r#"{"contact_id":"c-2","version":"7","phone":null}"#,
            r#"{"contact_id":"c-3","version":2,"_deleted":true}"#,
            r#"{"contact_id":"c-4","name":"no version"}"#,
            r#"{"name":"no key","version":1}"#,
            r#"{"contact_id":"c-5","version":1,"unknown":1}"#,
        ];
        let staged = staged_as_the_worker(&catalog(), "contacts_master", &lines);
        assert_eq!(staged, 2, "the first two lines are plain upserts");
    }
}
