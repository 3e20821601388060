# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One incident's isolation in one namespace, against the API: its record ConfigMap, the plan of
steps still needed, applying them and restoring what they changed.

Every change is written to the record *before* it is applied (the original objects in full), and
every changed object carries an annotation naming the incident, so restoring is idempotent and
works from any controller host, also after an interrupted isolation.
"""

from __future__ import annotations

import copy
import json
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError, Task, isoformat, utcnow
from ansible_collections.runbook.ops.plugins.module_utils._k8s import K8sClient, K8sError, K8sNotFound, K8sObject, object_ref
from ansible_collections.runbook.ops.plugins.module_utils._quarantine import (
    INCIDENT_LABEL, NEUTRALISED_ANNOTATION, NP, QUARANTINE_LABEL, RECORD_KEY, RECORD_LABEL, RECORD_VERSION,
    SCALED_ANNOTATION, SUSPENDED_ANNOTATION, SUSPENDED_SELECTOR_KEY, WORKLOADS, IsolateOptions, deny_policy_name,
    neutral_pod_selector, parse_workload, record_name, same_spec, selector_matches, selector_string, stripped,
)

Record = t.Dict[str, t.Any]
"""An isolation record: what was changed, with the original objects (stored as JSON in a ConfigMap)."""
Step = t.Tuple[str, str, t.Any]
"""``(what, name, payload)``: ``create_deny``, ``update_deny``, ``neutralise``, ``suspend``, ``scale``, ``label``."""


def _meta(obj: K8sObject) -> K8sObject:
    return t.cast(K8sObject, obj.setdefault("metadata", {}))


def _annotations(obj: K8sObject) -> t.Dict[str, str]:
    meta = _meta(obj)
    if meta.get("annotations") is None:
        meta["annotations"] = {}
    return t.cast(t.Dict[str, str], meta["annotations"])


def _drop_annotation(obj: K8sObject, key: str) -> None:
    annotations = _meta(obj).get("annotations")
    if annotations and key in annotations:
        del annotations[key]
        if not annotations:
            del _meta(obj)["annotations"]


def empty_record(incident_id: str, opts: IsolateOptions) -> Record:
    return {"version": RECORD_VERSION, "incident_id": incident_id, "namespace": opts.namespace,
            "pod_selector": dict(opts.pod_selector) if opts.pod_selector else None, "options": opts.options_recorded,
            "state": "applying", "created": isoformat(utcnow()), "updated": None,
            "deny_policy": deny_policy_name(incident_id), "deny_policy_created": False,
            "policies": {}, "services": {}, "workloads": {}, "pods": [], "evidence": None}


class _Target(t.NamedTuple):
    """An object a restore step puts back."""

    api_version: str
    plural: str
    kind: str
    name: str


class Isolator:
    """Plans, applies and releases one incident's isolation in the task's namespace; warnings leave
    through the task, changes and the diff are collected here."""

    def __init__(self, task: Task[IsolateOptions], client: K8sClient, incident_id: str) -> None:
        self.task = task
        self.client = client
        self.namespace = task.options.namespace
        self.incident_id = incident_id
        self.check_mode = task.check_mode
        self.changes: t.List[str] = []
        self.diff_before: t.Dict[str, t.Any] = {}
        self.diff_after: t.Dict[str, t.Any] = {}
        self.matched_pods: t.List[str] = []

    @property
    def diff(self) -> t.Dict[str, t.Any]:
        return {"before": self.diff_before, "after": self.diff_after}

    # -- record -----------------------------------------------------------------------------------

    @property
    def record_ref(self) -> str:
        return object_ref("ConfigMap", record_name(self.incident_id), self.namespace)

    def read_record(self) -> t.Optional[Record]:
        cm = self.client.get("v1", "configmaps", record_name(self.incident_id), self.namespace, missing_ok=True)
        if cm is None:
            return None
        try:
            record = json.loads((cm.get("data") or {})[RECORD_KEY])
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except (KeyError, ValueError, TypeError):
            raise RunbookError("%s exists but holds no readable isolation record (key %s); it was not written by "
                               "runbook.ops or was edited by hand" % (self.record_ref, RECORD_KEY))
        if record.get("incident_id") != self.incident_id:
            raise RunbookError("%s records incident %r, not %r" % (self.record_ref, record.get("incident_id"),
                                                                   self.incident_id))
        return record

    def write_record(self, record: Record, create: bool) -> None:
        record["updated"] = isoformat(utcnow())
        body = {"metadata": {"name": record_name(self.incident_id), "namespace": self.namespace,
                             "labels": {RECORD_LABEL: "true", INCIDENT_LABEL: self.incident_id,
                                        "app.kubernetes.io/managed-by": "runbook.ops"}},
                "data": {RECORD_KEY: json.dumps(record, indent=1, sort_keys=True)}}
        if create:
            self.client.create("v1", "configmaps", body, self.namespace)
        else:
            self.client.modify("v1", "configmaps", record_name(self.incident_id),
                               lambda cm: dict(cm, data=body["data"]), self.namespace)

    def delete_record(self) -> None:
        self.client.delete("v1", "configmaps", record_name(self.incident_id), self.namespace, missing_ok=True)

    # -- planning ---------------------------------------------------------------------------------

    def selected_pods(self) -> t.List[K8sObject]:
        pods = self.client.list("v1", "pods", self.namespace,
                                label_selector=selector_string(self.task.options.pod_selector))
        return [p for p in pods if not p["metadata"].get("deletionTimestamp")]

    def plan(self, record: Record, deny_spec: K8sObject) -> t.List[Step]:
        """The steps still needed, in the order they are applied; adds what they change to ``record`` first."""
        opts = self.task.options
        pods = self.selected_pods()
        self.matched_pods = [p["metadata"]["name"] for p in pods]
        pod_labels = [p["metadata"].get("labels") or {} for p in pods]
        if opts.pod_selector:
            pod_labels.append(dict(opts.pod_selector))  # also Pods created later
        steps = self._plan_policies(record, deny_spec, pod_labels)
        if opts.suspend_services:
            steps += self._plan_services(record, pod_labels)
        if opts.label_pods:
            steps += self._plan_labels(record, pods)
        elif opts.pod_selector and len(opts.pod_selector) > 1 and any(s[0] == "neutralise" for s in steps):
            raise RunbookError("label_pods=false with a pod_selector of several labels: other policies can only be "
                               "narrowed to skip the quarantined Pods through the %s label; set label_pods=true or "
                               "select the Pods by one label" % QUARANTINE_LABEL)
        steps += self._plan_workloads(record)
        if opts.pod_selector and len(opts.pod_selector) > 1:
            self.task.warn("pod_selector has several labels: the narrowed policies skip Pods through the %s "
                           "label, so Pods created later are covered once the isolation runs again" % QUARANTINE_LABEL)
        return steps

    def _plan_policies(self, record: Record, deny_spec: K8sObject, pod_labels: t.List[t.Dict[str, str]]) -> t.List[Step]:
        steps: t.List[Step] = []
        deny_name = deny_policy_name(self.incident_id)
        policies = self.client.list(*NP, namespace=self.namespace)
        existing_deny = next((p for p in policies if p["metadata"]["name"] == deny_name), None)
        if existing_deny is None:
            steps.append(("create_deny", deny_name, deny_spec))
        elif not same_spec(existing_deny.get("spec"), deny_spec):
            steps.append(("update_deny", deny_name, deny_spec))
        for policy in policies:
            meta = policy["metadata"]
            name = meta["name"]
            if name == deny_name or (meta.get("labels") or {}).get(INCIDENT_LABEL):
                continue  # an isolation policy (ours or another incident's)
            neutralised_by = (meta.get("annotations") or {}).get(NEUTRALISED_ANNOTATION)
            if neutralised_by:
                if neutralised_by != self.incident_id:
                    self.task.warn("%s is neutralised by incident %s and left as it is"
                                   % (object_ref("NetworkPolicy", name, self.namespace), neutralised_by))
                continue
            selector = (policy.get("spec") or {}).get("podSelector") or {}
            if self.task.options.pod_selector is None or any(selector_matches(selector, labels) for labels in pod_labels):
                record["policies"][name] = stripped(policy)
                steps.append(("neutralise", name, None))
        return steps

    def _plan_services(self, record: Record, pod_labels: t.List[t.Dict[str, str]]) -> t.List[Step]:
        steps: t.List[Step] = []
        for svc in self.client.list("v1", "services", self.namespace):
            meta, spec = svc["metadata"], svc.get("spec") or {}
            selector = spec.get("selector")
            if not selector or (meta.get("annotations") or {}).get(SUSPENDED_ANNOTATION):
                continue
            if self.task.options.pod_selector is None or any(all(labels.get(k) == v for k, v in selector.items())
                                                             for labels in pod_labels):
                record["services"][meta["name"]] = {"selector": selector, "object": stripped(svc)}
                steps.append(("suspend", meta["name"], None))
        return steps

    def _plan_labels(self, record: Record, pods: t.List[K8sObject]) -> t.List[Step]:
        steps: t.List[Step] = []
        for pod in pods:
            labels = pod["metadata"].get("labels") or {}
            current = labels.get(QUARANTINE_LABEL)
            if current == self.incident_id:
                continue
            if current:
                self.task.warn("%s is already quarantined by incident %s and keeps that label"
                               % (object_ref("Pod", pod["metadata"]["name"], self.namespace), current))
                continue
            if pod["metadata"]["name"] not in record["pods"]:
                record["pods"].append(pod["metadata"]["name"])
            steps.append(("label", pod["metadata"]["name"], None))
        return steps

    def _plan_workloads(self, record: Record) -> t.List[Step]:
        steps: t.List[Step] = []
        for ref in self.task.options.scale_to_zero:
            api_version, plural, kind, name = parse_workload(ref)
            key = "%s/%s" % (kind, name)
            workload = self.client.get(api_version, plural, name, self.namespace, missing_ok=True)
            if workload is None:
                raise RunbookError("scale_to_zero: %s does not exist" % object_ref(kind, name, self.namespace))
            if (workload["metadata"].get("annotations") or {}).get(SCALED_ANNOTATION):
                continue
            if key not in record["workloads"]:
                record["workloads"][key] = {"replicas": (workload.get("spec") or {}).get("replicas", 1),
                                            "object": stripped(workload)}
            steps.append(("scale", key, None))
        return steps

    def empty_match(self) -> str:
        """Why a pod_selector that matches no Pod is refused, with the values the namespace's Pods carry
        for its label keys (a typo is then easy to see)."""
        pod_selector = self.task.options.pod_selector or {}
        pods = self.client.list("v1", "pods", self.namespace)
        seen = []
        for key in sorted(pod_selector):
            values = sorted({str(v) for v in ((p["metadata"].get("labels") or {}).get(key) for p in pods) if v is not None})
            if values:
                more = ", ..." if len(values) > 10 else ""
                seen.append(", ".join("%s=%s" % (key, value) for value in values[:10]) + more)
        if not pods:
            there = "the namespace has no Pod at all"
        elif seen:
            there = "its Pods carry %s" % "; ".join(seen)
        else:
            which = "its only Pod does not carry" if len(pods) == 1 else "none of its %d Pods carries" % len(pods)
            there = "%s the label %s" % (which, " or ".join(sorted(pod_selector)))
        return ("pod_selector %s matches no Pod in namespace %s, so nothing was isolated and nothing changed; %s. "
                "Check the selector, or set allow_empty_selector=true to isolate now the Pods that will carry "
                "these labels later" % (selector_string(pod_selector), self.namespace, there))

    # -- applying ---------------------------------------------------------------------------------

    def _diff(self, ref: str, before: t.Any, after: t.Any) -> None:
        self.diff_before[ref] = before
        self.diff_after[ref] = after

    def apply_step(self, step: Step, record: Record) -> None:
        """Record the change and the diff of ``step``; outside check mode, make it."""
        what = step[0]
        if what in ("create_deny", "update_deny"):
            self._apply_deny(step, record)
        elif what == "neutralise":
            self._apply_neutralise(step[1], record)
        elif what == "suspend":
            self._apply_suspend(step[1], record)
        elif what == "scale":
            self._apply_scale(step[1], record)
        elif what == "label":
            self._apply_label(step[1])
        else:  # pragma: no cover
            raise RunbookError("unknown isolation step %r" % what)

    def _apply_deny(self, step: Step, record: Record) -> None:
        what, name, spec = step
        ref = object_ref("NetworkPolicy", name, self.namespace)
        self._diff(ref, None if what == "create_deny" else "(previous spec)", spec)
        self.changes.append("%s %s (deny all ingress and egress except the allowed exceptions)"
                            % ("create" if what == "create_deny" else "update", ref))
        if self.check_mode:
            return
        if what == "create_deny":
            self.client.create(*NP, body={"metadata": {"name": name, "namespace": self.namespace, "labels": {
                INCIDENT_LABEL: self.incident_id, "app.kubernetes.io/managed-by": "runbook.ops"}}, "spec": spec},
                namespace=self.namespace)
            record["deny_policy_created"] = True
        else:
            self.client.modify(*NP, name=name, mutate=lambda obj: dict(obj, spec=spec), namespace=self.namespace)

    def _apply_neutralise(self, name: str, record: Record) -> None:
        original = record["policies"][name]
        ref = object_ref("NetworkPolicy", name, self.namespace)
        neutral = neutral_pod_selector((original.get("spec") or {}).get("podSelector"), record["pod_selector"])
        self._diff(ref, {"podSelector": (original.get("spec") or {}).get("podSelector") or {}}, {"podSelector": neutral})
        self.changes.append("neutralise %s (its podSelector no longer selects the quarantined Pods)" % ref)
        if self.check_mode:
            return

        def mutate(obj: K8sObject) -> K8sObject:
            obj.setdefault("spec", {})["podSelector"] = neutral
            _annotations(obj)[NEUTRALISED_ANNOTATION] = self.incident_id
            return obj
        self.client.modify(*NP, name=name, mutate=mutate, namespace=self.namespace)

    def _apply_suspend(self, name: str, record: Record) -> None:
        ref = object_ref("Service", name, self.namespace)
        nothing = {SUSPENDED_SELECTOR_KEY: self.incident_id}
        self._diff(ref, {"selector": record["services"][name]["selector"]}, {"selector": nothing})
        self.changes.append("suspend %s (its selector matches no Pod)" % ref)
        if self.check_mode:
            return

        def mutate(obj: K8sObject) -> K8sObject:
            obj.setdefault("spec", {})["selector"] = nothing
            _annotations(obj)[SUSPENDED_ANNOTATION] = self.incident_id
            return obj
        self.client.modify("v1", "services", name, mutate, self.namespace)

    def _apply_scale(self, key: str, record: Record) -> None:
        kind, _sep, name = key.partition("/")
        api_version, plural, _kind = WORKLOADS[kind.lower()]
        ref = object_ref(kind, name, self.namespace)
        replicas = record["workloads"][key]["replicas"]
        self._diff(ref, {"replicas": replicas}, {"replicas": 0})
        self.changes.append("scale %s to 0 replicas (from %s)" % (ref, replicas))
        if self.check_mode:
            return

        def mutate(obj: K8sObject) -> K8sObject:
            obj.setdefault("spec", {})["replicas"] = 0
            _annotations(obj)[SCALED_ANNOTATION] = self.incident_id
            return obj
        self.client.modify(api_version, plural, name, mutate, self.namespace)

    def _apply_label(self, name: str) -> None:
        ref = object_ref("Pod", name, self.namespace)
        self._diff(ref, {"labels": {QUARANTINE_LABEL: None}}, {"labels": {QUARANTINE_LABEL: self.incident_id}})
        self.changes.append("label %s %s=%s" % (ref, QUARANTINE_LABEL, self.incident_id))
        if self.check_mode:
            return
        try:
            self.client.patch("v1", "pods", name, {"metadata": {"labels": {QUARANTINE_LABEL: self.incident_id}}},
                              self.namespace)
        except K8sNotFound:
            self.task.warn("%s was deleted before it could be labelled" % ref)

    # -- releasing --------------------------------------------------------------------------------

    def restore(self, record: Record, only: t.Optional[t.Sequence[Step]] = None) -> t.List[str]:
        """Undo what ``record`` lists (or only the ``only`` steps); returns the problems (empty when done).

        Objects are restored only while they carry this incident's annotation (or label), so steps
        that were never applied, or were undone already, are left alone: restoring is idempotent.
        """
        problems: t.List[str] = []
        if only is None:
            steps: t.List[Step] = ([("label", p, None) for p in record.get("pods", [])]
                                   + [("scale", w, None) for w in record.get("workloads", {})]
                                   + [("suspend", s, None) for s in record.get("services", {})]
                                   + [("neutralise", p, None) for p in record.get("policies", {})]
                                   + [("create_deny", record.get("deny_policy") or deny_policy_name(self.incident_id),
                                       None)])
        else:
            steps = list(reversed(only))
        for what, name, _payload in steps:
            try:
                self._restore_one(what, name, record)
            except K8sError as exc:
                problems.append(exc.msg)
        return problems

    def _restore_one(self, what: str, name: str, record: Record) -> None:
        ns, inc = self.namespace, self.incident_id
        if what == "label":
            self._restore_label(name)
        elif what == "scale":
            kind, _sep, wname = name.partition("/")
            api_version, plural, _kind = WORKLOADS[kind.lower()]
            replicas = record["workloads"][name]["replicas"]
            self._restore_field(_Target(api_version, plural, kind, wname), annotation=SCALED_ANNOTATION,
                                put_back=lambda obj: obj.setdefault("spec", {}).__setitem__("replicas", replicas),
                                message="scale %%s back to %s replicas" % replicas,
                                before={"replicas": 0}, after={"replicas": replicas})
        elif what == "suspend":
            selector = record["services"][name]["selector"]
            self._restore_field(_Target("v1", "services", "Service", name), annotation=SUSPENDED_ANNOTATION,
                                put_back=lambda obj: obj.setdefault("spec", {}).__setitem__("selector", selector),
                                message="restore the selector of %s",
                                before={"selector": {SUSPENDED_SELECTOR_KEY: inc}}, after={"selector": selector})
        elif what == "neutralise":
            self._restore_policy(name, record["policies"][name].get("spec") or {})
        elif what == "create_deny":
            policy = self.client.get(*NP, name=name, namespace=ns, missing_ok=True)
            if policy is None or (policy["metadata"].get("labels") or {}).get(INCIDENT_LABEL) != inc:
                return
            ref = object_ref("NetworkPolicy", name, ns)
            self._diff(ref, policy.get("spec"), None)
            self.changes.append("delete %s" % ref)
            if not self.check_mode:
                self.client.delete(*NP, name=name, namespace=ns, missing_ok=True)
        # update_deny: the policy existed before this run (an isolation in effect) and stays.

    def _restore_label(self, name: str) -> None:
        pod = self.client.get("v1", "pods", name, self.namespace, missing_ok=True)
        if pod is None or (pod["metadata"].get("labels") or {}).get(QUARANTINE_LABEL) != self.incident_id:
            return
        ref = object_ref("Pod", name, self.namespace)
        self._diff(ref, {"labels": {QUARANTINE_LABEL: self.incident_id}}, {"labels": {QUARANTINE_LABEL: None}})
        self.changes.append("remove label %s from %s" % (QUARANTINE_LABEL, ref))
        if not self.check_mode:
            self.client.patch("v1", "pods", name, {"metadata": {"labels": {QUARANTINE_LABEL: None}}}, self.namespace)

    def _restore_policy(self, name: str, original_spec: K8sObject) -> None:
        def drift(current: K8sObject) -> t.Optional[str]:
            now = dict(current.get("spec") or {}, podSelector=None)
            if not same_spec(now, dict(original_spec, podSelector=None)):
                return ("%s was changed while isolated; it is restored as recorded before the isolation, "
                        "which undoes that change" % object_ref("NetworkPolicy", name, self.namespace))
            return None
        self._restore_field(_Target(NP[0], NP[1], "NetworkPolicy", name), annotation=NEUTRALISED_ANNOTATION,
                            put_back=lambda obj: obj.__setitem__("spec", copy.deepcopy(original_spec)),
                            message="restore %s as recorded", before={"podSelector": "(neutralised)"},
                            after={"podSelector": original_spec.get("podSelector") or {}}, drift=drift)

    def _restore_field(self, target: _Target, *, annotation: str, put_back: t.Callable[[K8sObject], t.Any],
                       message: str, before: K8sObject, after: K8sObject,
                       drift: t.Optional[t.Callable[[K8sObject], t.Optional[str]]] = None) -> None:
        """Put a recorded field of ``target`` back while it still carries this incident's ``annotation``."""
        current = self.client.get(target.api_version, target.plural, target.name, self.namespace, missing_ok=True)
        ref = object_ref(target.kind, target.name, self.namespace)
        if current is None:
            self.task.warn("%s no longer exists: nothing to restore" % ref)
            return
        if (current["metadata"].get("annotations") or {}).get(annotation) != self.incident_id:
            return
        changed_meanwhile = drift(current) if drift else None
        if changed_meanwhile:
            self.task.warn(changed_meanwhile)
        self._diff(ref, before, after)
        self.changes.append(message % ref)
        if self.check_mode:
            return

        def mutate(obj: K8sObject) -> t.Optional[K8sObject]:
            if (obj["metadata"].get("annotations") or {}).get(annotation) != self.incident_id:
                return None
            put_back(obj)
            _drop_annotation(obj, annotation)
            return obj
        self.client.modify(target.api_version, target.plural, target.name, mutate, self.namespace)
