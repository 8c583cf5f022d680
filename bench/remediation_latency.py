#!/usr/bin/env python3
"""Remediation latency: from a session crossing its idle threshold to its
termination by dbwarden. Python 3 standard library only; talks only to
127.0.0.1. Driven by bench/remediation_latency.sh.

  run     opens sessions as `psql` processes (one per session, stdin a pipe:
          connected and idle, never sending a query) in waves of random size
          at random times, records each session's pid, backend_start and
          state_change from pg_stat_activity, waits until dbwarden has
          acted on all of them, then joins them with the audit file.
  report  prints the Markdown summary of one or more `run` results.

Definitions (all clocks are the same machine's):

  crossing    = state_change + idle_for
                state_change is read from pg_stat_activity while the session
                sits idle (the moment it became idle); idle_for is the policy's.
  termination = time_ms of the session's `acted` record. The runner takes
                that time right after pg_terminate_backend() returned, before
                it writes the record.
  latency     = termination - crossing

The audit alone does not hold state_change. It holds idle_seconds, measured
at the poll's now() (the start of the poll's transaction), and the record's
own time. From an `intent` record one can only compute
  crossing' = intent.time_ms - (idle_seconds - idle_for)
which assumes the poll ran at the moment the intent was written. That
crossing' is later than the true crossing by (intent time - poll now()),
that is the poll's duration plus the runner's work before this session. The
latency it gives is therefore a lower bound. The `audit_only` figures show
how far off it is.
"""

import argparse
import json
import os
import random
import re
import subprocess
import sys
import time
import urllib.request


def psql(port, sql, user="postgres"):
    out = subprocess.run(
        ["psql", "-X", "-q", "-At", "-F", "\t", "-v", "ON_ERROR_STOP=1",
         "-h", "127.0.0.1", "-p", str(port), "-U", user, "-d", "postgres", "-c", sql],
        check=True, capture_output=True, text=True, timeout=30)
    return [line.split("\t") for line in out.stdout.splitlines() if line]


def quantile(xs, p):
    """Nearest-rank quantile (p in 0..1) of a non-empty list."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(round(p * len(s) + 0.5)) - 1))
    return s[k]


def read_audit(path):
    records, bad = [], 0
    with open(path, "rb") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except ValueError:
                bad += 1
    return records, bad


def metrics(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def metric_sum(text, name, target):
    total = None
    for line in text.splitlines():
        m = re.match(r'^([a-z_]+)\{([^}]*)\} (\S+)', line)
        if m and m.group(1) == name and f'target="{target}"' in m.group(2):
            total = (total or 0.0) + float(m.group(3))
    return total


GATE_KEY = 4242


class Session:
    def __init__(self, index, wave, port, user="app", app=None):
        self.index = index
        self.wave = wave
        self.app = app or f"bench_lat_{index}"
        self.opened = time.time()
        self.proc = subprocess.Popen(
            ["psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(port), "-U", user, "-d", "postgres"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=dict(os.environ, PGAPPNAME=self.app))
        self.pid = None
        self.backend_start_us = None
        self.state_change_us = None

    def send(self, sql):
        self.proc.stdin.write(sql.encode() + b"\n")
        self.proc.stdin.flush()

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run(a):
    rng = random.Random(a.seed)
    idle_for_ms = a.idle_for * 1000.0
    sessions, waves = [], []
    t0 = time.time()
    gate = None
    if a.sync_idle:
        gate = Session(-1, -1, a.pgport, user="postgres", app="bench_lat_gate")
        gate.send(f"SELECT pg_advisory_lock({GATE_KEY});")
        deadline = time.time() + 10
        while psql(a.pgport, "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity s USING (pid)"
                   f" WHERE s.application_name = 'bench_lat_gate' AND l.locktype = 'advisory' AND l.objid = {GATE_KEY} AND l.granted")[0][0] != "1":
            if time.time() > deadline:
                sys.exit("the gate session did not take its lock")
            time.sleep(0.05)
    try:
        opened = 0
        while opened < a.sessions:
            size = min(a.sessions - opened, rng.randint(a.min_wave, a.max_wave))
            # Record each session's identity and the moment it became idle
            # while it sits idle (state_change is absolute: when it is read
            # does not matter, as long as the session is still there).
            pending = {}

            def capture():
                names = ",".join(f"'{n}'" for n in pending)
                rows = psql(a.pgport,
                            "SELECT application_name, pid,"
                            " (extract(epoch FROM backend_start) * 1000000)::int8,"
                            " (extract(epoch FROM state_change) * 1000000)::int8"
                            " FROM pg_stat_activity"
                            f" WHERE application_name IN ({names}) AND state = 'idle'")
                for app, pid, bs, sc in rows:
                    s = pending.pop(app)
                    s.pid, s.backend_start_us, s.state_change_us = int(pid), int(bs), int(sc)

            wave = []
            for i in range(size):
                s = Session(opened + i, len(waves), a.pgport)
                if a.sync_idle:
                    s.send(f"SELECT pg_advisory_xact_lock_shared({GATE_KEY});")
                wave.append(s)
                pending[s.app] = s
                if len(wave) % 10 == 0 and not a.sync_idle:
                    capture()
            if a.sync_idle:
                # Every session of the wave waits on a lock the meter holds,
                # and the meter lets them all go at once: they become idle,
                # and cross, together.
                names = ",".join(f"'{n}'" for n in pending)
                deadline = time.time() + 60
                while True:
                    waiting = int(psql(a.pgport, "SELECT count(*) FROM pg_stat_activity"
                                       f" WHERE application_name IN ({names}) AND wait_event_type = 'Lock'")[0][0])
                    if waiting == size:
                        break
                    if time.time() > deadline:
                        sys.exit(f"only {waiting} of {size} sessions wait on the gate after 60 s")
                    time.sleep(0.05)
                gate.send(f"SELECT pg_advisory_unlock({GATE_KEY});")
                gate.send(f"SELECT pg_advisory_lock({GATE_KEY});")
            opened += size
            sessions.extend(wave)
            waves.append(size)
            deadline = time.time() + 10
            while pending and time.time() < deadline:
                capture()
                if pending:
                    time.sleep(0.01)
            for s in pending.values():
                print(f"{s.app}: not seen idle in pg_stat_activity within 10 s: left out", file=sys.stderr)
            time.sleep(rng.uniform(a.gap_min, a.gap_max))
        opened_all = time.time()

        # Wait until every session has an outcome in the audit (or time out).
        want = {(s.pid, s.backend_start_us) for s in sessions if s.pid is not None}
        deadline = time.time() + a.idle_for + a.poll_interval * 10 + 30
        while True:
            records, bad = read_audit(a.audit)
            done = {(r["session"]["pid"], r["session"]["backend_start_us"]) for r in records
                    if r["decision"] in ("acted", "skipped", "refused", "failed")}
            if want <= done or time.time() > deadline:
                break
            time.sleep(0.2)
        text = metrics(a.dbw_port)
    finally:
        for s in sessions + ([gate] if gate else []):
            s.close()
    still = psql(a.pgport, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'")[0][0]

    by_key = {}
    for r in records:
        by_key.setdefault((r["session"]["pid"], r["session"]["backend_start_us"]), []).append(r)
    rows = []
    uncaptured = sum(1 for s in sessions if s.pid is None)
    for s in sessions:
        if s.pid is None:
            continue
        recs = by_key.get((s.pid, s.backend_start_us), [])
        intent = next((r for r in recs if r["decision"] == "intent"), None)
        acted = next((r for r in recs if r["decision"] == "acted"), None)
        crossing_ms = s.state_change_us / 1000.0 + idle_for_ms
        row = {
            "app": s.app, "wave": s.wave, "pid": s.pid, "backend_start_us": s.backend_start_us,
            "state_change_us": s.state_change_us, "crossing_ms": crossing_ms,
            "decisions": [r["decision"] for r in recs],
        }
        if intent and acted:
            row.update({
                "intent_ms": intent["time_ms"], "acted_ms": acted["time_ms"],
                "latency_ms": acted["time_ms"] - crossing_ms,
                "to_intent_ms": intent["time_ms"] - crossing_ms,
                "intent_to_acted_ms": acted["time_ms"] - intent["time_ms"],
                "idle_seconds": intent["session"]["idle_seconds"],
                # The audit-only estimate (see the module docstring).
                "audit_only_latency_ms": acted["time_ms"]
                - (intent["time_ms"] - (intent["session"]["idle_seconds"] * 1000.0 - idle_for_ms)),
                # now() of the poll that selected it: state_change + idle_seconds.
                "poll_now_ms": s.state_change_us / 1000.0 + intent["session"]["idle_seconds"] * 1000.0,
                "action_id": acted["action_id"],
            })
        rows.append(row)
    polls = metric_sum(text, "dbwarden_polls_total", a.target)
    poll_sum = metric_sum(text, "dbwarden_poll_duration_seconds_sum", a.target)
    result = {
        "sessions": a.sessions, "waves": waves, "seed": a.seed, "sync_idle": a.sync_idle,
        "idle_for_s": a.idle_for, "poll_interval_s": a.poll_interval, "bound_ms": a.poll_interval * 1000 + 250,
        "opening_s": opened_all - t0, "unparsable_audit_lines": bad, "uncaptured": uncaptured,
        "app_sessions_left": int(still),
        "polls": polls, "poll_mean_ms": (poll_sum / polls * 1000) if polls and poll_sum is not None else None,
        "note": a.note, "rows": rows,
    }
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"{sum(1 for r in rows if 'latency_ms' in r)}/{len(rows)} sessions terminated; results in {a.out}",
          file=sys.stderr)


def summarize(res):
    rows = res["rows"]
    lat = [r["latency_ms"] for r in rows if "latency_ms" in r]
    out = {"n": len(rows), "terminated": len(lat)}
    if not lat:
        return out
    bound = res["bound_ms"]
    out.update({
        "median": quantile(lat, 0.5), "p95": quantile(lat, 0.95), "p99": quantile(lat, 0.99),
        "max": max(lat), "min": min(lat),
        "within": sum(1 for x in lat if x <= bound) / len(lat),
        "to_intent_max": max(r["to_intent_ms"] for r in rows if "to_intent_ms" in r),
        "intent_to_acted_median": quantile([r["intent_to_acted_ms"] for r in rows if "intent_to_acted_ms" in r], 0.5),
        "intent_to_acted_max": max(r["intent_to_acted_ms"] for r in rows if "intent_to_acted_ms" in r),
        "audit_only_median": quantile([r["audit_only_latency_ms"] for r in rows if "audit_only_latency_ms" in r], 0.5),
        "audit_only_max": max(r["audit_only_latency_ms"] for r in rows if "audit_only_latency_ms" in r),
        # intent time minus the selecting poll's now(): poll duration + queue ahead of it
        "poll_to_intent_max": max(r["intent_ms"] - r["poll_now_ms"] for r in rows if "intent_ms" in r),
        "poll_to_intent_median": quantile([r["intent_ms"] - r["poll_now_ms"] for r in rows if "intent_ms" in r], 0.5),
    })
    # Sessions acted on by one poll: same poll now() (to the millisecond).
    batches = {}
    for r in rows:
        if "poll_now_ms" in r:
            batches.setdefault(round(r["poll_now_ms"]), []).append(r)
    out["batches"] = len(batches)
    out["largest_batch"] = max(len(b) for b in batches.values())
    out["over"] = sorted((r for r in rows if r.get("latency_ms", 0) > bound), key=lambda r: -r["latency_ms"])
    return out


def report(a):
    results = [json.load(open(p)) for p in a.results]
    print("| run | sessions (terminated) | waves | median | p95 | p99 | max | within poll_interval + 250 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for i, res in enumerate(results, 1):
        s = summarize(res)
        if "median" not in s:
            print(f"| {i} | {s['n']} (0) | {len(res['waves'])} | - | - | - | - | - |")
            continue
        print(f"| {i} | {s['n']} ({s['terminated']}) | {len(res['waves'])} | {s['median']:.0f} ms | {s['p95']:.0f} ms "
              f"| {s['p99']:.0f} ms | {s['max']:.0f} ms | {100 * s['within']:.1f} % (bound {res['bound_ms']:.0f} ms) |")
    print()
    print("| run | min | crossing → intent, max | intent → acted, median / max | poll now() → intent, median / max "
          "| audit-only estimate, median / max | polls acting / largest batch | mean poll | unparsable audit lines | app sessions left |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for i, res in enumerate(results, 1):
        s = summarize(res)
        if "median" not in s:
            continue
        pm = f"{res['poll_mean_ms']:.1f} ms" if res.get("poll_mean_ms") is not None else "-"
        print(f"| {i} | {s['min']:.0f} ms | {s['to_intent_max']:.0f} ms | {s['intent_to_acted_median']:.1f} / {s['intent_to_acted_max']:.1f} ms "
              f"| {s['poll_to_intent_median']:.1f} / {s['poll_to_intent_max']:.1f} ms "
              f"| {s['audit_only_median']:.0f} / {s['audit_only_max']:.0f} ms | {s['batches']} / {s['largest_batch']} "
              f"| {pm} | {res['unparsable_audit_lines']} | {res['app_sessions_left']} |")
    for i, res in enumerate(results, 1):
        s = summarize(res)
        if res.get("uncaptured"):
            print(f"\nrun {i}: {res['uncaptured']} sessions never seen idle by the meter (left out)")
        missing = [r for r in res["rows"] if "latency_ms" not in r]
        if missing:
            print(f"\nrun {i}: {len(missing)} sessions without intent+acted: "
                  + ", ".join(f"{r['app']} pid {r['pid']} {r['decisions']}" for r in missing[:10]))
        if s.get("over"):
            print(f"\nrun {i}: over the bound: "
                  + ", ".join(f"{r['app']} {r['latency_ms']:.0f} ms (crossing→intent {r['to_intent_ms']:.0f}, "
                              f"poll now()→intent {r['intent_ms'] - r['poll_now_ms']:.0f})" for r in s["over"][:10]))
        if res.get("note"):
            print(f"\nrun {i}: {res['note']}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--pgport", type=int, required=True)
    r.add_argument("--dbw-port", type=int, required=True)
    r.add_argument("--audit", required=True)
    r.add_argument("--target", default="bench")
    r.add_argument("--sessions", type=int, default=200)
    r.add_argument("--min-wave", type=int, default=1, help="wave size is uniform in min-wave..max-wave")
    r.add_argument("--max-wave", type=int, default=15)
    r.add_argument("--gap-min", type=float, default=0.1, help="seconds between waves, uniform in [min, max]")
    r.add_argument("--gap-max", type=float, default=1.9)
    r.add_argument("--sync-idle", action="store_true",
                   help="the sessions of a wave become idle at the same instant (a query ending together)")
    r.add_argument("--idle-for", type=float, required=True, help="the policy's idle_for, seconds")
    r.add_argument("--poll-interval", type=float, required=True, help="the target's poll_interval, seconds")
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--note", default="")
    r.add_argument("--out", required=True)
    p = sub.add_parser("report")
    p.add_argument("results", nargs="+")
    a = ap.parse_args()
    {"run": run, "report": report}[a.cmd](a)


if __name__ == "__main__":
    main()
