#!/usr/bin/env bash
# The Pub/Sub emulator (Google's, Java) on loopback, for tests and local runs.
#
#   scripts/emulators/pubsub.sh start DIR [PORT]   start it, wait until it answers, print HOST:PORT
#   scripts/emulators/pubsub.sh stop DIR           stop the one started with DIR
#
# DIR holds pid, host and log. The Java heap is capped (PUBSUB_EMULATOR_HEAP, default 1g): without a
# cap the emulator's memory grows to gigabytes under load. A missing emulator or Java is an error,
# never a skip. Install elsewhere: the Debian/Ubuntu package `google-cloud-cli-pubsub-emulator` from
# Google's apt repository, or `gcloud components install pubsub-emulator`; or point
# PUBSUB_EMULATOR_BIN at its `cloud-pubsub-emulator` script.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

find_emulator() {
    local candidates=(
        "${PUBSUB_EMULATOR_BIN:-}"
        /usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator
        /usr/share/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator
        /opt/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator
    )
    if command -v gcloud >/dev/null 2>&1; then
        local root
        root=$(gcloud info --format='value(installation.sdk_root)' 2>/dev/null || true)
        [[ -n $root ]] && candidates+=("$root/platform/pubsub-emulator/bin/cloud-pubsub-emulator")
    fi
    for c in "${candidates[@]}"; do
        if [[ -n $c && -x $c ]]; then
            echo "$c"
            return 0
        fi
    done
    return 1
}

# Emulator 0.8.20 bundles a grpc-netty that calls a method its bundled grpc-api lacks; every cancelled
# client stream then leaves a dead stream behind that swallows messages for good (see
# pubsub-shim/io/grpc/InternalStatus.java). Versions with the method need no shim.
needs_shim() {
    ! javap -cp "$1" io.grpc.InternalStatus 2>/dev/null | grep -q 'asRuntimeException(io.grpc.Status, io.grpc.Metadata, boolean)'
}

shim() {
    local jar=$1 out=$2
    if ! command -v javac >/dev/null 2>&1; then
        echo "pubsub emulator: javac not found; it is needed to build the shim for this emulator version" >&2
        exit 1
    fi
    mkdir -p "$out"
    javac -nowarn -d "$out" -cp "$jar" "$(dirname "$0")/pubsub-shim/io/grpc/InternalStatus.java"
}

# The emulator answers `Ok` on / when ready.
answers_ok() {
    [[ $(curl -s --max-time 1 "$1" 2>/dev/null) == Ok* ]]
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
    local dir=$1 port=${2:-}
    mkdir -p "$dir"
    local emulator
    if ! emulator=$(find_emulator); then
        echo "pubsub emulator: not found. Install the package google-cloud-cli-pubsub-emulator (Google's apt" >&2
        echo "repository) or 'gcloud components install pubsub-emulator', or set PUBSUB_EMULATOR_BIN." >&2
        exit 1
    fi
    if ! command -v java >/dev/null 2>&1; then
        echo "pubsub emulator: java not found (the emulator needs Java 11+; e.g. apt install openjdk-17-jre-headless)" >&2
        exit 1
    fi
    [[ -n $port ]] || port=$(free_port)
    local jar
    jar=$(ls "$(dirname "$emulator")"/../lib/cloud-pubsub-emulator-*.jar 2>/dev/null | head -1)
    if [[ -z $jar ]]; then
        echo "pubsub emulator: no cloud-pubsub-emulator-*.jar next to $emulator" >&2
        exit 1
    fi
    local classpath=$jar
    if needs_shim "$jar"; then
        shim "$jar" "$dir/shim"
        classpath="$dir/shim:$jar"
    fi
    # The jar directly (the start script does the same, minus the classpath shim).
    nohup java "-Xmx${PUBSUB_EMULATOR_HEAP:-1g}" -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
        -cp "$classpath" com.google.cloud.pubsub.testing.v1.Main --host=127.0.0.1 --port="$port" >"$dir/log" 2>&1 &
    local pid=$!
    echo "$pid" >"$dir/pid"
    echo "127.0.0.1:$port" >"$dir/host"
    wait_ready "pubsub emulator" "$pid" "$dir" 60 answers_ok "http://127.0.0.1:$port/"
    echo "127.0.0.1:$port"
}


case ${1:-} in
    start) start "${2:?usage: $0 start DIR [PORT]}" "${3:-}" ;;
    stop) stop_pid "${2:?usage: $0 stop DIR}" ;;
    *) echo "usage: $0 start DIR [PORT] | stop DIR" >&2; exit 2 ;;
esac
