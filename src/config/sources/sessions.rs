//! `[[sources.sessions]]`: captured meeting sessions.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One `[[sources.sessions]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsSourceConfig {
    /// Name of the source (`bqsync sync NAME`).
    pub name: String,
    /// The folder sessions are captured into (watched recursively).
    pub root: PathBuf,
    /// Create `root` when it does not exist. Default false: a missing root is an error at start-up
    /// (a mistyped path would otherwise publish nothing and report success).
    #[serde(default)]
    pub create_root: bool,
    /// Destination table, an upsert table. Default `zoom_sessions`.
    #[serde(default = "default_table")]
    pub table: String,
    /// A session is complete once none of its files changed for this long. Default 5000.
    #[serde(default = "default_settle_ms")]
    pub settle_ms: u64,
    /// When set (e.g. `.done`), a session is complete only once `STEM` + this file exists.
    #[serde(default)]
    pub marker_suffix: Option<String>,
    /// Suffixes (after the stem) of the transcript file, first found wins.
    /// Default `[".transcript.txt", ".vtt", ".txt"]`.
    #[serde(default = "default_transcript_suffixes")]
    pub transcript_suffixes: Vec<String>,
    /// Sessions larger than this (the whole event) need the claim check; else they are dead-lettered
    /// as `oversize`. Default 4 MiB.
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: usize,
    /// Rescan interval when no file-system event arrives, in milliseconds. Default 1000.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Source field → destination column, for names that differ.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
}

fn default_table() -> String {
    "zoom_sessions".into()
}

const fn default_settle_ms() -> u64 {
    5000
}

fn default_transcript_suffixes() -> Vec<String> {
    vec![".transcript.txt".into(), ".vtt".into(), ".txt".into()]
}

const fn default_max_event_bytes() -> usize {
    4 << 20
}

const fn default_poll_interval_ms() -> u64 {
    1000
}
