#!/usr/bin/env python3
"""Memory per connection: vigil against may_minihttp.

For each server (two loops / two may workers): RSS after a wrk -c64 run, then
after 10,000 idle keep-alive connections (each has made one request), and the
RSS growth per connection. For vigil also the per-loop jemalloc arena figures
from its admin plane. Run by `make bench-memory`.

Usage: memory.py VIGIL_BIN MAY_BIN [--conns N]
"""
import argparse, json, os, resource, socket, subprocess, sys, time, urllib.request


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def wait_listening(port, limit=10.0):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"nothing listening on {port}")


def one_request(sock):
    sock.sendall(b"GET / HTTP/1.1\r\nHost: m\r\n\r\n")
    buf = b""
    while b"Hello World\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise OSError("closed")
        buf += chunk


def raise_fd_limit(n):
    """Client and server each hold one fd per connection, plus a few."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY:
        n = min(n, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))


def measure(name, argv, port, conns, admin=None):
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              preexec_fn=lambda: raise_fd_limit(2 * conns + 1000))
    try:
        wait_listening(port)
        time.sleep(0.2)
        idle_rss = rss_bytes(server.pid)
        subprocess.run(["wrk", "-t2", "-c64", "-d5s", f"http://127.0.0.1:{port}/"],
                       check=True, stdout=subprocess.DEVNULL)
        after_wrk = rss_bytes(server.pid)
        held = []
        for _ in range(conns):
            s = socket.create_connection(("127.0.0.1", port))
            one_request(s)
            held.append(s)
        time.sleep(0.5)  # let the server's bookkeeping settle
        with_conns = rss_bytes(server.pid)
        arenas = None
        if admin:
            time.sleep(1.1)  # one --mem-interval, so the arena figures are fresh
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/loops") as r:
                snapshot = json.load(r)
            arenas = [(l["slot"], (l["memory"] or {}).get("allocated")) for l in snapshot["loops"]]
            arenas.append(("process", (snapshot["memory"] or {}).get("allocated")))
        for s in held:
            s.close()
        return {
            "server": name, "idle_rss": idle_rss, "after_wrk_rss": after_wrk,
            "with_conns_rss": with_conns,
            "per_conn": (with_conns - after_wrk) / conns, "arenas": arenas,
        }
    finally:
        server.terminate()
        server.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("vigil")
    ap.add_argument("may")
    # vigil keeps half its descriptors free for a handoff's duplicates, so
    # it takes about (limit - 100) / 2 connections: 9,000 fit the 20,000
    # hard limit of the machines this runs on.
    ap.add_argument("--conns", type=int, default=9_000)
    args = ap.parse_args()
    raise_fd_limit(2 * args.conns + 1000)
    results = []
    vport, aport, mport = free_port(), free_port(), free_port()
    results.append(measure("vigil", [args.vigil, "--listen", f"127.0.0.1:{vport}", "--loops", "2",
                                     "--admin", f"127.0.0.1:{aport}"], vport, args.conns, admin=aport))
    results.append(measure("may_minihttp", [args.may, f"127.0.0.1:{mport}", "2"], mport, args.conns))
    mib = lambda b: f"{b / 1048576:.1f} MiB"
    print(f"{'server':14} {'RSS idle':>10} {'after wrk':>10} {'+' + str(args.conns) + ' conns':>12} {'per conn':>10}")
    for r in results:
        print(f"{r['server']:14} {mib(r['idle_rss']):>10} {mib(r['after_wrk_rss']):>10} "
              f"{mib(r['with_conns_rss']):>12} {r['per_conn']:>8.0f} B")
        if r["arenas"]:
            print("  jemalloc allocated with the connections open: " +
                  ", ".join(f"loop {s}: {mib(a or 0)}" if s != "process" else f"process: {mib(a or 0)}"
                            for s, a in r["arenas"]))
    os.makedirs("target/bench", exist_ok=True)
    with open("target/bench/memory.json", "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
