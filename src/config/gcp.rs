//! Settings every Google component shares.

use serde::{Deserialize, Serialize};

/// Which credentials a Google client uses (`credentials = "…"` in `[bus.pubsub]`,
/// `[warehouse.bigquery]` and `[gcs]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Credentials {
    /// Anonymous for a plain-`http://` endpoint (an emulator), else Application Default Credentials
    /// (on GKE: Workload Identity). The default.
    #[default]
    Auto,
    /// No credentials (emulators).
    Anonymous,
    /// Application Default Credentials, whatever the endpoint.
    Default,
}
