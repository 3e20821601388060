"""The pure parts of pg_maintenance: options through the argument spec, the window, and target choice."""

from __future__ import annotations

import datetime

import pytest

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError
from ansible_collections.runbook.ops.plugins.module_utils._pg_maintenance import (
    PgMaintenanceOptions, plan, window_deadline)
from ansible_collections.runbook.ops.plugins.module_utils._pg_stats import IndexStats, TableStats
from tests.harness.tasks import InvalidParams, make_task, module_args

NOW = datetime.datetime(2026, 3, 1, 23, 0, 0, tzinfo=datetime.timezone.utc)


def opts(**params) -> PgMaintenanceOptions:
    return make_task("pg_maintenance", PgMaintenanceOptions.from_params, dict({"db": "auth"}, **params)).options


def table(name, size=50 << 20, live=1000, dead=0, modified=0, analyzed=True, pages=20, reltuples=1000.0):
    when = NOW if analyzed else None
    return TableStats("public", name, pages, reltuples, size, size, live, dead, modified, when, when, 2, 2, 40.0, False,
                      100, 8192)


def index(name, valid=True, pages=10, table_name="t"):
    return IndexStats("public", name, table_name, "btree", valid, True, pages, 1000.0, pages * 8192, 1, False, 1, 8.0, 0,
                      8192, False)


def test_defaults_and_refusals():
    o = opts()
    assert o.operations == ["analyze", "vacuum", "reindex"] and o.deadline is None
    assert o.lock_timeout == 5 and o.statement_timeout == 3600 and o.bloat == 1 << 30 and o.dead_tuples == 20
    with pytest.raises(RunbookError, match="needs a window"):
        opts(operations=["vacuum_full"], vacuum_full_tables=["t"])
    with pytest.raises(RunbookError, match="vacuum_full_tables"):
        opts(operations=["vacuum_full"], window={"max_duration": "1h"})
    with pytest.raises(InvalidParams):
        opts(operations=["vacuum_in_a_transaction"])
    with pytest.raises(RunbookError, match="lock_timeout"):
        opts(lock_timeout="0s")
    assert opts(tables=["audit.logs", "plain"]).tables == [("audit", "logs"), ("public", "plain")]


def test_no_option_can_wrap_statements_in_a_transaction():
    # the seeds' mistake (VACUUM inside BEGIN ... COMMIT) has no way in: no SQL, no transaction switch
    names = set(module_args("pg_maintenance")["argument_spec"])
    assert not {"sql", "query", "transaction", "autocommit", "single_transaction"} & names


def test_window_deadline():
    assert window_deadline(None, None, NOW) is None
    assert window_deadline(None, 3600, NOW) == NOW + datetime.timedelta(hours=1)
    assert window_deadline("2026-03-02T01:00:00Z", 7200, NOW) == datetime.datetime(2026, 3, 2, 1, 0, tzinfo=datetime.timezone.utc)
    clock = window_deadline("05:00", None, NOW)
    assert clock is not None and NOW < clock <= NOW + datetime.timedelta(days=1)
    assert clock.astimezone().strftime("%H:%M") == "05:00"
    with pytest.raises(RunbookError, match="window.not_after"):
        window_deadline("tomorrow", None, NOW)


def test_plan_chooses_by_thresholds_and_lists():
    tables = [table("dead", live=500, dead=500), table("changed", modified=200), table("never", analyzed=False),
              table("calm"), table("tiny", size=100, live=1, dead=9), table("listed")]
    indexes = [index("ok_idx"), index("broken_idx", valid=False), index("ok_idx_ccnew", valid=False),
               index("listed_idx")]
    targets = plan(opts(tables=["listed"], indexes=["listed_idx"]), tables, indexes)
    got = [(tg.operation, tg.name) for tg in targets]
    assert got == [("drop_leftover", "ok_idx_ccnew"), ("reindex", "broken_idx"), ("reindex", "listed_idx"),
                   ("vacuum", "dead"), ("vacuum", "listed"), ("analyze", "changed"), ("analyze", "never")]
    assert opts().min_table_size == 10 << 20  # "tiny" stays out by size
    with pytest.raises(RunbookError, match="indexes: public.nope does not exist"):
        plan(opts(indexes=["nope"]), tables, indexes)


def test_vacuum_full_only_on_listed_tables_with_bloat():
    bloated = table("bloated", pages=5000, reltuples=1000.0)
    options = opts(operations=["vacuum_full"], vacuum_full_tables=["bloated", "calm"], bloat="1MB",
                   window={"max_duration": "1h"})
    targets = plan(options, [bloated, table("calm"), table("other", pages=9000)], [])
    by_name = {tg.name: tg for tg in targets}
    assert by_name["bloated"].status == "planned" and "estimated bloat" in by_name["bloated"].reason
    assert by_name["calm"].status == "skipped" and "below" in (by_name["calm"].skipped_because or "")
    assert "other" not in by_name
