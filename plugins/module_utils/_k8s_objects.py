# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Kubernetes objects as ``k8s_backup`` stores, orders, restores and compares them: discovery of the
resource types, what is left out by default, the server-set fields stripped at backup, what must
not be replayed at restore, the restore order, Secret masking and a JSON-patch summary of drift."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._k8s import (
    K8sClient, K8sError, K8sForbidden, K8sGone, K8sNotFound, K8sObject, api_prefix, resource_path,
)

MASK = "********"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"

# Server-set metadata: never replayed, never compared.
SERVER_METADATA = ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "selfLink",
                   "deletionTimestamp", "deletionGracePeriodSeconds")
# Annotations and labels controllers write on their own (a new revision, a bind marker, the
# namespace's own name label the API server sets).
SERVER_ANNOTATIONS = ("deployment.kubernetes.io/revision", "pv.kubernetes.io/bind-completed",
                      "pv.kubernetes.io/bound-by-controller", "pv.kubernetes.io/provisioned-by",
                      "volume.kubernetes.io/selected-node")
SERVER_LABELS = ("kubernetes.io/metadata.name",)
JOB_UID_LABELS = ("controller-uid", "batch.kubernetes.io/controller-uid")

# Left out by default, as Velero does: recreated by the cluster itself, or noise.
DEFAULT_EXCLUDED = frozenset({
    ("", "events"), ("events.k8s.io", "events"), ("", "endpoints"), ("discovery.k8s.io", "endpointslices"),
    ("coordination.k8s.io", "leases"), ("", "bindings"),
})
# Objects of these plurals are skipped when a controller owns them (its owner recreates them).
CONTROLLED_SKIPPED = frozenset({"pods", "replicasets", "controllerrevisions"})
# ConfigMaps every namespace gets from the controller manager.
AUTOMATIC_OBJECTS = frozenset({("ConfigMap", "kube-root-ca.crt")})

# Restore order (Velero's): lower first; anything else of a built-in group after the workloads,
# custom resources last.
RESTORE_ORDER = {
    "CustomResourceDefinition": 0, "Namespace": 1, "StorageClass": 2, "PersistentVolume": 3,
    "PersistentVolumeClaim": 4, "Secret": 5, "ConfigMap": 6, "ServiceAccount": 7, "LimitRange": 8,
    "ResourceQuota": 9, "ClusterRole": 10, "Role": 10, "ClusterRoleBinding": 11, "RoleBinding": 11,
    "NetworkPolicy": 12, "Service": 13, "StatefulSet": 14, "Deployment": 14, "DaemonSet": 14,
    "CronJob": 14, "ReplicaSet": 15, "Job": 15, "Pod": 16,
}
BUILTIN_RANK = 17
CUSTOM_RANK = 18
BUILTIN_GROUPS = frozenset({"", "apps", "batch", "autoscaling", "policy", "extensions"})


def is_builtin_group(group: str) -> bool:
    return group in BUILTIN_GROUPS or group.endswith(".k8s.io") or group.endswith(".kubernetes.io")


def group_of(api_version: str) -> str:
    return api_version.rsplit("/", 1)[0] if "/" in api_version else ""


@dataclasses.dataclass(frozen=True)
class ResourceType:
    """One resource type the API server serves (its preferred version)."""

    api_version: str
    plural: str
    kind: str
    namespaced: bool

    @property
    def group(self) -> str:
        return group_of(self.api_version)

    @property
    def key(self) -> str:
        """``apps/v1/Deployment``, ``v1/Secret``: how the manifest names a kind."""
        return "%s/%s" % (self.api_version, self.kind)

    def matches(self, name: str) -> bool:
        """``Deployment``, ``deployments``, ``deployments.apps``, ``Deployment.apps`` or ``apps/v1/Deployment``."""
        wanted = name.strip().lower()
        names = {self.kind.lower(), self.plural.lower(), self.key.lower()}
        if self.group:
            names |= {"%s.%s" % (self.kind.lower(), self.group), "%s.%s" % (self.plural.lower(), self.group)}
        return wanted in names


AGGREGATED_DISCOVERY = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"


def discover(client: K8sClient, aggregated: bool = True) -> t.List[ResourceType]:
    """Every listable and creatable resource type in its preferred version.

    With ``aggregated`` (Kubernetes 1.30+ answers it) that is two requests, ``/api`` and ``/apis``.
    A server that answers in the classic format (older, or ``aggregated=False``) costs one more
    request per group version.
    """
    accept = AGGREGATED_DISCOVERY if aggregated else None
    found: t.List[ResourceType] = []
    for path, what in (("/api", "discover the API versions"), ("/apis", "discover the API groups")):
        answer = client.request("GET", path, what=what, accept=accept)
        if answer.get("kind") == "APIGroupDiscoveryList":
            found += _aggregated_types(answer)
        else:
            found += _classic_types(client, _classic_versions(answer))
    return found


def _resource_type(api_version: str, resource: t.Mapping[str, t.Any], plural: str, kind: str,
                   namespaced: bool) -> t.Optional[ResourceType]:
    """The type, or None for a subresource or a type that cannot be both listed and created."""
    verbs = resource.get("verbs") or []
    if not plural or not kind or "/" in plural or "list" not in verbs or "create" not in verbs:
        return None
    return ResourceType(api_version, plural, kind, namespaced)


def _aggregated_types(answer: K8sObject) -> t.List[ResourceType]:
    """The types of an ``APIGroupDiscoveryList``: per group, its versions in the server's order of
    preference, the first being the preferred one."""
    found: t.List[ResourceType] = []
    for group in answer.get("items") or []:
        versions = group.get("versions") or []
        # Stale: an aggregated API that is down (classic discovery answers 503): nothing of it can be read.
        if not versions or versions[0].get("freshness") == "Stale":
            continue
        name = str((group.get("metadata") or {}).get("name") or "")
        api_version = "%s/%s" % (name, versions[0]["version"]) if name else str(versions[0]["version"])
        for resource in versions[0].get("resources") or []:
            rtype = _resource_type(api_version, resource, str(resource.get("resource", "")),
                                   str((resource.get("responseKind") or {}).get("kind", "")),
                                   resource.get("scope") == "Namespaced")
            if rtype:
                found.append(rtype)
    return found


def _classic_versions(answer: K8sObject) -> t.List[str]:
    """The group versions of a classic ``APIVersions`` (``/api``) or ``APIGroupList`` (``/apis``) answer."""
    if "versions" in answer:
        return [str(v) for v in answer.get("versions") or [] if v]
    return [str((g.get("preferredVersion") or {}).get("groupVersion", "")) for g in answer.get("groups") or []
            if (g.get("preferredVersion") or {}).get("groupVersion")]


def _classic_types(client: K8sClient, versions: t.Sequence[str]) -> t.List[ResourceType]:
    """The types of each group version, one request each."""
    found: t.List[ResourceType] = []
    for api_version in versions:
        try:
            answer = client.request("GET", api_prefix(api_version), what="discover %s" % api_version)
        except (K8sNotFound, K8sForbidden):
            continue  # an aggregated API that is down or hidden: nothing of it can be backed up
        except K8sError as exc:
            if exc.status == 503:
                continue
            raise
        for resource in answer.get("resources", []):
            rtype = _resource_type(api_version, resource, str(resource.get("name", "")), str(resource.get("kind", "")),
                                   bool(resource.get("namespaced")))
            if rtype:
                found.append(rtype)
    return found


def default_selected(rtype: ResourceType) -> bool:
    return (rtype.group, rtype.plural) not in DEFAULT_EXCLUDED


def select_types(types: t.Sequence[ResourceType], kinds: t.Sequence[str],
                 exclude_kinds: t.Sequence[str]) -> t.Tuple[t.List[ResourceType], t.List[str]]:
    """The namespaced types to back up and the names of ``kinds`` no served type matches."""
    namespaced = [r for r in types if r.namespaced]
    if kinds:
        chosen = [r for r in namespaced if any(r.matches(k) for k in kinds)]
        unknown = [k for k in kinds if not any(r.matches(k) for r in namespaced)]
    else:
        chosen, unknown = [r for r in namespaced if default_selected(r)], []
    chosen = [r for r in chosen if not any(r.matches(k) for k in exclude_kinds)]
    return chosen, unknown


# ----------------------------------------------------------------------------------------------
# Listing


@dataclasses.dataclass
class Listing:
    """What one list of a type read: items by namespace, the list's resourceVersion, and failures."""

    items: t.List[K8sObject]
    resource_version: str
    errors: t.Dict[str, K8sError]


def _list_pages(client: K8sClient, rtype: ResourceType, namespace: t.Optional[str],
                label_selector: t.Optional[str]) -> t.Tuple[t.List[K8sObject], str]:
    """All items of one list (paged; restarted once when a continue token expires) and the
    resourceVersion of the list, which the manifest records."""
    path = resource_path(rtype.api_version, rtype.plural, namespace)
    what = "list %s %s" % (rtype.plural, "in namespace %s" % namespace if namespace else "in all namespaces")
    for restart in (0, 1):
        items: t.List[K8sObject] = []
        token: t.Optional[str] = None
        version = ""
        try:
            while True:
                page = client.request("GET", path, query={"labelSelector": label_selector, "limit": 500,
                                                          "continue": token}, what=what)
                items.extend(page.get("items") or [])
                meta = page.get("metadata") or {}
                version = version or str(meta.get("resourceVersion", ""))
                token = meta.get("continue")
                if not token:
                    break
        except K8sGone:
            if restart:
                raise
            continue
        for item in items:
            item.setdefault("apiVersion", rtype.api_version)
            item.setdefault("kind", rtype.kind)
        return items, version
    return [], ""  # not reached


def list_type(client: K8sClient, rtype: ResourceType, namespaces: t.Sequence[str],
              label_selector: t.Optional[str]) -> Listing:
    """``rtype`` in ``namespaces``: one list across all namespaces (filtered here) when there are
    several, each namespace on its own when that is forbidden or there is only one."""
    wanted = list(dict.fromkeys(namespaces))
    if len(wanted) > 1 or not rtype.namespaced:
        try:
            items, version = _list_pages(client, rtype, None, label_selector)
        except (K8sForbidden, K8sNotFound) as exc:
            if not rtype.namespaced:
                return Listing([], "", {"*": exc})
        else:
            keep = set(wanted)
            if rtype.namespaced:
                items = [i for i in items if (i.get("metadata") or {}).get("namespace") in keep]
            return Listing(items, version, {})
    listing = Listing([], "", {})
    for ns in wanted:
        try:
            items, version = _list_pages(client, rtype, ns, label_selector)
        except (K8sForbidden, K8sNotFound) as exc:
            listing.errors[ns] = exc
            continue
        listing.items.extend(items)
        listing.resource_version = listing.resource_version or version
    return listing


# ----------------------------------------------------------------------------------------------
# Stripping


def meta(obj: K8sObject) -> K8sObject:
    return t.cast(K8sObject, obj.setdefault("metadata", {}))


def controlled(obj: K8sObject) -> bool:
    return any(ref.get("controller") for ref in (obj.get("metadata") or {}).get("ownerReferences") or [])


def skipped_by_default(rtype: ResourceType, obj: K8sObject) -> bool:
    """Objects the cluster recreates by itself: Pods, ReplicaSets and ControllerRevisions a
    controller owns (a finished Job's Pods included), the per-namespace root CA ConfigMap."""
    if rtype.plural in CONTROLLED_SKIPPED and controlled(obj):
        return True
    return (rtype.kind, (obj.get("metadata") or {}).get("name")) in AUTOMATIC_OBJECTS


def _drop(mapping: t.Optional[K8sObject], keys: t.Iterable[str]) -> None:
    if mapping:
        for key in keys:
            mapping.pop(key, None)


def strip_server_fields(obj: K8sObject) -> K8sObject:
    """The object as stored: no status, no server-set metadata (the last-applied annotation stays)."""
    body = dict(obj)
    body.pop("status", None)
    metadata = dict(body.get("metadata") or {})
    _drop(metadata, SERVER_METADATA)
    for field, server_keys in (("annotations", SERVER_ANNOTATIONS), ("labels", SERVER_LABELS)):
        values = {k: v for k, v in (metadata.get(field) or {}).items() if k not in server_keys}
        if values:
            metadata[field] = values
        else:
            metadata.pop(field, None)
    body["metadata"] = metadata
    return body


def object_key(obj: K8sObject) -> str:
    """``apps/v1/Deployment/<namespace>/<name>`` (cluster objects: no namespace part)."""
    metadata = obj.get("metadata") or {}
    parts = [obj.get("apiVersion", ""), obj.get("kind", ""), metadata.get("namespace"), metadata.get("name", "")]
    return "/".join(str(p) for p in parts if p)


def ref(obj: K8sObject) -> t.Dict[str, t.Any]:
    """How an object is named in results: kind, apiVersion, namespace (None for cluster objects), name."""
    metadata = obj.get("metadata") or {}
    return {"kind": obj.get("kind"), "api_version": obj.get("apiVersion"), "namespace": metadata.get("namespace"),
            "name": metadata.get("name")}


def canonical(obj: K8sObject) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def digest(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


# ----------------------------------------------------------------------------------------------
# Restoring


# Set by the volume controller on a bound claim; a copy carrying them would claim to be bound.
_BINDING_ANNOTATIONS = ("pv.kubernetes.io/bind-completed", "pv.kubernetes.io/bound-by-controller",
                        "volume.kubernetes.io/selected-node")


def _unbind_claim(claim: K8sObject) -> None:
    """A claim copied into another namespace asks for a volume of its own: the original's volume is
    bound to the original claim, so keeping ``volumeName`` would leave the copy pending forever."""
    (claim.get("spec") or {}).pop("volumeName", None)
    annotations = meta(claim).get("annotations") or {}
    for key in _BINDING_ANNOTATIONS:
        annotations.pop(key, None)
    if not annotations:
        meta(claim).pop("annotations", None)


def map_namespaces(obj: K8sObject, mapping: t.Mapping[str, str]) -> K8sObject:
    """``obj`` moved into the mapped namespaces: its own namespace, a Namespace's name, the
    namespaces of binding subjects and of a PersistentVolume's claim; a claim moved loses its
    binding to the original's volume."""
    if not mapping:
        return obj
    body = copy.deepcopy(obj)
    metadata = meta(body)
    if metadata.get("namespace") in mapping:
        metadata["namespace"] = mapping[metadata["namespace"]]
        if body.get("kind") == "PersistentVolumeClaim":
            _unbind_claim(body)
    if body.get("kind") == "Namespace" and metadata.get("name") in mapping:
        metadata["name"] = mapping[metadata["name"]]
    for subject in body.get("subjects") or []:
        if subject.get("namespace") in mapping:
            subject["namespace"] = mapping[subject["namespace"]]
    claim = (body.get("spec") or {}).get("claimRef") if body.get("kind") == "PersistentVolume" else None
    if claim and claim.get("namespace") in mapping:
        claim["namespace"] = mapping[claim["namespace"]]
    return body


def _service_for_restore(spec: K8sObject, preserve_node_ports: bool) -> None:
    if spec.get("clusterIP") not in ("None", None):
        spec.pop("clusterIP", None)
        spec.pop("clusterIPs", None)
    if not preserve_node_ports:
        for port in spec.get("ports") or []:
            port.pop("nodePort", None)
        spec.pop("healthCheckNodePort", None)


def _job_for_restore(spec: K8sObject) -> None:
    # The API server generates a Job's selector from its uid unless the user chose one.
    if not spec.get("manualSelector"):
        spec.pop("selector", None)
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        _drop(labels, JOB_UID_LABELS)


def restore_form(obj: K8sObject, preserve_node_ports: bool = False) -> K8sObject:
    """What is written (and compared) at restore: server-set fields out, a Service's cluster IPs
    (unless headless) and node ports (unless preserved) out, a Job's generated selector out,
    a PersistentVolume's bound claim without its old uid."""
    body = copy.deepcopy(strip_server_fields(obj))
    kind = body.get("kind")
    spec = body.get("spec")
    if isinstance(spec, dict):
        if kind == "Service":
            _service_for_restore(spec, preserve_node_ports)
        elif kind == "Job":
            _job_for_restore(spec)
        elif kind == "PersistentVolume" and spec.get("claimRef"):
            _drop(spec["claimRef"], ("uid", "resourceVersion"))
    if kind == "Job":
        _drop(meta(body).get("labels"), JOB_UID_LABELS)
    return body


def comparable(obj: K8sObject, preserve_node_ports: bool = False) -> K8sObject:
    """:func:`restore_form` with owner references reduced to what survives a restore (no uid)."""
    body = restore_form(obj, preserve_node_ports)
    owners = meta(body).get("ownerReferences")
    if owners:
        meta(body)["ownerReferences"] = [{k: v for k, v in o.items() if k != "uid"} for o in owners]
    return body


def restore_rank(obj: K8sObject) -> int:
    kind = str(obj.get("kind", ""))
    if not is_builtin_group(group_of(str(obj.get("apiVersion", "")))):
        return CUSTOM_RANK
    return RESTORE_ORDER.get(kind, BUILTIN_RANK)


# ----------------------------------------------------------------------------------------------
# Secrets and drift


def masked(obj: K8sObject) -> K8sObject:
    """``obj`` with every Secret value (and a Secret's last-applied annotation) replaced by a mask."""
    if obj.get("kind") != "Secret":
        return obj
    body = copy.deepcopy(obj)
    for field in ("data", "stringData"):
        if isinstance(body.get(field), dict):
            body[field] = {key: MASK for key in body[field]}
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    if LAST_APPLIED in annotations:
        annotations[LAST_APPLIED] = MASK
    return body


def _pointer(path: t.Sequence[str]) -> str:
    return "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in path)


def _patch(before: t.Any, after: t.Any, path: t.List[str], ops: t.List[K8sObject]) -> None:
    if isinstance(before, dict) and isinstance(after, dict):
        for key in sorted(set(before) | set(after)):
            if key not in after:
                ops.append({"op": "remove", "path": _pointer(path + [key])})
            elif key not in before:
                ops.append({"op": "add", "path": _pointer(path + [key]), "value": after[key]})
            else:
                _patch(before[key], after[key], path + [key], ops)
    elif before != after:
        ops.append({"op": "replace", "path": _pointer(path), "value": after})


def _masked_op(op: K8sObject) -> K8sObject:
    """One operation on a Secret with its value masked, whatever part of the Secret it touches."""
    if "value" not in op:
        return op
    value = op["value"]
    path = op["path"]
    if path.startswith(("/data", "/stringData")):
        value = {key: MASK for key in value} if isinstance(value, dict) and path in ("/data", "/stringData") else MASK
    elif path == "/metadata/annotations/" + LAST_APPLIED.replace("/", "~1"):
        value = MASK
    elif isinstance(value, dict):
        value = _masked_nested(value)
    return dict(op, value=value)


def _masked_nested(value: K8sObject) -> K8sObject:
    """A dict added under ``/metadata`` or ``/metadata/annotations`` of a Secret, last-applied masked."""
    body = copy.deepcopy(value)
    for holder in (body, body.get("annotations")):
        if isinstance(holder, dict) and LAST_APPLIED in holder:
            holder[LAST_APPLIED] = MASK
    return body


def patch_summary(before: K8sObject, after: K8sObject, limit: int = 50) -> t.List[K8sObject]:
    """RFC 6902 operations turning ``before`` into ``after`` (values of Secrets masked), at most ``limit``."""
    ops: t.List[K8sObject] = []
    _patch(before, after, [], ops)
    if "Secret" in (before.get("kind"), after.get("kind")):
        ops = [_masked_op(op) for op in ops]
    return ops[:limit]
