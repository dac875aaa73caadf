//! A page of dirty rows staged as rows (see [`crate::sources::staged`]), when the bus takes rows.
//! All or nothing, as the SQLite source's pages are: a page with a soft-deleted row, or with a row
//! that does not stage, goes per event whole, so its dead letters keep their reasons and its events
//! their order. Either way every row of the page gets its compare-and-clear once the page landed.

use super::ReadRows;
use crate::batch::StagedRow;
use crate::sources::rows::{RowMapping, SqlValue};
use crate::sources::staged::stage_row_payload;

/// The rows of a page, staged.
pub(super) struct StagedPage {
    pub(super) rows: Vec<StagedRow>,
    /// The payloads' bytes.
    pub(super) bytes: usize,
}

/// What a page's rows are read as: `__bqsync_rowid` first, then the table's columns.
pub(super) struct PageShape<'a> {
    pub(super) source_name: &'a str,
    /// The label the per-event path's envelopes carry.
    pub(super) source_label: &'a str,
    /// The soft-delete column's position in the page, if any.
    pub(super) deleted_position: Option<usize>,
    pub(super) max_event_bytes: usize,
}

/// Stages every row of `page`, or gives `None` (the page then goes per event).
pub(super) fn stage_page(mapping: &RowMapping, shape: &PageShape<'_>, page: &ReadRows) -> Option<StagedPage> {
    if mapping.has_transforms() {
        return None;
    }
    let mut staged = StagedPage { rows: Vec::with_capacity(page.rows.len()), bytes: 0 };
    for row in &page.rows {
        if shape.deleted_position.is_some_and(|i| row[i].is_truthy()) {
            return None;
        }
        let columns = page.names.iter().skip(1).map(String::as_str).zip(row.iter().skip(1));
        let payload = mapping.row_payload(columns);
        let rowid = rowid_of(row);
        // The per-event path's fallback id (unused by an upsert table, whose id is its key and version).
        let fallback: [&[u8]; 2] = [shape.source_name.as_bytes(), &rowid.to_le_bytes()];
        let (staged_row, _key, bytes) =
            stage_row_payload(mapping.schema(), &payload, &fallback, shape.source_label.len(), shape.max_event_bytes)?;
        staged.bytes += bytes;
        staged.rows.push(staged_row);
    }
    Some(staged)
}

/// A page row's rowid, as the per-event path reads it.
pub(super) fn rowid_of(row: &[SqlValue]) -> i64 {
    match row[0] {
        SqlValue::Integer(i) => i,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::bus::Message;
    use crate::schema::Catalog;
    use crate::sources::checkpoint::CheckpointStore;
    use crate::sources::outbox::{OutboxSource, OutboxSourceConfig};
    use crate::worker::classify::{Classified, Classifier};

    fn catalog() -> Catalog {
        Catalog::load_dir(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")).unwrap()
    }

    fn source(catalog: &Catalog, state: &tempfile::TempDir) -> OutboxSource {
        let config: OutboxSourceConfig = toml::from_str(
            "name = \"app\"\npath = \"app.db\"\nsource_table = \"contacts\"\ntable = \"contacts_master\"\n\
             deleted_column = \"deleted\"\n",
        )
        .unwrap();
        let checkpoints = Arc::new(CheckpointStore::open(&state.path().join("state.db")).unwrap());
        OutboxSource::new(config, catalog, checkpoints).unwrap()
    }

    fn page(rows: Vec<Vec<SqlValue>>) -> ReadRows {
        let names =
            ["__bqsync_rowid", "contact_id", "name", "email", "phone", "updated_at", "version", "dirty", "deleted"];
        ReadRows { names: names.iter().map(|n| n.to_string()).collect(), rows }
    }

    fn contact(rowid: i64, id: &str, name: SqlValue, updated: SqlValue, version: SqlValue) -> Vec<SqlValue> {
        let text = |s: &str| SqlValue::Text(s.into());
        vec![
            SqlValue::Integer(rowid),
            text(id),
            name,
            text(&format!("{id}@x.test")),
            SqlValue::Null,
            updated,
            version,
            SqlValue::Integer(1),
            SqlValue::Integer(0),
        ]
    }

    /// What the worker makes of each of the page's per-event messages.
    fn through_the_worker(catalog: &Catalog, source: &OutboxSource, page: &ReadRows) -> Vec<Option<StagedRow>> {
        let classifier = Classifier { catalog, max_event_bytes: 1 << 20 };
        let messages = source.page_events(page, "outbox:app/contacts", Some(8));
        let row = |message: &crate::bus::OutboundMessage| {
            let attributes = message.attributes.clone();
            let delivered =
                Message { data: &message.data, attributes: &attributes, delivery_attempt: 1, first_attempt_micros: 0 };
            match classifier.classify(delivered) {
                Classified::Row { row, .. } => Some(row),
                Classified::DeadLetter(_) => None,
            }
        };
        messages.iter().map(row).collect()
    }

    fn shape() -> PageShape<'static> {
        PageShape {
            source_name: "app",
            source_label: "outbox:app/contacts",
            deleted_position: Some(8),
            max_event_bytes: 1 << 20,
        }
    }

    /// A staged page holds exactly the rows the worker makes of the page's events, in order.
    #[test]
    fn a_staged_page_is_the_workers_rows() {
        let (catalog, state) = (catalog(), tempfile::tempdir().unwrap());
        let source = source(&catalog, &state);
        let page = page(vec![
            contact(
                1,
                "c-1",
                SqlValue::Text("A \"q\" é".into()),
                SqlValue::Timestamp(1_704_067_200_123_456),
                SqlValue::Integer(3),
            ),
            contact(2, "c-2", SqlValue::Null, SqlValue::Text("2024-01-01 00:00:00".into()), SqlValue::Text("7".into())),
            contact(3, "c-3", SqlValue::Integer(42), SqlValue::Integer(1_700_000_000), SqlValue::Integer(5)),
        ]);
        let staged = stage_page(&source.mapping, &shape(), &page).expect("every row stages");
        let expected: Vec<Option<StagedRow>> = staged.rows.iter().cloned().map(Some).collect();
        assert_eq!(through_the_worker(&catalog, &source, &page), expected);
        assert_eq!(staged.rows.len(), 3);
        assert!(staged.bytes > 3 * 40, "the payloads' bytes: {}", staged.bytes);
    }

    /// A page with a tombstone, a row the worker dead-letters, or a row too close to
    /// `max_event_bytes` goes per event whole.
    #[test]
    fn a_page_with_any_row_that_does_not_stage_goes_per_event() {
        let (catalog, state) = (catalog(), tempfile::tempdir().unwrap());
        let source = source(&catalog, &state);
        let good = || contact(1, "c-1", SqlValue::Null, SqlValue::Null, SqlValue::Integer(1));
        let mut tombstone = contact(2, "c-2", SqlValue::Null, SqlValue::Null, SqlValue::Integer(2));
        tombstone[8] = SqlValue::Integer(1);
        let no_version = contact(3, "c-3", SqlValue::Null, SqlValue::Null, SqlValue::Null);
        let bad_time = contact(4, "c-4", SqlValue::Null, SqlValue::Text("not a time".into()), SqlValue::Integer(1));
        let real_version = contact(5, "c-5", SqlValue::Null, SqlValue::Null, SqlValue::Real(2.0));
        for odd in [tombstone, no_version, bad_time, real_version] {
            assert!(stage_page(&source.mapping, &shape(), &page(vec![good(), odd.clone()])).is_none(), "{odd:?}");
        }
        assert!(stage_page(&source.mapping, &shape(), &page(vec![good()])).is_some());
        let tight = PageShape { max_event_bytes: 1100, ..shape() };
        assert!(stage_page(&source.mapping, &tight, &page(vec![good()])).is_none(), "near max_event_bytes");
        // The per-event path dead-letters the rows that do not stage, and stages the good one.
        let page = page(vec![good(), contact(3, "c-3", SqlValue::Null, SqlValue::Null, SqlValue::Null)]);
        let rows = through_the_worker(&catalog, &source, &page);
        assert!(rows[0].is_some() && rows[1].is_none(), "{rows:?}");
    }
}
