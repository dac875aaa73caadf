//! Producers on real files and a real local HTTP server, through the real binary: SQLite watermark
//! sync, the dirty-row outbox (SQLite and DuckDB) under concurrent writers, meeting sessions written
//! in parts, and the incremental HTTP API source.

// The embedded bus and DuckDB: built with the `embedded` feature (the default).
#![cfg(feature = "embedded")]

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use common::*;

/// Runs `bqsync ARGS` to completion and asserts it succeeded.
fn bqsync(project: &Project, args: &[&str]) {
    let output = project.command(args).stdout(Stdio::null()).stderr(Stdio::piped()).output().unwrap();
    assert!(output.status.success(), "bqsync {args:?} failed:\n{}", String::from_utf8_lossy(&output.stderr));
}

/// `(id, label, updated_at µs)` of the live rows of `id_registry` in the warehouse.
fn registry_in_warehouse(project: &Project) -> BTreeMap<String, (Option<String>, i64)> {
    let connection = project.warehouse();
    let mut statement = connection
        .prepare("SELECT id, label, epoch_us(updated_at) FROM id_registry WHERE NOT _bqsync_deleted")
        .unwrap();
    statement
        .query_map([], |r| Ok((r.get::<_, String>(0)?, (r.get(1)?, r.get(2)?))))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The same, from the source table (rows not soft-deleted).
fn registry_in_source(db: &rusqlite::Connection) -> BTreeMap<String, (Option<String>, i64)> {
    let mut statement = db.prepare("SELECT id, label, updated_at FROM registry WHERE is_deleted = 0").unwrap();
    statement
        .query_map([], |r| {
            let text: String = r.get(2)?;
            let micros =
                chrono::NaiveDateTime::parse_from_str(&text, "%Y-%m-%d %H:%M:%S").unwrap().and_utc().timestamp_micros();
            Ok((r.get::<_, String>(0)?, (r.get(1)?, micros)))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn sqlite_watermark_sync_converges_with_updates_deletes_and_equal_timestamps() {
    let project = Project::new(
        r#"
[[sources.sqlite]]
name = "registry_db"
path = "registry.db"
batch_rows = 7

[[sources.sqlite.tables]]
source_table = "registry"
table = "id_registry"
mode = "updated_at"
deleted_column = "is_deleted"

[[sources.sqlite.tables]]
source_table = "events"
table = "atoms"
mode = "rowid"
"#,
    );
    let db = rusqlite::Connection::open(project.path("registry.db")).unwrap();
    db.execute_batch(
        "CREATE TABLE registry (id TEXT PRIMARY KEY, kind TEXT, external_ref TEXT, label TEXT,
                                updated_at TEXT NOT NULL, is_deleted INTEGER NOT NULL DEFAULT 0);
         CREATE TABLE events (event_id TEXT, entity_id TEXT, kind TEXT, text TEXT, score REAL, tags TEXT, created_at TEXT);",
    )
    .unwrap();
    // 50 rows on 5 distinct timestamps: pages of 7 cut through runs of equal values.
    for i in 0..50 {
        db.execute(
            "INSERT INTO registry (id, kind, label, updated_at) VALUES (?1, 'person', ?2, ?3)",
            rusqlite::params![format!("id-{i:03}"), format!("v1-{i}"), format!("2024-05-01 10:00:0{}", i / 10)],
        )
        .unwrap();
    }
    let add_events = |from: usize, to: usize| {
        for i in from..to {
            db.execute(
                "INSERT INTO events VALUES (?1, 'e', 'click', 't', ?2, '[\"a\",\"b\"]', '2024-05-01 10:00:00')",
                rusqlite::params![format!("ev-{i}"), i as f64 / 2.0],
            )
            .unwrap();
        }
    };
    add_events(0, 30);

    bqsync(&project, &["sync", "--land"]);
    assert_eq!(registry_in_warehouse(&project), registry_in_source(&db));
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms"), 30);
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms WHERE len(tags) = 2 AND score IS NOT NULL"), 30);

    // Updates (ten rows to one new equal timestamp), late rows at the current maximum (a tie with the
    // watermark), a row stamped 60 s in the past (a clock behind ours), hard and soft deletes.
    db.execute_batch(
        "UPDATE registry SET label = 'v2-' || id, updated_at = '2024-05-01 11:00:00' WHERE id < 'id-010';
         INSERT INTO registry (id, kind, label, updated_at) VALUES ('late-1', 'person', 'tie', '2024-05-01 11:00:00'),
                                                                  ('late-2', 'person', 'tie', '2024-05-01 11:00:00');
         INSERT INTO registry (id, kind, label, updated_at) VALUES ('skewed', 'person', 'behind', '2024-05-01 10:59:00');
         DELETE FROM registry WHERE id BETWEEN 'id-040' AND 'id-044';
         UPDATE registry SET is_deleted = 1, updated_at = '2024-05-01 11:00:01' WHERE id = 'id-045';",
    )
    .unwrap();
    add_events(30, 50);
    bqsync(&project, &["sync", "registry_db", "--land"]);
    let expected = registry_in_source(&db);
    assert_eq!(expected.len(), 50 + 3 - 5 - 1);
    assert_eq!(registry_in_warehouse(&project), expected);
    assert_eq!(project.query_i64("SELECT count(*) FROM id_registry WHERE _bqsync_deleted"), 6);
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms"), 50);

    // A second pass with nothing new publishes nothing; a full resync publishes everything again and
    // changes nothing.
    let before = project.query_i64("SELECT count(*) FROM id_registry");
    bqsync(&project, &["sync", "--full", "--land"]);
    assert_eq!(registry_in_warehouse(&project), expected);
    assert_eq!(project.query_i64("SELECT count(*) FROM id_registry"), before);
    assert_eq!(project.query_i64("SELECT count(DISTINCT event_id) FROM atoms"), 50);
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms"), 50);
    assert_eq!(project.query_i64("SELECT count(*) FROM dead_letters"), 0);

    let output = project.command(&["sync", "nope"]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no source named `nope`"));
}

/// The application side of an outbox: writes contacts with a dirty flag, each change bumping the
/// row's version.
trait OutboxApp {
    fn execute(&mut self, sql: &str, params: &[&dyn std::fmt::Display]);
    fn final_state(&mut self) -> (ContactState, i64);
}

struct SqliteApp(rusqlite::Connection);
struct DuckDbApp(std::path::PathBuf);

/// Binds nothing: the test's values are plain identifiers and numbers, inlined into the SQL.
fn inline(sql: &str, params: &[&dyn std::fmt::Display]) -> String {
    params
        .iter()
        .enumerate()
        .rev()
        .fold(sql.to_string(), |sql, (i, p)| sql.replace(&format!("?{}", i + 1), &p.to_string()))
}

const OUTBOX_TABLE: &str = "CREATE TABLE contacts (contact_id VARCHAR PRIMARY KEY, name VARCHAR, email VARCHAR,
    phone VARCHAR, version BIGINT NOT NULL, dirty BOOLEAN NOT NULL DEFAULT true, deleted BOOLEAN NOT NULL DEFAULT false)";
const STATE_QUERY: &str =
    "SELECT contact_id, version, email, deleted, (SELECT count(*) FROM contacts WHERE dirty) FROM contacts";

impl OutboxApp for SqliteApp {
    fn execute(&mut self, sql: &str, params: &[&dyn std::fmt::Display]) {
        self.0.execute_batch(&inline(sql, params)).unwrap();
    }
    fn final_state(&mut self) -> (ContactState, i64) {
        let mut dirty = 0;
        let mut statement = self.0.prepare(STATE_QUERY).unwrap();
        let rows: Vec<(String, i64, Option<String>, bool, i64)> = statement
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let mut state = ContactState::new();
        for (id, version, email, deleted, d) in rows {
            dirty = d;
            state.insert(id, (!deleted).then(|| (version, email.unwrap())));
        }
        (state, dirty)
    }
}

impl DuckDbApp {
    /// Opens the file, retrying while bqsync holds it (DuckDB allows one process at a time).
    fn open(&self) -> duckdb::Connection {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match duckdb::Connection::open(&self.0) {
                Ok(connection) => return connection,
                Err(e) if std::time::Instant::now() < deadline => {
                    assert!(e.to_string().contains("lock"), "{e}");
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("the outbox stayed locked for 30 s: {e}"),
            }
        }
    }
}

impl OutboxApp for DuckDbApp {
    fn execute(&mut self, sql: &str, params: &[&dyn std::fmt::Display]) {
        self.open().execute_batch(&inline(sql, params)).unwrap();
    }
    fn final_state(&mut self) -> (ContactState, i64) {
        let connection = self.open();
        let mut statement = connection.prepare(STATE_QUERY).unwrap();
        let rows: Vec<(String, i64, Option<String>, bool, i64)> = statement
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let mut dirty = 0;
        let mut state = ContactState::new();
        for (id, version, email, deleted, d) in rows {
            dirty = d;
            state.insert(id, (!deleted).then(|| (version, email.unwrap())));
        }
        (state, dirty)
    }
}

/// bqsync runs on the outbox while the application inserts, updates and soft-deletes rows; then
/// the warehouse must hold exactly the source's final state with every flag cleared. A flag
/// cleared for a row changed after it was read would leave the warehouse on an older version.
fn outbox_under_concurrent_writes(engine: &str, file: &str, mut app: Box<dyn OutboxApp>, writes: usize) {
    let project = Project::new(&format!(
        r#"
[[sources.outbox]]
name = "contacts"
engine = "{engine}"
path = "{file}"
source_table = "contacts"
table = "contacts_master"
deleted_column = "deleted"
batch_rows = 40
poll_interval_ms = 50
"#
    ));
    app.execute(OUTBOX_TABLE, &[]);
    let mut child = project.spawn_run(&[], &[]);
    let mut rng = fastrand::Rng::with_seed(7);
    let mut versions = std::collections::HashMap::new();
    for n in 0..writes {
        let key = rng.usize(0..150);
        let id = format!("'c-{key:04}'");
        match versions.get(&key).copied() {
            None => {
                app.execute(
                    "INSERT INTO contacts (contact_id, name, email, phone, version) VALUES (?1, 'N', 'e?2@x.test', '+1', 1)",
                    &[&id, &n],
                );
                versions.insert(key, 1);
            }
            Some(version) => {
                let deleted = rng.u8(0..100) < 5;
                app.execute(
                    "UPDATE contacts SET email = 'e?1@x.test', version = ?2, dirty = true, deleted = ?3 WHERE contact_id = ?4",
                    &[&n, &(version + 1), &deleted, &id],
                );
                versions.insert(key, version + 1);
            }
        }
        if n % 25 == 0 {
            std::thread::sleep(Duration::from_millis(rng.u64(1..20)));
        }
    }
    wait_until(Duration::from_secs(60), "every dirty flag cleared", || app.final_state().1 == 0);
    signal(&child, "TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(30)).success(), "{}", project.log_tail());
    // Whatever was published but not yet landed when it stopped lands now.
    project.run_until_drained(&[]);
    let (expected, dirty) = app.final_state();
    assert_eq!(dirty, 0);
    assert!(expected.len() > 100, "the writer made {} keys", expected.len());
    assert_contacts_match(&project, &expected);
    assert_eq!(project.query_i64("SELECT count(*) FROM dead_letters"), 0);
}

#[test]
fn sqlite_outbox_under_concurrent_writes_lands_every_change_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let connection = rusqlite::Connection::open(&path).unwrap();
    connection.busy_timeout(Duration::from_secs(10)).unwrap();
    outbox_under_concurrent_writes("sqlite", path.to_str().unwrap(), Box::new(SqliteApp(connection)), 3000);
}

#[test]
fn duckdb_outbox_under_concurrent_writes_lands_every_change_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.duckdb");
    outbox_under_concurrent_writes("duckdb", path.to_str().unwrap(), Box::new(DuckDbApp(path.clone())), 600);
}

/// Runs `bqsync run --until-drained` and returns how many events its sources published.
fn run_until_drained_published(project: &Project, env: &[(&str, &str)]) -> u64 {
    let output = project.command(&["run", "--until-drained"]).envs(env.iter().copied()).output().unwrap();
    assert!(output.status.success(), "bqsync run failed:\n{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    report["report"]["events_published"].as_u64().unwrap()
}

fn session_json(id: &str, captured_at: &str) -> String {
    format!(
        r#"{{"session_id":"{id}","topic":"Weekly sync","host_email":"h@x.test","start_time":"2026-11-20T10:00:00Z",
"end_time":"2026-11-20T10:45:00Z","duration_minutes":45,
"participants":[{{"name":"Ada","email":"ada@x.test","join_time":"2026-11-20T10:00:00Z","leave_time":"2026-11-20T10:45:00Z"}},
{{"name":"Alan","email":"alan@x.test","join_time":"2026-11-20T10:02:00Z","leave_time":"2026-11-20T10:40:00Z"}}],
"captured_at":"{captured_at}"}}"#
    )
}

#[test]
fn a_session_written_in_three_parts_is_published_once_and_complete() {
    let project = Project::new(
        r#"
[[sources.sessions]]
name = "zoom"
root = "captures"
settle_ms = 1500
poll_interval_ms = 100
max_event_bytes = 100000
"#,
    );
    let json = session_json("s-1", "2026-11-20T11:00:00Z");
    let (first, rest) = json.split_at(json.len() / 3);
    let (second, third) = rest.split_at(rest.len() / 2);
    project.append("captures/s-1.json", first.as_bytes());
    let writer = {
        let (json_path, transcript_path) =
            (project.path("captures/s-1.json"), project.path("captures/s-1.transcript.txt"));
        let (second, third) = (second.to_string(), third.to_string());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new().append(true).open(&json_path).unwrap();
            std::thread::sleep(Duration::from_millis(700));
            file.write_all(second.as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(700));
            file.write_all(third.as_bytes()).unwrap();
            std::fs::write(transcript_path, "Ada: hello\nAlan: hi\n").unwrap();
        })
    };
    // The one-shot run waits for the pending session to settle, then publishes it once.
    assert_eq!(run_until_drained_published(&project, &[]), 1);
    writer.join().unwrap();
    assert_eq!(project.query_i64("SELECT count(*) FROM dead_letters"), 0);
    assert_eq!(
        project.query_i64(
            "SELECT count(*) FROM zoom_sessions WHERE session_id = 's-1' AND json_array_length(participants) = 2
               AND transcript = 'Ada: hello\nAlan: hi\n' AND duration_minutes = 45"
        ),
        1
    );
    // Unchanged files are not published again; a re-capture (later captured_at) replaces the row;
    // a session over max_event_bytes without a claim check is dead-lettered as oversize.
    assert_eq!(run_until_drained_published(&project, &[]), 0);
    std::fs::write(project.path("captures/s-1.json"), session_json("s-1", "2026-11-20T12:00:00Z")).unwrap();
    project.append("captures/big.json", session_json("s-big", "2026-11-20T11:00:00Z").as_bytes());
    project.append("captures/big.vtt", "x".repeat(200_000).as_bytes());
    project.append("captures/broken.json", b"{\"session_id\": ");
    assert_eq!(run_until_drained_published(&project, &[]), 3);
    assert_eq!(project.query_i64("SELECT count(*) FROM zoom_sessions"), 1);
    assert_eq!(
        project.query_i64("SELECT count(*) FROM zoom_sessions WHERE captured_at = TIMESTAMP '2026-11-20 12:00:00'"),
        1
    );
    let reasons = dead_letter_reasons(&project);
    assert_eq!((reasons.get("oversize"), reasons.get("decode")), (Some(&1), Some(&1)), "{reasons:?}");
    assert_eq!(
        project.query_i64(
            "SELECT count(*) FROM dead_letters WHERE reason = 'oversize' AND detail LIKE '%exceeds max_event_bytes = 100000%claim_check_bytes%'"
        ),
        1
    );
}

#[test]
fn a_session_with_a_marker_waits_for_it() {
    let project = Project::new(
        r#"
[[sources.sessions]]
name = "zoom"
root = "captures"
settle_ms = 0
marker_suffix = ".done"
poll_interval_ms = 100
"#,
    );
    project.append("captures/m-1.json", session_json("m-1", "2026-11-20T11:00:00Z").as_bytes());
    let marker = project.path("captures/m-1.done");
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        std::fs::write(marker, "").unwrap();
    });
    let started = std::time::Instant::now();
    assert_eq!(run_until_drained_published(&project, &[]), 1);
    assert!(started.elapsed() >= Duration::from_millis(1400), "published before its marker existed");
    writer.join().unwrap();
    assert_eq!(project.query_i64("SELECT count(*) FROM zoom_sessions WHERE session_id = 'm-1'"), 1);
}

/// A users API like an identity provider's: records sorted by `modifiedTime` (three users share
/// each second), `fromModifiedTime` inclusive, 100 a page with a `nextPageToken`, a bearer token
/// required; the 5th request gets a 429 with `Retry-After: 1` and the 12th a 500.
struct UsersApi {
    users: std::sync::Mutex<Vec<serde_json::Value>>,
    requests: std::sync::atomic::AtomicU64,
    /// The cursor of every request (None without one).
    cursors: std::sync::Mutex<Vec<Option<String>>>,
    /// When each request arrived.
    times: std::sync::Mutex<Vec<std::time::Instant>>,
}

fn user(i: usize, second: usize, status: &str) -> serde_json::Value {
    let modified = chrono::DateTime::from_timestamp(1_750_000_000 + second as i64, 0).unwrap();
    serde_json::json!({
        "id": format!("u-{i:05}"), "email": format!("u{i}@x.test"), "displayName": format!("User {i}"),
        "status": status, "groups": ["staff"], "created": "2025-01-01T00:00:00Z",
        "modifiedTime": modified.to_rfc3339_opts(chrono::SecondsFormat::Secs, true), "unused": {"a": 1}
    })
}

fn query_pairs(query: &str) -> std::collections::HashMap<String, String> {
    let decode = |s: &str| {
        let bytes = s.replace('+', " ").into_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                out.push(u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap(), 16).unwrap());
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    };
    query.split('&').filter_map(|pair| pair.split_once('=')).map(|(k, v)| (decode(k), decode(v))).collect()
}

async fn users_page(
    axum::extract::State(api): axum::extract::State<std::sync::Arc<UsersApi>>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let n = api.requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    api.times.lock().unwrap().push(std::time::Instant::now());
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer s3cret") {
        return (axum::http::StatusCode::UNAUTHORIZED, "bad token").into_response();
    }
    if n == 5 {
        return (axum::http::StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], "slow down").into_response();
    }
    if n == 12 {
        return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "oops").into_response();
    }
    tokio::time::sleep(Duration::from_millis(25)).await;
    let query = query_pairs(uri.query().unwrap_or(""));
    let from = query.get("fromModifiedTime").cloned();
    api.cursors.lock().unwrap().push(from.clone());
    let offset: usize = query.get("pageToken").map_or(0, |t| t.parse().unwrap());
    let users = api.users.lock().unwrap();
    let mut matching: Vec<&serde_json::Value> =
        users.iter().filter(|u| from.as_deref().is_none_or(|f| u["modifiedTime"].as_str().unwrap() >= f)).collect();
    matching.sort_by(|a, b| {
        a["modifiedTime"].as_str().cmp(&b["modifiedTime"].as_str()).then(a["id"].as_str().cmp(&b["id"].as_str()))
    });
    let page: Vec<&serde_json::Value> = matching.iter().skip(offset).take(100).copied().collect();
    let next = (offset + 100 < matching.len()).then(|| (offset + 100).to_string());
    axum::Json(serde_json::json!({ "users": page, "nextPageToken": next })).into_response()
}

#[test]
fn http_source_pages_through_errors_and_resumes_after_sigkill() {
    let api = std::sync::Arc::new(UsersApi {
        users: std::sync::Mutex::new((0..10_000).map(|i| user(i, i / 3, "active")).collect()),
        requests: Default::default(),
        cursors: Default::default(),
        times: Default::default(),
    });
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route("/v1/users", axum::routing::get(users_page)).with_state(api.clone());
    runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });

    let project = Project::new(&format!(
        r#"
[[sources.http]]
name = "idp"
url = "http://127.0.0.1:{port}/v1/users"
table = "idp_users"
auth_env = "IDP_TOKEN"
cursor_param = "fromModifiedTime"
cursor_field = "modifiedTime"
records_path = "users"
next_page_path = "nextPageToken"
sorted = true
interval_secs = 3600
max_backoff_secs = 2
deleted_field = "status"
deleted_values = ["deprovisioned"]
columns = {{ id = "user_id", displayName = "display_name", created = "created_at", modifiedTime = "modified_at" }}
"#
    ));
    let env = [("IDP_TOKEN", "Bearer s3cret")];
    let mut child = project.spawn(&["run", "--until-drained"], &env);
    wait_until(Duration::from_secs(60), "40 pages served", || {
        api.requests.load(std::sync::atomic::Ordering::SeqCst) >= 42
    });
    signal(&child, "KILL");
    let _ = wait_exit(&mut child, Duration::from_secs(10));
    let served_before_kill = api.cursors.lock().unwrap().len();
    let times = api.times.lock().unwrap().clone();
    assert!(times[5] - times[4] >= Duration::from_millis(950), "the 429's Retry-After: 1 was honoured");
    assert!(times[12] - times[11] < Duration::from_secs(3), "the 500 was retried with a short backoff");
    assert!(served_before_kill < 100, "the kill must land mid-run ({served_before_kill} pages served)");

    project.run_until_drained(&env);
    let cursors = api.cursors.lock().unwrap().clone();
    let resumed_from = cursors[served_before_kill].clone();
    assert!(resumed_from.is_some(), "the restart resumed from the saved cursor, not from the start");
    let expected_users = 10_000;
    assert_eq!(project.query_i64("SELECT count(*) FROM idp_users"), expected_users);
    assert_eq!(
        project.query_i64(
            "SELECT count(*) FROM idp_users WHERE status = 'active' AND display_name LIKE 'User %' AND len(groups) = 1
               AND modified_at = to_timestamp(1750000000 + CAST(substr(user_id, 3) AS INTEGER) // 3)"
        ),
        expected_users
    );
    assert_eq!(project.query_i64("SELECT count(*) FROM dead_letters"), 0);

    // Later: 30 users change and 15 are added; the next pass publishes exactly those 45 (users at the
    // old cursor are not published again).
    {
        let mut users = api.users.lock().unwrap();
        for i in 0..30 {
            users[i * 7] = user(i * 7, 4000, "suspended");
        }
        for i in 10_000..10_015 {
            users.push(user(i, 4000, "active"));
        }
        // Deleted at the identity provider: reported with a status, they become tombstones.
        for i in 0..5 {
            users[i * 7 + 1] = user(i * 7 + 1, 4000, "deprovisioned");
        }
    }
    assert_eq!(run_until_drained_published(&project, &env), 50);
    assert_eq!(project.query_i64("SELECT count(*) FROM idp_users WHERE NOT _bqsync_deleted"), 10_010);
    assert_eq!(project.query_i64("SELECT count(*) FROM idp_users WHERE _bqsync_deleted AND status IS NULL"), 5);
    assert_eq!(project.query_i64("SELECT count(*) FROM idp_users WHERE status = 'suspended'"), 30);

    // Without the credential the pass fails with a clear error, and publishes nothing.
    let output = project.command(&["sync", "idp"]).env_remove("IDP_TOKEN").output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("environment variable IDP_TOKEN is not set"), "{stderr}");
}
