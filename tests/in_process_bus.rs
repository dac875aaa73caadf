//! `bqsync run` with DuckDB hands events from its sources to its worker in memory
//! (`src/bus/direct.rs`). Its new crash point: the warehouse committed events whose source
//! checkpoint is not written yet (for an outbox: whose dirty flags are not cleared yet). A restart
//! reads them again, and the warehouse must recognise them. The atoms' lines are plain records of an
//! append table, so the JSONL kill test lands them as rows staged by the source
//! (`src/sources/jsonl/staged.rs`), the default on this path.

// The embedded bus and DuckDB: built with the `embedded` feature (the default).
#![cfg(feature = "embedded")]

mod common;

use std::time::Duration;

use common::{atom_line, free_port, landed_rows, signal, wait_exit, wait_until, Project};

/// The batch sizes of both kill tests: small, so many landings, each a commit the checkpoint follows.
const FIRST: u64 = 10_000;
const TOTAL: u64 = 120_000;

/// Holds the state file's write lock: the source checkpoints stop where they are, while landings go
/// on (up to the events a source may have in flight). Rolled back on drop.
struct HeldCheckpoints(rusqlite::Connection);

impl HeldCheckpoints {
    fn take(project: &Project) -> HeldCheckpoints {
        let state = rusqlite::Connection::open(project.path(".bqsync/state.db")).unwrap();
        state.busy_timeout(Duration::from_secs(10)).unwrap();
        state.execute_batch("BEGIN IMMEDIATE").unwrap();
        HeldCheckpoints(state)
    }
}

impl Drop for HeldCheckpoints {
    fn drop(&mut self) {
        let _ = self.0.execute_batch("ROLLBACK");
    }
}

/// With the checkpoints held at `FIRST` events, `add_the_rest` adds the other input; once the running
/// process reports a batch (500 rows) landed past the checkpoint, it is SIGKILLed in that state. The
/// kill cannot come too late: the checkpoints are held before the input that lands past them exists.
fn kill_with_landings_past_the_checkpoint(
    project: &Project,
    child: &mut std::process::Child,
    port: u16,
    add_the_rest: impl FnOnce(),
) {
    let held = HeldCheckpoints::take(project);
    add_the_rest();
    wait_until(Duration::from_secs(60), "rows landed past the held checkpoint", || {
        landed_rows(port, "atoms").unwrap_or(0.0) >= (FIRST + 500) as f64
    });
    signal(child, "KILL");
    let _ = wait_exit(child, Duration::from_secs(10));
    drop(held);
}

fn lines_before(bytes: &[u8], offset: u64) -> i64 {
    bytes[..offset as usize].iter().filter(|&&b| b == b'\n').count() as i64
}

#[test]
fn a_kill_between_commit_and_checkpoint_lands_each_event_once() {
    let project = Project::new("");
    let mut text = String::new();
    for i in 0..TOTAL {
        text.push_str(&atom_line(&format!("k-{i}"), i));
    }
    let split = text.match_indices('\n').nth(FIRST as usize - 1).unwrap().0 + 1;
    let file = "inbox/atoms/a.jsonl";
    project.append(file, &text.as_bytes()[..split]);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let env = [
        ("BQSYNC__WORKER__MAX_BATCH_ROWS", "500"),
        ("BQSYNC__SOURCES__JSONL__0__PUBLISH_BATCH", "250"),
        ("BQSYNC__ADMIN__LISTEN", listen.as_str()),
    ];
    let mut child = project.spawn_run(&[], &env);
    wait_until(Duration::from_secs(60), "the first lines checkpointed", || project.file_lag(file) == Some(0));
    kill_with_landings_past_the_checkpoint(&project, &mut child, port, || {
        project.append(file, &text.as_bytes()[split..]);
    });
    let offset = text.len() as u64 - project.file_lag(file).expect("checkpoint");
    let checkpointed = lines_before(text.as_bytes(), offset);
    let landed = project.query_i64("SELECT count(*) FROM atoms");
    assert_eq!(checkpointed, FIRST as i64, "the checkpoint was held at the first lines");
    assert!(
        landed > checkpointed,
        "{landed} rows landed, {checkpointed} lines checkpointed; log:\n{}",
        project.log_tail()
    );
    eprintln!("killed with {landed} rows landed and {checkpointed} lines checkpointed");
    project.run_until_drained(&env[..2]);
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms"), TOTAL as i64, "log:\n{}", project.log_tail());
    assert_eq!(project.query_i64("SELECT count(DISTINCT event_id) FROM atoms"), TOTAL as i64);
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
        "[sources]\njsonl = []\n\n[[sources.sqlite]]\nname = \"app\"\npath = \"app.db\"\npoll_interval_secs = 1\n\n\
         [[sources.sqlite.tables]]\nsource_table = \"activity\"\ntable = \"atoms\"\nmode = \"rowid\"\n",
    );
    let db = rusqlite::Connection::open(project.path("app.db")).unwrap();
    let insert_rows = |from: u64, to: u64| {
        db.execute_batch(&format!(
            "WITH RECURSIVE c(i) AS (SELECT {from} UNION ALL SELECT i + 1 FROM c WHERE i < {to})
             INSERT INTO activity SELECT printf('ev-%07d', i), 'click', 'lorem ipsum dolor sit amet',
               strftime('%Y-%m-%d %H:%M:%S', 1704067200 + i, 'unixepoch') FROM c;"
        ))
        .unwrap();
    };
    db.execute_batch("CREATE TABLE activity (event_id TEXT, kind TEXT, text TEXT, created_at TEXT NOT NULL)").unwrap();
    insert_rows(1, FIRST);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let env = [
        ("BQSYNC__WORKER__MAX_BATCH_ROWS", "500"),
        ("BQSYNC__SOURCES__SQLITE__0__BATCH_ROWS", "250"),
        ("BQSYNC__ADMIN__LISTEN", listen.as_str()),
    ];
    let watermark = || -> Option<i64> {
        let state = rusqlite::Connection::open(project.path(".bqsync/state.db")).ok()?;
        let saved: String = state
            .query_row("SELECT value FROM source_state WHERE source = 'app' AND key = 'wm:activity'", [], |r| r.get(0))
            .ok()?;
        // Saved as JSON `[type, value]`.
        serde_json::from_str::<serde_json::Value>(&saved).ok()?[1].as_i64()
    };
    // The pass is over once its next one is scheduled: only then may the lock be taken, or the pass's
    // own history writes would wait on it.
    let next_pass_scheduled = || {
        let state = rusqlite::Connection::open(project.path(".bqsync/state.db")).ok()?;
        state
            .query_row(
                "SELECT 1 FROM source_state WHERE source = 'app' AND key = 'schedule:next_pass_micros'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .ok()
    };
    let mut child = project.spawn_run(&[], &env);
    wait_until(Duration::from_secs(60), "the first rows' pass", || {
        watermark() == Some(FIRST as i64) && next_pass_scheduled().is_some()
    });
    kill_with_landings_past_the_checkpoint(&project, &mut child, port, || insert_rows(FIRST + 1, TOTAL));
    let saved = watermark().expect("watermark");
    let landed = project.query_i64("SELECT count(*) FROM atoms");
    assert_eq!(saved, FIRST as i64, "the watermark was held at the first rows");
    assert!(landed > saved, "{landed} rows landed, watermark {saved}; log:\n{}", project.log_tail());
    eprintln!("killed with {landed} rows landed and the watermark at row {saved}");
    project.run_until_drained(&env[..2]);
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms"), TOTAL as i64, "log:\n{}", project.log_tail());
    assert_eq!(project.query_i64("SELECT count(DISTINCT event_id) FROM atoms"), TOTAL as i64);
}

/// The same crash point on an outbox: pages landed whose dirty flags are not cleared yet (the source
/// reads the next page while one lands, and clears a page's flags only once it landed). The
/// application holds its write lock, so no clear can happen; the process is SIGKILLed with pages
/// landed and every flag still set. The restart publishes those rows again: one row a key stays, at
/// its version, and every flag ends cleared.
#[test]
fn a_kill_with_outbox_pages_landed_and_flags_still_set_lands_each_row_once() {
    let project = Project::new(
        "[sources]\njsonl = []\n\n[[sources.outbox]]\nname = \"contacts\"\nengine = \"sqlite\"\npath = \"app.db\"\n\
         source_table = \"contacts\"\ntable = \"contacts_master\"\nbatch_rows = 500\npoll_interval_ms = 50\n",
    );
    let rows = 5_000i64;
    let app = rusqlite::Connection::open(project.path("app.db")).unwrap();
    app.execute_batch(&format!(
        "CREATE TABLE contacts (contact_id TEXT PRIMARY KEY, name TEXT, email TEXT, phone TEXT,
           version INTEGER NOT NULL, dirty BOOLEAN NOT NULL DEFAULT true);
         WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {rows})
         INSERT INTO contacts (contact_id, name, email, phone, version)
           SELECT printf('c-%05d', i), 'N', 'e' || i || '@x.test', '+1', 1 + i % 3 FROM c;"
    ))
    .unwrap();
    // The application's write lock: the source reads and publishes, its clears wait.
    app.execute_batch("BEGIN IMMEDIATE").unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = project.spawn_run(&[], &[("BQSYNC__ADMIN__LISTEN", listen.as_str())]);
    wait_until(Duration::from_secs(60), "a page landed", || {
        landed_rows(port, "contacts_master").unwrap_or(0.0) >= 500.0
    });
    signal(&child, "KILL");
    let _ = wait_exit(&mut child, Duration::from_secs(10));
    app.execute_batch("ROLLBACK").unwrap();
    let dirty = |app: &rusqlite::Connection| -> i64 {
        app.query_row("SELECT count(*) FROM contacts WHERE dirty", [], |r| r.get(0)).unwrap()
    };
    assert_eq!(dirty(&app), rows, "no flag could be cleared");
    let landed = project.query_i64("SELECT count(*) FROM contacts_master");
    assert!(landed >= 500, "pages landed with their flags still set: {landed}");
    eprintln!("killed with {landed} rows landed and every flag set");
    project.run_until_drained(&[]);
    assert_eq!(dirty(&app), 0, "log:\n{}", project.log_tail());
    let at_their_version = "SELECT count(*) FROM contacts_master \
         WHERE version = 1 + CAST(substr(contact_id, 3) AS INTEGER) % 3 AND email = 'e' || CAST(substr(contact_id, 3) AS INTEGER) || '@x.test'";
    assert_eq!(project.query_i64("SELECT count(*) FROM contacts_master"), rows, "log:\n{}", project.log_tail());
    assert_eq!(project.query_i64(at_their_version), rows);
}
