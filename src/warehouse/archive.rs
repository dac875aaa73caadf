//! The archive: every landed batch, as gzip NDJSON in GCS, next to any warehouse.
//!
//! [`ArchivingWarehouse`] wraps the configured warehouse. After the inner warehouse committed a
//! landing, each table's rows are written to
//! `gs://BUCKET/PREFIX/TABLE/dt=YYYY-MM-DD/BATCHID.ndjson.gz` (the landing day, UTC), one JSON object
//! a line: the row's columns plus `_bqsync_event_id`, `_bqsync_op` and `_bqsync_version`.
//!
//! Invariants:
//! - The commit proof is handed on only after the archive objects are written, so the worker acks
//!   only archived batches. If writing fails, the landing fails as transient: the retry lands again
//!   (a no-op: landing is idempotent) and writes the same object names again (BATCHID is derived from
//!   the rows), so an archive holds each batch once — except across midnight UTC, when a retried batch
//!   may sit under two days; readers deduplicate on `_bqsync_event_id`.

use std::io::Write;
use std::sync::Arc;

use async_trait::async_trait;

use super::bigquery::payload_json;
use super::{
    batch_id, DeadLetterFilter, DeadLetterRecord, LandFailure, LandResult, TableBatch, Warehouse, WarehouseError,
};
use crate::ack::Receipts;
use crate::envelope::Op;
use crate::gcs::Gcs;
use crate::schema::Catalog;

/// A warehouse whose landings are also archived to GCS.
pub struct ArchivingWarehouse {
    inner: Arc<dyn Warehouse>,
    gcs: Gcs,
    catalog: Arc<Catalog>,
}

impl ArchivingWarehouse {
    pub fn new(inner: Arc<dyn Warehouse>, gcs: Gcs, catalog: Arc<Catalog>) -> ArchivingWarehouse {
        ArchivingWarehouse { inner, gcs, catalog }
    }

    /// The object name of a batch landed on `day` (`YYYY-MM-DD`).
    pub fn object_name(&self, batch: &TableBatch, day: &str) -> String {
        self.gcs.object_name(&format!("{}/dt={day}/{}.ndjson.gz", batch.table, batch_id("archive", batch)))
    }

    async fn archive(&self, batch: &TableBatch) -> Result<(), WarehouseError> {
        let schema = self.catalog.get(&batch.table).ok_or_else(|| WarehouseError::UnknownTable(batch.table.clone()))?;
        let day = chrono::Utc::now().format("%Y-%m-%d").to_string();
        let name = self.object_name(batch, &day);
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        for row in &batch.rows {
            let mut line = payload_json(schema, row, false);
            line.insert("_bqsync_event_id".into(), row.event_id.clone().into());
            let op = match row.op {
                Op::Insert => "insert",
                Op::Upsert => "upsert",
                Op::Delete => "delete",
            };
            line.insert("_bqsync_op".into(), op.into());
            if let Some(version) = row.version {
                line.insert("_bqsync_version".into(), version.into());
            }
            serde_json::to_writer(&mut gzip, &line).map_err(|e| WarehouseError::Task(e.to_string()))?;
            gzip.write_all(b"\n").map_err(|e| WarehouseError::Task(e.to_string()))?;
        }
        let bytes = gzip.finish().map_err(|e| WarehouseError::Task(e.to_string()))?;
        self.gcs.put(&name, bytes, "application/gzip").await.map_err(|e| WarehouseError::Archive(e.to_string()))?;
        tracing::debug!(object = %self.gcs.uri(&name), rows = batch.rows.len(), "archived");
        Ok(())
    }
}

#[async_trait]
impl Warehouse for ArchivingWarehouse {
    async fn ensure_tables(&self) -> Result<(), WarehouseError> {
        self.inner.ensure_tables().await
    }

    async fn land(&self, batches: Arc<Vec<TableBatch>>, receipts: Receipts) -> LandResult {
        let (committed, stats) = self.inner.land(batches.clone(), receipts).await?;
        for batch in batches.iter().filter(|b| !b.rows.is_empty()) {
            if let Err(error) = self.archive(batch).await {
                // Not archived: hand the receipts back unacked, so the batch lands (as a no-op) and
                // is archived again.
                return Err(LandFailure::new(error, committed.into_receipts()));
            }
        }
        Ok((committed, stats))
    }

    async fn ping(&self) -> Result<(), WarehouseError> {
        self.inner.ping().await
    }

    async fn maintain(&self, shutdown: crate::shutdown::Shutdown) {
        self.inner.maintain(shutdown).await
    }

    async fn settle(&self) -> Result<(), WarehouseError> {
        self.inner.settle().await
    }

    async fn cost_forecast(&self) -> Result<Option<serde_json::Value>, WarehouseError> {
        self.inner.cost_forecast().await
    }

    async fn row_counts(&self) -> Result<Vec<(String, u64)>, WarehouseError> {
        self.inner.row_counts().await
    }

    async fn dead_letter_counts(&self) -> Result<Vec<(String, String, u64)>, WarehouseError> {
        self.inner.dead_letter_counts().await
    }

    async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetterRecord>, WarehouseError> {
        self.inner.dead_letters(filter).await
    }
}
