//! Rows a producer of this process staged itself (see [`crate::bus::StagedRows`]): the worker
//! skips classifying them, and batches, lands and acks them like any other rows.

use super::{PendingBatch, Worker};
use crate::ack::Origin;
use crate::bus::Delivery;
use crate::warehouse::TableBatch;

impl Worker {
    /// Rows a producer of this process staged itself (see [`crate::bus::StagedRows`]): they join
    /// their table's batch as they are, acked by their one delivery once that batch committed.
    pub(super) fn accept_staged(
        &mut self,
        staged: crate::bus::StagedRows,
        delivery: Delivery,
        origin: Origin,
        arrived: &mut Vec<(String, u64, u64)>,
    ) {
        let crate::bus::StagedRows { batch: TableBatch { table, rows }, bytes } = staged;
        let events = rows.len() as u64;
        self.stats.delivered += events;
        match arrived.iter_mut().find(|(t, _, _)| *t == table) {
            Some((_, count, _)) => *count += events,
            None => arrived.push((table.clone(), events, 0)),
        }
        let max_rows = self.config.max_batch_rows;
        let batch = self.pending.entry(table).or_insert_with(|| PendingBatch::new(max_rows));
        batch.bytes += bytes;
        batch.produced.extend(std::iter::repeat_n(delivery.first_attempt_micros, rows.len()));
        batch.rows.extend(rows);
        batch.first_message.get_or_insert_with(|| delivery.message_id.clone());
        batch.last_message = Some(delivery.message_id);
        batch.receipts.push(origin, delivery.handle);
    }
}
