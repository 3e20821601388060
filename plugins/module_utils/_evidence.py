# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Incident evidence: what a namespace looked like before anyone touched it, stored as an
``evidence`` backup in the backup repository (``ns_isolate``'s capture and ``k8s_evidence``).

Read in order of volatility (RFC 3227), one object per file: ``pods.json`` (specs and status), one
``logs__<pod>__<container>[__previous].log`` per container log, ``events.json``,
``networkpolicies.json``, ``owners.json``, ``services.json``, ``endpointslices.json``,
``secrets.json`` (names, types and key names only, never values), and for ``k8s_evidence`` the
Pods' ServiceAccounts, the bindings that grant them anything with the roles those reference, and
the Pods' nodes. The manifest's ``evidence`` section lists every file with the sha256 and size of
its plain content, its source object, the API request that read it and when, the API server and
the identity that captured it (from a SelfSubjectReview), and every log that could not be fetched
with the API server's answer: no log is ever made up. The chain of custody beside it is
``_custody``'s.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import tempfile
import typing as t
import urllib.parse

from ansible_collections.runbook.ops.plugins.module_utils import _custody as custody
from ansible_collections.runbook.ops.plugins.module_utils._backup_job import verified_entry
from ansible_collections.runbook.ops.plugins.module_utils._common import (
    Result, RunbookError, Task, isoformat, options_from, utcnow)
from ansible_collections.runbook.ops.plugins.module_utils._findings import Finding, finding, sort_findings, summarize
from ansible_collections.runbook.ops.plugins.module_utils._k8s import (
    K8sClient, K8sError, K8sForbidden, K8sNotFound, K8sObject, K8sUnreachable, api_prefix, object_ref, resource_path)
from ansible_collections.runbook.ops.plugins.module_utils._names import backup_id as check_backup_id
from ansible_collections.runbook.ops.plugins.module_utils._names import (
    duration, k8s_name, local_path, no_control, number, path_segment)
from ansible_collections.runbook.ops.plugins.module_utils._names import labels as check_labels
from ansible_collections.runbook.ops.plugins.module_utils._stream import HashingWriter

if t.TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.runbook.ops.plugins.module_utils._repository import Repository

KIND = "evidence"
FORMAT = "runbook-evidence-v1"
DEFAULT_LOG_LIMIT = 16 * 1024 * 1024
MAX_LOG_BYTES = 1 << 40
MAX_SINCE = 100 * 365 * 86400.0
RBAC = "rbac.authorization.k8s.io/v1"
SECRET_KEEP_META = ("name", "namespace", "labels", "creationTimestamp", "ownerReferences", "uid")


@dataclasses.dataclass(frozen=True)
class EvidenceOptions:
    """What a capture reads and how it stores it: the ``evidence`` suboptions of ``ns_isolate`` or the
    options of ``k8s_evidence``; ``storage`` holds them all for the repository."""

    set: t.Optional[str]
    labels: t.Dict[str, str]
    log_tail_lines: t.Optional[int]
    since: t.Optional[float]  # seconds, parsed from "2h"
    log_limit_bytes: int
    compression: str
    encryption_recipients: t.List[str]
    storage: t.Mapping[str, t.Any]
    capture: bool = True
    include_rbac: bool = False
    include_nodes: bool = False
    collector: t.Mapping[str, t.Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_params(cls, evidence: t.Mapping[str, t.Any], check: bool = True, prefix: str = "evidence.",
                    **converted: t.Any) -> "EvidenceOptions":
        """The options from validated parameters (``prefix`` names them in messages); with ``check``,
        every value is checked as for a capture (the repository URL's form too; nothing is contacted)."""
        since = None
        if check:
            _check(evidence, prefix)
            since = duration(prefix + "since", evidence["since"], 0, MAX_SINCE, above=True) if evidence["since"] else None
        labels = {str(k): str(v) for k, v in (evidence["labels"] or {}).items()}
        return options_from(cls, evidence, **dict(dict(since=since, labels=labels, storage=dict(evidence)), **converted))


def _check(evidence: t.Mapping[str, t.Any], prefix: str) -> None:
    from ansible_collections.runbook.ops.plugins.module_utils._repository import backend_from_options
    from ansible_collections.runbook.ops.plugins.module_utils._stream import parse_recipients

    backend_from_options(dict(evidence))
    if evidence["set"]:
        path_segment(prefix + "set", evidence["set"])
    if evidence["log_tail_lines"] is not None:
        number(prefix + "log_tail_lines", evidence["log_tail_lines"], 1, 10 ** 9)
    number(prefix + "log_limit_bytes", evidence["log_limit_bytes"], 1, MAX_LOG_BYTES)
    for key, value in (evidence["labels"] or {}).items():
        no_control(prefix + "labels key", str(key))
        no_control(prefix + "labels[%s]" % key, str(value))
    for index, recipient in enumerate(evidence["encryption_recipients"]):
        no_control(prefix + "encryption_recipients[%d]" % index, recipient)
    parse_recipients(evidence["encryption_recipients"])


def identity(client: K8sClient) -> K8sObject:
    """Who the credentials are, as the API server sees them (SelfSubjectReview, Kubernetes 1.28+)."""
    errors = []
    for version in ("v1", "v1beta1"):
        try:
            review = client.request(
                "POST", "/apis/authentication.k8s.io/%s/selfsubjectreviews" % version,
                body={"apiVersion": "authentication.k8s.io/%s" % version, "kind": "SelfSubjectReview"},
                what="create a SelfSubjectReview")
        except K8sError as exc:
            errors.append(exc.msg)
            continue
        info = (review.get("status") or {}).get("userInfo") or {}
        return {"username": info.get("username"), "uid": info.get("uid"), "groups": info.get("groups") or [],
                "source": "SelfSubjectReview authentication.k8s.io/%s" % version}
    return {"username": None, "source": "unknown", "error": errors[-1] if errors else "no answer"}


def secret_summary(secret: K8sObject) -> K8sObject:
    """A Secret without its values: names of keys, type, labels, annotation names."""
    meta = secret.get("metadata") or {}
    keys = sorted(set(secret.get("data") or {}) | set(secret.get("stringData") or {}))
    return {"metadata": {k: meta[k] for k in SECRET_KEEP_META if k in meta},
            "annotation_names": sorted(meta.get("annotations") or {}),
            "type": secret.get("type"), "keys": keys}


def _owner_plural(client: K8sClient, api_version: str, kind: str) -> t.Optional[str]:
    try:
        return client.plural_of(api_version, kind)
    except RunbookError:
        return None


def log_targets(pod: K8sObject) -> t.List[t.Tuple[str, bool]]:
    """``(container, previous)`` pairs worth asking for: every container that has started, and its
    previous instance when it restarted or has a terminated last state."""
    status = pod.get("status") or {}
    statuses = {s.get("name"): s for s in (status.get("containerStatuses") or []) + (status.get("initContainerStatuses") or [])}
    spec = pod.get("spec") or {}
    targets: t.List[t.Tuple[str, bool]] = []
    for container in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        name = container.get("name")
        cs = statuses.get(name) or {}
        targets.append((name, False))
        if cs.get("restartCount") or (cs.get("lastState") or {}).get("terminated"):
            targets.append((name, True))
    return targets


class EvidenceFiles:
    """The files of one capture, in memory until they are stored (logs are bounded by limitBytes).
    Each keeps where it came from: the source object, the API request that read it, the UTC time."""

    def __init__(self) -> None:
        self.files: t.List[t.Tuple[str, bytes, t.Dict[str, t.Any]]] = []
        self.problems: t.List[t.Dict[str, str]] = []

    def add(self, name: str, data: bytes, info: t.Dict[str, t.Any], *, source: str, method: str) -> None:
        self.files.append((name, data, dict(info, source=source, method=method, collected_at=isoformat(utcnow()))))

    def add_json(self, name: str, what: str, value: t.Any, *, source: str, method: str) -> None:
        self.add(name, json.dumps(value, indent=1, sort_keys=True).encode(), {"content": what}, source=source, method=method)

    def add_log(self, pod: str, container: str, previous: bool, data: bytes, *, source: str, method: str) -> None:
        name = "logs__%s__%s%s.log" % (pod, container, "__previous" if previous else "")
        self.add(name, data, {"content": "log", "pod": pod, "container": container, "previous": previous},
                 source=source, method=method)


def _method(path: str, query: t.Optional[t.Mapping[str, t.Any]] = None) -> str:
    """The API request, as the custody records name the method of an artifact."""
    pairs = [(k, str(v).lower() if isinstance(v, bool) else str(v)) for k, v in sorted((query or {}).items()) if v is not None]
    return "GET %s%s" % (path, "?" + urllib.parse.urlencode(pairs) if pairs else "")


class _Collector:
    """Reads one namespace's evidence into ``out``, in order of volatility (RFC 3227): the Pods'
    specs and status, their logs, Events, NetworkPolicies, then the slower-changing objects."""

    def __init__(self, client: K8sClient, namespace: str, opts: EvidenceOptions) -> None:
        self.client = client
        self.namespace = namespace
        self.opts = opts
        self.out = EvidenceFiles()

    def listed(self, api_version: str, plural: str, label_selector: t.Optional[str] = None,
               namespaced: bool = True) -> t.Tuple[t.Optional[t.List[K8sObject]], str]:
        ns = self.namespace if namespaced else None
        method = _method(resource_path(api_version, plural, ns), {"labelSelector": label_selector})
        try:
            return self.client.list(api_version, plural, ns, label_selector=label_selector), method
        except (K8sForbidden, K8sNotFound) as exc:
            self.out.problems.append({"file": plural, "error": exc.msg})
            return None, method

    def store_list(self, api_version: str, plural: str, what: t.Optional[str] = None) -> t.Optional[t.List[K8sObject]]:
        items, method = self.listed(api_version, plural)
        if items is not None:
            self.out.add_json("%s.json" % plural, what or plural, items,
                              source="%sList/%s" % (self.client.kind_of(api_version, plural), self.namespace), method=method)
        return items

    def run(self, pod_selector: t.Optional[str]) -> t.List[K8sObject]:
        pods, method = self.listed("v1", "pods", pod_selector)
        pods = pods or []
        self.out.add_json("pods.json", "pods", pods, source="PodList/%s" % self.namespace, method=method)
        logs = _logs(self.client, self.namespace, pods, self.opts, self.out)
        for api_version, plural in (("v1", "events"), ("networking.k8s.io/v1", "networkpolicies")):
            self.store_list(api_version, plural)
        owners = _owners(self.client, pods, self.out)
        self.out.add_json("owners.json", "owners", [owners[k] for k in sorted(owners)],
                          source="owners of the Pods", method="GET each ownerReference")
        for api_version, plural in (("v1", "services"), ("discovery.k8s.io/v1", "endpointslices")):
            self.store_list(api_version, plural)
        secrets, method = self.listed("v1", "secrets")
        if secrets is not None:
            self.out.add_json("secrets.json", "secrets (names and keys only)", [secret_summary(s) for s in secrets],
                              source="SecretList/%s" % self.namespace, method=method)
        if self.opts.include_rbac:
            self.rbac(pods)
        if self.opts.include_nodes:
            self.nodes(pods)
        return logs

    def rbac(self, pods: t.List[K8sObject]) -> None:
        """The ServiceAccounts the Pods run as, the bindings that grant them (or groups they belong
        to) anything, and the roles those bindings reference."""
        names = sorted({(p.get("spec") or {}).get("serviceAccountName") or "default" for p in pods})
        accounts = [sa for sa in (self.fetch("v1", "serviceaccounts", name, self.namespace) for name in names) if sa]
        self.out.add_json("serviceaccounts.json", "serviceaccounts of the Pods", accounts,
                          source=", ".join(object_ref("ServiceAccount", n, self.namespace) for n in names) or "none",
                          method="GET %s/{name}" % resource_path("v1", "serviceaccounts", self.namespace))
        groups = {"system:serviceaccounts", "system:serviceaccounts:%s" % self.namespace, "system:authenticated"}

        def grants(binding: K8sObject) -> bool:
            own_ns = (binding.get("metadata") or {}).get("namespace") or self.namespace
            for subject in binding.get("subjects") or []:
                if subject.get("kind") == "ServiceAccount" and subject.get("name") in names \
                        and (subject.get("namespace") or own_ns) == self.namespace:
                    return True
                if subject.get("kind") == "Group" and subject.get("name") in groups:
                    return True
            return False

        wanted: t.Set[t.Tuple[str, str]] = set()
        for plural, namespaced in (("rolebindings", True), ("clusterrolebindings", False)):
            items, method = self.listed(RBAC, plural, namespaced=namespaced)
            if items is None:
                continue
            matched = [b for b in items if grants(b)]
            self.out.add_json("%s.json" % plural, "%s granting the ServiceAccounts" % plural, matched, method=method,
                              source="%sList%s" % ("RoleBinding" if namespaced else "ClusterRoleBinding",
                                                   "/" + self.namespace if namespaced else ""))
            wanted |= {(str((b.get("roleRef") or {}).get("kind")), str((b.get("roleRef") or {}).get("name"))) for b in matched}
        roles = []
        for kind, name in sorted(wanted):
            plural, ns = ("roles", self.namespace) if kind == "Role" else ("clusterroles", None)
            role = self.fetch(RBAC, plural, name, ns)
            if role is not None:
                roles.append(dict(role, apiVersion=RBAC, kind=kind))
        self.out.add_json("roles.json", "roles and cluster roles the bindings reference", roles,
                          source=", ".join(object_ref(k, n) for k, n in sorted(wanted)) or "none",
                          method="GET each roleRef (%s)" % api_prefix(RBAC))

    def nodes(self, pods: t.List[K8sObject]) -> None:
        """The facts of the nodes the Pods run on: conditions, addresses, taints, kubelet and OS versions."""
        names = sorted({str((p.get("spec") or {}).get("nodeName")) for p in pods if (p.get("spec") or {}).get("nodeName")})
        nodes = [dict(n, apiVersion="v1", kind="Node") for n in (self.fetch("v1", "nodes", name) for name in names) if n]
        self.out.add_json("nodes.json", "nodes of the Pods", nodes, source=", ".join("Node/%s" % n for n in names) or "none",
                          method="GET %s/{name}" % resource_path("v1", "nodes"))

    def fetch(self, api_version: str, plural: str, name: str, namespace: t.Optional[str] = None) -> t.Optional[K8sObject]:
        """One object, or None with the reason recorded (gone, or not readable with these credentials)."""
        try:
            found = self.client.get(api_version, plural, name, namespace, missing_ok=True)
        except K8sForbidden as exc:
            self.out.problems.append({"file": "%s.json" % plural, "error": exc.msg})
            return None
        if found is None:
            self.out.problems.append({"file": "%s.json" % plural, "error": "%s no longer exists" % object_ref(plural, name, namespace)})
        return found


def collect(client: K8sClient, namespace: str, pod_selector: t.Optional[str],
            opts: EvidenceOptions) -> t.Tuple[EvidenceFiles, t.List[K8sObject]]:
    """Read everything; returns the files and a log status per (pod, container, previous)."""
    collector = _Collector(client, namespace, opts)
    logs = collector.run(pod_selector)
    return collector.out, logs


def _owners(client: K8sClient, pods: t.List[K8sObject], out: EvidenceFiles) -> t.Dict[str, K8sObject]:
    """The owners of the Pods, and theirs, up the chain (ReplicaSet, then Deployment)."""
    owners: t.Dict[str, K8sObject] = {}
    queue = [(p["metadata"]["namespace"], ref) for p in pods for ref in p["metadata"].get("ownerReferences") or []]
    while queue:
        ns, ref = queue.pop(0)
        key = object_ref(ref.get("kind", ""), ref.get("name", ""), ns)
        if key in owners:
            continue
        plural = _owner_plural(client, ref.get("apiVersion", ""), ref.get("kind", ""))
        if plural is None:
            out.problems.append({"file": "owners.json", "error": "%s: kind not served by the API server" % key})
            continue
        try:
            owner = client.get(ref["apiVersion"], plural, ref["name"], ns, missing_ok=True)
        except K8sForbidden as exc:
            out.problems.append({"file": "owners.json", "error": exc.msg})
            continue
        if owner is None:
            out.problems.append({"file": "owners.json", "error": "%s no longer exists" % key})
            continue
        owner.setdefault("apiVersion", ref["apiVersion"])
        owner.setdefault("kind", ref["kind"])
        owners[key] = owner
        queue.extend((ns, up) for up in owner["metadata"].get("ownerReferences") or [])
    return owners


def _logs(client: K8sClient, namespace: str, pods: t.List[K8sObject], opts: EvidenceOptions,
          out: EvidenceFiles) -> t.List[K8sObject]:
    """Every container log worth asking for, stored in ``out``; one status entry per log."""
    logs: t.List[K8sObject] = []
    bad_nodes: t.Dict[str, str] = {}
    for pod in pods:
        name = pod["metadata"]["name"]
        node = (pod.get("spec") or {}).get("nodeName")
        for container, previous in log_targets(pod):
            entry: K8sObject = {"pod": name, "container": container, "previous": previous, "node": node}
            logs.append(entry)
            if not node:
                entry.update(status="none", error="the Pod is not scheduled on a node: it has no logs")
                continue
            if node in bad_nodes:
                entry.update(status="failed", error="not requested: an earlier log request through node %s failed: %s"
                             % (node, bad_nodes[node]))
                continue
            what = "read the %slog of container %s of %s" % ("previous " if previous else "", container,
                                                             object_ref("Pod", name, namespace))
            path = resource_path("v1", "pods", namespace, name, "log")
            query = {"container": container, "previous": previous or None, "tailLines": opts.log_tail_lines,
                     "sinceSeconds": int(opts.since) if opts.since else None,
                     "limitBytes": opts.log_limit_bytes, "timestamps": True}
            try:
                # One attempt: a log that cannot be read fails for a reason worth recording, and
                # asking an unreachable kubelet again only costs time.
                data = client.request("GET", path, query, what=what, raw=True, retry=False)
            except K8sError as exc:
                entry.update(status="failed", error=exc.msg, http_status=exc.status)
                if exc.status >= 500 or isinstance(exc, K8sUnreachable):
                    bad_nodes[node] = exc.msg
                continue
            out.add_log(name, container, previous, data, source="%s container %s" % (object_ref("Pod", name, namespace), container),
                        method=_method(path, query))
            entry.update(status="captured", bytes=len(data), truncated=len(data) >= opts.log_limit_bytes)
    return logs


def capture(client: K8sClient, repo: "Repository", *, namespace: str, incident_id: str,
            pod_selector: t.Optional[t.Mapping[str, str]], opts: EvidenceOptions) -> K8sObject:
    """Collect and store the evidence; returns the result's ``evidence`` summary (``ns_isolate``)."""
    return store(client, repo, namespace=namespace, incident_id=incident_id, pod_selector=pod_selector, opts=opts)[0]


def store(client: K8sClient, repo: "Repository", *, namespace: str, incident_id: str,
          pod_selector: t.Optional[t.Mapping[str, str]], opts: EvidenceOptions) -> t.Tuple[K8sObject, K8sObject]:
    """Collect, store the files and the custody records, then the manifest (the commit marker).
    Returns the summary and the manifest."""
    captured_at = utcnow()
    selector = ",".join("%s=%s" % kv for kv in sorted((pod_selector or {}).items())) or None
    who = identity(client)
    try:
        server_version = client.version().get("gitVersion")
    except K8sError:
        server_version = None
    files, logs = collect(client, namespace, selector, opts)
    listing = []
    set_name = opts.set or incident_id
    all_labels = {"incident_id": incident_id, "namespace": namespace}
    all_labels.update(opts.labels)
    acting = custody.collector(who, opts.collector)
    with repo.new_backup(KIND, set_name, all_labels) as backup:
        for name, data, info in files.files:
            stored = backup.add_object(name, io.BytesIO(data), compression=opts.compression,
                                       recipients=list(opts.encryption_recipients), size_hint=len(data))
            listing.append(dict(info, name=name, size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                                sha256_stored=stored["sha256"], stored_size=stored["size"]))
        log = custody.capture_log(at=isoformat(captured_at), who=acting, artifacts=listing, backup={
            "repository": repo.url, "kind": KIND, "set": set_name, "backup_id": backup.backup_id,
            "incident_id": incident_id, "namespace": namespace})
        backup.add_sidecar(custody.CUSTODY, log.data())
        failed_logs = [entry for entry in logs if entry["status"] == "failed"]
        manifest = backup.commit(
            source={"api_server": client.settings.host, "server_version": server_version, "namespace": namespace},
            fmt=FORMAT, compression={"algorithm": opts.compression, "level": None, "threads": 0},
            extra={"evidence": {
                "incident_id": incident_id, "namespace": namespace, "pod_selector": pod_selector or None,
                "captured_at": isoformat(captured_at), "api_server": client.settings.host,
                "server_version": server_version, "identity": who, "collector": acting, "files": listing,
                "logs": logs, "logs_failed": len(failed_logs), "problems": files.problems,
                "nodes": sorted({str(e["node"]) for e in logs if e.get("node")}),
                "custody": custody.custody_head(log)}})
    summary = {
        "backup_id": manifest["id"], "kind": KIND, "set": set_name, "repository": repo.url,
        "files": len(listing), "bytes": sum(f["size"] for f in listing),
        "stored_bytes": manifest.get("size", 0), "captured_at": isoformat(captured_at),
        "identity": who.get("username"), "logs_captured": sum(1 for e in logs if e["status"] == "captured"),
        "logs_failed": len(failed_logs),
        "problems": [e["error"] for e in failed_logs] + [p["error"] for p in files.problems],
    }
    return summary, manifest


# --------------------------------------------------------------------------- k8s_evidence

STATES = ("captured", "verified", "fetched")
UNENCRYPTED = ("encryption_recipients is empty: the evidence is stored unencrypted; anyone who can read the "
               "repository can read the logs and objects")


@dataclasses.dataclass(frozen=True)
class K8sEvidenceOptions:
    """What ``k8s_evidence`` reads; ``evidence`` holds the capture and storage options."""

    state: str
    namespace: t.Optional[str]
    incident_id: t.Optional[str]
    pod_selector: t.Optional[t.Dict[str, str]]
    set: str
    backup_id: t.Optional[str]
    force: bool
    dest: t.Optional[str]
    evidence: EvidenceOptions
    identities: t.Tuple[t.Any, ...] = dataclasses.field(repr=False)

    @classmethod
    def from_params(cls, params: t.Mapping[str, t.Any]) -> "K8sEvidenceOptions":
        from ansible_collections.runbook.ops.plugins.module_utils._quarantine import check_incident_id
        from ansible_collections.runbook.ops.plugins.module_utils._stream import load_identities

        capturing = params["state"] == "captured"
        if params["namespace"]:
            k8s_name("namespace", params["namespace"], label=True)
        if params["incident_id"] is not None or capturing:
            check_incident_id(params["incident_id"])
        set_name = path_segment("set", params["set"] or "%s-evidence" % params["namespace"])
        if params["backup_id"]:
            check_backup_id(params["backup_id"])
        if params["dest"] is not None:
            local_path("dest", params["dest"])
        selector = check_labels("pod_selector", params["pod_selector"]) if params["pod_selector"] else None
        evidence = EvidenceOptions.from_params(dict(params, set=set_name), check=capturing, prefix="",
                                               collector=dict(params["collector"] or {}))
        identities = load_identities(params["encryption_identity"]) if not capturing else []
        return options_from(cls, params, set=set_name, pod_selector=selector, evidence=evidence,
                            identities=tuple(identities))


def _files(manifest: K8sObject) -> t.List[K8sObject]:
    """The artifacts of an evidence backup as the result lists them."""
    stored = {o["name"]: o for o in manifest.get("objects", [])}
    return [{"name": f["name"], "sha256_collected": f["sha256"], "sha256_stored": stored.get(f["name"], {}).get("sha256"),
             "size": f["size"], "stored_size": stored.get(f["name"], {}).get("size"), "source": f.get("source"),
             "method": f.get("method"), "collected_at": f.get("collected_at")}
            for f in (manifest.get("evidence") or {}).get("files", [])]


def _judged(result: Result, findings: t.List[Finding]) -> Result:
    findings = sort_findings(findings)
    result["status"], result["summary"] = summarize(findings)
    result["findings"] = findings
    return result


def _ref(manifest: K8sObject) -> str:
    return "Evidence/%s/%s" % (manifest["set"], manifest["id"])


def _capture_findings(manifest: K8sObject, encrypted: bool) -> t.List[Finding]:
    meta = manifest.get("evidence") or {}
    found = [finding("ok", "evidence_capture", _ref(manifest), "%d artifacts captured with their custody records"
                     % len(meta.get("files", [])), {"files": len(meta.get("files", []))})]
    for log in meta.get("logs", []):
        if log.get("status") == "failed":
            found.append(finding("warning", "evidence_log", "Pod/%s/%s" % (meta.get("namespace"), log["pod"]),
                                 "%slog of container %s not captured: %s" % (
                                     "previous " if log.get("previous") else "", log["container"], log.get("error")),
                                 {"container": log["container"], "previous": log.get("previous")}))
    for problem in meta.get("problems", []):
        found.append(finding("unknown", "evidence_object", "File/%s" % problem.get("file"), str(problem.get("error"))))
    if not encrypted:
        found.append(finding("warning", "evidence_encryption", _ref(manifest), UNENCRYPTED))
    return found


def _existing(repo: "Repository", opts: K8sEvidenceOptions) -> t.Optional[K8sObject]:
    """The newest complete capture of this incident in this namespace, if any."""
    for manifest in repo.scan(KIND, opts.set)[0]:
        meta = manifest.get("labels") or {}
        if meta.get("incident_id") == opts.incident_id and meta.get("namespace") == opts.namespace:
            return manifest
    return None


def _capture_result(manifest: K8sObject, changed: bool, msg: str) -> Result:
    meta = manifest.get("evidence") or {}
    result = {"changed": changed, "msg": msg, "backup_id": manifest["id"], "set": manifest["set"], "kind": KIND,
              "incident_id": meta.get("incident_id"), "namespace": meta.get("namespace"), "files": _files(manifest),
              "identity": meta.get("identity"), "collector": meta.get("collector"),
              "custody_records": (meta.get("custody") or {}).get("records", 0), "verified": [],
              "nodes": meta.get("nodes") or sorted({str(e["node"]) for e in meta.get("logs", []) if e.get("node")})}
    encrypted = (manifest.get("encryption") or {}).get("algorithm", "none") != "none"
    return _judged(result, _capture_findings(manifest, encrypted))


def run_captured(task: Task[K8sEvidenceOptions]) -> Result:
    """Capture once per incident and namespace (``force`` captures again into a new backup)."""
    from ansible_collections.runbook.ops.plugins.module_utils._repository import Repository

    opts = task.options
    client = task.client(K8sClient.from_params)
    repo = task.client(Repository.from_options)
    where = "namespace %s" % opts.namespace
    existing = None if opts.force else _existing(repo, opts)
    if existing is not None:
        return _capture_result(existing, False, "evidence of incident %s in %s is already captured in backup %s "
                               "(force=true captures again)" % (opts.incident_id, where, existing["id"]))
    if task.check_mode:
        return _judged({"changed": True, "backup_id": None, "set": opts.set, "kind": KIND, "incident_id": opts.incident_id,
                        "namespace": opts.namespace, "files": [], "identity": None, "collector": None, "nodes": [],
                        "custody_records": 0, "verified": [],
                        "msg": "would capture the evidence of incident %s in %s into set %s" % (opts.incident_id, where, opts.set)},
                       [finding("info", "evidence_capture", "Namespace/%s" % opts.namespace, "check mode: nothing captured")])
    summary, manifest = store(client, repo, namespace=t.cast(str, opts.namespace), incident_id=t.cast(str, opts.incident_id),
                              pod_selector=opts.pod_selector, opts=opts.evidence)
    if not opts.evidence.encryption_recipients:
        task.warn(UNENCRYPTED)
    return _capture_result(manifest, True, "captured %d artifacts of incident %s in %s into backup %s (%d logs, %d not readable)"
                           % (summary["files"], opts.incident_id, where, manifest["id"], summary["logs_captured"],
                              summary["logs_failed"]))


def _selected(repo: "Repository", opts: K8sEvidenceOptions) -> K8sObject:
    """The backup ``backup_id`` names, or the newest of the set (of the incident, when given)."""
    if opts.backup_id:
        return repo.get(KIND, opts.set, opts.backup_id)
    for manifest in repo.scan(KIND, opts.set)[0]:
        if opts.incident_id is None or (manifest.get("labels") or {}).get("incident_id") == opts.incident_id:
            return manifest
    repo.backend.require_exists()
    raise RunbookError("no complete evidence backup%s in set %r of %s" % (
        " of incident %s" % opts.incident_id if opts.incident_id else "", opts.set, repo.url))


def _custody_findings(manifest: K8sObject, checked: K8sObject) -> t.List[Finding]:
    if checked["ok"]:
        return [finding("ok", "evidence_custody", _ref(manifest), "custody re-proven (%s), %d records"
                        % (checked["level"], checked["records"]), {"level": checked["level"], "records": checked["records"]})]
    return [finding("critical", "evidence_custody", _ref(manifest), problem, {"level": checked["level"]})
            for problem in checked["problems"]]


def _access_result(manifest: K8sObject, checked: K8sObject) -> Result:
    result = {"changed": False, "backup_id": manifest["id"], "set": manifest["set"], "kind": KIND,
              "incident_id": (manifest.get("labels") or {}).get("incident_id"), "files": _files(manifest),
              "custody_records": checked["records"],
              "verified": [verified_entry(manifest, checked["level"], checked["problems"], records=checked["records"])]}
    return _judged(result, _custody_findings(manifest, checked))


def _failed_if_broken(result: Result, manifest: K8sObject, checked: K8sObject) -> Result:
    if not checked["ok"]:
        raise RunbookError("custody of evidence backup %s does not hold: %s" % (manifest["id"], "; ".join(checked["problems"])),
                           **result)
    return result


def run_verified(task: Task[K8sEvidenceOptions]) -> Result:
    """Re-prove the custody and append a ``verified`` record (not in check mode)."""
    from ansible_collections.runbook.ops.plugins.module_utils._repository import Repository

    opts = task.options
    repo = task.client(Repository.from_options)
    manifest = _selected(repo, opts)
    if not custody.has_custody(manifest):
        raise RunbookError("evidence backup %s has no custody records (it was captured before they were kept)" % manifest["id"])
    checked = custody.reprove_and_record(repo, manifest, opts.identities, by="k8s_evidence state=verified",
                                         who=custody.collector(None, opts.evidence.collector), record=not task.check_mode)
    result = _access_result(manifest, checked)
    result["msg"] = "custody of evidence backup %s %s (%s, %d records)" % (
        manifest["id"], "holds" if checked["ok"] else "is broken", checked["level"], checked["records"])
    return _failed_if_broken(result, manifest, checked)


def _fetch_one(repo: "Repository", manifest: K8sObject, entry: K8sObject, target: str,
               identities: t.Sequence[t.Any], expected: t.Optional[str]) -> None:
    """Write one artifact's plain bytes to ``target`` (through a 0600 temporary file renamed into place)."""
    handle, temporary = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".fetch-")
    try:
        with os.fdopen(handle, "wb") as out:
            plain = HashingWriter(out)
            repo.read_object(manifest, entry, plain, identities)
        if expected and plain.sha256 != expected:
            raise RunbookError("%s: the plain content's sha256 differs from the hash as collected" % entry["name"])
        os.replace(temporary, target)
    except BaseException:
        os.unlink(temporary)
        raise


def _same_file(path: str, sha256: t.Optional[str]) -> bool:
    if not sha256 or not os.path.isfile(path):
        return False
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest() == sha256


def run_fetched(task: Task[K8sEvidenceOptions]) -> Result:
    """Re-prove the custody, write every artifact's plain bytes into ``dest`` (each checked against
    its hash as collected), append a ``fetched`` record, and copy the manifest and custody log."""
    from ansible_collections.runbook.ops.plugins.module_utils._repository import MANIFEST, Repository

    opts = task.options
    dest = t.cast(str, opts.dest)
    repo = task.client(Repository.from_options)
    manifest = _selected(repo, opts)
    checked = custody.reprove(repo, manifest, opts.identities)
    result = _access_result(manifest, checked)
    result["dest"] = dest
    _failed_if_broken(result, manifest, checked)
    collected = {f["name"]: f["sha256_collected"] for f in result["files"]}
    todo = [e for e in manifest.get("objects", []) if not _same_file(os.path.join(dest, e["name"]), collected.get(e["name"]))]
    result.update(changed=bool(todo), fetched=[e["name"] for e in todo])
    if task.check_mode:
        result["msg"] = "would fetch %d of %d artifacts of evidence backup %s into %s" % (
            len(todo), len(manifest.get("objects", [])), manifest["id"], dest)
        return result
    os.makedirs(dest, mode=0o700, exist_ok=True)
    for entry in todo:
        _fetch_one(repo, manifest, entry, os.path.join(dest, entry["name"]), opts.identities, collected.get(entry["name"]))
    custody.record_access(repo, manifest, {"event": "fetched", "by": "k8s_evidence state=fetched", "dest": dest,
                                           "collector": custody.collector(None, opts.evidence.collector),
                                           "artifacts": [e["name"] for e in manifest.get("objects", [])]})
    for name, data in ((MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode()),
                       (custody.CUSTODY, repo.read_sidecar(manifest, custody.CUSTODY) or b"")):
        with open(os.path.join(dest, name), "wb") as handle:
            handle.write(data)
    result["custody_records"] = checked["records"] + 1
    result["msg"] = "fetched %d of %d artifacts of evidence backup %s into %s; custody holds (%s)" % (
        len(todo), len(manifest.get("objects", [])), manifest["id"], dest, checked["level"])
    return result


_RUN: t.Dict[str, t.Callable[[Task[K8sEvidenceOptions]], Result]] = {
    "captured": run_captured, "verified": run_verified, "fetched": run_fetched}


def run_k8s_evidence(task: Task[K8sEvidenceOptions]) -> Result:
    """``k8s_evidence``: the state's operation, with ``api_requests`` (0 when nothing asked the API)."""
    try:
        result = _RUN[task.options.state](task)
    except RunbookError as exc:
        exc.details.setdefault("api_requests", _requests(task))
        if "findings" not in exc.details:
            # Could not capture or read the evidence at all: never "ok" in a report that keeps going.
            check = "evidence_capture" if task.options.state == "captured" else "evidence_custody"
            _judged(exc.details, [finding("critical", check, "EvidenceSet/%s" % task.options.set, exc.msg)])
            exc.details.setdefault("verified", [])
        raise
    result["api_requests"] = _requests(task)
    return result


def _requests(task: Task[K8sEvidenceOptions]) -> int:
    if task.options.state != "captured":
        return 0
    try:
        return task.client(K8sClient.from_params).requests
    except RunbookError:
        return 0
