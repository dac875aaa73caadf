//! A page of a synced table staged as rows (see [`crate::sources::staged`]), when the bus takes
//! rows. All or nothing: a page with a tombstone, or a row that does not stage, goes per event
//! whole, so its events keep the page's order.

use super::{rowid_bytes, warn_ignored, ReadRows, SyncedTable};
use crate::batch::StagedRow;
use crate::sources::staged::stage_row_payload;

/// The rows of a page, with the keys and versions the source remembers once they landed.
pub(super) struct StagedPage {
    pub(super) rows: Vec<StagedRow>,
    pub(super) keys: Vec<(String, Option<i64>)>,
    /// The payloads' bytes.
    pub(super) bytes: usize,
}

/// Stages every row of `page`, or gives `None` (the page then goes per event). `source_label`: the
/// label the per-event path's envelopes carry.
pub(super) fn stage_page(
    table: &mut SyncedTable,
    source_name: &str,
    source_label: &str,
    page: &ReadRows,
    max_event_bytes: usize,
) -> Option<StagedPage> {
    if table.mapping.has_transforms() {
        return None;
    }
    let deleted_index = table.config.deleted_column.as_ref().and_then(|c| page.names.iter().position(|n| n == c));
    let mut staged = StagedPage { rows: Vec::with_capacity(page.rows.len()), keys: Vec::new(), bytes: 0 };
    for row in &page.rows {
        if deleted_index.is_some_and(|i| row[i].is_truthy()) {
            return None;
        }
        let columns = page.names.iter().skip(2).map(String::as_str).zip(row.iter().skip(2));
        let payload = table.mapping.row_payload(columns);
        warn_ignored(&mut table.warned_ignored, source_name, &table.config, &payload.ignored);
        let rowid = rowid_bytes(row);
        let fallback = table.fallback_id(source_name, &rowid);
        let (staged_row, key_text, bytes) =
            stage_row_payload(table.mapping.schema(), &payload, &fallback, source_label.len(), max_event_bytes)?;
        if let (Some(key), Some(version), Some(synced)) = (key_text, staged_row.version, &table.synced) {
            if synced.get(&key) == Some(&version) && !table.republish {
                continue; // re-read in the overlap window, already published
            }
            staged.keys.push((key, Some(version)));
        }
        staged.bytes += bytes;
        staged.rows.push(staged_row);
    }
    Some(staged)
}
