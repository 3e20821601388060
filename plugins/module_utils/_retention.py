# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which backups a retention policy keeps, with restic ``forget`` meaning.

``keep_last: n`` keeps the n newest. ``keep_hourly/daily/weekly/monthly: n`` walk the backups
newest first and keep the newest one of each of the last n hours/days/ISO weeks/months *that have
a backup* (empty periods do not count). The kept set is the union; the newest backup is always
kept. Periods are in UTC.
"""

from __future__ import annotations

import datetime
import typing as t

RETENTION_KEYS = ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly")

_BUCKETS: t.Dict[str, t.Callable[[datetime.datetime], t.Tuple[int, ...]]] = {
    "keep_hourly": lambda d: (d.year, d.month, d.day, d.hour),
    "keep_daily": lambda d: (d.year, d.month, d.day),
    "keep_weekly": lambda d: tuple(d.isocalendar()[:2]),
    "keep_monthly": lambda d: (d.year, d.month),
}


def policy_is_empty(policy: t.Optional[dict]) -> bool:
    return not policy or not any((policy.get(key) or 0) > 0 for key in RETENTION_KEYS)


def apply_retention(backups: t.Sequence[dict], policy: dict,
                    created: t.Callable[[dict], datetime.datetime]) -> t.Tuple[t.List[dict], t.List[dict]]:
    """Split ``backups`` (one set) into ``(keep, remove)``; each kept item gains ``reasons``.

    With an empty policy nothing is removed (restic refuses to forget everything by accident;
    we keep everything instead).
    """
    ordered = sorted(backups, key=created, reverse=True)
    if policy_is_empty(policy):
        return [dict(item, reasons=["no retention policy"]) for item in ordered], []
    reasons: t.Dict[int, t.List[str]] = {}
    last_n = policy.get("keep_last") or 0
    for index in range(min(last_n, len(ordered))):
        reasons.setdefault(index, []).append("last")
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
    if ordered and 0 not in reasons:
        reasons[0] = ["newest"]
    keep = [dict(item, reasons=reasons[i]) for i, item in enumerate(ordered) if i in reasons]
    remove = [item for i, item in enumerate(ordered) if i not in reasons]
    return keep, remove
