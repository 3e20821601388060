"""pg_health and check_postgres judging the same states of real PostgreSQL 15 servers.

Each test creates a state (a session idle in a transaction, a lock wait, a paused replica with WAL to
replay, an inactive slot, a table with many dead rows, connections near max_connections, a transaction
ID age past lowered thresholds, vacuum and analyze ages), then runs ``pg_health`` as a module process and
Debian's ``check_postgres`` (package ``check-postgres``, installed by ``scripts/bootstrap``) with the same
thresholds, and asserts the same verdict for the checks both have. Where the verdicts differ on purpose,
the test asserts the difference that docs/pg_health.md explains.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import typing as t
import uuid

import psycopg
import pytest

from tests.harness.collection import run_module
from tests.harness.pg_replica import pg_replicated  # noqa: F401  pylint: disable=unused-import
from tests.harness.process import wait_for

# check_postgres's exit codes are the Nagios plugin states.
VERDICTS = {0: "OK", 1: "WARNING", 2: "CRITICAL", 3: "UNKNOWN"}
SEVERITY_RANK = ["ok", "info", "warning", "unknown", "critical"]


def _tool() -> str:
    found = shutil.which("check_postgres.pl") or shutil.which("check_postgres")
    # scripts/bootstrap installs check-postgres; a missing tool is a broken environment, not a skip
    assert found, "check_postgres is not installed: run scripts/bootstrap (Debian package check-postgres)"
    return found


def check_postgres(server, action: str, *options: str, db: str = "postgres",
                   standby: t.Any = None) -> t.Tuple[str, str]:
    """One check_postgres action against ``server`` (and ``standby`` for hot_standby_delay): (verdict, output)."""
    servers = [server] + ([standby] if standby is not None else [])
    argv = [_tool(), "--action=%s" % action, "--host=%s" % ",".join(s.host for s in servers),
            "--port=%s" % ",".join(str(s.port) for s in servers), "--dbuser=%s" % server.user,
            "--dbname=%s" % db, "--output=nagios"] + list(options)
    env = dict(server.env, PATH="%s:%s" % (server.bin_dir, server.env.get("PATH", "/usr/bin:/bin")))
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode in VERDICTS and output.startswith("POSTGRES_"), (argv, proc.returncode, output)
    return VERDICTS[proc.returncode], output


def pg_health(server, checks: t.Sequence[str], **params: t.Any) -> dict:
    args = dict(server.login, checks=list(checks))
    args.update(params)
    result = run_module("pg_health", args)
    assert not result.get("failed"), result
    return result


def verdict(result: dict, check: str, obj: t.Optional[str] = None) -> str:
    """pg_health's worst severity for ``check`` (on ``obj``) in check_postgres's words (info is OK).

    An object over no threshold has no finding of its own: then the check's one ``ok`` finding stands."""
    of_check = [f for f in result["findings"] if f["check"] == check]
    found = [f["severity"] for f in of_check if obj is None or f["object"] == obj]
    if not found:
        found = [f["severity"] for f in of_check if f["severity"] == "ok"]
    assert found, (check, obj, result["findings"])
    worst = max(found, key=SEVERITY_RANK.index)
    return "OK" if worst == "info" else worst.upper()


def _connect(server, db: str = "postgres", autocommit: bool = True) -> psycopg.Connection:
    return psycopg.connect(host=server.host, port=server.port, user=server.user, password=server.password,
                           dbname=db, autocommit=autocommit)


@pytest.fixture(scope="module")
def compared_db(postgres) -> str:
    name = "cmp_%s" % uuid.uuid4().hex[:6]
    postgres.psql('CREATE DATABASE "%s"' % name)
    return name


def test_the_tool_lacks_what_pg_health_adds():
    """Checks without a check_postgres action (documented): lock wait time, invalid indexes, dead rows."""
    proc = subprocess.run([_tool(), "--help"], capture_output=True, text=True, check=False)
    actions = {line.split()[0] for line in proc.stdout.splitlines() if line.startswith(" ") and " - " in line}
    assert {"txn_idle", "locks", "backends", "txn_wraparound", "last_vacuum", "last_analyze", "bloat",
            "hot_standby_delay", "replication_slots"} <= actions, actions
    assert not {a for a in actions if "lockwait" in a or "invalid" in a or "dead" in a}, actions


def test_idle_in_transaction_same_verdicts(postgres, compared_db):
    idle = _connect(postgres, compared_db, autocommit=False)
    try:
        idle.execute("SELECT 1")  # opens a transaction and leaves it idle
        obj = "session/%d" % idle.info.backend_pid
        time.sleep(1.5)
        ours = pg_health(postgres, ["idle_in_transaction"], thresholds={
            "idle_in_transaction_warning": "1s", "idle_in_transaction_critical": "1h"})
        theirs, output = check_postgres(postgres, "txn_idle", "--warning=1s", "--critical=1h")
        assert verdict(ours, "idle_in_transaction", obj) == theirs == "WARNING", output
        time.sleep(1.0)
        ours = pg_health(postgres, ["idle_in_transaction"], thresholds={
            "idle_in_transaction_warning": "1s", "idle_in_transaction_critical": "2s"})
        theirs, output = check_postgres(postgres, "txn_idle", "--warning=1s", "--critical=2s")
        assert verdict(ours, "idle_in_transaction", obj) == theirs == "CRITICAL", output
    finally:
        idle.rollback()
        idle.close()
    ours = pg_health(postgres, ["idle_in_transaction"], thresholds={"idle_in_transaction_warning": "1s"})
    theirs, output = check_postgres(postgres, "txn_idle", "--warning=1s", "--critical=1h")
    assert verdict(ours, "idle_in_transaction") == theirs == "OK", output


def test_lock_wait_same_verdict_and_count_versus_time(postgres, compared_db):
    postgres.psql("CREATE TABLE locked (id int PRIMARY KEY)", db=compared_db)
    holder = _connect(postgres, compared_db, autocommit=False)
    waiter = _connect(postgres, compared_db)
    blocked = threading.Thread(target=lambda: waiter.execute("SELECT count(*) FROM locked"), daemon=True)
    try:
        holder.execute("LOCK TABLE locked IN ACCESS EXCLUSIVE MODE")
        blocked.start()
        obj = "session/%d" % waiter.info.backend_pid
        wait_for(lambda: postgres.psql("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                       "AND pid = %d" % waiter.info.backend_pid) == "1")
        time.sleep(1.5)
        ours = pg_health(postgres, ["lock_waits"], thresholds={"lock_wait_warning": "1s", "lock_wait_critical": "1h"})
        theirs, output = check_postgres(postgres, "locks", "--warning=waiting=1", "--critical=waiting=5")
        assert verdict(ours, "lock_waits", obj) == theirs == "WARNING", output
        # check_postgres counts waiting locks, pg_health times the wait: a wait shorter than lock_wait is
        # only "info" for pg_health, while one waiting lock is already check_postgres's warning
        ours = pg_health(postgres, ["lock_waits"], thresholds={"lock_wait_warning": "1h", "lock_wait_critical": "2h"})
        assert verdict(ours, "lock_waits", obj) == "OK"
        assert [f["severity"] for f in ours["findings"] if f["object"] == obj] == ["info"]
    finally:
        holder.rollback()
        blocked.join(10)
        holder.close()
        waiter.close()
    theirs, output = check_postgres(postgres, "locks", "--warning=waiting=1", "--critical=waiting=5")
    ours = pg_health(postgres, ["lock_waits"], thresholds={"lock_wait_warning": "1s"})
    assert verdict(ours, "lock_waits") == theirs == "OK", output


def test_connections_near_max_connections(service_factory):
    """max_connections 100 with 3 reserved slots: check_postgres divides by 100, pg_health by 97."""
    from tests.harness.services import PostgresServer
    server = service_factory.add(PostgresServer(service_factory.workdir("pg-connections")))
    assert server.psql("SELECT current_setting('max_connections') || '/' || "
                       "current_setting('superuser_reserved_connections')") == "100/3"
    held: t.List[psycopg.Connection] = []
    try:
        def hold(total: int) -> None:  # total clients while a check runs: ``total - 1`` held and the checker
            while len(held) < total - 1:
                held.append(_connect(server))
            while len(held) > total - 1:
                held.pop().close()

        hold(91)  # 91 % of 100 and 93.8 % of 97
        theirs, output = check_postgres(server, "backends")
        assert verdict(pg_health(server, ["connections"]), "connections") == theirs == "WARNING", output
        hold(95)  # 95 % of 100 and 97.9 % of 97
        theirs, output = check_postgres(server, "backends")
        assert verdict(pg_health(server, ["connections"]), "connections") == theirs == "CRITICAL", output
        # the documented difference: 89 clients fill 89 % of max_connections but 91.8 % of the slots
        # ordinary roles may use
        hold(89)
        theirs, output = check_postgres(server, "backends")
        ours = pg_health(server, ["connections"])
        assert (verdict(ours, "connections"), theirs) == ("WARNING", "OK"), output
        assert ours["findings"][0]["details"]["usable"] == 97
    finally:
        for conn in held:
            conn.close()


def test_transaction_id_age_with_lowered_thresholds(postgres):
    postgres.psql("DO $$ BEGIN FOR i IN 1..300 LOOP PERFORM txid_current(); COMMIT; END LOOP; END $$")
    oldest = int(postgres.psql("SELECT max(age(datfrozenxid)) FROM pg_database WHERE datallowconn"))
    assert oldest > 300
    for warning, critical, expected in ((100, 1900000000, "WARNING"), (50, 100, "CRITICAL"),
                                        (1800000000, 1900000000, "OK")):
        ours = pg_health(postgres, ["txid_wraparound"], thresholds={
            "txid_age_warning": warning, "txid_age_critical": critical})
        theirs, output = check_postgres(postgres, "txn_wraparound", "--warning=%d" % warning,
                                        "--critical=%d" % critical)
        assert verdict(ours, "txid_wraparound") == theirs == expected, output
    # the share of autovacuum_freeze_max_age (check_postgres's autovac_freeze)
    ours = pg_health(postgres, ["txid_wraparound"],
                     thresholds={"freeze_max_age_warning": 0, "freeze_max_age_critical": 99})
    theirs, output = check_postgres(postgres, "autovac_freeze", "--warning=0%", "--critical=99%")
    assert verdict(ours, "txid_wraparound") == theirs == "WARNING", output


def test_last_vacuum_and_analyze_age(postgres):
    compared_db = "vac_%s" % uuid.uuid4().hex[:6]  # its own database: only the tables made here
    postgres.psql('CREATE DATABASE "%s"' % compared_db)
    postgres.psql("CREATE TABLE vacuumed (id int, note text); INSERT INTO vacuumed SELECT g, 'v' "
                  "FROM generate_series(1, 1000) g", db=compared_db)
    postgres.psql("VACUUM ANALYZE vacuumed", db=compared_db)
    obj = "table/%s/public.vacuumed" % compared_db
    wait_for(lambda: postgres.psql("SELECT last_vacuum IS NOT NULL AND last_analyze IS NOT NULL FROM "
                                   "pg_stat_user_tables WHERE relname = 'vacuumed'", db=compared_db) == "t")
    time.sleep(2.5)
    for action, check, measure in (("last_vacuum", "last_vacuum", "vacuum_age"),
                                   ("last_analyze", "last_analyze", "analyze_age")):
        for warning, critical, expected in (("1s", "1h", "WARNING"), ("1s", "2s", "CRITICAL"),
                                            ("1h", "2h", "OK")):
            ours = pg_health(postgres, [check], databases=[compared_db], min_table_size=0, thresholds={
                "%s_warning" % measure: warning, "%s_critical" % measure: critical})
            theirs, output = check_postgres(postgres, action, "--warning=%s" % warning, "--critical=%s" % critical,
                                            "--include=vacuumed", db=compared_db)
            assert verdict(ours, check, obj) == theirs == expected, (action, warning, critical, output)
    # never vacuumed: pg_health warns about the table; check_postgres has no time to compare, so it
    # ignores the table beside vacuumed ones and is UNKNOWN when no matching table was ever vacuumed
    postgres.psql("CREATE TABLE never_vacuumed (id int) WITH (autovacuum_enabled = false); "
                  "INSERT INTO never_vacuumed VALUES (1)", db=compared_db)
    ours = pg_health(postgres, ["last_vacuum"], databases=[compared_db], min_table_size=0)
    assert verdict(ours, "last_vacuum", "table/%s/public.never_vacuumed" % compared_db) == "WARNING"
    assert verdict(ours, "last_vacuum") == "WARNING"
    theirs, output = check_postgres(postgres, "last_vacuum", "--include=vacuumed,never_vacuumed", db=compared_db)
    assert theirs == "OK" and "public.vacuumed" in output, output
    theirs, output = check_postgres(postgres, "last_vacuum", "--include=never_vacuumed", db=compared_db)
    assert theirs == "UNKNOWN" and "No matching tables have ever been vacuumed" in output, output


def test_dead_rows_and_bloat(postgres, compared_db):
    """Many dead rows: no check_postgres action counts them; both estimate bloat once statistics are fresh."""
    postgres.psql("CREATE TABLE churned (id int PRIMARY KEY, payload text) WITH (autovacuum_enabled = false); "
                  "INSERT INTO churned SELECT g, repeat('p', 200) FROM generate_series(1, 20000) g; "
                  "ANALYZE churned; DELETE FROM churned WHERE id % 10 <> 0", db=compared_db)
    obj = "table/%s/public.churned" % compared_db
    wait_for(lambda: postgres.psql("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'churned'",
                                   db=compared_db) not in ("", "0"))
    levels = {"bloat_warning": "256kB", "bloat_critical": "1GB"}
    ours = pg_health(postgres, ["dead_tuples", "table_bloat"], databases=[compared_db], min_table_size=0,
                     thresholds=levels)
    assert verdict(ours, "dead_tuples", obj) == "CRITICAL"
    theirs, output = check_postgres(postgres, "bloat", "--warning=256 kB", "--critical=1 GB", "--include=churned",
                                    db=compared_db)
    # statistics predate the DELETE: pg_health says it cannot estimate, check_postgres sees no bloat
    assert (verdict(ours, "table_bloat", obj), theirs) == ("UNKNOWN", "OK"), output
    postgres.psql("VACUUM ANALYZE churned", db=compared_db)  # rows gone, pages stay: real bloat
    ours = pg_health(postgres, ["dead_tuples", "table_bloat"], databases=[compared_db], min_table_size=0,
                     thresholds=levels)
    theirs, output = check_postgres(postgres, "bloat", "--warning=256 kB", "--critical=1 GB", "--include=churned",
                                    db=compared_db)
    assert verdict(ours, "table_bloat", obj) == theirs == "WARNING", output
    assert verdict(ours, "dead_tuples", obj) == "OK"


def test_paused_replica_and_inactive_slot(pg_replicated):  # noqa: F811
    primary, replica = pg_replicated
    primary.psql("CREATE TABLE cmp_marker (id int)")  # a replayed transaction whose timestamp then ages
    replica.wait_caught_up()
    time.sleep(2.5)
    # caught up on an idle primary: zero bytes behind. check_postgres's time lag is the age of the last
    # replayed transaction and grows anyway; pg_health reports zero seconds when nothing is left to replay
    ours = pg_health(primary, ["replication_lag"], thresholds={"replication_lag_warning": "1s",
                                                               "replication_lag_critical": "1h"})
    theirs, output = check_postgres(primary, "hot_standby_delay", "--warning=1s", "--critical=1h", standby=replica)
    assert (verdict(ours, "replication_lag"), theirs) == ("OK", "WARNING"), output
    theirs, output = check_postgres(primary, "hot_standby_delay", "--warning=1048576", "--critical=1073741824", standby=replica)
    assert verdict(ours, "replication_lag") == theirs == "OK", output

    primary.psql("CHECKPOINT")  # the new slot reserves WAL from the last checkpoint's redo position
    primary.psql("SELECT pg_create_physical_replication_slot('cmp_stale', true)")
    replica.pause_replay()
    try:
        # a fresh inactive slot retains little WAL: an inactive slot is pg_health's warning, bytes only for check_postgres
        ours = pg_health(primary, ["replication_slots"],
                         thresholds={"slot_retained_wal_warning": "64MB", "slot_retained_wal_critical": "1GB"})
        theirs, output = check_postgres(primary, "replication_slots", "--warning=64MB", "--critical=1GB")
        assert (verdict(ours, "replication_slots", "slot/cmp_stale"), theirs) == ("WARNING", "OK"), output

        primary.psql("CREATE TABLE cmp_filler AS SELECT g, repeat('w', 500) AS pad FROM generate_series(1, 20000) g")
        wait_for(lambda: replica.psql("SELECT pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) "
                                      "> 1048576") == "t")
        ours = pg_health(primary, ["replication_lag", "replication_slots"], thresholds=dict(
            slot_retained_wal_warning="1MB", slot_retained_wal_critical="1GB",
            replication_lag_bytes_warning="1MB", replication_lag_bytes_critical="1GB"))
        theirs, output = check_postgres(primary, "hot_standby_delay", "--warning=1048576", "--critical=1073741824", standby=replica)
        assert verdict(ours, "replication_lag") == theirs == "WARNING", output
        theirs, output = check_postgres(primary, "replication_slots", "--warning=1MB", "--critical=1GB")
        assert verdict(ours, "replication_slots", "slot/cmp_stale") == theirs == "WARNING", output
        ours = pg_health(primary, ["replication_lag"], thresholds={"replication_lag_bytes_warning": "64kB",
                                                                   "replication_lag_bytes_critical": "512kB"})
        theirs, output = check_postgres(primary, "hot_standby_delay", "--warning=65536", "--critical=524288", standby=replica)
        assert verdict(ours, "replication_lag") == theirs == "CRITICAL", output
    finally:
        replica.resume_replay()
        primary.psql("SELECT pg_drop_replication_slot('cmp_stale')")
    replica.wait_caught_up()
