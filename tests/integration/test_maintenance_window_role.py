"""The maintenance_window role through playbooks/maintenance_window.yml, against services this test
session starts itself (PostgreSQL, and a Kubernetes API whose Pods KWOK runs): the guard outside the
window, a window that closes mid-run, a purge that removes exactly the expired rows, the cleanup of
a finished Pod, a once-per-window restart, and a failing restart rolled back with the closing
health check's new findings listed.

Each test describes its own small platform (one namespace, one database) in a temporary inventory,
so nothing depends on a lab started by anyone else.
"""

from __future__ import annotations

import json
import threading
import typing as t
import uuid
from pathlib import Path

import pytest
import yaml

from tests.harness import kwok
from tests.harness.fixtures import _Services
from tests.harness.services import PostgresServer
from tests.harness.collection import REPO, run_playbook
from tests.harness.k8s import wait_for
from tests.harness.platforms import workload_body

PLAYBOOK = REPO / "playbooks" / "maintenance_window.yml"
MONTHLY = {"name": "monthly", "weekdays": ["sunday"], "days_of_month": [1, 2, 3, 4, 5, 6, 7], "start": "02:00",
           "duration": "4h"}
# 2026-03-01 is the first Sunday of March: the window is open from 02:00 to 06:00.
IN_WINDOW = "2026-03-01T02:30:00Z"
OPENED = "2026-03-01T02:00:00Z"
EXPIRED, RECENT = 12, 5
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"


class Platform(t.NamedTuple):
    name: str
    namespace: str
    db: str
    inventory: Path
    repo: Path
    report: Path


@pytest.fixture(scope="module")
def postgres(harness_dir: Path) -> t.Iterator[PostgresServer]:
    """A PostgreSQL of this module's own: the opening health check judges the whole server (replication,
    slots, prepared transactions), and other tests leave such states on the session's shared server."""
    services = _Services(harness_dir)
    try:
        yield services.add(PostgresServer(services.workdir("pg-maintenance-window")))
    finally:
        services.stop_all()


@pytest.fixture
def platform(tmp_path, postgres, kube_cluster, kube_admin, kube_namespace, age_key) -> t.Iterator[Platform]:
    ns = kube_namespace
    db = "mw_%s" % uuid.uuid4().hex[:8]
    postgres.psql("create database %s" % db)
    postgres.psql("create table audit_events (id bigserial primary key, at timestamptz not null, payload text not null);"
                  "create index audit_events_at on audit_events (at);"
                  "insert into audit_events (at, payload) select now() - interval '200 days' - (g || ' hours')::interval,"
                  " 'old ' || g from generate_series(1, %d) g;"
                  "insert into audit_events (at, payload) select now() - (g || ' days')::interval, 'new ' || g"
                  " from generate_series(1, %d) g" % (EXPIRED, RECENT), db=db)
    plural, body = workload_body(ns, {"kind": "Deployment", "name": "auth-service", "app": "auth-service",
                                      "replicas": 2, "port": 8080})
    kube_admin.create("apps/v1", plural, body)
    wait_for(lambda: kwok.rolled_out(kube_admin, "deployments", ns, "auth-service"), timeout=90,
             what="auth-service rolled out")
    name = "mw-%s" % ns
    described = {
        "name": name, "kubernetes": kube_cluster.auth(), "namespaces": [ns],
        # Nodes are the session cluster's, shared with tests that cordon and drain them: the opening
        # check judges this platform's namespace only.
        "health": {"checks": ["workloads", "pods", "services", "pvcs", "events", "certificates", "jobs"]},
        "workloads": [{"kind": "Deployment", "name": "auth-service", "wait_timeout": 20, "restart_in_window": True}],
        "databases": [{"name": db, "connection": postgres.login,
                       "purge": [{"table": "audit_events", "column": "at", "older_than": "90d"}]}],
        "repository": {"repository": "file://%s" % (tmp_path / "repo"), "encryption_recipients": [age_key.recipient],
                       "encryption_identity": age_key.identity},
        "maintenance_windows": [MONTHLY],
    }
    inventory = tmp_path / "inventory"
    (inventory / "host_vars").mkdir(parents=True)
    (inventory / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": {"platforms": {"hosts": {name: None}}}}}))
    (inventory / "host_vars" / ("%s.yml" % name)).write_text(yaml.safe_dump({"runbook_platform": described}))
    try:
        yield Platform(name, ns, db, inventory, tmp_path / "repo", tmp_path / "report.json")
    finally:
        postgres.psql("drop database if exists %s with (force)" % db)


def run_window(p: Platform, now: str, **extra: t.Any):
    variables = {"maintenance_window_now": now, "maintenance_window_report_outputs": {"json": str(p.report)}}
    variables.update(extra)
    return run_playbook(PLAYBOOK, variables, inventory=str(p.inventory), timeout=600)


def rows(postgres, p: Platform) -> t.Tuple[int, int]:
    counts = postgres.psql("select count(*) filter (where at < now() - interval '90 days'), "
                           "count(*) filter (where at >= now() - interval '90 days') from audit_events", db=p.db)
    expired, recent = counts.split("|")
    return int(expired), int(recent)


def template(kube_admin, p: Platform) -> dict:
    return kube_admin.get("apps/v1", "deployments", "auth-service", p.namespace)["spec"]["template"]


def sections(p: Platform) -> t.Dict[str, t.List[dict]]:
    report = json.loads(p.report.read_text())
    return {s["name"]: s["findings"] for s in report["sections"]}


def attention(p: Platform) -> t.List[str]:
    """The report's findings that are not ok, for failure messages."""
    return ["%s: %s %s %s" % (name, f["severity"], f["object"], f["message"]) for name, found in sections(p).items()
            for f in found if f["severity"] != "ok"] if p.report.exists() else []


def recap_changed(output: str) -> int:
    line = [line for line in output.splitlines() if " : ok=" in line][-1]
    return int(line.split("changed=")[1].split()[0])


def test_outside_the_window_it_refuses_and_changes_nothing(platform, postgres, kube_admin):
    before = template(kube_admin, platform)
    proc = run_window(platform, "2026-03-10T12:00:00Z")  # a Tuesday
    assert proc.returncode != 0, proc.stdout
    assert "not starting the maintenance window" in proc.stdout, proc.stdout
    assert "the next window is monthly from 2026-04-05T02:00:00Z" in proc.stdout, proc.stdout
    assert rows(postgres, platform) == (EXPIRED, RECENT)
    assert template(kube_admin, platform) == before
    assert not platform.repo.exists() and not platform.report.exists()


def test_a_window_purges_exactly_the_expired_rows_cleans_up_and_restarts_once(platform, postgres, kube_admin):
    ns = platform.namespace
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "export", "namespace": ns},
           "spec": {"backoffLimit": 0, "template": {"metadata": {"labels": {"app": "export"}}, "spec": {
               "restartPolicy": "Never", "containers": [{"name": "export", "image": "registry.lab/export:1.0"}]}}}}
    kube_admin.create("batch/v1", "jobs", job, ns)

    def finished_pods() -> t.List[str]:
        return [p["metadata"]["name"] for p in kube_admin.list("v1", "pods", ns, label_selector="app=export")
                if (p.get("status") or {}).get("phase") == "Succeeded"]

    wait_for(finished_pods, timeout=60, what="the export Job's Pod Succeeded")
    old_pods = {p["metadata"]["name"] for p in kube_admin.list("v1", "pods", ns, label_selector="app=auth-service")}

    proc = run_window(platform, IN_WINDOW)
    assert proc.returncode == 0, (proc.stdout, attention(platform))
    assert rows(postgres, platform) == (0, RECENT)
    assert finished_pods() == []
    assert template(kube_admin, platform)["metadata"]["annotations"][RESTARTED_AT] == OPENED
    assert kwok.rolled_out(kube_admin, "deployments", ns, "auth-service")
    new_pods = {p["metadata"]["name"] for p in kube_admin.list("v1", "pods", ns, label_selector="app=auth-service")
                if not p["metadata"].get("deletionTimestamp")}
    assert len(new_pods) == 2 and not new_pods & old_pods
    manifests = list(platform.repo.glob("postgresql/*/*/manifest.json"))
    assert len(manifests) == 1 and list(platform.repo.glob("kubernetes/*/*/manifest.json"))
    found = sections(platform)
    purge = found["Purges"][0]
    assert purge["severity"] == "ok" and purge["details"]["deleted"] == EXPIRED, purge
    assert found["Fresh verified backup"] and all(f["severity"] == "ok" for f in found["Fresh verified backup"])

    # A second run in the same window: the backup made since the opening is reused, nothing is due,
    # nothing left to purge, the workload already carries this window's restart.
    again = run_window(platform, "2026-03-01T02:40:00Z")
    assert again.returncode == 0, (again.stdout, attention(platform))
    assert recap_changed(again.stdout) == 0, again.stdout
    assert len(list(platform.repo.glob("postgresql/*/*/manifest.json"))) == 1
    assert sections(platform)["Purges"][0]["details"]["deleted"] == 0


def test_a_window_that_closes_mid_run_skips_and_reports_the_later_steps(platform, postgres, kube_admin):
    before = template(kube_admin, platform)
    # Three seconds left: the backup starts, the steps after it find the window closed.
    proc = run_window(platform, "2026-03-01T05:59:57Z", maintenance_window_health=False)
    assert proc.returncode == 0, proc.stdout
    found = sections(platform)
    assert found["Fresh verified backup"][0]["severity"] == "ok", found
    for name in ("Database maintenance", "Purges", "Cleanup of finished Pods and failed Jobs", "Rolling restarts"):
        assert [f["message"] for f in found[name]] == ["skipped: window closed at 2026-03-01T06:00:00Z"], found
    assert rows(postgres, platform) == (EXPIRED, RECENT)
    assert template(kube_admin, platform) == before


def test_a_failing_restart_is_rolled_back_and_new_findings_are_listed(platform, kube_admin):
    ns = platform.namespace
    before = template(kube_admin, platform)
    before_rs = {rs["metadata"]["name"] for rs in kube_admin.list("apps/v1", "replicasets", ns)
                 if rs["spec"].get("replicas")}

    def break_something_after_the_opening_check() -> None:
        # The backup starts once the opening check is done: a Pod that crashloops from then on is new.
        wait_for(lambda: any(platform.repo.glob("*/*/*")), timeout=120, what="the window's backup started")
        kube_admin.create("v1", "pods", kwok.pod("worker", ns, fault="crashloop"), ns)

    breaker = threading.Thread(target=break_something_after_the_opening_check, daemon=True)
    breaker.start()
    # The restart carries a change that makes every new Pod crashloop.
    proc = run_window(platform, IN_WINDOW,
                      maintenance_window_restart_patch={"metadata": {"annotations": {kwok.FAULT_ANNOTATION: "crashloop"}}})
    breaker.join(timeout=5)
    assert proc.returncode != 0, proc.stdout
    assert "finished with failed steps" in proc.stdout and "restart" in proc.stdout, proc.stdout
    assert template(kube_admin, platform) == before
    wait_for(lambda: kwok.rolled_out(kube_admin, "deployments", ns, "auth-service"), timeout=60,
             what="auth-service back on its previous template")
    active_rs = {rs["metadata"]["name"] for rs in kube_admin.list("apps/v1", "replicasets", ns)
                 if rs["spec"].get("replicas")}
    assert active_rs == before_rs
    pods = kube_admin.list("v1", "pods", ns, label_selector="app=auth-service")
    assert pods and all(kwok.FAULT_ANNOTATION not in (p["metadata"].get("annotations") or {}) for p in pods
                        if not p["metadata"].get("deletionTimestamp"))
    found = sections(platform)
    restart = found["Rolling restarts"][0]
    assert restart["severity"] == "critical" and "rolled back" in restart["message"], restart
    new = found["New since the opening check"]
    assert any(f["object"] == "Pod/%s/worker" % ns and f["severity"] == "critical" for f in new), new
