#!/usr/bin/env bash
# Two 1 GiB uploads to `vigil --demo`'s /upload, a streaming route that
# writes the body to a temporary file: one with Content-Length, one chunked.
# Prints the server's RSS before, the most seen during (sampled every
# 100 ms) and after: it stays flat, since the loop reads the socket only as
# fast as the handler consumes. Run by `make bench-upload`.
set -euo pipefail
VIGIL=${1:-target/release/vigil}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$VIGIL" --listen "127.0.0.1:$port" --loops 1 --demo 2>/dev/null &
server=$!
samples=$(mktemp)
body=$(mktemp)
trap 'kill $server 2>/dev/null || true; rm -f "$samples" "$body"' EXIT
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done

rss() { awk '/VmRSS/ {print $2}' "/proc/$server/status"; }
head -c 1073741824 /dev/zero >"$body"
echo "RSS before: $(rss) KiB"
(while kill -0 "$server" 2>/dev/null; do rss >>"$samples"; sleep 0.1; done) &
sampler=$!
for framing in content-length chunked; do
    start=$(date +%s%N)
    if [ "$framing" = content-length ]; then
        answer=$(curl -sS -T "$body" "http://127.0.0.1:$port/upload")
    else
        answer=$(curl -sS -T - "http://127.0.0.1:$port/upload" <"$body")
    fi
    ms=$(( ($(date +%s%N) - start) / 1000000 ))
    printf '%-15s %8d ms  %s\n' "$framing" "$ms" "$answer"
done
kill "$sampler"
echo "RSS during: at most $(sort -n "$samples" | tail -1) KiB over $(wc -l <"$samples") samples; after: $(rss) KiB"
