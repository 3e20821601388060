"""k8s_evidence against a real kube-apiserver whose Pods KWOK runs and whose container logs KWOK serves:
what is captured and in which order, the custody records, re-proving them (k8s_evidence and
backup_repo), fetching, and tampering that breaks the proof."""

from __future__ import annotations

import hashlib
import json
import typing as t
from pathlib import Path

import pytest

from tests.harness import kwok
from tests.harness.collection import run_module
from tests.harness.k8s import deployment, wait_for

from ansible_collections.runbook.ops.plugins.module_utils._k8s import K8sError
from ansible_collections.runbook.ops.plugins.module_utils._repository import Repository

SECRET_VALUE = "ev1dence-s3cret-never-stored-42"


def evidence(cluster, check_mode: bool = False, env: t.Optional[dict] = None, **args: t.Any) -> dict:
    params = dict(cluster.auth())
    params.update(args)
    result = run_module("k8s_evidence", params, check_mode=check_mode, env=env)
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.fixture
def incident_ns(kube_cluster, kube_admin, kube_namespace, tmp_path) -> t.Iterator[str]:
    """A namespace with a running Deployment (its logs served), a ServiceAccount bound to a Role,
    a ClusterRoleBinding through the namespace's ServiceAccount group, a NetworkPolicy and a Secret."""
    ns = kube_namespace
    admin = kube_admin
    admin.create("v1", "serviceaccounts", {"metadata": {"name": "api-sa", "namespace": ns}}, ns)
    admin.create("rbac.authorization.k8s.io/v1", "roles", {"metadata": {"name": "read-secrets", "namespace": ns},
                 "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]}, ns)
    admin.create("rbac.authorization.k8s.io/v1", "rolebindings", {
        "metadata": {"name": "api-reads-secrets", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-secrets"},
        "subjects": [{"kind": "ServiceAccount", "name": "api-sa", "namespace": ns}]}, ns)
    admin.create("rbac.authorization.k8s.io/v1", "rolebindings", {
        "metadata": {"name": "someone-else", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-secrets"},
        "subjects": [{"kind": "User", "name": "alice"}]}, ns)
    crb = "ev-%s" % ns
    admin.create("rbac.authorization.k8s.io/v1", "clusterrolebindings", {
        "metadata": {"name": crb},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "Group", "name": "system:serviceaccounts:%s" % ns}]})
    admin.create("v1", "secrets", {"metadata": {"name": "db", "namespace": ns}, "type": "Opaque",
                                   "stringData": {"password": SECRET_VALUE}}, ns)
    admin.create("networking.k8s.io/v1", "networkpolicies", {
        "metadata": {"name": "allow-api", "namespace": ns},
        "spec": {"podSelector": {"matchLabels": {"app": "api"}}, "policyTypes": ["Ingress"], "ingress": [{}]}}, ns)
    body = deployment("api", ns, replicas=2)
    body["spec"]["template"]["spec"]["serviceAccountName"] = "api-sa"
    body["spec"]["template"]["spec"]["containers"].append({"name": "proxy", "image": "example/proxy:1.0"})
    logs = {c: kwok.write_cri_log(tmp_path / "logs" / ("%s.log" % c), ["%s line %d %s" % (c, i, ns) for i in range(5)])
            for c in ("app", "proxy")}
    kwok.container_logs(admin, "ev-%s" % ns, logs, namespaces=[ns])
    admin.create("apps/v1", "deployments", body, ns)
    wait_for(lambda: kwok.rolled_out(admin, "deployments", ns, "api"), timeout=90, what="api rolled out")
    wait_for(lambda: all(_log_served(admin, ns, p["metadata"]["name"]) for p in admin.list("v1", "pods", ns)),
             timeout=60, what="KWOK serves the containers' logs")
    try:
        yield ns
    finally:
        admin.delete("rbac.authorization.k8s.io/v1", "clusterrolebindings", crb, missing_ok=True)
        admin.delete("kwok.x-k8s.io/v1alpha1", "clusterlogs", "ev-%s" % ns, missing_ok=True)


def _log_served(admin, ns: str, pod: str) -> bool:
    try:
        admin.request("GET", "/api/v1/namespaces/%s/pods/%s/log" % (ns, pod), {"container": "proxy"}, raw=True, retry=False)
    except K8sError:
        return False
    return True


def _plain_files(directory: Path) -> t.Dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


def test_capture_verify_fetch_and_custody(kube_cluster, kube_admin, incident_ns, tmp_path, age_key):
    ns = incident_ns
    repo_options = {"repository": "file://%s" % (tmp_path / "repo")}
    common = dict(repo_options, namespace=ns, incident_id="inc-0101")

    checked = evidence(kube_cluster, check_mode=True, encryption_recipients=[age_key.recipient], **common)
    assert checked["changed"] is True and checked["backup_id"] is None, checked
    assert not (tmp_path / "repo").exists()

    result = evidence(kube_cluster, encryption_recipients=[age_key.recipient],
                      collector={"awx_user_name": "oncall", "note": "SEC-1"}, env={"JOB_ID": "4711"}, **common)
    assert not result.get("failed"), result
    assert result["changed"] is True and result["status"] == "ok", "\n".join(f["message"] for f in result["findings"])
    names = [f["name"] for f in result["files"]]
    pods = [p["metadata"]["name"] for p in kube_admin.list("v1", "pods", ns)]
    # Order of volatility: Pods first, then their logs, Events, NetworkPolicies ... nodes last.
    assert names[0] == "pods.json"
    log_names = ["logs__%s__%s.log" % (p, c) for p in sorted(pods) for c in ("app", "proxy")]
    assert sorted(names[1:1 + len(log_names)]) == sorted(log_names), names
    assert names[1 + len(log_names):1 + len(log_names) + 2] == ["events.json", "networkpolicies.json"]
    assert names[-1] == "nodes.json"
    for required in ("owners.json", "services.json", "secrets.json", "serviceaccounts.json", "rolebindings.json",
                     "clusterrolebindings.json", "roles.json"):
        assert required in names
    assert all(f["sha256_collected"] and f["sha256_stored"] and f["method"].startswith("GET ") for f in result["files"])
    assert result["identity"]["username"] == "admin"
    assert result["collector"]["awx_job_id"] == "4711" and result["collector"]["awx_user_name"] == "oncall"

    # Idempotent: the incident is captured once.
    again = evidence(kube_cluster, encryption_recipients=[age_key.recipient], **common)
    assert again["changed"] is False and again["backup_id"] == result["backup_id"], again

    # Fetch in plain, each file against its hash as collected; no Secret value anywhere.
    dest = tmp_path / "fetched"
    fetched = evidence(kube_cluster, state="fetched", dest=str(dest), encryption_identity=age_key.identity,
                       incident_id="inc-0101", **repo_options, set="%s-evidence" % ns)
    assert not fetched.get("failed"), fetched
    assert fetched["changed"] is True and fetched["verified"][0]["ok"] is True and fetched["verified"][0]["level"] == "decrypt"
    files = _plain_files(dest)
    for entry in result["files"]:
        assert hashlib.sha256(files[entry["name"]]).hexdigest() == entry["sha256_collected"]
    assert all(SECRET_VALUE.encode() not in data for data in files.values())
    assert b"app line 3 %s" % ns.encode() in files["logs__%s__app.log" % sorted(pods)[0]]
    assert [b["metadata"]["name"] for b in json.loads(files["rolebindings.json"])] == ["api-reads-secrets"]
    cluster_bindings = json.loads(files["clusterrolebindings.json"])
    assert "ev-%s" % ns in [b["metadata"]["name"] for b in cluster_bindings]
    # Only bindings that reach the Pods' identity: their ServiceAccount or a group it belongs to.
    groups = {"system:serviceaccounts", "system:serviceaccounts:%s" % ns, "system:authenticated"}
    assert all(any(s.get("name") in groups or s.get("name") == "api-sa" for s in b["subjects"]) for b in cluster_bindings)
    roles = {(r["kind"], r["metadata"]["name"]) for r in json.loads(files["roles.json"])}
    assert {("ClusterRole", "view"), ("Role", "read-secrets")} <= roles
    assert [s["metadata"]["name"] for s in json.loads(files["serviceaccounts.json"])] == ["api-sa"]
    assert json.loads(files["secrets.json"])[0]["keys"] == ["password"]
    nodes = {p["spec"]["nodeName"] for p in kube_admin.list("v1", "pods", ns)}
    assert {n["metadata"]["name"] for n in json.loads(files["nodes.json"])} == nodes

    # Access records: verified (k8s_evidence), fetched, verified (backup_repo), chained.
    verified = evidence(kube_cluster, state="verified", encryption_identity=age_key.identity, namespace=ns,
                        incident_id="inc-0101", **repo_options)
    assert not verified.get("failed") and verified["verified"][0]["ok"] is True, verified
    by_repo = run_module("backup_repo", dict(repo_options, state="verify", kind="evidence", set="%s-evidence" % ns,
                                             encryption_identity=age_key.identity))
    assert not by_repo.get("failed"), by_repo
    repo = Repository.from_options(repo_options)
    manifest = repo.get("evidence", "%s-evidence" % ns, result["backup_id"])
    records = [json.loads(line) for line in (repo.read_sidecar(manifest, "custody.jsonl") or b"").splitlines()]
    events = [r["event"] for r in records]
    assert events == ["opened"] + ["collected"] * len(names) + ["fetched", "verified", "verified"], events
    assert records[-1]["by"] == "backup_repo state=verify" and records[-2]["by"] == "k8s_evidence state=verified"
    assert by_repo["verified"][0]["details"]["custody_records"] == len(records)
    assert records[0]["collector"]["kubernetes"]["username"] == "admin"
    for previous, record in zip(records, records[1:]):
        line = json.dumps(previous, sort_keys=True, separators=(",", ":")).encode()
        assert record["previous"] == hashlib.sha256(line).hexdigest()


def test_tampering_breaks_the_custody(kube_cluster, incident_ns, tmp_path):
    ns = incident_ns
    repo_options = {"repository": "file://%s" % (tmp_path / "repo")}
    result = evidence(kube_cluster, namespace=ns, incident_id="inc-0102", include_nodes=False, **repo_options)
    assert not result.get("failed"), result
    assert any(f["check"] == "evidence_encryption" and f["severity"] == "warning" for f in result["findings"])
    prefix = tmp_path / "repo" / "evidence" / ("%s-evidence" % ns) / result["backup_id"]

    # An edited custody record (a rewritten hash) breaks the chain and the manifest's head.
    custody = prefix / "custody.jsonl"
    original = custody.read_bytes()
    lines = original.splitlines()
    record = json.loads(lines[1])
    record["sha256_collected"] = "0" * 64
    lines[1] = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    custody.write_bytes(b"\n".join(lines) + b"\n")
    broken = evidence(kube_cluster, state="verified", namespace=ns, **repo_options)
    assert broken.get("failed") and broken["status"] == "critical", broken
    assert any("does not chain" in p for p in broken["verified"][0]["problems"]), broken["verified"]
    assert any("differ from the manifest" in p for p in broken["verified"][0]["problems"])
    custody.write_bytes(original)

    # A flipped byte in a stored artifact fails both re-proofs.
    target = prefix / "pods.json"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    again = evidence(kube_cluster, state="verified", namespace=ns, **repo_options)
    assert again.get("failed") and any("pods.json" in p for p in again["verified"][0]["problems"]), again
    by_repo = run_module("backup_repo", dict(repo_options, state="verify", kind="evidence", set="%s-evidence" % ns))
    assert by_repo.get("failed") and any("pods.json" in p for p in by_repo["verified"][0]["problems"]), by_repo


def test_invalid_incident_id_fails_clearly(kube_cluster, tmp_path):
    result = evidence(kube_cluster, namespace="default", incident_id="Bad_ID",
                      repository="file://%s" % (tmp_path / "repo"))
    assert result.get("failed") and "incident_id" in result["msg"], result
    assert not (tmp_path / "repo").exists()
