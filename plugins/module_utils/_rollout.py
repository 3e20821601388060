# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Waiting for workloads to finish rolling out, the way ``kubectl rollout status`` judges it:
:func:`wait_rollouts` polls (restarts of ``jwt_rotate``/``cert_renew``), :func:`wait_settled`
watches the workload (``k8s_rollout``)."""

from __future__ import annotations

import dataclasses
import json
import time
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError
from ansible_collections.runbook.ops.plugins.module_utils._k8s import (
    K8sClient, K8sForbidden, K8sGone, K8sObject, object_ref, resource_path,
)
from ansible_collections.runbook.ops.plugins.module_utils._k8s_watch import watch

WORKLOAD_KINDS = {"Deployment": "deployments", "StatefulSet": "statefulsets", "DaemonSet": "daemonsets"}


@dataclasses.dataclass(frozen=True)
class Workload:
    """A workload named by kind, namespace and name (what a restart or a rollout wait is about)."""

    kind: str
    name: str
    namespace: str

    @property
    def ref(self) -> str:
        return "%s/%s/%s" % (self.kind, self.namespace, self.name)


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


# ----------------------------------------------------------------------------------------------
# Watch-based waiting (k8s_rollout): the workload's own list endpoint with watch=true from the
# resourceVersion just read, so a wait ends the moment the controller reports the rollout done.

SCALABLE_KINDS = ("Deployment", "StatefulSet")
# Waiting reasons of a Pod that will not fix themselves; named when a rollout fails.
STUCK_REASONS = ("CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError",
                 "CreateContainerError", "InvalidImageName", "RunContainerError")


class Waited(t.NamedTuple):
    """How a wait ended: ``ok``, the last object seen, the seconds waited, what was missing."""

    ok: bool
    obj: K8sObject
    seconds: float
    problem: str


def settled(kind: str, obj: K8sObject, generation: int) -> t.Tuple[bool, str]:
    """:func:`rollout_done`, and every replica accounted for: as many Pods as desired, all ready
    (all available for a Deployment), none left over; so a scale to zero waits for the Pods to go."""
    done, why = rollout_done(kind, obj, generation)
    if not done or kind == "DaemonSet":
        return done, why
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    want = int(spec.get("replicas", 1))
    total, ready = int(status.get("replicas", 0)), int(status.get("readyReplicas", 0))
    if total != want:
        return False, "%d replicas exist, %d desired" % (total, want)
    if ready != want:
        return False, "%d of %d replicas ready" % (ready, want)
    if kind == "Deployment" and (int(status.get("unavailableReplicas", 0)) or int(status.get("availableReplicas", 0)) != want):
        return False, "%d of %d replicas available" % (int(status.get("availableReplicas", 0)), want)
    return True, ""


def pod_problems(client: K8sClient, obj: K8sObject) -> t.List[str]:
    """Why the workload's Pods are not ready, one entry per Pod with a known reason:
    ``Pod/ns/name: container app CrashLoopBackOff (back-off 10s ...)``."""
    meta = obj.get("metadata") or {}
    labels = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    if not labels:
        return []
    selector = ",".join("%s=%s" % item for item in sorted(labels.items()))
    problems = []
    for pod in client.list("v1", "pods", meta.get("namespace"), label_selector=selector):
        status = pod.get("status") or {}
        reasons = []
        for cstat in list(status.get("initContainerStatuses") or []) + list(status.get("containerStatuses") or []):
            waiting = (cstat.get("state") or {}).get("waiting") or {}
            last = (cstat.get("lastState") or {}).get("terminated") or {}
            if waiting.get("reason") in STUCK_REASONS:
                reasons.append("container %s %s%s" % (cstat.get("name"), waiting["reason"],
                                                      " (%s)" % waiting["message"] if waiting.get("message") else ""))
            elif last.get("reason") == "OOMKilled":
                reasons.append("container %s last run OOMKilled" % cstat.get("name"))
        if reasons:
            problems.append("Pod/%s/%s: %s" % (meta.get("namespace"), pod["metadata"]["name"], "; ".join(reasons)))
    return problems


def wait_settled(client: K8sClient, kind: str, name: str, namespace: str, generation: int,
                 timeout: float) -> Waited:
    """Wait (watching the workload) until :func:`settled`; ``ok=False`` with the problem on timeout.
    ``ProgressDeadlineExceeded`` raises at once (:class:`RunbookError`, with the Pods' reasons)."""
    started = time.monotonic()
    deadline = started + timeout
    plural = WORKLOAD_KINDS[kind]
    path = resource_path("apps/v1", plural, namespace)
    field = "metadata.name=%s" % name
    obj: K8sObject = {}
    why = ""

    def judge(current: K8sObject) -> bool:
        nonlocal obj, why
        obj = current
        try:
            done, why = settled(kind, current, generation)
        except RunbookError as exc:
            problems = pod_problems(client, current)
            raise RunbookError(exc.msg + ("; " + "; ".join(problems) if problems else ""))
        return done

    while True:
        listed = client.request("GET", path, query={"fieldSelector": field},
                                what="get %s" % object_ref(kind, name, namespace))
        items = listed.get("items") or []
        if not items:
            raise RunbookError("%s disappeared while waiting for its rollout" % object_ref(kind, name, namespace))
        if judge(items[0]):
            return Waited(True, obj, round(time.monotonic() - started, 3), "")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return Waited(False, obj, round(time.monotonic() - started, 3), why)
        version = (listed.get("metadata") or {}).get("resourceVersion")
        try:
            for kind_of_event, current in watch(client, path, {"fieldSelector": field, "resourceVersion": version},
                                                remaining):
                if kind_of_event in ("ADDED", "MODIFIED") and judge(current):
                    return Waited(True, obj, round(time.monotonic() - started, 3), "")
                if time.monotonic() >= deadline:
                    break
        except K8sGone:
            continue
        except K8sForbidden:
            # May get but not watch: a bounded poll, one read a second.
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


# ----------------------------------------------------------------------------------------------
# Revisions: Deployments keep them on their ReplicaSets (``deployment.kubernetes.io/revision``),
# StatefulSets and DaemonSets in ControllerRevisions (``.revision``, data = a template patch).

DEPLOYMENT_REVISION = "deployment.kubernetes.io/revision"


def _owned(client: K8sClient, obj: K8sObject, api_version: str, plural: str) -> t.List[K8sObject]:
    meta = obj.get("metadata") or {}
    labels = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    selector = ",".join("%s=%s" % item for item in sorted(labels.items())) or None
    return [item for item in client.list(api_version, plural, meta.get("namespace"), label_selector=selector)
            if any(ref.get("uid") == meta.get("uid") for ref in (item.get("metadata") or {}).get("ownerReferences") or [])]


def revisions(client: K8sClient, kind: str, obj: K8sObject) -> t.Dict[int, K8sObject]:
    """``{revision: ReplicaSet or ControllerRevision}`` of a workload."""
    found: t.Dict[int, K8sObject] = {}
    if kind == "Deployment":
        for rs in _owned(client, obj, "apps/v1", "replicasets"):
            number = ((rs.get("metadata") or {}).get("annotations") or {}).get(DEPLOYMENT_REVISION)
            if number and str(number).isdigit():
                found[int(number)] = rs
        return found
    for rev in _owned(client, obj, "apps/v1", "controllerrevisions"):
        found[int(rev.get("revision", 0))] = rev
    return found


def current_revision(client: K8sClient, kind: str, obj: K8sObject) -> t.Optional[int]:
    """The revision the workload's template is at (the newest one: rolling back renumbers)."""
    if kind == "Deployment":
        number = ((obj.get("metadata") or {}).get("annotations") or {}).get(DEPLOYMENT_REVISION)
        return int(number) if number and str(number).isdigit() else None
    found = revisions(client, kind, obj)
    return max(found) if found else None


def revision_template_patch(kind: str, revision: K8sObject) -> t.Tuple[str, t.Any]:
    """``(patch_type, patch)`` that puts a workload's Pod template back to ``revision``'s, and
    nothing else (the workload's own annotations stay)."""
    if kind == "Deployment":
        template = json.loads(json.dumps((revision.get("spec") or {}).get("template") or {}))
        labels = (template.get("metadata") or {}).get("labels") or {}
        labels.pop("pod-template-hash", None)
        return "json", [{"op": "replace", "path": "/spec/template", "value": template}]
    # A ControllerRevision's data is the strategic merge patch its controller would apply.
    return "strategic", revision.get("data") or {}
