//! `[warehouse.bigquery]`: Google BigQuery.

use serde::{Deserialize, Serialize};

use crate::config::gcp::Credentials;

use super::cost::CostConfig;

/// Settings of the BigQuery warehouse (`[warehouse.bigquery]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    /// Landing tables (`_bqsync_landing_TABLE`) keep a day partition this many days after its rows
    /// landed; an applier that stays down longer loses what it had not applied, so the apply lag is
    /// exported and warned about. Default 3.
    #[serde(default = "default_landing_expiration_days")]
    pub landing_expiration_days: u32,
    /// How often the applier moves landed rows of an append table into the table. Default 60 s.
    #[serde(default = "default_append_apply_interval_secs")]
    pub append_apply_interval_secs: u64,
    /// How often the applier merges landed rows of an upsert table into the table (a MERGE bills
    /// the whole table unless partition-pruned: see docs/google-cloud.md "BigQuery cost model"). Default 300 s.
    #[serde(default = "default_upsert_apply_interval_secs")]
    pub upsert_apply_interval_secs: u64,
    /// The apply window ends this long before BigQuery's "now": rows whose append is still in flight,
    /// or stamped by a worker whose clock is behind, are applied next time. Must exceed
    /// `append_timeout_secs`. Default 30 s.
    #[serde(default = "default_settle_margin_secs")]
    pub settle_margin_secs: u64,
    /// Timeout of one Storage Write append attempt. Default 20 s.
    #[serde(default = "default_append_timeout_secs")]
    pub append_timeout_secs: u64,
    /// Where the applier runs: `worker` (default: every `bqsync work`/`run` process, with jitter;
    /// the watermark's compare-and-set keeps concurrent runs exactly once) or `external` (only
    /// `bqsync apply`, e.g. from one Deployment or a CronJob).
    #[serde(default)]
    pub applier: ApplierPlacement,
    /// Storage Write API endpoint (gRPC), e.g. `http://127.0.0.1:9060`. Default: the REST endpoint's
    /// port + 10 for an emulator (as `local-bigquery` serves it), else Google's.
    #[serde(default)]
    pub storage_endpoint: Option<String>,
    /// Append tables: the applier's event-id check reads only the partitions the window's rows fall
    /// in; with a window of N days it also never reads further back than N days before today (events
    /// older than that are checked only against the window; set it above your redelivery horizon).
    /// 0 (default) = no window, the applied rows' own partition range only.
    #[serde(default)]
    pub append_dedup_window_days: u32,
    /// CDC tables (`"cdc": true` in the schema): BigQuery applies pending changes in the background
    /// and a query may read a table this many minutes stale; a query past it merges the pending
    /// changes at read time, which costs more and is slower (Google, "Manage table staleness").
    /// 0 = always merge at read time. Default 10.
    #[serde(default = "default_cdc_max_staleness_minutes")]
    pub cdc_max_staleness_minutes: u32,
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

const fn default_landing_expiration_days() -> u32 {
    3
}

const fn default_append_apply_interval_secs() -> u64 {
    60
}

const fn default_upsert_apply_interval_secs() -> u64 {
    300
}

const fn default_settle_margin_secs() -> u64 {
    30
}

const fn default_append_timeout_secs() -> u64 {
    20
}

/// Where the applier runs (`[warehouse.bigquery] applier`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApplierPlacement {
    /// In every worker process, each table on its interval with jitter.
    #[default]
    Worker,
    /// Only in `bqsync apply` (and before one-shot runs exit).
    External,
}

const fn default_cdc_max_staleness_minutes() -> u32 {
    10
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
            landing_expiration_days: default_landing_expiration_days(),
            append_apply_interval_secs: default_append_apply_interval_secs(),
            upsert_apply_interval_secs: default_upsert_apply_interval_secs(),
            settle_margin_secs: default_settle_margin_secs(),
            append_timeout_secs: default_append_timeout_secs(),
            applier: ApplierPlacement::Worker,
            storage_endpoint: None,
            append_dedup_window_days: 0,
            cdc_max_staleness_minutes: default_cdc_max_staleness_minutes(),
            request_attempts: default_request_attempts(),
            retry_initial_ms: default_retry_initial_ms(),
            request_timeout_secs: default_request_timeout_secs(),
            job_timeout_secs: default_job_timeout_secs(),
            cost: CostConfig::default(),
        }
    }
}
