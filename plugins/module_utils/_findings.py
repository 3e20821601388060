# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The findings schema shared by every health-style module.

A finding is ``{severity, check, object, message, details}``. ``unknown`` means "could not be
checked" and ranks above ``warning``: a check we could not run must never read as healthy.
"""

from __future__ import annotations

import dataclasses
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError
from ansible_collections.runbook.ops.plugins.module_utils._names import byte_size, duration, number

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


def counts_text(summary: t.Mapping[str, int]) -> str:
    """``2 critical, 1 warning``: the severities that need a look, worst first."""
    return ", ".join("%d %s" % (summary[s], s) for s in ("critical", "unknown", "warning") if summary.get(s))


def judged(subject: str, findings: t.Sequence[Finding], fail_on: str, context: str = "",
           **fields: t.Any) -> t.Dict[str, t.Any]:
    """The result of a module that judges health: ``status``, ``summary``, sorted ``findings``,
    ``changed: false`` and a ``msg`` like ``<subject> is warning: 1 warning (<context>)``, plus
    ``fields``. When ``status`` reaches ``fail_on`` the task fails with every field kept."""
    ordered = sort_findings(list(findings))
    status, summary = summarize(ordered)
    counts = counts_text(summary)
    result: t.Dict[str, t.Any] = dict(fields)
    result.update({
        "changed": False,
        "msg": "%s is %s: %s%s" % (
            subject, status, counts or "nothing to report", " (%s)" % context if context else ""),
        "status": status,
        "summary": summary,
        "findings": ordered,
    })
    if reaches(status, fail_on):
        raise RunbookError.keeping("%s is %s (fail_on: %s): %s" % (subject, status, fail_on, counts), result)
    return result


@dataclasses.dataclass(frozen=True)
class Limit:
    """A warning and a critical level of one measure (None: that level is not judged)."""

    warning: t.Optional[float]
    critical: t.Optional[float]
    lower_is_worse: bool = False

    def grade(self, value: t.Optional[float]) -> str:
        """``critical``, ``warning`` or ``ok`` for ``value``."""
        if value is None:
            return "ok"
        for severity, level in (("critical", self.critical), ("warning", self.warning)):
            if level is not None and (value <= level if self.lower_is_worse else value >= level):
                return severity
        return "ok"


def _level(kind: str, what: str, value: t.Any) -> t.Optional[float]:
    if value is None or value == "":
        return None
    if kind == "duration":
        return duration(what, value)
    if kind == "size":
        return float(byte_size(what, value))
    return number(what, value, 0.0)


def limits_from(given: t.Mapping[str, t.Any], kinds: t.Mapping[str, str],
                lower_is_worse: t.Collection[str] = ()) -> t.Dict[str, Limit]:
    """Each measure's :class:`Limit` from a ``thresholds`` option holding ``<name>_warning`` and
    ``<name>_critical``; ``kinds`` maps each name to ``duration`` (seconds), ``size`` (bytes) or
    ``number``. A critical level milder than the warning level is refused, naming both."""
    limits = {}
    for name, kind in kinds.items():
        warning = _level(kind, "thresholds.%s_warning" % name, given["%s_warning" % name])
        critical = _level(kind, "thresholds.%s_critical" % name, given["%s_critical" % name])
        limit = Limit(warning, critical, lower_is_worse=name in lower_is_worse)
        if warning is not None and critical is not None and (
                critical > warning if limit.lower_is_worse else critical < warning):
            raise RunbookError("thresholds.%s_critical must be %s than thresholds.%s_warning" % (
                name, "lower" if limit.lower_is_worse else "at least as high", name))
        limits[name] = limit
    return limits
