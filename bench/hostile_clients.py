#!/usr/bin/env python3
"""Probe and scrape latency of dbwarden while hostile clients hold connections.

    python3 bench/hostile_clients.py --dbwarden target/debug/dbwarden \
        --url postgres://postgres@127.0.0.1:PORT/postgres --held "0 100 500 1000"

For each N in --held, N connections are held open against dbwarden's port
for the whole measurement: half half-open (connected, nothing sent), half
slow (a partial request, one more header line every second: slowloris).
Connections the server closes (header read timeout, eviction) are opened
again at once, so N stay held. Meanwhile, for --seconds (longer than the
10 s header read timeout, so that closing and reopening happen during
it), every 50 ms a probe (`GET /livez`, a new connection, as the kubelet
does) and a scrape (`GET /metrics` with Prometheus's Accept and
Accept-Encoding headers, a new connection) are timed. Prints a Markdown
table: p50, p99 and max latency in milliseconds, failures, how many held
connections the server closed (and were reopened), and the rejections
dbwarden counted (`dbwarden_http_rejections_total`) during the round.

Only the standard library; dbwarden is started and stopped here, with a
configuration of one PostgreSQL target (--url), listening on 127.0.0.1.
"""

import argparse
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
    "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed_get(port, path, headers):
    """Latency in seconds of one GET on a new connection, or None on failure."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()
            if r.status != 200:
                return None
    except Exception:
        return None
    return time.perf_counter() - started


class Holder:
    """Keeps `n` hostile connections open until stopped."""

    def __init__(self, port, n):
        self.port, self.n = port, n
        self.stop = threading.Event()
        self.reopened = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def open(self, slow):
        s = socket.socket()
        s.setblocking(True)
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", self.port))
            if slow:
                s.sendall(b"GET /livez HTTP/1.1\r\nHost: bench\r\n")
            s.setblocking(False)
        except OSError:
            s.close()
            return None
        return s

    def run(self):
        conns = [(i % 2 == 1, self.open(i % 2 == 1)) for i in range(self.n)]
        last_trickle = time.monotonic()
        while not self.stop.is_set():
            for i, (slow, s) in enumerate(conns):
                closed = s is None
                if s is not None:
                    try:
                        if s.recv(1024) == b"":
                            closed = True
                    except BlockingIOError:
                        pass
                    except OSError:
                        closed = True
                if closed:
                    if s is not None:
                        s.close()
                    conns[i] = (slow, self.open(slow))
                    self.reopened += 1
            if time.monotonic() - last_trickle >= 1.0:
                last_trickle = time.monotonic()
                for slow, s in conns:
                    if slow and s is not None:
                        try:
                            s.send(b"X-Slow: 1\r\n")
                        except OSError:
                            pass
            self.stop.wait(0.05)
        for _, s in conns:
            if s is not None:
                s.close()


def rejections(port):
    """dbwarden_http_rejections_total by reason."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("dbwarden_http_rejections_total{"):
            reason = line.split('reason="')[1].split('"')[0]
            out[reason] = float(line.rsplit(" ", 1)[1])
    return out


def summary(latencies):
    ok = [x * 1000 for x in latencies if x is not None]
    failures = len(latencies) - len(ok)
    if not ok:
        return "-", "-", "-", failures
    ok.sort()
    p99 = ok[min(len(ok) - 1, int(len(ok) * 0.99))]
    return f"{statistics.median(ok):.1f}", f"{p99:.1f}", f"{ok[-1]:.1f}", failures


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dbwarden", default="target/release/dbwarden")
    ap.add_argument("--url", required=True, help="the PostgreSQL target's URL")
    ap.add_argument("--held", default="0 100 500 1000")
    ap.add_argument("--seconds", type=float, default=15.0)
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))

    port = free_port()
    tmp = tempfile.mkdtemp(prefix="dbwarden-hostile-")
    config = os.path.join(tmp, "dbwarden.toml")
    with open(config, "w") as f:
        f.write(
            f'[server]\nlisten = "127.0.0.1:{port}"\n\n'
            f'[postgres.main]\nurl = "{args.url}"\nsslmode = "disable"\npoll_interval = "5s"\n'
        )
    log = open(os.path.join(tmp, "dbwarden.log"), "w")
    daemon = subprocess.Popen(
        [args.dbwarden, "run", "--config", config], stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 30
        while timed_get(port, "/readyz", {}) is None:
            if daemon.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"dbwarden did not become ready; see {log.name}")
            time.sleep(0.1)
        size = len(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read())
        print(f"dbwarden {args.dbwarden}, exposition {size} bytes, {args.seconds:.0f} s per round\n")
        print("| held connections | probes | probe p50 ms | probe p99 ms | probe max ms | probe failures "
              "| scrape p50 ms | scrape p99 ms | scrape max ms | scrape failures | closed by dbwarden "
              "| rejections counted |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for n in [int(x) for x in args.held.split()]:
            before = rejections(port)
            holder = Holder(port, n)
            holder.thread.start()
            time.sleep(1.0)  # let them connect
            probes, scrapes = [], []
            end = time.monotonic() + args.seconds
            while time.monotonic() < end:
                probes.append(timed_get(port, "/livez", {}))
                scrapes.append(timed_get(
                    port, "/metrics", {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}))
                time.sleep(0.05)
            holder.stop.set()
            holder.thread.join()
            after = rejections(port)
            counted = ", ".join(
                f"{k} {after[k] - before.get(k, 0):.0f}"
                for k in sorted(after) if after[k] - before.get(k, 0) > 0) or "none"
            p = summary(probes)
            s = summary(scrapes)
            print(f"| {n} | {len(probes)} | {p[0]} | {p[1]} | {p[2]} | {p[3]} | {s[0]} | {s[1]} | {s[2]} "
                  f"| {s[3]} | {holder.reopened} | {counted} |", flush=True)
            time.sleep(11.0)  # the server closes what is left of this round
    finally:
        daemon.terminate()
        daemon.wait(timeout=15)


if __name__ == "__main__":
    main()
