#!/usr/bin/env bash
# The fault-injection harness (tests/faults.rs) on its own: runs the scenarios and prints the results
# table (also in target/fault-results.md). Each Pub/Sub or BigQuery scenario starts emulators of its
# own (scripts/emulators/*.sh), so nothing needs to run beforehand.
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
BQSYNC_FAULTS=$mode cargo test --release --locked --test faults -- --nocapture --test-threads 1
cat target/fault-results.md
