//! The sync state a person can see: every source pass (and, for SQLite sources, every table's part
//! of it) is recorded in the state file's `passes` table, the last [`KEPT`] per source and table.
//! `bqsync status` and `GET /status` summarize them; `bqsync history` lists them.
//!
//! A pass is recorded when it read something, failed, or was a scheduled pass of a polling source:
//! the change-driven passes that find nothing (a watched folder, an outbox, every second) are not,
//! so the history stays a history of work.

use serde::Serialize;
use serde_json::Value;

use super::checkpoint::{CheckpointError, CheckpointStore};

/// How many passes are kept per source and table.
pub const KEPT: i64 = 100;

/// The table name of a whole-source pass.
pub const WHOLE_SOURCE: &str = "*";

/// One recorded pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pass {
    pub source: String,
    /// The source's table (its name in the source), or `*` for the whole source.
    pub table: String,
    pub started_micros: i64,
    pub finished_micros: i64,
    /// Events published (rows read and published; a SQLite pass skips rows already published).
    pub published: u64,
    pub error: Option<String>,
    /// A full re-sync.
    pub full: bool,
}

/// The state of one source or table, from its recorded passes and saved values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyncState {
    pub source: String,
    pub table: String,
    pub last_started: Option<String>,
    pub last_finished: Option<String>,
    pub last_published: Option<u64>,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    pub consecutive_failures: u64,
    /// Watermark or cursor: the value a pass resumes after (a SQLite watermark's value, without the
    /// type it is saved with).
    pub position: Option<String>,
    /// When the next scheduled pass is due (saved by the source after each pass).
    pub next_pass: Option<String>,
}

fn time(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros).map_or_else(|| micros.to_string(), |t| t.to_rfc3339())
}

/// Records a pass and drops the oldest beyond [`KEPT`].
pub fn record(store: &CheckpointStore, pass: &Pass) -> Result<(), CheckpointError> {
    store.with_connection(|connection| {
        let tx = connection.transaction()?;
        tx.execute(
            "INSERT INTO passes (source, tbl, started_micros, finished_micros, published, error, full) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            rusqlite::params![
                pass.source,
                pass.table,
                pass.started_micros,
                pass.finished_micros,
                pass.published as i64,
                pass.error,
                pass.full
            ],
        )?;
        tx.execute(
            "DELETE FROM passes WHERE source = ?1 AND tbl = ?2 AND started_micros < \
             (SELECT started_micros FROM passes WHERE source = ?1 AND tbl = ?2 ORDER BY started_micros DESC LIMIT 1 OFFSET ?3)",
            rusqlite::params![pass.source, pass.table, KEPT - 1],
        )?;
        tx.commit()
    })
}

/// Passes, newest first: of `source` (and `table`) when given.
pub fn passes(
    store: &CheckpointStore,
    source: Option<&str>,
    table: Option<&str>,
    limit: usize,
) -> Result<Vec<Pass>, CheckpointError> {
    store.with_connection(|connection| {
        let mut statement = connection.prepare(
            "SELECT source, tbl, started_micros, finished_micros, published, error, full FROM passes \
             WHERE (?1 IS NULL OR source = ?1) AND (?2 IS NULL OR tbl = ?2) ORDER BY started_micros DESC LIMIT ?3",
        )?;
        let rows = statement.query_map(rusqlite::params![source, table, limit as i64], |r| {
            Ok(Pass {
                source: r.get(0)?,
                table: r.get(1)?,
                started_micros: r.get(2)?,
                finished_micros: r.get(3)?,
                published: r.get::<_, i64>(4)? as u64,
                error: r.get(5)?,
                full: r.get(6)?,
            })
        })?;
        rows.collect()
    })
}

/// The state of every source and table that has passes or saved values.
pub fn states(store: &CheckpointStore) -> Result<Vec<SyncState>, CheckpointError> {
    store.with_connection(|connection| {
        let mut statement = connection.prepare(
            "WITH last AS (SELECT source, tbl, max(started_micros) AS started FROM passes GROUP BY source, tbl), \
                  ok AS (SELECT source, tbl, max(started_micros) AS started FROM passes WHERE error IS NULL GROUP BY source, tbl) \
             SELECT p.source, p.tbl, p.started_micros, p.finished_micros, p.published, \
               (SELECT error FROM passes e WHERE e.source = p.source AND e.tbl = p.tbl AND e.error IS NOT NULL ORDER BY started_micros DESC LIMIT 1), \
               (SELECT started_micros FROM passes e WHERE e.source = p.source AND e.tbl = p.tbl AND e.error IS NOT NULL ORDER BY started_micros DESC LIMIT 1), \
               (SELECT count(*) FROM passes f WHERE f.source = p.source AND f.tbl = p.tbl AND f.error IS NOT NULL \
                  AND f.started_micros > IFNULL((SELECT started FROM ok WHERE ok.source = p.source AND ok.tbl = p.tbl), -1)), \
               (SELECT value FROM source_state s WHERE s.source = p.source AND s.key = CASE WHEN p.tbl = '*' THEN 'cursor' ELSE 'wm:' || p.tbl END), \
               (SELECT value FROM source_state s WHERE s.source = p.source AND s.key = 'schedule:next_pass_micros' AND p.tbl = '*') \
             FROM passes p JOIN last ON last.source = p.source AND last.tbl = p.tbl AND last.started = p.started_micros \
             ORDER BY p.source, p.tbl",
        )?;
        let rows = statement.query_map([], |r| {
            let next: Option<String> = r.get(9)?;
            Ok(SyncState {
                source: r.get(0)?,
                table: r.get(1)?,
                last_started: Some(time(r.get(2)?)),
                last_finished: Some(time(r.get(3)?)),
                last_published: Some(r.get::<_, i64>(4)? as u64),
                last_error: r.get(5)?,
                last_error_at: r.get::<_, Option<i64>>(6)?.map(time),
                consecutive_failures: r.get::<_, i64>(7)? as u64,
                position: r.get::<_, Option<String>>(8)?.map(|saved| human_position(&saved)),
                next_pass: next.and_then(|n| n.parse().ok()).map(time),
            })
        })?;
        rows.collect()
    })
}

/// A saved watermark (`["integer", 15]`, `["text", "2024-05-01 10:00:00"]`) as its value; a cursor as
/// it is.
fn human_position(saved: &str) -> String {
    match serde_json::from_str::<Value>(saved) {
        Ok(Value::Array(pair)) if pair.len() == 2 => match &pair[1] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        },
        _ => saved.to_string(),
    }
}

/// Records when `source`'s next scheduled pass is due (shown by status from any process).
pub fn record_next_pass(store: &CheckpointStore, source: &str, micros: i64) -> Result<(), CheckpointError> {
    store.save_progress(source, &[("schedule:next_pass_micros".into(), Some(micros.to_string()))], "", &[])
}

/// `bqsync history` as text: one line a pass, newest first.
pub fn render(passes: &[Pass]) -> String {
    let mut out = format!(
        "{:<26} {:<16} {:<20} {:>9} {:>10}  {}\n",
        "STARTED", "SOURCE", "TABLE", "SECONDS", "PUBLISHED", "OUTCOME"
    );
    for p in passes {
        let seconds = (p.finished_micros - p.started_micros) as f64 / 1e6;
        let outcome = match (&p.error, p.full) {
            (Some(e), _) => format!("failed: {e}"),
            (None, true) => "ok (full re-sync)".into(),
            (None, false) => "ok".into(),
        };
        out.push_str(&format!(
            "{:<26} {:<16} {:<20} {:>9.2} {:>10}  {outcome}\n",
            time(p.started_micros),
            p.source,
            p.table,
            seconds,
            p.published
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(table: &str, started: i64, error: Option<&str>) -> Pass {
        Pass {
            source: "db".into(),
            table: table.into(),
            started_micros: started,
            finished_micros: started + 5,
            published: 3,
            error: error.map(str::to_string),
            full: false,
        }
    }

    #[test]
    fn states_count_failures_since_the_last_success_and_history_is_capped() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(&dir.path().join("state.db")).unwrap();
        for (i, error) in [None, Some("boom"), None, Some("gone"), Some("gone again")].into_iter().enumerate() {
            record(&store, &pass("registry", i as i64 * 10, error)).unwrap();
        }
        record(&store, &pass("events", 7, None)).unwrap();
        store.save_progress("db", &[("wm:registry".into(), Some("[\"text\",\"2024\"]".into()))], "", &[]).unwrap();
        let states = states(&store).unwrap();
        let registry = states.iter().find(|s| s.table == "registry").unwrap();
        assert_eq!(registry.consecutive_failures, 2);
        assert_eq!(registry.last_error.as_deref(), Some("gone again"));
        assert_eq!(registry.position.as_deref(), Some("2024"), "the watermark's value");
        let events = states.iter().find(|s| s.table == "events").unwrap();
        assert_eq!((events.consecutive_failures, events.last_error.as_deref()), (0, None));
        for i in 0..KEPT + 20 {
            record(&store, &pass("events", 100 + i, None)).unwrap();
        }
        assert_eq!(passes(&store, Some("db"), Some("events"), 1000).unwrap().len(), KEPT as usize);
        assert_eq!(passes(&store, Some("db"), Some("registry"), 1000).unwrap().len(), 5);
        assert_eq!(passes(&store, None, None, 3).unwrap()[0].started_micros, 100 + KEPT + 19, "newest first");
    }
}
