//! BigQuery at scale against the BigQuery emulator (exported by `scripts/test.sh`): the CDC write
//! path's rows without their pseudo-columns (the emulator has no CDC), and a daily byte budget that
//! stretches the apply interval while ingestion goes on. Without an emulator these tests fail.

// The embedded default beside the Google backends: built with both features (the default).
#![cfg(all(feature = "embedded", feature = "gcp"))]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bqsync::envelope::Op;
use bqsync::schema::CdcDeletes;
use bqsync::warehouse::bigquery::client::request_policy;
use bqsync::warehouse::bigquery::proto::RowCodec;
use bqsync::warehouse::bigquery::writer::{EncodedRow, LandingWriter};
use bqsync::warehouse::bigquery::{BigQueryConfig, BigQueryWarehouse};
use bqsync::warehouse::Warehouse;
use common::{signal, wait_exit, wait_until, Project};
use serde_json::Value;

const PROJECT: &str = "bqsync-test";

fn endpoint() -> String {
    common::emulator_url("BIGQUERY_EMULATOR_HOST")
}

/// A CDC table is written through the same writer as a landing table, on `T`'s own default stream,
/// with each row's bytes the landing row's plus `_CHANGE_TYPE` and `_CHANGE_SEQUENCE_NUMBER`
/// (unit-tested in proto.rs and cdc.rs). The emulator has no CDC, so the same rows are sent here
/// without the pseudo-columns: every change lands in `T` with its key, version and tombstone.
#[test]
fn cdc_rows_without_their_pseudo_columns_land_in_the_table_through_the_same_writer() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let dataset = common::unique_name("c", "cdc", '_');
        let config = BigQueryConfig {
            project: Some(PROJECT.into()),
            dataset: dataset.clone(),
            endpoint: Some(endpoint()),
            ..Default::default()
        };
        let catalog = common::catalog();
        let schema = catalog.get("contacts_master").unwrap().clone();
        let warehouse = BigQueryWarehouse::connect(&config, Arc::new(catalog)).await.unwrap();
        warehouse.ensure_tables().await.unwrap();
        let client = common::bigquery_client(&endpoint()).await;
        let live = client.table().get(PROJECT, &dataset, "contacts_master", None).await.unwrap();
        let fields = live.schema.fields.unwrap();
        let user = bqsync::warehouse::bigquery::schema::user_fields(&schema, &fields);
        let (plain, cdc) = (RowCodec::new(&user), RowCodec::new(&user).with_cdc(CdcDeletes::Delete));
        let row = |key: &str, version: i64, op: Op| {
            common::staged_contact(&schema, key, version, Some(&format!("{key}@v{version}")), op == Op::Delete)
        };
        let rows = [row("c-1", 1, Op::Upsert), row("c-1", 2, Op::Upsert), row("c-2", 5, Op::Delete)];
        let mut encoded = Vec::new();
        for (index, r) in rows.iter().enumerate() {
            let (without, with) = (plain.encode(r).unwrap(), cdc.encode(r).unwrap());
            assert!(with.starts_with(&without) && with.len() > without.len() + 50, "the CDC row is the row plus its tail");
            encoded.push(EncodedRow { index, bytes: without });
        }
        let writer =
            LandingWriter::new(config.resolved_storage_endpoint(), true, Duration::from_secs(10), request_policy(&config))
                .unwrap();
        let stream = format!("projects/{PROJECT}/datasets/{dataset}/tables/contacts_master/streams/_default");
        let rejected = writer.append(&stream, &plain, encoded).await.unwrap();
        assert!(rejected.is_empty(), "{rejected:?}");
        let got = common::bigquery_rows(
            &endpoint(),
            PROJECT,
            &format!(
                "SELECT contact_id, version, email, _bqsync_deleted, _bqsync_event_id FROM `{PROJECT}.{dataset}.contacts_master` ORDER BY 1, 2"
            ),
        )
        .await;
        let text = |v: &Value| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
        let got: Vec<Vec<String>> = got.iter().map(|r| r.iter().map(text).collect()).collect();
        assert_eq!(
            got,
            [
                ["c-1", "1", "c-1@v1", "false", "c-1@1"],
                ["c-1", "2", "c-1@v2", "false", "c-1@2"],
                ["c-2", "5", "null", "true", "c-2@5"],
            ]
        );
    });
}

/// A daily byte budget far under what 2 s applies would bill stretches the interval (metric,
/// `GET /cost`), while landing goes on: every row is in the live view, none applied yet. A budget
/// nothing fits is reported as over budget, at the longest intervals.
#[test]
fn a_daily_byte_budget_stretches_the_apply_interval_and_ingestion_goes_on() {
    let dataset = common::unique_name("b", "budget", '_');
    let port = common::free_port();
    let project = Project::new(&format!(
        "[warehouse]\nkind = \"bigquery\"\n\n[warehouse.bigquery]\nproject = \"{PROJECT}\"\ndataset = \"{dataset}\"\n\
         endpoint = \"{}\"\nappend_apply_interval_secs = 2\n\n[warehouse.bigquery.cost]\ndaily_byte_budget = 10000000000\n",
        endpoint()
    ));
    let lines: String = (0..300u64).map(|i| common::atom_line(&format!("bu-{i}"), i)).collect();
    project.append("inbox/atoms/a.jsonl", lines.as_bytes());
    let listen = format!("127.0.0.1:{port}");
    let mut child = project.spawn_run(&[], &[("BQSYNC__ADMIN__LISTEN", listen.as_str())]);
    let interval = || -> Option<f64> {
        let (_, body) = common::admin_http(port, "GET", "/metrics", None)?;
        let line = body.lines().find(|l| l.starts_with("bqsync_apply_interval_seconds{table=\"atoms\"}"))?;
        line.rsplit(' ').next()?.parse().ok()
    };
    wait_until(Duration::from_secs(60), "the stretched interval exported", || interval().is_some());
    let stretched = interval().unwrap();
    assert!(stretched > 300.0 && stretched < 21_600.0, "2 s stretched to fit 10 GB a day: {stretched}");
    let live = format!("SELECT COUNT(*) FROM `{PROJECT}.{dataset}.atoms_live`");
    let count = |sql: &str| -> i64 {
        let rows = tokio::runtime::Runtime::new().unwrap().block_on(common::bigquery_rows(&endpoint(), PROJECT, sql));
        rows[0][0].as_str().and_then(|s| s.parse().ok()).unwrap_or(-1)
    };
    wait_until(Duration::from_secs(60), "every row landed and visible", || count(&live) == 300);
    assert_eq!(
        count(&format!("SELECT COUNT(*) FROM `{PROJECT}.{dataset}.atoms`")),
        0,
        "no apply yet at the stretched interval"
    );
    let (status, body) = common::admin_http(port, "GET", "/cost", None).unwrap();
    assert_eq!(status, 200, "{body}");
    let forecast: Value = serde_json::from_str(&body).unwrap();
    let atoms = forecast["tables"].as_array().unwrap().iter().find(|t| t["table"] == "atoms").unwrap();
    assert_eq!(atoms["configured_interval_secs"], 2);
    assert_eq!(atoms["interval_secs"].as_f64(), Some(stretched));
    assert_eq!(forecast["over_budget"], false);
    assert!(forecast["bytes_per_day"].as_u64().unwrap() <= 10_000_000_000);
    signal(&child, "TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(60)).success(), "{}", project.log_tail());

    let output = project
        .command(&["cost", "--json"])
        .env("BQSYNC__WAREHOUSE__BIGQUERY__COST__DAILY_BYTE_BUDGET", "1000")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let forecast: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(forecast["over_budget"], true, "{forecast}");
    for table in forecast["tables"].as_array().unwrap() {
        assert_eq!(table["interval_secs"], 21_600, "every table at the longest interval: {table}");
        assert_eq!(table["measured"], false, "the emulator bills nothing: estimated");
    }
}
