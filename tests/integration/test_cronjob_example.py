"""extensions/cronjob against a lab of its own: the API server accepts every manifest (server-side
dry run), and the daily check run in check mode with a token of the example's ServiceAccount
(TokenRequest) reads everything it needs - no ``unknown`` finding, every seeded fault found - while
that identity can read no other Secret, no other namespace and write nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest
import yaml

from tests.harness.collection import REPO, ansible_env, run_playbook
from tests.harness.k8s import KubeCluster
from tests.harness.private_lab import lab_with_inventory

MANIFESTS = REPO / "extensions" / "cronjob"
NAMESPACE = "runbook-ops"
ACCOUNT = "runbook-ops-daily-check"
PLATFORM = "rust-security"


def documents() -> t.List[dict]:
    """Every object of the manifests, the items of a List one by one (as kubectl applies them)."""
    docs = []
    for path in sorted(MANIFESTS.glob("*.yml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs += doc["items"] if doc.get("kind") == "List" else [doc]
    return docs


def of_kind(kind: str) -> t.List[dict]:
    return [d for d in documents() if d["kind"] == kind]


class Lab(t.NamedTuple):
    root: Path
    inventory: Path
    cluster: KubeCluster


@pytest.fixture(scope="module")
def lab() -> t.Iterator[Lab]:
    with lab_with_inventory("runbook-cronjob-") as (root, inventory):
        yield Lab(root, inventory, KubeCluster.attach(root / "lab" / "kubernetes"))


def ssa(client, body: dict, dry_run: bool) -> dict:
    meta = body["metadata"]
    return client.patch(body["apiVersion"], client.plural_of(body["apiVersion"], body["kind"]), meta["name"], body,
                        meta.get("namespace"), patch_type="apply", field_manager="runbook-cronjob-test", force=True,
                        dry_run=dry_run)


def test_every_manifest_is_accepted_by_the_api_server_dry_run(lab: Lab):
    admin = lab.cluster.client()
    # kubectl apply -f <dir> goes through the files in name order: the Namespace must come first.
    assert [d["kind"] for d in documents()][0] == "Namespace" and documents()[-1]["kind"] == "CronJob"
    (namespace,) = of_kind("Namespace")
    ssa(admin, namespace, dry_run=False)  # namespaced objects need their namespace to exist
    for doc in documents():
        answer = ssa(admin, doc, dry_run=True)
        assert answer["kind"] == doc["kind"] and answer["metadata"]["name"] == doc["metadata"]["name"]
    (cronjob,) = of_kind("CronJob")
    answer = ssa(admin, cronjob, dry_run=True)
    assert answer["spec"]["schedule"] == "0 9 * * *" and answer["spec"]["timeZone"] == "Etc/UTC"
    assert answer["spec"]["concurrencyPolicy"] == "Forbid"
    pod = answer["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == ACCOUNT
    # Dry run persisted nothing.
    assert admin.get("batch/v1", "cronjobs", cronjob["metadata"]["name"], NAMESPACE, missing_ok=True) is None


def test_the_cronjob_runs_the_daily_check_with_the_inventory_it_mounts(tmp_path):
    (cronjob,) = of_kind("CronJob")
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][-1] == "runbook.ops.daily_check"
    assert (REPO / "playbooks" / "daily_check.yml").is_file()
    (configmap,) = of_kind("ConfigMap")
    (volume,) = [v for v in pod["volumes"] if v["name"] == "inventory"]
    for item in volume["configMap"]["items"]:
        target = tmp_path / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(configmap["data"][item["key"]])
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible-inventory"), "-i", str(tmp_path / "hosts.yml"),
                           "--list"], capture_output=True, text=True, env=ansible_env(), timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    hostvars = json.loads(proc.stdout)["_meta"]["hostvars"]
    platform = hostvars[PLATFORM]["runbook_platform"]
    # The RBAC covers exactly the inventory's platform namespaces and the Secrets it reads.
    bound = {b["metadata"]["namespace"] for b in of_kind("RoleBinding")}
    assert bound == set(platform["namespaces"])
    (secret_role,) = of_kind("Role")
    (rule,) = secret_role["rules"]
    wanted = {k["secret_name"] for k in platform["signing_keys"]}
    assert set(rule["resourceNames"]) == wanted and rule["verbs"] == ["get"]


@pytest.fixture(scope="module")
def account_token(lab: Lab) -> str:
    admin = lab.cluster.client()
    # The Namespace first, as kubectl apply -f orders it; the CronJob itself stays out (no image here).
    for doc in sorted(documents(), key=lambda d: d["kind"] != "Namespace"):
        if doc["kind"] != "CronJob":
            ssa(admin, doc, dry_run=False)
    answer = admin.request("POST", "/api/v1/namespaces/%s/serviceaccounts/%s/token" % (NAMESPACE, ACCOUNT),
                           body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                 "spec": {"expirationSeconds": 3600}})
    return answer["status"]["token"]


def can(lab: Lab, token: str, verb: str, resource: str, namespace: t.Optional[str] = None,
        name: t.Optional[str] = None, group: str = "") -> bool:
    client = lab.cluster.client(token)
    attributes = {"verb": verb, "resource": resource, "group": group}
    if namespace:
        attributes["namespace"] = namespace
    if name:
        attributes["name"] = name
    review = client.create("authorization.k8s.io/v1", "selfsubjectaccessreviews",
                           {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                            "spec": {"resourceAttributes": attributes}})
    return bool(review["status"].get("allowed"))


def test_the_service_account_can_do_nothing_beyond_reading(lab: Lab, account_token: str):
    assert can(lab, account_token, "list", "pods", PLATFORM)
    assert can(lab, account_token, "get", "secrets", PLATFORM, "jwt-signing-keys")
    assert not can(lab, account_token, "get", "secrets", PLATFORM, "auth-service-config")
    assert not can(lab, account_token, "get", "secrets", PLATFORM, "auth-service-tls")  # a private key
    assert not can(lab, account_token, "list", "secrets", PLATFORM)
    assert not can(lab, account_token, "list", "pods", "hungryhippaahneties")
    assert not can(lab, account_token, "patch", "deployments", PLATFORM, group="apps")
    assert not can(lab, account_token, "create", "pods", NAMESPACE)
    assert not can(lab, account_token, "update", "secrets", PLATFORM, "jwt-signing-keys")


def test_the_daily_check_succeeds_in_check_mode_with_the_account_token(lab: Lab, account_token: str, tmp_path):
    reports = tmp_path / "reports"
    extra = {
        "runbook_hosts": PLATFORM,
        "lab_k8s_auth": lab.cluster.auth(account_token),
        "daily_check_fail_on": "never",
        "daily_check_outputs": {"json": "%s/{{ runbook_platform.name }}.json" % reports},
    }
    proc = run_playbook(REPO / "playbooks" / "daily_check.yml", inventory=str(lab.inventory), check=True,
                        extra_vars=extra)
    assert proc.returncode == 0, proc.stdout[-4000:]
    data = json.loads((reports / ("%s.json" % PLATFORM)).read_text())
    findings = [dict(f, source=s["source"]) for s in data["sections"] for f in s["findings"]]
    unknown = [f for f in findings if f["severity"] == "unknown"]
    assert not unknown, unknown
    sources = {f["source"] for f in findings}
    assert {"k8s_health", "cert_renew", "jwt_rotate"} <= sources, sources
    # What the lab seeds on this platform is found with the account's token as with an admin's.
    assert any(f["check"] == "signing_key_rotation" and f["severity"] == "warning" for f in findings)
    assert any(f["object"] == "Certificate/rust-security/auth-service-tls" and f["severity"] == "warning"
               for f in findings if f["source"] == "k8s_health")
    assert any(f["check"] == "expected_objects" for f in findings)


def test_without_the_secrets_role_the_check_says_what_it_could_not_read(lab: Lab, account_token: str, tmp_path):
    """The control for the test above: the same bindings minus the Role for the signing-key Secret
    leave the check unable to judge the key's age, and it says so."""
    admin = lab.cluster.client()
    name = "runbook-ops-no-secrets"
    for doc in documents():
        if doc["kind"] in ("ServiceAccount", "ClusterRoleBinding", "RoleBinding") and "secrets" not in doc["metadata"]["name"]:
            copy = json.loads(json.dumps(doc))
            copy["metadata"]["name"] = name
            for subject in copy.get("subjects", []):
                subject["name"] = name
            ssa(admin, copy, dry_run=False)
    token = admin.request("POST", "/api/v1/namespaces/%s/serviceaccounts/%s/token" % (NAMESPACE, name),
                          body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                "spec": {"expirationSeconds": 600}})["status"]["token"]
    reports = tmp_path / "reports"
    proc = run_playbook(REPO / "playbooks" / "daily_check.yml", inventory=str(lab.inventory), check=True,
                        extra_vars={"runbook_hosts": PLATFORM, "lab_k8s_auth": lab.cluster.auth(token),
                                    "daily_check_fail_on": "never",
                                    "daily_check_outputs": {"json": "%s/{{ runbook_platform.name }}.json" % reports}})
    assert proc.returncode == 0, proc.stdout[-4000:]
    data = json.loads((reports / ("%s.json" % PLATFORM)).read_text())
    blind = [(s["source"], f["severity"]) for s in data["sections"] for f in s["findings"]
             if f["severity"] in ("unknown", "critical") and s["source"] == "jwt_rotate"]
    # The daily check reports a source that failed as critical (jwt_rotate.failed), naming the 403.
    assert ("jwt_rotate", "critical") in blind, data["sections"]
    failed = [f for s in data["sections"] for f in s["findings"] if f["check"] == "jwt_rotate.failed"]
    assert failed and "forbidden (403)" in failed[0]["message"], failed
