"""Discovery answers as k8s_backup reads them (pure parsing; the same against the lab's API server is
in tests/integration/test_k8s_backup_discovery.py)."""

from __future__ import annotations

from ansible_collections.runbook.ops.plugins.module_utils._k8s_objects import (
    ResourceType, _aggregated_types, _classic_versions)

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
