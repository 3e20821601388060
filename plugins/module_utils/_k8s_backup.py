# -*- coding: utf-8 -*-
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The work of ``k8s_backup``: its options (:class:`K8sBackupOptions`), the entry point
(:func:`run_k8s_backup`), reading the cluster's state and storing it. Restores and drift reports
are in ``_k8s_restore``; what is stripped, ordered and masked in ``_k8s_objects``.

A backup is one object in the repository (``objects.jsonl``: one stripped object per line, in
restore order), streamed through compression and encryption. Its manifest records per kind the
count and the list's resourceVersion, per object the sha256 of its line, the API server version,
and every kind that could not be read and why: a partial backup says so.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import queue
import threading
import typing as t

from ansible_collections.runbook.ops.plugins.module_utils._backup_job import (
    UNENCRYPTED_WARNING, BackupJobOptions, backup_result, fresh_backup, prune_after_success)
from ansible_collections.runbook.ops.plugins.module_utils._common import (
    Result, RunbookError, Stopwatch, Task, options_from)
from ansible_collections.runbook.ops.plugins.module_utils._k8s import (
    K8sClient, K8sError, K8sObject, reports_api_requests)
from ansible_collections.runbook.ops.plugins.module_utils._k8s_objects import (
    Listing, ResourceType, canonical, digest, discover, is_builtin_group, list_type, object_key, restore_rank, select_types,
    skipped_by_default, strip_server_fields)
from ansible_collections.runbook.ops.plugins.module_utils._names import (
    check_params, human_seconds, int_in, k8s_namespace, shown)
from ansible_collections.runbook.ops.plugins.module_utils._repository import BackupWriter, Repository, name_rules
from ansible_collections.runbook.ops.plugins.module_utils._stream import parse_recipients

KIND = "kubernetes"
OBJECTS = "objects.jsonl"
FORMAT = "jsonl"
MAX_PARALLEL = 64
# Lists run this many at a time (never more than ``parallel``): they are independent, and overlapping
# one list's transfer with another's decoding shortened them on the lab's API server; more
# connections did not shorten them further.
LIST_PARALLEL = 4
SECRET_TYPE = ResourceType("v1", "secrets", "Secret", True)
NAMESPACE_TYPE = ResourceType("v1", "namespaces", "Namespace", False)
CRD_TYPE = ResourceType("apiextensions.k8s.io/v1", "customresourcedefinitions", "CustomResourceDefinition", False)
CLUSTER_ROLE_TYPE = ResourceType("rbac.authorization.k8s.io/v1", "clusterroles", "ClusterRole", False)
CLUSTER_BINDING_TYPE = ResourceType("rbac.authorization.k8s.io/v1", "clusterrolebindings", "ClusterRoleBinding", False)
PV_TYPE = ResourceType("v1", "persistentvolumes", "PersistentVolume", False)

SECRETS_REFUSED = ("the backup would hold Secrets but encryption_recipients is empty: Secrets would be stored in "
                   "plain text; add encryption_recipients, exclude Secrets (exclude_kinds: [Secret]) or set "
                   "allow_unencrypted_secrets: true")


def _namespace_names(what: str, value: t.Any) -> t.List[str]:
    return [k8s_namespace(what, item) for item in value or []]


def _mapping(what: str, value: t.Any) -> t.Dict[str, str]:
    return {k8s_namespace(what + " key", key): k8s_namespace("%s[%s]" % (what, key), target)
            for key, target in (value or {}).items()}


@dataclasses.dataclass(frozen=True)
class K8sBackupOptions:
    """The validated options of one ``k8s_backup`` task."""

    state: str
    namespaces: t.List[str]
    namespace_selector: t.Optional[str]
    kinds: t.List[str]
    exclude_kinds: t.List[str]
    label_selector: t.Optional[str]
    include_cluster_resources: bool
    allow_unencrypted_secrets: bool
    backup_id: t.Optional[str]
    namespace_mapping: t.Dict[str, str]
    existing: str
    preserve_node_ports: bool
    parallel: int
    job: BackupJobOptions
    encryption_identity: t.Optional[str] = dataclasses.field(repr=False)

    @classmethod
    def from_params(cls, params: t.Mapping[str, t.Any]) -> "K8sBackupOptions":
        check_params(params, name_rules())
        int_in("parallel", params["parallel"], 1, MAX_PARALLEL)
        job = BackupJobOptions.from_params(params)
        options = options_from(cls, params, job=job, namespaces=_namespace_names("namespaces", params["namespaces"]),
                               namespace_mapping=_mapping("namespace_mapping", params["namespace_mapping"]))
        if options.state == "backup" and options.secrets_included and not job.encryption_recipients \
                and not options.allow_unencrypted_secrets:
            raise RunbookError(SECRETS_REFUSED)
        return options

    @property
    def secrets_included(self) -> bool:
        wanted = not self.kinds or any(SECRET_TYPE.matches(k) for k in self.kinds)
        return wanted and not any(SECRET_TYPE.matches(k) for k in self.exclude_kinds)

    @property
    def set_name(self) -> str:
        """The option ``set``, else the namespaces, sorted, joined with ``+``."""
        if self.job.set:
            return self.job.set
        if not self.namespaces:
            raise RunbookError("set is required when the namespaces are chosen by namespace_selector")
        return "+".join(sorted(self.namespaces))


@reports_api_requests
def run_k8s_backup(task: Task[K8sBackupOptions]) -> Result:
    """``k8s_backup``: back up, restore or report drift, as ``state`` says."""
    # Imported here: the restore imports this module's reading helpers.
    from ansible_collections.runbook.ops.plugins.module_utils._k8s_restore import run_diff, run_restore

    client = task.client(K8sClient.from_params)
    repo = task.client(Repository.from_options)
    if task.options.state == "backup":
        return Backup(task, client, repo).run()
    if task.options.state == "restore":
        return run_restore(task, client, repo)
    return run_diff(task, client, repo)


# --------------------------------------------------------------------------- reading the cluster

@dataclasses.dataclass
class Snapshot:
    """The cluster state read for one backup (or drift report), objects already stripped."""

    namespaces: t.List[str]
    objects: t.List[K8sObject] = dataclasses.field(default_factory=list)
    kinds: t.Dict[str, t.Dict[str, t.Any]] = dataclasses.field(default_factory=dict)
    unreadable: t.List[t.Dict[str, t.Any]] = dataclasses.field(default_factory=list)
    missing_namespaces: t.List[str] = dataclasses.field(default_factory=list)

    def add(self, rtype: ResourceType, listing: Listing, keep: t.Callable[[K8sObject], bool]) -> t.List[K8sObject]:
        """Record one list: its kept objects (stripped), count, resourceVersion and failures."""
        kept = [strip_server_fields(obj) for obj in listing.items if keep(obj)]
        self.objects.extend(kept)
        self.kinds[rtype.key] = {"plural": rtype.plural, "namespaced": rtype.namespaced, "count": len(kept),
                                 "resource_version": listing.resource_version}
        for namespace, exc in sorted(listing.errors.items()):
            self.unreadable.append({"kind": rtype.key, "namespace": None if namespace == "*" else namespace,
                                    "status": exc.status, "reason": exc.msg})
        return kept

    @property
    def counts(self) -> t.Dict[str, int]:
        return {key: entry["count"] for key, entry in sorted(self.kinds.items())}


def select_namespaces(client: K8sClient, opts: K8sBackupOptions) -> t.Tuple[t.List[str], t.Dict[str, K8sObject]]:
    """The namespaces to read (from ``namespaces`` or ``namespace_selector``) and the Namespace
    objects found; a namespace the credentials may not see is still read (its lists say why)."""
    selector = opts.namespace_selector if not opts.namespaces else None
    try:
        found = list_type(client, NAMESPACE_TYPE, [], selector).items
    except K8sError:
        if selector:
            raise
        found = []
    by_name = {str(ns["metadata"]["name"]): ns for ns in found}
    names = sorted(by_name) if selector else list(dict.fromkeys(opts.namespaces))
    if selector and not names:
        raise RunbookError("no namespace matches namespace_selector %s" % shown(selector))
    return names, by_name


class ClientPool:
    """Clients with the settings of ``main`` for concurrent requests, each leased to one thread at a
    time and created only when every other one is busy. Their requests are added to ``main``'s
    count (the task's ``api_requests``) when the pool closes."""

    def __init__(self, main: K8sClient, share_main: bool = False, **client_args: t.Any) -> None:
        self.main = main
        self._client_args = client_args
        # Last in, first out: the connection used last is the one most likely still open.
        self._idle: "queue.LifoQueue[K8sClient]" = queue.LifoQueue()
        self._extra: t.List[K8sClient] = []
        self._lock = threading.Lock()
        if share_main:
            self._idle.put(main)

    @contextlib.contextmanager
    def lease(self) -> t.Iterator[K8sClient]:
        try:
            client = self._idle.get_nowait()
        except queue.Empty:
            client = K8sClient(self.main.settings, **self._client_args)
            with self._lock:
                self._extra.append(client)
        try:
            yield client
        finally:
            self._idle.put(client)

    def close(self) -> None:
        with self._lock:
            for client in self._extra:
                self.main.requests += client.requests
                client.close()
            self._extra = []


def list_types(client: K8sClient, types: t.Sequence[ResourceType], namespaces: t.Sequence[str],
               label_selector: t.Optional[str], parallel: int = LIST_PARALLEL,
               cluster_types: t.Sequence[ResourceType] = ()) -> t.List[Listing]:
    """:func:`list_type` of each of ``types`` in ``namespaces`` with ``label_selector``, then of each
    of ``cluster_types`` (everything), ``parallel`` lists at a time (``client`` is one of the
    connections), in that order."""
    pool = ClientPool(client, share_main=True)
    jobs = [(r, label_selector) for r in types] + [(r, None) for r in cluster_types]

    def one(job: t.Tuple[ResourceType, t.Optional[str]]) -> Listing:
        with pool.lease() as worker:
            return list_type(worker, job[0], namespaces, job[1])

    try:
        with concurrent.futures.ThreadPoolExecutor(max(1, min(parallel, LIST_PARALLEL, len(jobs)))) as executor:
            return list(executor.map(one, jobs))
    finally:
        pool.close()


def read_namespaced(client: K8sClient, snapshot: Snapshot, types: t.Sequence[ResourceType],
                    label_selector: t.Optional[str], parallel: int = LIST_PARALLEL,
                    cluster_types: t.Sequence[ResourceType] = ()) -> t.Dict[ResourceType, Listing]:
    """One list per type (across the namespaces), ``parallel`` at a time; controller-owned and
    automatic objects left out. ``cluster_types`` are listed in the same go and returned, not
    recorded: which of their objects a backup needs depends on what the others hold."""
    listings = list_types(client, types, snapshot.namespaces, label_selector, parallel, cluster_types)
    for rtype, listing in zip(types, listings):
        snapshot.add(rtype, listing, lambda obj, r=rtype: not skipped_by_default(r, obj))  # type: ignore[misc]
    return dict(zip(cluster_types, listings[len(types):]))


def cluster_types_needed(types: t.Sequence[ResourceType]) -> t.List[ResourceType]:
    """The cluster-scoped lists :func:`read_cluster_resources` will (likely) need, to be read with
    the namespaced ones."""
    needed = [CLUSTER_BINDING_TYPE, CLUSTER_ROLE_TYPE]
    if any(not is_builtin_group(r.group) for r in types):
        needed.append(CRD_TYPE)
    if any(r.kind == "PersistentVolumeClaim" and r.group == "" for r in types):
        needed.append(PV_TYPE)
    return needed


def read_cluster_resources(client: K8sClient, snapshot: Snapshot, namespace_objects: t.Mapping[str, K8sObject],
                           types: t.Sequence[ResourceType], listed: t.Mapping[ResourceType, Listing]) -> None:
    """The cluster-scoped objects the namespaces need: their Namespaces, the CRDs of the custom
    resources read, ClusterRoleBindings with subjects in them and the ClusterRoles those bind,
    PersistentVolumes bound to the claims read. Lists already read are taken from ``listed``."""

    def listing(rtype: ResourceType) -> Listing:
        return listed[rtype] if rtype in listed else list_type(client, rtype, [], None)

    wanted = set(snapshot.namespaces)
    snapshot.add(NAMESPACE_TYPE, Listing([namespace_objects[n] for n in snapshot.namespaces if n in namespace_objects],
                                         "", {}), lambda obj: True)
    custom = {"%s.%s" % (r.plural, r.group) for r in types
              if snapshot.kinds.get(r.key, {}).get("count") and not is_builtin_group(r.group)}
    if custom:
        snapshot.add(CRD_TYPE, listing(CRD_TYPE), lambda obj: obj["metadata"]["name"] in custom)
    bindings = snapshot.add(CLUSTER_BINDING_TYPE, listing(CLUSTER_BINDING_TYPE), lambda obj: any(
        s.get("namespace") in wanted for s in obj.get("subjects") or []))
    roles = {b["roleRef"]["name"] for b in bindings if b.get("roleRef", {}).get("kind") == "ClusterRole"}
    if roles:
        snapshot.add(CLUSTER_ROLE_TYPE, listing(CLUSTER_ROLE_TYPE), lambda obj: obj["metadata"]["name"] in roles)
    claims = {(o["metadata"].get("namespace"), o["metadata"]["name"]) for o in snapshot.objects
              if o.get("kind") == "PersistentVolumeClaim"}
    if claims:
        snapshot.add(PV_TYPE, listing(PV_TYPE), lambda obj: (
            ((obj.get("spec") or {}).get("claimRef") or {}).get("namespace"),
            ((obj.get("spec") or {}).get("claimRef") or {}).get("name")) in claims)


def read_state(client: K8sClient, opts: K8sBackupOptions) -> Snapshot:
    """Everything one backup stores, read with one list per kind."""
    names, namespace_objects = select_namespaces(client, opts)
    snapshot = Snapshot(names)
    if namespace_objects:
        snapshot.missing_namespaces = [n for n in names if n not in namespace_objects]
    types, unknown = select_types(discover(client), opts.kinds, opts.exclude_kinds)
    if unknown:
        raise RunbookError("kinds %s: the API server serves no namespaced kind of that name" % ", ".join(unknown))
    cluster_types = cluster_types_needed(types) if opts.include_cluster_resources else []
    listed = read_namespaced(client, snapshot, types, opts.label_selector, opts.parallel, cluster_types)
    if opts.include_cluster_resources:
        read_cluster_resources(client, snapshot, namespace_objects, types, listed)
    snapshot.objects.sort(key=lambda obj: (restore_rank(obj), object_key(obj)))
    return snapshot


# --------------------------------------------------------------------------- storing

class _LinesReader:
    """A readable over the objects, one canonical JSON line each, produced as the stream is read."""

    def __init__(self, objects: t.Sequence[K8sObject], digests: t.Dict[str, str]) -> None:
        self._objects = iter(objects)
        self._digests = digests
        self._buffer = bytearray()

    def _next_line(self) -> bytes:
        obj = next(self._objects, None)
        if obj is None:
            return b""
        line = canonical(obj)
        self._digests[object_key(obj)] = digest(line)
        return line + b"\n"

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            line = self._next_line()
            if not line:
                break
            self._buffer += line
        size = len(self._buffer) if size < 0 else size
        data = bytes(self._buffer[:size])
        del self._buffer[:size]  # a bytearray drops its head without copying the rest
        return data

    def readable(self) -> bool:
        return True


class Backup:
    """One backup of the selected namespaces (or, in check mode, what one would hold)."""

    def __init__(self, task: Task[K8sBackupOptions], client: K8sClient, repo: Repository) -> None:
        self.task = task
        self.opts = task.options
        self.client = client
        self.repo = repo

    def run(self) -> Result:
        watch = Stopwatch()
        opts = self.opts
        set_name = opts.set_name
        fresh = fresh_backup(self.repo, KIND, set_name, opts.job.max_age)
        if fresh is not None:
            result = _with_state(backup_result(fresh, watch.elapsed, skipped=True),
                                 counts=fresh.get("kubernetes", {}).get("kinds", {}))
            result["msg"] = "backup %s of set %s finished less than %s ago: nothing to do" % (
                fresh["id"], set_name, human_seconds(opts.job.max_age or 0))
            return result
        if not opts.job.encryption_recipients:
            self.task.warn(UNENCRYPTED_WARNING)
        parse_recipients(opts.job.encryption_recipients)  # bad keys fail before anything is read
        latest = self.repo.latest(KIND, set_name) if self.task.diff else None
        before = {"latest_backup": latest["id"] if latest else None}
        version = str(self.client.version().get("gitVersion", ""))
        snapshot = read_state(self.client, opts)
        self._warn(snapshot)
        if self.task.check_mode:
            result = _with_state(backup_result(None, watch.elapsed), snapshot=snapshot, changed=True)
            result.update(msg="would back up %d objects of %d kinds in %s into %s" % (
                len(snapshot.objects), len(snapshot.kinds), ", ".join(snapshot.namespaces), self.repo.url),
                diff={"before": before, "after": {"latest_backup": "(new backup of set %s)" % set_name}})
            return result
        manifest = self._store(snapshot, version)
        pruned = prune_after_success(self.repo, KIND, set_name, opts.job.retention)
        result = _with_state(backup_result(manifest, watch.elapsed, pruned=pruned), snapshot=snapshot)
        result.update(msg="backed up %d objects of %d kinds in %s to %s as %s%s" % (
            len(snapshot.objects), len(snapshot.kinds), ", ".join(snapshot.namespaces), self.repo.url, manifest["id"],
            "; PARTIAL: %d kind(s) could not be read" % len(snapshot.unreadable) if snapshot.unreadable else ""),
            diff={"before": before, "after": {"latest_backup": manifest["id"]}})
        return result

    def _warn(self, snapshot: Snapshot) -> None:
        for item in snapshot.unreadable:
            self.task.warn("the backup is partial: %s %s could not be read (%s)" % (
                item["kind"], "in namespace %s" % item["namespace"] if item["namespace"] else "(cluster-wide)",
                item["reason"]))
        if snapshot.missing_namespaces:
            self.task.warn("namespaces not found (nothing of them is stored): %s" % ", ".join(snapshot.missing_namespaces))

    def _store(self, snapshot: Snapshot, version: str) -> t.Dict[str, t.Any]:
        opts = self.opts
        job = opts.job
        digests: t.Dict[str, str] = {}
        with self.repo.new_backup(KIND, opts.set_name, job.labels) as writer:
            self._add(writer, _LinesReader(snapshot.objects, digests))
            return writer.commit(
                source={"server": self.client.settings.describe(), "server_version": version,
                        "namespaces": snapshot.namespaces},
                fmt=FORMAT, compression=job.compression_settings,
                extra={"kubernetes": {
                    "server_version": version, "namespaces": snapshot.namespaces,
                    "label_selector": opts.label_selector, "include_cluster_resources": opts.include_cluster_resources,
                    "kinds": snapshot.kinds, "objects": digests, "object_count": len(digests),
                    "unreadable": snapshot.unreadable, "partial": bool(snapshot.unreadable),
                    "missing_namespaces": snapshot.missing_namespaces}})

    def _add(self, writer: BackupWriter, source: _LinesReader) -> None:
        job = self.opts.job
        writer.add_object(OBJECTS, source, compression=job.compression, level=job.compression_level,
                          threads=job.compression_threads, recipients=job.encryption_recipients)


def _with_state(result: Result, snapshot: t.Optional[Snapshot] = None, counts: t.Optional[t.Mapping[str, t.Any]] = None,
                changed: t.Optional[bool] = None) -> Result:
    """The fields ``k8s_backup`` adds to a backup result (restore and diff fill them their own way)."""
    if snapshot is not None:
        result["counts"] = snapshot.counts
        result["unreadable"] = snapshot.unreadable
        result["status"] = "warning" if snapshot.unreadable or snapshot.missing_namespaces else "ok"
    else:
        result["counts"] = {key: entry.get("count", 0) for key, entry in sorted((counts or {}).items())}
        result["unreadable"] = []
        result["status"] = "ok"
    result["objects"] = []
    if changed is not None:
        result["changed"] = changed
    return result
