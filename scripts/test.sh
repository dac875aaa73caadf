#!/usr/bin/env bash
# The test command (README, and .ci/run): set-up, formatting, lints, then every test, on one release
# build (the end-to-end tests push 100k+ events through the real binary).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CARGO_INCREMENTAL=0
cargo fmt --check
cargo clippy --release --all-targets --locked -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --release --locked 2>&1 | tee "$log"
# One closing line over every test binary.
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' "$log"
