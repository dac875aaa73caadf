//! `[[sources.jsonl]]`: growing JSONL files.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One `[[sources.jsonl]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlSourceConfig {
    /// Name of the source (checkpoints are kept per name). Default `inbox`.
    #[serde(default = "default_name")]
    pub name: String,
    /// Directory watched recursively. Default `./inbox`.
    #[serde(default = "default_root")]
    pub root: PathBuf,
    /// Create `root` when it does not exist. Default false: a missing root is an error at start-up
    /// (a mistyped path would otherwise publish nothing and report success).
    #[serde(default)]
    pub create_root: bool,
    /// File-to-table routes, first match wins. Default: every file under `ROOT/TABLE/` goes to `TABLE`.
    #[serde(default = "default_routes")]
    pub routes: Vec<Route>,
    /// File names (globs) never read. Default: hidden files, `*.tmp`, `*.swp`, `*.partial`.
    #[serde(default = "default_ignore")]
    pub ignore: Vec<String>,
    /// Lines longer than this are dead-lettered as `oversize` (the first 4 KiB kept). Default 1 MiB.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// Events per publish call (and checkpoint write). Default 5000.
    #[serde(default = "default_publish_batch")]
    pub publish_batch: usize,
    /// Take a last line that has no newline as complete once its file has not changed for this many
    /// milliseconds. Default: never; a line is complete only with its newline, and a one-shot run
    /// reports files whose last line waits. Only for writers that never end their last line: one
    /// that later continues the line would have the rest read as a line of its own.
    #[serde(default)]
    pub final_line_after_ms: Option<u64>,
    /// Rescan interval when no file-system event arrives, in milliseconds. Default 1000.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
}

/// Maps files to a table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Glob on the path relative to `root`, e.g. `atoms/**` or `registry/*.jsonl`.
    pub glob: String,
    /// Destination table. When absent, the first directory of the relative path names the table.
    #[serde(default)]
    pub table: Option<String>,
}

fn default_name() -> String {
    "inbox".into()
}

fn default_root() -> PathBuf {
    PathBuf::from("inbox")
}

fn default_routes() -> Vec<Route> {
    vec![Route { glob: "*/**".into(), table: None }]
}

fn default_ignore() -> Vec<String> {
    vec![".*".into(), "*.tmp".into(), "*.swp".into(), "*.partial".into()]
}

const fn default_max_line_bytes() -> usize {
    1 << 20
}

const fn default_publish_batch() -> usize {
    5000
}

const fn default_poll_interval_ms() -> u64 {
    1000
}

impl Default for JsonlSourceConfig {
    fn default() -> Self {
        JsonlSourceConfig {
            name: default_name(),
            root: default_root(),
            create_root: false,
            routes: default_routes(),
            ignore: default_ignore(),
            max_line_bytes: default_max_line_bytes(),
            publish_batch: default_publish_batch(),
            poll_interval_ms: default_poll_interval_ms(),
            final_line_after_ms: None,
        }
    }
}
