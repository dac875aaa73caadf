//! Producer benchmark: change events per second from a 1,000,000-row SQLite table (watermark by row
//! id) and a 200,000-row DuckDB outbox (every row dirty) into the embedded warehouse.
//!
//! `cargo bench --bench sources` builds each input in a fresh project, runs the real binary
//! `bqsync run --until-drained` (source, durable SQLite bus with fsync on, worker, DuckDB), reports
//! wall time, CPU seconds, events per second and peak RSS, and checks the result: every row landed
//! once, and every outbox flag cleared.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

#[path = "../tests/common/mod.rs"]
mod common;
use common::wait_with_usage;

const SQLITE_ROWS: i64 = 1_000_000;
const OUTBOX_ROWS: i64 = 200_000;

fn main() {
    let sqlite = sqlite_case();
    let outbox = outbox_case();
    println!("\n| source | events | wall s | CPU s | events/s | peak RSS MB |\n|---|---:|---:|---:|---:|---:|");
    for (name, events, wall, cpu, rss) in [sqlite, outbox] {
        println!("| {name} | {events} | {wall:.2} | {cpu:.2} | {:.0} | {rss:.0} |", events as f64 / wall);
    }
}

fn project(config: &str) -> tempfile::TempDir {
    let project = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas"), project.path().join("schemas"))
        .unwrap();
    std::fs::write(
        project.path().join("bqsync.toml"),
        format!("sources.jsonl = []\n[admin]\nlisten = \"off\"\n{config}"),
    )
    .unwrap();
    project
}

/// Runs `bqsync run --until-drained` in the project: (wall s, CPU s, peak RSS MB).
fn run(project: &tempfile::TempDir, name: &str) -> (f64, f64, f64) {
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_bqsync"))
        .args(["run", "--until-drained"])
        .current_dir(project.path())
        .env("BQSYNC_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (exit, cpu, rss) = wait_with_usage(child.id() as libc::pid_t);
    // Reaped by wait4 above; forget the handle so nothing waits on the pid again.
    std::mem::forget(child);
    let wall = started.elapsed().as_secs_f64();
    assert_eq!(exit, 0, "{name}: bqsync failed");
    eprintln!("{name}: {wall:.2} s wall, {cpu:.2} CPU-s, peak RSS {rss:.0} MB");
    (wall, cpu, rss)
}

fn warehouse_count(project: &tempfile::TempDir, sql: &str) -> i64 {
    let warehouse = duckdb::Connection::open(project.path().join("bqsync.duckdb")).unwrap();
    warehouse.query_row(sql, [], |r| r.get(0)).unwrap()
}

fn sqlite_case() -> (&'static str, i64, f64, f64, f64) {
    let project = project(
        r#"
[[sources.sqlite]]
name = "bench"
path = "bench.db"

[[sources.sqlite.tables]]
source_table = "activity"
table = "atoms"
mode = "rowid"
"#,
    );
    let db = rusqlite::Connection::open(project.path().join("bench.db")).unwrap();
    db.execute_batch(&format!(
        "CREATE TABLE activity (event_id TEXT, entity_id TEXT, kind TEXT, text TEXT, score REAL, tags TEXT, created_at TEXT NOT NULL);
         WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i < {last})
         INSERT INTO activity SELECT printf('ev-%07d', i), printf('ent-%05d', i % 100000), 'click',
           'lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor', (i % 2000) / 2.0 - 500,
           '[\"web\",\"eu\"]', strftime('%Y-%m-%d %H:%M:%S', 1704067200 + i * 2, 'unixepoch') FROM c;",
        last = SQLITE_ROWS - 1
    ))
    .unwrap();
    drop(db);
    let (wall, cpu, rss) = run(&project, "SQLite table (1M rows, rowid watermark)");
    let distinct = warehouse_count(&project, "SELECT count(DISTINCT event_id) FROM atoms");
    assert_eq!((warehouse_count(&project, "SELECT count(*) FROM atoms"), distinct), (SQLITE_ROWS, SQLITE_ROWS));
    ("SQLite table, 1M rows (rowid watermark) → atoms", SQLITE_ROWS, wall, cpu, rss)
}

fn outbox_case() -> (&'static str, i64, f64, f64, f64) {
    let project = project(
        r#"
[[sources.outbox]]
name = "contacts"
path = "outbox.duckdb"
source_table = "contacts"
table = "contacts_master"
"#,
    );
    let outbox = duckdb::Connection::open(project.path().join("outbox.duckdb")).unwrap();
    outbox
        .execute_batch(&format!(
            "CREATE TABLE contacts AS SELECT 'c-' || lpad(i::VARCHAR, 7, '0') AS contact_id, 'Name ' || i AS name,
               'u' || i || '@example.com' AS email, '+1 555 0100' AS phone,
               TIMESTAMP '2024-01-01' + to_seconds(i) AS updated_at, 1 + i % 7 AS version, true AS dirty
             FROM range({OUTBOX_ROWS}) t(i)"
        ))
        .unwrap();
    drop(outbox);
    let (wall, cpu, rss) = run(&project, "DuckDB outbox (200k dirty rows)");
    assert_eq!(warehouse_count(&project, "SELECT count(*) FROM contacts_master"), OUTBOX_ROWS);
    let outbox = duckdb::Connection::open(project.path().join("outbox.duckdb")).unwrap();
    let dirty: i64 = outbox.query_row("SELECT count(*) FROM contacts WHERE dirty", [], |r| r.get(0)).unwrap();
    assert_eq!(dirty, 0, "every flag cleared");
    ("DuckDB outbox, 200k dirty rows → contacts_master", OUTBOX_ROWS, wall, cpu, rss)
}
