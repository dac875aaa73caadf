//! The worker against a warehouse that fails: a real DuckDB warehouse behind a fault injector that
//! refuses the first landings. Nothing may be acked while landing fails, and once it works again every
//! event lands exactly once — whether the batch was retried in place or released for redelivery.

// The embedded bus and DuckDB: built with the `embedded` feature (the default).
#![cfg(feature = "embedded")]

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bqsync::bus::embedded::{EmbeddedBus, EmbeddedBusConfig};
use bqsync::bus::Receipts;
use bqsync::bus::{OutboundMessage, Publisher, Subscription};
use bqsync::schema::Catalog;
use bqsync::shutdown::Shutdown;
use bqsync::warehouse::duckdb::{DuckDbConfig, DuckDbWarehouse};
use bqsync::warehouse::{LandFailure, LandResult, TableBatch, Warehouse, WarehouseError};
use bqsync::worker::{Worker, WorkerConfig};

/// Fails the first `failures` landings (as a transient error), then delegates.
struct FailingWarehouse {
    inner: DuckDbWarehouse,
    failures: AtomicU32,
    bus: EmbeddedBus,
    events: u64,
    messages_present_during_failures: AtomicU32,
    /// Most messages leased (pulled, unacked) seen during a failure.
    most_leased_during_failures: AtomicU32,
}

#[async_trait]
impl Warehouse for FailingWarehouse {
    async fn ensure_tables(&self) -> Result<(), WarehouseError> {
        self.inner.ensure_tables().await
    }

    async fn land(&self, batches: Arc<Vec<TableBatch>>, receipts: Receipts) -> LandResult {
        if self.failures.load(Ordering::SeqCst) > 0 {
            self.failures.fetch_sub(1, Ordering::SeqCst);
            let stats = self.bus.subscription().stats().await.unwrap();
            self.most_leased_during_failures.fetch_max(stats.leased as u32, Ordering::SeqCst);
            if stats.pending + stats.leased == self.events {
                self.messages_present_during_failures.fetch_add(1, Ordering::SeqCst);
            }
            let error = WarehouseError::Task("injected failure: warehouse unavailable".into());
            return Err(LandFailure::new(error, receipts));
        }
        self.inner.land(batches, receipts).await
    }

    async fn row_counts(&self) -> Result<Vec<(String, u64)>, WarehouseError> {
        self.inner.row_counts().await
    }

    async fn dead_letter_counts(&self) -> Result<Vec<(String, String, u64)>, WarehouseError> {
        self.inner.dead_letter_counts().await
    }
}

fn event(i: u64) -> OutboundMessage {
    let body = format!(
        r#"{{"event_id":"e{i}","table":"atoms","op":"insert","payload":{{"event_id":"e{i}","created_at":"2024-01-01T00:00:00Z"}},"source":"test","produced_at":"2024-01-01T00:00:00Z"}}"#
    );
    OutboundMessage::new(body.into_bytes(), Default::default())
}

struct Outcome {
    rows: u64,
    witnessed: u32,
    most_leased: u32,
    stats: bqsync::worker::WorkerStats,
}

async fn run_with_failures(failures: u32, retry_budget_secs: u64) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let catalog: Arc<Catalog> = Arc::new(common::catalog());
    let bus_config = EmbeddedBusConfig { path: dir.path().join("bus.db"), ack_deadline_secs: 5, ..Default::default() };
    let bus = EmbeddedBus::open(&bus_config).unwrap();
    let events = 3000;
    bus.publish((0..events).map(event).collect()).await.unwrap();
    let duck = DuckDbConfig { path: dir.path().join("w.duckdb"), ..Default::default() };
    let warehouse = Arc::new(FailingWarehouse {
        inner: DuckDbWarehouse::open(&duck, catalog.clone()).unwrap(),
        failures: AtomicU32::new(failures),
        bus: bus.clone(),
        events,
        messages_present_during_failures: AtomicU32::new(0),
        most_leased_during_failures: AtomicU32::new(0),
    });
    warehouse.ensure_tables().await.unwrap();
    let config = WorkerConfig {
        retry_initial_ms: 20,
        retry_max_ms: 200,
        retry_budget_secs,
        max_batch_age_ms: 50,
        max_batch_rows: BATCH,
        pull_max_messages: BATCH,
        ..Default::default()
    };
    let subscription: Arc<dyn Subscription> = Arc::new(bus.subscription());
    let mut worker =
        Worker::new(config, catalog, warehouse.clone(), subscription, Some(Arc::new(bus.dead_letter_subscription())));
    let drained = Shutdown::new();
    drained.input_drained();
    tokio::time::timeout(Duration::from_secs(60), worker.run(drained)).await.expect("worker drains").unwrap();
    let rows = warehouse.row_counts().await.unwrap().into_iter().find(|(t, _)| t == "atoms").unwrap().1;
    let witnessed = warehouse.messages_present_during_failures.load(Ordering::SeqCst);
    let most_leased = warehouse.most_leased_during_failures.load(Ordering::SeqCst);
    Outcome { rows, witnessed, most_leased, stats: worker.stats }
}

const BATCH: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_landings_are_retried_and_nothing_is_acked_meanwhile() {
    let Outcome { rows, witnessed, most_leased, stats } = run_with_failures(3, 10).await;
    assert_eq!(rows, 3000, "every event lands exactly once");
    assert_eq!(witnessed, 3, "during each failure all messages were still on the bus (none acked)");
    assert_eq!(stats.failed_flushes, 3);
    // Back-pressure and the circuit breaker: while landing failed, at most the failing batch and the
    // one filling behind it were pulled, not the 3,000 waiting on the bus.
    assert!(most_leased as usize <= 2 * BATCH, "{most_leased} leased during failures; batch {BATCH}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_exhausts_its_retry_budget_is_redelivered_and_lands_once() {
    // 1 s budget with 20–200 ms backoff: the first batch gives up, is nacked and comes back.
    let Outcome { rows, witnessed, stats, .. } = run_with_failures(12, 1).await;
    assert_eq!(rows, 3000, "every event lands exactly once after redelivery");
    assert_eq!(witnessed, 12, "nothing was acked while landing failed");
    assert!(stats.delivered > 3000, "the released batch was delivered again: {stats:?}");
}
