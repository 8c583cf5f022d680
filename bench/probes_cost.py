#!/usr/bin/env python3
"""What ten probes cost, side by side in one run on one scratch PostgreSQL 15:

  plain     dbwarden polling one target, no probes           (role bench_plain)
  probes    dbwarden polling one target with the ten probes  (role bench_probes)
  exporter  postgres_exporter running the same ten queries   (role bench_exporter)
            from a queries.yaml (--extend.query-path, default metrics off),
            scraped at the same interval

The ten queries read tables of realistic size (entities 200k rows,
relationships 400k, investigations 20k): counts, newest timestamps, counts
by kind and status. Each process connects as its own role, so the server's
cost (pg_stat_statements execution time, and its backends' CPU time from
/proc/<pid>/schedstat) is told apart per process; dbwarden's poll durations
come from its own histogram.

  python3 bench/probes_cost.py [--seconds 120] [--interval 5]
      [--dbwarden target/release/dbwarden] [--exporter /usr/bin/prometheus-postgres-exporter]

Run as root (the server runs as the postgres OS user). Everything it starts
is stopped and removed on exit.
"""
import argparse
import http.client
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scrape  # noqa: E402  (the shared helpers of bench/run.sh)

PG_BIN = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")

QUERIES = [
    ("entity_count", "SELECT count(*) AS rows FROM entities", []),
    ("entity_newest", "SELECT extract(epoch FROM max(created_at))::float8 AS newest FROM entities", []),
    ("entity_kinds", "SELECT kind, count(*) AS rows FROM entities GROUP BY kind", ["kind"]),
    ("entity_recent", "SELECT count(*) AS rows FROM entities WHERE created_at > now() - interval '1 hour'", []),
    ("relationship_count", "SELECT count(*) AS rows FROM relationships", []),
    ("relationship_newest", "SELECT extract(epoch FROM max(created_at))::float8 AS newest FROM relationships", []),
    ("investigation_statuses", "SELECT status, count(*) AS rows FROM investigations GROUP BY status", ["status"]),
    ("investigation_newest", "SELECT extract(epoch FROM max(created_at))::float8 AS newest FROM investigations", []),
    ("investigation_open_age", "SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS age FROM investigations WHERE status = 'open'", []),
    ("table_sizes", "SELECT relname, pg_total_relation_size(relid)::float8 AS bytes FROM pg_stat_user_tables", ["relname"]),
]


def log(msg):
    print(f"[probes_cost {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def queries_yaml():
    """The ten queries in postgres_exporter's format: labels, then the value column."""
    out = []
    for name, sql, labels in QUERIES:
        value = sql.rsplit(" FROM ", 1)[0].rsplit(" AS ", 1)[1].strip()
        out.append(f"{name}:\n  query: \"{sql}\"\n  metrics:")
        for label in labels:
            out.append(f"    - {label}:\n        usage: \"LABEL\"\n        description: \"{label}\"")
        out.append(f"    - {value}:\n        usage: \"GAUGE\"\n        description: \"{value}\"")
    return "\n".join(out) + "\n"


def dbwarden_config(port, pgport, role, interval, probes):
    text = f"""
[server]
listen = "127.0.0.1:{port}"

[log]
level = "warn"

[postgres.bench]
url = "postgres://{role}@127.0.0.1:{pgport}/postgres"
sslmode = "disable"
poll_interval = "{interval}s"
poll_timeout = "{max(1, interval - 1)}s"
statement_timeout = "{max(1, interval - 1)}s"
"""
    if probes:
        for name, sql, labels in QUERIES:
            lab = ", ".join(f'"{x}"' for x in labels)
            text += f"""
[postgres.bench.probes.{name}]
sql = "{sql}"
labels = [{lab}]
interval = "{interval}s"
timeout = "2s"
"""
    return text


def poll_stats(port):
    s = scrape.dbw_poll_stats(port)
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    text = scrape.http_get(c).decode()
    c.close()
    probe = {"sum": 0.0, "n": 0}
    for name, labels, v in scrape.parse_samples(text, "dbwarden_probe_"):
        if name == "dbwarden_probe_duration_seconds":
            probe["sum"] += v
            probe["n"] += 1
        if name == "dbwarden_probe_up" and v != 1.0:
            raise RuntimeError(f"probe {labels.get('probe')} failing")
    s["probe_last_sum"] = probe["sum"]
    s["probes"] = probe["n"]
    return s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=120)
    ap.add_argument("--interval", type=int, default=5)
    ap.add_argument("--dbwarden", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "target/release/dbwarden"))
    ap.add_argument("--exporter", default="/usr/bin/prometheus-postgres-exporter")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (the server runs as the postgres OS user)")
    for path, pkg in [(a.dbwarden, "cargo build --release"), (a.exporter, "apt-get install prometheus-postgres-exporter")]:
        if not os.access(path, os.X_OK):
            sys.exit(f"{path} missing ({pkg})")

    work = tempfile.mkdtemp(prefix="dbwarden-probes-cost.")
    shutil.chown(work, "postgres")
    os.chmod(work, 0o755)
    procs = []
    data = os.path.join(work, "data")

    def as_pg(*cmd, **kw):
        return subprocess.run(["runuser", "-u", "postgres", "--", *cmd], cwd=work, check=True, **kw)

    def cleanup():
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        if os.path.exists(os.path.join(data, "postmaster.pid")):
            subprocess.run(["runuser", "-u", "postgres", "--", f"{PG_BIN}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"],
                           cwd=work, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        as_pg(f"{PG_BIN}/initdb", "-D", data, "-A", "trust", "-U", "postgres", capture_output=True)
        pgport = scrape.freeport()
        with open(os.path.join(data, "postgresql.conf"), "a") as f:
            f.write(f"port = {pgport}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{work}'\n"
                    "shared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.track = top\n"
                    "fsync = off\n")
        as_pg(f"{PG_BIN}/pg_ctl", "-D", data, "-l", os.path.join(work, "server.log"), "-w", "-t", "60", "start", capture_output=True)
        roles = ["bench_plain", "bench_probes", "bench_exporter"]
        scrape.psql(pgport, "CREATE EXTENSION pg_stat_statements")
        for r in roles:
            scrape.psql(pgport, f"CREATE ROLE {r} LOGIN SUPERUSER")
        log("loading tables")
        scrape.psql(pgport, """
            CREATE TABLE entities (id bigserial PRIMARY KEY, kind text NOT NULL, created_at timestamptz NOT NULL);
            INSERT INTO entities (kind, created_at)
              SELECT (ARRAY['person','org','place','event'])[1 + i % 4], now() - (i || ' seconds')::interval
              FROM generate_series(1, 200000) i;
            CREATE INDEX ON entities (created_at);
            CREATE TABLE relationships (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL);
            INSERT INTO relationships (created_at) SELECT now() - (i || ' seconds')::interval FROM generate_series(1, 400000) i;
            CREATE INDEX ON relationships (created_at);
            CREATE TABLE investigations (id bigserial PRIMARY KEY, status text NOT NULL, created_at timestamptz NOT NULL);
            INSERT INTO investigations (status, created_at)
              SELECT (ARRAY['open','closed','archived'])[1 + i % 3], now() - (i || ' minutes')::interval
              FROM generate_series(1, 20000) i;
            CREATE INDEX ON investigations (created_at);""")
        scrape.psql(pgport, "VACUUM ANALYZE")

        ports = {}
        for name, probes in [("plain", False), ("probes", True)]:
            ports[name] = scrape.freeport()
            cfg = os.path.join(work, f"{name}.toml")
            with open(cfg, "w") as f:
                f.write(dbwarden_config(ports[name], pgport, f"bench_{name}", a.interval, probes))
            procs.append(subprocess.Popen([a.dbwarden, "run", "--config", cfg],
                                          stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, f"{name}.log"), "w")))
        qfile = os.path.join(work, "queries.yaml")
        with open(qfile, "w") as f:
            f.write(queries_yaml())
        ports["exporter"] = scrape.freeport()
        env = dict(os.environ, DATA_SOURCE_NAME=f"postgresql://bench_exporter@127.0.0.1:{pgport}/postgres?sslmode=disable")
        procs.append(subprocess.Popen([a.exporter, f"--web.listen-address=127.0.0.1:{ports['exporter']}",
                                       f"--extend.query-path={qfile}", "--disable-default-metrics",
                                       "--disable-settings-metrics"],
                                      env=env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "exporter.log"), "w")))
        for name, port in ports.items():
            try:
                scrape.wait_http(f"http://127.0.0.1:{port}/metrics", 60)
            except SystemExit:
                sys.exit(f"{name} did not start: {open(os.path.join(work, name + '.log')).read()[-2000:]}")
        # Every probe ran once, and the exporter answers its queries.
        deadline = time.monotonic() + 60
        while True:
            try:
                if poll_stats(ports["probes"])["probes"] == len(QUERIES):
                    break
            except RuntimeError as e:
                if time.monotonic() > deadline:
                    raise
                log(str(e))
            if time.monotonic() > deadline:
                sys.exit("the probes did not all run within 60 s")
            time.sleep(0.5)
        c = http.client.HTTPConnection("127.0.0.1", ports["exporter"], timeout=30)
        body = scrape.http_get(c).decode()
        missing = [n for n, _, _ in QUERIES if f"{n}_" not in body]
        if missing:
            sys.exit(f"postgres_exporter does not export {missing}: {open(os.path.join(work, 'exporter.log')).read()[-2000:]}")

        log(f"measuring {a.seconds} s at a {a.interval} s interval")
        before = scrape.role_snapshot(pgport, roles)
        dbw0 = {n: poll_stats(ports[n]) for n in ("plain", "probes")}
        scrapes = []
        start = time.monotonic()
        while time.monotonic() - start < a.seconds:
            t0 = time.monotonic()
            scrape.http_get(c)
            scrapes.append(time.monotonic() - t0)
            time.sleep(max(0.0, a.interval - (time.monotonic() - t0)))
        after = scrape.role_snapshot(pgport, roles)
        dbw1 = {n: poll_stats(ports[n]) for n in ("plain", "probes")}
        elapsed = time.monotonic() - start
        d = scrape.role_delta(before, after)

        per_min = 60.0 / elapsed
        print(f"\nTen probes, {a.seconds} s at a {a.interval} s interval, one scratch PostgreSQL 15 "
              f"(entities 200k, relationships 400k, investigations 20k rows); load {os.getloadavg()[0]:.1f}\n")
        print("| | statements/min | server exec ms/min | backend CPU ms/min | mean poll ms | mean probe run ms | mean scrape ms |")
        print("|---|---|---|---|---|---|---|")
        for name, role in [("dbwarden, no probes", "bench_plain"), ("dbwarden, ten probes", "bench_probes"),
                           ("postgres_exporter, the ten queries", "bench_exporter")]:
            r = d[role]
            key = {"bench_plain": "plain", "bench_probes": "probes"}.get(role)
            poll = probe = scrape_ms = "—"
            if key:
                n = dbw1[key]["count"] - dbw0[key]["count"]
                poll = f"{1000 * (dbw1[key]['sum'] - dbw0[key]['sum']) / n:.2f}" if n else "—"
                if key == "probes":
                    probe = f"{1000 * dbw1[key]['probe_last_sum'] / len(QUERIES):.2f}"
            else:
                scrape_ms = f"{1000 * sum(scrapes) / len(scrapes):.2f}"
            print(f"| {name} | {r['calls'] * per_min:.0f} | {r['exec_ms'] * per_min:.1f} | "
                  f"{r['backend_cpu_s'] * 1000 * per_min:.1f} | {poll} | {probe} | {scrape_ms} |")
        p, e, b = d["bench_probes"], d["bench_exporter"], d["bench_plain"]
        print(f"\nWhat the ten probes add to the server per minute: {(p['exec_ms'] - b['exec_ms']) * per_min:.1f} ms of execution, "
              f"{(p['backend_cpu_s'] - b['backend_cpu_s']) * 1000 * per_min:.1f} ms of backend CPU; "
              f"postgres_exporter for the same queries: {e['exec_ms'] * per_min:.1f} ms, "
              f"{e['backend_cpu_s'] * 1000 * per_min:.1f} ms "
              f"(ratio exec {scrape.ratio((p['exec_ms'] - b['exec_ms']), e['exec_ms'])}, "
              f"CPU {scrape.ratio((p['backend_cpu_s'] - b['backend_cpu_s']), e['backend_cpu_s'])}).")
    finally:
        cleanup()


if __name__ == "__main__":
    main()
