#!/usr/bin/env python3
"""How fast reads move away from a lagging standby, and back (issue #15):
one scratch PostgreSQL 15 primary and a streaming standby, one dbwarden
watching both, and its load-balancer endpoint /health/standby/replica.

Each round:
  1. the standby caught up, /replica answers 200;
  2. replay paused (pg_wal_replay_pause()) and a writer inserts on the
     primary every 100 ms: the standby's replay delay (the age of its last
     replayed transaction, since WAL waits) crosses the threshold (the
     target's replication_lag max, MAX_LAG) at
     pg_last_xact_replay_timestamp() + MAX_LAG, read on the standby, or
     when WAL is first seen waiting (received, not replayed) if later;
     measured: from that crossing to the first 503 of /replica;
  3. the writer stopped, replay resumed (pg_wal_replay_resume());
     measured: from the resume to the first 200 again.
/replica is polled every 20 ms. The Kubernetes paths (lag routing's pod
condition, the rebuild eviction) need the fake API server, which is Rust
only: their figures come from tests/lag_routing.rs and tests/rebuild.rs
(`cargo test --test NAME -- --nocapture` prints them).

  python3 bench/lag_mitigation.py [--rounds 5] [--poll-interval 300ms]
      [--max-lag 1] [--dbwarden target/debug/dbwarden]

Run as root (the servers run as the postgres OS user). Everything it starts
is stopped and removed on exit.
"""
import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

PG_BIN = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_pg(args, **kw):
    return subprocess.run(["runuser", "-u", "postgres", "--"] + args, check=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def psql(port, sql):
    out = subprocess.run(["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                          "-p", str(port), "-U", "postgres", "-d", "postgres", "-c", sql],
                         check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return out.stdout.strip()


def health(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def wait_for(desc, check, timeout=60.0, every=0.02):
    deadline = time.monotonic() + timeout
    while True:
        v = check()
        if v:
            return v
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {desc}")
        time.sleep(every)


class Writer:
    """Inserts a row on the primary every 100 ms in its own psql session."""

    def __init__(self, port):
        self.stop = threading.Event()
        self.proc = subprocess.Popen(["psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                                      "-d", "postgres"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, text=True)
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            self.proc.stdin.write("INSERT INTO w (pad) VALUES (repeat('x', 2000));\n")
            self.proc.stdin.flush()
            self.stop.wait(0.1)  # the workload's pacing

    def close(self):
        self.stop.set()
        self.thread.join()
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--poll-interval", default="300ms")
    ap.add_argument("--max-lag", type=float, default=1.0, help="replication_lag max, seconds")
    ap.add_argument("--dbwarden", default="target/debug/dbwarden")
    a = ap.parse_args()
    if not os.access(a.dbwarden, os.X_OK):
        raise SystemExit(f"{a.dbwarden} missing: cargo build --bin dbwarden")

    work = tempfile.mkdtemp(prefix="dbwarden-lag.")
    shutil.chown(work, "postgres")
    os.chmod(work, 0o700)
    started = []
    daemon = None

    def cleanup(*_):
        if daemon and daemon.poll() is None:
            daemon.terminate()
            try:
                daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                daemon.kill()
        for d in reversed(started):
            subprocess.run(["runuser", "-u", "postgres", "--", f"{PG_BIN}/pg_ctl", "-D", d, "-m", "immediate",
                            "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        primary, standby = os.path.join(work, "primary"), os.path.join(work, "standby")
        pport, sport, dport = free_port(), free_port(), free_port()
        as_pg([f"{PG_BIN}/initdb", "-D", primary, "-A", "trust", "-U", "postgres"], cwd=work)
        with open(os.path.join(primary, "postgresql.conf"), "a") as f:
            f.write(f"\nport = {pport}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{work}'\n"
                    "fsync = off\nlog_min_messages = warning\n")
        as_pg([f"{PG_BIN}/pg_ctl", "-D", primary, "-l", f"{primary}.log", "-w", "start"], cwd=work)
        started.append(primary)
        psql(pport, "CREATE TABLE w (id bigserial PRIMARY KEY, pad text)")
        as_pg([f"{PG_BIN}/pg_basebackup", "-D", standby, "-R", "-h", "127.0.0.1", "-p", str(pport),
               "-U", "postgres", "-X", "stream"], cwd=work)
        with open(os.path.join(standby, "postgresql.conf"), "a") as f:
            f.write(f"\nport = {sport}\n")
        as_pg([f"{PG_BIN}/pg_ctl", "-D", standby, "-l", f"{standby}.log", "-w", "start"], cwd=work)
        started.append(standby)

        target = lambda name, port: (  # noqa: E731
            f'[postgres.{name}]\nurl = "postgres://postgres@127.0.0.1:{port}/postgres"\nsslmode = "disable"\n'
            f'poll_interval = "{a.poll_interval}"\npoll_timeout = "{a.poll_interval}"\n'
            f'statement_timeout = "250ms"\nlock_timeout = "100ms"\n\n'
            f'[postgres.{name}.thresholds]\nreplication_lag = {{ max = "{a.max_lag}s", for = "0s" }}\n\n')
        cfg = os.path.join(work, "dbwarden.toml")
        with open(cfg, "w") as f:
            f.write(f'[server]\nlisten = "127.0.0.1:{dport}"\n\n' + target("primary", pport) + target("standby", sport))
        daemon = subprocess.Popen([a.dbwarden, "run", "--config", cfg], stdout=subprocess.DEVNULL,
                                  stderr=open(os.path.join(work, "dbwarden.log"), "w"))
        url = f"http://127.0.0.1:{dport}/health/standby/replica"

        outs, backs = [], []
        for i in range(a.rounds):
            psql(pport, "INSERT INTO w (pad) VALUES ('caught up')")
            wait_for("the standby caught up and /replica 200", lambda: (
                psql(sport, "SELECT pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()") == "t"
                and health(url) == 200))
            psql(sport, "SELECT pg_wal_replay_pause()")
            writer = Writer(pport)
            wait_for("WAL waiting on the standby", lambda: psql(
                sport, "SELECT pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn()") == "t")
            waiting = time.time()
            # The delay is 0 until WAL waits, then the last replay's age.
            crossing = max(waiting, float(psql(
                sport, "SELECT extract(epoch FROM pg_last_xact_replay_timestamp())")) + a.max_lag)
            wait_for("/replica 503", lambda: health(url) == 503)
            out_ms = (time.time() - crossing) * 1000
            writer.close()
            psql(sport, "SELECT pg_wal_replay_resume()")
            resumed = time.monotonic()
            wait_for("/replica 200 again", lambda: health(url) == 200)
            back_ms = (time.monotonic() - resumed) * 1000
            outs.append(out_ms)
            backs.append(back_ms)
            print(f"round {i + 1}: lag crossing -> 503 in {out_ms:.0f} ms; replay resumed -> 200 in {back_ms:.0f} ms",
                  flush=True)

        def fmt(xs):
            return f"min {min(xs):.0f} ms, median {statistics.median(xs):.0f} ms, max {max(xs):.0f} ms"
        print(f"\n{a.rounds} rounds, poll_interval {a.poll_interval}, max_lag {a.max_lag}s, {a.dbwarden}")
        print(f"  lag crossing -> /health/standby/replica 503: {fmt(outs)}")
        print(f"  replay resumed -> 200 again:                 {fmt(backs)}")
    finally:
        cleanup()


if __name__ == "__main__":
    main()
