#!/usr/bin/env bash
# Installs what bqsync needs to build and run on the embedded default, idempotently:
#   - the prebuilt DuckDB shared library (libduckdb.so 1.5.6) into .deps/duckdb/, taken from the npm
#     registry package @duckdb/node-bindings-linux-x64 (building DuckDB from C++ source costs ~25 min
#     and 8 GB of target dir on 2 cores; see docs/emulators.md "Why a prebuilt DuckDB").
# Needs: cargo, npm (only on first run), tar, python3 (for the benchmark generator only).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
duck_version=1.5.6-r.1
duck_dir="$root/.deps/duckdb"

if [ -f "$duck_dir/libduckdb.so" ] && [ "$(cat "$duck_dir/VERSION" 2>/dev/null)" = "$duck_version" ]; then
  exit 0
fi
command -v npm >/dev/null || { echo "setup: npm is needed once to fetch libduckdb.so (apt-get install npm)" >&2; exit 1; }
case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) pkg=@duckdb/node-bindings-linux-x64 ;;
  Linux-aarch64) pkg=@duckdb/node-bindings-linux-arm64 ;;
  *) echo "setup: no prebuilt DuckDB for $(uname -sm); build with 'cargo build --features duckdb/bundled'" >&2; exit 1 ;;
esac
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "setup: fetching $pkg@$duck_version (libduckdb.so) ..." >&2
(cd "$tmp" && npm pack --silent "$pkg@$duck_version" >/dev/null)
tar -xzf "$tmp"/*.tgz -C "$tmp"
mkdir -p "$duck_dir"
cp "$tmp/package/libduckdb.so" "$duck_dir/"
echo "$duck_version" > "$duck_dir/VERSION"
echo "setup: libduckdb.so installed in $duck_dir" >&2
