//! Hard deletes of an outbox through a delete log, on the real binary: a SQLite trigger fills the log,
//! each pass publishes tombstones and empties it; a DuckDB application (DuckDB has no triggers) writes
//! the log itself. Deleted rows end as tombstones, the others stay, and the log is cleared.

// The embedded bus and DuckDB: built with the `embedded` feature (the default).
#![cfg(feature = "embedded")]

mod common;

use common::Project;

fn config(path: &str) -> String {
    format!(
        "[[sources.outbox]]\nname = \"crm\"\npath = \"{path}\"\nsource_table = \"contacts\"\ntable = \"contacts_master\"\n\
         columns = {{ id = \"contact_id\" }}\ndelete_log_table = \"contacts_deleted\"\n"
    )
}

fn sync(project: &Project) {
    let output = project.command(&["sync", "crm", "--land"]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

fn live_and_deleted(project: &Project) -> (i64, i64) {
    (
        project.query_i64("SELECT count(*) FROM contacts_master WHERE NOT _bqsync_deleted"),
        project.query_i64("SELECT count(*) FROM contacts_master WHERE _bqsync_deleted"),
    )
}

#[test]
fn a_trigger_fed_delete_log_turns_hard_deletes_into_tombstones() {
    let project = Project::new(&config("app.db"));
    let db = rusqlite::Connection::open(project.path("app.db")).unwrap();
    db.execute_batch(
        "CREATE TABLE contacts (id TEXT PRIMARY KEY, name TEXT, email TEXT, version INTEGER NOT NULL, dirty INTEGER NOT NULL DEFAULT 1);
         CREATE TABLE contacts_deleted (id TEXT, version INTEGER);
         CREATE TRIGGER contacts_hard_delete AFTER DELETE ON contacts
         BEGIN INSERT INTO contacts_deleted (id, version) VALUES (old.id, old.version + 1); END;",
    )
    .unwrap();
    for i in 0..10 {
        db.execute("INSERT INTO contacts (id, name, version) VALUES (?1, 'n', 1)", [format!("c{i}")]).unwrap();
    }
    sync(&project);
    assert_eq!(live_and_deleted(&project), (10, 0));
    db.execute("DELETE FROM contacts WHERE id IN ('c1', 'c4', 'c7')", []).unwrap();
    sync(&project);
    assert_eq!(live_and_deleted(&project), (7, 3));
    let logged: i64 = db.query_row("SELECT count(*) FROM contacts_deleted", [], |r| r.get(0)).unwrap();
    assert_eq!(logged, 0, "the published log rows are cleared");
    // Re-created later with a higher version: it comes back.
    db.execute("INSERT INTO contacts (id, name, version) VALUES ('c4', 'again', 3)", []).unwrap();
    sync(&project);
    assert_eq!(live_and_deleted(&project), (8, 2));
}

#[test]
fn a_duckdb_outbox_reads_a_delete_log_its_application_writes() {
    let project = Project::new(&config("app.duckdb"));
    {
        let db = duckdb::Connection::open(project.path("app.duckdb")).unwrap();
        db.execute_batch(
            "CREATE TABLE contacts (id VARCHAR PRIMARY KEY, name VARCHAR, email VARCHAR, version BIGINT NOT NULL, dirty BOOLEAN DEFAULT true);
             CREATE TABLE contacts_deleted (id VARCHAR, version BIGINT);
             INSERT INTO contacts (id, name, version) SELECT 'd' || i, 'n', 1 FROM range(5) t(i);",
        )
        .unwrap();
    }
    sync(&project);
    assert_eq!(live_and_deleted(&project), (5, 0));
    {
        let db = duckdb::Connection::open(project.path("app.duckdb")).unwrap();
        db.execute_batch(
            "BEGIN; DELETE FROM contacts WHERE id = 'd2'; INSERT INTO contacts_deleted VALUES ('d2', 2); COMMIT;",
        )
        .unwrap();
    }
    sync(&project);
    assert_eq!(live_and_deleted(&project), (4, 1));
    let db = duckdb::Connection::open(project.path("app.duckdb")).unwrap();
    let logged: i64 = db.query_row("SELECT count(*) FROM contacts_deleted", [], |r| r.get(0)).unwrap();
    assert_eq!(logged, 0);
}

/// A full re-sync of an outbox publishes every row, dirty or not; one missed while bqsync was down runs
/// once at start-up.
#[test]
fn an_outbox_full_resync_publishes_every_row_once() {
    let project = Project::new(&(config("app.db") + "full_schedule = \"0 2 * * *\"\n"));
    let db = rusqlite::Connection::open(project.path("app.db")).unwrap();
    db.execute_batch(
        "CREATE TABLE contacts (id TEXT PRIMARY KEY, name TEXT, email TEXT, version INTEGER NOT NULL, dirty INTEGER NOT NULL DEFAULT 1);
         CREATE TABLE contacts_deleted (id TEXT, version INTEGER);",
    )
    .unwrap();
    for i in 0..10 {
        db.execute("INSERT INTO contacts (id, name, version) VALUES (?1, 'n', 1)", [format!("c{i}")]).unwrap();
    }
    let published = |project: &Project| -> u64 {
        let output = project.command(&["sync", "crm", "--land"]).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        report["report"]["events_published"].as_u64().unwrap()
    };
    assert_eq!(published(&project), 10);
    assert_eq!(published(&project), 0, "no dirty row, no full re-sync due");
    let state = rusqlite::Connection::open(project.path(".bqsync/state.db")).unwrap();
    let two_days_ago = chrono::Utc::now().timestamp_micros() - 2 * 86_400_000_000;
    state
        .execute(
            "UPDATE source_state SET value = ?1 WHERE source = 'crm' AND key = 'schedule:last_full_micros'",
            [two_days_ago.to_string()],
        )
        .unwrap();
    assert_eq!(published(&project), 10, "the missed full re-sync publishes every row");
    assert_eq!(published(&project), 0);
    assert_eq!(live_and_deleted(&project), (10, 0));
}

/// SIGKILL while the delete log drains (between a page's publish and its clear, among others): after
/// a clean last run every deleted key is a tombstone exactly once, the others live, the log empty.
#[test]
fn sigkill_while_the_delete_log_drains_loses_no_delete() {
    let project = Project::new(&(config("app.db") + "batch_rows = 10\n"));
    let db = rusqlite::Connection::open(project.path("app.db")).unwrap();
    db.execute_batch(
        "CREATE TABLE contacts (id TEXT PRIMARY KEY, name TEXT, email TEXT, version INTEGER NOT NULL, dirty INTEGER NOT NULL DEFAULT 1);
         CREATE TABLE contacts_deleted (id TEXT, version INTEGER);
         CREATE TRIGGER contacts_hard_delete AFTER DELETE ON contacts
         BEGIN INSERT INTO contacts_deleted (id, version) VALUES (old.id, old.version + 1); END;",
    )
    .unwrap();
    db.execute_batch("WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 1999) INSERT INTO contacts (id, name, version) SELECT 'c' || i, 'n', 1 FROM n")
        .unwrap();
    sync(&project);
    assert_eq!(live_and_deleted(&project), (2000, 0));
    db.execute("DELETE FROM contacts WHERE CAST(substr(id, 2) AS INTEGER) % 4 <> 0", []).unwrap();
    let logged = || -> i64 { db.query_row("SELECT count(*) FROM contacts_deleted", [], |r| r.get(0)).unwrap() };
    let mut mid_drain = 0;
    for _ in 0..5 {
        let before = logged();
        let mut child = project.spawn_run(&[], &[]);
        // Killed once the drain has started, at a random point of it.
        common::wait_until(std::time::Duration::from_secs(30), "the drain to start", || {
            logged() < before || before == 0
        });
        std::thread::sleep(std::time::Duration::from_millis(fastrand::u64(0..40)));
        common::signal(&child, "KILL");
        let _ = common::wait_exit(&mut child, std::time::Duration::from_secs(10));
        mid_drain += i64::from(logged() > 0 && logged() < before);
    }
    assert!(mid_drain > 0, "at least one kill landed mid-drain");
    sync(&project);
    // Killed again and again right after leasing them, some tombstones reached max_delivery_attempts
    // and wait in the dead letters, as on Pub/Sub; a replay lands them.
    let replay = project.command(&["replay", "--reason", "max_attempts"]).output().unwrap();
    assert!(replay.status.success(), "{}", String::from_utf8_lossy(&replay.stderr));
    assert_eq!(live_and_deleted(&project), (500, 1500), "one row per key: nothing lost, nothing twice");
    assert_eq!(logged(), 0);
}
