//! Every folder under `examples/` runs as its README says, on the embedded default, and lands what
//! its sample input holds.

// The embedded bus and DuckDB: built with the `embedded` feature (the default).
#![cfg(feature = "embedded")]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Copies an example folder into a fresh directory (so runs leave the repository clean).
fn copy_example(name: &str) -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(name), dir.path());
    dir
}

/// Runs the example's steps: `python3 seed.py` when there is one (twice: seeds are idempotent), then
/// `bqsync --config EXAMPLE/bqsync.toml run --until-drained` from another folder, with the example's
/// own `schemas/` (an example works from any folder, and outside the clone).
fn run_example(name: &str, env: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = copy_example(name);
    if dir.path().join("seed.py").exists() {
        for _ in 0..2 {
            let status = Command::new("python3").arg("seed.py").current_dir(dir.path()).stdout(Stdio::null()).status();
            assert!(status.unwrap().success(), "{name}: seed.py failed");
        }
    }
    let elsewhere = tempfile::tempdir().unwrap();
    let config = dir.path().join("bqsync.toml");
    let output = Command::new(env!("CARGO_BIN_EXE_bqsync"))
        .args(["--config", config.to_str().unwrap(), "run", "--until-drained"])
        .current_dir(elsewhere.path())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(output.status.success(), "{name}: {}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0, "{name}: nothing lands where it was started");
    dir
}

fn count(dir: &tempfile::TempDir, sql: &str) -> i64 {
    let warehouse = duckdb::Connection::open(dir.path().join("bqsync.duckdb")).unwrap();
    warehouse.query_row(sql, [], |r| r.get(0)).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn assert_no_dead_letters(dir: &tempfile::TempDir) {
    assert_eq!(count(dir, "SELECT count(*) FROM dead_letters"), 0);
}

#[test]
fn atoms_example() {
    let dir = run_example("atoms", &[]);
    assert_eq!(count(&dir, "SELECT count(*) FROM atoms"), 3);
    assert_no_dead_letters(&dir);
}

#[test]
fn id_registry_example() {
    let dir = run_example("id_registry", &[]);
    assert_eq!(count(&dir, "SELECT count(*) FROM id_registry WHERE label = 'Ada Lovelace' OR id = 'o-001'"), 2);
    assert_no_dead_letters(&dir);
}

#[test]
fn contacts_outbox_example() {
    let dir = run_example("contacts_outbox", &[]);
    assert_eq!(count(&dir, "SELECT count(*) FROM contacts_master WHERE NOT _bqsync_deleted"), 2);
    assert_eq!(count(&dir, "SELECT count(*) FROM contacts_master WHERE _bqsync_deleted AND contact_id = 'c-3'"), 1);
    let outbox = rusqlite::Connection::open(dir.path().join("contacts.db")).unwrap();
    let dirty: i64 = outbox.query_row("SELECT count(*) FROM contacts WHERE dirty", [], |r| r.get(0)).unwrap();
    assert_eq!(dirty, 0, "every published row's flag is cleared");
    assert_no_dead_letters(&dir);
}

#[test]
fn zoom_sessions_example() {
    let dir = run_example("zoom_sessions", &[]);
    assert_eq!(count(&dir, "SELECT count(*) FROM zoom_sessions WHERE transcript LIKE 'Ada: Shall we start?%'"), 1);
    assert_no_dead_letters(&dir);
}

#[test]
fn sqlite_tables_example() {
    let dir = run_example("sqlite_tables", &[]);
    assert_eq!(count(&dir, "SELECT count(*) FROM id_registry"), 2);
    assert_eq!(count(&dir, "SELECT count(*) FROM atoms"), 2);
    assert_no_dead_letters(&dir);
}

#[test]
fn idp_users_example() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/idp_users");
    let mut server =
        Command::new("python3").arg("serve.py").arg(port.to_string()).current_dir(&example).spawn().unwrap();
    common::wait_until(Duration::from_secs(20), "the stand-in API", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let url = format!("http://127.0.0.1:{port}/v1/users");
    let env = [("IDP_TOKEN", "Bearer demo"), ("BQSYNC__SOURCES__HTTP__0__URL", url.as_str())];
    let dir = run_example("idp_users", &env);
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(count(&dir, "SELECT count(*) FROM idp_users"), 250);
    assert_no_dead_letters(&dir);
}
