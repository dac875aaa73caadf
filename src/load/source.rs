//! `[[sources.files]]`: finds complete files under a root and loads them by table (`bqsync load`).
//!
//! A file is **complete** when its marker (`FILE` + `marker_suffix`) exists, or, without a marker
//! suffix, when it has not changed for `settle_secs`. Each pass loads, per table, every complete file
//! whose fingerprint is not yet recorded as loaded, as one batch, at most once per
//! `load_interval_secs` per table (BigQuery: 1,500 load jobs per table a day).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;

use super::{LoadReport, Loader};
use crate::config::sources::FilesSourceConfig;
use crate::shutdown::Shutdown;
use crate::sources::checkpoint::CheckpointStore;

const LOADED: &str = "loaded:";

/// Every regular file under `root`, sorted.
fn walk(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The complete files under the root, by table; and how many are still settling.
fn complete_files(
    config: &FilesSourceConfig,
    now: SystemTime,
) -> anyhow::Result<(BTreeMap<String, Vec<PathBuf>>, u64)> {
    let mut ignore = globset::GlobSetBuilder::new();
    for pattern in &config.ignore {
        ignore.add(globset::Glob::new(pattern).with_context(|| format!("sources.files ignore `{pattern}`"))?);
    }
    let ignore = ignore.build()?;
    let mut by_table: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let mut settling = 0;
    let files =
        walk(&config.root).with_context(|| format!("source `{}`: reading {}", config.name, config.root.display()))?;
    for path in files {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let marker = config.marker_suffix.as_deref().filter(|s| !s.is_empty());
        if ignore.is_match(name) || marker.is_some_and(|m| name.ends_with(m)) {
            continue;
        }
        let complete = match marker {
            Some(suffix) => Path::new(&format!("{}{suffix}", path.display())).exists(),
            None => {
                let modified = std::fs::metadata(&path).and_then(|m| m.modified()).unwrap_or(now);
                now.duration_since(modified).unwrap_or_default() >= Duration::from_secs(config.settle_secs)
            }
        };
        if !complete {
            settling += 1;
            continue;
        }
        let relative = path.strip_prefix(&config.root).unwrap_or(&path);
        let table = match &config.table {
            Some(table) => table.clone(),
            None => match relative.components().next().filter(|_| relative.components().count() > 1) {
                Some(first) => first.as_os_str().to_string_lossy().into_owned(),
                None => continue, // a file directly under the root names no table
            },
        };
        by_table.entry(table).or_default().push(path);
    }
    Ok((by_table, settling))
}

/// Runs one files source: passes until `shutdown`, or a single pass when `once` (which then applies
/// what it loaded). Returns the reports of every load.
pub async fn run(
    loader: &Loader,
    config: &FilesSourceConfig,
    store: &CheckpointStore,
    once: bool,
    shutdown: Shutdown,
) -> anyhow::Result<Vec<LoadReport>> {
    let mut reports = Vec::new();
    let mut last_load: HashMap<String, Instant> = HashMap::new();
    let interval = Duration::from_secs(config.load_interval_secs);
    loop {
        let (ready, settling) = complete_files(config, SystemTime::now())?;
        for (table, paths) in ready {
            if !once && last_load.get(&table).is_some_and(|t| t.elapsed() < interval) {
                continue;
            }
            let mut fresh = Vec::new();
            for path in paths {
                let bytes = tokio::fs::read(&path).await.with_context(|| format!("reading {}", path.display()))?;
                let fp = super::prepare::fingerprint(&bytes);
                if store.state(&config.name, &format!("{LOADED}{fp}"))?.is_none() {
                    fresh.push(path);
                } else {
                    tracing::debug!(path = %path.display(), "already loaded (same content); skipped");
                }
            }
            if fresh.is_empty() {
                continue;
            }
            let bar = indicatif::ProgressBar::hidden();
            let report = loader.load(&table, &fresh, &bar, once).await?;
            let loaded: Vec<(String, Option<String>)> =
                report.files.iter().map(|f| (format!("{LOADED}{}", f.fingerprint), Some(f.path.clone()))).collect();
            store.save_progress(&config.name, &loaded, &table, &[])?;
            tracing::info!(source = %config.name, table, files = report.files.len(), rows = report.rows, dead_letters = report.dead_letters, jobs = ?report.job_ids, "files loaded");
            last_load.insert(table, Instant::now());
            reports.push(report);
        }
        if once {
            if settling > 0 {
                tracing::info!(source = %config.name, settling, "files not complete yet were left for the next pass");
            }
            return Ok(reports);
        }
        let pause = Duration::from_secs(config.settle_secs.clamp(1, 5));
        tokio::select! {
            _ = shutdown.stopped() => return Ok(reports),
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(root: &Path) -> FilesSourceConfig {
        toml::from_str::<FilesSourceConfig>(&format!("root = {:?}\nsettle_secs = 60", root.display().to_string()))
            .unwrap()
    }

    #[test]
    fn files_are_complete_when_settled_or_marked_and_name_their_table() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("atoms/2026")).unwrap();
        std::fs::write(dir.path().join("atoms/2026/a.jsonl"), "{}\n").unwrap();
        std::fs::write(dir.path().join("atoms/.hidden"), "{}\n").unwrap();
        std::fs::write(dir.path().join("loose.jsonl"), "{}\n").unwrap();
        let mut config = config(dir.path());
        let (ready, settling) = complete_files(&config, SystemTime::now()).unwrap();
        assert!(ready.is_empty());
        assert_eq!(settling, 2, "written just now: still settling");
        let later = SystemTime::now() + Duration::from_secs(61);
        let (ready, _) = complete_files(&config, later).unwrap();
        assert_eq!(ready["atoms"], [dir.path().join("atoms/2026/a.jsonl")]);
        assert_eq!(ready.len(), 1, "a file directly under the root names no table");
        config.marker_suffix = Some(".done".into());
        assert!(complete_files(&config, later).unwrap().0.is_empty(), "a marker suffix means: only marked files");
        std::fs::write(dir.path().join("atoms/2026/a.jsonl.done"), "").unwrap();
        let (ready, _) = complete_files(&config, SystemTime::now()).unwrap();
        assert_eq!(ready["atoms"], [dir.path().join("atoms/2026/a.jsonl")]);
    }
}
