//! Whole files into BigQuery by **load jobs** (free; streaming is not): `bqsync backfill PATH…
//! --table T` for a one-off import, and `[[sources.files]]` run by `bqsync load` for folders where
//! complete files appear (the seed's archive service).
//!
//! ```text
//! file ──prepare──▶ gs://BUCKET/PREFIX/raw/T/<fp>/NAME          (the file as it was: the archive)
//!          └──────▶ gs://BUCKET/PREFIX/loads/T/<fp>.ndjson ──load job──▶ _bqsync_load_T_<batch> ──applier──▶ T
//!          └──────▶ dead letters (Storage Write, like any dead letter)
//! ```
//!
//! Invariants:
//! - **Exactly once, whatever is killed.** Object names, event ids, the staging table and the load
//!   job id all derive from the files' fingerprints (xxh3-128 of their bytes), so a restart redoes
//!   the same work under the same names: uploads replace identical objects, a job id BigQuery has
//!   is waited for rather than run again, and the applier deduplicates a staging table applied
//!   twice (see `crate::warehouse::bigquery::load`).
//! - **A bad line never fails the file**: it is a dead letter with the streaming path's reason.
//! - A file counts as loaded (its fingerprint kept in the state database) only after its load job
//!   succeeded; the same content dropped again is skipped, and would land once anyway.

pub mod prepare;
pub mod source;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use indicatif::ProgressBar;
use serde::Serialize;

use crate::batch::TableBatch;
use crate::config::Config;
use crate::dead_letter::DEAD_LETTER_TABLE;
use crate::gcs::Gcs;
use crate::schema::Catalog;
use crate::warehouse::bigquery::load::MAX_URIS_PER_JOB;
use crate::warehouse::bigquery::BigQueryWarehouse;
use crate::warehouse::Warehouse;

/// What loading one file did.
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    pub path: String,
    pub fingerprint: String,
    pub records: u64,
    pub rows: u64,
    pub dead_letters: u64,
    pub bytes: u64,
}

/// What one `load` of a table did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    pub table: String,
    pub files: Vec<FileReport>,
    pub rows: u64,
    pub dead_letters: u64,
    pub bytes: u64,
    pub job_ids: Vec<String>,
    /// Rows the load jobs wrote to staging (BigQuery's count).
    pub rows_loaded: u64,
}

/// Loads files into BigQuery through GCS and load jobs.
pub struct Loader {
    pub warehouse: Arc<BigQueryWarehouse>,
    gcs: Gcs,
    catalog: Arc<Catalog>,
    source: String,
    max_event_bytes: usize,
}

impl Loader {
    /// Connects to BigQuery and the `[gcs]` bucket (both required) and ensures the tables.
    pub async fn connect(config: &Config, source: &str) -> anyhow::Result<Loader> {
        anyhow::ensure!(
            config.warehouse.kind == crate::config::WarehouseKind::Bigquery,
            "load jobs are for the BigQuery warehouse (set [warehouse] kind = \"bigquery\"); DuckDB reads files itself"
        );
        let gcs = Gcs::connect(&config.gcs)
            .await
            .context("connecting to GCS")?
            .ok_or_else(|| anyhow::anyhow!("load jobs read from GCS: set [gcs] bucket"))?;
        let catalog = crate::pipeline::load_catalog(config)?;
        let warehouse = BigQueryWarehouse::connect(&config.warehouse.bigquery, catalog.clone())
            .await
            .context("connecting to BigQuery")?;
        warehouse.ensure_tables().await.context("creating tables from schemas/")?;
        Ok(Loader {
            warehouse: Arc::new(warehouse),
            gcs,
            catalog,
            source: source.to_string(),
            max_event_bytes: config.worker.max_event_bytes,
        })
    }

    /// Prepares one file, archives it, uploads its rows and lands its dead letters; returns its
    /// report and the URI of its rows (None: no good row).
    async fn stage_file(&self, table: &str, path: &Path) -> anyhow::Result<(FileReport, Option<String>)> {
        let bytes = tokio::fs::read(path).await.with_context(|| format!("reading {}", path.display()))?;
        let (catalog, source, max) = (self.catalog.clone(), self.source.clone(), self.max_event_bytes);
        let owned_table = table.to_string();
        let (bytes, prepared) = tokio::task::spawn_blocking(move || {
            let prepared = prepare::prepare(&catalog, &owned_table, &source, &bytes, max);
            (bytes, prepared)
        })
        .await?;
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
        let fp = &prepared.fingerprint;
        let raw = self.gcs.object_name(&format!("raw/{table}/{fp}/{name}"));
        let size = bytes.len() as u64;
        tracing::info!(object = %self.gcs.uri(&raw), bytes = size, rows = prepared.rows, "uploading to GCS");
        self.gcs.put(&raw, bytes, "application/octet-stream").await.context("archiving the file to GCS")?;
        let uri = if prepared.rows > 0 {
            let rows = self.gcs.object_name(&format!("loads/{table}/{fp}.ndjson"));
            self.gcs.put(&rows, prepared.ndjson, "application/x-ndjson").await.context("uploading the rows to GCS")?;
            Some(self.gcs.uri(&rows))
        } else {
            None
        };
        let dead = prepared.dead_letters.len() as u64;
        if dead > 0 {
            let batch = TableBatch { table: DEAD_LETTER_TABLE.into(), rows: prepared.dead_letters };
            self.warehouse.land_rows(&[batch]).await.context("landing the file's dead letters")?;
        }
        let report = FileReport {
            path: path.display().to_string(),
            fingerprint: prepared.fingerprint,
            records: prepared.records,
            rows: prepared.rows,
            dead_letters: dead,
            bytes: size,
        };
        Ok((report, uri))
    }

    /// Loads `paths` into `table` as one batch (a load job per [`MAX_URIS_PER_JOB`] files), then
    /// applies `table` unless `apply` is false (a running applier will).
    pub async fn load(
        &self,
        table: &str,
        paths: &[PathBuf],
        progress: &ProgressBar,
        apply: bool,
    ) -> anyhow::Result<LoadReport> {
        anyhow::ensure!(self.catalog.get(table).is_some(), "no schema for table `{table}` in schemas/");
        let mut report = LoadReport { table: table.to_string(), ..Default::default() };
        let mut uris = Vec::new();
        for path in paths {
            progress.set_message(path.display().to_string());
            let (file, uri) = self.stage_file(table, path).await?;
            progress.inc(file.bytes);
            report.rows += file.rows;
            report.dead_letters += file.dead_letters;
            report.bytes += file.bytes;
            uris.extend(uri);
            report.files.push(file);
        }
        for chunk in uris.chunks(MAX_URIS_PER_JOB) {
            let batch = xxhash_rust::xxh3::xxh3_64(chunk.join("\n").as_bytes());
            let loaded = self.warehouse.load_batch(table, chunk, &format!("{batch:016x}")).await?;
            report.rows_loaded += loaded.rows;
            report.job_ids.push(loaded.job_id);
        }
        if apply && !uris.is_empty() {
            progress.set_message(format!("applying {table}"));
            self.warehouse.apply_now(table).await.with_context(|| format!("applying {table}"))?;
        }
        if apply && report.dead_letters > 0 {
            self.warehouse.apply_landed().await.context("applying the dead letters")?;
        }
        Ok(report)
    }
}

/// A progress bar on stderr in bytes (drawn only on a terminal).
pub fn progress_bar(total_bytes: u64) -> ProgressBar {
    crate::progress::bar(
        total_bytes,
        "{spinner} [{elapsed_precise}] {bar:30} {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}) {msg}",
    )
}
