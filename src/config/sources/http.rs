//! `[[sources.http]]`: JSON APIs polled incrementally.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One `[[sources.http]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSourceConfig {
    /// Name of the source (keys its cursor; `bqsync sync NAME`).
    pub name: String,
    /// The endpoint, e.g. `https://idp.example.com/api/v1/users`.
    pub url: String,
    /// Destination table (an upsert table in `schemas/`).
    pub table: String,
    /// Fixed query parameters added to every request.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Header that carries the credential. Default `Authorization`.
    #[serde(default = "default_auth_header")]
    pub auth_header: String,
    /// Environment variable holding the header's value (e.g. `Bearer …`).
    #[serde(default)]
    pub auth_env: Option<String>,
    /// File holding the header's value (a mounted secret; surrounding whitespace is trimmed). Read at
    /// every pass, so a rotated secret is picked up.
    #[serde(default)]
    pub auth_file: Option<PathBuf>,
    /// Google Secret Manager secret version holding the header's value, e.g.
    /// `projects/P/secrets/idp-token/versions/latest` (read with Application Default Credentials,
    /// cached, read again when the API refuses it). Untested against the service (no emulator).
    #[serde(default)]
    pub auth_secret: Option<String>,
    /// Query parameter carrying the cursor, e.g. `fromModifiedTime`.
    pub cursor_param: String,
    /// Record field (dot path) whose largest value becomes the next cursor, e.g. `modifiedTime`.
    pub cursor_field: String,
    /// Cursor of the very first pass. Default: none (the parameter is left out: everything).
    #[serde(default)]
    pub initial_cursor: Option<String>,
    /// Dot path of the records array in the response, e.g. `users` or `data.items`. Default: the
    /// body itself is the array.
    #[serde(default)]
    pub records_path: Option<String>,
    /// Dot path of the next-page token in the response, e.g. `nextPageToken`. Default: no paging.
    #[serde(default)]
    pub next_page_path: Option<String>,
    /// Query parameter carrying the page token. Default `pageToken`.
    #[serde(default = "default_page_param")]
    pub page_param: String,
    /// The API returns records in cursor order: save the cursor after every page. Default false.
    #[serde(default)]
    pub sorted: bool,
    /// Seconds between passes. Default 300. Ignored when `schedule` is set.
    #[serde(default = "default_interval_secs")]
    pub interval_secs: u64,
    /// Run passes on this cron instead of every `interval_secs` (as for `[[sources.sqlite]]`).
    #[serde(default)]
    pub schedule: Option<String>,
    /// A full re-sync on this cron: one pass from `initial_cursor`, every record published again
    /// (it lands once). One missed while bqsync was down runs once at start-up.
    #[serde(default)]
    pub full_schedule: Option<String>,
    /// IANA time zone of `schedule` and `full_schedule`. Default UTC.
    #[serde(default)]
    pub timezone: Option<String>,
    /// Record field (dot path) that marks a deleted record, e.g. `status`: a record whose value is
    /// one of `deleted_values` becomes a tombstone (identity providers report deleted users so).
    #[serde(default)]
    pub deleted_field: Option<String>,
    /// The values of `deleted_field` that mean deleted, e.g. `["deprovisioned"]` (JSON values:
    /// strings, `true`, numbers).
    #[serde(default)]
    pub deleted_values: Vec<serde_json::Value>,
    /// Record field → destination column, for names that differ (e.g. `modifiedTime = "modified_at"`).
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    /// Attempts per request on 429, 5xx and connection errors before the pass fails. Default 8.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Longest wait between attempts, in seconds (a longer `Retry-After` is capped too). Default 60.
    #[serde(default = "default_max_backoff_secs")]
    pub max_backoff_secs: u64,
    /// Timeout of one request, in seconds. Default 30.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
}

impl HttpSourceConfig {
    /// The schedule fields.
    pub fn schedule(&self) -> super::ScheduleConfig {
        super::ScheduleConfig {
            schedule: self.schedule.clone(),
            full_schedule: self.full_schedule.clone(),
            timezone: self.timezone.clone(),
        }
    }
}

fn default_auth_header() -> String {
    "Authorization".into()
}

fn default_page_param() -> String {
    "pageToken".into()
}

const fn default_interval_secs() -> u64 {
    300
}

const fn default_max_attempts() -> u32 {
    8
}

const fn default_max_backoff_secs() -> u64 {
    60
}

const fn default_timeout_secs() -> u64 {
    30
}
