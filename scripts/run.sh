#!/usr/bin/env bash
# Runs bqsync on the embedded default from a fresh clone: installs what it needs, builds, then
# `bqsync run` (watches ./inbox/TABLE/*.jsonl, lands in ./bqsync.duckdb). Extra arguments go to `run`,
# e.g. `scripts/run.sh --until-drained`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked --bin bqsync
mkdir -p inbox
exec ./target/release/bqsync run "$@"
