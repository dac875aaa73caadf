//! The README's quick start, run as written: the blocks it marks as tested run in bash in a fresh
//! folder (with the repository's `schemas/`, and the built `bqsync` on PATH as step 1 puts it), and
//! its `duckdb` query then reads what they landed.

// The embedded bus and DuckDB: built with the `embedded` feature (the default).
#![cfg(feature = "embedded")]

use std::path::Path;
use std::process::Command;

const MARK: &str = "<!-- quick-start: tests/readme.rs runs this block as written -->";

/// The fenced blocks that follow the marker, in order.
fn tested_blocks(readme: &str) -> Vec<String> {
    readme
        .split(MARK)
        .skip(1)
        .map(|after| {
            let body = after.trim_start().strip_prefix("```sh\n").expect("a ```sh block follows the marker");
            body[..body.find("```").expect("the block ends")].to_string()
        })
        .collect()
}

#[test]
fn the_quick_start_runs_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let blocks = tested_blocks(&readme);
    assert_eq!(blocks.len(), 2, "drop JSONL, run");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("schemas")).unwrap();
    for entry in std::fs::read_dir(root.join("schemas")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join("schemas").join(entry.file_name())).unwrap();
    }
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_bqsync")).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut outputs = Vec::new();
    for block in &blocks {
        let output = Command::new("bash")
            .args(["-euo", "pipefail", "-c", block])
            .current_dir(dir.path())
            .env("PATH", &path)
            .env("BQSYNC_LOG", "warn")
            .env_remove("BQSYNC_CONFIG")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "{block}\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
        outputs.push(stdout);
    }
    let report: serde_json::Value = serde_json::from_str(outputs[1].lines().next().unwrap()).unwrap();
    assert_eq!(report["report"]["worker"]["landed_new"], 2, "{report}");
    assert!(outputs[1].contains("atoms"), "status names the table: {}", outputs[1]);

    // Step 4's query, as written, on what the steps landed.
    let line = readme.lines().find(|l| l.starts_with("duckdb bqsync.duckdb \"")).expect("the duckdb line");
    let sql = line.trim_start_matches("duckdb bqsync.duckdb \"").trim_end_matches('"');
    let warehouse = duckdb::Connection::open(dir.path().join("bqsync.duckdb")).unwrap();
    let mut statement = warehouse.prepare(sql).unwrap();
    let rows: Vec<(String, i64)> =
        statement.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect();
    assert_eq!(rows, vec![("click".to_string(), 1), ("view".to_string(), 1)]);
}
