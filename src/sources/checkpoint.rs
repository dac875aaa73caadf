//! Producer checkpoints in a local SQLite state file.
//!
//! Invariant: a checkpoint is written only after the bus accepted every event before it, so a crash
//! can only make a producer publish an event again (deduplicated downstream by its deterministic id),
//! never skip one.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

/// Where a file was read up to, and how to recognise the file again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileCheckpoint {
    pub device: u64,
    pub inode: u64,
    /// Hash of the first bytes of the file (see [`super::jsonl::FINGERPRINT_BYTES`]); a file that
    /// reuses an inode but has other content starts from 0.
    pub fingerprint: u64,
    /// Number of bytes the fingerprint covers (a file shorter than the full length when first seen).
    pub fingerprint_len: u64,
    /// Byte offset just past the last line published.
    pub offset: u64,
    pub path: String,
    /// File size when the checkpoint was written, for the lag figure of `bqsync status`.
    pub size_seen: u64,
}

/// Errors of the checkpoint store.
#[derive(Debug, thiserror::Error)]
#[error("checkpoint store {path}: {source}")]
pub struct CheckpointError {
    path: PathBuf,
    source: rusqlite::Error,
}

/// The state file shared by all sources of a process.
pub struct CheckpointStore {
    path: PathBuf,
    connection: Mutex<Connection>,
}

impl CheckpointStore {
    pub fn open(path: &Path) -> Result<CheckpointStore, CheckpointError> {
        let err = |source| CheckpointError { path: path.to_path_buf(), source };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(parent);
        }
        let connection = Connection::open(path).map_err(err)?;
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = FULL;
                 PRAGMA busy_timeout = 10000;
                 CREATE TABLE IF NOT EXISTS file_checkpoints (
                   source TEXT NOT NULL, device INTEGER NOT NULL, inode INTEGER NOT NULL,
                   fingerprint INTEGER NOT NULL, fingerprint_len INTEGER NOT NULL, offset INTEGER NOT NULL,
                   path TEXT NOT NULL, size_seen INTEGER NOT NULL, updated_micros INTEGER NOT NULL,
                   PRIMARY KEY (source, device, inode));
                 CREATE TABLE IF NOT EXISTS source_state (
                   source TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, updated_micros INTEGER NOT NULL,
                   PRIMARY KEY (source, key));
                 CREATE TABLE IF NOT EXISTS synced_keys (
                   source TEXT NOT NULL, tbl TEXT NOT NULL, key TEXT NOT NULL, version INTEGER NOT NULL,
                   PRIMARY KEY (source, tbl, key));
                 CREATE TABLE IF NOT EXISTS passes (
                   source TEXT NOT NULL, tbl TEXT NOT NULL, started_micros INTEGER NOT NULL,
                   finished_micros INTEGER NOT NULL, published INTEGER NOT NULL, error TEXT,
                   full INTEGER NOT NULL DEFAULT 0);
                 CREATE INDEX IF NOT EXISTS passes_by_table ON passes (source, tbl, started_micros);",
            )
            .map_err(err)?;
        Ok(CheckpointStore { path: path.to_path_buf(), connection: Mutex::new(connection) })
    }

    fn err(&self, source: rusqlite::Error) -> CheckpointError {
        CheckpointError { path: self.path.clone(), source }
    }

    /// Runs `f` on the state file's connection (for the pass history, `super::history`).
    pub(crate) fn with_connection<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, CheckpointError> {
        let mut connection = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut connection).map_err(|e| self.err(e))
    }

    pub fn file(&self, source: &str, device: u64, inode: u64) -> Result<Option<FileCheckpoint>, CheckpointError> {
        let connection = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        connection
            .query_row(
                "SELECT fingerprint, fingerprint_len, offset, path, size_seen FROM file_checkpoints WHERE source = ?1 AND device = ?2 AND inode = ?3",
                params![source, device as i64, inode as i64],
                |r| {
                    Ok(FileCheckpoint {
                        device,
                        inode,
                        fingerprint: r.get::<_, i64>(0)? as u64,
                        fingerprint_len: r.get::<_, i64>(1)? as u64,
                        offset: r.get::<_, i64>(2)? as u64,
                        path: r.get(3)?,
                        size_seen: r.get::<_, i64>(4)? as u64,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    pub fn save_file(&self, source: &str, checkpoint: &FileCheckpoint) -> Result<(), CheckpointError> {
        let connection = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        connection
            .prepare_cached(
                "INSERT INTO file_checkpoints (source, device, inode, fingerprint, fingerprint_len, offset, path, size_seen, updated_micros)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (source, device, inode) DO UPDATE SET fingerprint = excluded.fingerprint,
                   fingerprint_len = excluded.fingerprint_len, offset = excluded.offset, path = excluded.path,
                   size_seen = excluded.size_seen, updated_micros = excluded.updated_micros",
            )
            .and_then(|mut s| {
                s.execute(params![
                    source,
                    checkpoint.device as i64,
                    checkpoint.inode as i64,
                    checkpoint.fingerprint as i64,
                    checkpoint.fingerprint_len as i64,
                    checkpoint.offset as i64,
                    checkpoint.path,
                    checkpoint.size_seen as i64,
                    chrono::Utc::now().timestamp_micros()
                ])
            })
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// A polling source's saved value under `key` (watermark, cursor, fingerprint).
    pub fn state(&self, source: &str, key: &str) -> Result<Option<String>, CheckpointError> {
        let connection = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        connection
            .query_row("SELECT value FROM source_state WHERE source = ?1 AND key = ?2", params![source, key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Every saved value of a source whose key starts with `prefix`.
    pub fn states_with_prefix(&self, source: &str, prefix: &str) -> Result<Vec<(String, String)>, CheckpointError> {
        let connection = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        let mut statement = connection
            .prepare("SELECT key, value FROM source_state WHERE source = ?1 AND substr(key, 1, length(?2)) = ?2")
            .map_err(|e| self.err(e))?;
        let rows =
            statement.query_map(params![source, prefix], |r| Ok((r.get(0)?, r.get(1)?))).map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Writes, in one transaction, saved values (`None` removes one) and synced-key versions of
    /// `table` (`None` removes the key): what a polling source records after a publish resolved.
    pub fn save_progress(
        &self,
        source: &str,
        states: &[(String, Option<String>)],
        table: &str,
        keys: &[(String, Option<i64>)],
    ) -> Result<(), CheckpointError> {
        let mut connection = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        let now = chrono::Utc::now().timestamp_micros();
        let write = |tx: &rusqlite::Transaction| -> rusqlite::Result<()> {
            for (key, value) in states {
                match value {
                    Some(value) => tx
                        .prepare_cached(
                            "INSERT INTO source_state (source, key, value, updated_micros) VALUES (?1, ?2, ?3, ?4)
                             ON CONFLICT (source, key) DO UPDATE SET value = excluded.value, updated_micros = excluded.updated_micros",
                        )?
                        .execute(params![source, key, value, now])?,
                    None => tx
                        .prepare_cached("DELETE FROM source_state WHERE source = ?1 AND key = ?2")?
                        .execute(params![source, key])?,
                };
            }
            for (key, version) in keys {
                match version {
                    Some(version) => tx
                        .prepare_cached(
                            "INSERT INTO synced_keys (source, tbl, key, version) VALUES (?1, ?2, ?3, ?4)
                             ON CONFLICT (source, tbl, key) DO UPDATE SET version = excluded.version",
                        )?
                        .execute(params![source, table, key, version])?,
                    None => tx
                        .prepare_cached("DELETE FROM synced_keys WHERE source = ?1 AND tbl = ?2 AND key = ?3")?
                        .execute(params![source, table, key])?,
                };
            }
            Ok(())
        };
        let tx = connection.transaction().map_err(|e| self.err(e))?;
        write(&tx).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// The keys of `table` a source published last, with their versions (for skipping unchanged rows
    /// and finding deleted ones).
    pub fn synced_keys(&self, source: &str, table: &str) -> Result<Vec<(String, i64)>, CheckpointError> {
        let connection = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        let mut statement = connection
            .prepare("SELECT key, version FROM synced_keys WHERE source = ?1 AND tbl = ?2")
            .map_err(|e| self.err(e))?;
        let rows =
            statement.query_map(params![source, table], |r| Ok((r.get(0)?, r.get(1)?))).map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Forgets where a source stands (`bqsync sync --full`, `bqsync reset SOURCE`): its watermarks,
    /// cursors and file checkpoints go, and it is marked to publish every row again
    /// ([`REPUBLISH_ALL`]). The keys it published (`synced_keys`) stay, so keys deleted at the
    /// source before the reset still get their tombstones.
    pub fn reset_source(&self, source: &str) -> Result<(), CheckpointError> {
        let connection = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        let now = chrono::Utc::now().timestamp_micros();
        connection
            .execute_batch("BEGIN")
            .and_then(|_| connection.execute("DELETE FROM source_state WHERE source = ?1", params![source]))
            .and_then(|_| connection.execute("DELETE FROM file_checkpoints WHERE source = ?1", params![source]))
            .and_then(|_| {
                connection.execute(
                    "INSERT INTO source_state (source, key, value, updated_micros) VALUES (?1, ?2, '1', ?3)",
                    params![source, REPUBLISH_ALL, now],
                )
            })
            .and_then(|_| connection.execute_batch("COMMIT"))
            .map(|_| ())
            .map_err(|e| {
                let _ = connection.execute_batch("ROLLBACK");
                self.err(e)
            })
    }

    /// Forgets one table's watermark or cursor (`bqsync reset SOURCE:TABLE`): `keys` are its state
    /// keys; `republish` is its mark ([`republish_key`]), so its next pass publishes every row again.
    /// Its synced keys stay (see [`CheckpointStore::reset_source`]).
    pub fn reset_table(&self, source: &str, keys: &[String], republish: Option<String>) -> Result<(), CheckpointError> {
        let mut states: Vec<(String, Option<String>)> = keys.iter().map(|k| (k.clone(), None)).collect();
        states.extend(republish.map(|mark| (mark, Some("1".to_string()))));
        self.save_progress(source, &states, "", &[])
    }

    /// Forgets the file checkpoints of `source` whose path starts with `prefix` (their files are read
    /// again from the start); returns how many.
    pub fn forget_files(&self, source: &str, prefix: &str) -> Result<usize, CheckpointError> {
        let connection = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        connection
            .execute(
                "DELETE FROM file_checkpoints WHERE source = ?1 AND substr(path, 1, length(?2)) = ?2",
                params![source, prefix],
            )
            .map_err(|e| self.err(e))
    }

    /// All file checkpoints, for `bqsync status`.
    pub fn all_files(&self) -> Result<Vec<(String, FileCheckpoint)>, CheckpointError> {
        let connection = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        let mut statement = connection
            .prepare("SELECT source, device, inode, fingerprint, fingerprint_len, offset, path, size_seen FROM file_checkpoints ORDER BY source, path")
            .map_err(|e| self.err(e))?;
        let rows = statement
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    FileCheckpoint {
                        device: r.get::<_, i64>(1)? as u64,
                        inode: r.get::<_, i64>(2)? as u64,
                        fingerprint: r.get::<_, i64>(3)? as u64,
                        fingerprint_len: r.get::<_, i64>(4)? as u64,
                        offset: r.get::<_, i64>(5)? as u64,
                        path: r.get(6)?,
                        size_seen: r.get::<_, i64>(7)? as u64,
                    },
                ))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }
}

/// State key marking a whole source to publish every row again on its next pass (set by a reset).
pub const REPUBLISH_ALL: &str = "republish:*";

/// State key marking one table of a source (by its name in the source) to publish every row again.
pub fn republish_key(source_table: &str) -> String {
    format!("republish:{source_table}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_round_trip_and_update() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(&dir.path().join("state.db")).unwrap();
        let mut checkpoint = FileCheckpoint {
            device: 1,
            inode: 2,
            fingerprint: u64::MAX,
            fingerprint_len: 256,
            offset: 10,
            path: "a".into(),
            size_seen: 20,
        };
        store.save_file("s", &checkpoint).unwrap();
        checkpoint.offset = 20;
        store.save_file("s", &checkpoint).unwrap();
        assert_eq!(store.file("s", 1, 2).unwrap(), Some(checkpoint));
        assert_eq!(store.file("other", 1, 2).unwrap(), None);
        assert_eq!(store.all_files().unwrap().len(), 1);
    }

    #[test]
    fn source_state_and_synced_keys_round_trip_and_reset() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(&dir.path().join("state.db")).unwrap();
        let states = [("wm:t".to_string(), Some("5".to_string())), ("cursor".to_string(), Some("c".to_string()))];
        store.save_progress("s", &states, "t", &[("k1".into(), Some(1)), ("k2".into(), Some(2))]).unwrap();
        store.save_progress("s", &[("cursor".into(), None)], "t", &[("k1".into(), None)]).unwrap();
        assert_eq!(store.state("s", "wm:t").unwrap().as_deref(), Some("5"));
        assert_eq!(store.state("s", "cursor").unwrap(), None);
        assert_eq!(store.states_with_prefix("s", "wm:").unwrap(), vec![("wm:t".to_string(), "5".to_string())]);
        assert_eq!(store.synced_keys("s", "t").unwrap(), vec![("k2".to_string(), 2)]);
        store.reset_source("s").unwrap();
        assert_eq!(store.state("s", "wm:t").unwrap(), None);
        assert_eq!(store.state("s", REPUBLISH_ALL).unwrap().as_deref(), Some("1"), "marked to publish everything");
        assert_eq!(store.synced_keys("s", "t").unwrap(), vec![("k2".to_string(), 2)], "deletes are still found");
    }
}
