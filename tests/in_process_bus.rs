//! `bqsync run` with DuckDB hands events from its sources to its worker in memory
//! (`src/bus/direct.rs`). Its new crash point: the warehouse committed events whose source
//! checkpoint is not written yet. A restart reads them again, and the warehouse must recognise them.

// The embedded bus and DuckDB: built with the `embedded` feature (the default).
#![cfg(feature = "embedded")]

mod common;

use std::time::Duration;

use common::{atom_line, signal, wait_exit, wait_until, Project};

/// Holds the state file's write lock, so checkpoints stop where they are while landings go on (up to
/// the events a source may have in flight), then SIGKILLs the process in that state.
fn kill_while_checkpoints_are_held(project: &Project, child: &mut std::process::Child) {
    let state = rusqlite::Connection::open(project.path(".bqsync/state.db")).unwrap();
    state.execute_batch("BEGIN IMMEDIATE").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    signal(child, "KILL");
    let _ = wait_exit(child, Duration::from_secs(10));
    state.execute_batch("ROLLBACK").unwrap();
}

fn lines_before(bytes: &[u8], offset: u64) -> i64 {
    bytes[..offset as usize].iter().filter(|&&b| b == b'\n').count() as i64
}

#[test]
fn a_kill_between_commit_and_checkpoint_lands_each_event_once() {
    let project = Project::new("");
    let atoms = 120_000u64;
    let mut text = String::new();
    for i in 0..atoms {
        text.push_str(&atom_line(&format!("k-{i}"), i));
    }
    project.append("inbox/atoms/a.jsonl", text.as_bytes());
    // Small batches: many landings, each one a commit the checkpoint follows.
    let env = [("BQSYNC__WORKER__MAX_BATCH_ROWS", "500"), ("BQSYNC__SOURCES__JSONL__0__PUBLISH_BATCH", "250")];
    let mut child = project.spawn_run(&["--until-drained"], &env);
    let file = "inbox/atoms/a.jsonl";
    let size = text.len() as u64;
    wait_until(Duration::from_secs(60), "a first checkpoint", || project.file_lag(file).is_some_and(|lag| lag < size));
    kill_while_checkpoints_are_held(&project, &mut child);
    let offset = size - project.file_lag(file).expect("checkpoint");
    let checkpointed = lines_before(text.as_bytes(), offset);
    let landed = project.query_i64("SELECT count(*) FROM atoms");
    assert!(
        landed > checkpointed,
        "the kill must come after commits the checkpoint does not cover: {landed} rows landed, \
         {checkpointed} lines checkpointed; log:\n{}",
        project.log_tail()
    );
    eprintln!("killed with {landed} rows landed and {checkpointed} lines checkpointed");
    project.run_until_drained(&env);
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms"), atoms as i64, "log:\n{}", project.log_tail());
    assert_eq!(project.query_i64("SELECT count(DISTINCT event_id) FROM atoms"), atoms as i64);
    assert_eq!(project.query_i64("SELECT count(*) FROM dead_letters"), 0, "log:\n{}", project.log_tail());
}

/// Events left in the queue file (by `bqsync produce`) land through `run` beside the in-process
/// path; and `in_process = false` keeps the queue file between sources and worker.
#[test]
fn run_drains_the_queue_file_beside_the_in_process_path() {
    for in_process in [true, false] {
        let project = Project::new("");
        let env = [("BQSYNC__BUS__EMBEDDED__IN_PROCESS", if in_process { "true" } else { "false" })];
        let mut first = String::new();
        let mut second = String::new();
        for i in 0..5_000 {
            first.push_str(&atom_line(&format!("a-{i}"), i));
            second.push_str(&atom_line(&format!("b-{i}"), i));
        }
        project.append("inbox/atoms/first.jsonl", first.as_bytes());
        let produced = project.command(&["produce", "--until-drained"]).output().unwrap();
        assert!(produced.status.success(), "produce failed: {}", String::from_utf8_lossy(&produced.stderr));
        assert_eq!(project.bus_depth(), Some(5_000), "produce leaves its events in the queue file");
        project.append("inbox/atoms/second.jsonl", second.as_bytes());
        project.run_until_drained(&env);
        assert_eq!(project.query_i64("SELECT count(*) FROM atoms"), 10_000, "in_process = {in_process}");
        assert_eq!(project.query_i64("SELECT count(DISTINCT event_id) FROM atoms"), 10_000);
        assert_eq!(project.bus_depth(), Some(0), "in_process = {in_process}: the queue file is drained");
    }
}

/// The same crash point on a SQLite table source: pages landed past the saved watermark.
#[test]
fn a_kill_after_pages_landed_past_the_watermark_lands_each_row_once() {
    let project = Project::new(
        "[sources]\njsonl = []\n\n[[sources.sqlite]]\nname = \"app\"\npath = \"app.db\"\n\n\
         [[sources.sqlite.tables]]\nsource_table = \"activity\"\ntable = \"atoms\"\nmode = \"rowid\"\n",
    );
    let rows = 120_000i64;
    let db = rusqlite::Connection::open(project.path("app.db")).unwrap();
    db.execute_batch(&format!(
        "CREATE TABLE activity (event_id TEXT, kind TEXT, text TEXT, created_at TEXT NOT NULL);
         WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {rows})
         INSERT INTO activity SELECT printf('ev-%07d', i), 'click', 'lorem ipsum dolor sit amet',
           strftime('%Y-%m-%d %H:%M:%S', 1704067200 + i, 'unixepoch') FROM c;"
    ))
    .unwrap();
    drop(db);
    let env = [("BQSYNC__WORKER__MAX_BATCH_ROWS", "500"), ("BQSYNC__SOURCES__SQLITE__0__BATCH_ROWS", "250")];
    let watermark = || -> Option<i64> {
        let state = rusqlite::Connection::open(project.path(".bqsync/state.db")).ok()?;
        let saved: String = state
            .query_row("SELECT value FROM source_state WHERE source = 'app' AND key = 'wm:activity'", [], |r| r.get(0))
            .ok()?;
        // Saved as JSON `[type, value]`.
        serde_json::from_str::<serde_json::Value>(&saved).ok()?[1].as_i64()
    };
    let mut child = project.spawn_run(&["--until-drained"], &env);
    wait_until(Duration::from_secs(60), "a first watermark", || watermark().is_some());
    kill_while_checkpoints_are_held(&project, &mut child);
    let saved = watermark().expect("watermark");
    let landed = project.query_i64("SELECT count(*) FROM atoms");
    assert!(
        landed > saved,
        "the kill must come after pages landed past the watermark: {landed} rows landed, watermark {saved}; log:\n{}",
        project.log_tail()
    );
    eprintln!("killed with {landed} rows landed and the watermark at row {saved}");
    project.run_until_drained(&env);
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms"), rows, "log:\n{}", project.log_tail());
    assert_eq!(project.query_i64("SELECT count(DISTINCT event_id) FROM atoms"), rows);
}
