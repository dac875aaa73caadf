//! The GCS archive and claim check against the GCS emulator (fake-gcs-server, started by
//! `scripts/test.sh`, which exports STORAGE_EMULATOR_HOST), with the real binary and the embedded
//! default otherwise. Each test uses a bucket of its own. Without an emulator these tests fail.

// The embedded default beside the Google backends: built with both features (the default).
#![cfg(all(feature = "embedded", feature = "gcp"))]

mod common;

use std::collections::BTreeSet;
use std::io::Read;

use bqsync::bus::embedded::{EmbeddedBus, EmbeddedBusConfig};
use bqsync::bus::{OutboundMessage, Publisher};
use bqsync::gcs::{Gcs, GcsConfig};
use common::Project;

fn endpoint() -> String {
    common::emulator_url("STORAGE_EMULATOR_HOST")
}

fn unique_bucket(test: &str) -> String {
    common::unique_name("bqsync", test, '-')
}

fn gcs_section(bucket: &str, extra: &str) -> String {
    format!("[gcs]\nbucket = \"{bucket}\"\nendpoint = \"{}\"\ncreate_bucket = true\n{extra}\n", endpoint())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

async fn client(bucket: &str) -> Gcs {
    let config = GcsConfig { bucket: Some(bucket.into()), endpoint: Some(endpoint()), ..Default::default() };
    Gcs::connect(&config).await.unwrap().unwrap()
}

/// Every archived line of a table: (event id, the line as JSON).
async fn archived(gcs: &Gcs, table: &str) -> Vec<serde_json::Value> {
    let mut lines = Vec::new();
    for name in gcs.list(&format!("{table}/")).await.unwrap() {
        assert!(name.contains("/dt=") && name.ends_with(".ndjson.gz"), "{name}");
        let bytes = gcs.get(&name).await.unwrap();
        let mut text = String::new();
        flate2::read::GzDecoder::new(&bytes[..]).read_to_string(&mut text).unwrap();
        lines.extend(text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()));
    }
    lines
}

/// Landed batches are archived as gzip NDJSON under TABLE/dt=DAY/, and the archive reads back to
/// exactly the landed rows — also after the same input is landed again.
#[test]
fn archive_objects_read_back_to_the_landed_rows() {
    let bucket = unique_bucket("archive");
    let project = Project::new(&gcs_section(&bucket, ""));
    let lines: String = (0..5000u64).map(|i| common::atom_line(&format!("ar-{i}"), i)).collect();
    project.append("inbox/atoms/a.jsonl", lines.as_bytes());
    let (contacts, expected) = common::contacts(3000, 700, 9);
    project.append("inbox/contacts_master/c.jsonl", contacts.as_bytes());
    project.run_until_drained(&[("BQSYNC__WORKER__MAX_BATCH_ROWS", "1000")]);

    runtime().block_on(async {
        let gcs = client(&bucket).await;
        let atoms = archived(&gcs, "atoms").await;
        let ids: BTreeSet<String> = atoms.iter().map(|l| l["_bqsync_event_id"].as_str().unwrap().to_string()).collect();
        assert_eq!(atoms.len(), 5000, "each landed atom archived once");
        assert_eq!(ids, (0..5000).map(|i| format!("ar-{i}")).collect::<BTreeSet<_>>());
        let first = atoms.iter().find(|l| l["event_id"] == "ar-7").unwrap();
        assert_eq!(first["kind"], "click");
        assert_eq!(first["tags"], serde_json::json!(["red", "eu"]));
        assert_eq!(first["created_at"], "2024-01-01T00:00:07.000001Z");
        let contacts = archived(&gcs, "contacts_master").await;
        assert_eq!(contacts.len(), 3000, "every contact event archived once");
        // The archive holds every version; its highest version per key is the warehouse's state.
        let mut highest: std::collections::HashMap<String, (i64, bool)> = Default::default();
        for line in &contacts {
            let key = line["contact_id"].as_str().unwrap().to_string();
            let version = line["_bqsync_version"].as_i64().unwrap();
            let deleted = line["_bqsync_op"] == "delete";
            let entry = highest.entry(key).or_insert((i64::MIN, false));
            if (version, deleted) > *entry {
                *entry = (version, deleted);
            }
        }
        assert_eq!(highest.len(), expected.len());
        for (key, state) in &expected {
            match state {
                Some((version, _)) => assert_eq!(highest[key], (*version, false), "{key}"),
                None => assert!(highest[key].1, "{key} ends deleted"),
            }
        }
    });
    assert_eq!(project.query_i64("SELECT count(*) FROM atoms"), 5000);
}

fn session(id: usize, words: usize) -> String {
    format!(
        "{{\"session_id\":\"s{id}\",\"topic\":\"weekly\",\"transcript\":\"{}\",\"captured_at\":\"2024-01-01T00:00:0{}Z\",\"start_time\":\"2024-01-01T00:00:00Z\"}}\n",
        "word ".repeat(words),
        id % 10
    )
}

/// Events over the threshold travel through GCS: the bus carries only the claim check, the worker
/// fetches the event and lands it whole. A claim whose object is gone is dead-lettered with its URI.
#[test]
fn large_events_travel_through_the_claim_check_and_land_whole() {
    let bucket = unique_bucket("claims");
    let project = Project::new(&gcs_section(&bucket, "claim_check_bytes = 20000"));
    let mut text = String::new();
    for i in 0..30 {
        text.push_str(&session(i, if i % 3 == 0 { 50_000 } else { 20 }));
    }
    project.append("inbox/zoom_sessions/z.jsonl", text.as_bytes());
    project.run_until_drained(&[]);
    assert_eq!(project.query_i64("SELECT count(*) FROM zoom_sessions"), 30);
    assert_eq!(
        project.query_i64("SELECT count(*) FROM zoom_sessions WHERE length(transcript) = 250000"),
        10,
        "the large transcripts landed whole"
    );
    let claims = runtime().block_on(async { client(&bucket).await.list("claims/zoom_sessions/").await.unwrap() });
    assert_eq!(claims.len(), 10, "one object per large event: {claims:?}");

    // A claim check whose object does not exist.
    let bus =
        EmbeddedBus::open(&EmbeddedBusConfig { path: project.path(".bqsync/bus.db"), ..Default::default() }).unwrap();
    let mut attributes = std::collections::BTreeMap::new();
    attributes.insert("bqsync_claim_check".to_string(), format!("gs://{bucket}/claims/zoom_sessions/gone.json"));
    attributes.insert("bqsync_table".to_string(), "zoom_sessions".to_string());
    runtime().block_on(bus.publish(vec![OutboundMessage::new(Vec::new(), attributes)])).unwrap();
    drop(bus);
    project.run_until_drained(&[]);
    let detail: String = project
        .warehouse()
        .query_row("SELECT detail FROM dead_letters WHERE reason = 'decode'", [], |r| r.get(0))
        .unwrap();
    assert!(detail.contains("claims/zoom_sessions/gone.json") && detail.contains("not found"), "{detail}");
    assert_eq!(project.query_i64("SELECT count(*) FROM zoom_sessions"), 30);
}
