//! The BigQuery warehouse against the BigQuery emulator (`local-bigquery`, started by
//! `scripts/test.sh`, which exports BIGQUERY_EMULATOR_HOST): appends through its Storage Write API
//! (gRPC on the REST port + 10), applies as multi-statement transactions. Each test uses a dataset
//! of its own. Without an emulator these tests fail; they never skip.

// The embedded default beside the Google backends: built with both features (the default).
#![cfg(all(feature = "embedded", feature = "gcp"))]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bqsync::envelope::Op;
use bqsync::schema::{Catalog, CellValue, ColumnType, TableSchema};
use bqsync::warehouse::bigquery::{BigQueryConfig, BigQueryWarehouse};
use bqsync::warehouse::{StagedRow, TableBatch, Warehouse};
use common::{signal, wait_exit, OwnBigQuery, Project};
use serde_json::Value;

const PROJECT: &str = "bqsync-test";
const SETTLE_SECS: u64 = 6;

fn endpoint() -> String {
    common::emulator_url("BIGQUERY_EMULATOR_HOST")
}

fn unique_dataset(test: &str) -> String {
    common::unique_name("t", test, '_')
}

fn catalog() -> Catalog {
    common::catalog()
}

fn config(dataset: &str) -> BigQueryConfig {
    BigQueryConfig {
        project: Some(PROJECT.into()),
        dataset: dataset.into(),
        endpoint: Some(endpoint()),
        // Short, so tests need not wait half a minute before applying (the emulator is local).
        settle_margin_secs: SETTLE_SECS,
        append_timeout_secs: SETTLE_SECS - 1,
        ..Default::default()
    }
}

async fn warehouse(config: &BigQueryConfig, catalog: Catalog) -> BigQueryWarehouse {
    let warehouse = BigQueryWarehouse::connect(config, Arc::new(catalog)).await.unwrap();
    warehouse.ensure_tables().await.unwrap();
    warehouse
}

async fn client() -> gcp_bigquery_client::Client {
    common::bigquery_client(&endpoint()).await
}

async fn query(sql: &str) -> Vec<Vec<Value>> {
    common::bigquery_rows(&endpoint(), PROJECT, sql).await
}

async fn query_i64(sql: &str) -> i64 {
    match &query(sql).await[0][0] {
        Value::String(s) => s.parse().unwrap(),
        other => panic!("{sql}: not a number: {other}"),
    }
}

fn text(value: &Value) -> Option<String> {
    value.as_str().map(str::to_string)
}

fn atom(schema: &TableSchema, id: &str, day: i64) -> StagedRow {
    let cells = schema
        .columns
        .iter()
        .map(|c| match c.name.as_str() {
            "event_id" => CellValue::String(id.into()),
            "entity_id" => CellValue::String(format!("ent-{id}")),
            "kind" => CellValue::String("click".into()),
            "score" => CellValue::Float64(0.5),
            "tags" => CellValue::JsonText("[\"a\"]".into()),
            "created_at" => CellValue::Timestamp(1_704_067_200_000_000 + day * 86_400_000_000),
            _ => CellValue::Null,
        })
        .collect();
    StagedRow::whole(id.into(), Op::Insert, None, cells)
}

fn contact(schema: &TableSchema, key: &str, version: i64, email: Option<&str>, deleted: bool) -> StagedRow {
    common::staged_contact(schema, key, version, email, deleted)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn land(rows: Vec<StagedRow>, table: &str) -> Arc<Vec<TableBatch>> {
    Arc::new(vec![TableBatch { table: table.into(), rows }])
}

/// Waits out the settle margin, then applies every table now.
async fn apply(warehouse: &BigQueryWarehouse) -> Vec<bqsync::warehouse::bigquery::applier::ApplyReport> {
    tokio::time::sleep(Duration::from_secs(SETTLE_SECS + 1)).await;
    warehouse.apply_all().await.unwrap()
}

fn applied_rows(reports: &[bqsync::warehouse::bigquery::applier::ApplyReport], table: &str) -> u64 {
    reports.iter().find(|r| r.table == table).map(|r| r.rows).unwrap()
}

async fn table_names(dataset: &str) -> Vec<String> {
    common::bigquery_table_names(&endpoint(), PROJECT, dataset).await
}

/// The same batch appended twice (a redelivery, a worker killed between append and ack) is applied
/// once; the live view shows the rows before any apply; an apply run again on the same window
/// changes nothing; nothing is created per flush, and the apply job carries maximumBytesBilled.
#[test]
fn a_batch_appended_twice_applies_once_and_the_live_view_shows_it_before_the_apply() {
    runtime().block_on(async {
        let dataset = unique_dataset("twice");
        let catalog = catalog();
        let atoms_schema = catalog.get("atoms").unwrap().clone();
        let contacts_schema = catalog.get("contacts_master").unwrap().clone();
        let warehouse = warehouse(&config(&dataset), catalog).await;
        let after_setup = table_names(&dataset).await;
        assert!(after_setup.contains(&"_bqsync_landing_atoms".to_string()), "{after_setup:?}");
        assert!(
            after_setup.contains(&"atoms_live".to_string())
                && after_setup.contains(&"contacts_master_current".to_string()),
            "{after_setup:?}"
        );
        let atoms: Vec<StagedRow> = (0..300).map(|i| atom(&atoms_schema, &format!("a{i}"), i % 3)).collect();
        let contacts: Vec<StagedRow> =
            (0..200).map(|i| contact(&contacts_schema, &format!("k{}", i % 50), i, Some("e@x"), false)).collect();
        let batches = Arc::new(vec![
            TableBatch { table: "atoms".into(), rows: atoms.clone() },
            TableBatch { table: "contacts_master".into(), rows: contacts },
        ]);
        for _ in 0..2 {
            let (_, stats) = warehouse.land(batches.clone(), bqsync::bus::Receipts::default()).await.unwrap();
            assert_eq!(stats[0].1.rows_offered, 300, "{stats:?}");
        }
        let path = |t: &str| format!("`{PROJECT}.{dataset}.{t}`");
        assert_eq!(
            query_i64(&format!("SELECT COUNT(*) FROM {}", path("_bqsync_landing_atoms"))).await,
            600,
            "appended twice"
        );
        assert_eq!(query_i64(&format!("SELECT COUNT(*) FROM {}", path("atoms"))).await, 0, "not applied yet");
        assert_eq!(
            query_i64(&format!("SELECT COUNT(*) FROM {}", path("atoms_live"))).await,
            300,
            "fresh and deduplicated"
        );
        assert_eq!(query_i64(&format!("SELECT COUNT(*) FROM {}", path("contacts_master_current"))).await, 50);
        assert_eq!(query_i64(&format!("SELECT MIN(version) FROM {}", path("contacts_master_live"))).await, 150);

        let reports = apply(&warehouse).await;
        assert_eq!(applied_rows(&reports, "atoms"), 300, "{reports:?}");
        assert_eq!(applied_rows(&reports, "contacts_master"), 50, "{reports:?}");
        assert_eq!(query_i64(&format!("SELECT COUNT(DISTINCT _bqsync_event_id) FROM {}", path("atoms"))).await, 300);
        assert_eq!(query_i64(&format!("SELECT COUNT(*) FROM {}", path("atoms"))).await, 300);
        assert_eq!(query_i64(&format!("SELECT MIN(version) FROM {}", path("contacts_master"))).await, 150);
        assert_eq!(query_i64(&format!("SELECT COUNT(*) FROM {}", path("atoms_live"))).await, 300, "no double count");

        // The same batch once more after the apply, then the apply again: nothing changes.
        let _ = warehouse.land(batches.clone(), bqsync::bus::Receipts::default()).await.unwrap();
        assert_eq!(query_i64(&format!("SELECT COUNT(*) FROM {}", path("atoms_live"))).await, 300);
        let again = apply(&warehouse).await;
        assert!(again.iter().all(|r| r.rows == 0), "{again:?}");
        assert_eq!(query_i64(&format!("SELECT COUNT(*) FROM {}", path("atoms"))).await, 300);
        assert_eq!(query_i64(&format!("SELECT COUNT(*) FROM {}", path("contacts_master"))).await, 50);

        // The apply job carried maximumBytesBilled; no table was created after set-up.
        let job = client().await.job().get_job(PROJECT, &reports[0].job_id, Some("US")).await.unwrap();
        let query_config = job.configuration.unwrap().query.unwrap();
        assert_eq!(query_config.maximum_bytes_billed.as_deref(), Some("10737418240"));
        assert!(query_config.query.contains("BEGIN TRANSACTION"), "one transaction");
        assert_eq!(table_names(&dataset).await, after_setup, "nothing created or dropped per flush");
        let counters = warehouse.counters();
        assert_eq!(counters.rows_appended, 1500, "{counters:?}");
    });
}

/// An applier whose view of the watermark is stale (another applier committed meanwhile) is rolled
/// back whole by the compare-and-set: its inserts are undone, the watermark stays.
#[test]
fn an_apply_that_lost_the_race_rolls_back_whole() {
    runtime().block_on(async {
        let dataset = unique_dataset("race");
        let catalog = catalog();
        let atoms_schema = catalog.get("atoms").unwrap().clone();
        let warehouse = warehouse(&config(&dataset), catalog).await;
        let rows: Vec<StagedRow> = (0..50).map(|i| atom(&atoms_schema, &format!("r{i}"), 0)).collect();
        let _ = warehouse.land(land(rows, "atoms"), bqsync::bus::Receipts::default()).await.unwrap();
        let first = apply(&warehouse).await;
        assert_eq!(applied_rows(&first, "atoms"), 50);
        let path = |t: &str| format!("`{PROJECT}.{dataset}.{t}`");
        let watermark = query_i64(&format!(
            "SELECT UNIX_MICROS(watermark) FROM {} WHERE table_name = 'atoms'",
            path("_bqsync_apply_state")
        ))
        .await;
        query(&format!("DELETE FROM {} WHERE TRUE", path("atoms"))).await;
        // The same window applied again by an applier that read the old watermark (the epoch).
        let window = bqsync::warehouse::bigquery::apply_sql::ApplyWindow {
            target: &path("atoms"),
            landing: &path("_bqsync_landing_atoms"),
            state: &path("_bqsync_apply_state"),
            settle_margin_secs: SETTLE_SECS,
            min_gap_ms: 0,
            dedup_window_days: 0,
            job_id: "stale",
            staged: &[],
        };
        let script = bqsync::warehouse::bigquery::apply_sql::apply_script(&atoms_schema, &window).replacen(
            &format!(
                "DECLARE lo TIMESTAMP DEFAULT (SELECT MAX(watermark) FROM {} WHERE table_name = 'atoms');",
                path("_bqsync_apply_state")
            ),
            "DECLARE lo TIMESTAMP DEFAULT TIMESTAMP_MICROS(0);",
            1,
        );
        assert!(script.starts_with("DECLARE lo TIMESTAMP DEFAULT TIMESTAMP_MICROS(0);"), "{script}");
        let mut request = gcp_bigquery_client::model::query_request::QueryRequest::new(script);
        request.use_legacy_sql = false;
        let error = client().await.job().query(PROJECT, request).await.unwrap_err().to_string();
        assert!(error.contains("the watermark of atoms moved"), "{error}");
        assert_eq!(
            query_i64(&format!("SELECT COUNT(*) FROM {}", path("atoms"))).await,
            0,
            "its insert was rolled back"
        );
        let after = query_i64(&format!(
            "SELECT UNIX_MICROS(watermark) FROM {} WHERE table_name = 'atoms'",
            path("_bqsync_apply_state")
        ))
        .await;
        assert_eq!(after, watermark);
    });
}

/// 40,000 upserts and deletes over 10,000 keys, shuffled and landed in 20 batches, applied in two
/// windows (each key's versions spread over both, older after newer): the table ends at the highest
/// version per key, tombstones for keys whose highest version is a delete.
#[test]
fn shuffled_upserts_converge_to_the_highest_version_per_key() {
    runtime().block_on(async {
        let dataset = unique_dataset("shuffled");
        let catalog = catalog();
        let schema = catalog.get("contacts_master").unwrap().clone();
        let warehouse = warehouse(&config(&dataset), catalog).await;
        let mut rng = fastrand::Rng::with_seed(42);
        let (events, keys) = (40_000usize, 10_000usize);
        let mut rows = Vec::with_capacity(events);
        let mut best: std::collections::HashMap<String, (i64, bool, String)> = Default::default();
        for i in 0..events {
            let key = format!("c{:05}", if i < keys { i } else { rng.usize(0..keys) });
            let version = rng.i64(1..1_000_000);
            let deleted = rng.u8(0..100) < 3;
            let email = format!("u{version}@x");
            // Equal versions: a delete wins, then the larger event id (same rule as the SQL).
            let candidate = (version, deleted, format!("{key}@{version}"));
            let entry = best.entry(key.clone()).or_insert((i64::MIN, false, String::new()));
            if (candidate.0, candidate.1, &candidate.2) > (entry.0, entry.1, &entry.2) {
                *entry = candidate;
            }
            rows.push(contact(&schema, &key, version, Some(&email), deleted));
        }
        rng.shuffle(&mut rows);
        for (i, chunk) in rows.chunks(2_000).enumerate() {
            let _ = warehouse
                .land(land(chunk.to_vec(), "contacts_master"), bqsync::bus::Receipts::default())
                .await
                .unwrap();
            if i == 9 {
                apply(&warehouse).await;
            }
        }
        apply(&warehouse).await;
        for table in ["contacts_master", "contacts_master_live"] {
            let path = format!("`{PROJECT}.{dataset}.{table}`");
            let landed = query(&format!("SELECT contact_id, version, _bqsync_deleted, email FROM {path}")).await;
            assert_eq!(landed.len(), keys, "one row per key in {table}");
            let mut wrong = 0;
            for row in &landed {
                let key = text(&row[0]).unwrap();
                let version: i64 = text(&row[1]).unwrap().parse().unwrap();
                let deleted = text(&row[2]).unwrap() == "true";
                let (want_version, want_deleted, _) = &best[&key];
                let email_ok = if deleted { row[3].is_null() } else { text(&row[3]) == Some(format!("u{version}@x")) };
                if version != *want_version || deleted != *want_deleted || !email_ok {
                    wrong += 1;
                }
            }
            assert_eq!(wrong, 0, "rows not at their highest version in {table}");
        }
    });
}

/// A new NULLABLE column in a schema file is added to the table and its landing table, and events
/// that use it land; a type change, a dropped column and a new REQUIRED column are refused, naming
/// what and where.
#[test]
fn a_new_nullable_column_is_added_to_both_tables_and_breaking_changes_are_refused() {
    runtime().block_on(async {
        let dataset = unique_dataset("evolve");
        let config = config(&dataset);
        let atoms = catalog().get("atoms").unwrap().clone();
        let dead_letters = catalog().get("dead_letters").unwrap().clone();
        warehouse(&config, Catalog::from_tables([atoms.clone(), dead_letters.clone()])).await;

        let mut grown = atoms.clone();
        let mut language = grown.columns.iter().find(|c| c.name == "text").unwrap().clone();
        language.name = "language".into();
        grown.columns.push(language);
        let evolved = warehouse(&config, Catalog::from_tables([grown.clone(), dead_letters.clone()])).await;
        let mut row = atom(&grown, "with-language", 0);
        *row.cells.last_mut().unwrap() = CellValue::String("de".into());
        let _ = evolved.land(land(vec![row], "atoms"), bqsync::bus::Receipts::default()).await.unwrap();
        assert_eq!(
            query(&format!("SELECT language FROM `{PROJECT}.{dataset}.atoms_current`")).await,
            vec![vec![Value::String("de".into())]]
        );
        apply(&evolved).await;
        let landed = query(&format!("SELECT language FROM `{PROJECT}.{dataset}.atoms`")).await;
        assert_eq!(landed, vec![vec![Value::String("de".into())]]);

        let refused = |schema: TableSchema| {
            let config = config.clone();
            async move {
                let warehouse =
                    BigQueryWarehouse::connect(&config, Arc::new(Catalog::from_tables([schema]))).await.unwrap();
                warehouse.ensure_tables().await.unwrap_err().to_string()
            }
        };
        let mut retyped = grown.clone();
        retyped.columns.iter_mut().find(|c| c.name == "score").unwrap().column_type = ColumnType::String;
        let error = refused(retyped).await;
        assert!(
            error.contains("column `score` is FLOAT") && error.contains("type changes need a migration"),
            "{error}"
        );
        let mut dropped = grown.clone();
        dropped.columns.retain(|c| c.name != "language");
        let error = refused(dropped).await;
        assert!(error.contains("column `language` is in") && error.contains("not in schemas/atoms.json"), "{error}");
        let mut required = grown.clone();
        let mut strict = required.columns[1].clone();
        strict.name = "strict".into();
        strict.mode = bqsync::schema::ColumnMode::Required;
        required.columns.push(strict);
        let error = refused(required).await;
        assert!(error.contains("new column `strict` is REQUIRED"), "{error}");
    });
}

/// Rows the Storage Write API rejects (here: a column made REQUIRED by hand in BigQuery, which
/// bqsync's own validation does not know, so the landing table requires it too) are dead-lettered
/// with BigQuery's message; the rest of the request is sent again and lands.
#[test]
fn rows_the_write_api_rejects_are_dead_lettered_and_the_rest_lands() {
    runtime().block_on(async {
        let dataset = unique_dataset("rejects");
        let config = config(&dataset);
        let catalog = catalog();
        let schema = catalog.get("contacts_master").unwrap().clone();
        // The table exists before bqsync with `email` REQUIRED.
        let bq = BigQueryWarehouse::connect(&config, Arc::new(Catalog::from_tables([]))).await.unwrap();
        bq.ensure_tables().await.unwrap();
        let mut fields = bqsync::warehouse::bigquery::sql::table_fields(&schema);
        fields.iter_mut().find(|f| f.name == "email").unwrap().mode = Some("REQUIRED".into());
        let table = gcp_bigquery_client::model::table::Table::new(
            PROJECT,
            &dataset,
            "contacts_master",
            gcp_bigquery_client::model::table_schema::TableSchema::new(fields),
        );
        client().await.table().create(table).await.unwrap();
        let warehouse = warehouse(&config, catalog).await;
        let rows = || -> Vec<StagedRow> {
            (0..20).map(|i| contact(&schema, &format!("k{i}"), 1, (i % 5 != 0).then_some("e@x"), false)).collect()
        };
        let _ = warehouse.land(land(rows(), "contacts_master"), bqsync::bus::Receipts::default()).await.unwrap();
        assert_eq!(warehouse.counters().rows_rejected, 4);
        let path = format!("`{PROJECT}.{dataset}`");
        // Dead letters are readable at once, from the live view.
        let dead = query(&format!(
            "SELECT event_id, reason, detail, table_name FROM {path}.dead_letters_live ORDER BY event_id"
        ))
        .await;
        let ids: Vec<String> = dead.iter().map(|r| text(&r[0]).unwrap()).collect();
        assert_eq!(ids, ["k0@1", "k10@1", "k15@1", "k5@1"]);
        for row in &dead {
            assert_eq!(text(&row[1]).as_deref(), Some("warehouse_rejected"));
            assert_eq!(text(&row[3]).as_deref(), Some("contacts_master"));
            let detail = text(&row[2]).unwrap();
            assert!(detail.contains("email") && detail.contains("required"), "{detail}");
        }
        // Landing the same batch again adds no second dead letter (deterministic ids).
        let _ = warehouse.land(land(rows(), "contacts_master"), bqsync::bus::Receipts::default()).await.unwrap();
        apply(&warehouse).await;
        assert_eq!(query_i64(&format!("SELECT COUNT(*) FROM {path}.contacts_master")).await, 16);
        assert_eq!(query_i64(&format!("SELECT COUNT(*) FROM {path}.dead_letters")).await, 4);

        // `bqsync dlq` reads them back from BigQuery: filters as query parameters, exact bytes.
        let filter = bqsync::warehouse::DeadLetterFilter {
            reason: Some(bqsync::dead_letter::DeadLetterReason::WarehouseRejected),
            ..Default::default()
        };
        let records = warehouse.dead_letters(&filter).await.unwrap();
        assert_eq!(records.len(), 4);
        let envelope: Value = serde_json::from_slice(&records[0].message_bytes).unwrap();
        assert_eq!(envelope["table"], "contacts_master");
        assert_eq!(envelope["event_id"].as_str(), records[0].event_id.as_deref());
        let prefix = records[0].dead_letter_id[..10].to_string();
        let by_id = bqsync::warehouse::DeadLetterFilter { ids: vec![prefix], ..Default::default() };
        assert_eq!(warehouse.dead_letters(&by_id).await.unwrap().len(), 1);
        let other = bqsync::warehouse::DeadLetterFilter { table: Some("atoms".into()), ..Default::default() };
        assert!(warehouse.dead_letters(&other).await.unwrap().is_empty());

        // A replay's mark (what `bqsync replay` lands with each event it lands): the dead letter is
        // no longer open, in status and in the list, from the live views before any apply.
        let catalog = self::catalog();
        let replayed = &records[0];
        let mark = bqsync::dead_letter::replay_mark(&catalog, replayed, "contacts_master").expect("the marks' table");
        let marks = land(vec![mark], bqsync::dead_letter::REPLAY_TABLE);
        let _ = warehouse.land(marks, bqsync::bus::Receipts::default()).await.unwrap();
        let open: u64 = warehouse.dead_letter_counts().await.unwrap().iter().map(|(_, _, n)| n).sum();
        assert_eq!(open, 3);
        let again = warehouse.dead_letters(&filter).await.unwrap();
        let marked: Vec<&str> =
            again.iter().filter(|r| r.replayed_micros.is_some()).map(|r| r.dead_letter_id.as_str()).collect();
        assert_eq!(marked, [replayed.dead_letter_id.as_str()]);
    });
}

/// A protected table in `schemas/` stops start-up with a clear error, before anything is written.
#[test]
fn protected_tables_are_refused_at_start_up() {
    runtime().block_on(async {
        let mut config = config(&unique_dataset("protected"));
        config.cost.protected_tables = vec!["contacts_master".into()];
        let warehouse = BigQueryWarehouse::connect(&config, Arc::new(catalog())).await.unwrap();
        let error = warehouse.ensure_tables().await.unwrap_err().to_string();
        assert!(error.contains("table `contacts_master` is protected"), "{error}");
    });
}

/// The real binary on the embedded bus, landing in BigQuery, SIGKILLed three times mid-run, then run
/// to the end: every atom once, every contact at its final version, no dead letters. The applier
/// runs every 2 s meanwhile, so kills fall between append and ack, and inside applies.
#[test]
fn worker_killed_mid_batch_lands_exactly_once_in_bigquery() {
    let dataset = unique_dataset("kill");
    let project = Project::new(&format!(
        "[warehouse]\nkind = \"bigquery\"\n\n[warehouse.bigquery]\nproject = \"{PROJECT}\"\ndataset = \"{dataset}\"\nendpoint = \"{}\"\n",
        endpoint()
    ));
    let atoms = 12_000u64;
    let lines: String = (0..atoms).map(|i| common::atom_line(&format!("k-{i}"), i)).collect();
    project.append("inbox/atoms/a.jsonl", lines.as_bytes());
    let (contacts_text, expected) = common::contacts(4_000, 1_000, 5);
    project.append("inbox/contacts_master/c.jsonl", contacts_text.as_bytes());
    let env = [
        ("BQSYNC__WORKER__MAX_BATCH_ROWS", "1000"),
        ("BQSYNC__WAREHOUSE__BIGQUERY__SETTLE_MARGIN_SECS", "4"),
        ("BQSYNC__WAREHOUSE__BIGQUERY__APPEND_TIMEOUT_SECS", "3"),
        ("BQSYNC__WAREHOUSE__BIGQUERY__APPEND_APPLY_INTERVAL_SECS", "2"),
        ("BQSYNC__WAREHOUSE__BIGQUERY__UPSERT_APPLY_INTERVAL_SECS", "2"),
    ];
    let mut rng = fastrand::Rng::with_seed(3);
    for round in 0..3 {
        let mut child = project.spawn_run(&[], &env);
        std::thread::sleep(Duration::from_millis(1500 + rng.u64(0..1500)));
        if let Some(status) = child.try_wait().unwrap() {
            panic!("bqsync must still be running in round {round}, but exited: {status}; log:\n{}", project.log_tail());
        }
        signal(&child, "KILL");
        let _ = wait_exit(&mut child, Duration::from_secs(10));
        eprintln!("killed in round {round}");
    }
    project.run_until_drained(&env);

    runtime().block_on(async {
        let path = format!("`{PROJECT}.{dataset}`");
        assert_eq!(query_i64(&format!("SELECT COUNT(*) FROM {path}.atoms")).await, atoms as i64);
        assert_eq!(query_i64(&format!("SELECT COUNT(DISTINCT event_id) FROM {path}.atoms")).await, atoms as i64);
        let rows =
            query(&format!("SELECT contact_id, version, email, _bqsync_deleted FROM {path}.contacts_master")).await;
        assert_eq!(rows.len(), expected.len(), "one row per key");
        for row in rows {
            let key = text(&row[0]).unwrap();
            let version: i64 = text(&row[1]).unwrap().parse().unwrap();
            let deleted = text(&row[3]).unwrap() == "true";
            match &expected[&key] {
                Some((v, email)) => {
                    assert!(!deleted && version == *v && text(&row[2]).as_deref() == Some(email), "{key}")
                }
                None => assert!(deleted, "{key} must be a tombstone"),
            }
        }
        assert_eq!(query_i64(&format!("SELECT COUNT(*) FROM {path}.dead_letters")).await, 0, "{}", project.log_tail());
    });
}

// A BigQuery outage under load (30–60 s, rows counted after) is a scenario of the fault harness,
// tests/faults.rs (`bigquery-outage`).

/// `/readyz` answers 503 naming the warehouse while BigQuery is down, and 200 again once it is back.
#[test]
fn readyz_follows_bigquery_going_away_and_coming_back() {
    let emulator = OwnBigQuery::start();
    let dataset = unique_dataset("ready");
    let project = Project::new(&format!(
        "[warehouse]\nkind = \"bigquery\"\n\n[warehouse.bigquery]\nproject = \"{PROJECT}\"\ndataset = \"{dataset}\"\nendpoint = \"{}\"\n",
        emulator.endpoint()
    ));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = project.spawn_run(&[], &[("BQSYNC__ADMIN__LISTEN", listen.as_str())]);
    let readyz = || -> Option<u16> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        stream.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        response.split(' ').nth(1)?.parse().ok()
    };
    common::wait_until(Duration::from_secs(60), "ready with BigQuery up", || readyz() == Some(200));
    emulator.kill();
    common::wait_until(Duration::from_secs(30), "unready with BigQuery down", || readyz() == Some(503));
    emulator.restart_keeping_data();
    common::wait_until(Duration::from_secs(60), "ready again", || readyz() == Some(200));
    signal(&child, "TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(30)).success(), "{}", project.log_tail());
}
