//! The fault-injection harness: the real binary on loopback, faults injected while input keeps
//! arriving, then rows counted against what was produced — lost, duplicated, dead-lettered.
//!
//! One documented command (README "Fault injection"): `scripts/faults.sh [short|long]` starts the
//! emulators and runs this test; `scripts/test.sh` (CI) runs the short mode with the rest. The mode
//! comes from `BQSYNC_FAULTS` (`short`, the default, or `long`); the results table is written to
//! `target/fault-results.md` and printed. The test fails on any lost or duplicated row, and on any dead
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
//! - `disk-full`: the state folder (checkpoints and the embedded bus) on a small tmpfs, filled to the
//!   last byte for a while under load, then freed.
//! - `config-change`: stopped (SIGTERM) mid-stream and restarted with other batch sizes.

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

    /// Counts the warehouse against the workload.
    fn count(&self, project: &Project, scenario: &'static str, rounds: usize, recover_secs: f64) -> Outcome {
        let connection = project.warehouse();
        let mut statement = connection.prepare("SELECT event_id FROM atoms").unwrap();
        let landed: Vec<String> = statement.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
        let distinct: HashSet<&String> = landed.iter().collect();
        let lost_atoms = self.atom_ids.iter().filter(|id| !distinct.contains(id)).count();
        let duplicated = landed.len() - distinct.len();
        let mut statement =
            connection.prepare("SELECT contact_id, version, email, _bqsync_deleted FROM contacts_master").unwrap();
        let rows: Vec<(String, i64, Option<String>, bool)> = statement
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let by_key: std::collections::HashMap<&String, (i64, Option<&String>, bool)> =
            rows.iter().map(|(k, v, e, d)| (k, (*v, e.as_ref(), *d))).collect();
        let lost_contacts = self
            .expected_contacts
            .iter()
            .filter(|(key, expected)| match (by_key.get(key), expected) {
                (Some((v, Some(e), false)), Some((ev, ee))) => v != ev || *e != ee,
                (Some((_, _, true)), None) => false,
                _ => true,
            })
            .count();
        let dead_lettered: i64 = connection.query_row("SELECT count(*) FROM dead_letters", [], |r| r.get(0)).unwrap();
        Outcome {
            scenario,
            rounds,
            events: self.events(),
            lost: lost_atoms + lost_contacts,
            duplicated,
            dead_lettered: dead_lettered as usize,
            planted_poison: self.poison,
            recover_secs,
        }
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
    workload.count(
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
         dead_letter_subscription = \"{id}-dlq-sub\"\nack_deadline_secs = 10\nmin_backoff_secs = 0\n\
         max_backoff_secs = 1\ndrain_quiet_ms = 15000\n"
    )
}

/// `bqsync produce` and `bqsync work` on Pub/Sub; each round one of them is SIGKILLed at random.
fn pubsub_kill(mode: Mode, rng: &mut fastrand::Rng) -> Outcome {
    // Not 200 in long mode: after about 150 killed clients the emulator stops confirming publishes to
    // the topic, even on new connections (its own bug; bqsync then times out and retries forever).
    let rounds = if mode == Mode::Long { 60 } else { 10 };
    let workload = Workload::new("pk", rounds, 400, 100, 2);
    let host = emulator_url("PUBSUB_EMULATOR_HOST").trim_start_matches("http://").to_string();
    let project = Project::new(&pubsub_config(&host, "kill"));
    run_ok(&project, &["setup"], &[]);
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
    workload.count(
        &project,
        "pubsub-kill: SIGKILL producer or worker at random",
        rounds,
        started.elapsed().as_secs_f64(),
    )
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

/// Free loopback port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Atoms landed so far (new rows only: each atom counts once), from a running process's metrics.
fn landed_atoms(port: u16) -> Option<f64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    Some(
        body.lines()
            .filter(|l| l.starts_with("bqsync_rows_landed_total{table=\"atoms\"}"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
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
    wait_until(Duration::from_secs(60), "rows landing before the outage", || landed_atoms(port).unwrap_or(0.0) > 0.0);
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
        landed_atoms(port).unwrap_or(0.0) >= expected
    });
    let recover_secs = resumed.elapsed().as_secs_f64();
    signal(&child, "TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(60)).success(), "{}", project.log_tail());
    run_ok(&project, &["work", "--until-drained"], &[]);
    workload.count(&project, "pubsub-outage: Pub/Sub emulator frozen under load", 1, recover_secs)
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
        landed_atoms(port).unwrap_or(0.0) >= expected
    });
    let recover_secs = last_free.elapsed().as_secs_f64();
    signal(&child, "TERM");
    let _ = wait_exit(&mut child, Duration::from_secs(60));
    project.run_until_drained(&[]);
    workload.count(&project, "disk-full: state folder full for 5 s under load", rounds, recover_secs)
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
    workload.count(
        &project,
        "config-change: SIGTERM, restart with other batch sizes",
        rounds,
        started.elapsed().as_secs_f64(),
    )
}

fn render(outcomes: &[Outcome], mode: Mode) -> String {
    let mut out = format!(
        "Fault-injection results ({} mode, generated by tests/faults.rs)\n\n\
         | scenario | rounds | events | lost | duplicated | dead-lettered (planted) | time to recover s |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
        if mode == Mode::Long { "long" } else { "short" }
    );
    for o in outcomes {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} ({}) | {:.1} |",
            o.scenario, o.rounds, o.events, o.lost, o.duplicated, o.dead_lettered, o.planted_poison, o.recover_secs
        );
    }
    out
}

#[test]
fn fault_injection_harness() {
    let mode = Mode::from_env();
    let seed = std::env::var("BQSYNC_FAULTS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261122);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut scenarios: Vec<fn(Mode, &mut fastrand::Rng) -> Outcome> =
        vec![embedded_kill, pubsub_kill, pubsub_outage, disk_full, config_change];
    // BQSYNC_FAULTS_ONLY=2,3 runs those scenarios alone (1-based), for work on one of them.
    if let Ok(only) = std::env::var("BQSYNC_FAULTS_ONLY") {
        let wanted: Vec<usize> = only.split(',').filter_map(|n| n.trim().parse().ok()).collect();
        scenarios =
            scenarios.into_iter().enumerate().filter(|(i, _)| wanted.contains(&(i + 1))).map(|(_, s)| s).collect();
    }
    let mut outcomes = Vec::new();
    for scenario in scenarios {
        let outcome = scenario(mode, &mut rng);
        eprintln!("{}", render(std::slice::from_ref(&outcome), mode).lines().last().unwrap());
        outcomes.push(outcome);
    }
    let table = render(&outcomes, mode);
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("fault-results.md"), &table).unwrap();
    println!("{table}");
    for o in &outcomes {
        assert_eq!((o.lost, o.duplicated), (0, 0), "{}: lost or duplicated rows (seed {seed})\n{table}", o.scenario);
        assert_eq!(
            o.dead_lettered, o.planted_poison,
            "{}: dead letters besides the planted poison\n{table}",
            o.scenario
        );
    }
}
