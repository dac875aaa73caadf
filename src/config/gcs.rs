//! `[gcs]`: the archive of landed batches and claim checks.

use serde::{Deserialize, Serialize};

use crate::config::gcp::Credentials;

/// `[gcs]`: the bucket for archives and claim checks. Without a bucket, both are off.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GcsConfig {
    /// Bucket name (no `gs://`). Unset (default): no archive, no claim check.
    #[serde(default)]
    pub bucket: Option<String>,
    /// Prefix of every object name, e.g. `bqsync/`. Default empty.
    #[serde(default)]
    pub prefix: String,
    /// Endpoint, e.g. `http://127.0.0.2` for an emulator. Default: `$STORAGE_EMULATOR_HOST` if set,
    /// else Google's.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// `auto` (default): anonymous for an `http://` endpoint, else Application Default Credentials.
    #[serde(default)]
    pub credentials: Credentials,
    /// Create the bucket at start-up when it is missing (emulators; in production Terraform owns it).
    /// Default false.
    #[serde(default)]
    pub create_bucket: bool,
    /// Archive every landed batch as gzip NDJSON under `PREFIX/TABLE/dt=YYYY-MM-DD/`. Default true
    /// when a bucket is set.
    #[serde(default = "default_true")]
    pub archive: bool,
    /// Producers put events larger than this many bytes in the bucket and publish a claim check
    /// instead (the worker fetches the event when landing). 0 = never. Default 1 MiB.
    #[serde(default = "default_claim_check_bytes")]
    pub claim_check_bytes: usize,
}

const fn default_true() -> bool {
    true
}

const fn default_claim_check_bytes() -> usize {
    1024 * 1024
}

impl Default for GcsConfig {
    fn default() -> Self {
        GcsConfig {
            bucket: None,
            prefix: String::new(),
            endpoint: None,
            credentials: Credentials::Auto,
            create_bucket: false,
            archive: true,
            claim_check_bytes: default_claim_check_bytes(),
        }
    }
}
