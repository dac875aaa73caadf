#!/usr/bin/env bash
# Installs Google's Python Pub/Sub client into .deps/pyvenv (idempotent), for the test that proves the
# message envelope is a public contract and for the side-by-side benchmark. Not needed to run bqsync.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.deps/pyvenv"
version=2.44.0
if [ "$(cat "$venv/VERSION" 2>/dev/null)" = "$version" ]; then
  exit 0
fi
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "google-cloud-pubsub==$version"
echo "$version" > "$venv/VERSION"
echo "setup: google-cloud-pubsub $version installed in $venv" >&2
