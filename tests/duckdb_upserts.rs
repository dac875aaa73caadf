//! Whole-row upserts on DuckDB: each batch stages only each key's newest row (chosen in Rust), and
//! the table ends at the row the version-guarded rule picks, whatever the arrival order.

// The embedded bus and DuckDB: built with the `embedded` feature (the default).
#![cfg(feature = "embedded")]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use bqsync::schema::{Catalog, TableSchema};
use bqsync::warehouse::duckdb::{DuckDbConfig, DuckDbWarehouse};
use bqsync::warehouse::{StagedRow, TableBatch, Warehouse};

fn catalog() -> Catalog {
    Catalog::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")).unwrap()
}

/// A `contacts_master` row under `event_id`; its email names the event id, so the stored row shows
/// which one won.
fn contact(schema: &TableSchema, key: &str, version: i64, deleted: bool, event_id: &str) -> StagedRow {
    let mut row = common::staged_contact(schema, key, version, Some(&format!("{event_id}@x")), deleted);
    row.event_id = event_id.into();
    row
}

/// 30,000 upserts and deletes over 2,000 keys, landed in 15 batches of 2,000. Within a batch only 8
/// versions occur, so equal versions of a key are common there; across batches they differ, and each
/// key's versions arrive in random order. Each key ends at its highest version; on equal versions a
/// delete, then the larger event id.
///
/// (Across batches an equal version changes nothing: the stored row stays, by the strict guard.)
#[test]
fn shuffled_upserts_with_equal_versions_end_at_the_rules_winner() {
    let catalog = catalog();
    let schema = catalog.get("contacts_master").unwrap().clone();
    let mut rng = fastrand::Rng::with_seed(7);
    let (batches, batch_rows, keys) = (15i64, 2_000usize, 2_000usize);
    let mut landings = Vec::new();
    let mut best: HashMap<String, (i64, bool, String)> = HashMap::new();
    for batch in 0..batches {
        let mut rows = Vec::with_capacity(batch_rows);
        for _ in 0..batch_rows {
            let key = format!("c{:04}", rng.usize(0..keys));
            // 8 versions per batch, none shared with another batch.
            let (version, deleted) = (rng.i64(1..9) * batches + batch, rng.u8(0..100) < 10);
            let event_id = format!("{:08x}", rng.u32(..));
            let candidate = (version, deleted, event_id.clone());
            let entry = best.entry(key.clone()).or_insert((i64::MIN, false, String::new()));
            if candidate > *entry {
                *entry = candidate;
            }
            rows.push(contact(&schema, &key, version, deleted, &event_id));
        }
        landings.push(rows);
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bqsync.duckdb");
    let config = DuckDbConfig { path: path.clone(), ..Default::default() };
    let warehouse = DuckDbWarehouse::open(&config, Arc::new(catalog)).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        warehouse.ensure_tables().await.unwrap();
        for rows in landings {
            let batch = Arc::new(vec![TableBatch { table: "contacts_master".into(), rows }]);
            let (_committed, _) = warehouse.land(batch, Default::default()).await.unwrap();
        }
    });
    drop(warehouse);

    let connection = duckdb::Connection::open(&path).unwrap();
    let mut statement = connection
        .prepare("SELECT contact_id, version, _bqsync_deleted, _bqsync_event_id, email FROM contacts_master")
        .unwrap();
    let stored: Vec<(String, i64, bool, String, Option<String>)> = statement
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(stored.len(), best.len(), "one row per key");
    let mut wrong = Vec::new();
    for (key, version, deleted, event_id, email) in stored {
        let (want_version, want_deleted, want_id) = &best[&key];
        let want_email = (!want_deleted).then(|| format!("{want_id}@x"));
        if (version, deleted, &event_id, &email) != (*want_version, *want_deleted, want_id, &want_email) {
            wrong.push(format!(
                "{key}: stored {version} {deleted} {event_id}, want {want_version} {want_deleted} {want_id}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{} keys not at the rule's winner, e.g. {:?}", wrong.len(), &wrong[..wrong.len().min(5)]);
}
