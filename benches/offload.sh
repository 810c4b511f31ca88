#!/usr/bin/env bash
# Latency of `/` while 32 requests for 50 ms of CPU work are kept in flight:
# the work offloaded (/work?ms=50) against the same work on the loop
# (/work-inline?ms=50). One loop, so that `/` shares it with the work (with
# two, inline work piles onto one loop and the other serves `/`: that
# measures the accept spread, not offloading). Run by `make bench-offload`.
set -euo pipefail
VIGIL=${1:-target/release/vigil}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$VIGIL" --listen "127.0.0.1:$port" --loops 1 --offload-threads 2 --demo 2>/dev/null &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done

printf '%-22s %10s %10s %10s %12s\n' "32 in flight on" "p50" "p99" "max" "/ req/s"
for path in "/work?ms=50" "/work-inline?ms=50"; do
    wrk -t1 -c32 -d9s "http://127.0.0.1:$port$path" >/dev/null &
    background=$!
    sleep 1 # let the background load reach its 32 requests in flight
    out=$(wrk -t1 -c8 -d6s --latency "http://127.0.0.1:$port/")
    wait "$background"
    p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    max=$(awk '$1 == "Latency" {print $4}' <<<"$out")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    printf '%-22s %10s %10s %10s %12s\n' "$path" "$p50" "$p99" "$max" "$rps"
done
