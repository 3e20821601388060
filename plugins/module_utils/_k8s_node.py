# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The work behind ``runbook.ops.k8s_node``: cordon, drain through the Eviction API, uncordon.

A drain cordons the Node, then evicts every Pod on it except DaemonSet and mirror Pods. Evictions
go through ``pods/eviction`` so PodDisruptionBudgets hold; a 429 (the budget allows no disruption
now) is retried with backoff until ``timeout``, and a drain that runs out of time names the budget
that blocked it. Waiting for evicted Pods to go is a bounded poll of the Node's Pod list.
"""

from __future__ import annotations

import dataclasses
import time
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import Result, RunbookError, Task, options_from
from ansible_collections.runbook.ops.plugins.module_utils._k8s import (
    K8sClient, K8sError, K8sForbidden, K8sNotFound, K8sObject, reports_api_requests, resource_path,
)
from ansible_collections.runbook.ops.plugins.module_utils._names import check_params, duration, k8s_name

STATES = ("cordoned", "drained", "uncordoned")
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"


@dataclasses.dataclass(frozen=True)
class NodeOptions:
    name: t.Optional[str]
    label_selector: t.Optional[str]
    state: str
    delete_emptydir_data: bool
    timeout: float

    @classmethod
    def from_params(cls, params: t.Mapping[str, t.Any]) -> "NodeOptions":
        check_params(params, {"name": lambda what, value: None if value is None else k8s_name(what, value)})
        return options_from(cls, params, timeout=duration("timeout", params["timeout"], 1.0))


def _ref(pod: K8sObject) -> str:
    return "Pod/%s/%s" % (pod["metadata"].get("namespace"), pod["metadata"]["name"])


def skip_reason(pod: K8sObject, delete_emptydir_data: bool) -> t.Optional[str]:
    """Why a Pod on a draining Node is left alone (None: evict it); raises for Pods a drain must
    not lose silently (emptyDir data without ``delete_emptydir_data``, Pods nothing recreates)."""
    meta = pod.get("metadata") or {}
    if MIRROR_ANNOTATION in (meta.get("annotations") or {}):
        return "mirror Pod (static, managed by the kubelet)"
    owners = meta.get("ownerReferences") or []
    if any(o.get("kind") == "DaemonSet" and o.get("controller") for o in owners):
        return "DaemonSet Pod"
    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return None
    volumes = [v["name"] for v in (pod.get("spec") or {}).get("volumes") or [] if "emptyDir" in v]
    if volumes and not delete_emptydir_data:
        return "!%s has emptyDir volumes (%s) whose data a drain deletes: set delete_emptydir_data" % (
            _ref(pod), ", ".join(volumes))
    if not any(o.get("controller") for o in owners):
        return "!%s has no controller to recreate it elsewhere; delete it yourself or give it one" % _ref(pod)
    return None


def _matches(selector: t.Mapping[str, t.Any], labels: t.Mapping[str, str]) -> bool:
    if not selector:
        return False
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if (op == "In" and labels.get(key) not in values) or (op == "NotIn" and labels.get(key) in values) \
                or (op == "Exists" and key not in labels) or (op == "DoesNotExist" and key in labels):
            return False
    return True


def blocking_budgets(client: K8sClient, pod: K8sObject) -> t.List[str]:
    meta = pod["metadata"]
    names = []
    for pdb in client.list("policy/v1", "poddisruptionbudgets", meta["namespace"]):
        if _matches((pdb.get("spec") or {}).get("selector") or {}, meta.get("labels") or {}):
            status = pdb.get("status") or {}
            names.append("PodDisruptionBudget/%s/%s (%s healthy, %s desired, %s disruptions allowed)" % (
                meta["namespace"], pdb["metadata"]["name"], status.get("currentHealthy"), status.get("desiredHealthy"),
                status.get("disruptionsAllowed")))
    return names


class Drain:
    """Evictions of one Node's Pods, with their outcome."""

    def __init__(self, task: Task[NodeOptions], client: K8sClient, node: str) -> None:
        self.task = task
        self.client = client
        self.node = node
        self.deadline = time.monotonic() + task.options.timeout
        self.evicted: t.List[str] = []
        self.skipped: t.List[Result] = []

    def pods(self) -> t.List[K8sObject]:
        return self.client.list("v1", "pods", field_selector="spec.nodeName=%s" % self.node)

    def plan(self) -> t.List[K8sObject]:
        chosen, refused = [], []
        for pod in self.pods():
            reason = skip_reason(pod, self.task.options.delete_emptydir_data)
            if reason is None:
                chosen.append(pod)
            elif reason.startswith("!"):
                refused.append(reason[1:])
            else:
                self.skipped.append({"pod": _ref(pod), "reason": reason})
        if refused:
            raise RunbookError("cannot drain Node %s: %s" % (self.node, "; ".join(refused)))
        return chosen

    def evict(self, pod: K8sObject) -> None:
        meta = pod["metadata"]
        body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": meta["name"], "namespace": meta["namespace"]}}
        path = resource_path("v1", "pods", meta["namespace"], meta["name"], "eviction")
        delay = 0.25
        while True:
            try:
                self.client.request("POST", path, body=body, query={"dryRun": "All" if self.task.check_mode else None},
                                    what="evict %s" % _ref(pod), retry=False)
                self.evicted.append(_ref(pod))
                return
            except K8sNotFound:
                return  # gone already
            except K8sError as exc:
                if exc.status != 429:
                    raise
            if time.monotonic() + delay > self.deadline:
                budgets = blocking_budgets(self.client, pod)
                raise RunbookError("draining Node %s timed out after %gs: evicting %s is refused by %s" % (
                    self.node, self.task.options.timeout, _ref(pod), "; ".join(budgets) or "a disruption budget (429)"),
                    evicted=self.evicted)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def wait_gone(self, pods: t.Sequence[K8sObject]) -> None:
        uids = {p["metadata"]["uid"] for p in pods}
        while True:
            left = [p for p in self.pods() if p["metadata"]["uid"] in uids]
            if not left:
                return
            if time.monotonic() > self.deadline:
                raise RunbookError("draining Node %s timed out after %gs: still terminating: %s" % (
                    self.node, self.task.options.timeout, ", ".join(_ref(p) for p in left)), evicted=self.evicted)
            time.sleep(0.25)


def _nodes(client: K8sClient, opts: NodeOptions) -> t.List[K8sObject]:
    if opts.name:
        node = client.get("v1", "nodes", opts.name, missing_ok=True)
        if node is None:
            raise RunbookError("Node %s not found" % opts.name)
        return [node]
    found = client.list("v1", "nodes", label_selector=opts.label_selector)
    if not found:
        raise RunbookError("no Node matches label selector %r" % opts.label_selector)
    return found


def _cordon(task: Task[NodeOptions], client: K8sClient, node: K8sObject, unschedulable: bool) -> bool:
    if bool((node.get("spec") or {}).get("unschedulable")) == unschedulable:
        return False
    client.patch("v1", "nodes", node["metadata"]["name"], {"spec": {"unschedulable": True if unschedulable else None}},
                 resource_version=node["metadata"]["resourceVersion"], dry_run=task.check_mode)
    return True


@reports_api_requests
def run_node(task: Task[NodeOptions]) -> Result:
    client = task.client(K8sClient.from_params)
    opts = task.options
    entries: t.List[Result] = []
    result: Result = {"changed": False, "nodes": entries}
    for node in _nodes(client, opts):
        name = node["metadata"]["name"]
        entry: Result = {"name": name, "unschedulable": {"before": bool((node.get("spec") or {}).get("unschedulable"))},
                         "evicted": [], "skipped": []}
        entries.append(entry)
        try:
            changed = _cordon(task, client, node, opts.state != "uncordoned")
        except K8sForbidden as exc:
            raise RunbookError.keeping("cannot %s Node %s: %s" % ("uncordon" if opts.state == "uncordoned" else "cordon",
                                                                  name, exc.msg), result)
        entry["unschedulable"]["after"] = opts.state != "uncordoned"
        result["changed"] = result["changed"] or changed
        if opts.state == "drained":
            drain = Drain(task, client, name)
            pods = drain.plan()
            entry["skipped"] = drain.skipped
            try:
                for pod in pods:
                    drain.evict(pod)
                if not task.check_mode:
                    drain.wait_gone(pods)
            except RunbookError as exc:
                entry["evicted"] = drain.evicted
                raise RunbookError.keeping(exc.msg, dict(result, changed=True))
            entry["evicted"] = drain.evicted
            result["changed"] = result["changed"] or bool(drain.evicted)
    verb = {"cordoned": "cordoned", "drained": "drained", "uncordoned": "uncordoned"}[opts.state]
    evicted = sum(len(e["evicted"]) for e in entries)
    result["msg"] = "%s%s %d Node(s)%s" % ("check mode: would have " if task.check_mode else "", verb, len(entries),
                                           ", %d Pod(s) evicted" % evicted if opts.state == "drained" else "")
    return result
