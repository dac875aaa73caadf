//! The configuration: one TOML file (every field optional, defaults need no file), then environment
//! overrides. The doc comments of these structs are the reference for users (see README).
//!
//! A leaf: every section's struct lives here, one submodule a component (laid out like the data
//! flow: sources, bus, worker, warehouse, plus admin and gcs), and this module imports no component.
//! Each component takes only its own section; only `main` and [`crate::pipeline`] see [`Config`].
//!
//! Environment overrides: `BQSYNC__SECTION__FIELD=value` sets `[section] field = value`; an array
//! element is addressed by its index (`BQSYNC__SOURCES__JSONL__0__ROOT=/data/inbox`). Values are read
//! as TOML (`10`, `true`, `[1, 2]`) and otherwise as a string. Unknown keys are rejected, wherever they
//! come from.
//!
//! Relative paths (from the file or from an override) are relative to the config file's folder, not
//! to the folder bqsync was started from, so `bqsync --config /srv/sync/bqsync.toml run` under cron
//! or systemd reads and writes the same files as a run from `/srv/sync`. With no file, they are
//! relative to the current folder.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub mod admin;
pub mod bus;
pub mod gcp;
pub mod gcs;
pub mod sources;
pub mod warehouse;
pub mod worker;

pub use admin::AdminConfig;
pub use bus::{BusConfig, BusKind};
pub use gcs::GcsConfig;
pub use sources::SourcesConfig;
pub use warehouse::{WarehouseConfig, WarehouseKind};
pub use worker::WorkerConfig;

/// The file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "bqsync.toml";
/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "BQSYNC__";

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory of table definitions (one `TABLE.json` a table). Default `schemas`.
    #[serde(default = "default_schemas_dir")]
    pub schemas_dir: PathBuf,
    /// SQLite file holding producer checkpoints. Default `.bqsync/state.db`.
    #[serde(default = "default_state_path")]
    pub state_path: PathBuf,
    #[serde(default)]
    pub bus: BusConfig,
    #[serde(default)]
    pub warehouse: WarehouseConfig,
    #[serde(default)]
    pub worker: WorkerConfig,
    #[serde(default)]
    pub sources: SourcesConfig,
    /// `[gcs]`: archive of landed batches and claim checks for large events (off without a bucket).
    #[serde(default)]
    pub gcs: GcsConfig,
    /// `[admin]`: the admin HTTP server (health, metrics, status, triggers) and the SIGTERM drain.
    #[serde(default)]
    pub admin: AdminConfig,
}

fn default_schemas_dir() -> PathBuf {
    PathBuf::from("schemas")
}
fn default_state_path() -> PathBuf {
    PathBuf::from(".bqsync/state.db")
}

/// Errors reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {source}")]
    Parse { path: String, source: toml::de::Error },
    #[error("environment variable {name}: {problem}")]
    Env { name: String, problem: String },
    #[error("config: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads `path` (or `bqsync.toml` if present, or nothing), then applies `BQSYNC__…` overrides
    /// from `env`.
    pub fn load(path: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        let file = path.or_else(|| Some(Path::new(DEFAULT_CONFIG_FILE)).filter(|p| p.exists()));
        let (label, text) = match file {
            Some(p) => (
                p.display().to_string(),
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.into(), source })?,
            ),
            None => ("(defaults)".to_string(), String::new()),
        };
        let mut tree: toml::Table =
            toml::from_str(&text).map_err(|source| ConfigError::Parse { path: label.clone(), source })?;
        for (name, value) in env {
            if let Some(rest) = name.strip_prefix(ENV_PREFIX) {
                apply_override(&mut tree, rest, &value)
                    .map_err(|problem| ConfigError::Env { name: name.clone(), problem })?;
            }
        }
        let mut config: Config = toml::Value::Table(tree)
            .try_into()
            .map_err(|source| ConfigError::Parse { path: format!("{label} with environment overrides"), source })?;
        // Absolute, so `bqsync config` prints paths that mean the same from any folder.
        if let Some(folder) = file.and_then(|f| std::path::absolute(f).ok()) {
            config.resolve_paths(folder.parent().unwrap_or(Path::new("/")));
        }
        config.check()?;
        Ok(config)
    }

    /// Makes every relative path of the config relative to `folder` (the config file's).
    fn resolve_paths(&mut self, folder: &Path) {
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = folder.join(&*path);
            }
        };
        resolve(&mut self.schemas_dir);
        resolve(&mut self.state_path);
        resolve(&mut self.bus.embedded.path);
        resolve(&mut self.warehouse.duckdb.path);
        self.admin.token_file.as_mut().map(resolve);
        let sources = &mut self.sources;
        sources.jsonl.iter_mut().for_each(|s| resolve(&mut s.root));
        sources.sessions.iter_mut().for_each(|s| resolve(&mut s.root));
        sources.files.iter_mut().for_each(|s| resolve(&mut s.root));
        sources.sqlite.iter_mut().for_each(|s| resolve(&mut s.path));
        sources.outbox.iter_mut().for_each(|s| resolve(&mut s.path));
        sources.http.iter_mut().filter_map(|s| s.auth_file.as_mut()).for_each(resolve);
    }

    fn check(&self) -> Result<(), ConfigError> {
        let w = &self.worker;
        if w.max_batch_rows == 0 || w.pull_max_messages == 0 {
            return Err(ConfigError::Invalid("worker.max_batch_rows and worker.pull_max_messages must be ≥ 1".into()));
        }
        let (lease_field, lease_secs) = match self.bus.kind {
            BusKind::Embedded => ("bus.embedded.ack_deadline_secs", self.bus.embedded.ack_deadline_secs),
            // The Pub/Sub client extends leases up to max_lease_secs.
            BusKind::Pubsub => ("bus.pubsub.max_lease_secs", self.bus.pubsub.max_lease_secs),
        };
        if w.retry_budget_secs >= lease_secs {
            return Err(ConfigError::Invalid(format!(
                "worker.retry_budget_secs ({}) must be below {lease_field} ({lease_secs}): a batch retried past its lease is redelivered meanwhile",
                w.retry_budget_secs
            )));
        }
        if self.bus.kind == BusKind::Pubsub {
            self.bus.pubsub.check().map_err(ConfigError::Invalid)?;
        }
        let mut names = std::collections::HashSet::new();
        for name in self.sources.names() {
            if !names.insert(name.clone()) {
                return Err(ConfigError::Invalid(format!(
                    "two sources are named `{name}`; names key the checkpoints and must differ"
                )));
            }
        }
        Ok(())
    }
}

/// Sets `path` (segments separated by `__`, case-insensitive) in the TOML tree.
fn apply_override(tree: &mut toml::Table, path: &str, raw: &str) -> Result<(), String> {
    let segments: Vec<String> = path.split("__").map(|s| s.to_ascii_lowercase()).collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err("empty path segment".into());
    }
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let mut node = tree;
    let (last, parents) = segments.split_last().expect("non-empty");
    let mut parents = parents.iter().peekable();
    while let Some(segment) = parents.next() {
        let next_is_index = parents.peek().is_some_and(|s| s.parse::<usize>().is_ok());
        let entry = node.entry(segment.clone()).or_insert_with(|| {
            if next_is_index {
                toml::Value::Array(vec![])
            } else {
                toml::Value::Table(toml::Table::new())
            }
        });
        node = match entry {
            toml::Value::Table(t) => t,
            toml::Value::Array(items) => {
                let index: usize = parents.next().and_then(|s| s.parse().ok()).ok_or("expected an array index")?;
                while items.len() <= index {
                    items.push(toml::Value::Table(toml::Table::new()));
                }
                items[index].as_table_mut().ok_or("array element is not a table")?
            }
            _ => return Err(format!("`{segment}` is not a section")),
        };
    }
    node.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn defaults_need_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.toml");
        std::fs::write(&empty, "").unwrap();
        let config = Config::load(Some(&empty), []).unwrap();
        assert_eq!(config.warehouse.duckdb.path, dir.path().join("bqsync.duckdb"));
        assert_eq!(config.sources.jsonl.len(), 1);
        assert_eq!(config.sources.jsonl[0].root, dir.path().join("inbox"));
        assert_eq!(config.worker.max_batch_rows, 20_000);
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let file = write("[worker]\nmax_batch_rowz = 5\n");
        let err = Config::load(Some(file.path()), []).unwrap_err().to_string();
        assert!(err.contains("max_batch_rowz"), "{err}");
        let file = write("");
        let err = Config::load(Some(file.path()), [("BQSYNC__WORKER__NOPE".to_string(), "1".to_string())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn environment_overrides_sections_and_array_elements() {
        let file = write("[worker]\nmax_batch_rows = 5\n[[sources.jsonl]]\nname = \"a\"\n");
        let env = [
            ("BQSYNC__WORKER__MAX_BATCH_ROWS".to_string(), "7".to_string()),
            ("BQSYNC__SOURCES__JSONL__0__ROOT".to_string(), "/data/in".to_string()),
            ("BQSYNC__WAREHOUSE__DUCKDB__PATH".to_string(), "/tmp/x.duckdb".to_string()),
            ("OTHER".to_string(), "ignored".to_string()),
        ];
        let config = Config::load(Some(file.path()), env).unwrap();
        assert_eq!(config.worker.max_batch_rows, 7);
        assert_eq!(config.sources.jsonl[0].root, PathBuf::from("/data/in"));
        assert_eq!(config.sources.jsonl[0].name, "a");
        assert_eq!(config.warehouse.duckdb.path, PathBuf::from("/tmp/x.duckdb"));
    }

    #[test]
    fn relative_paths_are_relative_to_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bqsync.toml");
        let text = "state_path = \"/abs/state.db\"\n[[sources.jsonl]]\nroot = \"data/in\"\n[[sources.sqlite]]\nname = \"s\"\npath = \"app.db\"\ntables = []\n";
        std::fs::write(&file, text).unwrap();
        let env = [("BQSYNC__WAREHOUSE__DUCKDB__PATH".to_string(), "wh/x.duckdb".to_string())];
        let config = Config::load(Some(&file), env).unwrap();
        assert_eq!(config.sources.jsonl[0].root, dir.path().join("data/in"));
        assert_eq!(config.sources.sqlite[0].path, dir.path().join("app.db"));
        assert_eq!(config.schemas_dir, dir.path().join("schemas"));
        assert_eq!(config.bus.embedded.path, dir.path().join(".bqsync/bus.db"));
        assert_eq!(config.warehouse.duckdb.path, dir.path().join("wh/x.duckdb"));
        assert_eq!(config.state_path, PathBuf::from("/abs/state.db"));
    }

    #[test]
    fn semantic_checks_name_the_fields() {
        let file = write("[worker]\nretry_budget_secs = 100\n");
        let err = Config::load(Some(file.path()), []).unwrap_err().to_string();
        assert!(err.contains("worker.retry_budget_secs"), "{err}");
    }
}
