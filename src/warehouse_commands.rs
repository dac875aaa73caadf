//! The commands that read or land into the warehouse beside the pipeline: `dlq`, `sql`, `replay`.
//! With the embedded warehouse held by a running bqsync they go through it (see
//! `bqsync::warehouse::remote`); otherwise they open the warehouse themselves.

use std::sync::Arc;

use anyhow::Context;
use bqsync::config::Config;
use bqsync::pipeline;
use bqsync::warehouse::Warehouse;

use crate::{DlqCommand, FilterArgs};

/// `bqsync replay`: `edits` are the `--set`, `--drop` and `--rename` arguments.
pub async fn replay(
    config: Config,
    filter: FilterArgs,
    dry_run: bool,
    edits: (&[String], &[String], &[String]),
    json: bool,
) -> anyhow::Result<()> {
    let (set, drop, rename) = edits;
    let edits = bqsync::dlq::Edits::parse(set, drop, rename)?;
    let catalog = pipeline::load_catalog(&config)?;
    let running = running_warehouse(&config)?;
    let warehouse = if let Some(running) = running {
        running
    } else if dry_run {
        read_only_warehouse(&config, catalog.clone()).await?
    } else {
        let warehouse = bqsync::warehouse::open(&config.warehouse, &config.gcs, catalog.clone())
            .await
            .context("opening the warehouse")?;
        warehouse.ensure_tables().await.context("creating tables from schemas/")?;
        warehouse
    };
    let records = warehouse.dead_letters(&filter.into_filter()?).await?;
    let summary = bqsync::dlq::replay(records, &edits, catalog, warehouse, dry_run, json).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        for event in &summary.events {
            println!(
                "{:<14} {:<16} {:<14} {}",
                &event.dead_letter_id[..12],
                event.table.as_deref().unwrap_or("?"),
                event.outcome,
                event.detail
            );
        }
        println!(
            "{}selected {}, valid {}, landed new {}, already present {}, still failing {}",
            if dry_run { "dry run (nothing changed): " } else { "" },
            summary.selected,
            summary.valid,
            summary.landed_new,
            summary.already_present,
            summary.still_failing
        );
    }
    Ok(())
}

/// The warehouse of a bqsync running in this project with the embedded warehouse, if one runs.
fn running_warehouse(config: &Config) -> anyhow::Result<Option<Arc<dyn Warehouse>>> {
    let token = config.admin.token()?;
    Ok(bqsync::warehouse::remote::running_warehouse(&config.warehouse, &config.state_path, token))
}

/// The warehouse for reading: `dlq`, `sql` and `replay --dry-run` change nothing (DuckDB: the running
/// process's, or the file opened read-only).
pub async fn read_only_warehouse(
    config: &Config,
    catalog: Arc<bqsync::schema::Catalog>,
) -> anyhow::Result<Arc<dyn Warehouse>> {
    if let Some(running) = running_warehouse(config)? {
        return Ok(running);
    }
    if config.warehouse.kind == bqsync::config::WarehouseKind::Bigquery {
        // BigQuery takes any number of readers; reading needs no archive (no `[gcs]`).
        let no_archive = bqsync::config::GcsConfig::default();
        return Ok(bqsync::warehouse::open(&config.warehouse, &no_archive, catalog).await?);
    }
    open_duckdb_read_only(config, catalog)
}

/// The DuckDB file, opened read-only.
#[cfg(feature = "embedded")]
fn open_duckdb_read_only(config: &Config, catalog: Arc<bqsync::schema::Catalog>) -> anyhow::Result<Arc<dyn Warehouse>> {
    let path = &config.warehouse.duckdb.path;
    anyhow::ensure!(path.exists(), "no warehouse at {} yet", path.display());
    let warehouse = bqsync::warehouse::duckdb::DuckDbWarehouse::open_read_only(path, catalog).with_context(|| {
        format!(
            "reading {} (DuckDB allows one process at a time; a bqsync holding it is reached through its admin API, \
             which needs `admin.listen` on and the admin token set for both)",
            path.display()
        )
    })?;
    Ok(Arc::new(warehouse))
}

#[cfg(not(feature = "embedded"))]
fn open_duckdb_read_only(_: &Config, _: Arc<bqsync::schema::Catalog>) -> anyhow::Result<Arc<dyn Warehouse>> {
    anyhow::bail!(bqsync::features::missing("reading the DuckDB warehouse", "embedded"))
}

/// `bqsync sql QUERY`.
pub async fn sql(config: Config, query: &str, json: bool) -> anyhow::Result<()> {
    let catalog = pipeline::load_catalog(&config)?;
    let warehouse = read_only_warehouse(&config, catalog).await?;
    let result = warehouse.query_read_only(query).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print!("{}", bqsync::status::render_query(&result));
    }
    Ok(())
}

/// `bqsync dlq list | show | stats`.
pub async fn dlq(config: Config, command: DlqCommand) -> anyhow::Result<()> {
    let catalog = pipeline::load_catalog(&config)?;
    let warehouse = read_only_warehouse(&config, catalog).await?;
    match command {
        DlqCommand::List { filter, json } => {
            let records = warehouse.dead_letters(&filter.into_filter()?).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&records)?);
            } else {
                print!("{}", bqsync::dlq::render_list(&records));
            }
        }
        DlqCommand::Show { id, json } => {
            let filter = bqsync::warehouse::DeadLetterFilter { ids: vec![id.clone()], ..Default::default() };
            let records = warehouse.dead_letters(&filter).await?;
            anyhow::ensure!(!records.is_empty(), "no dead letter with id or event id {id:?}");
            anyhow::ensure!(
                records.len() == 1,
                "{} dead letters match {id:?}; give more of the id: {}",
                records.len(),
                records.iter().map(|r| &r.dead_letter_id[..16]).collect::<Vec<_>>().join(", ")
            );
            if json {
                println!("{}", serde_json::to_string_pretty(&records[0])?);
            } else {
                print!("{}", bqsync::dlq::render_show(&records[0]));
            }
        }
        DlqCommand::Stats { filter, json, prometheus } => {
            let records = warehouse.dead_letters(&filter.into_filter()?).await?;
            let stats = bqsync::dlq::stats(&records);
            if prometheus {
                print!("{}", bqsync::dlq::render_prometheus(&stats));
            } else if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                print!("{}", bqsync::dlq::render_stats(&stats));
            }
        }
    }
    Ok(())
}
