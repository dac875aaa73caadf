//! `bqsync reset SOURCE[:TABLE]`: forget where one source, or one table of it, stands, so its next
//! pass publishes everything again (which lands once: event ids are deterministic). The keys a
//! source published stay recorded, so rows deleted at the source before the reset still get their
//! tombstones on the next pass.

use crate::config::sources::SourcesConfig;
use crate::sources::checkpoint::{republish_key, CheckpointError, CheckpointStore};

/// What a reset did, in words.
pub fn reset(sources: &SourcesConfig, store: &CheckpointStore, target: &str) -> Result<String, String> {
    let (name, table) = match target.split_once(':') {
        Some((name, table)) => (name, Some(table)),
        None => (target, None),
    };
    let failed = |e: CheckpointError| e.to_string();
    if let Some(sqlite) = sources.sqlite.iter().find(|s| s.name == name) {
        let Some(table) = table else {
            store.reset_source(name).map_err(failed)?;
            return Ok(format!("source `{name}`: every table publishes all its rows on its next pass"));
        };
        let found =
            sqlite.tables.iter().find(|t| t.source_table == table || t.table.as_deref() == Some(table)).ok_or_else(
                || {
                    let names: Vec<&str> = sqlite.tables.iter().map(|t| t.source_table.as_str()).collect();
                    format!("source `{name}` has no table `{table}`; its tables: {}", names.join(", "))
                },
            )?;
        let keys = [format!("wm:{}", found.source_table)];
        store.reset_table(name, &keys, Some(republish_key(&found.source_table))).map_err(failed)?;
        return Ok(format!("source `{name}`, table `{}`: publishes all its rows on the next pass", found.source_table));
    }
    if let Some(http) = sources.http.iter().find(|s| s.name == name) {
        if let Some(table) = table.filter(|t| *t != http.table) {
            return Err(format!("source `{name}` feeds only `{}`, not `{table}`", http.table));
        }
        store.reset_source(name).map_err(failed)?;
        return Ok(format!("source `{name}`: the next pass starts from the initial cursor"));
    }
    if let Some(jsonl) = sources.jsonl.iter().find(|s| s.name == name) {
        let Some(table) = table else {
            store.reset_source(name).map_err(failed)?;
            return Ok(format!("source `{name}`: every file is read again from the start"));
        };
        let prefix = jsonl.root.join(table).display().to_string() + "/";
        let forgotten = store.forget_files(name, &prefix).map_err(failed)?;
        return Ok(format!("source `{name}`: {forgotten} file(s) under {prefix} are read again from the start"));
    }
    if sources.outbox.iter().any(|s| s.name == name) {
        return Err(format!(
            "source `{name}` is an outbox: it keeps no watermark, it publishes the rows the application marks; \
             mark the rows to publish again (UPDATE … SET dirty = 1)"
        ));
    }
    if sources.sessions.iter().any(|s| s.name == name) {
        if table.is_some() {
            return Err(format!("source `{name}` feeds one table: reset it as `{name}`"));
        }
        store.reset_source(name).map_err(failed)?;
        return Ok(format!("source `{name}`: every session is published again"));
    }
    Err(format!("no source named `{name}` in the config; sources: {}", sources.names().join(", ")))
}
