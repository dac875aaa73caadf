//! The DuckDB engine of the outbox (the `embedded` feature): DuckDB allows one process per file, so
//! each step of a pass (the clear of the pages that landed with the next page's read, a delete-log
//! page, a final clear) opens the file, does its work and closes it again, retrying while the
//! application holds the lock (see the module docs of [`super`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::ClearKey;
use crate::sources::rows::SqlValue;
use crate::sources::sqlite::ReadRows;

/// An outbox's DuckDB file, opened for one read or clear at a time.
pub(super) struct DuckDbFile {
    path: PathBuf,
    busy: Duration,
}

impl DuckDbFile {
    pub(super) fn new(path: &Path, busy: Duration) -> DuckDbFile {
        DuckDbFile { path: path.to_path_buf(), busy }
    }

    /// One page of `sql` (rows after `after`, at most `limit`).
    pub(super) async fn read_page(&self, sql: &str, after: i64, limit: i64) -> Result<ReadRows, String> {
        let connection = open_duckdb_waiting(self.path.clone(), self.busy).await?;
        read_duckdb_rows(&connection, sql, after, limit).map_err(|e| e.to_string())
    }

    /// Compare-and-clear of the dirty flags of `keys` in one transaction: `staging` creates the
    /// keys' temporary table, `joined` clears the rows still at the staged version.
    pub(super) async fn clear(&self, staging: &str, joined: &str, keys: &[ClearKey]) -> Result<u64, String> {
        let mut connection = open_duckdb_waiting(self.path.clone(), self.busy).await?;
        clear_flags(&mut connection, staging, joined, keys).map_err(|e| e.to_string())
    }

    /// One open for a pass's next step: the compare-and-clear of the pages that landed (none when
    /// `keys` is empty), then the next page. Each open is a new DuckDB instance (about 10 ms, and the
    /// close checkpoints what the clear wrote), so one open a page instead of two. The clear commits
    /// before the read: its count stands even when the read then fails.
    pub(super) async fn clear_then_read(
        &self,
        clear: (&str, &str, &[ClearKey]),
        read: (&str, i64, i64),
    ) -> (Result<u64, String>, Result<ReadRows, String>) {
        let (staging, joined, keys) = clear;
        let (sql, after, limit) = read;
        let mut connection = match open_duckdb_waiting(self.path.clone(), self.busy).await {
            Ok(connection) => connection,
            Err(e) => return (Err(e.clone()), Err(e)),
        };
        let cleared = match keys.is_empty() {
            true => Ok(0),
            false => clear_flags(&mut connection, staging, joined, keys).map_err(|e| e.to_string()),
        };
        if let Err(e) = &cleared {
            return (cleared.clone(), Err(format!("not read: the clear failed first ({e})")));
        }
        let page = read_duckdb_rows(&connection, sql, after, limit).map_err(|e| e.to_string());
        (cleared, page)
    }

    /// Runs `delete_row` for each key's (key…, version), in one transaction (the delete log).
    pub(super) async fn delete_each(&self, delete_row: &str, keys: &[ClearKey]) -> Result<(), String> {
        let mut connection = open_duckdb_waiting(self.path.clone(), self.busy).await?;
        let result = (|| -> duckdb::Result<()> {
            let tx = connection.transaction()?;
            {
                let mut statement = tx.prepare(delete_row)?;
                for key in keys {
                    let params: Vec<duckdb::types::Value> =
                        key.key.iter().chain([&key.version]).map(duckdb_param).collect();
                    statement.execute(duckdb::params_from_iter(params.iter()))?;
                }
            }
            tx.commit()
        })();
        result.map_err(|e| e.to_string())
    }
}

/// Opens a DuckDB file, retrying while another process holds its lock (free of `self` so the
/// future stays `Send`: the source holds a SQLite connection, which is not `Sync`).
async fn open_duckdb_waiting(path: PathBuf, busy: Duration) -> Result<duckdb::Connection, String> {
    if !path.exists() {
        return Err("database file not found".into());
    }
    // Short waits (the application's transactions are short), for at most `busy_timeout_ms`.
    let policy =
        crate::retry::Policy::exponential(Duration::from_millis(20), Duration::from_millis(50)).with_budget(busy);
    crate::retry::retry(
        policy,
        |_, _| {},
        || async {
            duckdb::Connection::open(&path)
                .map_err(|e| OpenFailure { locked: e.to_string().contains("lock"), message: e.to_string() })
        },
    )
    .await
    .map_err(|failure| failure.message)
}

/// Why a DuckDB file did not open; held by another process's lock is worth waiting for.
#[derive(Debug)]
struct OpenFailure {
    locked: bool,
    message: String,
}

impl crate::retry::Transient for OpenFailure {
    fn is_transient(&self) -> bool {
        self.locked
    }
}

fn duckdb_value(value: duckdb::types::Value) -> SqlValue {
    use duckdb::types::Value as V;
    match value {
        V::Null => SqlValue::Null,
        V::Boolean(b) => SqlValue::Integer(b as i64),
        V::TinyInt(i) => SqlValue::Integer(i.into()),
        V::SmallInt(i) => SqlValue::Integer(i.into()),
        V::Int(i) => SqlValue::Integer(i.into()),
        V::BigInt(i) => SqlValue::Integer(i),
        V::UTinyInt(i) => SqlValue::Integer(i.into()),
        V::USmallInt(i) => SqlValue::Integer(i.into()),
        V::UInt(i) => SqlValue::Integer(i.into()),
        V::UBigInt(i) => i64::try_from(i).map_or(SqlValue::Text(i.to_string()), SqlValue::Integer),
        V::HugeInt(i) => i64::try_from(i).map_or(SqlValue::Text(i.to_string()), SqlValue::Integer),
        V::Float(f) => SqlValue::Real(f.into()),
        V::Double(f) => SqlValue::Real(f),
        V::Decimal(d) => SqlValue::Text(d.to_string()),
        V::Timestamp(unit, v) => SqlValue::Timestamp(unit.to_micros(v)),
        V::Date32(days) => SqlValue::Text(
            (chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid") + chrono::Duration::days(days.into()))
                .format("%Y-%m-%d")
                .to_string(),
        ),
        V::Text(s) | V::Enum(s) => SqlValue::Text(s),
        V::Blob(b) => SqlValue::Blob(b),
        V::List(items) | V::Array(items) => SqlValue::Text(
            Value::Array(
                items
                    .into_iter()
                    .map(|v| duckdb_value(v).to_json(crate::schema::ColumnType::Json, Default::default()))
                    .collect(),
            )
            .to_string(),
        ),
        other => SqlValue::Text(format!("{other:?}")),
    }
}

fn duckdb_param(value: &SqlValue) -> duckdb::types::Value {
    use duckdb::types::{TimeUnit, Value as V};
    match value {
        SqlValue::Null => V::Null,
        SqlValue::Integer(i) => V::BigInt(*i),
        SqlValue::Real(f) => V::Double(*f),
        SqlValue::Text(s) => V::Text(s.clone()),
        SqlValue::Blob(b) => V::Blob(b.clone()),
        SqlValue::Timestamp(t) => V::Timestamp(TimeUnit::Microsecond, *t),
    }
}

fn read_duckdb_rows(connection: &duckdb::Connection, sql: &str, after: i64, limit: i64) -> duckdb::Result<ReadRows> {
    let mut statement = connection.prepare(sql)?;
    let mut rows = statement.query(duckdb::params![after, limit])?;
    let names = rows.as_ref().map(|s| s.column_names()).unwrap_or_default();
    // A page reserves its LIMIT once, as the SQLite engine's pages do (`read_rows`).
    let mut out = Vec::with_capacity(usize::try_from(limit).unwrap_or(0));
    while let Some(row) = rows.next()? {
        let mut values = Vec::with_capacity(names.len());
        for i in 0..names.len() {
            values.push(duckdb_value(row.get::<_, duckdb::types::Value>(i)?));
        }
        out.push(values);
    }
    Ok(ReadRows { names, rows: out })
}

fn clear_flags(
    connection: &mut duckdb::Connection,
    staging: &str,
    joined: &str,
    keys: &[ClearKey],
) -> duckdb::Result<u64> {
    let transaction = connection.transaction()?;
    transaction.execute_batch(staging)?;
    {
        // The appender, not one INSERT a key: a statement costs DuckDB ~0.1 ms, which made the clear
        // of a 5,000-row page take half a second.
        let mut stage = transaction.appender_to_catalog_and_db("__bqsync_clear", "temp", "main")?;
        for key in keys {
            let params: Vec<duckdb::types::Value> = key.key.iter().chain([&key.version]).map(duckdb_param).collect();
            stage.append_row(duckdb::appender_params_from_iter(params))?;
        }
        stage.flush()?;
    }
    let cleared = transaction.execute(joined, [])? as u64;
    transaction.execute_batch("DROP TABLE __bqsync_clear")?;
    transaction.commit()?;
    Ok(cleared)
}
