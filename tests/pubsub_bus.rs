//! The Pub/Sub bus against the official Pub/Sub emulator, over real connections: the real `bqsync`
//! binary as producer and worker, a real DuckDB warehouse, and fresh topic and subscription names per
//! test. `scripts/test.sh` starts the emulator and sets `PUBSUB_EMULATOR_HOST`; without it these tests
//! fail (they never skip). Each test counts rows afterwards: nothing lost, nothing duplicated.

// The embedded default beside the Google backends: built with both features (the default).
#![cfg(all(feature = "embedded", feature = "gcp"))]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bqsync::bus::pubsub::{PubSubConfig, PubSubPublisher, PubSubSubscription};
use bqsync::bus::{Committed, Delivery, OutboundMessage, Publisher, Receipts, Subscription};
use bqsync::shutdown::Shutdown;
use bqsync::warehouse::{LandFailure, LandResult, TableBatch, Warehouse, WarehouseError};
use bqsync::worker::{Worker, WorkerConfig};
use common::{assert_contacts_match, atom_line, contacts, dead_letter_reasons, signal, wait_exit, Project};

fn emulator_host() -> String {
    std::env::var("PUBSUB_EMULATOR_HOST").unwrap_or_else(|_| {
        panic!(
            "PUBSUB_EMULATOR_HOST is not set: run the tests through scripts/test.sh, which starts the Pub/Sub \
             emulator (scripts/emulators/pubsub.sh start DIR prints the address)"
        )
    })
}

/// Topic and subscription names no other test (or earlier run) used: the emulator can stall on
/// names that were deleted and created again.
fn unique(test: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{test}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

/// The `[bus.pubsub]` body for a test: short deadlines and backoffs so redeliveries come quickly.
fn pubsub_section(test: &str, extra: &str) -> String {
    emulator_host();
    let id = unique(test);
    format!(
        "project = \"bqsync-test\"\ntopic = \"{id}-events\"\nsubscription = \"{id}-worker\"\n\
         dead_letter_topic = \"{id}-dlq\"\ndead_letter_subscription = \"{id}-dlq-sub\"\n\
         ack_deadline_secs = 10\nmin_backoff_secs = 0\nmax_backoff_secs = 1\ndrain_quiet_ms = 2500\n{extra}"
    )
}

fn pubsub_project(test: &str, extra: &str) -> Project {
    Project::new(&format!("[bus]\nkind = \"pubsub\"\n\n[bus.pubsub]\n{}", pubsub_section(test, extra)))
}

fn pubsub_config(project: &Project) -> PubSubConfig {
    let text = std::fs::read_to_string(project.path("bqsync.toml")).unwrap();
    let table: toml::Table = toml::from_str(&text).unwrap();
    table["bus"]["pubsub"].clone().try_into().unwrap()
}

/// Runs a bqsync command to completion; returns its stdout.
fn run_ok(project: &Project, args: &[&str], env: &[(&str, &str)]) -> String {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(project.path("bqsync.log")).unwrap();
    let mut child = project
        .command(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut text).unwrap();
        text
    });
    let status = wait_exit(&mut child, Duration::from_secs(300));
    let text = reader.join().unwrap();
    assert!(status.success(), "bqsync {args:?} failed: {status}; log:\n{}", project.log_tail());
    text
}

/// The JSON report `run`, `produce` and `work` print.
fn report(stdout: &str) -> serde_json::Value {
    let line = stdout.lines().last().expect("a report line");
    serde_json::from_str::<serde_json::Value>(line).unwrap()["report"].clone()
}

fn atoms_text(prefix: &str, range: std::ops::Range<u64>) -> String {
    range.map(|i| atom_line(&format!("{prefix}-{i}"), i)).collect()
}

/// `setup` creates topics and subscriptions once, then reports them as existing (and drift from the
/// config); events go JSONL → `produce` → Pub/Sub → `work` → DuckDB exactly once, and the all-in-one
/// `run` does the same.
#[test]
fn setup_is_idempotent_and_events_land_exactly_once_through_produce_and_work() {
    let project = pubsub_project("flow", "");
    // Before `setup`, workers and producers refuse to start and say what to do.
    for command in ["work", "produce"] {
        let output = project.command(&[command, "--until-drained"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{command} must fail before setup");
        assert!(stderr.contains("does not exist: run `bqsync setup`"), "{command}: {stderr}");
    }
    let first = run_ok(&project, &["setup"], &[]);
    assert_eq!(first.matches("topic         created").count(), 2, "{first}");
    assert_eq!(first.matches("subscription  created").count(), 2, "{first}");
    let again = run_ok(&project, &["setup"], &[]);
    assert_eq!(again.matches(" exists ").count(), 4, "{again}");
    assert!(!again.contains("differs"), "{again}");
    let drift = run_ok(&project, &["setup"], &[("BQSYNC__BUS__PUBSUB__MAX_DELIVERY_ATTEMPTS", "9")]);
    assert!(drift.contains("differs: dead_letter_policy"), "{drift}");

    project.append("inbox/atoms/a.jsonl", atoms_text("flow", 0..20_000).as_bytes());
    let (contacts_text, expected) = contacts(5_000, 1_000, 3);
    project.append("inbox/contacts_master/c.jsonl", contacts_text.as_bytes());
    let produced = report(&run_ok(&project, &["produce", "--until-drained"], &[]));
    assert_eq!(produced["events_published"], 25_000, "{produced}");
    assert_eq!(produced["worker"]["delivered"], 0, "produce runs no worker");
    let again = report(&run_ok(&project, &["produce", "--until-drained"], &[]));
    assert_eq!(again["events_published"], 0, "checkpoints hold: {again}");

    let worked = report(&run_ok(&project, &["work", "--until-drained"], &[]));
    assert_eq!(worked["events_published"], 0, "work runs no source");
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms"), 20_000, "log:\n{}", project.log_tail());
    assert_eq!(project.query_i64("SELECT count(DISTINCT event_id) FROM atoms"), 20_000);
    assert_contacts_match(&project, &expected);
    assert_eq!(project.query_i64("SELECT count(*) FROM dead_letters"), 0);

    project.append("inbox/atoms/a.jsonl", atoms_text("flow", 20_000..21_000).as_bytes());
    let all = report(&run_ok(&project, &["run", "--until-drained"], &[]));
    assert_eq!(all["events_published"], 1_000, "{all}");
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms"), 21_000);
    assert_eq!(project.query_i64("SELECT count(DISTINCT event_id) FROM atoms"), 21_000);
}

/// A worker killed with SIGKILL in the middle of its batches, three times, then restarted: the
/// messages it held come back after their lease and land once.
#[test]
fn worker_killed_mid_batch_loses_nothing_and_duplicates_nothing() {
    let project = pubsub_project("kill", "");
    run_ok(&project, &["setup"], &[]);
    let atoms: i64 = 40_000;
    project.append("inbox/atoms/a.jsonl", atoms_text("kill", 0..atoms as u64).as_bytes());
    let (contacts_text, expected) = contacts(10_000, 2_000, 11);
    project.append("inbox/contacts_master/c.jsonl", contacts_text.as_bytes());
    run_ok(&project, &["produce", "--until-drained"], &[]);

    let env = [("BQSYNC__WORKER__MAX_BATCH_ROWS", "1500")];
    let mut rng = fastrand::Rng::with_seed(7);
    for round in 0..3 {
        let mut child = project.spawn(&["work"], &env);
        std::thread::sleep(Duration::from_millis(1500 + rng.u64(0..1500)));
        assert!(child.try_wait().unwrap().is_none(), "the worker must still be running; log:\n{}", project.log_tail());
        signal(&child, "KILL");
        let _ = wait_exit(&mut child, Duration::from_secs(10));
        eprintln!("worker killed in round {round}");
    }
    // The last worker waits longer than the ack deadline for quiet, so the leases of the killed
    // workers have run out and their messages came back.
    let quiet = [("BQSYNC__WORKER__MAX_BATCH_ROWS", "1500"), ("BQSYNC__BUS__PUBSUB__DRAIN_QUIET_MS", "15000")];
    run_ok(&project, &["work", "--until-drained"], &quiet);
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms"), atoms, "log:\n{}", project.log_tail());
    assert_eq!(project.query_i64("SELECT count(DISTINCT event_id) FROM atoms"), atoms);
    assert_contacts_match(&project, &expected);
    assert_eq!(project.query_i64("SELECT count(*) FROM dead_letters"), 0, "log:\n{}", project.log_tail());
}

/// Poison is published to the dead-letter topic with its reason at once and acked; the dead-letter
/// subscription keeps it until a worker that consumes it lands it in `dead_letters`.
#[test]
fn poison_reaches_the_dead_letter_subscription_with_its_reason() {
    let project = pubsub_project("poison", "consume_dead_letters = false");
    run_ok(&project, &["setup"], &[]);
    let mut bytes = atoms_text("ok", 0..100).into_bytes();
    bytes.extend_from_slice(b"{\"event_id\": oops}\n");
    bytes
        .extend_from_slice(b"{\"event_id\":\"bad-score\",\"score\":\"abc\",\"created_at\":\"2024-01-01T00:00:00Z\"}\n");
    project.append("inbox/atoms/a.jsonl", &bytes);
    project.append("inbox/nosuchtable/x.jsonl", b"{\"a\":1}\n");
    let ran = report(&run_ok(&project, &["run", "--until-drained"], &[]));
    assert_eq!(ran["worker"]["dead_lettered"], 3, "{ran}");
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms"), 100);
    assert_eq!(project.query_i64("SELECT count(*) FROM dead_letters"), 0, "left on the subscription");

    let config = pubsub_config(&project);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let dead = runtime.block_on(pull_all(&config, 3, Duration::from_secs(30)));
    let by_reason: HashMap<String, &DeadMessage> =
        dead.iter().map(|d| (d.attributes["bqsync_dead_letter_reason"].clone(), d)).collect();
    assert_eq!(by_reason.len(), 3, "{dead:?}");
    assert!(by_reason["decode"].attributes["bqsync_dead_letter_detail"].contains("invalid JSON"), "{dead:?}");
    assert_eq!(by_reason["decode"].data, b"{\"event_id\": oops}");
    assert!(
        by_reason["schema"].attributes["bqsync_dead_letter_detail"]
            .contains("column `score`: expected Float64, got string \"abc\""),
        "{dead:?}"
    );
    assert_eq!(by_reason["unknown_table"].attributes["bqsync_table"], "nosuchtable");
    drop(dead); // Unacked: they stay on the subscription.

    // A worker that consumes the dead-letter subscription lands them, once, with their reasons.
    let consume =
        [("BQSYNC__BUS__PUBSUB__CONSUME_DEAD_LETTERS", "true"), ("BQSYNC__BUS__PUBSUB__DRAIN_QUIET_MS", "12000")];
    run_ok(&project, &["work", "--until-drained"], &consume);
    let reasons = dead_letter_reasons(&project);
    assert_eq!(reasons, HashMap::from([("decode".into(), 1), ("schema".into(), 1), ("unknown_table".into(), 1)]));
    assert_eq!(
        project.query_i64("SELECT count(*) FROM dead_letters WHERE detail LIKE '%expected Float64, got string%'"),
        1
    );
}

/// A warehouse that is down: every landing fails as a transient error.
struct DownWarehouse;

#[async_trait]
impl Warehouse for DownWarehouse {
    async fn ensure_tables(&self) -> Result<(), WarehouseError> {
        Ok(())
    }
    async fn land(&self, _: Arc<Vec<TableBatch>>, receipts: Receipts) -> LandResult {
        Err(LandFailure::new(WarehouseError::Task("injected: warehouse down".into()), receipts))
    }
    async fn row_counts(&self) -> Result<Vec<(String, u64)>, WarehouseError> {
        Ok(Vec::new())
    }
    async fn dead_letter_counts(&self) -> Result<Vec<(String, String, u64)>, WarehouseError> {
        Ok(Vec::new())
    }
}

/// Messages the worker nacks on every delivery (its warehouse is down) reach the dead-letter topic
/// through the subscription's policy after the maximum attempts, and then land in `dead_letters` as
/// `max_attempts`.
#[test]
fn messages_nacked_max_times_reach_the_dead_letter_topic_through_the_policy() {
    let project = pubsub_project("nacked", "consume_dead_letters = false");
    run_ok(&project, &["setup"], &[]);
    let config = pubsub_config(&project);
    let catalog = bqsync::pipeline::load_catalog(
        &bqsync::config::Config::load(
            Some(&project.path("bqsync.toml")),
            [("BQSYNC__SCHEMAS_DIR".to_string(), project.path("schemas").display().to_string())],
        )
        .unwrap(),
    )
    .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let dead = runtime.block_on(async {
        let publisher = PubSubPublisher::connect(&config).await.unwrap();
        let events: Vec<OutboundMessage> = (0..3).map(|i| envelope_message(&format!("nack-{i}"), i)).collect();
        publisher.publish(events).await.unwrap();

        let subscription: Arc<dyn Subscription> = Arc::new(PubSubSubscription::open(&config).await.unwrap());
        let worker_config = WorkerConfig { retry_budget_secs: 0, max_batch_age_ms: 50, ..WorkerConfig::default() };
        let mut worker = Worker::new(worker_config, catalog, Arc::new(DownWarehouse), subscription, None);
        let stop = Shutdown::new();
        let stop_rx = stop.clone();
        let running = tokio::spawn(async move {
            worker.run(stop_rx).await.unwrap();
            worker.stats
        });
        let dead = pull_all(&config, 3, Duration::from_secs(90)).await;
        stop.stop();
        let stats = running.await.unwrap();
        assert!(stats.failed_flushes >= 5, "{stats:?}");
        assert_eq!(stats.offered, 0);
        dead
    });
    assert_eq!(dead.len(), 3, "{dead:?}");
    for message in &dead {
        assert_eq!(message.attributes["CloudPubSubDeadLetterSourceDeliveryCount"], "5", "{message:?}");
        assert!(message.attributes["bqsync_event_id"].starts_with("nack-"), "{message:?}");
    }
    drop(dead);
    let consume =
        [("BQSYNC__BUS__PUBSUB__CONSUME_DEAD_LETTERS", "true"), ("BQSYNC__BUS__PUBSUB__DRAIN_QUIET_MS", "12000")];
    run_ok(&project, &["work", "--until-drained"], &consume);
    assert_eq!(dead_letter_reasons(&project), HashMap::from([("max_attempts".into(), 3)]));
    assert_eq!(
        project.query_i64(
            "SELECT count(*) FROM dead_letters WHERE delivery_attempts = 5 AND table_name = 'atoms' AND event_id LIKE 'nack-%'"
        ),
        3
    );
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms"), 0);
}

/// 200,000 messages waiting on the subscription are drained by one worker on four streams; what
/// the worker holds never exceeds the flow-control window, and its memory stays bounded.
#[test]
fn a_200k_backlog_drains_with_memory_bounded_by_flow_control() {
    let window_per_stream = 2_000;
    let project = pubsub_project("backlog", &format!("streams = 4\nmax_outstanding_messages = {window_per_stream}"));
    run_ok(&project, &["setup"], &[]);
    let total: i64 = 200_000;
    project.append("inbox/atoms/a.jsonl", atoms_text("backlog", 0..total as u64).as_bytes());
    let produced = report(&run_ok(&project, &["produce", "--until-drained"], &[]));
    assert_eq!(produced["events_published"], total);

    let started = Instant::now();
    let (stdout, peak_rss_kib) = run_measured(&project, &["work", "--until-drained"]);
    let worked = report(&stdout);
    eprintln!(
        "200k backlog drained in {:.1} s, peak RSS {} MiB, peak unacked {}",
        started.elapsed().as_secs_f64(),
        peak_rss_kib / 1024,
        worked["worker"]["peak_unacked"]
    );
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms"), total, "log:\n{}", project.log_tail());
    assert_eq!(project.query_i64("SELECT count(DISTINCT event_id) FROM atoms"), total);
    let peak_unacked = worked["worker"]["peak_unacked"].as_i64().unwrap();
    assert!(peak_unacked <= 4 * window_per_stream, "held {peak_unacked} > window {}", 4 * window_per_stream);
    assert!(peak_unacked > 0);
    assert!(peak_rss_kib < 400 * 1024, "peak RSS {} MiB", peak_rss_kib / 1024);
}

/// Events published by Google's Python client in the documented envelope land like bqsync's own.
#[test]
fn events_published_by_the_python_client_land() {
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".deps/pyvenv/bin/python");
    assert!(python.exists(), "{} missing: scripts/setup.sh installs google-cloud-pubsub there", python.display());
    let project = pubsub_project("python", "");
    run_ok(&project, &["setup"], &[]);
    let config = pubsub_config(&project);
    let topic = format!("projects/{}/topics/{}", config.project.as_deref().unwrap(), config.topic);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/python/publish_envelopes.py");
    let output = std::process::Command::new(python)
        .args([script.to_str().unwrap(), "--topic", &topic, "--count", "2000", "--upserts", "300"])
        .env("PUBSUB_EMULATOR_HOST", emulator_host())
        .output()
        .unwrap();
    assert!(output.status.success(), "python publisher failed: {}", String::from_utf8_lossy(&output.stderr));
    run_ok(&project, &["work", "--until-drained"], &[]);
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms WHERE event_id LIKE 'py-%'"), 2000);
    // 300 upserts over 100 keys, versions 1..3: the highest version wins.
    assert_eq!(project.query_i64("SELECT count(*) FROM contacts_master"), 100);
    assert_eq!(project.query_i64("SELECT count(*) FROM contacts_master WHERE version = 3 AND email LIKE '%v3%'"), 100);
    assert_eq!(project.query_i64("SELECT count(*) FROM dead_letters"), 0, "log:\n{}", project.log_tail());
}

/// An atoms change event in the documented envelope.
fn envelope_message(event_id: &str, n: u64) -> OutboundMessage {
    let payload: serde_json::Value = serde_json::from_str(&atom_line(event_id, n)).unwrap();
    let body = serde_json::json!({
        "event_id": event_id, "table": "atoms", "op": "insert", "payload": payload,
        "source": "test", "produced_at": "2024-01-01T00:00:00Z"
    });
    let attributes = BTreeMap::from([
        ("bqsync_table".to_string(), "atoms".to_string()),
        ("bqsync_event_id".to_string(), event_id.to_string()),
    ]);
    OutboundMessage::new(serde_json::to_vec(&body).unwrap(), attributes)
}

/// A message read off the dead-letter subscription.
#[derive(Debug)]
struct DeadMessage {
    data: Vec<u8>,
    attributes: BTreeMap<String, String>,
}

/// Pulls from the dead-letter subscription until `count` messages came or `timeout` passed, and
/// nacks them: they stay on the subscription for the worker that lands them later.
async fn pull_all(config: &PubSubConfig, count: usize, timeout: Duration) -> Vec<DeadMessage> {
    let subscription = PubSubSubscription::open_dead_letters(config).await.unwrap();
    let deadline = Instant::now() + timeout;
    let mut got: Vec<Delivery> = Vec::new();
    while got.len() < count && Instant::now() < deadline {
        got.extend(subscription.pull(count - got.len(), Duration::from_millis(500)).await.unwrap());
    }
    let mut messages = Vec::new();
    let mut handles = Vec::new();
    for delivery in got {
        messages.push(DeadMessage { data: delivery.data, attributes: delivery.attributes });
        handles.push(delivery.handle);
    }
    subscription.nack(handles).await.unwrap();
    subscription.close().await;
    messages
}

/// Runs a bqsync command to completion; returns its stdout and its peak RSS in KiB (of that process
/// alone, from wait4).
fn run_measured(project: &Project, args: &[&str]) -> (String, i64) {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(project.path("bqsync.log")).unwrap();
    let stdout_path = project.path("measured.out");
    let child = project
        .command(args)
        .stdout(Stdio::from(std::fs::File::create(&stdout_path).unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let (exit, _, peak_mb) = common::wait_with_usage(child.id() as libc::pid_t);
    // Reaped by wait4; forget the handle so nothing waits on the pid again.
    std::mem::forget(child);
    assert_eq!(exit, 0, "bqsync {args:?} failed (exit {exit}); log:\n{}", project.log_tail());
    (std::fs::read_to_string(stdout_path).unwrap(), (peak_mb * 1024.0) as i64)
}

/// With `ordering = true`, the subscription is created with message ordering and upserts of one key
/// are published with the key as ordering key: each key's versions arrive in publish order. (The
/// emulator with one publisher also delivers in order without ordering keys, so the order check
/// alone would not tell; the subscription setting is checked through `setup`'s drift report.)
#[test]
fn ordering_keys_deliver_each_keys_versions_in_order() {
    let project = pubsub_project("ordered", "ordering = true\nconsume_dead_letters = false");
    let setup_output = run_ok(&project, &["setup"], &[]);
    assert!(setup_output.contains("subscription  created"), "{setup_output}");
    let drift = run_ok(&project, &["setup"], &[("BQSYNC__BUS__PUBSUB__ORDERING", "false")]);
    assert!(drift.contains("differs: enable_message_ordering: config false, live true"), "{drift}");
    // 5 keys, versions 1..=100 each, interleaved, in version order per key.
    let mut text = String::new();
    for version in 1..=100 {
        for key in 0..5 {
            text.push_str(&format!(
                "{{\"contact_id\":\"k{key}\",\"name\":\"n\",\"email\":\"v{version}@x\",\"version\":{version}}}\n"
            ));
        }
    }
    project.append("inbox/contacts_master/c.jsonl", text.as_bytes());
    let produced = report(&run_ok(&project, &["produce", "--until-drained"], &[]));
    assert_eq!(produced["events_published"], 500);

    let config = pubsub_config(&project);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let versions_by_key = runtime.block_on(async {
        let subscription = PubSubSubscription::open(&config).await.unwrap();
        let mut by_key: HashMap<String, Vec<i64>> = HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut received = 0;
        while received < 500 && Instant::now() < deadline {
            let deliveries = subscription.pull(500, Duration::from_millis(500)).await.unwrap();
            received += deliveries.len();
            for delivery in &deliveries {
                let event: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap();
                let key = event["key"]["contact_id"].as_str().unwrap().to_string();
                by_key.entry(key).or_default().push(event["version"].as_i64().unwrap());
            }
            subscription
                .ack(Committed::nothing_to_land(deliveries.into_iter().map(|d| d.handle).collect()))
                .await
                .unwrap();
        }
        subscription.close().await;
        by_key
    });
    assert_eq!(versions_by_key.len(), 5);
    for (key, versions) in &versions_by_key {
        assert_eq!(versions, &(1..=100).collect::<Vec<i64>>(), "key {key} out of order");
    }
}

/// A producer killed with SIGKILL between publishes and checkpoints re-publishes from its last
/// checkpoint on restart; the duplicates on the topic are absorbed by event id when landing.
#[test]
fn producer_killed_midway_republishes_and_duplicates_are_absorbed() {
    let project = pubsub_project("producer-kill", "");
    run_ok(&project, &["setup"], &[]);
    let atoms: i64 = 60_000;
    project.append("inbox/atoms/a.jsonl", atoms_text("pk", 0..atoms as u64).as_bytes());
    // Small publish batches: many publish/checkpoint boundaries to be killed between.
    let env = [("BQSYNC__SOURCES__JSONL__0__PUBLISH_BATCH", "500")];
    let mut published_before_kill = false;
    for delay_ms in [300, 700] {
        let mut child = project.spawn(&["produce"], &env);
        std::thread::sleep(Duration::from_millis(delay_ms));
        signal(&child, "KILL");
        let _ = wait_exit(&mut child, Duration::from_secs(10));
        published_before_kill |= project.checkpoint_count().unwrap_or(0) > 0;
    }
    assert!(published_before_kill, "the producer must have checkpointed something before a kill");
    let rest = report(&run_ok(&project, &["produce", "--until-drained"], &env));
    assert!(rest["events_published"].as_i64().unwrap() < atoms, "the restart resumes from the checkpoint: {rest}");
    let worked = report(&run_ok(&project, &["work", "--until-drained"], &[]));
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms"), atoms, "log:\n{}", project.log_tail());
    assert_eq!(project.query_i64("SELECT count(DISTINCT event_id) FROM atoms"), atoms);
    eprintln!("delivered {} messages for {atoms} atoms", worked["worker"]["delivered"]);
}

/// The fault harness releases messages the emulator keeps leased to a killed connection with a seek
/// (tests/faults.rs). That is sound only if a seek brings back unacked messages and never acked
/// ones (the subscription does not retain acked messages): were it otherwise, a message bqsync acked
/// without landing it would come back and hide the loss.
#[test]
fn a_seek_redelivers_unacked_messages_only() {
    let project = pubsub_project("seek", "");
    run_ok(&project, &["setup"], &[]);
    let config = pubsub_config(&project);
    let host = emulator_host();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let before = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let publisher = PubSubPublisher::connect(&config).await.unwrap();
        let messages = (0..6).map(|n| envelope_message(&format!("seek-{n}"), n)).collect();
        publisher.publish(messages).await.unwrap();
        let subscription = PubSubSubscription::open(&config).await.unwrap();
        let mut held = Vec::new();
        while held.len() < 6 {
            held.extend(subscription.pull(6, Duration::from_secs(5)).await.unwrap());
        }
        let event = |d: &Delivery| d.attributes["bqsync_event_id"].clone();
        let mut unacked: Vec<String> = Vec::new();
        let mut acked = Vec::new();
        for delivery in held {
            if unacked.len() < 2 {
                unacked.push(event(&delivery));
                std::mem::forget(delivery.handle); // Neither acked nor nacked: it stays leased.
            } else {
                acked.push(delivery.handle);
            }
        }
        subscription.ack(Committed::nothing_to_land(acked)).await.unwrap();
        subscription.close().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let name = config.subscription.clone();
        common::pubsub_seek(&host, "bqsync-test", &name, &before);
        let again = PubSubSubscription::open(&config).await.unwrap();
        let mut back = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(8);
        while Instant::now() < deadline {
            for delivery in again.pull(10, Duration::from_millis(500)).await.unwrap() {
                back.push(event(&delivery));
                again.ack(Committed::nothing_to_land(vec![delivery.handle])).await.unwrap();
            }
        }
        back.sort();
        back.dedup();
        unacked.sort();
        assert_eq!(back, unacked, "only the unacked messages come back after a seek");
        again.close().await;
    });
}

/// With `exactly_once_delivery`, `bqsync setup` creates the worker subscription with exactly-once
/// delivery (read back from the emulator), and a worker whose acks are confirmed acks lands every
/// event once.
#[test]
fn exactly_once_delivery_subscriptions_land_with_confirmed_acks() {
    let project = pubsub_project("eod", "exactly_once_delivery = true\n");
    run_ok(&project, &["setup"], &[]);
    let config = pubsub_config(&project);
    let (status, body) = common::http_json(
        &emulator_host(),
        "GET",
        &format!("/v1/projects/bqsync-test/subscriptions/{}", config.subscription),
        "",
    );
    assert_eq!(status, 200, "{body}");
    let subscription: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(subscription["enableExactlyOnceDelivery"], true, "{body}");
    let again = run_ok(&project, &["setup"], &[("BQSYNC__BUS__PUBSUB__EXACTLY_ONCE_DELIVERY", "false")]);
    assert!(again.contains("differs: enable_exactly_once_delivery"), "{again}");

    project.append("inbox/atoms/a.jsonl", atoms_text("eod", 0..3_000).as_bytes());
    run_ok(&project, &["produce", "--until-drained"], &[]);
    let worked = report(&run_ok(&project, &["work", "--until-drained"], &[]));
    assert_eq!(worked["worker"]["delivered"], 3_000, "{worked}");
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms"), 3_000, "log:\n{}", project.log_tail());
    assert_eq!(project.query_i64("SELECT count(DISTINCT event_id) FROM atoms"), 3_000);
}
