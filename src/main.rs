//! The `bqsync` command line.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use bqsync::config::Config;
use bqsync::pipeline::{self, RunMode};

/// Syncs local and operational data into a warehouse, exactly once in effect.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Config file (TOML). Default: ./bqsync.toml if present, else built-in defaults.
    #[arg(long, global = true, env = "BQSYNC_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run sources and worker in this process.
    Run {
        /// Exit once all current input is landed (one-shot), instead of watching for more.
        #[arg(long)]
        until_drained: bool,
    },
    /// Show queue depth, dead letters by reason, rows per table and checkpoint lag.
    Status {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Print the effective configuration (defaults, file and environment overrides merged).
    Config,
}

fn main() -> std::process::ExitCode {
    init_logging();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(execute(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bqsync: error: {}", describe_error(&e));
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

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BQSYNC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

async fn execute(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref(), std::env::vars()).context("reading the configuration")?;
    match cli.command {
        Command::Run { until_drained } => {
            let mode = if until_drained { RunMode::UntilDrained } else { RunMode::Forever };
            let started = std::time::Instant::now();
            let report = pipeline::run(config, mode).await?;
            let elapsed = started.elapsed().as_secs_f64();
            let w = &report.worker;
            tracing::info!(
                published = report.events_published,
                delivered = w.delivered,
                landed_rows = w.landed_rows,
                dead_lettered = w.dead_lettered,
                flushes = w.flushes,
                seconds = format!("{elapsed:.2}"),
                "run finished"
            );
            println!("{}", serde_json::to_string(&serde_json::json!({"report": report, "elapsed_seconds": elapsed}))?);
        }
        Command::Status { json } => {
            let catalog = pipeline::load_catalog(&config)?;
            let status = bqsync::status::collect(&config, catalog).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", bqsync::status::render(&status));
            }
        }
        Command::Config => println!("{config:#?}"),
    }
    Ok(())
}
