#!/usr/bin/env python3
"""Load generator and meter for bench/run.sh (stdlib only).

Subcommands:
  freeport                 print a free TCP port on 127.0.0.1
  wait-http URL SECONDS    wait until URL answers 200
  phase ...                measure one session count, write JSON
  report JSON...           print the Markdown tables for phase files

A phase does, against exporters given as NAME=PORT=PID=ROLE:
  1. warm-up: a few scrapes of every exporter (not recorded);
  2. an idle window (no scrapes) of --idle-seconds, to measure what each
     process costs on its own (dbwarden keeps polling; the peers do nothing);
  3. the scrape run: --rounds rounds; each round scrapes every exporter once,
     over one persistent HTTP/1.1 connection per exporter, in an order that
     rotates every round, so machine noise falls on all of them alike.
Around 2 and 3 it snapshots: utime+stime (and schedstat) of each exporter
process, VmRSS/VmHWM, dbwarden's poll counters, and per database role the
pg_stat_statements totals and the CPU of that role's server backends.
All traffic goes to 127.0.0.1 only; every loop is bounded.
"""

import argparse
import http.client
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- helpers

def freeport():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_http(url, seconds):
    m = re.match(r"http://127\.0\.0\.1:(\d+)(/.*)$", url)
    if not m:
        sys.exit(f"wait-http: only http://127.0.0.1:PORT/... URLs: {url}")
    port, path = int(m.group(1)), m.group(2)
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            c.close()
            if r.status == 200:
                return 0
            last = f"HTTP {r.status}"
        except OSError as e:
            last = str(e)
        time.sleep(0.25)
    sys.exit(f"wait-http: {url} not ready after {seconds}s ({last})")


def proc_cpu_ticks(pid):
    """utime+stime of the whole process (all threads, live and exited), in ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime is field 14, stime field 15.
    return int(fields[11]) + int(fields[12])


def proc_sched_ns(pid):
    """CPU time in ns summed over the process's live threads (schedstat).
    Finer than ticks; misses threads that exited in between."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            pass
    return total


def proc_mem_kb(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:", "RssFile:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0])
    return out


def psql(port, sql):
    r = subprocess.run(
        ["psql", "-X", "-At", "-F", "\t", "-h", "127.0.0.1", "-p", str(port),
         "-U", "postgres", "-d", "postgres", "-c", sql],
        capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"psql failed: {r.stderr.strip()}")
    return [line.split("\t") for line in r.stdout.splitlines() if line]


def role_snapshot(pgport, roles, detail_role=None):
    """Per role: pg_stat_statements calls/exec/plan ms, and its backends' CPU
    time; per statement for detail_role."""
    names = ",".join(f"'{r}'" for r in roles)
    out = {r: {"calls": 0, "exec_ms": 0.0, "plan_ms": 0.0, "backends": {}, "statements": {}} for r in roles}
    if detail_role:
        for qid, calls, ex, text in psql(pgport, f"""
            SELECT s.queryid, s.calls, s.total_exec_time + s.total_plan_time,
                   left(regexp_replace(s.query, '\\s+', ' ', 'g'), 70)
            FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid
            WHERE r.rolname = '{detail_role}'"""):
            out[detail_role]["statements"][qid] = (int(calls), float(ex), text)
    for rol, calls, ex, pl in psql(pgport, f"""
        SELECT r.rolname, sum(s.calls), sum(s.total_exec_time), sum(s.total_plan_time)
        FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid
        WHERE r.rolname IN ({names}) GROUP BY 1"""):
        out[rol].update(calls=int(calls), exec_ms=float(ex), plan_ms=float(pl))
    for rol, pid in psql(pgport, f"""
        SELECT usename, pid FROM pg_stat_activity
        WHERE usename IN ({names}) AND pid <> pg_backend_pid()"""):
        try:
            # a backend is single-threaded: its schedstat is its exact CPU time in ns
            with open(f"/proc/{int(pid)}/schedstat") as f:
                out[rol]["backends"][pid] = int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return out


def role_delta(a, b):
    d = {}
    for rol in a:
        ra, rb = a[rol], b[rol]
        common = set(ra["backends"]) & set(rb["backends"])
        born = set(rb["backends"]) - set(ra["backends"])
        ns = sum(rb["backends"][p] - ra["backends"][p] for p in common)
        ns += sum(rb["backends"][p] for p in born)
        stm = []
        for qid, (calls, ex, text) in rb["statements"].items():
            c0, e0, _ = ra["statements"].get(qid, (0, 0.0, text))
            if calls > c0:
                stm.append({"query": text, "calls": calls - c0, "ms": ex - e0})
        stm.sort(key=lambda s: -s["ms"])
        d[rol] = {
            "statements": stm,
            "calls": rb["calls"] - ra["calls"],
            "exec_ms": rb["exec_ms"] - ra["exec_ms"],
            "plan_ms": rb["plan_ms"] - ra["plan_ms"],
            "backend_cpu_s": ns / 1e9,
            "backends_start": len(ra["backends"]),
            "backends_end": len(rb["backends"]),
            "backends_gone": len(set(ra["backends"]) - set(rb["backends"])),
        }
    return d


SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)')


def parse_samples(text, prefix):
    out = []
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        m = SAMPLE_RE.match(line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            out.append((m.group(1), labels, float(m.group(3))))
    return out


def http_get(conn, path="/metrics"):
    conn.request("GET", path, headers={"Accept": "text/plain"})
    r = conn.getresponse()
    body = r.read()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status} from {conn.host}:{conn.port}{path}")
    return body


def dbw_poll_stats(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    text = http_get(c).decode()
    st = json.loads(http_get(c, "/api/v1/status"))
    c.close()
    s = {"polls": 0.0, "errors": 0.0, "sum": 0.0, "count": 0.0, "le_0.01": 0.0, "le_0.005": 0.0}
    for name, labels, v in parse_samples(text, "dbwarden_"):
        if name == "dbwarden_polls_total":
            s["polls"] += v
        elif name == "dbwarden_poll_errors_total":
            s["errors"] += v
        elif name == "dbwarden_poll_duration_seconds_sum":
            s["sum"] += v
        elif name == "dbwarden_poll_duration_seconds_count":
            s["count"] += v
        elif name == "dbwarden_poll_duration_seconds_bucket" and labels.get("le") in ("0.01", "0.005"):
            s["le_" + labels["le"]] += v
    sessions = {l.get("state"): v for n, l, v in parse_samples(text, "dbwarden_postgres_sessions")}
    t = st["targets"][0]
    s["last_poll_duration_seconds"] = t.get("last_poll_duration_seconds")
    s["sessions"] = sessions
    return s


def snapshot(exps, pgport, dbw_port, detail_role=None):
    snap = {"t": time.monotonic(), "proc": {}, "roles": role_snapshot(pgport, [e["role"] for e in exps], detail_role)}
    for e in exps:
        snap["proc"][e["name"]] = {
            "ticks": proc_cpu_ticks(e["pid"]),
            "sched_ns": proc_sched_ns(e["pid"]),
            **proc_mem_kb(e["pid"]),
        }
    snap["dbw"] = dbw_poll_stats(dbw_port)
    return snap


def window(exps, a, b, scrapes_per_exporter):
    """What happened between snapshots a and b."""
    secs = b["t"] - a["t"]
    roles = role_delta(a["roles"], b["roles"])
    polls = b["dbw"]["count"] - a["dbw"]["count"]
    out = {"seconds": secs, "exporters": {}, "dbwarden_polls": polls}
    for e in exps:
        pa, pb = a["proc"][e["name"]], b["proc"][e["name"]]
        cpu = (pb["ticks"] - pa["ticks"]) / CLK_TCK
        sched = None
        if pa["sched_ns"] is not None and pb["sched_ns"] is not None:
            sched = (pb["sched_ns"] - pa["sched_ns"]) / 1e9
        out["exporters"][e["name"]] = {
            "cpu_s": cpu, "sched_cpu_s": sched,
            "rss_kb": pb["VmRSS"], "hwm_kb": pb["VmHWM"],
            "rss_anon_kb": pb.get("RssAnon"), "rss_file_kb": pb.get("RssFile"),
            "server": roles[e["role"]],
        }
    d = {k: b["dbw"][k] - a["dbw"][k] for k in ("polls", "errors", "sum", "count", "le_0.01", "le_0.005")}
    out["dbwarden_poll"] = {
        "polls": d["count"], "errors": d["errors"],
        "mean_s": d["sum"] / d["count"] if d["count"] else None,
        "share_le_10ms": d["le_0.01"] / d["count"] if d["count"] else None,
        "share_le_5ms": d["le_0.005"] / d["count"] if d["count"] else None,
        "last_s": b["dbw"]["last_poll_duration_seconds"],
        "sessions_seen": b["dbw"]["sessions"],
    }
    return out


def q(xs, p):
    """Quantile by linear interpolation (p in 0..1)."""
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * p
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


# ---------------------------------------------------------------- phase

def phase(args):
    exps = []
    for spec in args.exporter:
        name, port, pid, role = spec.split("=")
        exps.append({"name": name, "port": int(port), "pid": int(pid), "role": role})
    names = [e["name"] for e in exps]
    dbw = next(e for e in exps if e["name"] == args.dbwarden)
    conns = {e["name"]: http.client.HTTPConnection("127.0.0.1", e["port"], timeout=60) for e in exps}
    bodies = {}

    def scrape(name):
        t0 = time.perf_counter()
        body = http_get(conns[name])
        dt = time.perf_counter() - t0
        bodies[name] = body
        return dt

    # 1. warm-up
    for _ in range(args.warmup):
        for n in names:
            scrape(n)

    # 2. idle window: no scrapes
    s0 = snapshot(exps, args.pgport, dbw["port"], dbw["role"])
    time.sleep(args.idle_seconds)
    s1 = snapshot(exps, args.pgport, dbw["port"], dbw["role"])

    # 3. scrape run, round-robin with a rotating start
    lat = {n: [] for n in names}
    rss_max = {n: 0 for n in names}
    s2 = snapshot(exps, args.pgport, dbw["port"])
    for r in range(args.rounds):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            lat[n].append(scrape(n))
        if r % 10 == 0:
            for e in exps:
                rss_max[e["name"]] = max(rss_max[e["name"]], proc_mem_kb(e["pid"])["VmRSS"])
        if args.pause_ms:
            time.sleep(args.pause_ms / 1000)
    s3 = snapshot(exps, args.pgport, dbw["port"])
    # 4. the client's floor: the same loop against dbwarden's trivial /livez
    floor = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        http_get(conns[args.dbwarden], "/livez")
        floor.append(time.perf_counter() - t0)
    for c in conns.values():
        c.close()

    idle = window(exps, s0, s1, 0)
    run = window(exps, s2, s3, args.rounds)
    result = {
        "sessions": args.sessions,
        "rounds": args.rounds,
        "idle_seconds": idle["seconds"],
        "run_seconds": run["seconds"],
        "note": args.note,
        "floor_livez": {"median_s": q(floor, 0.5), "p99_s": q(floor, 0.99)},
        "exporters": {},
        "dbwarden_poll_idle": idle["dbwarden_poll"],
        "dbwarden_poll_run": run["dbwarden_poll"],
    }
    for e in exps:
        n = e["name"]
        xs = lat[n]
        ir, rr = idle["exporters"][n], run["exporters"][n]
        idle_rate = ir["cpu_s"] / idle["seconds"]
        idle_rate_sched = (ir["sched_cpu_s"] / idle["seconds"]) if ir["sched_cpu_s"] is not None else None
        srv = rr["server"]
        body = bodies[n]
        result["exporters"][n] = {
            "scrapes": len(xs),
            "lat_median_s": q(xs, 0.5),
            "lat_p99_s": q(xs, 0.99),
            "lat_mean_s": statistics.fmean(xs),
            "lat_max_s": max(xs),
            "cpu_per_scrape_s": rr["cpu_s"] / len(xs),
            "sched_cpu_per_scrape_s": (rr["sched_cpu_s"] / len(xs)) if rr["sched_cpu_s"] is not None else None,
            # CPU of the run minus what the process burns on its own (idle
            # window rate x run time): for dbwarden that removes its polling.
            "cpu_per_scrape_net_s": (rr["cpu_s"] - idle_rate * run["seconds"]) / len(xs),
            "sched_cpu_per_scrape_net_s": ((rr["sched_cpu_s"] - idle_rate_sched * run["seconds"]) / len(xs))
            if idle_rate_sched is not None else None,
            "idle_cpu_s_per_s": idle_rate,
            "idle_sched_cpu_s_per_s": idle_rate_sched,
            "rss_kb_end": rr["rss_kb"],
            "rss_kb_max_sampled": max(rss_max[n], rr["rss_kb"]),
            "hwm_kb": rr["hwm_kb"],
            "rss_anon_kb": rr["rss_anon_kb"],
            "rss_file_kb": rr["rss_file_kb"],
            "body_bytes": len(body),
            "samples": sum(1 for l in body.splitlines() if l and not l.startswith(b"#")),
            "server_run": srv,
            "server_idle": ir["server"],
        }
    # dbwarden's cost on the server per poll (idle window: only polls hit the DB)
    ids = idle["exporters"][args.dbwarden]["server"]
    polls = idle["dbwarden_poll"]["polls"] or None
    result["dbwarden_server_per_poll_idle"] = {
        "polls": idle["dbwarden_poll"]["polls"],
        "statements": ids["calls"] / polls if polls else None,
        "exec_ms": ids["exec_ms"] / polls if polls else None,
        "plan_ms": ids["plan_ms"] / polls if polls else None,
        "backend_cpu_ms": 1000 * ids["backend_cpu_s"] / polls if polls else None,
        "backends_gone": ids["backends_gone"],
        "by_statement": [dict(s, ms_per_poll=s["ms"] / polls) for s in ids["statements"]] if polls else [],
    }
    rs = run["exporters"][args.dbwarden]["server"]
    polls = run["dbwarden_poll"]["polls"] or None
    result["dbwarden_server_per_poll_run"] = {
        "polls": run["dbwarden_poll"]["polls"],
        "statements": rs["calls"] / polls if polls else None,
        "exec_ms": rs["exec_ms"] / polls if polls else None,
        "plan_ms": rs["plan_ms"] / polls if polls else None,
        "backend_cpu_ms": 1000 * rs["backend_cpu_s"] / polls if polls else None,
        "backends_gone": rs["backends_gone"],
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"phase {args.sessions} sessions: " + ", ".join(
        f"{n} median {1000 * result['exporters'][n]['lat_median_s']:.2f} ms" for n in names), file=sys.stderr)


# ---------------------------------------------------------------- report

def ms(x, digits=2):
    return "–" if x is None else f"{1000 * x:.{digits}f}"


def us(x):
    return "–" if x is None else f"{1e6 * x:.0f}"


def mib(kb):
    return f"{kb / 1024:.1f}"


def ratio(a, b):
    if a is None or b is None or b <= 0:
        return "–"
    return f"{a / b:.1f}×"


def report(args):
    phases = []
    for p in args.files:
        with open(p) as f:
            phases.append(json.load(f))
    phases.sort(key=lambda p: p["sessions"])
    dbw = args.dbwarden
    out = []
    w = out.append
    peers = [n for n in phases[0]["exporters"] if n != dbw]

    for p in phases:
        if p.get("note"):
            w(f"- {p['sessions']} sessions: {p['note']}")
    w("")
    w("### Headline: peer / dbwarden (higher = dbwarden better)\n")
    w("| sessions | peer | scrape median | scrape p99 | process CPU per scrape (dbwarden's incl. its polling) | CPU per scrape, net of idle-window rate | VmRSS | server exec time: peer per scrape / dbwarden per poll |")
    w("|---:|---|---:|---:|---:|---:|---:|---:|")
    for p in phases:
        d = p["exporters"][dbw]
        d_srv = p["dbwarden_server_per_poll_idle"]["exec_ms"]
        for n in peers:
            e = p["exporters"][n]
            srv = e["server_run"]
            e_srv = srv["exec_ms"] / e["scrapes"] if e["scrapes"] else None
            w(f"| {p['sessions']} | {n} | {ratio(e['lat_median_s'], d['lat_median_s'])} | "
              f"{ratio(e['lat_p99_s'], d['lat_p99_s'])} | "
              f"{ratio(e['sched_cpu_per_scrape_s'], d['sched_cpu_per_scrape_s'])} | "
              f"{ratio(e['sched_cpu_per_scrape_net_s'], d['sched_cpu_per_scrape_net_s'])} | "
              f"{ratio(e['rss_kb_end'], d['rss_kb_end'])} | {ratio(e_srv, d_srv)} |")
    w("")
    w("### Absolute figures\n")
    w("| sessions | exporter | scrapes | median ms | p99 ms | max ms | CPU/scrape µs (stat ticks) | CPU/scrape µs (schedstat) | net of idle µs (schedstat) | idle CPU ms/s | VmRSS MiB | VmHWM MiB | anon / file MiB | body KiB | samples | server exec ms/scrape | statements/scrape | server backend CPU ms/scrape |")
    w("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for p in phases:
        for n, e in p["exporters"].items():
            srv = e["server_run"]
            k = e["scrapes"]
            if n == dbw:  # its database work is per poll, not per scrape: see the poll table
                srv_cols = "0 (per poll: below) | 0 | 0"
            else:
                srv_cols = f"{srv['exec_ms'] / k:.3f} | {srv['calls'] / k:.1f} | {1000 * srv['backend_cpu_s'] / k:.3f}"
            w(f"| {p['sessions']} | {n} | {k} | {ms(e['lat_median_s'])} | {ms(e['lat_p99_s'])} | {ms(e['lat_max_s'])} | "
              f"{us(e['cpu_per_scrape_s'])} | {us(e['sched_cpu_per_scrape_s'])} | {us(e['sched_cpu_per_scrape_net_s'])} | "
              f"{ms(e['idle_sched_cpu_s_per_s'], 2) if e['idle_sched_cpu_s_per_s'] is not None else '–'} | "
              f"{mib(e['rss_kb_end'])} | {mib(e['hwm_kb'])} | "
              f"{mib(e.get('rss_anon_kb') or 0)} / {mib(e.get('rss_file_kb') or 0)} | {e['body_bytes'] / 1024:.1f} | {e['samples']} | {srv_cols} |")
    w("")
    w("Client floor (same Python loop, dbwarden `/livez`, 3-byte body): " + ", ".join(
        f"{p['sessions']} sessions median {ms(p['floor_livez']['median_s'], 3)} ms / p99 {ms(p['floor_livez']['p99_s'], 3)} ms"
        for p in phases if 'floor_livez' in p) + ".\n")
    if len(phases) > 1:
        lo, hi = phases[0], phases[-1]
        w(f"### Growth from {lo['sessions']} to {hi['sessions']} sessions ({hi['sessions']} / {lo['sessions']} figure)\n")
        w("| exporter | scrape median | scrape p99 | CPU per scrape (schedstat) | VmRSS | server exec per scrape (dbwarden: per poll) |")
        w("|---|---:|---:|---:|---:|---:|")
        for n in lo["exporters"]:
            a, b = lo["exporters"][n], hi["exporters"][n]
            if n == dbw:
                sa = lo["dbwarden_server_per_poll_idle"]["exec_ms"]
                sb = hi["dbwarden_server_per_poll_idle"]["exec_ms"]
            else:
                sa = a["server_run"]["exec_ms"] / a["scrapes"]
                sb = b["server_run"]["exec_ms"] / b["scrapes"]
            w(f"| {n} | {ratio(b['lat_median_s'], a['lat_median_s'])} | {ratio(b['lat_p99_s'], a['lat_p99_s'])} | "
              f"{ratio(b['sched_cpu_per_scrape_s'], a['sched_cpu_per_scrape_s'])} | {ratio(b['rss_kb_end'], a['rss_kb_end'])} | {ratio(sb, sa)} |")
        w("")
    w("### dbwarden's poll\n")
    w("| sessions | window | polls | errors | mean poll ms | share ≤ 5 ms | share ≤ 10 ms | last poll ms | statements/poll | server exec ms/poll | server plan ms/poll | server backend CPU ms/poll | sessions dbwarden saw (active/idle) |")
    w("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for p in phases:
        for label, pk, sk in (("idle (no scrapes)", "dbwarden_poll_idle", "dbwarden_server_per_poll_idle"),
                              ("during scrape run", "dbwarden_poll_run", "dbwarden_server_per_poll_run")):
            po, sv = p[pk], p[sk]
            ss = po["sessions_seen"]
            pct = lambda x: "–" if x is None else f"{100 * x:.0f}%"
            f3 = lambda x: "–" if x is None else f"{x:.3f}"
            f1 = lambda x: "–" if x is None else f"{x:.1f}"
            w(f"| {p['sessions']} | {label} | {po['polls']:.0f} | {po['errors']:.0f} | {ms(po['mean_s'])} | "
              f"{pct(po['share_le_5ms'])} | {pct(po['share_le_10ms'])} | {ms(po['last_s'])} | "
              f"{f1(sv['statements'])} | "
              f"{f3(sv['exec_ms'])} | {f3(sv['plan_ms'])} | {f3(sv['backend_cpu_ms'])} | "
              f"{ss.get('active', 0):.0f}/{ss.get('idle', 0):.0f} |")
    w("")
    w("### Where dbwarden's poll time goes (idle window)\n")
    w("Server time per poll by statement (pg_stat_statements exec + plan), the rest of the poll (client decoding, round trips, evaluation), and dbwarden's own CPU per poll (schedstat).\n")
    heads = [f"{p['sessions']} sessions ms/poll" for p in phases]
    w("| statement | " + " | ".join(heads) + " |")
    w("|---|" + "---:|" * len(phases))
    keys = []
    for p in phases:
        for s in p["dbwarden_server_per_poll_idle"].get("by_statement", []):
            if s["query"] not in keys:
                keys.append(s["query"])
    for k in keys:
        cells = []
        for p in phases:
            m = [s for s in p["dbwarden_server_per_poll_idle"].get("by_statement", []) if s["query"] == k]
            cells.append(f"{m[0]['ms_per_poll']:.3f}" if m else "–")
        w(f"| `{k.replace('|', '/')}` | " + " | ".join(cells) + " |")
    rest, own = [], []
    for p in phases:
        po, sv = p["dbwarden_poll_idle"], p["dbwarden_server_per_poll_idle"]
        server = (sv["exec_ms"] or 0) + (sv["plan_ms"] or 0)
        rest.append(f"{1000 * po['mean_s'] - server:.3f}" if po["mean_s"] else "–")
        d = p["exporters"][dbw]
        rate = d["idle_sched_cpu_s_per_s"]
        polls = po["polls"]
        own.append(f"{1000 * rate * p['idle_seconds'] / polls:.3f}" if rate is not None and polls else "–")
    w("| **all server statements** | " + " | ".join(
        f"{(p['dbwarden_server_per_poll_idle']['exec_ms'] or 0) + (p['dbwarden_server_per_poll_idle']['plan_ms'] or 0):.3f}" for p in phases) + " |")
    w("| **mean poll − server time** (client side + round trips) | " + " | ".join(rest) + " |")
    w("| **mean poll** | " + " | ".join(ms(p["dbwarden_poll_idle"]["mean_s"], 3) for p in phases) + " |")
    w("| dbwarden process CPU per poll | " + " | ".join(own) + " |")
    w("| server backend CPU per poll | " + " | ".join(
        f"{p['dbwarden_server_per_poll_idle']['backend_cpu_ms']:.3f}" if p['dbwarden_server_per_poll_idle']['backend_cpu_ms'] is not None else "–" for p in phases) + " |")
    w("")
    w("### dbwarden's own CPU per poll (idle window, schedstat)\n")
    w("| sessions | dbwarden CPU ms/s while idle | ≈ CPU ms per poll |")
    w("|---:|---:|---:|")
    for p in phases:
        d = p["exporters"][dbw]
        polls = p["dbwarden_poll_idle"]["polls"]
        rate = d["idle_sched_cpu_s_per_s"]
        per = rate * p["idle_seconds"] / polls if rate is not None and polls else None
        w(f"| {p['sessions']} | {ms(rate)} | {ms(per, 3)} |")
    w("")
    w("### Goals\n")
    by = {p["sessions"]: p for p in phases}
    top = by[max(by)]
    d = top["exporters"][dbw]
    fastest = min(peers, key=lambda n: top["exporters"][n]["lat_median_s"])
    f_ratio = top["exporters"][fastest]["lat_median_s"] / d["lat_median_s"]
    f99 = top["exporters"][fastest]["lat_p99_s"] / d["lat_p99_s"]
    w(f"- scrape ≥ 20× faster than the faster peer ({fastest}) at {max(by)} sessions: "
      f"median {f_ratio:.1f}×, p99 {f99:.1f}× → **{'met' if f_ratio >= 20 else 'NOT met'}**")
    parts = []
    verdict = True
    for p in phases:
        pi, pr = p["dbwarden_poll_idle"], p["dbwarden_poll_run"]
        verdict = verdict and (pi["mean_s"] or 1) < 0.010 and (pi["share_le_10ms"] or 0) >= 0.9
        parts.append(f"{p['sessions']} sessions: mean {ms(pi['mean_s'])} ms, {100 * (pi['share_le_10ms'] or 0):.0f}% ≤ 10 ms on its own; "
                     f"mean {ms(pr['mean_s'])} ms, {100 * (pr['share_le_10ms'] or 0):.0f}% ≤ 10 ms while the peers are being scraped")
    w("- poll < 10 ms (judged on the idle window: mean < 10 ms and ≥ 90% of polls ≤ 10 ms): " + "; ".join(parts)
      + f" → **{'met' if verdict else 'NOT met'}**")
    key = "rss_kb_max_sampled"
    leaner = min(peers, key=lambda n: top["exporters"][n][key])
    le = top["exporters"][leaner]
    w(f"- RSS no higher than the leaner peer ({leaner}) at {max(by)} sessions, by the highest VmRSS sampled during the run "
      f"(every 10 rounds and at the end): dbwarden {mib(d[key])} MiB vs {mib(le[key])} MiB "
      f"(VmHWM {mib(d['hwm_kb'])} vs {mib(le['hwm_kb'])} MiB) → **{'met' if d[key] <= le[key] else 'NOT met'}**")
    print("\n".join(out))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("freeport")
    w = sub.add_parser("wait-http")
    w.add_argument("url")
    w.add_argument("seconds", type=float)
    p = sub.add_parser("phase")
    p.add_argument("--exporter", action="append", required=True, help="NAME=PORT=PID=DBROLE")
    p.add_argument("--dbwarden", default="dbwarden", help="name of the dbwarden exporter")
    p.add_argument("--pgport", type=int, required=True)
    p.add_argument("--sessions", type=int, required=True)
    p.add_argument("--rounds", type=int, default=300)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--idle-seconds", type=float, default=20)
    p.add_argument("--pause-ms", type=float, default=0)
    p.add_argument("--note", default="")
    p.add_argument("--out", required=True)
    r = sub.add_parser("report")
    r.add_argument("--dbwarden", default="dbwarden")
    r.add_argument("files", nargs="+")
    a = ap.parse_args()
    if a.cmd == "freeport":
        print(freeport())
    elif a.cmd == "wait-http":
        wait_http(a.url, a.seconds)
    elif a.cmd == "phase":
        phase(a)
    else:
        report(a)


if __name__ == "__main__":
    main()
