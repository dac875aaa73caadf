//! The types that tie an ack to a commit. The invariant they enforce is stated once, in
//! [`crate::worker`]: a delivery is acked only after the warehouse (or a dead-letter topic) holds
//! its effect durably.
//!
//! - An [`AckHandle`] has no public constructor: only a subscription makes one, with a delivery.
//! - A batch's handles travel with it as [`Receipts`] into [`crate::warehouse::Warehouse::land`] and
//!   come back either inside a [`Committed`] proof (it committed) or bare (it failed: nack them).
//! - [`crate::bus::Subscription::ack`] takes only a `Committed`. A `Committed` is made only where an
//!   effect became durable: a warehouse's landing, or a publish to a bus's dead-letter topic.

/// Proof of one delivery, acked or nacked through the subscription that made it.
#[derive(Debug)]
pub struct AckHandle {
    pub(crate) inner: AckInner,
}

#[derive(Debug)]
pub(crate) enum AckInner {
    /// Embedded queue: the message's sequence number and the lease it was delivered under.
    #[cfg(feature = "embedded")]
    Embedded { seq: i64, lease_token: i64 },
    /// Pub/Sub: the client's handler (it keeps extending the lease until acked or nacked; dropping it
    /// nacks).
    #[cfg(feature = "gcp")]
    PubSub { handler: google_cloud_pubsub::subscriber::handler::Handler, message_id: String },
    /// A message of the in-process bus: the publish it belongs to.
    #[cfg(feature = "embedded")]
    Direct { publish: u64 },
}

/// Which of a worker's subscriptions a delivery came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The subscription of change events.
    Main,
    /// The dead-letter subscription (poison and exhausted messages, landed in `dead_letters`).
    DeadLetterQueue,
}

/// The deliveries a batch covers, by the subscription that made them.
#[derive(Debug, Default)]
pub struct Receipts {
    main: Vec<AckHandle>,
    dead_letter_queue: Vec<AckHandle>,
}

impl Receipts {
    pub fn push(&mut self, origin: Origin, handle: AckHandle) {
        match origin {
            Origin::Main => self.main.push(handle),
            Origin::DeadLetterQueue => self.dead_letter_queue.push(handle),
        }
    }

    /// Adds another batch's receipts to these.
    pub fn append(&mut self, mut other: Receipts) {
        self.main.append(&mut other.main);
        self.dead_letter_queue.append(&mut other.dead_letter_queue);
    }

    pub fn len(&self) -> usize {
        self.main.len() + self.dead_letter_queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The handles of the main subscription and of the dead-letter subscription, to nack (acking
    /// needs a [`Committed`]).
    pub fn into_parts(self) -> (Vec<AckHandle>, Vec<AckHandle>) {
        (self.main, self.dead_letter_queue)
    }
}

/// Proof that the effect of the deliveries in `R` is durable: the only thing a subscription acks.
#[derive(Debug)]
#[must_use = "a commit proof exists to ack the deliveries it covers"]
pub struct Committed<R> {
    receipts: R,
}

impl<R> Committed<R> {
    /// Made by a warehouse's landing once its transaction committed, and by a dead-letter publish
    /// once the topic confirmed; nowhere else.
    pub(crate) fn new(receipts: R) -> Committed<R> {
        Committed { receipts }
    }

    pub fn receipts(&self) -> &R {
        &self.receipts
    }

    /// The handles, for the subscription acking them.
    pub(crate) fn into_receipts(self) -> R {
        self.receipts
    }
}

impl Committed<Vec<AckHandle>> {
    /// For a consumer whose effect needs no warehouse (the bus tests, the consume benchmark): states
    /// that nothing is owed for these deliveries once they are acked. No bqsync command uses it; a
    /// search for this name finds every ack that does not follow a landing.
    pub fn nothing_to_land(handles: Vec<AckHandle>) -> Committed<Vec<AckHandle>> {
        Committed::new(handles)
    }
}

impl Committed<Receipts> {
    /// One proof per subscription: the main one's handles and the dead-letter subscription's.
    pub fn split(self) -> (Committed<Vec<AckHandle>>, Committed<Vec<AckHandle>>) {
        let (main, dead) = self.receipts.into_parts();
        (Committed::new(main), Committed::new(dead))
    }
}
