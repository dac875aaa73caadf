//! Wires sources → bus → worker → warehouse from a [`Config`] and runs them until drained or stopped.
//!
//! Shutdown: on SIGINT/SIGTERM sources stop reading at their next publish boundary (their checkpoints
//! cover exactly what was published), the worker stops pulling, flushes and acks what it holds, and
//! the process exits 0. Whatever was leased but not landed is redelivered on the next start.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::bus::claim_check::ClaimCheckPublisher;
use crate::bus::embedded::EmbeddedBus;
use crate::bus::pubsub::{PubSubPublisher, PubSubSubscription};
use crate::bus::{Publisher, Subscription};
use crate::config::{BusKind, Config};
use crate::schema::Catalog;
use crate::sources::checkpoint::CheckpointStore;
use crate::sources::http::HttpSource;
use crate::sources::jsonl::JsonlSource;
use crate::sources::outbox::OutboxSource;
use crate::sources::sessions::SessionsSource;
use crate::sources::sqlite::SqliteSource;
use crate::sources::{Source, SourceError};
use crate::warehouse::Warehouse;
use crate::worker::{StopMode, Worker, WorkerStats};

/// How long `run` goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    /// Until SIGINT/SIGTERM.
    Forever,
    /// Until every input present at start (and written meanwhile) is landed.
    UntilDrained,
}

/// What a run did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RunReport {
    pub events_published: u64,
    pub worker: WorkerStats,
}

/// Loads the table catalog named by the config, with a hint when it is missing.
pub fn load_catalog(config: &Config) -> anyhow::Result<Arc<Catalog>> {
    let catalog = Catalog::load_dir(&config.schemas_dir).with_context(|| {
        format!(
            "loading table definitions (schemas_dir = {}; run from the project directory or set it in the config)",
            config.schemas_dir.display()
        )
    })?;
    Ok(Arc::new(catalog))
}

/// Which parts run in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sources and worker (`bqsync run`).
    All,
    /// Sources only, next to the data (`bqsync produce`).
    Produce,
    /// Worker only (`bqsync work`).
    Work,
}

impl Role {
    fn produces(self) -> bool {
        self != Role::Work
    }
    fn works(self) -> bool {
        self != Role::Produce
    }
}

/// The bus ends a role needs, opened from the config.
#[derive(Default)]
struct BusEnds {
    publisher: Option<Arc<dyn Publisher>>,
    subscription: Option<Arc<dyn Subscription>>,
    dead_letters: Option<Arc<dyn Subscription>>,
    /// Held while this process consumes the embedded bus (one consumer per bus file).
    _consumer_lock: Option<crate::bus::embedded::ConsumerLock>,
}

async fn open_bus(config: &Config, role: Role) -> anyhow::Result<BusEnds> {
    match config.bus.kind {
        BusKind::Embedded => {
            let bus = EmbeddedBus::open(&config.bus.embedded).context("opening the embedded bus")?;
            let mut ends = BusEnds::default();
            if role.works() {
                ends._consumer_lock = Some(bus.claim_consumer().context("claiming the embedded bus")?);
                ends.subscription = Some(Arc::new(bus.subscription()));
                ends.dead_letters = Some(Arc::new(bus.dead_letter_subscription()));
            }
            if role.produces() {
                ends.publisher = Some(Arc::new(bus));
            }
            Ok(ends)
        }
        BusKind::Pubsub => {
            let pubsub = &config.bus.pubsub;
            let mut ends = BusEnds::default();
            if role.produces() {
                let publisher = PubSubPublisher::connect(pubsub).await.context("connecting the Pub/Sub publisher")?;
                ends.publisher = Some(Arc::new(publisher));
            }
            if role.works() {
                let subscription =
                    PubSubSubscription::open(pubsub).await.context("opening the Pub/Sub subscription")?;
                ends.subscription = Some(Arc::new(subscription));
                if pubsub.consume_dead_letters {
                    let dead = PubSubSubscription::open_dead_letters(pubsub)
                        .await
                        .context("opening the Pub/Sub dead-letter subscription")?;
                    ends.dead_letters = Some(Arc::new(dead));
                }
            }
            Ok(ends)
        }
    }
}

/// Runs the parts of the pipeline `role` names in this process.
pub async fn run(config: Config, mode: RunMode, role: Role) -> anyhow::Result<RunReport> {
    run_with(config, mode, role, &[]).await
}

/// [`run`], with only the sources named in `only_sources` (all when empty).
pub async fn run_with(config: Config, mode: RunMode, role: Role, only_sources: &[String]) -> anyhow::Result<RunReport> {
    let catalog = load_catalog(&config)?;
    let mut bus = open_bus(&config, role).await?;
    let gcs = crate::gcs::Gcs::connect(&config.gcs).await.context("connecting to GCS ([gcs])")?;
    if let (Some(gcs), true) = (&gcs, config.gcs.claim_check_bytes > 0) {
        if let Some(publisher) = bus.publisher.take() {
            let claims = ClaimCheckPublisher::new(publisher, gcs.clone(), config.gcs.claim_check_bytes);
            bus.publisher = Some(Arc::new(claims));
        }
    }
    let stop_reading = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = watch::channel(StopMode::Run);

    let mut opened_warehouse = None;
    let worker_task = match (&bus.subscription, role.works()) {
        (Some(subscription), true) => {
            let warehouse: Arc<dyn Warehouse> =
                crate::warehouse::open(&config.warehouse, &config.gcs, catalog.clone()).await.with_context(|| {
                    format!("opening the warehouse ({})", crate::warehouse::describe(&config.warehouse))
                })?;
            warehouse.ensure_tables().await.context("creating tables from schemas/")?;
            opened_warehouse = Some(warehouse.clone());
            let mut worker = Worker::new(
                config.worker.clone(),
                catalog.clone(),
                warehouse,
                subscription.clone(),
                bus.dead_letters.clone(),
            );
            worker.set_claim_store(gcs.clone());
            Some(tokio::spawn(async move {
                let result = worker.run(stop_rx).await;
                result.map(|_| worker.stats)
            }))
        }
        _ => None,
    };

    let mut source_tasks = tokio::task::JoinSet::new();
    let mut triggers = crate::sources::Triggers::default();
    if let Some(publisher) = &bus.publisher {
        let checkpoints = Arc::new(CheckpointStore::open(&config.state_path).context("opening the checkpoint store")?);
        let claim_checks = gcs.is_some() && config.gcs.claim_check_bytes > 0;
        for mut source in build_sources(&config, &catalog, &checkpoints, mode, only_sources, claim_checks)? {
            source.set_stop_flag(stop_reading.clone());
            let trigger = triggers.add(source.name(), source.tables());
            source_tasks.spawn(drive_source(source, publisher.clone(), stop_reading.clone(), mode, trigger));
        }
    }
    start_admin(&config, &catalog, role, opened_warehouse, triggers).await?;

    let signal_stop = {
        let stop_reading = stop_reading.clone();
        let stop_tx = stop_tx.clone();
        let deadline = Duration::from_secs(config.admin.drain_timeout_secs);
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!(deadline_secs = deadline.as_secs(), "shutdown requested: stop reading, flush, ack, exit");
            stop_reading.store(true, Ordering::SeqCst);
            let _ = stop_tx.send(StopMode::Now);
            tokio::time::sleep(deadline).await;
            // Whatever is still unacked is redelivered to another worker and lands there once.
            tracing::error!(
                "drain deadline passed before everything committed; exiting, unacked messages will be redelivered"
            );
            std::process::exit(3);
        })
    };

    let mut events_published = 0;
    while let Some(joined) = source_tasks.join_next().await {
        events_published += joined.context("source task panicked")??;
    }
    if !stop_reading.load(Ordering::SeqCst) {
        let _ = stop_tx.send(StopMode::WhenDrained);
    }
    let worker = match worker_task {
        Some(task) => task.await.context("worker task panicked")??,
        None => WorkerStats::default(),
    };
    signal_stop.abort();
    Ok(RunReport { events_published, worker })
}

/// The configured sources (only those in `only` when it is not empty), ready to drive.
fn build_sources(
    config: &Config,
    catalog: &Arc<Catalog>,
    checkpoints: &Arc<CheckpointStore>,
    mode: RunMode,
    only: &[String],
    claim_checks: bool,
) -> anyhow::Result<Vec<Box<dyn Source>>> {
    let names = config.sources.names();
    if let Some(unknown) = only.iter().find(|n| !names.contains(n)) {
        anyhow::bail!("no source named `{unknown}` in the config; sources: {}", names.join(", "));
    }
    let wanted = |name: &str| only.is_empty() || only.iter().any(|n| n == name);
    let mut sources: Vec<Box<dyn Source>> = Vec::new();
    for source_config in config.sources.jsonl.iter().filter(|s| wanted(&s.name)) {
        let mut source = JsonlSource::new(source_config.clone(), catalog.clone(), checkpoints.clone())?;
        if mode == RunMode::Forever {
            source.watch()?;
        } else {
            std::fs::create_dir_all(&source_config.root)
                .with_context(|| format!("creating {}", source_config.root.display()))?;
        }
        sources.push(Box::new(source));
    }
    for source_config in config.sources.sqlite.iter().filter(|s| wanted(&s.name)) {
        sources.push(Box::new(SqliteSource::new(source_config.clone(), catalog, checkpoints.clone())?));
    }
    for source_config in config.sources.outbox.iter().filter(|s| wanted(&s.name)) {
        let mut source = OutboxSource::new(source_config.clone(), catalog)?;
        if mode == RunMode::Forever {
            source.watch()?;
        }
        sources.push(Box::new(source));
    }
    for source_config in config.sources.sessions.iter().filter(|s| wanted(&s.name)) {
        let mut source = SessionsSource::new(source_config.clone(), catalog, checkpoints.clone(), claim_checks)?;
        if mode == RunMode::Forever {
            source.watch()?;
        }
        sources.push(Box::new(source));
    }
    for source_config in config.sources.http.iter().filter(|s| wanted(&s.name)) {
        sources.push(Box::new(HttpSource::new(source_config.clone(), catalog, checkpoints.clone())?));
    }
    Ok(sources)
}

/// Starts the admin server with readiness probes for the bus and the warehouse this process uses.
async fn start_admin(
    config: &Config,
    catalog: &Arc<Catalog>,
    role: Role,
    warehouse: Option<Arc<dyn Warehouse>>,
    triggers: crate::sources::Triggers,
) -> anyhow::Result<()> {
    let mut probes: Vec<(&'static str, crate::admin::Probe)> = Vec::new();
    if config.bus.kind == crate::config::BusKind::Pubsub {
        let pubsub = config.bus.pubsub.clone();
        let worker = role.works();
        probes.push((
            "bus",
            Box::new(move || {
                let pubsub = pubsub.clone();
                Box::pin(async move { crate::bus::pubsub::ping(&pubsub, worker).await })
            }),
        ));
    }
    if let Some(warehouse) = &warehouse {
        let warehouse = warehouse.clone();
        probes.push((
            "warehouse",
            Box::new(move || {
                let warehouse = warehouse.clone();
                Box::pin(async move { warehouse.ping().await.map_err(|e| e.to_string()) })
            }),
        ));
    }
    let state = crate::admin::AdminState {
        listen: config.admin.listen.clone(),
        state_path: config.state_path.clone(),
        catalog: catalog.clone(),
        warehouse,
        probes,
        triggers,
        token: config.admin.token()?,
    };
    crate::admin::serve(state).await?;
    Ok(())
}

/// Runs one source: passes until drained (one-shot) or until told to stop.
async fn drive_source(
    mut source: Box<dyn Source>,
    publisher: Arc<dyn Publisher>,
    stop: Arc<AtomicBool>,
    mode: RunMode,
    sync_now: Arc<tokio::sync::Notify>,
) -> anyhow::Result<u64> {
    // A one-shot run waits this long between passes for input still being written (pending).
    const PENDING_RECHECK: Duration = Duration::from_millis(250);
    const ONE_SHOT_ATTEMPTS: u32 = 5;
    let mut failures = 0;
    let mut published = 0;
    let mut delay = Duration::from_millis(200);
    while !stop.load(Ordering::SeqCst) {
        match source.emit(publisher.as_ref()).await {
            Ok(outcome) => {
                failures = 0;
                published += outcome.published;
                if outcome.published > 0 {
                    crate::metrics::global().published(source.name(), outcome.published);
                }
                delay = Duration::from_millis(200);
                if mode == RunMode::UntilDrained && outcome.consumed == 0 {
                    if outcome.pending == 0 {
                        tracing::info!(source = source.name(), published, "source drained");
                        break;
                    }
                    source.wait_for_input(PENDING_RECHECK).await;
                }
                if mode == RunMode::Forever && outcome.consumed == 0 {
                    tokio::select! {
                        _ = source.wait_for_input(Duration::from_secs(1)) => {}
                        _ = sync_now.notified() => {
                            tracing::info!(source = source.name(), "sync requested");
                            source.trigger();
                        }
                    }
                }
            }
            Err(e) => {
                failures += 1;
                // A one-shot run reports a source that keeps failing instead of retrying forever.
                if mode == RunMode::UntilDrained
                    && (failures >= ONE_SHOT_ATTEMPTS || matches!(e, SourceError::Config { .. }))
                {
                    return Err(
                        anyhow::Error::new(e).context(format!("source `{}` failed {failures} time(s)", source.name()))
                    );
                }
                // Nothing was checkpointed past the failure: the next pass retries from there.
                tracing::error!(source = source.name(), error = %e, retry_in_ms = delay.as_millis() as u64, "source pass failed");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
    Ok(published)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
