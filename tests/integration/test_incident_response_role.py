"""The incident_response role through playbooks/incident_response.yml against a Kubernetes API whose Pods
KWOK runs and whose container logs KWOK serves: breach then release (evidence complete, custody re-proven,
containment undone exactly), jwt_compromise (only new keys published, consumers restarted), brute_force
from a seeded log then release (exactly the added entries removed).

Each test describes its own small platform (one namespace) in a temporary inventory."""

from __future__ import annotations

import datetime
import json
import typing as t
from pathlib import Path

import pytest
import yaml

from tests.harness import kwok
from tests.harness.collection import REPO, run_module, run_playbook
from tests.harness.k8s import service, wait_for, without_server_fields
from tests.harness.platforms import workload_body

from ansible_collections.runbook.ops.plugins.module_utils._k8s import K8sError, resource_path
from ansible_collections.runbook.ops.plugins.module_utils._repository import Repository

PLAYBOOK = REPO / "playbooks" / "incident_response.yml"
ING = ("networking.k8s.io/v1", "ingresses")
DENYLIST = "nginx.ingress.kubernetes.io/denylist-source-range"
FAILURES = {"203.0.113.7": 30, "198.51.100.4": 20, "192.0.2.99": 6}
SECRET_VALUE = "ir-s3cret-value-never-in-evidence"


class Platform(t.NamedTuple):
    name: str
    namespace: str
    inventory: Path
    repo: Path
    work: Path


def _auth_line(address: str) -> str:
    return json.dumps({"level": "warn", "msg": "authentication_failed", "client_ip": address})


def _served(admin, ns: str) -> bool:
    pods = admin.list("v1", "pods", ns, label_selector="app=auth-service")
    try:
        for pod in pods:
            admin.request("GET", resource_path("v1", "pods", ns, pod["metadata"]["name"], "log"),
                          {"container": "auth-service", "limitBytes": 64}, raw=True, retry=False)
    except K8sError:
        return False
    return bool(pods)


@pytest.fixture
def platform(tmp_path, kube_cluster, kube_admin, kube_namespace, age_key) -> t.Iterator[Platform]:
    ns = kube_namespace
    now = datetime.datetime.now(datetime.timezone.utc)
    lines = [_auth_line(a) for a, count in FAILURES.items() for _repeat in range(count)]
    log = kwok.write_cri_log(tmp_path / "logs" / "auth.log", lines, start=now - datetime.timedelta(minutes=5), step=0.01)
    kwok.container_logs(kube_admin, "ir-%s" % ns, {"auth-service": log, "worker": log}, namespaces=[ns])
    for name, replicas in (("auth-service", 2), ("worker", 1)):
        plural, body = workload_body(ns, {"kind": "Deployment", "name": name, "app": name, "replicas": replicas, "port": 8080})
        kube_admin.create("apps/v1", plural, body, ns)
        kube_admin.create("v1", "services", service(name, ns, {"app": name}), ns)
    kube_admin.create("networking.k8s.io/v1", "networkpolicies", {
        "metadata": {"name": "allow-auth", "namespace": ns},
        "spec": {"podSelector": {"matchLabels": {"app": "auth-service"}}, "policyTypes": ["Ingress"], "ingress": [{}]}}, ns)
    kube_admin.create("v1", "secrets", {"metadata": {"name": "db", "namespace": ns}, "type": "Opaque",
                                        "stringData": {"password": SECRET_VALUE}}, ns)
    kube_admin.create(*ING, body={"metadata": {"name": "web", "namespace": ns, "annotations": {DENYLIST: "192.0.2.0/24"}},
                                  "spec": {"ingressClassName": "nginx", "rules": [{"host": "web.example.test", "http": {
                                      "paths": [{"path": "/", "pathType": "Prefix", "backend": {
                                          "service": {"name": "auth-service", "port": {"number": 8080}}}}]}}]}}, namespace=ns)
    for name in ("auth-service", "worker"):
        wait_for(lambda n=name: kwok.rolled_out(kube_admin, "deployments", ns, n), timeout=90, what="%s rolled out" % name)
    wait_for(lambda: _served(kube_admin, ns), timeout=60, what="KWOK serves the auth-service logs")
    name = "ir-%s" % ns
    described = {
        "name": name, "kubernetes": kube_cluster.auth(), "namespaces": [ns],
        "workloads": [{"kind": "Deployment", "name": "auth-service"}, {"kind": "Deployment", "name": "worker"}],
        "signing_keys": [{"secret_name": "jwt-keys", "options": {"algorithm": "ES256", "public_jwks": {"name": "jwks"}}}],
        "repository": {"repository": "file://%s" % (tmp_path / "repo"), "encryption_recipients": [age_key.recipient],
                       "encryption_identity": age_key.identity},
    }
    inventory = tmp_path / "inventory"
    (inventory / "host_vars").mkdir(parents=True)
    (inventory / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": {"platforms": {"hosts": {name: None}}}}}))
    (inventory / "host_vars" / ("%s.yml" % name)).write_text(yaml.safe_dump({"runbook_platform": described}))
    try:
        yield Platform(name, ns, inventory, tmp_path / "repo", tmp_path / "work")
    finally:
        kube_admin.delete(kwok.API, "clusterlogs", "ir-%s" % ns, missing_ok=True)


def respond(p: Platform, scenario: str, incident: str, **extra: t.Any):
    variables = {"incident_response_scenario": scenario, "incident_response_incident_id": incident,
                 "incident_response_record_dir": str(p.work), "incident_response_report_dir": str(p.work),
                 "awx_user_name": "oncall"}
    variables.update(extra)
    proc = run_playbook(PLAYBOOK, variables, inventory=str(p.inventory), timeout=600)
    assert "Traceback" not in proc.stdout
    return proc


def recap_changed(output: str) -> int:
    line = [line for line in output.splitlines() if " : ok=" in line][-1]
    return int(line.split("changed=")[1].split()[0])


def snapshot(admin, ns: str) -> dict:
    """The namespace's NetworkPolicies, Services, Deployments and Ingresses minus server-owned fields."""
    kinds = (("networking.k8s.io/v1", "networkpolicies"), ("v1", "services"), ("apps/v1", "deployments"), ING)
    return {plural: {o["metadata"]["name"]: without_server_fields(o) for o in admin.list(api, plural, ns)} for api, plural in kinds}


def pod_labels(admin, ns: str) -> t.Dict[str, dict]:
    return {p["metadata"]["name"]: p["metadata"].get("labels") or {} for p in admin.list("v1", "pods", ns)}


def test_breach_then_release(platform, kube_cluster, kube_admin, age_key):
    ns = platform.namespace
    before, labels_before = snapshot(kube_admin, ns), pod_labels(kube_admin, ns)
    nodes = sorted({p["spec"]["nodeName"] for p in kube_admin.list("v1", "pods", ns)})
    assert all(not kube_admin.get("v1", "nodes", n)["spec"].get("unschedulable") for n in nodes)

    proc = respond(platform, "breach", "inc-br-1", incident_response_cordon_nodes=True)
    assert proc.returncode == 0, proc.stdout
    assert SECRET_VALUE not in proc.stdout
    record = json.loads((platform.work / ("%s-inc-br-1.json" % platform.name)).read_text())
    assert record["isolated"] == [ns] and record["cordoned"] == nodes, record
    ev = record["evidence"][ns]
    # Contained: the deny policy, the other policy out of play, the nodes cordoned; no Pod deleted.
    policies = {o["metadata"]["name"] for o in kube_admin.list("networking.k8s.io/v1", "networkpolicies", ns)}
    assert "runbook-isolate-inc-br-1" in policies
    assert all(kube_admin.get("v1", "nodes", n)["spec"].get("unschedulable") for n in nodes)
    assert set(pod_labels(kube_admin, ns)) == set(labels_before)
    # The evidence is complete and its custody re-proves.
    repo = Repository.from_options({"repository": "file://%s" % platform.repo})
    manifest = repo.get("evidence", ev["set"], ev["backup_id"])
    names = {f["name"] for f in manifest["evidence"]["files"]}
    assert {"pods.json", "events.json", "networkpolicies.json", "serviceaccounts.json", "rolebindings.json",
            "nodes.json"} <= names
    assert len([n for n in names if n.startswith("logs__")]) == 3
    assert manifest["evidence"]["collector"]["awx_user_name"] == "oncall"
    verified = run_module("k8s_evidence", dict(state="verified", repository="file://%s" % platform.repo, set=ev["set"],
                                               backup_id=ev["backup_id"], encryption_identity=age_key.identity))
    assert not verified.get("failed") and verified["verified"][0]["level"] == "decrypt", verified
    report = json.loads((platform.work / ("%s-inc-br-1-breach.json" % platform.name)).read_text())
    assert [s["source"] for s in report["sections"]][:2] == ["evidence", "isolate"]
    assert (platform.work / ("%s-inc-br-1-breach.md" % platform.name)).exists()

    again = respond(platform, "breach", "inc-br-1", incident_response_cordon_nodes=True)
    assert again.returncode == 0 and recap_changed(again.stdout) == 0, again.stdout

    released = respond(platform, "release", "inc-br-1")
    assert released.returncode == 0, released.stdout
    assert snapshot(kube_admin, ns) == before
    assert pod_labels(kube_admin, ns) == labels_before
    assert all(not kube_admin.get("v1", "nodes", n)["spec"].get("unschedulable") for n in nodes)
    # The evidence is kept, with the release's custody proof appended.
    assert repo.get("evidence", ev["set"], ev["backup_id"])["id"] == ev["backup_id"]
    custody = [json.loads(line) for line in (repo.read_sidecar(manifest, "custody.jsonl") or b"").splitlines()]
    assert [r["event"] for r in custody[-2:]] == ["verified", "verified"]
    second = respond(platform, "release", "inc-br-1")
    assert recap_changed(second.stdout) == 0, second.stdout[-8000:]


def _published_kids(admin, ns: str) -> t.List[str]:
    return [k["kid"] for k in json.loads(admin.get("v1", "configmaps", "jwks", ns)["data"]["jwks.json"])["keys"]]


def _restarted_at(admin, ns: str, name: str) -> t.Optional[str]:
    template = admin.get("apps/v1", "deployments", name, ns)["spec"]["template"]
    return (template["metadata"].get("annotations") or {}).get("kubectl.kubernetes.io/restartedAt")


def test_jwt_compromise_publishes_only_new_keys_and_restarts_consumers(platform, kube_cluster, kube_admin):
    ns = platform.namespace
    first = run_module("jwt_rotate", dict(kube_cluster.auth(), namespace=ns, secret_name="jwt-keys", algorithm="ES256",
                                          public_jwks={"name": "jwks"}))
    assert not first.get("failed"), first
    old = _published_kids(kube_admin, ns)
    assert old and all(_restarted_at(kube_admin, ns, n) is None for n in ("auth-service", "worker"))

    proc = respond(platform, "jwt_compromise", "inc-jwt-1")
    assert proc.returncode == 0, proc.stdout
    new = _published_kids(kube_admin, ns)
    assert len(new) == 1 and not set(new) & set(old), (old, new)
    assert all(_restarted_at(kube_admin, ns, n) for n in ("auth-service", "worker"))
    again = respond(platform, "jwt_compromise", "inc-jwt-1")
    assert again.returncode == 0 and recap_changed(again.stdout) == 0, again.stdout
    assert _published_kids(kube_admin, ns) == new


def test_brute_force_blocks_the_top_addresses_and_release_removes_exactly_those(platform, kube_admin):
    ns = platform.namespace
    before = kube_admin.get(*ING, name="web", namespace=ns)["metadata"]["annotations"]
    proc = respond(platform, "brute_force", "inc-bf-9",
                   incident_response_brute_force_sources=[{"label_selector": "app=auth-service", "container": "auth-service"}],
                   incident_response_brute_force_options={"top": 2, "min_failures": 10})
    assert proc.returncode == 0, proc.stdout
    annotations = kube_admin.get(*ING, name="web", namespace=ns)["metadata"]["annotations"]
    entries = [e.strip() for e in annotations[DENYLIST].split(",")]
    assert entries == ["192.0.2.0/24", "203.0.113.7/32", "198.51.100.4/32"], entries
    record = json.loads((platform.work / ("%s-inc-bf-9.json" % platform.name)).read_text())
    assert record["blocked"] == [ns] and record["evidence"][ns]["backup_id"]

    released = respond(platform, "release", "inc-bf-9")
    assert released.returncode == 0, released.stdout
    assert kube_admin.get(*ING, name="web", namespace=ns)["metadata"]["annotations"] == before
