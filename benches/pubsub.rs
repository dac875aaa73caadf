//! Pub/Sub client benchmark: publish and consume throughput and client CPU per 100,000 messages,
//! bqsync's Rust bus (`google-cloud-pubsub`) side by side with Google's Python client, on the same
//! emulator. Run with `scripts/bench_pubsub.sh` (starts the emulator, installs the Python client).
//!
//! Each case gets fresh topic and subscription names. Consume cases read the same 100,000 messages
//! from their own subscription on 1, 2 and 4 streaming-pull streams and ack each one. CPU is the
//! client process's own user + system time (getrusage for this process; the Python script reports
//! its own the same way), so the emulator's CPU is not counted. The emulator is the bottleneck of
//! throughput; CPU per message is what the client costs.

use std::collections::BTreeMap;

// mimalloc: the Pub/Sub client allocates per message (ack ids, attribute maps) from several threads;
// glibc's malloc spent about a third of the consume CPU on it (perf, benches/pubsub.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::time::{Duration, Instant};

use bqsync::bus::pubsub::{setup, PubSubConfig, PubSubPublisher, PubSubSubscription, ResourceNames};
use bqsync::bus::{Committed, OutboundMessage, Publisher, Subscription};

const MESSAGES: usize = 100_000;
const STREAMS: [usize; 3] = [1, 2, 4];

struct Row {
    client: &'static str,
    case: String,
    seconds: f64,
    cpu_seconds: f64,
}

fn main() {
    if std::env::var("PUBSUB_EMULATOR_HOST").is_err() {
        panic!("PUBSUB_EMULATOR_HOST is not set: run scripts/bench_pubsub.sh");
    }
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".deps/pyvenv/bin/python");
    assert!(python.exists(), "run scripts/setup_python_client.sh first");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let id = format!("bench-{}", std::process::id());
    let mut rows = Vec::new();

    // Rust: publish, then consume on 1, 2, 4 streams (one subscription each, created before publishing).
    let rust = config(&format!("{id}-rust"), "sub1");
    runtime.block_on(async {
        for streams in STREAMS {
            setup(&config(&format!("{id}-rust"), &format!("sub{streams}"))).await.unwrap();
        }
        let publisher = PubSubPublisher::connect(&rust).await.unwrap();
        let (seconds, cpu_seconds) = measure_async(|| async {
            for chunk in (0..MESSAGES).collect::<Vec<_>>().chunks(5000) {
                publisher.publish(chunk.iter().map(|&i| envelope(i)).collect()).await.unwrap();
            }
        })
        .await;
        rows.push(Row { client: "rust", case: "publish".into(), seconds, cpu_seconds });
        for streams in STREAMS {
            let mut c = config(&format!("{id}-rust"), &format!("sub{streams}"));
            c.streams = streams;
            let (seconds, cpu_seconds) = measure_async(|| consume(&c)).await;
            rows.push(Row { client: "rust", case: format!("consume, {streams} stream(s)"), seconds, cpu_seconds });
        }
    });

    // Python: the same, through scripts/python/publish_envelopes.py.
    if std::env::var("BQSYNC_BENCH_CLIENTS").is_ok_and(|c| !c.contains("python")) {
        print_rows(&rows);
        return;
    }
    runtime.block_on(async {
        for streams in STREAMS {
            setup(&config(&format!("{id}-py"), &format!("sub{streams}"))).await.unwrap();
        }
    });
    let project = "bqsync-bench";
    let topic = format!("projects/{project}/topics/{id}-py-events");
    let published = python_run(&python, &["publish", "--topic", &topic, "--count", &MESSAGES.to_string()]);
    rows.push(Row { client: "python", case: "publish".into(), seconds: published.0, cpu_seconds: published.1 });
    for streams in STREAMS {
        let subscription = format!("projects/{project}/subscriptions/{id}-py-sub{streams}");
        let consumed = python_run(
            &python,
            &[
                "consume",
                "--subscription",
                &subscription,
                "--count",
                &MESSAGES.to_string(),
                "--streams",
                &streams.to_string(),
            ],
        );
        rows.push(Row {
            client: "python",
            case: format!("consume, {streams} stream(s)"),
            seconds: consumed.0,
            cpu_seconds: consumed.1,
        });
    }

    print_rows(&rows);
}

fn print_rows(rows: &[Row]) {
    println!("\n| client | case | wall s | msg/s | client CPU s per 100k |");
    println!("|---|---|---:|---:|---:|");
    for row in rows {
        println!(
            "| {} | {} | {:.1} | {:.0} | {:.2} |",
            row.client,
            row.case,
            row.seconds,
            MESSAGES as f64 / row.seconds,
            row.cpu_seconds * 100_000.0 / MESSAGES as f64
        );
    }
    for case in rows.iter().filter(|r| r.client == "rust") {
        if let Some(py) = rows.iter().find(|r| r.client == "python" && r.case == case.case) {
            println!("{}: Rust uses {:.1}× less CPU than Python", case.case, py.cpu_seconds / case.cpu_seconds);
        }
    }
}

fn config(prefix: &str, subscription: &str) -> PubSubConfig {
    let mut c: PubSubConfig = toml::from_str("project = \"bqsync-bench\"").unwrap();
    c.topic = format!("{prefix}-events");
    c.subscription = format!("{prefix}-{subscription}");
    c.dead_letter_topic = format!("{prefix}-dlq");
    c.dead_letter_subscription = format!("{prefix}-dlq-sub");
    c
}

/// An atoms change event in the documented envelope (~400 bytes).
fn envelope(i: usize) -> OutboundMessage {
    let event_id = format!("bench-{i}");
    let body = serde_json::json!({
        "event_id": event_id, "table": "atoms", "op": "insert",
        "payload": {"event_id": event_id, "entity_id": format!("ent-{:07}", i % 1000), "kind": "click",
                    "text": format!("benchmark line {i}"), "score": 1.5, "tags": ["a", "b"],
                    "created_at": "2024-01-01T00:00:00Z"},
        "source": "bench", "produced_at": "2024-01-01T00:00:00Z"
    });
    let attributes =
        BTreeMap::from([("bqsync_table".to_string(), "atoms".to_string()), ("bqsync_event_id".to_string(), event_id)]);
    OutboundMessage::new(serde_json::to_vec(&body).unwrap(), attributes)
}

/// Pulls and acks until every message came (the worker's path without a warehouse).
async fn consume(config: &PubSubConfig) {
    let names = ResourceNames::of(config).unwrap();
    let subscription = PubSubSubscription::open_named(config, &names.subscription, None).await.unwrap();
    let mut received = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    while received < MESSAGES {
        assert!(Instant::now() < deadline, "only {received} of {MESSAGES} messages within 600 s");
        let deliveries = subscription.pull(5000, Duration::from_millis(200)).await.unwrap();
        received += deliveries.len();
        subscription.ack(Committed::nothing_to_land(deliveries.into_iter().map(|d| d.handle).collect())).await.unwrap();
    }
    subscription.close().await;
}

async fn measure_async<F, Fut>(work: F) -> (f64, f64)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (started, cpu) = (Instant::now(), cpu_seconds());
    work().await;
    (started.elapsed().as_secs_f64(), cpu_seconds() - cpu)
}

fn cpu_seconds() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Runs the Python client; returns (seconds, CPU seconds) as it measured them.
fn python_run(python: &std::path::Path, args: &[&str]) -> (f64, f64) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/python/publish_envelopes.py");
    let output = std::process::Command::new(python).arg(script).args(args).output().unwrap();
    assert!(output.status.success(), "python {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value =
        serde_json::from_slice(output.stdout.split(|&b| b == b'\n').find(|l| !l.is_empty()).unwrap()).unwrap();
    assert_eq!(report["messages"].as_u64().unwrap() as usize, MESSAGES, "python {args:?}: {report}");
    (report["seconds"].as_f64().unwrap(), report["cpu_seconds"].as_f64().unwrap())
}
