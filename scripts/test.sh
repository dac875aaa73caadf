#!/usr/bin/env bash
# The test command (README, and .ci/run): set-up, formatting, lints, then every test, on one release
# build (the end-to-end tests push 100k+ events through the real binary). The Google backends are
# tested against local emulators this script starts and stops; an emulator that cannot start fails
# the run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_python_client.sh
bash scripts/emulators/bigquery.sh install
bash scripts/emulators/gcs.sh install
export CARGO_INCREMENTAL=0
cargo fmt --check
cargo clippy --release --all-targets --locked -- -D warnings
# The worker image's build: Google backends only, no DuckDB (README "Build features").
cargo clippy --release --all-targets --locked --no-default-features --features gcp -- -D warnings
# Build everything before the emulators start, so they do not wait out the compile.
cargo test --release --locked --no-run
echo "phase: built at ${SECONDS}s" >&2

state=$(mktemp -d)
log=$state/test.log
cleanup() {
  kill ${beside[@]+"${beside[@]}"} 2>/dev/null || true
  bash scripts/emulators/pubsub.sh stop "$state/pubsub" || true
  bash scripts/emulators/bigquery.sh stop "$state/bigquery" || true
  bash scripts/emulators/gcs.sh stop "$state/gcs" || true
  rm -rf "$state"
}
trap cleanup EXIT

# Beside the tests, at the lowest priority (the tests mostly wait on emulators; their timing must
# not suffer): the worker image (scripts/image.sh: the static gcp-only binary, its size and layout
# checked), the gcp-only build's tests on that same binary, and the fuzz targets. Own target
# folders, so no build lock is shared with the tests' cargo.
musl=x86_64-unknown-linux-musl
export CC_x86_64_unknown_linux_musl=musl-gcc
gcp_only=(--target "$musl" --no-default-features --features gcp --lib --test bigquery_service --test infra)
gcp_target=$PWD/target/gcp-only
# Two chains, so both cores work while the tests wait.
(
  set -e
  # The tests first: their build makes the binary too (integration tests need it), with the features
  # the dev-dependencies add, and the image packs that binary rather than compile the dependencies
  # a second time with the features of a plain `cargo build`.
  step() { echo "image chain: $1 failed at ${SECONDS}s" >>"$state/image.log"; }
  bash scripts/image.sh tools >"$state/image.log" 2>&1 || { step "installing the tools (scripts/image.sh tools)"; exit 1; }
  CARGO_TARGET_DIR=$gcp_target nice -n 19 cargo test --release --locked "${gcp_only[@]}" --no-run >>"$state/image.log" 2>&1 \
    || { step "building the gcp-only tests for musl"; exit 1; }
  echo "phase: gcp-only tests built at ${SECONDS}s" >&2
  BQSYNC_BINARY=$gcp_target/$musl/release/bqsync CARGO_TARGET_DIR=$gcp_target nice -n 19 \
    bash scripts/image.sh >"$state/image.out" 2>>"$state/image.log" || { step "building or checking the image"; exit 1; }
  echo "phase: image built at ${SECONDS}s" >&2
) &
beside=($!)
# The fuzz targets, built and then run 30 s each (one at a time, so the image chain keeps a core):
# beside the tests rather than after them, where they made the run's tail 2.5 min longer. At the
# lowest priority a busy moment of the tests gives them fewer executions, never a different outcome.
(
  set -e
  nice -n 19 bash scripts/fuzz.sh 0 >"$state/fuzz-build.log" 2>&1
  echo "phase: fuzz targets built at ${SECONDS}s" >&2
  FUZZ_JOBS=1 nice -n 19 bash scripts/fuzz.sh 30 >"$state/fuzz.log" 2>&1
  echo "phase: fuzz runs done at ${SECONDS}s" >&2
) &
beside+=($!)
PUBSUB_EMULATOR_HOST=$(bash scripts/emulators/pubsub.sh start "$state/pubsub")
export PUBSUB_EMULATOR_HOST
echo "pubsub emulator on $PUBSUB_EMULATOR_HOST" >&2
# The GCS emulator keeps objects as files where the BigQuery emulator reads gs:// load sources.
export GCS_EMULATOR_ROOT=$state/gcs-objects GCS_LOCAL_ROOT=$state/gcs-objects
STORAGE_EMULATOR_HOST=$(bash scripts/emulators/gcs.sh start "$state/gcs")
export STORAGE_EMULATOR_HOST
echo "gcs emulator on $STORAGE_EMULATOR_HOST" >&2
# The BigQuery emulator slows down as the jobs and tables of earlier tests pile up (one test binary
# took 87 s on a fresh emulator and 234 s after the others), so each test binary gets a fresh one on
# the same port (the first start picks a free one).
BIGQUERY_EMULATOR_HOST=$(bash scripts/emulators/bigquery.sh start "$state/bigquery")
export BIGQUERY_EMULATOR_HOST
fresh_bigquery() {
  bash scripts/emulators/bigquery.sh stop "$state/bigquery"
  BIGQUERY_EMULATOR_HOST=$(bash scripts/emulators/bigquery.sh start "$state/bigquery" "${BIGQUERY_EMULATOR_HOST##*:}")
}
echo "bigquery emulator on $BIGQUERY_EMULATOR_HOST" >&2

# Every binary runs even when one fails, so one run names every failure.
status=0
run_tests() {
  set +e
  cargo test --release --locked "$@" 2>&1 | tee -a "$log"
  local code=${PIPESTATUS[0]}
  set -e
  if [[ $code != 0 ]]; then
    status=$code
    echo "FAILED: cargo test $*" >>"$state/failures"
  fi
}
run_tests --lib --bins
run_tests --doc
for test in tests/*.rs; do
  name=$(basename "$test" .rs)
  if grep -qi bigquery "$test"; then
    fresh_bigquery
  fi
  run_tests --test "$name"
done
echo "phase: tests done at ${SECONDS}s" >&2
# The background chains, then what they built.
if ! wait "${beside[0]}"; then
  status=1
  echo "FAILED: the image or gcp-only build" >>"$state/failures"
  # Kept for the end: a CI report may show only the run's last lines, and they must say why.
  { echo "--- the end of the image chain's log:"; tail -25 "$state/image.log" 2>/dev/null; df -h . /tmp 2>/dev/null; } \
    >>"$state/details" || true
else
  cat "$state/image.log" | grep -E '^(image|binary):' || true
  echo "image digest: $(cat "$state/image.out")"
  # The gcp-only binary (the image's) against the emulators: Pub/Sub workers landing in BigQuery.
  fresh_bigquery
  CARGO_TARGET_DIR=$gcp_target run_tests "${gcp_only[@]}"
fi
if ! wait "${beside[1]}"; then
  status=1
  echo "FAILED: scripts/fuzz.sh (build, or 30 s a target)" >>"$state/failures"
  { echo "--- the end of the fuzz build's log:"; tail -25 "$state/fuzz-build.log" 2>/dev/null; } >>"$state/details" || true
fi
cat "$state/fuzz.log" 2>/dev/null || true

# One closing line over every test binary.
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' "$log"
# What failed, last: the details of a background chain, then the list of failures.
[[ -f $state/details ]] && cat "$state/details"
[[ -f $state/failures ]] && cat "$state/failures"
exit "$status"
