"""The pure parts of pg_purge: options through the argument spec, the index check on a plan, partition bounds."""

from __future__ import annotations

import pytest

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError
from ansible_collections.runbook.ops.plugins.module_utils._pg_purge import (
    PgPurgeOptions, partition_upper_bound, plan_uses_index)
from tests.harness.tasks import InvalidParams, make_task

BASE = {"db": "auth", "table": "audit_logs"}


def opts(**params) -> PgPurgeOptions:
    return make_task("pg_purge", PgPurgeOptions.from_params, dict(BASE, **params)).options


def test_defaults_and_parsing():
    o = opts(column="created_at", older_than="90d")
    # No batch_size: batches are sized to take batch_duration each.
    assert o.older_than == 90 * 86400 and o.batch_size is None and o.batch_duration == 0.5 and o.max_rows == 1000000
    assert o.lock_timeout == 2 and o.pause == 0 and o.lag_wait == 60 and o.max_replication_lag is None
    assert o.schema == "public" and o.qualified == "public.audit_logs" and o.drop_partitions
    assert opts(where="id < 5", max_replication_lag="64MB").max_replication_lag == 64 << 20


def test_argument_rules():
    with pytest.raises(InvalidParams, match="mutually exclusive"):
        opts(column="created_at", older_than="90d", where="true")
    with pytest.raises(InvalidParams, match="one of the following is required"):
        opts()
    with pytest.raises(InvalidParams, match="column"):
        opts(older_than="90d")


@pytest.mark.parametrize("params, message", [
    ({"column": "created_at", "older_than": "soon"}, "older_than"),
    ({"column": "created_at", "older_than": "0s"}, "older_than"),
    ({"column": "created_at", "older_than": "1d", "batch_size": 0}, "batch_size"),
    ({"column": "created_at", "older_than": "1d", "lock_timeout": "0s"}, "lock_timeout"),
    ({"column": "created_at", "older_than": "1d", "parameters": {"x": 1}}, "where, which is not set"),
    ({"where": "a = %(runbook_after)s", "parameters": {"runbook_after": 1}}, "reserved"),
    ({"column": "bad\ncol", "older_than": "1d"}, "column"),
])
def test_refusals(params, message):
    with pytest.raises(RunbookError, match=message):
        opts(**params)


def _plan(*nodes):
    root = dict(nodes[0])
    root["Plans"] = list(nodes[1:])
    return [{"Plan": root}]


def test_plan_uses_index():
    assert plan_uses_index(_plan({"Node Type": "Limit"}, {"Node Type": "Index Scan", "Relation Name": "logs",
                                                          "Index Cond": "(created_at < $1)"}), "logs")
    assert not plan_uses_index(_plan({"Node Type": "Limit"}, {"Node Type": "Seq Scan", "Relation Name": "logs"}), "logs")
    # the primary key walked whole with the predicate as a filter is a table scan in disguise
    assert not plan_uses_index(_plan({"Node Type": "Limit"}, {"Node Type": "Index Scan", "Relation Name": "logs",
                                                              "Filter": "(payload = 'x')"}), "logs")
    assert plan_uses_index(_plan({"Node Type": "Bitmap Heap Scan", "Relation Name": "logs"},
                                 {"Node Type": "Bitmap Index Scan", "Index Cond": "(tenant_id = 1)"}), "logs")


@pytest.mark.parametrize("bound, upper", [
    ("FOR VALUES FROM ('2024-01-01 00:00:00+00') TO ('2024-02-01 00:00:00+00')", "2024-02-01 00:00:00+00"),
    ("FOR VALUES FROM ('2024-04-01') TO (MAXVALUE)", None),
    ("DEFAULT", None),
    ("FOR VALUES IN ('a', 'b')", None),
    ("FOR VALUES FROM ('a', 1) TO ('b', 2)", None),
    ("FOR VALUES FROM ('it''s') TO ('z''s')", "z's"),
])
def test_partition_upper_bound(bound, upper):
    assert partition_upper_bound(bound) == upper
