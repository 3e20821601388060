"""findings_report run as Ansible runs it: files written atomically and only when their content
(the time aside) changes, check and diff modes, escaping, the JUnit and Prometheus files read back
with the tools that consume them, a playbook feeding it real registered results, and the HTML page
rendered by headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import struct
import subprocess
import typing as t
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import junitparser
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness.collection import run_module, run_playbook

FORMATS = ("markdown", "html", "json", "junit", "prometheus")
SUFFIX = {"markdown": "md", "html": "html", "json": "json", "junit": "xml", "prometheus": "prom"}
SCRIPT = "<script>document.title='pwned'</script>"
CRITICAL_RGB = (0xB7, 0x1C, 0x1C)  # SEVERITY_COLOURS["critical"] of _report.py


def finding(severity: str, check: str, obj: str, message: str) -> t.Dict[str, t.Any]:
    return {"severity": severity, "check": check, "object": obj, "message": message, "details": {}}


def params(tmp_path: Path, restarts: int = 7, now: str = "2026-11-24T09:00:00Z", **extra: t.Any) -> t.Dict[str, t.Any]:
    cluster = {"changed": False, "status": "critical", "msg": "cluster is critical", "findings": [
        finding("critical", "deployment_available", "Deployment/payments/auth-service", "0 of 3 ready " + SCRIPT),
        finding("warning", "pod_restarts", "Pod/payments/auth-1", "restarted %d times | twice\nlast: OOMKilled" % restarts),
        finding("ok", "node_ready", "Node/kwok-1", "ready"),
    ]}
    args = {
        "title": "Daily check: rust-security",
        "platform": "rust-security",
        "job": "daily_check",
        "now": now,
        "sections": [
            {"name": "Kubernetes cluster", "source": "k8s_health", "result": cluster},
            {"name": "PostgreSQL auth", "source": "pg_health", "result": {"failed": True, "msg": "connection refused"}},
            {"name": "Redis", "source": "redis_health", "result": {"skipped": True, "skip_reason": "no Redis"}},
            {"name": "Purge", "source": "pg_purge", "findings": [
                {"severity": "info", "check": "pg_purge.rows", "object": "Table/auth/audit_logs", "message": "12 rows"}]},
        ],
        "outputs": {fmt: str(tmp_path / ("report.%s" % SUFFIX[fmt])) for fmt in FORMATS},
        # An age counted from the backup's time: 5400 s at 09:00, and no change when only the time moves.
        "metrics": [{"name": "runbook_backup_age_seconds", "help": "Age of the newest complete backup of a set.",
                     "labels": {"kind": "postgresql", "set": "auth"}, "since": "2026-11-24T07:30:00Z"}],
    }
    args.update(extra)
    return args


def contents(tmp_path: Path) -> t.Dict[str, bytes]:
    return {fmt: (tmp_path / ("report.%s" % SUFFIX[fmt])).read_bytes() for fmt in FORMATS}


def test_writes_every_format_once_and_only_content_rewrites(tmp_path):
    first = run_module("findings_report", params(tmp_path))
    assert not first.get("failed") and first["changed"] is True, first
    assert first["status"] == "critical" and first["summary"] == {"ok": 1, "info": 2, "warning": 1, "unknown": 0, "critical": 2}
    assert [(f["severity"], f["source"]) for f in first["first"]] == [
        ("critical", "k8s_health"), ("critical", "pg_health"), ("warning", "k8s_health")]
    assert [(s["source"], s["status"]) for s in first["sections"]] == [
        ("k8s_health", "critical"), ("pg_health", "critical"), ("redis_health", "info"), ("pg_purge", "info")]
    assert {fmt: item["changed"] for fmt, item in first["files"].items()} == {fmt: True for fmt in FORMATS}
    for fmt in FORMATS:
        path = tmp_path / ("report.%s" % SUFFIX[fmt])
        assert stat.S_IMODE(path.stat().st_mode) == 0o640 and first["files"][fmt]["path"] == str(path)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "a temporary file was left behind"
    written = contents(tmp_path)
    assert b"2026-11-24T09:00:00Z" in written["markdown"]

    # The same findings an hour later: no report is rewritten, they keep their first time; the
    # textfile, which node_exporter serves as current, carries the new run time without a change.
    again = run_module("findings_report", params(tmp_path, now="2026-11-24T10:00:00Z"))
    assert again["changed"] is False and not any(item["changed"] for item in again["files"].values()), again
    later = contents(tmp_path)
    assert {fmt: later[fmt] == written[fmt] for fmt in FORMATS} == dict({fmt: True for fmt in FORMATS}, prometheus=False)
    assert later["prometheus"] == written["prometheus"].replace(b"} 1795510800\n", b"} 1795514400\n").replace(
        b"} 5400\n", b"} 9000\n"), "only the run time and the age moved"
    assert "already up to date" in again["msg"]

    # One finding's message changes: the reports are rewritten, with the new time.
    changed = run_module("findings_report", params(tmp_path, restarts=9, now="2026-11-24T11:00:00Z"))
    assert changed["changed"] is True
    assert {fmt for fmt, item in changed["files"].items() if item["changed"]} == {"markdown", "html", "json", "junit"}
    rewritten = contents(tmp_path)
    assert b"restarted 9 times" in rewritten["markdown"] and b"2026-11-24T11:00:00Z" in rewritten["markdown"]

    # A severity changes: now the counts change too.
    severity = params(tmp_path, restarts=9)
    severity["sections"][0]["result"]["findings"][1]["severity"] = "critical"
    assert run_module("findings_report", severity)["files"]["prometheus"]["changed"] is True

    # Only the mode differs: that is a change, and the content stays.
    before = contents(tmp_path)
    moded = run_module("findings_report", dict(severity, mode="0600"))
    assert moded["changed"] is True and contents(tmp_path) == before
    assert stat.S_IMODE((tmp_path / "report.md").stat().st_mode) == 0o600


def test_check_mode_writes_nothing_and_says_what_would_change(tmp_path):
    would = run_module("findings_report", params(tmp_path), check_mode=True)
    assert would["changed"] is True and "would write" in would["msg"]
    assert list(tmp_path.iterdir()) == []
    run_module("findings_report", params(tmp_path))
    written = contents(tmp_path)
    assert run_module("findings_report", params(tmp_path, now="2026-12-01T00:00:00Z"), check_mode=True)["changed"] is False
    other = run_module("findings_report", params(tmp_path, restarts=8), check_mode=True)
    assert other["changed"] is True and contents(tmp_path) == written


def test_diff_shows_markdown_and_json_only(tmp_path):
    run_module("findings_report", params(tmp_path))
    plain = run_module("findings_report", params(tmp_path, restarts=8))
    assert "diff" not in plain
    shown = run_module("findings_report", params(tmp_path, restarts=9), diff=True)
    assert [item["after_header"] for item in shown["diff"]] == [str(tmp_path / "report.md"), str(tmp_path / "report.json")]
    markdown = shown["diff"][0]
    assert "restarted 8 times" in markdown["before"] and "restarted 9 times" in markdown["after"]
    assert run_module("findings_report", params(tmp_path, restarts=9), diff=True).get("diff") is None


def test_every_value_is_escaped(tmp_path):
    run_module("findings_report", params(tmp_path))
    page = (tmp_path / "report.html").read_text()
    assert "<script" not in page.lower() and "&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt;" in page
    markdown = (tmp_path / "report.md").read_text()
    assert "<script>" not in markdown and "\\<script\\>" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| warning |"))
    # Four cells: the message's | and newline stay inside its cell.
    assert len(re.findall(r"(?<!\\)\|", row)) == 5 and row.endswith("twice<br>last: OOMKilled |")
    assert json.loads((tmp_path / "report.json").read_text())["sections"][0]["findings"][0]["message"].endswith(SCRIPT)


def test_junit_file_counts_failures(tmp_path):
    run_module("findings_report", params(tmp_path))
    path = tmp_path / "report.xml"
    root = ET.parse(path).getroot()
    assert {k: root.get(k) for k in ("tests", "failures", "errors", "skipped")} == {
        "tests": "6", "failures": "3", "errors": "0", "skipped": "1"}
    suites = {suite.name: suite for suite in junitparser.JUnitXml.fromfile(str(path))}
    assert list(suites) == ["daily_check.k8s_health", "daily_check.pg_health", "daily_check.redis_health",
                            "daily_check.pg_purge"]
    assert [(s.tests, s.failures, s.skipped) for s in suites.values()] == [(3, 2, 0), (1, 1, 0), (1, 0, 1), (1, 0, 0)]
    run_module("findings_report", params(tmp_path, junit_failure_level="critical"))
    assert ET.parse(path).getroot().get("failures") == "2"


def test_textfile_parses_and_counts_per_source(tmp_path):
    run_module("findings_report", params(tmp_path))
    families = {f.name: f for f in text_string_to_metric_families((tmp_path / "report.prom").read_text())}
    assert set(families) == {"runbook_findings", "runbook_check_status", "runbook_last_run_timestamp_seconds",
                             "runbook_backup_age_seconds"}
    findings = {(s.labels["source"], s.labels["severity"]): s.value for s in families["runbook_findings"].samples}
    assert len(findings) == 4 * 5 and findings[("pg_health", "critical")] == 1 and findings[("pg_health", "ok")] == 0
    assert all(s.labels["platform"] == "rust-security" and s.labels["runbook_job"] == "daily_check"
               for family in families.values() for s in family.samples)
    status = {s.labels["source"]: s.value for s in families["runbook_check_status"].samples}
    assert status == {"k8s_health": 4, "pg_health": 4, "redis_health": 1, "pg_purge": 1}
    assert families["runbook_last_run_timestamp_seconds"].samples[0].value == 1795510800
    age = families["runbook_backup_age_seconds"].samples[0]
    assert age.labels["set"] == "auth" and age.value == 5400


def test_refusals_are_clear(tmp_path):
    missing = run_module("findings_report", params(tmp_path, outputs={"markdown": str(tmp_path / "no-such-dir" / "r.md")}))
    assert missing.get("failed") and "directory %s does not exist" % (tmp_path / "no-such-dir") in missing["msg"]
    duplicate = params(tmp_path)
    duplicate["sections"][1]["source"] = "k8s_health"
    refused = run_module("findings_report", duplicate)
    assert refused.get("failed") and "sections[1].source 'k8s_health' is used by an earlier section" in refused["msg"]
    assert "Traceback" not in refused["msg"] and list(tmp_path.iterdir()) == []


def test_a_playbook_feeds_real_registered_results(tmp_path):
    """The roles' way: results registered with failed_when false, a skipped task, a loop."""
    playbook = tmp_path / "report.yml"
    playbook.write_text("""
- name: Report
  hosts: localhost
  gather_facts: false
  tasks:
    - name: A repository that does not exist
      runbook.ops.backup_repo_info:
        repository: "file://{{ out }}/no-such-repository"
      register: freshness
      failed_when: false
    - name: A check this platform does not have
      runbook.ops.redis_health:
        login_host: 127.0.0.1
      register: redis
      when: false
    - name: A loop with a failing item
      ansible.builtin.fail:
        msg: "{{ item }} is broken"
      loop: [cache, auth]
      when: item == 'auth'
      register: steps
      ignore_errors: true
    - name: Write the report
      runbook.ops.findings_report:
        title: Daily check
        job: daily_check
        sections:
          - {name: Backup freshness, source: backup_repo_info, result: "{{ freshness }}"}
          - {name: Redis, source: redis_health, result: "{{ redis }}"}
          - {name: Steps, source: steps, result: "{{ steps }}"}
        outputs:
          json: "{{ out }}/report.json"
      register: report
    - name: Show it
      ansible.builtin.copy:
        content: "{{ report | to_json }}"
        dest: "{{ out }}/result.json"
        mode: "0600"
""")
    proc = run_playbook(playbook, extra_vars={"out": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    sections = {s["source"]: s for s in result["sections"]}
    assert sections["backup_repo_info"]["status"] == "critical"  # the repository's critical finding is kept
    assert sections["redis_health"]["status"] == "info"
    document = json.loads((tmp_path / "report.json").read_text())
    steps = [(f["severity"], f["check"], f["object"], f["message"]) for f in document["sections"][2]["findings"]]
    assert steps == [("critical", "steps.failed", "auth", "auth is broken"),
                     ("info", "steps.skipped", "cache", "skipped: Conditional result was False")]
    assert document["sections"][1]["findings"][0]["message"].startswith("skipped: ")


# --------------------------------------------------------------------------- the page as a browser shows it

def png_pixels(data: bytes) -> t.Tuple[int, int, t.List[bytes]]:
    """Width, height and RGB(A) rows of an 8-bit RGB or RGBA PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour in (2, 6), (depth, colour)
    channels = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: t.List[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            left = line[x - channels] if x >= channels else 0
            up = previous[x]
            corner = previous[x - channels] if x >= channels else 0
            if kind == 1:
                line[x] = (line[x] + left) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + up) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (left + up) // 2) & 0xFF
            elif kind == 4:
                estimate = left + up - corner
                pa, pb, pc = abs(estimate - left), abs(estimate - up), abs(estimate - corner)
                line[x] = (line[x] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        rows.append(bytes(line if channels == 3 else bytes(b for i, b in enumerate(line) if i % 4 != 3)))
        previous = line
    return width, height, rows


def test_html_renders_in_headless_chromium(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "chromium is not installed: run scripts/bootstrap"
    run_module("findings_report", params(tmp_path))
    shot = tmp_path / "shot.png"
    # --no-sandbox: the suite runs as root in CI; the page has no script and a CSP forbidding any.
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--window-size=1000,700", "--screenshot=%s" % shot, (tmp_path / "report.html").as_uri()],
                          capture_output=True, text=True, timeout=120, check=False,
                          env=dict(os.environ, HOME=str(tmp_path)))
    assert shot.exists(), proc.stderr[-2000:]
    width, height, rows = png_pixels(shot.read_bytes())
    assert (width, height) == (1000, 700)
    colours = {row[x:x + 3] for row in rows[::10] for x in range(0, len(row), 30)}
    assert len(colours) > 5, "the screenshot is blank"
    # The header band is the critical colour (allowing for colour management rounding).
    band = [tuple(rows[y][x:x + 3]) for y in (5, 15) for x in range(0, width * 3, 150)]
    assert all(max(abs(a - b) for a, b in zip(pixel, CRITICAL_RGB)) <= 6 for pixel in band), band[:4]
    # And the script in a message never ran: its text is on the page, the title is still ours.
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          (tmp_path / "report.html").as_uri()], capture_output=True, text=True, timeout=120,
                         check=False, env=dict(os.environ, HOME=str(tmp_path)))
    assert "<title>Daily check: rust-security: critical</title>" in dom.stdout, dom.stdout[:500]
    assert "pwned</title>" not in dom.stdout and "&lt;script&gt;" in dom.stdout


@pytest.mark.parametrize("level, failures", [("warning", 3), ("critical", 2)])
def test_junit_failure_level(tmp_path, level, failures):
    run_module("findings_report", params(tmp_path, junit_failure_level=level))
    assert int(ET.parse(tmp_path / "report.xml").getroot().get("failures")) == failures
