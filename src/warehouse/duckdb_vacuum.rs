//! Whether the checkpoints DuckDB runs on commit vacuum (DuckDB's `max_vacuum_tasks`).
//!
//! Vacuuming compacts row groups that hold deleted rows, and merges runs of row groups that would
//! fit in fewer. Only an upsert's `MERGE` leaves deleted rows in bqsync's tables (DuckDB updates a
//! list column by deleting and inserting the row). Appends leave one part-full row group at each
//! checkpoint; merging it rewrites it with the full ones around it, and the next checkpoint leaves
//! another: on the 1M-atoms benchmark that was a tenth of all the CPU (docs/benchmarks.md).
//!
//! Invariants:
//! - Deleted rows are always vacuumed: from a commit with an upsert on, every commit vacuums until
//!   a checkpoint has run with vacuuming on (seen as the WAL file emptied by a commit).
//! - A commit of appends alone, with no upsert waiting for a checkpoint, does not vacuum.
//! - On close, a process that appended less than a row group vacuums, so that one-shot runs from
//!   cron do not leave a small row group each; a larger run leaves at most one part-full row group
//!   per checkpoint, each behind at least a row group of rows.

use std::path::Path;

/// Rows in a DuckDB row group (`Storage::ROW_GROUP_SIZE`).
const ROW_GROUP_ROWS: u64 = 122_880;

/// DuckDB's setting as this process last set it, and what it needs next.
#[derive(Debug)]
pub struct VacuumPolicy {
    /// Whether `max_vacuum_tasks` is DuckDB's default (on) rather than 0.
    on: bool,
    /// An upsert committed since the last checkpoint that vacuumed.
    deletes_pending: bool,
    /// Rows this process committed to append tables.
    appended_rows: u64,
}

impl Default for VacuumPolicy {
    fn default() -> Self {
        VacuumPolicy { on: true, deletes_pending: false, appended_rows: 0 }
    }
}

impl VacuumPolicy {
    /// The statement to run before a commit (`upserts`: whether it lands any upsert table), if the
    /// setting must change.
    pub fn before_commit(&mut self, upserts: bool) -> Option<&'static str> {
        self.set(upserts || self.deletes_pending)
    }

    /// Records a commit: `checkpointed` when DuckDB checkpointed during it (the checkpoint covers the
    /// commit's own rows).
    pub fn after_commit(&mut self, upserts: bool, appended_rows: u64, checkpointed: bool) {
        self.appended_rows += appended_rows;
        self.deletes_pending = if checkpointed && self.on { false } else { self.deletes_pending || upserts };
    }

    /// The statement to run before the file closes, if its last checkpoint must vacuum.
    pub fn before_close(&mut self) -> Option<&'static str> {
        let vacuum = self.deletes_pending || self.appended_rows < ROW_GROUP_ROWS;
        if vacuum {
            self.set(true)
        } else {
            None
        }
    }

    fn set(&mut self, on: bool) -> Option<&'static str> {
        if self.on == on {
            return None;
        }
        self.on = on;
        Some(if on { "RESET max_vacuum_tasks" } else { "SET max_vacuum_tasks = 0" })
    }
}

/// Whether a commit ran a checkpoint, from the WAL's size before and after it ([`wal_bytes`]): a
/// checkpoint empties the WAL, and a commit that did not checkpoint only grows it.
pub fn checkpointed(wal_before: u64, wal_after: u64) -> bool {
    wal_after == 0 || wal_after < wal_before
}

/// The size of the database's WAL file (`<path>.wal`), 0 when there is none.
pub fn wal_bytes(database: &Path) -> u64 {
    let mut wal = database.as_os_str().to_owned();
    wal.push(".wal");
    std::fs::metadata(wal).map_or(0, |m| m.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_alone_do_not_vacuum_and_an_upsert_vacuums_until_a_checkpoint() {
        let mut policy = VacuumPolicy::default();
        assert_eq!(policy.before_commit(false), Some("SET max_vacuum_tasks = 0"));
        policy.after_commit(false, 20_000, true);
        assert_eq!(policy.before_commit(false), None, "still off");

        assert_eq!(policy.before_commit(true), Some("RESET max_vacuum_tasks"), "an upsert");
        policy.after_commit(true, 0, false);
        assert_eq!(policy.before_commit(false), None, "appends after it vacuum until a checkpoint");
        policy.after_commit(false, 20_000, false);
        assert!(policy.on);
        policy.after_commit(false, 20_000, true);
        assert_eq!(policy.before_commit(false), Some("SET max_vacuum_tasks = 0"), "that checkpoint vacuumed");

        // An upsert whose own commit checkpointed (with vacuuming on) leaves nothing pending.
        assert!(policy.before_commit(true).is_some());
        policy.after_commit(true, 0, true);
        assert_eq!(policy.before_commit(false), Some("SET max_vacuum_tasks = 0"));
    }

    #[test]
    fn a_small_run_or_pending_deletes_vacuum_on_close() {
        let mut small = VacuumPolicy::default();
        small.before_commit(false);
        small.after_commit(false, 100, false);
        assert_eq!(small.before_close(), Some("RESET max_vacuum_tasks"));

        let mut large = VacuumPolicy::default();
        large.before_commit(false);
        large.after_commit(false, ROW_GROUP_ROWS, true);
        assert_eq!(large.before_close(), None, "a large run leaves its last row group as it is");

        large.before_commit(true);
        large.after_commit(true, 0, false);
        large.before_commit(false);
        assert_eq!(large.before_close(), None, "already on for the pending deletes");
        assert!(large.on);
    }

    #[test]
    fn the_wal_of_a_database_without_one_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("w.duckdb");
        assert_eq!(wal_bytes(&database), 0);
        std::fs::write(dir.path().join("w.duckdb.wal"), b"1234").unwrap();
        assert_eq!(wal_bytes(&database), 4);
    }
}
