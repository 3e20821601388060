"""findings_report's pure logic: how results become sections, the ranking of the header, and each
format's rendering and escaping (parsed back with the readers machines use)."""

from __future__ import annotations

import json
import re
import typing as t
import xml.etree.ElementTree as ET
from pathlib import Path

import junitparser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError
from ansible_collections.runbook.ops.plugins.module_utils._findings import SEVERITIES, finding
from ansible_collections.runbook.ops.plugins.module_utils._report import (
    PLACEHOLDER, Report, ReportOptions, Stamp, md_text, render_html, render_json, render_junit, render_markdown,
    render_prometheus, same_but_time, with_time)
from tests.harness.collection import REPO
from tests.harness.tasks import validated

HOSTILE = "0 of 3 ready <script>alert('x')</script> | a & b\nsecond line \x1b[31m"
STAMP = Stamp(iso="2026-11-24T09:00:00Z", junit="2026-11-24T09:00:00", epoch="1795510800")


def options(sections: t.List[t.Dict[str, t.Any]], **params: t.Any) -> ReportOptions:
    return ReportOptions.from_params(validated("findings_report", dict(title="Daily check", sections=sections, **params)))


def report(sections: t.List[t.Dict[str, t.Any]], **params: t.Any) -> Report:
    return Report.of(options(sections, **params))


def health(*findings: t.Dict[str, t.Any], failed: bool = False) -> t.Dict[str, t.Any]:
    result: t.Dict[str, t.Any] = {"changed": False, "msg": "checked", "findings": list(findings)}
    if failed:
        result["failed"] = True
    return result


def mixed(restarts: str = "warning") -> Report:
    return report([
        {"name": "Kubernetes cluster", "source": "k8s_health", "result": health(
            finding("critical", "deployment_available", "Deployment/payments/auth-service", HOSTILE),
            finding(restarts, "pod_restarts", "Pod/payments/auth-1", "restarted 7 times"),
            finding("ok", "node_ready", "Node/kwok-1", "ready"))},
        {"name": "PostgreSQL auth", "source": "pg_health", "result": {"failed": True, "msg": "connection refused"}},
        {"name": "Redis", "source": "redis_health", "result": {"skipped": True, "skip_reason": "no Redis here"}},
        {"name": "Backup", "source": "pg_backup", "findings": []},
    ], platform='lab "one" \\ two', job="daily_check")


def only(section_report: Report) -> t.List[t.Tuple[str, str]]:
    return [(f["severity"], f["check"]) for f in section_report.opts.sections[0].findings]


# --------------------------------------------------------------------------- results into sections

def test_a_failed_result_without_findings_is_critical_with_its_message():
    got = report([{"name": "PG", "source": "pg_health", "result": {"failed": True, "msg": "password authentication failed"}}])
    assert only(got) == [("critical", "pg_health.failed")]
    assert got.opts.sections[0].findings[0]["message"] == "password authentication failed"
    assert got.status == "critical"


def test_a_failed_result_whose_findings_do_not_explain_it_is_still_critical():
    # The tunnel broke after two ok findings: the source did not finish, so it is not ok.
    got = report([{"name": "PG", "source": "pg_health", "result": health(finding("ok", "a", "X/y", "fine"), failed=True)}])
    assert ("critical", "pg_health.failed") in only(got)
    explained = report([{"name": "K8s", "source": "k8s_health",
                         "result": health(finding("warning", "pod_restarts", "Pod/a/b", "7 restarts"), failed=True)}])
    assert only(explained) == [("warning", "pod_restarts")]


def test_a_skipped_result_is_an_info_finding_saying_why():
    got = report([{"name": "Redis", "source": "redis_health",
                   "result": {"skipped": True, "skip_reason": "Conditional result was False", "changed": False}}])
    assert only(got) == [("info", "redis_health.skipped")]
    assert got.opts.sections[0].findings[0]["message"] == "skipped: Conditional result was False"


def test_a_successful_result_without_findings_reads_its_message_and_an_empty_one_is_unknown():
    done = report([{"name": "Backup", "source": "pg_backup", "result": {"changed": True, "msg": "backed up auth"}}])
    assert only(done) == [("ok", "pg_backup.done")]
    empty = report([{"name": "Backup", "source": "pg_backup", "result": {}}])
    assert only(empty) == [("unknown", "pg_backup.no_result")] and empty.status == "unknown"


def test_given_findings_replace_the_results_and_a_loop_is_read_item_by_item():
    given = report([{"name": "Purge", "source": "pg_purge", "result": health(finding("critical", "x", "X/y", "m")),
                     "findings": [{"severity": "info", "check": "pg_purge.rows", "message": "12 rows"}]}])
    assert only(given) == [("info", "pg_purge.rows")]
    loop = report([{"name": "Databases", "source": "pg_health", "result": {"results": [
        dict(health(finding("warning", "bloat", "Table/auth/t", "40% bloat")), _ansible_item_label="auth"),
        {"failed": True, "msg": "no route to host", "_ansible_item_label": "billing"},
        {"skipped": True, "skip_reason": "not on this platform", "_ansible_item_label": {"password": "s3cret"}},
    ]}}])
    assert only(loop) == [("critical", "pg_health.failed"), ("warning", "bloat"), ("info", "pg_health.skipped")]
    objects = [f["object"] for f in loop.opts.sections[0].findings]
    # A dict item label may hold credentials: never shown.
    assert objects == ["billing", "Table/auth/t", "pg_health"] and "s3cret" not in json.dumps(objects)


def test_header_status_counts_and_first_follow_the_one_ranking():
    findings = [finding("warning", "w%d" % n, "X/w", "m") for n in range(8)]
    got = report([
        {"name": "A", "source": "a", "result": health(*findings)},
        {"name": "B", "source": "b", "result": health(finding("unknown", "u", "X/u", "m"), finding("ok", "o", "X/o", "m"))},
        {"name": "C", "source": "c", "result": health(finding("critical", "c1", "X/c", "m"), finding("critical", "c2", "X/c", "m"))},
    ])
    assert got.status == "critical"
    assert got.summary == {"ok": 1, "info": 0, "warning": 8, "unknown": 1, "critical": 2}
    assert [(f["severity"], f["source"]) for f in got.first] == (
        [("critical", "c")] * 2 + [("unknown", "b")] + [("warning", "a")] * 7)
    assert len(got.first) == 10 and got.needing_a_look == 11


@pytest.mark.parametrize("sections, expected", [
    ([{"name": "A", "source": "a b", "findings": []}], "must be a short id"),
    ([{"name": "A", "source": "a", "findings": []}, {"name": "B", "source": "a", "findings": []}], "used by an earlier section"),
    ([{"name": "A", "source": "a", "findings": [{"severity": "bad", "check": "c", "message": "m"}]}],
     "sections[0] (a).findings[0]: severity 'bad' is not one of ok, info"),
    ([{"name": "A", "source": "a", "findings": [{"severity": "ok", "message": "m"}]}], "has no check"),
    ([{"name": "A", "source": "a", "result": {"findings": [{"severity": "worse"}]}}], "sections[0].result.findings[0]"),
])
def test_bad_sections_are_refused_naming_the_section(sections, expected):
    with pytest.raises(RunbookError, match=re.escape(expected)):
        options(sections)


@pytest.mark.parametrize("params, expected", [
    ({"outputs": {"markdown": "report.md"}}, "not an absolute path"),
    ({"outputs": {"markdown": "/tmp/r", "json": "/tmp/r"}}, "also another format's output"),
    ({"mode": "rw-r-----"}, "not an octal file mode"),
    ({"metrics": [{"name": "runbook_findings", "value": 1}]}, "not a metric name"),
    ({"metrics": [{"name": "bad-name", "value": 1}]}, "not a metric name"),
    ({"metrics": [{"name": "m", "labels": {"platform": "x"}, "value": 1}]}, "not a label name"),
    ({"metrics": [{"name": "m", "help": "a", "value": 1, "labels": {"set": "x"}},
                  {"name": "m", "help": "b", "value": 1, "labels": {"set": "y"}}]}, "two different help texts"),
    ({"metrics": [{"name": "m", "value": 1, "labels": {"set": "x"}}, {"name": "m", "value": 2, "labels": {"set": "x"}}]},
     "given twice"),
    ({"now": "yesterday"}, "not an ISO 8601 timestamp"),
])
def test_bad_options_are_refused(params, expected):
    with pytest.raises(RunbookError, match=re.escape(expected)):
        options([{"name": "A", "source": "a", "findings": []}], **params)


# --------------------------------------------------------------------------- the generation time

def test_only_the_generation_time_may_differ_between_equal_renderings():
    got = mixed()
    for render in (render_markdown, render_html, render_json, render_junit, render_prometheus):
        template = render(got, PLACEHOLDER)
        earlier = with_time(template, STAMP)
        assert "@@" not in earlier
        assert same_but_time(template, earlier), render.__name__
        assert not same_but_time(template, with_time(render(mixed(restarts="critical"), PLACEHOLDER), STAMP))
        assert not same_but_time(template, earlier + "\n"), render.__name__


# --------------------------------------------------------------------------- Markdown and HTML

def test_markdown_escapes_table_cells_and_leads_with_what_to_fix():
    text = with_time(render_markdown(mixed(), PLACEHOLDER), STAMP)
    lines = text.splitlines()
    assert lines[0] == "# Daily check"
    assert lines[2].startswith("**Status: CRITICAL** · 2 critical, 1 warning")
    assert lines.index("## Fix first") < lines.index("## Kubernetes cluster: critical")
    row = next(line for line in lines if line.startswith("| critical | deployment"))
    # Exactly the four cells: the | and the newline of the message do not break the table.
    assert len(re.findall(r"(?<!\\)\|", row)) == 5
    assert "<script>" not in text and "\\<script\\>" in text and "second line" in row
    assert "1 ok finding not listed." in text and "Nothing to report." in text
    assert md_text("a|b\nc") == "a\\|b<br>c"


def test_html_escapes_every_value_and_loads_nothing():
    page = with_time(render_html(mixed(), PLACEHOLDER), STAMP)
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "lab &quot;one&quot; \\ two" in page
    # Self-contained: nothing fetched, and a policy that forbids it if something slipped through.
    assert not re.search(r"\b(src|href)=|@import|url\(|https?:", page)
    assert "default-src 'none'" in page
    assert '<header class="banner sev-critical">' in page
    assert page.index("Fix first") < page.index("Kubernetes cluster <span")


def test_include_ok_lists_ok_findings():
    sections = [{"name": "K", "source": "k", "result": health(finding("ok", "node_ready", "Node/a", "ready"))}]
    assert "node\\_ready" not in render_markdown(report(sections), STAMP)
    assert "node\\_ready" in render_markdown(report(sections, include_ok=True), STAMP)
    assert "node_ready" in render_html(report(sections, include_ok=True), STAMP)


def test_json_holds_every_finding_with_details():
    document = json.loads(with_time(render_json(mixed(), PLACEHOLDER), STAMP))
    assert document["generated"] == STAMP.iso and document["status"] == "critical"
    assert [s["source"] for s in document["sections"]] == ["k8s_health", "pg_health", "redis_health", "pg_backup"]
    assert len(document["sections"][0]["findings"]) == 3 and document["sections"][0]["findings"][0]["message"] == HOSTILE


# --------------------------------------------------------------------------- JUnit XML

def test_junit_counts_failures_skips_and_tests(tmp_path: Path):
    path = tmp_path / "report.xml"
    path.write_text(with_time(render_junit(mixed(), PLACEHOLDER), STAMP))
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    assert {k: root.get(k) for k in ("tests", "failures", "errors", "skipped")} == {
        "tests": "6", "failures": "3", "errors": "0", "skipped": "1"}
    suites = {suite.get("name"): suite for suite in root.iter("testsuite")}
    assert list(suites) == ["daily_check.k8s_health", "daily_check.pg_health", "daily_check.redis_health",
                            "daily_check.pg_backup"]
    for suite in suites.values():
        cases = suite.findall("testcase")
        assert int(suite.get("tests")) == len(cases)
        assert int(suite.get("failures")) == sum(1 for c in cases if c.find("failure") is not None)
        assert int(suite.get("skipped")) == sum(1 for c in cases if c.find("skipped") is not None)
    failure = suites["daily_check.k8s_health"].find("testcase/failure")
    assert failure.get("type") == "critical" and "\x1b" not in failure.get("message") and "<script>" in failure.get("message")

    parsed = junitparser.JUnitXml.fromfile(str(path))
    by_name = {suite.name: suite for suite in parsed}
    assert by_name["daily_check.k8s_health"].failures == 2
    assert by_name["daily_check.pg_health"].failures == 1
    assert by_name["daily_check.redis_health"].skipped == 1
    failing = [case.name for suite in parsed for case in suite
               if any(isinstance(r, junitparser.Failure) for r in case.result)]
    assert failing == ["deployment_available Deployment/payments/auth-service", "pod_restarts Pod/payments/auth-1",
                       "pg_health.failed pg_health"]


def test_junit_failure_level_moves_warnings_to_passing():
    got = Report.of(options([{"name": "K", "source": "k", "result": health(
        finding("critical", "c", "X/c", "m"), finding("warning", "w", "X/w", "m"))}], junit_failure_level="critical"))
    root = ET.fromstring(render_junit(got, STAMP))
    assert (root.get("tests"), root.get("failures")) == ("2", "1")


# --------------------------------------------------------------------------- Prometheus textfile

def parsed_samples(text: str) -> t.Dict[t.Tuple[str, t.Tuple[t.Tuple[str, str], ...]], float]:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_textfile_parses_with_every_severity_and_escaped_labels():
    got = Report.of(options([
        {"name": "K", "source": "k8s_health", "result": health(finding("critical", "c", "X/c", "m"))},
        {"name": "P", "source": "pg_health", "result": {"failed": True, "msg": "down"}},
        {"name": "R", "source": "redis_health", "result": health(finding("unknown", "u", "X/u", "m"))},
    ], platform='lab "one" \\ two', job="daily_check", metrics=[
        {"name": "runbook_backup_age_seconds", "help": "Age of the newest backup.\nPer set.",
         "labels": {"kind": "postgresql", "set": "auth"}, "value": 5400.5},
        {"name": "runbook_backup_age_seconds", "help": "Age of the newest backup.\nPer set.",
         "labels": {"kind": "redis", "set": 'odd "set" \\\nname'}, "value": 1},
        {"name": "runbook_backup_rpo_seconds", "help": "RPO.", "labels": {"kind": "postgresql", "set": "auth"},
         "value": "inf"},
    ]))
    samples = parsed_samples(with_time(render_prometheus(got, PLACEHOLDER), STAMP))
    common = (("platform", 'lab "one" \\ two'), ("runbook_job", "daily_check"))

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(common + tuple(labels.items()))))]

    for source in ("k8s_health", "pg_health", "redis_health"):
        assert [value("runbook_findings", source=source, severity=s) for s in SEVERITIES] == {
            "k8s_health": [0, 0, 0, 0, 1], "pg_health": [0, 0, 0, 0, 1], "redis_health": [0, 0, 0, 1, 0]}[source]
    assert [value("runbook_check_status", source=s) for s in ("k8s_health", "pg_health", "redis_health")] == [4, 4, 3]
    assert value("runbook_last_run_timestamp_seconds") == float(STAMP.epoch)
    assert value("runbook_backup_age_seconds", kind="postgresql", set="auth") == 5400.5
    assert value("runbook_backup_age_seconds", kind="redis", set='odd "set" \\\nname') == 1
    assert value("runbook_backup_rpo_seconds", kind="postgresql", set="auth") == float("inf")
    assert len(samples) == 3 * 5 + 3 + 1 + 3


def test_status_values_are_the_ranking():
    for rank, severity in enumerate(SEVERITIES):
        got = report([{"name": "A", "source": "a", "findings": [{"severity": severity, "check": "c", "message": "m"}]}])
        assert parsed_samples(render_prometheus(got, STAMP))[
            ("runbook_check_status", (("platform", ""), ("runbook_job", "runbook"), ("source", "a")))] == rank


# --------------------------------------------------------------------------- the example alert rules

ALERTS = REPO / "extensions" / "prometheus" / "runbook-alerts.yml"


def balanced(expr: str) -> bool:
    stack = []
    pairs = {")": "(", "]": "[", "}": "{"}
    for char in re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr):
        if char in "([{":
            stack.append(char)
        elif char in pairs:
            if not stack or stack.pop() != pairs[char]:
                return False
    return not stack


def test_alert_rules_use_only_metrics_the_textfile_writes():
    rules = yaml.safe_load(ALERTS.read_text())
    got = report([{"name": "A", "source": "a", "findings": []}], job="daily_check", metrics=[
        {"name": "runbook_backup_age_seconds", "labels": {"kind": "redis", "set": "cache"}, "value": 60},
        {"name": "runbook_backup_rpo_seconds", "labels": {"kind": "redis", "set": "cache"}, "value": 3600}])
    written = {family.name for family in text_string_to_metric_families(render_prometheus(got, STAMP))}
    labels_written = {"platform", "runbook_job", "source", "severity", "kind", "set"}
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert {rule["alert"] for rule in alerts} == {
        "RunbookCriticalFindings", "RunbookCheckUnknown", "RunbookDailyCheckNotRun", "RunbookBackupOlderThanRPO"}
    for rule in alerts:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert balanced(rule["expr"]), rule["alert"]
        bare = re.sub(r"\{[^}]*\}|\b(?:by|on|without|ignoring|group_left|group_right)\s*\([^)]*\)", " ", rule["expr"])
        metrics = set(re.findall(r"\b[a-z_:][a-z0-9_:]*\b(?!\s*\()", bare)) - {"by", "on", "group_left", "and", "or"}
        assert all(name.startswith("runbook_") for name in metrics), (rule["alert"], metrics)
        assert metrics and metrics <= written, (rule["alert"], metrics - written)
        selectors = re.findall(r"\b(?:by|on)\s*\(([^)]*)\)|\{([^}]*)\}", rule["expr"])
        used = {name.strip().split("=")[0] for pair in selectors for part in pair for name in part.split(",") if name.strip()}
        assert used <= labels_written, (rule["alert"], used - labels_written)
        assert rule["labels"]["severity"] in ("warning", "critical")
        for text in rule["annotations"].values():
            assert balanced(text), rule["alert"]


def test_an_age_counts_from_its_moment_and_moves_with_the_time_only():
    sections = [{"name": "A", "source": "a", "findings": []}]
    metric = {"name": "runbook_backup_age_seconds", "labels": {"set": "auth"}, "since": "2026-11-24T08:00:00Z"}
    got = report(sections, metrics=[metric])
    template = render_prometheus(got, PLACEHOLDER)
    at_nine = with_time(template, STAMP)
    assert 'set="auth"} 3600\n' in at_nine
    assert same_but_time(template, at_nine.replace("} 3600\n", "} 7200\n"))
    newer = render_prometheus(report(sections, metrics=[dict(metric, since="2026-11-24T08:30:00Z")]), PLACEHOLDER)
    # A new backup is a new moment: the same age text, but a different rendering.
    assert newer != template
    assert json.loads(render_json(got, STAMP))["metrics"] == [
        {"name": "runbook_backup_age_seconds", "help": "", "labels": {"set": "auth"}, "since": "2026-11-24T08:00:00Z"}]
    with pytest.raises(RunbookError, match=re.escape("metrics[0].since")):
        options(sections, metrics=[dict(metric, since="last night")])
