#!/usr/bin/env bash
# A 1 GiB file downloaded by 16 clients at once, from `vigil --root` and from
# nginx (sendfile on), each with one loop / one worker pinned to core 0 and
# wrk on core 1. Meanwhile one more client asks for a small file on the same
# server: its latency shows whether the downloads starve the loop. Prints
# throughput, that latency, and the server's RSS (most seen, sampled every
# 100 ms), for REPEAT (3) interleaved pairs of SECONDS_EACH (10) seconds.
# Run by `make bench-download`.
set -euo pipefail
VIGIL=${1:-target/release/vigil}
NGINX=$(command -v nginx || true)
SECONDS_EACH=${SECONDS_EACH:-10}
work=$(mktemp -d)
server=
cleanup() {
    [ -n "$server" ] && kill "$server" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/www" "$work/nginx"
head -c 1073741824 /dev/zero >"$work/www/big.bin"
echo "Hello World" >"$work/www/hello.txt"
# nginx's worker runs as another user, and mktemp's directory is private.
chmod -R a+rX "$work"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_of_tree() { # KiB over a process and its children (nginx's master and worker)
    local total=0 pid
    for pid in "$1" $(pgrep -P "$1" || true); do
        total=$((total + $(awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)))
    done
    echo "$total"
}

printf '%-7s %14s %12s %12s %12s %14s\n' server "download" "small p50" "small p99" "small max" "RSS max (KiB)"
measure() { # name, then the server's command line
    local name=$1 port=$2
    shift 2
    taskset -c 0 "$@" >/dev/null 2>&1 &
    server=$!
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
    local samples="$work/rss-$name"
    rm -f "$samples"
    (while kill -0 "$server" 2>/dev/null; do rss_of_tree "$server" >>"$samples"; sleep 0.1; done) &
    local sampler=$!
    taskset -c 1 wrk -t1 -c16 -d"${SECONDS_EACH}s" "http://127.0.0.1:$port/big.bin" >"$work/big-$name" &
    local big=$!
    sleep 1 # the 16 downloads are under way before the small requests start
    local small
    small=$(taskset -c 1 wrk -t1 -c1 -d"$((SECONDS_EACH - 2))s" --latency "http://127.0.0.1:$port/hello.txt")
    wait "$big"
    kill "$sampler" 2>/dev/null || true
    kill "$server"
    wait "$server" 2>/dev/null || true
    server=
    if grep -q "Non-2xx" "$work/big-$name" || grep -q "Non-2xx" <<<"$small"; then
        echo "$name answered errors: its row does not count" >&2
    fi
    printf '%-7s %14s %12s %12s %12s %14s\n' "$name" \
        "$(awk '/Transfer\/sec/ {print $2}' "$work/big-$name")/s" \
        "$(awk '$1 == "50%" {print $2}' <<<"$small")" \
        "$(awk '$1 == "99%" {print $2}' <<<"$small")" \
        "$(awk '$1 == "Latency" {print $4}' <<<"$small")" \
        "$(sort -n "$samples" | tail -1)"
}

# Interleaved repetitions: compare the two within one, not across runs.
for repetition in $(seq "${REPEAT:-3}"); do
    port=$(free_port)
    measure "vigil" "$port" "$VIGIL" --listen "127.0.0.1:$port" --loops 1 --root "$work/www"
    if [ -z "$NGINX" ]; then
        echo "nginx not found: its row is skipped"
        continue
    fi
    port=$(free_port)
    sed -e "s|@PREFIX@|$work/nginx|g" -e "s|@PORT@|$port|g" -e "s|@ROOT@|$work/www|g" \
        "$(dirname "$0")/peers/nginx-files.conf.in" >"$work/nginx/nginx.conf"
    measure "nginx" "$port" "$NGINX" -p "$work/nginx" -e "$work/nginx/error.log" -c "$work/nginx/nginx.conf"
done
