//! Load jobs: whole files into a per-batch **staging table** the applier reads, free of streaming
//! charges (Google, "Batch loading data": load jobs are free on the shared slot pool).
//!
//! ```text
//! files ──prepare (validate, landing-shaped NDJSON)──▶ gs://… ──load job──▶ _bqsync_load_T_<fp> ──applier──▶ T
//! ```
//!
//! Invariants:
//! - **A batch loads once, whatever the restarts.** The job id is derived from the batch's
//!   fingerprint (`bqsync_load_<dataset>_<T>_<fp>_<attempt>`): a job id BigQuery already has answers
//!   409 and is waited for, never run twice; only a job that *failed* is tried again, under the next
//!   attempt number. The staging table is written with `WRITE_TRUNCATE`, so loading it again
//!   replaces it with the same rows.
//! - **Rows reach `T` exactly once through the applier.** Each apply of `T` reads its landing window
//!   and every staging table of `T` in one transaction, deduplicated as always (event id, or the
//!   version guard), then drops the staging tables it committed. A staging table applied twice (a
//!   drop that did not happen) changes nothing the second time.
//! - **Quotas**: 1,500 load jobs per table per day and 100,000 per project (Google, "Quotas and
//!   limits: load jobs"). A batch is every file ready for a table in one pass, up to
//!   [`MAX_URIS_PER_JOB`] files in one job, and a file source loads a table at most once per
//!   `load_interval_secs` (default 60 s: at most 1,440 jobs per table a day).

use std::collections::HashMap;

use gcp_bigquery_client::model::job::Job;
use gcp_bigquery_client::model::job_configuration::JobConfiguration;
use gcp_bigquery_client::model::job_configuration_load::JobConfigurationLoad;
use gcp_bigquery_client::model::job_reference::JobReference;
use gcp_bigquery_client::model::table_reference::TableReference;
use gcp_bigquery_client::model::table_schema::TableSchema as BqTableSchema;

use super::client::job_error;
use super::sql as bsql;
use super::BigQueryWarehouse;
use crate::warehouse::WarehouseError;

/// Prefix of staging tables: `_bqsync_load_T_<fingerprint>`.
pub const STAGING_PREFIX: &str = "_bqsync_load_";
/// Source URIs per load job (BigQuery allows 10,000).
pub const MAX_URIS_PER_JOB: usize = 10_000;
/// Failed load jobs tried again under a new id before the batch fails.
const LOAD_ATTEMPTS: u32 = 3;

/// The staging tables of `table` are named with this prefix.
pub fn staging_prefix(table: &str) -> String {
    format!("{STAGING_PREFIX}{table}_")
}

/// What one load job did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LoadedBatch {
    pub job_id: String,
    pub staging_table: String,
    /// Rows the job wrote (its `outputRows`; 0 when BigQuery does not say).
    pub rows: u64,
}

/// The load job of one attempt: NDJSON from `uris` into `staging`, with the landing table's fields.
pub fn load_job(
    project: &str,
    dataset: &str,
    location: &str,
    job_id: &str,
    staging: &str,
    uris: &[String],
    schema: BqTableSchema,
) -> Job {
    let load = JobConfigurationLoad {
        source_uris: Some(uris.to_vec()),
        destination_table: Some(TableReference::new(project, dataset, staging)),
        schema: Some(schema),
        source_format: Some("NEWLINE_DELIMITED_JSON".into()),
        write_disposition: Some("WRITE_TRUNCATE".into()),
        create_disposition: Some("CREATE_IF_NEEDED".into()),
        // Every line was validated before upload (bad lines are dead letters already): a line the
        // job still refuses fails the job, and the batch is retried, rather than lost silently.
        max_bad_records: Some(0),
        ..Default::default()
    };
    let configuration = JobConfiguration {
        load: Some(load),
        labels: Some(HashMap::from([("bqsync".to_string(), "load".to_string())])),
        ..Default::default()
    };
    Job {
        configuration: Some(configuration),
        job_reference: Some(JobReference {
            job_id: Some(job_id.to_string()),
            project_id: Some(project.to_string()),
            location: Some(location.to_string()),
        }),
        ..Default::default()
    }
}

impl BigQueryWarehouse {
    /// Loads `uris` (landing-shaped NDJSON, see `crate::load`) into the staging table of `table`
    /// named by `fingerprint`, under job ids derived from it.
    pub async fn load_batch(
        &self,
        table: &str,
        uris: &[String],
        fingerprint: &str,
    ) -> Result<LoadedBatch, WarehouseError> {
        self.guard.check_writable(table).map_err(|r| WarehouseError::CostGuard(r.to_string()))?;
        let landing = self
            .rest
            .get_table(&bsql::landing_table(table))
            .await?
            .ok_or_else(|| WarehouseError::Task(format!("no landing table for {table}: run bqsync setup")))?;
        let staging = format!("{}{fingerprint}", staging_prefix(table));
        let dataset = super::job_id_part(&self.rest.dataset);
        let mut last_error = String::new();
        for attempt in 0..LOAD_ATTEMPTS {
            let job_id = format!("bqsync_load_{dataset}_{table}_{fingerprint}_{attempt}");
            let job = load_job(
                &self.rest.project,
                &self.rest.dataset,
                &self.rest.location,
                &job_id,
                &staging,
                uris,
                landing.schema.clone(),
            );
            tracing::info!(table, job_id, files = uris.len(), "load job started");
            let done = self.rest.run_job(&job_id, job).await?;
            match job_error(&done) {
                None => {
                    let rows = done
                        .statistics
                        .as_ref()
                        .and_then(|s| s.load.as_ref())
                        .and_then(|l| l.output_rows.as_deref())
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                    tracing::info!(table, job_id, staging, rows, files = uris.len(), "loaded");
                    return Ok(LoadedBatch { job_id, staging_table: staging, rows });
                }
                Some((reason, message)) => {
                    tracing::warn!(table, job_id, reason, message, "load job failed; trying a new job id");
                    last_error = format!("{reason}: {message}");
                }
            }
        }
        Err(WarehouseError::BigQuery {
            context: format!("loading {} files into {staging}", uris.len()),
            message: last_error,
            transient: true,
        })
    }

    /// The staging tables of `table` waiting for the applier, sorted.
    pub async fn staging_tables(&self, table: &str) -> Result<Vec<String>, WarehouseError> {
        let prefix = staging_prefix(table);
        let mut names: Vec<String> =
            self.rest.list_tables().await?.into_iter().filter(|name| name.starts_with(&prefix)).collect();
        names.sort();
        Ok(names)
    }

    /// Drops staging tables an apply committed (a failed drop is applied again next time: a no-op).
    pub(super) async fn drop_staging(&self, tables: &[String]) {
        for name in tables {
            if let Err(error) = self.rest.delete_table(name).await {
                tracing::warn!(table = %name, %error, "could not drop an applied staging table; the next apply re-reads it (no effect)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_job_truncates_its_staging_table_and_refuses_bad_lines() {
        let uris = vec!["gs://b/loads/atoms/f1.ndjson".to_string()];
        let job = load_job(
            "p",
            "d",
            "US",
            "bqsync_load_d_atoms_ab_0",
            "_bqsync_load_atoms_ab",
            &uris,
            BqTableSchema::new(vec![]),
        );
        let json = serde_json::to_value(job).unwrap();
        let load = &json["configuration"]["load"];
        assert_eq!(load["sourceUris"][0], "gs://b/loads/atoms/f1.ndjson");
        assert_eq!(load["destinationTable"]["tableId"], "_bqsync_load_atoms_ab");
        assert_eq!(load["writeDisposition"], "WRITE_TRUNCATE");
        assert_eq!(load["sourceFormat"], "NEWLINE_DELIMITED_JSON");
        assert_eq!(load["maxBadRecords"], 0);
        assert_eq!(json["jobReference"]["jobId"], "bqsync_load_d_atoms_ab_0");
        assert_eq!(staging_prefix("atoms"), "_bqsync_load_atoms_");
    }
}
