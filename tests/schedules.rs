//! Source schedules on the real binary: a cron `schedule` replaces the poll interval, a
//! `full_schedule` re-publishes everything on its own cron (landing once), and `POST /sync?full=true`
//! asks for one now.

// The embedded bus and DuckDB: built with the `embedded` feature (the default).
#![cfg(feature = "embedded")]

mod common;

use std::time::Duration;

use common::{admin_http as http, free_port, signal, wait_exit, wait_until, Project};

fn published(port: u16) -> u64 {
    let metrics = http(port, "GET", "/metrics", None).map(|r| r.1).unwrap_or_default();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("bqsync_events_published_total{source=\"db\"} "))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

fn insert(db: &rusqlite::Connection, from: u64, to: u64) {
    for i in from..to {
        db.execute(
            "INSERT INTO events (event_id, kind, created_at) VALUES (?1, 'click', '2024-01-01T00:00:00Z')",
            [format!("e{i}")],
        )
        .unwrap();
    }
}

#[test]
fn a_cron_schedule_replaces_the_interval_and_full_resyncs_land_once() {
    // Every 2 s by cron (seconds first), in a zone far from UTC; the interval alone would wait an hour.
    let project = Project::new(
        r#"
[[sources.sqlite]]
name = "db"
path = "app.db"
poll_interval_secs = 3600
schedule = "*/2 * * * * *"
full_schedule = "*/7 * * * * *"
timezone = "Asia/Kolkata"

[[sources.sqlite.tables]]
source_table = "events"
table = "atoms"
mode = "rowid"
"#,
    );
    let db = rusqlite::Connection::open(project.path("app.db")).unwrap();
    db.execute_batch("CREATE TABLE events (event_id TEXT, kind TEXT, created_at TEXT)").unwrap();
    insert(&db, 0, 10);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let env = [("BQSYNC__ADMIN__LISTEN", listen.as_str()), ("BQSYNC_ADMIN_TOKEN", "t0ken")];
    let mut child = project.spawn_run(&[], &env);
    wait_until(Duration::from_secs(30), "the admin server", || http(port, "GET", "/healthz", None).is_some());
    let landed = |n: u64| {
        let status: serde_json::Value =
            serde_json::from_str(&http(port, "GET", "/status", None).unwrap().1).unwrap_or_default();
        status["tables"]["atoms"]["rows_landed"].as_u64() == Some(n)
    };
    wait_until(Duration::from_secs(30), "the first pass, at start-up", || landed(10));
    insert(&db, 10, 15);
    wait_until(Duration::from_secs(15), "the rows added, on the next cron tick", || landed(15));
    // The full re-sync publishes all 15 again (a rowid pass alone would publish nothing new); they
    // land once.
    let before = published(port);
    wait_until(Duration::from_secs(30), "a full re-sync on its cron", || published(port) >= before + 15);
    // The seed's endpoints over HTTP: tables listed without a token; syncing needs it.
    let tables = http(port, "GET", "/tables", None).unwrap();
    assert!(tables.0 == 200 && tables.1.contains("\"atoms\""), "{tables:?}");
    assert_eq!(http(port, "POST", "/sync/tables?full=true", None).unwrap().0, 401);
    assert_eq!(http(port, "POST", "/sync?full=true", Some("wrong")).unwrap().0, 403);
    // On request: `?full=true`, and a query that means nothing is refused.
    assert_eq!(http(port, "POST", "/sync?fulll=1", Some("t0ken")).unwrap().0, 400);
    let before = published(port);
    let (code, body) = http(port, "POST", "/sync?full=true", Some("t0ken")).unwrap();
    assert_eq!(code, 202, "{body}");
    assert!(body.contains("\"full\":true"), "{body}");
    wait_until(Duration::from_secs(10), "the requested full re-sync", || published(port) >= before + 15);
    let status: serde_json::Value = serde_json::from_str(&http(port, "GET", "/status", None).unwrap().1).unwrap();
    // The sync state over HTTP: the whole source's last pass and its next scheduled one (on the
    // 2-second cron), and the table's watermark.
    let sync = status["sync"].as_array().unwrap_or_else(|| panic!("{status}"));
    let whole = sync.iter().find(|s| s["source"] == "db" && s["table"] == "*").unwrap_or_else(|| panic!("{status}"));
    assert!(whole["next_pass"].as_str().is_some() && whole["consecutive_failures"] == 0, "{whole}");
    let events = sync.iter().find(|s| s["table"] == "events").unwrap_or_else(|| panic!("{status}"));
    assert!(events["position"].as_str().is_some_and(|p| p.contains("15")), "rowid watermark at 15: {events}");
    signal(&child, "TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(30)).success(), "{}", project.log_tail());
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms"), 15, "re-published rows land once: {status}");
}

#[test]
fn bad_schedules_are_refused_naming_the_field() {
    for (fields, expected) in [
        ("schedule = \"every day\"", "`schedule`"),
        ("schedule = \"0 2 * * *\"\ntimezone = \"Mars/Olympus\"", "`timezone`"),
    ] {
        let project = Project::new(&format!(
            "[[sources.sqlite]]\nname = \"db\"\npath = \"app.db\"\n{fields}\n\n[[sources.sqlite.tables]]\nsource_table = \"events\"\ntable = \"atoms\"\n"
        ));
        rusqlite::Connection::open(project.path("app.db")).unwrap();
        let output = project.command(&["run", "--until-drained"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(expected), "{fields}: {stderr}");
    }
}

/// A full re-sync whose time passed while bqsync was down runs once at start-up; with none missed,
/// a restart publishes nothing again.
#[test]
fn a_full_resync_missed_while_down_runs_once_at_start_up() {
    let project = Project::new(
        "[[sources.sqlite]]\nname = \"db\"\npath = \"app.db\"\nfull_schedule = \"0 2 * * *\"\n\n\
         [[sources.sqlite.tables]]\nsource_table = \"events\"\ntable = \"atoms\"\nmode = \"rowid\"\n",
    );
    let db = rusqlite::Connection::open(project.path("app.db")).unwrap();
    db.execute_batch("CREATE TABLE events (event_id TEXT, kind TEXT, created_at TEXT)").unwrap();
    insert(&db, 0, 10);
    let published_by_a_run = |project: &Project| -> u64 {
        let output = project.command(&["run", "--until-drained"]).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        report["report"]["events_published"].as_u64().unwrap_or_else(|| panic!("{report}"))
    };
    assert_eq!(published_by_a_run(&project), 10, "the first run publishes every row");
    assert_eq!(published_by_a_run(&project), 0, "no full re-sync was missed: nothing again");
    // As if bqsync had been down for two days: the last full re-sync was before the last 02:00.
    let state = rusqlite::Connection::open(project.path(".bqsync/state.db")).unwrap();
    let two_days_ago = chrono::Utc::now().timestamp_micros() - 2 * 86_400_000_000;
    let updated = state
        .execute(
            "UPDATE source_state SET value = ?1 WHERE source = 'db' AND key = 'schedule:last_full_micros'",
            [two_days_ago.to_string()],
        )
        .unwrap();
    assert_eq!(updated, 1, "the last full re-sync is recorded");
    assert_eq!(published_by_a_run(&project), 10, "the missed full re-sync runs once at start-up");
    assert_eq!(published_by_a_run(&project), 0, "and only once");
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms"), 10);
}
