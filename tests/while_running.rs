//! The embedded warehouse stays usable while bqsync holds it: `status`, `dlq`, `replay` and `sql`
//! go through the running process's admin API; and bqsync waits for a file another process holds.

// The embedded bus and DuckDB: built with the `embedded` feature (the default).
#![cfg(feature = "embedded")]

mod common;

use std::process::Output;
use std::time::Duration;

use common::{atom_line, signal, wait_exit, wait_until, Project};

const TOKEN: (&str, &str) = ("BQSYNC_ADMIN_TOKEN", "s3cret-token");

fn bqsync(project: &Project, args: &[&str], env: &[(&str, &str)]) -> Output {
    project.command(args).envs(env.iter().copied()).output().unwrap()
}

fn json_of(project: &Project, args: &[&str]) -> serde_json::Value {
    let output = bqsync(project, args, &[TOKEN]);
    assert!(output.status.success(), "bqsync {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn count(project: &Project, sql: &str) -> i64 {
    let answer = json_of(project, &["sql", "--json", sql]);
    answer["rows"][0][0].as_i64().unwrap_or_else(|| panic!("{sql}: {answer}"))
}

/// Under load, beside a running `bqsync run`: dead letters are listed, one is replayed with a fix, the
/// tables are queried and status shows them; after a stop, every good line landed once, the replayed
/// one too, and nothing else.
#[test]
fn dead_letters_replay_and_queries_work_while_bqsync_runs() {
    let project = Project::new("");
    let mut service = project.spawn_run(&[], &[TOKEN]);
    let good = 30_000u64;
    let writer = {
        let path = project.path("inbox/atoms/stream.jsonl");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::thread::spawn(move || {
            for chunk in 0..30 {
                let mut text = String::new();
                for i in chunk * 1000..(chunk + 1) * 1000 {
                    text.push_str(&atom_line(&format!("a{i}"), i));
                }
                // Poison: no created_at (REQUIRED), one in each of the first five chunks.
                if chunk < 5 {
                    text.push_str(&format!("{{\"event_id\":\"bad{chunk}\",\"kind\":\"click\"}}\n"));
                }
                let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
                std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    wait_until(Duration::from_secs(120), "the five poison lines dead-lettered", || {
        let output = bqsync(&project, &["dlq", "list", "--json"], &[TOKEN]);
        output.status.success()
            && serde_json::from_slice::<Vec<serde_json::Value>>(&output.stdout).is_ok_and(|l| l.len() == 5)
    });
    let listed = json_of(&project, &["dlq", "show", "--json", "bad3"]);
    assert_eq!(listed["reason"], "schema", "{listed}");
    assert!(listed["message"].as_str().unwrap().contains("bad3"), "the bytes came through: {listed}");

    // Without the token, reading user data through the process is refused, saying what to set.
    let refused = bqsync(&project, &["sql", "SELECT count(*) FROM atoms"], &[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("admin token"), "{stderr}");
    // Only reading statements.
    let write = bqsync(&project, &["sql", "DELETE FROM atoms"], &[TOKEN]);
    assert!(!write.status.success(), "a DELETE is refused");

    let replay =
        json_of(&project, &["replay", "--json", "--id", "bad3", "--set", "created_at=\"2024-02-01T00:00:00Z\""]);
    assert_eq!(replay["landed_new"], 1, "{replay}");
    assert_eq!(count(&project, "SELECT count(*) FROM atoms WHERE event_id = 'bad3'"), 1);
    let status = json_of(&project, &["status", "--json"]);
    let open: u64 = status["dead_letters"].as_array().unwrap().iter().map(|d| d[2].as_u64().unwrap()).sum();
    assert_eq!(open, 4, "the replayed dead letter is no longer open: {status}");
    assert!(status["warehouse_note"].is_null(), "{status}");
    // The queue figures come from the running process (`run` holds events in memory).
    assert!(status["queue_note"].as_str().is_some_and(|n| n.contains("running bqsync")), "{status}");
    assert!(status["queue"]["pending"].is_u64() && status["queue"]["leased"].is_u64(), "{status}");

    writer.join().unwrap();
    wait_until(Duration::from_secs(180), "every good line landed", || {
        count(&project, "SELECT count(*) FROM atoms WHERE event_id LIKE 'a%'") == good as i64
    });
    signal(&service, "TERM");
    assert!(wait_exit(&mut service, Duration::from_secs(60)).success(), "{}", project.log_tail());
    let landed = project.query_i64("SELECT count(*) FROM atoms");
    let distinct = project.query_i64("SELECT count(DISTINCT event_id) FROM atoms");
    assert_eq!((landed, distinct), (good as i64 + 1, good as i64 + 1), "nothing lost, nothing twice");
    // With no process running, the same commands open the file directly.
    assert_eq!(count(&project, "SELECT count(*) FROM atoms WHERE event_id = 'bad3'"), 1);
    let status = json_of(&project, &["status", "--json"]);
    assert!(status["queue_note"].is_null(), "the bus file alone: {status}");
}

/// A notebook holding the warehouse file does not stop bqsync: it waits, naming the holder, and lands
/// everything once the file is let go.
#[test]
fn bqsync_waits_for_a_warehouse_file_another_process_holds() {
    let project = Project::new("");
    // Create the file first, then hold it.
    project.append("inbox/atoms/first.jsonl", atom_line("first", 1).as_bytes());
    project.run_until_drained(&[]);
    let holder = project.warehouse();
    project.append("inbox/atoms/second.jsonl", atom_line("second", 2).as_bytes());
    let mut run = project.spawn(&["run", "--until-drained"], &[("BQSYNC_LOG", "warn")]);
    let pid = std::process::id().to_string();
    wait_until(Duration::from_secs(60), "a log line naming the process that holds the file", || {
        let log = std::fs::read_to_string(project.path("bqsync.log")).unwrap_or_default();
        log.contains("held by another process") && log.contains(&pid)
    });
    assert!(run.try_wait().unwrap().is_none(), "bqsync waits, it does not exit");
    drop(holder);
    assert!(wait_exit(&mut run, Duration::from_secs(120)).success(), "{}", project.log_tail());
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms"), 2);
}
