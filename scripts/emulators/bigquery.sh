#!/usr/bin/env bash
# The BigQuery emulator `local-bigquery` (PyPI, DuckDB inside) on loopback, for tests and local runs.
#
#   scripts/emulators/bigquery.sh install          install it into .deps/bigquery-emulator (idempotent)
#   scripts/emulators/bigquery.sh start DIR [PORT] install if needed, start, wait, print http://HOST:PORT
#   scripts/emulators/bigquery.sh stop DIR         stop the one started with DIR
#
# DIR holds pid, url, log, a fresh data dir and the HOME the emulator's DuckDB writes extensions to.
# It needs CPython >= 3.13: BIGQUERY_EMULATOR_PYTHON, else python3.13 on PATH, else the newest 3.13+
# under `pyenv root`. DuckDB inside it would download extensions at start-up (no internet here): the
# script pins DuckDB and installs those extensions from their PyPI wheels instead. The gRPC port
# (Storage Write API) is PORT+10. A missing Python or a failed start is an error, never a skip.
# BIGQUERY_EMULATOR_KEEP_DATA=1 keeps DIR's data from the last start (to restart after an outage).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
root=$(cd "$(dirname "$0")/../.." && pwd)
venv="$root/.deps/bigquery-emulator"
version=0.4.0
duckdb_version=1.5.5
project=${BIGQUERY_EMULATOR_PROJECT:-bqsync-test}

# A pyenv shim for a version that is not selected exists but fails: run it to be sure.
usable() {
    "$1" -c 'import sys; sys.exit(sys.version_info < (3, 13))' 2>/dev/null
}

find_python() {
    local c
    for c in "${BIGQUERY_EMULATOR_PYTHON:-}" "$(command -v python3.13 || true)"; do
        [[ -n $c && -x $c ]] && usable "$c" && { echo "$c"; return 0; }
    done
    if command -v pyenv >/dev/null 2>&1; then
        c=$(ls -d "$(pyenv root)"/versions/3.1[3-9]* 2>/dev/null | sort -V | tail -1)
        [[ -n $c && -x $c/bin/python3 ]] && usable "$c/bin/python3" && { echo "$c/bin/python3"; return 0; }
    fi
    return 1
}

install() {
    if [[ -f $venv/READY && $(cat "$venv/READY") == "$version/$duckdb_version" ]]; then
        return 0
    fi
    local python
    if ! python=$(find_python); then
        echo "bigquery emulator: local-bigquery needs CPython >= 3.13; none found (set BIGQUERY_EMULATOR_PYTHON," >&2
        echo "or install one, e.g. 'pyenv install 3.13')" >&2
        exit 1
    fi
    echo "bigquery emulator: installing local-bigquery==$version with $python ..." >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "local-bigquery==$version"
    "$venv/bin/pip" install -q --disable-pip-version-check --no-deps "duckdb==$duckdb_version" \
        "duckdb-extension-icu==$duckdb_version" "duckdb-extension-spatial==$duckdb_version" \
        "duckdb-extension-ducklake==$duckdb_version"
    echo "$version/$duckdb_version" >"$venv/READY"
}

# Installs the wheel-shipped extensions into HOME's DuckDB extension folder, so nothing is downloaded.
install_extensions() {
    local home=$1
    HOME=$home "$venv/bin/python" - "$venv" <<'PY'
import glob, sys, duckdb
files = glob.glob(sys.argv[1] + "/lib/python*/site-packages/**/*.duckdb_extension", recursive=True)
if not files:
    sys.exit("bigquery emulator: no .duckdb_extension files in the venv")
for f in files:
    duckdb.sql(f"INSTALL '{f}'")
PY
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
    local dir=$1 port=${2:-}
    install
    mkdir -p "$dir/home" "$dir/gcs"
    # A fresh data dir unless BIGQUERY_EMULATOR_KEEP_DATA=1 (a restart after an outage test).
    [[ ${BIGQUERY_EMULATOR_KEEP_DATA:-0} == 1 ]] || rm -rf "$dir/data"
    mkdir -p "$dir/data"
    install_extensions "$dir/home"
    [[ -n $port ]] || port=$(free_port)
    local grpc_port=$((port + 10))
    HOME="$dir/home" GCS_LOCAL_ROOT="${GCS_LOCAL_ROOT:-$dir/gcs}" nohup "$venv/bin/local-bigquery" serve \
        --host 127.0.0.1 --port "$port" --grpc-port "$grpc_port" --project "$project" \
        --data-dir "$dir/data" >"$dir/log" 2>&1 &
    local pid=$!
    echo "$pid" >"$dir/pid"
    local url="http://127.0.0.1:$port"
    echo "$url" >"$dir/url"
    wait_ready "bigquery emulator" "$pid" "$dir" 60 curl -sf --max-time 1 "$url/bigquery/v2/projects/$project/datasets"
    echo "$url"
}


case ${1:-} in
    install) install ;;
    start) start "${2:?usage: $0 start DIR [PORT]}" "${3:-}" ;;
    stop) stop_pid "${2:?usage: $0 stop DIR}" ;;
    *) echo "usage: $0 install | start DIR [PORT] | stop DIR" >&2; exit 2 ;;
esac
