"""pg_health against real PostgreSQL 15 servers: every finding comes from a state the test creates
(a session idle in a transaction, a lock wait, an invalid index left by an interrupted REINDEX
CONCURRENTLY, dead rows, bloat, a paused replica with WAL to replay, an inactive slot, a prepared
transaction), plus a role without pg_monitor and an unreachable server."""

from __future__ import annotations

import threading
import time
import typing as t
import uuid

import psycopg
import pytest

from tests.harness.collection import run_module
from tests.harness.pg_replica import pg_replicated  # noqa: F401  pylint: disable=unused-import
from tests.harness.process import wait_for


def _connect(server, db: str = "postgres", autocommit: bool = True, **login) -> psycopg.Connection:
    args = dict(host=server.host, port=server.port, user=server.user, password=server.password, dbname=db)
    args.update(login)
    return psycopg.connect(autocommit=autocommit, **args)


def _run(server, check_mode: bool = False, **params) -> dict:
    args = dict(server.login)
    args.update(params)
    return run_module("pg_health", args, check_mode=check_mode)


def _by(result: dict, check: str, obj: t.Optional[str] = None) -> t.List[dict]:
    return [f for f in result["findings"] if f["check"] == check and (obj is None or f["object"] == obj)]


@pytest.fixture(scope="module")
def health_db(postgres) -> str:
    name = "health_%s" % uuid.uuid4().hex[:6]
    postgres.psql('CREATE DATABASE "%s"' % name)
    return name


def test_sessions_idle_in_transaction_and_lock_waits(postgres, health_db):
    postgres.psql("CREATE TABLE accounts (id int PRIMARY KEY, note text); INSERT INTO accounts SELECT g, 'x' "
                  "FROM generate_series(1, 100) g", db=health_db)
    idle = _connect(postgres, health_db, autocommit=False)
    holder = _connect(postgres, health_db, autocommit=False)
    waiter = _connect(postgres, health_db)
    blocked = threading.Thread(target=lambda: waiter.execute("SELECT count(*) FROM accounts"), daemon=True)
    try:
        idle.execute("SELECT 1")  # opens a transaction and leaves it idle
        idle_pid = idle.info.backend_pid
        holder.execute("LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE")
        holder_pid = holder.info.backend_pid
        blocked.start()
        wait_for(lambda: postgres.psql("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                       "AND pid = %d" % waiter.info.backend_pid) == "1")
        time.sleep(1.5)
        checks = ["connectivity", "idle_in_transaction", "lock_waits", "long_transactions"]
        result = _run(postgres, databases=[health_db], checks=checks,
                      thresholds={"idle_in_transaction_warning": "1s", "idle_in_transaction_critical": "1h",
                                  "lock_wait_warning": "1s", "lock_wait_critical": "1h"})
        assert not result.get("failed"), result
        assert result["changed"] is False and result["status"] == "warning"
        idle_found = _by(result, "idle_in_transaction", "session/%d" % idle_pid)
        assert [f["severity"] for f in idle_found] == ["warning"]
        assert "idle in transaction for" in idle_found[0]["message"]
        wait = _by(result, "lock_waits", "session/%d" % waiter.info.backend_pid)
        assert len(wait) == 1 and wait[0]["severity"] == "warning", result["findings"]
        assert "pid %d" % holder_pid in wait[0]["message"] and "query started" in wait[0]["message"]
        assert wait[0]["details"]["blocked_by"][0]["pid"] == holder_pid
        assert wait[0]["details"]["blocked_by"][0]["query_start"]
        assert wait[0]["details"]["wait_s"] >= 1.0
        # the holder's transaction (not idle: it is not waiting for anything but its client) is old too
        assert result["summary"]["warning"] >= 2
        # the default thresholds (1 min) do not judge a 1.5 s wait
        relaxed = _run(postgres, databases=[health_db], checks=["lock_waits"])
        assert _by(relaxed, "lock_waits", "session/%d" % waiter.info.backend_pid)[0]["severity"] == "info"
    finally:
        holder.rollback()
        idle.rollback()
        if blocked.is_alive():
            blocked.join(10)
        for conn in (idle, holder, waiter):
            conn.close()


def _interrupted_reindex(postgres, db: str) -> None:
    """REINDEX CONCURRENTLY waits for the open writer, hits its lock_timeout and leaves ``*_ccnew`` behind."""
    writer = _connect(postgres, db, autocommit=False)
    try:
        writer.execute("INSERT INTO events (id, created_at) VALUES (-1, now())")
        with _connect(postgres, db) as reindexer:
            reindexer.execute("SET lock_timeout = '500ms'")
            with pytest.raises(psycopg.errors.LockNotAvailable):
                reindexer.execute("REINDEX INDEX CONCURRENTLY events_created_idx")
    finally:
        writer.rollback()
        writer.close()


def test_invalid_index_dead_rows_bloat_and_stale_statistics(postgres, health_db):
    postgres.psql("CREATE TABLE events (id int PRIMARY KEY, created_at timestamptz, payload text) "
                  "WITH (autovacuum_enabled = false); "
                  "INSERT INTO events SELECT g, now() - g * interval '1 minute', repeat('p', 200) "
                  "FROM generate_series(1, 20000) g; CREATE INDEX events_created_idx ON events (created_at); "
                  "ANALYZE events; "
                  "CREATE TABLE fresh (id int, note text) WITH (autovacuum_enabled = false); "
                  "INSERT INTO fresh SELECT g, 'n' FROM generate_series(1, 5000) g; "
                  "CREATE TABLE churn (id int, note text) WITH (autovacuum_enabled = false); "
                  "INSERT INTO churn SELECT g, repeat('c', 100) FROM generate_series(1, 20000) g; "
                  "ANALYZE churn; DELETE FROM churn WHERE id % 10 <> 0", db=health_db)
    # bloat: most rows of every page deleted, then vacuumed and analyzed (pages stay, rows are gone)
    postgres.psql("DELETE FROM events WHERE id % 10 <> 0", db=health_db)
    postgres.psql("VACUUM ANALYZE events", db=health_db)
    _interrupted_reindex(postgres, health_db)
    wait_for(lambda: postgres.psql("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'churn'",
                                   db=health_db) not in ("", "0"))

    result = _run(postgres, databases=[health_db], min_table_size=0,
                  checks=["invalid_indexes", "dead_tuples", "table_bloat", "last_vacuum", "last_analyze", "index_bloat"],
                  thresholds={"bloat_warning": "256kB", "bloat_critical": "1GB"})
    assert not result.get("failed"), result
    assert result["databases_checked"] == [health_db]
    invalid = _by(result, "invalid_indexes")
    assert [f["object"] for f in invalid] == ["index/%s/public.events_created_idx_ccnew" % health_db]
    assert invalid[0]["severity"] == "warning" and invalid[0]["details"]["leftover_of_reindex"] is True
    assert "interrupted REINDEX CONCURRENTLY" in invalid[0]["message"]

    dead = _by(result, "dead_tuples", "table/%s/public.churn" % health_db)
    assert dead and dead[0]["severity"] == "critical" and dead[0]["details"]["percent"] >= 50

    bloat = _by(result, "table_bloat", "table/%s/public.events" % health_db)
    assert bloat[0]["severity"] == "warning" and bloat[0]["details"]["estimated_bloat"] > 256 * 1024, bloat
    assert "estimated" in bloat[0]["message"]
    fresh = _by(result, "table_bloat", "table/%s/public.fresh" % health_db)
    assert fresh[0]["severity"] == "unknown" and "stale" in fresh[0]["message"]
    stale_churn = _by(result, "table_bloat", "table/%s/public.churn" % health_db)
    assert stale_churn[0]["severity"] == "unknown"  # 90 % of its rows changed since ANALYZE

    never = _by(result, "last_vacuum", "table/%s/public.fresh" % health_db)
    assert never[0]["severity"] == "warning" and "never vacuumed" in never[0]["message"]
    assert not _by(result, "last_vacuum", "table/%s/public.events" % health_db)  # vacuumed a moment ago

    # a table below min_table_size is not judged
    small = _run(postgres, databases=[health_db], checks=["dead_tuples"], min_table_size="1GB")
    assert [f["severity"] for f in _by(small, "dead_tuples")] == ["ok"]


def test_server_wide_checks_and_thresholds(postgres, health_db):
    checks = ["connectivity", "connections", "txid_wraparound", "cache_hit_ratio", "database_size"]
    result = _run(postgres, databases=[health_db], checks=checks,
                  thresholds={"connections_warning": 0.5, "connections_critical": 99,
                              "freeze_max_age_warning": 0, "freeze_max_age_critical": 99})
    assert not result.get("failed"), result
    conn = _by(result, "connectivity")[0]
    assert conn["severity"] == "ok" and conn["details"]["server_version_num"] >= 150000
    assert result["server"]["version_num"] >= 150000 and result["server"]["in_recovery"] is False
    connections = _by(result, "connections")[0]
    assert connections["severity"] == "warning" and connections["details"]["max_connections"] == 100
    assert connections["details"]["usable"] == 100 - connections["details"]["reserved"]
    wrap = _by(result, "txid_wraparound", "database/%s" % health_db)[0]
    assert wrap["severity"] == "warning" and wrap["details"]["autovacuum_freeze_max_age"] == 200000000
    assert _by(result, "txid_wraparound", "database/template0")
    size = _by(result, "database_size", "database/%s" % health_db)[0]
    assert size["severity"] == "info" and size["details"]["bytes"] > 1000000
    assert result["queries"] <= 6, result["queries"]
    assert result["duration_s"] >= 0 and "queries" in result["msg"]
    # check mode reads the same way
    checked = _run(postgres, check_mode=True, databases=[health_db], checks=["connectivity"])
    assert checked["status"] == "ok" and checked["changed"] is False


def test_role_without_pg_monitor_gets_unknown_not_a_failure(postgres, health_db):
    role = "nomon_%s" % uuid.uuid4().hex[:6]
    postgres.psql("CREATE ROLE %s LOGIN PASSWORD 'nomon-secret'" % role)
    other = _connect(postgres, health_db, autocommit=False)
    try:
        other.execute("SELECT 1")
        result = _run(postgres, login_user=role, login_password="nomon-secret", databases=[health_db],
                      checks=["connectivity", "connections", "long_transactions", "idle_in_transaction", "lock_waits"])
        assert not result.get("failed"), result
        assert result["status"] == "unknown"
        for check in ("long_transactions", "idle_in_transaction", "lock_waits"):
            found = _by(result, check)
            assert [f["severity"] for f in found] == ["unknown"], found
            assert "GRANT pg_monitor TO %s" % role in found[0]["message"]
        assert _by(result, "connections")[0]["severity"] == "ok"
        postgres.psql("GRANT pg_monitor TO %s" % role)
        granted = _run(postgres, login_user=role, login_password="nomon-secret", databases=[health_db],
                       checks=["idle_in_transaction"], thresholds={"idle_in_transaction_warning": 0})
        assert _by(granted, "idle_in_transaction", "session/%d" % other.info.backend_pid)[0]["severity"] == "warning"
    finally:
        other.rollback()
        other.close()
        postgres.psql("DROP ROLE %s" % role)


def test_unreachable_server_is_critical_and_fail_on_keeps_findings(postgres):
    from tests.harness.process import free_port
    args = dict(postgres.login, login_port=free_port())
    down = run_module("pg_health", args)
    assert not down.get("failed"), down
    assert down["status"] == "critical" and down["server"] is None
    assert _by(down, "connectivity")[0]["severity"] == "critical"
    assert "cannot connect" in _by(down, "connectivity")[0]["message"]
    failed = run_module("pg_health", dict(args, fail_on="critical"))
    assert failed["failed"] and "fail_on: critical" in failed["msg"] and failed["findings"]
    assert postgres.password not in str(failed)


def test_bad_options_fail_clearly(postgres):
    bad = _run(postgres, thresholds={"lock_wait_warning": "soon"})
    assert bad["failed"] and "thresholds.lock_wait_warning" in bad["msg"] and "not a duration" in bad["msg"]
    bad = _run(postgres, min_table_size="ten")
    assert bad["failed"] and "min_table_size" in bad["msg"]
    bad = _run(postgres, thresholds={"connections_warning": 95, "connections_critical": 90})
    assert bad["failed"] and "connections_critical" in bad["msg"]
    missing = _run(postgres, databases=["no_such_db_x"], checks=["dead_tuples"])
    assert missing["failed"] and 'database "no_such_db_x" does not exist' in missing["msg"]


def test_prepared_transactions(service_factory):
    from tests.harness.services import PostgresServer
    server = service_factory.add(PostgresServer(service_factory.workdir("pg-prepared")))
    server.psql("ALTER SYSTEM SET max_prepared_transactions = 4")
    server.stop()
    server.start()
    server.psql("CREATE TABLE t (n int)")
    with _connect(server, autocommit=False) as conn:
        conn.execute("INSERT INTO t VALUES (1)")
        conn.execute("PREPARE TRANSACTION 'forgotten-tx'")
    try:
        time.sleep(1.2)
        result = _run(server, checks=["prepared_transactions"])
        found = _by(result, "prepared_transactions", "prepared_transaction/forgotten-tx")
        assert found and found[0]["severity"] == "warning" and found[0]["details"]["database"] == "postgres"
    finally:
        server.psql("ROLLBACK PREPARED 'forgotten-tx'")
    assert [f["severity"] for f in _by(_run(server, checks=["prepared_transactions"]), "prepared_transactions")] == ["ok"]


def test_replication_lag_and_slots(pg_replicated):  # noqa: F811
    primary, replica = pg_replicated
    checks = ["connectivity", "replication_lag", "replication_slots"]
    replica.wait_caught_up()
    caught_up = _run(primary, checks=checks)
    lag = _by(caught_up, "replication_lag")
    assert len(lag) == 1 and lag[0]["severity"] == "ok", lag
    assert lag[0]["details"]["lag_bytes"] == 0 and lag[0]["details"]["lag_seconds"] == 0
    # on the standby: nothing to replay is no lag, although its last replayed transaction is old
    time.sleep(1.5)
    on_standby = _run(replica, checks=checks, thresholds={"replication_lag_warning": "1s"})
    standby_lag = _by(on_standby, "replication_lag")[0]
    assert on_standby["server"]["in_recovery"] is True
    assert standby_lag["severity"] == "ok" and standby_lag["details"]["lag_seconds"] == 0, standby_lag

    primary.psql("SELECT pg_create_physical_replication_slot('stale_standby', true)")
    replica.pause_replay()
    try:
        primary.psql("CREATE TABLE filler AS SELECT g, repeat('w', 500) AS pad FROM generate_series(1, 20000) g")
        wait_for(lambda: replica.psql("SELECT pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) "
                                      "> 1048576") == "t")
        behind = _run(primary, checks=checks, thresholds={"replication_lag_bytes_warning": "1MB",
                                                          "replication_lag_bytes_critical": "1GB"})
        lag = _by(behind, "replication_lag")[0]
        assert lag["severity"] == "warning" and lag["details"]["lag_bytes"] > 1048576, lag
        standby = _by(_run(replica, checks=checks, thresholds={"replication_lag_bytes_warning": "1MB"}),
                      "replication_lag")[0]
        assert standby["severity"] == "warning" and standby["details"]["lag_bytes"] > 1048576
        slot = _by(behind, "replication_slots", "slot/stale_standby")[0]
        assert slot["severity"] == "warning" and slot["details"]["active"] is False
        assert slot["details"]["retained_bytes"] > 1048576 and "inactive" in slot["message"]
    finally:
        replica.resume_replay()
        primary.psql("SELECT pg_drop_replication_slot('stale_standby')")
    replica.wait_caught_up()
    assert _by(_run(primary, checks=checks), "replication_lag")[0]["severity"] == "ok"
