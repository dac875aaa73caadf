//! `"upsert": "patch"` on both warehouses: a record updates only the columns it carries.
//!
//! The same random workload (patches carrying random subsets of columns, explicit NULLs, equal
//! versions, tombstones followed by patches, late records older than the stored version), landed in
//! shuffled batches, must end in the state a simple model computes: per key, the records of a landing
//! above the stored version are folded in version order, column by column. The DuckDB warehouse is
//! checked after each landing; BigQuery's live view after each landing (before the apply) and its
//! table after each apply, against the BigQuery emulator (`local-bigquery`, started by
//! `scripts/test.sh`, which exports BIGQUERY_EMULATOR_HOST). A last test runs JSONL patches through
//! the real binary, so the classifier's "which columns did the record carry" is covered too.

// The embedded default beside the Google backends: built with both features (the default).
#![cfg(all(feature = "embedded", feature = "gcp"))]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bqsync::envelope::Op;
use bqsync::schema::{Catalog, CellValue, TableSchema, UpsertMode};
use bqsync::warehouse::bigquery::{BigQueryConfig, BigQueryWarehouse};
use bqsync::warehouse::duckdb::{DuckDbConfig, DuckDbWarehouse};
use bqsync::warehouse::{StagedRow, TableBatch, Warehouse};
use common::Project;
use serde_json::Value;

const TABLE: &str = "contacts_master";
/// The columns a patch may carry or not (`updated_at` is never carried by a patch: it keeps the
/// value of the first, whole record).
const PATCHABLE: [&str; 3] = ["name", "email", "phone"];
const PROJECT: &str = "bqsync-test";
const SETTLE_SECS: u64 = 6;

fn patch_catalog() -> Catalog {
    let catalog = common::catalog();
    let tables = catalog.tables().cloned().map(|mut t| {
        if t.table == TABLE {
            t.upsert = UpsertMode::Patch;
        }
        t
    });
    Catalog::from_tables(tables.collect::<Vec<_>>())
}

/// What one record says: `None` for a tombstone, else per patchable column `None` when not carried,
/// `Some(None)` for an explicit null.
#[derive(Debug, Clone)]
struct Record {
    key: String,
    version: i64,
    event_id: String,
    columns: Option<[Option<Option<String>>; 3]>,
}

impl Record {
    fn order(&self) -> (i64, bool, &str) {
        (self.version, self.columns.is_none(), &self.event_id)
    }

    fn row(&self, schema: &TableSchema) -> StagedRow {
        let mut absent = Vec::new();
        let cells = schema
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| match (c.name.as_str(), &self.columns) {
                ("contact_id", _) => CellValue::String(self.key.clone()),
                ("version", _) => CellValue::Int64(self.version),
                ("updated_at", Some(_)) => {
                    absent.push(i);
                    CellValue::Null
                }
                (name, Some(columns)) => match &columns[PATCHABLE.iter().position(|p| *p == name).unwrap()] {
                    None => {
                        absent.push(i);
                        CellValue::Null
                    }
                    Some(value) => value.clone().map_or(CellValue::Null, CellValue::String),
                },
                (_, None) => CellValue::Null,
            })
            .collect();
        let op = if self.columns.is_some() { Op::Upsert } else { Op::Delete };
        StagedRow { event_id: self.event_id.clone(), op, version: Some(self.version), cells, absent }
    }
}

/// A key's row: version, tombstone, the patchable columns, `updated_at` (µs).
#[derive(Debug, Clone, PartialEq)]
struct Stored {
    version: i64,
    deleted: bool,
    columns: [Option<String>; 3],
    updated_at: Option<i64>,
}

type State = BTreeMap<String, Stored>;

/// The model: records at or below the stored version are dropped; the rest are folded in order.
fn model_apply(state: &mut State, landing: &[Record]) {
    let mut by_key: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for record in landing {
        by_key.entry(&record.key).or_default().push(record);
    }
    for (key, mut records) in by_key {
        let stored = state.get(key).cloned();
        records.retain(|r| stored.as_ref().is_none_or(|s| r.version > s.version));
        records.sort_by(|a, b| a.order().cmp(&b.order()));
        let Some(newest) = records.last() else { continue };
        let mut row =
            stored.unwrap_or(Stored { version: 0, deleted: false, columns: Default::default(), updated_at: None });
        for record in &records {
            match &record.columns {
                None => row = Stored { columns: Default::default(), updated_at: None, ..row },
                Some(columns) => {
                    for (slot, value) in row.columns.iter_mut().zip(columns) {
                        if let Some(value) = value {
                            *slot = value.clone();
                        }
                    }
                }
            }
        }
        row.version = newest.version;
        row.deleted = newest.columns.is_none();
        state.insert(key.to_string(), row);
    }
}

/// Three landings over `keys` keys. The first is whole records (with `updated_at`, set apart by
/// [`first_landing_updated_at`]); later ones are patches of random column subsets with random
/// values and explicit nulls, some equal versions, 10 % tombstones, and late records older than
/// anything stored. Versions grow from landing to landing, so the outcome does not depend on how
/// the warehouse splits landings; inside a landing the order is shuffled.
fn workload(keys: usize, seed: u64) -> Vec<Vec<Record>> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut landings = Vec::new();
    let mut n = 0;
    let mut next_id = |key: &str, version: i64| {
        n += 1;
        format!("{key}@{version}#{n:05}")
    };
    let mut first = Vec::new();
    for k in 0..keys {
        let key = format!("c{k:03}");
        let columns = [0, 1, 2].map(|c| Some(Some(format!("{}-{k}", PATCHABLE[c]))));
        first.push(Record { event_id: next_id(&key, 1), key, version: 1, columns: Some(columns) });
    }
    landings.push(first);
    for landing in 1..3i64 {
        let mut records = Vec::new();
        for k in 0..keys {
            let key = format!("c{k:03}");
            for _ in 0..rng.usize(1..5) {
                // Few distinct versions per landing: equal versions happen.
                let version = landing * 100 + rng.i64(0..4);
                let columns = (rng.u8(0..10) > 0).then(|| {
                    [0, 1, 2].map(|c| match rng.u8(0..10) {
                        0..=3 => None,
                        4 => Some(None),
                        _ => Some(Some(format!("{}-{k}-v{version}-{}", PATCHABLE[c], rng.u16(..)))),
                    })
                });
                records.push(Record { event_id: next_id(&key, version), key: key.clone(), version, columns });
            }
            if landing == 2 && k % 5 == 0 {
                // Late: older than the stored version; carries a column no newer record may carry.
                let columns = Some([Some(Some("late".to_string())), None, None]);
                records.push(Record { event_id: next_id(&key, 50), key, version: 50, columns });
            }
        }
        rng.shuffle(&mut records);
        landings.push(records);
    }
    landings
}

fn first_landing_updated_at(state: &mut State) {
    for row in state.values_mut() {
        row.updated_at = Some(1_700_000_000_000_000);
    }
}

fn staged(schema: &TableSchema, records: &[Record], first: bool) -> Arc<Vec<TableBatch>> {
    let rows = records
        .iter()
        .map(|r| {
            let mut row = r.row(schema);
            if first {
                let at = schema.column_index("updated_at").unwrap();
                row.cells[at] = CellValue::Timestamp(1_700_000_000_000_000);
                row.absent.retain(|i| *i != at);
            }
            row
        })
        .collect();
    Arc::new(vec![TableBatch { table: TABLE.into(), rows }])
}

fn assert_state(actual: &State, expected: &State, what: &str) {
    assert_eq!(actual.len(), expected.len(), "one row per key in {what}");
    let wrong: Vec<_> = expected.iter().filter(|(k, v)| actual.get(*k) != Some(v)).collect();
    assert!(
        wrong.is_empty(),
        "{} of {} keys differ in {what}; first: want {:?}, got {:?}",
        wrong.len(),
        expected.len(),
        wrong[0],
        actual.get(wrong[0].0)
    );
}

const SELECT: &str = "contact_id, version, _bqsync_deleted, name, email, phone";

fn duckdb_state(path: &std::path::Path) -> State {
    let connection = duckdb::Connection::open(path).unwrap();
    let sql = format!("SELECT {SELECT}, epoch_us(updated_at) FROM {TABLE}");
    let mut statement = connection.prepare(&sql).unwrap();
    let rows = statement
        .query_map([], |r| {
            let stored = Stored {
                version: r.get(1)?,
                deleted: r.get(2)?,
                columns: [r.get(3)?, r.get(4)?, r.get(5)?],
                updated_at: r.get(6)?,
            };
            Ok((r.get::<_, String>(0)?, stored))
        })
        .unwrap();
    rows.map(Result::unwrap).collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn duckdb_patches_update_only_the_columns_a_record_carries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.duckdb");
    let catalog = patch_catalog();
    let schema = catalog.get(TABLE).unwrap().clone();
    let config = DuckDbConfig { path: path.clone(), ..Default::default() };
    let mut expected = State::new();
    for (i, landing) in workload(60, 7).iter().enumerate() {
        let warehouse = DuckDbWarehouse::open(&config, Arc::new(catalog.clone())).unwrap();
        runtime().block_on(async {
            warehouse.ensure_tables().await.unwrap();
            // Two land calls per landing: the second lands the same rows again (a redelivery).
            for _ in 0..2 {
                let _ = warehouse.land(staged(&schema, landing, i == 0), Default::default()).await.unwrap();
            }
        });
        drop(warehouse);
        model_apply(&mut expected, landing);
        if i == 0 {
            first_landing_updated_at(&mut expected);
        }
        assert_state(&duckdb_state(&path), &expected, &format!("DuckDB after landing {i}"));
    }
    let patched = expected.values().filter(|r| !r.deleted && r.updated_at.is_some()).count();
    assert!(patched > 0, "some keys kept their first record's updated_at through the patches");
}

fn bigquery_endpoint() -> String {
    common::emulator_url("BIGQUERY_EMULATOR_HOST")
}

async fn bigquery_state(dataset: &str, table: &str) -> State {
    let sql = format!("SELECT {SELECT}, UNIX_MICROS(updated_at) FROM `{PROJECT}.{dataset}.{table}`");
    let text = |v: &Value| v.as_str().map(str::to_string);
    let number = |v: &Value| text(v).map(|s| s.parse::<i64>().unwrap());
    common::bigquery_rows(&bigquery_endpoint(), PROJECT, &sql)
        .await
        .iter()
        .map(|r| {
            let stored = Stored {
                version: number(&r[1]).unwrap(),
                deleted: text(&r[2]).as_deref() == Some("true"),
                columns: [text(&r[3]), text(&r[4]), text(&r[5])],
                updated_at: number(&r[6]),
            };
            (text(&r[0]).unwrap(), stored)
        })
        .collect()
}

#[test]
fn bigquery_patches_update_only_the_columns_a_record_carries_in_the_view_and_the_table() {
    runtime().block_on(async {
        let dataset = common::unique_name("t", "patch", '_');
        let catalog = patch_catalog();
        let schema = catalog.get(TABLE).unwrap().clone();
        let config = BigQueryConfig {
            project: Some(PROJECT.into()),
            dataset: dataset.clone(),
            endpoint: Some(bigquery_endpoint()),
            settle_margin_secs: SETTLE_SECS,
            append_timeout_secs: SETTLE_SECS - 1,
            ..Default::default()
        };
        // The table starts as a replace table, as an existing deployment's would: switching it to
        // patch adds `_bqsync_absent` to its landing table at the next start.
        let replace = BigQueryWarehouse::connect(&config, Arc::new(common::catalog())).await.unwrap();
        replace.ensure_tables().await.unwrap();
        drop(replace);
        let warehouse = BigQueryWarehouse::connect(&config, Arc::new(catalog)).await.unwrap();
        warehouse.ensure_tables().await.unwrap();
        let mut expected = State::new();
        for (i, landing) in workload(30, 11).iter().enumerate() {
            let _ = warehouse.land(staged(&schema, landing, i == 0), Default::default()).await.unwrap();
            if i == 1 {
                let sql = format!(
                    "SELECT COUNT(*) FROM `{PROJECT}.{dataset}._bqsync_landing_{TABLE}` WHERE ARRAY_LENGTH(_bqsync_absent) > 0"
                );
                let rows = common::bigquery_rows(&bigquery_endpoint(), PROJECT, &sql).await;
                assert_ne!(rows[0][0], "0", "the landing rows of patches name the columns they did not carry");
            }
            model_apply(&mut expected, landing);
            if i == 0 {
                first_landing_updated_at(&mut expected);
            }
            let live = bigquery_state(&dataset, &format!("{TABLE}_live")).await;
            assert_state(&live, &expected, &format!("{TABLE}_live after landing {i}, before its apply"));
            tokio::time::sleep(Duration::from_secs(SETTLE_SECS + 1)).await;
            warehouse.apply_all().await.unwrap();
            assert_state(&bigquery_state(&dataset, TABLE).await, &expected, &format!("{TABLE} after apply {i}"));
        }
    });
}

/// Through the binary: the JSONL source's records carry what their lines carry.
#[test]
fn jsonl_patches_keep_the_columns_a_line_does_not_name() {
    let project = Project::new("");
    let schema_path = project.path(&format!("schemas/{TABLE}.json"));
    let mut schema: Value = serde_json::from_str(&std::fs::read_to_string(&schema_path).unwrap()).unwrap();
    schema["upsert"] = "patch".into();
    std::fs::write(&schema_path, schema.to_string()).unwrap();
    project.append(
        &format!("inbox/{TABLE}/a.jsonl"),
        br#"{"contact_id":"k1","name":"Ann","email":"ann@x","phone":"+1","version":1}
{"contact_id":"k2","name":"Bob","email":"bob@x","phone":"+2","version":1}
"#,
    );
    project.run_until_drained(&[]);
    project.append(
        &format!("inbox/{TABLE}/b.jsonl"),
        br#"{"contact_id":"k1","email":"ann@y","version":2}
{"contact_id":"k2","phone":null,"version":2}
{"contact_id":"k1","version":3,"_deleted":true}
{"contact_id":"k1","name":"Ann again","version":4}
"#,
    );
    project.run_until_drained(&[]);
    let connection = project.warehouse();
    let row = |key: &str| -> (i64, bool, Option<String>, Option<String>, Option<String>) {
        connection
            .query_row(
                &format!("SELECT version, _bqsync_deleted, name, email, phone FROM {TABLE} WHERE contact_id = ?"),
                [key],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .unwrap()
    };
    // k1: the delete cleared the row, the patch after it set only the name.
    assert_eq!(row("k1"), (4, false, Some("Ann again".into()), None, None));
    // k2: an explicit null sets NULL; the columns the line did not name keep their values.
    assert_eq!(row("k2"), (2, false, Some("Bob".into()), Some("bob@x".into()), None));
}
