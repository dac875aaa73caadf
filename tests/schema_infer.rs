//! `bqsync schema infer` on the real binary: a new table's rows are dead-lettered, a schema is drafted
//! from them and written, and a replay lands every row once; drafts from SQLite and DuckDB tables
//! follow the seed rules; nothing is written without `--write`.

// The embedded bus and DuckDB: built with the `embedded` feature (the default).
#![cfg(feature = "embedded")]

mod common;

use common::Project;

fn bqsync(project: &Project, args: &[&str]) -> (bool, String, String) {
    let output = project.command(args).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

#[test]
fn a_new_tables_dead_letters_become_a_schema_and_a_replay_lands_them_once() {
    let project = Project::new("");
    let lines: String = (0..30)
        .map(|i| {
            format!(
                "{{\"event_id\":\"o-{i}\",\"amount\":{i}.5,\"items\":[\"a\",\"b\"],\"placed_at\":\"2024-03-01T10:00:{:02}Z\",\"note\":null}}\n",
                i % 60
            )
        })
        .collect();
    project.append("inbox/orders/a.jsonl", lines.as_bytes());
    project.run_until_drained(&[]);
    assert_eq!(project.query_i64("SELECT count(*) FROM dead_letters WHERE reason = 'unknown_table'"), 30);

    let (ok, draft, stderr) = bqsync(&project, &["schema", "infer", "orders", "--dead-letters"]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("does not exist yet") && stderr.contains("--write"), "{stderr}");
    assert!(!project.path("schemas/orders.json").exists(), "nothing written without --write");
    let schema: serde_json::Value = serde_json::from_str(&draft).unwrap();
    assert_eq!(schema["event_id_field"], "event_id", "{draft}");
    let column =
        |name: &str| schema["columns"].as_array().unwrap().iter().find(|c| c["name"] == name).cloned().unwrap();
    assert_eq!(column("placed_at")["type"], "TIMESTAMP");
    assert_eq!(
        (column("items")["type"].clone(), column("items")["mode"].clone()),
        ("STRING".into(), "REPEATED".into())
    );
    assert_eq!(column("amount")["type"], "FLOAT64");

    let (ok, _, stderr) = bqsync(&project, &["schema", "infer", "orders", "--dead-letters", "--write"]);
    assert!(ok && project.path("schemas/orders.json").exists(), "{stderr}");
    for expected_new in [30, 0] {
        let (ok, stdout, stderr) =
            bqsync(&project, &["replay", "--json", "--reason", "unknown_table", "--table", "orders"]);
        assert!(ok, "{stderr}");
        let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(summary["landed_new"], expected_new, "{summary}");
    }
    assert_eq!(project.query_i64("SELECT count(DISTINCT event_id) FROM orders"), 30);
    assert_eq!(project.query_i64("SELECT count(*) FROM orders WHERE len(items) = 2 AND amount > 0"), 30);
}

#[test]
fn database_tables_are_drafted_by_the_seed_rules_and_compared_with_the_existing_file() {
    let project = Project::new("");
    let db = rusqlite::Connection::open(project.path("app.db")).unwrap();
    db.execute_batch(
        "CREATE TABLE users (id TEXT PRIMARY KEY, name TEXT NOT NULL, score REAL, logins INTEGER,
                             last_seen_at TEXT, updated_at TEXT NOT NULL)",
    )
    .unwrap();
    let (ok, draft, stderr) = bqsync(&project, &["schema", "infer", "users", "--sqlite", "app.db"]);
    assert!(ok, "{stderr}");
    let schema: serde_json::Value = serde_json::from_str(&draft).unwrap();
    assert_eq!(schema["write_mode"], "upsert", "{draft}");
    assert_eq!(schema["primary_key"], serde_json::json!(["id"]));
    assert_eq!(schema["version_column"], "updated_at");
    let types: Vec<(String, String, String)> = schema["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().into(),
                c["type"].as_str().unwrap().into(),
                c["mode"].as_str().unwrap_or("NULLABLE").into(),
            )
        })
        .collect();
    let want = [
        ("id", "STRING", "REQUIRED"),
        ("name", "STRING", "REQUIRED"),
        ("score", "FLOAT64", "NULLABLE"),
        ("logins", "INT64", "NULLABLE"),
        ("last_seen_at", "TIMESTAMP", "NULLABLE"),
        ("updated_at", "TIMESTAMP", "REQUIRED"),
    ];
    assert_eq!(types, want.map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())), "{draft}");

    let duck = duckdb::Connection::open(project.path("app.duckdb")).unwrap();
    duck.execute_batch("CREATE TABLE events (id BIGINT PRIMARY KEY, payload JSON, ok BOOLEAN NOT NULL)").unwrap();
    drop(duck);
    let (ok, draft, stderr) =
        bqsync(&project, &["schema", "infer", "events2", "--duckdb", "app.duckdb", "--from", "events"]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("no `updated_at` or `version`"), "a key without a version: said so: {stderr}");
    let schema: serde_json::Value = serde_json::from_str(&draft).unwrap();
    assert_eq!(schema["write_mode"], "append");

    // Against an existing file: a diff, and the file untouched.
    let before = std::fs::read_to_string(project.path("schemas/atoms.json")).unwrap();
    project.append("sample.jsonl", common::atom_line("s1", 1).as_bytes());
    let (ok, _, stderr) = bqsync(&project, &["schema", "infer", "atoms", "--jsonl", "sample.jsonl"]);
    assert!(ok && stderr.contains("against ") && stderr.contains("\n-"), "{stderr}");
    assert_eq!(std::fs::read_to_string(project.path("schemas/atoms.json")).unwrap(), before);
}
