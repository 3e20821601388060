# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Incident evidence: what a namespace looked like before anyone touched it, stored as an
``evidence`` backup in the backup repository.

One object per file: ``pods.json``, ``owners.json``, ``services.json``, ``endpointslices.json``,
``networkpolicies.json``, ``events.json``, ``secrets.json`` (names, types and key names only, never
values) and one ``logs__<pod>__<container>[__previous].log`` per container log. The manifest's
``evidence`` section lists every file with the sha256 and size of its plain content, the capture
time, the API server and the identity that captured it (from a SelfSubjectReview), and every log
that could not be fetched with the API server's answer: no log is ever made up.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._common import RunbookError, isoformat, options_from, utcnow
from ansible_collections.runbook.ops.plugins.module_utils._k8s import (
    K8sClient, K8sError, K8sForbidden, K8sNotFound, K8sObject, K8sUnreachable, object_ref, resource_path)
from ansible_collections.runbook.ops.plugins.module_utils._names import duration, no_control, number, path_segment

if t.TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.runbook.ops.plugins.module_utils._repository import Repository

KIND = "evidence"
FORMAT = "runbook-evidence-v1"
DEFAULT_LOG_LIMIT = 16 * 1024 * 1024
MAX_LOG_BYTES = 1 << 40
MAX_SINCE = 100 * 365 * 86400.0
SECRET_KEEP_META = ("name", "namespace", "labels", "creationTimestamp", "ownerReferences", "uid")


@dataclasses.dataclass(frozen=True)
class EvidenceOptions:
    """The ``evidence`` suboptions of ``ns_isolate``; ``storage`` holds them all for the repository."""

    capture: bool
    set: t.Optional[str]
    labels: t.Dict[str, str]
    log_tail_lines: t.Optional[int]
    since: t.Optional[float]  # seconds, parsed from "2h"
    log_limit_bytes: int
    compression: str
    encryption_recipients: t.List[str]
    storage: t.Mapping[str, t.Any]

    @classmethod
    def from_params(cls, evidence: t.Mapping[str, t.Any], check: bool = True) -> "EvidenceOptions":
        """The options from the validated ``evidence`` suboptions; with ``check``, every value is
        checked as for a capture (the repository URL's form too; nothing is contacted)."""
        since = None
        if check:
            _check(evidence)
            since = duration("evidence.since", evidence["since"], 0, MAX_SINCE, above=True) if evidence["since"] else None
        labels = {str(k): str(v) for k, v in (evidence["labels"] or {}).items()}
        return options_from(cls, evidence, since=since, labels=labels, storage=dict(evidence))


def _check(evidence: t.Mapping[str, t.Any]) -> None:
    from ansible_collections.runbook.ops.plugins.module_utils._repository import backend_from_options
    from ansible_collections.runbook.ops.plugins.module_utils._stream import parse_recipients

    backend_from_options(dict(evidence))
    if evidence["set"]:
        path_segment("evidence.set", evidence["set"])
    if evidence["log_tail_lines"] is not None:
        number("evidence.log_tail_lines", evidence["log_tail_lines"], 1, 10 ** 9)
    number("evidence.log_limit_bytes", evidence["log_limit_bytes"], 1, MAX_LOG_BYTES)
    for key, value in (evidence["labels"] or {}).items():
        no_control("evidence.labels key", str(key))
        no_control("evidence.labels[%s]" % key, str(value))
    for index, recipient in enumerate(evidence["encryption_recipients"]):
        no_control("evidence.encryption_recipients[%d]" % index, recipient)
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
    """The files of one capture, in memory until they are stored (logs are bounded by limitBytes)."""

    def __init__(self) -> None:
        self.files: t.List[t.Tuple[str, bytes, t.Dict[str, t.Any]]] = []
        self.problems: t.List[t.Dict[str, str]] = []

    def add_json(self, name: str, what: str, value: t.Any) -> None:
        data = json.dumps(value, indent=1, sort_keys=True).encode()
        self.files.append((name, data, {"content": what}))

    def add_log(self, pod: str, container: str, previous: bool, data: bytes) -> None:
        name = "logs__%s__%s%s.log" % (pod, container, "__previous" if previous else "")
        self.files.append((name, data, {"content": "log", "pod": pod, "container": container, "previous": previous}))


def collect(client: K8sClient, namespace: str, pod_selector: t.Optional[str],
            opts: EvidenceOptions) -> t.Tuple[EvidenceFiles, t.List[K8sObject]]:
    """Read everything; returns the files and a log status per (pod, container, previous)."""
    out = EvidenceFiles()

    def listed(api_version: str, plural: str, label_selector: t.Optional[str] = None) -> t.Optional[t.List[K8sObject]]:
        try:
            return client.list(api_version, plural, namespace, label_selector=label_selector)
        except (K8sForbidden, K8sNotFound) as exc:
            out.problems.append({"file": plural, "error": exc.msg})
            return None

    pods = listed("v1", "pods", pod_selector) or []
    out.add_json("pods.json", "pods", pods)
    owners = _owners(client, pods, out)
    out.add_json("owners.json", "owners", [owners[k] for k in sorted(owners)])
    for api_version, plural in (("v1", "services"), ("discovery.k8s.io/v1", "endpointslices"),
                                ("networking.k8s.io/v1", "networkpolicies"), ("v1", "events")):
        items = listed(api_version, plural)
        if items is not None:
            out.add_json("%s.json" % plural, plural, items)
    secrets = listed("v1", "secrets")
    if secrets is not None:
        out.add_json("secrets.json", "secrets (names and keys only)", [secret_summary(s) for s in secrets])
    return out, _logs(client, namespace, pods, opts, out)


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
            try:
                # One attempt: a log that cannot be read fails for a reason worth recording, and
                # asking an unreachable kubelet again only costs time.
                data = client.request("GET", resource_path("v1", "pods", namespace, name, "log"), {
                    "container": container, "previous": previous or None, "tailLines": opts.log_tail_lines,
                    "sinceSeconds": int(opts.since) if opts.since else None,
                    "limitBytes": opts.log_limit_bytes, "timestamps": True}, what=what, raw=True, retry=False)
            except K8sError as exc:
                entry.update(status="failed", error=exc.msg, http_status=exc.status)
                if exc.status >= 500 or isinstance(exc, K8sUnreachable):
                    bad_nodes[node] = exc.msg
                continue
            out.add_log(name, container, previous, data)
            entry.update(status="captured", bytes=len(data), truncated=len(data) >= opts.log_limit_bytes)
    return logs


def capture(client: K8sClient, repo: "Repository", *, namespace: str, incident_id: str,
            pod_selector: t.Optional[t.Mapping[str, str]], opts: EvidenceOptions) -> K8sObject:
    """Collect and store the evidence; returns the result's ``evidence`` summary."""
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
    with repo.new_backup(KIND, set_name, all_labels) as backup:
        for name, data, info in files.files:
            backup.add_object(name, io.BytesIO(data), compression=opts.compression,
                              recipients=list(opts.encryption_recipients), size_hint=len(data))
            listing.append(dict(info, name=name, size=len(data), sha256=hashlib.sha256(data).hexdigest()))
        failed_logs = [entry for entry in logs if entry["status"] == "failed"]
        manifest = backup.commit(
            source={"api_server": client.settings.host, "server_version": server_version, "namespace": namespace},
            fmt=FORMAT, compression={"algorithm": opts.compression, "level": None, "threads": 0},
            extra={"evidence": {
                "incident_id": incident_id, "namespace": namespace, "pod_selector": pod_selector or None,
                "captured_at": isoformat(captured_at), "api_server": client.settings.host,
                "server_version": server_version, "identity": who, "files": listing, "logs": logs,
                "logs_failed": len(failed_logs), "problems": files.problems}})
    return {
        "backup_id": manifest["id"], "kind": KIND, "set": set_name, "repository": repo.url,
        "files": len(listing), "bytes": sum(f["size"] for f in listing),
        "stored_bytes": manifest.get("size", 0), "captured_at": isoformat(captured_at),
        "identity": who.get("username"), "logs_captured": sum(1 for e in logs if e["status"] == "captured"),
        "logs_failed": len(failed_logs),
        "problems": [e["error"] for e in failed_logs] + [p["error"] for p in files.problems],
    }
