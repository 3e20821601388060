"""The severity filters roles use (runbook.ops.worst_severity, runbook.ops.severity_at_least): the
ranking of _findings.py, reached from Jinja, and clear errors for what is not a severity."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.runbook.ops.plugins.filter import severity
from ansible_collections.runbook.ops.plugins.module_utils._findings import SEVERITIES, finding
from tests.harness.collection import REPO, ansible_env


def test_worst_of_names_findings_and_results():
    assert severity.worst_severity(["ok", "warning", "info"]) == "warning"
    # unknown (could not check) ranks above warning: it never reads as healthy.
    assert severity.worst_severity(["warning", "unknown"]) == "unknown"
    findings = [finding("ok", "pods", "Pod/a/b", "fine"), finding("critical", "pods", "Pod/a/c", "crash loop")]
    assert severity.worst_severity(findings) == "critical"
    assert severity.worst_severity([{"status": "info", "findings": []}, {"status": "ok"}]) == "info"
    assert severity.worst_severity([]) == "ok" and severity.worst_severity(None) == "ok"
    assert severity.worst_severity("warning") == "warning"


@pytest.mark.parametrize("status", SEVERITIES)
@pytest.mark.parametrize("level", ("never",) + SEVERITIES)
def test_at_least_follows_the_one_ranking(status, level):
    expected = level != "never" and SEVERITIES.index(status) >= SEVERITIES.index(level)
    assert severity.severity_at_least(status, level) is expected


def test_at_least_reads_findings_and_results():
    assert severity.severity_at_least(finding("critical", "x", "X/y", "m"), "warning") is True
    assert severity.severity_at_least({"status": "ok"}, "info") is False


@pytest.mark.parametrize("bad", [["ok", "fatal"], [{"message": "no severity"}], [3], 3])
def test_worst_refuses_what_is_not_a_severity(bad):
    with pytest.raises(AnsibleFilterError, match="worst_severity"):
        severity.worst_severity(bad)


def test_at_least_refuses_an_unknown_level_or_severity():
    with pytest.raises(AnsibleFilterError, match="level 'high'"):
        severity.severity_at_least("ok", "high")
    with pytest.raises(AnsibleFilterError, match="'bad' is not a severity"):
        severity.severity_at_least("bad", "warning")


def test_filters_are_reachable_by_their_names_from_a_playbook(tmp_path):
    """The names roles use resolve through Ansible's collection loader, not only as Python functions."""
    playbook, out = tmp_path / "filters.yml", tmp_path / "out.json"
    playbook.write_text("""
- name: Use the severity filters
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Rank
      ansible.builtin.copy:
        dest: "%s"
        mode: "0600"
        content: "{{ {'worst': [{'status': 'warning'}, {'status': 'unknown'}, {'status': 'ok'}] | runbook.ops.worst_severity,
                      'reaches': 'unknown' | runbook.ops.severity_at_least('warning'),
                      'never': 'critical' | runbook.ops.severity_at_least('never')} | to_json }}"
""" % out)
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "ansible-playbook"), "-i", "localhost,", "-c", "local",
                           "-e", "ansible_python_interpreter=%s" % sys.executable, str(playbook)],
                          capture_output=True, text=True, env=ansible_env(), check=False, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert json.loads(out.read_text()) == {"worst": "unknown", "reaches": True, "never": False}
