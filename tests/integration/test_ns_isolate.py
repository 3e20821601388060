"""ns_isolate against a real kube-apiserver (etcd, kube-controller-manager, kube-scheduler; KWOK runs the Pods; no CNI)."""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import ssl
import threading
import typing as t
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.harness.collection import run_module, run_playbook
from tests.harness import kwok
from tests.harness.k8s import (
    RESTRICTED_TOKEN, RESTRICTED_USER, Kubelet, deployment, service, wait_for, without_server_fields)
from tests.harness.process import free_port

from ansible_collections.runbook.ops.plugins.module_utils._quarantine import (
    QUARANTINE_LABEL, record_name, selector_matches)
from ansible_collections.runbook.ops.plugins.module_utils._repository import Repository

SECRET_VALUE = "sup3r-s3cret-db-password-77"
SERVER_OWNED = ("resourceVersion", "managedFields", "generation", "creationTimestamp")


def _clean(obj: dict) -> dict:
    return without_server_fields(obj, SERVER_OWNED)


def isolate(cluster, ns: str, check_mode: bool = False, diff: bool = False, token: t.Optional[str] = None,
            **args: t.Any) -> dict:
    params = dict(cluster.auth(token) if token else cluster.auth())
    params.update(namespace=ns, **args)
    params.setdefault("evidence", {"capture": False})
    result = run_module("ns_isolate", params, check_mode=check_mode, diff=diff)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def setup_namespace(admin, kubelet, ns: str) -> None:
    """Two Deployments with Services, two allowing policies, a Secret and an Event."""
    admin.create("apps/v1", "deployments", deployment("web", ns, replicas=2))
    admin.create("apps/v1", "deployments", deployment("worker", ns, replicas=1))
    admin.create("v1", "services", service("web", ns, {"app": "web"}))
    admin.create("v1", "services", service("worker", ns, {"app": "worker"}))
    admin.create("networking.k8s.io/v1", "networkpolicies", {
        "metadata": {"name": "allow-web-ingress", "namespace": ns, "labels": {"team": "auth"},
                     "annotations": {"owner": "platform"}},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": [{"podSelector": {}}, {"namespaceSelector": {}}],
                              "ports": [{"protocol": "TCP", "port": 8080}]}]}})
    admin.create("networking.k8s.io/v1", "networkpolicies", {
        "metadata": {"name": "allow-all-egress", "namespace": ns},
        "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]}})
    admin.create("v1", "secrets", {"metadata": {"name": "db-credentials", "namespace": ns},
                                   "type": "Opaque", "stringData": {"password": SECRET_VALUE, "username": "app"}})
    for name in ("web", "worker"):
        wait_for(lambda: kwok.rolled_out(admin, "deployments", ns, name), what="Deployment/%s/%s rolled out" % (ns, name))
    web = admin.list("v1", "pods", ns, label_selector="app=web")[0]
    kubelet.event(ns, {"kind": "Pod", "name": web["metadata"]["name"]}, "Suspicious", "unexpected outbound traffic")


def snapshot(admin, ns: str) -> dict:
    """Every object isolation may touch, minus status and server-owned metadata."""
    state = {}
    for api_version, plural in (("networking.k8s.io/v1", "networkpolicies"), ("v1", "services"),
                                ("apps/v1", "deployments"), ("v1", "pods"), ("v1", "configmaps")):
        for obj in admin.list(api_version, plural, ns):
            if plural == "configmaps" and obj["metadata"]["name"] == "kube-root-ca.crt":
                continue
            state["%s/%s" % (plural, obj["metadata"]["name"])] = _clean(obj)
    return state


def allowing_policies(admin, ns: str, pod: dict) -> t.List[str]:
    """Policies that select ``pod`` and carry any allow rule."""
    found = []
    labels = pod["metadata"].get("labels") or {}
    for policy in admin.list("networking.k8s.io/v1", "networkpolicies", ns):
        spec = policy["spec"]
        if selector_matches(spec.get("podSelector") or {}, labels) and (spec.get("ingress") or spec.get("egress")):
            found.append(policy["metadata"]["name"])
    return found


def selecting_policies(admin, ns: str, pod: dict) -> t.List[str]:
    labels = pod["metadata"].get("labels") or {}
    return sorted(p["metadata"]["name"] for p in admin.list("networking.k8s.io/v1", "networkpolicies", ns)
                  if selector_matches(p["spec"].get("podSelector") or {}, labels))


# ----------------------------------------------------------------------------------------------


def test_isolate_and_release_namespace_restores_every_object(kube_cluster, kube_admin, kubelet,
                                                             kube_namespace, repository):
    ns = kube_namespace
    setup_namespace(kube_admin, kubelet, ns)
    before = snapshot(kube_admin, ns)

    result = isolate(kube_cluster, ns, diff=True, incident_id="inc-0001", suspend_services=True,
                     evidence=dict(repository, log_tail_lines=100))
    assert not result.get("failed"), result
    assert result["changed"] and result["isolated"]
    assert result["policies_created"] == ["runbook-isolate-inc-0001"]
    assert result["policies_neutralised"] == ["allow-all-egress", "allow-web-ingress"]
    assert result["services_suspended"] == ["web", "worker"]
    assert len(result["pods_labelled"]) == 3
    assert result["record"] == "ConfigMap/%s/%s" % (ns, record_name("inc-0001"))
    assert any("CNI" in str(w) for w in result["warnings"]), result["warnings"]
    assert result["diff"]["after"]["Service/%s/web" % ns]["selector"] != {"app": "web"}

    # Together, the deny policy and the neutralised ones leave no allow rule for any quarantined Pod.
    pods = kube_admin.list("v1", "pods", ns)
    for pod in pods:
        assert pod["metadata"]["labels"][QUARANTINE_LABEL] == "inc-0001"
        assert allowing_policies(kube_admin, ns, pod) == [], pod["metadata"]["name"]
        assert selecting_policies(kube_admin, ns, pod) == ["runbook-isolate-inc-0001"]
    deny = kube_admin.get("networking.k8s.io/v1", "networkpolicies", "runbook-isolate-inc-0001", ns)
    assert deny["spec"]["policyTypes"] == ["Ingress", "Egress"]
    for name in ("web", "worker"):
        svc = kube_admin.get("v1", "services", name, ns)
        assert not any(all((p["metadata"]["labels"] or {}).get(k) == v for k, v in svc["spec"]["selector"].items())
                       for p in pods)
    record = kube_admin.get("v1", "configmaps", record_name("inc-0001"), ns)
    recorded = json.loads(record["data"]["record.json"])
    assert recorded["state"] == "isolated"
    assert recorded["policies"]["allow-web-ingress"]["spec"] == before["networkpolicies/allow-web-ingress"]["spec"]

    # Evidence: every file matches its sha256, no Secret value anywhere, failed logs are recorded.
    ev = result["evidence"]
    assert ev["files"] >= 7 and ev["bytes"] > 0
    repo = Repository.from_options(repository)
    manifest = repo.get("evidence", "inc-0001", ev["backup_id"])
    meta = manifest["evidence"]
    assert meta["api_server"] == kube_cluster.server
    assert meta["identity"]["username"] == "admin"
    assert meta["namespace"] == ns and meta["captured_at"]
    objects = {o["name"]: o for o in manifest["objects"]}
    assert {f["name"] for f in meta["files"]} == set(objects)
    contents = {}
    for entry in meta["files"]:
        out = io.BytesIO()
        repo.read_object(manifest, objects[entry["name"]], out)
        data = out.getvalue()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["name"]
        assert len(data) == entry["size"]
        assert SECRET_VALUE.encode() not in data, entry["name"]
        contents[entry["name"]] = data
    secrets = json.loads(contents["secrets.json"])
    creds = next(s for s in secrets if s["metadata"]["name"] == "db-credentials")
    assert creds["keys"] == ["password", "username"]
    assert len(json.loads(contents["pods.json"])) == 3
    owners = {o["kind"] for o in json.loads(contents["owners.json"])}
    assert owners == {"ReplicaSet", "Deployment"}
    assert any(e["reason"] == "Suspicious" for e in json.loads(contents["events.json"]))
    assert {p["metadata"]["name"] for p in json.loads(contents["networkpolicies.json"])} == {
        "allow-web-ingress", "allow-all-egress"}  # captured before anything changed
    # KWOK serves no log for these Pods (no ClusterLogs selects them): every log is listed as failed
    # with the API server's answer, none is made up.
    assert len(meta["logs"]) == 3
    assert all(entry["status"] == "failed" and entry["error"] for entry in meta["logs"])
    assert meta["logs_failed"] == 3 and ev["logs_failed"] == 3 and ev["logs_captured"] == 0
    assert not [name for name in objects if name.startswith("logs__")]

    # Isolating again changes nothing.
    again = isolate(kube_cluster, ns, incident_id="inc-0001", suspend_services=True, evidence=repository)
    assert not again.get("failed"), again
    assert again["changed"] is False and again["isolated"] is True
    assert again["evidence"]["backup_id"] == ev["backup_id"]

    released = isolate(kube_cluster, ns, diff=True, incident_id="inc-0001", state="released")
    assert not released.get("failed"), released
    assert released["changed"] is True and released["isolated"] is False
    assert snapshot(kube_admin, ns) == before

    # Releasing what is not isolated changes nothing.
    second = isolate(kube_cluster, ns, incident_id="inc-0001", state="released")
    assert second["changed"] is False and not second.get("failed"), second


def test_pod_selector_leaves_other_pods_policies_alone(kube_cluster, kube_admin, kubelet, kube_namespace):
    ns = kube_namespace
    setup_namespace(kube_admin, kubelet, ns)
    before = snapshot(kube_admin, ns)
    worker = kube_admin.list("v1", "pods", ns, label_selector="app=worker")[0]
    policies_before = selecting_policies(kube_admin, ns, worker)
    assert policies_before == ["allow-all-egress"]

    result = isolate(kube_cluster, ns, incident_id="inc-0002", pod_selector={"app": "web"}, allow_dns=True,
                     allow_from_namespaces=["forensics"], allow_cidrs=["10.40.0.0/24"])
    assert not result.get("failed"), result
    assert result["policies_neutralised"] == ["allow-all-egress", "allow-web-ingress"]
    assert len(result["pods_labelled"]) == 2

    # The worker is still selected by exactly the policies it had; the web Pods only by the deny policy.
    worker = kube_admin.get("v1", "pods", worker["metadata"]["name"], ns)
    assert QUARANTINE_LABEL not in worker["metadata"]["labels"]
    assert selecting_policies(kube_admin, ns, worker) == ["allow-all-egress"]
    for pod in kube_admin.list("v1", "pods", ns, label_selector="app=web"):
        assert selecting_policies(kube_admin, ns, pod) == ["runbook-isolate-inc-0002"]
    # A web Pod created later is excluded from the allowing policies too (one-label selector).
    assert allowing_policies(kube_admin, ns, {"metadata": {"labels": {"app": "web"}}}) == ["runbook-isolate-inc-0002"]
    deny = kube_admin.get("networking.k8s.io/v1", "networkpolicies", "runbook-isolate-inc-0002", ns)["spec"]
    assert deny["podSelector"] == {"matchLabels": {"app": "web"}}
    assert deny["egress"][0]["ports"][0]["port"] == 53
    assert deny["egress"][1]["to"] == [{"ipBlock": {"cidr": "10.40.0.0/24"}}]
    assert deny["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "forensics"}

    # Idempotent while nothing changes; a Pod that appears later is labelled by the next run.
    again = isolate(kube_cluster, ns, incident_id="inc-0002", pod_selector={"app": "web"}, allow_dns=True,
                    allow_from_namespaces=["forensics"], allow_cidrs=["10.40.0.0/24"])
    assert again["changed"] is False, again
    kubelet.create_pod(ns, "late-web", {"app": "web"})
    late = isolate(kube_cluster, ns, incident_id="inc-0002", pod_selector={"app": "web"}, allow_dns=True,
                   allow_from_namespaces=["forensics"], allow_cidrs=["10.40.0.0/24"])
    assert late["changed"] is True and late["changes"] == [
        "label Pod/%s/late-web %s=inc-0002" % (ns, QUARANTINE_LABEL)], late
    assert "late-web" in late["pods_labelled"]
    different = isolate(kube_cluster, ns, incident_id="inc-0002", pod_selector={"app": "worker"})
    assert different.get("failed") and "release it before" in different["msg"], different

    released = isolate(kube_cluster, ns, state="released")  # every incident recorded in the namespace
    assert not released.get("failed") and released["changed"], released
    assert QUARANTINE_LABEL not in kube_admin.get("v1", "pods", "late-web", ns)["metadata"]["labels"]
    kube_admin.delete("v1", "pods", "late-web", ns)  # never scheduled: deleted at once
    wait_for(lambda: kube_admin.get("v1", "pods", "late-web", ns, missing_ok=True) is None, what="late-web gone")
    assert snapshot(kube_admin, ns) == before


def test_pod_selector_that_matches_no_pod_fails_and_changes_nothing(kube_cluster, kube_admin, kubelet,
                                                                    kube_namespace, tmp_path):
    ns = kube_namespace
    setup_namespace(kube_admin, kubelet, ns)
    before = snapshot(kube_admin, ns)
    policies = {p["metadata"]["name"]: _clean(p) for p in kube_admin.list("networking.k8s.io/v1", "networkpolicies", ns)}
    evidence = {"repository": "file://%s" % (tmp_path / "repo")}

    for check_mode in (True, False):
        result = isolate(kube_cluster, ns, check_mode=check_mode, incident_id="inc-0009",
                         pod_selector={"app": "wbe"}, evidence=evidence)
        assert result.get("failed") is True, result
        msg = result["msg"]
        assert "pod_selector app=wbe matches no Pod in namespace %s" % ns in msg, msg
        assert "nothing was isolated and nothing changed" in msg
        assert "its Pods carry app=web, app=worker" in msg and "allow_empty_selector=true" in msg
        assert result["changed"] is False and result["changes"] == []
        after = {p["metadata"]["name"]: _clean(p)
                 for p in kube_admin.list("networking.k8s.io/v1", "networkpolicies", ns)}
        assert after == policies
        assert snapshot(kube_admin, ns) == before
    assert not (tmp_path / "repo").exists()  # no evidence captured either

    # Explicitly allowed: isolates the Pods that will carry the label, and says nothing matches now.
    allowed = isolate(kube_cluster, ns, incident_id="inc-0009", pod_selector={"app": "canary"},
                      allow_empty_selector=True)
    assert not allowed.get("failed") and allowed["changed"], allowed
    assert any("matches no Pod in namespace %s now" % ns in str(w) for w in allowed["warnings"]), allowed["warnings"]
    assert allowed["pods_labelled"] == []
    assert selecting_policies(kube_admin, ns, {"metadata": {"labels": {"app": "canary"}}}) == ["runbook-isolate-inc-0009"]
    # The isolation in effect does not fail on its next run, though it still matches nothing.
    again = isolate(kube_cluster, ns, incident_id="inc-0009", pod_selector={"app": "canary"})
    assert not again.get("failed") and again["changed"] is False, again
    assert not isolate(kube_cluster, ns, state="released", incident_id="inc-0009").get("failed")
    assert snapshot(kube_admin, ns) == before


def test_check_mode_changes_nothing(kube_cluster, kube_admin, kubelet, kube_namespace, tmp_path):
    ns = kube_namespace
    setup_namespace(kube_admin, kubelet, ns)
    before = snapshot(kube_admin, ns)
    repo_dir = tmp_path / "repo"
    result = isolate(kube_cluster, ns, check_mode=True, diff=True, incident_id="inc-0003", suspend_services=True,
                     scale_to_zero=["Deployment/worker"], evidence={"repository": "file://%s" % repo_dir})
    assert not result.get("failed"), result
    assert result["changed"] is True
    assert result["evidence"] is None
    assert "Deployment/%s/worker" % ns in result["diff"]["after"]
    assert any("capture evidence" in line for line in result["changes"])
    assert snapshot(kube_admin, ns) == before
    assert not repo_dir.exists()

    # Check mode of a release after a real isolation reports the restore and changes nothing either.
    isolate(kube_cluster, ns, incident_id="inc-0003", suspend_services=True)
    isolated = snapshot(kube_admin, ns)
    dry = isolate(kube_cluster, ns, check_mode=True, incident_id="inc-0003", state="released")
    assert dry["changed"] is True and not dry.get("failed"), dry
    assert snapshot(kube_admin, ns) == isolated

    # Someone edits a neutralised policy meanwhile: release restores the recorded original and says so.
    def edit(policy: dict) -> dict:
        policy["spec"]["ingress"][0]["ports"][0]["port"] = 9090
        return policy
    kube_admin.modify("networking.k8s.io/v1", "networkpolicies", "allow-web-ingress", edit, ns)
    released = isolate(kube_cluster, ns, incident_id="inc-0003", state="released")
    assert released["changed"] is True and not released.get("failed"), released
    assert any("allow-web-ingress was changed while isolated" in str(w) for w in released["warnings"]), released
    assert snapshot(kube_admin, ns) == before


def test_scale_to_zero_and_back(kube_cluster, kube_admin, kubelet, kube_namespace):
    ns = kube_namespace
    setup_namespace(kube_admin, kubelet, ns)
    dep_before = _clean(kube_admin.get("apps/v1", "deployments", "worker", ns))
    result = isolate(kube_cluster, ns, incident_id="inc-0004", pod_selector={"app": "worker"},
                     scale_to_zero=["Deployment/worker"])
    assert not result.get("failed"), result
    assert result["workloads_scaled"] == [{"workload": "Deployment/worker", "replicas": 1}]
    assert kube_admin.get("apps/v1", "deployments", "worker", ns)["spec"]["replicas"] == 0
    released = isolate(kube_cluster, ns, incident_id="inc-0004", state="released")
    assert not released.get("failed"), released
    assert _clean(kube_admin.get("apps/v1", "deployments", "worker", ns)) == dep_before


def _grant(admin, ns: str, rules: t.List[dict]) -> None:
    name = "isolation-partial"
    admin.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                 "metadata": {"name": name, "namespace": ns}, "rules": rules})
    admin.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                 "metadata": {"name": name, "namespace": ns},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                 "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": RESTRICTED_USER}]})
    admin.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                 "metadata": {"name": "isolation-read-namespaces"},
                 "rules": [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]}]})
    admin.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                 "metadata": {"name": "isolation-read-namespaces"},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                             "name": "isolation-read-namespaces"},
                 "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": RESTRICTED_USER}]})


READ_ALL = {"apiGroups": ["", "apps", "networking.k8s.io"], "resources": ["*"], "verbs": ["get", "list"]}


def test_failure_after_first_write_is_rolled_back(kube_cluster, kube_admin, kubelet, kube_namespace):
    """The credentials may create the record and the deny policy but not change other policies:
    the run fails at the first neutralisation and undoes the deny policy and the record."""
    ns = kube_namespace
    setup_namespace(kube_admin, kubelet, ns)
    before = snapshot(kube_admin, ns)
    _grant(kube_admin, ns, [READ_ALL,
                            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "update", "delete"]},
                            {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"],
                             "verbs": ["create", "delete"]}])
    result = isolate(kube_cluster, ns, token=RESTRICTED_TOKEN, incident_id="inc-0005")
    assert result.get("failed"), result
    assert "neutralise" in result["msg"] and "forbidden" in result["msg"], result["msg"]
    assert "rolled back" in result["msg"] and result["rolled_back"] is True
    assert snapshot(kube_admin, ns) == before


def test_interrupted_isolation_is_completed_by_release(kube_cluster, kube_admin, kubelet, kube_namespace):
    """Neither the next step nor the rollback is allowed: the record stays, and released (run with
    other credentials from anywhere) puts everything back."""
    ns = kube_namespace
    setup_namespace(kube_admin, kubelet, ns)
    before = snapshot(kube_admin, ns)
    _grant(kube_admin, ns, [READ_ALL,
                            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "update"]},
                            {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"],
                             "verbs": ["create", "update"]}])
    result = isolate(kube_cluster, ns, token=RESTRICTED_TOKEN, incident_id="inc-0006", suspend_services=True)
    assert result.get("failed"), result
    assert result["rolled_back"] is False
    assert "state=released" in result["msg"] and "suspend" in result["msg"], result["msg"]
    # Half applied: the deny policy exists, both policies neutralised, the record says so.
    record = json.loads(kube_admin.get("v1", "configmaps", record_name("inc-0006"), ns)["data"]["record.json"])
    assert record["state"] == "incomplete"
    assert kube_admin.get("networking.k8s.io/v1", "networkpolicies", "runbook-isolate-inc-0006", ns)

    released = isolate(kube_cluster, ns, incident_id="inc-0006", state="released")
    assert not released.get("failed") and released["changed"], released
    assert snapshot(kube_admin, ns) == before


def test_invalid_incident_id_fails_clearly(kube_cluster, kube_namespace):
    result = isolate(kube_cluster, kube_namespace, incident_id="INC_1")
    assert result.get("failed") and "incident_id 'INC_1' is not valid" in result["msg"], result
    missing = isolate(kube_cluster, "no-such-namespace", incident_id="inc-1")
    assert missing.get("failed") and "no-such-namespace" in missing["msg"] and "does not exist" in missing["msg"]


# ----------------------------------------------------------------------------------------------
# Logs served by a stand-in kubelet: the API server proxies pods/log to the node's address and
# kubelet port, so an HTTPS server on loopback registered as a Node's kubelet endpoint answers.


class FakeKubelet:
    """Answers ``/containerLogs/<ns>/<pod>/<container>`` with a known text; ``refuse`` lists
    ``(pod, container, previous)`` answered 404 as a kubelet does for a missing previous container."""

    def __init__(self, workdir: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-kubelet")])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
        (workdir / "kubelet.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (workdir / "kubelet.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        self.requests: t.List[str] = []
        self.refuse: t.Set[t.Tuple[str, str, bool]] = set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.requests.append(self.path)
                url = urllib.parse.urlsplit(self.path)
                ns, pod, container = url.path.split("/")[2:5]
                previous = urllib.parse.parse_qs(url.query).get("previous") == ["true"]
                if (pod, container, previous) in outer.refuse:
                    body = b"previous terminated container \"%s\" in pod \"%s\" not found" % (
                        container.encode(), pod.encode())
                    self.send_response(404)
                else:
                    body = outer.text(ns, pod, container, previous).encode()
                    self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: t.Any) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(workdir / "kubelet.crt"), str(workdir / "kubelet.key"))
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @staticmethod
    def text(ns: str, pod: str, container: str, previous: bool) -> str:
        return "".join("2026-11-24T03:00:%02d.000000000Z %s/%s/%s%s line %d\n" % (
            i, ns, pod, container, " (previous)" if previous else "", i) for i in range(20))

    def register_node(self, admin, name: str) -> None:
        admin.create("v1", "nodes", {"metadata": {"name": name, "labels": {"runbook.test/fake": "true"}}})
        status = {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                  "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
                  "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "ready"}]}
        admin.modify("v1", "nodes", name, lambda obj: dict(obj, status=status), subresource="status")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_kubelet(tmp_path, kube_admin) -> t.Iterator[t.Tuple[FakeKubelet, str]]:
    served = FakeKubelet(tmp_path)
    node = "log-node-" + uuid.uuid4().hex[:8]
    served.register_node(kube_admin, node)
    try:
        yield served, node
    finally:
        served.stop()
        kube_admin.delete("v1", "nodes", node, missing_ok=True)


def test_evidence_stores_served_logs_and_records_each_log_that_failed(kube_cluster, kube_admin, kubelet,
                                                                      kube_namespace, fake_kubelet, tmp_path, age_key):
    ns = kube_namespace
    served, node = fake_kubelet
    on_served = Kubelet(kube_admin, node=node)
    on_served.create_pod(ns, "api", {"app": "api"}, containers=("app", "sidecar"))
    on_served.set_status(ns, "api", "Running", True, restarts=2, last_terminated=("Error", 1))
    served.refuse.add(("api", "app", True))           # the kubelet has no previous "app" container
    kubelet.create_pod(ns, "lost", {"app": "api"})     # on the node whose kubelet nobody answers for
    kubelet.running(ns, "lost")
    kubelet.create_pod(ns, "unscheduled", {"app": "api"})  # never bound: no logs exist
    repo_options = {"repository": "file://%s" % (tmp_path / "repo")}

    result = isolate(kube_cluster, ns, incident_id="inc-0007", pod_selector={"app": "api"},
                     evidence=dict(repo_options, log_tail_lines=50, since="2h",
                                   encryption_recipients=[age_key.recipient]))
    assert not result.get("failed"), result
    ev = result["evidence"]
    assert ev["logs_captured"] == 3 and ev["logs_failed"] == 2, ev

    # The options reached the kubelet.
    assert served.requests and all("tailLines=50" in r and "sinceSeconds=7200" in r for r in served.requests)

    import pyrage

    repo = Repository.from_options(repo_options)
    manifest = repo.get("evidence", "inc-0007", ev["backup_id"])
    assert manifest["encryption"]["algorithm"] == "age"
    objects = {o["name"]: o for o in manifest["objects"]}
    logs = {(e["pod"], e["container"], e["previous"]): e for e in manifest["evidence"]["logs"]}
    assert {k: v["status"] for k, v in logs.items()} == {
        ("api", "app", False): "captured", ("api", "app", True): "failed",
        ("api", "sidecar", False): "captured", ("api", "sidecar", True): "captured",
        ("lost", "app", False): "failed", ("unscheduled", "app", False): "none"}
    assert "not found" in logs[("api", "app", True)]["error"]
    assert "10250" in logs[("lost", "app", False)]["error"]
    files = {f["name"]: f for f in manifest["evidence"]["files"]}
    for pod, container, previous in (("api", "app", False), ("api", "sidecar", False), ("api", "sidecar", True)):
        name = "logs__%s__%s%s.log" % (pod, container, "__previous" if previous else "")
        out = io.BytesIO()
        repo.read_object(manifest, objects[name], out, [pyrage.x25519.Identity.from_str(age_key.identity)])
        assert out.getvalue().decode() == FakeKubelet.text(ns, pod, container, previous)
        assert hashlib.sha256(out.getvalue()).hexdigest() == files[name]["sha256"]
    assert "logs__api__app__previous.log" not in objects
    assert not [n for n in objects if n.startswith("logs__lost") or n.startswith("logs__unscheduled")]

    assert isolate(kube_cluster, ns, incident_id="inc-0007", state="released")["changed"] is True


def test_no_secret_in_playbook_output_at_vvvv(kube_cluster, kube_admin, kubelet, kube_namespace, s3_server, s3_bucket,
                                              tmp_path):
    ns = kube_namespace
    setup_namespace(kube_admin, kubelet, ns)
    playbook = tmp_path / "isolate.yml"
    playbook.write_text("""---
- name: Isolate and release with secrets
  hosts: localhost
  gather_facts: false
  module_defaults:
    group/runbook.ops.k8s: "{{ auth }}"
  tasks:
    - name: Isolate
      runbook.ops.ns_isolate:
        namespace: "{{ ns }}"
        incident_id: inc-0008
        suspend_services: true
        evidence: "{{ repo }}"
    - name: Release
      runbook.ops.ns_isolate:
        namespace: "{{ ns }}"
        incident_id: inc-0008
        state: released
""")
    auth = kube_cluster.auth()
    proc = run_playbook(playbook, extra_vars={"auth": auth, "ns": ns, "repo": s3_server.repository_options(s3_bucket)},
                        verbosity=4)
    assert "ok=2" in proc.stdout and "changed=2" in proc.stdout, proc.stdout[-3000:]
    module_output = proc.stdout.split("PLAY [", 1)[1]
    for secret in (auth["api_key"], s3_server.secret_key, SECRET_VALUE):
        assert secret not in module_output, "secret leaked at -vvvv"
