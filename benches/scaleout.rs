//! Scale-out benchmark: N = 1, 2, 4 `bqsync work` processes on one Pub/Sub subscription landing into
//! the same BigQuery tables (append and upsert), on the emulators. Run with `scripts/bench_scaleout.sh`
//! (starts both emulators). Prints a Markdown table.
//!
//! Per N, on fresh topics and a fresh dataset: 20,000 atoms and 10,000 contact upserts (2,000 keys,
//! versions shuffled so concurrent workers see them out of order) are published first
//! (`bqsync produce --until-drained`), then N workers drain the subscription. Measured: wall time from
//! the workers' start to the last one's exit minus the quiet period it waits for, and the workers'
//! CPU seconds (wait4). Checked: every atom once, every contact at its highest version.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use gcp_bigquery_client::model::query_request::QueryRequest;
use serde_json::Value;

#[path = "../tests/common/mod.rs"]
mod common;
use common::wait_with_usage;

const PROJECT: &str = "bqsync-test";
const ATOMS: usize = 20_000;
const CONTACT_EVENTS: usize = 10_000;
const CONTACT_KEYS: usize = 2_000;
const QUIET_MS: u64 = 5_000;

fn main() {
    let mut rows = Vec::new();
    for workers in [1, 2, 4] {
        rows.push((workers, run_case(workers)));
    }
    println!("\n| workers | events | wall s | events/s | workers' CPU s | CPU s per 10k events | lost | duplicated |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (workers, (wall, cpu, lost, duplicated)) in rows {
        let events = (ATOMS + CONTACT_EVENTS) as f64;
        println!(
            "| {workers} | {} | {wall:.1} | {:.0} | {cpu:.1} | {:.2} | {lost} | {duplicated} |",
            ATOMS + CONTACT_EVENTS,
            events / wall,
            cpu / events * 10_000.0
        );
    }
}

fn run_case(workers: usize) -> (f64, f64, usize, usize) {
    let project = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas"), project.path().join("schemas"))
        .unwrap();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let id = format!("scale{workers}-{}-{nanos}", std::process::id());
    let dataset = id.replace('-', "_");
    let pubsub = common::emulator_url("PUBSUB_EMULATOR_HOST");
    let bigquery = common::emulator_url("BIGQUERY_EMULATOR_HOST");
    std::fs::write(
        project.path().join("bqsync.toml"),
        format!(
            "[admin]\nlisten = \"off\"\n[worker]\nmax_batch_rows = 2000\nmax_batch_age_ms = 500\n\
             [bus]\nkind = \"pubsub\"\n[bus.pubsub]\nendpoint = \"{pubsub}\"\nproject = \"{PROJECT}\"\n\
             topic = \"{id}-events\"\nsubscription = \"{id}-worker\"\ndead_letter_topic = \"{id}-dlq\"\n\
             dead_letter_subscription = \"{id}-dlq-sub\"\ndrain_quiet_ms = {QUIET_MS}\n\
             [warehouse]\nkind = \"bigquery\"\n[warehouse.bigquery]\nproject = \"{PROJECT}\"\ndataset = \"{dataset}\"\n\
             endpoint = \"{bigquery}\"\n"
        ),
    )
    .unwrap();
    let inbox = project.path().join("inbox");
    std::fs::create_dir_all(inbox.join("atoms")).unwrap();
    std::fs::create_dir_all(inbox.join("contacts_master")).unwrap();
    let atoms: String = (0..ATOMS)
        .map(|i| {
            format!(
                "{{\"event_id\":\"a-{i}\",\"entity_id\":\"e-{}\",\"kind\":\"click\",\"text\":\"t\",\"score\":1.5,\"tags\":[\"x\"],\"created_at\":\"2024-01-0{}T00:00:00Z\"}}\n",
                i % 100,
                1 + i % 7
            )
        })
        .collect();
    std::fs::write(inbox.join("atoms/a.jsonl"), atoms).unwrap();
    let (contact_lines, expected) = common::contacts(CONTACT_EVENTS, CONTACT_KEYS, 42);
    std::fs::write(inbox.join("contacts_master/c.jsonl"), contact_lines).unwrap();
    let bqsync = |args: &[&str]| {
        let status = Command::new(env!("CARGO_BIN_EXE_bqsync"))
            .args(args)
            .current_dir(project.path())
            .env("BQSYNC_LOG", "warn")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "bqsync {args:?} failed");
    };
    bqsync(&["setup"]);
    bqsync(&["produce", "--until-drained"]);

    let started = Instant::now();
    let children: Vec<std::process::Child> = (0..workers)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_bqsync"))
                .args(["work", "--until-drained"])
                .current_dir(project.path())
                .env("BQSYNC_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut cpu = 0.0;
    for child in children {
        let (exit, seconds, _) = wait_with_usage(child.id() as libc::pid_t);
        std::mem::forget(child);
        assert_eq!(exit, 0, "a worker failed");
        cpu += seconds;
    }
    let wall = started.elapsed().as_secs_f64() - QUIET_MS as f64 / 1000.0;
    let (lost, duplicated) = check(&bigquery, &dataset, &expected);
    eprintln!("N = {workers}: {wall:.1} s, {cpu:.1} CPU-s, lost {lost}, duplicated {duplicated}");
    (wall, cpu, lost, duplicated)
}

fn check(endpoint: &str, dataset: &str, expected: &common::ContactState) -> (usize, usize) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = gcp_bigquery_client::client_builder::ClientBuilder::new()
            .with_v2_base_url(format!("{endpoint}/bigquery/v2"))
            .build_from_authenticator(Arc::new(bqsync::warehouse::bigquery::EmulatorToken))
            .await
            .unwrap();
        let query = |sql: String| {
            let client = client.clone();
            async move {
                let mut request = QueryRequest::new(sql);
                request.max_results = Some(1_000_000);
                let response = client.job().query(PROJECT, request).await.unwrap();
                response
                    .rows
                    .unwrap_or_default()
                    .into_iter()
                    .map(|r| {
                        r.columns.unwrap_or_default().into_iter().map(|c| c.value.unwrap_or(Value::Null)).collect()
                    })
                    .collect::<Vec<Vec<Value>>>()
            }
        };
        let number = |v: &Value| v.as_str().and_then(|s| s.parse::<i64>().ok()).unwrap_or(-1);
        let counts = query(format!("SELECT COUNT(*), COUNT(DISTINCT event_id) FROM `{PROJECT}.{dataset}.atoms`")).await;
        let (total, distinct) = (number(&counts[0][0]), number(&counts[0][1]));
        let contacts = query(format!(
            "SELECT contact_id, version, email FROM `{PROJECT}.{dataset}.contacts_master` WHERE NOT _bqsync_deleted"
        ))
        .await;
        // Live keys at their highest version; deleted keys have a tombstone and no live row.
        let live = expected.values().filter(|v| v.is_some()).count();
        let right = contacts
            .iter()
            .filter(|row| {
                let key = row[0].as_str().unwrap_or_default();
                expected.get(key).is_some_and(|state| {
                    state.as_ref().is_some_and(|(v, e)| *v == number(&row[1]) && Some(e.as_str()) == row[2].as_str())
                })
            })
            .count();
        let wrong = live - right.min(live) + contacts.len().saturating_sub(live);
        let lost = (ATOMS as i64 - distinct).max(0) as usize + wrong;
        (lost, (total - distinct).max(0) as usize)
    })
}
