"""Retention against a table of dated backups, checked against restic's documented `forget` semantics."""

from __future__ import annotations

import datetime

import pytest

from ansible_collections.runbook.ops.plugins.module_utils._backup_job import retention_argspec
from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError
from ansible_collections.runbook.ops.plugins.module_utils._retention import (
    RETENTION_KEYS, apply_retention, check_policy, parse_within, policy_is_empty, within_cutoff)


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


# --------------------------------------------------------------------------- keep_yearly, keep_within and two common policies
#
# The expected sets below were worked out by hand from the rules restic documents for `forget`:
# keep_yearly keeps the newest backup of each of the last n years that have one; keep_within keeps
# every backup younger than the duration measured back from the newest backup (years, months, days,
# hours); a period rule that runs out of backups before its count is used up keeps the oldest
# backup in addition.

# A monthly schedule: one backup on the first of every month at 02:00, Jan 2016 to Nov 2026.
MONTHLY = ["%04d-%02d-01T02:00:00" % (year, month) for year in range(2016, 2027) for month in range(1, 13)
           if (year, month) <= (2026, 11)]


def test_postgresql_policy_keeps_seven_years():
    # The newest of each of the last seven years that have a backup: Nov 2026, then each December.
    assert _kept(MONTHLY, {"keep_yearly": 7}) == ["2026-11-01T02:00:00"] + [
        "%04d-12-01T02:00:00" % year for year in (2025, 2024, 2023, 2022, 2021, 2020)]


def test_monthly_backups_policy_keeps_twelve_months():
    assert _kept(MONTHLY, {"keep_monthly": 12}) == ["2026-%02d-01T02:00:00" % month for month in range(11, 0, -1)] + [
        "2025-12-01T02:00:00"]


def test_a_rule_with_periods_left_keeps_the_oldest_backup_too():
    # Eleven years have a backup, the rule asks for twenty: the newest of each year, plus the
    # oldest backup of all (Jan 2016, not the newest of its year), as restic does.
    kept = _kept(MONTHLY, {"keep_yearly": 20})
    assert kept == ["2026-11-01T02:00:00"] + ["%04d-12-01T02:00:00" % year for year in range(2025, 2015, -1)] + [
        "2016-01-01T02:00:00"]
    keep = apply_retention(_backups(MONTHLY), {"keep_yearly": 20}, lambda b: b["created"])[0]
    assert keep[-1]["reasons"] == ["oldest yearly"]


def test_keep_within_counts_back_from_the_newest_backup_not_from_now():
    # Newest: Nov 19 15:00. Within 2 days means after Nov 17 15:00 (that one itself is not "within").
    assert _kept(TABLE, {"keep_within": "2d"}) == [
        "2026-11-19T15:00:00", "2026-11-19T03:00:00", "2026-11-18T15:00:00", "2026-11-18T03:00:00"]
    # Backups that stopped long ago keep their last days: "now" plays no part.
    old = ["2019-05-10T00:00:00", "2019-05-09T12:00:00", "2019-05-08T00:00:00"]
    assert _kept(old, {"keep_within": "1d12h"}) == ["2019-05-10T00:00:00", "2019-05-09T12:00:00"]


def test_keep_within_years_and_months_are_calendar_units():
    # 1y: after 2025-11-19T15:00; Nov 2 2026 is in, June 2025 is not.
    assert _kept(TABLE, {"keep_within": "1y"}) == _kept(TABLE, {"keep_last": len(TABLE) - 1})
    # restic shifts the date like Go's AddDate: March 31 minus one month is "February 31", which
    # rolls over to March 3 (2026 is not a leap year). Kept: strictly after March 3, 00:00.
    stamps = ["2026-03-31T00:00:00", "2026-03-03T01:00:00", "2026-03-03T00:00:00", "2026-03-02T00:00:00"]
    assert _kept(stamps, {"keep_within": "1m"}) == ["2026-03-31T00:00:00", "2026-03-03T01:00:00"]
    assert within_cutoff(datetime.datetime(2026, 3, 31, tzinfo=datetime.timezone.utc), parse_within("1m")) == \
        datetime.datetime(2026, 3, 3, tzinfo=datetime.timezone.utc)
    # The docs' example: 2y5m7d3h before the latest snapshot.
    assert within_cutoff(datetime.datetime(2026, 11, 19, 15, tzinfo=datetime.timezone.utc), parse_within("2y5m7d3h")) == \
        datetime.datetime(2024, 6, 12, 12, tzinfo=datetime.timezone.utc)


def test_keep_within_is_a_union_with_the_other_rules():
    keep = apply_retention(_backups(TABLE), {"keep_within": "13h", "keep_yearly": 2}, lambda b: b["created"])[0]
    assert [(b["id"], b["reasons"]) for b in keep] == [
        ("2026-11-19T15:00:00", ["yearly", "within"]), ("2026-11-19T03:00:00", ["within"]),
        ("2025-06-01T00:00:00", ["yearly"])]


@pytest.mark.parametrize("value", ["30 days", "1w", "5m3y", "12", "-1d", "1y2x"])
def test_keep_within_refuses_what_restic_would_not_read(value):
    with pytest.raises(RunbookError, match="keep_within.*m means months"):
        check_policy({"keep_within": value})


def test_a_zero_keep_within_is_an_empty_policy():
    assert policy_is_empty({"keep_within": "0d"}) and policy_is_empty({"keep_within": ""})
    assert not policy_is_empty({"keep_within": "1h"}) and not policy_is_empty({"keep_yearly": 1})
    assert len(_kept(TABLE, {"keep_within": "0d"})) == len(TABLE)


def test_the_newest_backup_survives_every_new_rule():
    for policy in ({"keep_yearly": 1}, {"keep_within": "1h"}, {"keep_monthly": 12}):
        assert _kept(MONTHLY, policy)[0] == "2026-11-01T02:00:00"


def test_every_retention_key_is_in_the_argument_spec():
    spec = retention_argspec()["retention"]["options"]
    assert spec == {key: {"type": kind} for key, kind in RETENTION_KEYS.items()}
    assert spec["keep_within"] == {"type": "str"} and spec["keep_yearly"] == {"type": "int"}
