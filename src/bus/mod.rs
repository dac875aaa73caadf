//! The bus: carries change events from producers to workers with Pub/Sub subscription semantics.
//!
//! Invariants every backend keeps:
//! - [`Publisher::publish`] returns only once every message is durable on the bus; producers advance
//!   their checkpoints after it returned, never before.
//! - A [`Delivery`] holds a lease (ack deadline). Unacked deliveries come back after the lease; each
//!   delivery counts an attempt; past the subscription's maximum attempts a message moves to the
//!   dead-letter queue instead of being delivered again.
//! - Only a commit acks: [`Subscription::ack`] takes a [`Committed`] proof (see [`crate::ack`] and
//!   the invariant in [`crate::worker`]).

pub mod claim_check;
#[cfg(feature = "embedded")]
pub mod direct;
#[cfg(feature = "embedded")]
pub mod embedded;
#[cfg(feature = "gcp")]
pub mod pubsub;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;

pub use crate::ack::{AckHandle, Committed, Origin, Receipts};
pub use crate::message::{attr, Attributes, Message};

/// A message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundMessage {
    pub data: Vec<u8>,
    pub attributes: Attributes,
    /// Records with the same key are delivered in publish order, where the bus supports it and
    /// ordering is on (Pub/Sub); sources set it to the table and primary key of upsert records.
    pub ordering_key: Option<String>,
}

impl OutboundMessage {
    pub fn new(data: Vec<u8>, attributes: Attributes) -> OutboundMessage {
        OutboundMessage { data, attributes, ordering_key: None }
    }
}

/// A poison delivery handed back to the bus's dead-letter topic: its bytes, its attributes with the
/// reason added, and the handle to ack once the dead letter is stored.
#[derive(Debug)]
pub struct DeadLetterOut {
    pub data: Vec<u8>,
    pub attributes: Attributes,
    pub handle: AckHandle,
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
    /// Rows the producer validated already, carried by this one delivery instead of a message each
    /// (the in-process bus only, see [`Publisher::publish_with_rows`]); `data` is then empty.
    pub staged: Option<Box<StagedRows>>,
}

/// Rows of one table, validated and coerced by their producer the way the worker would, handed over
/// without an envelope each.
#[derive(Debug)]
pub struct StagedRows {
    pub batch: crate::batch::TableBatch,
    /// The records' bytes, for the worker's `max_batch_bytes`.
    pub bytes: usize,
}

impl Delivery {
    /// The message as classification sees it (without the handle).
    pub fn message(&self) -> Message<'_> {
        Message {
            data: &self.data,
            attributes: &self.attributes,
            delivery_attempt: self.delivery_attempt,
            first_attempt_micros: self.first_attempt_micros,
        }
    }
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
    #[error("Pub/Sub {what}: {detail}")]
    PubSub { what: String, detail: String },
    #[error("bus configuration: {0}")]
    Config(String),
}

/// Publishes change events.
#[async_trait]
pub trait Publisher: Send + Sync {
    /// Returns once every message is durable on the bus (all or none on error).
    async fn publish(&self, messages: Vec<OutboundMessage>) -> Result<(), BusError>;

    /// Hands the messages to the bus and returns a [`Ticket`] that resolves once they are durable,
    /// so a producer may read on meanwhile; it checkpoints each publish after its ticket, in order.
    /// Buses whose `publish` is durable on return give a resolved ticket.
    async fn publish_pipelined(&self, messages: Vec<OutboundMessage>) -> Result<Ticket, BusError> {
        self.publish(messages).await.map(|()| Ticket::ready())
    }

    /// Whether this bus takes rows already staged by their producer ([`Publisher::publish_with_rows`]).
    fn takes_staged_rows(&self) -> bool {
        false
    }

    /// [`Publisher::publish_pipelined`] of `messages` and, in the same publish, rows the producer
    /// staged itself: the ticket resolves once both landed. Only buses whose consumer is the worker
    /// of the same process take rows (a row has no wire format); the others refuse.
    async fn publish_with_rows(&self, rows: StagedRows, messages: Vec<OutboundMessage>) -> Result<Ticket, BusError> {
        let _ = (rows, messages);
        Err(BusError::Io("this bus carries messages only, not staged rows".into()))
    }
}

/// A publish handed to the bus: [`Ticket::landed`] resolves once its messages are durable (for the
/// in-process bus: landed in the warehouse).
#[derive(Debug)]
pub struct Ticket {
    pending: Option<(LandedSignal, std::sync::Arc<AtomicUsize>)>,
}

/// Where the bus says that a publish landed, or why it never will.
pub type LandedSignal = tokio::sync::oneshot::Receiver<Result<(), BusError>>;

impl Ticket {
    /// A publish that was durable on return.
    pub fn ready() -> Ticket {
        Ticket { pending: None }
    }

    /// A publish that is durable once `landed` says so; `waiters` counts the producers waiting.
    pub fn pending(landed: LandedSignal, waiters: std::sync::Arc<AtomicUsize>) -> Ticket {
        Ticket { pending: Some((landed, waiters)) }
    }

    /// Whether the messages were durable when the publish returned.
    pub fn is_resolved(&self) -> bool {
        self.pending.is_none()
    }

    /// Waits until the messages are durable, or the bus gave them up.
    pub async fn landed(self) -> Result<(), BusError> {
        let Some((landed, waiters)) = self.pending else {
            return Ok(());
        };
        /// Counts this producer as waiting while it waits (the worker then lands what it holds).
        struct Waiting(std::sync::Arc<AtomicUsize>);
        impl Drop for Waiting {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        waiters.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(waiters);
        landed.await.unwrap_or_else(|_| Err(BusError::Io("the bus closed before these events landed".into())))
    }
}

/// Depth figures for `bqsync status`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
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
    /// Removes delivered messages for good: only those whose effect is committed.
    async fn ack(&self, committed: Committed<Vec<AckHandle>>) -> Result<(), BusError>;
    /// Ends leases early: the messages are redelivered (attempt count goes up).
    async fn nack(&self, handles: Vec<AckHandle>) -> Result<(), BusError>;
    /// Queue depth, for status and the drain check.
    async fn stats(&self) -> Result<QueueStats, BusError>;
    /// Whether nothing is waiting or held (for `--until-drained`).
    async fn is_drained(&self) -> Result<bool, BusError> {
        let stats = self.stats().await?;
        Ok(stats.pending == 0 && stats.leased == 0)
    }
    /// Messages and bytes a consumer may hold unacked (flow control), if the bus limits them: a batch
    /// larger than this would never fill.
    fn flow_window(&self) -> Option<(usize, usize)> {
        None
    }
    /// Whether poison deliveries go to the bus's own dead-letter topic through
    /// [`Subscription::dead_letter`] (Pub/Sub) rather than straight into the `dead_letters` table.
    fn dead_letters_on_bus(&self) -> bool {
        false
    }
    /// Stores poison deliveries on the dead-letter topic, then acks them (nacks them if storing failed).
    async fn dead_letter(&self, items: Vec<DeadLetterOut>) -> Result<(), BusError> {
        let handles = items.into_iter().map(|i| i.handle).collect();
        self.nack(handles).await?;
        Err(BusError::Config("this bus has no dead-letter topic of its own".into()))
    }
    /// Whether producers are waiting for what was already pulled to land (the in-process bus): the
    /// worker then lands what it holds at once rather than wait for a full batch or its age.
    fn flush_requested(&self) -> bool {
        false
    }
    /// Ends the wait of a pull under way: it returns what it has, perhaps nothing. The worker calls
    /// it when a one-shot run's input is drained, so the run does not sit out the pull's wait. Buses
    /// whose pulls cannot be cut short keep the default (the run ends at most a pull's wait later).
    fn wake(&self) {}
    /// Stops receiving and sends pending acks; unacked deliveries are released.
    async fn close(&self) {}
}
