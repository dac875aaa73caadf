//! `bqsync reset SOURCE[:TABLE]` on the real binary: one table publishes everything again and the
//! others nothing; keys deleted before the reset still get their tombstones; what cannot be reset says
//! why; and a failing table does not stop the other tables of its source.

// The embedded bus and DuckDB: built with the `embedded` feature (the default).
#![cfg(feature = "embedded")]

mod common;

use common::Project;

const CONFIG: &str = r#"
[[sources.sqlite]]
name = "db"
path = "app.db"

[[sources.sqlite.tables]]
source_table = "registry"
table = "id_registry"

[[sources.sqlite.tables]]
source_table = "events"
table = "atoms"

[[sources.outbox]]
name = "crm"
path = "crm.db"
source_table = "contacts"
table = "contacts_master"
"#;

/// Runs `bqsync ARGS`: (success, stdout, stderr).
fn bqsync(project: &Project, args: &[&str]) -> (bool, String, String) {
    let output = project.command(args).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

/// `sync db --land`: the events it published.
fn sync(project: &Project) -> u64 {
    let (ok, stdout, stderr) = bqsync(project, &["sync", "db", "--land"]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    report["report"]["events_published"].as_u64().unwrap_or_else(|| panic!("{report}"))
}

fn setup() -> (Project, rusqlite::Connection) {
    let project = Project::new(CONFIG);
    let db = rusqlite::Connection::open(project.path("app.db")).unwrap();
    db.execute_batch(
        "CREATE TABLE registry (id TEXT PRIMARY KEY, kind TEXT, updated_at TEXT NOT NULL);
         CREATE TABLE events (event_id TEXT, kind TEXT, created_at TEXT);",
    )
    .unwrap();
    for i in 0..20 {
        db.execute("INSERT INTO registry VALUES (?1, 'person', '2024-05-01 10:00:00')", [format!("id-{i:02}")])
            .unwrap();
        db.execute("INSERT INTO events VALUES (?1, 'click', '2024-05-01 10:00:00')", [format!("ev-{i}")]).unwrap();
    }
    let crm = rusqlite::Connection::open(project.path("crm.db")).unwrap();
    crm.execute_batch("CREATE TABLE contacts (contact_id TEXT, version INTEGER, dirty INTEGER)").unwrap();
    (project, db)
}

#[test]
fn a_reset_table_publishes_again_alone_and_keeps_finding_deletes() {
    let (project, db) = setup();
    assert_eq!(sync(&project), 40);
    assert_eq!(sync(&project), 0, "nothing new, nothing published");

    // Deleted at the source, then reset before any pass saw it.
    db.execute("DELETE FROM registry WHERE id = 'id-07'", []).unwrap();
    let (ok, stdout, stderr) = bqsync(&project, &["reset", "db:id_registry"]);
    assert!(ok && stdout.contains("table `registry`"), "{stdout}{stderr}");
    // Every remaining registry row again plus the tombstone; no event of the other table.
    assert_eq!(sync(&project), 19 + 1);
    assert_eq!(project.query_i64("SELECT count(*) FROM id_registry WHERE _bqsync_deleted"), 1);
    assert_eq!(project.query_i64("SELECT count(*) FROM id_registry WHERE NOT _bqsync_deleted"), 19);
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms"), 20);
    assert_eq!(sync(&project), 0, "the reset is done once the table went through");

    // The whole source.
    let (ok, _, stderr) = bqsync(&project, &["reset", "db"]);
    assert!(ok, "{stderr}");
    assert_eq!(sync(&project), 19 + 20);
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms"), 20, "published again, landed once");

    // What cannot be reset says why.
    let (ok, _, stderr) = bqsync(&project, &["reset", "crm"]);
    assert!(!ok && stderr.contains("outbox") && stderr.contains("dirty"), "{stderr}");
    let (ok, _, stderr) = bqsync(&project, &["reset", "db:nope"]);
    assert!(!ok && stderr.contains("its tables: registry, events"), "{stderr}");
    let (ok, _, stderr) = bqsync(&project, &["reset", "nope"]);
    assert!(!ok && stderr.contains("no source named `nope`"), "{stderr}");
}

#[test]
fn a_failing_table_does_not_stop_the_others() {
    let (project, db) = setup();
    // The registry table goes away: its query fails on every pass.
    db.execute_batch("ALTER TABLE registry RENAME TO registry_old").unwrap();
    let (ok, _, stderr) = bqsync(&project, &["sync", "db", "--land"]);
    assert!(!ok, "a one-shot run still reports the failing table");
    assert!(stderr.contains("registry"), "{stderr}");
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms"), 20, "the other table synced all the same");

    // The failure is visible per table: status counts it, history lists it.
    let (ok, stdout, stderr) = bqsync(&project, &["status", "--json"]);
    assert!(ok, "{stderr}");
    let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let state = |table: &str| {
        status["sources"].as_array().unwrap().iter().find(|s| s["source"] == "db" && s["table"] == table).cloned()
    };
    let registry = state("registry").unwrap_or_else(|| panic!("{status}"));
    assert!(registry["consecutive_failures"].as_u64().unwrap() >= 1, "{registry}");
    assert!(registry["last_error"].as_str().unwrap().contains("registry"), "{registry}");
    let events = state("events").unwrap();
    assert_eq!(events["consecutive_failures"], 0, "{events}");
    assert_eq!(events["last_published"].as_u64(), Some(0), "the retries found nothing new: {events}");
    assert!(events["position"].as_str().is_some(), "its watermark: {events}");
    let (_, text, _) = bqsync(&project, &["status"]);
    assert!(text.contains("db:registry") && text.contains("failing ("), "{text}");
    let (ok, stdout, _) = bqsync(&project, &["history", "db:events", "--json"]);
    let passes: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    assert!(ok && passes.iter().any(|p| p["published"] == 20), "the first pass published 20: {stdout}");
    let (_, text, _) = bqsync(&project, &["history", "db:registry"]);
    assert!(text.contains("failed: "), "{text}");

    // Fixed: the next pass succeeds and the failure count goes back to 0.
    db.execute_batch("ALTER TABLE registry_old RENAME TO registry").unwrap();
    assert_eq!(sync(&project), 20);
    let (_, stdout, _) = bqsync(&project, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let registry = status["sources"].as_array().unwrap().iter().find(|s| s["table"] == "registry").unwrap().clone();
    assert_eq!(registry["consecutive_failures"], 0, "{registry}");
    assert_eq!(registry["last_published"], 20, "{registry}");
}
