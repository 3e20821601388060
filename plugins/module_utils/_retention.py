# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which backups a retention policy keeps, with restic ``forget`` meaning.

``keep_last: n`` keeps the n newest. ``keep_hourly/daily/weekly/monthly/yearly: n`` walk the
backups newest first and keep the newest one of each of the last n hours/days/ISO weeks/months/
years *that have a backup* (empty periods do not count); a rule with periods left over when it
reaches the oldest backup keeps that one too. ``keep_within: 1y6m`` keeps every backup
taken less than that long before the *newest* backup (not before now: a set whose backups stopped
keeps its last ones). The kept set is the union; the newest backup is always kept. Periods are in UTC.
"""

from __future__ import annotations

import datetime
import re
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError

Backup = t.Dict[str, t.Any]
Policy = t.Mapping[str, t.Any]

# Every retention option and its argument-spec type (the spec is built from this, in _backup_job).
RETENTION_KEYS: t.Dict[str, str] = {
    "keep_last": "int", "keep_hourly": "int", "keep_daily": "int", "keep_weekly": "int",
    "keep_monthly": "int", "keep_yearly": "int", "keep_within": "str",
}

_BUCKETS: t.Dict[str, t.Callable[[datetime.datetime], t.Tuple[int, ...]]] = {
    "keep_hourly": lambda d: (d.year, d.month, d.day, d.hour),
    "keep_daily": lambda d: (d.year, d.month, d.day),
    "keep_weekly": lambda d: tuple(d.isocalendar()[:2]),
    "keep_monthly": lambda d: (d.year, d.month),
    "keep_yearly": lambda d: (d.year,),
}

# restic's duration grammar for --keep-within: years, months, days and hours, in that order.
_WITHIN_RE = re.compile(r"^(?:(\d+)y)?(?:(\d+)m)?(?:(\d+)d)?(?:(\d+)h)?$")


class Within(t.NamedTuple):
    years: int
    months: int
    days: int
    hours: int

    def is_zero(self) -> bool:
        return not any(self)


def parse_within(value: t.Optional[str]) -> t.Optional[Within]:
    """``keep_within`` as restic reads it: V(2y6m), V(14d), V(1d12h) (y years, m months, d days,
    h hours); None when empty. ``m`` is months, as in restic, not minutes."""
    if value is None or str(value).strip() == "":
        return None
    match = _WITHIN_RE.match(str(value).strip().lower())
    if match is None or not any(match.groups()):
        raise RunbookError("retention.keep_within: %r is not a duration as restic reads it: years, months, days "
                           "and hours in that order, e.g. 2y6m, 30d, 1d12h (m means months)" % (value,))
    years, months, days, hours = (int(group or 0) for group in match.groups())
    return Within(years, months, days, hours)


def check_policy(policy: t.Optional[Policy]) -> None:
    """Refuse a policy that cannot be applied, before anything runs (not after a backup was taken)."""
    if policy:
        parse_within(policy.get("keep_within"))


def policy_is_empty(policy: t.Optional[Policy]) -> bool:
    if not policy:
        return True
    if any((policy.get(key) or 0) > 0 for key, kind in RETENTION_KEYS.items() if kind == "int"):
        return False
    within = parse_within(policy.get("keep_within"))
    return within is None or within.is_zero()


def _go_add_date(moment: datetime.datetime, years: int, months: int, days: int) -> datetime.datetime:
    """``moment`` shifted by calendar years, months and days the way Go's ``time.AddDate`` (and so
    restic) does it: an overflowing day rolls into the next month (March 31 minus a month is
    March 3, or March 2 in a leap year)."""
    month_index = moment.year * 12 + (moment.month - 1) + years * 12 + months
    first = moment.replace(year=month_index // 12, month=month_index % 12 + 1, day=1)
    return first + datetime.timedelta(days=moment.day - 1 + days)


def within_cutoff(newest: datetime.datetime, within: Within) -> datetime.datetime:
    """Backups taken strictly after this moment are kept by ``keep_within``."""
    shifted = _go_add_date(newest, -within.years, -within.months, -within.days)
    return shifted - datetime.timedelta(hours=within.hours)


def _bucket_reasons(ordered: t.Sequence[Backup], policy: Policy,
                    created: t.Callable[[Backup], datetime.datetime]) -> t.Dict[int, t.List[str]]:
    """Index (newest first) -> the rules that keep it, for keep_last and the period rules."""
    reasons: t.Dict[int, t.List[str]] = {}
    for index in range(min(policy.get("keep_last") or 0, len(ordered))):
        reasons.setdefault(index, []).append("last")
    oldest = len(ordered) - 1
    for key, bucket_of in _BUCKETS.items():
        remaining = policy.get(key) or 0
        previous = None
        for index, item in enumerate(ordered):
            if remaining <= 0:
                break
            bucket = bucket_of(created(item))
            if bucket != previous:
                reasons.setdefault(index, []).append(key[len("keep_"):])
                remaining -= 1
                previous = bucket
            elif index == oldest:
                # restic: a rule with periods left over keeps the oldest backup too, so the
                # history reaches as far back as the backups allow.
                reasons.setdefault(index, []).append("oldest " + key[len("keep_"):])
    return reasons


def apply_retention(backups: t.Sequence[Backup], policy: t.Optional[Policy],
                    created: t.Callable[[Backup], datetime.datetime]) -> t.Tuple[t.List[Backup], t.List[Backup]]:
    """Split ``backups`` (one set) into ``(keep, remove)``; each kept item gains ``reasons``.

    With an empty policy nothing is removed (restic refuses to forget everything by accident;
    we keep everything instead).
    """
    ordered = sorted(backups, key=created, reverse=True)
    if policy is None or policy_is_empty(policy):
        return [dict(item, reasons=["no retention policy"]) for item in ordered], []
    reasons = _bucket_reasons(ordered, policy, created)
    within = parse_within(policy.get("keep_within"))
    if ordered and within is not None and not within.is_zero():
        cutoff = within_cutoff(created(ordered[0]), within)
        for index, item in enumerate(ordered):
            if created(item) > cutoff:
                reasons.setdefault(index, []).append("within")
    if ordered and 0 not in reasons:
        reasons[0] = ["newest"]
    keep = [dict(item, reasons=reasons[i]) for i, item in enumerate(ordered) if i in reasons]
    remove = [item for i, item in enumerate(ordered) if i not in reasons]
    return keep, remove
