//! The bus: carries change events from producers to workers with Pub/Sub subscription semantics.
//!
//! Invariants every backend keeps:
//! - [`Publisher::publish`] returns only once every message is durable on the bus; producers advance
//!   their checkpoints after it returned, never before.
//! - A [`Delivery`] holds a lease (ack deadline). Unacked deliveries come back after the lease; each
//!   delivery counts an attempt; past the subscription's maximum attempts a message moves to the
//!   dead-letter queue instead of being delivered again.
//! - Only the worker's commit path acks: [`AckHandle`]s have no public constructor and are acked through
//!   [`Subscription::ack`] after the warehouse committed.

pub mod embedded;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;

/// Message attributes (Pub/Sub attributes; the embedded bus stores them as JSON).
pub type Attributes = BTreeMap<String, String>;

/// Attribute names bqsync sets on its messages.
pub mod attr {
    /// Destination table (lets a worker dead-letter an undecodable body to the right table).
    pub const TABLE: &str = "bqsync_table";
    /// Event id, for tracing and dead-letter records.
    pub const EVENT_ID: &str = "bqsync_event_id";
    /// Set by a producer that could not make an event out of a record: the reason class.
    pub const POISON_REASON: &str = "bqsync_poison_reason";
    /// With `POISON_REASON`: what was wrong and where.
    pub const POISON_DETAIL: &str = "bqsync_poison_detail";
    /// The producer (source name and location of the record).
    pub const SOURCE: &str = "bqsync_source";
}

/// A message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundMessage {
    pub data: Vec<u8>,
    pub attributes: Attributes,
}

/// Proof of one delivery, acked or nacked through the subscription that made it.
#[derive(Debug, PartialEq, Eq)]
pub struct AckHandle {
    pub(crate) inner: AckInner,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AckInner {
    /// Embedded queue: the message's sequence number and the lease it was delivered under.
    Embedded { seq: i64, lease_token: i64 },
}

/// A message delivered to a worker.
#[derive(Debug)]
pub struct Delivery {
    pub message_id: String,
    pub data: Vec<u8>,
    pub attributes: Attributes,
    /// 1 on first delivery, counting up on each redelivery.
    pub delivery_attempt: u32,
    /// Microseconds since the epoch of the first delivery attempt.
    pub first_attempt_micros: i64,
    pub handle: AckHandle,
}

/// Errors of bus backends.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("embedded bus at {path}: {source}")]
    Embedded { path: String, source: rusqlite::Error },
    #[error("bus I/O: {0}")]
    Io(String),
    #[error("handle was not made by this subscription")]
    ForeignHandle,
}

/// Publishes change events.
#[async_trait]
pub trait Publisher: Send + Sync {
    /// Returns once every message is durable on the bus (all or none on error).
    async fn publish(&self, messages: Vec<OutboundMessage>) -> Result<(), BusError>;
}

/// Depth figures for `bqsync status`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct QueueStats {
    pub pending: u64,
    pub leased: u64,
    pub dead_lettered: u64,
    pub oldest_publish_micros: Option<i64>,
}

/// Pulls deliveries with leases and acks them after commit.
#[async_trait]
pub trait Subscription: Send + Sync {
    /// Up to `max_messages` deliveries; waits up to `wait` for the first one.
    async fn pull(&self, max_messages: usize, wait: Duration) -> Result<Vec<Delivery>, BusError>;
    /// Removes delivered messages for good. Call only after their effect is committed.
    async fn ack(&self, handles: Vec<AckHandle>) -> Result<(), BusError>;
    /// Ends leases early: the messages are redelivered (attempt count goes up).
    async fn nack(&self, handles: Vec<AckHandle>) -> Result<(), BusError>;
    /// Queue depth, for status and the drain check.
    async fn stats(&self) -> Result<QueueStats, BusError>;
}
