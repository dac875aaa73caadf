//! The one place that builds backends from the configuration: the bus ends a role needs, the
//! warehouse (wrapped in the GCS archive when configured), and the sources. Everything it builds
//! takes only its own section of [`Config`].

use std::sync::Arc;

use anyhow::Context;

use super::{Role, RunMode};
use crate::bus::claim_check::ClaimStore;
use crate::bus::{Publisher, Subscription};
use crate::config::{BusKind, Config};
use crate::schema::Catalog;
use crate::sources::checkpoint::CheckpointStore;
use crate::sources::http::HttpSource;
use crate::sources::jsonl::JsonlSource;
use crate::sources::outbox::OutboxSource;
use crate::sources::sessions::SessionsSource;
use crate::sources::sqlite::SqliteSource;
use crate::sources::Source;
use crate::warehouse::Warehouse;

/// The bus ends a role needs, opened from the config.
#[derive(Default)]
pub(super) struct BusEnds {
    pub(super) publisher: Option<Arc<dyn Publisher>>,
    pub(super) subscription: Option<Arc<dyn Subscription>>,
    pub(super) dead_letters: Option<Arc<dyn Subscription>>,
    /// Held while this process consumes the embedded bus (its consumer lock: one consumer per file).
    pub(super) _consumer_lock: Option<Box<dyn std::any::Any + Send + Sync>>,
}

pub(super) async fn open_bus(config: &Config, role: Role) -> anyhow::Result<BusEnds> {
    match config.bus.kind {
        BusKind::Embedded => open_embedded_bus(config, role),
        BusKind::Pubsub => open_pubsub_bus(config, role).await,
    }
}

#[cfg(feature = "gcp")]
async fn open_pubsub_bus(config: &Config, role: Role) -> anyhow::Result<BusEnds> {
    use crate::bus::pubsub::{PubSubPublisher, PubSubSubscription};
    let pubsub = &config.bus.pubsub;
    let mut ends = BusEnds::default();
    if role.produces() {
        let publisher = PubSubPublisher::connect(pubsub).await.context("connecting the Pub/Sub publisher")?;
        ends.publisher = Some(Arc::new(publisher));
    }
    if role.works() {
        let subscription = PubSubSubscription::open(pubsub).await.context("opening the Pub/Sub subscription")?;
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

#[cfg(not(feature = "gcp"))]
async fn open_pubsub_bus(_: &Config, _: Role) -> anyhow::Result<BusEnds> {
    anyhow::bail!(crate::features::missing("the Pub/Sub bus (`[bus] kind = \"pubsub\"`)", "gcp"))
}

#[cfg(feature = "embedded")]
fn open_embedded_bus(config: &Config, role: Role) -> anyhow::Result<BusEnds> {
    use crate::bus::direct::DirectBus;
    use crate::bus::embedded::EmbeddedBus;
    let bus = EmbeddedBus::open(&config.bus.embedded).context("opening the embedded bus")?;
    let mut ends = BusEnds::default();
    if role.works() {
        ends._consumer_lock = Some(Box::new(bus.claim_consumer().context("claiming the embedded bus")?));
        ends.subscription = Some(Arc::new(bus.subscription()));
        ends.dead_letters = Some(Arc::new(bus.dead_letter_subscription()));
    }
    if role == Role::All && in_process(config) {
        // Sources and worker in one process: events go from one to the other in memory, and the
        // queue file is still drained beside (see `crate::bus::direct`).
        let embedded = &config.bus.embedded;
        let direct = DirectBus::with_rows(embedded.in_process_capacity, bus.subscription(), embedded.in_process_rows);
        ends.subscription = Some(Arc::new(direct.clone()));
        ends.publisher = Some(Arc::new(direct));
    } else if role.produces() {
        ends.publisher = Some(Arc::new(bus));
    }
    Ok(ends)
}

#[cfg(not(feature = "embedded"))]
fn open_embedded_bus(_: &Config, _: Role) -> anyhow::Result<BusEnds> {
    anyhow::bail!(crate::features::missing("the embedded bus (`[bus] kind = \"embedded\"`)", "embedded"))
}

#[cfg(feature = "embedded")]
/// Whether `run` hands events from sources to worker in memory: on, with the DuckDB warehouse. With
/// BigQuery a landing can be refused for minutes: the Storage Write API's throughput and concurrent
/// connections are quotas per project and region, shared by every writer ("Quotas and limits",
/// cloud.google.com/bigquery/quotas, "Storage Write API"), besides outages. The durable queue file
/// then holds what the sources read meanwhile, instead of the sources waiting with it in memory.
fn in_process(config: &Config) -> bool {
    config.bus.embedded.in_process && config.warehouse.kind == crate::config::warehouse::WarehouseKind::Duckdb
}

/// The `[gcs]` bucket, when one is configured.
#[cfg(feature = "gcp")]
pub(super) async fn connect_gcs(config: &Config) -> anyhow::Result<Option<ClaimStore>> {
    crate::gcs::Gcs::connect(&config.gcs).await.context("connecting to GCS ([gcs])")
}

#[cfg(not(feature = "gcp"))]
pub(super) async fn connect_gcs(config: &Config) -> anyhow::Result<Option<ClaimStore>> {
    match &config.gcs.bucket {
        Some(_) => anyhow::bail!(crate::features::missing("a `[gcs]` bucket", "gcp")),
        None => Ok(None),
    }
}

/// Without the `gcp` feature there is no bucket (`ClaimStore` has no values): claim checks are off.
#[cfg(not(feature = "gcp"))]
pub(super) fn with_claim_checks(_: &mut BusEnds, _: &Config, gcs: Option<&ClaimStore>) -> bool {
    gcs.is_some()
}

/// Wraps the publisher in the GCS claim check when `[gcs]` has a bucket and a threshold; returns
/// whether claim checks are on (the sessions source then sends large captures through them).
#[cfg(feature = "gcp")]
pub(super) fn with_claim_checks(bus: &mut BusEnds, config: &Config, gcs: Option<&ClaimStore>) -> bool {
    use crate::bus::claim_check::ClaimCheckPublisher;
    let (Some(gcs), true) = (gcs, config.gcs.claim_check_bytes > 0) else {
        return false;
    };
    if let Some(publisher) = bus.publisher.take() {
        let claims = ClaimCheckPublisher::new(publisher, gcs.clone(), config.gcs.claim_check_bytes);
        bus.publisher = Some(Arc::new(claims));
    }
    true
}

/// The configured warehouse, its tables ensured.
pub(super) async fn open_warehouse(config: &Config, catalog: &Arc<Catalog>) -> anyhow::Result<Arc<dyn Warehouse>> {
    let warehouse = crate::warehouse::open(&config.warehouse, &config.gcs, catalog.clone())
        .await
        .with_context(|| format!("opening the warehouse ({})", crate::warehouse::describe(&config.warehouse)))?;
    warehouse.ensure_tables().await.context("creating tables from schemas/")?;
    Ok(warehouse)
}

/// The configured sources (only those in `only` when it is not empty), ready to drive.
pub(super) fn build_sources(
    config: &Config,
    catalog: &Arc<Catalog>,
    checkpoints: &Arc<CheckpointStore>,
    mode: RunMode,
    only: &[String],
    claim_checks: bool,
) -> anyhow::Result<Vec<Box<dyn Source>>> {
    // A salt missing would publish hashes nobody can match later: refuse to start instead.
    for table in catalog.tables() {
        crate::schema::transform::check_salts(&table.transforms)
            .map_err(|problem| anyhow::anyhow!("schemas/{}.json: {problem}", table.table))?;
    }
    let names = config.sources.names();
    if let Some(unknown) = only.iter().find(|n| !names.contains(n)) {
        anyhow::bail!("no source named `{unknown}` in the config; sources: {}", names.join(", "));
    }
    let wanted = |name: &str| only.is_empty() || only.iter().any(|n| n == name);
    let mut sources: Vec<Box<dyn Source>> = Vec::new();
    for source_config in config.sources.jsonl.iter().filter(|s| wanted(&s.name)) {
        let mut source = JsonlSource::new(source_config.clone(), catalog.clone(), checkpoints.clone())?;
        source.set_max_event_bytes(config.worker.max_event_bytes);
        if mode == RunMode::Forever {
            source.watch()?;
        }
        sources.push(Box::new(source));
    }
    for source_config in config.sources.sqlite.iter().filter(|s| wanted(&s.name)) {
        let mut source = SqliteSource::new(source_config.clone(), catalog, checkpoints.clone())?;
        source.set_max_event_bytes(config.worker.max_event_bytes);
        sources.push(Box::new(source));
    }
    for source_config in config.sources.outbox.iter().filter(|s| wanted(&s.name)) {
        let mut source = OutboxSource::new(source_config.clone(), catalog, checkpoints.clone())?;
        source.set_max_event_bytes(config.worker.max_event_bytes);
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
