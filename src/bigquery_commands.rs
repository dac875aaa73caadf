//! The BigQuery-only commands: `apply`, `cost`, `backfill`, `load`.

use anyhow::Context;

use bqsync::config::Config;
use bqsync::pipeline;

/// The BigQuery warehouse of a BigQuery-only command; `refusal` is the error on another warehouse.
async fn connect_bigquery(
    config: &Config,
    refusal: &str,
) -> anyhow::Result<bqsync::warehouse::bigquery::BigQueryWarehouse> {
    anyhow::ensure!(config.warehouse.kind == bqsync::config::WarehouseKind::Bigquery, "{refusal}");
    let catalog = pipeline::load_catalog(config)?;
    bqsync::warehouse::bigquery::BigQueryWarehouse::connect(&config.warehouse.bigquery, catalog)
        .await
        .context("connecting to BigQuery")
}

/// `bqsync apply`: one apply per table now, a line (or JSON object) per table.
pub async fn apply(config: Config, json: bool) -> anyhow::Result<()> {
    let warehouse =
        connect_bigquery(&config, "bqsync apply is for the BigQuery warehouse; DuckDB applies as it lands").await?;
    let reports = warehouse.apply_all().await.context("applying")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(());
    }
    for r in reports {
        println!(
            "{:<24} {:<9} rows={:<8} billed={}B job={}",
            r.table,
            r.outcome.as_str(),
            r.rows,
            r.bytes_billed,
            r.job_id
        );
    }
    Ok(())
}

/// `bqsync backfill`: a progress bar on a terminal, then the report.
pub async fn backfill(
    config: Config,
    paths: Vec<std::path::PathBuf>,
    table: String,
    apply: bool,
    json: bool,
) -> anyhow::Result<()> {
    let loader = bqsync::load::Loader::connect(&config, "backfill").await?;
    let mut total = 0;
    for path in &paths {
        total += std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len();
    }
    let bar = bqsync::load::progress_bar(total);
    let started = std::time::Instant::now();
    let report = loader.load(&table, &paths, &bar, apply).await?;
    bar.finish_and_clear();
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "backfill {}: {} files, {} rows, {} dead letters, {} in {:.1} s; load jobs: {}",
        report.table,
        report.files.len(),
        report.rows,
        report.dead_letters,
        bytes(report.bytes),
        started.elapsed().as_secs_f64(),
        report.job_ids.join(", ")
    );
    Ok(())
}

/// `bqsync load`: every `[[sources.files]]` entry, until a signal (or one pass with `--once`).
pub async fn load(config: Config, once: bool, json: bool) -> anyhow::Result<()> {
    anyhow::ensure!(!config.sources.files.is_empty(), "no [[sources.files]] in the config: nothing to load");
    let store = bqsync::sources::checkpoint::CheckpointStore::open(&config.state_path)?;
    let shutdown = bqsync::shutdown::Shutdown::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        pipeline::shutdown_signal().await;
        signal.stop();
    });
    let mut loaders = Vec::new();
    for source in &config.sources.files {
        loaders.push((bqsync::load::Loader::connect(&config, &source.name).await?, source));
    }
    // Every source at once, each in passes of its own until the signal (or one pass with --once).
    let runs = loaders
        .iter()
        .map(|(loader, source)| bqsync::load::source::run(loader, source, &store, once, shutdown.clone()));
    let reports: Vec<_> = futures::future::try_join_all(runs).await?.into_iter().flatten().collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for r in &reports {
            println!(
                "{:<22} files={} rows={} dead_letters={} jobs={}",
                r.table,
                r.files.len(),
                r.rows,
                r.dead_letters,
                r.job_ids.join(",")
            );
        }
    }
    Ok(())
}

/// `bqsync cost`: the forecast, a line per table and the day's total.
pub async fn cost(config: Config, json: bool) -> anyhow::Result<()> {
    let warehouse =
        connect_bigquery(&config, "bqsync cost is for the BigQuery warehouse; DuckDB bills nothing").await?;
    let f = warehouse.forecast().await.context("forecasting")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&f)?);
        return Ok(());
    }
    println!(
        "{:<22} {:>9} {:>12} {:>12} {:>13} {:>9} {:>12} {:>9}",
        "table", "interval", "table", "landing", "per apply", "jobs/day", "bytes/day", "$/day"
    );
    for t in &f.tables {
        let interval = if t.interval_secs == t.configured_interval_secs {
            format!("{}s", t.interval_secs)
        } else {
            format!("{}s*", t.interval_secs)
        };
        let per_apply = format!("{}{}", bytes(t.bytes_per_apply), if t.measured { "" } else { " est" });
        println!(
            "{:<22} {:>9} {:>12} {:>12} {:>13} {:>9.0} {:>12} {:>9.2}",
            t.table,
            interval,
            bytes(t.table_bytes),
            bytes(t.landing_bytes),
            per_apply,
            t.applies_per_day,
            bytes(t.bytes_per_day),
            t.dollars_per_day
        );
    }
    let budget = if f.daily_byte_budget > 0 { bytes(f.daily_byte_budget) } else { "none".into() };
    println!(
        "total: {}/day, ${:.2}/day at ${}/TiB; daily budget {budget}{}",
        bytes(f.bytes_per_day),
        f.dollars_per_day,
        f.price_per_tib,
        if f.over_budget { " — OVER BUDGET even at max_apply_interval_secs" } else { "" }
    );
    if f.tables.iter().any(|t| t.interval_secs != t.configured_interval_secs) {
        println!("* stretched to fit the daily budget (landing and the live views are unaffected)");
    }
    Ok(())
}

/// Bytes in binary units, e.g. `10.00 MiB`.
fn bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}
