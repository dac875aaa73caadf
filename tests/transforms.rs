//! Column transforms on the real binary: a hashed or redacted value never reaches the bus, a dead
//! letter, a log line or the warehouse, whichever way its line fails or lands.

// The embedded bus and DuckDB: built with the `embedded` feature (the default).
#![cfg(feature = "embedded")]

mod common;

use common::{atom_line, Project};
use sha2::Digest;

const SECRET: &str = "SUPERSECRET";
const SALT: (&str, &str) = ("BQSYNC_TEST_SALT", "pepper");

fn with_transforms(project: &Project) {
    let path = project.path("schemas/atoms.json");
    let mut schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    schema["transforms"] = serde_json::json!({ "text": {"hash": {"salt_env": SALT.0}}, "entity_id": "redact" });
    std::fs::write(&path, schema.to_string()).unwrap();
}

/// Every file under `dir`, recursively.
fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn hashed_and_redacted_values_never_leave_the_producer() {
    let project = Project::new("");
    with_transforms(&project);
    let secret_line = |id: &str, extra: &str| {
        format!(
            "{{\"event_id\":\"{id}\",\"entity_id\":\"{SECRET}-e-{id}\",\"kind\":\"click\",\"text\":\"{SECRET}-{id}\",\"created_at\":\"2024-01-01T00:00:00Z\"{extra}}}\n"
        )
    };
    let mut lines: String = (0..50).map(|i| secret_line(&format!("g{i}"), "")).collect();
    lines.push_str(&secret_line("bad-score", ",\"score\":\"high\"")); // fails in the worker
    lines.push_str(&format!("{{\"entity_id\":\"{SECRET}-noid\",\"text\":\"{SECRET}\"}}\n")); // no event id
    lines.push_str(&format!("{{oops {SECRET} not json\n")); // not JSON at all
    lines.push_str(&atom_line("plain", 1)); // a line with nothing to hide
    project.append("inbox/atoms/a.jsonl", lines.as_bytes());

    // Without the salt, nothing starts.
    let output = project.command(&["run", "--until-drained"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains(SALT.0), "{stderr}");

    let output =
        project.command(&["run", "--until-drained"]).env(SALT.0, SALT.1).env("BQSYNC_LOG", "debug").output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{log}");
    assert!(!log.contains(SECRET), "a log line carries a raw value");
    assert!(!String::from_utf8_lossy(&output.stdout).contains(SECRET));

    assert_eq!(project.query_i64("SELECT count(*) FROM atoms"), 51);
    let want = sha2::Sha256::digest(format!("{}{SECRET}-g7", SALT.1).as_bytes());
    let want: String = want.iter().map(|b| format!("{b:02x}")).collect();
    let connection = project.warehouse();
    let (text, entity): (String, String) = connection
        .query_row("SELECT text, entity_id FROM atoms WHERE event_id = 'g7'", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap();
    assert_eq!((text.as_str(), entity.as_str()), (want.as_str(), "REDACTED"));
    let dead: Vec<String> = connection
        .prepare("SELECT CAST(message_bytes AS VARCHAR) || ' ' || coalesce(detail, '') FROM dead_letters")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(dead.len(), 3, "{dead:?}");
    assert!(dead.iter().all(|d| !d.contains(SECRET)), "a dead letter carries a raw value: {dead:?}");
    assert!(dead.iter().any(|d| d.contains("record withheld")), "{dead:?}");
    drop(connection);

    // Nor is it anywhere in bqsync's files: the bus, the checkpoints, the warehouse.
    for file in files(&project.path(".bqsync")).into_iter().chain([project.path("bqsync.duckdb")]) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(memchr::memmem::find(&bytes, SECRET.as_bytes()).is_none(), "{} holds a raw value", file.display());
    }
    let dlq = project.command(&["dlq", "list", "--json"]).output().unwrap();
    assert!(dlq.status.success() && !String::from_utf8_lossy(&dlq.stdout).contains(SECRET));

    // Replayed with its id set, the record without one lands hashed once (not a hash of the hash).
    let replay = project
        .command(&[
            "replay",
            "--json",
            "--reason",
            "schema",
            "--set",
            "event_id=\"noid\"",
            "--set",
            "created_at=\"2024-01-01T00:00:00Z\"",
        ])
        .env(SALT.0, SALT.1)
        .output()
        .unwrap();
    assert!(replay.status.success(), "{}", String::from_utf8_lossy(&replay.stderr));
    let want = sha2::Sha256::digest(format!("{}{SECRET}", SALT.1).as_bytes());
    let want: String = want.iter().map(|b| format!("{b:02x}")).collect();
    let text: String =
        project.warehouse().query_row("SELECT text FROM atoms WHERE event_id = 'noid'", [], |r| r.get(0)).unwrap();
    assert_eq!(text, want);
}
