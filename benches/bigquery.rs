//! BigQuery landing benchmark on the emulator: rows per second and query jobs per 100,000 events.
//! Run with `scripts/bench_bigquery.sh` (starts the emulator). Prints a Markdown table.
//!
//! - bqsync: 10,000 events through `BigQueryWarehouse::land` (Storage Write API appends to the
//!   landing table) in flushes of 10,000 and 1,000 rows, then one apply (a transaction). The append
//!   rate and the apply time are shown apart: in service the apply runs once per interval, however
//!   many flushes came.
//! - the old landing's streaming step: the same rows with `tabledata.insertAll` in chunks of 500 into
//!   a table of the same columns (what every flush did before, plus a create, a query job and a drop).
//! - the seeds' way: one `MERGE … USING (SELECT <literals>)` query per record, timed on 100 records.
//!
//! The emulator is single-threaded Python over DuckDB (its Storage Write API ends in the same
//! insert code as its insertAll): absolute rates are the emulator's, the ratios are the point.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bqsync::envelope::Op;
use bqsync::schema::{Catalog, CellValue, TableSchema};
use bqsync::warehouse::bigquery::{BigQueryConfig, BigQueryWarehouse};
use bqsync::warehouse::{StagedRow, TableBatch, Warehouse};

const EVENTS: usize = 10_000;
const SEED_RECORDS: usize = 100;
const PROJECT: &str = "bqsync-test";
const SETTLE_SECS: u64 = 16;

struct Row {
    case: String,
    rows: usize,
    seconds: f64,
    apply_seconds: Option<f64>,
    jobs: u64,
}

fn config(endpoint: &str, dataset: &str) -> BigQueryConfig {
    BigQueryConfig {
        project: Some(PROJECT.into()),
        dataset: dataset.into(),
        endpoint: Some(endpoint.into()),
        // An emulator append of 10,000 rows takes seconds: room for it, and the wait before the apply.
        settle_margin_secs: SETTLE_SECS,
        append_timeout_secs: SETTLE_SECS - 1,
        ..Default::default()
    }
}

fn main() {
    let endpoint =
        std::env::var("BIGQUERY_EMULATOR_HOST").expect("BIGQUERY_EMULATOR_HOST: run scripts/bench_bigquery.sh");
    let endpoint = if endpoint.contains("://") { endpoint } else { format!("http://{endpoint}") };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let catalog = common::catalog();
    let mut rows = Vec::new();
    for (table, flush) in [("atoms", 10_000), ("atoms", 1_000), ("contacts_master", 10_000), ("contacts_master", 1_000)]
    {
        let schema = catalog.get(table).unwrap().clone();
        let dataset = format!("bench_{}_{table}_{flush}", std::process::id());
        let events: Vec<StagedRow> = (0..EVENTS).map(|i| event(&schema, i)).collect();
        let row = runtime.block_on(async {
            let config = config(&endpoint, &dataset);
            let warehouse =
                BigQueryWarehouse::connect(&config, Arc::new(Catalog::from_tables([schema.clone()]))).await.unwrap();
            warehouse.ensure_tables().await.unwrap();
            let started = Instant::now();
            for chunk in events.chunks(flush) {
                let batch = Arc::new(vec![TableBatch { table: table.into(), rows: chunk.to_vec() }]);
                let _proof = warehouse.land(batch, bqsync::bus::Receipts::default()).await.unwrap();
            }
            let seconds = started.elapsed().as_secs_f64();
            tokio::time::sleep(Duration::from_secs(SETTLE_SECS + 1)).await;
            let applying = Instant::now();
            let report = warehouse.apply_table(&schema, Duration::ZERO).await.unwrap();
            let apply_seconds = applying.elapsed().as_secs_f64();
            assert_eq!(report.outcome, bqsync::warehouse::bigquery::applier::ApplyOutcome::Applied);
            let want = if table == "atoms" { EVENTS as u64 } else { 2_000 };
            assert_eq!(report.rows, want, "every row applied once");
            let jobs = warehouse.counters().query_jobs;
            Row {
                case: format!("bqsync {table}: Storage Write, flushes of {flush}"),
                rows: EVENTS,
                seconds,
                apply_seconds: Some(apply_seconds),
                jobs,
            }
        });
        eprintln!("{} done in {:.1} s", row.case, row.seconds);
        rows.push(row);
    }
    rows.push(runtime.block_on(insert_all_way(&endpoint, &catalog)));
    rows.push(runtime.block_on(seeds_way(&endpoint, &catalog)));

    println!("| case | events | landing wall s | events/s | apply s | query jobs per 100k events |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.1} | {:.0} | {} | {:.0} |",
            r.case,
            r.rows,
            r.seconds,
            r.rows as f64 / r.seconds,
            r.apply_seconds.map_or("–".to_string(), |s| format!("{s:.1}")),
            r.jobs as f64 * 100_000.0 / r.rows as f64
        );
    }
}

/// The old landing's streaming step: insertAll in chunks of 500 (insertId = event id). The old
/// path also ran one query job per table and flush; at flushes of 1,000 that is 100 per 100k events.
async fn insert_all_way(endpoint: &str, catalog: &Catalog) -> Row {
    use gcp_bigquery_client::model::table_data_insert_all_request::TableDataInsertAllRequest;
    use gcp_bigquery_client::model::table_data_insert_all_request_rows::TableDataInsertAllRequestRows;
    let schema = catalog.get("atoms").unwrap().clone();
    let dataset = format!("bench_{}_insertall", std::process::id());
    let warehouse =
        BigQueryWarehouse::connect(&config(endpoint, &dataset), Arc::new(Catalog::from_tables([schema.clone()])))
            .await
            .unwrap();
    warehouse.ensure_tables().await.unwrap();
    let client = common::bigquery_client(endpoint).await;
    let events: Vec<StagedRow> = (0..EVENTS).map(|i| event(&schema, i)).collect();
    let started = Instant::now();
    for chunk in events.chunks(500) {
        let mut request = TableDataInsertAllRequest::new();
        let rows = chunk
            .iter()
            .map(|row| {
                let mut json = bqsync::warehouse::bigquery::payload_json(&schema, row, true);
                json.insert("_bqsync_event_id".into(), row.event_id.clone().into());
                json.insert("_bqsync_deleted".into(), false.into());
                json.insert("_bqsync_landed_at".into(), "2024-01-01T00:00:00Z".into());
                TableDataInsertAllRequestRows {
                    insert_id: Some(row.event_id.clone()),
                    json: serde_json::Value::Object(json),
                }
            })
            .collect();
        request.add_rows(rows).unwrap();
        client.tabledata().insert_all(PROJECT, &dataset, "atoms", request).await.unwrap();
    }
    Row {
        case: "old landing's insertAll step, chunks of 500 (atoms)".into(),
        rows: EVENTS,
        seconds: started.elapsed().as_secs_f64(),
        apply_seconds: None,
        jobs: (EVENTS / 1_000) as u64,
    }
}

/// One event of `schema`: atoms are unique inserts, contacts 10,000 versions over 2,000 keys.
fn event(schema: &TableSchema, i: usize) -> StagedRow {
    let upsert = schema.table == "contacts_master";
    let cells = schema
        .columns
        .iter()
        .map(|c| match c.name.as_str() {
            "event_id" => CellValue::String(format!("a{i}")),
            "entity_id" => CellValue::String(format!("ent-{}", i % 100)),
            "kind" => CellValue::String("click".into()),
            "text" => CellValue::String(format!("line {i}")),
            "score" => CellValue::Float64(i as f64 * 0.5),
            "tags" => CellValue::JsonText("[\"red\",\"eu\"]".into()),
            "created_at" => CellValue::Timestamp(1_704_067_200_000_000 + (i as i64 % 5) * 86_400_000_000),
            "contact_id" => CellValue::String(format!("c{}", i % 2000)),
            "name" => CellValue::String(format!("N {i}")),
            "email" => CellValue::String(format!("u{i}@example.com")),
            "version" => CellValue::Int64(i as i64),
            _ => CellValue::Null,
        })
        .collect();
    StagedRow {
        event_id: if upsert { format!("c{}@{i}", i % 2000) } else { format!("a{i}") },
        op: if upsert { Op::Upsert } else { Op::Insert },
        version: upsert.then_some(i as i64),
        cells,
        absent: Vec::new(),
    }
}

/// The seeds' scripts: one MERGE query per record, literals in the SQL, no batching.
async fn seeds_way(endpoint: &str, catalog: &Catalog) -> Row {
    use gcp_bigquery_client::model::query_request::QueryRequest;
    let schema = catalog.get("contacts_master").unwrap().clone();
    let dataset = format!("bench_{}_seeds", std::process::id());
    let warehouse = BigQueryWarehouse::connect(&config(endpoint, &dataset), Arc::new(Catalog::from_tables([schema])))
        .await
        .unwrap();
    warehouse.ensure_tables().await.unwrap();
    let client = gcp_bigquery_client::client_builder::ClientBuilder::new()
        .with_v2_base_url(format!("{endpoint}/bigquery/v2"))
        .build_from_authenticator(Arc::new(bqsync::warehouse::bigquery::EmulatorToken))
        .await
        .unwrap();
    let started = Instant::now();
    for i in 0..SEED_RECORDS {
        let sql = format!(
            "MERGE `{PROJECT}.{dataset}.contacts_master` t USING (SELECT 'c{key}' AS contact_id, 'N {i}' AS name, \
             'u{i}@example.com' AS email, {i} AS version) s ON t.contact_id = s.contact_id \
             WHEN MATCHED THEN UPDATE SET name = s.name, email = s.email, version = s.version \
             WHEN NOT MATCHED THEN INSERT (contact_id, name, email, version, _bqsync_event_id, _bqsync_deleted, _bqsync_landed_at) \
             VALUES (s.contact_id, s.name, s.email, s.version, 'e{i}', FALSE, CURRENT_TIMESTAMP())",
            key = i % 2000
        );
        client.job().query(PROJECT, QueryRequest::new(sql)).await.unwrap();
    }
    let seconds = started.elapsed().as_secs_f64();
    Row {
        case: format!("seeds' way: one MERGE per record ({SEED_RECORDS} timed)"),
        rows: SEED_RECORDS,
        seconds,
        apply_seconds: None,
        jobs: SEED_RECORDS as u64,
    }
}
