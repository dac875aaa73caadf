#!/usr/bin/env bash
# The test command (README, and .ci/run): set-up, formatting, lints, then every test, on one release
# build (the end-to-end tests push 100k+ events through the real binary).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CARGO_INCREMENTAL=0
cargo fmt --check
cargo clippy --release --all-targets --locked -- -D warnings
cargo test --release --locked
