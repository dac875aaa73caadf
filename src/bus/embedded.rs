//! The embedded bus: a durable queue in one SQLite file (WAL), for a single machine.
//!
//! Layout: `messages` holds message bodies, written once at publish and deleted at ack (sequence
//! numbers are AUTOINCREMENT: never reused, even when the queue was emptied, so the cursor holds);
//! `deliveries` holds the small, often-updated lease state (attempts, lease end) of every message that
//! was delivered at least once; `cursor` holds the high-water sequence number of first deliveries.
//! Keeping lease updates off the wide rows means a delivery rewrites a few bytes, not the body's page.
//! The dead-letter queue has the same three tables with a `dlq_` prefix, and is consumed through
//! [`EmbeddedBus::dead_letter_subscription`] like any other subscription.
//!
//! Invariants: publish commits (with `synchronous=FULL` by default, fsync) before it returns; a message
//! is deleted only by an ack; a delivery whose lease ran out is delivered again with the attempt count
//! raised, and once a message has had `max_delivery_attempts` deliveries, it moves to the dead-letter
//! queue (with `bqsync_dead_letter_*` attributes) instead of a further delivery.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::ack::AckInner;
use crate::dead_letter::DeadLetterReason;
use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use super::{
    attr, AckHandle, Attributes, BusError, Committed, Delivery, OutboundMessage, Publisher, QueueStats, Subscription,
};

pub use crate::config::bus::embedded::EmbeddedBusConfig;

/// Table names of one queue; constants, never user data.
#[derive(Debug, Clone, Copy)]
struct QueueTables {
    messages: &'static str,
    deliveries: &'static str,
    cursor_name: &'static str,
}

const MAIN: QueueTables = QueueTables { messages: "messages", deliveries: "deliveries", cursor_name: "main" };
const DEAD: QueueTables = QueueTables { messages: "dlq_messages", deliveries: "dlq_deliveries", cursor_name: "dlq" };

/// The queue file, shared by publishers and subscriptions of this process.
#[derive(Clone)]
pub struct EmbeddedBus {
    inner: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    connection: Mutex<Connection>,
    ack_deadline: Duration,
    max_delivery_attempts: u32,
    published: tokio::sync::Notify,
    /// `FULL` or `NORMAL`: the durability of publish commits (everything else runs at NORMAL).
    publish_synchronous: &'static str,
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl EmbeddedBus {
    /// Opens (creating if needed) the queue file.
    pub fn open(config: &EmbeddedBusConfig) -> Result<EmbeddedBus, BusError> {
        let path = config.path.clone();
        let err = |source| BusError::Embedded { path: path.display().to_string(), source };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| BusError::Io(format!("cannot create {}: {e}", parent.display())))?;
        }
        let synchronous = config.synchronous.pragma();
        let connection = Connection::open(&path).map_err(err)?;
        connection
            .execute_batch(
                "PRAGMA page_size = 16384;
                 PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = NORMAL;
                 PRAGMA busy_timeout = 10000;
                 PRAGMA wal_autocheckpoint = 4000;
                 PRAGMA cache_size = -65536;",
            )
            .map_err(err)?;
        for q in [MAIN, DEAD] {
            connection
                .execute_batch(&format!(
                    "CREATE TABLE IF NOT EXISTS {m} (seq INTEGER PRIMARY KEY AUTOINCREMENT, data BLOB NOT NULL, attributes TEXT, publish_micros INTEGER NOT NULL);
                     CREATE TABLE IF NOT EXISTS {d} (seq INTEGER PRIMARY KEY, attempts INTEGER NOT NULL, lease_until INTEGER NOT NULL, first_attempt_micros INTEGER NOT NULL);",
                    m = q.messages,
                    d = q.deliveries
                ))
                .map_err(err)?;
        }
        connection
            .execute_batch("CREATE TABLE IF NOT EXISTS cursor (name TEXT PRIMARY KEY, high_water INTEGER NOT NULL)")
            .map_err(err)?;
        Ok(EmbeddedBus {
            inner: Arc::new(Shared {
                path,
                connection: Mutex::new(connection),
                ack_deadline: Duration::from_secs(config.ack_deadline_secs.max(1)),
                max_delivery_attempts: config.max_delivery_attempts.max(1),
                published: tokio::sync::Notify::new(),
                publish_synchronous: synchronous,
            }),
        })
    }

    /// The subscription on the main queue.
    pub fn subscription(&self) -> EmbeddedSubscription {
        EmbeddedSubscription {
            bus: self.clone(),
            queue: MAIN,
            max_attempts: self.inner.max_delivery_attempts,
            next_expiry_scan: Arc::new(Mutex::new(0)),
        }
    }

    /// The subscription on the dead-letter queue (messages that ran out of delivery attempts).
    pub fn dead_letter_subscription(&self) -> EmbeddedSubscription {
        EmbeddedSubscription {
            bus: self.clone(),
            queue: DEAD,
            max_attempts: u32::MAX,
            next_expiry_scan: Arc::new(Mutex::new(0)),
        }
    }

    /// Claims the right to consume this queue file for this process (the embedded bus has one
    /// consuming process) and ends the leases a previous, crashed consumer left behind, so its
    /// messages are redelivered now instead of after their ack deadline. Attempt counts are kept: a
    /// message that crashes the worker still reaches the dead-letter queue.
    pub fn claim_consumer(&self) -> Result<ConsumerLock, BusError> {
        let lock_path = self.inner.path.with_extension("consumer.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| BusError::Io(format!("cannot open {}: {e}", lock_path.display())))?;
        file.try_lock().map_err(|_| {
            BusError::Io(format!(
                "another bqsync worker consumes {} (lock {} is held); stop it first",
                self.inner.path.display(),
                lock_path.display()
            ))
        })?;
        self.with_connection(|c| {
            c.execute("UPDATE deliveries SET lease_until = 0", [])?;
            c.execute("UPDATE dlq_deliveries SET lease_until = 0", [])
        })?;
        Ok(ConsumerLock { _file: file })
    }

    fn with_connection<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T, BusError> {
        let mut connection = self.inner.connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut connection).map_err(|source| BusError::Embedded { path: self.inner.path.display().to_string(), source })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&EmbeddedBus) -> Result<T, BusError> + Send + 'static,
    ) -> Result<T, BusError> {
        let bus = self.clone();
        tokio::task::spawn_blocking(move || f(&bus)).await.map_err(|e| BusError::Io(format!("bus task failed: {e}")))?
    }
}

/// Held while this process consumes the queue; released on drop (or when the process dies).
pub struct ConsumerLock {
    _file: std::fs::File,
}

fn encode_attributes(attributes: &Attributes) -> Option<String> {
    (!attributes.is_empty()).then(|| serde_json::to_string(attributes).expect("string map serializes"))
}

fn decode_attributes(text: Option<String>) -> Attributes {
    text.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default()
}

fn insert_messages(
    tx: &rusqlite::Transaction,
    queue: QueueTables,
    messages: &[OutboundMessage],
    now: i64,
) -> rusqlite::Result<()> {
    let mut insert = tx.prepare_cached(&format!(
        "INSERT INTO {} (data, attributes, publish_micros) VALUES (?1, ?2, ?3)",
        queue.messages
    ))?;
    for message in messages {
        insert.execute(params![message.data, encode_attributes(&message.attributes), now])?;
    }
    Ok(())
}

#[async_trait]
impl Publisher for EmbeddedBus {
    async fn publish(&self, messages: Vec<OutboundMessage>) -> Result<(), BusError> {
        if messages.is_empty() {
            return Ok(());
        }
        self.blocking(move |bus| {
            let synchronous = bus.inner.publish_synchronous;
            bus.with_connection(|connection| {
                connection.execute_batch(&format!("PRAGMA synchronous = {synchronous}"))?;
                let committed = connection
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .and_then(|tx| insert_messages(&tx, MAIN, &messages, now_micros()).and_then(|_| tx.commit()));
                connection.execute_batch("PRAGMA synchronous = NORMAL")?;
                committed
            })
        })
        .await?;
        self.inner.published.notify_waiters();
        Ok(())
    }
}

/// A subscription on one of the bus's queues.
#[derive(Clone)]
pub struct EmbeddedSubscription {
    bus: EmbeddedBus,
    queue: QueueTables,
    max_attempts: u32,
    /// When (micros) to look for expired leases next. Leases expire on the ack-deadline timescale, so
    /// scanning the lease table at most every [`EXPIRY_SCAN_INTERVAL_MICROS`] (and right after a nack)
    /// keeps redelivery prompt without a scan per pull.
    next_expiry_scan: Arc<Mutex<i64>>,
}

const EXPIRY_SCAN_INTERVAL_MICROS: i64 = 500_000;

struct Row {
    seq: i64,
    data: Vec<u8>,
    attributes: Option<String>,
    publish_micros: i64,
    attempts: u32,
    first_attempt_micros: Option<i64>,
}

impl EmbeddedSubscription {
    /// Leases up to `max` messages: expired leases first (redeliveries), then fresh messages.
    fn lease(&self, connection: &mut Connection, max: usize) -> rusqlite::Result<Vec<Delivery>> {
        let q = self.queue;
        let now = now_micros();
        let lease_until = now + self.bus.inner.ack_deadline.as_micros() as i64;
        let tx = connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut rows = Vec::new();
        let scan_expired = {
            let mut next = self.next_expiry_scan.lock().unwrap_or_else(|p| p.into_inner());
            let due = now >= *next;
            if due {
                *next = now + EXPIRY_SCAN_INTERVAL_MICROS;
            }
            due
        };
        if scan_expired {
            let mut expired = tx.prepare_cached(&format!(
                "SELECT d.seq, m.data, m.attributes, m.publish_micros, d.attempts, d.first_attempt_micros
                 FROM {d} d JOIN {m} m ON m.seq = d.seq WHERE d.lease_until <= ?1 ORDER BY d.seq LIMIT ?2",
                d = q.deliveries,
                m = q.messages
            ))?;
            let found = expired.query_map(params![now, max as i64], |r| {
                Ok(Row {
                    seq: r.get(0)?,
                    data: r.get(1)?,
                    attributes: r.get(2)?,
                    publish_micros: r.get(3)?,
                    attempts: r.get(4)?,
                    first_attempt_micros: r.get(5)?,
                })
            })?;
            for row in found {
                rows.push(row?);
            }
        }
        let high_water: i64 = tx
            .query_row("SELECT high_water FROM cursor WHERE name = ?1", [q.cursor_name], |r| r.get(0))
            .optional()?
            .unwrap_or(0);
        if rows.len() < max {
            let mut fresh = tx.prepare_cached(&format!(
                "SELECT seq, data, attributes, publish_micros FROM {m} WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                m = q.messages
            ))?;
            let found = fresh.query_map(params![high_water, (max - rows.len()) as i64], |r| {
                Ok(Row {
                    seq: r.get(0)?,
                    data: r.get(1)?,
                    attributes: r.get(2)?,
                    publish_micros: r.get(3)?,
                    attempts: 0,
                    first_attempt_micros: None,
                })
            })?;
            for row in found {
                rows.push(row?);
            }
        }
        let new_high_water =
            rows.iter().filter(|r| r.first_attempt_micros.is_none()).map(|r| r.seq).max().unwrap_or(high_water);
        let mut deliveries = Vec::with_capacity(rows.len());
        {
            let mut upsert_lease = tx.prepare_cached(&format!(
                "INSERT INTO {d} (seq, attempts, lease_until, first_attempt_micros) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (seq) DO UPDATE SET attempts = excluded.attempts, lease_until = excluded.lease_until",
                d = q.deliveries
            ))?;
            for row in rows {
                if row.attempts >= self.max_attempts {
                    move_to_dead_letters(&tx, q, row, now)?;
                    continue;
                }
                let attempt = row.attempts + 1;
                let first = row.first_attempt_micros.unwrap_or(now);
                upsert_lease.execute(params![row.seq, attempt, lease_until, first])?;
                let mut attributes = decode_attributes(row.attributes);
                attributes.insert("bqsync_publish_micros".into(), row.publish_micros.to_string());
                deliveries.push(Delivery {
                    message_id: format!("{}-{}", q.cursor_name, row.seq),
                    data: row.data,
                    attributes,
                    delivery_attempt: attempt,
                    first_attempt_micros: first,
                    handle: AckHandle { inner: AckInner::Embedded { seq: row.seq, lease_token: attempt as i64 } },
                    staged: None,
                });
            }
        }
        if new_high_water > high_water {
            tx.execute(
                "INSERT INTO cursor (name, high_water) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET high_water = excluded.high_water",
                params![q.cursor_name, new_high_water],
            )?;
        }
        tx.commit()?;
        Ok(deliveries)
    }
}

/// Moves an exhausted message to the dead-letter queue, recording why in its attributes.
fn move_to_dead_letters(tx: &rusqlite::Transaction, q: QueueTables, row: Row, now: i64) -> rusqlite::Result<()> {
    let mut attributes = decode_attributes(row.attributes);
    attributes.insert(attr::DEAD_LETTER_REASON.into(), DeadLetterReason::MaxAttempts.as_str().into());
    attributes.insert(attr::DEAD_LETTER_ATTEMPTS.into(), row.attempts.to_string());
    attributes
        .insert(attr::DEAD_LETTER_FIRST_ATTEMPT_MICROS.into(), row.first_attempt_micros.unwrap_or(now).to_string());
    attributes.insert("bqsync_dead_letter_micros".into(), now.to_string());
    let message = OutboundMessage::new(row.data, attributes);
    insert_messages(tx, DEAD, std::slice::from_ref(&message), now)?;
    tx.execute(&format!("DELETE FROM {} WHERE seq = ?1", q.messages), [row.seq])?;
    tx.execute(&format!("DELETE FROM {} WHERE seq = ?1", q.deliveries), [row.seq])?;
    tracing::warn!(
        seq = row.seq,
        attempts = row.attempts,
        "message moved to the dead-letter queue after max delivery attempts"
    );
    Ok(())
}

fn embedded_handles(handles: Vec<AckHandle>) -> Result<Vec<(i64, i64)>, BusError> {
    handles
        .into_iter()
        .map(|h| match h.inner {
            AckInner::Embedded { seq, lease_token } => Ok((seq, lease_token)),
            _ => Err(BusError::ForeignHandle),
        })
        .collect()
}

/// Sorted, merged runs `(first, last)` of consecutive numbers.
fn consecutive_runs(numbers: impl Iterator<Item = i64>) -> Vec<(i64, i64)> {
    let mut sorted: Vec<i64> = numbers.collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut runs: Vec<(i64, i64)> = Vec::new();
    for n in sorted {
        match runs.last_mut() {
            Some((_, last)) if *last + 1 == n => *last = n,
            _ => runs.push((n, n)),
        }
    }
    runs
}

#[async_trait]
impl Subscription for EmbeddedSubscription {
    async fn pull(&self, max_messages: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.bus.inner.published.notified();
            let this = self.clone();
            let deliveries = self.bus.blocking(move |bus| bus.with_connection(|c| this.lease(c, max_messages))).await?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if !deliveries.is_empty() || remaining.is_zero() {
                return Ok(deliveries);
            }
            // Woken by a publish in this process, or polling for other processes and expiring leases.
            let _ = tokio::time::timeout(remaining.min(Duration::from_millis(100)), notified).await;
        }
    }

    async fn ack(&self, committed: Committed<Vec<AckHandle>>) -> Result<(), BusError> {
        let q = self.queue;
        let ids = embedded_handles(committed.into_receipts())?;
        self.bus
            .blocking(move |bus| {
                bus.with_connection(|connection| {
                    let tx = connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                    {
                        // Handles mostly come in runs of consecutive sequence numbers: one range
                        // delete a run instead of one delete a message.
                        let mut delete_messages =
                            tx.prepare_cached(&format!("DELETE FROM {} WHERE seq BETWEEN ?1 AND ?2", q.messages))?;
                        let mut delete_leases =
                            tx.prepare_cached(&format!("DELETE FROM {} WHERE seq BETWEEN ?1 AND ?2", q.deliveries))?;
                        for (first, last) in consecutive_runs(ids.iter().map(|(seq, _)| *seq)) {
                            delete_messages.execute([first, last])?;
                            delete_leases.execute([first, last])?;
                        }
                    }
                    tx.commit()
                })
            })
            .await
    }

    async fn nack(&self, handles: Vec<AckHandle>) -> Result<(), BusError> {
        *self.next_expiry_scan.lock().unwrap_or_else(|p| p.into_inner()) = 0;
        let q = self.queue;
        let ids = embedded_handles(handles)?;
        self.bus
            .blocking(move |bus| {
                bus.with_connection(|connection| {
                    let tx = connection.transaction()?;
                    {
                        // Only the current lease may be ended: a stale handle leaves a newer delivery alone.
                        let mut expire = tx.prepare_cached(&format!(
                            "UPDATE {} SET lease_until = 0 WHERE seq = ?1 AND attempts = ?2",
                            q.deliveries
                        ))?;
                        for (seq, token) in &ids {
                            expire.execute([seq, token])?;
                        }
                    }
                    tx.commit()
                })
            })
            .await
    }

    async fn stats(&self) -> Result<QueueStats, BusError> {
        let q = self.queue;
        self.bus
            .blocking(move |bus| {
                bus.with_connection(|c| {
                    let now = now_micros();
                    let total: u64 = c.query_row(&format!("SELECT count(*) FROM {}", q.messages), [], |r| r.get(0))?;
                    let leased: u64 = c.query_row(
                        &format!("SELECT count(*) FROM {} WHERE lease_until > ?1", q.deliveries),
                        [now],
                        |r| r.get(0),
                    )?;
                    let dead_lettered: u64 =
                        c.query_row(&format!("SELECT count(*) FROM {}", DEAD.messages), [], |r| r.get(0))?;
                    let oldest =
                        c.query_row(&format!("SELECT min(publish_micros) FROM {}", q.messages), [], |r| r.get(0))?;
                    Ok(QueueStats {
                        pending: total - leased.min(total),
                        leased,
                        dead_lettered,
                        oldest_publish_micros: oldest,
                    })
                })
            })
            .await
    }
}

/// Opens the bus file only to read its depth (used by `bqsync status` while another process runs).
pub fn open_existing(path: &Path) -> Result<Option<EmbeddedBus>, BusError> {
    if !path.exists() {
        return Ok(None);
    }
    EmbeddedBus::open(&EmbeddedBusConfig { path: path.to_path_buf(), ..EmbeddedBusConfig::default() }).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bus(dir: &Path, deadline: u64, attempts: u32) -> EmbeddedBus {
        let config = EmbeddedBusConfig {
            path: dir.join("bus.db"),
            ack_deadline_secs: deadline,
            max_delivery_attempts: attempts,
            synchronous: crate::config::bus::embedded::Synchronous::Normal,
            ..Default::default()
        };
        EmbeddedBus::open(&config).unwrap()
    }

    fn message(text: &str) -> OutboundMessage {
        OutboundMessage::new(text.as_bytes().to_vec(), Attributes::from([("k".to_string(), "v".to_string())]))
    }

    #[tokio::test]
    async fn ack_removes_and_unacked_come_back_after_the_lease() {
        let dir = tempfile::tempdir().unwrap();
        let bus = bus(dir.path(), 1, 5);
        bus.publish(vec![message("a"), message("b")]).await.unwrap();
        let sub = bus.subscription();
        let first = sub.pull(10, Duration::ZERO).await.unwrap();
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].delivery_attempt, 1);
        assert_eq!(first[0].attributes["k"], "v");
        assert!(sub.pull(10, Duration::ZERO).await.unwrap().is_empty(), "leased messages are not delivered twice");
        let mut first = first.into_iter();
        let a = first.next().unwrap();
        assert_eq!(a.data, b"a");
        sub.ack(Committed::new(vec![a.handle])).await.unwrap();
        drop(first);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let again = sub.pull(10, Duration::ZERO).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].data, b"b");
        assert_eq!(again[0].delivery_attempt, 2);
    }

    #[tokio::test]
    async fn nack_redelivers_and_max_attempts_dead_letters() {
        let dir = tempfile::tempdir().unwrap();
        let bus = bus(dir.path(), 60, 2);
        bus.publish(vec![message("poison")]).await.unwrap();
        let sub = bus.subscription();
        for attempt in 1..=2 {
            let d = sub.pull(10, Duration::ZERO).await.unwrap();
            assert_eq!(d.len(), 1);
            assert_eq!(d[0].delivery_attempt, attempt);
            sub.nack(d.into_iter().map(|d| d.handle).collect()).await.unwrap();
        }
        assert!(sub.pull(10, Duration::ZERO).await.unwrap().is_empty(), "third attempt must not happen");
        let dead = bus.dead_letter_subscription().pull(10, Duration::ZERO).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].data, b"poison");
        assert_eq!(dead[0].attributes["bqsync_dead_letter_reason"], "max_attempts");
        assert_eq!(dead[0].attributes["bqsync_dead_letter_attempts"], "2");
        assert_eq!(sub.stats().await.unwrap().pending, 0);
    }

    #[test]
    fn runs_merge_consecutive_numbers() {
        assert_eq!(consecutive_runs([5, 1, 2, 3, 9, 6, 2].into_iter()), vec![(1, 3), (5, 6), (9, 9)]);
        assert!(consecutive_runs(std::iter::empty()).is_empty());
    }

    #[tokio::test]
    async fn sequence_numbers_are_not_reused_after_the_queue_empties() {
        let dir = tempfile::tempdir().unwrap();
        let bus = bus(dir.path(), 60, 5);
        let sub = bus.subscription();
        for round in 0..3 {
            bus.publish(vec![message("x"), message("y")]).await.unwrap();
            let d = sub.pull(10, Duration::ZERO).await.unwrap();
            assert_eq!(d.len(), 2, "round {round}: new messages after an emptied queue are delivered");
            sub.ack(Committed::new(d.into_iter().map(|d| d.handle).collect())).await.unwrap();
        }
    }

    #[tokio::test]
    async fn messages_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let bus = bus(dir.path(), 60, 5);
            bus.publish(vec![message("durable")]).await.unwrap();
            let d = bus.subscription().pull(10, Duration::ZERO).await.unwrap();
            assert_eq!(d.len(), 1);
            // dropped without ack: simulated crash mid-lease
        }
        let bus = bus(dir.path(), 60, 5);
        assert!(bus.subscription().pull(10, Duration::ZERO).await.unwrap().is_empty(), "still leased");
        let _lock = bus.claim_consumer().unwrap();
        assert!(bus.claim_consumer().is_err(), "a second consumer is refused");
        let d = bus.subscription().pull(10, Duration::ZERO).await.unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].delivery_attempt, 2);
    }
}
