"""k8s_node against the test cluster: a KWOK Node of the test's own (tainted, so only the test's Pods
land on it), drained through the Eviction API with the real disruption controller judging budgets."""

from __future__ import annotations

import time
import typing as t
import uuid

import pytest

from tests.harness import kwok
from tests.harness.collection import run_module
from tests.harness.k8s import deployment, wait_for

TAINT = {"key": "runbook.test/drain", "value": "true", "effect": "NoSchedule"}


@pytest.fixture
def drain_node(kube_admin) -> t.Iterator[str]:
    name = "kwok-drain-" + uuid.uuid4().hex[:6]
    kube_admin.create("v1", "nodes", kwok.node(name))
    wait_for(lambda: kwok.node_ready(kube_admin, name), timeout=60, what="Node %s Ready" % name)
    kube_admin.patch("v1", "nodes", name, {"spec": {"taints": [TAINT]}})
    yield name
    kube_admin.delete("v1", "nodes", name, missing_ok=True)


def pinned(name: str, ns: str, node: str, replicas: int, emptydir: bool = False) -> dict:
    body = deployment(name, ns, replicas)
    spec = body["spec"]["template"]["spec"]
    spec.update(nodeSelector={"kubernetes.io/hostname": node}, tolerations=[dict(TAINT, operator="Equal")])
    if emptydir:
        spec["volumes"] = [{"name": "scratch", "emptyDir": {}}]
    return body


def on_node(client, node: str) -> t.List[str]:
    return sorted(p["metadata"]["name"] for p in client.list("v1", "pods", field_selector="spec.nodeName=%s" % node))


def node_args(cluster, node: str, **args: t.Any) -> dict:
    return dict(cluster.auth(), name=node, **args)


def test_drain_evicts_uncordon_lets_pods_back(kube_cluster, kube_admin, kube_namespace, drain_node):
    ns = kube_namespace
    kube_admin.create("apps/v1", "deployments", pinned("web", ns, drain_node, 2))
    kube_admin.create("apps/v1", "deployments", pinned("cache", ns, drain_node, 1, emptydir=True))
    wait_for(lambda: len(on_node(kube_admin, drain_node)) == 3, timeout=60, what="3 Pods on the node")
    planned = run_module("k8s_node", node_args(kube_cluster, drain_node, state="drained", delete_emptydir_data=True),
                         check_mode=True)
    assert not planned.get("failed") and planned["changed"], planned
    assert len(planned["nodes"][0]["evicted"]) == 3
    assert not kube_admin.get("v1", "nodes", drain_node)["spec"].get("unschedulable")  # dry run
    assert len(on_node(kube_admin, drain_node)) == 3

    refused = run_module("k8s_node", node_args(kube_cluster, drain_node, state="drained"))
    assert refused.get("failed") and "emptyDir volumes (scratch)" in refused["msg"], refused

    drained = run_module("k8s_node", node_args(kube_cluster, drain_node, state="drained", delete_emptydir_data=True))
    assert not drained.get("failed"), drained
    assert len(drained["nodes"][0]["evicted"]) == 3
    assert kube_admin.get("v1", "nodes", drain_node)["spec"]["unschedulable"] is True
    old = set(drained["nodes"][0]["evicted"])
    assert not old & {"Pod/%s/%s" % (ns, p) for p in on_node(kube_admin, drain_node)}
    uncordoned = run_module("k8s_node", node_args(kube_cluster, drain_node, state="uncordoned"))
    assert not uncordoned.get("failed") and uncordoned["changed"], uncordoned
    assert not kube_admin.get("v1", "nodes", drain_node)["spec"].get("unschedulable")
    wait_for(lambda: kwok.rolled_out(kube_admin, "deployments", ns, "web"), timeout=60, what="web back on the node")


def test_pdb_blocking_a_drain_fails_naming_it_within_the_timeout(kube_cluster, kube_admin, kube_namespace, drain_node):
    ns = kube_namespace
    kube_admin.create("apps/v1", "deployments", pinned("payments", ns, drain_node, 2))
    kube_admin.create("policy/v1", "poddisruptionbudgets", {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "payments-pdb", "namespace": ns},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "payments"}}}})
    wait_for(lambda: kwok.rolled_out(kube_admin, "deployments", ns, "payments"), timeout=60, what="payments ready")
    wait_for(lambda: (kube_admin.get("policy/v1", "poddisruptionbudgets", "payments-pdb", ns).get("status") or {})
             .get("currentHealthy") == 2, timeout=60, what="the budget observed")
    started = time.monotonic()
    result = run_module("k8s_node", node_args(kube_cluster, drain_node, state="drained", timeout="4s"))
    took = time.monotonic() - started
    assert result.get("failed"), result
    assert "PodDisruptionBudget/%s/payments-pdb" % ns in result["msg"], result["msg"]
    assert "timed out after 4s" in result["msg"]
    assert took < 15, took
    assert result["api_requests"] > 0
    assert len(on_node(kube_admin, drain_node)) == 2  # nothing evicted
