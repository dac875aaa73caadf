//! Append tables on DuckDB: a batch of new events goes straight into the table (Arrow appender, an
//! in-memory index of event-id hashes); any batch that may hold a stored event takes the exact SQL
//! path. Either way each event id is stored once, and both paths store the same values.

// The embedded bus and DuckDB: built with the `embedded` feature (the default).
#![cfg(feature = "embedded")]

use std::path::Path;
use std::sync::Arc;

use bqsync::envelope::Op;
use bqsync::schema::{Catalog, CellValue};
use bqsync::warehouse::duckdb::{DuckDbConfig, DuckDbWarehouse};
use bqsync::warehouse::{StagedRow, TableBatch, Warehouse};

fn catalog() -> Catalog {
    Catalog::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")).unwrap()
}

/// An atom whose values derive from `n`: text, score, tags (an empty list for every 5th) and time.
fn atom(n: u32) -> StagedRow {
    let tags = if n.is_multiple_of(5) { "[]".to_string() } else { format!("[\"t{n}\",\"x\"]") };
    StagedRow::whole(
        format!("e{n}"),
        Op::Insert,
        None,
        vec![
            CellValue::String(format!("e{n}")),
            CellValue::String(format!("ent-{}", n % 7)),
            if n.is_multiple_of(3) { CellValue::Null } else { CellValue::String("click".into()) },
            CellValue::String(format!("it's \"{n}\"")),
            CellValue::Float64(n as f64 / 4.0),
            CellValue::JsonText(tags),
            CellValue::Timestamp(1_700_000_000_000_000 + n as i64),
        ],
    )
}

/// The warehouse at `path`, with the default settings.
fn open_at(path: &Path) -> DuckDbWarehouse {
    DuckDbWarehouse::open(&DuckDbConfig { path: path.to_path_buf(), ..Default::default() }, Arc::new(catalog()))
        .unwrap()
}

fn batch(ids: impl IntoIterator<Item = u32>) -> Arc<Vec<TableBatch>> {
    Arc::new(vec![TableBatch { table: "atoms".into(), rows: ids.into_iter().map(atom).collect() }])
}

fn land(warehouse: &DuckDbWarehouse, ids: impl IntoIterator<Item = u32>) -> u64 {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        warehouse.ensure_tables().await.unwrap();
        let (_, stats) = warehouse.land(batch(ids), Default::default()).await.unwrap();
        stats.iter().map(|(_, s)| s.rows_changed).sum()
    })
}

/// Every stored atom as text, ordered by event id; panics on a duplicate.
fn stored(path: &Path) -> Vec<String> {
    let connection = duckdb::Connection::open(path).unwrap();
    let mut statement = connection
        .prepare(
            "SELECT concat_ws('|', event_id, entity_id, kind, text, score, tags::VARCHAR, created_at,
                     _bqsync_event_id, _bqsync_version, _bqsync_deleted, _bqsync_landed_at IS NOT NULL)
             FROM atoms ORDER BY event_id",
        )
        .unwrap();
    let rows: Vec<String> = statement.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
    let mut ids: Vec<&str> = rows.iter().map(|r| r.split('|').next().unwrap()).collect();
    ids.dedup();
    assert_eq!(ids.len(), rows.len(), "an event id is stored twice");
    rows
}

fn expected(ids: impl IntoIterator<Item = u32>) -> Vec<String> {
    // Landed once through the SQL path only (no index), as the reference.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reference.duckdb");
    let config = DuckDbConfig { path: path.clone(), event_index_max_rows: 0, ..Default::default() };
    let warehouse = DuckDbWarehouse::open(&config, Arc::new(catalog())).unwrap();
    land(&warehouse, ids);
    drop(warehouse);
    stored(&path)
}

#[test]
fn appends_land_each_event_once_whichever_path_they_take() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.duckdb");
    let config = DuckDbConfig { path: path.clone(), ..Default::default() };
    let warehouse = DuckDbWarehouse::open(&config, Arc::new(catalog())).unwrap();
    assert_eq!(land(&warehouse, 0..100), 100, "new events: the direct append");
    assert_eq!(land(&warehouse, 0..100), 0, "a redelivery: nothing new");
    assert_eq!(land(&warehouse, 50..150), 50, "half stored: only the new half");
    assert_eq!(land(&warehouse, [150, 151, 150, 152]), 3, "an id twice in one batch lands once");
    assert_eq!(land(&warehouse, 153..160), 7, "after the exact path, new events append again");
    drop(warehouse);
    // A new process loads the index from the table: a redelivery after a restart is still a no-op.
    let warehouse = DuckDbWarehouse::open(&config, Arc::new(catalog())).unwrap();
    assert_eq!(land(&warehouse, 140..170), 10);
    drop(warehouse);
    // The same values as the SQL path stores (lists, NULLs, quotes, times, system columns).
    assert_eq!(stored(&path), expected(0..170));
}

#[test]
fn tables_above_the_index_limit_deduplicate_in_sql() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.duckdb");
    let config = DuckDbConfig { path: path.clone(), event_index_max_rows: 10, ..Default::default() };
    let warehouse = DuckDbWarehouse::open(&config, Arc::new(catalog())).unwrap();
    assert_eq!(land(&warehouse, 0..20), 20);
    drop(warehouse);
    // 20 rows > 10: this process keeps the SQL path for atoms, with the same result.
    let warehouse = DuckDbWarehouse::open(&config, Arc::new(catalog())).unwrap();
    assert_eq!(land(&warehouse, 10..30), 10);
    assert_eq!(land(&warehouse, 10..30), 0);
    drop(warehouse);
    assert_eq!(stored(&path), expected(0..30));
}

/// A direct append of more rows than one DuckDB vector (2,048) goes to the appender one vector at a
/// time; the rows of every chunk, lists included, are stored as the SQL path stores them.
#[test]
fn a_direct_append_of_many_vectors_stores_every_list_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.duckdb");
    let warehouse = open_at(&path);
    assert_eq!(land(&warehouse, 0..5000), 5000, "the direct append");
    drop(warehouse);
    let connection = duckdb::Connection::open(&path).unwrap();
    let elements: i64 = connection.query_row("SELECT sum(len(tags)) FROM atoms", [], |r| r.get(0)).unwrap();
    assert_eq!(elements, 2 * 4000, "two tags on each atom but every 5th");
    drop(connection);
    assert_eq!(stored(&path), expected(0..5000));
}

/// Whether the file's `_bqsync_event_id` of atoms is computed (a virtual column) rather than stored.
fn event_id_is_computed(path: &Path) -> bool {
    let connection = duckdb::Connection::open(path).unwrap();
    connection
        .query_row(
            "SELECT column_default IS NOT NULL FROM duckdb_columns() WHERE table_name = 'atoms' AND column_name = '_bqsync_event_id'",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

/// A new atoms table computes its event id from `event_id`; one created before that (which stores
/// it) keeps storing it, on both paths, with the same values.
#[test]
fn a_table_that_stores_its_event_id_keeps_storing_it() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("fresh.duckdb");
    let warehouse = open_at(&fresh);
    land(&warehouse, 0..10);
    drop(warehouse);
    assert!(event_id_is_computed(&fresh));

    let old = dir.path().join("old.duckdb");
    duckdb::Connection::open(&old)
        .unwrap()
        .execute_batch(
            "CREATE TABLE atoms (event_id VARCHAR, entity_id VARCHAR, kind VARCHAR, text VARCHAR, score DOUBLE,
               tags VARCHAR[], created_at TIMESTAMP, _bqsync_event_id VARCHAR NOT NULL, _bqsync_version BIGINT,
               _bqsync_deleted BOOLEAN NOT NULL DEFAULT false, _bqsync_landed_at TIMESTAMP NOT NULL)",
        )
        .unwrap();
    let warehouse = open_at(&old);
    assert_eq!(land(&warehouse, 0..100), 100, "the direct append");
    assert_eq!(land(&warehouse, 50..150), 50, "the SQL path");
    drop(warehouse);
    assert!(!event_id_is_computed(&old));
    assert_eq!(stored(&old), expected(0..150));
}

/// The worker gives each atom its `event_id` field as its id; should a row whose id differs reach the
/// landing anyway, it fails rather than storing a row under an id that is not its own.
#[test]
fn a_row_whose_id_differs_from_its_id_column_is_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.duckdb");
    let warehouse = open_at(&path);
    let mut row = atom(1);
    row.event_id = "not-e1".into();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let result = runtime.block_on(async {
        warehouse.ensure_tables().await.unwrap();
        warehouse
            .land(Arc::new(vec![TableBatch { table: "atoms".into(), rows: vec![atom(0), row] }]), Default::default())
            .await
    });
    let error = result.expect_err("the landing fails").error.to_string();
    assert!(error.contains("not-e1") && error.contains("`event_id`"), "{error}");
    drop(warehouse);
    assert!(stored(&path).is_empty(), "nothing of the batch is stored");
}

/// The number of row groups of the file's atoms table.
fn atoms_row_groups(path: &Path) -> i64 {
    let connection = duckdb::Connection::open(path).unwrap();
    connection
        .query_row("SELECT count(DISTINCT row_group_id) FROM pragma_storage_info('atoms')", [], |r| r.get(0))
        .unwrap()
}

/// A process that appended less than a row group vacuums on close: one-shot runs from cron, each
/// landing a few rows, do not leave a small row group each.
#[test]
fn small_runs_merge_their_row_groups_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.duckdb");
    let config = DuckDbConfig { path: path.clone(), ..Default::default() };
    for run in 0..4 {
        let warehouse = DuckDbWarehouse::open(&config, Arc::new(catalog())).unwrap();
        assert_eq!(land(&warehouse, run * 100..(run + 1) * 100), 100);
        drop(warehouse);
    }
    assert_eq!(atoms_row_groups(&path), 1, "four runs of 100 rows in one row group");
    assert_eq!(stored(&path), expected(0..400));
}

/// DuckDB's `max_vacuum_tasks` as the warehouse's connection has it.
fn vacuum_tasks(warehouse: &DuckDbWarehouse) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let result = runtime.block_on(warehouse.query_read_only("SELECT current_setting('max_vacuum_tasks')::VARCHAR"));
    result.unwrap().rows[0][0].as_str().unwrap().to_string()
}

/// A contact (an upsert, whose `MERGE` may delete rows) with one atom, in one landing.
fn land_a_contact_and_an_atom(warehouse: &DuckDbWarehouse, atom_id: u32) {
    let contact = StagedRow::whole(
        format!("c{atom_id}"),
        Op::Upsert,
        Some(1),
        vec![
            CellValue::String(format!("c-{atom_id}")),
            CellValue::String("A".into()),
            CellValue::Null,
            CellValue::Null,
            CellValue::Null,
            CellValue::Int64(1),
        ],
    );
    let batches = vec![
        TableBatch { table: "atoms".into(), rows: vec![atom(atom_id)] },
        TableBatch { table: "contacts_master".into(), rows: vec![contact] },
    ];
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (_committed, stats) = runtime.block_on(async {
        warehouse.ensure_tables().await.unwrap();
        warehouse.land(Arc::new(batches), Default::default()).await.unwrap()
    });
    assert_eq!(stats.len(), 2, "both tables landed");
}

/// A commit of appends alone does not vacuum in the checkpoint it may trigger. From a commit with an
/// upsert on, commits vacuum until a checkpoint has run.
#[test]
fn appends_alone_skip_vacuuming_until_an_upsert_waits_for_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let config = DuckDbConfig { path: dir.path().join("w.duckdb"), ..Default::default() };
    let warehouse = DuckDbWarehouse::open(&config, Arc::new(catalog())).unwrap();
    assert_eq!(vacuum_tasks(&warehouse), "100", "DuckDB's default until a landing");
    land(&warehouse, 0..10);
    assert_eq!(vacuum_tasks(&warehouse), "0", "after appends alone");
    land_a_contact_and_an_atom(&warehouse, 10);
    assert_eq!(vacuum_tasks(&warehouse), "100", "after a landing with an upsert");
    land(&warehouse, 11..20);
    assert_eq!(vacuum_tasks(&warehouse), "100", "no checkpoint yet (64MB of WAL): its deletes wait for one");
    drop(warehouse);

    // With a checkpoint on (almost) every commit, one soon vacuums the upsert's deletes, and appends
    // go back to not vacuuming.
    let config = DuckDbConfig {
        path: dir.path().join("small_wal.duckdb"),
        checkpoint_threshold: "1KB".into(),
        ..Default::default()
    };
    let warehouse = DuckDbWarehouse::open(&config, Arc::new(catalog())).unwrap();
    land_a_contact_and_an_atom(&warehouse, 0);
    assert_eq!(vacuum_tasks(&warehouse), "100");
    let landings_to_a_checkpoint = (1..=3)
        .position(|n| {
            land(&warehouse, n * 10..(n + 1) * 10);
            vacuum_tasks(&warehouse) == "0"
        })
        .expect("a checkpoint after the upsert vacuumed");
    assert!(landings_to_a_checkpoint <= 1, "{landings_to_a_checkpoint}");
}
