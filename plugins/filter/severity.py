# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Severity filters for roles and playbooks, over the one ranking in ``module_utils/_findings.py``
(documented in ``worst_severity.yml`` and ``severity_at_least.yml``)."""

from __future__ import annotations

import typing as t

from ansible.errors import AnsibleFilterError

from ansible_collections.runbook.ops.plugins.module_utils._findings import FAIL_ON_CHOICES, SEVERITIES, reaches, worst


def _severity_of(item: t.Any, filter_name: str) -> str:
    """A severity name, or the ``severity`` (a finding) or ``status`` (a module result) of a mapping."""
    value = item
    if isinstance(item, t.Mapping):
        value = item.get("severity", item.get("status"))
    if not isinstance(value, str) or value not in SEVERITIES:
        raise AnsibleFilterError("%s: %r is not a severity (one of %s), a finding or a result with a status"
                                 % (filter_name, item, ", ".join(SEVERITIES)))
    return value


def worst_severity(items: t.Any) -> str:
    """The worst severity among findings, results or severity names; ``ok`` when there are none."""
    if items is None:
        return "ok"
    if isinstance(items, (str, t.Mapping)):
        items = [items]
    if not isinstance(items, t.Iterable):
        raise AnsibleFilterError("worst_severity expects a list of findings or severities, got %s" % type(items).__name__)
    return worst(_severity_of(item, "worst_severity") for item in items)


def severity_at_least(severity: t.Any, level: t.Any) -> bool:
    """True when ``severity`` (a name, a finding or a result) is at or above ``level``; ``never`` is never reached."""
    if level not in FAIL_ON_CHOICES and level not in SEVERITIES:
        raise AnsibleFilterError("severity_at_least: level %r is not never or one of %s" % (level, ", ".join(SEVERITIES)))
    return reaches(_severity_of(severity, "severity_at_least"), str(level))


class FilterModule:
    """runbook.ops severity filters."""

    def filters(self) -> t.Dict[str, t.Callable[..., t.Any]]:
        return {"worst_severity": worst_severity, "severity_at_least": severity_at_least}
