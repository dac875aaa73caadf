//! Wires sources → bus → worker → warehouse from a [`Config`] and runs them until drained or stopped,
//! in three steps: [`open`] the parts (backends are built in one place, `backends`), spawn their
//! tasks, wait for them.
//!
//! Shutdown (see [`crate::shutdown`]): on SIGINT/SIGTERM sources stop reading at their next publish
//! boundary (their checkpoints cover exactly what was published), the worker stops pulling, flushes
//! and acks what it holds, and the run returns. Whatever was leased but not landed is redelivered on
//! the next start. A drain that outruns `admin.drain_timeout_secs` returns [`DrainDeadlinePassed`].

mod backends;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::bus::Publisher;
use crate::config::Config;
use crate::schema::Catalog;
use crate::shutdown::Shutdown;
use crate::sources::checkpoint::CheckpointStore;
use crate::sources::{EmitOutcome, Source, SourceError};
use crate::warehouse::Warehouse;
use crate::worker::{Worker, WorkerStats};
use backends::BusEnds;

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
    /// Input the sources saw and did not publish (partial last lines, files no route matches).
    pub unread: Vec<crate::sources::UnreadInput>,
}

/// Loads the table catalog named by the config, with a hint when it is missing.
pub fn load_catalog(config: &Config) -> anyhow::Result<Arc<Catalog>> {
    match Catalog::load_dir(&config.schemas_dir) {
        Ok(catalog) => Ok(Arc::new(catalog)),
        // Only a missing folder needs the hint; an error in a file names the file and the problem.
        Err(e @ crate::schema::SchemaError::ReadDir { .. }) => Err(anyhow::Error::new(e).context(format!(
            "loading table definitions (schemas_dir = {}: relative to the config file's folder; set it in the config)",
            config.schemas_dir.display()
        ))),
        Err(e) => Err(e.into()),
    }
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

/// The drain after SIGINT/SIGTERM did not finish within `admin.drain_timeout_secs`: what is still
/// unacked is redelivered and lands once elsewhere. `main` exits with code 3.
#[derive(Debug, thiserror::Error)]
#[error("drain deadline of {0} s passed before everything committed; unacked messages will be redelivered")]
pub struct DrainDeadlinePassed(pub u64);

/// Runs the parts of the pipeline `role` names in this process.
pub async fn run(config: Config, mode: RunMode, role: Role) -> anyhow::Result<RunReport> {
    run_with(config, mode, role, &[]).await
}

/// [`run`], with only the sources named in `only_sources` (all when empty).
pub async fn run_with(config: Config, mode: RunMode, role: Role, only_sources: &[String]) -> anyhow::Result<RunReport> {
    let parts = open(&config, mode, role, only_sources).await?;
    let shutdown = Shutdown::new();
    let running = spawn(&config, parts, mode, role, shutdown.clone()).await?;
    wait(running, shutdown, Duration::from_secs(config.admin.drain_timeout_secs)).await
}

/// The parts of a run, opened and not yet running.
pub struct Opened {
    catalog: Arc<Catalog>,
    bus: BusEnds,
    gcs: Option<crate::bus::claim_check::ClaimStore>,
    warehouse: Option<Arc<dyn Warehouse>>,
    sources: Vec<Box<dyn Source>>,
    /// The state file, where the sources' passes are recorded.
    checkpoints: Option<Arc<CheckpointStore>>,
}

/// Opens what `role` needs: the bus ends, the warehouse (for a worker) and the sources (for a
/// producer). Nothing runs yet.
pub async fn open(config: &Config, mode: RunMode, role: Role, only_sources: &[String]) -> anyhow::Result<Opened> {
    let catalog = load_catalog(config)?;
    let mut bus = backends::open_bus(config, role).await?;
    let gcs = backends::connect_gcs(config).await?;
    let claim_checks = backends::with_claim_checks(&mut bus, config, gcs.as_ref());
    let warehouse = match (&bus.subscription, role.works()) {
        (Some(_), true) => Some(backends::open_warehouse(config, &catalog).await?),
        _ => None,
    };
    let mut sources = Vec::new();
    let mut store = None;
    if bus.publisher.is_some() {
        let checkpoints = Arc::new(CheckpointStore::open(&config.state_path).context("opening the checkpoint store")?);
        sources = backends::build_sources(config, &catalog, &checkpoints, mode, only_sources, claim_checks)?;
        store = Some(checkpoints);
    }
    Ok(Opened { catalog, bus, gcs, warehouse, sources, checkpoints: store })
}

/// Tasks of a run.
pub struct Running {
    worker: Option<tokio::task::JoinHandle<Result<WorkerStats, crate::warehouse::WarehouseError>>>,
    /// The warehouse of the worker, settled before a one-shot run returns.
    warehouse: Option<Arc<dyn Warehouse>>,
    /// One-shot or service: a service's worker runs until stopped, even with no sources here.
    mode: RunMode,
    /// The warehouse's background upkeep (the BigQuery applier).
    upkeep: Option<tokio::task::JoinHandle<()>>,
    sources: tokio::task::JoinSet<anyhow::Result<SourceResult>>,
    /// Held for the run (the embedded bus's consumer lock).
    _bus: BusEnds,
}

/// Spawns the worker, the sources, the admin server and the signal handler.
pub async fn spawn(
    config: &Config,
    parts: Opened,
    mode: RunMode,
    role: Role,
    shutdown: Shutdown,
) -> anyhow::Result<Running> {
    let Opened { catalog, bus, gcs, warehouse, sources, checkpoints } = parts;
    let worker = match (&bus.subscription, &warehouse) {
        (Some(subscription), Some(warehouse)) => {
            let mut worker = Worker::new(
                config.worker.clone(),
                catalog.clone(),
                warehouse.clone(),
                subscription.clone(),
                bus.dead_letters.clone(),
            );
            worker.set_claim_store(gcs);
            let shutdown = shutdown.clone();
            Some(tokio::spawn(async move { worker.run(shutdown).await.map(|_| worker.stats) }))
        }
        _ => None,
    };
    let mut source_tasks = tokio::task::JoinSet::new();
    let mut triggers = crate::sources::Triggers::default();
    if let Some(publisher) = &bus.publisher {
        for mut source in sources {
            source.set_shutdown(shutdown.clone());
            let trigger = triggers.add(source.name(), source.tables());
            let history = checkpoints.clone();
            source_tasks.spawn(drive_source(source, publisher.clone(), shutdown.clone(), mode, trigger, history));
        }
    }
    let upkeep = warehouse.clone().filter(|_| worker.is_some()).map(|warehouse| {
        let shutdown = shutdown.clone();
        tokio::spawn(async move { warehouse.maintain(shutdown).await })
    });
    let settle = warehouse.clone().filter(|_| worker.is_some() && mode == RunMode::UntilDrained);
    let queue = bus.subscription.clone().filter(|_| worker.is_some());
    start_admin(config, &catalog, role, warehouse, triggers, queue).await?;
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested: stop reading, flush, ack, exit");
        on_signal.stop();
    });
    Ok(Running { worker, warehouse: settle, mode, upkeep, sources: source_tasks, _bus: bus })
}

/// Waits for the sources, tells the worker when input is drained, and waits for it; once a stop
/// was requested, for at most `drain_deadline`.
pub async fn wait(running: Running, shutdown: Shutdown, drain_deadline: Duration) -> anyhow::Result<RunReport> {
    let deadline = async {
        shutdown.stopped().await;
        tokio::time::sleep(drain_deadline).await;
    };
    tokio::select! {
        report = finish(running, &shutdown) => report,
        _ = deadline => {
            tracing::error!(deadline_secs = drain_deadline.as_secs(), "drain deadline passed before everything committed");
            Err(DrainDeadlinePassed(drain_deadline.as_secs()).into())
        }
    }
}

async fn finish(mut running: Running, shutdown: &Shutdown) -> anyhow::Result<RunReport> {
    let mut events_published = 0;
    let mut unread = Vec::new();
    while let Some(joined) = running.sources.join_next().await {
        let source = joined.context("source task panicked")??;
        events_published += source.published;
        unread.extend(source.unread);
    }
    // A service (`work`, `run` without --until-drained) keeps its worker until a stop: sources that
    // ended (or none, for `bqsync work`) do not mean the bus will stay empty.
    if running.mode == RunMode::UntilDrained && !shutdown.is_stopping() {
        shutdown.input_drained();
    }
    let worker = match running.worker.take() {
        Some(task) => task.await.context("worker task panicked")??,
        None => WorkerStats::default(),
    };
    // A one-shot run returns with every row in the tables themselves (BigQuery: applied now).
    if let (Some(warehouse), false) = (&running.warehouse, shutdown.is_stopping()) {
        warehouse.settle().await.context("applying the landed rows")?;
    }
    if let Some(upkeep) = running.upkeep.take() {
        upkeep.abort();
    }
    Ok(RunReport { events_published, worker, unread })
}

/// Readiness of the Pub/Sub bus: its topic and subscription answer (the embedded bus is a local
/// file: no probe).
#[cfg(feature = "gcp")]
fn bus_probe(config: &Config, role: Role) -> Option<(&'static str, crate::admin::Probe)> {
    if config.bus.kind != crate::config::BusKind::Pubsub {
        return None;
    }
    let pubsub = config.bus.pubsub.clone();
    let worker = role.works();
    Some((
        "bus",
        Box::new(move || {
            let pubsub = pubsub.clone();
            Box::pin(async move { crate::bus::pubsub::ping(&pubsub, worker).await })
        }),
    ))
}

/// Without the `gcp` feature the bus is the embedded one: no probe.
#[cfg(not(feature = "gcp"))]
fn bus_probe(_: &Config, _: Role) -> Option<(&'static str, crate::admin::Probe)> {
    None
}

/// Starts the admin server with readiness probes for the bus and the warehouse this process uses.
async fn start_admin(
    config: &Config,
    catalog: &Arc<Catalog>,
    role: Role,
    warehouse: Option<Arc<dyn Warehouse>>,
    triggers: crate::sources::Triggers,
    queue: Option<Arc<dyn crate::bus::Subscription>>,
) -> anyhow::Result<()> {
    let mut probes: Vec<(&'static str, crate::admin::Probe)> = Vec::new();
    probes.extend(bus_probe(config, role));
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
        queue,
    };
    crate::admin::serve(state).await?;
    Ok(())
}

/// What one source did in a run.
struct SourceResult {
    published: u64,
    unread: Vec<crate::sources::UnreadInput>,
}

/// Runs one source: passes until drained (one-shot) or until told to stop.
async fn drive_source(
    mut source: Box<dyn Source>,
    publisher: Arc<dyn Publisher>,
    shutdown: Shutdown,
    mode: RunMode,
    sync_now: Arc<crate::sources::SyncRequest>,
    history: Option<Arc<CheckpointStore>>,
) -> anyhow::Result<SourceResult> {
    // A one-shot run waits this long between passes for input still being written (pending).
    const PENDING_RECHECK: Duration = Duration::from_millis(250);
    const ONE_SHOT_ATTEMPTS: u32 = 5;
    let mut failures = 0;
    let mut published = 0;
    // Between failing passes: 200 ms growing to 30 s (see crate::retry), reset by a good pass.
    let mut pacer = crate::retry::Policy::exponential(Duration::from_millis(200), Duration::from_secs(30)).pacer();
    while !shutdown.is_stopping() {
        let started = chrono::Utc::now().timestamp_micros();
        let result = source.emit(publisher.as_ref()).await;
        if let Some(store) = &history {
            record_pass(store, source.as_ref(), started, &result);
        }
        match result {
            Ok(outcome) => {
                failures = 0;
                published += outcome.published;
                if outcome.published > 0 {
                    crate::metrics::global().published(source.name(), outcome.published);
                }
                pacer.reset();
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
                        _ = sync_now.notify.notified() => {
                            let full = sync_now.take_full();
                            tracing::info!(source = source.name(), full, "sync requested");
                            if full { source.trigger_full() } else { source.trigger() }
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
                let pause = pacer.next_pause();
                tracing::error!(source = source.name(), error = %e, retry_in_ms = pause.as_millis() as u64, "source pass failed");
                tokio::time::sleep(pause).await;
            }
        }
    }
    let unread = source.unread();
    for input in &unread {
        tracing::warn!(source = source.name(), "not landed: {input}");
    }
    Ok(SourceResult { published, unread })
}

/// Records a whole-source pass in the history when it did work, failed, or was a scheduled pass of a
/// polling source (see `crate::sources::history`). A failure to record is logged, never fatal.
fn record_pass(store: &CheckpointStore, source: &dyn Source, started: i64, result: &Result<EmitOutcome, SourceError>) {
    let (published, error, full) = match result {
        Ok(o) if o.skipped || (o.consumed == 0 && !source.records_empty_passes()) => return,
        Ok(o) => (o.published, None, o.full),
        Err(e) => (0, Some(e.to_string()), false),
    };
    let pass = crate::sources::history::Pass {
        source: source.name().to_string(),
        table: crate::sources::history::WHOLE_SOURCE.into(),
        started_micros: started,
        finished_micros: chrono::Utc::now().timestamp_micros(),
        published,
        error,
        full,
    };
    if let Err(e) = crate::sources::history::record(store, &pass) {
        tracing::warn!(source = source.name(), error = %e, "cannot record the pass in the history");
    }
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
