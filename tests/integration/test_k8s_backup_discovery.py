"""k8s_backup's discovery against the lab's API server: the aggregated format (two requests) and the
classic one (one request per group version) find the same kinds, a custom resource made a moment
ago included; a backup costs requests per kind, not per namespace."""

from __future__ import annotations

import typing as t
import uuid

import pytest

from ansible_collections.runbook.ops.plugins.module_utils._k8s_objects import ResourceType, discover
from tests.harness.collection import run_module
from tests.harness.k8s import namespace, wait_for


def counted(client: t.Any, aggregated: bool) -> t.Tuple[t.Set[ResourceType], int]:
    before = client.requests
    found = discover(client, aggregated=aggregated)
    assert len(found) == len(set(found)), "a type is listed twice"
    return set(found), client.requests - before


@pytest.fixture
def widget_crd(kube_admin) -> t.Iterator[ResourceType]:
    """A namespaced custom resource type of a group no other test uses."""
    group = "d%s.runbook.test" % uuid.uuid4().hex[:8]
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "widgets.%s" % group},
           "spec": {"group": group, "scope": "Namespaced",
                    "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                    "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                        "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}}
    kube_admin.create("apiextensions.k8s.io/v1", "customresourcedefinitions", crd)
    try:
        yield ResourceType("%s/v1" % group, "widgets", "Widget", True)
    finally:
        kube_admin.delete("apiextensions.k8s.io/v1", "customresourcedefinitions", crd["metadata"]["name"], missing_ok=True)


def test_aggregated_and_classic_discovery_find_the_same_kinds(kube_admin, widget_crd):
    # The API server publishes a new CRD to discovery a moment after creating it.
    wait_for(lambda: widget_crd in counted(kube_admin, True)[0] and widget_crd in counted(kube_admin, False)[0],
             timeout=30, what="the new CRD in both discovery formats")
    aggregated, aggregated_requests = counted(kube_admin, True)
    classic, classic_requests = counted(kube_admin, False)
    assert aggregated == classic, "only aggregated: %s; only classic: %s" % (
        sorted(map(str, aggregated - classic)), sorted(map(str, classic - aggregated)))
    assert aggregated_requests == 2, "the server answered the aggregated format: /api and /apis only"
    assert classic_requests > 10, "classic discovery reads each group version"
    expected = {ResourceType("apps/v1", "deployments", "Deployment", True), ResourceType("v1", "secrets", "Secret", True),
                ResourceType("v1", "namespaces", "Namespace", False),
                ResourceType("cert-manager.io/v1", "certificates", "Certificate", True),
                ResourceType("autoscaling/v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", True)}
    assert expected <= aggregated, "preferred versions, scope and kinds as the server serves them"
    assert not any(r.plural.endswith("/status") or r.plural == "bindings" for r in aggregated), \
        "subresources and types that cannot be listed are left out"


def test_backup_requests_grow_with_kinds_not_namespaces(kube_cluster, kube_admin, tmp_path):
    names = ["t-%s-%d" % (uuid.uuid4().hex[:6], i) for i in range(6)]
    for ns in names:
        namespace(kube_admin, ns)
        kube_admin.create("v1", "configmaps", {"metadata": {"name": "settings", "namespace": ns}, "data": {"a": "b"}})
    try:
        args = dict(kube_cluster.auth(), repository="file://%s" % (tmp_path / "repo"), allow_unencrypted_secrets=True)
        one = run_module("k8s_backup", dict(args, namespaces=names[:1]))
        six = run_module("k8s_backup", dict(args, namespaces=names))
        assert not one.get("failed") and not six.get("failed"), (one.get("msg"), six.get("msg"))
        kinds = len(six["counts"])
        assert six["counts"]["v1/ConfigMap"] == 6
        # Discovery (2), the version, the Namespaces, one list per kind, the cluster-scoped lists.
        assert six["api_requests"] <= kinds + 8, six["api_requests"]
        assert six["api_requests"] <= one["api_requests"] + 1
    finally:
        for ns in names:
            kube_admin.delete("v1", "namespaces", ns, missing_ok=True)
