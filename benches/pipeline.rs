//! End-to-end benchmark on the reference workload (`../shared/bench/gen.py`).
//!
//! `cargo bench --bench pipeline` generates the workload (once, cached in `target/bench-data/`, or
//! taken from `BQSYNC_BENCH_DATA=DIR`), then runs the real binary `bqsync run --until-drained` on a
//! fresh project for each file — JSONL source, durable SQLite bus (fsync on), worker, DuckDB — and
//! reports wall time, CPU seconds, events per second and peak RSS of the bqsync process. It also
//! checks the result: 1,000,000 distinct atoms, and contacts equal to `contacts_expected.json`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

#[path = "../tests/common/mod.rs"]
mod common;
use common::wait_with_usage;

struct Measurement {
    name: &'static str,
    events: u64,
    wall_seconds: f64,
    cpu_seconds: f64,
    peak_rss_mb: f64,
}

fn main() {
    let data = bench_data();
    let atoms = run_case("atoms (1M appends)", &data.join("atoms.jsonl"), "atoms", 1_000_000);
    check_atoms(&atoms.1);
    let contacts =
        run_case("contacts (200k upserts, 50k keys)", &data.join("contacts.jsonl"), "contacts_master", 200_000);
    check_contacts(&contacts.1, &data.join("contacts_expected.json"));
    println!("\n| case | events | wall s | CPU s | events/s | peak RSS MB |\n|---|---:|---:|---:|---:|---:|");
    for m in [atoms.0, contacts.0] {
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.0} | {:.0} |",
            m.name,
            m.events,
            m.wall_seconds,
            m.cpu_seconds,
            m.events as f64 / m.wall_seconds,
            m.peak_rss_mb
        );
    }
}

fn bench_data() -> PathBuf {
    if let Ok(dir) = std::env::var("BQSYNC_BENCH_DATA") {
        return PathBuf::from(dir);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    if !dir.join("contacts_expected.json").exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let generator = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/bench/gen.py");
        eprintln!("generating the workload with {} ...", generator.display());
        let status = Command::new("python3").arg(&generator).arg(&dir).status().expect("python3");
        assert!(status.success(), "gen.py failed");
    }
    dir
}

/// Runs bqsync on one file in a fresh project; returns the measurement and the project directory.
fn run_case(name: &'static str, file: &Path, table: &str, events: u64) -> (Measurement, tempfile::TempDir) {
    let project = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas"), project.path().join("schemas"))
        .unwrap();
    let inbox = project.path().join("inbox").join(table);
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::copy(file, inbox.join(file.file_name().unwrap())).unwrap();
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_bqsync"))
        .args(["run", "--until-drained"])
        .current_dir(project.path())
        .env("BQSYNC_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (exit, cpu_seconds, peak_rss_mb) = wait_with_usage(child.id() as libc::pid_t);
    // Reaped by wait4 above; forget the handle so nothing waits on the pid again.
    std::mem::forget(child);
    let wall_seconds = started.elapsed().as_secs_f64();
    assert_eq!(exit, 0, "{name}: bqsync failed");
    eprintln!("{name}: {wall_seconds:.2} s wall, {cpu_seconds:.2} CPU-s, peak RSS {peak_rss_mb:.0} MB");
    (Measurement { name, events, wall_seconds, cpu_seconds, peak_rss_mb }, project)
}

fn warehouse(project: &tempfile::TempDir) -> duckdb::Connection {
    duckdb::Connection::open(project.path().join("bqsync.duckdb")).unwrap()
}

fn check_atoms(project: &tempfile::TempDir) {
    let (rows, distinct): (i64, i64) = warehouse(project)
        .query_row("SELECT count(*), count(DISTINCT event_id) FROM atoms", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap();
    assert_eq!((rows, distinct), (1_000_000, 1_000_000), "atoms must land exactly once");
}

fn check_contacts(project: &tempfile::TempDir, expected: &Path) {
    let expected: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(expected).unwrap()).unwrap();
    let connection = warehouse(project);
    let mut statement = connection
        .prepare("SELECT contact_id, version, name, email, phone FROM contacts_master ORDER BY contact_id")
        .unwrap();
    let rows: Vec<(String, i64, String, String, String)> = statement
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), expected.len());
    let wrong = rows
        .iter()
        .zip(&expected)
        .filter(|(row, e)| {
            row.0 != e["contact_id"]
                || row.1 != e["version"]
                || row.2 != e["name"]
                || row.3 != e["email"]
                || row.4 != e["phone"]
        })
        .count();
    assert_eq!(wrong, 0, "{wrong} contacts differ from contacts_expected.json");
    eprintln!("contacts: all {} keys at their highest version", rows.len());
}
