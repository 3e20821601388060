# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What an isolation of ``ns_isolate`` is made of, as pure logic (no API request): its options,
the names and labels it writes, label selectors, the deny-all NetworkPolicy and the neutral forms
of other policies. The API side is in ``_isolator`` (one incident's plan, apply and restore) and
``_isolation`` (the module's operations).
"""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import re
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError, options_from
from ansible_collections.runbook.ops.plugins.module_utils._evidence import EvidenceOptions
from ansible_collections.runbook.ops.plugins.module_utils._k8s import K8sObject
from ansible_collections.runbook.ops.plugins.module_utils._names import (
    k8s_name, labels as check_labels, no_control, shown,
)

Selector = t.Dict[str, t.Any]
"""A metav1.LabelSelector (``matchLabels``, ``matchExpressions``)."""

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


def selector_matches(selector: t.Optional[Selector], labels: t.Optional[t.Mapping[str, str]]) -> bool:
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


def nothing_selector() -> K8sObject:
    """A selector no Pod can match (a label that both exists and does not exist)."""
    return {"matchExpressions": [{"key": NOTHING_KEY, "operator": "Exists"},
                                 {"key": NOTHING_KEY, "operator": "DoesNotExist"}]}


def exclusion_requirement(pod_selector: t.Mapping[str, str]) -> K8sObject:
    """A requirement that keeps a policy for other Pods but not for the quarantined ones.

    With one label the exclusion is exact (also for Pods created later); with several labels a
    selector cannot express "not all of these", so the quarantine label (set on the Pods) is used.
    """
    if len(pod_selector) == 1:
        key, value = next(iter(pod_selector.items()))
        return {"key": key, "operator": "NotIn", "values": [value]}
    return {"key": QUARANTINE_LABEL, "operator": "DoesNotExist"}


def neutral_pod_selector(original: t.Optional[Selector], pod_selector: t.Optional[t.Mapping[str, str]]) -> K8sObject:
    if not pod_selector:
        return nothing_selector()
    narrowed = copy.deepcopy(original or {})
    narrowed.setdefault("matchExpressions", []).append(exclusion_requirement(pod_selector))
    return narrowed


def deny_policy_spec(pod_selector: t.Optional[t.Mapping[str, str]], allow_dns: bool = False,
                     allow_from_namespaces: t.Sequence[str] = (), allow_cidrs: t.Sequence[str] = ()) -> K8sObject:
    """Deny all ingress and egress of the selected Pods except the listed exceptions."""
    ingress: t.List[K8sObject] = []
    if allow_from_namespaces:
        ingress.append({"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}
                                 for ns in allow_from_namespaces]})
    egress: t.List[K8sObject] = []
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
    spec: K8sObject = {"podSelector": {"matchLabels": dict(pod_selector)} if pod_selector else {},
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


def same_spec(left: t.Optional[K8sObject], right: t.Optional[K8sObject]) -> bool:
    return bool(_prune_empty(left or {}) == _prune_empty(right or {}))


def stripped(obj: K8sObject) -> K8sObject:
    """The object as recorded: without status and server-owned metadata."""
    copied = copy.deepcopy(obj)
    copied.pop("status", None)
    meta = copied.get("metadata") or {}
    for key in SERVER_FIELDS:
        meta.pop(key, None)
    return copied


def policy_allows(policy: K8sObject, pod_labels: t.Mapping[str, str]) -> bool:
    """Whether a NetworkPolicy selects a Pod with ``pod_labels`` and has any allow rule."""
    spec = policy.get("spec") or {}
    if not selector_matches(spec.get("podSelector") or {}, pod_labels):
        return False
    return bool(spec.get("ingress") or spec.get("egress"))


# ----------------------------------------------------------------------------------------------
# Options


@dataclasses.dataclass(frozen=True)
class IsolateOptions:
    """The options of ``ns_isolate``, every name, label, address and number checked before the API
    is asked (in check mode as in a real run)."""

    namespace: str
    state: str
    incident_id: t.Optional[str]
    pod_selector: t.Optional[t.Dict[str, str]]  # label text; None selects every Pod
    allow_empty_selector: bool
    allow_dns: bool
    allow_from_namespaces: t.List[str]
    allow_cidrs: t.List[str]
    suspend_services: bool
    scale_to_zero: t.List[str]
    label_pods: bool
    evidence: EvidenceOptions

    @classmethod
    def from_params(cls, params: t.Mapping[str, t.Any]) -> "IsolateOptions":
        k8s_name("namespace", params["namespace"], label=True)
        isolating = params["state"] == "isolated"
        if params["incident_id"] is not None or isolating:
            check_incident_id(params["incident_id"])
        for index, ns in enumerate(params["allow_from_namespaces"]):
            k8s_name("allow_from_namespaces[%d]" % index, ns, label=True)
        for index, cidr in enumerate(params["allow_cidrs"]):
            no_control("allow_cidrs[%d]" % index, cidr)
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise RunbookError("allow_cidrs[%d] %s is not a CIDR (for example 10.20.0.0/16)" % (index, shown(cidr)))
        for ref in params["scale_to_zero"]:
            parse_workload(ref)
        evidence = EvidenceOptions.from_params(params["evidence"], check=isolating and params["evidence"]["capture"])
        return options_from(cls, params, pod_selector=_pod_selector(params["pod_selector"]), evidence=evidence)

    @property
    def options_recorded(self) -> t.Dict[str, t.Any]:
        """The options an isolation record keeps (what a later run or a release must know)."""
        return {"allow_dns": self.allow_dns, "allow_from_namespaces": list(self.allow_from_namespaces),
                "allow_cidrs": list(self.allow_cidrs), "suspend_services": self.suspend_services,
                "scale_to_zero": list(self.scale_to_zero), "label_pods": self.label_pods}


def _pod_selector(raw: t.Optional[t.Mapping[str, t.Any]]) -> t.Optional[t.Dict[str, str]]:
    if not raw:
        return None
    for key, value in raw.items():
        if value is None or isinstance(value, (dict, list)):
            raise RunbookError("pod_selector[%s] must be a label value (text), not %s" % (key, shown(value)))
    return check_labels("pod_selector", {str(k): str(v) for k, v in raw.items()}) or None
