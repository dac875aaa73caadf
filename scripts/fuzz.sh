#!/usr/bin/env bash
# Fuzzes the code that meets untrusted bytes (fuzz/fuzz_targets/*.rs; README "Fuzzing"):
#
#   bash scripts/fuzz.sh [SECONDS] [TARGET ...]     # default: 30 s each, every target
#   bash scripts/fuzz.sh 0                          # build only
#
# Builds the targets with cargo-fuzz (libFuzzer, AddressSanitizer, debug assertions and overflow
# checks on), seeds each corpus from fuzz/seeds/TARGET (the tests' bad inputs; fuzz/seeds/make_seeds.py),
# runs each target for SECONDS and prints one line per target: runs, coverage, corpus, outcome. A
# crash fails the run; its input is in fuzz/artifacts/TARGET/ and its backtrace above. CI runs it for
# 30 s a target, so a regression of a fixed finding fails the build.
#
# cargo-fuzz needs nightly flags (-Z sanitizer); RUSTC_BOOTSTRAP=1 lets the stable toolchain take them.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
shift || true
targets=("$@")
if [[ ${#targets[@]} == 0 ]]; then
  targets=(envelope jsonl_framing coercion http_response replay_edits)
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz@0.13.2
fi
export RUSTC_BOOTSTRAP=1 CARGO_INCREMENTAL=0

# One set of flags for build and run (a difference would rebuild): release with debug assertions
# and overflow checks, AddressSanitizer (the default), 16 codegen units (cargo-fuzz's default of 1
# made the build of the library and its dependencies half again as long on 2 cores).
flags=(-O -a --codegen-units 16)
jobs=${FUZZ_JOBS:-$(nproc)}
cargo fuzz build "${flags[@]}"
[[ $seconds == 0 ]] && exit 0
results=$(mktemp -d)

# Runs one target; its summary line goes to $results/TARGET, its failure details to stderr.
fuzz_one() {
  local target=$1 corpus=fuzz/corpus/$1 log=$results/$1.log code runs cov files outcome
  mkdir -p "$corpus" "fuzz/artifacts/$target"
  set +e
  cargo fuzz run "${flags[@]}" "$target" "$corpus" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 -rss_limit_mb=4096 -max_len=65536 \
    -artifact_prefix="fuzz/artifacts/$target/" >"$log" 2>&1
  code=$?
  set -e
  # Executions: the final stats, or (after a crash, which prints none) the last status line's count.
  runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1 || true)
  [[ -n $runs ]] || runs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#' || true)
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 || true)
  files=$(find "$corpus" -type f | wc -l)
  if [[ $code == 0 ]]; then
    outcome=ok
  else
    outcome="FAILED (exit $code)"
    grep -E 'panicked|ERROR: |SUMMARY|Test unit written|^\s+#[0-9]+ .* in (bqsync|fuzz_)' "$log" | head -40 >&2
  fi
  printf '%-14s %4ss  runs %-10s %-22s corpus %-6s %s\n' "$target" "$seconds" "${runs:-?}" "${cov:-cov: ?}" \
    "$files" "$outcome" >"$results/$target"
}

# FUZZ_JOBS targets at a time (default: one a core); each libFuzzer process is single-threaded.
running=0
for target in "${targets[@]}"; do
  fuzz_one "$target" &
  running=$((running + 1))
  if ((running >= jobs)); then
    wait -n || true
    running=$((running - 1))
  fi
done
wait || true
status=0
for target in "${targets[@]}"; do
  if [[ -f $results/$target ]]; then
    cat "$results/$target"
    grep -q ' ok$' "$results/$target" || status=1
  else
    echo "$target: the run left no result"
    status=1
  fi
done
rm -rf "$results"
exit "$status"
