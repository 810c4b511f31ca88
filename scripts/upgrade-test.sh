#!/usr/bin/env bash
# A binary deployed under load: wrk runs 64 connections for 10 s while the
# installed binary is replaced twice (a changed copy renamed into place) and
# the serving process gets SIGUSR2 each time. Passes when wrk saw no socket
# error and no non-2xx answer, each upgrade handed over to a new process, the
# old ones exited 0, and the last serving process runs the last file
# installed. Reports requests/s of the same load without upgrades beside it.
#
# Server on core 0, wrk on core 1 (when there are two cores).
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }; }
need wrk wrk
need curl curl
cargo build --release --locked --quiet --bin vigil

SERVER_CPU=0; CLIENT_CPU=1
[ "$(nproc)" -ge 2 ] || CLIENT_CPU=0
SECONDS_PER_RUN=10

work=$(mktemp -d)
finished=0
pids=()
wrk_pid=
cleanup() {
    # A failed or interrupted run leaves processes behind: every vigil seen
    # (old ones may still drain, a new one may not be ready yet) and wrk.
    if [ "$finished" -eq 0 ]; then
        [ -f "$work/pid" ] && pids+=("$(cat "$work/pid")")
        for pid in $(grep -o 'started [^ ]* pid=[0-9]*' "$work/vigil.log" 2>/dev/null | sed 's/.*pid=//'); do
            pids+=("$pid")
        done
        kill -KILL "${pids[@]}" $wrk_pid 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# The installed binary: a copy, as a package manager would put it.
install_copy() { # tag
    cp target/release/vigil "$work/vigil.new"
    # Trailing bytes change the file (and its inode once renamed), not the program.
    printf 'vigil-upgrade-test %s\n' "$1" >>"$work/vigil.new"
    mv "$work/vigil.new" "$work/vigil"
}

# Waits (up to 10 s) for a line matching $2 in log $1 beyond its first $3 matches.
wait_for_line() {
    for _ in $(seq 1000); do
        [ "$(grep -c -- "$2" "$1" || true)" -gt "$3" ] && return 0
        sleep 0.01
    done
    echo "no line matching '$2' in $1:"; tail -n 30 "$1"; return 1
}

run_wrk() { # output
    taskset -c "$CLIENT_CPU" wrk -t1 -c64 -d"${SECONDS_PER_RUN}s" "http://$ADDR/" >"$1"
}

install_copy 0
RUST_LOG=info taskset -c "$SERVER_CPU" "$work/vigil" --listen 127.0.0.1:0 --no-pin \
    --pid-file "$work/pid" 2>"$work/vigil.log" &
first_pid=$!
pids+=("$first_pid")
wait_for_line "$work/vigil.log" "vigil listening addr=" 0
ADDR=$(grep -o 'vigil listening addr=[^ ]*' "$work/vigil.log" | head -1 | cut -d= -f2)
until [ -f "$work/pid" ]; do sleep 0.01; done

echo "baseline: wrk -t1 -c64 -d${SECONDS_PER_RUN}s, no upgrade"
run_wrk "$work/before.txt"

echo "upgrade run: the same load; new binary + SIGUSR2 at 3 s and at 6.5 s"
run_wrk "$work/during.txt" &
wrk_pid=$!
for at in 3 3.5; do
    sleep "$at"
    served=$(grep -c "is serving after" "$work/vigil.log" || true)
    install_copy "${#pids[@]}"
    kill -USR2 "$(cat "$work/pid")"
    wait_for_line "$work/vigil.log" "is serving after" "$served"
    new_pid=$(grep "is serving after" "$work/vigil.log" | tail -1 | sed -E 's/.*new process pid=([0-9]+).*/\1/')
    until [ "$(cat "$work/pid")" = "$new_pid" ]; do sleep 0.01; done
    pids+=("$new_pid")
done
wait "$wrk_pid"
# The first process is this shell's child: its exit status is known.
status_first=0; wait "$first_pid" || status_first=$?

fail=0
echo "--- before"; cat "$work/before.txt"
echo "--- during"; cat "$work/during.txt"
for f in before during; do
    if grep -qE 'Socket errors|Non-2xx' "$work/$f.txt"; then
        echo "FAIL: wrk saw failures ($f)"; fail=1
    fi
done
[ "$status_first" -eq 0 ] || { echo "FAIL: the first process exited $status_first"; fail=1; }
last=${pids[-1]}
for pid in "${pids[@]:0:${#pids[@]}-1}"; do
    if kill -0 "$pid" 2>/dev/null; then echo "FAIL: old process $pid still runs"; fail=1; fi
done
# /proc/PID/exe of the serving process is the file installed last (same
# inode); the old processes ran files that were replaced.
if [ "$(stat -L -c %i "/proc/$last/exe")" != "$(stat -c %i "$work/vigil")" ]; then
    echo "FAIL: pid $last does not run the binary installed last"; fail=1
fi
rps() { awk '/Requests\/sec/ {print $2}' "$1"; }
before=$(rps "$work/before.txt"); during=$(rps "$work/during.txt")
echo "processes: ${pids[*]} (serving: $last, exe $(readlink "/proc/$last/exe"))"
echo "requests/s: before $before, during the two upgrades $during, ratio $(awk -v a="$during" -v b="$before" 'BEGIN {printf "%.3f", a/b}')"
grep -E "upgrade|drained" "$work/vigil.log" | sed 's/^/  /'
kill -TERM "$last"
finished=1
[ "$fail" -eq 0 ] && echo "PASS: two upgrades under load, no failed request"
exit "$fail"
