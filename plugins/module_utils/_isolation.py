# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reversible network isolation of a namespace (or of some of its Pods) during an incident.

NetworkPolicies add up: a deny-all policy does not cancel another policy's allow rule. Isolation
therefore (1) creates a deny-all ingress/egress policy for the quarantined Pods (with the few
exceptions asked for), (2) takes every other policy that selects those Pods out of play by
narrowing its ``podSelector`` (to match nothing, or to exclude the quarantined Pods), (3) optionally
points Services that select those Pods at nothing, scales workloads to zero and (4) labels the Pods.

Every change is written to a record ConfigMap in the namespace *before* it is applied (the original
objects in full), and every changed object carries an annotation naming the incident. Releasing
reads the record, restores each recorded field on the objects that still carry the annotation,
deletes the deny policy and then the record: from any controller host, and also after an
interrupted isolation. A failure midway undoes what the run applied; if even that fails the record
stays and ``state=released`` completes the job.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError, isoformat, utcnow
from ansible_collections.runbook.ops.plugins.module_utils._k8s import K8sClient, K8sError, K8sNotFound, object_ref
from ansible_collections.runbook.ops.plugins.module_utils._names import (
    duration, k8s_name, labels as check_labels, no_control, number, path_segment, shown,
)

PREFIX = "runbook.ops/"
QUARANTINE_LABEL = PREFIX + "quarantine"
INCIDENT_LABEL = PREFIX + "incident"
RECORD_LABEL = PREFIX + "isolation-record"
NEUTRALISED_ANNOTATION = PREFIX + "neutralised-by"
SUSPENDED_ANNOTATION = PREFIX + "suspended-by"
SCALED_ANNOTATION = PREFIX + "scaled-by"
SUSPENDED_SELECTOR_KEY = PREFIX + "suspended-by"
NOTHING_KEY = PREFIX + "isolated"
RECORD_KEY = "record.json"
RECORD_VERSION = 1
INCIDENT_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")

NP = ("networking.k8s.io/v1", "networkpolicies")
WORKLOADS = {
    "deployment": ("apps/v1", "deployments", "Deployment"),
    "statefulset": ("apps/v1", "statefulsets", "StatefulSet"),
    "replicaset": ("apps/v1", "replicasets", "ReplicaSet"),
}
ENFORCEMENT_WARNING = ("NetworkPolicies are enforced only by a network plugin (CNI) that implements them "
                       "(Calico, Cilium, ...); without one the isolation policies are stored but change no traffic")
# Metadata the server owns: never part of a recorded original, never compared.
SERVER_FIELDS = ("resourceVersion", "managedFields", "uid", "generation", "creationTimestamp", "selfLink")


# ----------------------------------------------------------------------------------------------
# Names and validation


def check_incident_id(incident_id: t.Optional[str]) -> str:
    # fullmatch: "$" alone would let a trailing newline through.
    if not incident_id or not isinstance(incident_id, str) or not INCIDENT_RE.fullmatch(incident_id):
        raise RunbookError("incident_id %s is not valid: use 1 to 63 lowercase letters, digits and dashes, "
                           "starting and ending with a letter or digit" % shown(incident_id))
    return incident_id


def record_name(incident_id: str) -> str:
    return "runbook-isolation-%s" % incident_id


def deny_policy_name(incident_id: str) -> str:
    return "runbook-isolate-%s" % incident_id


def selector_string(labels: t.Optional[t.Mapping[str, str]]) -> t.Optional[str]:
    if not labels:
        return None
    return ",".join("%s=%s" % (k, v) for k, v in sorted(labels.items()))


def parse_workload(ref: str) -> t.Tuple[str, str, str, str]:
    """``Deployment/name`` -> ``(api_version, plural, Kind, name)``."""
    kind, sep, name = no_control("scale_to_zero entry", ref).partition("/")
    if not sep or not name or "/" in name or kind.lower() not in WORKLOADS:
        raise RunbookError("scale_to_zero entry %s is not Kind/name with Kind one of Deployment, StatefulSet, "
                           "ReplicaSet" % shown(ref))
    k8s_name("scale_to_zero entry %s: name" % shown(ref), name)
    api_version, plural, kind_name = WORKLOADS[kind.lower()]
    return api_version, plural, kind_name, name


# ----------------------------------------------------------------------------------------------
# Label selectors (pure logic)


def selector_matches(selector: t.Optional[dict], labels: t.Optional[t.Mapping[str, str]]) -> bool:
    """Whether a metav1.LabelSelector (``matchLabels`` and ``matchExpressions``) matches ``labels``.
    An empty selector matches everything; ``None`` matches nothing (as in NetworkPolicy peers)."""
    if selector is None:
        return False
    labels = labels or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            return False
    return True


def nothing_selector() -> dict:
    """A selector no Pod can match (a label that both exists and does not exist)."""
    return {"matchExpressions": [{"key": NOTHING_KEY, "operator": "Exists"},
                                 {"key": NOTHING_KEY, "operator": "DoesNotExist"}]}


def exclusion_requirement(pod_selector: t.Mapping[str, str]) -> dict:
    """A requirement that keeps a policy for other Pods but not for the quarantined ones.

    With one label the exclusion is exact (also for Pods created later); with several labels a
    selector cannot express "not all of these", so the quarantine label (set on the Pods) is used.
    """
    if len(pod_selector) == 1:
        key, value = next(iter(pod_selector.items()))
        return {"key": key, "operator": "NotIn", "values": [value]}
    return {"key": QUARANTINE_LABEL, "operator": "DoesNotExist"}


def neutral_pod_selector(original: t.Optional[dict], pod_selector: t.Optional[t.Mapping[str, str]]) -> dict:
    if not pod_selector:
        return nothing_selector()
    narrowed = copy.deepcopy(original or {})
    narrowed.setdefault("matchExpressions", []).append(exclusion_requirement(pod_selector))
    return narrowed


def deny_policy_spec(pod_selector: t.Optional[t.Mapping[str, str]], allow_dns: bool = False,
                     allow_from_namespaces: t.Sequence[str] = (), allow_cidrs: t.Sequence[str] = ()) -> dict:
    """Deny all ingress and egress of the selected Pods except the listed exceptions."""
    ingress: t.List[dict] = []
    if allow_from_namespaces:
        ingress.append({"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}
                                 for ns in allow_from_namespaces]})
    egress: t.List[dict] = []
    if allow_dns:
        egress.append({
            "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]})
    if allow_cidrs:
        for cidr in allow_cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise RunbookError("allow_cidrs entry %r is not a CIDR (for example 10.20.0.0/16)" % cidr)
        egress.append({"to": [{"ipBlock": {"cidr": cidr}} for cidr in allow_cidrs]})
    spec: dict = {"podSelector": {"matchLabels": dict(pod_selector)} if pod_selector else {},
                  "policyTypes": ["Ingress", "Egress"]}
    if ingress:
        spec["ingress"] = ingress
    if egress:
        spec["egress"] = egress
    return spec


def _prune_empty(value: t.Any) -> t.Any:
    if isinstance(value, dict):
        return {k: _prune_empty(v) for k, v in value.items() if v not in ([], None)}
    if isinstance(value, list):
        return [_prune_empty(v) for v in value]
    return value


def same_spec(left: t.Optional[dict], right: t.Optional[dict]) -> bool:
    return _prune_empty(left or {}) == _prune_empty(right or {})


def stripped(obj: dict) -> dict:
    """The object as recorded: without status and server-owned metadata."""
    copied = copy.deepcopy(obj)
    copied.pop("status", None)
    meta = copied.get("metadata") or {}
    for key in SERVER_FIELDS:
        meta.pop(key, None)
    return copied


def policy_allows(policy: dict, pod_labels: t.Mapping[str, str]) -> bool:
    """Whether a NetworkPolicy selects a Pod with ``pod_labels`` and has any allow rule."""
    spec = policy.get("spec") or {}
    if not selector_matches(spec.get("podSelector") or {}, pod_labels):
        return False
    return bool(spec.get("ingress") or spec.get("egress"))


# ----------------------------------------------------------------------------------------------
# The record


def _meta(obj: dict) -> dict:
    return obj.setdefault("metadata", {})


def _annotations(obj: dict) -> dict:
    meta = _meta(obj)
    if meta.get("annotations") is None:
        meta["annotations"] = {}
    return meta["annotations"]


def _drop_annotation(obj: dict, key: str) -> None:
    annotations = _meta(obj).get("annotations")
    if annotations and key in annotations:
        del annotations[key]
        if not annotations:
            del _meta(obj)["annotations"]


def empty_record(incident_id: str, namespace: str, pod_selector: t.Optional[dict], options: dict) -> dict:
    return {"version": RECORD_VERSION, "incident_id": incident_id, "namespace": namespace,
            "pod_selector": dict(pod_selector) if pod_selector else None, "options": options,
            "state": "applying", "created": isoformat(utcnow()), "updated": None,
            "deny_policy": deny_policy_name(incident_id), "deny_policy_created": False,
            "policies": {}, "services": {}, "workloads": {}, "pods": [], "evidence": None}


class Isolator:
    """Plans, applies and releases one incident's isolation in one namespace."""

    def __init__(self, client: K8sClient, namespace: str, incident_id: str, check_mode: bool = False) -> None:
        self.client = client
        self.namespace = namespace
        self.incident_id = incident_id
        self.check_mode = check_mode
        self.changes: t.List[str] = []
        self.warnings: t.List[str] = []
        self.diff_before: dict = {}
        self.diff_after: dict = {}
        self.matched_pods: t.List[str] = []

    # -- record -----------------------------------------------------------------------------------

    @property
    def record_ref(self) -> str:
        return object_ref("ConfigMap", record_name(self.incident_id), self.namespace)

    def read_record(self) -> t.Optional[dict]:
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

    def write_record(self, record: dict, create: bool) -> None:
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

    def selected_pods(self, pod_selector: t.Optional[dict]) -> t.List[dict]:
        pods = self.client.list("v1", "pods", self.namespace, label_selector=selector_string(pod_selector))
        return [p for p in pods if not p["metadata"].get("deletionTimestamp")]

    def plan(self, record: dict, pod_selector: t.Optional[dict], deny_spec: dict, suspend_services: bool,
             scale_to_zero: t.Sequence[str], label_pods: bool) -> t.List[t.Tuple[str, str, t.Any]]:
        """The steps still needed, as ``(what, name, payload)``; adds them to ``record`` first."""
        steps: t.List[t.Tuple[str, str, t.Any]] = []
        pods = self.selected_pods(pod_selector)
        self.matched_pods = [p["metadata"]["name"] for p in pods]
        pod_labels = [p["metadata"].get("labels") or {} for p in pods]
        if pod_selector:
            pod_labels.append(dict(pod_selector))  # also Pods created later
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
            if (meta.get("annotations") or {}).get(NEUTRALISED_ANNOTATION):
                if meta["annotations"][NEUTRALISED_ANNOTATION] != self.incident_id:
                    self.warnings.append("%s is neutralised by incident %s and left as it is"
                                         % (object_ref("NetworkPolicy", name, self.namespace),
                                            meta["annotations"][NEUTRALISED_ANNOTATION]))
                continue
            selector = (policy.get("spec") or {}).get("podSelector") or {}
            if pod_selector is None or any(selector_matches(selector, labels) for labels in pod_labels):
                record["policies"][name] = stripped(policy)
                steps.append(("neutralise", name, None))

        if suspend_services:
            for svc in self.client.list("v1", "services", self.namespace):
                meta, spec = svc["metadata"], svc.get("spec") or {}
                selector = spec.get("selector")
                if not selector or (meta.get("annotations") or {}).get(SUSPENDED_ANNOTATION):
                    continue
                if pod_selector is None or any(all(labels.get(k) == v for k, v in selector.items())
                                               for labels in pod_labels):
                    record["services"][meta["name"]] = {"selector": selector, "object": stripped(svc)}
                    steps.append(("suspend", meta["name"], None))

        if label_pods:
            for pod in pods:
                labels = pod["metadata"].get("labels") or {}
                current = labels.get(QUARANTINE_LABEL)
                if current == self.incident_id:
                    continue
                if current:
                    self.warnings.append("%s is already quarantined by incident %s and keeps that label"
                                         % (object_ref("Pod", pod["metadata"]["name"], self.namespace), current))
                    continue
                if pod["metadata"]["name"] not in record["pods"]:
                    record["pods"].append(pod["metadata"]["name"])
                steps.append(("label", pod["metadata"]["name"], None))
        elif pod_selector and len(pod_selector) > 1 and any(s[0] == "neutralise" for s in steps):
            raise RunbookError("label_pods=false with a pod_selector of several labels: other policies can only be "
                               "narrowed to skip the quarantined Pods through the %s label; set label_pods=true or "
                               "select the Pods by one label" % QUARANTINE_LABEL)
        for ref in scale_to_zero:
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

        if pod_selector and len(pod_selector) > 1:
            self.warnings.append("pod_selector has several labels: the narrowed policies skip Pods through the %s "
                                 "label, so Pods created later are covered once the isolation runs again"
                                 % QUARANTINE_LABEL)
        return steps

    def empty_match(self, pod_selector: t.Mapping[str, str]) -> str:
        """Why a pod_selector that matches no Pod is refused, with the values the namespace's Pods carry
        for its label keys (a typo is then easy to see)."""
        pods = self.client.list("v1", "pods", self.namespace)
        seen = []
        for key in sorted(pod_selector):
            values = sorted({(p["metadata"].get("labels") or {}).get(key) for p in pods} - {None})
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

    def apply_step(self, step: t.Tuple[str, str, t.Any], record: dict) -> None:
        what, name, payload = step
        ns, inc = self.namespace, self.incident_id
        if what in ("create_deny", "update_deny"):
            ref = object_ref("NetworkPolicy", name, ns)
            self._diff(ref, None if what == "create_deny" else "(previous spec)", payload)
            self.changes.append("%s %s (deny all ingress and egress except the allowed exceptions)"
                                % ("create" if what == "create_deny" else "update", ref))
            if self.check_mode:
                return
            if what == "create_deny":
                self.client.create(*NP, body={"metadata": {"name": name, "namespace": ns, "labels": {
                    INCIDENT_LABEL: inc, "app.kubernetes.io/managed-by": "runbook.ops"}}, "spec": payload},
                    namespace=ns)
                record["deny_policy_created"] = True
            else:
                self.client.modify(*NP, name=name, mutate=lambda obj: dict(obj, spec=payload), namespace=ns)
        elif what == "neutralise":
            original = record["policies"][name]
            ref = object_ref("NetworkPolicy", name, ns)
            neutral = neutral_pod_selector((original.get("spec") or {}).get("podSelector"), record["pod_selector"])
            self._diff(ref, {"podSelector": (original.get("spec") or {}).get("podSelector") or {}},
                       {"podSelector": neutral})
            self.changes.append("neutralise %s (its podSelector no longer selects the quarantined Pods)" % ref)
            if self.check_mode:
                return

            def mutate(obj: dict) -> dict:
                obj.setdefault("spec", {})["podSelector"] = neutral
                _annotations(obj)[NEUTRALISED_ANNOTATION] = inc
                return obj
            self.client.modify(*NP, name=name, mutate=mutate, namespace=ns)
        elif what == "suspend":
            ref = object_ref("Service", name, ns)
            nothing = {SUSPENDED_SELECTOR_KEY: inc}
            self._diff(ref, {"selector": record["services"][name]["selector"]}, {"selector": nothing})
            self.changes.append("suspend %s (its selector matches no Pod)" % ref)
            if self.check_mode:
                return

            def mutate_svc(obj: dict) -> dict:
                obj.setdefault("spec", {})["selector"] = nothing
                _annotations(obj)[SUSPENDED_ANNOTATION] = inc
                return obj
            self.client.modify("v1", "services", name, mutate_svc, ns)
        elif what == "scale":
            kind, _sep, wname = name.partition("/")
            api_version, plural, _kind = WORKLOADS[kind.lower()]
            ref = object_ref(kind, wname, ns)
            self._diff(ref, {"replicas": record["workloads"][name]["replicas"]}, {"replicas": 0})
            self.changes.append("scale %s to 0 replicas (from %s)" % (ref, record["workloads"][name]["replicas"]))
            if self.check_mode:
                return

            def mutate_wl(obj: dict) -> dict:
                obj.setdefault("spec", {})["replicas"] = 0
                _annotations(obj)[SCALED_ANNOTATION] = inc
                return obj
            self.client.modify(api_version, plural, wname, mutate_wl, ns)
        elif what == "label":
            ref = object_ref("Pod", name, ns)
            self._diff(ref, {"labels": {QUARANTINE_LABEL: None}}, {"labels": {QUARANTINE_LABEL: inc}})
            self.changes.append("label %s %s=%s" % (ref, QUARANTINE_LABEL, inc))
            if self.check_mode:
                return
            try:
                self.client.patch("v1", "pods", name, {"metadata": {"labels": {QUARANTINE_LABEL: inc}}}, ns)
            except K8sNotFound:
                self.warnings.append("%s was deleted before it could be labelled" % ref)
        else:  # pragma: no cover
            raise RunbookError("unknown isolation step %r" % what)

    # -- releasing --------------------------------------------------------------------------------

    def restore(self, record: dict, only: t.Optional[t.Sequence[t.Tuple[str, str, t.Any]]] = None) -> t.List[str]:
        """Undo what ``record`` lists (or only the ``only`` steps); returns the problems (empty when done).

        Objects are restored only while they carry this incident's annotation (or label), so steps
        that were never applied, or were undone already, are left alone: restoring is idempotent.
        """
        ns, inc = self.namespace, self.incident_id
        problems: t.List[str] = []
        if only is None:
            steps = ([("label", p, None) for p in record.get("pods", [])]
                     + [("scale", w, None) for w in record.get("workloads", {})]
                     + [("suspend", s, None) for s in record.get("services", {})]
                     + [("neutralise", p, None) for p in record.get("policies", {})]
                     + [("create_deny", record.get("deny_policy") or deny_policy_name(inc), None)])
        else:
            steps = list(reversed(only))
        for what, name, _payload in steps:
            try:
                self._restore_one(what, name, record)
            except K8sError as exc:
                problems.append(exc.msg)
        return problems

    def _restore_one(self, what: str, name: str, record: dict) -> None:
        ns, inc = self.namespace, self.incident_id
        if what == "label":
            pod = self.client.get("v1", "pods", name, ns, missing_ok=True)
            if pod is None or (pod["metadata"].get("labels") or {}).get(QUARANTINE_LABEL) != inc:
                return
            ref = object_ref("Pod", name, ns)
            self._diff(ref, {"labels": {QUARANTINE_LABEL: inc}}, {"labels": {QUARANTINE_LABEL: None}})
            self.changes.append("remove label %s from %s" % (QUARANTINE_LABEL, ref))
            if not self.check_mode:
                self.client.patch("v1", "pods", name, {"metadata": {"labels": {QUARANTINE_LABEL: None}}}, ns)
        elif what == "scale":
            kind, _sep, wname = name.partition("/")
            api_version, plural, _kind = WORKLOADS[kind.lower()]
            replicas = record["workloads"][name]["replicas"]
            self._restore_field(api_version, plural, kind, wname, SCALED_ANNOTATION,
                                lambda obj: obj.setdefault("spec", {}).__setitem__("replicas", replicas),
                                "scale %%s back to %s replicas" % replicas, {"replicas": 0}, {"replicas": replicas})
        elif what == "suspend":
            selector = record["services"][name]["selector"]
            self._restore_field("v1", "services", "Service", name, SUSPENDED_ANNOTATION,
                                lambda obj: obj.setdefault("spec", {}).__setitem__("selector", selector),
                                "restore the selector of %s", {"selector": {SUSPENDED_SELECTOR_KEY: inc}},
                                {"selector": selector})
        elif what == "neutralise":
            original_spec = record["policies"][name].get("spec") or {}

            def drift(current: dict) -> t.Optional[str]:
                now = dict(current.get("spec") or {}, podSelector=None)
                if not same_spec(now, dict(original_spec, podSelector=None)):
                    return ("%s was changed while isolated; it is restored as recorded before the isolation, "
                            "which undoes that change" % object_ref("NetworkPolicy", name, ns))
                return None
            self._restore_field(NP[0], NP[1], "NetworkPolicy", name, NEUTRALISED_ANNOTATION,
                                lambda obj: obj.__setitem__("spec", copy.deepcopy(original_spec)),
                                "restore %s as recorded", {"podSelector": "(neutralised)"},
                                {"podSelector": original_spec.get("podSelector") or {}}, drift)
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

    def _restore_field(self, api_version: str, plural: str, kind: str, name: str, annotation: str,
                       put_back: t.Callable[[dict], t.Any], message: str, before: dict, after: dict,
                       drift: t.Optional[t.Callable[[dict], t.Optional[str]]] = None) -> None:
        ns, inc = self.namespace, self.incident_id
        current = self.client.get(api_version, plural, name, ns, missing_ok=True)
        ref = object_ref(kind, name, ns)
        if current is None:
            self.warnings.append("%s no longer exists: nothing to restore" % ref)
            return
        if (current["metadata"].get("annotations") or {}).get(annotation) != inc:
            return
        changed_meanwhile = drift(current) if drift else None
        if changed_meanwhile:
            self.warnings.append(changed_meanwhile)
        self._diff(ref, before, after)
        self.changes.append(message % ref)
        if self.check_mode:
            return

        def mutate(obj: dict) -> t.Optional[dict]:
            if (obj["metadata"].get("annotations") or {}).get(annotation) != inc:
                return None
            put_back(obj)
            _drop_annotation(obj, annotation)
            return obj
        self.client.modify(api_version, plural, name, mutate, ns)


# ----------------------------------------------------------------------------------------------
# The two operations


def _summary(record: t.Optional[dict]) -> dict:
    record = record or {}
    return {
        "policies_created": [record["deny_policy"]] if record.get("deny_policy") else [],
        "policies_neutralised": sorted(record.get("policies", {})),
        "services_suspended": sorted(record.get("services", {})),
        "workloads_scaled": [{"workload": k, "replicas": v["replicas"]}
                             for k, v in sorted(record.get("workloads", {}).items())],
        "pods_labelled": sorted(record.get("pods", [])),
    }


def isolate(client: K8sClient, namespace: str, incident_id: str, pod_selector: t.Optional[dict],
            allow_dns: bool, allow_from_namespaces: t.Sequence[str], allow_cidrs: t.Sequence[str],
            suspend_services: bool, scale_to_zero: t.Sequence[str], label_pods: bool, check_mode: bool,
            capture: t.Optional[t.Callable[[], dict]] = None, allow_empty_selector: bool = False) -> dict:
    """Isolate; ``capture`` (evidence) runs before the first change of a new isolation.

    A new isolation whose ``pod_selector`` matches no Pod is refused before anything is captured or
    changed (in check mode too), unless ``allow_empty_selector``: during an incident, a mistyped
    label must not read as a quarantine. Later runs of an isolation in effect are not refused (its
    Pods may be gone, scaled to zero by the first run).
    """
    incident_id = check_incident_id(incident_id)
    if client.get("v1", "namespaces", namespace, missing_ok=True) is None:
        raise RunbookError("cannot isolate namespace %s: it does not exist" % namespace)
    iso = Isolator(client, namespace, incident_id, check_mode)
    deny_spec = deny_policy_spec(pod_selector, allow_dns, allow_from_namespaces, allow_cidrs)
    existing = iso.read_record()
    if existing is not None and existing.get("pod_selector") != (dict(pod_selector) if pod_selector else None):
        raise RunbookError("incident %s already isolates pod_selector %s in namespace %s; release it before "
                           "isolating pod_selector %s" % (incident_id, json.dumps(existing.get("pod_selector")),
                                                          namespace, json.dumps(pod_selector)))
    options = {"allow_dns": allow_dns, "allow_from_namespaces": list(allow_from_namespaces),
               "allow_cidrs": list(allow_cidrs), "suspend_services": suspend_services,
               "scale_to_zero": list(scale_to_zero), "label_pods": label_pods}
    record = copy.deepcopy(existing) if existing else empty_record(incident_id, namespace, pod_selector, options)
    record["options"] = options
    steps = iso.plan(record, pod_selector, deny_spec, suspend_services, scale_to_zero, label_pods)
    if pod_selector and existing is None and not iso.matched_pods:
        if not allow_empty_selector:
            raise RunbookError(iso.empty_match(pod_selector), changed=False, isolated=False, changes=[])
        iso.warnings.append("pod_selector %s matches no Pod in namespace %s now (allow_empty_selector=true): the "
                            "isolation quarantines the Pods that will carry these labels"
                            % (selector_string(pod_selector), namespace))
    evidence = (existing or {}).get("evidence")
    if existing is None:
        iso.changes.insert(0, "create the isolation record %s" % iso.record_ref)
    if not steps and existing is not None and existing.get("state") == "isolated":
        result = dict(_summary(existing), changed=False, isolated=True, evidence=evidence)
    elif check_mode:
        for step in steps:
            iso.apply_step(step, record)
        if existing is None and capture is not None:
            iso.changes.insert(0, "capture evidence into the repository")
        result = dict(_summary(record), changed=True, isolated=True, evidence=None)
    else:
        if existing is None and capture is not None:
            evidence = capture()
            record["evidence"] = evidence
        record["state"] = "applying"
        iso.write_record(record, create=existing is None)
        applied: t.List[t.Tuple[str, str, t.Any]] = []
        try:
            for step in steps:
                iso.apply_step(step, record)
                applied.append(step)
        except RunbookError as exc:  # K8sError included
            _roll_back(iso, record, existing, applied, step, exc)
        record["state"] = "isolated"
        iso.write_record(record, create=False)
        result = dict(_summary(record), changed=True, isolated=True, evidence=evidence)
    result.update(incident_id=incident_id, namespace=namespace, record=iso.record_ref, changes=iso.changes,
                  warnings=[ENFORCEMENT_WARNING] + iso.warnings,
                  diff={"before": iso.diff_before, "after": iso.diff_after})
    return result


def _roll_back(iso: Isolator, record: dict, existing: t.Optional[dict], applied: t.List[t.Tuple[str, str, t.Any]],
               failed: t.Tuple[str, str, t.Any], exc: RunbookError) -> None:
    what = "%s %s" % (failed[0].replace("_", " "), failed[1])
    iso.changes = []
    problems = iso.restore(record, only=applied + [failed])
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


def release(client: K8sClient, namespace: str, incident_id: str, check_mode: bool) -> dict:
    incident_id = check_incident_id(incident_id)
    iso = Isolator(client, namespace, incident_id, check_mode)
    record = iso.read_record() if client.get("v1", "namespaces", namespace, missing_ok=True) is not None else None
    base = dict(incident_id=incident_id, namespace=namespace, isolated=False, warnings=[])
    if record is None:
        return dict(base, changed=False, record=None, changes=[], evidence=None, **_summary(None),
                    diff={"before": {}, "after": {}})
    problems = iso.restore(record)
    if problems:
        raise RunbookError("release of incident %s in namespace %s is incomplete: %s; %s is kept, run again once "
                           "the cause is fixed" % (incident_id, namespace, "; ".join(problems), iso.record_ref),
                           record=iso.record_ref, changes=iso.changes)
    iso.changes.append("delete the isolation record %s" % iso.record_ref)
    if not check_mode:
        iso.delete_record()
    return dict(base, changed=True, record=iso.record_ref, changes=iso.changes, evidence=record.get("evidence"),
                warnings=iso.warnings, diff={"before": iso.diff_before, "after": iso.diff_after},
                **_summary(record))


def recorded_incidents(client: K8sClient, namespace: str) -> t.List[str]:
    """The incidents with an isolation record in ``namespace``."""
    if client.get("v1", "namespaces", namespace, missing_ok=True) is None:
        return []
    cms = client.list("v1", "configmaps", namespace, label_selector="%s=true" % RECORD_LABEL)
    return sorted({(cm["metadata"].get("labels") or {}).get(INCIDENT_LABEL, "") for cm in cms} - {""})


# ----------------------------------------------------------------------------------------------
# The module's entry points


def argument_spec() -> dict:
    from ansible_collections.runbook.ops.plugins.module_utils._k8s import k8s_auth_argspec
    from ansible_collections.runbook.ops.plugins.module_utils._repository import repository_argspec
    from ansible_collections.runbook.ops.plugins.module_utils._stream import COMPRESSIONS
    from ansible_collections.runbook.ops.plugins.module_utils._evidence import DEFAULT_LOG_LIMIT

    evidence = dict(
        capture=dict(type="bool", default=True),
        set=dict(type="str"),
        labels=dict(type="dict", default={}),
        log_tail_lines=dict(type="int"),
        since=dict(type="str"),
        log_limit_bytes=dict(type="int", default=DEFAULT_LOG_LIMIT),
        compression=dict(type="str", choices=list(COMPRESSIONS), default="zstd"),
        encryption_recipients=dict(type="list", elements="str", default=[]),
    )
    evidence.update(repository_argspec())
    return dict(
        **k8s_auth_argspec(),
        namespace=dict(type="str", required=True),
        state=dict(type="str", choices=["isolated", "released"], default="isolated"),
        incident_id=dict(type="str"),
        pod_selector=dict(type="dict"),
        allow_empty_selector=dict(type="bool", default=False),
        allow_dns=dict(type="bool", default=False),
        allow_from_namespaces=dict(type="list", elements="str", default=[]),
        allow_cidrs=dict(type="list", elements="str", default=[]),
        suspend_services=dict(type="bool", default=False),
        scale_to_zero=dict(type="list", elements="str", default=[]),
        label_pods=dict(type="bool", default=True),
        evidence=dict(type="dict", apply_defaults=True, options=evidence),
    )


MAX_LOG_BYTES = 1 << 40


def validate_params(params: t.Mapping[str, t.Any]) -> t.Optional[t.Dict[str, str]]:
    """Every name, label, number and duration a user (or a survey) can set, checked before the API is
    asked, in check mode as in a real run; returns the pod_selector as label text (None for all Pods)."""
    k8s_name("namespace", params.get("namespace"), label=True)
    if params.get("incident_id") is not None or params.get("state", "isolated") == "isolated":
        check_incident_id(params.get("incident_id"))
    raw = params.get("pod_selector")
    pod_selector = None
    if raw:
        for key, value in raw.items():
            if value is None or isinstance(value, (dict, list)):
                raise RunbookError("pod_selector[%s] must be a label value (text), not %s" % (key, shown(value)))
        pod_selector = check_labels("pod_selector", {str(k): str(v) for k, v in raw.items()}) or None
    for index, ns in enumerate(params.get("allow_from_namespaces") or []):
        k8s_name("allow_from_namespaces[%d]" % index, ns, label=True)
    for index, cidr in enumerate(params.get("allow_cidrs") or []):
        no_control("allow_cidrs[%d]" % index, cidr)
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise RunbookError("allow_cidrs[%d] %s is not a CIDR (for example 10.20.0.0/16)" % (index, shown(cidr)))
    for ref in params.get("scale_to_zero") or []:
        parse_workload(ref)
    ev = params.get("evidence") or {}
    if ev.get("capture", True) and params.get("state", "isolated") == "isolated":
        from ansible_collections.runbook.ops.plugins.module_utils._repository import backend_from_options

        # The URL's form, so check mode reports a mistyped repository (nothing is contacted here).
        backend_from_options(ev)
        if ev.get("set"):
            path_segment("evidence.set", ev["set"])
        if ev.get("log_tail_lines") is not None:
            number("evidence.log_tail_lines", ev["log_tail_lines"], 1, 10 ** 9)
        if ev.get("log_limit_bytes") is not None:
            number("evidence.log_limit_bytes", ev["log_limit_bytes"], 1, MAX_LOG_BYTES)
        if ev.get("since"):
            duration("evidence.since", ev["since"], 0, 100 * 365 * 86400.0, above=True)
        for key, value in (ev.get("labels") or {}).items():
            no_control("evidence.labels key", str(key))
            no_control("evidence.labels[%s]" % key, str(value))
        if ev.get("encryption_recipients"):
            from ansible_collections.runbook.ops.plugins.module_utils._stream import parse_recipients

            for index, recipient in enumerate(ev["encryption_recipients"]):
                no_control("evidence.encryption_recipients[%d]" % index, recipient)
            parse_recipients(ev["encryption_recipients"])
    return pod_selector


UNENCRYPTED_EVIDENCE = ("evidence.encryption_recipients is empty: the evidence is stored unencrypted; anyone who "
                        "can read the repository can read the logs and objects")


def run(module: t.Any) -> dict:
    from ansible_collections.runbook.ops.plugins.module_utils import _evidence
    from ansible_collections.runbook.ops.plugins.module_utils._k8s import AUTH_OPTIONS

    params = module.params
    pod_selector = validate_params(params)
    client = K8sClient.from_params({key: params.get(key) for key in AUTH_OPTIONS})
    namespace = params["namespace"]
    if params["state"] == "released":
        incidents = [params["incident_id"]] if params.get("incident_id") else recorded_incidents(client, namespace)
        if not params.get("incident_id") and not incidents:
            result = release(client, namespace, "none", module.check_mode)
            result["incident_id"] = None
        else:
            results = [release(client, namespace, incident, module.check_mode) for incident in incidents]
            result = results[0]
            for other in results[1:]:
                for key in ("policies_created", "policies_neutralised", "services_suspended", "workloads_scaled",
                            "pods_labelled", "changes", "warnings"):
                    result[key] = result[key] + other[key]
                result["changed"] = result["changed"] or other["changed"]
                result["diff"]["before"].update(other["diff"]["before"])
                result["diff"]["after"].update(other["diff"]["after"])
            if len(results) > 1:
                result["incident_id"] = ",".join(incidents)
    else:
        ev = params["evidence"]
        capture = None
        extra_warnings: t.List[str] = []
        if ev["capture"]:
            def capture() -> dict:
                from ansible_collections.runbook.ops.plugins.module_utils._repository import Repository

                repo = Repository.from_options(ev)
                return _evidence.capture(client, repo, namespace, params["incident_id"], pod_selector,
                                         set_name=ev.get("set"), labels=ev.get("labels"),
                                         recipients=ev["encryption_recipients"], compression=ev["compression"],
                                         log_tail_lines=ev.get("log_tail_lines"), since=ev.get("since"),
                                         log_limit_bytes=ev.get("log_limit_bytes"))
            if not ev["encryption_recipients"]:
                extra_warnings.append(UNENCRYPTED_EVIDENCE)
        result = isolate(client, namespace, params["incident_id"], pod_selector, params["allow_dns"],
                         params["allow_from_namespaces"], params["allow_cidrs"], params["suspend_services"],
                         params["scale_to_zero"], params["label_pods"], module.check_mode, capture,
                         allow_empty_selector=bool(params.get("allow_empty_selector")))
        if result["changed"] and result.get("evidence") is not None and extra_warnings:
            result["warnings"] += extra_warnings
    if not module._diff:  # pylint: disable=protected-access
        result.pop("diff", None)
    for warning in result.pop("warnings", []):
        module.warn(warning)
    result["api_requests"] = client.requests
    return result
