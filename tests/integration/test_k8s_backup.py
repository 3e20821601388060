"""k8s_backup against a real API server (KWOK as node agent): the lab platforms' round trip, the
existing-object policies, drift, check mode, and faults for real (an API server killed mid-restore,
a CRD absent in the target, a token that cannot list Secrets, a flipped byte, a wrong identity)."""

from __future__ import annotations

import base64
import json
import signal
import threading
import typing as t
import uuid
from pathlib import Path

import pytest

from ansible_collections.runbook.ops.plugins.module_utils._k8s_objects import comparable, map_namespaces
from tests.harness import k8s, kwok, platforms
from tests.harness.collection import run_module
from tests.harness.k8s import RESTRICTED_TOKEN, deployment, grant_read, service, wait_for

SECRET_VALUE = "s3cr3t-value-%s" % uuid.uuid4().hex[:8]


def repo_of(tmp_path: Path) -> t.Dict[str, str]:
    return {"repository": "file://%s" % (tmp_path / "repo")}


def backup(cluster: k8s.KubeCluster, **args: t.Any) -> t.Dict[str, t.Any]:
    return run_module("k8s_backup", dict(cluster.auth(), **args))


def assert_no_secret(*results: t.Any) -> None:
    text = json.dumps(results, default=str)
    encoded = base64.b64encode(SECRET_VALUE.encode()).decode()
    assert SECRET_VALUE not in text and encoded not in text


def secret(name: str, ns: str, value: str = SECRET_VALUE) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
            "type": "Opaque", "stringData": {"password": value}}


def configmap(name: str, ns: str, data: t.Optional[dict] = None) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns},
            "data": data or {"mode": "blue"}}


def seed_small(admin: t.Any, ns: str) -> None:
    admin.create("v1", "configmaps", configmap("settings", ns))
    admin.create("v1", "secrets", secret("credentials", ns))
    admin.create("apps/v1", "deployments", deployment("web", ns, replicas=1))
    admin.create("v1", "services", service("web", ns, {"app": "web"}))


# ----------------------------------------------------------------------------------------------
# Round trip on the lab platforms


@pytest.fixture
def lab_platforms(kube_admin, tmp_path) -> t.Iterator[t.Dict[str, dict]]:
    """rust-security and personapass from the lab inventory, each in a fresh namespace."""
    loaded = platforms.load()
    seeded: t.Dict[str, dict] = {}
    endpoints = platforms.Endpoints(postgres=("127.0.0.1", 1), redis=("127.0.0.1", 1), redis_tls=("127.0.0.1", 1),
                                    logs=tmp_path / "logs", volumes=tmp_path / "volumes", exec_env={}, exec_dir=tmp_path)
    for name in ("rust-security", "personapass"):
        platform = dict(loaded[name])
        platform["platform_namespace"] = "%s-%s" % (name, uuid.uuid4().hex[:6])
        values = {s["name"]: {key: "%s-%s" % (SECRET_VALUE, key) for key in s["keys"]} for s in platform["platform_secrets"]}
        platforms.seed_platform(kube_admin, platform, endpoints, values)
        seeded[name] = platform
    try:
        platforms.wait_ready(kube_admin, seeded, timeout=120)
        yield seeded
    finally:
        for platform in seeded.values():
            ns = platform["platform_namespace"]
            kube_admin.delete("v1", "namespaces", ns, missing_ok=True)
            kube_admin.delete("v1", "namespaces", ns + "-drill", missing_ok=True)
            for plural in ("clusterportforwards", "clusterlogs", "clusterexecs"):
                kube_admin.delete(kwok.API, plural, "lab-%s" % ns, missing_ok=True)
            for workload in platform["platform_workloads"]:
                for claim in platforms.claim_names(workload):
                    kube_admin.delete("v1", "persistentvolumes", "lab-%s-%s" % (ns, claim), missing_ok=True)


def test_round_trip_of_the_lab_platforms_into_drill_namespaces(kube_cluster, kube_admin, lab_platforms, tmp_path,
                                                               age_key):
    namespaces = [p["platform_namespace"] for p in lab_platforms.values()]
    repo = repo_of(tmp_path)
    made = backup(kube_cluster, namespaces=namespaces, encryption_recipients=[age_key.recipient], **repo)
    assert not made.get("failed"), made
    assert made["changed"] is True and made["status"] == "ok" and made["unreadable"] == []
    section = made["manifest"]["kubernetes"]
    counts = made["counts"]
    assert counts["apps/v1/Deployment"] == 6 and counts["apps/v1/StatefulSet"] == 2
    assert counts["v1/Secret"] == 4 and counts["cert-manager.io/v1/Certificate"] == 2
    assert counts["networking.k8s.io/v1/Ingress"] == 1 and counts["autoscaling/v2/HorizontalPodAutoscaler"] == 1
    assert counts["v1/Namespace"] == 2 and counts["v1/PersistentVolume"] == 2
    assert "v1/Pod" in section["kinds"] and counts["v1/Pod"] == 0, "controller-owned Pods are left out"
    assert counts.get("apps/v1/ReplicaSet", 0) == 0 and "v1/Event" not in section["kinds"]
    assert section["server_version"].startswith("v1.") and section["partial"] is False
    assert all(entry["resource_version"] for entry in section["kinds"].values() if entry["namespaced"])
    assert made["manifest"]["encryption"]["algorithm"] == "age"
    assert_no_secret(made)

    mapping = {ns: ns + "-drill" for ns in namespaces}
    restored = backup(kube_cluster, state="restore", namespaces=namespaces, namespace_mapping=mapping,
                      encryption_identity=age_key.identity, set=made["manifest"]["set"], **repo)
    assert not restored.get("failed"), restored
    assert restored["status"] == "ok" and restored["changed"] is True
    actions = {(e["kind"], e["namespace"], e["name"]): e["action"] for e in restored["objects"]}
    assert actions[("Namespace", None, namespaces[0] + "-drill")] == "created"
    assert all(a in ("created", "skipped") for a in actions.values()), restored["objects"]
    assert_no_secret(restored)

    originals = [map_namespaces(o, mapping) for o in _stored_originals(kube_admin, section, namespaces)]
    for original in originals:
        meta = original["metadata"]
        plural = section["kinds"]["%s/%s" % (original["apiVersion"], original["kind"])]["plural"]
        twin = kube_admin.get(original["apiVersion"], plural, meta["name"], meta.get("namespace"))
        assert comparable(twin) == comparable(original), (original["kind"], meta)
    for platform in lab_platforms.values():
        for workload in platform["platform_workloads"]:
            if workload["kind"] == "Deployment":
                wait_for(lambda w=workload, p=platform: kwok.rolled_out(
                    kube_admin, "deployments", p["platform_namespace"] + "-drill", w["name"]),
                    timeout=120, what="%s rolled out in the drill namespace" % workload["name"])

    again = backup(kube_cluster, state="restore", namespaces=namespaces, namespace_mapping=mapping,
                   encryption_identity=age_key.identity, set=made["manifest"]["set"], **repo)
    assert not again.get("failed"), again
    assert again["changed"] is False and {e["action"] for e in again["objects"]} == {"skipped"}


def _stored_originals(admin: t.Any, section: dict, namespaces: t.Sequence[str]) -> t.List[dict]:
    """The live source objects the backup's manifest lists (namespaced ones)."""
    found = []
    for key in section["objects"]:
        parts = key.split("/")
        name, ns = parts[-1], parts[-2]
        if ns not in namespaces:
            continue
        api_version, kind = "/".join(parts[:-3]), parts[-3]
        obj = admin.get(api_version, section["kinds"]["%s/%s" % (api_version, kind)]["plural"], name, ns)
        found.append(obj)
    assert len(found) > 20
    return found


# ----------------------------------------------------------------------------------------------
# Existing objects, drift, check mode


def test_existing_skip_then_update_then_nothing_to_do(kube_cluster, kube_admin, kube_namespace, tmp_path):
    ns = kube_namespace
    seed_small(kube_admin, ns)
    repo = repo_of(tmp_path)
    made = backup(kube_cluster, namespaces=[ns], allow_unencrypted_secrets=True, **repo)
    assert not made.get("failed"), made
    kube_admin.patch("v1", "configmaps", "settings", {"data": {"mode": "green"}}, ns)
    kube_admin.delete("apps/v1", "deployments", "web", ns)
    wait_for(lambda: kube_admin.get("apps/v1", "deployments", "web", ns, missing_ok=True) is None, what="deleted")

    skip = backup(kube_cluster, state="restore", namespaces=[ns], **repo)
    assert not skip.get("failed"), skip
    by_name = {(e["kind"], e["name"]): e for e in skip["objects"]}
    assert by_name[("ConfigMap", "settings")]["action"] == "skipped"
    assert "differs" in by_name[("ConfigMap", "settings")]["reason"]
    assert by_name[("Deployment", "web")]["action"] == "created"
    assert kube_admin.get("v1", "configmaps", "settings", ns)["data"] == {"mode": "green"}

    update = backup(kube_cluster, state="restore", namespaces=[ns], existing="update", **repo)
    assert not update.get("failed"), update
    by_name = {(e["kind"], e["name"]): e for e in update["objects"]}
    assert by_name[("ConfigMap", "settings")]["action"] == "updated" and update["changed"] is True
    assert kube_admin.get("v1", "configmaps", "settings", ns)["data"] == {"mode": "blue"}

    third = backup(kube_cluster, state="restore", namespaces=[ns], existing="update", **repo)
    assert not third.get("failed"), third
    assert third["changed"] is False, [e for e in third["objects"] if e["action"] != "skipped"]
    assert {e["action"] for e in third["objects"]} == {"skipped"}


def test_diff_reports_added_removed_changed_with_secret_values_masked(kube_cluster, kube_admin, kube_namespace,
                                                                      tmp_path):
    ns = kube_namespace
    seed_small(kube_admin, ns)
    repo = repo_of(tmp_path)
    made = backup(kube_cluster, namespaces=[ns], allow_unencrypted_secrets=True, **repo)
    assert not made.get("failed"), made
    same = backup(kube_cluster, state="diff", namespaces=[ns], **repo)
    assert not same.get("failed") and same["objects"] == [] and same["status"] == "ok", same
    kube_admin.patch("v1", "configmaps", "settings", {"data": {"mode": "green"}}, ns)
    kube_admin.patch("v1", "secrets", "credentials", {"stringData": {"password": SECRET_VALUE + "-rotated"}}, ns)
    kube_admin.create("v1", "configmaps", configmap("extra", ns))
    kube_admin.delete("v1", "services", "web", ns)
    drift = backup(kube_cluster, state="diff", namespaces=[ns], **repo)
    assert not drift.get("failed"), drift
    assert drift["changed"] is False and drift["status"] == "info"
    actions = {(e["kind"], e["name"]): e for e in drift["objects"]}
    assert actions[("ConfigMap", "extra")]["action"] == "added"
    assert actions[("Service", "web")]["action"] == "removed"
    assert actions[("ConfigMap", "settings")]["patch"] == [{"op": "replace", "path": "/data/mode", "value": "green"}]
    assert actions[("Secret", "credentials")]["patch"] == [{"op": "replace", "path": "/data/password", "value": "********"}]
    assert SECRET_VALUE[:12] not in json.dumps(drift)


def test_check_mode_restore_is_a_server_side_dry_run(kube_cluster, kube_admin, kube_namespace, tmp_path):
    ns = kube_namespace
    seed_small(kube_admin, ns)
    repo = repo_of(tmp_path)
    assert not backup(kube_cluster, namespaces=[ns], allow_unencrypted_secrets=True, **repo).get("failed")
    kube_admin.patch("v1", "configmaps", "settings", {"data": {"mode": "green"}}, ns)
    kube_admin.delete("v1", "secrets", "credentials", ns)
    checked = run_module("k8s_backup", dict(kube_cluster.auth(), state="restore", namespaces=[ns], existing="update",
                                            **repo), check_mode=True, diff=True)
    assert not checked.get("failed"), checked
    by_name = {(e["kind"], e["name"]): e for e in checked["objects"]}
    assert by_name[("ConfigMap", "settings")]["action"] == "would_update"
    assert by_name[("Secret", "credentials")]["action"] == "would_create"
    assert "dry run" in by_name[("Secret", "credentials")]["reason"]
    assert checked["changed"] is True
    assert kube_admin.get("v1", "secrets", "credentials", ns, missing_ok=True) is None
    assert kube_admin.get("v1", "configmaps", "settings", ns)["data"] == {"mode": "green"}
    assert isinstance(checked["diff"], list) and checked["diff"]
    assert_no_secret(checked)


# ----------------------------------------------------------------------------------------------
# Faults


def test_custom_resource_without_its_crd_fails_naming_it_while_the_rest_is_restored(kube_cluster, kube_admin,
                                                                                    kube_namespace, tmp_path):
    ns = kube_namespace
    group = "g%s.example.com" % uuid.uuid4().hex[:6]
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "widgets.%s" % group},
           "spec": {"group": group, "scope": "Namespaced",
                    "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
                    "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                        "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}}
    kube_admin.create("apiextensions.k8s.io/v1", "customresourcedefinitions", crd)
    wait_for(lambda: kube_admin.resources("%s/v1" % group) or k8s._established(kube_admin.get(
        "apiextensions.k8s.io/v1", "customresourcedefinitions", "widgets.%s" % group)), what="CRD established")
    wait_for(lambda: _create_widget(kube_admin, group, ns), what="a Widget created")
    kube_admin.create("v1", "configmaps", configmap("settings", ns))
    repo = repo_of(tmp_path)
    made = backup(kube_cluster, namespaces=[ns], include_cluster_resources=False, exclude_kinds=["Secret"], **repo)
    assert not made.get("failed"), made
    assert made["counts"]["%s/v1/Widget" % group] == 1
    kube_admin.delete("apiextensions.k8s.io/v1", "customresourcedefinitions", "widgets.%s" % group)
    wait_for(lambda: kube_admin.get("apiextensions.k8s.io/v1", "customresourcedefinitions", "widgets.%s" % group,
                                    missing_ok=True) is None, what="CRD gone")
    drill = ns + "-crd"
    try:
        restored = backup(kube_cluster, state="restore", namespaces=[ns], namespace_mapping={ns: drill}, **repo)
        assert restored.get("failed") is True and restored["status"] == "critical"
        by_name = {(e["kind"], e["name"]): e for e in restored["objects"]}
        assert by_name[("Widget", "gadget")]["action"] == "failed"
        assert "widgets.%s" % group in by_name[("Widget", "gadget")]["reason"]
        assert "widgets.%s" % group in restored["msg"]
        assert by_name[("ConfigMap", "settings")]["action"] == "created"
        assert kube_admin.get("v1", "configmaps", "settings", drill)["data"] == {"mode": "blue"}
    finally:
        kube_admin.delete("v1", "namespaces", drill, missing_ok=True)


def _create_widget(admin: t.Any, group: str, ns: str) -> bool:
    try:
        admin.create("%s/v1" % group, "widgets", {"apiVersion": "%s/v1" % group, "kind": "Widget",
                                                  "metadata": {"name": "gadget", "namespace": ns}, "spec": {"size": 3}})
    except Exception:  # pylint: disable=broad-except
        return False
    return True


def test_token_that_cannot_list_secrets_gets_a_partial_backup_flagged_by_backup_repo_info(
        kube_cluster, kube_admin, kube_namespace, tmp_path, age_key):
    ns = kube_namespace
    seed_small(kube_admin, ns)
    grant_read(kube_admin, ns, {"": ["configmaps", "services"], "apps": ["deployments"]})
    wait_for(lambda: kube_cluster.client(RESTRICTED_TOKEN).list("v1", "configmaps", ns) is not None, what="the Role")
    repo = repo_of(tmp_path)
    made = run_module("k8s_backup", dict(kube_cluster.auth(RESTRICTED_TOKEN), namespaces=[ns],
                                         kinds=["ConfigMap", "Secret", "Deployment", "Service"],
                                         include_cluster_resources=False, encryption_recipients=[age_key.recipient],
                                         **repo))
    assert not made.get("failed"), made
    assert made["status"] == "warning"
    unreadable = made["manifest"]["kubernetes"]["unreadable"]
    assert [(u["kind"], u["namespace"], u["status"]) for u in unreadable] == [("v1/Secret", ns, 403)]
    assert made["manifest"]["kubernetes"]["partial"] is True
    warned = json.dumps(made.get("warnings"))
    assert "the backup is partial: v1/Secret in namespace %s could not be read" % ns in warned, warned
    assert made["counts"]["v1/ConfigMap"] == 1 and made["counts"]["v1/Secret"] == 0
    info = run_module("backup_repo_info", dict(**repo))
    partial = [f for f in info["findings"] if f["check"] == "backup_partial"]
    assert len(partial) == 1 and made["backup_id"] in partial[0]["object"] and partial[0]["severity"] == "warning"
    assert "v1/Secret" in partial[0]["message"]


def test_flipped_byte_and_wrong_identity_fail_before_anything_is_written(kube_cluster, kube_admin, kube_namespace,
                                                                         tmp_path, age_key):
    import pyrage

    ns = kube_namespace
    seed_small(kube_admin, ns)
    repo = repo_of(tmp_path)
    made = backup(kube_cluster, namespaces=[ns], encryption_recipients=[age_key.recipient], **repo)
    assert not made.get("failed"), made
    drill = ns + "-x"
    wrong = backup(kube_cluster, state="restore", namespaces=[ns], namespace_mapping={ns: drill},
                   encryption_identity=str(pyrage.x25519.Identity.generate()), **repo)
    assert wrong.get("failed") and "does not match any recipient" in wrong["msg"], wrong
    assert kube_admin.get("v1", "namespaces", drill, missing_ok=True) is None
    stored = tmp_path / "repo" / "kubernetes" / made["manifest"]["set"] / made["backup_id"] / "objects.jsonl"
    raw = bytearray(stored.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    stored.write_bytes(bytes(raw))
    flipped = backup(kube_cluster, state="restore", namespaces=[ns], namespace_mapping={ns: drill},
                     encryption_identity=age_key.identity, **repo)
    assert flipped.get("failed") and "objects.jsonl" in flipped["msg"], flipped
    assert kube_admin.get("v1", "namespaces", drill, missing_ok=True) is None
    assert_no_secret(made, wrong, flipped)


def test_unencrypted_backup_holding_secrets_is_refused(kube_cluster, kube_namespace, tmp_path):
    refused = backup(kube_cluster, namespaces=[kube_namespace], **repo_of(tmp_path))
    assert refused.get("failed") and "allow_unencrypted_secrets" in refused["msg"]
    assert not (tmp_path / "repo").exists() or not list((tmp_path / "repo").rglob("manifest.json"))


def test_no_secret_value_in_verbose_playbook_output(kube_cluster, kube_admin, kube_namespace, tmp_path, age_key):
    from tests.harness.collection import run_playbook

    ns = kube_namespace
    seed_small(kube_admin, ns)
    auth = kube_cluster.auth()
    common = dict(auth, namespaces=[ns], repository=repo_of(tmp_path)["repository"])
    playbook = tmp_path / "play.yml"
    made = run_module("k8s_backup", dict(common, encryption_recipients=[age_key.recipient]))
    assert not made.get("failed"), made
    kube_admin.patch("v1", "secrets", "credentials", {"stringData": {"password": SECRET_VALUE + "-x"}}, ns)
    playbook.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"runbook.ops.k8s_backup": dict(common, set="verbose", encryption_recipients=[age_key.recipient])},
        {"runbook.ops.k8s_backup": dict(common, state="diff", encryption_identity=age_key.identity)},
        {"runbook.ops.k8s_backup": dict(common, state="restore", existing="update",
                                        encryption_identity=age_key.identity), "diff": True},
    ]}]))
    proc = run_playbook(playbook, verbosity=4)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert '"action": "updated"' in proc.stdout and '"action": "changed"' in proc.stdout, proc.stdout[-3000:]
    assert kube_admin.get("v1", "secrets", "credentials", ns)["data"]["password"] == \
        base64.b64encode(SECRET_VALUE.encode()).decode()
    encoded = base64.b64encode(SECRET_VALUE.encode()).decode()
    assert SECRET_VALUE not in proc.stdout and encoded[:16] not in proc.stdout


# ----------------------------------------------------------------------------------------------
# The API server killed mid-restore (a cluster of its own)


def test_api_server_killed_mid_restore_then_a_rerun_completes_without_duplicates(own_kube_cluster, tmp_path):
    cluster = own_kube_cluster
    admin = cluster.client()
    ns = "doomed"
    k8s.namespace(admin, ns)
    for i in range(300):
        admin.create("v1", "configmaps", configmap("cm-%03d" % i, ns, {"i": str(i)}))
    repo = repo_of(tmp_path)
    made = backup(cluster, namespaces=[ns], exclude_kinds=["Secret"], **repo)
    assert not made.get("failed") and made["counts"]["v1/ConfigMap"] == 300, made
    drill = "doomed-drill"

    def kill_when_started() -> None:
        wait_for(lambda: len(admin.list("v1", "configmaps", drill)) >= 40 if admin.get(
            "v1", "namespaces", drill, missing_ok=True) else False, timeout=120, what="the restore under way")
        cluster.apiserver.send_signal(signal.SIGKILL)

    killer = threading.Thread(target=kill_when_started, daemon=True)
    killer.start()
    cut = backup(cluster, state="restore", namespaces=[ns], namespace_mapping={ns: drill}, parallel=2,
                 request_timeout=5, **repo)
    killer.join(60)
    assert cut.get("failed") is True, cut
    assert "run it again" in cut["msg"] and "unreachable" in cut["msg"], cut["msg"]
    done = [e for e in cut["objects"] if e["action"] == "created" and e["kind"] == "ConfigMap"]
    assert 40 <= len(done) < 300
    assert cut["status"] == "critical" and cut["api_requests"] > 0

    cluster.restart_apiserver()
    rerun = backup(cluster, state="restore", namespaces=[ns], namespace_mapping={ns: drill}, **repo)
    assert not rerun.get("failed"), rerun
    actions = [e["action"] for e in rerun["objects"] if e["kind"] == "ConfigMap"]
    assert actions.count("created") + actions.count("skipped") == 300
    assert actions.count("skipped") >= len(done)
    names = sorted(o["metadata"]["name"] for o in cluster.client().list("v1", "configmaps", drill))
    assert names == ["cm-%03d" % i for i in range(300)] + ["kube-root-ca.crt"]
