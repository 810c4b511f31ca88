#!/usr/bin/env bash
# Two vigil instances behind HAProxy; one is stopped with SIGTERM under a wrk
# load. Passes when the client saw no failed request, the stopped instance
# exited 0 and its in-flight slow request completed.
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }; }
need haproxy haproxy
need wrk wrk
need curl curl
cargo build --release --locked --quiet
VIGIL=target/release/vigil

work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
show_logs() { tail -n 20 "$work"/*.log; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HTTP=$(free_port); A=$(free_port); B=$(free_port); ADMIN_A=$(free_port); ADMIN_B=$(free_port)

start_vigil() { # port admin-port log
    RUST_LOG=info "$VIGIL" --listen "127.0.0.1:$1" --admin "127.0.0.1:$2" --loops 1 --demo \
        --shutdown-timeout 5s 2>"$3" &
    pids+=($!)
}
start_vigil "$A" "$ADMIN_A" "$work/a.log"; pid_a=$!
start_vigil "$B" "$ADMIN_B" "$work/b.log"
wait_for() { for _ in $(seq 100); do curl -sf "$1" >/dev/null && return 0; sleep 0.05; done; echo "not up: $1"; return 1; }
wait_for "http://127.0.0.1:$ADMIN_A/readyz"
wait_for "http://127.0.0.1:$ADMIN_B/readyz"

sed -e "s/@HTTP@/$HTTP/; s/@A@/$A/; s/@B@/$B/; s/@ADMIN_A@/$ADMIN_A/; s/@ADMIN_B@/$ADMIN_B/" \
    deploy/haproxy.cfg >"$work/haproxy.cfg"
haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$HTTP/" || { show_logs; exit 1; }

echo "load: wrk -t1 -c32 -d6s through haproxy; SIGTERM to instance A after 2s"
wrk -t1 -c32 -d6s "http://127.0.0.1:$HTTP/" >"$work/wrk.txt" &
wrk_pid=$!
sleep 2
# A slow request straight to A, in flight when the signal lands.
curl -s -o "$work/slow.txt" -w '%{http_code}' "http://127.0.0.1:$A/work?ms=1000" >"$work/slow.code" &
slow_pid=$!
sleep 0.2
start=$(date +%s%N)
kill -TERM "$pid_a"
status_a=0; wait "$pid_a" || status_a=$?
stopped_ms=$(( ($(date +%s%N) - start) / 1000000 ))
wait "$slow_pid" || true
wait "$wrk_pid"

cat "$work/wrk.txt"
requests=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
errors=$(grep -E 'Socket errors|Non-2xx' "$work/wrk.txt" || true)
echo "instance A: exit $status_a after SIGTERM in ${stopped_ms} ms; in-flight /work?ms=1000 got $(cat "$work/slow.code")"
fail=0
[ "$status_a" = 0 ] || { echo "FAIL: instance A exited $status_a"; fail=1; }
[ "$(cat "$work/slow.code")" = 200 ] || { echo "FAIL: the in-flight request did not complete"; fail=1; }
[ -z "$errors" ] || { echo "FAIL: the client saw errors: $errors"; fail=1; }
[ "${requests:-0}" -gt 0 ] || { echo "FAIL: no requests"; fail=1; }
if [ "$fail" = 0 ]; then echo "1 passed, 0 failed"; else tail -5 "$work/a.log" "$work/haproxy.log"; echo "0 passed, 1 failed"; exit 1; fi
