//! End-to-end tests on the embedded default: the real binary, a real SQLite bus and a real DuckDB file.
//! Each test counts rows afterwards: nothing lost, nothing duplicated.

// The embedded bus and DuckDB: built with the `embedded` feature (the default).
#![cfg(feature = "embedded")]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{assert_contacts_match, atom_line, contacts, dead_letter_reasons, signal, wait_exit, wait_until, Project};

/// (a) 100,000 lines appended in chunks across several files while bqsync runs, with half-written
/// lines, a rename rotation and a truncation, land exactly once.
#[test]
fn appends_while_running_with_rotation_and_truncation_land_exactly_once() {
    let project = Project::new("");
    let mut child = project.spawn_run(&[], &[]);
    let files = ["inbox/atoms/a.jsonl", "inbox/atoms/b.jsonl", "inbox/atoms/c.jsonl", "inbox/atoms/sub/d.jsonl"];
    let total: u64 = 100_000;
    let chunk: u64 = 2_500;
    let mut n = 0;
    while n < total {
        let file = files[(n / chunk) as usize % files.len()];
        let mut text = String::new();
        for i in n..n + chunk {
            text.push_str(&atom_line(&format!("id-{i}"), i));
        }
        // Write each chunk in two parts split inside a line: the half line must wait for its end.
        let split = text.len() / 2 + 7;
        project.append(file, &text.as_bytes()[..split]);
        std::thread::sleep(Duration::from_millis(5));
        project.append(file, &text.as_bytes()[split..]);
        n += chunk;
        if n == 40_000 {
            // Rename rotation: a.jsonl moves aside (still matched by the route) and a new a.jsonl starts.
            std::fs::rename(project.path(files[0]), project.path("inbox/atoms/a.jsonl.1")).unwrap();
        }
        if n == 60_000 {
            // Truncation (copytruncate style): once c.jsonl is fully published, it is cut to 0 and reused.
            wait_until(Duration::from_secs(30), "c.jsonl published before truncation", || {
                project.file_lag(files[2]) == Some(0)
            });
            std::fs::OpenOptions::new().write(true).truncate(true).open(project.path(files[2])).unwrap();
        }
    }
    // Well inside the 60 s ack deadline: a delivery left unacked would only come back after it.
    wait_until(Duration::from_secs(30), "all files published and the bus empty", || {
        project.checkpoint_count() == Some(5) && project.checkpoint_lag() == Some(0) && project.bus_depth() == Some(0)
    });
    signal(&child, "TERM");
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert!(status.success(), "SIGTERM must end bqsync with exit 0, got {status}; log:\n{}", project.log_tail());
    assert_eq!(
        project.query_i64("SELECT count(*) FROM atoms"),
        total as i64,
        "chunks: {}; log:\n{}",
        chunk_report(&project, chunk),
        project.log_tail()
    );
    assert_eq!(project.query_i64("SELECT count(DISTINCT event_id) FROM atoms"), total as i64);
    assert_eq!(project.query_i64("SELECT count(*) FROM dead_letters"), 0);
    assert_eq!(
        project.query_i64("SELECT count(*) FROM atoms WHERE tags = ['red', 'eu'] AND created_at IS NOT NULL"),
        total as i64
    );
}

/// (b) The process killed with SIGKILL at several points and restarted loses nothing and duplicates
/// nothing, for append and upsert tables alike.
#[test]
fn sigkill_at_several_points_loses_nothing_and_duplicates_nothing() {
    let project = Project::new("");
    let atoms: u64 = 60_000;
    let mut text = String::new();
    for i in 0..atoms {
        text.push_str(&atom_line(&format!("k-{i}"), i));
    }
    project.append("inbox/atoms/a.jsonl", text.as_bytes());
    let (contacts_text, expected) = contacts(20_000, 5_000, 7);
    project.append("inbox/contacts_master/c.jsonl", contacts_text.as_bytes());
    // Small batches and publishes: many commit points to be killed between.
    let env = [("BQSYNC__WORKER__MAX_BATCH_ROWS", "1500"), ("BQSYNC__SOURCES__JSONL__0__PUBLISH_BATCH", "700")];
    let mut rng = fastrand::Rng::with_seed(42);
    for round in 0..6 {
        let mut child = project.spawn_run(&["--until-drained"], &env);
        std::thread::sleep(Duration::from_millis(150 + rng.u64(0..600)));
        if child.try_wait().unwrap().is_some() {
            break;
        }
        signal(&child, "KILL");
        let _ = wait_exit(&mut child, Duration::from_secs(10));
        eprintln!("killed in round {round}");
    }
    project.run_until_drained(&env);
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms"), atoms as i64, "log:\n{}", project.log_tail());
    assert_eq!(project.query_i64("SELECT count(DISTINCT event_id) FROM atoms"), atoms as i64);
    assert_contacts_match(&project, &expected);
    assert_eq!(project.query_i64("SELECT count(*) FROM dead_letters"), 0, "log:\n{}", project.log_tail());
}

/// (c) 200,000 upserts over 50,000 keys, shuffled, in many batches and two loads, end in exactly the
/// highest-version row per key; tombstones win over older upserts that arrive later.
#[test]
fn shuffled_upserts_in_two_loads_end_in_the_highest_version_per_key() {
    let project = Project::new("");
    let (text, expected) = contacts(200_000, 50_000, 20240601);
    let lines: Vec<&str> = text.lines().collect();
    let half = lines.len() / 2;
    let env = [("BQSYNC__WORKER__MAX_BATCH_ROWS", "7000")];
    project.append("inbox/contacts_master/first.jsonl", (lines[..half].join("\n") + "\n").as_bytes());
    project.run_until_drained(&env);
    project.append("inbox/contacts_master/second.jsonl", (lines[half..].join("\n") + "\n").as_bytes());
    project.run_until_drained(&env);
    assert_contacts_match(&project, &expected);
}

/// (e) DuckDB's `memory_limit` bounds its buffer pool, not what it can do. At 32MB, a quarter of the
/// default, 300,000 atoms land, 200,000 upserts over 100,000 keys merge in batches of 50,000, and
/// `bqsync sql` sorts and aggregates whole tables (DuckDB spills to `<file>.tmp` where it must).
#[test]
fn a_small_duckdb_memory_limit_lands_merges_and_queries_whole_tables() {
    let project = Project::new("");
    let env = [("BQSYNC__WAREHOUSE__DUCKDB__MEMORY_LIMIT", "32MB"), ("BQSYNC__WORKER__MAX_BATCH_ROWS", "50000")];
    let atoms = 300_000u64;
    let text: String = (0..atoms).map(|i| atom_line(&format!("m-{i}"), i)).collect();
    project.append("inbox/atoms/a.jsonl", text.as_bytes());
    let (contacts_text, expected) = contacts(200_000, 100_000, 99);
    project.append("inbox/contacts_master/c.jsonl", contacts_text.as_bytes());
    project.run_until_drained(&env);
    assert_eq!(
        project.query_i64("SELECT count(DISTINCT event_id) FROM atoms"),
        atoms as i64,
        "log:\n{}",
        project.log_tail()
    );
    assert_contacts_match(&project, &expected);
    // (query, the count it must give, when known)
    let queries = [
        ("SELECT count(*) FROM (SELECT event_id, text FROM atoms ORDER BY text DESC, event_id)", Some(atoms)),
        ("SELECT count(*) FROM (SELECT text, count(*) FROM atoms GROUP BY ALL)", None),
        ("SELECT count(*) FROM atoms a JOIN atoms b USING (event_id)", Some(atoms)),
    ];
    for (sql, expected) in queries {
        let output = project.command(&["sql", "--json", sql]).envs(env.iter().copied()).output().unwrap();
        assert!(output.status.success(), "{sql}: {}", String::from_utf8_lossy(&output.stderr));
        let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let count = answer["rows"][0][0].as_u64();
        assert!(count.is_some_and(|n| n > 0 && expected.is_none_or(|e| e == n)), "{sql}: {answer}");
    }
}

/// (d) Every kind of bad input lands in `dead_letters` with its reason while good lines keep flowing.
#[test]
fn bad_input_is_dead_lettered_with_its_reason_and_good_lines_flow() {
    let project = Project::new("[[sources.jsonl]]\nmax_line_bytes = 2048\n");
    let good = |i: u64| atom_line(&format!("good-{i}"), i);
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"\xEF\xBB\xBF"); // BOM before the first line
    bytes.extend_from_slice(good(0).as_bytes());
    bytes.extend_from_slice(good(1).trim_end().as_bytes());
    bytes.extend_from_slice(b"\r\n"); // CRLF
    bytes.extend_from_slice(b"\n   \n"); // blank lines
    bytes.extend_from_slice(b"{\"event_id\":\"bad-utf8\",\"text\":\"\xff\xfe\"}\n"); // decode: not UTF-8
    bytes.extend_from_slice(b"{\"event_id\": oops}\n"); // decode: invalid JSON
    bytes.extend_from_slice(b"[1,2,3]\n"); // decode: not an object
    let long_line = format!("{{\"event_id\":\"long\",\"text\":\"{}\"}}", "x".repeat(10_000));
    bytes.extend_from_slice(long_line.as_bytes()); // oversize
    bytes.push(b'\n');
    bytes
        .extend_from_slice(b"{\"event_id\":\"bad-score\",\"score\":\"abc\",\"created_at\":\"2024-01-01T00:00:00Z\"}\n"); // schema: type
    bytes.extend_from_slice(b"{\"event_id\":\"no-time\"}\n"); // schema: REQUIRED missing
    bytes.extend_from_slice(b"{\"event_id\":\"extra\",\"created_at\":\"2024-01-01T00:00:00Z\",\"colour\":\"red\"}\n"); // schema: unknown field
    bytes.extend_from_slice(b"{\"text\":\"no id\",\"created_at\":\"2024-01-01T00:00:00Z\"}\n"); // schema: id field missing
    for i in 2..1002 {
        bytes.extend_from_slice(good(i).as_bytes());
    }
    project.append("inbox/atoms/mixed.jsonl", &bytes);
    project.append("inbox/nosuchtable/x.jsonl", b"{\"a\":1}\n"); // unknown_table
    project.append("inbox/contacts_master/c.jsonl", b"{\"name\":\"no key\",\"version\":1}\n"); // schema: key missing
                                                                                               // Messages that no JSONL line can make: a corrupt envelope and one over the worker's size limit.
    {
        use bqsync::bus::{embedded, OutboundMessage, Publisher};
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let config = embedded::EmbeddedBusConfig { path: project.path(".bqsync/bus.db"), ..Default::default() };
        let bus = embedded::EmbeddedBus::open(&config).unwrap();
        let corrupt = OutboundMessage::new(b"{\"event_id\":\"x\",\"table\":\"atoms\"}".to_vec(), Default::default());
        let huge = OutboundMessage::new(vec![b' '; 200_000], Default::default());
        runtime.block_on(bus.publish(vec![corrupt, huge])).unwrap();
    }
    project.run_until_drained(&[("BQSYNC__WORKER__MAX_EVENT_BYTES", "100000")]);

    assert_eq!(project.query_i64("SELECT count(*) FROM atoms"), 1002, "good lines land; log:\n{}", project.log_tail());
    let reasons = dead_letter_reasons(&project);
    let expected: HashMap<&str, i64> =
        [("decode", 4), ("oversize", 2), ("schema", 5), ("unknown_table", 1)].into_iter().collect();
    for (reason, count) in &expected {
        assert_eq!(reasons.get(*reason).copied().unwrap_or(0), *count, "reason {reason}: {reasons:?}");
    }
    assert_eq!(reasons.values().sum::<i64>(), expected.values().sum::<i64>(), "{reasons:?}");
    let detail =
        |like: &str| project.query_i64(&format!("SELECT count(*) FROM dead_letters WHERE detail LIKE '{like}'"));
    assert_eq!(detail("%column `score`: expected Float64, got string \"abc\"%"), 1);
    assert_eq!(detail("%column `created_at` is REQUIRED but absent%"), 1);
    assert_eq!(detail("%field `colour` is not a column of table `atoms`%"), 1);
    assert_eq!(detail("%invalid UTF-8 at byte 31 of the line%"), 1);
    assert_eq!(detail(&format!("%line of {} bytes exceeds max_line_bytes = 2048%", long_line.len())), 1);
    assert_eq!(detail("%table `nosuchtable` has no schema file%"), 1);
    assert_eq!(detail("%primary key column `contact_id` is missing%"), 1);
    assert_eq!(detail("%exceeds worker.max_event_bytes = 100000%"), 1);
    // The exact original bytes are kept, even when they are not UTF-8.
    assert_eq!(project.query_i64("SELECT count(*) FROM dead_letters WHERE message_bytes = '{\"event_id\":\"bad-utf8\",\"text\":\"\\xFF\\xFE\"}'::BLOB"), 1);
    // `bqsync status --json` reports the same figures.
    let output = project.command(&["status", "--json"]).output().unwrap();
    assert!(output.status.success());
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let rows = status["rows_per_table"].as_array().unwrap();
    assert!(rows.contains(&serde_json::json!(["atoms", 1002])), "{status}");
    // The corrupt envelope is filed under the table it named.
    assert!(
        status["dead_letters"].as_array().unwrap().contains(&serde_json::json!(["atoms", "decode", 4])),
        "{status}"
    );
    assert_eq!(status["queue"]["pending"], 0, "{status}");
    assert!(status["checkpoints"].as_array().unwrap().iter().all(|c| c["lag_bytes"] == 0), "{status}");
    // A second run changes nothing: dead letters are deduplicated too.
    project.run_until_drained(&[]);
    assert_eq!(project.query_i64("SELECT count(*) FROM dead_letters"), expected.values().sum::<i64>());
}

/// Which chunks of the writer are incomplete, as `chunk:rows`.
fn chunk_report(project: &Project, chunk: u64) -> String {
    let connection = project.warehouse();
    let sql = format!("SELECT CAST(substr(event_id, 4) AS BIGINT) // {chunk} AS c, count(*) AS n FROM atoms GROUP BY ALL HAVING n <> {chunk} ORDER BY c");
    let mut statement = connection.prepare(&sql).unwrap();
    let rows: Vec<String> = statement
        .query_map([], |r| Ok(format!("{}:{}", r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let present: Vec<String> = connection
        .prepare("SELECT DISTINCT CAST(substr(event_id, 4) AS BIGINT) // 2500 AS c FROM atoms ORDER BY c")
        .unwrap()
        .query_map([], |r| Ok(r.get::<_, i64>(0)?.to_string()))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    format!("{} incomplete: {}; present: {}", rows.len(), rows.join(" "), present.join(" "))
}
