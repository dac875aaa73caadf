#!/usr/bin/env bash
# The fault-injection harness (tests/faults.rs) on its own: starts a Pub/Sub emulator, runs the
# scenarios and prints the results table (also in target/fault-results.md).
#
#   scripts/faults.sh [short|long]    short (default, also run by scripts/test.sh) or long (≥ 200 rounds)
#
# Needs root (or CAP_SYS_ADMIN) for the disk-full scenario, which mounts a tmpfs; loopback only.
# BQSYNC_FAULTS_SEED=N replays a run's random choices; BQSYNC_FAULTS_ONLY=1,3 runs some scenarios.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-short}
bash scripts/setup.sh
cargo test --release --locked --test faults --no-run
state=$(mktemp -d)
trap 'bash scripts/emulators/pubsub.sh stop "$state/pubsub" || true; rm -rf "$state"' EXIT
PUBSUB_EMULATOR_HOST=$(bash scripts/emulators/pubsub.sh start "$state/pubsub")
export PUBSUB_EMULATOR_HOST
BQSYNC_FAULTS=$mode cargo test --release --locked --test faults -- --nocapture --test-threads 1
cat target/fault-results.md
