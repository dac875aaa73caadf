//! What travels on the bus, independent of any bus: message attributes, the attribute names bqsync
//! sets, and [`Message`], the read-only view of a delivered message that classification and
//! dead-lettering work on (they never see the delivery's ack handle; see [`crate::worker`]).

use std::collections::BTreeMap;

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
    /// On a poison record of a table with transforms: its bytes were transformed already (a replay
    /// must not transform them again).
    pub const TRANSFORMED: &str = "bqsync_transformed";
    /// On a dead letter: the reason class (`decode`, `schema`, …, `max_attempts`).
    pub const DEAD_LETTER_REASON: &str = "bqsync_dead_letter_reason";
    /// On a dead letter: what was wrong and where.
    pub const DEAD_LETTER_DETAIL: &str = "bqsync_dead_letter_detail";
    /// On a dead letter: deliveries before it was dead-lettered.
    pub const DEAD_LETTER_ATTEMPTS: &str = "bqsync_dead_letter_attempts";
    /// On a dead letter: microseconds since the epoch of the first delivery.
    pub const DEAD_LETTER_FIRST_ATTEMPT_MICROS: &str = "bqsync_dead_letter_first_attempt_micros";
    /// On a replayed dead letter: the id of the dead letter it was made from.
    pub const REPLAY_OF: &str = "bqsync_replay_of";
    /// On a replayed dead letter: earlier failures, `reason@micros` separated by `;`, oldest first.
    pub const REPLAY_HISTORY: &str = "bqsync_replay_history";
    /// Set by Pub/Sub's dead-letter policy on the messages it moves: deliveries made.
    pub const PUBSUB_DELIVERY_COUNT: &str = "CloudPubSubDeadLetterSourceDeliveryCount";
}

/// A delivered message as classification sees it: its bytes, attributes and delivery history.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub data: &'a [u8],
    pub attributes: &'a Attributes,
    /// 1 on first delivery, counting up on each redelivery.
    pub delivery_attempt: u32,
    /// Microseconds since the epoch of the first delivery attempt.
    pub first_attempt_micros: i64,
}
