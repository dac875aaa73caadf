//! Dead letters you can see and replay, on the embedded default with the real binary: schema
//! violations are dead-lettered with a precise detail, the schema gains the missing column, a dry run
//! reports them valid and changes nothing, a replay lands them once, a second replay lands nothing
//! new, `--set` fixes a bad field, and a replay killed midway is resumed without duplicates.

// The embedded bus and DuckDB: built with the `embedded` feature (the default).
#![cfg(feature = "embedded")]

mod common;

use std::time::Duration;

use common::{atom_line, signal, wait_exit, wait_until, Project};

fn stdout_of(project: &Project, args: &[&str]) -> String {
    let output = project.command(args).output().unwrap();
    assert!(
        output.status.success(),
        "bqsync {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        project.log_tail()
    );
    String::from_utf8(output.stdout).unwrap()
}

fn json_of(project: &Project, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&stdout_of(project, args)).unwrap()
}

/// An atoms line with a field the schema does not have yet.
fn coloured(i: u64) -> String {
    format!(
        "{{\"event_id\":\"col-{i}\",\"kind\":\"click\",\"colour\":\"red\",\"created_at\":\"2024-01-01T00:00:00Z\"}}\n"
    )
}

/// An atoms line whose score is not a number.
fn bad_score(i: u64) -> String {
    format!("{{\"event_id\":\"score-{i}\",\"score\":\"abc\",\"created_at\":\"2024-01-01T00:00:00Z\"}}\n")
}

fn add_colour_column(project: &Project) {
    let path = project.path("schemas/atoms.json");
    let mut schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    schema["columns"].as_array_mut().unwrap().push(serde_json::json!({"name": "colour", "type": "STRING"}));
    std::fs::write(&path, serde_json::to_string_pretty(&schema).unwrap()).unwrap();
}

#[test]
fn schema_fix_then_dry_run_then_replay_lands_once_and_set_fixes_a_field() {
    let project = Project::new("");
    let mut text = String::new();
    for i in 0..100 {
        text.push_str(&atom_line(&format!("good-{i}"), i));
    }
    for i in 0..50 {
        text.push_str(&coloured(i));
    }
    for i in 0..20 {
        text.push_str(&bad_score(i));
    }
    project.append("inbox/atoms/a.jsonl", text.as_bytes());
    project.run_until_drained(&[]);
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms"), 100);

    // Inspect: stats, list with filters, show one.
    let stats = json_of(&project, &["dlq", "stats", "--json"]);
    assert_eq!(stats.as_array().unwrap().len(), 1, "{stats}");
    assert_eq!(stats[0]["table"], "atoms");
    assert_eq!(stats[0]["reason"], "schema");
    assert_eq!(stats[0]["count"], 70);
    let listed = json_of(&project, &["dlq", "list", "--reason", "schema", "--since", "1h", "--limit", "5", "--json"]);
    assert_eq!(listed.as_array().unwrap().len(), 5);
    assert!(json_of(&project, &["dlq", "list", "--until", "2000-01-01", "--json"]).as_array().unwrap().is_empty());
    let by_event = json_of(&project, &["dlq", "list", "--id", "col-7", "--json"]);
    assert_eq!(by_event.as_array().unwrap().len(), 1, "{by_event}");
    assert!(
        by_event[0]["detail"].as_str().unwrap().contains("field `colour` is not a column of table `atoms`"),
        "{by_event}"
    );
    let id = by_event[0]["dead_letter_id"].as_str().unwrap();
    let shown = stdout_of(&project, &["dlq", "show", &id[..10]]);
    assert!(shown.contains("\"colour\":\"red\"") && shown.contains("reason             schema"), "{shown}");
    let prometheus = stdout_of(&project, &["dlq", "stats", "--prometheus"]);
    assert!(prometheus.contains("bqsync_dead_letters{table=\"atoms\",reason=\"schema\"} 70"), "{prometheus}");
    let table = stdout_of(&project, &["dlq", "list"]);
    assert!(table.contains("70 dead letter(s)") && table.contains("is not a column"), "{table}");

    // The schema gains the column: a dry run says the 50 are valid now, the 20 still fail; nothing changes.
    add_colour_column(&project);
    let dry = json_of(&project, &["replay", "--dry-run", "--json"]);
    assert_eq!(
        (dry["selected"].as_u64(), dry["valid"].as_u64(), dry["still_failing"].as_u64()),
        (Some(70), Some(50), Some(20)),
        "{dry}"
    );
    let failing: Vec<&serde_json::Value> =
        dry["events"].as_array().unwrap().iter().filter(|e| e["outcome"] == "schema").collect();
    assert_eq!(failing.len(), 20);
    assert!(failing[0]["detail"].as_str().unwrap().contains("column `score`: expected Float64, got string \"abc\""));
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms"), 100, "a dry run changes nothing");
    assert_eq!(project.query_i64("SELECT count(*) FROM dead_letters"), 70);

    // Replay: the 50 land once; the 20 fail again and become dead letters with their lineage.
    let first = json_of(&project, &["replay", "--json"]);
    assert_eq!((first["landed_new"].as_u64(), first["still_failing"].as_u64()), (Some(50), Some(20)), "{first}");
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms"), 150);
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms WHERE colour = 'red'"), 50);
    assert_eq!(
        project.query_i64(
            "SELECT count(*) FROM dead_letters WHERE json_extract_string(attributes, '$.bqsync_replay_of') IS NOT NULL \
             AND json_extract_string(attributes, '$.bqsync_replay_history') LIKE 'schema@%'"
        ),
        20
    );
    // The 50 are marked replayed, with the time; status counts the 20 and their 20 new dead letters.
    assert_eq!(open_dead_letters(&project), 40);
    let shown = stdout_of(&project, &["dlq", "show", &id[..10]]);
    assert!(shown.contains("replayed_at") && !shown.contains("- (open)"), "{shown}");
    assert!(stdout_of(&project, &["dlq", "list", "--id", "col-7"]).contains("replayed 20"), "the list says so too");
    // A second replay lands nothing new and records no new dead letters.
    let second = json_of(&project, &["replay", "--json"]);
    assert_eq!((second["landed_new"].as_u64(), second["already_present"].as_u64()), (Some(0), Some(50)), "{second}");
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms"), 150);
    assert_eq!(project.query_i64("SELECT count(*) FROM dead_letters"), 90);

    // --set fixes the bad field: the 20 land, once, with the event ids they always had.
    let fixed = json_of(&project, &["replay", "--id", "score-3", "--set", "score=2.5", "--json"]);
    assert_eq!(fixed["landed_new"].as_u64(), Some(1), "{fixed}");
    let all = json_of(&project, &["replay", "--reason", "schema", "--set", "score=2.5", "--json"]);
    assert_eq!(all["still_failing"].as_u64(), Some(0), "{all}");
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms WHERE event_id LIKE 'score-%' AND score = 2.5"), 20);
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms"), 170);
    assert_eq!(project.query_i64("SELECT count(DISTINCT event_id) FROM atoms"), 170);
    assert_eq!(open_dead_letters(&project), 0, "every dead letter was replayed");
}

/// Open dead letters as `bqsync status --json` counts them.
fn open_dead_letters(project: &Project) -> u64 {
    let status = json_of(project, &["status", "--json"]);
    status["dead_letters"].as_array().unwrap().iter().map(|row| row[2].as_u64().unwrap()).sum()
}

#[test]
fn a_replay_killed_midway_is_resumed_without_duplicates() {
    let project = Project::new("");
    let total = 100_000;
    let text: String = (0..total).map(coloured).collect();
    project.append("inbox/atoms/a.jsonl", text.as_bytes());
    project.run_until_drained(&[]);
    assert_eq!(project.query_i64("SELECT count(*) FROM dead_letters"), total as i64);
    add_colour_column(&project);

    // Killed once ten of its hundred chunks committed, whatever the machine's speed.
    let mut child = project.spawn(&["replay"], &[("BQSYNC_LOG", "debug")]);
    let committed = || {
        std::fs::read_to_string(project.path("bqsync.log"))
            .unwrap_or_default()
            .matches("replay chunk committed")
            .count()
    };
    wait_until(Duration::from_secs(120), "ten replay chunks committed", || committed() >= 10);
    assert!(child.try_wait().unwrap().is_none(), "the replay must still be running to be killed");
    signal(&child, "KILL");
    let _ = wait_exit(&mut child, Duration::from_secs(60));
    let landed_before = project.query_i64("SELECT count(*) FROM atoms");
    eprintln!("replay killed with {landed_before} of {total} landed");
    assert!(landed_before >= 10_000 && landed_before < total as i64);

    let resumed = json_of(&project, &["replay", "--json"]);
    assert_eq!(resumed["landed_new"].as_i64().unwrap() + landed_before, total as i64, "{resumed}");
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms"), total as i64);
    assert_eq!(project.query_i64("SELECT count(DISTINCT event_id) FROM atoms"), total as i64);
}
