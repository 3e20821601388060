"""Pure logic shared by every module: durations, timestamps, findings."""

from __future__ import annotations

import datetime

import pytest

from ansible_collections.runbook.ops.plugins.module_utils._common import (
    RunbookError, isoformat, parse_duration, parse_time)
from ansible_collections.runbook.ops.plugins.module_utils._findings import finding, reaches, summarize


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("5m", 300), ("6h", 21600), ("30d", 2592000),
                                          ("1h30m", 5400), ("2w", 1209600), ("500ms", 0.5), ("120", 120), (45, 45)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "5 minutes", "h5", "5m soon"])
def test_parse_duration_rejects_garbage(text):
    with pytest.raises(RunbookError, match="is not a duration"):
        parse_duration(text, "max_age")


def test_parse_time_accepts_z_and_naive():
    assert parse_time("2026-01-31T12:00:00Z") == datetime.datetime(2026, 1, 31, 12, tzinfo=datetime.timezone.utc)
    assert parse_time("2026-01-31T12:00:00") == parse_time("2026-01-31T13:00:00+01:00")
    assert isoformat(parse_time("2026-01-31T12:00:00.123456Z")) == "2026-01-31T12:00:00Z"


def test_parse_time_rejects_garbage():
    with pytest.raises(RunbookError, match="ISO 8601"):
        parse_time("yesterday")


def test_summary_and_status():
    findings = [finding("ok", "pods", "Pod/a/b", "fine"), finding("warning", "pods", "Pod/a/c", "restarts"),
                finding("unknown", "nodes", "Node/*", "forbidden")]
    status, summary = summarize(findings)
    assert status == "unknown"
    assert summary == {"ok": 1, "info": 0, "warning": 1, "unknown": 1, "critical": 0}
    assert reaches(status, "warning") and not reaches(status, "critical") and not reaches("critical", "never")
    assert summarize([]) == ("ok", {"ok": 0, "info": 0, "warning": 0, "unknown": 0, "critical": 0})
