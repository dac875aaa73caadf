//! The in-process bus of `bqsync run` on one machine: the sources hand their events straight to the
//! worker of the same process, with no queue file between them.
//!
//! Why: in one process, a durable queue between a source and the worker adds nothing to exactly
//! once. What must hold is that a source's checkpoint never passes an event the warehouse does not
//! hold. Here a publish resolves only once the worker's landing committed, so the checkpoint that
//! follows it covers landed rows only. A crash loses the in-memory queue and nothing else: the
//! sources read again from their checkpoints, and the warehouse deduplicates by event id what it
//! already holds. The file queue cost `run` a third of its time (a row, a lease and a delete per
//! event, on both sides).
//!
//! Invariants:
//! - A [`Ticket`] resolves `Ok` only after every message of its publish was acked, i.e. after the
//!   landing that holds it (as rows or as dead letters) committed.
//! - Nothing here is durable. When the worker gives a message up (a nack: its landing kept failing)
//!   or stops, the publishes it did not land resolve with an error; their producers keep their
//!   checkpoints and read those events again on their next pass or start.
//! - At most `capacity` events wait unpulled (a message is one, staged rows count one each); a
//!   publish beyond that waits (backpressure).
//! - Staged rows ([`Publisher::publish_with_rows`]) travel as one entry of their publish, with its
//!   messages: the ticket resolves once the rows and the messages all landed.
//! - The file queue stays a second subscription: messages left in it (by `bqsync produce`, or by
//!   an older run) are pulled and acked through it as before, with its leases and attempts.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{oneshot, Notify};

use super::embedded::EmbeddedSubscription;
use super::{
    AckHandle, BusError, Committed, Delivery, OutboundMessage, Publisher, QueueStats, StagedRows, Subscription, Ticket,
};
use crate::ack::AckInner;

/// How often the file queue is polled while the in-process queue has messages.
const FILE_QUEUE_POLL: Duration = Duration::from_secs(1);

/// Both ends of the in-process bus, with the file queue's subscription beside it.
#[derive(Clone)]
pub struct DirectBus {
    shared: Arc<Shared>,
    file_queue: EmbeddedSubscription,
}

struct Shared {
    state: Mutex<State>,
    /// Messages that may wait unpulled.
    capacity: usize,
    /// `take` made room in the queue, or the bus closed.
    space: Notify,
    /// A publish queued messages.
    published: Notify,
    /// Producers waiting for a ticket: the worker lands what it holds rather than wait for a full
    /// batch (see [`Subscription::flush_requested`]).
    waiters: Arc<AtomicUsize>,
    last_file_poll: Mutex<Instant>,
    /// Bumped by [`Subscription::wake`]: a pull that sees it change returns at once.
    wakes: AtomicU64,
    /// Whether producers may hand over staged rows (`[bus.embedded] in_process_rows`).
    takes_rows: bool,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Queued>,
    /// Events in `queue`: its messages plus its staged rows.
    queued_events: usize,
    /// Publishes not landed yet, by id.
    publishes: HashMap<u64, Pending>,
    next_seq: u64,
    next_publish: u64,
    leased: usize,
    closed: bool,
}

struct Queued {
    seq: u64,
    publish: u64,
    message: OutboundMessage,
    /// Rows staged by the producer; `message` is then empty.
    staged: Option<Box<StagedRows>>,
    queued_micros: i64,
}

impl Queued {
    fn events(&self) -> usize {
        self.staged.as_ref().map_or(1, |s| s.batch.rows.len().max(1))
    }
}

struct Pending {
    unacked: usize,
    done: oneshot::Sender<Result<(), BusError>>,
}

impl DirectBus {
    /// An in-process bus holding at most `capacity` unpulled messages, next to the file queue's
    /// subscription.
    pub fn new(capacity: usize, file_queue: EmbeddedSubscription) -> DirectBus {
        DirectBus::with_rows(capacity, file_queue, true)
    }

    /// [`DirectBus::new`]; `takes_rows`: whether producers may hand over staged rows
    /// ([`Publisher::publish_with_rows`]).
    pub fn with_rows(capacity: usize, file_queue: EmbeddedSubscription, takes_rows: bool) -> DirectBus {
        DirectBus {
            shared: Arc::new(Shared {
                state: Mutex::default(),
                capacity: capacity.max(1),
                space: Notify::new(),
                published: Notify::new(),
                waiters: Arc::default(),
                last_file_poll: Mutex::new(Instant::now()),
                wakes: AtomicU64::new(0),
                takes_rows,
            }),
            file_queue,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queued entries as deliveries, up to `max` events (at least one entry when any is queued).
    fn take(&self, max: usize) -> Vec<Delivery> {
        let mut state = self.state();
        let mut count = 0;
        let mut events = 0;
        while let Some(next) = state.queue.get(count) {
            if count > 0 && events + next.events() > max {
                break;
            }
            events += next.events();
            count += 1;
        }
        state.queued_events -= events;
        let deliveries: Vec<Delivery> = state
            .queue
            .drain(..count)
            .map(|q| Delivery {
                message_id: format!("p{}", q.seq),
                data: q.message.data,
                attributes: q.message.attributes,
                delivery_attempt: 1,
                first_attempt_micros: q.queued_micros,
                handle: AckHandle { inner: AckInner::Direct { publish: q.publish } },
                staged: q.staged,
            })
            .collect();
        state.leased += count;
        drop(state);
        if count > 0 {
            self.shared.space.notify_waiters();
        }
        deliveries
    }

    /// Whether the file queue is due a poll: when nothing is queued here, else once a second.
    fn file_queue_due(&self, took: usize) -> bool {
        let mut last = self.shared.last_file_poll.lock().unwrap_or_else(|p| p.into_inner());
        if took == 0 || last.elapsed() >= FILE_QUEUE_POLL {
            *last = Instant::now();
            return true;
        }
        false
    }

    /// Fails every publish not landed yet, and refuses new ones.
    fn close_queue(&self) {
        let mut state = self.state();
        state.closed = true;
        state.queue.clear();
        state.queued_events = 0;
        for (_, pending) in state.publishes.drain() {
            let _ = pending.done.send(Err(stopped()));
        }
        drop(state);
        self.shared.space.notify_waiters();
    }
}

fn stopped() -> BusError {
    BusError::Io(
        "the worker stopped before these events landed; the source reads them again from its checkpoint".into(),
    )
}

/// Splits handles into the in-process publishes they belong to and the file queue's handles.
fn split(handles: Vec<AckHandle>) -> (Vec<u64>, Vec<AckHandle>) {
    let mut publishes = Vec::new();
    let mut file_queue = Vec::new();
    for handle in handles {
        match handle.inner {
            AckInner::Direct { publish } => publishes.push(publish),
            _ => file_queue.push(handle),
        }
    }
    (publishes, file_queue)
}

#[async_trait]
impl Publisher for DirectBus {
    async fn publish(&self, messages: Vec<OutboundMessage>) -> Result<(), BusError> {
        self.publish_pipelined(messages).await?.landed().await
    }

    async fn publish_pipelined(&self, mut messages: Vec<OutboundMessage>) -> Result<Ticket, BusError> {
        if messages.is_empty() {
            return Ok(Ticket::ready());
        }
        loop {
            // Created before the check, so a `take` between the check and the wait still wakes it.
            let space = self.shared.space.notified();
            match self.try_enqueue(None, messages)? {
                Ok(ticket) => return Ok(ticket),
                Err((_, full)) => messages = full,
            }
            space.await;
        }
    }

    fn takes_staged_rows(&self) -> bool {
        self.shared.takes_rows
    }

    async fn publish_with_rows(
        &self,
        rows: StagedRows,
        mut messages: Vec<OutboundMessage>,
    ) -> Result<Ticket, BusError> {
        let mut rows = Some(rows);
        loop {
            let space = self.shared.space.notified();
            match self.try_enqueue(rows.take(), messages)? {
                Ok(ticket) => return Ok(ticket),
                Err((back, full)) => (rows, messages) = (back, full),
            }
            space.await;
        }
    }
}

/// What [`DirectBus::try_enqueue`] gives back when the queue is too full.
type Refused = (Option<StagedRows>, Vec<OutboundMessage>);

impl DirectBus {
    /// Queues the staged rows and the messages as one publish, or gives them back when the queue is
    /// too full. A publish larger than the whole capacity waits for an empty queue, then goes in
    /// whole.
    fn try_enqueue(
        &self,
        rows: Option<StagedRows>,
        messages: Vec<OutboundMessage>,
    ) -> Result<Result<Ticket, Refused>, BusError> {
        let mut state = self.state();
        if state.closed {
            return Err(stopped());
        }
        let rows = rows.filter(|r| !r.batch.rows.is_empty());
        let events = messages.len() + rows.as_ref().map_or(0, |r| r.batch.rows.len());
        if events == 0 {
            return Ok(Ok(Ticket::ready()));
        }
        if !state.queue.is_empty() && state.queued_events + events > self.shared.capacity {
            return Ok(Err((rows, messages)));
        }
        let (done, landed) = oneshot::channel();
        let publish = state.next_publish;
        state.next_publish += 1;
        let entries = messages.len() + usize::from(rows.is_some());
        state.publishes.insert(publish, Pending { unacked: entries, done });
        state.queued_events += events;
        let queued_micros = chrono::Utc::now().timestamp_micros();
        // The messages first: a producer publishes the rows it staged after the events before them
        // (see `sources::jsonl`), so this keeps its order.
        let staged = rows.map(|rows| (OutboundMessage::new(Vec::new(), Default::default()), Some(Box::new(rows))));
        for (message, staged) in messages.into_iter().map(|m| (m, None)).chain(staged) {
            let seq = state.next_seq;
            state.next_seq += 1;
            state.queue.push_back(Queued { seq, publish, message, staged, queued_micros });
        }
        drop(state);
        self.shared.published.notify_one();
        Ok(Ok(Ticket::pending(landed, self.shared.waiters.clone())))
    }
}

#[async_trait]
impl Subscription for DirectBus {
    async fn pull(&self, max_messages: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        let deadline = Instant::now() + wait;
        let wakes = self.shared.wakes.load(Ordering::Acquire);
        loop {
            // Created before the checks, so a publish or a wake between them still ends the wait.
            let notified = self.shared.published.notified();
            let mut deliveries = self.take(max_messages);
            if deliveries.len() < max_messages && self.file_queue_due(deliveries.len()) {
                let more = self.file_queue.pull(max_messages - deliveries.len(), Duration::ZERO).await?;
                deliveries.extend(more);
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let woken = self.shared.wakes.load(Ordering::Acquire) != wakes;
            if !deliveries.is_empty() || remaining.is_zero() || woken {
                return Ok(deliveries);
            }
            // Woken by a publish; the file queue is polled again after at most 100 ms.
            let _ = tokio::time::timeout(remaining.min(Duration::from_millis(100)), notified).await;
        }
    }

    async fn ack(&self, committed: Committed<Vec<AckHandle>>) -> Result<(), BusError> {
        let (publishes, file_queue) = split(committed.into_receipts());
        {
            let mut state = self.state();
            state.leased -= publishes.len().min(state.leased);
            for publish in publishes {
                let Some(pending) = state.publishes.get_mut(&publish) else { continue };
                pending.unacked -= 1;
                if pending.unacked == 0 {
                    let pending = state.publishes.remove(&publish).expect("present");
                    let _ = pending.done.send(Ok(()));
                }
            }
        }
        if file_queue.is_empty() {
            return Ok(());
        }
        self.file_queue.ack(Committed::new(file_queue)).await
    }

    async fn nack(&self, handles: Vec<AckHandle>) -> Result<(), BusError> {
        let (publishes, file_queue) = split(handles);
        {
            let mut state = self.state();
            state.leased -= publishes.len().min(state.leased);
            for publish in publishes {
                // The landing gave up: the producer reads these events again from its checkpoint.
                if let Some(pending) = state.publishes.remove(&publish) {
                    let _ = pending.done.send(Err(BusError::Io(
                        "landing these events kept failing; the source reads them again from its checkpoint".into(),
                    )));
                    state.queue.retain(|q| q.publish != publish);
                    state.queued_events = state.queue.iter().map(Queued::events).sum();
                }
            }
        }
        if file_queue.is_empty() {
            return Ok(());
        }
        self.file_queue.nack(file_queue).await
    }

    async fn stats(&self) -> Result<QueueStats, BusError> {
        let mut stats = self.file_queue.stats().await?;
        let state = self.state();
        stats.pending += state.queued_events as u64;
        stats.leased += state.leased as u64;
        if let Some(front) = state.queue.front() {
            stats.oldest_publish_micros =
                Some(stats.oldest_publish_micros.map_or(front.queued_micros, |o| o.min(front.queued_micros)));
        }
        Ok(stats)
    }

    fn flush_requested(&self) -> bool {
        self.shared.waiters.load(Ordering::Acquire) > 0 && self.state().queue.is_empty()
    }

    fn wake(&self) {
        self.shared.wakes.fetch_add(1, Ordering::AcqRel);
        self.shared.published.notify_waiters();
    }

    async fn close(&self) {
        self.close_queue();
        self.file_queue.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::embedded::EmbeddedBus;
    use crate::bus::Attributes;
    use crate::config::bus::EmbeddedBusConfig;

    fn bus(dir: &std::path::Path, capacity: usize) -> (DirectBus, EmbeddedBus) {
        let config = EmbeddedBusConfig { path: dir.join("bus.db"), ..Default::default() };
        let file_queue = EmbeddedBus::open(&config).unwrap();
        (DirectBus::new(capacity, file_queue.subscription()), file_queue)
    }

    fn messages(n: usize) -> Vec<OutboundMessage> {
        (0..n).map(|i| OutboundMessage::new(format!("m{i}").into_bytes(), Attributes::new())).collect()
    }

    fn handles(deliveries: Vec<Delivery>) -> Vec<AckHandle> {
        deliveries.into_iter().map(|d| d.handle).collect()
    }

    #[tokio::test]
    async fn a_ticket_resolves_only_once_every_message_of_its_publish_is_acked() {
        let dir = tempfile::tempdir().unwrap();
        let (bus, _) = bus(dir.path(), 100);
        let ticket = bus.publish_pipelined(messages(3)).await.unwrap();
        assert!(!ticket.is_resolved());
        let mut landed = tokio::spawn(ticket.landed());
        let first = bus.pull(2, Duration::ZERO).await.unwrap();
        let rest = bus.pull(10, Duration::ZERO).await.unwrap();
        assert_eq!((first.len(), rest.len()), (2, 1));
        // A producer waits and nothing is left to pull: the worker is asked to land what it holds.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(bus.flush_requested());
        bus.ack(Committed::new(handles(first))).await.unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(50), &mut landed).await.is_err(), "one message unacked");
        bus.ack(Committed::new(handles(rest))).await.unwrap();
        landed.await.unwrap().unwrap();
        assert!(!bus.flush_requested());
        assert!(bus.is_drained().await.unwrap());
    }

    fn rows(n: usize) -> StagedRows {
        let row = |i: usize| crate::batch::StagedRow::whole(format!("e{i}"), crate::envelope::Op::Insert, None, vec![]);
        StagedRows {
            batch: crate::batch::TableBatch { table: "atoms".into(), rows: (0..n).map(row).collect() },
            bytes: n,
        }
    }

    /// Staged rows are one delivery of their publish, counted as their rows for room and stats; the
    /// ticket waits for them and for the publish's messages.
    #[tokio::test]
    async fn staged_rows_land_with_their_publish_and_count_as_their_rows() {
        let dir = tempfile::tempdir().unwrap();
        let (bus, _) = bus(dir.path(), 100);
        assert!(bus.takes_staged_rows());
        let ticket = bus.publish_with_rows(rows(60), messages(2)).await.unwrap();
        assert_eq!(bus.stats().await.unwrap().pending, 62);
        let waiting = {
            let bus = bus.clone();
            tokio::spawn(async move { bus.publish_with_rows(rows(50), Vec::new()).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "62 + 50 > 100: the second publish waits for room");
        let messages_first = bus.pull(3, Duration::ZERO).await.unwrap();
        assert_eq!(messages_first.iter().map(|d| d.staged.is_some()).collect::<Vec<_>>(), [false, false]);
        let pulled = bus.pull(1, Duration::ZERO).await.unwrap();
        assert_eq!(pulled.len(), 1, "the rows come as one delivery, even past max_messages");
        assert_eq!(pulled[0].staged.as_ref().map(|s| s.batch.rows.len()), Some(60));
        let second = waiting.await.unwrap().unwrap();
        let mut landed = tokio::spawn(ticket.landed());
        bus.ack(Committed::new(handles(messages_first))).await.unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(50), &mut landed).await.is_err(), "its rows unacked");
        bus.ack(Committed::new(handles(pulled))).await.unwrap();
        landed.await.unwrap().unwrap();
        let rest = bus.pull(100, Duration::ZERO).await.unwrap();
        assert_eq!(rest.iter().map(|d| d.staged.is_some()).collect::<Vec<_>>(), [true]);
        bus.ack(Committed::new(handles(rest))).await.unwrap();
        second.landed().await.unwrap();
        assert!(bus.is_drained().await.unwrap());
        let off = DirectBus::with_rows(
            10,
            EmbeddedBus::open(&EmbeddedBusConfig { path: dir.path().join("b2.db"), ..Default::default() })
                .unwrap()
                .subscription(),
            false,
        );
        assert!(!off.takes_staged_rows(), "in_process_rows = false");
    }

    #[tokio::test]
    async fn a_nack_fails_the_publish_and_drops_its_unpulled_messages() {
        let dir = tempfile::tempdir().unwrap();
        let (bus, _) = bus(dir.path(), 100);
        let failing = bus.publish_pipelined(messages(3)).await.unwrap();
        let other = bus.publish_pipelined(messages(1)).await.unwrap();
        let pulled = bus.pull(1, Duration::ZERO).await.unwrap();
        bus.nack(handles(pulled)).await.unwrap();
        assert!(failing.landed().await.is_err(), "the producer must not checkpoint past it");
        let rest = bus.pull(10, Duration::ZERO).await.unwrap();
        assert_eq!(rest.len(), 1, "only the other publish is left");
        bus.ack(Committed::new(handles(rest))).await.unwrap();
        other.landed().await.unwrap();
    }

    #[tokio::test]
    async fn a_full_queue_makes_publishers_wait_and_closing_fails_what_is_not_landed() {
        let dir = tempfile::tempdir().unwrap();
        let (bus, _) = bus(dir.path(), 4);
        let first = bus.publish_pipelined(messages(3)).await.unwrap();
        let waiting = {
            let bus = bus.clone();
            tokio::spawn(async move { bus.publish_pipelined(messages(3)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "3 + 3 > 4: the second publish waits for room");
        let pulled = bus.pull(10, Duration::ZERO).await.unwrap();
        assert_eq!(pulled.len(), 3);
        let second = waiting.await.unwrap().unwrap();
        bus.close().await;
        assert!(first.landed().await.is_err());
        assert!(second.landed().await.is_err());
        assert!(bus.publish_pipelined(messages(1)).await.is_err(), "a closed bus takes nothing");
    }

    #[tokio::test]
    async fn stats_count_the_messages_held_in_memory_beside_the_queue_file() {
        let dir = tempfile::tempdir().unwrap();
        let (bus, file_queue) = bus(dir.path(), 100);
        file_queue.publish(messages(2)).await.unwrap();
        let _ticket = bus.publish_pipelined(messages(3)).await.unwrap();
        let stats = bus.stats().await.unwrap();
        assert_eq!((stats.pending, stats.leased), (5, 0));
        // The in-memory queue first: the file queue is polled at most once a second meanwhile.
        let pulled = bus.pull(2, Duration::ZERO).await.unwrap();
        let stats = bus.stats().await.unwrap();
        assert_eq!((stats.pending, stats.leased), (3, 2));
        bus.ack(Committed::new(handles(pulled))).await.unwrap();
        let stats = bus.stats().await.unwrap();
        assert_eq!((stats.pending, stats.leased), (3, 0));
    }

    #[tokio::test]
    async fn messages_left_in_the_queue_file_are_delivered_and_acked_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let (bus, file_queue) = bus(dir.path(), 100);
        file_queue.publish(messages(2)).await.unwrap();
        let pulled = bus.pull(10, Duration::ZERO).await.unwrap();
        assert_eq!(pulled.len(), 2);
        assert!(!bus.is_drained().await.unwrap(), "leased in the file queue");
        bus.ack(Committed::new(handles(pulled))).await.unwrap();
        assert!(bus.is_drained().await.unwrap());
    }

    #[tokio::test]
    async fn a_wake_ends_a_pull_that_waits_and_a_later_pull_waits_again() {
        let dir = tempfile::tempdir().unwrap();
        let (bus, _) = bus(dir.path(), 100);
        let bus = Arc::new(bus);
        let waiting = tokio::spawn({
            let bus = bus.clone();
            async move {
                let started = Instant::now();
                (bus.pull(10, Duration::from_secs(60)).await.unwrap().len(), started.elapsed())
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the pull waits for messages");
        bus.wake();
        let (pulled, waited) = tokio::time::timeout(Duration::from_secs(10), waiting).await.unwrap().unwrap();
        assert_eq!(pulled, 0);
        assert!(waited < Duration::from_secs(10), "woken, not timed out: {waited:?}");
        // The wake ended that pull only: the next one waits its time again.
        let again = tokio::time::timeout(Duration::from_millis(300), bus.pull(10, Duration::from_secs(60))).await;
        assert!(again.is_err(), "a pull after the wake waits");
    }
}
