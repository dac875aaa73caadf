//! The files a JSONL source tails: found by a scan of its root at every pass, routed to a table by
//! their path, and opened at their checkpoint when first seen (see the invariants in [`super`]).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use super::JsonlSource;
use crate::sources::SourceError;

/// Where a file under the root goes.
enum Routed {
    Table(String),
    /// Matches an `ignore` glob: never read, by request.
    Ignored,
    /// Matches no route: not read, and reported.
    NoRoute,
}

/// A file being tailed.
pub(super) struct TrackedFile {
    pub(super) path: PathBuf,
    pub(super) relative: String,
    pub(super) table: String,
    pub(super) file: File,
    pub(super) device: u64,
    pub(super) inode: u64,
    pub(super) fingerprint: u64,
    pub(super) fingerprint_len: u64,
    pub(super) offset: u64,
    /// Lines before `offset`, for line numbers in dead letters; None until counted (a file resumed
    /// from its checkpoint is counted once, when a pass first reads it).
    pub(super) lines: Option<u64>,
    /// Bytes past `offset` without a newline after the latest pass (a partial last line).
    pub(super) waiting: u64,
    /// Seen at its path in the latest scan; otherwise it is drained and then forgotten.
    pub(super) present: bool,
}

/// Hash of the first `len` bytes of the file.
pub(super) fn fingerprint(file: &mut File, len: u64) -> std::io::Result<u64> {
    let mut buffer = vec![0u8; len as usize];
    file.seek(SeekFrom::Start(0))?;
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    buffer.truncate(filled);
    Ok(xxhash_rust::xxh3::xxh3_64(&buffer))
}

impl JsonlSource {
    /// Where a relative path goes: its table, ignored, or no route.
    fn route(&self, relative: &str) -> Routed {
        let file_name = relative.rsplit('/').next().unwrap_or(relative);
        if self.ignore.is_match(file_name) {
            return Routed::Ignored;
        }
        let table =
            self.routes.iter().find(|(matcher, _)| matcher.is_match(relative)).and_then(|(_, table)| match table {
                Some(t) => Some(t.clone()),
                None => relative.split_once('/').map(|(dir, _)| dir.to_string()),
            });
        table.map_or(Routed::NoRoute, Routed::Table)
    }

    /// Lists routed files under the root, and notes the files no route matches.
    fn scan(&mut self) -> Vec<(PathBuf, String, String)> {
        let mut found = Vec::new();
        let mut unrouted = Vec::new();
        let mut stack = vec![self.config.root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(file_type) = entry.file_type() else {
                    continue;
                };
                if file_type.is_dir() {
                    stack.push(path);
                } else if file_type.is_file() {
                    let Ok(relative) = path.strip_prefix(&self.config.root) else {
                        continue;
                    };
                    let relative = relative.to_string_lossy().replace('\\', "/");
                    match self.route(&relative) {
                        Routed::Table(table) => found.push((path, relative, table)),
                        Routed::NoRoute => unrouted.push(relative),
                        Routed::Ignored => {}
                    }
                }
            }
        }
        found.sort();
        unrouted.sort();
        for relative in unrouted.iter().filter(|r| !self.unrouted.contains(r)) {
            tracing::warn!(source = %self.config.name, path = %self.config.root.join(relative).display(), "no route matches this file: not read (files go in ROOT/TABLE/, or add a `routes` entry)");
        }
        self.unrouted = unrouted;
        found
    }

    /// Updates the set of tracked files from a scan: new files are opened at their checkpoint.
    pub(super) fn refresh_files(&mut self) -> Result<(), SourceError> {
        for tracked in self.files.values_mut() {
            tracked.present = false;
        }
        let mut renamed = Vec::new();
        for (path, relative, table) in self.scan() {
            let Ok(metadata) = std::fs::metadata(&path) else {
                continue;
            };
            let id = (metadata.dev(), metadata.ino());
            if let Some(tracked) = self.files.get_mut(&id) {
                tracked.present = true;
                if tracked.path != path {
                    tracing::info!(from = %tracked.path.display(), to = %path.display(), "file renamed; continuing at its offset");
                    tracked.path = path;
                    tracked.relative = relative;
                    renamed.push(id);
                }
                continue;
            }
            let mut file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.io_error(&path, e)),
            };
            let saved = self
                .checkpoints
                .file(&self.config.name, id.0, id.1)
                .map_err(|error| SourceError::Checkpoint { source_name: self.config.name.clone(), error })?;
            let (offset, fingerprint_len, file_fingerprint) = match saved {
                Some(c)
                    if c.fingerprint_len > 0
                        && fingerprint(&mut file, c.fingerprint_len).ok() == Some(c.fingerprint)
                        && metadata.len() >= c.offset =>
                {
                    (c.offset, c.fingerprint_len, c.fingerprint)
                }
                Some(c) => {
                    tracing::warn!(path = %path.display(), offset = c.offset, "file replaced or truncated since its checkpoint; reading it from the start");
                    (0, 0, 0)
                }
                None => (0, 0, 0),
            };
            self.files.insert(
                id,
                TrackedFile {
                    path,
                    relative,
                    table,
                    file,
                    device: id.0,
                    inode: id.1,
                    fingerprint: file_fingerprint,
                    fingerprint_len,
                    offset,
                    lines: (offset == 0).then_some(0),
                    waiting: 0,
                    present: true,
                },
            );
        }
        // A renamed file's checkpoint follows it, so status never compares it with its successor.
        for id in renamed {
            let tracked = &self.files[&id];
            if tracked.fingerprint_len > 0 {
                self.save_checkpoint(tracked, tracked.file.metadata().map(|m| m.len()).unwrap_or(0))?;
            }
        }
        Ok(())
    }
}
