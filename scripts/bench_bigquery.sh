#!/usr/bin/env bash
# BigQuery landing benchmark (benches/bigquery.rs) on the BigQuery emulator: events per second and
# BigQuery jobs/requests per 10,000 events, bqsync's batched landing next to one MERGE per record.
# Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
state=$(mktemp -d)
trap 'bash scripts/emulators/bigquery.sh stop "$state/bigquery"; rm -rf "$state"' EXIT
BIGQUERY_EMULATOR_HOST=$(bash scripts/emulators/bigquery.sh start "$state/bigquery")
export BIGQUERY_EMULATOR_HOST
cargo bench --bench bigquery
