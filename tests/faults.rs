//! The fault-injection harness: the real binary on loopback, faults injected while input keeps
//! arriving, then rows counted against what was produced — lost, duplicated, dead-lettered.
//!
//! One documented command (docs/faults.md): `scripts/faults.sh [short|long]` starts the
//! emulators and runs this test; `scripts/test.sh` (CI) runs the short mode with the rest. The mode
//! comes from `BQSYNC_FAULTS` (`short`, the default, or `long`). Each scenario is its own test
//! (they run one at a time); each writes its row of the results table under `target/fault-results/`,
//! which `scripts/faults.sh` joins into `target/fault-results.md`. The test fails on any lost or duplicated row, and on any dead
//! letter other than the poison lines it planted.
//!
//! Scenarios:
//! - `embedded-kill`: `bqsync run` (embedded bus, DuckDB) SIGKILLed at random points, input appended
//!   between rounds, then a one-shot run drains.
//! - `pubsub-kill`: `bqsync produce` and `bqsync work` on the Pub/Sub emulator; each round SIGKILLs one of
//!   them at random (producer killed between publish and checkpoint, files appended while it is down).
//! - `pubsub-outage`: the Pub/Sub emulator (a private one) frozen with SIGSTOP for 30 s (long mode 60 s)
//!   under load, then SIGCONT. Frozen rather than killed: the emulator keeps topics and messages in
//!   memory only, so a killed emulator loses the bus itself, which no client can make up for.
//! - `bigquery-outage`: the BigQuery emulator (a private one) SIGKILLed under load and started again
//!   with its data after 30 s (long mode 60 s); the embedded bus holds what arrives meanwhile.
//! - `disk-full`: the state folder (checkpoints and the embedded bus) on a small tmpfs, filled to the
//!   last byte for a while under load, then freed.
//! - `config-change`: stopped (SIGTERM) mid-stream and restarted with other batch sizes.

// The embedded default beside the Google backends: built with both features (the default).
#![cfg(all(feature = "embedded", feature = "gcp"))]

mod common;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Short,
    Long,
}

impl Mode {
    fn from_env() -> Mode {
        match std::env::var("BQSYNC_FAULTS").as_deref() {
            Ok("long") => Mode::Long,
            Ok("short") | Err(_) => Mode::Short,
            Ok(other) => panic!("BQSYNC_FAULTS={other}: expected short or long"),
        }
    }
}

/// What one scenario produced and what landed.
struct Outcome {
    scenario: &'static str,
    rounds: usize,
    events: usize,
    lost: usize,
    duplicated: usize,
    dead_lettered: usize,
    /// Dead letters the harness planted (poison lines).
    planted_poison: usize,
    /// Seconds from the fault's end until everything produced had landed.
    recover_secs: f64,
    /// Rows whose messages the Pub/Sub emulator kept leased to a killed connection (never acked by
    /// bqsync, never redelivered) until the harness released them with a seek; they count as lost
    /// if they still do not land after that.
    stuck_in_emulator: usize,
    /// Dead letters of reason `max_attempts` the harness replayed before counting (see
    /// [`replay_exhausted`]); the other dead letters must be the planted poison.
    replayed: usize,
}

impl Outcome {
    fn empty(scenario: &'static str) -> Outcome {
        Outcome {
            scenario,
            rounds: 0,
            events: 0,
            lost: 0,
            duplicated: 0,
            dead_lettered: 0,
            planted_poison: 0,
            recover_secs: 0.0,
            stuck_in_emulator: 0,
            replayed: 0,
        }
    }

    /// Adds another segment of the same scenario; recovery is the longest segment's.
    fn add(&mut self, other: &Outcome) {
        self.rounds += other.rounds;
        self.events += other.events;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.dead_lettered += other.dead_lettered;
        self.planted_poison += other.planted_poison;
        self.recover_secs = self.recover_secs.max(other.recover_secs);
        self.stuck_in_emulator += other.stuck_in_emulator;
        self.replayed += other.replayed;
    }
}

/// The input of a scenario, appended in chunks: atoms (appends with unique ids), contact upserts
/// (shuffled versions over a key set) and one poison line per chunk.
struct Workload {
    atom_ids: Vec<String>,
    atom_chunks: Vec<String>,
    contact_chunks: Vec<String>,
    expected_contacts: ContactState,
    poison: usize,
}

impl Workload {
    fn new(tag: &str, chunks: usize, atoms_per_chunk: usize, contacts_per_chunk: usize, seed: u64) -> Workload {
        let mut atom_ids = Vec::new();
        let mut atom_chunks = Vec::new();
        for chunk in 0..chunks {
            let mut text = String::new();
            for i in 0..atoms_per_chunk {
                let n = (chunk * atoms_per_chunk + i) as u64;
                let id = format!("{tag}-{n}");
                text.push_str(&atom_line(&id, n));
                atom_ids.push(id);
            }
            text.push_str(&format!("{{\"event_id\": \"{tag}-poison-{chunk}\", broken\n"));
            atom_chunks.push(text);
        }
        let keys = (contacts_per_chunk * chunks / 4).max(1);
        let (contacts_text, expected_contacts) = contacts(contacts_per_chunk * chunks, keys, seed);
        let lines: Vec<&str> = contacts_text.lines().collect();
        let contact_chunks =
            lines.chunks(contacts_per_chunk.max(1)).map(|c| c.iter().map(|l| format!("{l}\n")).collect()).collect();
        Workload { atom_ids, atom_chunks, contact_chunks, expected_contacts, poison: chunks }
    }

    fn events(&self) -> usize {
        self.atom_ids.len() + self.contact_lines() + self.poison
    }

    fn contact_lines(&self) -> usize {
        self.contact_chunks.iter().map(|c| c.lines().count()).sum()
    }

    /// Appends chunk `i` (atoms, contacts) to the project's inbox.
    fn append(&self, project: &Project, i: usize) {
        project.append("inbox/atoms/a.jsonl", self.atom_chunks[i].as_bytes());
        if let Some(chunk) = self.contact_chunks.get(i) {
            project.append("inbox/contacts_master/c.jsonl", chunk.as_bytes());
        }
    }

    /// Counts what landed against the workload.
    fn count(
        &self,
        landed: Landed,
        project: &Project,
        scenario: &'static str,
        rounds: usize,
        recover_secs: f64,
    ) -> Outcome {
        let distinct: HashSet<&String> = landed.atom_ids.iter().collect();
        let lost_atoms = self.atom_ids.iter().filter(|id| !distinct.contains(id)).count();
        let duplicated = landed.atom_ids.len() - distinct.len();
        let by_key: std::collections::HashMap<&String, (i64, Option<&String>, bool)> =
            landed.contacts.iter().map(|(k, v, e, d)| (k, (*v, e.as_ref(), *d))).collect();
        let lost_contacts = self
            .expected_contacts
            .iter()
            .filter(|(key, expected)| match (by_key.get(key), expected) {
                (Some((v, Some(e), false)), Some((ev, ee))) => v != ev || *e != ee,
                (Some((_, _, true)), None) => false,
                _ => true,
            })
            .count();
        if lost_atoms + lost_contacts > 0 {
            self.report_lost(project, scenario, &distinct, lost_contacts);
        }
        Outcome {
            scenario,
            rounds,
            events: self.events(),
            lost: lost_atoms + lost_contacts,
            duplicated,
            dead_lettered: landed.dead_letters,
            planted_poison: self.poison,
            recover_secs,
            stuck_in_emulator: 0,
            replayed: 0,
        }
    }
}

/// Replays the dead letters of reason `max_attempts` and returns how many there were.
///
/// A message whose holder is killed before it commits is delivered again with its attempt count
/// raised, and after `max_delivery_attempts` deliveries it is dead-lettered: the bus's guard against a
/// message that crashes every worker (Pub/Sub counts such deliveries the same way). Hundreds of
/// random kills hit the same messages several times in a row now and then, and this is what an
/// operator does about it (docs/google-cloud.md "Replay runbook"). Replay lands through the same idempotent,
/// version-guarded landing, so an old version replayed after a newer one changes nothing.
fn replay_exhausted(project: &Project) -> usize {
    let exhausted = dead_letter_reasons(project).get("max_attempts").copied().unwrap_or(0) as usize;
    if exhausted > 0 {
        run_ok(project, &["replay", "--reason", "max_attempts"], &[]);
    }
    exhausted
}

/// Counts a DuckDB project after replaying its exhausted dead letters.
fn count_duckdb(
    workload: &Workload,
    project: &Project,
    scenario: &'static str,
    rounds: usize,
    recover_secs: f64,
) -> Outcome {
    let replayed = replay_exhausted(project);
    let mut outcome = workload.count(Landed::from_duckdb(project), project, scenario, rounds, recover_secs);
    outcome.replayed = replayed;
    outcome
}

/// What a warehouse holds after a scenario, read back to be counted.
struct Landed {
    atom_ids: Vec<String>,
    /// (contact_id, version, email, deleted)
    contacts: Vec<(String, i64, Option<String>, bool)>,
    dead_letters: usize,
}

impl Landed {
    /// From the project's embedded DuckDB warehouse (no bqsync process may hold it).
    fn from_duckdb(project: &Project) -> Landed {
        let connection = project.warehouse();
        let mut statement = connection.prepare("SELECT event_id FROM atoms").unwrap();
        let atom_ids = statement.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
        let mut statement =
            connection.prepare("SELECT contact_id, version, email, _bqsync_deleted FROM contacts_master").unwrap();
        let contacts = statement
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let dead_letters: i64 = connection.query_row("SELECT count(*) FROM dead_letters", [], |r| r.get(0)).unwrap();
        Landed { atom_ids, contacts, dead_letters: dead_letters as usize }
    }

    /// From a dataset on a BigQuery emulator.
    fn from_bigquery(endpoint: &str, dataset: &str) -> Landed {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let rows = |sql: String| async move { bigquery_rows(endpoint, BIGQUERY_PROJECT, &sql).await };
            let path = format!("`{BIGQUERY_PROJECT}.{dataset}`");
            let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
            let atom_ids =
                rows(format!("SELECT event_id FROM {path}.atoms")).await.iter().filter_map(|r| text(&r[0])).collect();
            let contacts =
                rows(format!("SELECT contact_id, version, email, _bqsync_deleted FROM {path}.contacts_master"))
                    .await
                    .iter()
                    .map(|r| {
                        let version = text(&r[1]).and_then(|v| v.parse().ok()).unwrap_or(-1);
                        (text(&r[0]).unwrap_or_default(), version, text(&r[2]), text(&r[3]).as_deref() == Some("true"))
                    })
                    .collect();
            let dead = rows(format!("SELECT COUNT(*) FROM {path}.dead_letters")).await;
            let dead_letters = text(&dead[0][0]).and_then(|n| n.parse().ok()).unwrap_or(0);
            Landed { atom_ids, contacts, dead_letters }
        })
    }
}

impl Workload {
    /// Which atoms are missing, by chunk, so a loss can be traced (with BQSYNC_KEEP_PROJECTS=1 the
    /// project folder, its log and its state stay behind).
    fn report_lost(&self, project: &Project, scenario: &str, landed: &HashSet<&String>, lost_contacts: usize) {
        let per_chunk = self.atom_ids.len() / self.atom_chunks.len().max(1);
        let mut by_chunk = std::collections::BTreeMap::<usize, Vec<&str>>::new();
        for (n, id) in self.atom_ids.iter().enumerate() {
            if !landed.contains(id) {
                by_chunk.entry(n / per_chunk.max(1)).or_default().push(id);
            }
        }
        let scenario = if scenario.is_empty() { "(a count before releasing the emulator's leases)" } else { scenario };
        let mut report = format!(
            "{scenario}: rows missing\nproject {}\nlost contacts: {lost_contacts}\nunpublished bytes (checkpoint lag): {:?}\n",
            project.dir.path().display(),
            project.checkpoint_lag()
        );
        for (chunk, ids) in &by_chunk {
            let _ =
                writeln!(report, "chunk {chunk}: {} atoms missing, {} .. {}", ids.len(), ids[0], ids[ids.len() - 1]);
        }
        eprintln!("{report}");
        let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        let _ = std::fs::write(target.join("fault-lost.txt"), report);
    }
}

/// Runs a bqsync command to completion, asserting success.
fn run_ok(project: &Project, args: &[&str], env: &[(&str, &str)]) {
    let mut child = project.spawn(args, env);
    let status = wait_exit(&mut child, Duration::from_secs(600));
    assert!(status.success(), "bqsync {args:?}: {status}; log:\n{}", project.log_tail());
}

fn kill(child: &mut std::process::Child) {
    signal(child, "KILL");
    let _ = wait_exit(child, Duration::from_secs(10));
}

/// `bqsync run` on the embedded default, SIGKILLed at a random point of every round.
fn embedded_kill(mode: Mode, rng: &mut fastrand::Rng) -> Outcome {
    let rounds = if mode == Mode::Long { 200 } else { 12 };
    let workload = Workload::new("ek", rounds, 400, 100, 1);
    let project = Project::new("");
    for round in 0..rounds {
        workload.append(&project, round);
        let mut child = project.spawn_run(&[], &[]);
        std::thread::sleep(Duration::from_millis(rng.u64(30..900)));
        kill(&mut child);
    }
    let started = Instant::now();
    project.run_until_drained(&[]);
    count_duckdb(
        &workload,
        &project,
        "embedded-kill: SIGKILL `bqsync run` at random points",
        rounds,
        started.elapsed().as_secs_f64(),
    )
}

/// The `[bus]` section for Pub/Sub at `host`, with fresh names.
fn pubsub_config(host: &str, test: &str) -> String {
    let id = unique_name("faults", test, '-');
    format!(
        "[bus]\nkind = \"pubsub\"\n\n[bus.pubsub]\nendpoint = \"http://{host}\"\nproject = \"bqsync-test\"\n\
         topic = \"{id}-events\"\nsubscription = \"{id}-worker\"\ndead_letter_topic = \"{id}-dlq\"\n\
         dead_letter_subscription = \"{id}-dlq-sub\"\nack_deadline_secs = 10\nmin_backoff_secs = 1\n\
         max_backoff_secs = 2\ndrain_quiet_ms = 15000\n"
    )
}

/// `bqsync produce` and `bqsync work` on Pub/Sub; each round one of them is SIGKILLed at random.
///
/// Long mode runs 200 rounds as 4 segments of 50, each on a fresh private emulator: after about 150
/// killed clients the emulator stops confirming publishes to the topic, even on new connections (its
/// own defect; bqsync then times out and retries forever).
fn pubsub_kill(mode: Mode, rng: &mut fastrand::Rng) -> Outcome {
    let (segments, rounds) = if mode == Mode::Long { (4, 50) } else { (1, 10) };
    let mut total = Outcome::empty("pubsub-kill: SIGKILL producer or worker at random");
    for segment in 0..segments {
        let outcome = pubsub_kill_segment(&format!("pk{segment}"), rounds, 2 + segment as u64, rng);
        total.add(&outcome);
    }
    total
}

fn pubsub_kill_segment(tag: &str, rounds: usize, seed: u64, rng: &mut fastrand::Rng) -> Outcome {
    let workload = Workload::new(tag, rounds, 400, 100, seed);
    let emulator = OwnPubSub::start();
    let project = Project::new(&pubsub_config(&emulator.host, tag));
    run_ok(&project, &["setup"], &[]);
    let started_at = chrono_now_rfc3339();
    let mut producer = project.spawn(&["produce"], &[]);
    let mut worker = project.spawn(&["work"], &[]);
    let mut next_chunk = 0;
    let mut append_next = |project: &Project| {
        if next_chunk < rounds {
            workload.append(project, next_chunk);
            next_chunk += 1;
        }
    };
    for _ in 0..rounds {
        append_next(&project);
        std::thread::sleep(Duration::from_millis(rng.u64(50..700)));
        if rng.bool() {
            kill(&mut producer);
            // Appended while the producer is down: picked up when it is back.
            append_next(&project);
            producer = project.spawn(&["produce"], &[]);
        } else {
            kill(&mut worker);
            worker = project.spawn(&["work"], &[]);
        }
    }
    let started = Instant::now();
    kill(&mut producer);
    kill(&mut worker);
    run_ok(&project, &["produce", "--until-drained"], &[]);
    run_ok(&project, &["work", "--until-drained"], &[]);
    let before_release = count_duckdb(&workload, &project, "", rounds, 0.0);
    // The emulator keeps a message delivered on a connection that was reset (a worker SIGKILLed
    // while messages were on the wire) leased for good; Pub/Sub redelivers it after its ack
    // deadline. A seek to the segment's start makes the emulator redeliver exactly the messages
    // never acked (acked ones are not retained; tests/pubsub_bus.rs checks that), so what bqsync
    // acked stays acked and anything it acked without landing would still count as lost.
    if before_release.lost > 0 {
        let subscription = format!("{}-worker", tag_id(&project));
        pubsub_seek(&emulator.host, "bqsync-test", &subscription, &started_at);
        run_ok(&project, &["work", "--until-drained"], &[]);
    }
    let mut outcome = count_duckdb(
        &workload,
        &project,
        "pubsub-kill: SIGKILL producer or worker at random",
        rounds,
        started.elapsed().as_secs_f64(),
    );
    outcome.stuck_in_emulator = before_release.lost - outcome.lost.min(before_release.lost);
    outcome
}

/// The resource-name prefix [`pubsub_config`] chose for a project.
fn tag_id(project: &Project) -> String {
    let config = std::fs::read_to_string(project.path("bqsync.toml")).unwrap();
    let line = config.lines().find(|l| l.starts_with("subscription = ")).expect("a subscription in the config");
    line.trim_start_matches("subscription = ").trim_matches('"').trim_end_matches("-worker").to_string()
}

/// Now, as RFC 3339 in UTC (what a Pub/Sub seek takes).
fn chrono_now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A Pub/Sub emulator of the harness's own, to freeze.
struct OwnPubSub {
    dir: tempfile::TempDir,
    host: String,
}

impl OwnPubSub {
    const SCRIPT: &'static str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/emulators/pubsub.sh");

    fn start() -> OwnPubSub {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let output = std::process::Command::new("bash")
            .args([Self::SCRIPT, "start", &dir.path().display().to_string(), &port.to_string()])
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        assert!(output.status.success(), "pubsub.sh start failed");
        OwnPubSub { host: String::from_utf8(output.stdout).unwrap().trim().to_string(), dir }
    }

    fn signal(&self, signal: &str) {
        let pid = std::fs::read_to_string(self.dir.path().join("pid")).unwrap();
        // The script starts the emulator's launcher; signal its whole process group (the JVM too).
        let status =
            std::process::Command::new("pkill").args([&format!("-{signal}"), "-g", pid.trim()]).status().unwrap();
        if !status.success() {
            std::process::Command::new("kill").args([&format!("-{signal}"), pid.trim()]).status().unwrap();
        }
    }
}

impl Drop for OwnPubSub {
    fn drop(&mut self) {
        self.signal("CONT");
        let _ = std::process::Command::new("bash")
            .args([Self::SCRIPT, "stop", &self.dir.path().display().to_string()])
            .status();
    }
}

/// Pub/Sub frozen under load, then back: time until everything landed.
fn pubsub_outage(mode: Mode, rng: &mut fastrand::Rng) -> Outcome {
    let outage = Duration::from_secs(if mode == Mode::Long { 60 } else { 30 });
    let chunks = 6;
    let workload = Workload::new("po", chunks, 2000, 500, 3);
    let emulator = OwnPubSub::start();
    let project = Project::new(&pubsub_config(&emulator.host, "outage"));
    run_ok(&project, &["setup"], &[]);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let env = [("BQSYNC__ADMIN__LISTEN", listen.as_str())];
    let mut child = project.spawn_run(&[], &env);
    for chunk in 0..chunks / 2 {
        workload.append(&project, chunk);
    }
    wait_until(Duration::from_secs(60), "rows landing before the outage", || {
        landed_rows(port, "atoms").unwrap_or(0.0) > 0.0
    });
    std::thread::sleep(Duration::from_millis(rng.u64(0..500)));
    emulator.signal("STOP");
    for chunk in chunks / 2..chunks {
        workload.append(&project, chunk);
    }
    std::thread::sleep(outage);
    assert!(child.try_wait().unwrap().is_none(), "bqsync must wait out the outage; log:\n{}", project.log_tail());
    emulator.signal("CONT");
    let resumed = Instant::now();
    // Recovered once every atom landed (contacts are checked in the final count).
    let expected = workload.atom_ids.len() as f64;
    wait_until(Duration::from_secs(300), "every atom landed after the outage", || {
        landed_rows(port, "atoms").unwrap_or(0.0) >= expected
    });
    let recover_secs = resumed.elapsed().as_secs_f64();
    signal(&child, "TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(60)).success(), "{}", project.log_tail());
    run_ok(&project, &["work", "--until-drained"], &[]);
    count_duckdb(&workload, &project, "pubsub-outage: Pub/Sub emulator frozen under load", 1, recover_secs)
}

/// The BigQuery project the emulator serves.
const BIGQUERY_PROJECT: &str = "bqsync-test";

/// BigQuery (an emulator of the harness's own) SIGKILLed under load and started again with its data
/// after 30 s (long mode 60 s): the worker holds its batches with the circuit open, then resumes.
fn bigquery_outage(mode: Mode, rng: &mut fastrand::Rng) -> Outcome {
    let outage = Duration::from_secs(if mode == Mode::Long { 60 } else { 30 });
    let chunks = 6;
    let workload = Workload::new("bo", chunks, 2000, 500, 6);
    let emulator = OwnBigQuery::start();
    let dataset = unique_name("faults", "bqoutage", '_');
    let project = Project::new(&format!(
        "[warehouse]\nkind = \"bigquery\"\n\n[warehouse.bigquery]\nproject = \"{BIGQUERY_PROJECT}\"\n\
         dataset = \"{dataset}\"\nendpoint = \"{}\"\nrequest_attempts = 2\nrequest_timeout_secs = 5\n",
        emulator.endpoint()
    ));
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let env = [
        ("BQSYNC__ADMIN__LISTEN", listen.as_str()),
        ("BQSYNC__WORKER__MAX_BATCH_ROWS", "1000"),
        ("BQSYNC__WORKER__RETRY_MAX_MS", "2000"),
        ("BQSYNC_LOG", "info"),
        // The applier every 2 s with a short settle margin, so the tables follow within seconds.
        ("BQSYNC__WAREHOUSE__BIGQUERY__SETTLE_MARGIN_SECS", "4"),
        ("BQSYNC__WAREHOUSE__BIGQUERY__APPEND_TIMEOUT_SECS", "3"),
        ("BQSYNC__WAREHOUSE__BIGQUERY__APPEND_APPLY_INTERVAL_SECS", "2"),
        ("BQSYNC__WAREHOUSE__BIGQUERY__UPSERT_APPLY_INTERVAL_SECS", "2"),
    ];
    let mut child = project.spawn_run(&[], &env);
    for chunk in 0..chunks / 2 {
        workload.append(&project, chunk);
    }
    wait_until(Duration::from_secs(120), "rows landing before the outage", || {
        landed_rows(port, "atoms").unwrap_or(0.0) > 0.0
    });
    std::thread::sleep(Duration::from_millis(rng.u64(0..1000)));
    emulator.kill();
    for chunk in chunks / 2..chunks {
        workload.append(&project, chunk);
    }
    std::thread::sleep(outage);
    assert!(child.try_wait().unwrap().is_none(), "bqsync must wait out the outage; log:\n{}", project.log_tail());
    emulator.restart_keeping_data();
    let resumed = Instant::now();
    // Counted in BigQuery's tables (applied), not from the metrics: an append acknowledged just
    // before the kill may be sent again, and the apply counts it once.
    let expected = workload.atom_ids.len() as i64;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let count = |sql: &str| -> i64 {
        let rows = runtime.block_on(bigquery_rows(&emulator.endpoint(), BIGQUERY_PROJECT, sql));
        rows[0][0].as_str().and_then(|n| n.parse().ok()).unwrap_or(0)
    };
    let atoms = format!("SELECT COUNT(DISTINCT event_id) FROM `{BIGQUERY_PROJECT}.{dataset}.atoms`");
    wait_until(Duration::from_secs(300), "every atom landed after BigQuery came back", || {
        std::thread::sleep(Duration::from_millis(500));
        count(&atoms) >= expected
    });
    let recover_secs = resumed.elapsed().as_secs_f64();
    // The planted poison is applied by the same applier, table by table: wait for it too before the
    // stop, or a SIGTERM right after the atoms' apply leaves the dead letters landed but unapplied (the
    // last one-shot run applies only what it landed itself).
    let dead = format!("SELECT COUNT(*) FROM `{BIGQUERY_PROJECT}.{dataset}.dead_letters`");
    wait_until(Duration::from_secs(120), "the planted poison applied", || {
        std::thread::sleep(Duration::from_millis(500));
        count(&dead) >= workload.poison as i64
    });
    signal(&child, "TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(60)).success(), "{}", project.log_tail());
    let log = std::fs::read_to_string(project.path("bqsync.log")).unwrap();
    assert!(log.contains("circuit open"), "the worker must have noticed the outage");
    project.run_until_drained(&env[4..]);
    let landed = Landed::from_bigquery(&emulator.endpoint(), &dataset);
    workload.count(landed, &project, "bigquery-outage: BigQuery emulator killed under load, restarted", 1, recover_secs)
}

/// The state folder on a small tmpfs, filled to the last byte under load, then freed.
fn disk_full(mode: Mode, rng: &mut fastrand::Rng) -> Outcome {
    let rounds = if mode == Mode::Long { 10 } else { 3 };
    let workload = Workload::new("df", rounds * 2, 1500, 300, 4);
    let project = Project::new("");
    let state = project.path(".bqsync");
    std::fs::create_dir_all(&state).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64m", "tmpfs", state.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a tmpfs for the state folder needs root (CAP_SYS_ADMIN)");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(state.clone());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = project.spawn_run(&[], &[("BQSYNC__ADMIN__LISTEN", listen.as_str())]);
    let filler = state.join("filler");
    let mut last_free = Instant::now();
    for round in 0..rounds {
        workload.append(&project, 2 * round);
        std::thread::sleep(Duration::from_millis(rng.u64(100..600)));
        // Fill: write until the file system refuses.
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 1 << 16];
        use std::io::Write;
        while file.write_all(&block).is_ok() {}
        let _ = file.sync_all();
        // Input keeps arriving while the disk is full.
        workload.append(&project, 2 * round + 1);
        std::thread::sleep(Duration::from_secs(5));
        std::fs::remove_file(&filler).unwrap();
        last_free = Instant::now();
        if let Ok(Some(status)) = child.try_wait() {
            // A process that gave up on a full disk is restarted, as its supervisor would.
            eprintln!("disk-full: bqsync exited with {status}; restarting it");
            child = project.spawn_run(&[], &[("BQSYNC__ADMIN__LISTEN", listen.as_str())]);
        }
    }
    let expected = workload.atom_ids.len() as f64;
    wait_until(Duration::from_secs(300), "every atom landed after the disk was freed", || {
        landed_rows(port, "atoms").unwrap_or(0.0) >= expected
    });
    let recover_secs = last_free.elapsed().as_secs_f64();
    signal(&child, "TERM");
    let _ = wait_exit(&mut child, Duration::from_secs(60));
    project.run_until_drained(&[]);
    count_duckdb(&workload, &project, "disk-full: state folder full for 5 s under load", rounds, recover_secs)
}

/// Stopped mid-stream and restarted with other batch sizes, publish batches and poll intervals.
fn config_change(mode: Mode, rng: &mut fastrand::Rng) -> Outcome {
    let rounds = if mode == Mode::Long { 20 } else { 4 };
    let workload = Workload::new("cc", rounds, 1500, 300, 5);
    let project = Project::new("");
    let settings = [
        [("BQSYNC__WORKER__MAX_BATCH_ROWS", "100"), ("BQSYNC__SOURCES__JSONL__0__PUBLISH_BATCH", "37")],
        [("BQSYNC__WORKER__MAX_BATCH_ROWS", "5000"), ("BQSYNC__SOURCES__JSONL__0__PUBLISH_BATCH", "2000")],
        [("BQSYNC__WORKER__MAX_BATCH_ROWS", "731"), ("BQSYNC__SOURCES__JSONL__0__PUBLISH_BATCH", "1")],
    ];
    for round in 0..rounds {
        workload.append(&project, round);
        let mut child = project.spawn_run(&[], &settings[round % settings.len()]);
        std::thread::sleep(Duration::from_millis(rng.u64(200..1200)));
        signal(&child, "TERM");
        assert!(wait_exit(&mut child, Duration::from_secs(60)).success(), "{}", project.log_tail());
    }
    let started = Instant::now();
    project.run_until_drained(&settings[0]);
    count_duckdb(
        &workload,
        &project,
        "config-change: SIGTERM, restart with other batch sizes",
        rounds,
        started.elapsed().as_secs_f64(),
    )
}

fn render(outcomes: &[Outcome], mode: Mode) -> String {
    let mut out = format!(
        "Fault-injection results ({} mode, generated by tests/faults.rs)\n\n\
         | scenario | rounds | events | lost | duplicated | dead-lettered (planted + max_attempts replayed) | time to recover s | held by the emulator, released |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
        if mode == Mode::Long { "long" } else { "short" }
    );
    for o in outcomes {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} ({} + {}) | {:.1} | {} |",
            o.scenario,
            o.rounds,
            o.events,
            o.lost,
            o.duplicated,
            o.dead_lettered,
            o.planted_poison,
            o.replayed,
            o.recover_secs,
            o.stuck_in_emulator
        );
    }
    out
}

/// The scenarios run one at a time (each drives several processes on a 2-core machine), in this
/// order when the whole file runs; each is its own test so one can be run alone
/// (`cargo test --test faults pubsub_outage`).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs one scenario (its random choices from `BQSYNC_FAULTS_SEED` and its position), writes its row
/// to `target/fault-results/N.md` (`scripts/faults.sh` joins them into
/// `target/fault-results.md`), and fails on any lost or duplicated row and on dead letters besides
/// the planted poison and the replayed exhausted deliveries.
fn run_scenario(position: u64, scenario: fn(Mode, &mut fastrand::Rng) -> Outcome) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mode = Mode::from_env();
    let seed = std::env::var("BQSYNC_FAULTS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261122u64);
    let mut rng = fastrand::Rng::with_seed(seed.wrapping_add(position));
    let outcome = scenario(mode, &mut rng);
    let table = render(std::slice::from_ref(&outcome), mode);
    let row = table.lines().last().unwrap().to_string();
    let results = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join("fault-results");
    std::fs::create_dir_all(&results).unwrap();
    std::fs::write(results.join(format!("{position}.md")), format!("{row}\n")).unwrap();
    println!("{table}");
    let o = &outcome;
    assert_eq!((o.lost, o.duplicated), (0, 0), "{}: lost or duplicated rows (seed {seed})\n{table}", o.scenario);
    assert_eq!(
        o.dead_lettered,
        o.planted_poison + o.replayed,
        "{}: dead letters besides the planted poison and exhausted deliveries\n{table}",
        o.scenario
    );
}

#[test]
fn s1_embedded_kill() {
    run_scenario(1, embedded_kill);
}

#[test]
fn s2_pubsub_kill() {
    run_scenario(2, pubsub_kill);
}

#[test]
fn s3_pubsub_outage() {
    run_scenario(3, pubsub_outage);
}

#[test]
fn s4_bigquery_outage() {
    run_scenario(4, bigquery_outage);
}

#[test]
fn s5_disk_full() {
    run_scenario(5, disk_full);
}

#[test]
fn s6_config_change() {
    run_scenario(6, config_change);
}
