"""The pure parts of pg_health: options and thresholds from the argument spec, the judging functions,
and the bloat estimates of _pg_stats."""

from __future__ import annotations

import datetime

import pytest

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError
from ansible_collections.runbook.ops.plugins.module_utils._pg_health import (
    Activity, Limit, PgHealthOptions, Replica, Slot, judge_cache, judge_connections, judge_indexes, judge_lock_waits,
    judge_replica, judge_slot, judge_tables, judge_transactions, judge_wraparound)
from ansible_collections.runbook.ops.plugins.module_utils._names import byte_size
from ansible_collections.runbook.ops.plugins.module_utils._pg_stats import IndexStats, TableStats
from tests.harness.tasks import InvalidParams, make_task

NOW = datetime.datetime(2026, 3, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)


def opts(**params) -> PgHealthOptions:
    return make_task("pg_health", PgHealthOptions.from_params, params).options


TH = opts().thresholds


def table(name="audit_logs", size=50 << 20, live=100000, dead=0, vacuumed=3600.0, analyzed=3600.0, modified=0,
          pages=6400, reltuples=100000.0, width=60.0, stat_columns=3, columns=3) -> TableStats:
    def when(ago):
        return None if ago is None else NOW - datetime.timedelta(seconds=ago)
    return TableStats("public", name, pages, reltuples, size, size, live, dead, modified, when(vacuumed), when(analyzed),
                      columns, stat_columns, width, False, 100, 8192)


def activity(pid, state="active", xact=None, state_age=None, wait=None, wait_age=None, blocked_by=()):
    return Activity(pid, "auth", "app", "api", state, "client backend", xact, state_age, "2026-03-01T11:00:00Z", wait,
                    wait_age, list(blocked_by), "UPDATE accounts SET x = 1")


def test_defaults_follow_check_postgres():
    assert TH["connections"] == Limit(90, 95)
    assert TH["txid_age"] == Limit(1.3e9, 1.4e9)
    assert TH["vacuum_age"] == Limit(86400, 172800) and TH["analyze_age"] == Limit(86400, 172800)
    assert TH["lock_wait"] == Limit(60, 120)
    assert TH["bloat"] == Limit(1 << 30, 5 << 30)
    assert TH["cache_hit_ratio"].lower_is_worse and TH["database_size"] == Limit(None, None)
    assert opts().min_table_size == 10 << 20 and opts().db == "postgres"


def test_threshold_parsing_and_refusals():
    th = opts(thresholds={"lock_wait_warning": "30s", "bloat_warning": 1024}).thresholds
    assert th["lock_wait"].warning == 30 and th["bloat"].warning == 1024 and th["lock_wait"].critical == 120
    with pytest.raises(RunbookError, match="thresholds.lock_wait_warning"):
        opts(thresholds={"lock_wait_warning": "later"})
    with pytest.raises(RunbookError, match="cache_hit_ratio_critical must be lower"):
        opts(thresholds={"cache_hit_ratio_warning": 80, "cache_hit_ratio_critical": 90})
    with pytest.raises(RunbookError, match="databases"):
        opts(databases=["bad\nname"])
    with pytest.raises(InvalidParams):
        opts(checks=["nonsense"])


@pytest.mark.parametrize("text, expected", [("10MB", 10 << 20), ("1GiB", 1 << 30), ("512kB", 512 << 10), (0, 0),
                                            ("2048", 2048), ("1.5GB", int(1.5 * (1 << 30)))])
def test_byte_size(text, expected):
    assert byte_size("x", text) == expected


def test_byte_size_refuses():
    for bad in ("ten", "-1", True, "5 XB"):
        with pytest.raises(RunbookError):
            byte_size("x", bad)


def test_connections_share_of_usable_slots():
    found = judge_connections(92, 100, 3, TH["connections"], "server/x")
    assert found["severity"] == "warning" and found["details"]["usable"] == 97
    assert judge_connections(96, 100, 3, TH["connections"], "server/x")["severity"] == "critical"
    assert judge_connections(10, 100, 3, TH["connections"], "server/x")["severity"] == "ok"


def test_transactions_and_idle_sessions():
    sessions = [activity(1, xact=4000, state_age=4000), activity(2, "idle in transaction", xact=2000, state_age=1900),
                activity(3, "idle")]
    found = judge_transactions(sessions, TH, "server/x")
    assert [(f["object"], f["severity"]) for f in found["long_transactions"]] == [("session/1", "critical")]
    assert [(f["object"], f["severity"]) for f in found["idle_in_transaction"]] == [("session/2", "critical")]
    calm = judge_transactions([activity(3, "idle")], TH, "server/x")
    assert [f["severity"] for f in calm["long_transactions"]] == ["ok"]


def test_lock_waits_name_the_blocker():
    sessions = [activity(10, "idle in transaction", xact=300), activity(11, wait="Lock", wait_age=90, blocked_by=[10]),
                activity(12, wait="Lock", wait_age=5, blocked_by=[10])]
    found = judge_lock_waits(sessions, TH["lock_wait"], "server/x")
    by_obj = {f["object"]: f for f in found}
    assert by_obj["session/11"]["severity"] == "warning"
    assert "pid 10 (user app, idle in transaction, query started 2026-03-01T11:00:00Z)" in by_obj["session/11"]["message"]
    assert by_obj["session/12"]["severity"] == "info"
    assert not [f for f in found if f["severity"] == "ok"]
    assert [f["severity"] for f in judge_lock_waits([activity(1)], TH["lock_wait"], "server/x")] == ["ok"]


def test_wraparound_by_share_and_absolute_age():
    found = judge_wraparound([("a", 100), ("b", 185000000), ("c", 1450000000)], 200000000, TH)
    assert [f["severity"] for f in found] == ["ok", "warning", "critical"]
    # a raised autovacuum_freeze_max_age does not hide an absolute age past 1.4 billion
    assert judge_wraparound([("d", 1410000000)], 2000000000, TH)[0]["severity"] == "critical"


def test_replica_lag_is_zero_when_everything_is_replayed():
    idle = judge_replica(Replica("standby", "10.0.0.2", "streaming", 0, None), TH)
    assert idle["severity"] == "ok" and idle["details"]["lag_seconds"] == 0
    stale_timestamp = judge_replica(Replica("standby", None, "in recovery", 0, 86400.0), TH)
    assert stale_timestamp["severity"] == "ok"
    behind = judge_replica(Replica("standby", None, "streaming", 64 << 20, 5.0), TH)
    assert behind["severity"] == "warning"
    slow = judge_replica(Replica("standby", None, "streaming", 1024, 400.0), TH)
    assert slow["severity"] == "critical"
    assert judge_replica(Replica("standby", None, "streaming", None, None), TH)["severity"] == "unknown"


def test_slots():
    assert judge_slot(Slot("s", "physical", False, "reserved", 1024), TH["slot_retained_wal"])["severity"] == "warning"
    assert judge_slot(Slot("s", "physical", True, "reserved", 1024), TH["slot_retained_wal"])["severity"] == "ok"
    assert judge_slot(Slot("s", "logical", True, "lost", None), TH["slot_retained_wal"])["severity"] == "critical"
    assert judge_slot(Slot("s", "physical", True, "extended", 20 << 30), TH["slot_retained_wal"])["severity"] == "critical"


def test_cache_ratio_needs_enough_accesses():
    assert judge_cache("a", 10, 5, TH["cache_hit_ratio"])["severity"] == "info"
    assert judge_cache("a", 99000, 1000, TH["cache_hit_ratio"])["severity"] == "ok"
    assert judge_cache("a", 85000, 15000, TH["cache_hit_ratio"])["severity"] == "warning"
    assert judge_cache("a", 50000, 50000, TH["cache_hit_ratio"])["severity"] == "critical"


def test_tables_vacuum_analyze_dead_rows_and_bloat():
    tables = [table("fine"), table("old", vacuumed=200000.0, analyzed=90000.0), table("never", vacuumed=None),
              table("dead", live=40000, dead=60000), table("tiny", size=1024, vacuumed=None),
              table("stale", modified=50000)]
    found = judge_tables("auth", tables, 10 << 20, TH, NOW.timestamp())

    def sev(check):
        return {f["object"].rsplit(".", 1)[1]: f["severity"] for f in found[check]}
    assert sev("last_vacuum") == {"old": "critical", "never": "warning"}
    assert sev("last_analyze") == {"old": "warning"}
    assert sev("dead_tuples") == {"dead": "critical"}
    assert sev("table_bloat") == {"stale": "unknown"}
    clean = judge_tables("auth", [table("fine")], 0, TH, NOW.timestamp())
    assert all(items[0]["severity"] == "ok" for items in clean.values())


def test_table_bloat_estimate():
    # 100000 rows of ~60 bytes: 24 + 64 + 4 = 92 bytes each, 88 per page: 1137 pages needed
    assert table(pages=1137).estimated_bloat == 0
    assert table(pages=1137 + 1000).estimated_bloat == 1000 * 8192
    assert table(stat_columns=2).estimated_bloat is None
    assert table(analyzed=None).estimated_bloat is None
    assert table(reltuples=-1).estimated_bloat is None


def index(name="logs_created_idx", valid=True, pages=300, reltuples=100000.0, unique=False, method="btree"):
    return IndexStats("public", name, "audit_logs", method, valid, True, pages, reltuples, pages * 8192, 1, False, 1,
                      8.0, 0, 8192, unique)


def test_indexes_invalid_and_bloat():
    found = judge_indexes("auth", [index(), index("logs_created_idx_ccnew", valid=False),
                                   index("users_email_key", valid=False, unique=True),
                                   index("bloated_idx", pages=300000)], 0, TH)
    invalid = {f["object"]: f for f in found["invalid_indexes"]}
    ccnew = invalid["index/auth/public.logs_created_idx_ccnew"]
    assert ccnew["severity"] == "warning" and ccnew["details"]["leftover_of_reindex"]
    assert invalid["index/auth/public.users_email_key"]["severity"] == "critical"
    assert [f["object"] for f in found["index_bloat"]] == ["index/auth/public.bloated_idx"]
    assert index(method="gin").estimated_bloat is None
    # 100000 entries of 8 bytes: 20 bytes each, 366 per 90 % filled page: 274 leaves, the meta page, 1 inner page
    assert index(pages=276).estimated_bloat == 0 and index(pages=300).estimated_bloat == 24 * 8192
