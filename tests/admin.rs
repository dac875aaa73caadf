//! The admin API of a running `bqsync run`: its metrics agree with the warehouse, its mutating
//! endpoints need the token, and SIGTERM under load drains without loss or duplicates.

// The embedded bus and DuckDB: built with the `embedded` feature (the default).
#![cfg(feature = "embedded")]

mod common;

use std::time::Duration;

use common::{admin_http as http, free_port, signal, wait_exit, wait_until, Project};

/// The value of a Prometheus sample line `NAME{LABELS} VALUE`, 0 when absent.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[test]
fn metrics_match_the_warehouse_and_mutating_endpoints_need_the_token() {
    let project = Project::new("");
    let atoms = 6000u64;
    let lines: String = (0..atoms).map(|i| common::atom_line(&format!("m-{i}"), i)).collect();
    project.append("inbox/atoms/a.jsonl", lines.as_bytes());
    project.append(
        "inbox/atoms/bad.jsonl",
        b"{not json\n{\"event_id\":\"x\",\"score\":\"high\",\"created_at\":\"2024-01-01T00:00:00Z\"}\n",
    );
    let (contacts, expected) = common::contacts(2000, 500, 4);
    project.append("inbox/contacts_master/c.jsonl", contacts.as_bytes());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let env = [("BQSYNC__ADMIN__LISTEN", listen.as_str()), ("BQSYNC_ADMIN_TOKEN", "t0ken")];
    let mut child = project.spawn_run(&[], &env);
    wait_until(Duration::from_secs(30), "the admin server", || http(port, "GET", "/healthz", None).is_some());
    assert_eq!(http(port, "GET", "/readyz", None).unwrap().0, 200);
    let total = atoms + 2 + 2000;
    wait_until(Duration::from_secs(60), "every event landed or dead-lettered", || {
        let metrics = http(port, "GET", "/metrics", None).unwrap().1;
        let offered = sample(&metrics, "bqsync_rows_offered_total{table=\"atoms\"}")
            + sample(&metrics, "bqsync_rows_offered_total{table=\"contacts_master\"}")
            + sample(&metrics, "bqsync_rows_offered_total{table=\"dead_letters\"}");
        offered as u64 == total
    });
    let metrics = http(port, "GET", "/metrics", None).unwrap().1;
    let status: serde_json::Value = serde_json::from_str(&http(port, "GET", "/status", None).unwrap().1).unwrap();
    assert_eq!(status["tables"]["atoms"]["rows_landed"], atoms, "{status}");
    let tables: serde_json::Value = serde_json::from_str(&http(port, "GET", "/tables", None).unwrap().1).unwrap();
    let atoms_entry = tables.as_array().unwrap().iter().find(|t| t["table"] == "atoms").unwrap();
    assert_eq!(atoms_entry["live_rows"], atoms);

    // Mutating endpoints: no token 401, a wrong one 403, the right one 202.
    assert_eq!(http(port, "POST", "/sync", None).unwrap().0, 401);
    assert_eq!(http(port, "POST", "/sync", Some("guess")).unwrap().0, 403);
    let (code, body) = http(port, "POST", "/sync", Some("t0ken")).unwrap();
    assert_eq!(code, 202, "{body}");
    assert!(body.contains("inbox"), "{body}");

    signal(&child, "TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(30)).success(), "{}", project.log_tail());
    assert_eq!(
        sample(&metrics, "bqsync_rows_landed_total{table=\"atoms\"}") as i64,
        project.query_i64("SELECT count(*) FROM atoms")
    );
    assert_eq!(sample(&metrics, "bqsync_events_in_total{table=\"atoms\"}") as u64, atoms);
    let dead: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("bqsync_dead_letters_total{"))
        .map(|l| sample(l, l.split(' ').next().unwrap()))
        .sum();
    assert_eq!(dead as i64, project.query_i64("SELECT count(*) FROM dead_letters"));
    assert_eq!(dead as i64, 2);
    assert_eq!(sample(&metrics, "bqsync_end_to_end_lag_seconds_count{table=\"atoms\"}") as u64, atoms);
    common::assert_contacts_match(&project, &expected);

    // Without a token configured, the mutating endpoints are off.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = project.spawn_run(&[], &[("BQSYNC__ADMIN__LISTEN", listen.as_str())]);
    wait_until(Duration::from_secs(30), "the admin server", || http(port, "GET", "/healthz", None).is_some());
    assert_eq!(http(port, "POST", "/sync", Some("t0ken")).unwrap().0, 404);
    signal(&child, "TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(30)).success());
}

/// SIGTERM while events are still landing (right after the first batch): bqsync stops reading, commits and acks what it holds and
/// exits 0 within the drain deadline; a restart lands the rest; nothing is lost or doubled.
#[test]
fn sigterm_under_load_drains_without_loss_or_duplicates() {
    let project = Project::new("");
    let atoms = 200_000u64;
    let lines: String = (0..atoms).map(|i| common::atom_line(&format!("d-{i}"), i)).collect();
    project.append("inbox/atoms/a.jsonl", lines.as_bytes());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let env = [
        ("BQSYNC__WORKER__MAX_BATCH_ROWS", "2000"),
        ("BQSYNC__ADMIN__DRAIN_TIMEOUT_SECS", "20"),
        ("BQSYNC__ADMIN__LISTEN", listen.as_str()),
    ];
    let mut child = project.spawn_run(&[], &env);
    // SIGTERM right after the first batch landed: mid-run, whatever the machine's speed.
    wait_until(Duration::from_secs(60), "the first landed batch", || {
        http(port, "GET", "/metrics", None)
            .is_some_and(|(_, m)| sample(&m, "bqsync_rows_landed_total{table=\"atoms\"}") > 0.0)
    });
    signal(&child, "TERM");
    let started = std::time::Instant::now();
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert!(status.success(), "SIGTERM under load must exit 0: {status}; log:\n{}", project.log_tail());
    assert!(started.elapsed() < Duration::from_secs(20), "within the drain deadline");
    let landed_before = project.query_i64("SELECT count(*) FROM atoms");
    assert!(landed_before < atoms as i64, "the test must stop bqsync mid-run (landed {landed_before})");
    project.run_until_drained(&env);
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms"), atoms as i64, "{}", project.log_tail());
    assert_eq!(project.query_i64("SELECT count(DISTINCT event_id) FROM atoms"), atoms as i64);
}

/// Requests a collector received: (path, body).
type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// A stand-in OTLP/HTTP collector: records (path, body) of every request and answers 200.
fn collector() -> (u16, Received) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let sink = sink.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut stream = stream;
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = request_line.split(' ').nth(1).unwrap_or("").to_string();
                    let mut length = 0;
                    loop {
                        let mut header = String::new();
                        reader.read_line(&mut header).unwrap();
                        if header == "\r\n" || header.is_empty() {
                            break;
                        }
                        if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    sink.lock().unwrap().push((path, body));
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n",
                    );
                }
            });
        }
    });
    (port, received)
}

/// With OTEL_EXPORTER_OTLP_ENDPOINT set, spans (one `land_batch` per flush) and metrics reach the
/// collector over OTLP/HTTP; logs stay JSON lines with Cloud Logging's fields when asked for.
#[test]
fn traces_and_metrics_are_exported_over_otlp_and_logs_are_cloud_logging_json() {
    let (port, received) = collector();
    let project = Project::new("");
    let lines: String = (0..2000u64).map(|i| common::atom_line(&format!("o-{i}"), i)).collect();
    project.append("inbox/atoms/a.jsonl", lines.as_bytes());
    let endpoint = format!("http://127.0.0.1:{port}");
    project.run_until_drained(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("BQSYNC_LOG", "debug"),
        ("BQSYNC_LOG_FORMAT", "json"),
    ]);
    let received = received.lock().unwrap().clone();
    let paths: Vec<&str> = received.iter().map(|(p, _)| p.as_str()).collect();
    assert!(paths.contains(&"/v1/traces"), "{paths:?}");
    assert!(paths.contains(&"/v1/metrics"), "{paths:?}");
    let contains = |path: &str, needle: &[u8]| {
        received.iter().filter(|(p, _)| p == path).any(|(_, body)| body.windows(needle.len()).any(|w| w == needle))
    };
    assert!(contains("/v1/traces", b"land_batch"), "a span per landed batch");
    assert!(contains("/v1/metrics", b"bqsync.rows_landed"), "the registry's metrics");
    let log = std::fs::read_to_string(project.path("bqsync.log")).unwrap();
    let line = log.lines().find(|l| l.contains("run finished")).expect("the closing log line");
    let json: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(json["severity"], "INFO");
    assert_eq!(json["message"], "run finished");
    assert_eq!(json["landed_new"], 2000);
    // Inside a batch's span, log entries carry the exported trace and span ids.
    let in_span = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["span"] == "land_batch")
        .expect("a log entry inside land_batch");
    let trace = in_span["logging.googleapis.com/trace"].as_str().unwrap_or_default();
    assert!(trace.len() == 32 && trace.chars().all(|c| c.is_ascii_hexdigit()), "{in_span}");
    assert_eq!(in_span["logging.googleapis.com/spanId"].as_str().map(str::len), Some(16));
}
