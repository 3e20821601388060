"""Discovery answers as k8s_backup reads them (pure parsing; the same against the lab's API server is
in tests/integration/test_k8s_backup_discovery.py)."""

from __future__ import annotations

from ansible_collections.runbook.ops.plugins.module_utils._k8s_objects import (
    ResourceType, _aggregated_types, _classic_versions, map_namespaces)

ALL_VERBS = ("create", "delete", "get", "list", "patch", "update", "watch")


def resource(plural: str, kind: str, scope: str = "Namespaced", verbs=ALL_VERBS, **extra):
    return dict({"resource": plural, "responseKind": {"group": "", "version": "", "kind": kind}, "scope": scope,
                 "verbs": list(verbs)}, **extra)


def test_aggregated_answer_gives_the_preferred_version_of_each_group():
    answer = {"kind": "APIGroupDiscoveryList", "items": [
        {"metadata": {}, "versions": [{"version": "v1", "freshness": "Current", "resources": [
            resource("configmaps", "ConfigMap"), resource("namespaces", "Namespace", "Cluster"),
            resource("bindings", "Binding", verbs=["create"]),
            resource("pods", "Pod", subresources=[{"subresource": "status", "verbs": ["get"]}])]}]},
        {"metadata": {"name": "autoscaling"}, "versions": [
            {"version": "v2", "resources": [resource("horizontalpodautoscalers", "HorizontalPodAutoscaler")]},
            {"version": "v1", "resources": [resource("horizontalpodautoscalers", "HorizontalPodAutoscaler")]}]},
        {"metadata": {"name": "metrics.example.io"}, "versions": [
            {"version": "v1beta1", "freshness": "Stale", "resources": [resource("widgets", "Widget")]}]},
        {"metadata": {"name": "empty.example.io"}, "versions": []},
    ]}
    assert _aggregated_types(answer) == [
        ResourceType("v1", "configmaps", "ConfigMap", True), ResourceType("v1", "namespaces", "Namespace", False),
        ResourceType("v1", "pods", "Pod", True),
        ResourceType("autoscaling/v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", True)]


def test_classic_answers_give_their_group_versions():
    assert _classic_versions({"kind": "APIVersions", "versions": ["v1"]}) == ["v1"]
    assert _classic_versions({"kind": "APIGroupList", "groups": [
        {"name": "apps", "preferredVersion": {"groupVersion": "apps/v1"}},
        {"name": "broken"},
        {"name": "autoscaling", "preferredVersion": {"groupVersion": "autoscaling/v2"}}]}) == ["apps/v1", "autoscaling/v2"]


def test_a_claim_copied_into_another_namespace_asks_for_its_own_volume() -> None:
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
             "metadata": {"name": "data-db-0", "namespace": "shop",
                          "annotations": {"pv.kubernetes.io/bind-completed": "yes", "team": "db"}},
             "spec": {"volumeName": "pv-1", "storageClassName": "fast", "accessModes": ["ReadWriteOnce"]}}
    copied = map_namespaces(claim, {"shop": "shop-drill"})
    assert copied["metadata"] == {"name": "data-db-0", "namespace": "shop-drill", "annotations": {"team": "db"}}
    assert copied["spec"] == {"storageClassName": "fast", "accessModes": ["ReadWriteOnce"]}
    assert claim["spec"]["volumeName"] == "pv-1"  # the original is not changed
    # Restored where it was, it keeps its volume.
    assert map_namespaces(claim, {"other": "other-drill"})["spec"]["volumeName"] == "pv-1"
