//! `[sources]`: one section a kind of producer.

pub mod files;
pub mod http;
pub mod jsonl;
pub mod outbox;
pub mod sessions;
pub mod sqlite;

use serde::{Deserialize, Serialize};

pub use files::FilesSourceConfig;
pub use http::HttpSourceConfig;
pub use jsonl::{JsonlSourceConfig, Route};
pub use outbox::{OutboxEngine, OutboxSourceConfig};
pub use sessions::SessionsSourceConfig;
pub use sqlite::{SqliteSourceConfig, SqliteTableConfig, WatermarkMode};

/// The schedule fields of a polling source (SQLite tables, outbox, HTTP), gathered from its section
/// (see `crate::sources::schedule`).
#[derive(Debug, Clone, Default)]
pub struct ScheduleConfig {
    pub schedule: Option<String>,
    pub full_schedule: Option<String>,
    pub timezone: Option<String>,
}

/// `[sources]`: producers. Default: one JSONL source on `./inbox` (files under `inbox/TABLE/` land
/// in `TABLE`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourcesConfig {
    /// `[[sources.jsonl]]` entries: growing JSONL files (atoms, ID registry).
    #[serde(default = "default_jsonl_sources")]
    pub jsonl: Vec<JsonlSourceConfig>,
    /// `[[sources.sqlite]]` entries: SQLite tables synced by watermark.
    #[serde(default)]
    pub sqlite: Vec<SqliteSourceConfig>,
    /// `[[sources.outbox]]` entries: dirty-row outboxes in SQLite or DuckDB files (contacts).
    #[serde(default)]
    pub outbox: Vec<OutboxSourceConfig>,
    /// `[[sources.sessions]]` entries: folders of captured meeting sessions (Zoom).
    #[serde(default)]
    pub sessions: Vec<SessionsSourceConfig>,
    /// `[[sources.http]]` entries: JSON APIs polled incrementally (identity-provider users).
    #[serde(default)]
    pub http: Vec<HttpSourceConfig>,
    /// `[[sources.files]]` entries: whole files loaded by BigQuery load jobs (`bqsync load`; not
    /// started by `run`).
    #[serde(default)]
    pub files: Vec<FilesSourceConfig>,
}

impl SourcesConfig {
    /// Every source's name, in config order.
    pub fn names(&self) -> Vec<String> {
        let jsonl = self.jsonl.iter().map(|s| s.name.clone());
        let sqlite = self.sqlite.iter().map(|s| s.name.clone());
        let outbox = self.outbox.iter().map(|s| s.name.clone());
        let sessions = self.sessions.iter().map(|s| s.name.clone());
        jsonl.chain(sqlite).chain(outbox).chain(sessions).chain(self.http.iter().map(|s| s.name.clone())).collect()
    }
}

fn default_jsonl_sources() -> Vec<JsonlSourceConfig> {
    vec![JsonlSourceConfig::default()]
}

impl Default for SourcesConfig {
    fn default() -> Self {
        SourcesConfig {
            jsonl: default_jsonl_sources(),
            sqlite: Vec::new(),
            outbox: Vec::new(),
            sessions: Vec::new(),
            http: Vec::new(),
            files: Vec::new(),
        }
    }
}
