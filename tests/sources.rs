//! Producers on real files and a real local HTTP server, through the real binary: SQLite watermark
//! sync, the dirty-row outbox (SQLite and DuckDB) under concurrent writers, meeting sessions written
//! in parts, and the incremental HTTP API source.

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;

use common::*;

/// Runs `bqsync ARGS` to completion and asserts it succeeded.
fn bqsync(project: &Project, args: &[&str]) {
    let output = project.command(args).stdout(Stdio::null()).stderr(Stdio::piped()).output().unwrap();
    assert!(output.status.success(), "bqsync {args:?} failed:\n{}", String::from_utf8_lossy(&output.stderr));
}

/// `(id, label, updated_at µs)` of the live rows of `id_registry` in the warehouse.
fn registry_in_warehouse(project: &Project) -> BTreeMap<String, (Option<String>, i64)> {
    let connection = project.warehouse();
    let mut statement = connection
        .prepare("SELECT id, label, epoch_us(updated_at) FROM id_registry WHERE NOT _bqsync_deleted")
        .unwrap();
    statement
        .query_map([], |r| Ok((r.get::<_, String>(0)?, (r.get(1)?, r.get(2)?))))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The same, from the source table (rows not soft-deleted).
fn registry_in_source(db: &rusqlite::Connection) -> BTreeMap<String, (Option<String>, i64)> {
    let mut statement = db.prepare("SELECT id, label, updated_at FROM registry WHERE is_deleted = 0").unwrap();
    statement
        .query_map([], |r| {
            let text: String = r.get(2)?;
            let micros =
                chrono::NaiveDateTime::parse_from_str(&text, "%Y-%m-%d %H:%M:%S").unwrap().and_utc().timestamp_micros();
            Ok((r.get::<_, String>(0)?, (r.get(1)?, micros)))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn sqlite_watermark_sync_converges_with_updates_deletes_and_equal_timestamps() {
    let project = Project::new(
        r#"
[[sources.sqlite]]
name = "registry_db"
path = "registry.db"
batch_rows = 7

[[sources.sqlite.tables]]
source_table = "registry"
table = "id_registry"
mode = "updated_at"
deleted_column = "is_deleted"

[[sources.sqlite.tables]]
source_table = "events"
table = "atoms"
mode = "rowid"
"#,
    );
    let db = rusqlite::Connection::open(project.path("registry.db")).unwrap();
    db.execute_batch(
        "CREATE TABLE registry (id TEXT PRIMARY KEY, kind TEXT, external_ref TEXT, label TEXT,
                                updated_at TEXT NOT NULL, is_deleted INTEGER NOT NULL DEFAULT 0);
         CREATE TABLE events (event_id TEXT, entity_id TEXT, kind TEXT, text TEXT, score REAL, tags TEXT, created_at TEXT);",
    )
    .unwrap();
    // 50 rows on 5 distinct timestamps: pages of 7 cut through runs of equal values.
    for i in 0..50 {
        db.execute(
            "INSERT INTO registry (id, kind, label, updated_at) VALUES (?1, 'person', ?2, ?3)",
            rusqlite::params![format!("id-{i:03}"), format!("v1-{i}"), format!("2024-05-01 10:00:0{}", i / 10)],
        )
        .unwrap();
    }
    let add_events = |from: usize, to: usize| {
        for i in from..to {
            db.execute(
                "INSERT INTO events VALUES (?1, 'e', 'click', 't', ?2, '[\"a\",\"b\"]', '2024-05-01 10:00:00')",
                rusqlite::params![format!("ev-{i}"), i as f64 / 2.0],
            )
            .unwrap();
        }
    };
    add_events(0, 30);

    bqsync(&project, &["sync", "--land"]);
    assert_eq!(registry_in_warehouse(&project), registry_in_source(&db));
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms"), 30);
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms WHERE len(tags) = 2 AND score IS NOT NULL"), 30);

    // Updates (ten rows to one new equal timestamp), late rows at the current maximum (a tie with the
    // watermark), a row stamped 60 s in the past (a clock behind ours), hard and soft deletes.
    db.execute_batch(
        "UPDATE registry SET label = 'v2-' || id, updated_at = '2024-05-01 11:00:00' WHERE id < 'id-010';
         INSERT INTO registry (id, kind, label, updated_at) VALUES ('late-1', 'person', 'tie', '2024-05-01 11:00:00'),
                                                                  ('late-2', 'person', 'tie', '2024-05-01 11:00:00');
         INSERT INTO registry (id, kind, label, updated_at) VALUES ('skewed', 'person', 'behind', '2024-05-01 10:59:00');
         DELETE FROM registry WHERE id BETWEEN 'id-040' AND 'id-044';
         UPDATE registry SET is_deleted = 1, updated_at = '2024-05-01 11:00:01' WHERE id = 'id-045';",
    )
    .unwrap();
    add_events(30, 50);
    bqsync(&project, &["sync", "registry_db", "--land"]);
    let expected = registry_in_source(&db);
    assert_eq!(expected.len(), 50 + 3 - 5 - 1);
    assert_eq!(registry_in_warehouse(&project), expected);
    assert_eq!(project.query_i64("SELECT count(*) FROM id_registry WHERE _bqsync_deleted"), 6);
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms"), 50);

    // A second pass with nothing new publishes nothing; a full resync publishes everything again and
    // changes nothing.
    let before = project.query_i64("SELECT count(*) FROM id_registry");
    bqsync(&project, &["sync", "--full", "--land"]);
    assert_eq!(registry_in_warehouse(&project), expected);
    assert_eq!(project.query_i64("SELECT count(*) FROM id_registry"), before);
    assert_eq!(project.query_i64("SELECT count(DISTINCT event_id) FROM atoms"), 50);
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms"), 50);
    assert_eq!(project.query_i64("SELECT count(*) FROM dead_letters"), 0);

    let output = project.command(&["sync", "nope"]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no source named `nope`"));
}
