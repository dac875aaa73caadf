//! Load jobs (`bqsync load`, `bqsync backfill`) against the GCS and BigQuery emulators, started by
//! `scripts/test.sh` so that the BigQuery emulator reads `gs://` sources from the GCS emulator's
//! files (GCS_LOCAL_ROOT). Each test uses a dataset and a bucket of its own. Without the emulators
//! these tests fail; they never skip.

// The embedded default beside the Google backends: built with both features (the default).
#![cfg(all(feature = "embedded", feature = "gcp"))]

mod common;

use std::time::Duration;

use common::{signal, wait_exit, wait_until, Project};
use serde_json::Value;

const PROJECT: &str = "bqsync-test";

fn project(test: &str) -> (Project, String) {
    let dataset = common::unique_name("l", test, '_');
    let bucket = common::unique_name("bqsync", test, '-');
    let config = format!(
        "[warehouse]\nkind = \"bigquery\"\n\n[warehouse.bigquery]\nproject = \"{PROJECT}\"\ndataset = \"{dataset}\"\n\
         endpoint = \"{}\"\nsettle_margin_secs = 3\nappend_timeout_secs = 2\n\n\
         [gcs]\nbucket = \"{bucket}\"\nendpoint = \"{}\"\ncreate_bucket = true\n\n\
         [[sources.files]]\nroot = \"drop\"\nsettle_secs = 0\n",
        common::emulator_url("BIGQUERY_EMULATOR_HOST"),
        common::emulator_url("STORAGE_EMULATOR_HOST"),
    );
    (Project::new(&config), dataset)
}

fn count(sql: &str) -> i64 {
    let rows = tokio::runtime::Runtime::new().unwrap().block_on(common::bigquery_rows(
        &common::emulator_url("BIGQUERY_EMULATOR_HOST"),
        PROJECT,
        sql,
    ));
    match &rows[0][0] {
        Value::String(s) => s.parse().unwrap(),
        other => panic!("{sql}: {other}"),
    }
}

fn atoms(dataset: &str) -> (i64, i64) {
    let table = format!("`{PROJECT}.{dataset}.atoms`");
    (count(&format!("SELECT COUNT(*) FROM {table}")), count(&format!("SELECT COUNT(DISTINCT event_id) FROM {table}")))
}

fn load_once(project: &Project) -> Vec<Value> {
    let output = project.command(&["load", "--once", "--json"]).output().unwrap();
    assert!(output.status.success(), "bqsync load failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// 10 bad lines among 500: 10 dead letters with their reasons, 500 rows; the same content dropped
/// again is not loaded again, and a backfill of it (which does not skip) still lands nothing twice.
#[test]
fn bad_lines_are_dead_letters_and_the_same_file_twice_lands_once() {
    let (project, dataset) = project("bad_lines");
    let mut file: String = (0..500u64).map(|i| common::atom_line(&format!("ld-{i}"), i)).collect();
    for i in 0..5 {
        file.push_str(&format!("{{\"event_id\": \"broken-{i}\"\n"));
        file.push_str(&format!("{{\"event_id\":\"nodate-{i}\",\"kind\":\"x\"}}\n"));
    }
    project.append("drop/atoms/day1.jsonl", file.as_bytes());
    let reports = load_once(&project);
    assert_eq!(reports[0]["rows"], 500, "{reports:?}");
    assert_eq!(reports[0]["dead_letters"], 10);
    assert!(reports[0]["job_ids"][0].as_str().unwrap().starts_with("bqsync_load_"));
    assert_eq!(atoms(&dataset), (500, 500));
    let dead = format!("`{PROJECT}.{dataset}.dead_letters_live`");
    assert_eq!(count(&format!("SELECT COUNT(*) FROM {dead} WHERE reason = 'decode'")), 5);
    assert_eq!(count(&format!("SELECT COUNT(*) FROM {dead} WHERE reason = 'schema'")), 5);

    project.append("drop/atoms/day1-copy.jsonl", file.as_bytes());
    assert_eq!(load_once(&project), Vec::<Value>::new(), "same content: skipped");
    let output =
        project.command(&["backfill", "drop/atoms/day1.jsonl", "--table", "atoms", "--json"]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["rows"], 500);
    assert_eq!(atoms(&dataset), (500, 500), "loaded twice, landed once");
    assert_eq!(count(&format!("SELECT COUNT(*) FROM {dead}")), 10, "dead letters once");
    let names = tokio::runtime::Runtime::new().unwrap().block_on(common::bigquery_table_names(
        &common::emulator_url("BIGQUERY_EMULATOR_HOST"),
        PROJECT,
        &dataset,
    ));
    assert!(!names.iter().any(|t| t.starts_with("_bqsync_load_")), "applied staging tables are dropped: {names:?}");
}

/// A 200 MB file: `bqsync load` SIGKILLed while uploading, then while its load job runs, then run to
/// the end: every row once.
#[test]
fn a_200_mb_file_lands_exactly_once_through_kills_during_upload_and_load() {
    let (project, dataset) = project("big_file");
    let mut file = String::with_capacity(210 << 20);
    let mut n = 0u64;
    while file.len() < 200 << 20 {
        file.push_str(&common::atom_line(&format!("big-{n}"), n));
        n += 1;
    }
    project.append("drop/atoms/big.jsonl", file.as_bytes());
    drop(file);
    let info = [("BQSYNC_LOG", "info")];
    for (moment, after) in [("uploading to GCS", 300), ("load job started", 200)] {
        let mut child = project.spawn(&["load", "--once"], &info);
        wait_until(Duration::from_secs(300), moment, || project.log_tail().contains(moment));
        std::thread::sleep(Duration::from_millis(after));
        signal(&child, "KILL");
        wait_exit(&mut child, Duration::from_secs(10));
        std::fs::write(project.path("bqsync.log"), "").unwrap();
    }
    let reports = load_once(&project);
    assert_eq!(reports[0]["rows"], n, "{reports:?}");
    assert_eq!(atoms(&dataset), (n as i64, n as i64));
}
