#!/usr/bin/env bash
# Scale-out benchmark (benches/scaleout.rs): N = 1, 2, 4 `bqsync work` processes on one Pub/Sub
# subscription landing into the same BigQuery tables, on the Pub/Sub and BigQuery emulators.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/emulators/bigquery.sh install
cargo bench --bench scaleout --no-run
state=$(mktemp -d)
trap 'bash scripts/emulators/pubsub.sh stop "$state/pubsub" || true; bash scripts/emulators/bigquery.sh stop "$state/bigquery" || true; rm -rf "$state"' EXIT
PUBSUB_EMULATOR_HOST=$(bash scripts/emulators/pubsub.sh start "$state/pubsub")
BIGQUERY_EMULATOR_HOST=$(bash scripts/emulators/bigquery.sh start "$state/bigquery")
export PUBSUB_EMULATOR_HOST BIGQUERY_EMULATOR_HOST
cargo bench --bench scaleout
