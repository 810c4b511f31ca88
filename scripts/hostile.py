#!/usr/bin/env python3
"""Hostile clients against a release build of vigil: `make hostile`.

Usage: python3 scripts/hostile.py PATH/TO/vigil

Each case starts a fresh vigil on ephemeral 127.0.0.1 ports (read from its
log), replays one attack, measures the process from /proc, times a
well-behaved probe (GET / on a new connection), kills the process and
prints one line. A table closes the run. The exit status is 0 whatever the
verdicts (this is a report), 1 when the script itself fails. Standard
library only; every socket has a timeout and every case a time bound.
"""

import errno
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# The whole run must end well inside four minutes.
TIME_BUDGET_S = 220
START_TIMEOUT_S = 10.0
PROBE_TIMEOUT_S = 2.0

_started = []  # every Popen, killed at the end whatever happens


class BudgetExceeded(Exception):
    pass


def now():
    return time.monotonic()


# --------------------------------------------------------------- the server


class Vigil:
    """A vigil process on ephemeral ports, killed on exit from `with`."""

    def __init__(self, binary, args=(), nofile=None, admin=True):
        self.binary = binary
        self.args = list(args)
        self.nofile = nofile
        self.want_admin = admin
        self.proc = None
        self.addr = None
        self.admin = None
        self.log = tempfile.NamedTemporaryFile(prefix="vigil-hostile-", suffix=".log", delete=False)

    def __enter__(self):
        cmd = [self.binary, "--listen", f"{HOST}:0"] + self.args
        if self.want_admin:
            cmd += ["--admin", f"{HOST}:0"]
        if self.nofile is not None:
            # dash and bash both set the soft and the hard limit without -S/-H,
            # so vigil cannot raise it back.
            cmd = ["sh", "-c", f'ulimit -n {int(self.nofile)} && exec "$0" "$@"'] + cmd
        env = dict(os.environ, RUST_LOG="info")
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.log, env=env
        )
        _started.append(self.proc)
        deadline = now() + START_TIMEOUT_S
        while now() < deadline:
            text = self.log_text()
            m = re.search(r"vigil listening addr=([0-9.]+):(\d+)", text)
            a = re.search(r"admin plane listening addr=([0-9.]+):(\d+)", text)
            if m and (a or not self.want_admin):
                self.addr = (m.group(1), int(m.group(2)))
                if a:
                    self.admin = (a.group(1), int(a.group(2)))
                time.sleep(0.2)  # let the loops settle before measuring
                return self
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise RuntimeError(f"vigil exited with {code} at start: {text[-500:]!r}")
            time.sleep(0.02)
        raise RuntimeError("vigil did not log its addresses within 10 s")

    def __exit__(self, *exc):
        self.kill()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass
        return False

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.log.close()

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def log_text(self):
        with open(self.log.name, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def log_bytes(self):
        return os.path.getsize(self.log.name)

    def rss_kib(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def cpu_ticks(self):
        with open(f"/proc/{self.pid}/stat") as f:
            stat = f.read()
        fields = stat[stat.rfind(")") + 2 :].split()
        return int(fields[11]) + int(fields[12])  # utime + stime

    def open_file_limit(self):
        with open(f"/proc/{self.pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    return int(line.split()[3])
        return None


# ------------------------------------------------------------- HTTP helpers


class Reader:
    """Reads HTTP/1.1 responses (Content-Length framed) off a socket."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def response(self, deadline):
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                lines = self.buf[:end].decode("latin-1").split("\r\n")
                status = int(lines[0].split()[1])
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
                if len(self.buf) >= end + 4 + length:
                    body = self.buf[end + 4 : end + 4 + length]
                    self.buf = self.buf[end + 4 + length :]
                    if status == 100:
                        continue
                    return status, headers, body
            left = deadline - now()
            if left <= 0:
                raise socket.timeout("response not received in time")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionAbortedError("closed before a whole response")
            self.buf += chunk


def request(addr, method, path, timeout=2.0, headers=(), body=b""):
    """One request on a new connection: (status, headers, body, ms)."""
    t0 = now()
    with socket.create_connection(addr, timeout=timeout) as s:
        head = f"{method} {path} HTTP/1.1\r\nHost: hostile\r\nConnection: close\r\n"
        for h in headers:
            head += h + "\r\n"
        s.sendall(head.encode() + b"\r\n" + body)
        status, hdrs, data = Reader(s).response(t0 + timeout)
    return status, hdrs, data, (now() - t0) * 1000


def get_json(addr, path):
    status, _, body, _ = request(addr, "GET", path, timeout=3.0)
    if status != 200:
        raise RuntimeError(f"GET {path} answered {status}")
    return json.loads(body)


def recycled_from_metrics(admin):
    status, _, body, _ = request(admin, "GET", "/metrics", timeout=3.0)
    if status != 200:
        raise RuntimeError(f"GET /metrics answered {status}")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith("vigil_replacements_total{") and 'reason="recycled"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


class Probe:
    """A well-behaved client: GET / on a new connection, timed."""

    def __init__(self, addr, timeout=PROBE_TIMEOUT_S):
        self.addr, self.timeout = addr, timeout
        self.ok, self.ms, self.note = False, None, "not run"
        self._thread = None

    def run(self):
        t0 = now()
        try:
            status, _, body, ms = request(self.addr, "GET", "/", timeout=self.timeout)
            self.ok = status == 200 and body == b"Hello World\n"
            self.ms, self.note = ms, "" if self.ok else f"status {status}"
        except (OSError, ValueError, IndexError) as err:
            self.ms, self.note = (now() - t0) * 1000, type(err).__name__
        return self

    def start(self, delay=0.0):
        """Runs in the background (after `delay`), while the attack goes on."""

        def body():
            time.sleep(delay)
            self.run()

        self._thread = threading.Thread(target=body, daemon=True)
        self._thread.start()
        return self

    def result(self):
        if self._thread is not None:
            self._thread.join(self.timeout + 5)
        return self

    def text(self):
        if self.ok:
            return f"yes, {self.ms:.1f} ms"
        if self.ms is None:
            return f"no ({self.note})"
        return f"no ({self.note} after {self.ms:.0f} ms)"


def close_all(socks):
    for s in socks:
        try:
            s.close()
        except OSError:
            pass


def connect_many(addr, count, payload=b"", timeout=3.0):
    """`count` blocking connects (loopback: fast), each sending `payload`;
    returns the sockets, non-blocking, and how many failed."""
    socks, failed = [], 0
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(addr)
            if payload:
                s.sendall(payload)
            s.setblocking(False)
            socks.append(s)
        except OSError:
            failed += 1
            s.close()
    return socks, failed


def established_at(port):
    """Server-side sockets ESTABLISHED on 127.0.0.1:`port` (/proc/net/tcp):
    what the server holds, as against what its clients believe."""
    count = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[1] == f"0100007F:{port:04X}" and fields[3] == "01":
                count += 1
    return count


def mib(kib):
    return f"{kib / 1024:.1f} MiB"


# ------------------------------------------------------------------- cases


def case_admin_flood(binary):
    with Vigil(binary, nofile=512) as v:
        limit = v.open_file_limit()
        count, hold_s = 1000, 2.0
        socks, state, got = [], {}, {}
        poller = select.poll()
        t0, ticks0 = now(), v.cpu_ticks()
        for i in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            rc = s.connect_ex(v.admin)
            socks.append(s)
            if rc in (0, errno.EINPROGRESS):
                state[i] = "pending"
                poller.register(s.fileno(), select.POLLIN | select.POLLOUT)
            else:
                state[i] = "refused" if rc == errno.ECONNREFUSED else f"errno {rc}"
        by_fd = {s.fileno(): i for i, s in enumerate(socks)}
        data_probe = Probe(v.addr).start(delay=0.5)
        hold_until = now() + hold_s
        while now() < hold_until:
            for fd, ev in poller.poll(50):
                i = by_fd[fd]
                s = socks[i]
                connected = ev & (select.POLLOUT | select.POLLERR | select.POLLHUP)
                if state[i] == "pending" and connected:
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        state[i] = "refused" if err == errno.ECONNREFUSED else "reset"
                        poller.unregister(fd)
                        continue
                    state[i] = "open"
                    poller.modify(fd, select.POLLIN)
                if ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                    try:
                        chunk = s.recv(4096)
                    except BlockingIOError:
                        continue
                    except ConnectionResetError:
                        chunk = None
                    answered = (got.get(i, b"") + (chunk or b"")).startswith(b"HTTP/1.1 503")
                    if chunk:
                        got[i] = got.get(i, b"") + chunk
                        if answered:
                            state[i] = "503"
                        continue
                    # EOF (b"") or a reset (None): the 503 may have come first.
                    state[i] = "503" if answered else ("closed" if chunk == b"" else "reset")
                    poller.unregister(fd)
        wall, ticks1 = now() - t0, v.cpu_ticks()
        server_side = established_at(v.admin[1])
        cpu_pct = 100.0 * (ticks1 - ticks0) / CLK_TCK / wall
        close_all(socks)
        closed_at = now()
        try:
            status, _, _, ms = request(v.admin, "GET", "/healthz", timeout=1.0)
            healthz = (status == 200, f"{status} in {ms:.0f} ms")
        except OSError as err:
            healthz = (False, f"{type(err).__name__} after {(now() - closed_at) * 1000:.0f} ms")
        probe = data_probe.result()
        out_of_fds = v.log_text().count("out of file descriptors")
    tally = {}
    for s in state.values():
        tally[s] = tally.get(s, 0) + 1
    held = tally.pop("open", 0)
    figure = (
        f"nofile={limit}: {tally.get('503', 0)}x503, {tally.get('refused', 0)} refused, "
        f"{tally.get('reset', 0)} reset, {tally.get('closed', 0)} closed silently, "
        f"{held} open at 2 s ({server_side} of them established on the server side), "
        f"{tally.get('pending', 0)} not connected; CPU {cpu_pct:.1f}% over "
        f"{wall:.1f} s; /healthz after: {healthz[1]}; out-of-fd warnings {out_of_fds}"
    )
    bad = []
    if cpu_pct >= 50:
        bad.append("CPU spin")
    if not healthz[0]:
        bad.append("/healthz not answered within 1 s")
    if not probe.ok:
        bad.append("data plane not served")
    return figure, probe, bad


def case_admin_oversized_head(binary):
    with Vigil(binary) as v:
        rss0 = v.rss_kib()
        line = b"X-Fill: " + b"a" * 54 + b"\r\n"  # 64 bytes a line
        payload = b"GET /healthz HTTP/1.1\r\nHost: hostile\r\n" + line * ((1 << 20) // len(line))
        s = socket.create_connection(v.admin, timeout=3)
        s.setblocking(False)
        sent, got, ended = 0, b"", "still open"
        deadline = now() + 4.0
        try:
            while now() < deadline:
                want_write = [s] if sent < len(payload) else []
                readable, writable, _ = select.select([s], want_write, [], 0.05)
                if readable:
                    try:
                        chunk = s.recv(65536)
                    except ConnectionResetError:
                        ended = "reset"
                        break
                    if not chunk:
                        ended = "closed"
                        break
                    got += chunk
                if writable:
                    try:
                        sent += s.send(payload[sent : sent + 65536])
                    except (BrokenPipeError, ConnectionResetError) as err:
                        ended = f"{type(err).__name__} while sending"
                        try:  # what had arrived before the reset
                            got += s.recv(65536)
                        except OSError:
                            pass
                        break
        finally:
            s.close()
        time.sleep(0.3)
        rss1 = v.rss_kib()
        probe = Probe(v.addr).run()
    status = int(got.split()[1]) if got.startswith(b"HTTP/1.") else None
    figure = (
        f"status {status if status else 'none'} ({ended}) after {sent // 1024} KiB sent of "
        f"{len(payload) // 1024} KiB; RSS {mib(rss0)} -> {mib(rss1)}"
    )
    bad = []
    if status != 431:
        bad.append(f"expected 431, got {status}")
    if rss1 - rss0 > 4096:
        bad.append("RSS grew over 4 MiB")
    return figure, probe, bad


def case_smuggled_recycle(binary):
    with Vigil(binary) as v:
        before = get_json(v.admin, "/loops")
        gens0 = [l["generation"] for l in before["loops"]]
        inner = b"POST /loops/recycle HTTP/1.1\r\nHost: hostile\r\nContent-Length: 0\r\n\r\n"
        outer = b"GET /healthz HTTP/1.1\r\nHost: hostile\r\nContent-Length: %d\r\n\r\n" % len(inner)
        with socket.create_connection(v.admin, timeout=3) as s:
            s.sendall(outer + inner)
            reader = Reader(s)
            status, _, _ = reader.response(now() + 3)
            extra = 0  # a second response would be the smuggled request answered
            try:
                while True:
                    reader.response(now() + 1)
                    extra += 1
            except (OSError, ValueError, IndexError):
                pass
        time.sleep(1.2)
        after = get_json(v.admin, "/loops")
        gens1 = [l["generation"] for l in after["loops"]]
        probe = Probe(v.addr).run()
    changed = gens0 != gens1 or after.get("recycled", 0) != before.get("recycled", 0)
    figure = (
        f"status {status}, {extra} further response(s); generations {gens0} -> {gens1}"
        f" ({'CHANGED' if changed else 'unchanged'})"
    )
    bad = []
    if status != 413:
        bad.append(f"expected 413, got {status}")
    if changed or extra:
        bad.append("the smuggled recycle ran")
    return figure, probe, bad


def keepalive_storm(addr, req, total, conns, batch, limit_s=40):
    """Sends `req` `total` times over `conns` keep-alive connections, taking
    turns, `batch` pipelined at a time, reading every response; a connection
    the server closes is counted and opened anew. Returns (statuses,
    reconnects)."""
    socks = [socket.create_connection(addr, timeout=3) for _ in range(conns)]
    readers = [Reader(s) for s in socks]
    statuses, reconnects, done = {}, 0, 0
    t0 = now()
    try:
        while done < total and now() - t0 < limit_s:
            k = (done // batch) % conns
            n = min(batch, total - done)
            try:
                socks[k].sendall(req * n)
                for _ in range(n):
                    st, _, _ = readers[k].response(now() + 5)
                    statuses[st] = statuses.get(st, 0) + 1
                    done += 1
            except (OSError, ValueError):
                reconnects += 1
                socks[k].close()
                socks[k] = socket.create_connection(addr, timeout=3)
                readers[k] = Reader(socks[k])
    finally:
        close_all(socks)
    return statuses, reconnects


def case_recycle_storm(binary):
    with Vigil(binary) as v:
        rss0 = v.rss_kib()
        total, conns = 2000, 4
        req = b"POST /loops/recycle HTTP/1.1\r\nHost: hostile\r\nContent-Length: 0\r\n\r\n"
        t0 = now()
        # One request at a time, taking turns over the connections, as a
        # script calling the route in a loop would.
        statuses, reconnects = keepalive_storm(v.admin, req, total, conns, batch=1)
        storm_s = now() - t0
        done = sum(statuses.values())
        time.sleep(1.5)
        probe = Probe(v.addr).run()
        recycled = recycled_from_metrics(v.admin)
        loops = get_json(v.admin, "/loops")
        rss1 = v.rss_kib()
        # SIGTERM, with /readyz asked at once on a connection already open,
        # then on new connections until the process is gone.
        ready_conn = socket.create_connection(v.admin, timeout=2)
        readyz = []  # (ms after SIGTERM, status or "gone")
        t_term = now()
        v.proc.send_signal(signal.SIGTERM)
        try:
            ready_conn.sendall(b"GET /readyz HTTP/1.1\r\nHost: hostile\r\n\r\n")
            status = Reader(ready_conn).response(now() + 1)[0]
        except (OSError, ValueError):
            status = "gone"
        finally:
            ready_conn.close()
        readyz.append(((now() - t_term) * 1000, status))
        while v.alive() and now() - t_term < 15:
            try:
                status = request(v.admin, "GET", "/readyz", timeout=0.5)[0]
            except OSError:
                status = "gone"
                time.sleep(0.01)
            readyz.append(((now() - t_term) * 1000, status))
        try:
            code = v.proc.wait(timeout=max(0.1, 15 - (now() - t_term)))
        except subprocess.TimeoutExpired:
            code = "still running after 15 s"
        exit_ms = (now() - t_term) * 1000
    said_503 = [ms for ms, st in readyz if st == 503]
    said_200 = [ms for ms, st in readyz if st == 200]
    if said_503:
        ready_text = f"503 from {said_503[0]:.1f} ms"
    else:
        ready_text = "never 503"
    if said_200:
        ready_text += f", 200 until {said_200[-1]:.1f} ms ({len(said_200)} polls)"
    figure = (
        f"{done} POSTs in {storm_s * 1000:.0f} ms (statuses {statuses}, {reconnects} reconnects); "
        f"recycles done {recycled} (/loops recycled={loops.get('recycled')}); "
        f"RSS {mib(rss0)} -> {mib(rss1)}; SIGTERM exit {exit_ms:.0f} ms (status {code}, "
        f"{loops.get('handed_off_alive')} handed-off threads alive); "
        f"/readyz after SIGTERM: {ready_text}"
    )
    bad = []
    if done < total:
        bad.append(f"only {done} POSTs answered")
    if not isinstance(code, int) or exit_ms > 5000:
        bad.append("SIGTERM exit not well under 10 s")
    if not said_503:
        bad.append("/readyz never said 503 during shutdown")
    if rss1 - rss0 > 32 * 1024:
        bad.append("RSS grew over 32 MiB")
    return figure, probe, bad


def case_pipeline_no_read(binary):
    with Vigil(binary, ["--header-timeout", "3s", "--keep-alive-timeout", "5s"]) as v:
        rss0 = v.rss_kib()
        one = b"GET / HTTP/1.1\r\nHost: hostile\r\n\r\n"
        payload = one * ((64 << 10) // len(one))
        count = 200
        socks, failed = connect_many(v.addr, count)
        sent = [0] * len(socks)
        # Write phase: as much of 64 KiB as each socket takes in 3 s; the
        # responses are never read.
        write_until = now() + 3.0
        poller = select.poll()
        by_fd = {}
        for i, s in enumerate(socks):
            poller.register(s.fileno(), select.POLLOUT)
            by_fd[s.fileno()] = i
        pending = len(socks)
        send_errors = 0
        while pending and now() < write_until:
            for fd, ev in poller.poll(50):
                i = by_fd[fd]
                try:
                    sent[i] += socks[i].send(payload[sent[i] :])
                except BlockingIOError:
                    continue
                except OSError:
                    send_errors += 1
                    poller.unregister(fd)
                    pending -= 1
                    continue
                if sent[i] >= len(payload):
                    poller.unregister(fd)
                    pending -= 1
        stopped = now()
        complete = sum(1 for n in sent if n >= len(payload))
        probe = Probe(v.addr).start(delay=1.0)
        rss_peak = rss0
        while now() - stopped < 8.0:
            rss_peak = max(rss_peak, v.rss_kib())
            time.sleep(0.25)
        # Only now read: a socket the server closed gives EOF or a reset once
        # what it holds is drained; one still open gives EAGAIN at the end.
        closed, reset, drained = 0, 0, 0
        unresolved = set(range(len(socks)))
        drain_until = now() + 1.5
        while unresolved and now() < drain_until:
            for i in list(unresolved):
                try:
                    while True:
                        chunk = socks[i].recv(1 << 20)
                        if not chunk:
                            closed += 1
                            unresolved.discard(i)
                            break
                        drained += len(chunk)
                except BlockingIOError:
                    pass
                except OSError:
                    reset += 1
                    unresolved.discard(i)
            time.sleep(0.05)
        judged_s = now() - stopped
        close_all(socks)
        time.sleep(1.0)
        rss1 = v.rss_kib()
        probe.result()
    gone = closed + reset
    figure = (
        f"{len(socks)} conns ({failed} failed), {complete} wrote all 64 KiB ({send_errors} send "
        f"errors); read after 8 s: {drained >> 20} MiB of responses, then closed by the server "
        f"within {judged_s:.1f} s of the last write: {gone} ({closed} FIN, {reset} reset), "
        f"{len(unresolved)} still open; RSS {mib(rss0)} -> peak {mib(rss_peak)} -> "
        f"{mib(rss1)} after"
    )
    bad = []
    if unresolved:
        bad.append(f"{len(unresolved)} never closed")
    if rss1 - rss0 > 16 * 1024:
        bad.append("RSS not given back")
    if not probe.ok:
        bad.append("probe not served")
    return figure, probe, bad


def case_slow_body(binary):
    with Vigil(binary, ["--header-timeout", "2s", "--max-connections", "300"]) as v:
        head = b"POST / HTTP/1.1\r\nHost: hostile\r\nContent-Length: 100000\r\n\r\n"
        t0 = now()
        socks, failed = connect_many(v.addr, 200, head)
        outcome, first = {}, {}
        probe = Probe(v.addr).start(delay=1.0)
        poller = select.poll()
        by_fd = {}
        for i, s in enumerate(socks):
            poller.register(s.fileno(), select.POLLIN)
            by_fd[s.fileno()] = i
        next_drip = now() + 1.0
        while now() - t0 < 10.0 and len(outcome) < len(socks):
            if now() >= next_drip:
                next_drip += 1.0
                for i, s in enumerate(socks):
                    if i not in outcome:
                        try:
                            s.send(b"a")
                        except BlockingIOError:
                            pass
                        except OSError:
                            # The server is gone; an answer may be waiting.
                            try:
                                data = first.get(i, b"") + s.recv(4096)
                            except OSError:
                                data = first.get(i, b"")
                            kind = data[9:12].decode() if data.startswith(b"HTTP/1.1 ") else "reset"
                            outcome[i] = (kind, now() - t0)
                            poller.unregister(s.fileno())
            for fd, _ in poller.poll(50):
                i = by_fd[fd]
                if i in outcome:
                    continue
                try:
                    chunk = socks[i].recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = None
                data = first.get(i, b"") + (chunk or b"")
                first[i] = data
                if data.startswith(b"HTTP/1.1 "):
                    outcome[i] = (data[9:12].decode(), now() - t0)
                elif not chunk:
                    outcome[i] = ("closed" if chunk == b"" else "reset", now() - t0)
                else:
                    continue
                poller.unregister(fd)
        close_all(socks)
        probe.result()
    kinds = {}
    for kind, _ in outcome.values():
        kinds[kind] = kinds.get(kind, 0) + 1
    times = sorted(t for kind, t in outcome.values())
    got408 = kinds.get("408", 0)
    when = f", at {times[0]:.1f}-{times[-1]:.1f} s" if times else ""
    parts = [f"{got408}x408"] + [f"{n} {k}" for k, n in sorted(kinds.items()) if k != "408"]
    parts.append(f"{len(socks) - len(outcome)} still open at 10 s")
    figure = f"{len(socks)} conns ({failed} failed): " + ", ".join(parts) + when
    bad = []
    if len(outcome) < len(socks):
        bad.append(f"{len(socks) - len(outcome)} held past 10 s")
    if not probe.ok:
        bad.append("probe not served")
    return figure, probe, bad


def case_partial_heads(binary):
    with Vigil(binary) as v:
        count = 2000
        time.sleep(0.3)
        rss0 = v.rss_kib()
        accepted0 = get_json(v.admin, "/loops")["accepted"]
        socks, failed = connect_many(v.addr, count, b"GET")
        time.sleep(1.0)
        rss1 = v.rss_kib()
        snap = get_json(v.admin, "/loops")
        accepted = snap["accepted"] - accepted0
        open_now = snap["open_connections"]
        # Connections a loop handed off with (mid-request) stay with the
        # handed-off thread until they are clean; say how many threads.
        handed_off = snap["handed_off_alive"]
        probe = Probe(v.addr).run()
        close_all(socks)
        time.sleep(1.0)
        rss2 = v.rss_kib()
    per_conn = (rss1 - rss0) * 1024 / count
    figure = (
        f"{len(socks)} held ({failed} failed, {accepted} accepted, {open_now} open, "
        f"{handed_off} handed-off threads alive): "
        f"{per_conn:.0f} B RSS per connection (RSS {mib(rss0)} -> {mib(rss1)}); "
        f"{mib(rss2)} after they close"
    )
    bad = []
    if per_conn > 4096:
        bad.append("over 4 KiB per connection")
    if not probe.ok:
        bad.append("probe not served")
    return figure, probe, bad


def case_fd_limit_clamp(binary):
    with Vigil(binary, nofile=256, admin=False) as v:
        limit = v.open_file_limit()
        clamp = next((l for l in v.log_text().splitlines() if "clamped_to" in l), None)
        count, per_conn_timeout = 400, 2.0
        req = b"GET / HTTP/1.1\r\nHost: hostile\r\n\r\n"
        socks, state, started, got = [], {}, {}, {}
        poller = select.poll()
        for i in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            rc = s.connect_ex(v.addr)
            socks.append(s)
            started[i] = now()
            if rc in (0, errno.EINPROGRESS):
                state[i] = "connecting"
                poller.register(s.fileno(), select.POLLOUT)
            else:
                state[i] = "refused"
        by_fd = {s.fileno(): i for i, s in enumerate(socks)}
        busy = {i for i, st in state.items() if st == "connecting"}
        while busy:
            for i in list(busy):
                if now() - started[i] > per_conn_timeout:
                    state[i] = "timeout" if state[i] == "sent" else "connect timeout"
                    busy.discard(i)
                    poller.unregister(socks[i].fileno())
            if not busy:
                break
            for fd, ev in poller.poll(50):
                i = by_fd[fd]
                if i not in busy:
                    continue
                s = socks[i]
                if state[i] == "connecting":
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        state[i] = "refused"
                        busy.discard(i)
                        poller.unregister(fd)
                        continue
                    try:
                        s.send(req)
                    except OSError:
                        pass
                    state[i] = "sent"
                    poller.modify(fd, select.POLLIN)
                    continue
                try:
                    chunk = s.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = None
                data = got.get(i, b"") + (chunk or b"")
                got[i] = data
                if data.startswith(b"HTTP/1.1 ") and len(data) >= 12:
                    state[i] = data[9:12].decode()
                elif chunk:
                    continue
                else:
                    state[i] = "closed" if chunk == b"" else "reset"
                busy.discard(i)
                poller.unregister(fd)
        close_all(socks)
        time.sleep(0.3)
        probe = Probe(v.addr).run()
    tally = {}
    for st in state.values():
        tally[st] = tally.get(st, 0) + 1
    hung = tally.get("timeout", 0) + tally.get("connect timeout", 0)
    shown = ("200", "503", "timeout", "connect timeout")
    clamp_text = re.sub(r"^.*?\] ", "", clamp) if clamp else "no clamp line"
    figure = (
        f"nofile={limit}, log: \"{clamp_text}\"; 400 conns: {tally.get('200', 0)}x200, "
        f"{tally.get('503', 0)}x503, {hung} timed out (2 s), "
        + ", ".join(f"{n} {k}" for k, n in sorted(tally.items()) if k not in shown)
    ).rstrip(", ")
    bad = []
    if not clamp:
        bad.append("no clamp line")
    if hung:
        bad.append(f"{hung} connections hung")
    if not tally.get("503"):
        bad.append("no 503 past the clamp")
    return figure, probe, bad


def case_refusal_resets(binary):
    with Vigil(binary) as v:
        first = b"GET / HTTP/1.1\r\nHost: hostile\r\nConnection: close\r\n\r\n"
        one = b"GET / HTTP/1.1\r\nHost: hostile\r\n\r\n"
        payload = first + one * ((64 << 10) // len(one))
        full, reset, other = 0, 0, {}
        probe = Probe(v.addr).start(delay=0.2)
        for _ in range(300):
            try:
                with socket.create_connection(v.addr, timeout=2) as s:
                    s.sendall(payload)
                    status, _, body = Reader(s).response(now() + 2)
                    if status == 200 and body == b"Hello World\n":
                        full += 1
                    else:
                        other[f"status {status}"] = other.get(f"status {status}", 0) + 1
            except ConnectionResetError:
                reset += 1
            except (OSError, ValueError) as err:
                other[type(err).__name__] = other.get(type(err).__name__, 0) + 1
        probe.result()
    figure = f"300 tries: {full} read the whole 200, {reset} ECONNRESET before it" + "".join(
        f", {n} {k}" for k, n in other.items()
    )
    bad = []
    if full != 300:
        bad.append(f"{300 - full} lost")
    return figure, probe, bad


def case_panic_log(binary):
    with Vigil(binary, ["--demo"]) as v:
        time.sleep(0.3)
        size0 = v.log_bytes()
        lines0 = v.log_text().count("\n")
        total, conns, batch = 5000, 4, 50
        req = b"GET /panic HTTP/1.1\r\nHost: hostile\r\n\r\n"
        t0 = now()
        statuses, reconnects = keepalive_storm(v.addr, req, total, conns, batch)
        elapsed = now() - t0
        done = sum(statuses.values())
        time.sleep(0.5)
        size1 = v.log_bytes()
        lines1 = v.log_text().count("\n")
        panics = get_json(v.admin, "/loops")["handler_panics"]
        probe = Probe(v.addr).run()
    per = (size1 - size0) / max(done, 1)
    figure = (
        f"{done} requests in {elapsed * 1000:.0f} ms (statuses {statuses}, "
        f"{reconnects} reconnects), "
        f"{panics} panics counted: {size1 - size0} B in {lines1 - lines0} lines on stderr, "
        f"{per:.1f} B per panic"
    )
    bad = []
    if per > 64:
        bad.append("over 64 B of log per panic")
    if statuses.get(500, 0) != total:
        bad.append("not every /panic answered 500")
    return figure, probe, bad


def case_connect(binary):
    with Vigil(binary) as v:
        with socket.create_connection(v.addr, timeout=3) as s:
            s.sendall(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
            status, _, body = Reader(s).response(now() + 3)
        probe = Probe(v.addr).run()
    figure = f"status {status} ({body.decode('latin-1').strip()[:60]})"
    bad = [] if status == 501 else [f"expected 501, got {status}"]
    return figure, probe, bad


CASES = [
    ("1. admin connection flood", case_admin_flood),
    ("2. admin oversized head", case_admin_oversized_head),
    ("3. smuggled admin recycle", case_smuggled_recycle),
    ("4. recycle storm", case_recycle_storm),
    ("5. pipelining, never reading", case_pipeline_no_read),
    ("6. slow body", case_slow_body),
    ("7. partial heads", case_partial_heads),
    ("8. max-connections above fd limit", case_fd_limit_clamp),
    ("9. refusals lost to resets", case_refusal_resets),
    ("10. panic log", case_panic_log),
    ("11. CONNECT", case_connect),
]


def main():
    if len(sys.argv) != 2:
        print("usage: hostile.py PATH/TO/vigil", file=sys.stderr)
        return 1
    binary = os.path.abspath(sys.argv[1])
    if not os.access(binary, os.X_OK):
        print(f"hostile: {binary} is not an executable", file=sys.stderr)
        return 1

    def over_budget(signum, frame):
        raise BudgetExceeded(f"the run went over its {TIME_BUDGET_S} s budget")

    signal.signal(signal.SIGALRM, over_budget)
    signal.alarm(TIME_BUDGET_S)
    # HOSTILE_CASES=1,5 runs only those cases (for working on one).
    only = {c.strip() for c in os.environ.get("HOSTILE_CASES", "").split(",") if c.strip()}
    rows, failed, t_run = [], False, now()
    try:
        for name, case in CASES:
            if only and name.split(".")[0] not in only:
                continue
            t0 = now()
            try:
                figure, probe, bad = case(binary)
                probe_text = probe.text()
                verdict = "ok" if not bad else "BAD: " + "; ".join(bad)
            except BudgetExceeded as err:
                rows.append((name, f"not finished: {err}", "-", "ERROR"))
                failed = True
                break
            except Exception as err:  # the script failed, not the server
                figure, probe_text = f"{type(err).__name__}: {err}", "-"
                verdict = "ERROR"
                failed = True
            rows.append((name, figure, probe_text, verdict))
            took = now() - t0
            print(f"{name}: {figure} | probe: {probe_text} | {verdict} ({took:.1f} s)", flush=True)
    finally:
        signal.alarm(0)
        for proc in _started:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
    print()
    print(f"vigil under hostile clients ({binary}, {now() - t_run:.0f} s)")
    print()
    print("| attack | figure | probe served? | verdict |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(cell.replace("|", "/") for cell in row) + " |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
