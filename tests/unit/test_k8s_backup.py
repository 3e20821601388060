"""k8s_backup's pure logic: options, what is stripped and left out, the restore order, masking and
the JSON-patch summary (the cluster round trips are in tests/integration/test_k8s_backup.py)."""

from __future__ import annotations

import json

import pytest

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError
from ansible_collections.runbook.ops.plugins.module_utils._k8s_backup import K8sBackupOptions, _LinesReader
from ansible_collections.runbook.ops.plugins.module_utils._k8s_objects import (
    MASK, ResourceType, canonical, comparable, digest, map_namespaces, masked, object_key, patch_summary,
    restore_form, restore_rank, select_types, skipped_by_default, strip_server_fields)
from tests.harness.tasks import InvalidParams, validated


def options(**params):
    return K8sBackupOptions.from_params(validated("k8s_backup", params))


# ----------------------------------------------------------------------------------------------
# Options


def test_set_defaults_to_the_sorted_namespaces():
    assert options(namespaces=["zeta", "alpha"], allow_unencrypted_secrets=True).set_name == "alpha+zeta"
    assert options(namespaces=["a"], set="nightly", allow_unencrypted_secrets=True).set_name == "nightly"


def test_unencrypted_backup_with_secrets_is_refused_unless_allowed_or_excluded():
    with pytest.raises(RunbookError, match="allow_unencrypted_secrets"):
        options(namespaces=["a"])
    with pytest.raises(RunbookError, match="encryption_recipients"):
        options(namespaces=["a"], kinds=["ConfigMap", "secrets"])
    assert not options(namespaces=["a"], exclude_kinds=["Secret"]).secrets_included
    assert not options(namespaces=["a"], kinds=["ConfigMap"]).secrets_included
    assert options(namespaces=["a"], state="restore").state == "restore"  # a restore stores nothing


def test_argument_rules():
    with pytest.raises(InvalidParams, match="namespaces, namespace_selector"):
        validated("k8s_backup", {})
    with pytest.raises(InvalidParams, match="set"):
        validated("k8s_backup", {"namespace_selector": "team=a"})
    with pytest.raises(InvalidParams, match="mutually exclusive"):
        validated("k8s_backup", {"namespaces": ["a"], "namespace_selector": "team=a", "set": "s"})
    with pytest.raises(InvalidParams, match="namespaces, set"):
        validated("k8s_backup", {"state": "diff"})
    with pytest.raises(RunbookError, match="parallel"):
        options(namespaces=["a"], state="restore", parallel=0)
    with pytest.raises(RunbookError, match="namespace"):
        options(namespaces=["Not_A_Namespace"], state="restore")
    with pytest.raises(RunbookError, match="namespace_mapping"):
        options(namespaces=["a"], state="restore", namespace_mapping={"a": "b/../c"})


# ----------------------------------------------------------------------------------------------
# Stripping and leaving out

DEPLOYMENT = {
    "apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": "web", "namespace": "shop", "uid": "u-1", "resourceVersion": "42", "generation": 3,
                 "creationTimestamp": "2026-01-01T00:00:00Z", "managedFields": [{"manager": "kubectl"}],
                 "annotations": {"deployment.kubernetes.io/revision": "3",
                                 "kubectl.kubernetes.io/last-applied-configuration": "{}"},
                 "labels": {"app": "web"}},
    "spec": {"replicas": 2}, "status": {"readyReplicas": 2},
}


def test_server_set_fields_are_stripped_and_last_applied_kept():
    stored = strip_server_fields(DEPLOYMENT)
    assert stored["metadata"] == {"name": "web", "namespace": "shop", "labels": {"app": "web"},
                                  "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}}
    assert "status" not in stored and stored["spec"] == {"replicas": 2}
    assert DEPLOYMENT["metadata"]["uid"] == "u-1", "the listed object is not changed"


def test_controller_owned_pods_and_replicasets_and_the_root_ca_are_left_out():
    pods = ResourceType("v1", "pods", "Pod", True)
    owned = {"metadata": {"name": "web-1", "ownerReferences": [{"kind": "ReplicaSet", "name": "web", "controller": True}]}}
    assert skipped_by_default(pods, owned)
    assert not skipped_by_default(pods, {"metadata": {"name": "standalone"}})
    assert skipped_by_default(ResourceType("v1", "configmaps", "ConfigMap", True), {"metadata": {"name": "kube-root-ca.crt"}})
    assert not skipped_by_default(ResourceType("apps/v1", "deployments", "Deployment", True), owned)


def test_default_kinds_leave_out_events_endpoints_leases_and_match_every_spelling():
    served = [ResourceType("v1", "events", "Event", True), ResourceType("v1", "endpoints", "Endpoints", True),
              ResourceType("coordination.k8s.io/v1", "leases", "Lease", True),
              ResourceType("discovery.k8s.io/v1", "endpointslices", "EndpointSlice", True),
              ResourceType("apps/v1", "deployments", "Deployment", True), ResourceType("v1", "secrets", "Secret", True),
              ResourceType("v1", "nodes", "Node", False), ResourceType("example.com/v1", "widgets", "Widget", True)]
    chosen, unknown = select_types(served, [], [])
    assert [r.kind for r in chosen] == ["Deployment", "Secret", "Widget"] and unknown == []
    chosen, unknown = select_types(served, ["deployments.apps", "widgets.example.com", "Gizmo"], [])
    assert [r.kind for r in chosen] == ["Deployment", "Widget"] and unknown == ["Gizmo"]
    chosen, unknown = select_types(served, [], ["v1/Secret", "Widget"])
    assert [r.kind for r in chosen] == ["Deployment"]


# ----------------------------------------------------------------------------------------------
# Restoring


def test_service_cluster_ips_and_node_ports_are_not_replayed_unless_headless_or_preserved():
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
           "spec": {"type": "NodePort", "clusterIP": "10.0.0.7", "clusterIPs": ["10.0.0.7"],
                    "ports": [{"port": 80, "nodePort": 30080}]}}
    assert restore_form(svc)["spec"] == {"type": "NodePort", "ports": [{"port": 80}]}
    assert restore_form(svc, preserve_node_ports=True)["spec"]["ports"] == [{"port": 80, "nodePort": 30080}]
    headless = dict(svc, spec={"clusterIP": "None", "clusterIPs": ["None"], "ports": [{"port": 80}]})
    assert restore_form(headless)["spec"]["clusterIP"] == "None"


def test_job_selector_and_pv_claim_uid_are_not_replayed():
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "labels": {"controller-uid": "x", "a": "b"}},
           "spec": {"selector": {"matchLabels": {"controller-uid": "x"}},
                    "template": {"metadata": {"labels": {"controller-uid": "x", "batch.kubernetes.io/controller-uid": "x",
                                                         "app": "j"}}}}}
    body = restore_form(job)
    assert "selector" not in body["spec"] and body["spec"]["template"]["metadata"]["labels"] == {"app": "j"}
    assert body["metadata"]["labels"] == {"a": "b"}
    pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv"},
          "spec": {"claimRef": {"namespace": "shop", "name": "data", "uid": "old", "resourceVersion": "9"}}}
    assert restore_form(pv)["spec"]["claimRef"] == {"namespace": "shop", "name": "data"}


def test_namespace_mapping_moves_objects_subjects_and_claims():
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "b", "namespace": "shop"},
               "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "shop"},
                            {"kind": "ServiceAccount", "name": "sa", "namespace": "other"}]}
    moved = map_namespaces(binding, {"shop": "shop-drill"})
    assert moved["metadata"]["namespace"] == "shop-drill"
    assert [s["namespace"] for s in moved["subjects"]] == ["shop-drill", "other"]
    assert binding["metadata"]["namespace"] == "shop"
    ns = map_namespaces({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}, {"shop": "shop-drill"})
    assert ns["metadata"]["name"] == "shop-drill"


def test_restore_order_is_velero_s():
    def obj(api_version, kind):
        return {"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}}
    order = [obj("apiextensions.k8s.io/v1", "CustomResourceDefinition"), obj("v1", "Namespace"),
             obj("storage.k8s.io/v1", "StorageClass"), obj("v1", "PersistentVolume"), obj("v1", "PersistentVolumeClaim"),
             obj("v1", "Secret"), obj("v1", "ConfigMap"), obj("v1", "ServiceAccount"), obj("v1", "LimitRange"),
             obj("v1", "ResourceQuota"), obj("rbac.authorization.k8s.io/v1", "Role"),
             obj("rbac.authorization.k8s.io/v1", "RoleBinding"), obj("networking.k8s.io/v1", "NetworkPolicy"),
             obj("v1", "Service"), obj("apps/v1", "Deployment"), obj("networking.k8s.io/v1", "Ingress"),
             obj("cert-manager.io/v1", "Certificate")]
    ranks = [restore_rank(o) for o in order]
    assert ranks == sorted(ranks) and len(set(ranks)) >= 15


def test_owner_uids_do_not_count_as_a_difference():
    live = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "uid": "new", "ownerReferences": [
        {"kind": "Widget", "name": "w", "uid": "new-owner"}]}}
    stored = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "ownerReferences": [
        {"kind": "Widget", "name": "w", "uid": "old-owner"}]}}
    assert comparable(live) == comparable(stored)


# ----------------------------------------------------------------------------------------------
# Secrets and drift


SECRET = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "shop", "annotations": {
    "kubectl.kubernetes.io/last-applied-configuration": '{"data":{"password":"aHVudGVyMg=="}}'}},
    "data": {"password": "aHVudGVyMg=="}}


def test_secret_values_are_masked_everywhere():
    shown = json.dumps(masked(SECRET))
    assert "aHVudGVyMg" not in shown and MASK in shown
    rotated = dict(SECRET, data={"password": "bmV3", "token": "dG9r"})
    ops = patch_summary(SECRET, rotated)
    assert ops == [{"op": "replace", "path": "/data/password", "value": MASK},
                   {"op": "add", "path": "/data/token", "value": MASK}]
    without = dict(SECRET, metadata={"name": "s", "namespace": "shop"})
    added = patch_summary(without, SECRET)
    assert "aHVudGVyMg" not in json.dumps(added) and added[0]["path"] == "/metadata/annotations"


def test_patch_summary_of_other_objects_shows_values():
    before = {"kind": "ConfigMap", "data": {"a": "1", "gone": "x"}}
    after = {"kind": "ConfigMap", "data": {"a": "2", "new": "y"}}
    assert patch_summary(before, after) == [{"op": "replace", "path": "/data/a", "value": "2"},
                                            {"op": "remove", "path": "/data/gone"},
                                            {"op": "add", "path": "/data/new", "value": "y"}]
    assert patch_summary({"kind": "ConfigMap", "data": {"a/b": "1"}}, {"kind": "ConfigMap", "data": {"a/b": "2"}})[0][
        "path"] == "/data/a~1b"


def test_the_stored_stream_is_one_canonical_line_per_object_with_its_digest():
    objects = [strip_server_fields(DEPLOYMENT), {"apiVersion": "v1", "kind": "ConfigMap",
                                                 "metadata": {"name": "c", "namespace": "shop"}}]
    digests: dict = {}
    reader = _LinesReader(objects, digests)
    data = b""
    while True:
        chunk = reader.read(7)
        if not chunk:
            break
        data += chunk
    lines = data.splitlines()
    assert [json.loads(line) for line in lines] == objects
    assert digests == {object_key(o): digest(canonical(o)) for o in objects}
    assert object_key(objects[0]) == "apps/v1/Deployment/shop/web"
