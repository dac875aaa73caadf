//! Hard deletes of an outbox through a delete log, on the real binary: a SQLite trigger fills the log,
//! each pass publishes tombstones and empties it; a DuckDB application (DuckDB has no triggers) writes
//! the log itself. Deleted rows end as tombstones, the others stay, and the log is cleared.

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
