//! The BigQuery landing as a running service sees it, on the real binary and the emulators
//! (BigQuery, and Pub/Sub for the scale-out case): fresh reads through the live view, and several
//! workers on one subscription applying concurrently. Without the emulators these tests fail.

// Google backends: built with the `gcp` feature. The Pub/Sub test also runs on the worker image's
// `--no-default-features --features gcp` build (scripts/test.sh).
#![cfg(feature = "gcp")]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{signal, wait_exit, wait_until, Project};
use serde_json::Value;

const PROJECT: &str = "bqsync-test";

fn bigquery() -> String {
    common::emulator_url("BIGQUERY_EMULATOR_HOST")
}

fn rows(sql: &str) -> Vec<Vec<Value>> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(common::bigquery_rows(&bigquery(), PROJECT, sql))
}

fn count(sql: &str) -> i64 {
    rows(sql)[0][0].as_str().and_then(|n| n.parse().ok()).unwrap_or(-1)
}

#[cfg(feature = "embedded")]
/// [`count`], or -1 while the query fails (the table does not exist yet).
fn count_or_absent(sql: &str) -> i64 {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = common::bigquery_client(&bigquery()).await;
        let request = gcp_bigquery_client::model::query_request::QueryRequest::new(sql);
        match client.job().query(PROJECT, request).await {
            Ok(response) => response
                .rows
                .and_then(|r| r.first().cloned())
                .and_then(|r| r.columns)
                .and_then(|c| c.first().and_then(|cell| cell.value.clone()))
                .and_then(|v| v.as_str().and_then(|n| n.parse().ok()))
                .unwrap_or(-1),
            Err(_) => -1,
        }
    })
}

fn bigquery_config(dataset: &str, extra: &str) -> String {
    format!(
        "[warehouse]\nkind = \"bigquery\"\n\n[warehouse.bigquery]\nproject = \"{PROJECT}\"\ndataset = \"{dataset}\"\n\
         endpoint = \"{}\"\nsettle_margin_secs = 3\nappend_timeout_secs = 2\n{extra}\n",
        bigquery()
    )
}

/// With `apply_interval` = 60 s, an atom written to the inbox is in `atoms_live` within 5 s, and in
/// `atoms` itself after the next apply (`bqsync apply`).
#[test]
#[cfg(feature = "embedded")] // `bqsync run` on the embedded bus
fn the_live_view_shows_a_row_seconds_after_it_is_written() {
    let dataset = common::unique_name("t", "live", '_');
    let project = Project::new(&bigquery_config(&dataset, "append_apply_interval_secs = 60"));
    let mut child = project.spawn_run(&[], &[]);
    let live = format!("`{PROJECT}.{dataset}.atoms_live`");
    // Warm-up: the service is up (tables made) once a first atom is visible.
    project.append("inbox/atoms/a.jsonl", common::atom_line("warm", 1).as_bytes());
    wait_until(Duration::from_secs(120), "the service landing", || {
        std::thread::sleep(Duration::from_millis(200));
        count_or_absent(&format!("SELECT COUNT(*) FROM {live}")) == 1
    });
    let written = std::time::Instant::now();
    project.append("inbox/atoms/a.jsonl", common::atom_line("fresh", 2).as_bytes());
    wait_until(Duration::from_secs(30), "the fresh atom in the live view", || {
        std::thread::sleep(Duration::from_millis(100));
        count(&format!("SELECT COUNT(*) FROM {live} WHERE event_id = 'fresh'")) == 1
    });
    let seen = written.elapsed();
    eprintln!("visible in the live view {} ms after the write", seen.as_millis());
    assert!(seen < Duration::from_secs(5), "visible after {seen:?}; log:\n{}", project.log_tail());
    let table = format!("`{PROJECT}.{dataset}.atoms`");
    assert_eq!(count(&format!("SELECT COUNT(*) FROM {table}")), 0, "not applied yet: the interval is 60 s");
    std::thread::sleep(Duration::from_secs(4));
    let applied = project.command(&["apply"]).output().unwrap();
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    assert!(String::from_utf8_lossy(&applied.stdout).contains("atoms"), "{}", String::from_utf8_lossy(&applied.stdout));
    assert_eq!(count(&format!("SELECT COUNT(*) FROM {table}")), 2);
    signal(&child, "TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(30)).success(), "{}", project.log_tail());
}

fn pubsub_config(dataset: &str) -> String {
    let id = common::unique_name("sc", "bq4", '-');
    let host = common::emulator_url("PUBSUB_EMULATOR_HOST");
    format!(
        "[bus]\nkind = \"pubsub\"\n\n[bus.pubsub]\nendpoint = \"{host}\"\nproject = \"{PROJECT}\"\n\
         topic = \"{id}-events\"\nsubscription = \"{id}-worker\"\ndead_letter_topic = \"{id}-dlq\"\n\
         dead_letter_subscription = \"{id}-dlq-sub\"\nack_deadline_secs = 10\nmin_backoff_secs = 1\n\
         max_backoff_secs = 2\n\n{}",
        bigquery_config(dataset, "append_apply_interval_secs = 10\nupsert_apply_interval_secs = 10")
    )
}

/// Apply jobs of `dataset.table` that committed, as (start ms) from the emulator's `jobs.list`.
fn committed_applies(dataset: &str, table: &str) -> Vec<i64> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = common::bigquery_client(&bigquery()).await;
        let prefix = format!("bqsync_apply_{dataset}_{table}_");
        let list = gcp_bigquery_client::model::job_list_parameters::JobListParameters {
            all_users: Some(true),
            max_results: Some(100_000),
            ..Default::default()
        };
        let pages: Vec<_> = futures::StreamExt::collect(client.job().get_job_list(PROJECT, Some(list))).await;
        let jobs = pages.into_iter().flat_map(|page| page.unwrap().jobs.unwrap_or_default());
        let mut starts = Vec::new();
        for job in jobs {
            let id = job.job_reference.and_then(|r| r.job_id).unwrap_or_default();
            if !id.starts_with(&prefix) || job.error_result.is_some() {
                continue;
            }
            let parameters = gcp_bigquery_client::model::get_query_results_parameters::GetQueryResultsParameters {
                location: Some("US".into()),
                ..Default::default()
            };
            let Ok(results) = client.job().get_query_results(PROJECT, &id, parameters).await else { continue };
            let outcome = results.rows.unwrap_or_default().last().and_then(|r| r.columns.clone()).and_then(|c| {
                c.first().and_then(|cell| cell.value.clone()).and_then(|v| v.as_str().map(str::to_string))
            });
            if outcome.as_deref() == Some("applied") {
                let start = job.statistics.and_then(|s| s.start_time).and_then(|t| t.parse().ok()).unwrap_or(0);
                starts.push(start);
            }
        }
        starts.sort();
        starts
    })
}

/// Four `bqsync work` processes on one subscription with a 10 s ack deadline (one SIGKILLed and
/// replaced midway, so its leases are redelivered to the others), each running the applier: 0 lost,
/// 0 duplicated, every key at its highest version; per table at most one committed apply per
/// interval; no table created after set-up.
#[test]
fn four_workers_on_one_subscription_land_and_apply_exactly_once() {
    let dataset = common::unique_name("t", "four", '_');
    let project = Project::new(&pubsub_config(&dataset));
    let setup = project.command(&["setup"]).output().unwrap();
    assert!(setup.status.success(), "{}", String::from_utf8_lossy(&setup.stderr));
    let tables_before = table_names(&dataset);
    let atoms = 6_000u64;
    let lines: String = (0..atoms).map(|i| common::atom_line(&format!("k-{i}"), i)).collect();
    project.append("inbox/atoms/a.jsonl", lines.as_bytes());
    let (contacts_text, expected) = common::contacts(3_000, 800, 11);
    project.append("inbox/contacts_master/c.jsonl", contacts_text.as_bytes());
    let env = [("BQSYNC__WORKER__MAX_BATCH_ROWS", "500"), ("BQSYNC__ADMIN__LISTEN", "off")];
    let mut workers: Vec<_> = (0..4).map(|_| project.spawn(&["work"], &env)).collect();
    let produced = project.command(&["produce", "--until-drained"]).envs(env).output().unwrap();
    assert!(produced.status.success(), "{}", String::from_utf8_lossy(&produced.stderr));
    std::thread::sleep(Duration::from_secs(3));
    signal(&workers[0], "KILL");
    let _ = wait_exit(&mut workers[0], Duration::from_secs(10));
    workers[0] = project.spawn(&["work"], &env);
    let path = format!("`{PROJECT}.{dataset}`");
    wait_until(Duration::from_secs(300), "every atom and contact applied", || {
        std::thread::sleep(Duration::from_secs(2));
        let (a, c) = (
            count(&format!("SELECT COUNT(*) FROM {path}.atoms")),
            count(&format!("SELECT COUNT(*) FROM {path}.contacts_master")),
        );
        eprintln!("applied so far: {a} atoms, {c} contacts");
        a >= atoms as i64 && c >= expected.len() as i64
    });
    // One more interval: a duplicate applied late would show now.
    std::thread::sleep(Duration::from_secs(12));
    for worker in &workers {
        signal(worker, "TERM");
    }
    for worker in &mut workers {
        assert!(wait_exit(worker, Duration::from_secs(60)).success(), "{}", project.log_tail());
    }
    assert_eq!(count(&format!("SELECT COUNT(*) FROM {path}.atoms")), atoms as i64, "no duplicates");
    assert_eq!(count(&format!("SELECT COUNT(DISTINCT event_id) FROM {path}.atoms")), atoms as i64, "none lost");
    let landed = rows(&format!("SELECT contact_id, version, email, _bqsync_deleted FROM {path}.contacts_master"));
    assert_eq!(landed.len(), expected.len(), "one row per key");
    let mut wrong = Vec::new();
    for row in landed {
        let key = row[0].as_str().unwrap().to_string();
        let version: i64 = row[1].as_str().unwrap().parse().unwrap();
        let deleted = row[3].as_str() == Some("true");
        let right = match &expected[&key] {
            Some((v, email)) => !deleted && version == *v && row[2].as_str() == Some(email.as_str()),
            None => deleted,
        };
        if !right {
            wrong.push(key);
        }
    }
    assert!(wrong.is_empty(), "keys not at their highest version: {wrong:?}");
    assert_eq!(count(&format!("SELECT COUNT(*) FROM {path}.dead_letters")), 0, "{}", project.log_tail());
    assert_eq!(table_names(&dataset), tables_before, "no table created after set-up");
    let mut per_table = HashMap::new();
    for table in ["atoms", "contacts_master"] {
        let starts = committed_applies(&dataset, table);
        assert!(!starts.is_empty(), "{table} was applied");
        // Commits are at least one interval (10 s) apart; job start times may differ by the jobs'
        // own durations, hence the tolerance.
        let closest = starts.windows(2).map(|w| w[1] - w[0]).min().unwrap_or(i64::MAX);
        assert!(closest >= 8_000, "{table}: two committed applies {closest} ms apart: {starts:?}");
        per_table.insert(table, starts.len());
    }
    eprintln!("committed applies per table: {per_table:?}");
}

fn table_names(dataset: &str) -> Vec<String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(common::bigquery_table_names(&bigquery(), PROJECT, dataset))
}
