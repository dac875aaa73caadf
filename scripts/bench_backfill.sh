#!/usr/bin/env bash
# Backfill benchmark on the emulators: SIZE_MB (default 1024) of atoms (../shared/bench/gen.py's
# atoms.jsonl, copied with distinct event ids) into BigQuery, two ways in one run:
#   load jobs:     bqsync backfill FILES --table atoms   (validate, GCS, one load job, one apply)
#   Storage Write: bqsync run --until-drained            (JSONL source, embedded bus, appends, apply)
# Whole process each (/usr/bin/time): wall s, client CPU s (user + sys), peak RSS; BigQuery jobs and
# rows from the emulator afterwards. Prints a Markdown table.
#   scripts/bench_backfill.sh [SIZE_MB]
set -euo pipefail
cd "$(dirname "$0")/.."
size_mb=${1:-1024}
bash scripts/setup.sh
cargo build --release --locked -q
bin=$PWD/target/release/bqsync
state=$(mktemp -d)
cleanup() {
  bash scripts/emulators/bigquery.sh stop "$state/bigquery" || true
  bash scripts/emulators/gcs.sh stop "$state/gcs" || true
  rm -rf "$state"
}
trap cleanup EXIT
export GCS_EMULATOR_ROOT=$state/objects GCS_LOCAL_ROOT=$state/objects
gcs=$(bash scripts/emulators/gcs.sh start "$state/gcs" 127.0.0.9)
bq=$(bash scripts/emulators/bigquery.sh start "$state/bigquery" 9150)

data=target/bench-data
mkdir -p "$data"
[[ -f $data/atoms.jsonl ]] || python3 ../shared/bench/gen.py "$data" >/dev/null
mkdir -p "$state/files/atoms"
part=0 total=0
while (( total < size_mb * 1024 * 1024 )); do
  sed "s/\"event_id\":\"/\"event_id\":\"p$part-/" "$data/atoms.jsonl" >"$state/files/atoms/part-$part.jsonl"
  total=$(( total + $(stat -c %s "$state/files/atoms/part-$part.jsonl") ))
  part=$(( part + 1 ))
done

project() { # DIR DATASET
  mkdir -p "$1"
  cp -r schemas "$1/"
  cat >"$1/bqsync.toml" <<TOML
[warehouse]
kind = "bigquery"
[warehouse.bigquery]
project = "bench"
dataset = "$2"
endpoint = "$bq"
[gcs]
bucket = "bench-backfill"
endpoint = "$gcs"
create_bucket = true
archive = false
[admin]
listen = "off"
TOML
}
measure() { # NAME DIR COMMAND...
  local name=$1 dir=$2; shift 2
  (cd "$dir" && BQSYNC_LOG=warn /usr/bin/time -f "%e %U %S %M" -o "$state/$name.time" "$@" >"$state/$name.out")
  read -r wall user sys rss <"$state/$name.time"
  local rows jobs
  rows=$(curl -s -X POST "$bq/bigquery/v2/projects/bench/queries" -H 'content-type: application/json' \
    -d "{\"query\":\"SELECT COUNT(*) FROM \`bench.$name.atoms\`\",\"useLegacySql\":false}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["rows"][0]["f"][0]["v"])')
  jobs=$(curl -s "$bq/bigquery/v2/projects/bench/jobs?maxResults=100000&allUsers=true" |
    python3 -c "import json,sys; j=json.load(sys.stdin).get('jobs',[]); print(sum(1 for x in j if '_${name}_' in x['jobReference']['jobId']))")
  printf '| %s | %.1f | %.1f | %.0f | %s | %s |\n' "$name" "$wall" "$(echo "$user + $sys" | bc)" "$((rss / 1024))" "$jobs" "$rows"
}

echo "$part files, $((total / 1024 / 1024)) MiB, $(cat "$state"/files/atoms/*.jsonl | wc -l) lines"
echo
echo '| path | wall s | client CPU s | peak MiB | BigQuery jobs | rows in T |'
echo '|---|---:|---:|---:|---:|---:|'
project "$state/load" load
measure load "$state/load" "$bin" backfill "$state"/files/atoms/*.jsonl --table atoms
project "$state/stream" stream
mkdir -p "$state/stream/inbox"
cp -r "$state/files/atoms" "$state/stream/inbox/"
measure stream "$state/stream" "$bin" run --until-drained
