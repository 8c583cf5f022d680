#!/usr/bin/env python3
"""Many targets in one process (issue #14): for each fleet size N, one
dbwarden watching N PostgreSQL targets and, side by side in the same run,
one dbwarden watching a single target, in the same run.

The targets are spread over scratch PostgreSQL 15 servers, --per-server
targets on each (50 by default), so that every poll reads a server holding
about the same number of sessions whatever the fleet size, as in a real
fleet where each target is its own server; the single target watches the
first of them. --per-server 0 puts every target on one server: each poll
then reads all N monitoring sessions, and the work grows as N squared
(the worst case, kept to show it).

Measured per fleet size, over a window of whole poll intervals while
/metrics is scraped as a Prometheus would (OpenMetrics, gzip, once per poll
interval; until 2026-12 the window scraped the plain-text body every
half second, which the CPU figure then included):
  - CPU of the dbwarden process, as a share of one core;
  - its RSS, and per target: (RSS(N) - RSS(1)) / (N - 1);
  - mean poll duration from its own histogram, against the single target's;
  - how evenly the polls spread: the largest number of targets whose polls
    start in one 100 ms slot of the interval (read from each target's last
    poll time at the window's end), against N / (interval / 100 ms);
  - a full scrape of /metrics (plain and gzip): median and largest of 20.

  python3 bench/fleet.py [--sizes 10 100 1000] [--interval 10] [--windows 3]
      [--per-server 50] [--hold SECONDS] [--dbwarden target/release/dbwarden]

Run as root (the server runs as the postgres OS user). Everything it starts
is stopped and removed on exit.
"""
import argparse
import gzip
import http.client
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scrape  # noqa: E402

PG_BIN = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")
TICK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(f"[fleet {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def config(port, pgports, n, interval):
    out = [f'[server]\nlisten = "127.0.0.1:{port}"\n\n[log]\nlevel = "warn"\n\n[defaults]\n'
           f'poll_interval = "{interval}s"\npoll_timeout = "{max(1, interval // 2)}s"\n'
           f'statement_timeout = "{max(1, interval // 2)}s"\nconnect_timeout = "5s"\n']
    for i in range(n):
        pgport = pgports[i * len(pgports) // n]
        out.append(f'[postgres.t{i:04d}]\nurl = "postgres://postgres@127.0.0.1:{pgport}/postgres"\n'
                   f'sslmode = "disable"\n')
    return "\n".join(out)


OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"


def get(port, path, gz=False, accept="text/plain"):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Accept": accept}
    if gz:
        headers["Accept-Encoding"] = "gzip"
    t0 = time.monotonic()
    c.request("GET", path, headers=headers)
    r = c.getresponse()
    body = r.read()
    took = time.monotonic() - t0
    c.close()
    if r.status != 200:
        raise RuntimeError(f"GET {path}: HTTP {r.status}")
    if gz:
        body = gzip.decompress(body)
    return body.decode(), took


def polls(port):
    text, _ = get(port, "/metrics")
    s = {"sum": 0.0, "count": 0.0, "last": []}
    for name, labels, v in scrape.parse_samples(text, "dbwarden_"):
        if name == "dbwarden_poll_duration_seconds_sum":
            s["sum"] += v
        elif name == "dbwarden_poll_duration_seconds_count":
            s["count"] += v
        elif name == "dbwarden_last_poll_timestamp_seconds":
            s["last"].append((labels.get("target"), v))
    return s


def scrape_like_prometheus(port, interval, seconds):
    """Scrapes /metrics as a Prometheus with scrape_interval = poll_interval
    would (OpenMetrics, gzip) for `seconds`, so that the CPU measured over
    the window includes a realistic share of scraping, no more."""
    end = time.monotonic() + seconds
    while True:
        get(port, "/metrics", gz=True, accept=OPENMETRICS)
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(interval, left))  # the scrape cadence, not a wait on a condition


def spread(port, interval):
    """How evenly the polls spread over the interval: each target's phase
    (its last poll's time modulo the interval: stable, each target polls on
    its own grid), and the largest number of targets whose polls fall in one
    100 ms slot."""
    phase = {target: t % interval for target, t in polls(port)["last"]}
    slots = {}
    for p in phase.values():
        k = int(p * 10)
        slots[k] = slots.get(k, 0) + 1
    return max(slots.values()) if slots else 0, len(phase)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--interval", type=int, default=10)
    ap.add_argument("--windows", type=int, default=3, help="poll intervals measured per size")
    ap.add_argument("--per-server", type=int, default=50,
                    help="targets per PostgreSQL server (0: every target on one server)")
    ap.add_argument("--hold", type=int, default=0,
                    help="seconds to keep each fleet running after it was measured (to profile it: its pid is logged)")
    ap.add_argument("--dbwarden", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "target/release/dbwarden"))
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (the server runs as the postgres OS user)")
    if not os.access(a.dbwarden, os.X_OK):
        sys.exit(f"{a.dbwarden} missing (cargo build --release)")

    work = tempfile.mkdtemp(prefix="dbwarden-fleet.")
    shutil.chown(work, "postgres")
    os.chmod(work, 0o755)
    procs = []

    def start_server(work, k, per):
        data = os.path.join(work, f"data{k}")
        subprocess.run(["runuser", "-u", "postgres", "--", f"{PG_BIN}/initdb", "-D", data, "-A", "trust", "-U", "postgres"],
                       cwd=work, check=True, capture_output=True)
        pgport = scrape.freeport()
        with open(os.path.join(data, "postgresql.conf"), "a") as f:
            f.write(f"port = {pgport}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{work}'\n"
                    f"max_connections = {per + 50}\nshared_buffers = '16MB'\nfsync = off\n")
        subprocess.run(["runuser", "-u", "postgres", "--", f"{PG_BIN}/pg_ctl", "-D", data, "-l",
                        os.path.join(work, f"server{k}.log"), "-w", "-t", "60", "start"],
                       cwd=work, check=True, capture_output=True)
        return pgport

    def stop(p):
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def cleanup():
        for p in procs:
            if p.poll() is None:
                stop(p)
        for d in sorted(os.listdir(work)):
            data = os.path.join(work, d)
            if os.path.exists(os.path.join(data, "postmaster.pid")):
                subprocess.run(["runuser", "-u", "postgres", "--", f"{PG_BIN}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"],
                               cwd=work, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rows = []
    try:
        largest = max(a.sizes)
        per = a.per_server if a.per_server > 0 else largest
        pgports = [start_server(work, k, per) for k in range(-(-largest // per))]
        log(f"{len(pgports)} PostgreSQL servers up, {per} targets each at most")
        for n in a.sizes:
            runs = {}
            # The single target watches the first server, which holds a fleet's share.
            for name, count, ports in [("one", 1, pgports[:1]), ("fleet", n, pgports[:-(-n // per)])]:
                port = scrape.freeport()
                cfg = os.path.join(work, f"{name}-{n}.toml")
                with open(cfg, "w") as f:
                    f.write(config(port, ports, count, a.interval))
                p = subprocess.Popen([a.dbwarden, "run", "--config", cfg], stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(work, f"{name}-{n}.log"), "w"))
                procs.append(p)
                runs[name] = (p, port)
            for name, (p, port) in runs.items():
                scrape.wait_http(f"http://127.0.0.1:{port}/readyz", 120)
            log(f"{n} targets up; settling one interval")
            time.sleep(a.interval)  # a benchmark's warm-up, not a test's wait
            window = a.windows * a.interval
            before = {k: (scrape.proc_cpu_ticks(p.pid), polls(port), time.monotonic()) for k, (p, port) in runs.items()}
            scrape_like_prometheus(runs["fleet"][1], a.interval, window)
            after = {k: (scrape.proc_cpu_ticks(p.pid), polls(port), time.monotonic()) for k, (p, port) in runs.items()}
            peak_slot, seen = spread(runs["fleet"][1], a.interval)
            res = {}
            for k, (p, port) in runs.items():
                t0, p0, m0 = before[k]
                t1, p1, m1 = after[k]
                dn = p1["count"] - p0["count"]
                res[k] = {
                    "cpu": (t1 - t0) / TICK / (m1 - m0),
                    "rss_kb": scrape.proc_mem_kb(p.pid)["VmRSS"],
                    "poll_ms": 1000 * (p1["sum"] - p0["sum"]) / dn if dn else float("nan"),
                    "polls": dn,
                }
            port = runs["fleet"][1]
            plain = [get(port, "/metrics")[1] for _ in range(20)]
            om = [get(port, "/metrics", gz=True, accept=OPENMETRICS)[1] for _ in range(20)]
            gz = [get(port, "/metrics", gz=True)[1] for _ in range(20)]
            body = get(port, "/metrics")[0]
            rows.append({
                "n": n, "fleet": res["fleet"], "one": res["one"],
                "per_target_kb": (res["fleet"]["rss_kb"] - res["one"]["rss_kb"]) / max(1, n - 1),
                "scrape_ms": (1000 * statistics.median(plain), 1000 * max(plain)),
                "scrape_gz_ms": (1000 * statistics.median(gz), 1000 * max(gz)),
                "scrape_om_ms": (1000 * statistics.median(om), 1000 * max(om)),
                "body_kb": len(body.encode()) / 1024,
                "peak_slot": peak_slot, "even_slot": n / (a.interval * 10), "starts": seen,
            })
            if a.hold:
                log(f"holding for {a.hold} s: the {n}-target dbwarden is pid {runs['fleet'][0].pid}, port {port}")
                time.sleep(a.hold)  # the user profiles meanwhile
            for name, (p, _) in runs.items():
                stop(p)
            log(f"{n} targets done")
        print(f"\nOne dbwarden per fleet size beside one watching a single target, scratch PostgreSQL 15 servers "
              f"with {per} targets each at most, poll_interval {a.interval} s, {a.windows} intervals measured; "
              f"load {os.getloadavg()[0]:.1f}\n")
        print("| targets | CPU (share of a core) | RSS MiB | RSS per target KiB | mean poll ms (fleet / one) | ratio | targets polling in the busiest 100 ms slot (even spread) | scrape ms median / max | gzip scrape ms | OpenMetrics + gzip (as Prometheus asks) ms | /metrics KiB |")
        print("|---:|---:|---:|---:|---|---:|---|---|---|---|---:|")
        for r in rows:
            f, o = r["fleet"], r["one"]
            print(f"| {r['n']} | {100 * f['cpu']:.1f}% (one: {100 * o['cpu']:.1f}%) | {f['rss_kb'] / 1024:.1f} | {r['per_target_kb']:.0f} | "
                  f"{f['poll_ms']:.2f} / {o['poll_ms']:.2f} | {f['poll_ms'] / o['poll_ms']:.2f}× | "
                  f"{r['peak_slot']} ({r['even_slot']:.1f}) | {r['scrape_ms'][0]:.1f} / {r['scrape_ms'][1]:.1f} | "
                  f"{r['scrape_gz_ms'][0]:.1f} / {r['scrape_gz_ms'][1]:.1f} | "
                  f"{r['scrape_om_ms'][0]:.1f} / {r['scrape_om_ms'][1]:.1f} | {r['body_kb']:.0f} |")
    finally:
        cleanup()


if __name__ == "__main__":
    main()
