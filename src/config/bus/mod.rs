//! `[bus]` and its backends' sections.

pub mod embedded;
pub mod pubsub;

use serde::{Deserialize, Serialize};

pub use embedded::EmbeddedBusConfig;
pub use pubsub::PubSubConfig;

/// `[bus]`: which bus carries events.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    /// `embedded` (default): a durable SQLite queue on this machine. `pubsub`: Google Cloud Pub/Sub
    /// (`[bus.pubsub]`; run `bqsync setup` once to create topics and subscriptions).
    #[serde(default)]
    pub kind: BusKind,
    #[serde(default)]
    pub embedded: EmbeddedBusConfig,
    #[serde(default)]
    pub pubsub: PubSubConfig,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    #[default]
    Embedded,
    Pubsub,
}
