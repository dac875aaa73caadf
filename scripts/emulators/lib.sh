# Shared by the emulator scripts (sourced): waiting for a started emulator and stopping it by PID.

# wait_ready NAME PID DIR SECONDS CHECK...: polls CHECK (a command) every 0.25 s until it succeeds;
# fails with the log's tail if the process exits, or after SECONDS.
wait_ready() {
    local name=$1 pid=$2 dir=$3 seconds=$4
    shift 4
    local tries=$((seconds * 4))
    for _ in $(seq 1 "$tries"); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$name: exited while starting; its log ($dir/log) ends with:" >&2
            tail -20 "$dir/log" >&2
            return 1
        fi
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.25
    done
    echo "$name: no answer after $seconds s; log: $dir/log" >&2
    kill "$pid" 2>/dev/null || true
    return 1
}

# stop_pid DIR: stops the process whose PID is in DIR/pid (SIGTERM, then SIGKILL after 10 s).
stop_pid() {
    local dir=$1
    [[ -f $dir/pid ]] || return 0
    local pid
    pid=$(cat "$dir/pid")
    if kill "$pid" 2>/dev/null; then
        for _ in $(seq 1 40); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.25
        done
        # Only if it is still there: a PID that exited may already belong to another process.
        if kill -0 "$pid" 2>/dev/null; then
            kill -9 "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$dir/pid"
}
