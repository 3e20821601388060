"""pg_purge against real PostgreSQL 15: batches, check mode, the max_rows cap, the index requirement, bound
parameters, a run killed mid-way and resumed, a lock held by another session, max_duration, the
replication-lag limit with a paused replica, and whole partitions dropped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import psycopg

from tests.harness.collection import ansible_env, run_module
from tests.harness.pg_replica import pg_replicated  # noqa: F401  pylint: disable=unused-import

OLD = 12000
NEW = 8000


def _db(server) -> str:
    name = "purge_%s" % uuid.uuid4().hex[:6]
    server.psql('CREATE DATABASE "%s"' % name)
    return name


def _audit_logs(server, db: str, old: int = OLD, new: int = NEW, index: bool = True) -> None:
    server.psql("CREATE TABLE audit_logs (id bigserial PRIMARY KEY, tenant_id int NOT NULL, created_at timestamptz NOT NULL,"
                " payload text); "
                "INSERT INTO audit_logs (tenant_id, created_at, payload) SELECT g %% 4, now() - interval '91 days' - g * "
                "interval '1 second', 'old' FROM generate_series(1, %d) g; "
                "INSERT INTO audit_logs (tenant_id, created_at, payload) SELECT g %% 4, now() - g * interval '1 second', "
                "'new' FROM generate_series(1, %d) g;" % (old, new), db=db)
    if index:
        server.psql("CREATE INDEX audit_logs_created_idx ON audit_logs (created_at); "
                    "CREATE INDEX audit_logs_tenant_idx ON audit_logs (tenant_id, id); ANALYZE audit_logs", db=db)


def _count(server, db: str, where: str = "true", table: str = "audit_logs") -> int:
    return int(server.psql("SELECT count(*) FROM %s WHERE %s" % (table, where), db=db))


def _args(server, db: str, **extra) -> dict:
    args = dict(server.login, db=db, table="audit_logs", column="created_at", older_than="90d")
    args.update(extra)
    return args


def test_purge_in_batches_check_mode_and_idempotence(postgres):
    db = _db(postgres)
    _audit_logs(postgres, db)
    planned = run_module("pg_purge", _args(postgres, db, batch_size=1000), check_mode=True)
    assert not planned.get("failed"), planned
    assert planned["changed"] is True and planned["matched"] == OLD and planned["deleted"] == 0
    assert "would delete 12000 row(s) of public.audit_logs in about 12 batch(es)" in planned["msg"]
    assert _count(postgres, db) == OLD + NEW

    done = run_module("pg_purge", _args(postgres, db, batch_size=1000))
    assert not done.get("failed"), done
    assert done["changed"] and done["deleted"] == OLD and done["batches"] == 12 and done["stopped_because"] is None
    assert done["remaining"] == 0 and done["partitions_dropped"] == [] and done["duration_s"] > 0
    assert _count(postgres, db) == NEW
    assert _count(postgres, db, "created_at < now() - interval '90 days'") == 0

    again = run_module("pg_purge", _args(postgres, db, batch_size=1000))
    assert again["changed"] is False and again["deleted"] == 0 and "nothing to purge" in again["msg"]


def test_max_rows_refuses_and_deletes_nothing(postgres):
    db = _db(postgres)
    _audit_logs(postgres, db)
    refused = run_module("pg_purge", _args(postgres, db, max_rows=5000))
    assert refused["failed"] and "12000 rows of public.audit_logs match, more than max_rows=5000" in refused["msg"]
    assert refused["deleted"] == 0 and refused["matched"] == OLD
    assert _count(postgres, db) == OLD + NEW


def test_predicate_without_index_is_refused_unless_allowed(postgres):
    db = _db(postgres)
    _audit_logs(postgres, db, index=False)
    refused = run_module("pg_purge", _args(postgres, db))
    assert refused["failed"] and "no index serves the purge predicate on public.audit_logs" in refused["msg"]
    assert _count(postgres, db) == OLD + NEW
    allowed = run_module("pg_purge", _args(postgres, db, allow_seq_scan=True, batch_size=5000))
    assert not allowed.get("failed"), allowed
    assert allowed["deleted"] == OLD and allowed["batches"] == 3


def test_where_with_bound_parameters(postgres):
    db = _db(postgres)
    _audit_logs(postgres, db)
    args = dict(postgres.login, db=db, table="audit_logs", where="tenant_id = %(tenant)s AND payload = %(kind)s",
                parameters={"tenant": 1, "kind": "old"}, batch_size=700)
    expected = _count(postgres, db, "tenant_id = 1 AND payload = 'old'")
    result = run_module("pg_purge", args)
    assert not result.get("failed"), result
    assert result["deleted"] == expected == OLD // 4
    assert _count(postgres, db, "tenant_id = 1 AND payload = 'old'") == 0 and _count(postgres, db) == OLD + NEW - expected
    # a where on an unindexed column, walked by the primary key, would read the whole table per batch
    refused = run_module("pg_purge", dict(args, where="payload = %(kind)s", parameters={"kind": "new"}))
    assert refused["failed"] and "no index serves" in refused["msg"]
    bad = run_module("pg_purge", dict(args, parameters={"runbook_cut": 1}))
    assert bad["failed"] and "reserved" in bad["msg"]


def _start_module(name: str, args: dict) -> subprocess.Popen:
    handle = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)  # pylint: disable=consider-using-with
    json.dump({"ANSIBLE_MODULE_ARGS": args}, handle)
    handle.close()
    proc = subprocess.Popen(  # pylint: disable=consider-using-with
        [sys.executable, "-m", "ansible_collections.runbook.ops.plugins.modules.%s" % name, handle.name],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ansible_env())
    proc.args_file = handle.name  # type: ignore[attr-defined]
    return proc


def _killed_after(postgres, db: str, args: dict, rows: int, total: int = OLD + NEW) -> int:
    """Start a purge of a table of ``total`` rows, SIGKILL it once about ``rows`` are gone; the rows it had deleted."""
    proc = _start_module("pg_purge", args)
    try:
        deadline = time.monotonic() + 30
        while _count(postgres, db) > total - rows and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        os.unlink(proc.args_file)  # type: ignore[attr-defined]
    return total - _count(postgres, db)


def test_killed_mid_run_leaves_whole_batches_and_resumes(postgres):
    db = _db(postgres)
    _audit_logs(postgres, db)
    args = _args(postgres, db, batch_size=500, pause="0.1s")
    deleted_before_kill = _killed_after(postgres, db, args, 2000)
    assert 0 < deleted_before_kill < OLD
    assert deleted_before_kill % 500 == 0  # only whole batches
    resumed = run_module("pg_purge", dict(args, pause="0s"))
    assert not resumed.get("failed"), resumed
    assert resumed["matched"] == OLD - deleted_before_kill
    assert deleted_before_kill + resumed["deleted"] == OLD
    assert _count(postgres, db) == NEW


def test_lock_held_by_another_session_stops_after_lock_timeout(postgres):
    db = _db(postgres)
    _audit_logs(postgres, db)
    with psycopg.connect(host=postgres.host, port=postgres.port, user=postgres.user, password=postgres.password,
                         dbname=db) as holder:
        holder.execute("SELECT id FROM audit_logs ORDER BY created_at LIMIT 1 FOR UPDATE")
        started = time.monotonic()
        stopped = run_module("pg_purge", _args(postgres, db, lock_timeout="500ms"))
        elapsed = time.monotonic() - started
        holder.rollback()
    assert not stopped.get("failed"), stopped
    assert stopped["stopped_because"] == "lock_timeout" and stopped["deleted"] == 0
    assert "longer than lock_timeout" in json.dumps(stopped.get("warnings", [])), stopped
    assert "then stopped: lock_timeout" in stopped["msg"]
    assert elapsed < 10
    assert _count(postgres, db) == OLD + NEW


def test_max_duration_stops_between_batches(postgres):
    db = _db(postgres)
    _audit_logs(postgres, db)
    result = run_module("pg_purge", _args(postgres, db, batch_size=200, pause="0.3s", max_duration="2s"))
    assert not result.get("failed"), result
    assert result["stopped_because"] == "max_duration"
    assert 0 < result["deleted"] < OLD and result["deleted"] % 200 == 0
    assert result["remaining"] == OLD - result["deleted"]
    assert "then stopped: max_duration" in result["msg"]


def test_partitions_before_the_cut_are_dropped(postgres):
    db = _db(postgres)
    postgres.psql("""
        CREATE TABLE events (id bigint, created_at timestamptz NOT NULL, note text) PARTITION BY RANGE (created_at);
        CREATE TABLE events_2024_01 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2024-02-01');
        CREATE TABLE events_2024_02 PARTITION OF events FOR VALUES FROM ('2024-02-01') TO ('2024-03-01');
        CREATE TABLE events_2024_03 PARTITION OF events FOR VALUES FROM ('2024-03-01') TO ('2024-04-01');
        CREATE TABLE events_future PARTITION OF events FOR VALUES FROM ('2024-04-01') TO (MAXVALUE);
        CREATE INDEX ON events (created_at);
        INSERT INTO events SELECT g, timestamptz '2024-01-01' + g * interval '1 hour', 'e'
          FROM generate_series(0, 24 * 120) g;
    """, db=db)
    cut_days = (time.time() - time.mktime((2024, 3, 15, 0, 0, 0, 0, 0, 0))) / 86400
    args = dict(postgres.login, db=db, table="events", column="created_at", older_than="%dd" % int(cut_days),
                batch_size=100)
    expected_rows = _count(postgres, db, "created_at < now() - interval '%d days'" % int(cut_days), table="events")
    in_middle = _count(postgres, db, "created_at < now() - interval '%d days'" % int(cut_days), table="events_2024_03")
    planned = run_module("pg_purge", args, check_mode=True)
    assert not planned.get("failed"), planned
    assert planned["partitions_dropped"] == ["public.events_2024_01", "public.events_2024_02"]
    assert planned["matched"] == expected_rows and "drop 2 partition(s)" in planned["msg"]
    done = run_module("pg_purge", args)
    assert not done.get("failed"), done
    assert done["partitions_dropped"] == ["public.events_2024_01", "public.events_2024_02"]
    assert done["deleted"] == in_middle > 0 and done["remaining"] == 0
    tables = postgres.psql("SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class WHERE relkind = 'r' AND relname LIKE 'events_2024%'",
                           db=db)
    assert tables == "events_2024_03"
    assert _count(postgres, db, "created_at < now() - interval '%d days'" % int(cut_days), table="events") == 0


def test_replication_lag_limit_stops_the_run(pg_replicated):  # noqa: F811
    primary, replica = pg_replicated
    db = _db(primary)
    _audit_logs(primary, db)
    replica.wait_caught_up()
    replica.pause_replay()
    try:
        primary.psql("CREATE TABLE filler AS SELECT g, repeat('w', 500) AS pad FROM generate_series(1, 20000) g", db=db)
        stopped = run_module("pg_purge", _args(primary, db, max_replication_lag="1MB", lag_wait="1s", batch_size=1000))
        assert not stopped.get("failed"), stopped
        assert stopped["stopped_because"] == "replication_lag" and stopped["deleted"] == 0
        assert stopped["lag_pauses"] == 1 and "replicas stayed" in json.dumps(stopped.get("warnings", []))
    finally:
        replica.resume_replay()
    replica.wait_caught_up()
    done = run_module("pg_purge", _args(primary, db, max_replication_lag="64MB", batch_size=1000))
    assert not done.get("failed"), done
    assert done["deleted"] == OLD and done["stopped_because"] is None
