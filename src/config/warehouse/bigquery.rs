//! `[warehouse.bigquery]`: Google BigQuery.

use serde::Deserialize;

use crate::config::gcp::Credentials;

use super::cost::CostConfig;

/// Settings of the BigQuery warehouse (`[warehouse.bigquery]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BigQueryConfig {
    /// Project that owns the dataset and pays for jobs. Default: `$BIGQUERY_PROJECT`, else
    /// `$GOOGLE_CLOUD_PROJECT`.
    #[serde(default)]
    pub project: Option<String>,
    /// Dataset holding the tables (created by `bqsync setup` / at start-up if absent). Default `bqsync`.
    #[serde(default = "default_dataset")]
    pub dataset: String,
    /// Location of the dataset and its jobs. Default `US`.
    #[serde(default = "default_location")]
    pub location: String,
    /// REST endpoint, e.g. `http://127.0.0.1:9050` for an emulator. Default: `$BIGQUERY_EMULATOR_HOST`
    /// (a URL or HOST:PORT) if set, else Google's.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// `auto` (default): anonymous for an `http://` endpoint (emulators), else Application Default
    /// Credentials (Workload Identity on GKE). `anonymous` or `default` force one.
    #[serde(default)]
    pub credentials: Credentials,
    /// Staging tables expire after this many seconds even if a landing dies before dropping them.
    /// Default 21600 (6 h).
    #[serde(default = "default_staging_expiration_secs")]
    pub staging_expiration_secs: u64,
    /// Rows per `insertAll` request while staging (BigQuery recommends ≤ 500). Default 500.
    #[serde(default = "default_insert_chunk_rows")]
    pub insert_chunk_rows: usize,
    /// Append tables: the event-id check reads only the partitions the batch's rows fall in; with a
    /// window of N days it also never reads further back than N days before today (events older than
    /// that are checked only against the window; set it above your redelivery horizon). 0 (default)
    /// = no window, the batch's own partition range only.
    #[serde(default)]
    pub append_dedup_window_days: u32,
    /// Attempts of one request on retryable errors (5xx, 429, rate limits, concurrent update) before
    /// the landing fails as transient. Default 5.
    #[serde(default = "default_request_attempts")]
    pub request_attempts: u32,
    /// First retry delay of a request, in milliseconds (doubles, ±25 % jitter, at most 10 s). Default 200.
    #[serde(default = "default_retry_initial_ms")]
    pub retry_initial_ms: u64,
    /// Timeout of one HTTP request (connecting: at most 10 s of it). A request that times out is
    /// retried like a 5xx. Default 60 s.
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,
    /// How long to wait for one query job to finish. Default 600 s.
    #[serde(default = "default_job_timeout_secs")]
    pub job_timeout_secs: u64,
    /// Cost guard (`[warehouse.bigquery.cost]`).
    #[serde(default)]
    pub cost: CostConfig,
}

fn default_dataset() -> String {
    "bqsync".into()
}

fn default_location() -> String {
    "US".into()
}

const fn default_staging_expiration_secs() -> u64 {
    6 * 3600
}

const fn default_insert_chunk_rows() -> usize {
    500
}

const fn default_request_attempts() -> u32 {
    5
}

const fn default_retry_initial_ms() -> u64 {
    200
}

const fn default_request_timeout_secs() -> u64 {
    60
}

const fn default_job_timeout_secs() -> u64 {
    600
}

impl Default for BigQueryConfig {
    fn default() -> Self {
        BigQueryConfig {
            project: None,
            dataset: default_dataset(),
            location: default_location(),
            endpoint: None,
            credentials: Credentials::Auto,
            staging_expiration_secs: default_staging_expiration_secs(),
            insert_chunk_rows: default_insert_chunk_rows(),
            append_dedup_window_days: 0,
            request_attempts: default_request_attempts(),
            retry_initial_ms: default_retry_initial_ms(),
            request_timeout_secs: default_request_timeout_secs(),
            job_timeout_secs: default_job_timeout_secs(),
            cost: CostConfig::default(),
        }
    }
}
