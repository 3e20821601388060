# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The findings schema shared by every health-style module.

A finding is ``{severity, check, object, message, details}``. ``unknown`` means "could not be
checked" and ranks above ``warning``: a check we could not run must never read as healthy.
"""

from __future__ import annotations

import typing as t

Finding = t.Dict[str, t.Any]

SEVERITIES = ("ok", "info", "warning", "unknown", "critical")
_RANK = {name: rank for rank, name in enumerate(SEVERITIES)}
FAIL_ON_CHOICES = ("never", "warning", "critical")


def finding(severity: str, check: str, obj: str, message: str, details: t.Optional[t.Mapping[str, t.Any]] = None) -> Finding:
    """Build one finding; ``obj`` reads like ``Deployment/payments/auth-service``."""
    if severity not in _RANK:
        raise ValueError("unknown severity %r" % severity)
    return {
        "severity": severity,
        "check": check,
        "object": obj,
        "message": message,
        "details": dict(details or {}),
    }


def worst(severities: t.Iterable[str]) -> str:
    """The worst severity of an iterable, ``ok`` when it is empty."""
    result = "ok"
    for severity in severities:
        if _RANK[severity] > _RANK[result]:
            result = severity
    return result


def summarize(findings: t.Sequence[Finding]) -> t.Tuple[str, t.Dict[str, int]]:
    """Return ``(status, summary)``: the worst severity and a count per severity."""
    summary = {name: 0 for name in SEVERITIES}
    for item in findings:
        summary[item["severity"]] += 1
    return worst(item["severity"] for item in findings), summary


def reaches(status: str, fail_on: str) -> bool:
    """True when ``status`` is at or above the ``fail_on`` level (``never`` never reaches)."""
    if fail_on == "never":
        return False
    return _RANK[status] >= _RANK[fail_on]


def sort_findings(findings: t.List[Finding]) -> t.List[Finding]:
    """Worst first, then by check and object, so reports read the same on every run."""
    return sorted(findings, key=lambda f: (-_RANK[f["severity"]], f["check"], f["object"], f["message"]))
