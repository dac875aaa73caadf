#!/usr/bin/env bash
# Pub/Sub client benchmark (benches/pubsub.rs): Rust vs Google's Python client on one emulator,
# publish and consume of 100,000 messages, client CPU per 100k. Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_python_client.sh
state=$(mktemp -d)
trap 'bash scripts/emulators/pubsub.sh stop "$state/pubsub"; rm -rf "$state"' EXIT
PUBSUB_EMULATOR_HOST=$(bash scripts/emulators/pubsub.sh start "$state/pubsub")
export PUBSUB_EMULATOR_HOST
cargo bench --bench pubsub  # BQSYNC_BENCH_CLIENTS=rust skips the Python side
