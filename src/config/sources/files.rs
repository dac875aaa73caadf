//! `[[sources.files]]`: whole files loaded into BigQuery by load jobs (`bqsync load`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One `[[sources.files]]` entry: a folder whose complete files are archived to GCS and loaded with
/// load jobs (free) instead of streamed. Needs `[warehouse] kind = "bigquery"` and a `[gcs]` bucket.
/// Run by `bqsync load` (a process of its own, like the seed's archive service).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilesSourceConfig {
    /// Name of the source (loaded fingerprints are kept per name). Default `files`.
    #[serde(default = "default_name")]
    pub name: String,
    /// Directory scanned recursively. Default `./loads`.
    #[serde(default = "default_root")]
    pub root: PathBuf,
    /// Destination table. Default: the first directory under `root` names it (`ROOT/TABLE/…`).
    #[serde(default)]
    pub table: Option<String>,
    /// A file is complete once unchanged for this many seconds. Default 30.
    #[serde(default = "default_settle_secs")]
    pub settle_secs: u64,
    /// When set (e.g. `.done`), a file is complete only once `FILE` + this suffix exists, whatever
    /// its age; marker files themselves are never loaded. Default unset.
    #[serde(default)]
    pub marker_suffix: Option<String>,
    /// A table gets at most one load job per this many seconds; the files ready meanwhile share the
    /// next job (BigQuery allows 1,500 load jobs per table a day). Default 60.
    #[serde(default = "default_load_interval_secs")]
    pub load_interval_secs: u64,
    /// File names (globs) never loaded. Default: hidden files, `*.tmp`, `*.partial`.
    #[serde(default = "default_ignore")]
    pub ignore: Vec<String>,
}

fn default_name() -> String {
    "files".into()
}

fn default_root() -> PathBuf {
    PathBuf::from("loads")
}

const fn default_settle_secs() -> u64 {
    30
}

const fn default_load_interval_secs() -> u64 {
    60
}

fn default_ignore() -> Vec<String> {
    vec![".*".into(), "*.tmp".into(), "*.partial".into()]
}
