"""playbooks/daily_check.yml against a lab of its own (the three platforms of inventories/lab), under
--check, with a read-only identity: a Kubernetes token bound to a ClusterRole that may only get, list
and watch, and a PostgreSQL role that is only a member of pg_monitor. Every seeded fault of each
platform is found; the JUnit, Prometheus and HTML outputs are read back."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import typing as t
import xml.etree.ElementTree as ET
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness.collection import REPO, run_playbook
from tests.harness.k8s import RESTRICTED_TOKEN, RESTRICTED_USER, KubeCluster
from tests.harness.private_lab import lab_with_inventory

PLATFORMS = ("rust-security", "hungryhippaahneties", "personapass")
FORMATS = {"markdown": "md", "html": "html", "json": "json", "junit": "xml", "prometheus": "prom"}
FAILING = ("warning", "unknown", "critical")

# What the lab seeds and the daily check must find, as (section source, check, object, severity).
SEEDED_FAULTS = {
    "rust-security": [
        # The auth-service certificate has 20 days left (renewal is due below 30).
        ("k8s_health", "certificates", "Certificate/rust-security/auth-service-tls", "warning"),
        ("cert_renew", "certificates", "Certificate/rust-security/auth-service-tls", "warning"),
        # The signing-key Secret holds no key set: a rotation is due.
        ("jwt_rotate", "signing_key_rotation", "Secret/rust-security/jwt-signing-keys", "warning"),
        # No backup within the RPO (1h) for any set.
        ("backup_repo_info", "backup_freshness", "BackupSet/postgresql/rust-security-auth_service", "critical"),
        ("backup_repo_info", "backup_freshness", "BackupSet/redis/rust-security-redis", "critical"),
        ("backup_repo_info", "backup_freshness", "BackupSet/kubernetes/rust-security-kubernetes", "critical"),
    ],
    "hungryhippaahneties": [
        # platform_faults: a crash-looping worker whose Service was never created.
        ("k8s_health", "workloads", "Deployment/hungryhippaahneties/audit-shipper", "critical"),
        ("k8s_health", "pods", "Pod/hungryhippaahneties/audit-shipper-*", "critical"),
        ("k8s_health", "expected_objects", "Service/hungryhippaahneties/audit-shipper", "critical"),
        ("backup_repo_info", "backup_freshness",
         "BackupSet/postgresql/hungryhippaahneties-hungryhippaahneties_db", "critical"),
        ("backup_repo_info", "backup_freshness", "BackupSet/redis/hungryhippaahneties-redis", "critical"),
        ("backup_repo_info", "backup_freshness", "BackupSet/kubernetes/hungryhippaahneties-kubernetes", "critical"),
    ],
    "personapass": [
        # JWT_SECRET was set by hand and never rotated: no key set records its age, so a rotation is due.
        ("jwt_rotate", "signing_key_rotation", "Secret/personapass/personapass-secrets", "warning"),
        ("backup_repo_info", "backup_freshness", "BackupSet/postgresql/personapass-personapass", "critical"),
        ("backup_repo_info", "backup_freshness", "BackupSet/redis/personapass-redis", "critical"),
        ("backup_repo_info", "backup_freshness", "BackupSet/kubernetes/personapass-kubernetes", "critical"),
    ],
}


class Lab(t.NamedTuple):
    root: Path
    inventory: Path
    state: dict
    cluster: KubeCluster


@pytest.fixture(scope="module")
def lab() -> t.Iterator[Lab]:
    """A lab of this module's own: its services on free ports under a temporary directory, and an
    inventory that is the lab inventory with this lab's connection facts."""
    with lab_with_inventory("runbook-daily-check-") as (root, inventory):
        state = json.loads((root / "lab" / "lab.json").read_text())
        yield Lab(root, inventory, state, KubeCluster.attach(root / "lab" / "kubernetes"))


@pytest.fixture(scope="module")
def read_only(lab: Lab) -> dict:
    """Extra vars replacing the lab's admin identities with read-only ones."""
    admin = lab.cluster.client()
    rule = {"apiGroups": ["*"], "resources": ["*"], "verbs": ["get", "list", "watch"]}
    admin.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                 "metadata": {"name": "runbook-read-only"}, "rules": [rule]})
    admin.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                 "metadata": {"name": "runbook-read-only"},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "runbook-read-only"},
                 "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": RESTRICTED_USER}]})
    password = secrets.token_urlsafe(18)
    with psycopg.connect(host="127.0.0.1", port=lab.state["pg_port"], user="postgres", dbname="postgres",
                         password=lab.state["pg_password"], autocommit=True) as conn:
        conn.execute("create role runbook_monitor login password '%s' in role pg_monitor" % password)
    ca = str(lab.root / "lab" / "ca" / "ca.crt")
    return {
        "lab_k8s_auth": lab.cluster.auth(RESTRICTED_TOKEN),
        "lab_pg_login": {"login_host": "localhost", "login_port": lab.state["pg_port"], "login_user": "runbook_monitor",
                         "login_password": password, "ssl_mode": "verify-full", "ca_cert": ca},
    }


def outputs(directory: Path) -> dict:
    return {fmt: "%s/{{ runbook_platform.name }}/daily-check.%s" % (directory, ext) for fmt, ext in FORMATS.items()}


@pytest.fixture(scope="module")
def checked(lab: Lab, read_only: dict) -> t.Tuple[subprocess.CompletedProcess, Path]:
    reports = lab.root / "reports"
    proc = run_playbook(REPO / "playbooks" / "daily_check.yml", inventory=str(lab.inventory), check=True,
                        extra_vars=dict(read_only, daily_check_outputs=outputs(reports)))
    return proc, reports


def report(reports: Path, platform: str, fmt: str) -> str:
    return (reports / platform / ("daily-check.%s" % FORMATS[fmt])).read_text()


def findings_of(reports: Path, platform: str) -> t.List[dict]:
    data = json.loads(report(reports, platform, "json"))
    return [dict(f, source=s["source"]) for s in data["sections"] for f in s["findings"]]


def matches(finding: dict, source: str, check: str, obj: str) -> bool:
    same_object = finding["object"].startswith(obj[:-1]) if obj.endswith("*") else finding["object"] == obj
    return finding["source"] == source and finding["check"] == check and same_object


def test_every_seeded_fault_is_found_read_only_under_check(checked):
    proc, reports = checked
    # Critical findings fail the play at daily_check_fail_on (critical) - after the reports are written.
    assert proc.returncode == 2, proc.stdout[-4000:]
    for platform in PLATFORMS:
        assert "Daily check of %s is critical" % platform in proc.stdout, proc.stdout[-4000:]
        found = findings_of(reports, platform)
        for source, check, obj, severity in SEEDED_FAULTS[platform]:
            hits = [f for f in found if matches(f, source, check, obj)]
            assert hits and all(f["severity"] == severity for f in hits), (platform, source, obj, hits)
        # The read-only identity can read everything the check needs: nothing is "unknown".
        assert not [f for f in found if f["severity"] == "unknown"], [f for f in found if f["severity"] == "unknown"]
        # The expected objects of the platform description were looked at.
        assert any(f["check"] == "expected_objects" for f in found)


def test_nothing_was_written_to_the_platform(checked, lab: Lab):
    _proc, _reports = checked
    admin = lab.cluster.client()
    keys = admin.get("v1", "secrets", "jwt-signing-keys", "rust-security")
    assert set(keys["data"]) == {"kid"}, "check mode must not write a key set"
    cert = admin.get("cert-manager.io/v1", "certificates", "auth-service-tls", "rust-security")
    assert not [c for c in cert["status"].get("conditions", []) if c["type"] == "Issuing"]


def test_junit_failures_are_the_failing_findings(checked):
    _proc, reports = checked
    for platform in PLATFORMS:
        root = ET.fromstring(report(reports, platform, "junit"))
        failing = [f for f in findings_of(reports, platform) if f["severity"] in FAILING]
        assert int(root.get("failures")) == len(failing) == len(root.findall(".//testcase/failure")) > 0


def test_prometheus_textfile_parses_with_backup_age_and_rpo(checked):
    _proc, reports = checked
    for platform in PLATFORMS:
        families = {f.name: f for f in text_string_to_metric_families(report(reports, platform, "prometheus"))}
        ages = {s.labels["set"]: s.value for s in families["runbook_backup_age_seconds"].samples}
        rpos = {s.labels["set"]: s.value for s in families["runbook_backup_rpo_seconds"].samples}
        assert len(ages) == 3 and all(v == float("inf") for v in ages.values()), ages
        assert rpos == {name: 3600.0 for name in ages}
        critical = [s for s in families["runbook_findings"].samples
                    if s.labels["severity"] == "critical" and s.labels["platform"] == platform]
        assert sum(s.value for s in critical) >= 3


def test_html_shows_the_header_and_the_critical_findings(checked, tmp_path):
    _proc, reports = checked
    page = report(reports, "hungryhippaahneties", "html")
    assert "Daily check: hungryhippaahneties" in page and "critical" in page.lower()
    for needle in ("audit-shipper", "expected to exist, not found", "no complete backup"):
        assert needle in page, needle
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "chromium is not installed: run scripts/bootstrap"
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          (reports / "hungryhippaahneties" / "daily-check.html").as_uri()],
                         capture_output=True, text=True, timeout=120, check=False, env=dict(os.environ, HOME=str(tmp_path)))
    assert "<title>Daily check: hungryhippaahneties: critical</title>" in dom.stdout, dom.stdout[:500]
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1000,900",
                    "--screenshot=%s" % shot, (reports / "hungryhippaahneties" / "daily-check.html").as_uri()],
                   capture_output=True, text=True, timeout=120, check=False, env=dict(os.environ, HOME=str(tmp_path)))
    assert shot.exists() and shot.stat().st_size > 10000


def test_a_source_that_cannot_log_in_is_critical_not_ok(lab: Lab, read_only: dict, tmp_path):
    wrong = dict(read_only["lab_pg_login"], login_password="not-the-password")
    proc = run_playbook(REPO / "playbooks" / "daily_check.yml", inventory=str(lab.inventory), check=True,
                        extra_vars=dict(read_only, lab_pg_login=wrong, runbook_hosts="personapass",
                                        daily_check_fail_on="never", daily_check_outputs=outputs(tmp_path)))
    assert proc.returncode == 0, proc.stdout[-4000:]
    pg = [f for f in findings_of(tmp_path, "personapass") if f["source"] == "pg_health"]
    assert pg and any(f["severity"] == "critical" for f in pg), pg
    assert "not-the-password" not in (tmp_path / "personapass" / "daily-check.json").read_text()


def test_example_inventory_validates_with_vault_values(tmp_path):
    playbook = tmp_path / "load.yml"
    playbook.write_text("""---
- name: Load the example platforms
  hosts: platforms
  gather_facts: false
  roles:
    - role: runbook.ops.platform
  tasks:
    - name: Keep the validated description
      ansible.builtin.copy:
        content: "{{ runbook_platform | to_json }}"
        dest: "%s/{{ inventory_hostname }}.json"
        mode: "0600"
""" % tmp_path)
    dummy = {"vault_pg_runbook_password": "dummy-pg", "vault_redis_password": "dummy-redis",
             "vault_backup_access_key": "dummy-ak", "vault_backup_secret_key": "dummy-sk",
             "vault_backup_age_identity": "AGE-SECRET-KEY-1DUMMY"}
    proc = run_playbook(playbook, inventory=str(REPO / "inventories" / "example"), extra_vars=dummy)
    assert proc.returncode == 0, proc.stdout[-3000:]
    platform = json.loads((tmp_path / "rust-security.json").read_text())
    assert platform["name"] == "rust-security" and platform["objectives"]["rpo"] == "24h"
    assert platform["databases"][0]["set"] == "rust-security-auth_service"
    assert platform["databases"][0]["connection"]["login_password"] == "dummy-pg"
    assert platform["repository"]["secret_key"] == "dummy-sk"
    assert [o["namespace"] for o in platform["expected_objects"]] == ["rust-security"] * 3
    # The secrets are in no file of the example inventory.
    text = "".join(p.read_text() for p in (REPO / "inventories" / "example").rglob("*.yml"))
    assert "dummy" not in text and "vault_pg_runbook_password" in text
