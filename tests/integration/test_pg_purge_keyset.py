"""pg_purge's batch walk against real PostgreSQL 15: batches continue after the (key, primary key) position of the
previous one, so rows sharing a timestamp across a batch boundary are neither missed nor deleted twice (with a
one-column primary key, and with ``ctid`` breaking ties on a table without one); a run killed mid-way on such a
table and resumed deletes exactly the matching rows; a row changed by another session while a batch waits for it
is judged again and kept when it no longer matches; without batch_size the size follows batch_duration."""

from __future__ import annotations

import threading
import time

import psycopg

from ansible_collections.runbook.ops.plugins.module_utils._pg_purge import next_batch_size
from tests.harness.collection import run_module
from tests.integration.test_pg_purge import _args, _count, _db, _killed_after

OLD = 10000
NEW = 3000
STAMPS = 7  # distinct expired timestamps: each batch boundary falls inside a run of equal keys


def _duplicates(server, db: str, primary_key: bool = True) -> None:
    """``OLD`` expired rows on only ``STAMPS`` timestamps, stored out of key order, and ``NEW`` recent rows."""
    id_column = "id bigserial PRIMARY KEY" if primary_key else "id bigint"
    server.psql("CREATE TABLE audit_logs (%s, created_at timestamptz NOT NULL, payload text); "
                "INSERT INTO audit_logs (id, created_at, payload) SELECT g, now() - interval '91 days' - (g * 7919 %% %d) "
                "* interval '1 hour', 'old' FROM generate_series(1, %d) g; "
                "INSERT INTO audit_logs (id, created_at, payload) SELECT %d + g, now() - g * interval '1 second', 'new' "
                "FROM generate_series(1, %d) g; "
                "CREATE INDEX audit_logs_created_idx ON audit_logs (created_at); ANALYZE audit_logs"
                % (id_column, STAMPS, OLD, OLD, NEW), db=db)
    assert int(server.psql("SELECT count(DISTINCT created_at) FROM audit_logs WHERE payload = 'old'", db=db)) == STAMPS


def test_equal_timestamps_across_batch_boundaries_are_deleted_exactly_once(postgres):
    db = _db(postgres)
    _duplicates(postgres, db)
    done = run_module("pg_purge", _args(postgres, db, batch_size=333))
    assert not done.get("failed"), done
    assert done["deleted"] == OLD and done["matched"] == OLD and done["remaining"] == 0
    assert done["batches"] == -(-OLD // 333) and done["stopped_because"] is None
    assert _count(postgres, db, "payload = 'old'") == 0
    assert _count(postgres, db, "payload = 'new'") == NEW


def test_table_without_primary_key_breaks_ties_by_ctid(postgres):
    db = _db(postgres)
    _duplicates(postgres, db, primary_key=False)
    postgres.psql("INSERT INTO audit_logs SELECT * FROM audit_logs WHERE payload = 'old' AND id % 10 = 0", db=db)
    matching = OLD + OLD // 10  # whole duplicate rows too, same key and same id
    done = run_module("pg_purge", _args(postgres, db, batch_size=1000, key="created_at"))
    assert not done.get("failed"), done
    assert done["deleted"] == matching and done["batches"] == -(-matching // 1000)
    assert _count(postgres, db, "payload = 'old'") == 0 and _count(postgres, db) == NEW


def test_killed_run_on_equal_timestamps_resumes_to_exactly_the_matching_rows(postgres):
    db = _db(postgres)
    _duplicates(postgres, db)
    args = _args(postgres, db, batch_size=250, pause="0.1s")
    deleted_before_kill = _killed_after(postgres, db, args, 1500, OLD + NEW)
    assert 0 < deleted_before_kill < OLD and deleted_before_kill % 250 == 0  # whole batches only
    resumed = run_module("pg_purge", dict(args, pause="0s"))
    assert not resumed.get("failed"), resumed
    assert resumed["matched"] == OLD - deleted_before_kill
    assert deleted_before_kill + resumed["deleted"] == OLD
    assert _count(postgres, db, "payload = 'old'") == 0 and _count(postgres, db, "payload = 'new'") == NEW


def test_row_changed_while_the_batch_waits_is_judged_again(postgres):
    db = _db(postgres)
    _duplicates(postgres, db)
    first = postgres.psql("SELECT id FROM audit_logs WHERE payload = 'old' ORDER BY created_at, id LIMIT 1", db=db)
    with psycopg.connect(host=postgres.host, port=postgres.port, user=postgres.user, password=postgres.password,
                         dbname=db) as holder:
        # an uncommitted change making the first expired row recent: the purge's first batch waits for it
        holder.execute("UPDATE audit_logs SET created_at = now(), payload = 'kept' WHERE id = %s", (int(first),))
        timer = threading.Timer(3.0, holder.commit)
        started = time.monotonic()
        timer.start()
        try:
            done = run_module("pg_purge", _args(postgres, db, batch_size=1000, lock_timeout="20s"))
            elapsed = time.monotonic() - started
        finally:
            timer.join()
    assert not done.get("failed"), done
    assert elapsed >= 3.0  # it did wait for the other session's commit
    assert done["deleted"] == OLD - 1 and done["stopped_because"] is None
    assert _count(postgres, db, "payload = 'kept'") == 1 and _count(postgres, db, "payload = 'old'") == 0


def test_batch_size_adapts_to_batch_duration(postgres):
    db = _db(postgres)
    _duplicates(postgres, db)
    planned = run_module("pg_purge", _args(postgres, db, batch_duration="10s"), check_mode=True)
    assert "would delete 10000 row(s) of public.audit_logs in batches sized to take about 10s each" in planned["msg"]
    # each batch takes far less than 10 s, so the size grows 4x per batch: 1000, 4000, then the last 5000
    done = run_module("pg_purge", _args(postgres, db, batch_duration="10s"))
    assert not done.get("failed"), done
    assert done["deleted"] == OLD and done["batches"] == 3 and done["stopped_because"] is None
    assert _count(postgres, db, "payload = 'old'") == 0 and _count(postgres, db, "payload = 'new'") == NEW


def test_next_batch_size_aims_at_the_duration_within_bounds():
    assert next_batch_size(1000, 0.25, 0.5) == 2000
    assert next_batch_size(1000, 1.0, 0.5) == 500
    assert next_batch_size(1000, 0.0, 0.5) == 4000  # at most 4x up at once
    assert next_batch_size(1000, 60.0, 0.5) == 250  # at most 4x down at once
    assert next_batch_size(200, 60.0, 0.5) == 100  # never below 100 rows
    assert next_batch_size(900000, 0.001, 0.5) == 1000000
