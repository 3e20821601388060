# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Waiting for workloads restarted with ``kubectl rollout restart``'s stamp to finish rolling out,
the way ``kubectl rollout status`` judges it."""

from __future__ import annotations

import time
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError
from ansible_collections.runbook.ops.plugins.module_utils._k8s import K8sClient, K8sObject

WORKLOAD_KINDS = {"Deployment": "deployments", "StatefulSet": "statefulsets", "DaemonSet": "daemonsets"}


def rollout_done(kind: str, obj: K8sObject, generation: int) -> t.Tuple[bool, str]:
    """kubectl rollout status, in one function: (done, what is still missing)."""
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    if status.get("observedGeneration", 0) < generation:
        return False, "the controller has not seen the new template yet"
    if kind == "Deployment":
        for cond in status.get("conditions") or []:
            if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
                raise RunbookError("rollout of Deployment/%s/%s failed: %s" % (
                    obj["metadata"]["namespace"], obj["metadata"]["name"], cond.get("message", "progress deadline exceeded")))
        want = spec.get("replicas", 1)
        updated, total, available = (status.get("updatedReplicas", 0), status.get("replicas", 0),
                                     status.get("availableReplicas", 0))
        if updated < want:
            return False, "%d of %d new replicas updated" % (updated, want)
        if total > updated:
            return False, "%d old replicas pending termination" % (total - updated)
        if available < updated:
            return False, "%d of %d updated replicas available" % (available, updated)
        return True, ""
    if kind == "StatefulSet":
        if (spec.get("updateStrategy") or {}).get("type") == "OnDelete":
            return True, ""
        want = spec.get("replicas", 1)
        if status.get("readyReplicas", 0) < want:
            return False, "%d of %d replicas ready" % (status.get("readyReplicas", 0), want)
        if status.get("updateRevision") != status.get("currentRevision"):
            return False, "%d of %d replicas updated" % (status.get("updatedReplicas", 0), want)
        return True, ""
    want = status.get("desiredNumberScheduled", 0)
    if status.get("updatedNumberScheduled", 0) < want:
        return False, "%d of %d pods updated" % (status.get("updatedNumberScheduled", 0), want)
    if status.get("numberAvailable", 0) < want:
        return False, "%d of %d updated pods available" % (status.get("numberAvailable", 0), want)
    return True, ""


Started = t.Tuple[str, str, str, int]
"""``(kind, name, namespace, generation)`` of a workload whose rollout was started."""


def wait_rollouts(client: K8sClient, started: t.Sequence[Started], timeout: float,
                  interval: float = 1.0) -> t.Optional[str]:
    """Wait until every restarted workload finished rolling out; the problem in words on timeout."""
    deadline = time.monotonic() + timeout
    pending = list(started)
    last = ""
    while pending:
        still = []
        for kind, name, ns, generation in pending:
            obj = client.get("apps/v1", WORKLOAD_KINDS[kind], name, ns) or {}
            done, why = rollout_done(kind, obj, generation)
            if not done:
                still.append((kind, name, ns, generation))
                last = "%s/%s/%s: %s" % (kind, ns, name, why)
        pending = still
        if not pending:
            return None
        if time.monotonic() >= deadline:
            names = ", ".join("%s/%s/%s" % (item[0], item[2], item[1]) for item in pending)
            return "timed out after %gs waiting for the rollout of %s (%s)" % (timeout, names, last)
        time.sleep(interval)
    return None
