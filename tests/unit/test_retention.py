"""Retention against a table of dated backups, checked against restic's documented `forget` semantics."""

from __future__ import annotations

import datetime

import pytest

from ansible_collections.runbook.ops.plugins.module_utils._retention import apply_retention


def _backups(stamps):
    return [{"id": s, "created": datetime.datetime.fromisoformat(s).replace(tzinfo=datetime.timezone.utc)} for s in stamps]


def _kept(stamps, policy):
    keep, remove = apply_retention(_backups(stamps), policy, lambda b: b["created"])
    assert len(keep) + len(remove) == len(stamps)
    return [b["id"] for b in keep]


# Two backups a day for ten days, one a week earlier, and one a year earlier.
TABLE = ["2026-11-%02dT%02d:00:00" % (day, hour) for day in range(10, 20) for hour in (3, 15)]
TABLE += ["2026-11-02T12:00:00", "2025-06-01T00:00:00"]


def test_keep_last_keeps_newest_n():
    assert _kept(TABLE, {"keep_last": 3}) == ["2026-11-19T15:00:00", "2026-11-19T03:00:00", "2026-11-18T15:00:00"]


def test_keep_daily_keeps_newest_of_each_day_with_a_backup():
    assert _kept(TABLE, {"keep_daily": 3}) == ["2026-11-19T15:00:00", "2026-11-18T15:00:00", "2026-11-17T15:00:00"]


def test_empty_periods_do_not_count():
    # The gap between Nov 2 and Nov 10 is skipped: the 11th daily bucket is Nov 2, the 12th June 2025.
    kept = _kept(TABLE, {"keep_daily": 12})
    assert kept[-2:] == ["2026-11-02T12:00:00", "2025-06-01T00:00:00"]
    assert len(kept) == 12


def test_weekly_uses_iso_weeks():
    # ISO weeks: Nov 16-19 (week 47), Nov 10-15 (week 46), Nov 2 (week 45).
    assert _kept(TABLE, {"keep_weekly": 3}) == ["2026-11-19T15:00:00", "2026-11-15T15:00:00", "2026-11-02T12:00:00"]


def test_monthly_and_union_of_rules():
    kept = _kept(TABLE, {"keep_last": 1, "keep_monthly": 2})
    assert kept == ["2026-11-19T15:00:00", "2025-06-01T00:00:00"]


def test_hourly():
    stamps = ["2026-11-19T10:%02d:00" % minute for minute in (0, 20, 40)] + ["2026-11-19T09:50:00", "2026-11-19T07:00:00"]
    assert _kept(stamps, {"keep_hourly": 2}) == ["2026-11-19T10:40:00", "2026-11-19T09:50:00"]


def test_reasons_are_recorded():
    keep = apply_retention(_backups(TABLE), {"keep_last": 1, "keep_daily": 1}, lambda b: b["created"])[0]
    assert keep[0]["reasons"] == ["last", "daily"]


@pytest.mark.parametrize("policy", [{}, {"keep_last": 0}, None])
def test_empty_policy_removes_nothing(policy):
    assert len(_kept(TABLE, policy)) == len(TABLE)


def test_newest_is_always_kept():
    # A policy that on its own would keep only old monthly buckets still keeps the newest backup.
    keep, remove = apply_retention(_backups(TABLE), {"keep_monthly": 1}, lambda b: b["created"])
    assert [b["id"] for b in keep] == ["2026-11-19T15:00:00"]
    assert len(remove) == len(TABLE) - 1
