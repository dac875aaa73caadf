//! Without the `embedded` feature this binary has no DuckDB: an outbox in a DuckDB file is refused
//! when the source is built ([`super::OutboxSource::new`]), so these are never reached; they exist
//! so that the engine's calls read the same in both builds.

use std::path::Path;
use std::time::Duration;

use super::ClearKey;
use crate::sources::sqlite::ReadRows;

pub(super) struct DuckDbFile;

/// What every call answers.
pub(super) fn not_built() -> String {
    crate::features::missing("an outbox in a DuckDB file", "embedded")
}

impl DuckDbFile {
    pub(super) fn new(_: &Path, _: Duration) -> DuckDbFile {
        DuckDbFile
    }

    pub(super) async fn read_page(&self, _: &str, _: i64, _: i64) -> Result<ReadRows, String> {
        Err(not_built())
    }

    pub(super) async fn clear(&self, _: &str, _: &str, _: &[ClearKey]) -> Result<u64, String> {
        Err(not_built())
    }

    pub(super) async fn clear_then_read(
        &self,
        _: (&str, &str, &[ClearKey]),
        _: (&str, i64, i64),
    ) -> (Result<u64, String>, Result<ReadRows, String>) {
        (Err(not_built()), Err(not_built()))
    }

    pub(super) async fn delete_each(&self, _: &str, _: &[ClearKey]) -> Result<(), String> {
        Err(not_built())
    }
}
