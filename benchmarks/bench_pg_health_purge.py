"""Benchmark pg_health and pg_purge against the runbooks' ways, in one run, on a private PostgreSQL.

pg_health: a database with ``--tables`` tables (each with an index and some dead rows), checked by
``pg_health`` (one process) and by ``check_postgres`` running the actions both have, one process per
action (Debian's ``check-postgres``, installed here with apt-get when missing). Figures: wall time and
statements the server received (counted from its log with ``log_statement = all``), and each tool's
verdict per check side by side.

pg_purge: ``audit_logs`` with ``--rows`` rows of which ``--expired`` are older than 90 days, while
``pgbench`` (select-only and TPC-B-like clients against the same database) runs; the runbook's single
``DELETE`` against ``pg_purge`` (default options). Figures: pgbench TPS and p99 latency during each (and
without any purge as the baseline), total time, and table and index size afterwards.

Targets: pg_health at least 5x faster than check_postgres; pgbench p99 during pg_purge at most 1.5x the
baseline; pg_purge's total time at most 2x the single DELETE's.
Usage: .venv/bin/python -m benchmarks.bench_pg_health_purge [--tables 200] [--scale 1] [--rows N --expired N]
``--scale`` is the share of the issue's 5 M rows / 2 M expired (the default, as ``make bench`` runs it);
``--scale 0.05`` is a smoke run of a few minutes.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import math
import signal
import subprocess
import sys
import tempfile
import threading
import time
import typing as t
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.harness.collection import ansible_env, ensure_collection_path  # noqa: E402
from tests.harness.services import PostgresServer  # noqa: E402

# check_postgres actions and the pg_health check judging the same thing (thresholds: check_postgres's
# defaults; for actions without a default, pg_health's). check_postgres 2.25 (Debian's package) has no
# lock-wait action, so lock_waits has no baseline here.
ACTIONS = {
    "connection": ("connectivity", []),
    "backends": ("connections", []),
    "txn_wraparound": ("txid_wraparound", []),
    "autovac_freeze": ("txid_wraparound", []),
    "txn_time": ("long_transactions", ["--warning=10m", "--critical=1h"]),
    "txn_idle": ("idle_in_transaction", ["--warning=5m", "--critical=30m"]),
    "last_vacuum": ("last_vacuum", []),
    "last_analyze": ("last_analyze", []),
    "bloat": ("table_bloat", []),
    "hitratio": ("cache_hit_ratio", ["--warning=90%", "--critical=80%"]),
    "database_size": ("database_size", ["--warning=1TB", "--critical=2TB"]),
    "replication_slots": ("replication_slots", ["--warning=1GB", "--critical=10GB"]),
    "prepared_txns": ("prepared_transactions", []),
}


def check_postgres() -> str:
    found = shutil.which("check_postgres.pl") or shutil.which("check_postgres")
    if not found:
        print("installing Debian's check-postgres for the baseline", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "check-postgres"], check=True, capture_output=True)
        found = shutil.which("check_postgres.pl") or shutil.which("check_postgres")
    if not found:
        raise SystemExit("check_postgres not found after installing check-postgres")
    return found


class StatementLog:
    """Counts the statements the server logged (``log_statement = all``) between two marks."""

    def __init__(self, pg: PostgresServer) -> None:
        self.path = pg.workdir / "postgres.log"
        pg.psql("ALTER SYSTEM SET log_statement = 'all'")
        pg.psql("SELECT pg_reload_conf()")
        time.sleep(0.5)

    def mark(self) -> int:
        return self.path.stat().st_size

    def count_since(self, offset: int) -> int:
        with open(self.path, "rb") as handle:
            handle.seek(offset)
            return sum(1 for line in handle if b"LOG:  statement:" in line)


def run_module(name: str, args: dict, work: Path) -> t.Tuple[float, dict]:
    path = work / ("%s-args.json" % name)
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": dict(args, _ansible_tmpdir=str(work))}))
    os.chmod(path, 0o600)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "ansible_collections.runbook.ops.plugins.modules.%s" % name, str(path)],
                          capture_output=True, text=True, env=ansible_env(), check=False)
    wall = time.monotonic() - started
    result = json.loads(proc.stdout)
    if result.get("failed"):
        raise SystemExit("%s failed: %s" % (name, result.get("msg")))
    return wall, result


def seed_tables(pg: PostgresServer, count: int) -> None:
    pg.psql("CREATE DATABASE bench")
    pg.psql("DO $$ BEGIN FOR i IN 1..%d LOOP "
            "EXECUTE format('CREATE TABLE t%%s (id int PRIMARY KEY, v text, at timestamptz DEFAULT now())', i); "
            "EXECUTE format('INSERT INTO t%%s (id, v) SELECT g, md5(g::text) FROM generate_series(1, 500) g', i); "
            "EXECUTE format('CREATE INDEX ON t%%s (at)', i); "
            "EXECUTE format('DELETE FROM t%%s WHERE id %%%% 7 = 0', i); END LOOP; END $$" % count, db="bench")
    pg.psql("VACUUM ANALYZE", db="bench")


def bench_health(pg: PostgresServer, tables: int, work: Path) -> t.Dict[str, t.Any]:
    seed_tables(pg, tables)
    log = StatementLog(pg)
    login = dict(pg.login)
    offset = log.mark()
    ours_s, result = run_module("pg_health", dict(login, db="bench", databases=["bench"], min_table_size=0), work)
    ours_statements = log.count_since(offset)
    ours = {}
    for check, _extra in ACTIONS.values():
        ours[check] = max((f["severity"] for f in result["findings"] if f["check"] == check),
                          key=["ok", "info", "warning", "unknown", "critical"].index, default="-")
    tool = check_postgres()
    env = dict(pg.env)
    theirs = {}
    offset = log.mark()
    started = time.monotonic()
    for action, (_check, extra) in ACTIONS.items():
        proc = subprocess.run([tool, "--action=%s" % action, "-H", pg.host, "-p", str(pg.port), "-u", pg.user,
                               "--db=bench", "--output=nagios"] + extra, env=env, capture_output=True, text=True,
                              check=False)
        theirs[action] = (proc.stdout.split(":", 1)[0].strip().split(" ")[-1] or "?") if proc.stdout else proc.stderr[:80]
    theirs_s = time.monotonic() - started
    theirs_statements = log.count_since(offset)
    return {"ours_s": ours_s, "ours_statements": ours_statements, "ours_queries": result["queries"],
            "theirs_s": theirs_s, "theirs_statements": theirs_statements, "ours": ours, "theirs": theirs}


AUDIT_SQL = """
DROP TABLE IF EXISTS audit_logs;
CREATE TABLE audit_logs (id bigserial PRIMARY KEY, tenant_id int NOT NULL, created_at timestamptz NOT NULL, payload text);
INSERT INTO audit_logs (tenant_id, created_at, payload)
SELECT g % 50, CASE WHEN g <= EXPIRED THEN now() - interval '91 days' - g * interval '1 second'
                    ELSE now() - (g - EXPIRED) * interval '1 second' END, md5(g::text)
  FROM generate_series(1, ROWS) g;
CREATE INDEX audit_logs_created_idx ON audit_logs (created_at);
"""


class PgBench:
    """pgbench in the background, as back-to-back runs of a fixed ``-T`` that each exit normally (a pgbench
    stopped by a signal loses the tail of its per-transaction log); TPS and p99 latency of the transactions
    that ended inside a measured window, read from the complete logs."""

    def __init__(self, pg: PostgresServer, work: Path, name: str, clients: int = 4, run_s: int = 5) -> None:
        self.dir = work / ("pgbench-" + name)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.argv = [str(pg.bin_dir / "pgbench"), "-n", "-c", str(clients), "-j", "2", "-T", str(run_s), "-l",
                     "-b", "select-only@4", "-b", "tpcb-like@1", "bench"]
        self.env = pg.env
        self.failures: t.List[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        time.sleep(2)  # connections made and caches warm before a window opens

    def _loop(self) -> None:
        run = 0
        while not self._stop.is_set():
            run += 1
            proc = subprocess.run(self.argv + ["--log-prefix=%s/run%03d" % (self.dir, run)], env=self.env,
                                  cwd=str(self.dir), capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                self.failures.append(proc.stderr.strip()[-300:])

    def stop(self, started: float, ended: float) -> t.Tuple[float, float, int]:
        """Waits for the running pgbench to finish, then (TPS, p99 ms, transactions) within [started, ended]."""
        self._stop.set()
        self._thread.join()
        if self.failures:
            raise SystemExit("pgbench failed: %s" % self.failures[0])
        latencies = []
        for path in glob.glob(str(self.dir / "run*")):
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    # client_id transaction_no latency_us script_no end_epoch_s end_us
                    fields = line.split()
                    if len(fields) >= 6 and started <= int(fields[4]) + int(fields[5]) / 1e6 <= ended:
                        latencies.append(int(fields[2]) / 1000.0)
        latencies.sort()
        p99 = latencies[max(0, math.ceil(len(latencies) * 0.99) - 1)] if latencies else float("nan")
        return len(latencies) / max(ended - started, 0.001), p99, len(latencies)


def sizes(pg: PostgresServer) -> t.Tuple[int, int]:
    row = pg.psql("SELECT pg_table_size('audit_logs') || ' ' || pg_indexes_size('audit_logs')", db="bench")
    table, index = row.split()
    return int(table), int(index)


def bench_purge(pg: PostgresServer, rows: int, expired: int, work: Path, baseline_s: int) -> t.Dict[str, t.Any]:
    """(TPS, p99 ms, transactions, total s, table bytes, index bytes) without a purge, during the single
    DELETE and during pg_purge (default options), each on a freshly loaded ``audit_logs``."""
    print("load average (1, 5, 15 min) before the purge benchmark: %.2f %.2f %.2f" % os.getloadavg(), flush=True)
    if not pg.psql("SELECT 1 FROM pg_database WHERE datname = 'bench'"):
        pg.psql("CREATE DATABASE bench")
    subprocess.run([str(pg.bin_dir / "pgbench"), "-i", "-q", "-s", "10", "bench"], env=pg.env, check=True,
                   capture_output=True)
    pg.psql("ALTER SYSTEM SET log_statement = 'none'")
    pg.psql("SELECT pg_reload_conf()")
    figures: t.Dict[str, t.Any] = {}
    bench = PgBench(pg, work, "baseline")
    started = time.time()
    time.sleep(baseline_s)
    figures["no purge (baseline)"] = bench.stop(started, time.time()) + (float(baseline_s), None, None)
    for name in ("single DELETE", "pg_purge"):
        pg.psql(AUDIT_SQL.replace("EXPIRED", str(expired)).replace("ROWS", str(rows)), db="bench")
        pg.psql("VACUUM ANALYZE audit_logs", db="bench")
        pg.psql("CHECKPOINT")
        bench = PgBench(pg, work, name.replace(" ", "-"))
        started = time.time()
        if name == "single DELETE":
            pg.psql("DELETE FROM audit_logs WHERE created_at < now() - interval '90 days'", db="bench")
        else:
            _wall, result = run_module("pg_purge", dict(pg.login, db="bench", table="audit_logs", column="created_at",
                                                        older_than="90d", max_rows=rows), work)
            if result["deleted"] != expired:
                raise SystemExit("pg_purge deleted %d rows, not %d: %s" % (result["deleted"], expired, result["msg"]))
            print("pg_purge: %s" % result["msg"], flush=True)
        ended = time.time()
        tps, p99, count = bench.stop(started, ended)
        table, index = sizes(pg)
        figures[name] = (tps, p99, count, ended - started, table, index)
    return figures


def _stop(signum: int, _frame: t.Any) -> None:
    raise SystemExit("stopped by signal %d" % signum)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--tables", type=int, default=200)
    parser.add_argument("--scale", type=float, default=float(os.environ.get("BENCH_PG_PURGE_SCALE", "1")),
                        help="share of the issue's 5 M rows / 2 M expired for the purge (0.05 for a smoke run); "
                             "default $BENCH_PG_PURGE_SCALE or 1")
    parser.add_argument("--rows", type=int, help="rows of audit_logs (overrides --scale)")
    parser.add_argument("--expired", type=int, help="rows older than 90 days (overrides --scale)")
    parser.add_argument("--baseline-seconds", type=int, default=20, help="pgbench window without a purge")
    parser.add_argument("--only", choices=("health", "purge"), help="run one of the two benchmarks")
    opts = parser.parse_args()
    rows = opts.rows if opts.rows is not None else int(5000000 * opts.scale)
    expired = opts.expired if opts.expired is not None else int(2000000 * opts.scale)
    if not 0 < expired <= rows:
        raise SystemExit("need 0 < expired <= rows (got %d of %d)" % (expired, rows))
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stop)
    ensure_collection_path()
    root = Path(tempfile.mkdtemp(prefix="bench-pg-health-"))
    os.chmod(root, 0o755)
    work = root / "files"
    work.mkdir()
    pg = PostgresServer(root / "pg")
    try:
        pg.start()
        if opts.only != "purge":
            report_health(bench_health(pg, opts.tables, work), opts.tables)
        if opts.only != "health":
            report_purge(bench_purge(pg, rows, expired, work, opts.baseline_seconds), rows, expired)
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


def report_health(health: t.Dict[str, t.Any], tables: int) -> None:
    print("\npg_health on %d tables: %.2f s, %d statements (%d queries by its own count)"
          % (tables, health["ours_s"], health["ours_statements"], health["ours_queries"]))
    print("check_postgres, %d actions (one process each): %.2f s, %d statements" % (
        len(ACTIONS), health["theirs_s"], health["theirs_statements"]))
    print("speed-up: %.1fx (target >= 5x)" % (health["theirs_s"] / health["ours_s"]))
    print("\n%-18s %-22s %-10s %s" % ("check_postgres", "pg_health check", "theirs", "ours"))
    for action, (check, _extra) in ACTIONS.items():
        print("%-18s %-22s %-10s %s" % (action, check, health["theirs"][action], health["ours"][check]))


def report_purge(purge: t.Dict[str, t.Any], rows: int, expired: int) -> None:
    print("\npurge of %d expired rows out of %d while pgbench runs (4 clients):" % (expired, rows))
    print("%-22s %9s %11s %9s %9s %12s %12s" % ("", "TPS", "p99 ms", "txns", "total s", "table MB", "indexes MB"))
    for name, (tps, p99, count, total, table, index) in purge.items():
        table_mb = "-" if table is None else "%.0f" % (table / 2**20)
        index_mb = "-" if index is None else "%.0f" % (index / 2**20)
        print("%-22s %9.0f %11.1f %9d %9.1f %12s %12s" % (name, tps, p99, count, total, table_mb, index_mb))
    base_p99 = purge["no purge (baseline)"][1]
    print("targets: p99 during pg_purge <= 1.5x baseline: %.2fx; total <= 2x single DELETE: %.2fx" % (
        purge["pg_purge"][1] / base_p99, purge["pg_purge"][3] / purge["single DELETE"][3]))
    print("load average (1, 5, 15 min) at the end: %.2f %.2f %.2f" % os.getloadavg())


if __name__ == "__main__":
    main()
