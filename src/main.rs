//! The `bqsync` command line.

use std::path::PathBuf;

// mimalloc: the Pub/Sub client allocates per message (ack ids, attribute maps) from several threads;
// glibc's malloc spent about a third of the consume CPU on it (perf, benches/pubsub.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use bqsync::config::{BusKind, Config};
use bqsync::pipeline::{self, Role, RunMode};

#[cfg(feature = "gcp")]
mod bigquery_commands;
mod schema_commands;
mod warehouse_commands;

/// Syncs local and operational data into a warehouse, exactly once in effect.
#[derive(Parser)]
#[command(version = concat!(env!("CARGO_PKG_VERSION"), " (features: ", env!("BQSYNC_FEATURES"), ")"), about)]
struct Cli {
    /// Config file (TOML). Default: ./bqsync.toml if present, else built-in defaults.
    #[arg(long, global = true, env = "BQSYNC_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum SchemaCommand {
    /// Draft `schemas/TABLE.json` from a SQLite or DuckDB table, a JSONL file or the table's
    /// `unknown_table` dead letters; prints it, with a diff against the existing file.
    Infer {
        /// The table to draft (the file's name).
        table: String,
        #[command(flatten)]
        from: schema_commands::InferFrom,
        /// The table's name in the database, when it differs.
        #[arg(long = "from", value_name = "TABLE")]
        source_table: Option<String>,
        /// Records read from a JSONL file or the dead letters. Default 1000.
        #[arg(long, default_value_t = 1000)]
        sample: usize,
        /// Write the draft to schemas/TABLE.json (never without it).
        #[arg(long)]
        write: bool,
    },
}

#[derive(Subcommand)]
enum InfraCommand {
    /// Terraform JSON for the BigQuery tables (write it to infra/terraform/tables.tf.json).
    TerraformTables,
}

#[derive(Subcommand)]
enum Command {
    /// Run sources and worker in this process.
    Run {
        /// Exit once all current input is landed (one-shot), instead of watching for more.
        #[arg(long)]
        until_drained: bool,
        /// With --until-drained, serve the admin API (health, metrics) while it runs; one-shot runs
        /// serve none unless asked, so they never contend for a service's port.
        #[arg(long)]
        admin: bool,
    },
    /// Run the sources only: publish change events to the bus (next to the data).
    Produce {
        /// Exit once all current input is published, instead of watching for more.
        #[arg(long)]
        until_drained: bool,
        /// With --until-drained, serve the admin API (health, metrics) while it runs; one-shot runs
        /// serve none unless asked, so they never contend for a service's port.
        #[arg(long)]
        admin: bool,
    },
    /// Run the worker only: land what the bus delivers (on GKE, say).
    Work {
        /// Exit once the bus is drained (Pub/Sub: nothing delivered for `bus.pubsub.drain_quiet_ms`).
        #[arg(long)]
        until_drained: bool,
        /// With --until-drained, serve the admin API (health, metrics) while it runs; one-shot runs
        /// serve none unless asked, so they never contend for a service's port.
        #[arg(long)]
        admin: bool,
    },
    /// Run sources once now: publish what is new, then exit (all sources, or those named).
    /// A running service is triggered with `POST /sync` on its admin API instead.
    Sync {
        /// Source names (`name` in the config). Default: every source.
        sources: Vec<String>,
        /// Forget the sources' watermarks, cursors and file checkpoints first, so everything is
        /// published again (it lands once: event ids are deterministic).
        #[arg(long)]
        full: bool,
        /// Also run the worker until the bus is drained (the embedded default with no service running).
        #[arg(long)]
        land: bool,
        /// Serve the admin API (health, metrics) while it runs.
        #[arg(long)]
        admin: bool,
    },
    /// Forget where a source, or one table of it, stands: its next pass publishes everything again
    /// (it lands once). `SOURCE` or `SOURCE:TABLE`. Keys deleted at the source before the reset
    /// still get their tombstones. A running service's SQLite and HTTP sources pick it up at their
    /// next pass, JSONL and sessions at the next start.
    Reset {
        /// `SOURCE` or `SOURCE:TABLE` (the table's name in the source, or its destination table).
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// The last passes of the sources (newest first): when, how long, events published, outcome.
    History {
        /// `SOURCE` or `SOURCE:TABLE` (a SQLite source's table; `SOURCE:*` its whole passes).
        target: Option<String>,
        /// At most this many passes. Default 50.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create the bus resources from the config (Pub/Sub topics and subscriptions with their
    /// dead-letter and retry policies) and the warehouse tables; idempotent.
    Setup,
    /// BigQuery: apply the landed rows of every table into the table now, one transaction per
    /// table (workers do this on their own at each table's apply interval).
    Apply {
        /// Print the reports as JSON.
        #[arg(long)]
        json: bool,
    },
    /// BigQuery: load whole files into TABLE with load jobs (free, unlike streaming): validate each
    /// line (bad ones become dead letters), archive the file and its rows to GCS, load, apply.
    /// Loading the same files again lands nothing twice.
    Backfill {
        /// JSONL or JSON-array files.
        #[arg(required = true)]
        paths: Vec<std::path::PathBuf>,
        /// Destination table (a schema in schemas/).
        #[arg(long)]
        table: String,
        /// Leave the apply to the running applier.
        #[arg(long)]
        no_apply: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// BigQuery: run the `[[sources.files]]` loaders: load complete files as they appear.
    Load {
        /// One pass: load what is complete now, apply it, exit.
        #[arg(long)]
        once: bool,
        /// Print the reports as JSON.
        #[arg(long)]
        json: bool,
    },
    /// BigQuery: the cost forecast per table (interval, sizes, bytes per apply, jobs, bytes and $ a
    /// day) against `cost.daily_byte_budget`, at the intervals the budget allows.
    Cost {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show queue depth, dead letters by reason, rows per table and checkpoint lag.
    Status {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Print the effective configuration (defaults, file and environment overrides merged) as TOML
    /// that can be pasted into a `bqsync.toml`; relative paths are printed resolved.
    Config {
        /// Print JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Draft schema files.
    Schema {
        #[command(subcommand)]
        command: SchemaCommand,
    },
    /// Generate infrastructure files from `schemas/`.
    Infra {
        #[command(subcommand)]
        command: InfraCommand,
    },
    /// Run one read-only SQL query on the embedded warehouse, also while bqsync runs (then through
    /// the running process's admin API, with the admin token). At most 10,000 rows.
    Sql {
        /// The query: one SELECT (or SHOW, DESCRIBE, SUMMARIZE).
        query: String,
        /// Print JSON (`{"columns": [...], "rows": [[...]]}`) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Inspect dead letters (the warehouse's `dead_letters` table).
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Replay dead letters through today's schemas into the warehouse; replayed events keep their
    /// event ids, so replaying twice lands once.
    Replay {
        #[command(flatten)]
        filter: FilterArgs,
        /// Validate and report, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Set a payload field: FIELD=VALUE (VALUE as JSON when it parses, else a string). Repeatable.
        #[arg(long = "set", value_name = "FIELD=VALUE")]
        set: Vec<String>,
        /// Remove a payload field. Repeatable.
        #[arg(long = "drop", value_name = "FIELD")]
        drop: Vec<String>,
        /// Rename a payload field: OLD=NEW. Repeatable.
        #[arg(long = "rename", value_name = "OLD=NEW")]
        rename: Vec<String>,
        /// Print the summary as JSON (with every event on a dry run).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Dead letters, newest first.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long)]
        json: bool,
    },
    /// Every field of one dead letter (by dead-letter id, any prefix of it, or an event id).
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Counts by table and reason.
    Stats {
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long)]
        json: bool,
        /// Prometheus text format (for node_exporter's textfile collector and alerts).
        #[arg(long, conflicts_with = "json")]
        prometheus: bool,
    },
}

/// Which dead letters a command reads.
#[derive(Args)]
struct FilterArgs {
    /// Only this table.
    #[arg(long)]
    table: Option<String>,
    /// Only this reason: decode, schema, unknown_table, oversize, warehouse_rejected, max_attempts.
    #[arg(long)]
    reason: Option<String>,
    /// Last failure at or after: RFC 3339, a date (2026-11-22) or an age (30m, 2h, 7d).
    #[arg(long)]
    since: Option<String>,
    /// Last failure before (same forms as --since).
    #[arg(long)]
    until: Option<String>,
    /// Only these dead-letter ids (or any prefix of one) or event ids. Repeatable.
    #[arg(long = "id", value_name = "ID")]
    ids: Vec<String>,
    /// At most this many.
    #[arg(long)]
    limit: Option<usize>,
}

impl FilterArgs {
    fn into_filter(self) -> anyhow::Result<bqsync::warehouse::DeadLetterFilter> {
        bqsync::dlq::filter(self.table, self.reason, self.since.as_deref(), self.until.as_deref(), self.ids, self.limit)
    }
}

impl Command {
    /// Commands whose output is read by a person or piped into `head`, `grep` or `jq`.
    fn prints_for_a_pipe(&self) -> bool {
        matches!(
            self,
            Command::Config { .. }
                | Command::History { .. }
                | Command::Dlq { .. }
                | Command::Sql { .. }
                | Command::Status { .. }
                | Command::Infra { .. }
                | Command::Cost { .. }
        )
    }
}

/// Restores SIGPIPE's default action, so `bqsync dlq list | head` ends quietly when `head` closes the
/// pipe, as Unix tools do, instead of panicking in `println!` (Rust ignores SIGPIPE by default). Only
/// for the printing commands: the services keep ignoring it.
fn exit_quietly_on_closed_pipe() {
    // SAFETY: sets SIGPIPE's process-wide action to SIG_DFL, a valid action; nothing in bqsync
    // installs a SIGPIPE handler that this could replace.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Turns transparent huge pages off for this process (`prctl(PR_SET_THP_DISABLE)`), unless
/// `MIMALLOC_ALLOW_THP` says otherwise. mimalloc asks for huge pages by default, so each fresh part
/// of its arenas was faulted in and zeroed 2 MiB at a time, touched or not (`perf`: 5–7 % of a 1M-row
/// SQLite sync's CPU in the kernel zeroing them). Without them the 1M-row benchmarks peaked about
/// 20 MB lower and ran 2–3 % faster (docs/benchmarks.md). The kernel checks the flag at each fault,
/// so setting it first thing covers DuckDB's allocator too.
fn disable_transparent_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return; // mimalloc reads it and sets the flag itself (0) or keeps huge pages (1)
    }
    // SAFETY: PR_SET_THP_DISABLE takes an int flag and no pointers; it only changes which page size
    // the kernel backs later faults with. A kernel without it returns EINVAL, which is harmless.
    #[cfg(target_os = "linux")]
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

fn main() -> std::process::ExitCode {
    disable_transparent_huge_pages();
    if let Err(e) = bqsync::logging::init() {
        eprintln!("bqsync: error: {e}");
        return std::process::ExitCode::from(2);
    }
    let cli = Cli::parse();
    if cli.command.prints_for_a_pipe() {
        exit_quietly_on_closed_pipe();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(execute(cli));
    bqsync::logging::shutdown();
    // A landing still blocked in a thread (past a drain deadline) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bqsync: error: {}", describe_error(&e));
            if e.downcast_ref::<pipeline::DrainDeadlinePassed>().is_some() {
                return std::process::ExitCode::from(3);
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes, one `: ` apart, leaving out a cause whose text an outer message already
/// quotes (most of bqsync's errors name their cause themselves).
fn describe_error(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let message = cause.to_string();
        if text.contains(message.trim()) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(message.trim());
    }
    text
}

async fn execute(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref(), std::env::vars()).context("reading the configuration")?;
    match cli.command {
        Command::Run { until_drained, admin } => run(config, until_drained, admin, Role::All).await?,
        Command::Produce { until_drained, admin } => run(config, until_drained, admin, Role::Produce).await?,
        Command::Work { until_drained, admin } => run(config, until_drained, admin, Role::Work).await?,
        Command::Sync { sources, full, land, admin } => sync(config, sources, full, land, admin).await?,
        Command::Setup => setup(config).await?,
        Command::Schema { command: SchemaCommand::Infer { table, from, source_table, sample, write } } => {
            schema_commands::infer(config, table, from, source_table, sample, write).await?
        }
        Command::History { target, limit, json } => {
            let store = bqsync::sources::checkpoint::CheckpointStore::open(&config.state_path)
                .context("opening the checkpoint store")?;
            let (source, table) = match target.as_deref().map(|t| t.split_once(':').unwrap_or((t, ""))) {
                Some((source, table)) => (Some(source), Some(table).filter(|t| !t.is_empty())),
                None => (None, None),
            };
            let passes = bqsync::sources::history::passes(&store, source, table, limit)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&passes)?);
            } else {
                print!("{}", bqsync::sources::history::render(&passes));
            }
        }
        Command::Reset { targets } => {
            let store = bqsync::sources::checkpoint::CheckpointStore::open(&config.state_path)
                .context("opening the checkpoint store")?;
            for target in &targets {
                let done =
                    bqsync::sources::reset::reset(&config.sources, &store, target).map_err(anyhow::Error::msg)?;
                println!("{done}");
            }
        }
        #[cfg(feature = "gcp")]
        Command::Apply { json } => bigquery_commands::apply(config, json).await?,
        #[cfg(feature = "gcp")]
        Command::Cost { json } => bigquery_commands::cost(config, json).await?,
        #[cfg(feature = "gcp")]
        Command::Backfill { paths, table, no_apply, json } => {
            bigquery_commands::backfill(config, paths, table, !no_apply, json).await?
        }
        #[cfg(feature = "gcp")]
        Command::Load { once, json } => bigquery_commands::load(config, once, json).await?,
        #[cfg(not(feature = "gcp"))]
        Command::Apply { .. } | Command::Cost { .. } | Command::Backfill { .. } | Command::Load { .. } => {
            anyhow::bail!(bqsync::features::missing("this BigQuery command", "gcp"))
        }
        Command::Status { json } => {
            let catalog = pipeline::load_catalog(&config)?;
            let inputs = bqsync::status::StatusInputs {
                bus: &config.bus.embedded,
                warehouse: &config.warehouse,
                gcs: &config.gcs,
                state_path: &config.state_path,
                admin_token: config.admin.token()?,
            };
            let status = bqsync::status::collect(inputs, catalog).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", bqsync::status::render(&status));
            }
        }
        Command::Config { json: true } => println!("{}", serde_json::to_string_pretty(&config)?),
        Command::Config { json: false } => print!("{}", toml::to_string_pretty(&config)?),
        #[cfg(feature = "gcp")]
        Command::Infra { command: InfraCommand::TerraformTables } => {
            print!("{}", bqsync::infra::terraform_tables_text(pipeline::load_catalog(&config)?.as_ref()));
        }
        #[cfg(not(feature = "gcp"))]
        Command::Infra { .. } => anyhow::bail!(bqsync::features::missing("`bqsync infra`", "gcp")),
        Command::Dlq { command } => warehouse_commands::dlq(config, command).await?,
        Command::Sql { query, json } => warehouse_commands::sql(config, &query, json).await?,
        Command::Replay { filter, dry_run, set, drop, rename, json } => {
            warehouse_commands::replay(config, filter, dry_run, (&set, &drop, &rename), json).await?
        }
    }
    Ok(())
}

/// `bqsync sync`: one pass of the named sources (after a reset with `--full`).
async fn sync(config: Config, sources: Vec<String>, full: bool, land: bool, admin: bool) -> anyhow::Result<()> {
    let names = config.sources.names();
    if let Some(unknown) = sources.iter().find(|n| !names.contains(n)) {
        anyhow::bail!("no source named `{unknown}` in the config; sources: {}", names.join(", "));
    }
    if full {
        let store = bqsync::sources::checkpoint::CheckpointStore::open(&config.state_path)
            .context("opening the checkpoint store")?;
        for name in if sources.is_empty() { &names } else { &sources } {
            store.reset_source(name)?;
            tracing::info!(source = %name, "full resync: checkpoints forgotten");
        }
    }
    let role = if land { Role::All } else { Role::Produce };
    run_sources(config, true, admin, role, &sources).await
}

/// `run`, `produce` and `work`: prints a JSON report when done.
async fn run(config: Config, until_drained: bool, admin: bool, role: Role) -> anyhow::Result<()> {
    run_sources(config, until_drained, admin, role, &[]).await
}

async fn run_sources(
    mut config: Config,
    until_drained: bool,
    admin: bool,
    role: Role,
    sources: &[String],
) -> anyhow::Result<()> {
    if until_drained && !admin {
        config.admin.listen = bqsync::config::admin::Listen::Off;
    }
    let mode = if until_drained { RunMode::UntilDrained } else { RunMode::Forever };
    let started = std::time::Instant::now();
    let progress = until_drained.then(bqsync::progress::RunProgress::start);
    let report = pipeline::run_with(config, mode, role, sources).await;
    if let Some(progress) = progress {
        progress.finish();
    }
    let report = report?;
    let elapsed = started.elapsed().as_secs_f64();
    let w = &report.worker;
    tracing::info!(
        published = report.events_published,
        delivered = w.delivered,
        offered = w.offered,
        landed_new = w.landed_new,
        already_present = w.already_present,
        dead_lettered = w.dead_lettered,
        unread = report.unread.len(),
        flushes = w.flushes,
        seconds = format!("{elapsed:.2}"),
        "run finished"
    );
    println!("{}", serde_json::to_string(&serde_json::json!({"report": report, "elapsed_seconds": elapsed}))?);
    Ok(())
}

#[cfg(feature = "gcp")]
async fn setup_pubsub(config: &Config) -> anyhow::Result<()> {
    let lines = bqsync::bus::pubsub::setup(&config.bus.pubsub).await.context("setting up Pub/Sub")?;
    for line in lines {
        println!("{:<13} {:<8} {}", line.kind, line.outcome, line.name);
        for difference in &line.differences {
            println!("              differs: {difference} (not changed; update it or the config)");
        }
    }
    Ok(())
}

#[cfg(not(feature = "gcp"))]
async fn setup_pubsub(_: &Config) -> anyhow::Result<()> {
    anyhow::bail!(bqsync::features::missing("the Pub/Sub bus (`[bus] kind = \"pubsub\"`)", "gcp"))
}

#[cfg(feature = "embedded")]
fn setup_embedded_bus(config: &Config) -> anyhow::Result<()> {
    let path = &config.bus.embedded.path;
    let existed = path.exists();
    bqsync::bus::embedded::EmbeddedBus::open(&config.bus.embedded).context("opening the embedded bus")?;
    println!("{:<13} {:<8} {}", "embedded bus", if existed { "exists" } else { "created" }, path.display());
    Ok(())
}

#[cfg(not(feature = "embedded"))]
fn setup_embedded_bus(_: &Config) -> anyhow::Result<()> {
    anyhow::bail!(bqsync::features::missing("the embedded bus (`[bus] kind = \"embedded\"`)", "embedded"))
}

/// `bqsync setup`: prints one line per resource, created or already there.
async fn setup(config: Config) -> anyhow::Result<()> {
    match config.bus.kind {
        BusKind::Pubsub => setup_pubsub(&config).await?,
        BusKind::Embedded => setup_embedded_bus(&config)?,
    }
    let catalog = pipeline::load_catalog(&config)?;
    let name = bqsync::warehouse::describe(&config.warehouse);
    let warehouse = bqsync::warehouse::open(&config.warehouse, &config.gcs, catalog.clone())
        .await
        .with_context(|| format!("opening the warehouse ({name})"))?;
    warehouse.ensure_tables().await.context("creating tables from schemas/")?;
    println!("{:<13} {:<8} {} ({} tables)", "warehouse", "ensured", name, catalog.tables().count());
    Ok(())
}
