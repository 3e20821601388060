# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reversible network isolation of a namespace (or of some of its Pods) during an incident: the
operations of ``ns_isolate`` (isolate, release).

NetworkPolicies add up: a deny-all policy does not cancel another policy's allow rule. Isolation
therefore (1) creates a deny-all ingress/egress policy for the quarantined Pods (with the few
exceptions asked for), (2) takes every other policy that selects those Pods out of play by
narrowing its ``podSelector`` (to match nothing, or to exclude the quarantined Pods), (3) optionally
points Services that select those Pods at nothing, scales workloads to zero and (4) labels the Pods.

Releasing reads the record (see ``_isolator``), restores each recorded field on the objects that
still carry the annotation, deletes the deny policy and then the record. A failure midway undoes
what the run applied; if even that fails the record stays and ``state=released`` completes the job.
The pure parts (names, selectors, policies, options) are in ``_quarantine``.
"""

from __future__ import annotations

import copy
import json
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import Result, RunbookError, Task
from ansible_collections.runbook.ops.plugins.module_utils._evidence import capture as capture_evidence
from ansible_collections.runbook.ops.plugins.module_utils._isolator import Isolator, Record, Step, empty_record
from ansible_collections.runbook.ops.plugins.module_utils._k8s import K8sClient, K8sError, K8sObject, reports_api_requests
from ansible_collections.runbook.ops.plugins.module_utils._quarantine import (
    INCIDENT_LABEL, RECORD_LABEL, IsolateOptions, check_incident_id, deny_policy_spec, selector_string,
)

ENFORCEMENT_WARNING = ("NetworkPolicies are enforced only by a network plugin (CNI) that implements them "
                       "(Calico, Cilium, ...); without one the isolation policies are stored but change no traffic")
UNENCRYPTED_EVIDENCE = ("evidence.encryption_recipients is empty: the evidence is stored unencrypted; anyone who "
                        "can read the repository can read the logs and objects")
# Result fields that add up when several incidents are released at once.
SUMMED = ("policies_created", "policies_neutralised", "services_suspended", "workloads_scaled", "pods_labelled",
          "changes")


@reports_api_requests
def run_isolation(task: Task[IsolateOptions]) -> Result:
    """``ns_isolate``: isolate the task's incident, or release it (or every incident recorded)."""
    client = task.client(K8sClient.from_params)
    if task.options.state == "released":
        return _release_all(task, client)
    result = isolate(task, client, _evidence_capture(task, client) if task.options.evidence.capture else None)
    if result["changed"] and result.get("evidence") is not None and not task.options.evidence.encryption_recipients:
        task.warn(UNENCRYPTED_EVIDENCE)
    return result


def _evidence_capture(task: Task[IsolateOptions], client: K8sClient) -> t.Callable[[], K8sObject]:
    """What stores the evidence of a new isolation, run just before its first change."""
    def capture() -> K8sObject:
        from ansible_collections.runbook.ops.plugins.module_utils._repository import Repository

        opts = task.options
        return capture_evidence(client, Repository.from_options(dict(opts.evidence.storage)),
                                namespace=opts.namespace, incident_id=t.cast(str, opts.incident_id),
                                pod_selector=opts.pod_selector, opts=opts.evidence)
    return capture


def _release_all(task: Task[IsolateOptions], client: K8sClient) -> Result:
    namespace, explicit = task.options.namespace, task.options.incident_id
    incidents = [explicit] if explicit else recorded_incidents(client, namespace)
    if not incidents:
        result = release(task, client, "none")
        result.update(incident_id=None, msg="no isolation is recorded in namespace %s; nothing to release" % namespace)
        return result
    results = [release(task, client, incident) for incident in incidents]
    result = results[0]
    for other in results[1:]:
        for key in SUMMED:
            result[key] = result[key] + other[key]
        result["changed"] = result["changed"] or other["changed"]
        result["diff"]["before"].update(other["diff"]["before"])
        result["diff"]["after"].update(other["diff"]["after"])
    if len(results) > 1:
        result["incident_id"] = ",".join(incidents)
        result["msg"] = "released incidents %s in namespace %s (%d change(s))" % (
            result["incident_id"], namespace, len(result["changes"]))
    return result


def _summary(record: t.Optional[Record]) -> Result:
    record = record or {}
    return {
        "policies_created": [record["deny_policy"]] if record.get("deny_policy") else [],
        "policies_neutralised": sorted(record.get("policies", {})),
        "services_suspended": sorted(record.get("services", {})),
        "workloads_scaled": [{"workload": k, "replicas": v["replicas"]}
                             for k, v in sorted(record.get("workloads", {}).items())],
        "pods_labelled": sorted(record.get("pods", [])),
    }


def isolate(task: Task[IsolateOptions], client: K8sClient,
            capture: t.Optional[t.Callable[[], K8sObject]] = None) -> Result:
    """Isolate the task's incident; ``capture`` (evidence) runs before the first change of a new isolation.

    A new isolation whose ``pod_selector`` matches no Pod is refused before anything is captured or
    changed (in check mode too), unless ``allow_empty_selector``: during an incident, a mistyped
    label must not read as a quarantine. Later runs of an isolation in effect are not refused (its
    Pods may be gone, scaled to zero by the first run).
    """
    opts = task.options
    incident_id, namespace = t.cast(str, opts.incident_id), opts.namespace
    if client.get("v1", "namespaces", namespace, missing_ok=True) is None:
        raise RunbookError("cannot isolate namespace %s: it does not exist" % namespace)
    iso = Isolator(task, client, incident_id)
    deny_spec = deny_policy_spec(opts.pod_selector, allow_dns=opts.allow_dns,
                                 allow_from_namespaces=opts.allow_from_namespaces, allow_cidrs=opts.allow_cidrs)
    existing = iso.read_record()
    if existing is not None and existing.get("pod_selector") != opts.pod_selector:
        raise RunbookError("incident %s already isolates pod_selector %s in namespace %s; release it before "
                           "isolating pod_selector %s" % (incident_id, json.dumps(existing.get("pod_selector")),
                                                          namespace, json.dumps(opts.pod_selector)))
    record = copy.deepcopy(existing) if existing else empty_record(incident_id, opts)
    record["options"] = opts.options_recorded
    steps = iso.plan(record, deny_spec)
    if opts.pod_selector and existing is None and not iso.matched_pods:
        if not opts.allow_empty_selector:
            raise RunbookError(iso.empty_match(), changed=False, isolated=False, changes=[])
        task.warn("pod_selector %s matches no Pod in namespace %s now (allow_empty_selector=true): the "
                  "isolation quarantines the Pods that will carry these labels"
                  % (selector_string(opts.pod_selector), namespace))
    if existing is None:
        iso.changes.insert(0, "create the isolation record %s" % iso.record_ref)
    if not steps and existing is not None and existing.get("state") == "isolated":
        result = dict(_summary(existing), changed=False, evidence=existing.get("evidence"),
                      msg="incident %s is isolated in namespace %s already; nothing changed" % (incident_id, namespace))
    elif task.check_mode:
        for step in steps:
            iso.apply_step(step, record)
        if existing is None and capture is not None:
            iso.changes.insert(0, "capture evidence into the repository")
        result = dict(_summary(record), changed=True, evidence=None,
                      msg="would isolate incident %s in namespace %s (%d change(s))"
                      % (incident_id, namespace, len(iso.changes)))
    else:
        result = _apply(iso, record, existing, steps, capture)
    task.warn(ENFORCEMENT_WARNING)
    result.update(isolated=True, incident_id=incident_id, namespace=namespace, record=iso.record_ref,
                  changes=iso.changes, diff=iso.diff)
    return result


def _apply(iso: Isolator, record: Record, existing: t.Optional[Record], steps: t.List[Step],
           capture: t.Optional[t.Callable[[], K8sObject]]) -> Result:
    """Capture evidence (new isolations), write the record, apply ``steps``, mark the record isolated."""
    evidence = (existing or {}).get("evidence")
    if existing is None and capture is not None:
        evidence = capture()
        record["evidence"] = evidence
    record["state"] = "applying"
    iso.write_record(record, create=existing is None)
    applied: t.List[Step] = []
    for step in steps:
        try:
            iso.apply_step(step, record)
        except RunbookError as exc:  # K8sError included
            _roll_back(iso, record, existing, applied + [step], exc)
        applied.append(step)
    record["state"] = "isolated"
    iso.write_record(record, create=False)
    return dict(_summary(record), changed=True, evidence=evidence,
                msg="isolated incident %s in namespace %s (%d change(s))"
                % (iso.incident_id, iso.namespace, len(iso.changes)))


def _roll_back(iso: Isolator, record: Record, existing: t.Optional[Record], attempted: t.List[Step],
               exc: RunbookError) -> t.NoReturn:
    """Undo the ``attempted`` steps (the last one failed) and fail saying whether that worked."""
    failed = attempted[-1]
    what = "%s %s" % (failed[0].replace("_", " "), failed[1])
    iso.changes = []
    problems = iso.restore(record, only=attempted)
    if not problems:
        try:
            if existing is None:
                iso.delete_record()
            else:
                iso.write_record(existing, create=False)
        except K8sError as inner:
            problems.append(inner.msg)
    if not problems:
        raise RunbookError("isolation of incident %s in namespace %s failed at step '%s': %s; every change this run "
                           "made was rolled back" % (iso.incident_id, iso.namespace, what, exc.msg),
                           rolled_back=True, record=None if existing is None else iso.record_ref)
    try:
        record["state"] = "incomplete"
        iso.write_record(record, create=False)
    except K8sError:
        pass
    raise RunbookError("isolation of incident %s in namespace %s failed at step '%s': %s; rolling back failed too "
                       "(%s): %s lists every change, run state=released to complete the rollback"
                       % (iso.incident_id, iso.namespace, what, exc.msg, "; ".join(problems), iso.record_ref),
                       rolled_back=False, record=iso.record_ref)


def release(task: Task[IsolateOptions], client: K8sClient, incident_id: str) -> Result:
    """Restore everything the record of ``incident_id`` lists, then delete the deny policy and the record."""
    namespace = task.options.namespace
    iso = Isolator(task, client, check_incident_id(incident_id))
    record = iso.read_record() if client.get("v1", "namespaces", namespace, missing_ok=True) is not None else None
    base = dict(incident_id=incident_id, namespace=namespace, isolated=False)
    if record is None:
        return dict(base, changed=False, record=None, changes=[], evidence=None, diff=iso.diff, **_summary(None),
                    msg="incident %s is not isolated in namespace %s; nothing to release" % (incident_id, namespace))
    problems = iso.restore(record)
    if problems:
        raise RunbookError("release of incident %s in namespace %s is incomplete: %s; %s is kept, run again once "
                           "the cause is fixed" % (incident_id, namespace, "; ".join(problems), iso.record_ref),
                           record=iso.record_ref, changes=iso.changes)
    iso.changes.append("delete the isolation record %s" % iso.record_ref)
    if not task.check_mode:
        iso.delete_record()
    return dict(base, changed=True, record=iso.record_ref, changes=iso.changes, evidence=record.get("evidence"),
                diff=iso.diff, **_summary(record),
                msg="%s incident %s in namespace %s (%d change(s))" % (
                    "would release" if task.check_mode else "released", incident_id, namespace, len(iso.changes)))


def recorded_incidents(client: K8sClient, namespace: str) -> t.List[str]:
    """The incidents with an isolation record in ``namespace``."""
    if client.get("v1", "namespaces", namespace, missing_ok=True) is None:
        return []
    cms = client.list("v1", "configmaps", namespace, label_selector="%s=true" % RECORD_LABEL)
    return sorted({(cm["metadata"].get("labels") or {}).get(INCIDENT_LABEL, "") for cm in cms} - {""})
