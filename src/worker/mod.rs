//! The worker: pulls deliveries, batches them per destination table, lands each batch in one
//! warehouse transaction and acks only after that transaction committed.
//!
//! Invariants:
//! - **Ack only after commit** (the invariant every other module links to). A delivery's ack handle
//!   never leaves its batch: the batch's [`Receipts`] travel with its rows into [`Warehouse::land`]
//!   and come back inside a [`Committed`] proof once the transaction committed, or bare when it
//!   failed (then they are nacked). A subscription acks only a `Committed`; a `Committed` is made
//!   only by a landing and by a publish to a bus's own dead-letter topic ([`crate::ack`]).
//!   Classification sees a message's bytes, attributes and attempts ([`crate::message::Message`]),
//!   never its handle. A crash anywhere before the ack means redelivery, and landing is idempotent,
//!   so nothing is lost and nothing is applied twice. On BigQuery the commit is the durable append
//!   to the landing table, and the apply into the table is the idempotent step: "ack after durable
//!   append, apply idempotent" ([`crate::warehouse::bigquery`]).
//! - **Poison never blocks.** A delivery that cannot become a row (undecodable, schema-invalid,
//!   unknown table, oversize) is dead-lettered at once and the rest of its batch flows on. On a bus
//!   with a dead-letter topic of its own (Pub/Sub) it is published there with the reason and then
//!   acked; otherwise it becomes a `dead_letters` row, committed with the next flush and acked with it.
//!   Messages on the dead-letter subscription become `dead_letters` rows the same way.
//! - **Batches fit the flow-control window.** Where the bus limits unacked deliveries, batch limits
//!   are cut to half the window, so a batch in flight and the next one filling never starve each
//!   other.
//! - **Failures are retried, not acked.** A failing landing is retried under [`crate::retry`]'s
//!   policy (exponential backoff, jitter, `retry_budget_secs`); if it keeps failing, its deliveries
//!   are nacked (the bus redelivers them and, past the maximum attempts, dead-letters them).
//! - **A failing warehouse stops the pulling (circuit breaker).** While a landing is being retried
//!   the worker pulls nothing, so a warehouse outage does not pile leased messages up; the first
//!   commit (or the landing giving up) closes the circuit.

pub mod classify;
mod progress;
mod staged;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ack::{Committed, Origin, Receipts};
use crate::bus::claim_check::{self, Resolved, CLAIM_CHECK};
use crate::bus::{DeadLetterOut, Delivery, Subscription};
use crate::dead_letter::{DeadLetter, DEAD_LETTER_TABLE};
use crate::schema::Catalog;
use crate::shutdown::Shutdown;
use crate::warehouse::{LandFailure, TableBatch, Warehouse, WarehouseError};
use classify::{Classified, Classifier};

pub use crate::config::worker::WorkerConfig;

/// At most one progress line per table this often (INFO).
const PROGRESS_LOG_EVERY: Duration = Duration::from_secs(10);

/// Rows for one table waiting for their flush, with the handles they will ack.
struct PendingBatch {
    rows: Vec<crate::warehouse::StagedRow>,
    /// When each row's event was produced (µs); dead letters have none.
    produced: Vec<i64>,
    /// Bus message ids of the first and the last delivery, to link a batch to its messages.
    first_message: Option<String>,
    last_message: Option<String>,
    receipts: Receipts,
    bytes: usize,
    oldest: Instant,
}

/// The most rows a new batch reserves room for: a batch fills to `max_batch_rows` (20,000 by
/// default), and reserving that once spares the copies and fresh pages of growing by doubling; the
/// cap keeps a large setting from reserving memory for batches that stay small.
const RESERVED_BATCH_ROWS: usize = 32_768;

impl PendingBatch {
    fn new(max_rows: usize) -> PendingBatch {
        let reserve = max_rows.min(RESERVED_BATCH_ROWS);
        PendingBatch {
            rows: Vec::with_capacity(reserve),
            produced: Vec::with_capacity(reserve),
            first_message: None,
            last_message: None,
            receipts: Receipts::default(),
            bytes: 0,
            oldest: Instant::now(),
        }
    }
}

/// Counters, for status and tests.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct WorkerStats {
    pub delivered: u64,
    /// Rows offered to the warehouse's tables (dead letters not included).
    pub offered: u64,
    /// Of those, rows the warehouse did not hold yet: inserted, or a key's version advanced. On
    /// BigQuery, rows appended to the landing table (its applier deduplicates them later).
    pub landed_new: u64,
    /// Of those, rows already there: a redelivery, a re-sync, an older version.
    pub already_present: u64,
    pub dead_lettered: u64,
    pub flushes: u64,
    pub failed_flushes: u64,
    /// Most deliveries held unacked at once (batches filling and in flight).
    pub peak_unacked: u64,
}

/// The worker.
pub struct Worker {
    config: WorkerConfig,
    catalog: Arc<Catalog>,
    warehouse: Arc<dyn Warehouse>,
    subscription: Arc<dyn Subscription>,
    dead_letter_subscription: Option<Arc<dyn Subscription>>,
    pending: BTreeMap<String, PendingBatch>,
    in_flight: Option<InFlight>,
    /// Open while a landing is failing and being retried (the circuit breaker).
    circuit_open: Arc<AtomicBool>,
    /// Where claim-checked events are fetched from.
    claims: Option<claim_check::ClaimStore>,
    progress: progress::ProgressLog,
    pub stats: WorkerStats,
}

impl Worker {
    pub fn new(
        config: WorkerConfig,
        catalog: Arc<Catalog>,
        warehouse: Arc<dyn Warehouse>,
        subscription: Arc<dyn Subscription>,
        dead_letter_subscription: Option<Arc<dyn Subscription>>,
    ) -> Worker {
        let mut config = config;
        if let Some((messages, bytes)) = subscription.flow_window() {
            fit_to_window(&mut config, messages, bytes);
        }
        Worker {
            config,
            catalog,
            warehouse,
            subscription,
            dead_letter_subscription,
            pending: BTreeMap::new(),
            in_flight: None,
            circuit_open: Arc::new(AtomicBool::new(false)),
            claims: None,
            progress: progress::ProgressLog::new(PROGRESS_LOG_EVERY),
            stats: WorkerStats::default(),
        }
    }

    /// Runs until `shutdown` says stop, or says drained and everything landed (see
    /// [`crate::shutdown`]).
    pub async fn run(&mut self, shutdown: Shutdown) -> Result<(), WarehouseError> {
        let max_age = Duration::from_millis(self.config.max_batch_age_ms);
        loop {
            if shutdown.is_stopping() {
                break;
            }
            let drained = shutdown.is_drained();
            // Once input is drained, only what is already on the bus is left: short waits, so a
            // one-shot run ends when its last landing does.
            let longest_wait = Duration::from_millis(if drained { 10 } else { 200 });
            let wait = self.time_to_next_flush(max_age).min(longest_wait);
            if self.circuit_is_open() {
                // The warehouse is failing: pull nothing more (it would only sit leased) until the
                // landing being retried commits or gives up.
                tokio::time::sleep(wait).await;
                if self.in_flight.as_ref().is_some_and(|f| f.landing.is_finished()) {
                    self.finish_in_flight().await;
                }
                continue;
            }
            // Never cancel a pull midway: deliveries it leased would sit out their lease unprocessed.
            // Its wait is short, so a stop request is seen within it; input drained meanwhile ends
            // the wait (where the bus can), so a one-shot run does not sit it out.
            let subscription = self.subscription.clone();
            let pull = subscription.pull(self.config.pull_max_messages, wait);
            let pulled = if drained {
                pull.await
            } else {
                tokio::pin!(pull);
                tokio::select! {
                    pulled = &mut pull => pulled,
                    _ = shutdown.drained() => {
                        subscription.wake();
                        pull.await
                    }
                }
            };
            let deliveries = match pulled {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(error = %e, "pull failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let got_any = !deliveries.is_empty();
            let deliveries = self.resolve_claims(deliveries).await;
            let poison = self.accept(deliveries, Origin::Main);
            self.dead_letter_on_bus(poison).await;
            if let Some(dead) = self.dead_letter_subscription.clone() {
                if let Ok(exhausted) = dead.pull(self.config.pull_max_messages, Duration::ZERO).await {
                    self.accept(exhausted, Origin::DeadLetterQueue);
                }
            }
            self.note_unacked();
            let idle = !got_any;
            // Producers of this process wait on what was pulled (the in-process bus): land it now.
            let requested = self.subscription.flush_requested();
            self.flush_due(max_age, (idle && drained) || requested).await;
            // Ack a finished landing now, not at the next flush: when input pauses there may be no
            // next flush for a while, and unacked deliveries would come back after their lease.
            let landed = self.in_flight.as_ref().is_some_and(|f| f.landing.is_finished());
            if landed || requested || (idle && self.pending.is_empty()) {
                self.finish_in_flight().await;
            }
            if idle && drained && self.pending.is_empty() && self.bus_is_empty().await {
                tracing::info!("bus drained: every event delivered was landed or dead-lettered");
                break;
            }
        }
        self.flush_due(max_age, true).await;
        self.finish_in_flight().await;
        self.progress.log_now();
        self.subscription.close().await;
        if let Some(dead) = &self.dead_letter_subscription {
            dead.close().await;
        }
        Ok(())
    }

    /// The GCS bucket claim-checked events are read from.
    pub fn set_claim_store(&mut self, gcs: Option<claim_check::ClaimStore>) {
        self.claims = gcs;
    }

    /// Fetches the bytes of claim-checked deliveries; those GCS cannot serve now are nacked.
    async fn resolve_claims(&self, deliveries: Vec<Delivery>) -> Vec<Delivery> {
        if !deliveries.iter().any(|d| d.attributes.contains_key(CLAIM_CHECK)) {
            return deliveries;
        }
        let mut ready = Vec::with_capacity(deliveries.len());
        let mut retry = Vec::new();
        for delivery in deliveries {
            match claim_check::resolve(self.claims.as_ref(), delivery).await {
                Resolved::Ready(d) => ready.push(d),
                Resolved::Retry(d) => retry.push(d.handle),
            }
        }
        if !retry.is_empty() {
            let _ = self.subscription.nack(retry).await;
        }
        ready
    }

    fn circuit_is_open(&self) -> bool {
        self.circuit_open.load(Ordering::Relaxed)
    }

    async fn bus_is_empty(&self) -> bool {
        let main = self.subscription.is_drained().await.unwrap_or(false);
        let dead = match &self.dead_letter_subscription {
            Some(d) => d.is_drained().await.unwrap_or(false),
            None => true,
        };
        main && dead
    }

    fn note_unacked(&mut self) {
        let held = self.pending.values().map(|b| b.receipts.len()).sum::<usize>()
            + self.in_flight.as_ref().map_or(0, |f| f.deliveries);
        self.stats.peak_unacked = self.stats.peak_unacked.max(held as u64);
        crate::metrics::global().set_outstanding(held as i64);
    }

    /// Hands poison deliveries to the bus's dead-letter topic. If that fails they were nacked and
    /// come back, to be dead-lettered again.
    async fn dead_letter_on_bus(&mut self, poison: Vec<DeadLetterOut>) {
        if poison.is_empty() {
            return;
        }
        let count = poison.len() as u64;
        match self.subscription.dead_letter(poison).await {
            Ok(()) => self.stats.dead_lettered += count,
            Err(e) => tracing::error!(error = %e, count, "publishing dead letters failed; they will be redelivered"),
        }
    }

    fn time_to_next_flush(&self, max_age: Duration) -> Duration {
        self.pending.values().map(|b| max_age.saturating_sub(b.oldest.elapsed())).min().unwrap_or(max_age)
    }

    /// Sorts deliveries into per-table batches; poison goes to the dead-letter batch, or is returned
    /// for the bus's dead-letter topic when the bus has one.
    fn accept(&mut self, deliveries: Vec<Delivery>, origin: Origin) -> Vec<DeadLetterOut> {
        let catalog = self.catalog.clone();
        let classifier = Classifier { catalog: &catalog, max_event_bytes: self.config.max_event_bytes };
        let poison_to_bus = origin == Origin::Main && self.subscription.dead_letters_on_bus();
        let mut poison = Vec::new();
        // (table, events, redelivered) of this pull, for the metrics: a few tables, many events.
        let mut arrived: Vec<(String, u64, u64)> = Vec::new();
        for mut delivery in deliveries {
            if let Some(staged) = delivery.staged.take() {
                self.accept_staged(*staged, delivery, origin, &mut arrived);
                continue;
            }
            self.stats.delivered += 1;
            let classified = match origin {
                Origin::Main => classifier.classify(delivery.message()),
                Origin::DeadLetterQueue => Classified::DeadLetter(DeadLetter::of_exhausted(delivery.message())),
            };
            let (table, row, produced) = match classified {
                Classified::Row { table, row, produced_micros } => {
                    let again = u64::from(delivery.delivery_attempt > 1);
                    match arrived.iter_mut().find(|(t, _, _)| *t == table) {
                        Some((_, events, redelivered)) => (*events, *redelivered) = (*events + 1, *redelivered + again),
                        None => arrived.push((table.clone(), 1, again)),
                    }
                    (table, row, Some(produced_micros))
                }
                Classified::DeadLetter(dead) if poison_to_bus => {
                    crate::metrics::global().dead_letter(dead.table.as_deref().unwrap_or("?"), dead.reason.as_str());
                    let attributes = dead.attributes_for(delivery.message());
                    log_dead_letter(&dead);
                    poison.push(DeadLetterOut { data: delivery.data, attributes, handle: delivery.handle });
                    continue;
                }
                Classified::DeadLetter(dead) => {
                    self.stats.dead_lettered += 1;
                    crate::metrics::global().dead_letter(dead.table.as_deref().unwrap_or("?"), dead.reason.as_str());
                    log_dead_letter(&dead);
                    (DEAD_LETTER_TABLE.to_string(), dead.row(&self.catalog, delivery.message()), None)
                }
            };
            // A flush removes its batch whole, so a batch's age starts when it is created here.
            // Dead letters are few: their batch reserves nothing.
            let max_rows = self.config.max_batch_rows;
            let batch = self
                .pending
                .entry(table)
                .or_insert_with_key(|table| PendingBatch::new(if table == DEAD_LETTER_TABLE { 0 } else { max_rows }));
            batch.bytes += delivery.data.len();
            batch.rows.push(row);
            if batch.first_message.is_none() {
                batch.first_message = Some(delivery.message_id.clone());
            }
            batch.last_message = Some(delivery.message_id);
            if let Some(micros) = produced {
                batch.produced.push(micros);
            }
            batch.receipts.push(origin, delivery.handle);
        }
        for (table, events, redelivered) in arrived {
            crate::metrics::global().events_in(&table, events, redelivered);
        }
        poison
    }

    /// Flushes every table whose batch is full or old enough (all of them when `everything`). Dead
    /// letters ride along with any flush, so they never wait longer than the oldest batch.
    async fn flush_due(&mut self, max_age: Duration, everything: bool) {
        let due: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, b)| {
                everything
                    || b.rows.len() >= self.config.max_batch_rows
                    || b.bytes >= self.config.max_batch_bytes
                    || b.oldest.elapsed() >= max_age
            })
            .map(|(t, _)| t.clone())
            .collect();
        if due.is_empty() {
            return;
        }
        let mut tables = due;
        if !tables.iter().any(|t| t == DEAD_LETTER_TABLE) && self.pending.contains_key(DEAD_LETTER_TABLE) {
            tables.push(DEAD_LETTER_TABLE.to_string());
        }
        let mut batches = Vec::with_capacity(tables.len());
        let mut receipts = Receipts::default();
        let mut produced = Vec::new();
        let mut messages = Vec::new();
        for table in tables {
            let pending = self.pending.remove(&table).expect("due table is pending");
            messages.push(format!(
                "{table}: {}..{}",
                pending.first_message.as_deref().unwrap_or("?"),
                pending.last_message.as_deref().unwrap_or("?")
            ));
            receipts.append(pending.receipts);
            produced.push((table.clone(), pending.produced));
            batches.push(TableBatch { table, rows: pending.rows });
        }
        // One landing at a time, overlapped with pulling and classifying the next batch: wait for
        // the previous landing (and its acks) before starting this one.
        self.finish_in_flight().await;
        let warehouse = self.warehouse.clone();
        let retry = self.config.clone();
        // One span per flush: its fields name the bus messages (first..last per table); the
        // warehouse's job spans are its children.
        let rows: usize = batches.iter().map(|b| b.rows.len()).sum();
        let deliveries = receipts.len();
        let span = tracing::info_span!("land_batch", rows, deliveries, messages = %messages.join(", "));
        let landing = tokio::spawn(tracing::Instrument::instrument(
            land_with_retry(warehouse, batches, receipts, retry, self.circuit_open.clone()),
            span,
        ));
        self.in_flight = Some(InFlight { landing, deliveries, produced, started: Instant::now() });
    }

    /// Waits for the landing in flight, then acks its deliveries (or nacks them if it gave up).
    async fn finish_in_flight(&mut self) {
        let Some(in_flight) = self.in_flight.take() else {
            return;
        };
        let outcome = match in_flight.landing.await {
            Ok(outcome) => outcome,
            Err(e) => {
                // Its receipts went down with it: their leases run out and the messages come back.
                tracing::error!(error = %e, "landing task failed");
                LandOutcome { result: Err(Receipts::default()), failures: 1, stats: Vec::new() }
            }
        };
        self.stats.failed_flushes += outcome.failures;
        let metrics = crate::metrics::global();
        for _ in 0..outcome.failures {
            metrics.flush(0.0, false);
        }
        match outcome.result {
            Ok(committed) => {
                self.stats.flushes += 1;
                metrics.flush(in_flight.started.elapsed().as_secs_f64(), true);
                let now = chrono::Utc::now().timestamp_micros();
                for (table, produced) in &in_flight.produced {
                    metrics.lag(table, produced.iter().map(|micros| (now - micros) as f64 / 1e6));
                }
                for (table, stats) in &outcome.stats {
                    metrics.landed(table, stats.rows_offered, stats.rows_changed);
                }
                for (table, stats) in outcome.stats.iter().filter(|(table, _)| table != DEAD_LETTER_TABLE) {
                    self.stats.offered += stats.rows_offered;
                    self.stats.landed_new += stats.rows_changed;
                    self.stats.already_present += stats.rows_offered - stats.rows_changed;
                    // The largest lag is the oldest event's.
                    let oldest = in_flight.produced.iter().find(|(t, _)| t == table).and_then(|(_, p)| p.iter().min());
                    self.progress.record(table, stats, oldest.map(|micros| (now - micros) as f64 / 1e6));
                }
                self.progress.log_if_due();
                self.ack(committed).await
            }
            Err(receipts) => self.nack(receipts).await,
        }
    }

    /// Acks the deliveries a committed batch covers, each through its own subscription.
    async fn ack(&self, committed: Committed<Receipts>) {
        let (main, dead) = committed.split();
        if let Err(e) = self.subscription.ack(main).await {
            // Not fatal: the messages come back after their lease and land as no-ops.
            tracing::error!(error = %e, "ack failed after commit; the messages will be redelivered and deduplicated");
        }
        if let (Some(sub), false) = (&self.dead_letter_subscription, dead.receipts().is_empty()) {
            if let Err(e) = sub.ack(dead).await {
                tracing::error!(error = %e, "dead-letter ack failed after commit");
            }
        }
    }

    async fn nack(&self, receipts: Receipts) {
        let (main, dead) = receipts.into_parts();
        let _ = self.subscription.nack(main).await;
        if let (Some(sub), false) = (&self.dead_letter_subscription, dead.is_empty()) {
            let _ = sub.nack(dead).await;
        }
    }
}

fn log_dead_letter(dead: &DeadLetter) {
    tracing::warn!(
        reason = dead.reason.as_str(),
        table = dead.table.as_deref().unwrap_or("?"),
        detail = %dead.detail,
        "dead-lettered"
    );
}

/// Cuts batch limits to half the flow-control window: one batch in flight and the next one filling
/// must both fit, or the filling one waits for its age limit every time.
fn fit_to_window(config: &mut WorkerConfig, messages: usize, bytes: usize) {
    let (rows, size) = ((messages / 2).max(1), (bytes / 2).max(1));
    if config.max_batch_rows > rows || config.max_batch_bytes > size || config.pull_max_messages > rows {
        tracing::info!(
            max_batch_rows = config.max_batch_rows.min(rows),
            max_batch_bytes = config.max_batch_bytes.min(size),
            window_messages = messages,
            window_bytes = bytes,
            "batch limits cut to half the bus's flow-control window"
        );
    }
    config.max_batch_rows = config.max_batch_rows.min(rows);
    config.max_batch_bytes = config.max_batch_bytes.min(size);
    config.pull_max_messages = config.pull_max_messages.min(rows);
}

/// A landing running in the background (its receipts travel with it).
struct InFlight {
    landing: tokio::task::JoinHandle<LandOutcome>,
    /// Deliveries it covers.
    deliveries: usize,
    /// Per table, when each row's event was produced (µs since the epoch), for the lag metric.
    produced: Vec<(String, Vec<i64>)>,
    started: Instant,
}

struct LandOutcome {
    /// The commit proof with the receipts; the bare receipts when the retry budget ran out.
    result: Result<Committed<Receipts>, Receipts>,
    failures: u64,
    stats: Vec<(String, crate::warehouse::LandStats)>,
}

/// Lands with exponential backoff and jitter until it commits or the retry budget runs out.
///
/// While it retries, the circuit is open and the worker pulls nothing; it closes when the landing
/// commits or gives up (the next landing then probes the warehouse again).
async fn land_with_retry(
    warehouse: Arc<dyn Warehouse>,
    batches: Vec<TableBatch>,
    receipts: Receipts,
    config: WorkerConfig,
    circuit_open: Arc<AtomicBool>,
) -> LandOutcome {
    let outcome = land_until_done(warehouse, batches, receipts, config, &circuit_open).await;
    crate::metrics::global().set_circuit_open(false);
    if circuit_open.swap(false, Ordering::Relaxed) {
        tracing::info!(committed = outcome.result.is_ok(), "circuit closed: pulling again");
    }
    outcome
}

async fn land_until_done(
    warehouse: Arc<dyn Warehouse>,
    batches: Vec<TableBatch>,
    receipts: Receipts,
    config: WorkerConfig,
    circuit_open: &AtomicBool,
) -> LandOutcome {
    let rows: u64 = batches.iter().map(|b| b.rows.len() as u64).sum();
    let batches = Arc::new(batches);
    let mut failures = 0;
    let policy = crate::retry::Policy::exponential(
        Duration::from_millis(config.retry_initial_ms),
        Duration::from_millis(config.retry_max_ms),
    )
    .with_budget(Duration::from_secs(config.retry_budget_secs));
    let on_retry = |e: &WarehouseError, wait: Duration| {
        failures += 1;
        tracing::warn!(error = %e, rows, retry_in_ms = wait.as_millis() as u64, "landing failed; retrying");
        crate::metrics::global().set_circuit_open(true);
        if !circuit_open.swap(true, Ordering::Relaxed) {
            tracing::warn!("circuit open: the warehouse is failing; pulling paused until it lands again");
        }
    };
    // The receipts travel into every try and come back with its failure, or inside the proof.
    let (left, result) = crate::retry::retry_with(policy, Some(receipts), on_retry, |receipts| {
        let (warehouse, batches) = (warehouse.clone(), batches.clone());
        async move {
            match warehouse.land(batches, receipts.unwrap_or_default()).await {
                Ok(landed) => (None, Ok(landed)),
                Err(LandFailure { error, receipts }) => (Some(receipts), Err(*error)),
            }
        }
    })
    .await;
    match result {
        Ok((committed, stats)) => {
            tracing::debug!(?stats, "batch committed");
            LandOutcome { result: Ok(committed), failures, stats }
        }
        Err(e) => {
            tracing::error!(error = %e, rows, "landing keeps failing; releasing the batch for redelivery");
            LandOutcome { result: Err(left.unwrap_or_default()), failures: failures + 1, stats: Vec::new() }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_limits_are_cut_to_half_the_flow_control_window() {
        let mut config = WorkerConfig::default();
        fit_to_window(&mut config, 8_000, 64 << 20);
        assert_eq!((config.max_batch_rows, config.max_batch_bytes, config.pull_max_messages), (4_000, 32 << 20, 4_000));
        let mut small = WorkerConfig { max_batch_rows: 100, ..WorkerConfig::default() };
        fit_to_window(&mut small, 8_000, 1 << 30);
        assert_eq!(small.max_batch_rows, 100, "limits below the window stay");
        assert_eq!(small.max_batch_bytes, 32 << 20);
    }
}
