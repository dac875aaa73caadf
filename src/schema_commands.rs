//! `bqsync schema infer`: drafts a schema file (see `bqsync::schema::infer`) and prints it, with a
//! diff against the file it would replace; `--write` writes it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use bqsync::config::Config;
use bqsync::schema::infer::{self, DbColumn};
use bqsync::warehouse::DeadLetterFilter;

/// Where a draft comes from.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
pub struct InferFrom {
    /// A table of this SQLite file (`--from`, default: the table's name).
    #[arg(long, value_name = "FILE")]
    sqlite: Option<PathBuf>,
    /// A table of this DuckDB file (`--from`, default: the table's name).
    #[arg(long, value_name = "FILE")]
    duckdb: Option<PathBuf>,
    /// The first `--sample` records of this JSONL file.
    #[arg(long, value_name = "FILE")]
    jsonl: Option<PathBuf>,
    /// The records dead-lettered as `unknown_table` for this table (then `bqsync replay --reason
    /// unknown_table --table TABLE` lands them).
    #[arg(long)]
    dead_letters: bool,
}

/// `bqsync schema infer TABLE …`.
pub async fn infer(
    config: Config,
    table: String,
    from: InferFrom,
    source_table: Option<String>,
    sample: usize,
    write: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(bqsync::schema::is_valid_identifier(&table), "`{table}` is not a valid table name");
    let source_table = source_table.unwrap_or_else(|| table.clone());
    let (schema, note) = if let Some(path) = &from.sqlite {
        infer::from_table(&table, &sqlite_columns(path, &source_table)?)
    } else if let Some(path) = &from.duckdb {
        infer::from_table(&table, &duckdb_columns(path, &source_table)?)
    } else if let Some(path) = &from.jsonl {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let records: Vec<serde_json::Value> =
            text.lines().filter_map(|l| serde_json::from_str(l).ok()).take(sample).collect();
        anyhow::ensure!(!records.is_empty(), "no JSON record in {}", path.display());
        (infer::from_records(&table, records.iter()), None)
    } else {
        let records = dead_letter_records(&config, &table, sample).await?;
        anyhow::ensure!(!records.is_empty(), "no `unknown_table` dead letter for `{table}`");
        (infer::from_records(&table, records.iter()), None)
    };
    schema.check().map_err(|problem| anyhow::anyhow!("the draft does not check ({problem}): write it by hand"))?;
    let text = serde_json::to_string_pretty(&schema)? + "\n";
    let path = config.schemas_dir.join(format!("{table}.json"));
    match std::fs::read_to_string(&path) {
        Ok(existing) => {
            let diff = infer::diff(&existing, &text);
            if diff.is_empty() {
                eprintln!("{} already says this", path.display());
            } else {
                eprintln!("against {}:\n{diff}", path.display());
            }
        }
        Err(_) => eprintln!("{} does not exist yet", path.display()),
    }
    if let Some(note) = note {
        eprintln!("note: {note}");
    }
    print!("{text}");
    if write {
        std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    } else {
        eprintln!("(a draft: review it, then run again with --write)");
    }
    Ok(())
}

fn sqlite_columns(path: &Path, table: &str) -> anyhow::Result<Vec<DbColumn>> {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    let db =
        rusqlite::Connection::open_with_flags(path, flags).with_context(|| format!("opening {}", path.display()))?;
    let mut statement = db.prepare("SELECT name, type, \"notnull\", pk FROM pragma_table_info(?1)")?;
    let columns: Vec<DbColumn> = statement
        .query_map([table], |r| {
            Ok(DbColumn {
                name: r.get(0)?,
                declared: r.get(1)?,
                not_null: r.get(2)?,
                key_position: r.get::<_, i64>(3)? as usize,
            })
        })?
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(!columns.is_empty(), "{} has no table `{table}`", path.display());
    Ok(columns)
}

#[cfg(not(feature = "embedded"))]
fn duckdb_columns(_: &Path, _: &str) -> anyhow::Result<Vec<DbColumn>> {
    anyhow::bail!(bqsync::features::missing("`schema infer --duckdb`", "embedded"))
}

#[cfg(feature = "embedded")]
fn duckdb_columns(path: &Path, table: &str) -> anyhow::Result<Vec<DbColumn>> {
    let config = duckdb::Config::default().access_mode(duckdb::AccessMode::ReadOnly)?;
    let db =
        duckdb::Connection::open_with_flags(path, config).with_context(|| format!("opening {}", path.display()))?;
    let mut statement = db.prepare("SELECT name, type, \"notnull\", pk FROM pragma_table_info(?)")?;
    let rows: Vec<(String, String, bool, bool)> = statement
        .query_map([table], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(!rows.is_empty(), "{} has no table `{table}`", path.display());
    let mut position = 0;
    Ok(rows
        .into_iter()
        .map(|(name, declared, not_null, key)| {
            position += usize::from(key);
            DbColumn { name, declared, not_null, key_position: if key { position } else { 0 } }
        })
        .collect())
}

async fn dead_letter_records(config: &Config, table: &str, sample: usize) -> anyhow::Result<Vec<serde_json::Value>> {
    let catalog = bqsync::pipeline::load_catalog(config)?;
    let warehouse = crate::warehouse_commands::read_only_warehouse(config, catalog).await?;
    let filter = DeadLetterFilter {
        table: Some(table.to_string()),
        reason: Some(bqsync::dead_letter::DeadLetterReason::UnknownTable),
        limit: Some(sample),
        ..Default::default()
    };
    let records = warehouse.dead_letters(&filter).await?;
    Ok(records.iter().filter_map(|r| infer::dead_letter_record(&r.message_bytes)).collect())
}
