//! Publishes a source handed to the bus and has not checkpointed yet (see
//! [`crate::bus::Publisher::publish_pipelined`]).
//!
//! Invariant: a checkpoint is released only once its own publish and every earlier one are durable,
//! in publish order, so a source never checkpoints past an event that could still be lost. On a bus
//! whose publish is durable on return, every ticket is resolved and each checkpoint is released at
//! once, as with a plain publish.

use std::collections::VecDeque;

use crate::bus::{BusError, Ticket};

/// Events a source may have handed to the bus and not yet seen durable (the in-process bus lands
/// them while the source reads on). About two and a half worker batches.
pub const IN_FLIGHT_EVENTS: u64 = 50_000;

/// Handed-off publishes, oldest first, each with the checkpoint `C` it allows.
pub struct InFlight<C> {
    queue: VecDeque<(Ticket, u64, C)>,
    waiting_events: u64,
}

impl<C> Default for InFlight<C> {
    fn default() -> Self {
        InFlight { queue: VecDeque::new(), waiting_events: 0 }
    }
}

impl<C> InFlight<C> {
    /// Records a publish of `events` events; `checkpoint` is released once it is durable.
    pub fn push(&mut self, ticket: Ticket, events: u64, checkpoint: C) {
        self.waiting_events += events;
        self.queue.push_back((ticket, events, checkpoint));
    }

    /// The checkpoint of the last publish handed off, if any is waiting.
    pub fn last(&self) -> Option<&C> {
        self.queue.back().map(|(_, _, c)| c)
    }

    /// The oldest publish's events and checkpoint, once durable, when it is due: already durable,
    /// or more than `keep` events are waiting (then this waits for it). `None` when nothing is due.
    /// An error means that publish will never be durable: drop the rest, checkpoint nothing more.
    pub async fn next_durable(&mut self, keep: u64) -> Option<Result<(u64, C), BusError>> {
        let (ticket, _, _) = self.queue.front()?;
        if !ticket.is_resolved() && self.waiting_events <= keep {
            return None;
        }
        let (ticket, events, checkpoint) = self.queue.pop_front().expect("checked");
        self.waiting_events -= events;
        Some(ticket.landed().await.map(|()| (events, checkpoint)))
    }
}
