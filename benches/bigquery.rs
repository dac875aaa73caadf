//! BigQuery landing benchmark on the emulator: rows per second and BigQuery requests per 10,000
//! events, bqsync's batched landing next to the seeds' way (one MERGE job per record). Run with
//! `scripts/bench_bigquery.sh` (starts the emulator). Prints a Markdown table.
//!
//! bqsync cases land 10,000 events through `BigQueryWarehouse::land` in flushes of 10,000 and of
//! 1,000 rows (append: insert-if-absent; upsert: 10,000 versions over 2,000 keys, MERGE). The seeds'
//! case sends one `MERGE … USING (SELECT <literals>)` query per record, as their scripts did; it is
//! timed on 500 records (it is linear in them) and its rate is what the table shows. The emulator
//! is single-threaded Python over DuckDB: absolute rates are the emulator's, the ratio is the point.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Instant;

use bqsync::envelope::Op;
use bqsync::schema::{Catalog, CellValue, TableSchema};
use bqsync::warehouse::bigquery::{BigQueryConfig, BigQueryWarehouse};
use bqsync::warehouse::{StagedRow, TableBatch, Warehouse};

const EVENTS: usize = 10_000;
const SEED_RECORDS: usize = 500;
const PROJECT: &str = "bqsync-test";

struct Row {
    case: String,
    rows: usize,
    seconds: f64,
    jobs: u64,
    requests: u64,
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
        let config = BigQueryConfig {
            project: Some(PROJECT.into()),
            dataset: dataset.clone(),
            endpoint: Some(endpoint.clone()),
            ..Default::default()
        };
        let events: Vec<StagedRow> = (0..EVENTS).map(|i| event(&schema, i)).collect();
        let row = runtime.block_on(async {
            let warehouse =
                BigQueryWarehouse::connect(&config, Arc::new(Catalog::from_tables([schema.clone()]))).await.unwrap();
            warehouse.ensure_tables().await.unwrap();
            let before = warehouse.counters();
            let started = Instant::now();
            for chunk in events.chunks(flush) {
                let batch = Arc::new(vec![TableBatch { table: table.into(), rows: chunk.to_vec() }]);
                let _proof = warehouse.land(batch, bqsync::bus::Receipts::default()).await.unwrap();
            }
            let seconds = started.elapsed().as_secs_f64();
            let after = warehouse.counters();
            let jobs = after.query_jobs - before.query_jobs;
            let requests =
                jobs + (after.insert_all_requests - before.insert_all_requests) + (after.dry_runs - before.dry_runs);
            Row { case: format!("bqsync {table}, flushes of {flush}"), rows: EVENTS, seconds, jobs, requests }
        });
        eprintln!("{} done in {:.1} s", row.case, row.seconds);
        rows.push(row);
    }
    rows.push(runtime.block_on(seeds_way(&endpoint, &catalog)));

    println!("| case | events | wall s | events/s | query jobs per 10k events | requests per 10k events |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in &rows {
        let per_10k = |n: u64| n as f64 * 10_000.0 / r.rows as f64;
        println!(
            "| {} | {} | {:.1} | {:.0} | {:.0} | {:.0} |",
            r.case,
            r.rows,
            r.seconds,
            r.rows as f64 / r.seconds,
            per_10k(r.jobs),
            per_10k(r.requests)
        );
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
    }
}

/// The seeds' scripts: one MERGE query per record, literals in the SQL, no batching.
async fn seeds_way(endpoint: &str, catalog: &Catalog) -> Row {
    use gcp_bigquery_client::model::query_request::QueryRequest;
    let schema = catalog.get("contacts_master").unwrap().clone();
    let dataset = format!("bench_{}_seeds", std::process::id());
    let config = BigQueryConfig {
        project: Some(PROJECT.into()),
        dataset: dataset.clone(),
        endpoint: Some(endpoint.into()),
        ..Default::default()
    };
    let warehouse = BigQueryWarehouse::connect(&config, Arc::new(Catalog::from_tables([schema]))).await.unwrap();
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
        jobs: SEED_RECORDS as u64,
        requests: SEED_RECORDS as u64,
    }
}
