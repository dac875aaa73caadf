//! `[bus.pubsub]`: Google Cloud Pub/Sub.

use serde::{Deserialize, Serialize};

use crate::config::gcp::Credentials;

/// Settings of the Pub/Sub bus (`[bus.pubsub]`). Resource names may be short (`bqsync-events`) or
/// full (`projects/P/topics/bqsync-events`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PubSubConfig {
    /// Google Cloud project. Default: `$PUBSUB_PROJECT_ID`, else `$GOOGLE_CLOUD_PROJECT`.
    #[serde(default)]
    pub project: Option<String>,
    /// Service endpoint, with scheme (`http://127.0.0.1:8085`). Default: `http://$PUBSUB_EMULATOR_HOST`
    /// when that variable is set, else Google's endpoint.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// `auto` (default): anonymous for a plain-`http` endpoint (the emulator), Application Default
    /// Credentials otherwise. `anonymous` or `default` force one.
    #[serde(default)]
    pub credentials: Credentials,
    /// Topic producers publish change events to. Default `bqsync-events`.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Subscription workers pull from. Default `bqsync-worker`.
    #[serde(default = "default_subscription")]
    pub subscription: String,
    /// Topic of dead letters (poison events and exhausted messages). Default `bqsync-dead-letters`.
    #[serde(default = "default_dead_letter_topic")]
    pub dead_letter_topic: String,
    /// Subscription on the dead-letter topic; without one, the topic keeps nothing.
    /// Default `bqsync-dead-letters`.
    #[serde(default = "default_dead_letter_subscription")]
    pub dead_letter_subscription: String,
    /// Whether workers land the dead-letter subscription in the `dead_letters` table (and ack it
    /// there). Turn off to leave dead letters on the subscription for another consumer. Default true.
    #[serde(default = "default_true")]
    pub consume_dead_letters: bool,
    /// Deliveries before Pub/Sub moves a message to the dead-letter topic (5–100). Default 5.
    #[serde(default = "default_max_delivery_attempts")]
    pub max_delivery_attempts: u32,
    /// The subscription's ack deadline, in seconds (10–600); `bqsync setup` sets it, and the client
    /// extends leases by this much while a batch is in work. Default 60.
    #[serde(default = "default_ack_deadline_secs")]
    pub ack_deadline_secs: u32,
    /// Longest time a worker holds a message before the client stops extending its lease, in
    /// seconds. Default 3600.
    #[serde(default = "default_max_lease_secs")]
    pub max_lease_secs: u64,
    /// Retry policy of the subscription: first redelivery delay after a nack, in seconds. Default 10.
    #[serde(default = "default_min_backoff_secs")]
    pub min_backoff_secs: u32,
    /// … and the longest, in seconds (≤ 600). Default 600.
    #[serde(default = "default_max_backoff_secs")]
    pub max_backoff_secs: u32,
    /// Publish with an ordering key per record (table and primary key of upsert tables) and create
    /// the subscription with message ordering. Landing is correct without it (MERGE is guarded by
    /// version); it only orders delivery. Default false.
    #[serde(default)]
    pub ordering: bool,
    /// Create the worker subscription with exactly-once delivery: Pub/Sub then redelivers no
    /// message whose ack it confirmed, and acks are confirmed acks (the worker waits for each
    /// confirmation). Landing is exactly once in effect without it (the applier deduplicates); it
    /// saves redelivered appends, at the price of lower throughput per subscription. Default false.
    #[serde(default)]
    pub exactly_once_delivery: bool,
    /// Streaming-pull streams per worker. Pub/Sub delivers per stream; more streams, more throughput.
    /// Default 2.
    #[serde(default = "default_streams")]
    pub streams: usize,
    /// Flow control per stream: at most this many delivered, unacked messages. Default 10000.
    #[serde(default = "default_max_outstanding_messages")]
    pub max_outstanding_messages: usize,
    /// Flow control per stream: at most this many delivered, unacked bytes. Default 64 MiB.
    #[serde(default = "default_max_outstanding_bytes")]
    pub max_outstanding_bytes: usize,
    /// Publisher batching: messages per publish request (≤ 1000). Default 1000.
    #[serde(default = "default_publish_batch_messages")]
    pub publish_batch_messages: u32,
    /// Publisher batching: bytes per publish request (≤ 10 MB). Default 4 MiB.
    #[serde(default = "default_publish_batch_bytes")]
    pub publish_batch_bytes: u32,
    /// Publisher batching: longest wait to fill a request, in milliseconds. Default 10.
    #[serde(default = "default_publish_delay_ms")]
    pub publish_delay_ms: u64,
    /// Seconds a publish may take to be confirmed before the source retries it on a new connection
    /// (the retry re-publishes from the checkpoint; duplicates land once). Default 60.
    #[serde(default = "default_publish_timeout_secs")]
    pub publish_timeout_secs: u64,
    /// With `--until-drained`: Pub/Sub has no cheap backlog count, so the subscription counts as
    /// drained after this long without a delivery (and nothing held). Default 3000.
    #[serde(default = "default_drain_quiet_ms")]
    pub drain_quiet_ms: u64,
}

fn default_topic() -> String {
    "bqsync-events".into()
}

fn default_subscription() -> String {
    "bqsync-worker".into()
}

fn default_dead_letter_topic() -> String {
    "bqsync-dead-letters".into()
}

fn default_dead_letter_subscription() -> String {
    "bqsync-dead-letters".into()
}

const fn default_true() -> bool {
    true
}

const fn default_max_delivery_attempts() -> u32 {
    5
}

const fn default_ack_deadline_secs() -> u32 {
    60
}

const fn default_max_lease_secs() -> u64 {
    3600
}

const fn default_min_backoff_secs() -> u32 {
    10
}

const fn default_max_backoff_secs() -> u32 {
    600
}

const fn default_streams() -> usize {
    2
}

const fn default_max_outstanding_messages() -> usize {
    10_000
}

const fn default_max_outstanding_bytes() -> usize {
    64 << 20
}

const fn default_publish_batch_messages() -> u32 {
    1000
}

const fn default_publish_batch_bytes() -> u32 {
    4 << 20
}

const fn default_publish_timeout_secs() -> u64 {
    60
}

const fn default_publish_delay_ms() -> u64 {
    10
}

const fn default_drain_quiet_ms() -> u64 {
    3000
}

impl Default for PubSubConfig {
    fn default() -> Self {
        toml::from_str("").expect("every field has a default")
    }
}

impl PubSubConfig {
    /// Checks ranges Pub/Sub enforces, so a bad value fails at start-up with its field name.
    pub fn check(&self) -> Result<(), String> {
        let in_range = |name: &str, value: u64, low: u64, high: u64| {
            if (low..=high).contains(&value) {
                Ok(())
            } else {
                Err(format!("bus.pubsub.{name} = {value} is outside {low}..={high}"))
            }
        };
        in_range("max_delivery_attempts", self.max_delivery_attempts.into(), 5, 100)?;
        in_range("ack_deadline_secs", self.ack_deadline_secs.into(), 10, 600)?;
        in_range("max_backoff_secs", self.max_backoff_secs.into(), 0, 600)?;
        in_range("min_backoff_secs", self.min_backoff_secs.into(), 0, self.max_backoff_secs.into())?;
        in_range("streams", self.streams as u64, 1, 64)?;
        in_range("max_outstanding_messages", self.max_outstanding_messages as u64, 2, 1_000_000)?;
        in_range("max_outstanding_bytes", self.max_outstanding_bytes as u64, 1 << 20, 1 << 34)?;
        in_range("publish_batch_messages", self.publish_batch_messages.into(), 1, 1000)?;
        in_range("publish_timeout_secs", self.publish_timeout_secs, 1, 3600)?;
        in_range("publish_batch_bytes", self.publish_batch_bytes.into(), 1, 10_000_000)?;
        Ok(())
    }
}
